# -*- test-case-name: tests.mux.test_mux -*-
"""
The settings both ends of a tunnel agree on or keep: HELLO's settings, keepalive
timing, server ids, and the agent's budget of streams and buffered bytes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import (
    IReactorTime,
)
from twisted.logger import Logger, LogLevel

from .. import wire
from .._logthrottle import LogThrottle
from ..wire import ProtocolError

#: The most server replicas behind one address: a bound on HELLO's
#: C{server_count} and on the C{servers} an agent names.
MAX_SERVERS = 64

#: The longest server id (HELLO C{server_id}, C{instance}, and each of an
#: agent's C{servers}): a Kubernetes object name's length, so a pod name
#: fits.  With L{MAX_SERVERS} of them an agent's HELLO stays near 16 KiB,
#: far below the 64 KiB a HELLO may hold: an id a peer sent us can never
#: make our own HELLO too large for the other replicas.
MAX_SERVER_ID = 253

_SERVER_ID_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
)


def validServerId(value: object) -> bool:
    """
    Whether C{value} may be a server id: a string of 1 to L{MAX_SERVER_ID}
    ASCII letters, digits and C{. _ : -} (a pod name, a UUID, a host name),
    nothing that needs escaping in a log line, a label or a HELLO.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SERVER_ID
        and _SERVER_ID_CHARACTERS.issuperset(value)
    )


@frozen
class Settings:
    """
    What one side grants the other; sent in HELLO.

    @ivar window: initial receive window per stream, in bytes.
    @ivar maxFrame: the largest DATA payload accepted.
    @ivar maxStreams: how many streams opened by the peer may be open at once.
    """

    window: int = 1024 * 1024
    maxFrame: int = wire.DEFAULT_MAX_FRAME
    maxStreams: int = 1024

    def toInfo(self) -> dict[str, int]:
        return {"window": self.window, "max_frame": self.maxFrame, "max_streams": self.maxStreams}

    @classmethod
    def fromInfo(cls, info: dict[str, Any]) -> Settings:
        """
        Read the peer's settings out of its HELLO, within sane bounds.

        @raise ProtocolError: a setting is missing its type or its bounds.
        """
        default = cls()
        window = _bounded(info, "window", default.window, 64 * 1024, 2**31 - 1)
        maxFrame = _bounded(
            info, "max_frame", default.maxFrame, 16 * 1024, wire.ABSOLUTE_MAX_FRAME
        )
        maxStreams = _bounded(info, "max_streams", default.maxStreams, 1, 2**31 - 1)
        return cls(window=window, maxFrame=maxFrame, maxStreams=maxStreams)


def _bounded(info: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = info.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"HELLO setting {key}={value!r} is not an integer in {low}..{high}")
    return value


@frozen
class Keepalive:
    """
    Dead-peer detection: give up after C{interval * misses} seconds without
    hearing anything.

    One side keeps the tunnel alive: it sends a PING after C{interval}
    seconds of silence, and again every C{interval} while nothing comes
    back.  The other answers, and sends a PING of its own only to a peer
    silent for C{interval * (misses - 1)} seconds, a last probe before
    giving up: one PING and one PONG per interval instead of up to two of
    each, which is most of what ten thousand idle agents cost a server.

    The side that keeps it alive is the server when both ends say so in
    HELLO (a server that checks its tunnels with a C{KeepaliveSweep}: its
    PINGs leave in batches, and their PONGs come back in batches, a reactor
    wakeup for many instead of one each), else the agent (see
    C{Tunnel._keepsAlive}).
    """

    interval: float = 10.0
    misses: int = 3

    @property
    def deadline(self) -> float:
        return self.interval * self.misses


#: File descriptors an agent keeps for other things than streams' targets:
#: a tunnel per server replica, the meta listener and its clients, logs,
#: the reactor's own.  A stream costs one (its target connection).
FD_MARGIN = 64 + MAX_SERVERS

#: At most one log line per this many seconds when a budget refuses streams.
BUDGET_LOG_INTERVAL = 60.0


