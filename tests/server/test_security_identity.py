# -*- test-case-name: tests.server.test_security_identity -*-
"""
Security regression tests for who an agent is and what it may claim
(issue 12, findings 1, 2, 9, 17, 19 and 21).

The rule under test: an agent is exactly a C{CN=system:node:<name>,
O=system:nodes} certificate for the node its HELLO names, compared
exactly; node names are lower-case DNS-1123 names that are not IP
literals; an announced IP routes only once proven (by default by the
certificate's IP subjectAltNames); a tunnel is closed when its certificate
expires or stops passing the trusted CAs; and nothing that mints or
accepts a client's certificate mistakes it for a node's.

Most tests are real: a L{tests.server.hostile.HostileAgent} sends the HELLO the
test wants, with a certificate from L{tests.pki}, over mutual TLS on
127.0.0.1 to a real L{TunnelServer}, whose clock is a L{Clock} (set to the
wall clock's time, since TLS checks validity in real time) that the test
moves by hand.  Names that do not exist before issue 12 are imported in
the tests that use them, so that each test fails on its own on the old
code rather than the module failing to import.
"""

from __future__ import annotations

import datetime
import io
import os
from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.pki import TestPKI, temporaryDirectory
from tests.server.hostile import HostileAgent, HostileAgentConnection, listenForAgents, serverClock
from tests.services import listen
from twisted_tunnel import cli
from twisted_tunnel.doors.connect import ConnectDoorFactory, refuseAgentCertificates
from twisted_tunnel.doors.proxy import ProxyListenerFactory, ProxyRouter
from twisted_tunnel.forwarding.config import ProxyConfig
from twisted_tunnel.mux import Refused
from twisted_tunnel.server import AgentRecord, AgentRegistry, TunnelServer
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls import agentOptions, makeCredentials, proxyServingOptions, serverOptions
from twisted_tunnel.tls.certs import Issued, mintClient
from twisted_tunnel.wire import ErrorCode

pki = TestPKI()

#: edge-1's node IP, carried by its certificate in the tests that prove it
EDGE1_IP = "10.1.0.1"
KELVIN = "\u212a"  # KELVIN SIGN: lower-cases to "k"


def warnings(events: Sequence[dict[str, Any]], *parts: str) -> list[str]:
    """The text of the warnings logged in C{events} that contain every one of C{parts}."""
    texts = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    return [text for text in texts if all(part in text for part in parts)]


class _ServerTestCase(TestCase):
    """A real L{TunnelServer} on 127.0.0.1 with the test PKI's server certificate."""

    clockOffset = 0.0

    def setUp(self) -> None:
        self.clock: Clock = serverClock(self.clockOffset)
        self.server = self.makeServer()
        self.port = listenForAgents(self, self.server)

    def makeServer(self, **kwargs: Any) -> TunnelServer:
        return TunnelServer(self.clock, pki.credentials(pki.server), **kwargs)

    def agent(self, issued: Issued) -> HostileAgent:
        return HostileAgent(self, self.port, issued)

    def assertRefused(self, connection: HostileAgentConnection, *why: str) -> str:
        """The server refused the tunnel with GOAWAY UNAUTHORIZED saying C{why}."""
        self.assertFalse(connection.accepted, f"accepted: {connection.serverHello}")
        self.assertEqual(connection.refusedWith, ErrorCode.UNAUTHORIZED, connection.goaway)
        assert connection.goaway is not None
        for part in why:
            self.assertIn(part, connection.goaway[1])
        return connection.goaway[1]

    def registered(self) -> dict[str, tuple[str, ...]]:
        """The registry: each connected node and the IPs that route to it."""
        return {record.node: record.ips for record in self.server.registry}


