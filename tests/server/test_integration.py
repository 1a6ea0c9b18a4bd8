"""
Integration tests: a L{TunnelServer} and L{TunnelAgent}s in one process, on
real loopback sockets, with real mutual TLS, reaching real TCP services.

What is checked here is what only the whole assembly shows: many streams
arriving byte-exact both ways at once, one stalled reader holding no more
than its window while the other streams go on, the refusals of agents that
are not who they claim to be (with the reason in the logs), and the agent's
allowlist.
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.pki import TestPKI
from tests.realnet import waitUntil
from tests.services import OneProtocolFactory, listenAndAbortAtCleanup
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.errors import NodeNotConnected, StreamOpenFailed
from twisted_tunnel.mux import Keepalive, Settings, Stream, Tunnel
from twisted_tunnel.net import sockets
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import Credentials
from twisted_tunnel.wire import ErrorCode, OpenFailReason

pki = TestPKI()

KiB = 1024
MiB = 1024 * KiB

#: Random bytes every payload is cut from (cyclically): cheap to make and to check.
BLOB = random.Random(20261126).randbytes(8 * MiB)

#: How much one write hands a transport.
CHUNK = 64 * KiB

#: A small window, so that "at most one window per stream" is easy to see.
SMALL = Settings(window=256 * KiB)

#: How long anything that should be quick may take before the test gives up.
DEADLINE = 20.0


def neverRetry(attempt: int) -> float:
    """An agent that fails stays down for the rest of the test."""
    return 3600.0


def chunks(offset: int, size: int) -> Iterator[bytes]:
    """C{size} bytes of L{BLOB} from C{offset} on (wrapping round), in pieces."""
    position = offset % len(BLOB)
    left = size
    while left:
        piece = BLOB[position : position + min(CHUNK, left)]
        yield piece
        left -= len(piece)
        position = (position + len(piece)) % len(BLOB)


def digest(offset: int, size: int) -> bytes:
    """The SHA-256 of what L{chunks} gives."""
    h = hashlib.sha256()
    for piece in chunks(offset, size):
        h.update(piece)
    return h.digest()


@implementer(IPushProducer)
class Sender:
    """
    Writes a payload into a transport as fast as the transport's push-back
    allows (it is the transport's registered producer), then calls C{done}.

    @ivar pauses: how often the transport pushed back.
    """

    def __init__(self, transport: Any, offset: int, size: int, done: Callable[[], None]) -> None:
        self.transport = transport
        self.size = size
        self.sent = 0
        self.pauses = 0
        self.finished = False
        self._pieces = chunks(offset, size)
        self._done = done
        self._paused = False
        self._stopped = False
        self._writing = False
        transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._writing:
            return
        self._writing = True
        try:
            while not (self._paused or self._stopped or self.finished):
                piece = next(self._pieces, None)
                if piece is None:
                    self.finished = True
                    self.transport.unregisterProducer()
                    self._done()
                    return
                self.sent += len(piece)
                self.transport.write(piece)
        finally:
            self._writing = False

    def stopProducing(self) -> None:
        self._stopped = True


HEADER = struct.Struct("!QQ")


@implementer(IHalfCloseableProtocol)
class ExchangeService(Protocol):
    """
    The edge service: reads a header (C{offset}, C{size}), sends back C{size}
    bytes of L{BLOB} from C{offset}, hashes everything else it receives until
    EOF, and ends with the SHA-256 of it once both directions are done.
    """

    factory: ExchangeServiceFactory

    def __init__(self) -> None:
        self.header = b""
        self.hash = hashlib.sha256()
        self.received = 0
        self.sender: Sender | None = None
        self.gotEof = False
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.sender is None:
            self.header += data
            if len(self.header) < HEADER.size:
                return
            data = self.header[HEADER.size :]
            offset, size = HEADER.unpack(self.header[: HEADER.size])
            self.sender = Sender(self.transport, offset, size, self._finish)
            self.sender.resumeProducing()
        self.hash.update(data)
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self.gotEof = True
        self._finish()

    def writeConnectionLost(self) -> None:
        pass

    def _finish(self) -> None:
        if self.gotEof and self.sender is not None and self.sender.finished:
            assert self.transport is not None
            self.transport.write(self.hash.digest())
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


class ExchangeServiceFactory(Factory):
    protocol = ExchangeService
    noisy = False

    def __init__(self) -> None:
        self.connections: list[ExchangeService] = []


@implementer(IHalfCloseableProtocol)
class ExchangeClient(Protocol):
    """
    The client end of one stream: asks the edge for C{downSize} bytes from
    C{downOffset}, uploads C{upSize} bytes from C{upOffset} and half-closes,
    then checks what came back: the download, then the SHA-256 of the upload.

    C{done} fires with L{None} when all of it arrived intact, and fails otherwise.
    """

    def __init__(
        self,
        upOffset: int = 0,
        upSize: int = 0,
        downOffset: int = 0,
        downSize: int = 0,
        *,
        stalled: bool = False,
    ) -> None:
        self.upOffset, self.upSize = upOffset, upSize
        self.downOffset, self.downSize = downOffset, downSize
        self.stalled = stalled
        self.received = 0
        self.hash = hashlib.sha256()
        self.tail = b""
        self.lost: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.stalled:
            # A reader that stopped reading: it never asks for more.
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(HEADER.pack(self.downOffset, self.downSize))
        sender = Sender(self.transport, self.upOffset, self.upSize, self._uploaded)
        sender.resumeProducing()

    def _uploaded(self) -> None:
        self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        wanted = self.downSize - self.received
        self.hash.update(data[:wanted])
        self.received += min(wanted, len(data))
        self.tail += data[wanted:]

    def readConnectionLost(self) -> None:
        pass

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason
        problems = []
        if not reason.check(ConnectionDone):
            problems.append(f"stream ended with {reason.getErrorMessage()}")
        if self.received != self.downSize:
            problems.append(f"received {self.received} bytes of {self.downSize}")
        elif self.hash.digest() != digest(self.downOffset, self.downSize):
            problems.append("the download is corrupt")
        if self.tail != digest(self.upOffset, self.upSize):
            problems.append(f"the edge got another upload (its SHA-256: {self.tail.hex()})")
        if problems:
            self.done.errback(AssertionError("; ".join(problems)))
        else:
            self.done.callback(None)


def logText(event: dict[str, Any]) -> str:
    return formatEvent(event)


def serverEvents(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events the server's side logged (all ends share one process)."""
    found = []
    for event in events:
        source = event.get("log_source")
        namespace = event.get("log_namespace", "")
        if isinstance(source, Tunnel):
            if not source.isClient:
                found.append(event)
        elif namespace.startswith(("twisted_tunnel.server", "twisted.protocols.tls")):
            found.append(event)
    return found


class TunnelTestCase(TestCase):
    """Starts servers, agents and edge services, and cleans all of them up."""

    def captureLogs(self) -> list[dict[str, Any]]:
        """Every log event from now until the test ends."""
        events: list[dict[str, Any]] = []
        observer = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    def startServer(self, settings: Settings = Settings()) -> tuple[TunnelServer, int]:
        """A server listening for agents on 127.0.0.1; returns it and its port."""
        server = TunnelServer(reactor, pki.credentials(pki.server), settings=settings)
        port = reactor.listenTCP(0, server.tunnelFactory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return server, port.getHost().port

    def startAgent(
        self,
        serverPort: int,
        node: str = "edge-1",
        ips: tuple[str, ...] = (),
        *,
        credentials: Credentials | None = None,
        settings: Settings = Settings(),
    ) -> TunnelAgent:
        """
        Start an agent for C{node} (with the certificate for C{node} and
        C{ips}, which proves them, unless C{credentials} says otherwise);
        it does not retry if it fails.
        """
        agent = TunnelAgent(
            reactor,
            credentials or pki.credentials(pki.agent(node, ips)),
            ("127.0.0.1", serverPort),
            node,
            ips,
            settings=settings,
            retryPolicy=neverRetry,
        )
        agent.startService()
        self.addCleanup(self.stopAgent, agent)
        return agent

    async def stopAgent(self, agent: TunnelAgent) -> None:
        """
        Stop C{agent} and wait until its connection is gone.

        Its tunnel is closed first, by hand: C{TunnelAgent.stopService}
        alone never ends a TLS connection (see
        L{AgentServiceTests.test_stopServiceEndsTheTunnel}).
        """
        if not agent.running:
            return
        current: list[Any] = []
        agent.whenConnected().addCallbacks(current.append, lambda failure: None)
        for tunnel in current:
            tunnel.close(ErrorCode.SHUTTING_DOWN, "the test is over")
        stopped = agent.stopService()
        if stopped is not None:
            await stopped

    async def connectedAgent(self, serverPort: int, *args: Any, **kwargs: Any) -> Tunnel:
        """Start an agent (as L{startAgent}) and wait until its tunnel is up."""
        tunnel = await self.attempt(self.startAgent(serverPort, *args, **kwargs))
        if isinstance(tunnel, Failure):
            tunnel.raiseException()
        assert isinstance(tunnel, Tunnel)
        return tunnel

    def listenEdge(self, interface: str = "127.0.0.1") -> tuple[ExchangeServiceFactory, int]:
        """An edge service on C{interface}; its connections are aborted at the end."""
        factory = ExchangeServiceFactory()
        return factory, listenAndAbortAtCleanup(self, factory, interface)

    def openStream(
        self, server: TunnelServer, port: int, client: ExchangeClient, node: str = "edge-1"
    ) -> Deferred[ExchangeClient]:
        """Connect C{client} to C{port} on C{node}; it is aborted at the end if still open."""

        def abort() -> None:
            if client.lost is None and client.transport is not None:
                client.done.addErrback(lambda failure: None)
                client.transport.abortConnection()  # type: ignore[attr-defined]

        def connected(protocol: Any) -> ExchangeClient:
            assert protocol is client
            self.addCleanup(abort)
            return client

        endpoint = server.endpointForNode(node, port)
        return endpoint.connect(OneProtocolFactory(client)).addCallback(connected)

    async def attempt(self, agent: TunnelAgent) -> Failure | Tunnel:
        """
        The outcome of C{agent}'s first attempt to connect: its tunnel, or
        why it failed.
        """
        outcome: list[Failure | Tunnel] = []
        agent.whenConnected(failAfterFailures=1).addBoth(outcome.append)
        await waitUntil(lambda: bool(outcome), DEADLINE, "the agent's first attempt")
        # whenConnected fires from inside ClientService's state machine:
        # stopping the agent right away (say, the test ends) would re-enter
        # it and raise.  Let that transition finish first.
        await deferLater(reactor, 0, lambda: None)
        return outcome[0]


class AgentServiceTests(TunnelTestCase):
    async def test_stopServiceEndsTheTunnel(self) -> None:
        """
        Stopping the agent service ends its connection to the server
        (promptly: there is nothing to wait for), and the server forgets
        the node.
        """
        server, serverPort = self.startServer()
        agent = self.startAgent(serverPort)
        tunnel = await self.attempt(agent)
        assert isinstance(tunnel, Tunnel)
        lost = tunnel.whenLost()
        stopped: list[Deferred[None] | None] = []

        async def closeByHand() -> None:
            if not lost.called:
                tunnel.close(ErrorCode.SHUTTING_DOWN, "cleanup")
            await lost
            if stopped[0] is not None:
                await stopped[0]

        self.addCleanup(closeByHand)
        stopped.append(agent.stopService())
        await waitUntil(lambda: lost.called, 2.0, "the tunnel to end")
        await waitUntil(lambda: len(server.registry) == 0, DEADLINE, "the server to forget it")


class DrainTests(TunnelTestCase):
    async def test_streamsInFlightFinish(self) -> None:
        """
        C{drainWithin}: the stream in flight completes byte-exact, a new
        open is refused at once (the agent was told), and the tunnel closes
        as soon as it is idle, long before the timeout.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agentSide = await self.connectedAgent(serverPort, "edge-1")
        edge, edgePort = self.listenEdge()
        client = await self.openStream(
            server, edgePort, ExchangeClient(0, 4 * 1024 * 1024, 0, 4 * 1024 * 1024)
        )
        drained = server.drainWithin(30.0)
        refused = await self.assertFailure(
            self.openStream(server, edgePort, ExchangeClient(0, 10, 0, 10)), StreamOpenFailed
        )
        self.assertEqual(refused.reason, OpenFailReason.GOING_AWAY)
        await client.done
        await drained
        # the agent's end closes too (it may be a moment behind the server's:
        # with CLOSE FINAL the agent is idle first, and its TLS close then
        # waits for the server's close_notify)
        await agentSide.whenLost()
        self.assertFalse(agentSide.established)
        self.assertEqual(len(server.registry), 0)
        texts = [logText(e) for e in events if "log_format" in e]
        self.assertTrue(any(t.startswith("drained in") for t in texts), texts)
        self.assertFalse(any("drain timeout" in t for t in texts), texts)

    def test_nothingToDrain(self) -> None:
        server, _ = self.startServer()
        self.successResultOf(server.drainWithin(30.0))


class TCPKeepaliveTests(TunnelTestCase):
    async def test_bothEndsAskTheKernelToWatch(self) -> None:
        """
        The TCP socket under each end's TLS carries keepalive probes and a
        user timeout that follow the tunnel's keepalive settings (10 s x 3
        by default): the kernel ends a connection whose sent data goes
        unacknowledged for 30 s.
        """
        server, serverPort = self.startServer()
        agentSide = await self.connectedAgent(serverPort, "edge-1")
        record = server.registry.lookup("edge-1")
        assert record is not None
        for tunnel in (agentSide, record.tunnel):
            sock = sockets.tcpSocket(tunnel.transport)
            assert sock is not None, tunnel
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 10)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 10)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 3)
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 30_000)

    def test_noSocketNoOptions(self) -> None:
        """In memory (or on a unix socket) there is nothing to set."""
        self.assertFalse(sockets.tcpKeepalive(StringTransport(), Keepalive()))


class ManyStreamsTests(TunnelTestCase):
    async def test_hundredConcurrentStreamsArriveIntactBothWays(self) -> None:
        """
        100 streams at once, each uploading and downloading a random amount
        up to 4 MiB, all over one TLS tunnel: every byte arrives, in order,
        both ways (the edge reports the SHA-256 of each upload; each
        download is checked against its SHA-256).
        """
        server, serverPort = self.startServer()
        await self.connectedAgent(serverPort)
        edge, edgePort = self.listenEdge()
        rng = random.Random(100)
        clients = [
            ExchangeClient(
                rng.randrange(len(BLOB)),
                rng.randrange(4 * MiB + 1),
                rng.randrange(len(BLOB)),
                rng.randrange(4 * MiB + 1),
            )
            for _ in range(100)
        ]
        # Include the edges: nothing at all, and exactly 4 MiB.
        clients[0].upSize = clients[0].downSize = 0
        clients[1].upSize = clients[1].downSize = 4 * MiB
        await gatherResults([self.openStream(server, edgePort, c) for c in clients])
        await gatherResults([c.done for c in clients], consumeErrors=True)
        record = server.registry.lookup("edge-1")
        assert record is not None
        self.assertEqual(len(edge.connections), 100)
        self.assertEqual(
            sorted(c.received for c in edge.connections),
            sorted(c.upSize for c in clients),
        )
        await waitUntil(lambda: record.tunnel.streamCount == 0, DEADLINE, "streams forgotten")


class StalledReaderTests(TunnelTestCase):
    async def test_stalledReaderHoldsOneWindowAndBlocksNobody(self) -> None:
        """
        A client that stops reading while the edge pushes 50 MiB at it:
        the server holds at most one window for that stream, the edge
        service is pushed back, 20 other transfers on the same tunnel
        complete meanwhile, and once the reader resumes all 50 MiB arrive.
        """
        window = SMALL.window
        server, serverPort = self.startServer(settings=SMALL)
        await self.connectedAgent(serverPort, settings=SMALL)
        edge, edgePort = self.listenEdge()

        stalled = await self.openStream(
            server, edgePort, ExchangeClient(downOffset=12345, downSize=50 * MiB, stalled=True)
        )
        stream = stalled.transport
        assert isinstance(stream, Stream)
        samples: list[int] = []
        sampler = LoopingCall(lambda: samples.append(stream.bufferedBytes))
        sampler.clock = reactor
        sampler.start(0.001)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        # The stream fills its window, and no more.
        await waitUntil(lambda: stream.bufferedBytes >= window, DEADLINE, "a full window")
        self.assertEqual(stalled.received, 0)

        others = [ExchangeClient(downOffset=i * 7919, downSize=1 * MiB) for i in range(20)]
        await gatherResults([self.openStream(server, edgePort, c) for c in others])
        await gatherResults([c.done for c in others], consumeErrors=True)

        # Still stalled, still within its window; the edge service was
        # pushed back and is far from done.
        self.assertEqual(stalled.received, 0)
        self.assertIsNone(stalled.lost)
        pusher = edge.connections[0].sender
        assert pusher is not None
        self.assertGreater(pusher.pauses, 0)
        self.assertLess(pusher.sent, 50 * MiB)
        self.assertLessEqual(max(samples), window)
        self.assertLessEqual(stream.bufferedBytes, window)

        stream.resumeProducing()
        await stalled.done
        sampler.stop()
        self.assertEqual(stalled.received, 50 * MiB)
        self.assertLessEqual(max(samples), window, f"peak of {max(samples)} bytes buffered")


class RefusalTests(TunnelTestCase):
    """
    Agents that are not who they say are turned away, with the reason in
    the server's log (and, when the server can tell it, in the agent's).
    """

    def refusals(self, events: list[dict[str, Any]], *, isClient: bool) -> list[dict[str, Any]]:
        """The events in which a tunnel's end said why it was refused."""
        found = []
        for event in events:
            source = event.get("log_source")
            if not isinstance(source, Tunnel) or source.isClient != isClient:
                continue
            if event.get("log_format", "").startswith(
                ("refusing tunnel from", "tunnel to {node} closed by peer")
            ):
                found.append(event)
        return found

    async def assertAgentRefused(
        self,
        events: list[dict[str, Any]],
        agent: TunnelAgent,
        *mentions: str,
    ) -> None:
        """
        C{agent}'s first attempt fails; the server logged why, with code
        UNAUTHORIZED, and the agent logged the GOAWAY reason it was sent;
        both name C{mentions}.
        """
        await self.refusedAttempt(agent)
        [serverSide] = self.refusals(events, isClient=False)
        self.assertEqual(serverSide["code"], ErrorCode.named(ErrorCode.UNAUTHORIZED))
        [agentSide] = self.refusals(events, isClient=True)
        self.assertEqual(agentSide["code"], ErrorCode.named(ErrorCode.UNAUTHORIZED))
        self.assertEqual(agentSide["reason"], serverSide["reason"])
        for mention in mentions:
            self.assertIn(mention, serverSide["reason"])
            self.assertIn(mention, logText(serverSide))
            self.assertIn(mention, logText(agentSide))

    async def refusedAttempt(self, agent: TunnelAgent) -> Failure:
        """C{agent}'s first attempt fails: why."""
        failure = await self.attempt(agent)
        assert isinstance(failure, Failure), failure
        return failure

    async def test_refusedAttemptLogsNoError(self) -> None:
        """
        A refused attempt is an expected condition: the reason is logged,
        but no error (no traceback) is.
        """
        server, serverPort = self.startServer()
        agent = self.startAgent(serverPort, "edge-9", credentials=pki.credentials(pki.agent()))
        self.assertIsInstance(await self.attempt(agent), Failure)
        errors = self.flushLoggedErrors()
        self.assertEqual([e.getErrorMessage() for e in errors], [])

    async def test_certificateForAnotherNode(self) -> None:
        """
        An agent holding edge-2's certificate that says it is edge-1 is
        refused, and both logs name the node it claimed and the one it is.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agent = self.startAgent(
            serverPort, "edge-1", credentials=pki.credentials(pki.agent("edge-2"))
        )
        await self.assertAgentRefused(events, agent, "'edge-1'", "edge-2")
        self.assertIsNone(server.registry.lookup("edge-1"))
        self.assertEqual(len(server.registry), 0)

    async def test_nodeNameNotInCertificate(self) -> None:
        """
        The certificate is edge-1's, the HELLO says edge-9: refused.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agent = self.startAgent(
            serverPort, "edge-9", credentials=pki.credentials(pki.agent("edge-1"))
        )
        await self.assertAgentRefused(events, agent, "'edge-9'")
        self.assertEqual(len(server.registry), 0)

    async def test_ipOfAnotherConnectedNode(self) -> None:
        """
        edge-2 announcing an IP that connected edge-1 announced is refused;
        edge-1 keeps the IP and its tunnel.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        first = await self.connectedAgent(serverPort, "edge-1", ("10.0.0.1",))
        agent = self.startAgent(serverPort, "edge-2", ("10.0.0.2", "10.0.0.1"))
        await self.assertAgentRefused(events, agent, "10.0.0.1", "'edge-1'", "'edge-2'")
        record = server.registry.lookup("10.0.0.1")
        assert record is not None
        self.assertEqual(record.node, "edge-1")
        self.assertIsNone(server.registry.lookup("edge-2"))
        self.assertIsNone(server.registry.lookup("10.0.0.2"))
        self.assertTrue(first.established)

    async def test_secondAgentReplacesTheFirst(self) -> None:
        """
        A second agent for a connected node takes its place: the first
        tunnel is closed with GOAWAY REPLACED, and the node's streams go to
        the second.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        first = await self.connectedAgent(serverPort, "edge-1")
        firstLost = first.whenLost()
        second = await self.connectedAgent(serverPort, "edge-1")
        await firstLost
        self.assertTrue(second.established)
        record = server.registry.lookup("edge-1")
        assert record is not None
        self.assertEqual(len(server.registry), 1)
        closed = [
            e
            for e in events
            if e.get("log_source") is first
            and e.get("log_format", "").startswith("tunnel to {node} closed by peer")
        ]
        self.assertEqual([e["code"] for e in closed], [ErrorCode.named(ErrorCode.REPLACED)])
        self.assertTrue(
            any(
                logText(e).startswith("agent edge-1 reconnected from")
                for e in events
                if "log_format" in e
            )
        )

        # And streams reach the node through the second tunnel.
        edge, edgePort = self.listenEdge()
        client = await self.openStream(server, edgePort, ExchangeClient(0, 1000, 0, 1000))
        await client.done

    async def test_agentCertificateFromAnotherCA(self) -> None:
        """
        An agent whose certificate another CA signed fails the TLS handshake
        and never registers.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agent = self.startAgent(
            serverPort, "edge-1", credentials=pki.credentials(pki.foreignAgent("edge-1"))
        )
        failure = await self.refusedAttempt(agent)
        self.assertIn("unknown ca", failure.getErrorMessage())
        self.assertEqual(len(server.registry), 0)
        self.assertEqual(self.refusals(events, isClient=False), [])

    async def test_noClientCertificate(self) -> None:
        """
        A TLS client that presents no certificate is disconnected without
        ever reaching the tunnel protocol.
        """
        server, serverPort = self.startServer()
        client = await self.plainTLSClient(serverPort)
        await client.lost
        assert client.reason is not None
        self.assertIn("certificate required", client.reason.getErrorMessage())
        self.assertEqual(client.received, b"")
        self.assertEqual(len(server.registry), 0)

    async def plainTLSClient(self, serverPort: int) -> _PlainClient:
        client = _PlainClient()
        options = optionsForClientTLS(
            "127.0.0.1", trustRoot=trustRootFromCertificates(pki.credentials(pki.server).authority)
        )
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", serverPort))
        await connectProtocol(endpoint, client)

        def abort() -> None:
            if not client.lost.called and client.transport is not None:
                client.transport.abortConnection()  # type: ignore[attr-defined]

        self.addCleanup(abort)
        return client

    async def assertServerLoggedHandshakeFailure(self, events: list[dict[str, Any]]) -> None:
        def logged() -> bool:
            return any(
                word in logText(e).lower()
                for e in serverEvents(events)
                for word in ("handshake", "certificate")
            )

        await waitUntil(logged, 0.5, "the server to log the failed TLS handshake")

    async def test_agentCertificateFromAnotherCALogged(self) -> None:
        """
        The server says in its log that a TLS handshake failed, and why.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agent = self.startAgent(
            serverPort, "edge-1", credentials=pki.credentials(pki.foreignAgent("edge-1"))
        )
        await self.refusedAttempt(agent)
        await self.assertServerLoggedHandshakeFailure(events)

    async def test_noClientCertificateLogged(self) -> None:
        """
        The server says in its log that a client came without a certificate.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        client = await self.plainTLSClient(serverPort)
        await client.lost
        await self.assertServerLoggedHandshakeFailure(events)

    async def test_tcpHealthCheckIsNoWarning(self) -> None:
        """
        A connection that opens and closes without a TLS word (a load
        balancer's TCP health check) is counted, and logged at debug level
        only; a failed handshake is a warning (above).
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        probe = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", serverPort), probe)
        assert probe.transport is not None
        probe.transport.loseConnection()
        closed = server.metrics.handshakeFailures
        await waitUntil(lambda: closed["connection_closed"] == 1, 5.0, "the probe to be counted")
        warnings = [logText(e) for e in serverEvents(events) if e["log_level"] > LogLevel.info]
        self.assertEqual(warnings, [])

    async def test_agentLogsWhyItsAttemptFailed(self) -> None:
        """
        An agent whose handshake fails says why in its own log (the
        operator of an edge node sees only that log).
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        agent = self.startAgent(
            serverPort, "edge-1", credentials=pki.credentials(pki.foreignAgent("edge-1"))
        )
        await self.refusedAttempt(agent)
        agentEvents = [
            e for e in events if e.get("log_namespace", "").startswith("twisted_tunnel.agent")
        ]
        self.assertTrue(
            any("unknown ca" in logText(e) for e in agentEvents),
            [logText(e) for e in agentEvents],
        )

    async def test_handshakeFailuresInWords(self) -> None:
        """
        Over real sockets, both ends say whose certificate failed which
        check, not OpenSSL's tuples (L{twisted_tunnel.tls.failures}).
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        stranger = pki.foreignAgent("edge-1")
        agent = self.startAgent(serverPort, "edge-1", credentials=pki.credentials(stranger))
        await self.refusedAttempt(agent)
        subject = stranger.certificate.subject.rfc4514_string()

        def lines(namespace: str, *words: str) -> list[str]:
            return [
                logText(e)
                for e in events
                if e.get("log_namespace", "").startswith(namespace)
                and all(word in logText(e) for word in words)
            ]

        await waitUntil(
            lambda: lines("twisted_tunnel.server", "we refused the peer's certificate"),
            5.0,
            "the server's line",
        )
        [line] = lines("twisted_tunnel.server", "we refused the peer's certificate")
        self.assertIn(subject, line)
        self.assertIn("unknown CA", line)
        self.assertIn("docs/operations.md", line)
        self.assertNotIn("SSL routines", line)
        self.assertTrue(
            lines("twisted_tunnel.agent", "the peer does not trust the CA", "docs/operations.md"),
            lines("twisted_tunnel.agent"),
        )


class _PlainClient(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        # Say something, as a tunnel client would (its HELLO), to find out
        # whether the server ever takes it.
        assert self.transport is not None
        self.transport.write(b"\x00" * 16)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.lost.callback(None)


class AllowlistTests(TunnelTestCase):
    async def test_hostOutsideTheAllowlist(self) -> None:
        """
        Asked for an address that is neither loopback nor one of its node
        IPs, the agent refuses with NOT_ALLOWED and a log line, without
        dialing it at all.
        """
        events = self.captureLogs()
        server, serverPort = self.startServer()
        await self.connectedAgent(serverPort, "edge-1", ("10.0.0.1",))
        dialed: list[tuple[str, int]] = []
        connectTCP = reactor.connectTCP

        def recordingConnectTCP(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            dialed.append((host, port))
            return connectTCP(host, port, *args, **kwargs)

        self.patch(reactor, "connectTCP", recordingConnectTCP)
        failure = await self.assertFailure(
            server.endpointForNode("edge-1", 80, host="192.0.2.1").connect(
                OneProtocolFactory(ExchangeClient())
            ),
            StreamOpenFailed,
        )
        self.assertEqual(failure.reason, OpenFailReason.NOT_ALLOWED)
        self.assertIn("192.0.2.1", failure.text)
        self.assertEqual(dialed, [])
        [line] = [e for e in events if e.get("log_format", "").startswith("refused to dial")]
        self.assertEqual((line["host"], line["port"]), ("192.0.2.1", 80))
        self.assertIn("not allowed", logText(line))

    async def test_closedPort(self) -> None:
        """A port nothing listens on: the open fails with REFUSED."""
        server, serverPort = self.startServer()
        await self.connectedAgent(serverPort)
        closed = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        port = closed.getHost().port
        await closed.stopListening()
        failure = await self.assertFailure(
            server.endpointForNode("edge-1", port).connect(OneProtocolFactory(ExchangeClient())),
            StreamOpenFailed,
        )
        self.assertEqual(failure.reason, OpenFailReason.REFUSED)

    async def test_unknownNode(self) -> None:
        """No agent for the node: NodeNotConnected, and nothing is sent anywhere."""
        server, serverPort = self.startServer()
        await self.connectedAgent(serverPort)
        failure = await self.assertFailure(
            server.endpointForNode("edge-7", 80).connect(OneProtocolFactory(ExchangeClient())),
            NodeNotConnected,
        )
        self.assertEqual(failure.node, "edge-7")
        record = server.registry.lookup("edge-1")
        assert record is not None
        self.assertEqual(record.tunnel.streamCount, 0)

    async def test_nodeIPIsAllowed(self) -> None:
        """
        A node IP the agent announced may be dialed; a stream asked for by
        that IP reaches it.  (127.0.0.2: a node IP that is not in the
        agent's loopback set, and still reaches this host on Linux.)
        """
        server, serverPort = self.startServer()
        await self.connectedAgent(serverPort, "edge-1", ("127.0.0.2",))
        edge, edgePort = self.listenEdge("127.0.0.2")
        client = ExchangeClient(1, 5000, 2, 7000)
        await self.openStream(server, edgePort, client, node="127.0.0.2")
        await client.done
        self.assertEqual(len(edge.connections), 1)
