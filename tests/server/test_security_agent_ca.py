# -*- test-case-name: tests.server.test_security_agent_ca -*-
"""
Security tests for agents that prove their node with the kubelet's own
client certificate (issue 16): the server trusts the cluster's client CA
for agents (C{--agent-ca}).

That CA signs far more than nodes: admins (C{O=system:masters}),
kube-apiserver's own client certificates, controllers, the kubelets'
serving certificates.  What is tested here, over real mutual TLS on
127.0.0.1 (L{tests.server.hostile.HostileAgent}): only a node's client
certificate becomes an agent, and only for its own node; nothing else
that trusts the agent CA lets a cluster identity in (the CONNECT door and
the HTTPS proxy listener keep their own CAs, and refuse node certificates
even when their CA is the cluster's).
"""

from __future__ import annotations

import datetime
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tests.pki import TestPKI, temporaryDirectory
from tests.server.hostile import HostileAgentConnection, listenForAgents
from tests.server.test_security_identity import _ask, _ServerTestCase
from tests.services import listen
from twisted_tunnel.doors.proxy import ProxyListenerFactory, ProxyRouter
from twisted_tunnel.forwarding.config import ProxyConfig
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls import makeCredentials, proxyServingOptions
from twisted_tunnel.tls.certs import Issued

pki = TestPKI()

#: Identities the cluster's client CA signs that are not nodes (kubeadm's names).
CLUSTER_IDENTITIES = [
    ("kubernetes-admin", ("system:masters",)),
    ("kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",)),
    ("system:kube-controller-manager", ()),
    ("system:kube-scheduler", ()),
    ("system:serviceaccount:kube-system:edge-tunnel", ("system:serviceaccounts",)),
]


def clusterIdentities() -> list[Issued]:
    return [pki.clusterClient(name, *groups) for name, groups in CLUSTER_IDENTITIES]


def _handshakeRefused(testCase: Any, connection: HostileAgentConnection) -> None:
    """The server ended the connection in the TLS handshake: no HELLO, no GOAWAY."""
    testCase.assertFalse(connection.accepted)
    testCase.assertIsNone(connection.goaway)
    assert connection.lost is not None
    testCase.assertTrue(connection.lost.check(SSL.Error), connection.lost)


class ClusterCAAgentTests(_ServerTestCase):
    """The agent port trusts the cluster's client CA alone (C{--agent-ca}, not migrating)."""

    authorities: tuple[Issued, ...] = (pki.clusterCA,)

    def makeServer(self, **kwargs: Any) -> TunnelServer:
        credentials = makeCredentials(
            [ca.certificate for ca in self.authorities], pki.server.certificate, pki.server.key
        )
        return TunnelServer(self.clock, credentials, **kwargs)

    def handshakeRefused(self, connection: HostileAgentConnection) -> None:
        _handshakeRefused(self, connection)
        self.flushLoggedErrors(SSL.Error)

    async def test_kubeletsCertificateIsAnAgent(self) -> None:
        """
        A kubelet's client certificate carries its node; the IP it
        announces is not routed (the certificate proves none: kubelet
        certificates carry no IP subjectAltName), its name is.
        """
        connection = await self.agent(pki.kubeletClient("edge-1")).hello("edge-1", ["10.1.0.1"])
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-1": ()})

    async def test_clusterIdentitiesAreNoAgents(self) -> None:
        """
        An admin's, kube-apiserver's, a controller's or a service account's
        certificate from the cluster CA passes the handshake (the CA signed
        it) and is refused at its HELLO, whatever node it names.
        """
        for issued in clusterIdentities():
            for node in ["edge-1", "kube-apiserver"]:
                connection = await self.agent(issued).hello(node)
                self.assertRefused(connection, "not a node certificate")
        self.assertEqual(self.registered(), {})

    async def test_anotherNodesName(self) -> None:
        """edge-2's kubelet certificate cannot carry edge-1, nor replace its tunnel."""
        real = await self.agent(pki.kubeletClient("edge-1")).hello("edge-1")
        self.assertTrue(real.accepted, real.goaway)
        tunnel = self.server.registry.lookup("edge-1")
        connection = await self.agent(pki.kubeletClient("edge-2")).hello("edge-1")
        self.assertRefused(connection, "system:node:edge-2")
        self.assertIs(self.server.registry.lookup("edge-1"), tunnel)
        self.assertIsNone(real.lost)

    async def test_nodeWithoutTheNodesGroup(self) -> None:
        """C{CN=system:node:edge-1} without C{O=system:nodes}, from the cluster CA: refused."""
        connection = await self.agent(pki.clusterClient("system:node:edge-1")).hello("edge-1")
        self.assertRefused(connection, "O=system:nodes")

    async def test_expiredRefusedInTheHandshake(self) -> None:
        """An expired kubelet certificate does not get past TLS."""
        now = datetime.datetime.now(datetime.UTC)
        expired = pki.kubeletClient(
            "edge-1", notBefore=now - datetime.timedelta(days=30), notAfter=now - 60 * _MINUTE
        )
        self.handshakeRefused(await self.agent(expired).hello("edge-1"))
        self.assertEqual(self.registered(), {})

    async def test_kubeletServingCertificateRefused(self) -> None:
        """
        A kubelet's serving certificate (the node's subject, serverAuth
        only) is refused in the handshake: OpenSSL checks the client
        purpose.
        """
        self.handshakeRefused(await self.agent(pki.kubeletServing("edge-1")).hello("edge-1"))
        self.assertEqual(self.registered(), {})

    async def test_tunnelCANoLongerTrusted(self) -> None:
        """With the cluster CA alone, an agent certificate from the tunnel CA is refused."""
        self.handshakeRefused(await self.agent(pki.agent("edge-1")).hello("edge-1"))


