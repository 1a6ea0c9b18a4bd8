# -*- test-case-name: tests.doors.test_listeners -*-
"""
The proxy listeners end to end, in one process, on real loopback sockets.

The world is the one C{makeService} builds (see
C{twisted_tunnel.tap.server._proxyListeners}), wired by hand: a plain-TCP
L{TunnelServer} with the agent of node C{edge-1} connected to it, whose
node IP is 127.0.0.2 (another loopback address, so that "the node's IP"
and "the node's loopback" are different places); an HTTP proxy listener
and an HTTPS one (TLS ended with the proxy serving certificate, made again
towards the node with the proxy client certificate) on 127.0.0.1; and the
services of the "node", listening on 127.0.0.2 (or 127.0.0.1 for the
localhost policy).  Clients ask for C{edge-1:<port>} or
C{127.0.0.2:<port>} by C{Host}; routing by original destination (DNAT)
needs iptables in a network namespace, and is not tested here.

Nothing sleeps: waiting is polling a condition with a deadline.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import h11
from attrs import frozen
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolNegotiationFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tests.pki import TestPKI, temporaryDirectory
from tests.realnet import REPO_ROOT, plainTunnel, waitUntil
from tests.services import Lines, OneProtocolFactory, listen
from tests.websocket import WebSocketClient, WebSocketEcho
from twisted_tunnel.doors.proxy import ProxyListenerFactory, ProxyRouter
from twisted_tunnel.files import writeAtomically
from twisted_tunnel.forwarding.config import (
    ConfigWatcher,
    ProxyConfig,
    loadConfig,
    parseConfigData,
)
from twisted_tunnel.forwarding.policy import IForwardingPolicy, loadPolicy
from twisted_tunnel.tls import (
    Credentials,
    makeCredentials,
    peerIdentity,
    proxyClientOptions,
    proxyServingOptions,
)
from twisted_tunnel.tls.certs import Issued, mintCA, mintClient, mintServer
from twisted_tunnel.wire import ErrorCode

reactor: Any = _reactor

NODE = "edge-1"
#: The node's IP, as its agent announces it: a loopback address that is not
#: the node's loopback (127.0.0.1), so the localhost policy makes a difference.
NODE_IP = "127.0.0.2"
#: The name on the proxy client certificate: the identity the kubelet sees.
PROXY_CLIENT = "kube-apiserver-kubelet-client"
TIMEOUT = 10.0


# -- certificates -------------------------------------------------------------------


@frozen
class KubeletPKI:
    """
    The kubelet's own authority, apart from the tunnel's: it signs the
    kubelet's serving certificate and the proxy client certificate that
    the kubelet accepts; a certificate of any other CA is refused.
    """

    ca: Issued
    serving: Issued
    proxyClient: Issued
    stranger: Issued


@functools.cache
def kubeletPKI() -> KubeletPKI:
    ca = mintCA("kubelet test CA")
    return KubeletPKI(
        ca=ca,
        serving=mintServer(ca, [NODE_IP, "127.0.0.1", NODE]),
        proxyClient=mintClient(ca, PROXY_CLIENT),
        stranger=mintClient(TestPKI().otherCA, PROXY_CLIENT),
    )


def credentials(issued: Issued, trusting: Issued) -> Credentials:
    return makeCredentials([trusting.certificate], issued.certificate, issued.key)


# -- the node's services ---------------------------------------------------------------


def kubeletServing() -> CertificateOptions:
    """A kubelet's TLS: its serving certificate; a client certificate of its CA required."""
    pki = kubeletPKI()
    own = credentials(pki.serving, pki.ca)
    return CertificateOptions(
        privateKey=own.certificate.privateKey.original,
        certificate=own.certificate.original,
        trustRoot=trustRootFromCertificates(own.authority),
    )


@frozen
class Seen:
    """A request as an edge service saw it."""

    method: bytes
    path: bytes
    host: bytes | None
    clientName: str | None


