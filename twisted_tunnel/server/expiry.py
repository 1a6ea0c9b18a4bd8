# -*- test-case-name: tests.server.test_expiry,tests.server.test_security_identity -*-
"""
Closing an agent's tunnel when its certificate expires (L{CertificateExpiry}).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..wire import ErrorCode

if TYPE_CHECKING:
    from ..mux import Tunnel
    from . import AgentRecord


class CertificateExpiry:
    """
    Closes each agent's tunnel when its certificate chain expires: the
    handshake proved the agent's identity only for the chain's validity,
    and a tunnel may outlive it by months.

    One reactor timer serves every agent, due at the earliest expiry.  A
    timer per agent put ten thousand C{IDelayedCall}s into the reactor's
    heap, and every other C{callLater} of the server (each a push and a pop
    through that heap, a Python comparison at each level) paid for their
    number.  The expiries wait here instead, in a heap of C{(when, ticket)}
    entries: a tunnel that goes away only drops its ticket, and its entry
    is skipped when it comes up (or swept out when such entries outnumber
    the live ones, so that agents that come and go do not grow the heap).
    """

    def __init__(self, clock: IReactorTime, log: Logger) -> None:
        self.clock = clock
        self.log = log
        self._heap: list[tuple[float, int]] = []
        self._records: dict[int, AgentRecord] = {}  # by ticket
        self._tickets: dict[Tunnel, int] = {}
        self._nextTicket = count()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        """How many tunnels are watched."""
        return len(self._tickets)

    def watch(self, record: AgentRecord) -> None:
        """Close C{record}'s tunnel when its certificate chain expires."""
        expires = record.identity.expires() if record.identity is not None else None
        if expires is None:
            return
        self.forget(record.tunnel)
        ticket = next(self._nextTicket)
        self._tickets[record.tunnel] = ticket
        self._records[ticket] = record
        when = expires.timestamp()
        heapq.heappush(self._heap, (when, ticket))
        if self._heap[0][1] == ticket:
            self._schedule()

    def forget(self, tunnel: Tunnel) -> None:
        """C{tunnel} is gone: drop its expiry."""
        ticket = self._tickets.pop(tunnel, None)
        if ticket is None:
            return
        del self._records[ticket]
        if not self._records:
            self._heap.clear()
            self._schedule()
        elif len(self._heap) > 2 * len(self._records) + 64:
            self._heap = [entry for entry in self._heap if entry[1] in self._records]
            heapq.heapify(self._heap)

    def _schedule(self) -> None:
        """Set the one timer to the earliest expiry (or none)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._call = None
        # a millisecond's slack: the timer's own arithmetic may fire it an
        # ulp before the expiry it was set for, and a timer set again for
        # that ulp would never get past it
        now = self.clock.seconds() + 0.001
        expired = []
        while self._heap and self._heap[0][0] <= now:
            _, ticket = heapq.heappop(self._heap)
            record = self._records.pop(ticket, None)
            if record is not None:
                del self._tickets[record.tunnel]
                expired.append(record)
        self._schedule()
        for record in expired:
            self._expired(record)

    def _expired(self, record: AgentRecord) -> None:
        expires = record.identity.expires() if record.identity is not None else None
        when = f"{expires:%Y-%m-%d %H:%M:%S}Z" if expires is not None else "now"
        self.log.warn(
            "agent {node}: closing its tunnel: its certificate expired at {when}",
            node=record.node,
            when=when,
        )
        record.tunnel.close(ErrorCode.UNAUTHORIZED, f"the agent's certificate expired at {when}")