class UnprovenIPTests(_ServerTestCase):
    """
    Finding 1: an agent whose certificate carries no IP SANs takes over
    another node's IP, or a cloud address, by announcing it.
    """

    async def test_anotherNodesIP(self) -> None:
        """
        edge-2's certificate carries no IP: its tunnel is accepted (by name),
        but edge-1's IP that it announces routes nothing, and the real edge-1
        (whose certificate carries that IP) still connects and owns it.
        """
        with capturedLogs() as events:
            impostor = await self.agent(pki.agent("edge-2")).hello("edge-2", [EDGE1_IP])
        self.assertTrue(impostor.accepted)
        self.assertIsNone(self.server.registry.lookup(EDGE1_IP))
        self.assertEqual(self.registered(), {"edge-2": ()})
        self.assertTrue(warnings(events, "edge-2", EDGE1_IP, "not routing"), events)

        real = await self.agent(pki.agent("edge-1", [EDGE1_IP])).hello("edge-1", [EDGE1_IP])
        self.assertTrue(real.accepted, real.goaway)
        record = self.server.registry.lookup(EDGE1_IP)
        assert record is not None
        self.assertEqual(record.node, "edge-1")
        self.assertEqual(self.registered(), {"edge-2": (), "edge-1": (EDGE1_IP,)})

    async def test_cloudAddresses(self) -> None:
        """
        Nor does a cloud address (a Service IP, a public address, the
        metadata service) route into the tunnel of an agent that announces it.
        """
        announced = ["10.96.0.1", "203.0.113.10", "169.254.169.254", "fd00::1"]
        impostor = await self.agent(pki.agent("edge-2")).hello("edge-2", announced)
        self.assertTrue(impostor.accepted)
        for ip in announced:
            self.assertIsNone(self.server.registry.lookup(ip), ip)
        self.assertEqual(self.registered(), {"edge-2": ()})

    async def test_ipSANsProve(self) -> None:
        """
        What the certificate carries as IP subjectAltNames routes; what else
        the agent announces does not, and the tunnel stays up (by name).
        """
        agent = self.agent(pki.agent("edge-1", [EDGE1_IP]))
        connection = await agent.hello("edge-1", [EDGE1_IP, "10.1.0.99"])
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP,)})
        self.assertIsNone(self.server.registry.lookup("10.1.0.99"))

    def test_certificateProofByDefault(self) -> None:
        """A server made with no word about it routes only certificate-proven IPs."""
        from twisted_tunnel.server import CertificateAddressProof

        self.assertIsInstance(self.server.addressProof, CertificateAddressProof)

    async def test_trustAnnouncedIsOptInAndLoud(self) -> None:
        """
        C{TrustAnnouncedAddresses} (C{--trust-announced-ips}) routes the
        unproven IPs, with a warning naming the node and the IPs taken on
        its word, and still never loopback, unspecified or link-local ones.
        """
        from twisted_tunnel.server import TrustAnnouncedAddresses

        self.server = self.makeServer(addressProof=TrustAnnouncedAddresses())
        self.port = listenForAgents(self, self.server)
        special = ["127.0.0.5", "169.254.1.1", "0.0.0.0", "::1", "fe80::1", "224.0.0.1"]
        with capturedLogs() as events:
            connection = await self.agent(pki.agent("edge-2")).hello(
                "edge-2", ["10.2.0.2", *special]
            )
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-2": ("10.2.0.2",)})
        for ip in special:
            self.assertIsNone(self.server.registry.lookup(ip), ip)
        self.assertTrue(warnings(events, "edge-2", "10.2.0.2", "--trust-announced-ips"), events)

    def test_daemonOption(self) -> None:
        """
        C{twistd edge-tunnel-server --trust-announced-ips} is the opt-in, and
        says so at start-up; without it the daemon proves IPs by certificate.
        """
        from twisted_tunnel.server import CertificateAddressProof, TrustAnnouncedAddresses

        paths = pki.paths(pki.server, temporaryDirectory(self))

        def make(*args: str) -> TunnelServer:
            options = tapserver.Options()
            options.parseOptions([*paths.options(), "--no-iptables", *args])
            service: Any = tapserver.makeService(options)
            server: TunnelServer = service.tunnelServer
            return server

        with capturedLogs() as events:
            self.assertIsInstance(make().addressProof, CertificateAddressProof)
        self.assertEqual(warnings(events, "--trust-announced-ips"), [])
        with capturedLogs() as events:
            self.assertIsInstance(
                make("--trust-announced-ips").addressProof, TrustAnnouncedAddresses
            )
        self.assertTrue(warnings(events, "--trust-announced-ips"), events)


def _runCLI(testCase: SynchronousTestCase, *argv: str) -> tuple[int, str, str, str]:
    """
    Run C{edge-tunnel <argv> --dir D} in-process, in a fresh directory D that
    holds a CA (C{certs init}); its status, stdout, stderr, and D.
    """
    directory = os.path.join(temporaryDirectory(testCase), "pki")
    quiet = io.StringIO()
    testCase.assertEqual(cli.main(["certs", "init", "--dir", directory], stdout=quiet), 0)
    stdout, stderr = io.StringIO(), io.StringIO()
    status = cli.main([*argv, "--dir", directory], stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue(), directory


class NodeNamedLikeAnIPTests(_ServerTestCase):
    """
    Finding 2: a node named like an IP (127.0.0.3, 127.1, 0x7f000001)
    shadows that IP in routing.
    """

    NAMES = ("127.0.0.3", "127.1", "0x7f000001", "2130706433", "10.1.0.1")

    async def test_refusedAtHello(self) -> None:
        """
        A certificate for C{system:node:127.0.0.3} (and the other
        spellings) gets no tunnel, and the real owner of the address keeps it.
        """
        owner = await self.agent(pki.agent("edge-1", ["127.0.0.3", EDGE1_IP])).hello(
            "edge-1", ["127.0.0.3", EDGE1_IP]
        )
        self.assertTrue(owner.accepted, owner.goaway)
        for name in self.NAMES:
            certificate = pki.leaf(f"system:node:{name}")
            connection = await self.agent(certificate).hello(name)
            self.assertRefused(connection, "reads as an IP address")
        self.assertEqual(self.registered(), {"edge-1": ("127.0.0.3", EDGE1_IP)})
        for address in ("127.0.0.3", EDGE1_IP):
            record = self.server.registry.lookup(address)
            assert record is not None
            self.assertEqual(record.node, "edge-1")
        self.assertIsNone(owner.lost)

    def test_registryNeverLetsANameShadowAnIP(self) -> None:
        """
        The registry refuses a node named like an IP, and looks up what
        reads as an IP as an IP only.
        """
        registry = AgentRegistry()
        tunnels: Any = [object(), object()]
        registry.register(AgentRecord("edge-1", ("127.0.0.3",), tunnels[0], None, 0.0, "a"))
        with self.assertRaises(Refused) as caught:
            registry.register(AgentRecord("127.0.0.3", (), tunnels[1], None, 0.0, "b"))
        self.assertEqual(caught.exception.code, ErrorCode.UNAUTHORIZED)
        record = registry.lookup("127.0.0.3")
        assert record is not None
        self.assertEqual(record.node, "edge-1")
        self.assertIsNone(registry.lookup("127.0.0.4"))
        self.assertEqual(len(registry), 1)

    def test_certsAgentRefuses(self) -> None:
        """C{edge-tunnel certs agent 127.0.0.3} (and the other spellings) mints nothing."""
        for name in self.NAMES:
            status, out, err, directory = _runCLI(self, "certs", "agent", name)
            self.assertEqual((status, out), (2, ""), name)
            self.assertIn("reads as an IP address", err)
            self.assertNotIn("Traceback", err)
            self.assertFalse(os.path.exists(os.path.join(directory, f"agent-{name}.pem")))


class _Answer(Protocol):
    """Sends one request and collects the answer until the connection ends."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.reason = reason
        self.done.callback(None)


async def _ask(port: int, certificate: Issued, request: bytes) -> _Answer:
    """Send C{request} over TLS to 127.0.0.1:C{port}, presenting C{certificate}."""
    answer = _Answer(request)
    endpoint = wrapClientTLS(
        agentOptions(pki.credentials(certificate), "127.0.0.1"),
        TCP4ClientEndpoint(reactor, "127.0.0.1", port),
    )
    await connectProtocol(endpoint, answer)
    await answer.done.addTimeout(10, reactor)
    return answer


class RoleSeparationTests(_ServerTestCase):
    """
    Finding 9: certificate roles are not separated: a certificate whose DNS
    SAN names a node, or a client's, carries that node's tunnel; a node's
    certificate uses the client doors.
    """

    async def test_dnsSANDoesNotMakeAnAgent(self) -> None:
        """
        C{CN=edge-1-ops} with C{DNS:edge-1} does not replace the real
        edge-1's tunnel, with or without C{O=system:nodes}.
        """
        real = await self.agent(pki.agent("edge-1")).hello("edge-1")
        self.assertTrue(real.accepted, real.goaway)
        tunnel = self.server.registry.lookup("edge-1")
        for organizations in [(), ("system:nodes",)]:
            ops = pki.leaf("edge-1-ops", organizations=organizations, dnsNames=["edge-1"])
            connection = await self.agent(ops).hello("edge-1")
            self.assertRefused(connection, "not a node certificate")
        self.assertIs(self.server.registry.lookup("edge-1"), tunnel)
        self.assertIsNone(real.lost)

    async def test_clientCertificateCannotRegister(self) -> None:
        """
        A CONNECT client's certificate (C{CN=edge-1}, C{DNS:edge-1}, as
        C{certs client edge-1} mints it) is no agent's.
        """
        for name in ["edge-1", "kube-apiserver"]:
            connection = await self.agent(pki.client(name)).hello(name)
            self.assertRefused(connection, "not a node certificate")
        self.assertEqual(self.registered(), {})

    async def test_nodeCertificateNeedsTheNodesGroup(self) -> None:
        """C{CN=system:node:edge-1} without C{O=system:nodes} is no agent either."""
        certificate = pki.leaf("system:node:edge-1", organizations=())
        connection = await self.agent(certificate).hello("edge-1")
        self.assertRefused(connection, "O=system:nodes")
        self.assertEqual(self.registered(), {})

    def test_theDoorsRule(self) -> None:
        """
        C{refuseNodeIdentity}, the rule of the CONNECT door over TLS and of
        the HTTPS proxy listener: any node identity (the C{system:node:}
        prefix, valid name or not, or the C{system:nodes} group) is refused.
        """
        from twisted_tunnel.tls import PeerIdentity, refuseNodeIdentity

        refused = [
            PeerIdentity("system:node:edge-1", organizations=("system:nodes",)),
            PeerIdentity("system:node:edge-1"),
            PeerIdentity("system:node:EDGE-1"),
            PeerIdentity("ops", organizations=("system:nodes",)),
            None,
        ]
        for identity in refused:
            self.assertIsNotNone(refuseNodeIdentity(identity), identity)
        self.assertIsNone(refuseNodeIdentity(PeerIdentity("kube-apiserver")))

    async def test_connectDoorOverTLS(self) -> None:
        """
        The CONNECT door over mutual TLS answers 403 to a node certificate,
        also one that is a node's only by its C{O=system:nodes}; a client
        gets past it (503: no agent here).
        """
        door = ConnectDoorFactory(
            self.server, authorize=refuseAgentCertificates, lingerTimeout=0.5
        )
        factory = TLSMemoryBIOFactory(serverOptions(pki.credentials(pki.server)), False, door)
        port = listen(self, factory)
        request = b"CONNECT edge-1:10250 HTTP/1.1\r\nHost: edge-1:10250\r\n\r\n"
        for certificate in [
            pki.agent("edge-1"),
            pki.leaf("edge-1-ops", organizations=("system:nodes",)),
        ]:
            answer = await _ask(port, certificate, request)
            self.assertTrue(answer.received.startswith(b"HTTP/1.1 403 "), answer.received)
            self.assertIn(b"agent's certificate", answer.received)
        answer = await _ask(port, pki.client("kube-apiserver"), request)
        self.assertTrue(answer.received.startswith(b"HTTP/1.1 503 "), answer.received)

    async def test_httpsListenerRefusesNodesInTheHandshake(self) -> None:
        """
        The HTTPS proxy listener (which lends out the proxy client
        certificate) refuses a node's certificate in the TLS handshake: no
        HTTP at all.  A client's gets an HTTP answer.
        """
        router = ProxyRouter(self.server, "https", ProxyConfig)
        factory = TLSMemoryBIOFactory(
            proxyServingOptions(pki.credentials(pki.server)),
            False,
            ProxyListenerFactory(router, reactor),
        )
        port = listen(self, factory)
        request = b"GET /pods HTTP/1.1\r\nHost: edge-2:10250\r\nConnection: close\r\n\r\n"
        for certificate in [
            pki.agent("edge-1"),
            pki.leaf("edge-1-ops", organizations=("system:nodes",)),
        ]:
            answer = await _ask(port, certificate, request)
            self.assertEqual(answer.received, b"")
            assert answer.reason is not None
            self.assertTrue(answer.reason.check(SSL.Error), answer.reason)
        self.flushLoggedErrors(SSL.Error)
        answer = await _ask(port, pki.client("kube-apiserver"), request)
        self.assertTrue(answer.received.startswith(b"HTTP/1.1 502 "), answer.received)


class ExactNodeNameTests(_ServerTestCase):
    """
    Finding 17: node names are compared with case and Unicode folding, so
    C{system:node:EDGE-K} or a Kelvin-sign C{edge-K} takes over edge-k.
    """

    async def test_noFolding(self) -> None:
        """
        Certificates for C{system:node:EDGE-K} and C{system:node:edge-}(Kelvin
        sign) carry neither edge-k nor a name of their own; the real edge-k
        keeps its tunnel.
        """
        real = await self.agent(pki.agent("edge-k")).hello("edge-k")
        self.assertTrue(real.accepted, real.goaway)
        record = self.server.registry.lookup("edge-k")
        for cn in ["system:node:EDGE-K", "system:node:Edge-k", f"system:node:edge-{KELVIN}"]:
            certificate = pki.leaf(cn)
            name = cn.removeprefix("system:node:")
            for hello in {"edge-k", name}:
                connection = await self.agent(certificate).hello(hello)
                self.assertRefused(connection)
        self.assertEqual(self.registered(), {"edge-k": ()})
        self.assertIs(self.server.registry.lookup("edge-k"), record)
        self.assertIsNone(real.lost)

    def test_registryIsExact(self) -> None:
        """
        The registry finds a node by its exact name only, and never
        registers a name that is not an exact lower-case DNS-1123 one.
        """
        registry = AgentRegistry()
        tunnels: Any = [object(), object()]
        registry.register(AgentRecord("edge-k", (), tunnels[0], None, 0.0, "a"))
        for spelling in ["EDGE-K", "Edge-k", f"edge-{KELVIN}"]:
            self.assertIsNone(registry.lookup(spelling), spelling)
            with self.assertRaises(Refused):
                registry.register(AgentRecord(spelling, (), tunnels[1], None, 0.0, "b"))
        record = registry.lookup("edge-k")
        assert record is not None
        self.assertIs(record.tunnel, tunnels[0])


class RevalidationTests(_ServerTestCase):
    """
    Finding 19: live tunnels are never re-validated: an agent of a CA
    rotated out, or whose certificate expired, keeps serving.
    """

    def rotate(self, *authorities: Issued) -> None:
        """Put a C{--ca} bundle of C{authorities} in force, as a rotation does."""
        self.server.updateCredentials(
            makeCredentials(
                [ca.certificate for ca in authorities],
                pki.server.certificate,
                pki.server.key,
            )
        )

    async def test_caRotation(self) -> None:
        """
        Adding a CA keeps every tunnel; removing one closes the tunnels of
        its agents (GOAWAY UNAUTHORIZED), and only those.
        """
        self.rotate(pki.ca, pki.otherCA)
        ours = await self.agent(pki.agent("edge-1")).hello("edge-1")
        foreign = await HostileAgent(self, self.port, pki.foreignAgent("edge-2")).hello("edge-2")
        self.assertTrue(ours.accepted and foreign.accepted, (ours.goaway, foreign.goaway))
        self.rotate(pki.otherCA, pki.ca)  # the same bundle, reordered: nothing to do
        self.rotate(pki.ca, pki.otherCA, pki.otherCA)
        self.assertIsNone(ours.lost or foreign.lost)
        with capturedLogs() as events:
            self.rotate(pki.ca)
            goaway = await foreign.closedByServer()
        assert goaway is not None
        self.assertEqual(goaway[0], ErrorCode.UNAUTHORIZED)
        self.assertIn("no longer trusts", goaway[1])
        self.assertTrue(warnings(events, "edge-2", "--ca"), events)
        self.assertEqual(self.registered(), {"edge-1": ()})
        self.assertIsNone(ours.lost)
        self.rotate(pki.otherCA)
        goaway = await ours.closedByServer()
        self.assertEqual(goaway and goaway[0], ErrorCode.UNAUTHORIZED)
        self.assertEqual(self.registered(), {})

    async def test_certificateExpires(self) -> None:
        """
        An agent's tunnel is closed when its certificate expires, by the
        server's clock: not a second before.
        """
        expires = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        expires += datetime.timedelta(hours=1)
        certificate = pki.shortLivedAgent("edge-1", expires.replace(microsecond=0))
        connection = await self.agent(certificate).hello("edge-1")
        self.assertTrue(connection.accepted, connection.goaway)
        self.clock.advance(3600 - 60)
        self.assertIsNone(connection.lost)
        self.assertEqual(self.registered(), {"edge-1": ()})
        with capturedLogs() as events:
            self.clock.advance(60)
            goaway = await connection.closedByServer()
        assert goaway is not None
        self.assertEqual(goaway[0], ErrorCode.UNAUTHORIZED)
        self.assertIn("expired", goaway[1])
        self.assertTrue(warnings(events, "edge-1", "expired"), events)
        self.assertEqual(self.registered(), {})

    async def test_expiredAtHello(self) -> None:
        """
        A certificate that passed the handshake but has expired by the time
        its HELLO is read (by the server's clock) is refused.
        """
        self.clock.advance(2 * 3600)  # the HELLO comes two hours after the handshake
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        certificate = pki.shortLivedAgent("edge-1", expires)
        connection = await self.agent(certificate).hello("edge-1")
        self.assertRefused(connection, "expired")
        self.assertEqual(self.registered(), {})

    def test_daemonRevalidatesOnCARotation(self) -> None:
        """
        In C{twistd edge-tunnel-server}, a change of the C{--ca} file (as a
        Secret update makes it) reaches C{TunnelServer.revalidate}.
        """
        directory = temporaryDirectory(self)
        paths = pki.paths(pki.server, directory)
        options = tapserver.Options()
        options.parseOptions([*paths.options(), "--no-iptables"])
        service: Any = tapserver.makeService(options)
        server: TunnelServer = service.tunnelServer
        revalidated: list[int] = []

        def revalidate() -> int:
            revalidated.append(1)
            return 0

        self.patch(server, "revalidate", revalidate)
        watcher = service.getServiceNamed("tls:--cert")
        with open(paths.ca, "wb") as f:
            f.write(pki.ca.certificatePEM() + pki.otherCA.certificatePEM())
        self.assertTrue(watcher.poll())
        self.assertEqual(revalidated, [1])
        self.assertEqual(len(server.credentials.authority), 2)  # type: ignore[union-attr]


class ClientNamedLikeANodeTests(SynchronousTestCase):
    """
    Finding 21: C{edge-tunnel certs client 'system:node:edge-1'} mints a
    working agent certificate.
    """

    NAMES = ("system:node:edge-1", "System:Node:edge-1", "SYSTEM:NODE:edge-1", "system:nodes")

    def test_refused(self) -> None:
        for name in self.NAMES:
            status, out, err, directory = _runCLI(self, "certs", "client", name)
            self.assertEqual((status, out), (2, ""), name)
            self.assertTrue(err.startswith("edge-tunnel: error: "), err)
            self.assertIn("node identity", err)
            self.assertEqual(sorted(os.listdir(directory)), ["ca-key.pem", "ca.pem"])

    def test_mintClientRefuses(self) -> None:
        """The library function the command uses refuses them too."""
        for name in self.NAMES:
            with self.assertRaises(ValueError):
                mintClient(pki.ca, name)

    def test_clientsStillMinted(self) -> None:
        status, out, err, directory = _runCLI(self, "certs", "client", "kube-apiserver")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(os.path.exists(os.path.join(directory, "client-kube-apiserver.pem")))
