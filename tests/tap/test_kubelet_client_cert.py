# -*- test-case-name: tests.tap.test_kubelet_client_cert -*-
"""
C{twistd edge-tunnel-agent --kubelet-client-cert}: the agent proves its
node with the kubelet's own client certificate (a real kubelet layout,
L{KubeletCertificateStore}), refuses at start-up one that is not its
node's, and follows the kubelet's rotations: parsed, built by
C{makeService}, and run for real against a server that trusts the
cluster CA for agents, over mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent
from twisted.python.usage import UsageError

from tests.pki import KubeletCertificateStore, TestPKI, temporaryDirectory
from tests.realnet import waitUntil
from tests.server.test_integration import DEADLINE, TunnelTestCase
from tests.tap.test_tap import FatalTestCase
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tap import agent as tapagent
from twisted_tunnel.tls import makeCredentials
from twisted_tunnel.wire import ErrorCode

pki = TestPKI()
DAY = datetime.timedelta(days=1)
PROGRAM = "edge-tunnel-agent"


class OptionsTests(FatalTestCase):
    def parse(self, *args: str) -> tapagent.Options:
        options = tapagent.Options()
        options.parseOptions(["--server", "tunnel.example.com:10262", *args])
        return options

    def test_insteadOfCertAndKey(self) -> None:
        """C{--ca} and C{--kubelet-client-cert} are enough."""
        path = "/var/lib/kubelet/pki/kubelet-client-current.pem"
        options = self.parse("--ca", "ca.pem", "--kubelet-client-cert", path)
        self.assertEqual(options["kubelet-client-cert"], path)
        self.assertIsNone(options["cert"])
        self.assertIsNone(options["key"])

    def test_notWithCertOrKey(self) -> None:
        for extra in (["--cert", "a.pem"], ["--key", "a-key.pem"]):
            with self.assertRaises(UsageError) as caught:
                self.parse("--ca", "ca.pem", "--kubelet-client-cert", "k.pem", *extra)
            self.assertIn("exclude each other", str(caught.exception))

    def test_caStillRequired(self) -> None:
        """The server's certificate is still checked against --ca."""
        with self.assertRaises(UsageError) as caught:
            self.parse("--kubelet-client-cert", "k.pem")
        self.assertIn("--ca", str(caught.exception))

    def test_withoutEitherRefused(self) -> None:
        with self.assertRaises(UsageError) as caught:
            self.parse("--ca", "ca.pem")
        self.assertIn("--cert", str(caught.exception))


class MakeServiceTests(FatalTestCase):
    """C{makeService} with a kubelet's pki directory; the service is never started."""

    def setUp(self) -> None:
        directory = temporaryDirectory(self)
        self.store = KubeletCertificateStore(os.path.join(directory, "pki"))
        self.ca = pki.paths(pki.server, directory, stem="server").ca

    def options(self, *args: str) -> tapagent.Options:
        options = tapagent.Options()
        options.parseOptions(
            [
                "--server",
                "127.0.0.1:10262",
                "--ca",
                self.ca,
                "--kubelet-client-cert",
                self.store.current,
                *args,
            ]
        )
        return options

    def make(self, *args: str) -> TunnelAgent:
        top = tapagent.makeService(self.options(*args))
        assert isinstance(top, MultiService)
        agent = top.getServiceNamed("agent")
        assert isinstance(agent, TunnelAgent)
        return agent

    def fatal(self, *args: str) -> str:
        line = self.assertFatal(PROGRAM, tapagent.makeService, self.options(*args))
        self.assertIn(f"--kubelet-client-cert {self.store.current}: ", line)
        return line

    def test_nodeFromTheCertificate(self) -> None:
        """The node name is the certificate's; node IPs come from --node-ip (it proves none)."""
        self.store.update(pki.kubeletClient("edge-1"))
        agent = self.make("--node-ip", "192.0.2.10")
        self.assertEqual(agent.nodeName, "edge-1")
        self.assertEqual(agent.nodeIPs, ("192.0.2.10",))
        assert agent.credentials is not None
        self.assertEqual(agent.credentials.certPath, self.store.current)
        self.assertEqual(agent.credentials.keyPath, self.store.current)
        self.assertEqual(self.make("--node-name", "edge-1").nodeName, "edge-1")

    def test_notANode(self) -> None:
        self.store.update(pki.clusterClient("kubernetes-admin", "system:masters"))
        line = self.fatal()
        self.assertIn("CN=kubernetes-admin", line)
        self.assertIn("not a node's", line)

    def test_withoutTheNodesGroup(self) -> None:
        self.store.update(pki.clusterClient("system:node:edge-1"))
        self.assertIn("lacks O=system:nodes", self.fatal())

    def test_anotherNode(self) -> None:
        self.store.update(pki.kubeletClient("edge-2"))
        self.assertIn(
            "'system:node:edge-2', not system:node:edge-1", self.fatal("--node-name", "edge-1")
        )

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.store.update(
            pki.kubeletClient("edge-1", notBefore=now - 30 * DAY, notAfter=now - DAY)
        )
        self.assertIn(f"certificate expired on {now - DAY:%Y-%m-%d %H:%M:%S} UTC", self.fatal())

    def test_notYetValid(self) -> None:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.store.update(pki.kubeletClient("edge-1", notBefore=now + DAY, notAfter=now + 9 * DAY))
        self.assertIn(f"not valid until {now + DAY:%Y-%m-%d %H:%M:%S} UTC", self.fatal())

    def test_missing(self) -> None:
        self.assertIn("no such file", self.fatal())


