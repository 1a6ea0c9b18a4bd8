# -*- test-case-name: tests.http.test_httpproxy -*-
"""
Tests for L{twisted_tunnel.http.engine}: the HTTP/1.1 forwarding engine of the
proxy listeners, over real loopback sockets.

Upstreams are real servers (twisted.web sites, small h11 or wsproto servers,
an HTTPS "kubelet" that requires a client certificate), routes are plain
C{TCP4ClientEndpoint}s (wrapped in client TLS for the HTTPS one), and
clients are raw TCP connections that speak h11 or bytes, so that every
byte on the wire is the test's to see.  Everything listens on 127.0.0.1
port 0; nothing sleeps: waiting is polling a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import h11
from attrs import define
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests import websocket
from tests.pki import TestPKI
from tests.services import Lines
from tests.websocket import WebSocketClient
from twisted_tunnel.doors.refusals import proxyRefusal
from twisted_tunnel.errors import NodeNotConnected, StreamOpenFailed, StreamOpenTimeout
from twisted_tunnel.http.engine import (
    Explainer,
    HTTPProxyFactory,
    HTTPProxyProtocol,
    Limits,
    RequestHead,
    Route,
    RouteRefused,
    forwardedRequestHeaders,
    forwardedResponseHeaders,
    originForm,
)
from twisted_tunnel.tls import proxyServingOptions
from twisted_tunnel.tls.failures import describeTransportFailure

reactor: Any = _reactor

MiB = 1024 * 1024


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll C{predicate} until it holds; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


async def settled(value: Callable[[], object], what: str, quiet: float = 0.3) -> None:
    """
    Wait until C{value()} is truthy and has not changed for C{quiet}
    seconds: a sender that back-pressure holds stays still, one that is
    merely between two writes does not.
    """
    last: list[Any] = [object(), time.monotonic()]

    def still() -> bool:
        now, current = time.monotonic(), value()
        if current != last[0]:
            last[:] = [current, now]
            return False
        return bool(current) and now - last[1] >= quiet

    await until(still, what, timeout=20.0)


def pattern(size: int, seed: int = 0) -> bytes:
    """C{size} bytes that are not all alike (so a misplaced chunk shows)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


# -- upstream servers ----------------------------------------------------------------


class Tracked:
    """Live connections of a test server, so that a test can wait for them to end."""

    def __init__(self) -> None:
        self.live: set[object] = set()
        self.made = 0


class TrackedChannel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        tracked: Tracked = self.site.tracked  # type: ignore[attr-defined]
        tracked.live.add(self)
        tracked.made += 1

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.site.tracked.live.discard(self)  # type: ignore[attr-defined]


class TrackedSite(Site):
    """A twisted.web site that counts its connections."""

    protocol = TrackedChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.tracked = Tracked()
        self.requests: list[tuple[bytes, bytes, bytes | None]] = []  # method, uri, host


def _site(request: Request) -> TrackedSite:
    return cast(TrackedSite, request.channel.site)  # type: ignore[attr-defined]


class Headers(Resource):
    """Answers with what it received: method, target, header fields, peer port."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        site = _site(request)
        site.requests.append((request.method, request.uri, request.getHeader(b"host")))
        body = request.content.read() if request.content is not None else b""
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-resp-keep", b"yes")
        request.setHeader(b"connection", b"X-Resp-Drop")
        request.setHeader(b"x-resp-drop", b"gone")
        request.setHeader(b"keep-alive", b"timeout=5")
        request.setHeader(b"proxy-authenticate", b"Basic")
        return json.dumps(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": [
                    [name.decode().lower(), value.decode()]
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
                "upstreamPort": request.getClientAddress().port,  # type: ignore[attr-defined]
                "bodyLength": len(body),
            }
        ).encode()


class NoContent(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(204)
        return b""


def _stampedLine(n: int) -> str:
    return f"line {n} at {time.monotonic():.3f}\n"


class Upload(Resource):
    """Echoes a POST body, with the SHA-256 of what it received as a header."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"x-received-sha256", hashlib.sha256(body).hexdigest().encode())
        request.setHeader(b"content-type", b"application/octet-stream")
        return body


@implementer(IPushProducer)
class BodyProducer:
    """Writes a big body as fast as the connection takes it, and no faster."""

    def __init__(self, request: Request, size: int) -> None:
        self.request = request
        self.size = size
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.done = False
        self.block = pattern(64 * 1024)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.size and not self.done:
            n = min(len(self.block), self.size - self.sent)
            self.sent += n
            self.request.write(self.block[:n])
        if self.sent >= self.size and not self.done:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.done = True


class Big(Resource):
    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.producers: list[BodyProducer] = []

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-length", str(self.size).encode())
        producer = BodyProducer(request, self.size)
        self.producers.append(producer)
        request.registerProducer(producer, True)
        producer.resumeProducing()
        return NOT_DONE_YET


def webRoot() -> Resource:
    root = Resource()
    root.putChild(b"headers", Headers())
    root.putChild(b"nocontent", NoContent())
    root.putChild(b"stream", Lines(text=_stampedLine))
    # the same body, chunked and written over ten reactor turns, 10 ms apart: for the
    # tests that need a response produced over time but do not time its pace
    root.putChild(b"lines", Lines(text=_stampedLine, interval=0.01))
    root.putChild(b"upload", Upload())
    return root


# An h11 server whose answers a test scripts: for keep-alive edge cases,
# requests that must wait, and trailers.

Handler = Callable[["ScriptedConnection", h11.Request, "hashlib._Hash", int], None]


class ScriptedConnection(Protocol):
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.conn = h11.Connection(h11.SERVER)
        self.requests: list[h11.Request] = []
        self._request: h11.Request | None = None
        self._sha = hashlib.sha256()
        self._length = 0

    def connectionMade(self) -> None:
        self.server.tracked.live.add(self)
        self.server.tracked.made += 1
        self.server.connections.append(self)

    def connectionLost(self, reason: Failure) -> None:
        self.server.tracked.live.discard(self)

    def dataReceived(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                self.conn.start_next_cycle()
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._sha, self._length = event, hashlib.sha256(), 0
                self.requests.append(event)
                self.server.onRequest(self, event)
            elif isinstance(event, h11.Data):
                self._sha.update(event.data)
                self._length += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert self._request is not None
                self.server.handler(self, self._request, self._sha, self._length)
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
                return

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        fields = list(headers or [])
        if trailers is None:
            fields.append((b"content-length", str(len(body)).encode()))
        else:
            fields.append((b"transfer-encoding", b"chunked"))
        out = self.conn.send(h11.Response(status_code=status, headers=fields))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage(headers=trailers or []))
        self.transport.write(out)  # type: ignore[union-attr]
        if self.conn.our_state is h11.MUST_CLOSE:
            self.transport.loseConnection()  # type: ignore[union-attr]