class CountingSite(Site):
    """A twisted.web site that counts the connections it was given."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.connectionsMade = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connectionsMade += 1
        return super().buildProtocol(addr)


class Hello(Resource):
    """Answers any request with its name and what it was asked; records each."""

    isLeaf = True

    def __init__(self, name: str, *, close: bool = False) -> None:
        super().__init__()
        self.name = name
        self.close = close
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes:
        identity = peerIdentity(request.channel.transport)
        host = request.getHeader(b"host")
        self.seen.append(
            Seen(
                request.method,
                request.path,
                host,
                identity.commonName if identity is not None else None,
            )
        )
        request.setHeader(b"content-type", b"text/plain")
        if self.close:
            request.setHeader(b"connection", b"close")
        return f"{self.name}: {request.method.decode()} {request.path.decode()}\n".encode()


class Feed(Resource):
    """A response that stays open and writes what the test tells it to, when it says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"started\n")
        self.open.append(request)
        request.notifyFinish().addBoth(lambda _: self.open.remove(request))
        return NOT_DONE_YET

    def write(self, data: bytes) -> None:
        for request in self.open:
            request.write(data)

    def finish(self) -> None:
        for request in list(self.open):
            request.finish()


class CountingFactory(Factory):
    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self.build = build
        self.connectionsMade = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.connectionsMade += 1
        protocol = self.build()
        protocol.factory = self
        return protocol


@implementer(IProtocolNegotiationFactory)
class NegotiatingFactory(CountingFactory):
    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]


# -- clients ------------------------------------------------------------------------------


@frozen
class Exchange:
    """One response as the client saw it, with the time each piece of its body came."""

    status: int
    body: bytes
    chunks: list[tuple[float, bytes]]