def openFileLimit() -> int | None:
    """This process's soft limit on open files (C{None}: no limit known)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class StreamBudget:
    """
    Limits on the streams peers open, shared by several tunnels: an agent
    holds one tunnel per server replica, and every replica may open
    C{max_streams} on its own, so a per-tunnel limit alone lets three
    replicas make the node hold three times what it can.

    Three limits, each refused with OPEN_FAIL C{TOO_MANY_STREAMS} and a
    text that says which:

     - C{maxStreams} streams at once across the tunnels;
     - the open-file limit less L{FD_MARGIN}: every stream holds a
       connection to its target, and running out of descriptors would
       fail everything else the process does (accepting, logging);
     - C{maxBufferBytes}: each stream reserves its receive window, the
       most its peer may send before the target reads (a target that never
       reads leaves exactly that much in our memory), so this bounds what
       streams can make the process hold, whatever the peers do.

    A refusal is logged at most once per L{BUDGET_LOG_INTERVAL} seconds
    (L{LogThrottle}: the next line says how many were left out).

    @ivar streams: streams admitted and not yet gone.
    @ivar reserved: bytes of window those streams reserve.
    @ivar refusals: opens refused, by limit (C{streams}, C{fds}, C{buffer}).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        maxStreams: int,
        maxBufferBytes: int,
        fileLimit: int | None = None,
    ) -> None:
        self.clock = clock
        self.maxStreams = maxStreams
        self.maxBufferBytes = maxBufferBytes
        self.fileLimit = fileLimit
        self.streams = 0
        self.reserved = 0
        self.refusals: Counter[str] = Counter()
        self._throttle = LogThrottle(clock, burst=1, interval=BUDGET_LOG_INTERVAL)

    @classmethod
    def forProcess(
        cls, clock: IReactorTime, *, maxStreams: int, maxBufferBytes: int
    ) -> StreamBudget:
        """
        A budget within this process's open-file limit (C{ulimit -n}, read
        once: a process cannot raise its own past the hard limit, and what
        it lowers it to is for it to know).  Says so once at start if that
        limit, not C{maxStreams}, is what bounds the streams.
        """
        budget = cls(
            clock,
            maxStreams=maxStreams,
            maxBufferBytes=maxBufferBytes,
            fileLimit=openFileLimit(),
        )
        fileStreams = budget.fileStreams
        if fileStreams is not None and fileStreams < maxStreams:
            cls.log.warn(
                "the open-file limit ({fileLimit}) leaves room for {fileStreams} streams, "
                "fewer than the {maxStreams} allowed; raise it (ulimit -n) to allow more",
                fileLimit=budget.fileLimit,
                fileStreams=fileStreams,
                maxStreams=maxStreams,
            )
        return budget

    @property
    def fileStreams(self) -> int | None:
        """How many streams the open-file limit leaves room for."""
        if self.fileLimit is None:
            return None
        return max(self.fileLimit - FD_MARGIN, 0)

    def streamLimit(self, window: int) -> int:
        """How many streams of C{window} bytes each fit in every limit."""
        limits = [self.maxStreams, self.maxBufferBytes // max(window, 1)]
        if self.fileStreams is not None:
            limits.append(self.fileStreams)
        return min(limits)

    def admit(self, window: int) -> str | None:
        """
        Take a stream that reserves C{window} bytes, or say why not.

        @return: C{None} if admitted (give it back with L{release}), else
            the refusal's text.
        """
        fileStreams = self.fileStreams
        if self.streams >= self.maxStreams:
            which = "streams"
            text = f"{self.streams} streams open, the limit across this agent's tunnels"
        elif fileStreams is not None and self.streams >= fileStreams:
            which = "fds"
            text = (
                f"{self.streams} streams open, all the open-file limit "
                f"({self.fileLimit}) leaves room for"
            )
        elif self.reserved + window > self.maxBufferBytes:
            which = "buffer"
            text = (
                f"{self.streams} streams open hold up to {self.reserved} bytes, and another "
                f"would pass the buffer limit of {self.maxBufferBytes}"
            )
        else:
            self.streams += 1
            self.reserved += window
            return None
        self.refusals[which] += 1
        self._logRefusal(which, text)
        return text

    def release(self, window: int) -> None:
        """A stream admitted with C{window} is gone."""
        self.streams -= 1
        self.reserved -= window

    def _logRefusal(self, which: str, text: str) -> None:
        self._throttle.emit(
            self.log, LogLevel.warn, "refusing new streams: {reason}", reason=text, limit=which
        )