class ScriptedServer(Factory):
    noisy = False

    def __init__(
        self, handler: Handler, onRequest: Callable[[ScriptedConnection, h11.Request], None]
    ) -> None:
        self.handler = handler
        self.onRequest = onRequest
        self.tracked = Tracked()
        self.connections: list[ScriptedConnection] = []

    def buildProtocol(self, addr: Any) -> ScriptedConnection:
        return ScriptedConnection(self)


class TrackedProtocol(Protocol):
    """A test server's protocol, counted in C{tracked} while it is connected."""

    def __init__(self, tracked: Tracked) -> None:
        self.tracked = tracked

    def connectionMade(self) -> None:
        self.tracked.live.add(self)
        self.tracked.made += 1

    def connectionLost(self, reason: Failure) -> None:
        self.tracked.live.discard(self)


class WebSocketEcho(TrackedProtocol, websocket.WebSocketEcho):
    """The WebSocket echo, counted in C{tracked}."""

    def __init__(self, tracked: Tracked) -> None:
        websocket.WebSocketEcho.__init__(self)
        TrackedProtocol.__init__(self, tracked)


@implementer(IHalfCloseableProtocol)
class RawUpgrade(TrackedProtocol):
    """
    Answers any request head with C{101} and a greeting in the same
    segment, then echoes in upper case; answers the client's EOF with
    C{BYE} and closes.
    """

    def __init__(self, tracked: Tracked) -> None:
        super().__init__(tracked)
        self.buffer = b""
        self.head: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.head is not None:
            self.transport.write(data.upper())
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.head, rest = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                b"Upgrade: shout\r\n\r\nHELLO" + rest.upper()
            )

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"BYE")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class HTTP10Upstream(TrackedProtocol):
    """An HTTP/1.0 server: no length, the body ends when the connection does."""

    def __init__(self, tracked: Tracked) -> None:
        super().__init__(tracked)
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold ")
            self.transport.write(b"school")
            self.transport.loseConnection()


class ProtocolFactory(Factory):
    noisy = False

    def __init__(self, make: Callable[[], Protocol]) -> None:
        self.make = make

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.make()


# -- clients ---------------------------------------------------------------------------


@define
class Exchange:
    """One response as a client saw it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    dataTimes: list[tuple[float, bytes]]
    trailers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPClient(Protocol):
    """A client on h11: sends requests, parses responses, records when data came."""

    def __init__(self, keepBody: bool = True) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.events: list[tuple[float, Any]] = []
        self.keepBody = keepBody
        self.bodyLength = 0
        self.lost: Deferred[None] = Deferred()
        self.isLost = False
        self.error: Exception | None = None
        self.taken = 0

    def dataReceived(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self.error = e
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Data):
                self.bodyLength += len(event.data)
                if not self.keepBody:
                    event = h11.Data(data=b"")
            self.events.append((time.monotonic(), event))
            if isinstance(event, h11.ConnectionClosed):
                return

    def connectionLost(self, reason: Failure) -> None:
        self.isLost = True
        try:
            self.conn.receive_data(b"")
            self._pump()
        except h11.RemoteProtocolError:
            pass
        self.lost.callback(None)

    def send(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None = None,
        end: bool = True,
    ) -> None:
        assert self.transport is not None
        framed = any(n.lower() in (b"transfer-encoding", b"content-length") for n, _ in headers)
        if body is not None and not framed:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += self.conn.send(h11.Data(data=body))
        if end:
            out += self.conn.send(h11.EndOfMessage())
        self.transport.write(out)

    def get(self, target: bytes, host: bytes, *extra: tuple[bytes, bytes]) -> None:
        self.send(b"GET", target, [(b"host", host), *extra])

    async def response(self, timeout: float = 10.0) -> Exchange:
        """The next complete response (a C{ConnectionClosed} before one fails)."""

        def complete() -> bool:
            return any(
                isinstance(e, (h11.EndOfMessage, h11.ConnectionClosed))
                for _, e in self.events[self.taken :]
            ) or (self.error is not None)

        await until(complete, "a complete response", timeout)
        if self.error is not None:
            raise AssertionError(f"bad response: {self.error}")
        response: h11.Response | None = None
        body = bytearray()
        times: list[tuple[float, bytes]] = []
        trailers: list[tuple[bytes, bytes]] = []
        while self.taken < len(self.events):
            when, event = self.events[self.taken]
            self.taken += 1
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
                times.append((when, bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                trailers = list(event.headers)
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the connection closed before a complete response")
        assert response is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Exchange(response.status_code, list(response.headers), bytes(body), times, trailers)


@implementer(IHalfCloseableProtocol)
class RawClient(Protocol):
    """Records every byte, and whether the connection ended by EOF or by a reset."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.isLost = False
        self.eof = False
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.isLost = True
        self.reason = reason
        self.lost.callback(None)


