# -*- test-case-name: tests.test_relay -*-
"""
Relaying bytes between two connections with back-pressure both ways.

This is C{twisted.protocols.portforward} grown up: each side is paused
until the other is connected, then each transport is registered as the
other's producer, so a slow reader on either side slows the writer on the
other and nothing is buffered without bound; half-closes (EOF) travel
across, and an abortive end on one side aborts the other.

Either side may be a TCP connection, a TLS connection or a tunnel
L{Stream<twisted_tunnel.mux.Stream>}: all are ordinary transports.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    One end of a relay.

    Built with the other end as C{peer} when that end is already connected
    (then the two are spliced as soon as this one connects); otherwise it
    waits, paused, for L{splice}.
    """

    def __init__(self, peer: RelayProtocol | None = None) -> None:
        self.peer = peer
        self._early: list[bytes] = []
        self._readClosed = False
        self.spliced = False

    def connectionMade(self) -> None:
        peer = self.peer
        if peer is not None and peer.connected:
            splice(self, peer)
        else:
            _producer(self.transport).pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.spliced and self.peer is not None:
            self.peer.transport.write(data)  # type: ignore[union-attr]
        else:
            # a transport may deliver what it had already read when paused
            self._early.append(data)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if self.spliced and self.peer is not None:
            halfClose(self.peer.transport)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        peer, self.peer = self.peer, None
        if peer is None or not peer.connected or peer.transport is None:
            return
        peer.peer = None
        transport = peer.transport
        transport.unregisterProducer()  # type: ignore[attr-defined]
        if reason.check(ConnectionDone) or not hasattr(transport, "abortConnection"):
            transport.loseConnection()
        else:
            transport.abortConnection()


def splice(a: RelayProtocol, b: RelayProtocol) -> None:
    """
    Join two connected relay ends: from now on each forwards to the other,
    each transport is the other's producer, and both are reading.
    """
    a.peer, b.peer = b, a
    a.spliced = b.spliced = True
    assert a.transport is not None and b.transport is not None
    a.transport.registerProducer(_producer(b.transport), True)  # type: ignore[attr-defined]
    b.transport.registerProducer(_producer(a.transport), True)  # type: ignore[attr-defined]
    for this, other in ((a, b), (b, a)):
        early, this._early = this._early, []
        for data in early:
            other.transport.write(data)  # type: ignore[union-attr]
        if this._readClosed:
            halfClose(other.transport)
    for end in (a, b):
        if end.connected and end.transport is not None:
            _producer(end.transport).resumeProducing()


def halfClose(transport: ITransport | None) -> None:
    """
    Pass an EOF on: half-close when the transport can (TCP, streams), or
    close once its buffer is flushed when it cannot (TLS has no half-close).
    """
    if transport is None:
        return
    loseWrite = getattr(transport, "loseWriteConnection", None)
    if loseWrite is not None:
        loseWrite()
    else:
        transport.loseConnection()


def _producer(transport: object) -> IPushProducer:
    # TCP, TLS and stream transports are all push producers, though not
    # all of them declare it.
    return transport  # type: ignore[return-value]
