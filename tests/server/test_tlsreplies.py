"""
L{ReplyingTLSFactory}: a reply written while a read is handled leaves with
that read, other writes leave together at the next turn, in order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI
from twisted_tunnel.server.tlsreplies import MAX_HELD, ReplyingTLSFactory
from twisted_tunnel.tls import agentOptions, serverOptions

pki = TestPKI()


class Answering(Protocol):
    """Answers every read with C{<data>!}, in two writes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        self.transport.write(b"!")  # type: ignore[union-attr]


class Collecting(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ReplyingTLSTests(SynchronousTestCase):
    def connect(self, count: int = 1) -> tuple[Clock, Any, list[Any]]:
        clock = Clock()
        server = ReplyingTLSFactory(
            serverOptions(pki.credentials(pki.server)),
            False,
            Factory.forProtocol(Answering),
            clock,
        )
        client = TLSMemoryBIOFactory(
            agentOptions(pki.credentials(pki.agent("edge-1")), "127.0.0.1"),
            True,
            Factory.forProtocol(Collecting),
            clock,
        )
        pairs = []
        for _ in range(count):
            clientTLS, serverTLS, pump = connectedServerAndClient(
                lambda: server.buildProtocol(None), lambda: client.buildProtocol(None)
            )
            pump.flush()
            pairs.append((serverTLS, clientTLS, pump))
        return clock, server, pairs

    def test_replyLeavesWithTheRead(self) -> None:
        """
        What the protocol writes while it handles a read reaches the peer
        without the clock moving: no timer, no second reactor turn.
        """
        clock, _, [(serverTLS, clientTLS, pump)] = self.connect()
        clientTLS.write(b"ping")
        clock.advance(0)  # the client's own (Twisted's) buffering
        self.assertEqual(clock.getDelayedCalls(), [])
        pump.flush()
        self.assertEqual(clientTLS.wrappedProtocol.received, b"ping!")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_otherWritesWaitForOneTurnTogether(self) -> None:
        """
        Writes outside a read, on any number of connections, are held under
        one timer and leave, in order, at the next turn.
        """
        clock, _, pairs = self.connect(3)
        for serverTLS, _, _ in pairs:
            serverTLS.write(b"a")
            serverTLS.write(b"b")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        for _, clientTLS, pump in pairs:
            pump.flush()
            self.assertEqual(clientTLS.wrappedProtocol.received, b"")
        clock.advance(0)
        for _, clientTLS, pump in pairs:
            pump.flush()
            self.assertEqual(clientTLS.wrappedProtocol.received, b"ab")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_heldBytesBounded(self) -> None:
        """Past L{MAX_HELD} held bytes, they are sent at once."""
        clock, _, [(serverTLS, clientTLS, pump)] = self.connect()
        serverTLS.write(b"x" * (MAX_HELD + 1))
        pump.flush()
        self.assertEqual(len(clientTLS.wrappedProtocol.received), MAX_HELD + 1)

    def test_loseConnectionSendsWhatIsHeld(self) -> None:
        clock, _, [(serverTLS, clientTLS, pump)] = self.connect()
        collecting = clientTLS.wrappedProtocol
        serverTLS.write(b"last words")
        serverTLS.loseConnection()
        pump.flush()
        clock.advance(0)
        pump.flush()
        self.assertEqual(collecting.received, b"last words")