class FollowsTheKubeletTests(TunnelTestCase):
    """
    The daemon's agent, started, against a server that trusts the cluster
    CA for agents: it connects with the kubelet's certificate, takes a
    rotation into use for its next connection while the tunnel up stays
    up, and refuses a rotation to another node's certificate.
    """

    INTERVAL = 0.05

    def presented(self, server: TunnelServer) -> int | None:
        """The serial of the certificate edge-1's tunnel was made with, if it is up."""
        record = server.registry.lookup("edge-1")
        if record is None or record.identity is None:
            return None
        return record.identity.serial

    async def test_rotation(self) -> None:
        directory = temporaryDirectory(self)
        store = KubeletCertificateStore(os.path.join(directory, "pki"))
        first = pki.kubeletClient("edge-1")
        store.update(first)
        ca = pki.paths(pki.server, directory, stem="server").ca
        server = TunnelServer(
            reactor,
            makeCredentials([pki.clusterCA.certificate], pki.server.certificate, pki.server.key),
        )
        port: Any = reactor.listenTCP(0, server.tunnelFactory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        options = tapagent.Options()
        options.parseOptions(
            [
                "--server",
                f"127.0.0.1:{port.getHost().port}",
                "--ca",
                ca,
                "--kubelet-client-cert",
                store.current,
                "--tls-reload-interval",
                str(self.INTERVAL),
                "--max-backoff",
                "0.1",
                "--meta-endpoint",
                "none",
            ]
        )
        top: Any = tapagent.makeService(options)
        agent: TunnelAgent = top.getServiceNamed("agent")
        agent.startService()
        self.addCleanup(self.stopAgent, agent)
        tunnel = await agent.whenConnected()
        self.assertEqual(self.presented(server), first.certificate.serial_number)

        now = datetime.datetime.now(datetime.UTC)
        rotated = pki.kubeletClient("edge-1", notBefore=now - DAY, notAfter=now + 300 * DAY)
        store.update(rotated)
        await waitUntil(
            lambda: (
                agent.credentials is not None
                and agent.credentials.certificate.original.get_serial_number()
                == rotated.certificate.serial_number
            ),
            DEADLINE,
            "the agent to take the rotated certificate",
        )
        # the tunnel up keeps the certificate it proved itself with
        self.assertTrue(tunnel.established)
        self.assertEqual(self.presented(server), first.certificate.serial_number)

        # a rotation to another node's certificate is refused, the rotated one kept
        events = self.captureLogs()
        store.update(pki.kubeletClient("edge-2"))
        await waitUntil(
            lambda: any(
                e.get("log_level") == LogLevel.error
                and "not node edge-1's certificate" in formatEvent(e)
                for e in events
            ),
            DEADLINE,
            "the refusal of edge-2's certificate",
        )
        self.assertEqual(
            agent.credentials.certificate.original.get_serial_number(),  # type: ignore[union-attr]
            rotated.certificate.serial_number,
        )

        # the next connection presents the rotated certificate
        tunnel.close(ErrorCode.SHUTTING_DOWN, "the test reconnects")
        await waitUntil(
            lambda: self.presented(server) == rotated.certificate.serial_number,
            DEADLINE,
            "the agent to come back with the rotated certificate",
        )
