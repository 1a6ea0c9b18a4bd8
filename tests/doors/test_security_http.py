# -*- test-case-name: tests.doors.test_security_http -*-
"""
Security regressions of the HTTP proxy engine and of what every front door
may cost (issue 12, findings 6, 10, 11 and 18).

Each class pins one finding; its docstring starts with the finding's number
and the threat.  Most run in memory (C{StringTransport}s, a C{Clock}); the
ones that need a real tunnel and real sockets say so and listen on
127.0.0.1, port 0, polling with deadlines.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    ILoggingContext,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer, implementer_only

from tests.realnet import plainTunnel
from tests.services import listen
from twisted_tunnel._text import printable
from twisted_tunnel.doors.limits import (
    ClientLimiter,
    ClientLimits,
    _producerHolds,
    frontDoorLabel,
)
from twisted_tunnel.doors.proxy import ProxyListenerFactory, ProxyRouter
from twisted_tunnel.forwarding.config import parseConfigData
from twisted_tunnel.forwarding.policy import Carrier, ForwardingDecision, ForwardingRequest
from twisted_tunnel.http.engine import HTTPProxyFactory, RequestHead, Route, RouteRefused
from twisted_tunnel.http.responses import errorResponse
from twisted_tunnel.net.transports import heldBytesOf

reactor: Any = _reactor
CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


# -- an in-memory engine ---------------------------------------------------------------


class Upstreams:
    """An endpoint that connects each upstream to a StringTransport, and remembers them."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.connections: list[tuple[Protocol, StringTransport]] = []

    def connect(self, factory: Factory) -> Deferred[Protocol]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def engine(
    router: Callable[[RequestHead, Any], Route], clock: Clock | None = None
) -> tuple[Protocol, StringTransport, list[dict[str, Any]]]:
    """An HTTP proxy protocol connected to a StringTransport, and its log events."""
    events: list[dict[str, Any]] = []
    factory = HTTPProxyFactory(
        router,
        clock or Clock(),
        log=Logger(observer=cast(ILogObserver, events.append)),
    )
    protocol = factory.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    protocol.makeConnection(transport)
    return protocol, transport, events


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def requests(transport: StringTransport) -> list[bytes]:
    """The request lines an upstream was sent."""
    return [line for line in transport.value().split(b"\r\n") if line.endswith((b"HTTP/1.1",))]


# -- finding 10 ------------------------------------------------------------------------


