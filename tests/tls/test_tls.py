"""
Tests for L{twisted_tunnel.tls}: loading credentials, real mutual TLS handshakes, peer identity.

Handshakes run in memory (two L{TLSMemoryBIOProtocol}s joined by a small
pump, on a L{Clock}), except one over real loopback sockets, which checks
that L{peerIdentity} works on the transports the reactor really gives.
"""

from __future__ import annotations

import datetime
import os
import stat

from attrs import define, field
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.pki import CredentialPaths, TestPKI, temporaryDirectory
from tests.services import OneProtocolFactory
from twisted_tunnel.errors import CredentialsError
from twisted_tunnel.tls import (
    NODE_COMMON_NAME_PREFIX,
    Credentials,
    PeerIdentity,
    agentOptions,
    enableReleaseBuffers,
    identityOfCertificate,
    loadCredentials,
    peerIdentity,
    serverOptions,
)
from twisted_tunnel.tls.certs import mintCA

pki = TestPKI()


# An in-memory TLS connection.


@implementer(IHandshakeListener)
class Peer(Protocol):
    """An application protocol that records what happens to it."""

    def __init__(self) -> None:
        self.identityAtConnect: PeerIdentity | None = None
        self.identity: PeerIdentity | None = None
        self.handshakes = 0
        self.received = b""
        self.lostReason: Failure | None = None
        self.handshakeDone: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()
        # kept past the end, for the description of a failure (tls.failures)
        self.tlsConnection: SSL.Connection | None = None

    def connectionMade(self) -> None:
        self.identityAtConnect = peerIdentity(self.transport)
        self.tlsConnection = self.transport.getHandle()  # type: ignore[union-attr]

    def handshakeCompleted(self) -> None:
        self.handshakes += 1
        self.identity = peerIdentity(self.transport)
        self.handshakeDone.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lostReason = reason
        self.lost.callback(None)


@define
class Side:
    """One end of an in-memory TLS connection."""

    app: Peer
    tls: TLSMemoryBIOProtocol
    wire: StringTransport
    lost: bool = False


@define
class MemoryTLS:
    """An agent (client) and a server connected in memory through TLS."""

    clock: Clock
    server: Side
    client: Side
    log: list[str] = field(factory=list)

    def pump(self) -> None:
        """
        Move bytes both ways until neither side has anything more to say,
        then deliver the end of the connection to both if either closed it.

        Bytes are not delivered to a side that has closed its end, as a
        reset socket would not.
        """
        while True:
            self.clock.advance(0)
            moved = False
            for source, destination in ((self.client, self.server), (self.server, self.client)):
                data = source.wire.value()
                if data:
                    source.wire.clear()
                    if not destination.wire.disconnecting:
                        destination.tls.dataReceived(data)
                    moved = True
            if not moved:
                break
        if self.client.wire.disconnecting or self.server.wire.disconnecting:
            for side in (self.client, self.server):
                if not side.lost:
                    side.lost = True
                    reason = ConnectionDone() if side.wire.disconnecting else ConnectionLost()
                    side.tls.connectionLost(Failure(reason))
            self.clock.advance(0)


def connect(
    serverCreator: IOpenSSLServerConnectionCreator | CertificateOptions,
    clientCreator: IOpenSSLClientConnectionCreator | CertificateOptions,
) -> MemoryTLS:
    """Connect a client and a server in memory, and run the handshake to its end."""
    clock = Clock()
    sides = []
    for creator, isClient in ((serverCreator, False), (clientCreator, True)):
        app = Peer()
        factory = TLSMemoryBIOFactory(creator, isClient, OneProtocolFactory(app), clock=clock)
        tls = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10262))
        assert isinstance(tls, TLSMemoryBIOProtocol)
        wire = StringTransport()
        tls.makeConnection(wire)
        sides.append(Side(app=app, tls=tls, wire=wire))
    connection = MemoryTLS(clock=clock, server=sides[0], client=sides[1])
    connection.pump()
    return connection


def anonymousClient(serverName: str = "localhost") -> IOpenSSLClientConnectionCreator:
    """A client that trusts the tunnel CA but presents no certificate of its own."""
    return optionsForClientTLS(serverName, trustRoot=pki.credentials(pki.server).authority[0])


