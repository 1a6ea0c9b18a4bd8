"""
Tests for L{twisted_tunnel.net.eager}: TCP transports that send small writes at
once, on real loopback sockets.

Whether a write went out at once is read off the reactor: a transport that
queued its bytes is registered as a writer until they are out.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IReactorPluggableNameResolver, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from tests.realnet import waitUntil
from tests.services import Echo, QuietFactory, RecordingClient, connectRecordingClient
from twisted_tunnel.net.eager import (
    EAGER_LIMIT,
    EagerClient,
    EagerPort,
    EagerServer,
    EagerTCPReactor,
)

DEADLINE = 10.0


class EagerTCPReactorTests(TestCase):
    def test_providesWhatTheReactorProvides(self) -> None:
        eager = EagerTCPReactor(reactor)
        for interface in (IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
            self.assertTrue(interface.providedBy(eager), interface)
        self.assertIs(eager.nameResolver, reactor.nameResolver)  # type: ignore[attr-defined]

    async def test_endpointsMakeEagerTransports(self) -> None:
        """
        C{serverFromString} and the client endpoints, given the wrapper,
        listen and connect with the eager classes.
        """
        eager = EagerTCPReactor(reactor)
        accepted: list[Protocol] = []

        def build() -> Protocol:
            protocol = Echo()
            accepted.append(protocol)
            return protocol

        endpoint = serverFromString(eager, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(QuietFactory(build))
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, EagerPort)
        number = port.getHost().port
        for clientEndpoint in (
            TCP4ClientEndpoint(eager, "127.0.0.1", number),
            HostnameEndpoint(eager, b"127.0.0.1", number),
        ):
            client = RecordingClient()
            await clientEndpoint.connect(QuietFactory(lambda client=client: client))
            self.assertIsInstance(client.transport, EagerClient)
            assert client.transport is not None
            client.transport.loseConnection()
            await client.lost
        self.assertTrue(accepted)
        self.assertTrue(all(isinstance(p.transport, EagerServer) for p in accepted))


class SendAtOnceTests(TestCase):
    async def connectedPair(self) -> tuple[EagerClient, RecordingClient]:
        """An eager client connection and the recording far end it talks to."""
        eager = EagerTCPReactor(reactor)
        receiver: list[RecordingClient] = []

        def build() -> RecordingClient:
            receiver.append(RecordingClient())
            return receiver[-1]

        port = eager.listenTCP(0, QuietFactory(build), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sender = await connectRecordingClient(self, port.getHost().port, reactor=eager)
        await waitUntil(lambda: bool(receiver), DEADLINE, "the connection to be accepted")
        assert isinstance(sender.transport, EagerClient)
        self.addCleanup(lambda: receiver[0].transport and receiver[0].transport.abortConnection())  # type: ignore[attr-defined]
        return sender.transport, receiver[0]

    async def test_smallWriteLeavesAtOnce(self) -> None:
        transport, receiver = await self.connectedPair()
        transport.write(b"ping")
        self.assertNotIn(transport, reactor.getWriters())
        await waitUntil(lambda: receiver.received == b"ping", DEADLINE, "the bytes")

    async def test_largeWriteIsQueued(self) -> None:
        """
        A write over the limit takes Twisted's path (queued until the socket
        is writable), and a small one behind it waits its turn.
        """
        transport, receiver = await self.connectedPair()
        big = bytes(range(256)) * ((EAGER_LIMIT // 256) + 1)
        transport.write(big)
        self.assertIn(transport, reactor.getWriters())
        transport.write(b"after")
        await waitUntil(lambda: len(receiver.received) >= len(big) + 5, DEADLINE, "all the bytes")
        self.assertEqual(receiver.received, big + b"after")
        self.assertNotIn(transport, reactor.getWriters())

    async def test_fullSocketBuffersTheRest(self) -> None:
        """
        When the kernel takes only part of the bytes (its buffer is full
        because the far end does not read), the rest is queued, in order,
        and reading again delivers everything.
        """
        transport, receiver = await self.connectedPair()
        assert receiver.transport is not None
        receiver.transport.pauseProducing()  # type: ignore[attr-defined]
        chunks = [bytes([i % 251]) * 4096 for i in range(2048)]  # 8 MiB, far beyond the buffers
        for chunk in chunks:
            transport.write(chunk)
        self.assertIn(transport, reactor.getWriters())
        receiver.transport.resumeProducing()  # type: ignore[attr-defined]
        total = sum(map(len, chunks))
        await waitUntil(lambda: len(receiver.received) >= total, DEADLINE, "all 8 MiB")
        self.assertEqual(receiver.received, b"".join(chunks))

    async def test_writeSequence(self) -> None:
        transport, receiver = await self.connectedPair()
        transport.writeSequence([b"a", b"b", b"c"])
        self.assertNotIn(transport, reactor.getWriters())
        await waitUntil(lambda: receiver.received == b"abc", DEADLINE, "the bytes")