class PipelinedAfterLastRequestTests(SynchronousTestCase):
    """
    Finding 10: a request pipelined behind C{Connection: close} (or an
    HTTP/1.0 request) turned the answer to the first, which the upstream had
    executed, into a C{400}.
    """

    def exchange(self, data: bytes | list[bytes]) -> tuple[StringTransport, Upstreams]:
        upstreams = Upstreams()
        protocol, transport, _ = engine(lambda head, peer: Route(key="k", endpoint=upstreams))
        for chunk in [data] if isinstance(data, bytes) else data:
            protocol.dataReceived(chunk)
        self.assertEqual(len(upstreams.connections), 1)
        upstream, upstreamTransport = upstreams.connections[0]
        upstream.dataReceived(OK)
        return transport, upstreams

    def assertAnsweredThenClosed(self, transport: StringTransport, upstreams: Upstreams) -> None:
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nok"), answer)
        self.assertNotIn(b"400", answer)
        self.assertEqual(requests(upstreams.connections[0][1]), [b"GET /a HTTP/1.1"])
        self.assertEqual(len(upstreams.connections), 1)
        # the connection ends after the answer (our side closed)
        self.assertTrue(transport.disconnecting)

    def test_pipelinedBehindConnectionClose(self) -> None:
        transport, upstreams = self.exchange(
            b"GET /a HTTP/1.1\r\nHost: n:1\r\nConnection: close\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: n:1\r\n\r\n"
        )
        self.assertAnsweredThenClosed(transport, upstreams)

    def test_pipelinedBehindHTTP10(self) -> None:
        transport, upstreams = self.exchange(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        self.assertAnsweredThenClosed(transport, upstreams)

    def test_arrivesLater(self) -> None:
        """What comes in a later read is dropped too, garbage included."""
        transport, upstreams = self.exchange(
            [
                b"GET /a HTTP/1.1\r\nHost: n:1\r\nConnection: close\r\n\r\n",
                b"\x00\x01 not HTTP at all\r\n\r\n",
                b"GET /b HTTP/1.1\r\nHost: n:1\r\n\r\n",
            ]
        )
        self.assertAnsweredThenClosed(transport, upstreams)

    def test_keepAlivePipeliningStillServed(self) -> None:
        """Without Connection: close, a pipelined request is served after the first."""
        upstreams = Upstreams()
        protocol, transport, _ = engine(lambda head, peer: Route(key="k", endpoint=upstreams))
        protocol.dataReceived(
            b"GET /a HTTP/1.1\r\nHost: n:1\r\n\r\nGET /b HTTP/1.1\r\nHost: n:1\r\n\r\n"
        )
        upstream, upstreamTransport = upstreams.connections[0]
        upstream.dataReceived(OK)
        upstream.dataReceived(OK)
        self.assertEqual(requests(upstreamTransport), [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"])
        self.assertEqual(transport.value(), OK + OK)
        self.assertFalse(transport.disconnecting)


# -- finding 18 ------------------------------------------------------------------------


class PerRequestRoutingTests(SynchronousTestCase):
    """
    Finding 18: a per-request routing decision was ignored after the first
    request on a kept-alive connection (GET /a then GET /b both went where
    /a went, though the policy sends /b elsewhere).
    """

    def setUp(self) -> None:
        self.upstreams = {b"/a": Upstreams("a"), b"/b": Upstreams("b")}

        def router(head: RequestHead, peer: Any) -> Route:
            destination = self.upstreams[head.target]
            return Route(key="node", endpoint=destination, destination=destination.name)

        self.protocol, self.transport, _ = engine(router)

    def get(self, path: bytes) -> None:
        before = self.transport.value()
        self.protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: n:1\r\n\r\n")
        upstream, _ = self.upstreams[path].connections[-1]
        upstream.dataReceived(OK)
        self.assertEqual(self.transport.value(), before + OK)

    def sent(self, path: bytes) -> list[list[bytes]]:
        return [requests(transport) for _, transport in self.upstreams[path].connections]

    def test_eachRequestGoesWhereItsRouteSays(self) -> None:
        self.get(b"/a")
        self.get(b"/b")
        self.get(b"/a")
        self.assertEqual(self.sent(b"/a"), [[b"GET /a HTTP/1.1"], [b"GET /a HTTP/1.1"]])
        self.assertEqual(self.sent(b"/b"), [[b"GET /b HTTP/1.1"]])
        # the connection made for /a was closed when /b went elsewhere
        self.assertTrue(self.upstreams[b"/a"].connections[0][1].disconnecting)

    def test_sameDestinationReused(self) -> None:
        self.get(b"/a")
        self.get(b"/a")
        self.assertEqual(self.sent(b"/a"), [[b"GET /a HTTP/1.1", b"GET /a HTTP/1.1"]])

    def test_anotherNodeStillRefused(self) -> None:
        """The client connection stays pinned to its node: 421 for another."""
        upstreams = Upstreams()

        def router(head: RequestHead, peer: Any) -> Route:
            return Route(key=head.host(), endpoint=upstreams)

        protocol, transport, _ = engine(router)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: n:1\r\n\r\n")
        upstreams.connections[0][0].dataReceived(OK)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: m:1\r\n\r\n")
        self.assertIn(b"421 Misdirected Request", transport.value())
        self.assertEqual(len(upstreams.connections), 1)


class _ByPath:
    """A custom policy: /b goes to one port of the node, everything else to another."""

    name = "by-path"

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        port = self.b if request.target == b"/b" else self.a
        return ForwardingDecision("127.0.0.1", port, Carrier.HTTP)


class _Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        return self.name


class PerRequestPolicyThroughATunnelTests(TestCase):
    """
    Finding 18, end to end: a custom policy routing by path, a real (plain)
    tunnel, two web servers on the node, one kept-alive client connection.
    """

    async def test_policyObeyedPerRequest(self) -> None:
        server, _, _ = await plainTunnel(self, "edge-1")
        a = listen(self, Site(_Named(b"A")))
        b = listen(self, Site(_Named(b"B")))
        config = parseConfigData({"http-proxy-ports": "9051"})
        policy = _ByPath(a, b)
        router = ProxyRouter(server, "http", lambda: config, customPolicies=lambda: {9051: policy})  # type: ignore[dict-item]
        port = listen(self, ProxyListenerFactory(router, reactor))
        client = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(client.close)
        client.setblocking(False)
        bodies = []
        for path in (b"/a", b"/b", b"/a"):
            client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: edge-1:9051\r\n\r\n")
            bodies.append(await _response(client))
        self.assertEqual(bodies, [b"A", b"B", b"A"])


async def _response(client: socket.socket, timeout: float = 10.0) -> bytes:
    """The body of one Content-Length response read from a non-blocking socket."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        head, _, body = data.partition(b"\r\n\r\n")
        if _:
            length = int(
                [
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ][0]
            )
            if len(body) >= length:
                return body[:length]
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete response: {data!r}")
        try:
            chunk = client.recv(65536)
        except BlockingIOError:
            await deferLater(reactor, 0.005, lambda: None)
            continue
        if not chunk:
            raise AssertionError(f"closed before a complete response: {data!r}")
        data += chunk


# -- finding 11 ------------------------------------------------------------------------

HOSTILE_HOST = b"\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07\x9b31m:10250"


class EscapedLogTests(SynchronousTestCase):
    """
    Finding 11: control bytes from a client's Host header (and other text
    from clients and peers) reached the log raw: terminal escape injection.
    """

    def assertNoControls(self, text: str) -> None:
        for char in text:
            self.assertTrue(char.isprintable(), f"{char!r} in {text!r}")

    def test_hostInTheRefusalLine(self) -> None:
        def refuse(head: RequestHead, peer: Any) -> Route:
            raise RouteRefused(503, "no agent connected for node " + head.host().decode("latin-1"))  # type: ignore[union-attr]

        protocol, transport, events = engine(refuse)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: " + HOSTILE_HOST + b"\r\n\r\n")
        self.assertIn(b"503", transport.value())
        self.assertEqual(len(events), 1)
        line = formatEvent(events[0])
        self.assertIn("\\x1b[2j\\x1b]52", line)
        self.assertNoControls(line)
        for value in events[0].values():
            if isinstance(value, str):
                self.assertNoControls(value)
        # nor in the answer's body
        body = transport.value().split(b"\r\n\r\n", 1)[1]
        self.assertNotIn(b"\x1b", body)
        self.assertNotIn(b"\x07", body)

    def test_errorBodies(self) -> None:
        """Every front door's error body (the CONNECT door's too) is escaped."""
        response = errorResponse(502, "agent said: \x1b[31mboom\u202e\n")
        body = response.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(body, b"agent said: \\x1b[31mboom\\u202e\\x0a\n")

    def test_printable(self) -> None:
        self.assertEqual(printable(b"edge-1:10250"), "edge-1:10250")
        self.assertEqual(printable(b"a\x1b[2Jb\\"), "a\\x1b[2Jb\\\\")
        self.assertEqual(printable(b"\xff\x00\x7f"), "\\xff\\x00\\x7f")
        self.assertEqual(printable("caf\u00e9 \u202e\x9b\ud800"), "caf\u00e9 \\u202e\\x9b\\ud800")
        self.assertEqual(printable(None), "-")
        self.assertEqual(printable("\U000e0041"), "\\U000e0041")

    def test_bounded(self) -> None:
        """A value of any length makes a short line, never cut inside an escape."""
        for value in (b"x" * 10**6, b"\x1b" * 10**6, "\\" * 10**6, b"ab" + b"\x01" * 100):
            for limit in range(4, 40):
                shown = printable(value, limit)
                self.assertLessEqual(len(shown), limit, (value[:4], limit))
                self.assertTrue(shown.endswith("..."))
                head = shown[:-3]
                # the head is a prefix of the whole escaped value
                self.assertTrue(printable(value[:limit], 10**6).startswith(head), shown)


# -- finding 6 -------------------------------------------------------------------------


@implementer(IPushProducer)
class Holder:
    """The producer a client connection registers: it holds C{held} bytes upstream."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.paused = False
        self.stopped = False

    def heldBytes(self) -> int:
        return self.held

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """A front door's protocol: registers a Holder, notes how it ended."""

    def __init__(self) -> None:
        self.holder = Holder(0)
        self.lostReason: Any = None
        self.readClosed = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self.holder, True)  # type: ignore[attr-defined]

    def readConnectionLost(self) -> None:
        self.readClosed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lostReason = reason