class HTTPClient(Protocol):
    """An HTTP/1.1 client on h11 that records every event and when it came."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.CLIENT)
        self.events: list[tuple[float, Any]] = []
        self.taken = 0
        self.error: Exception | None = None
        self.isLost = False
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.isLost = True
        self.conn.receive_data(b"")
        self._pump()
        self.lost.callback(None)

    def _pump(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self.error = e
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            self.events.append((time.monotonic(), event))
            if isinstance(event, h11.ConnectionClosed):
                return

    def get(self, target: bytes, host: str) -> None:
        assert self.transport is not None
        request = h11.Request(method=b"GET", target=target, headers=[(b"host", host.encode())])
        self.transport.write(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))

    def bodySoFar(self) -> bytes:
        """What the response in flight has delivered so far."""
        return b"".join(
            event.data for _, event in self.events[self.taken :] if isinstance(event, h11.Data)
        )

    async def response(self) -> Exchange:
        """The next complete response (the connection closing before one fails)."""

        def complete() -> bool:
            return self.error is not None or any(
                isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed))
                for _, event in self.events[self.taken :]
            )

        await waitUntil(complete, TIMEOUT, "a complete response")
        if self.error is not None:
            raise AssertionError(f"bad response: {self.error}")
        status: int | None = None
        chunks: list[tuple[float, bytes]] = []
        while self.taken < len(self.events):
            when, event = self.events[self.taken]
            self.taken += 1
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append((when, bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the connection closed before a complete response")
        assert status is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Exchange(status, b"".join(data for _, data in chunks), chunks)


# -- the config file ---------------------------------------------------------------------


def manifest(data: Mapping[str, str]) -> str:
    """The edge-tunnel-server-cfg ConfigMap as C{kubectl apply -f} takes it."""
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: edge-tunnel-server-cfg",
        "  namespace: kube-system",
        "data:",
    ]
    lines += [f'  {key}: "{value}"' for key, value in data.items()]
    return "\n".join(lines) + "\n"


# -- the world ------------------------------------------------------------------------------


class ListenerTestCase(TestCase):
    """
    The tunnel, the two proxy listeners and their shared configuration
    (C{self.config}, replaced as a whole as a reload does), wired as the
    server daemon wires them.
    """

    async def setUp(self) -> None:  # type: ignore[override]
        pki = TestPKI()
        kubelet = kubeletPKI()
        self.server, self.agent, self.agentTunnel = await plainTunnel(self, NODE, ips=[NODE_IP])
        self.config: ProxyConfig = parseConfigData({})
        self.custom: dict[int, IForwardingPolicy] = {}
        # what the https policy presents to the kubelet; tests may swap it
        self.upstreamTLS = proxyClientOptions(
            credentials(kubelet.proxyClient, kubelet.ca), verify=False
        )
        self.refusals: list[dict[str, Any]] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if "status" in event:
                self.refusals.append(event)

        def router(kind: str) -> ProxyRouter:
            return ProxyRouter(
                self.server,
                kind,
                lambda: self.config,
                customPolicies=lambda: self.custom,
                upstreamTLS=lambda host: self.upstreamTLS(host),
            )

        log = Logger(namespace="twisted_tunnel.http.engine", observer=observe)
        self.httpPort = listen(self, ProxyListenerFactory(router("http"), reactor, log=log))
        self.httpsPort = listen(
            self,
            TLSMemoryBIOFactory(
                proxyServingOptions(pki.credentials(pki.server)),
                False,
                ProxyListenerFactory(router("https"), reactor, log=log),
            ),
        )
        self.listenerTrust = trustRootFromCertificates(
            pki.credentials(pki.server).authority  # the tunnel's CA signs the serving cert
        )
        # what kube-apiserver presents: the listener asks every client for a
        # certificate from its client CA (here the tunnel's, the default)
        self.listenerClient = pki.credentials(pki.client())

    def configure(self, **data: str) -> None:
        """Put a new configuration in force (keys with C{_} for C{-})."""
        self.config = parseConfigData({key.replace("_", "-"): v for key, v in data.items()})

    # the node's services

    def web(self, resource: Resource, interface: str = NODE_IP) -> tuple[int, CountingSite]:
        site = CountingSite(resource)
        return listen(self, site, interface), site

    def kubelet(
        self, interface: str = NODE_IP, hello: Hello | None = None
    ) -> tuple[int, CountingSite, Hello]:
        """
        An HTTPS kubelet stand-in that requires a client certificate
        signed by the kubelet CA.
        """
        options = kubeletServing()
        hello = hello or Hello("kubelet")
        site = CountingSite(hello)
        return listen(self, TLSMemoryBIOFactory(options, False, site), interface), site, hello

    # clients

    def listenerEndpoint(self, listener: str) -> IStreamClientEndpoint:
        if listener == "http":
            return TCP4ClientEndpoint(reactor, "127.0.0.1", self.httpPort)
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", self.httpsPort)
        own = self.listenerClient.certificate
        tls = optionsForClientTLS("127.0.0.1", trustRoot=self.listenerTrust, clientCertificate=own)
        return wrapClientTLS(tls, tcp)

    async def connect(self, listener: str, protocol: Any) -> Any:
        """Connect C{protocol} to a listener; the cleanup aborts it if it is still open."""
        await self.listenerEndpoint(listener).connect(OneProtocolFactory(protocol))

        async def abort() -> None:
            if not protocol.isLost:
                protocol.transport.abortConnection()
                await protocol.lost

        self.addCleanup(abort)
        return protocol

    async def client(self, listener: str = "http") -> HTTPClient:
        client: HTTPClient = await self.connect(listener, HTTPClient())
        return client

    async def get(self, host: str, target: bytes = b"/", listener: str = "http") -> Exchange:
        """One request on a new connection."""
        client = await self.client(listener)
        client.get(target, host)
        return await client.response()

    def assertRefused(self, exchange: Exchange, status: int, *reason: bytes) -> None:
        self.assertEqual(exchange.status, status, exchange.body)
        for part in reason:
            self.assertIn(part, exchange.body)
        logged = [
            e
            for e in self.refusals
            if e["status"] == status and all(part.decode() in e["reason"] for part in reason)
        ]
        self.assertTrue(logged, f"no log line for the {status}: {self.refusals}")


class HTTPSTests(ListenerTestCase):
    async def test_kubeletAcceptsTheProxyClientCertificate(self) -> None:
        """
        The https policy ends TLS at the listener and makes it again
        towards the node with the proxy client certificate, which the
        kubelet (requiring a certificate signed by its own CA) accepts.
        The client's C{Host} goes to the kubelet as it was.
        """
        port, site, kubelet = self.kubelet()
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        client = await self.client("https")
        client.get(b"/pods", f"{NODE}:{port}")
        exchange = await client.response()
        self.assertEqual((exchange.status, exchange.body), (200, b"kubelet: GET /pods\n"))
        client.get(b"/metrics", f"{NODE}:{port}")  # kept alive: the same upstream
        self.assertEqual((await client.response()).status, 200)
        self.assertEqual(site.connectionsMade, 1)
        client.get(b"/stats/summary", f"{NODE_IP}:{port}")  # the same node, by its IP
        self.assertEqual((await client.response()).status, 200)
        self.assertEqual(
            kubelet.seen,
            [
                Seen(b"GET", b"/pods", f"{NODE}:{port}".encode(), PROXY_CLIENT),
                Seen(b"GET", b"/metrics", f"{NODE}:{port}".encode(), PROXY_CLIENT),
                Seen(b"GET", b"/stats/summary", f"{NODE_IP}:{port}".encode(), PROXY_CLIENT),
            ],
        )
        # by its IP, the kubelet's certificate is checked against another
        # name: a new upstream connection, never one verified for the other
        self.assertEqual(site.connectionsMade, 2)

    async def test_kubeletRefusesAnotherCA(self) -> None:
        """
        With a proxy client certificate of another CA the kubelet refuses
        the connection; the client gets C{502} with the reason, and the
        request never reaches the kubelet.
        """
        port, _, kubelet = self.kubelet()
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        pki = kubeletPKI()
        self.upstreamTLS = proxyClientOptions(credentials(pki.stranger, pki.ca), verify=False)
        exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
        self.assertRefused(
            exchange,
            502,
            f"to {NODE_IP}:{port} (https) closed the connection before answering".encode(),
        )
        self.assertEqual(kubelet.seen, [])

    async def test_kubeletClosesItsConnection(self) -> None:
        """
        A kubelet that ends its connection after a response (as it does
        with idle keep-alive connections): the next request on the
        client's connection is carried on a new stream, quietly.
        """
        port, site, kubelet = self.kubelet(hello=Hello("kubelet", close=True))
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        client = await self.client("https")
        for path in [b"/pods", b"/stats/summary"]:
            client.get(path, f"{NODE}:{port}")
            self.assertEqual((await client.response()).status, 200)
        self.assertEqual([s.path for s in kubelet.seen], [b"/pods", b"/stats/summary"])
        self.assertEqual(site.connectionsMade, 2)

    async def test_kubeletVerified(self) -> None:
        """
        With C{--proxy-client-ca}, the kubelet's serving certificate is
        checked for the address dialled: the kubelet CA passes, another
        CA gets C{502}.
        """
        port, _, kubelet = self.kubelet()
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        pki = kubeletPKI()
        self.upstreamTLS = proxyClientOptions(credentials(pki.proxyClient, pki.ca), verify=True)
        exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
        self.assertEqual(exchange.status, 200)
        self.upstreamTLS = proxyClientOptions(
            credentials(pki.proxyClient, TestPKI().otherCA), verify=True
        )
        exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
        self.assertRefused(exchange, 502)
        self.assertEqual(len(kubelet.seen), 1)

    async def test_localhostPolicy(self) -> None:
        """
        A kubelet bound to the node's 127.0.0.1 only (as 10250 is, by
        default under localhost-proxy-ports) is reached when its port is
        under localhost-proxy-ports: the agent dials the node's loopback,
        with a loopback C{Host}.  Without it the agent dials the node IP,
        where nothing listens: C{502}.
        """
        port, _, kubelet = self.kubelet(interface="127.0.0.1")
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports=str(port))
        exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
        self.assertEqual(exchange.status, 200)
        self.assertEqual(
            kubelet.seen, [Seen(b"GET", b"/pods", f"127.0.0.1:{port}".encode(), PROXY_CLIENT)]
        )

        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
        self.assertRefused(exchange, 502, b"refused", f"{NODE_IP}:{port}".encode())
        self.assertEqual(len(kubelet.seen), 1)


class HTTPTests(ListenerTestCase):
    async def test_streaming(self) -> None:
        """A line every 100 ms: the client has the first long before the last."""
        port, _ = self.web(Lines(count=10, interval=0.1))
        self.configure(http_proxy_ports=str(port))
        exchange = await self.get(f"{NODE}:{port}", b"/logs?follow=true")
        self.assertEqual(exchange.status, 200)
        self.assertEqual(exchange.body, b"".join(f"line {n}\n".encode() for n in range(10)))
        (first, firstData), (last, _) = exchange.chunks[0], exchange.chunks[-1]
        self.assertEqual(firstData, b"line 0\n")  # alone: not held back for the rest
        self.assertGreater(last - first, 0.6)
        self.assertGreaterEqual(len(exchange.chunks), 8)

    async def test_webSocket(self) -> None:
        """A WebSocket echo reached through C{Upgrade}: a text round trip."""
        echo = CountingFactory(WebSocketEcho)
        port = listen(self, echo, NODE_IP)
        self.configure(http_proxy_ports=str(port))
        client: WebSocketClient = await self.connect("http", WebSocketClient(f"{NODE_IP}:{port}"))
        await waitUntil(lambda: client.accepted, TIMEOUT, "the WebSocket handshake")
        client.sendText("hello through the tunnel")
        await waitUntil(lambda: len(client.messages) == 1, TIMEOUT, "the echo")
        client.sendText("again")
        await waitUntil(lambda: len(client.messages) == 2, TIMEOUT, "the second echo")
        self.assertEqual(client.messages, ["echo: hello through the tunnel", "echo: again"])
        self.assertEqual(echo.connectionsMade, 1)

    async def test_upgradedCutByTheTunnelIsReset(self) -> None:
        """
        An upgraded connection (kube-apiserver's exec, attach, port-forward)
        whose tunnel goes (the agent's drain timeout) is reset, on both
        listeners, not ended with a clean close: a clean close would tell
        the client the session ended normally.
        """
        plain = listen(self, CountingFactory(WebSocketEcho), NODE_IP)
        # offering ALPN, as Go's servers (a kubelet) do: a Twisted TLS
        # server without it answers an ALPN offer with an internal error
        echo = TLSMemoryBIOFactory(kubeletServing(), False, NegotiatingFactory(WebSocketEcho))
        secure = listen(self, echo, NODE_IP)
        self.configure(http_proxy_ports=str(plain), https_proxy_ports=str(secure))
        clients = {
            listener: await self.connect(listener, WebSocketClient(f"{NODE_IP}:{port}"))
            for listener, port in (("http", plain), ("https", secure))
        }
        for listener, client in clients.items():
            await waitUntil(
                functools.partial(lambda c: c.accepted, client),
                TIMEOUT,
                f"the WebSocket handshake through the {listener} listener {self.refusals}",
            )
        self.agentTunnel.close(ErrorCode.SHUTTING_DOWN, "shutting down: drain timeout")
        for listener, client in clients.items():
            await client.lost
            assert client.reason is not None
            self.assertTrue(client.reason.check(ConnectionLost), (listener, client.reason))

    async def test_keepAlive(self) -> None:
        """
        Several requests on one client connection, all answered: one
        tunnel stream and one upstream connection carry them all.
        """
        hello = Hello("metrics")
        port, site = self.web(hello)
        self.configure(http_proxy_ports=str(port))
        client = await self.client()
        for n in range(5):
            client.get(f"/metrics/{n}".encode(), f"{NODE}:{port}")
            exchange = await client.response()
            self.assertEqual(exchange.body, f"metrics: GET /metrics/{n}\n".encode())
        self.assertEqual(
            [s.path for s in hello.seen], [f"/metrics/{n}".encode() for n in range(5)]
        )
        self.assertEqual(site.connectionsMade, 1)
        record = self.server.registry.lookup(NODE)
        assert record is not None
        self.assertEqual(record.tunnel.streamCount, 1)

    async def test_hostSwitchMisdirected(self) -> None:
        """
        A later request on a kept-alive connection for another port of the
        node gets C{421}, and the other service never sees it.
        """
        first, second = Hello("first"), Hello("second")
        firstPort, _ = self.web(first)
        secondPort, secondSite = self.web(second)
        self.configure(http_proxy_ports=f"{firstPort}, {secondPort}")
        client = await self.client()
        client.get(b"/a", f"{NODE}:{firstPort}")
        self.assertEqual((await client.response()).status, 200)
        client.get(b"/b", f"{NODE}:{secondPort}")
        self.assertRefused(await client.response(), 421, f"{NODE}:{secondPort}".encode())
        await client.lost  # the connection is closed after it
        self.assertEqual([s.path for s in first.seen], [b"/a"])
        self.assertEqual((second.seen, secondSite.connectionsMade), ([], 0))

    async def test_refusals(self) -> None:
        """
        A port the configuration does not list: C{403}; an HTTPS port
        asked for on the HTTP listener: C{403}; a node without an agent:
        C{502} (the reason is what kube-apiserver shows kubectl).  Each with
        its reason, and a log line.
        """
        port, site = self.web(Hello("open"))
        self.configure(http_proxy_ports=str(port), https_proxy_ports="9443")
        self.assertRefused(
            await self.get(f"{NODE}:{port + 1}"), 403, f"port {port + 1} is not forwarded".encode()
        )
        self.assertRefused(
            await self.get(f"{NODE}:9443"), 403, b"forwarded as https, not from the http listener"
        )
        self.assertRefused(await self.get(f"{NODE_IP}:10250"), 403, b"not from the http listener")
        self.assertRefused(await self.get(f"edge-9:{port}"), 502, b"edge-9")
        self.assertRefused(await self.get(f"127.0.0.9:{port}"), 502, b"127.0.0.9")
        self.assertEqual(site.connectionsMade, 0)
        self.assertEqual((await self.get(f"{NODE_IP}:{port}")).status, 200)

    async def test_customPolicy(self) -> None:
        """
        The example policy (C{examples/metrics_only.py}) bound to a port:
        C{GET /metrics} passes, C{GET /} gets C{403} and never reaches the
        service.
        """
        sys.path.insert(0, os.path.join(REPO_ROOT, "examples"))
        self.addCleanup(sys.path.remove, os.path.join(REPO_ROOT, "examples"))
        policy = loadPolicy("metrics_only:policy")
        hello = Hello("node-exporter")
        port, _ = self.web(hello)
        self.configure(http_proxy_ports=str(port))
        self.custom = {port: policy}
        client = await self.client()
        client.get(b"/metrics", f"{NODE}:{port}")
        exchange = await client.response()
        self.assertEqual((exchange.status, exchange.body), (200, b"node-exporter: GET /metrics\n"))
        client.get(b"/", f"{NODE}:{port}")
        self.assertRefused(await client.response(), 403, b"only GET /metrics")
        self.assertEqual([s.path for s in hello.seen], [b"/metrics"])


class LiveConfigTests(ListenerTestCase):
    """A L{ConfigWatcher} on a real ConfigMap manifest file, on a L{Clock}."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.feed = Feed()
        self.streamPort, _ = self.web(self.feed)
        self.hello = Hello("new")
        self.newPort, _ = self.web(self.hello)
        self.path = os.path.join(temporaryDirectory(self), "edge-tunnel-server-cfg.yaml")
        writeAtomically(self.path, manifest({"http-proxy-ports": str(self.streamPort)}))
        self.config = loadConfig(self.path)
        self.clock = Clock()

        def changed(config: ProxyConfig) -> None:
            self.config = config

        self.watcher = ConfigWatcher(self.path, self.clock, self.config, changed, interval=1.0)
        self.watcher.startService()
        self.addCleanup(self.watcher.stopService)

    async def stream(self) -> HTTPClient:
        """A long response on the first port, started."""
        client = await self.client()
        client.get(b"/logs?follow=true", f"{NODE}:{self.streamPort}")
        await waitUntil(lambda: client.bodySoFar() == b"started\n", TIMEOUT, "the stream")
        return client

    async def test_newPortWhileStreaming(self) -> None:
        """
        A new port opened live: C{403} before, C{200} after, while a long
        stream on another port stays up and keeps delivering.
        """
        streaming = await self.stream()
        self.assertRefused(await self.get(f"{NODE}:{self.newPort}"), 403, b"not forwarded")

        writeAtomically(
            self.path, manifest({"http-proxy-ports": f"{self.streamPort}, {self.newPort}"})
        )
        self.clock.advance(1.0)
        self.assertEqual(self.config.protocolFor(self.newPort), "http")
        self.assertFalse(self.watcher.stale)

        self.feed.write(b"after the change\n")
        await waitUntil(
            lambda: streaming.bodySoFar() == b"started\nafter the change\n",
            TIMEOUT,
            "the stream to go on",
        )
        exchange = await self.get(f"{NODE}:{self.newPort}", b"/metrics")
        self.assertEqual((exchange.status, exchange.body), (200, b"new: GET /metrics\n"))
        self.feed.write(b"still here\n")
        self.feed.finish()
        exchange = await streaming.response()
        self.assertEqual(exchange.status, 200)
        self.assertEqual(exchange.body, b"started\nafter the change\nstill here\n")
        self.assertFalse(streaming.isLost)  # kept alive, as if nothing happened

    async def test_invalidChangeKeepsTheOldConfig(self) -> None:
        """
        Invalid content is refused as a whole: the last good configuration
        stays in force (its port still answers, the new one is still
        refused), and the watcher says the config is stale, naming the
        key and the value.
        """
        streaming = await self.stream()
        good = self.config
        both = f"{self.streamPort}, {self.newPort}"
        for data, named in [
            ({"http-proxy-ports": f"{both}, 70000"}, ["http-proxy-ports", "70000", "1-65535"]),
            (
                {"http-proxy-ports": both, "https-proxy-ports": str(self.newPort)},
                ["https-proxy-ports", "also under http-proxy-ports"],
            ),
            ({"http-proxy-ports": f"{both}, http"}, ["http-proxy-ports", "not a port number"]),
            ({"http-proxy-ports": both, "http-proxy-port": "1"}, ["unknown key"]),
        ]:
            writeAtomically(self.path, manifest(data))
            self.clock.advance(1.0)
            self.assertIs(self.config, good, data)
            self.assertTrue(self.watcher.stale, data)
            assert self.watcher.staleReason is not None
            for part in named:
                self.assertIn(part, self.watcher.staleReason)
        writeAtomically(self.path, "data: [this is not: a ConfigMap\n")
        self.clock.advance(1.0)
        self.assertIs(self.config, good)
        self.assertTrue(self.watcher.stale)

        self.assertRefused(await self.get(f"{NODE}:{self.newPort}"), 403, b"not forwarded")
        self.feed.write(b"unaffected\n")
        self.feed.finish()
        self.assertEqual((await streaming.response()).body, b"started\nunaffected\n")
        # and the old port still takes new requests
        streaming.get(b"/again", f"{NODE}:{self.streamPort}")
        await waitUntil(lambda: streaming.bodySoFar() == b"started\n", TIMEOUT, "a new stream")
        self.feed.finish()
        self.assertEqual((await streaming.response()).status, 200)
        self.assertEqual(self.hello.seen, [])
