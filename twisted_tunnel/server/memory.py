# -*- test-case-name: tests.server.test_memory -*-
"""
Giving memory back to the system once many agents have left
(L{MemoryReturn}).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: Trim once at least this many agents have gone since the most the server
#: held (about 50 MiB of memory freed inside the process: an idle agent's
#: TLS connection and tunnel are about 50 KiB).
TRIM_AFTER_DEPARTURES = 1000

#: ... and no agent has come or gone for this many seconds (a mass
#: departure takes a few seconds to process: trim once, after it) ...
TRIM_QUIET = 2.0

#: ... or this long after the first departure that counted, if they keep
#: coming and going.
TRIM_AT_LATEST = 30.0


def glibcMallocTrim() -> Callable[[], int] | None:
    """
    glibc's C{malloc_trim(0)}, or C{None} where there is none (another C
    library, another system).
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


def residentBytes() -> int | None:
    """This process's resident memory, from C{/proc/self/statm} (Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryReturn:
    """
    Hands the memory of agents that left back to the system.

    An idle agent holds about 50 KiB on its server, most of it OpenSSL's
    connection state, allocated with C{malloc}.  When ten thousand agents
    leave, all of it is freed, but glibc keeps freed memory inside the
    process for the next allocations: only a free block at the very top of
    its heap goes back by itself, and the blocks the agents left are
    scattered among those still in use.  The server stayed at the size it
    had with every agent connected, and crept up by fragmentation from one
    storm of agents to the next (636 to 694 MiB over ten storms of 10,000
    agents; a new wave reuses most of it, so it is no leak).
    C{malloc_trim(0)}
    gives the free pages inside the heap back (C{madvise}), so this calls
    it once after a mass departure: when at least L{TRIM_AFTER_DEPARTURES}
    agents have gone since the most the server held, once agents have
    stopped coming and going for L{TRIM_QUIET} seconds (or
    L{TRIM_AT_LATEST} after the departures began).  It blocks the reactor
    while it runs (50-75 ms for the memory of 10,000 agents, measured
    by C{bench/agents.py --cycles}; logged each time), which is rare and
    short next to the departure that caused it.

    @param count: how many agents are connected now.
    @param trim: what returns the memory (default: glibc's
        C{malloc_trim}; nothing happens where there is none).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        count: Callable[[], int],
        trim: Callable[[], int] | None = None,
        *,
        resident: Callable[[], int | None] = residentBytes,
    ) -> None:
        self.clock = clock
        self.count = count
        self.trim = trim if trim is not None else glibcMallocTrim()
        self.resident = resident
        self.trims = 0
        self._high = count()
        self._lastChange = 0.0
        self._firstDeparture: float | None = None
        self._call: IDelayedCall | None = None

    def changed(self) -> None:
        """An agent came or went (a registry observer)."""
        if self.trim is None:
            return
        now = self.clock.seconds()
        self._lastChange = now
        connected = self.count()
        if connected > self._high:
            self._high = connected
        if self._call is None and self._high - connected >= TRIM_AFTER_DEPARTURES:
            self._firstDeparture = now
            self._call = self.clock.callLater(TRIM_QUIET, self._due)

    def _due(self) -> None:
        self._call = None
        now = self.clock.seconds()
        first = self._firstDeparture if self._firstDeparture is not None else now
        if now - self._lastChange < TRIM_QUIET and now - first < TRIM_AT_LATEST:
            delay = min(self._lastChange + TRIM_QUIET, first + TRIM_AT_LATEST) - now
            self._call = self.clock.callLater(max(delay, 0.0), self._due)
            return
        self._firstDeparture = None
        gone = self._high - self.count()
        self._high = self.count()
        self.returnMemory(gone)

    def returnMemory(self, gone: int) -> None:
        """Trim now, and log what it gave back and how long it took."""
        if self.trim is None:
            return
        before = self.resident()
        started = time.perf_counter()
        self.trim()
        took = time.perf_counter() - started
        after = self.resident()
        self.trims += 1
        returned = (before - after) / 2**20 if before is not None and after is not None else 0.0
        self.log.info(
            "returned {returned:.0f} MiB of memory to the system after {gone} agents left "
            "(malloc_trim took {ms:.1f} ms)",
            returned=returned,
            gone=gone,
            ms=1000 * took,
        )

    def stop(self) -> None:
        """Cancel a trim still to come."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