@implementer_only(IProtocol, ILoggingContext)
class OneWayClient(Client):
    """A L{Client} that is not half-closeable."""


class ClientFactory(Factory):
    #: whether the protocols it builds are half-closeable
    halfCloseable = True

    def __init__(self) -> None:
        self.built: list[Client] = []

    def buildProtocol(self, addr: Any) -> Client:
        client = Client() if self.halfCloseable else OneWayClient()
        self.built.append(client)
        return client


class ClientLimitTests(SynchronousTestCase):
    """
    Finding 6: no bound on connections or on the memory held for clients
    that never read (150 such clients: +127 MB, one window each).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.factory = ClientFactory()

    def limiter(self, **limits: Any) -> ClientLimiter:
        limiter = ClientLimiter(
            "https-proxy",
            self.clock,
            ClientLimits(**limits),
            log=Logger(observer=cast(ILogObserver, self.events.append)),
        )
        self.wrapped = limiter.wrap(self.factory)
        return limiter

    def connect(self, address: Any = CLIENT) -> tuple[Any, StringTransport] | None:
        protocol = self.wrapped.buildProtocol(address)
        if protocol is None:
            return None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: Any) -> None:
        protocol.connectionLost(None)

    def test_perListener(self) -> None:
        limiter = self.limiter(maxConnections=3)
        made = [self.connect(IPv4Address("TCP", f"192.0.2.{n}", 1)) for n in range(5)]
        self.assertEqual([m is not None for m in made], [True, True, True, False, False])
        self.assertEqual(limiter.hits["connections"], 2)
        self.assertEqual(limiter.connections, 3)
        # one line, not one per refusal; then one more after the interval, with the count
        self.assertEqual(len(self.events), 1)
        self.assertIn("refused a connection from 192.0.2.3", formatEvent(self.events[0]))
        for _ in range(3):
            self.connect()
        self.assertEqual(len(self.events), 1)
        self.clock.advance(11)
        self.connect()  # the summary of what was left out, then this one
        self.assertEqual(len(self.events), 3)
        self.assertIn("4 more like this", formatEvent(self.events[1]))
        self.assertEqual(limiter.hits["connections"], 6)
        # a connection that ends makes room
        first = made[0]
        assert first is not None
        self.lose(first[0])
        self.assertIsNotNone(self.connect())

    def test_perAddress(self) -> None:
        limiter = self.limiter(maxConnectionsPerAddress=2)
        one = IPv4Address("TCP", "192.0.2.1", 1)
        other = IPv6Address("TCP", "2001:db8::1", 1)
        first = self.connect(one)
        self.assertIsNotNone(self.connect(one))
        self.assertIsNone(self.connect(IPv4Address("TCP", "192.0.2.1", 2)))
        self.assertIsNotNone(self.connect(other))
        self.assertIsNotNone(self.connect(UNIXAddress(None)))
        self.assertEqual(limiter.hits, {"connections_per_address": 1})
        assert first is not None
        self.lose(first[0])
        self.assertIsNotNone(self.connect(one))
        self.assertEqual(dict(limiter.byAddress), {"192.0.2.1": 2, "2001:db8::1": 1, "unix": 1})

    def test_passesTheConnectionThrough(self) -> None:
        """Reads, writes, half-closes and peer addresses go straight through."""
        self.limiter()
        made = self.connect()
        assert made is not None
        wrapper, transport = made
        client = self.factory.built[0]
        self.assertTrue(IHalfCloseableProtocol.providedBy(wrapper))
        self.assertIs(wrapper.dataReceived.__self__, client)
        assert client.transport is not None
        client.transport.write(b"hello")
        self.assertEqual(transport.value(), b"hello")
        self.assertEqual(client.transport.getPeer(), CLIENT)
        wrapper.readConnectionLost()
        self.assertTrue(client.readClosed)

    def test_declarationsFollowTransportAndProtocol(self) -> None:
        """
        Each connection provides what its own transport provides, and is
        half-closeable exactly when its protocol is, however many
        connections came before it with other transports and protocols
        (the declarations are made once per kind and reused).
        """
        self.limiter()

        @implementer(ISSLTransport)
        class TLSLike(StringTransport):
            pass

        for _ in range(2):
            for transportType in (StringTransport, TLSLike, StringTransport):
                for half in (True, False):
                    self.factory.halfCloseable = half
                    protocol = self.wrapped.buildProtocol(CLIENT)
                    transport = transportType(peerAddress=CLIENT)
                    protocol.makeConnection(transport)
                    self.assertEqual(ISSLTransport.providedBy(protocol), transportType is TLSLike)
                    self.assertTrue(ITransport.providedBy(protocol))
                    self.assertEqual(IHalfCloseableProtocol.providedBy(protocol), half)

    def stall(self, made: Any, held: int) -> None:
        """The client's transport pushes back: its send buffer is full."""
        wrapper, transport = made
        wrapper.wrapped.holder.held = held
        transport.producer.pauseProducing()

    def test_budget(self) -> None:
        """
        Past the budget, the client that has read nothing for the longest
        is closed, then the next, until the listener is within budget;
        clients that read are not touched, and nothing is left scheduled.
        """
        MiB = 1024 * 1024
        limiter = self.limiter(maxBufferedBytes=3 * MiB)
        clients = [self.connect(IPv4Address("TCP", f"192.0.2.{n}", 1)) for n in range(6)]
        self.stall(clients[0], MiB)  # stalled first: the worst
        self.clock.advance(0.5)
        self.stall(clients[1], MiB)
        self.stall(clients[2], 2 * MiB)
        self.assertTrue(self.factory.built[2].holder.paused)
        reader = clients[3]
        self.stall(reader, 2 * MiB)
        self.clock.advance(0.1)
        assert reader is not None
        reader[1].producer.resumeProducing()  # it reads: no longer stalled
        self.assertEqual(limiter.bufferedBytes, 0)  # not looked at yet
        self.clock.advance(0.5)  # the first look: 4 MiB held, budget 3
        self.assertEqual(limiter.hits["buffered_bytes"], 1)
        assert clients[0] is not None
        self.assertTrue(clients[0][1].disconnecting)  # aborted (StringTransport)
        self.assertFalse(any(c[1].disconnecting for c in clients[1:] if c is not None))
        self.assertEqual(limiter.bufferedBytes, 3 * MiB)
        line = formatEvent(self.events[-1])
        self.assertIn("closed 192.0.2.0, which read nothing for 1s", line)
        # the transport reports the abort: no more looks once nobody is stalled
        self.lose(clients[0][0])
        for made in clients[1:3]:
            assert made is not None
            made[1].producer.resumeProducing()
        self.assertEqual(limiter.bufferedBytes, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_largerHolderFirstAmongEquals(self) -> None:
        MiB = 1024 * 1024
        limiter = self.limiter(maxBufferedBytes=2 * MiB)
        clients = [self.connect(IPv4Address("TCP", f"192.0.2.{n}", 1)) for n in range(3)]
        for made, held in zip(clients, (MiB, 2 * MiB, MiB), strict=True):
            self.stall(made, held)
        self.clock.advance(1)
        self.assertEqual(
            [c[1].disconnecting for c in clients if c is not None], [False, True, False]
        )
        self.assertEqual(limiter.bufferedBytes, 2 * MiB)
        for made in clients:
            assert made is not None
            self.lose(made[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((limiter.connections, dict(limiter.byAddress)), (0, {}))

    def test_heldBytesThroughTLS(self) -> None:
        """
        TLS registers a membrane around our producer; what the producer
        holds is still found (the membrane's internals are pinned in
        C{tests/net/test_twisted_internals.py}).
        """
        tls = TLSMemoryBIOFactory(CertificateOptions(), False, ClientFactory())
        protocol = tls.buildProtocol(CLIENT)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.wrappedProtocol.holder.held = 12345
        self.assertEqual(_producerHolds(transport.producer), 12345)

    def test_heldBytesOfAStream(self) -> None:
        """A stream's buffer is found under the TLS layers above it."""

        class Stream:
            bufferedBytes = 777

        class Layer:
            transport = Stream()

        self.assertEqual(heldBytesOf(Layer()), 777)
        self.assertEqual(heldBytesOf(StringTransport()), 0)

    def test_labels(self) -> None:
        self.assertEqual(frontDoorLabel("--https-proxy-endpoint"), "https-proxy")
        self.assertEqual(frontDoorLabel("--connect-endpoint"), "connect")
        self.assertEqual(frontDoorLabel("--forward edge-1:9100"), "forward edge-1:9100")

    def test_limitsArePositive(self) -> None:
        for name in ("maxConnections", "maxConnectionsPerAddress", "maxBufferedBytes"):
            with self.assertRaises(ValueError):
                ClientLimits(**{name: 0})
