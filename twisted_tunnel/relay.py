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

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._transports import pushProducer
from .mux import noDelay


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
        self._writeClosed = False
        self._lostBeforeSplice: Failure | None = None
        self.spliced = False

    def connectionMade(self) -> None:
        noDelay(self.transport)
        peer = self.peer
        if peer is not None and peer._lostBeforeSplice is not None:
            # the other end came and went before we connected: pass on what
            # it said and how it ended, rather than wait for it forever
            self.peer = None
            early, peer._early = peer._early, []
            for data in early:
                self.transport.write(data)  # type: ignore[union-attr]
            _end(self.transport, peer._lostBeforeSplice)
        elif peer is not None and peer.connected:
            splice(self, peer)
        else:
            pushProducer(self.transport).pauseProducing()

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
        self._closeIfShut()

    def writeConnectionLost(self) -> None:
        self._writeClosed = True
        self._closeIfShut()

    def _closeIfShut(self) -> None:
        # TCP does not close a connection whose two halves are shut: we must
        if self._readClosed and self._writeClosed and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.connected = False
        peer, self.peer = self.peer, None
        if not self.spliced:
            self._lostBeforeSplice = reason
        if peer is None or not peer.connected or peer.transport is None:
            return
        peer.peer = None
        transport = peer.transport
        transport.unregisterProducer()  # type: ignore[attr-defined]
        _end(transport, reason)


def splice(a: RelayProtocol, b: RelayProtocol) -> None:
    """
    Join two connected relay ends: from now on each forwards to the other,
    each transport is the other's producer, and both are reading.
    """
    a.peer, b.peer = b, a
    a.spliced = b.spliced = True
    assert a.transport is not None and b.transport is not None
    a.transport.registerProducer(_Reading(b.transport), True)  # type: ignore[attr-defined]
    b.transport.registerProducer(_Reading(a.transport), True)  # type: ignore[attr-defined]
    for this, other in ((a, b), (b, a)):
        early, this._early = this._early, []
        for data in early:
            other.transport.write(data)  # type: ignore[union-attr]
        if this._readClosed:
            halfClose(other.transport)
    for end in (a, b):
        if end.connected and end.transport is not None:
            pushProducer(end.transport).resumeProducing()


def halfClose(transport: ITransport | None) -> None:
    """
    Pass an EOF on: half-close when the transport can (TCP, streams), or
    close once its buffer is flushed when it cannot (TLS has no half-close).

    The method is looked up on the class: C{TLSMemoryBIOProtocol} passes
    unknown attributes on to the TCP transport under it, and a TCP
    half-close there would end the TLS session without its C{close_notify}.
    """
    if transport is None:
        return
    if getattr(type(transport), "loseWriteConnection", None) is not None:
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()


def _end(transport: Any, reason: Failure) -> None:
    """
    End C{transport} the way its peer ended: close after an orderly end,
    abort after anything else.
    """
    if reason.check(ConnectionDone) or not hasattr(transport, "abortConnection"):
        transport.loseConnection()
    else:
        transport.abortConnection()


@implementer(IPushProducer)
class _Reading:
    """
    The reading side of one end, registered as the producer of the other
    end's transport.

    It passes pause and resume on, but not C{stopProducing}: a transport
    that is lost stops its producer I{before} its protocol hears why, and a
    transport's C{stopProducing} is an orderly C{loseConnection}, which
    would turn an abort into a clean close on the other side.  How the other
    side ends is for L{RelayProtocol.connectionLost} to decide.
    """

    def __init__(self, transport: object) -> None:
        self._transport = pushProducer(transport)

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass
