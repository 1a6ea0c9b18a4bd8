"""
Routing at the proxy listeners: the target (original destination, else
Host), the port rules of the configuration, the node, and the policy.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.ssl import CertificateOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.realnet import plainTunnel
from tests.services import Echo, OneProtocolFactory, QuietFactory, RecordingClient, listen
from twisted_tunnel.doors.proxy import (
    ProxyRouter,
    Routed,
    RoutingRefused,
    Target,
    parseHost,
    targetOf,
)
from twisted_tunnel.forwarding.config import parseConfigData
from twisted_tunnel.forwarding.policy import (
    Carrier,
    ForwardingDecision,
    ForwardingRequest,
    IForwardingPolicy,
    refuse,
)

NODE = "edge-1"


class ParseHostTests(SynchronousTestCase):
    def test_good(self) -> None:
        for host, target in [
            (b"edge-1:10250", Target("edge-1", 10250)),
            (b"EDGE-1:10255", Target("edge-1", 10255)),
            (b"10.0.0.5:9100", Target("10.0.0.5", 9100)),
            (b"[fd00::5]:10250", Target("fd00::5", 10250)),
        ]:
            self.assertEqual(parseHost(host), target, host)

    def test_bad(self) -> None:
        for host in [
            None,
            b"",
            b"edge-1",
            b"edge-1:",
            b"edge-1:x",
            b"edge-1:0",
            b"edge-1:70000",
            b"fd00::5:10250",
            b":10250",
        ]:
            with self.assertRaises(RoutingRefused) as caught:
                parseHost(host)
            self.assertEqual(caught.exception.status, 400, host)

    def test_originalDestinationFirst(self) -> None:
        """A DNATed connection goes where it was headed, whatever its Host says."""
        self.assertEqual(
            targetOf(("10.0.0.5", 10250), ("127.0.0.1", 10263), b"edge-9:1"),
            Target("10.0.0.5", 10250),
        )

    def test_notDNATed(self) -> None:
        """The listener's own address as original destination means: not DNATed; use Host."""
        self.assertEqual(
            targetOf(("127.0.0.1", 10263), ("127.0.0.1", 10263), b"edge-1:10250"),
            Target("edge-1", 10250),
        )
        self.assertEqual(targetOf(None, None, b"edge-1:10255"), Target("edge-1", 10255))


class _NoPosts:
    name = "no-posts"

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        if request.method == b"POST":
            raise refuse(403, "no POST here")
        return ForwardingDecision(request.defaultHost(), request.port, Carrier.HTTP)


class _RouterCase(TestCase):
    """Routes through a real (plain TCP) tunnel whose agent's node IP is 127.0.0.1."""

    async def setUp(self) -> None:  # type: ignore[override]
        self.server, _, _ = await plainTunnel(self, NODE)
        self.config = parseConfigData(
            {"http-proxy-ports": "9051", "https-proxy-ports": "9052", "tcp-proxy-ports": "9053"}
        )
        self.custom: dict[int, IForwardingPolicy] = {}

    def router(self, listener: str) -> ProxyRouter:
        return ProxyRouter(
            self.server,
            listener,
            lambda: self.config,
            customPolicies=lambda: self.custom,
            upstreamTLS=None,
        )

    async def refused(self, d: Deferred[Routed]) -> RoutingRefused:
        try:
            await d
        except RoutingRefused as e:
            return e
        self.fail("routing was not refused")