class MigrationTests(ClusterCAAgentTests):
    """
    Both CAs in C{--agent-ca} while migrating: either certificate is an
    agent; the rules above hold for the cluster's; dropping the tunnel CA
    from the bundle closes the tunnels it carried.
    """

    authorities = (pki.ca, pki.clusterCA)

    async def test_tunnelCANoLongerTrusted(self) -> None:
        """Not yet: both are trusted while migrating (see L{test_migrationEnds})."""
        connection = await self.agent(pki.agent("edge-1")).hello("edge-1")
        self.assertTrue(connection.accepted, connection.goaway)

    async def test_migrationEnds(self) -> None:
        old = await self.agent(pki.agent("edge-1")).hello("edge-1")
        new = await self.agent(pki.kubeletClient("edge-2")).hello("edge-2")
        self.assertTrue(old.accepted and new.accepted)
        self.server.updateCredentials(
            makeCredentials([pki.clusterCA.certificate], pki.server.certificate, pki.server.key)
        )
        await old.closedByServer()
        self.assertEqual(self.registered(), {"edge-2": ()})
        self.assertIsNone(new.lost)


_MINUTE = datetime.timedelta(minutes=1)


class DaemonAgentCATests(_ServerTestCase):
    """
    C{twistd edge-tunnel-server --agent-ca}: the agent port trusts it; no
    other listener does.  The daemon's own factories (from C{makeService},
    not started) listen on 127.0.0.1 here.
    """

    def setUp(self) -> None:
        directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, directory)
        self.clusterCA = pki.paths(pki.clusterCA, directory, stem="cluster-ca").cert
        options = tapserver.Options()
        options.parseOptions(
            [
                *self.paths.options(),
                "--agent-ca",
                self.clusterCA,
                "--no-iptables",
                "--connect-endpoint",
                "tcp:0",  # beyond loopback: TLS with --ca
            ]
        )
        service: Any = tapserver.makeService(options)
        self.service = service
        self.server = service.tunnelServer
        self.port = listenForAgents(self, self.server)

    def doorFactory(self, name: str) -> Any:
        return self.service.getServiceNamed(name).factory.wrappedFactory

    def test_agentPortTrustsTheAgentCA(self) -> None:
        """The agent port's trust is --agent-ca, watched for rotation with the server's pair."""
        assert self.server.credentials is not None
        authority = [a.original.to_cryptography() for a in self.server.credentials.authority]
        self.assertEqual(authority, [pki.clusterCA.certificate])
        watcher = self.service.getServiceNamed("tls:--cert")
        self.assertEqual(watcher.paths, (self.clusterCA, self.paths.cert, self.paths.key))

    async def test_agentsAndNoOneElse(self) -> None:
        accepted = await self.agent(pki.kubeletClient("edge-1")).hello("edge-1")
        self.assertTrue(accepted.accepted, accepted.goaway)
        for issued in clusterIdentities():
            connection = await self.agent(issued).hello("edge-2")
            self.assertRefused(connection, "not a node certificate")
        self.assertEqual(self.registered(), {"edge-1": ()})

    async def test_doorsDoNotTrustTheAgentCA(self) -> None:
        """
        The HTTPS proxy listener and the exposed CONNECT door trust --ca
        (the tunnel CA), not --agent-ca: no certificate of the cluster CA,
        node or not, gets through their handshake.
        """
        request = b"GET /pods HTTP/1.1\r\nHost: edge-1:10250\r\nConnection: close\r\n\r\n"
        for name in ["--https-proxy-endpoint", "--connect-endpoint"]:
            port = listen(self, self.doorFactory(name))
            for issued in [pki.kubeletClient("edge-1"), *clusterIdentities()]:
                answer = await _ask(port, issued, request)
                self.assertEqual(answer.received, b"", (name, issued.certificate.subject))
                assert answer.reason is not None
                self.assertTrue(answer.reason.check(SSL.Error), answer.reason)
        self.flushLoggedErrors(SSL.Error)


class ClusterCAAtTheHTTPSListenerTests(_ServerTestCase):
    """
    In production the HTTPS proxy listener trusts the CA of kube-apiserver's
    C{--kubelet-client-certificate}, which kubeadm signs with the cluster CA:
    the CA of the kubelets' certificates too.  They are still refused, in
    the handshake; kube-apiserver's gets in.
    """

    async def test_kubeletCertificateRefused(self) -> None:
        credentials = makeCredentials(
            [pki.clusterCA.certificate], pki.server.certificate, pki.server.key
        )
        router = ProxyRouter(self.server, "https", ProxyConfig)
        factory = TLSMemoryBIOFactory(
            proxyServingOptions(credentials), False, ProxyListenerFactory(router, reactor)
        )
        port = listen(self, factory)
        request = b"GET /pods HTTP/1.1\r\nHost: edge-2:10250\r\nConnection: close\r\n\r\n"
        for issued in [pki.kubeletClient("edge-1"), pki.clusterClient("system:node:edge-1")]:
            answer = await _ask(port, issued, request)
            self.assertEqual(answer.received, b"")
            reason: Failure | None = answer.reason
            assert reason is not None
            self.assertTrue(reason.check(SSL.Error), reason)
        self.flushLoggedErrors(SSL.Error)
        apiserver = pki.clusterClient("kube-apiserver-kubelet-client", "kubeadm:cluster-admins")
        answer = await _ask(port, apiserver, request)
        self.assertTrue(answer.received.startswith(b"HTTP/1.1 502 "), answer.received)
