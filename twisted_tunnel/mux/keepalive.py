# -*- test-case-name: tests.mux.test_keepalive,tests.mux.test_mux -*-
"""
One timer that keeps the keepalive of many tunnels (L{KeepaliveSweep}).
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)

if TYPE_CHECKING:
    from .tunnel import Tunnel

#: The HELLO info key, and its value, with which a server says that it
#: sends the PINGs, so that its agents need only probe (see
#: L{Tunnel._keepsAlive}).
KEEPALIVE_INFO = "keepalive"
SERVER_KEEPS_ALIVE = "server"

#: A server's sweep cuts each keepalive interval into this many slots (a
#: quarter second at the default 10 s).  More slots: fewer PINGs per slot
#: (the reactor is busy for less time at once: about 250 PINGs, a few
#: milliseconds, every quarter second with 10,000 agents) and a dead peer
#: found closer to the deadline; fewer: more PONGs to each wakeup.
SWEEP_SLOTS = 40


class KeepaliveSweep:
    """
    One timer for the keepalive of many tunnels, instead of one each.

    A server holds a tunnel per edge node.  With a timer per tunnel, ten
    thousand idle agents kept ten thousand C{IDelayedCall}s in the
    reactor's heap and rescheduled one every millisecond: a quarter of an
    idle server's CPU (C{bench/agents.py}).

    Time is cut into slots of C{period} seconds, and each tunnel waits in
    the slot of the moment something may next be due for it (a PING, or
    its deadline): at the earliest C{interval} after it last heard from
    its peer.  The one timer fires once per slot that holds tunnels; each
    tunnel is looked at about once per C{interval}, however short the
    period, and one heard from since it was filed is only filed again.  So
    a dead peer is found between C{deadline} and C{deadline + period}
    seconds after it fell silent, and the PINGs that fall due in one slot
    leave together: their PONGs come back together, and the reactor wakes
    once for many of them instead of once each (see L{Tunnel.checkKeepalive}
    for who pings).

    A slot handled more than a period late judges nobody dead: the
    reactor was stalled, and the silence it would see is its own (the
    peers' bytes are waiting to be read).  Its tunnels are looked at again
    in the next slot.
    """

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self.clock = clock
        self.period = period
        #: slot number -> its tunnels (a dict as an ordered set)
        self._slots: dict[int, dict[Tunnel, None]] = {}
        self._slotOf: dict[Tunnel, int] = {}
        self._keys: list[int] = []  # the slot numbers that hold tunnels, a heap
        self._next = 0  # the first slot not handled yet
        self._call: IDelayedCall | None = None
        self._callSlot: int | None = None

    def __len__(self) -> int:
        return len(self._slotOf)

    def add(self, tunnel: Tunnel) -> None:
        self.discard(tunnel)
        self._file(tunnel, tunnel.lastReceived + tunnel.keepalive.interval)
        self._schedule()

    def discard(self, tunnel: Tunnel) -> None:
        slot = self._slotOf.pop(tunnel, None)
        # a slot being swept is out of _slots already: the sweep skips the
        # tunnels it no longer files there
        tunnels = self._slots.get(slot) if slot is not None else None
        if tunnels is not None:
            del tunnels[tunnel]
            if not tunnels:
                del self._slots[slot]  # type: ignore[arg-type]  # its number stays in the heap, skipped
        if not self._slotOf:
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = self._callSlot = None
            self._keys.clear()

    def _file(self, tunnel: Tunnel, when: float) -> None:
        """Put C{tunnel} in the first slot not before C{when} (and not handled yet)."""
        slot = max(math.ceil(when / self.period), self._next)
        tunnels = self._slots.get(slot)
        if tunnels is None:
            tunnels = self._slots[slot] = {}
            heapq.heappush(self._keys, slot)
        tunnels[tunnel] = None
        self._slotOf[tunnel] = slot

    def _schedule(self) -> None:
        """Set the timer for the first slot that holds tunnels."""
        keys = self._keys
        while keys and keys[0] not in self._slots:
            heapq.heappop(keys)
        if not keys:
            return
        if self._call is not None and self._call.active():
            if self._callSlot is not None and self._callSlot <= keys[0]:
                return
            self._call.cancel()
        self._callSlot = keys[0]
        delay = max(keys[0] * self.period - self.clock.seconds(), 0.0)
        self._call = self.clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._call = self._callSlot = None
        now = self.clock.seconds()
        # the last slot due by now (a hair of slack for the clock's arithmetic)
        last = math.floor(now / self.period + 1e-9)
        keys, slots = self._keys, self._slots
        due: list[tuple[int, dict[Tunnel, None]]] = []
        while keys and keys[0] <= last:
            slot = heapq.heappop(keys)
            tunnels = slots.pop(slot, None)
            if tunnels is not None:
                due.append((slot, tunnels))
        self._next = last + 1  # whatever is filed from here on waits for a later slot
        slotOf = self._slotOf
        for slot, tunnels in due:
            judge = now - slot * self.period <= self.period
            for tunnel in tunnels:
                if slotOf.get(tunnel) != slot:
                    continue  # gone (closed by an earlier check in this sweep)
                del slotOf[tunnel]
                heard = tunnel.lastReceived + tunnel.keepalive.interval
                if heard > now:
                    # heard from since it was filed (the common case for a
                    # tunnel with traffic): nothing can be due before then
                    self._file(tunnel, heard)
                    continue
                delay = tunnel.checkKeepalive(judge=judge)
                if delay is not None:
                    self._file(tunnel, now + delay)
        self._schedule()