class HandshakeTests(SynchronousTestCase):
    """Mutual TLS between L{agentOptions} and L{serverOptions}, in memory."""

    def setUp(self) -> None:
        self.server = serverOptions(pki.credentials(pki.server))

    def assertRefusedByServer(self, connection: MemoryTLS) -> None:
        """The server never completed a handshake and has dropped the connection."""
        self.assertEqual(connection.server.app.handshakes, 0)
        self.assertIsNone(connection.server.app.identity)
        self.assertTrue(connection.server.lost)
        self.assertTrue(connection.client.lost)
        reason = connection.server.app.lostReason
        assert reason is not None
        self.assertIsInstance(reason.value, SSL.Error)
        self.assertEqual(connection.clock.getDelayedCalls(), [])

    def test_agentAndServer(self) -> None:
        """
        An agent with a certificate from the tunnel CA and the server complete
        the handshake, and each sees the other's identity.
        """
        agent = agentOptions(pki.credentials(pki.agent("edge-1", ["192.0.2.1"])), "localhost")
        connection = connect(self.server, agent)
        server, client = connection.server.app, connection.client.app
        self.assertEqual((server.handshakes, client.handshakes), (1, 1))
        self.assertEqual(
            server.identity,
            PeerIdentity(
                commonName="system:node:edge-1",
                dnsNames=("edge-1",),
                ipAddresses=("192.0.2.1",),
                organizations=("system:nodes",),
            ),
        )
        assert server.identity is not None
        self.assertEqual(server.identity.nodeName(), "edge-1")
        assert client.identity is not None
        self.assertEqual(client.identity.dnsNames, ("localhost",))
        # Before the handshake, there is no identity yet.
        self.assertIsNone(server.identityAtConnect)

        # Application data flows both ways.
        connection.client.tls.write(b"hello server")
        connection.server.tls.write(b"hello agent")
        connection.pump()
        self.assertEqual(server.received, b"hello server")
        self.assertEqual(client.received, b"hello agent")

        # And the connection closes cleanly.
        connection.client.tls.loseConnection()
        connection.pump()
        self.assertTrue(connection.server.lost)
        assert server.lostReason is not None
        server.lostReason.trap(ConnectionDone)
        self.assertEqual(connection.clock.getDelayedCalls(), [])

    def test_modernTLS(self) -> None:
        """The tunnel negotiates TLS 1.2 at least (1.3 where both ends have it)."""
        agent = agentOptions(pki.credentials(pki.agent()), "localhost")
        connection = connect(self.server, agent)
        handle = connection.server.tls.getHandle()
        self.assertIn(handle.get_protocol_version_name(), {"TLSv1.2", "TLSv1.3"})

    def test_serverNameIsIP(self) -> None:
        """
        An agent that dials an IP address checks it against the server's IP
        address subjectAltNames, for IPv4 and IPv6 alike.
        """
        for address in ["127.0.0.1", "::1"]:
            agent = agentOptions(pki.credentials(pki.agent()), address)
            connection = connect(self.server, agent)
            self.assertEqual(connection.client.app.handshakes, 1, address)
            self.assertEqual(connection.server.app.handshakes, 1, address)

    def test_serverWithoutTheName(self) -> None:
        """
        An agent refuses a server whose certificate, though signed by the
        tunnel CA, does not carry the name or address the agent dialled.
        """
        for name in ["tunnel.example.com", "192.0.2.99"]:
            agent = agentOptions(pki.credentials(pki.agent()), name)
            connection = connect(self.server, agent)
            self.assertEqual(connection.client.app.handshakes, 0, name)
            self.assertEqual(connection.server.app.handshakes, 0, name)
            reason = connection.client.app.lostReason
            assert reason is not None
            reason.trap(VerificationError)

    def test_serverFromAnotherCA(self) -> None:
        """An agent refuses a server whose certificate another CA signed."""
        server = serverOptions(pki.credentials(pki.foreignServer(), ca=pki.ca))
        agent = agentOptions(pki.credentials(pki.agent()), "localhost")
        connection = connect(server, agent)
        self.assertEqual(connection.client.app.handshakes, 0)
        self.assertEqual(connection.server.app.handshakes, 0)
        self.assertTrue(connection.client.lost)
        reason = connection.client.app.lostReason
        assert reason is not None
        reason.trap(SSL.Error)

    def test_expiredServer(self) -> None:
        """An agent refuses a server whose certificate has expired."""
        server = serverOptions(pki.credentials(pki.expiredServer()))
        agent = agentOptions(pki.credentials(pki.agent()), "localhost")
        connection = connect(server, agent)
        self.assertEqual(connection.client.app.handshakes, 0)
        self.assertEqual(connection.server.app.handshakes, 0)

    def test_clientWithoutCertificate(self) -> None:
        """The server requires a client certificate: a client without one is refused."""
        connection = connect(self.server, anonymousClient())
        self.assertRefusedByServer(connection)

    def test_clientFromAnotherCA(self) -> None:
        """The server refuses a client certificate signed by another CA."""
        agent = agentOptions(pki.credentials(pki.foreignAgent(), ca=pki.ca), "localhost")
        connection = connect(self.server, agent)
        self.assertRefusedByServer(connection)

    def test_expiredAgent(self) -> None:
        """The server refuses an agent whose certificate has expired."""
        agent = agentOptions(pki.credentials(pki.expiredAgent()), "localhost")
        connection = connect(self.server, agent)
        self.assertRefusedByServer(connection)

    def test_tls11Refused(self) -> None:
        """
        The server refuses a client that speaks only TLS 1.1, which it would
        otherwise have been able to talk to.
        """
        agentCreds = pki.credentials(pki.agent())
        serverCreds = pki.credentials(pki.server)

        def legacy(creds: Credentials) -> CertificateOptions:
            try:
                options = CertificateOptions(
                    privateKey=creds.certificate.privateKey.original.to_cryptography_key(),
                    certificate=creds.certificate.original.to_cryptography(),
                    trustRoot=creds.authority[0],
                    insecurelyLowerMinimumTo=TLSVersion.TLSv1_1,
                    lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
                )
                # OpenSSL 3 refuses TLS 1.1's SHA-1 signatures above level 0.
                options.getContext().set_cipher_list(b"DEFAULT:@SECLEVEL=0")
            except (ValueError, SSL.Error) as e:
                raise self.skipTest(f"this OpenSSL cannot make a TLS 1.1 context: {e}") from e
            return options

        # First show that this client does speak TLS 1.1, to a server that
        # allows it: otherwise the refusal below would prove nothing.
        control = connect(legacy(serverCreds), legacy(agentCreds))
        if control.client.app.handshakes != 1:
            raise self.skipTest("this OpenSSL cannot complete a TLS 1.1 handshake at all")
        self.assertEqual(control.server.tls.getHandle().get_protocol_version_name(), "TLSv1.1")

        connection = connect(self.server, legacy(agentCreds))
        self.assertRefusedByServer(connection)
        self.assertEqual(connection.client.app.handshakes, 0)

    def test_releaseBuffers(self) -> None:
        """
        Both ends' contexts free idle connections' buffers
        (C{SSL_MODE_RELEASE_BUFFERS}): memory matters with many idle agents.

        pyOpenSSL has no C{get_mode}, and refuses any C{set_mode} once a
        context has made a connection, so watch the calls instead.
        """
        flag = SSL.MODE_RELEASE_BUFFERS
        released: list[SSL.Context] = []
        setMode = SSL.Context.set_mode

        def recordingSetMode(context: SSL.Context, mode: int) -> int:
            if mode & flag:
                released.append(context)
            return setMode(context, mode)

        self.patch(SSL.Context, "set_mode", recordingSetMode)
        server = serverOptions(pki.credentials(pki.server))
        agent = agentOptions(pki.credentials(pki.agent()), "localhost")
        connection = connect(server, agent)
        self.assertEqual(connection.server.app.handshakes, 1)
        for side in (connection.server, connection.client):
            self.assertIn(side.tls.getHandle().get_context(), released)

    def test_enableReleaseBuffers(self) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        self.assertTrue(enableReleaseBuffers(context))
        self.assertTrue(context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS)

    def test_noSessionTickets(self) -> None:
        """Every connection does a full handshake: no tickets to resume with."""
        context = serverOptions(pki.credentials(pki.server)).getContext()
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)


class RealSocketTests(TestCase):
    """One handshake over real loopback sockets, through the reactor's own TLS transports."""

    def test_handshake(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.handshake())

    async def handshake(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint

        server, client = Peer(), Peer()
        serverEndpoint = SSL4ServerEndpoint(
            reactor,
            0,
            serverOptions(pki.credentials(pki.server)),
            interface="127.0.0.1",
        )
        port = await serverEndpoint.listen(OneProtocolFactory(server))
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        clientEndpoint = SSL4ClientEndpoint(
            reactor,
            "127.0.0.1",
            address.port,
            agentOptions(pki.credentials(pki.agent("edge-7")), "127.0.0.1"),
        )
        await clientEndpoint.connect(OneProtocolFactory(client))
        await gatherResults([server.handshakeDone, client.handshakeDone])

        assert server.identity is not None
        self.assertEqual(server.identity.nodeName(), "edge-7")
        self.assertTrue(server.identity.carriesNode("edge-7"))
        assert client.identity is not None
        self.assertIn("127.0.0.1", client.identity.ipAddresses)

        assert client.transport is not None
        client.transport.loseConnection()
        await gatherResults([server.lost, client.lost])


class IdentityTests(SynchronousTestCase):
    """L{PeerIdentity}: who a certificate says its holder is."""

    def test_nodeCertificate(self) -> None:
        identity = identityOfCertificate(pki.agent("edge-1").certificate)
        self.assertEqual(identity.commonName, NODE_COMMON_NAME_PREFIX + "edge-1")
        self.assertEqual(identity.nodeName(), "edge-1")
        self.assertTrue(identity.isNodeCertificate())
        self.assertTrue(identity.carriesNode("edge-1"))
        self.assertFalse(identity.carriesNode("EDGE-1"))  # exact: no case folding
        self.assertFalse(identity.carriesNode("other"))
        self.assertFalse(identity.carriesNode("edge"))
        self.assertEqual(identity.describe(), "node edge-1")

    def test_otherNode(self) -> None:
        """An agent certificate for another node carries only that node."""
        identity = identityOfCertificate(pki.agent("other").certificate)
        self.assertEqual(identity.nodeName(), "other")
        self.assertFalse(identity.carriesNode("edge-1"))

    def test_commonNameForm(self) -> None:
        """
        The kubelet convention alone is enough, with no subjectAltName: the
        common name system:node:<name> and the organization system:nodes.
        """
        identity = PeerIdentity(commonName="system:node:edge-9", organizations=("system:nodes",))
        self.assertEqual(identity.nodeName(), "edge-9")
        self.assertTrue(identity.carriesNode("edge-9"))
        self.assertTrue(identity.isNodeCertificate())

    def test_commonNameWithoutOrganization(self) -> None:
        """
        Without O=system:nodes the common name alone carries no node (it
        used to), though the certificate still claims to be a node's, so
        that the doors refuse it.
        """
        identity = PeerIdentity(commonName="system:node:edge-9")
        self.assertFalse(identity.carriesNode("edge-9"))
        self.assertIn("lacks O=system:nodes", identity.whyNotNode("edge-9") or "")
        self.assertTrue(identity.isNodeCertificate())

    def test_mixedCaseCommonName(self) -> None:
        """
        system:node:Edge-9 names no node: Kubernetes names are lower case,
        and nothing is folded (this test used to expect it to carry edge-9).
        """
        identity = PeerIdentity(commonName="system:node:Edge-9", organizations=("system:nodes",))
        self.assertIsNone(identity.nodeName())
        self.assertFalse(identity.carriesNode("edge-9"))
        self.assertFalse(identity.carriesNode("Edge-9"))
        self.assertTrue(identity.isNodeCertificate())

    def test_subjectAltNameForm(self) -> None:
        """
        A DNS subjectAltName carries no node, and does not make a node
        certificate (it used to carry one: CN=edge-1-ops with DNS:edge-1
        took over edge-1's tunnel).
        """
        identity = PeerIdentity(commonName="edge agent", dnsNames=("edge-3.example",))
        self.assertFalse(identity.carriesNode("edge-3.example"))
        self.assertFalse(identity.carriesNode("edge-3"))
        self.assertIsNone(identity.nodeName())
        self.assertFalse(identity.isNodeCertificate())
        self.assertEqual(identity.describe(), "CN=edge agent")

    def test_notANode(self) -> None:
        identity = identityOfCertificate(pki.client("kube-apiserver").certificate)
        self.assertIsNone(identity.nodeName())
        self.assertFalse(identity.isNodeCertificate())
        self.assertEqual(identity.describe(), "CN=kube-apiserver")
        self.assertEqual(identity.organizations, ())

    def test_emptyNodeName(self) -> None:
        """
        CN=system:node: names no node, but claims to be a node's certificate
        (so the doors refuse it too).
        """
        identity = PeerIdentity(commonName=NODE_COMMON_NAME_PREFIX)
        self.assertIsNone(identity.nodeName())
        self.assertTrue(identity.isNodeCertificate())
        self.assertFalse(identity.carriesNode(""))

    def test_describe(self) -> None:
        self.assertEqual(PeerIdentity(None, dnsNames=("a",)).describe(), "DNS:a")
        self.assertEqual(PeerIdentity(None, ipAddresses=("::1",)).describe(), "IP:::1")
        self.assertEqual(PeerIdentity(None).describe(), "anonymous certificate")

    def test_server(self) -> None:
        identity = identityOfCertificate(pki.server.certificate)
        self.assertEqual(identity.dnsNames, ("localhost",))
        self.assertEqual(identity.ipAddresses, ("127.0.0.1", "::1"))

    def test_ownIdentity(self) -> None:
        """The agent can take its node name from its own certificate."""
        self.assertEqual(pki.credentials(pki.agent("edge-5")).identity().nodeName(), "edge-5")

    def test_notTLS(self) -> None:
        """A transport that is not TLS has no peer identity."""
        self.assertIsNone(peerIdentity(StringTransport()))
        self.assertIsNone(peerIdentity(None))


class LoadCredentialsTests(SynchronousTestCase):
    """
    L{loadCredentials} loads good files and explains bad ones in one line
    naming the option and the file.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.good = pki.paths(pki.agent("edge-1"), self.directory)

    def write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        return path

    def assertOneLine(
        self, paths: CredentialPaths, option: str, path: str, why: str, **kw: str
    ) -> None:
        """Loading C{paths} fails with one line: C{<option> <path>: ...<why>...}."""
        with self.assertRaises(CredentialsError) as raised:
            loadCredentials(paths.ca, paths.cert, paths.key, **kw)  # type: ignore[arg-type]
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{option} {path}: "), message)
        self.assertIn(why, message)

    def replace(self, **changes: str) -> CredentialPaths:
        values = {"ca": self.good.ca, "cert": self.good.cert, "key": self.good.key}
        values.update(changes)
        return CredentialPaths(**values)

    def test_good(self) -> None:
        with capturedLogs() as events:
            creds = self.good.load()
        self.assertEqual(events, [])
        self.assertEqual(
            (creds.caPath, creds.certPath, creds.keyPath),
            (self.good.ca, self.good.cert, self.good.key),
        )
        self.assertEqual(len(creds.authority), 1)
        self.assertEqual(creds.authority[0].original.to_cryptography(), pki.ca.certificate)
        self.assertEqual(
            creds.certificate.original.to_cryptography(), pki.agent("edge-1").certificate
        )
        self.assertEqual(creds.chain, ())
        self.assertEqual(creds.identity().nodeName(), "edge-1")

    def test_bundleAndChain(self) -> None:
        """
        A CA file may hold several CAs, all trusted; a certificate file may
        add intermediates after the certificate, which are sent along.
        """
        bundle = self.write("bundle.pem", pki.ca.certificatePEM() + pki.otherCA.certificatePEM())
        chained = self.write("chained.pem", pki.agent().certificatePEM() + pki.ca.certificatePEM())
        creds = loadCredentials(bundle, chained, self.good.key)
        self.assertEqual(len(creds.authority), 2)
        self.assertEqual(len(creds.chain), 1)
        for server in [pki.server, pki.foreignServer()]:
            connection = connect(
                serverOptions(pki.credentials(server, ca=pki.ca)), agentOptions(creds, "localhost")
            )
            self.assertEqual(connection.server.app.handshakes, 1)
            self.assertEqual(connection.client.app.handshakes, 1)

    def test_missing(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        for option, which in [("--ca", "ca"), ("--cert", "cert"), ("--key", "key")]:
            self.assertOneLine(self.replace(**{which: missing}), option, missing, "no such file")

    def test_customOptionNames(self) -> None:
        missing = os.path.join(self.directory, "missing.pem")
        self.assertOneLine(
            self.replace(key=missing),
            "--agent-key",
            missing,
            "no such file",
            keyOption="--agent-key",
        )

    def test_directory(self) -> None:
        self.assertOneLine(
            self.replace(cert=self.directory), "--cert", self.directory, "directory"
        )

    def test_unreadable(self) -> None:
        if os.geteuid() == 0:
            raise self.skipTest("root can read any file")
        path = self.write("secret.pem", pki.ca.certificatePEM(), mode=0)
        self.assertOneLine(self.replace(ca=path), "--ca", path, "permission denied")

    def test_garbage(self) -> None:
        path = self.write("garbage.pem", b"\x00\x01 this is not a certificate\n")
        for option, which in [("--ca", "ca"), ("--cert", "cert"), ("--key", "key")]:
            self.assertOneLine(self.replace(**{which: path}), option, path, "not a PEM file")

    def test_empty(self) -> None:
        path = self.write("empty.pem", b"")
        self.assertOneLine(self.replace(ca=path), "--ca", path, "not a PEM file")

    def test_noCertificate(self) -> None:
        """A key where a certificate should be."""
        self.assertOneLine(self.replace(ca=self.good.key), "--ca", self.good.key, "no certificate")
        self.assertOneLine(
            self.replace(cert=self.good.key), "--cert", self.good.key, "no certificate"
        )

    def test_noKey(self) -> None:
        """A certificate where the key should be."""
        self.assertOneLine(
            self.replace(key=self.good.cert), "--key", self.good.cert, "no private key"
        )

    def test_malformed(self) -> None:
        cert = self.write(
            "bad.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )
        self.assertOneLine(self.replace(cert=cert), "--cert", cert, "malformed")
        key = self.write(
            "bad-key.pem", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        self.assertOneLine(self.replace(key=key), "--key", key, "malformed")

    def test_encryptedKey(self) -> None:
        data = pki.agent().key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = self.write("encrypted-key.pem", data)
        self.assertOneLine(self.replace(key=path), "--key", path, "encrypted")

    def test_keyMismatch(self) -> None:
        other = pki.paths(pki.agent("edge-2"), self.directory)
        self.assertOneLine(
            self.replace(key=other.key), "--key", other.key, "does not match the certificate"
        )

    def test_expired(self) -> None:
        expired = pki.paths(pki.expiredAgent(), self.directory)
        self.assertOneLine(expired, "--cert", expired.cert, "certificate expired on")

    def test_notYetValid(self) -> None:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        with self.assertRaises(CredentialsError) as raised:
            loadCredentials(self.good.ca, self.good.cert, self.good.key, now=past)
        message = str(raised.exception)
        self.assertTrue(message.startswith(f"--cert {self.good.cert}: "))
        self.assertIn("not valid until", message)

    def test_expiredCAOnlyWarns(self) -> None:
        """
        An expired CA in the bundle is logged, not refused: a bundle may
        keep the old CA next to the new one while rotating.
        """
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        old = mintCA("old CA", notBefore=start, notAfter=start + datetime.timedelta(days=365))
        bundle = self.write("bundle.pem", old.certificatePEM() + pki.ca.certificatePEM())
        with capturedLogs() as events:
            creds = loadCredentials(bundle, self.good.cert, self.good.key)
        self.assertEqual(len(creds.authority), 2)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["path"], bundle)
        self.assertIn("CA certificate", events[0]["log_format"])
        self.assertIn("expired", events[0]["log_format"])

    def test_readableKeyWarns(self) -> None:
        """A key that others may read is logged, not refused."""
        os.chmod(self.good.key, 0o644)
        with capturedLogs() as events:
            creds = self.good.load()
        self.assertIsInstance(creds, Credentials)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["option"], "--key")
        self.assertEqual(events[0]["path"], self.good.key)
        self.assertEqual(stat.S_IMODE(events[0]["mode"]), 0o644)
