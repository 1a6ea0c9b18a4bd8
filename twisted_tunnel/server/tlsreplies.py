# -*- test-case-name: tests.server.test_tlsreplies -*-
"""
TLS for agents' tunnels that answers within the read that asked, and sends
everything else written in a reactor turn together (L{ReplyingTLSFactory}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

#: Held bytes past this many are written at once (as Twisted's own
#: aggregator does, so that a burst of frames does not pile up in memory).
MAX_HELD = 64_000


class ReplyingTLSProtocol(TLSMemoryBIOProtocol):
    """
    A TLS layer that joins small writes into one TLS record, like Twisted's
    C{BufferingTLSTransport}, but sends what was written while a read was
    handled at the end of that read, and what was written outside a read
    at the next reactor turn with the other connections' (one timer for
    all of them, L{ReplyingTLSFactory}).

    Nearly everything an idle agent makes its server do is keepalive.
    Twisted's buffering holds each PONG for a C{callLater(0)} of its own: a
    C{IDelayedCall} made and pushed into the reactor's timer heap, and a
    second turn of the reactor loop (another C{epoll_wait}) to send it.
    Here a PONG leaves when the read that carried the PING is done, in the
    same turn, and the PINGs a server's keepalive sweep sends to hundreds
    of agents at once leave at the next turn under one timer.  Frames
    written outside a read (a stream's data, read from another connection)
    are still joined until the next turn, so bulk transfers keep their
    large records.

    Order is kept: held bytes, from a read or not, leave in the order they
    were written, as one buffer.
    """

    def __init__(
        self,
        factory: ReplyingTLSFactory,
        wrappedProtocol: Any,
        _connectWrapped: bool = True,
    ) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._replying = factory
        self._held: list[bytes] = []
        self._heldBytes = 0
        self._reading = False
        self._queued = False  # in the factory's list for the next turn
        self._gone = False

    def write(self, data: bytes) -> None:
        if self._gone:
            return
        self._held.append(bytes(data))
        self._heldBytes += len(data)
        if self._heldBytes > MAX_HELD:
            self.flush()
        elif not self._reading and not self._queued:
            self._queued = True
            self._replying.flushSoon(self)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def dataReceived(self, data: bytes) -> None:
        self._reading = True
        try:
            super().dataReceived(data)
        finally:
            self._reading = False
        if self._held:
            self.flush()

    def flush(self) -> None:
        """Send what is held now."""
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._heldBytes = 0
            TLSMemoryBIOProtocol.write(self, data)

    def loseConnection(self) -> None:
        self.flush()
        super().loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.flush()
        self._gone = True
        super().connectionLost(reason)


class ReplyingTLSFactory(TLSMemoryBIOFactory):
    """
    A C{TLSMemoryBIOFactory} whose connections are L{ReplyingTLSProtocol}s,
    with one timer that sends what they wrote outside a read.
    """

    protocol = ReplyingTLSProtocol

    def __init__(
        self,
        contextFactory: Any,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
    ) -> None:
        super().__init__(contextFactory, isClient, wrappedFactory, clock)
        self.clock = clock
        self._waiting: list[ReplyingTLSProtocol] = []
        self._call: IDelayedCall | None = None

    def flushSoon(self, protocol: ReplyingTLSProtocol) -> None:
        """Send what C{protocol} holds at the next reactor turn."""
        self._waiting.append(protocol)
        if self._call is None:
            self._call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, []
        for protocol in waiting:
            protocol._queued = False
            protocol.flush()
