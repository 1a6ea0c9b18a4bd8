# -*- test-case-name: tests.mux.test_mux -*-
"""
One timer that checks every tunnel's keepalive (L{KeepaliveSweep}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)

if TYPE_CHECKING:
    from .tunnel import Tunnel


class KeepaliveSweep:
    """
    One timer for the keepalive of many tunnels, instead of one each.

    A server holds a tunnel per edge node.  With a timer per tunnel, ten
    thousand idle agents kept ten thousand C{IDelayedCall}s in the
    reactor's heap and rescheduled one every millisecond: a quarter of an
    idle server's CPU (C{bench/agents.py}).  The sweep looks at every
    tunnel once per C{period} instead, so a dead peer is found between
    C{deadline} and C{deadline + period} seconds after it fell silent.

    A sweep that runs more than a period late judges nobody dead that
    round: the reactor was stalled, and the silence it would see is its
    own (the peers' bytes are waiting to be read).
    """

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self.clock = clock
        self.period = period
        self._tunnels: set[Tunnel] = set()
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def __len__(self) -> int:
        return len(self._tunnels)

    def add(self, tunnel: Tunnel) -> None:
        self._tunnels.add(tunnel)
        if self._call is None:
            self._schedule()

    def discard(self, tunnel: Tunnel) -> None:
        self._tunnels.discard(tunnel)
        if not self._tunnels and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.period
        self._call = self.clock.callLater(self.period, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        judge = now - self._due <= self.period
        for tunnel in list(self._tunnels):
            if now - tunnel.lastReceived < tunnel.keepalive.interval:
                # heard from within an interval: nothing can be due yet (the
                # common case, kept to a comparison for ten thousand tunnels)
                continue
            tunnel.checkKeepalive(judge=judge)
        if self._tunnels and self._call is None:
            self._schedule()