# -- routers and endpoints ----------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class FailingEndpoint:
    """An endpoint that fails as a tunnel stream would."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        return fail(self.error)


@implementer(IStreamClientEndpoint)
class HangingEndpoint:
    """An endpoint whose connection attempts never end, unless cancelled."""

    def __init__(self) -> None:
        self.attempts: list[Deferred[Any]] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        attempt: Deferred[Any] = Deferred(cancel)
        self.attempts.append(attempt)
        return attempt


def tcp(port: int) -> IStreamClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)


class HostRouter:
    """Routes by C{Host}: each known host to its route, anything else refused with C{403}."""

    def __init__(self, routes: dict[bytes, Route]) -> None:
        self.routes = routes
        self.heads: list[RequestHead] = []

    def __call__(self, head: RequestHead, peer: Any) -> Route:
        self.heads.append(head)
        host = head.host()
        route = self.routes.get(host or b"")
        if route is None:
            raise RouteRefused(403, f"{(host or b'-').decode()} is not forwarded")
        return route


# -- the harness ------------------------------------------------------------------------


class TrackedProxyProtocol(HTTPProxyProtocol):
    ended = False

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.ended = True


class TrackedProxyFactory(HTTPProxyFactory):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[TrackedProxyProtocol] = []

    def buildProtocol(self, addr: Any) -> HTTPProxyProtocol:
        protocol = TrackedProxyProtocol(self)
        self.built.append(protocol)
        return protocol


class ProxyTestCase(TestCase):
    """Listeners and connections that are all gone when each test ends."""

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.log = Logger(observer=cast(ILogObserver, self.events.append))
        self.ports: list[IListeningPort] = []
        self.clients: list[Any] = []
        self.proxies: list[TrackedProxyFactory] = []
        self.trackers: list[Tracked] = []
        self.addCleanup(self.tearDownConnections)

    async def tearDownConnections(self) -> None:
        for client in self.clients:
            if not client.isLost and client.transport is not None:
                client.transport.abortConnection()
        await until(lambda: all(c.isLost for c in self.clients), "the clients to close")
        await until(
            lambda: all(p.ended for f in self.proxies for p in f.built),
            "the proxy's connections to close",
        )
        await until(
            lambda: not any(t.live for t in self.trackers), "the upstream connections to close"
        )
        for port in self.ports:
            await port.stopListening()

    def listen(self, factory: IProtocolFactory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return cast(int, port.getHost().port)

    def web(self, resource: Resource | None = None) -> tuple[int, TrackedSite]:
        site = TrackedSite(resource or webRoot())
        self.trackers.append(site.tracked)
        return self.listen(site), site

    def scripted(
        self,
        handler: Handler,
        onRequest: Callable[[ScriptedConnection, h11.Request], None] = lambda c, r: None,
    ) -> tuple[int, ScriptedServer]:
        server = ScriptedServer(handler, onRequest)
        self.trackers.append(server.tracked)
        return self.listen(server), server

    def raw(self, make: Callable[[Tracked], Protocol]) -> tuple[int, Tracked]:
        tracked = Tracked()
        self.trackers.append(tracked)
        return self.listen(ProtocolFactory(lambda: make(tracked))), tracked

    def proxy(
        self,
        router: Any,
        limits: Limits = Limits(),  # noqa: B008
        *,
        wrap: Callable[[IProtocolFactory], IProtocolFactory] | None = None,
        factoryClass: type[TrackedProxyFactory] = TrackedProxyFactory,
        explain: Explainer = proxyRefusal,
    ) -> int:
        """A proxy listening on loopback; it explains failures as the proxy listeners do."""
        factory = factoryClass(
            router,
            reactor,
            limits=limits,
            log=self.log,
            explain=explain,
            # the words the proxy listeners give failed TLS handshakes
            describeFailure=describeTransportFailure,
        )
        self.proxies.append(factory)
        return self.listen(wrap(factory) if wrap is not None else factory)

    async def connect(
        self, port: int, protocol: Any, endpoint: IStreamClientEndpoint | None = None
    ) -> Any:
        self.clients.append(protocol)
        await (endpoint or tcp(port)).connect(ProtocolFactory(lambda: protocol))
        return protocol

    async def client(self, port: int, **kwargs: Any) -> HTTPClient:
        return cast(HTTPClient, await self.connect(port, HTTPClient(**kwargs)))

    async def rawClient(self, port: int, send: bytes = b"") -> RawClient:
        client = cast(RawClient, await self.connect(port, RawClient()))
        if send:
            assert client.transport is not None
            client.transport.write(send)
        return client

    async def refused(self, port: int, request: bytes) -> bytes:
        """Send C{request}; return the whole answer, which must end the connection."""
        client = await self.rawClient(port, request)
        await client.lost
        self.assertTrue(client.eof, "the proxy reset the connection instead of closing it")
        return client.received

    def refusals(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "status" in e and "reason" in e]

    def assertRefusal(self, status: int, **fields: Any) -> dict[str, Any]:
        """Exactly one log line for the refusal, with its fields, and no traceback."""
        refusals = self.refusals()
        self.assertEqual(len(refusals), 1, [formatEvent(e) for e in self.events])
        (event,) = refusals
        self.assertEqual(event["status"], status)
        for name, value in fields.items():
            self.assertEqual(event[name], value, name)
        self.assertTrue(event["peer"].startswith("127.0.0.1:"), event["peer"])
        self.assertFalse([e for e in self.events if "log_failure" in e])
        return event

    def webRoute(self, port: int, key: Any = "edge-1", **kwargs: Any) -> Route:
        return Route(key=key, endpoint=tcp(port), description=f"{key} upstream", **kwargs)


# -- HTTP forwarding -----------------------------------------------------------------------


class ForwardingTests(ProxyTestCase):
    async def test_keepAliveReusesOneUpstreamConnection(self) -> None:
        """Several requests on one client connection travel on one upstream connection."""
        port, site = self.web()
        router = HostRouter({b"10.0.0.7:10250": self.webRoute(port)})
        proxy = self.proxy(router)
        client = await self.client(proxy)
        ports = set()
        for n in range(5):
            client.get(f"/headers?n={n}".encode(), b"10.0.0.7:10250")
            exchange = await client.response()
            self.assertEqual(exchange.status, 200)
            self.assertEqual(exchange.json()["uri"], f"/headers?n={n}")
            ports.add(exchange.json()["upstreamPort"])
        self.assertEqual(len(ports), 1)
        self.assertEqual(site.tracked.made, 1)
        self.assertEqual(len(router.heads), 5, "every request is routed")
        self.assertFalse(client.isLost)
        self.assertEqual(self.refusals(), [])

    async def test_pipelinedRequests(self) -> None:
        """Requests sent back to back are answered in order, on one upstream connection."""
        port, site = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.rawClient(
            proxy,
            b"".join(f"GET /headers?n={n} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for n in range(3)),
        )
        await until(lambda: client.received.count(b"HTTP/1.1 200") == 3, "three responses")
        await until(lambda: client.received.count(b"bodyLength") == 3, "three bodies")
        positions = [client.received.index(f"n={n}".encode()) for n in range(3)]
        self.assertEqual(positions, sorted(positions))
        self.assertEqual(site.tracked.made, 1)

    async def test_upstreamEndsKeepAlive(self) -> None:
        """
        After an upstream closes its connection (C{Connection: close}), the
        next request on the same client connection gets a new one, same key.
        """

        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            c.respond(200, f"#{len(c.server.connections)}".encode(), [(b"connection", b"close")])

        port, server = self.scripted(handler)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        for expected in (b"#1", b"#2"):
            client.get(b"/", b"a")
            exchange = await client.response()
            self.assertEqual(exchange.body, expected)
            self.assertIsNone(exchange.header(b"connection"))
        self.assertEqual(server.tracked.made, 2)
        self.assertFalse(client.isLost)

    async def test_staleKeptAliveUpstreamRetried(self) -> None:
        """
        A kept-alive upstream connection that closes as a GET is sent on it
        (the idle race every proxy meets): the GET is sent again on a new
        connection, and the client never knows.
        """

        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            if r.target in (b"/2", b"/4") and len(c.requests) > 1:
                c.transport.loseConnection()  # type: ignore[union-attr]
            else:
                c.respond(200, f"conn {len(c.server.connections)}".encode())

        port, server = self.scripted(handler)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/1", b"a")
        self.assertEqual((await client.response()).body, b"conn 1")
        client.get(b"/2", b"a")
        self.assertEqual((await client.response()).body, b"conn 2")
        self.assertEqual(server.tracked.made, 2)
        # a request with a body is not sent twice
        client.send(b"POST", b"/3", [(b"host", b"a")], b"data")
        self.assertEqual((await client.response()).status, 200)
        client.send(b"POST", b"/4", [(b"host", b"a")], b"data")
        exchange = await client.response()
        self.assertEqual(exchange.status, 502)
        self.assertIn(b"closed the connection before answering", exchange.body)

    async def test_http10Upstream(self) -> None:
        """
        A connection-delimited response from an HTTP/1.0 upstream reaches an
        HTTP/1.1 client chunked, and the client connection goes on.
        """
        port, tracked = self.raw(HTTP10Upstream)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        for _ in range(2):
            client.get(b"/", b"a")
            exchange = await client.response()
            self.assertEqual(exchange.body, b"old school")
            self.assertEqual(exchange.header(b"transfer-encoding"), b"chunked")
        self.assertEqual(tracked.made, 2)
        self.assertFalse(client.isLost)

    async def test_upstreamDiesMidResponse(self) -> None:
        """
        An upstream that dies in the middle of a body: the client sees a
        truncated message, never a complete one, and one warning is logged.
        """

        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            assert c.transport is not None
            c.transport.write(
                c.conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"100")]))
            )
            c.transport.write(c.conn.send(h11.Data(data=b"0123456789")))
            c.transport.loseConnection()

        port, _ = self.scripted(handler)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/", b"a")
        await client.lost
        events = [e for _, e in client.events]
        self.assertIsInstance(events[0], h11.Response)
        self.assertFalse([e for e in events if isinstance(e, h11.EndOfMessage)])
        self.assertIsNotNone(client.error)
        (warning,) = [e for e in self.events if "before its end" in e["log_format"]]
        self.assertEqual(warning["target"], "/")

    async def test_clientLeavesMidStream(self) -> None:
        """A client that leaves a never-ending stream takes the upstream connection with it."""
        port, site = self.web(Lines(count=10000, interval=0.01))
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/", b"a")
        await until(lambda: client.bodyLength > 0, "the first line")
        self.assertEqual(len(site.tracked.live), 1)
        assert client.transport is not None
        client.transport.loseConnection()
        await until(lambda: not site.tracked.live, "the upstream connection to close")

    async def test_streamingLines(self) -> None:
        """
        A chunked response flows as it is produced: the first line reaches
        the client long before the last is written (C{kubectl logs -f}).
        """
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/stream", b"a")
        exchange = await client.response()
        self.assertEqual(exchange.status, 200)
        self.assertEqual(exchange.header(b"transfer-encoding"), b"chunked")
        lines = exchange.body.splitlines()
        self.assertEqual(len(lines), 10)
        first = next(t for t, d in exchange.dataTimes if b"line 0 " in d)
        last = next(t for t, d in exchange.dataTimes if b"line 9 " in d)
        self.assertGreater(last - first, 0.5, "the lines came together, not as written")
        # each line arrived soon after it was written
        for when, data in exchange.dataTimes:
            for line in data.splitlines():
                written = float(line.split(b" at ")[1])
                self.assertLess(when - written, 0.4, line)

    async def test_largeUploadStreamedBothWays(self) -> None:
        """An 8 MiB POST reaches the upstream intact, and its echo comes back intact."""
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        body = pattern(8 * MiB, seed=1)
        digest = hashlib.sha256(body).hexdigest().encode()
        client.send(b"POST", b"/upload", [(b"host", b"a")], body)
        exchange = await client.response(timeout=30)
        self.assertEqual(exchange.status, 200)
        self.assertEqual(exchange.header(b"x-received-sha256"), digest)
        self.assertEqual(hashlib.sha256(exchange.body).hexdigest().encode(), digest)

    async def test_chunkedUploadAndTrailers(self) -> None:
        """A chunked request body stays chunked upstream; trailers travel both ways."""

        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            c.respond(200, sha.hexdigest().encode(), trailers=[(b"x-checksum", b"ok")])

        port, server = self.scripted(handler)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        assert client.transport is not None
        client.send(
            b"PUT",
            b"/",
            [(b"host", b"a"), (b"transfer-encoding", b"chunked")],
            b"part one, ",
            end=False,
        )
        client.transport.write(client.conn.send(h11.Data(data=b"part two")))
        client.transport.write(client.conn.send(h11.EndOfMessage(headers=[(b"x-sent", b"1")])))
        exchange = await client.response()
        self.assertEqual(exchange.body, hashlib.sha256(b"part one, part two").hexdigest().encode())
        self.assertEqual(exchange.trailers, [(b"x-checksum", b"ok")])
        (request,) = server.connections[0].requests
        self.assertIn((b"transfer-encoding", b"chunked"), list(request.headers))

    async def test_slowClientPausesUpstream(self) -> None:
        """
        A client that stops reading a 50 MiB response does not make the
        proxy buffer it: the upstream is paused long before it has written
        it all, and everything arrives once the client reads again.
        """
        big = Big(50 * MiB)
        port, _ = self.web(big)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy, keepBody=False)
        assert client.transport is not None
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.transport.pauseProducing()
        client.get(b"/", b"a")
        await until(lambda: big.producers, "the request")
        producer = big.producers[0]
        await settled(lambda: producer.paused and producer.sent, "the upstream to stay paused")
        # the kernel's socket buffers on the way hold a few MiB: not 50
        self.assertLess(producer.sent, 20 * MiB)
        (proxyProtocol,) = self.proxies[0].built
        transport: Any = proxyProtocol.transport
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, 2 * MiB)
        client.transport.resumeProducing()
        exchange = await client.response(timeout=60)
        self.assertEqual(exchange.status, 200)
        self.assertEqual(client.bodyLength, 50 * MiB)
        self.assertTrue(producer.done)

    async def test_slowUpstreamPausesClient(self) -> None:
        """
        An upstream that does not read a 50 MiB upload makes the proxy stop
        reading the client: the client's own sending is paused long before
        it has sent it all; the body arrives intact once the upstream reads.
        """
        waiting: list[ScriptedConnection] = []

        def onRequest(c: ScriptedConnection, r: h11.Request) -> None:
            assert c.transport is not None
            c.transport.pauseProducing()
            waiting.append(c)

        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            c.respond(200, f"{n} {sha.hexdigest()}".encode())

        port, _ = self.scripted(handler, onRequest)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        assert client.transport is not None
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        size = 50 * MiB
        client.send(
            b"POST", b"/", [(b"host", b"a"), (b"content-length", str(size).encode())], end=False
        )
        writer = BodyWriter(client, size)
        client.transport.registerProducer(writer, True)
        writer.resumeProducing()
        await until(lambda: waiting, "the request head upstream")
        await settled(lambda: writer.paused and writer.sent, "the client to stay pushed back")
        self.assertLess(writer.sent, 20 * MiB)
        (proxyProtocol,) = self.proxies[0].built
        transport: Any = proxyProtocol._upstream.transport  # type: ignore[union-attr]
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, 2 * MiB)
        waiting[0].transport.resumeProducing()  # type: ignore[union-attr]
        exchange = await client.response(timeout=60)
        self.assertEqual(exchange.body, f"{size} {writer.sha.hexdigest()}".encode())

    async def test_hopByHopHeadersStripped(self) -> None:
        """
        Hop-by-hop fields (and those C{Connection} names) do not cross the
        proxy in either direction; end-to-end fields do.
        """
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(
            b"/headers",
            b"a",
            (b"Connection", b"keep-alive, X-Drop-Me"),
            (b"X-Drop-Me", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Authorization", b"Basic Zm9vOmJhcg=="),
            (b"X-Keep", b"yes"),
            (b"Authorization", b"Bearer token"),
        )
        exchange = await client.response()
        received = {name for name, _ in exchange.json()["headers"]}
        self.assertEqual(received, {"host", "x-keep", "authorization"})
        names = {name for name, _ in exchange.headers}
        self.assertIn(b"x-resp-keep", names)
        for gone in (b"x-resp-drop", b"keep-alive", b"proxy-authenticate"):
            self.assertNotIn(gone, names)
        self.assertNotIn((b"connection", b"X-Resp-Drop"), exchange.headers)

    async def test_hostRewritten(self) -> None:
        """The route's C{hostHeader} replaces the client's C{Host}."""
        port, site = self.web()
        route = self.webRoute(port, hostHeader=b"127.0.0.1:10250")
        proxy = self.proxy(HostRouter({b"10.0.0.7:10250": route}))
        client = await self.client(proxy)
        client.get(b"/headers", b"10.0.0.7:10250")
        exchange = await client.response()
        self.assertEqual(site.requests, [(b"GET", b"/headers", b"127.0.0.1:10250")])
        self.assertIn(["host", "127.0.0.1:10250"], exchange.json()["headers"])

    async def test_absoluteFormToOriginForm(self) -> None:
        """
        A request in absolute form goes upstream in origin form, with the
        target's authority as its C{Host} (RFC 9112 section 3.2.2), the
        received C{Host} dropped; a route's own C{hostHeader} still wins.
        """
        port, site = self.web()
        proxy = self.proxy(
            HostRouter(
                {
                    b"edge-1:9051": self.webRoute(port),
                    b"10.0.0.7:10250": self.webRoute(
                        port, key="edge-2", hostHeader=b"127.0.0.1:10250"
                    ),
                }
            )
        )
        client = await self.client(proxy)
        client.get(b"http://Edge-1:9051/headers?x=1", b"elsewhere")
        exchange = await client.response()
        self.assertEqual(exchange.json()["uri"], "/headers?x=1")
        other = await self.client(proxy)
        other.get(b"HTTP://10.0.0.7:10250/headers", b"10.0.0.7:10250")
        await other.response()
        self.assertEqual(
            site.requests,
            [
                (b"GET", b"/headers?x=1", b"Edge-1:9051"),
                (b"GET", b"/headers", b"127.0.0.1:10250"),
            ],
        )

    async def test_headAnd204(self) -> None:
        """HEAD and 204 answers have no body, and the connection goes on."""
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.send(b"HEAD", b"/headers", [(b"host", b"a")])
        head = await client.response()
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        self.assertIsNotNone(head.header(b"content-length"))
        client.get(b"/nocontent", b"a")
        self.assertEqual((await client.response()).status, 204)
        client.get(b"/headers", b"a")
        self.assertEqual((await client.response()).json()["method"], "GET")

    async def test_http10Client(self) -> None:
        """An HTTP/1.0 client gets its answer unchunked, and then the connection closes."""
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.rawClient(proxy, b"GET /lines HTTP/1.0\r\nHost: a\r\n\r\n")
        await client.lost
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertNotIn(b"chunked", head.lower())
        self.assertEqual(len(body.splitlines()), 10)

    async def test_connectionCloseFromClient(self) -> None:
        """C{Connection: close} from the client: answered, then closed by the proxy."""
        port, _ = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/headers", b"a", (b"connection", b"close"))
        exchange = await client.response()
        self.assertEqual(exchange.status, 200)
        self.assertEqual(exchange.header(b"connection"), b"close")
        await client.lost

    async def test_earlyAnswerClosesConnection(self) -> None:
        """
        An upstream that answers before the request body is complete: the
        answer reaches the client with C{Connection: close}.
        """

        def onRequest(c: ScriptedConnection, r: h11.Request) -> None:
            c.respond(413, b"too big")

        port, _ = self.scripted(lambda *a: None, onRequest)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.send(
            b"POST", b"/", [(b"host", b"a"), (b"content-length", b"1000000")], b"x", end=False
        )
        exchange = await client.response()
        self.assertEqual(exchange.status, 413)
        self.assertEqual(exchange.header(b"connection"), b"close")
        await client.lost

    async def test_tlsTerminatedBeforeTheProxy(self) -> None:
        """Wrapped in C{TLSMemoryBIOFactory}, the proxy serves HTTPS clients the same way."""
        pki = TestPKI()
        port, _ = self.web()
        creds = pki.credentials(pki.server)
        options = CertificateOptions(
            privateKey=creds.certificate.privateKey.original,
            certificate=creds.certificate.original,
        )
        proxy = self.proxy(
            HostRouter({b"a": self.webRoute(port)}),
            wrap=lambda f: TLSMemoryBIOFactory(options, False, f),
        )
        endpoint = wrapClientTLS(
            optionsForClientTLS("127.0.0.1", trustRoot=trustRootFromCertificates(creds.authority)),
            tcp(proxy),
        )
        client = cast(HTTPClient, await self.connect(proxy, HTTPClient(), endpoint))
        client.get(b"/lines", b"a")
        self.assertEqual(len((await client.response()).body.splitlines()), 10)
        client.get(b"/headers", b"a", (b"connection", b"close"))
        self.assertEqual((await client.response()).status, 200)
        await client.lost

    async def test_tlsClientRefusedIsSaid(self) -> None:
        """
        Behind the HTTPS listener's TLS, a client refused in the handshake
        (no certificate) gets one warning that says why in words, not
        OpenSSL's tuples; nothing is routed.
        """
        pki = TestPKI()
        port, site = self.web()
        creds = pki.credentials(pki.server)
        router = HostRouter({b"a": self.webRoute(port)})
        proxy = self.proxy(
            router, wrap=lambda f: TLSMemoryBIOFactory(proxyServingOptions(creds), False, f)
        )
        endpoint = wrapClientTLS(
            optionsForClientTLS("127.0.0.1", trustRoot=trustRootFromCertificates(creds.authority)),
            tcp(proxy),
        )
        client = cast(HTTPClient, await self.connect(proxy, HTTPClient(), endpoint))
        client.get(b"/headers", b"a")
        await client.lost

        def said() -> list[str]:
            return [formatEvent(e) for e in self.events if "TLS with client" in e["log_format"]]

        await until(said, "the refusal to be logged")
        [line] = said()
        self.assertIn("HTTP proxy: TLS with client 127.0.0.1:", line)
        self.assertIn("the peer sent no client certificate", line)
        self.assertNotIn("SSL routines", line)
        self.assertEqual((router.heads, site.requests), ([], []))

    async def test_httpsUpstreamWithClientCertificate(self) -> None:
        """
        An HTTPS upstream (a kubelet stand-in) that requires a client
        certificate signed by its own CA is reached through a route wrapped
        in client TLS; without the certificate it refuses, and the client
        gets C{502}.
        """
        pki = TestPKI()
        kubeletCA = pki.otherCA  # signs the proxy's client certificate, not the tunnel's
        serving = pki.credentials(pki.server, ca=kubeletCA)
        kubelet = CertificateOptions(
            privateKey=serving.certificate.privateKey.original,
            certificate=serving.certificate.original,
            trustRoot=trustRootFromCertificates(serving.authority),
        )
        site = TrackedSite(webRoot())
        self.trackers.append(site.tracked)
        tlsPort = self.listen(TLSMemoryBIOFactory(kubelet, False, site))
        proxyClient = pki.credentials(pki.foreignAgent("proxy-client"), ca=pki.ca)
        trust = trustRootFromCertificates(proxyClient.authority)
        good = wrapClientTLS(
            optionsForClientTLS(
                "127.0.0.1", trustRoot=trust, clientCertificate=proxyClient.certificate
            ),
            tcp(tlsPort),
        )
        bad = wrapClientTLS(optionsForClientTLS("127.0.0.1", trustRoot=trust), tcp(tlsPort))
        stranger = wrapClientTLS(
            optionsForClientTLS(
                "127.0.0.1",
                trustRoot=trustRootFromCertificates(serving.authority),  # not the tunnel's
                clientCertificate=proxyClient.certificate,
            ),
            tcp(tlsPort),
        )
        proxy = self.proxy(
            HostRouter(
                {
                    b"good:10250": Route("good", good, description="kubelet with a cert"),
                    b"bad:10250": Route("bad", bad, description="kubelet without a cert"),
                    b"stranger:10250": Route(
                        "stranger", stranger, description="kubelet of another CA"
                    ),
                }
            )
        )
        client = await self.client(proxy)
        client.get(b"/headers", b"good:10250")
        self.assertEqual((await client.response()).json()["method"], "GET")
        client.get(b"/lines", b"good:10250")
        self.assertEqual(len((await client.response()).body.splitlines()), 10)
        # each failure in words (tls.failures), not OpenSSL's tuples
        for host, words in [
            (b"bad:10250", [b"kubelet without a cert closed the connection",
                            b"the peer requires a client certificate, and we sent none"]),
            (b"stranger:10250", [b"we refused the peer's certificate", b"unknown CA",
                                 pki.server.certificate.subject.rfc4514_string().encode()]),
        ]:  # fmt: skip
            other = await self.client(proxy)
            other.get(b"/headers", host)
            exchange = await other.response()
            self.assertEqual(exchange.status, 502)
            for word in [*words, b"docs/operations.md"]:
                self.assertIn(word, exchange.body)
        self.assertEqual(len(site.requests), 1)


class RequestStreamingTests(SynchronousTestCase):
    """Pure helpers."""

    def test_forwardedRequestHeaders(self) -> None:
        headers = [
            (b"Host", b"a"),
            (b"Connection", b"Upgrade, X-Private, Content-Length, Host"),
            (b"Upgrade", b"SPDY/3.1"),
            (b"X-Private", b"1"),
            (b"Content-Length", b"3"),
            (b"TE", b"trailers"),
            (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
        ]
        self.assertEqual(
            forwardedRequestHeaders(headers, hostHeader=b"127.0.0.1:10250"),
            [
                (b"Host", b"127.0.0.1:10250"),
                (b"Content-Length", b"3"),
                (b"X-Stream-Protocol-Version", b"v4.channel.k8s.io"),
                (b"Connection", b"Upgrade"),
                (b"Upgrade", b"SPDY/3.1"),
            ],
        )

    def test_forwardedRequestHeadersChunkedNoHost(self) -> None:
        headers = [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"9")]
        self.assertEqual(
            forwardedRequestHeaders(headers, defaultHost=b"10.0.0.7:10255"),
            [(b"Host", b"10.0.0.7:10255"), (b"Transfer-Encoding", b"chunked")],
        )

    def test_upgradeNeedsBothHeaders(self) -> None:
        """C{Upgrade} without C{Connection: upgrade} is just a hop-by-hop field."""
        self.assertEqual(
            forwardedRequestHeaders([(b"host", b"a"), (b"upgrade", b"websocket")]),
            [(b"host", b"a")],
        )

    def test_forwardedResponseHeaders(self) -> None:
        headers = [
            (b"Content-Type", b"text/plain"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"12"),
            (b"Connection", b"close"),
            (b"Proxy-Authenticate", b"Basic"),
        ]
        self.assertEqual(forwardedResponseHeaders(headers), [(b"Content-Type", b"text/plain")])

    def test_requestHeadHost(self) -> None:
        def head(target: bytes, *headers: tuple[bytes, bytes]) -> RequestHead:
            return RequestHead(b"GET", target, headers, b"1.1")

        self.assertEqual(head(b"/", (b"host", b" Node-1:10250 ")).host(), b"node-1:10250")
        self.assertIsNone(head(b"/").host())
        self.assertEqual(
            head(b"HTTP://10.0.0.7:10255/metrics", (b"host", b"other")).host(),
            b"10.0.0.7:10255",
        )

    def test_originForm(self) -> None:
        """
        The absolute form becomes the origin form and names its authority
        (without user information); every other form is left alone.
        """
        cases = {
            b"http://edge-1:9051/": (b"/", b"edge-1:9051"),
            b"http://edge-1:9051": (b"/", b"edge-1:9051"),
            b"HTTPS://u:p@10.0.0.7:10250/pods?a=b/c": (b"/pods?a=b/c", b"10.0.0.7:10250"),
            b"http://[fd00::7]:10255?q": (b"/?q", b"[fd00::7]:10255"),
            b"http:///x": (b"/x", None),
            b"/metrics": (b"/metrics", None),
            b"*": (b"*", None),
            b"10.0.0.7:10250": (b"10.0.0.7:10250", None),
            b"ftp://a/b": (b"ftp://a/b", None),
        }
        for target, expected in cases.items():
            self.assertEqual(originForm(target), expected, target)

    def test_interfaces(self) -> None:
        factory = HTTPProxyFactory(lambda h, p: succeed(None), reactor)  # type: ignore[arg-type]
        verifyObject(IProtocolFactory, factory)
        verifyObject(IHalfCloseableProtocol, factory.buildProtocol(None))


@implementer(IPushProducer)
class BodyWriter:
    """Writes a request body through an L{HTTPClient} while the connection takes it."""

    def __init__(self, client: HTTPClient, size: int) -> None:
        self.client = client
        self.size = size
        self.sent = 0
        self.paused = False
        self.sha = hashlib.sha256()
        self.block = pattern(64 * 1024, seed=2)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        transport: Any = self.client.transport
        while not self.paused and self.sent < self.size:
            chunk = self.block[: min(len(self.block), self.size - self.sent)]
            self.sent += len(chunk)
            self.sha.update(chunk)
            transport.write(self.client.conn.send(h11.Data(data=chunk)))
        if self.sent >= self.size and self.client.conn.our_state is h11.SEND_BODY:
            transport.write(self.client.conn.send(h11.EndOfMessage()))
            transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.paused = True


# -- upgrades -----------------------------------------------------------------------------


class UpgradeTests(ProxyTestCase):
    async def test_webSocketEcho(self) -> None:
        """A WebSocket (wsproto on both ends) reached through C{Upgrade}: a text round trip."""
        port, tracked = self.raw(WebSocketEcho)
        proxy = self.proxy(HostRouter({b"10.0.0.7:10250": self.webRoute(port)}))
        client = cast(
            WebSocketClient, await self.connect(proxy, WebSocketClient("10.0.0.7:10250"))
        )
        await until(lambda: client.accepted, "the handshake")
        client.sendText("hello through the tunnel")
        await until(lambda: client.messages, "the echo")
        self.assertEqual(client.messages, ["echo: hello through the tunnel"])
        client.sendText("again")
        await until(lambda: len(client.messages) == 2, "the second echo")
        self.assertEqual(tracked.made, 1)

    async def test_rawUpgradeBytesAheadAndHalfClose(self) -> None:
        """
        Bytes sent right behind the request head and right behind the C{101}
        are relayed first, in order; an EOF travels across and back.
        """
        port, tracked = self.raw(RawUpgrade)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.rawClient(
            proxy,
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\nearly-",
        )
        await until(lambda: client.received.endswith(b"HELLOEARLY-"), "the greeting")
        head = client.received.split(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"upgrade: shout", head.lower())
        assert client.transport is not None
        client.transport.write(b"later")
        await until(lambda: client.received.endswith(b"EARLY-LATER"), "the echo")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await client.lost
        self.assertTrue(client.received.endswith(b"LATERBYE"))
        self.assertTrue(client.eof)

    async def test_upgradeRefusedContinuesHTTP(self) -> None:
        """An upstream that answers an Upgrade with a 200: passed back, and HTTP goes on."""
        port, site = self.web()
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/headers", b"a", (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
        exchange = await client.response()
        self.assertEqual(exchange.status, 200)
        received = exchange.json()["headers"]
        self.assertIn(["connection", "Upgrade"], received)
        self.assertIn(["upgrade", "websocket"], received)
        client.get(b"/headers?again", b"a")
        self.assertEqual((await client.response()).json()["uri"], "/headers?again")
        self.assertEqual(site.tracked.made, 1)


# -- refusals ------------------------------------------------------------------------------


class RefusalTests(ProxyTestCase):
    async def test_hostSwitchMisdirected(self) -> None:
        """
        A request for another node on a kept-alive connection gets C{421},
        the connection is closed, and the other upstream never sees it.
        """
        portA, siteA = self.web()
        portB, siteB = self.web()
        router = HostRouter(
            {
                b"node-a:10250": self.webRoute(portA, "a"),
                b"node-b:10250": self.webRoute(portB, "b"),
            }
        )
        proxy = self.proxy(router)
        client = await self.client(proxy)
        client.get(b"/headers", b"node-a:10250")
        self.assertEqual((await client.response()).status, 200)
        client.get(b"/headers", b"node-b:10250")
        exchange = await client.response()
        self.assertEqual(exchange.status, 421)
        self.assertEqual(exchange.header(b"connection"), b"close")
        self.assertIn(b"a upstream", exchange.body)
        await client.lost
        self.assertEqual(siteB.tracked.made, 0)
        self.assertEqual(len(siteA.requests), 1)
        self.assertRefusal(421, method="GET", target="/headers", host="node-b:10250")

    async def test_routeRefused(self) -> None:
        """L{RouteRefused}: its status, its reason as the body, one log line."""
        proxy = self.proxy(HostRouter({}))
        answer = await self.refused(proxy, b"GET /x HTTP/1.1\r\nHost: 10.0.0.7:22\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 Forbidden\r\n"), answer)
        self.assertTrue(answer.endswith(b"\r\n\r\n10.0.0.7:22 is not forwarded\n"), answer)
        self.assertRefusal(403, host="10.0.0.7:22", reason="10.0.0.7:22 is not forwarded")

    async def assertConnectFailure(self, endpoint: IStreamClientEndpoint, status: int) -> bytes:
        proxy = self.proxy(HostRouter({b"a": Route("a", endpoint, description="node a")}))
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(f"HTTP/1.1 {status} ".encode()), answer)
        self.assertRefusal(status, route="node a")
        return answer

    async def test_nodeNotConnected(self) -> None:
        answer = await self.assertConnectFailure(FailingEndpoint(NodeNotConnected("a")), 502)
        self.assertIn(b"no agent connected for node 'a'", answer)

    async def test_engineKnowsNothingOfTunnels(self) -> None:
        """
        Without an explainer, a tunnel's failure is just a failed connection
        (502 with its text): only the proxy listeners give it a meaning.
        """
        router = HostRouter({b"a": Route(("a", 80), FailingEndpoint(StreamOpenTimeout("late")))})
        answer = await self.refused(
            self.proxy(router, explain=lambda error: None), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertIn(b"late", answer)

    async def test_streamOpenFailed(self) -> None:
        endpoint = FailingEndpoint(StreamOpenFailed(1, "connection refused by 10.0.0.7:10250"))
        answer = await self.assertConnectFailure(endpoint, 502)
        self.assertTrue(answer.endswith(b"\r\n\r\nconnection refused by 10.0.0.7:10250\n"))

    async def test_streamOpenTimeout(self) -> None:
        endpoint = FailingEndpoint(StreamOpenTimeout("the agent did not answer in 10s"))
        await self.assertConnectFailure(endpoint, 504)

    async def test_connectionRefused(self) -> None:
        """An upstream nobody listens on: C{502}."""
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        closedPort = probe.getsockname()[1]
        probe.close()
        answer = await self.assertConnectFailure(tcp(closedPort), 502)
        self.assertIn(b"cannot connect to node a", answer)

    async def test_upstreamClosesBeforeAnswering(self) -> None:
        def handler(c: ScriptedConnection, r: h11.Request, sha: Any, n: int) -> None:
            c.transport.loseConnection()  # type: ignore[union-attr]

        port, _ = self.scripted(handler)
        answer = await self.assertConnectFailure(tcp(port), 502)
        self.assertIn(b"node a closed the connection before answering", answer)

    async def test_upstreamTimeout(self) -> None:
        """An upstream that never answers: C{504} after C{upstreamTimeout}."""
        port, _ = self.scripted(lambda *a: None)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}), Limits(upstreamTimeout=0.2))
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 "), answer)
        self.assertRefusal(504)

    async def test_connectTimeout(self) -> None:
        """An upstream not connected within C{upstreamTimeout}: C{504}, attempt cancelled."""
        endpoint = HangingEndpoint()
        proxy = self.proxy(
            HostRouter({b"a": Route("a", endpoint, description="node a")}),
            Limits(upstreamTimeout=0.2),
        )
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 "), answer)
        self.assertIn(b"node a did not connect within 0.2s", answer)
        self.assertEqual(endpoint.cancelled, 1)

    async def test_clientLeavesWhileConnecting(self) -> None:
        """
        A client that leaves while its upstream connection is being made
        cancels it: nothing is left half-open behind it (yurt-tunnel #1440).
        """
        endpoint = HangingEndpoint()
        proxy = self.proxy(HostRouter({b"a": Route("a", endpoint)}))
        client = await self.rawClient(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: endpoint.attempts, "the connection attempt")
        assert client.transport is not None
        client.transport.loseConnection()
        await until(lambda: endpoint.cancelled == 1, "the attempt to be cancelled")
        self.assertEqual(client.received, b"")
        self.assertEqual(self.refusals(), [])

    async def test_routerForms(self) -> None:
        """A router may answer with a Deferred or a coroutine, and may raise tunnel errors."""
        port, _ = self.web()
        route = self.webRoute(port)

        async def asyncRouter(head: RequestHead, peer: Any) -> Route:
            await deferLater(reactor, 0, lambda: None)
            if head.host() == b"gone":
                raise NodeNotConnected("gone")
            return route

        for router in (asyncRouter, lambda head, peer: succeed(route)):
            client = await self.client(self.proxy(router))
            client.get(b"/headers", b"a")
            self.assertEqual((await client.response()).status, 200)
        answer = await self.refused(
            self.proxy(asyncRouter), b"GET / HTTP/1.1\r\nHost: gone\r\n\r\n"
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)

    async def test_routerBug(self) -> None:
        """A router that fails unexpectedly: C{500}, and the traceback is logged."""

        def router(head: RequestHead, peer: Any) -> Route:
            raise ZeroDivisionError()

        answer = await self.refused(self.proxy(router), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 500 "), answer)
        (failure,) = [e["log_failure"] for e in self.events if "log_failure" in e]
        self.assertTrue(failure.check(ZeroDivisionError))

    async def test_routerPerConnection(self) -> None:
        """L{HTTPProxyFactory.routerFor} sees each connection's transport (e.g. for DNAT)."""
        port, _ = self.web()
        seen: list[Any] = []

        class PerConnection(TrackedProxyFactory):
            def routerFor(self, transport: Any) -> Any:
                seen.append(transport.getHost().port)
                return HostRouter({b"a": Route("a", tcp(port))})

        proxy = self.proxy(None, factoryClass=PerConnection)
        client = await self.client(proxy)
        client.get(b"/headers", b"a")
        self.assertEqual((await client.response()).status, 200)
        self.assertEqual(seen, [proxy])

    async def test_badRequest(self) -> None:
        proxy = self.proxy(HostRouter({}))
        answer = await self.refused(proxy, b"NOT HTTP AT ALL\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertRefusal(400)

    async def test_connectRefused(self) -> None:
        proxy = self.proxy(HostRouter({}))
        answer = await self.refused(proxy, b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 "), answer)

    async def test_headTooLarge(self) -> None:
        """A head over C{maxHeaderBytes}, whether it comes at once or bit by bit: C{431}."""
        proxy = self.proxy(HostRouter({}))
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 20000 + b"\r\n\r\n"
        answer = await self.refused(proxy, big)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        client = await self.rawClient(proxy, big[:10000])
        assert client.transport is not None
        client.transport.write(big[10000:-4])
        await client.lost
        self.assertTrue(client.received.startswith(b"HTTP/1.1 431 "), client.received)

    async def test_tooManyHeaders(self) -> None:
        proxy = self.proxy(HostRouter({}), Limits(maxHeaders=20))
        fields = b"".join(b"X-%d: 1\r\n" % n for n in range(21))
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        self.assertIn(b"more than 20 header fields", answer)
        self.assertRefusal(431)

    async def test_slowloris(self) -> None:
        """Half a head, then nothing: C{408} after C{headerTimeout}, and closed."""
        proxy = self.proxy(HostRouter({}), Limits(headerTimeout=0.3))
        started = time.monotonic()
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n")
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
        self.assertRefusal(408)

    async def test_silentClient(self) -> None:
        """A client that connects and says nothing is closed after C{headerTimeout}."""
        proxy = self.proxy(HostRouter({}), Limits(headerTimeout=0.2))
        answer = await self.refused(proxy, b"")
        self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)

    async def test_idleKeepAliveClosedQuietly(self) -> None:
        """
        A kept-alive connection idle past C{idleTimeout} is closed without a
        word; a head that starts in time but trickles gets C{408}.
        """
        port, site = self.web()
        limits = Limits(idleTimeout=0.3, headerTimeout=0.3)
        proxy = self.proxy(HostRouter({b"a": self.webRoute(port)}), limits)
        client = await self.rawClient(proxy, b"GET /headers HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: client.received.endswith(b"}"), "the answer")
        answered = client.received
        await client.lost
        self.assertEqual(client.received, answered)
        self.assertTrue(client.eof)
        self.assertEqual(self.refusals(), [])

        other = await self.rawClient(proxy, b"GET /headers HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: other.received.endswith(b"}"), "the answer")
        assert other.transport is not None
        other.transport.write(b"GET /head")
        await other.lost
        self.assertIn(b"HTTP/1.1 408 ", other.received)


class RouterForTests(SynchronousTestCase):
    def test_routerPerConnection(self) -> None:
        """
        A factory given no router must make one per connection (routerFor):
        the proxy listeners route by each connection's original destination.
        """
        factory = HTTPProxyFactory(None, Clock())
        with self.assertRaises(TypeError) as caught:
            factory.routerFor(StringTransport())
        self.assertIn("override routerFor", str(caught.exception))
        router = HostRouter({})
        self.assertIs(HTTPProxyFactory(router, Clock()).routerFor(StringTransport()), router)
