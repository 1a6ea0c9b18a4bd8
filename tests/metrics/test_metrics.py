"""
Tests for L{twisted_tunnel.metrics} and L{twisted_tunnel.meta}: what the
counters count, on a real L{TunnelServer} joined in memory to an agent-side
tunnel (L{tests.memory.TunnelPair}) on a L{Clock}; the text is parsed with
prometheus_client's parser.  The daemons' meta listeners are tested live in
L{tests.system.test_observability}.
"""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.memory import ProtocolFactory, Recorder, TunnelPair
from tests.pki import TestPKI
from tests.tls.test_minting import Node, authority, wallClock
from twisted_tunnel.errors import NodeNotConnected, StreamOpenFailed, StreamOpenTimeout
from twisted_tunnel.meta import STALL_LIMIT, Health, Heartbeat, Ready, agentsDocument
from twisted_tunnel.metrics import handshakeFailureReason, openFailureReason
from twisted_tunnel.mux import Tunnel
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import PeerIdentity
from twisted_tunnel.tls.minting import ServingCertificates
from twisted_tunnel.tls.serving import NodeServingOptions
from twisted_tunnel.wire import OpenFailReason

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parseSamples(text: str) -> Samples:
    """Every sample in Prometheus text C{text}, by name and labels (see L{key})."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


pki = TestPKI()


def scrape(registry: Any) -> Samples:
    return parseSamples(generate_latest(registry).decode())


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


class ReasonTests(SynchronousTestCase):
    def test_handshakeFailures(self) -> None:
        for message, reason in [
            ("[('SSL routines', '', 'tlsv1 alert unknown ca')]", "unknown_ca"),
            ("[('SSL routines', '', 'sslv3 alert certificate expired')]", "certificate_expired"),
            ("peer did not return a certificate", "no_client_certificate"),
            ("[('SSL routines', '', 'wrong version number')]", "not_tls"),
            ("[('SSL routines', '', 'certificate verify failed')]", "certificate_verify_failed"),
            ("Connection was closed cleanly.", "connection_closed"),
            ("something new", "other"),
        ]:
            self.assertEqual(handshakeFailureReason(message), reason, message)

    def test_openFailures(self) -> None:
        for error, reason in [
            (NodeNotConnected("edge-9"), "unknown_node"),
            (StreamOpenTimeout("late"), "open_timeout"),
            (StreamOpenFailed(OpenFailReason.REFUSED, "no"), "refused"),
            (StreamOpenFailed(OpenFailReason.NOT_ALLOWED, "no"), "not_allowed"),
            (StreamOpenFailed(250, "from a newer agent"), "other"),
            (ValueError("?"), "other"),
        ]:
            self.assertEqual(openFailureReason(Failure(error)), reason, error)


class ServerMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = TunnelServer(
            self.clock,
            None,
            serverId="srv-a",
            identify=lambda transport: PeerIdentity(
                "system:node:edge-1", organizations=("system:nodes",)
            ),
        )
        self.pair = TunnelPair(clock=self.clock, connect=False)
        tunnel = self.server.plainTunnelFactory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        assert isinstance(tunnel, Tunnel)
        self.pair.server = tunnel
        self.pair.connect()
        self.pair.establish()

    def open(self, policy: str) -> tuple[Recorder, Recorder]:
        """Open a stream through C{endpointForNode}; the server's end and the agent's."""
        opener, acceptor = Recorder(), Recorder()
        endpoint = self.server.endpointForNode("edge-1", 10250, policy=policy)
        opened = endpoint.connect(ProtocolFactory(lambda: opener))
        self.pair.pump()
        self.clock.advance(0.004)
        self.pair.clientHandler.accept(acceptor)
        self.pair.pump()
        self.assertIs(self.successResultOf(opened), opener)
        return opener, acceptor

    def test_streamsAndBytesByPolicy(self) -> None:
        """
        Opens, their latency, streams open and bytes, by policy; a stream's
        bytes stay counted after it is gone, and after its tunnel is gone.
        """
        opener, acceptor = self.open("http")
        self.open("https")
        opener.transport.write(b"x" * 1000)  # type: ignore[union-attr]
        acceptor.transport.write(b"y" * 300)  # type: ignore[union-attr]
        self.pair.pump()
        s = scrape(self.server.metrics.registry)
        self.assertEqual(s["edge_tunnel_server_streams_open", frozenset({("policy", "http")})], 1)
        self.assertEqual(
            s["edge_tunnel_server_streams_opened_total", frozenset({("policy", "https")})], 1
        )
        latency = s["edge_tunnel_server_stream_open_seconds_sum", frozenset({("policy", "http")})]
        self.assertAlmostEqual(latency, 0.004)
        toNode = key("edge_tunnel_server_stream_bytes_total", policy="http", direction="to_node")
        fromNode = key(
            "edge_tunnel_server_stream_bytes_total", policy="http", direction="from_node"
        )
        self.assertEqual((s[toNode], s[fromNode]), (1000, 300))
        opener.transport.loseConnection()  # type: ignore[union-attr]
        acceptor.transport.loseConnection()  # type: ignore[union-attr]
        self.pair.pump()
        s = scrape(self.server.metrics.registry)
        self.assertEqual((s[toNode], s[fromNode]), (1000, 300))
        self.assertNotIn(("edge_tunnel_server_streams_open", frozenset({("policy", "http")})), s)
        self.pair.lose(Failure(ConnectionLost()))
        s = scrape(self.server.metrics.registry)
        self.assertEqual((s[toNode], s[fromNode]), (1000, 300))
        self.assertEqual(s["edge_tunnel_server_agents_connected", frozenset()], 0)

    def test_openFailures(self) -> None:
        failed = self.server.endpointForNode("edge-9", 10250).connect(ProtocolFactory(Recorder))
        self.failureResultOf(failed, NodeNotConnected)
        refused = self.server.endpointForNode("edge-1", 22).connect(ProtocolFactory(Recorder))
        self.pair.pump()
        self.pair.clientHandler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "nobody home"))
        self.pair.pump()
        self.failureResultOf(refused, StreamOpenFailed)
        s = scrape(self.server.metrics.registry)
        for reason in ("unknown_node", "refused"):
            key = (
                "edge_tunnel_server_stream_open_failures_total",
                frozenset({("reason", reason)}),
            )
            self.assertEqual(s[key], 1, reason)

    def test_servingCertificates(self) -> None:
        """
        The HTTPS listener's minting: certificates minted, throttled and
        kept, and what each handshake was given; nothing without it.
        """
        names = {name for name, _ in scrape(self.server.metrics.registry)}
        self.assertFalse([n for n in names if "serving" in n], names)

        clock = wallClock()
        certificates = ServingCertificates(authority(), clock, rate=1, burst=2)
        known = {name: Node(name) for name in ("edge-1", "edge-2", "edge-3")}
        serving = NodeServingOptions(
            pki.credentials(pki.server), certificates, known.get, clock, fallback=False
        )
        with capturedLogs():
            for destination in ("edge-1", "edge-1", "edge-2", "edge-3", "edge-9"):
                serving.certificateFor(destination)
        self.server.metrics.watchServingCertificates(serving)
        s = scrape(self.server.metrics.registry)
        self.assertEqual(s[key("edge_tunnel_server_serving_certificates_minted_total")], 2)
        self.assertEqual(s[key("edge_tunnel_server_serving_certificates_throttled_total")], 1)
        self.assertEqual(s[key("edge_tunnel_server_serving_certificates_cached")], 2)
        choices = "edge_tunnel_server_serving_certificate_choices_total"
        self.assertEqual(
            [s[key(choices, certificate=c)] for c in ("node", "static", "none")], [3, 0, 2]
        )

    def test_perNodeOnlyWhenAsked(self) -> None:
        self.open("http")
        names = {name for name, _ in scrape(self.server.metrics.registry)}
        self.assertFalse([n for n in names if "_node_" in n], names)
        self.server.metrics.perNode = True
        s = scrape(self.server.metrics.registry)
        self.assertEqual(
            s["edge_tunnel_server_node_streams_open", frozenset({("node", "edge-1")})], 1
        )

    def test_agentsDocument(self) -> None:
        opener, _ = self.open("http")
        opener.transport.write(b"x" * 10)  # type: ignore[union-attr]
        self.pair.pump()
        document = agentsDocument(self.server)
        self.assertEqual((document["server_id"], document["draining"]), ("srv-a", False))
        (agent,) = document["agents"]
        self.assertEqual(agent["node"], "edge-1")
        self.assertEqual((agent["streams_open"], agent["bytes_to_node"]), (1, 10))
        self.assertEqual(agent["connected_since"], "1970-01-01T00:00:00+00:00")
        # an identity made by hand names no certificate
        self.assertEqual((agent["certificate_serial"], agent["certificate_expires"]), (None, None))

    def test_agentsDocumentNamesTheCertificate(self) -> None:
        """Which certificate each agent proved its node with: its serial and expiry."""
        notAfter = datetime.datetime(2027, 3, 1, 12, 0, tzinfo=datetime.UTC)
        identity = PeerIdentity(
            "system:node:edge-1", organizations=("system:nodes",), serial=0x1F2E, notAfter=notAfter
        )
        server = TunnelServer(self.clock, None, identify=lambda transport: identity)
        pair = TunnelPair(clock=self.clock, connect=False)
        tunnel = server.plainTunnelFactory().buildProtocol(IPv4Address("TCP", "10.0.0.2", 1))
        assert isinstance(tunnel, Tunnel)
        pair.server = tunnel
        pair.connect()
        pair.establish()
        (agent,) = agentsDocument(server)["agents"]
        self.assertEqual(agent["certificate_serial"], "0x1f2e")
        self.assertEqual(agent["certificate_expires"], "2027-03-01T12:00:00+00:00")


class ProbeTests(SynchronousTestCase):
    def render(self, resource: Any) -> tuple[int, bytes]:
        request = DummyRequest([b""])
        body = resource.render_GET(request)
        return request.responseCode or 200, body

    def test_healthyWhileTheHeartbeatIsOnTime(self) -> None:
        clock = Clock()
        heartbeat = Heartbeat(clock)
        heartbeat.start()
        self.addCleanup(heartbeat.stop)
        clock.pump([1.0] * 30)
        self.assertEqual(self.render(Health(heartbeat)), (200, b"ok\n"))

    def test_stalledReactor(self) -> None:
        """The heartbeat is late by more than STALL_LIMIT: the reactor was blocked."""
        clock = Clock()
        heartbeat = Heartbeat(clock)
        heartbeat.start()
        self.addCleanup(heartbeat.stop)
        clock.rightNow += STALL_LIMIT + 2  # time passed, and no timed call ran
        code, body = self.render(Health(heartbeat))
        self.assertEqual(code, 503)
        self.assertIn(b"reactor stalled: heartbeat 11.0s late", body)
        clock.advance(0)
        self.assertEqual(self.render(Health(heartbeat))[0], 200)

    def test_ready(self) -> None:
        problems: list[str | None] = [None, None]
        ready = Ready([lambda: problems[0], lambda: problems[1]], lambda: "3 agents")
        self.assertEqual(self.render(ready), (200, b"ok: 3 agents\n"))
        problems[:] = ["config stale: bad key", "draining"]
        self.assertEqual(self.render(ready), (503, b"config stale: bad key\ndraining\n"))