class RouterTests(_RouterCase):
    """L{ProxyRouter.route}: a connection's or a request's route, or why not."""

    async def test_portNotForwarded(self) -> None:
        refused = await self.refused(self.router("http").route(Target(NODE, 22)))
        self.assertEqual(refused.status, 403)
        self.assertIn("port 22 is not forwarded", refused.reason)
        self.assertIn("--config or --config-configmap", refused.reason)

    async def test_wrongListener(self) -> None:
        """The plain listener never carries an HTTPS port (nor the reverse, nor raw)."""
        for listener, port in [
            ("http", 10250),
            ("http", 9052),
            ("https", 9051),
            ("http", 9053),
            ("tcp", 10255),
        ]:
            refused = await self.refused(self.router(listener).route(Target(NODE, port)))
            self.assertEqual(refused.status, 403, (listener, port))
            self.assertIn(f"not from the {listener} listener", refused.reason)

    async def test_unknownNode(self) -> None:
        refused = await self.refused(self.router("http").route(Target("edge-9", 9051)))
        self.assertEqual(refused.status, 502)
        self.assertEqual(refused.reason, "no agent connected for node 'edge-9'")

    async def test_goneNode(self) -> None:
        """
        A node whose agent has left: refused (502), naming the node, by name
        or by IP, and how long ago its agent left.
        """
        record = self.server.registry.lookup(NODE)
        assert record is not None
        self.server.registry.unregister(record.tunnel)
        for address, named in ((NODE, repr(NODE)), ("127.0.0.1", f"{NODE!r} (127.0.0.1)")):
            refused = await self.refused(self.router("http").route(Target(address, 9051)))
            self.assertEqual(refused.status, 502)
            self.assertRegex(
                refused.reason,
                rf"^no agent connected for node {re.escape(named)}: its agent left \d+s ago$",
            )

    async def test_httpRoute(self) -> None:
        routed = await self.router("http").route(Target("127.0.0.1", 9051))
        self.assertEqual(routed.key, (NODE, 9051))
        self.assertEqual(routed.decision, ForwardingDecision("127.0.0.1", 9051, Carrier.HTTP))
        self.assertEqual(routed.policy, "http")

    async def test_localhostRoute(self) -> None:
        """10255 is http and localhost by default: loopback, with a loopback Host."""
        routed = await self.router("http").route(
            Target(NODE, 10255), method=b"GET", requestTarget=b"/"
        )
        self.assertEqual(
            routed.decision,
            ForwardingDecision("127.0.0.1", 10255, Carrier.HTTP, b"127.0.0.1:10255"),
        )
        self.assertEqual(routed.policy, "localhost+http")

    async def test_httpsNeedsClientCertificate(self) -> None:
        refused = await self.refused(self.router("https").route(Target(NODE, 9052)))
        self.assertEqual(refused.status, 502)
        self.assertIn("--proxy-client-cert", refused.reason)

    async def test_kubeletVerifiedAgainstTheAddressAskedFor(self) -> None:
        """
        The HTTPS carrier checks the kubelet's certificate against the node
        name or IP the client asked for, even when the localhost policy has
        the agent dial 127.0.0.1 (10250 by default).
        """
        asked: list[str] = []

        def upstreamTLS(host: str) -> Any:
            asked.append(host)
            return CertificateOptions()

        router = ProxyRouter(self.server, "https", lambda: self.config, upstreamTLS=upstreamTLS)
        routed = await router.route(Target(NODE, 10250))
        self.assertEqual(routed.decision.host, "127.0.0.1")
        await router.route(Target("127.0.0.1", 9052))
        self.assertEqual(asked, [NODE, "127.0.0.1"])

    async def test_customPolicy(self) -> None:
        self.custom[9051] = _NoPosts()  # type: ignore[assignment]
        router = self.router("http")
        routed = await router.route(Target(NODE, 9051), method=b"GET", requestTarget=b"/")
        self.assertEqual(routed.policy, "no-posts")
        refused = await self.refused(
            router.route(Target(NODE, 9051), method=b"POST", requestTarget=b"/")
        )
        self.assertEqual((refused.status, refused.reason), (403, "no POST here"))

    async def test_endpointReachesTheNode(self) -> None:
        """The route's endpoint is a stream through the node's tunnel to what was decided."""
        port = listen(self, QuietFactory(Echo))
        self.config = parseConfigData({"tcp-proxy-ports": str(port)})
        routed = await self.router("tcp").route(Target("127.0.0.1", port))
        client = RecordingClient()
        connected: Any = await routed.endpoint.connect(OneProtocolFactory(client))
        connected.transport.write(b"through the tunnel")
        connected.transport.loseWriteConnection()
        await client.lost
        self.assertEqual(client.received, b"through the tunnel")


class _PerConnection(_NoPosts):
    """L{_NoPosts}, declaring (wrongly, for the test) that it decides per connection."""

    name = "per-connection"
    perConnection = True


class _Later:
    """A per-connection policy that answers with a Deferred (or fails with C{refusal})."""

    name = "later"
    perConnection = True

    def __init__(self, refusal: Exception | None = None) -> None:
        self.refusal = refusal

    def decide(self, request: ForwardingRequest) -> Deferred[ForwardingDecision]:
        if self.refusal is not None:
            return fail(self.refusal)
        return succeed(ForwardingDecision(request.defaultHost(), request.port, Carrier.HTTP))


class RouteConnectionTests(_RouterCase):
    """
    L{ProxyRouter.routeConnection}: a route for a whole DNATed connection,
    or C{None} for "route each request", which then refuses and counts.
    """

    def counted(self) -> dict[str, int]:
        return dict(self.server.metrics.openFailures)

    async def test_builtins(self) -> None:
        """http and https (with TLS towards the node) decide per connection."""
        routed = self.router("http").routeConnection(Target("127.0.0.1", 9051))
        assert isinstance(routed, Routed)
        self.assertEqual(routed.decision, ForwardingDecision("127.0.0.1", 9051, Carrier.HTTP))
        router = ProxyRouter(
            self.server,
            "https",
            lambda: self.config,
            upstreamTLS=lambda host: CertificateOptions(),
        )
        routed = router.routeConnection(Target("127.0.0.1", 9052))
        assert isinstance(routed, Routed)
        self.assertEqual(routed.decision.carrier, Carrier.HTTPS)

    async def test_localhostKeepsTheHost(self) -> None:
        """10255 (http, localhost): to loopback, relayed with the client's own Host."""
        routed = self.router("http").routeConnection(Target(NODE, 10255))
        assert isinstance(routed, Routed)
        self.assertEqual(routed.decision, ForwardingDecision("127.0.0.1", 10255, Carrier.HTTP))
        self.assertEqual(routed.policy, "localhost+http")

    async def test_perRequestPolicy(self) -> None:
        """A custom policy that does not declare itself per connection: each request."""
        self.custom[9051] = _NoPosts()  # type: ignore[assignment]
        self.assertIsNone(self.router("http").routeConnection(Target(NODE, 9051)))
        self.custom[9051] = _PerConnection()  # type: ignore[assignment]
        routed = self.router("http").routeConnection(Target(NODE, 9051))
        assert isinstance(routed, Routed)
        self.assertEqual(routed.policy, "per-connection")

    async def test_deferredDecision(self) -> None:
        """A per-connection policy may answer later; a refusal later means: each request."""
        self.custom[9051] = _Later()  # type: ignore[assignment]
        routed = await self.router("http").routeConnection(Target(NODE, 9051))  # type: ignore[misc]
        assert isinstance(routed, Routed)
        self.custom[9051] = _Later(refuse(403, "not now"))  # type: ignore[assignment]
        self.assertIsNone(await self.router("http").routeConnection(Target(NODE, 9051)))  # type: ignore[misc]
        self.custom[9051] = _Later(ZeroDivisionError())  # type: ignore[assignment]
        with self.assertRaises(ZeroDivisionError):
            await self.router("http").routeConnection(Target(NODE, 9051))  # type: ignore[misc]

    async def test_refusalsLeftToEachRequest(self) -> None:
        """
        Whatever would be refused gives C{None}, and counts nothing: the
        first request is refused, and counted, on its own.
        """
        self.custom[9054] = _PerConnection()  # type: ignore[assignment]
        self.config = parseConfigData({"http-proxy-ports": "9051", "tcp-proxy-ports": "9053"})
        before = self.counted()
        for listener, target in [
            ("http", Target(NODE, 22)),  # not forwarded
            ("http", Target(NODE, 9053)),  # not from this listener
            ("http", Target("edge-9", 9051)),  # no agent
            ("https", Target(NODE, 10250)),  # no proxy client certificate
        ]:
            self.assertIsNone(self.router(listener).routeConnection(target), (listener, target))
        self.custom[9051] = _Later(refuse(403, "no"))  # type: ignore[assignment]
        self.assertIsNone(await self.router("http").routeConnection(Target(NODE, 9051)))  # type: ignore[misc]
        self.assertEqual(self.counted(), before)
