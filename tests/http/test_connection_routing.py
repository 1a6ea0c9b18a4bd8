# -*- test-case-name: tests.http.test_connection_routing -*-
"""
Tests for connections that the HTTP engine routes as a whole
(L{twisted_tunnel.http.engine.HTTPProxyFactory.connectionRouterFor}): routed
once, at the client's first bytes, then relayed as bytes with no HTTP
parsed; handled request by request when there is no route, and the first
request answered with the failure when the route's upstream fails.

Over real loopback sockets, with the harness of L{tests.http.test_httpproxy}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from zope.interface import implementer

from tests import services
from tests.http.test_httpproxy import (
    FailingEndpoint,
    HangingEndpoint,
    HostRouter,
    ProxyTestCase,
    Tracked,
    TrackedProtocol,
    TrackedProxyFactory,
    pattern,
    tcp,
    until,
)
from twisted_tunnel.errors import StreamOpenFailed
from twisted_tunnel.http.engine import ConnectionRouter, Limits, Route
from twisted_tunnel.wire import OpenFailReason


class Echo(TrackedProtocol, services.Echo):
    """L{services.Echo}, counted in C{tracked}."""


class ConnectionRoutedFactory(TrackedProxyFactory):
    """
    A proxy whose connections are routed as a whole by C{connectionRouter}
    (C{None}: request by request); it counts the calls.
    """

    connectionRouter: ConnectionRouter | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connectionCalls = 0

    def connectionRouterFor(self, transport: Any) -> ConnectionRouter | None:
        inner = self.connectionRouter
        if inner is None:
            return None

        def route(peer: Any) -> Any:
            self.connectionCalls += 1
            return inner(peer)

        return route


class ConnectionRoutingTests(ProxyTestCase):
    def routedProxy(
        self,
        route: Any,
        requestRouter: HostRouter | None = None,
        limits: Limits = Limits(),  # noqa: B008
    ) -> tuple[int, ConnectionRoutedFactory, HostRouter]:
        """
        A proxy whose connections all get C{route} (a L{Route}, C{None}, or
        a function of the peer), and whose requests are routed by
        C{requestRouter} (by default one that refuses everything, so that a
        request routed one by one shows as a C{403}).
        """
        requests = requestRouter if requestRouter is not None else HostRouter({})
        port = self.proxy(requests, limits, factoryClass=ConnectionRoutedFactory)
        factory = self.proxies[-1]
        assert isinstance(factory, ConnectionRoutedFactory)
        factory.connectionRouter = route if callable(route) else (lambda peer: route)
        return port, factory, requests

    def echoRoute(self) -> tuple[Route, Tracked]:
        port, tracked = self.raw(Echo)
        return self.webRoute(port), tracked

    async def test_relayedAsBytes(self) -> None:
        """
        Every request of a connection routed as a whole reaches the upstream
        as the client wrote it, hop-by-hop fields and all, and every answer
        comes back as the upstream wrote it: nothing is parsed, nothing is
        routed per request, and one upstream connection carries them all.
        """
        port, site = self.web()
        proxy, factory, requests = self.routedProxy(self.webRoute(port))
        client = await self.client(proxy)
        for n in range(3):
            client.get(
                f"/headers?n={n}".encode(),
                b"10.0.0.7:10250",
                (b"keep-alive", b"300"),
                (b"proxy-connection", b"keep-alive"),
            )
            exchange = await client.response()
            self.assertEqual(exchange.status, 200)
            fields = dict(map(tuple, exchange.json()["headers"]))
            self.assertEqual(fields["keep-alive"], "300")
            self.assertEqual(fields["proxy-connection"], "keep-alive")
            # the engine removes what Connection names and Keep-Alive; a relay does not
            self.assertEqual(exchange.header(b"x-resp-drop"), b"gone")
            self.assertEqual(exchange.header(b"keep-alive"), b"timeout=5")
        self.assertEqual(site.tracked.made, 1)
        self.assertEqual(factory.connectionCalls, 1)
        self.assertEqual(requests.heads, [], "no request was routed on its own")
        self.assertEqual(self.refusals(), [])

    async def test_anyBytesBothWaysAndHalfClose(self) -> None:
        """
        What is relayed need not be HTTP at all: 3 MiB go there and back
        byte for byte, and the client's EOF reaches the upstream behind
        them (whose own EOF comes back).
        """
        route, tracked = self.echoRoute()
        proxy, _, _ = self.routedProxy(route)
        data = b"\x00 not HTTP \r\n\r\n" + pattern(3 * 1024 * 1024)
        client = await self.rawClient(proxy, data)
        await until(lambda: len(client.received) == len(data), "the echo")
        self.assertEqual(client.received, data)
        assert client.transport is not None
        client.transport.loseWriteConnection()
        await client.lost
        self.assertTrue(client.eof)
        self.assertEqual(self.refusals(), [])

    async def test_routedAtTheFirstBytes(self) -> None:
        """
        A connection is routed when its first bytes arrive, not when it is
        accepted: behind TLS those come only from a client whose certificate
        was accepted, so no other one makes the proxy open an upstream.
        """
        route, tracked = self.echoRoute()
        proxy, factory, _ = self.routedProxy(route)
        client = await self.rawClient(proxy)
        await until(lambda: self.proxies[0].built, "the proxy to accept")
        self.assertEqual(factory.connectionCalls, 0)
        self.assertEqual(tracked.made, 0)
        assert client.transport is not None
        client.transport.write(b"hello")
        await until(lambda: client.received == b"hello", "the echo")
        self.assertEqual((factory.connectionCalls, tracked.made), (1, 1))

    async def test_noRouteRoutesEachRequest(self) -> None:
        """When the connection router says C{None}, each request is routed as before."""
        port, site = self.web()
        proxy, factory, requests = self.routedProxy(None, HostRouter({b"a": self.webRoute(port)}))
        client = await self.client(proxy)
        client.get(b"/headers", b"a", (b"keep-alive", b"300"))
        exchange = await client.response()
        self.assertEqual(exchange.status, 200)
        fields = dict(map(tuple, exchange.json()["headers"]))
        self.assertNotIn("keep-alive", fields)
        self.assertEqual(len(requests.heads), 1)

    async def test_routerAnswersNoneLater(self) -> None:
        """A router's C{Deferred} that gives C{None}: request by request, from the first."""
        port, _ = self.web()
        answer: Deferred[Route | None] = Deferred()
        asked: list[object] = []
        proxy, _, requests = self.routedProxy(
            lambda peer: asked.append(peer) or answer, HostRouter({b"a": self.webRoute(port)})
        )
        client = await self.client(proxy)
        client.get(b"/headers", b"a")
        await until(lambda: asked, "the connection router to be asked")
        answer.callback(None)
        exchange = await client.response()
        self.assertEqual(exchange.status, 200)
        self.assertEqual(len(requests.heads), 1)

    async def test_routerAnswersARouteLater(self) -> None:
        """A router's C{Deferred} that gives a route: relayed once it comes."""
        route, _ = self.echoRoute()
        answer: Deferred[Route | None] = Deferred()
        asked: list[object] = []
        proxy, _, _ = self.routedProxy(lambda peer: asked.append(peer) or answer)
        client = await self.rawClient(proxy, b"early ")
        await until(lambda: asked, "the connection router to be asked")
        assert client.transport is not None
        client.transport.write(b"and later")
        answer.callback(route)
        await until(lambda: client.received == b"early and later", "the echo")

    async def test_upstreamFailureAnswersTheFirstRequest(self) -> None:
        """
        When the route's upstream cannot be connected, the first request
        gets that failure's answer, as if it had been routed on its own,
        and the upstream is not tried a second time.
        """
        endpoint = FailingEndpoint(StreamOpenFailed(OpenFailReason.REFUSED, "connection refused"))
        route = Route(key="edge-1", endpoint=endpoint, description="edge-1 upstream")
        proxy, _, requests = self.routedProxy(route)
        answer = await self.refused(proxy, b"GET /pods HTTP/1.1\r\nHost: 10.0.0.7:10250\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertIn(b"connection refused", answer)
        self.assertEqual(endpoint.attempts, 1)
        self.assertEqual(requests.heads, [])
        self.assertRefusal(502, route="edge-1 upstream")

    async def test_upstreamTimeout(self) -> None:
        """An upstream not connected within C{upstreamTimeout}: C{504}, attempt cancelled."""
        endpoint = HangingEndpoint()
        route = Route(key="edge-1", endpoint=endpoint, description="edge-1 upstream")
        proxy, _, _ = self.routedProxy(route, limits=Limits(upstreamTimeout=0.2))
        answer = await self.refused(proxy, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 "), answer)
        self.assertEqual(endpoint.cancelled, 1)
        self.assertRefusal(504)

    async def test_clientLeavesWhileConnecting(self) -> None:
        """A client that goes while the upstream connects cancels the attempt."""
        endpoint = HangingEndpoint()
        route = Route(key="edge-1", endpoint=endpoint, description="edge-1 upstream")
        proxy, _, _ = self.routedProxy(route)
        client = await self.rawClient(proxy, b"GET / HTTP/1.1\r\n")
        await until(lambda: endpoint.attempts, "the upstream attempt")
        assert client.transport is not None
        client.transport.abortConnection()
        await until(lambda: endpoint.cancelled == 1, "the attempt to be cancelled")
        self.assertEqual(self.refusals(), [])

    async def test_heldWhileConnectingIsBounded(self) -> None:
        """
        While the upstream connects, the proxy holds a request head's worth
        of what the client sends, then stops reading; all of it is relayed
        in order once the upstream is there.
        """
        route, tracked = self.echoRoute()
        slow = _LateEndpoint(route.endpoint)
        proxy, _, _ = self.routedProxy(Route(key="edge-1", endpoint=slow))
        limits = self.proxies[-1].limits
        data = pattern(8 * 1024 * 1024)
        client = await self.rawClient(proxy, data)
        await until(lambda: slow.waiting, "the upstream attempt")
        (protocol,) = self.proxies[-1].built
        await until(lambda: protocol._reading.paused, "the proxy to stop reading")
        self.assertLess(protocol._heldSize, limits.maxHeaderBytes + 1024 * 1024)
        slow.go()
        await until(lambda: len(client.received) == len(data), "the echo", timeout=30)
        self.assertEqual(client.received, data)


@implementer(IStreamClientEndpoint)
class _LateEndpoint:
    """Connects through C{inner}, but only once told to."""

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self.inner = inner
        self.waiting: list[tuple[Any, Deferred[Any]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()
        self.waiting.append((factory, result))
        return result

    def go(self) -> None:
        for factory, result in self.waiting:
            self.inner.connect(factory).chainDeferred(result)


@implementer(IHalfCloseableProtocol)
class Counter(TrackedProtocol):
    """Says how many bytes it got, once the client's EOF came, and closes."""

    def __init__(self, tracked: Tracked) -> None:
        super().__init__(tracked)
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"got %d" % len(self.received))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class _AnsweredLater:
    """
    Connects through C{inner} at once, but fires only when told to (or
    fails then with C{failure}): as a stream opened early is connected
    before the agent has answered its open.
    """

    def __init__(self, inner: IStreamClientEndpoint) -> None:
        self.inner = inner
        self.protocols: list[Any] = []
        self.answers: list[Deferred[Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.answers.append(answer)
        self.inner.connect(factory).addCallback(self.protocols.append)
        return answer

    def succeed(self) -> None:
        self.answers[0].callback(self.protocols[0])

    def fail(self, error: Exception) -> None:
        protocol = self.protocols[0]
        protocol.transport.abortConnection()
        self.answers[0].errback(error)


class EarlyUpstreamTests(ProxyTestCase):
    """
    An upstream connected before its connection attempt fires (a stream
    opened early): the client's bytes go to it at once, and are still held
    for the answer to the first request if the open then fails.
    """

    async def test_sentEarlyOnceOnly(self) -> None:
        port, tracked = self.raw(Counter)
        later = _AnsweredLater(tcp(port))
        proxy = self.proxy(HostRouter({}), factoryClass=ConnectionRoutedFactory)
        factory = self.proxies[-1]
        assert isinstance(factory, ConnectionRoutedFactory)
        factory.connectionRouter = lambda peer: Route(key="edge-1", endpoint=later)
        client = await self.rawClient(proxy, b"first bytes, ")
        await until(lambda: later.protocols, "the early upstream")
        counter = next(iter(tracked.live))
        await until(lambda: counter.received == b"first bytes, ", "the early bytes")
        assert client.transport is not None
        client.transport.write(b"more before the answer, ")
        await until(lambda: len(counter.received) == 37, "more early bytes")
        later.succeed()
        client.transport.write(b"and after")
        client.transport.loseWriteConnection()
        await client.lost
        self.assertEqual(counter.received, b"first bytes, more before the answer, and after")
        self.assertEqual(client.received, b"got 46")

    async def test_refusedAfterEarlyBytes(self) -> None:
        port, tracked = self.raw(Counter)
        later = _AnsweredLater(tcp(port))
        proxy = self.proxy(HostRouter({}), factoryClass=ConnectionRoutedFactory)
        factory = self.proxies[-1]
        assert isinstance(factory, ConnectionRoutedFactory)
        factory.connectionRouter = lambda peer: Route(
            key="edge-1", endpoint=later, description="edge-1 upstream"
        )
        client = await self.rawClient(proxy, b"GET /pods HTTP/1.1\r\nHost: 10.0.0.7:10250\r\n\r\n")
        await until(lambda: tracked.made == 1, "the early upstream")
        counter = next(iter(tracked.live))
        await until(lambda: counter.received.endswith(b"\r\n\r\n"), "the early request")
        later.fail(StreamOpenFailed(OpenFailReason.REFUSED, "connection refused"))
        await client.lost
        self.assertTrue(client.received.startswith(b"HTTP/1.1 502 "), client.received)
        self.assertIn(b"connection refused", client.received)
        self.assertRefusal(502, route="edge-1 upstream")
