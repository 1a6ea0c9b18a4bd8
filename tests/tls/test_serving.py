"""
The HTTPS proxy listener's certificate chosen per connection
(L{twisted_tunnel.tls.serving}): real TLS handshakes, in memory, between
clients that check the name they dialled against the minting CA and
L{NodeServingOptions}.  The client-certificate rules of the listener are
those of L{proxyServingOptions}, unchanged.
"""

from __future__ import annotations

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.pki import TestPKI
from tests.tls.test_minting import Node, authority, servingCA, wallClock
from tests.tls.test_tls import MemoryTLS, connect
from twisted_tunnel.tls import Credentials, agentOptions, makeCredentials
from twisted_tunnel.tls.minting import ServingCertificates
from twisted_tunnel.tls.serving import NodeServingOptions

pki = TestPKI()

#: The nodes the server knows in these tests, by name and by IP.
KNOWN = {
    "edge-1": Node("edge-1", ("10.0.0.7",)),
    "10.0.0.7": Node("edge-1", ("10.0.0.7",)),
    "edge-2": Node("edge-2", ("10.0.0.8",)),
}


def apiserver(serverName: str, trust: x509.Certificate | None = None) -> object:
    """
    kube-apiserver as a client: its kubelet client certificate (signed by
    the client CA), checking C{serverName} against the minting CA (or
    C{trust}), as C{--kubelet-certificate-authority} makes it.
    """
    client = pki.client("kube-apiserver")
    creds = makeCredentials([trust or servingCA().certificate], client.certificate, client.key)
    return agentOptions(creds, serverName)


def served(connection: MemoryTLS) -> x509.Certificate:
    """The certificate the listener presented to the client."""
    certificate = connection.client.tls.getPeerCertificate()
    assert certificate is not None
    return certificate.to_cryptography()


class NodeServingOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = wallClock()
        self.certificates = ServingCertificates(authority(), self.clock)
        self.asked: list[str] = []

    def options(
        self, *, fallback: bool = False, credentials: Credentials | None = None
    ) -> NodeServingOptions:
        def nodes(address: str) -> Node | None:
            self.asked.append(address)
            return KNOWN.get(address)

        self.serving = NodeServingOptions(
            credentials or pki.credentials(pki.server),
            self.certificates,
            nodes,
            self.clock,
            fallback=fallback,
        )
        return self.serving

    def assertHandshake(self, connection: MemoryTLS) -> None:
        self.assertEqual(connection.server.app.handshakes, 1)
        self.assertEqual(connection.client.app.handshakes, 1)

    def assertRefused(self, connection: MemoryTLS) -> None:
        self.assertEqual(connection.server.app.handshakes, 0)
        self.assertTrue(connection.server.lost)
        reason = connection.server.app.lostReason
        assert reason is not None
        self.assertIsInstance(reason.value, SSL.Error)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, self.options()))

    def test_nodeBySNI(self) -> None:
        """
        A client that dialled a known node by name (DNS mode: its SNI) gets
        that node's minted certificate, which it verifies against the
        minting CA; the listener still learns who the client is.
        """
        connection = connect(self.options(), apiserver("edge-1"))
        self.assertHandshake(connection)
        certificate = served(connection)
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=edge-1")
        self.assertEqual(certificate.issuer, servingCA().certificate.subject)
        identity = connection.server.app.identity
        assert identity is not None
        self.assertEqual(identity.commonName, "kube-apiserver")
        self.assertEqual(self.asked, ["edge-1"])
        self.assertEqual(self.certificates.minted, 1)
        self.assertEqual(self.serving.chosen, {"node": 1})

    def test_cachedAcrossConnections(self) -> None:
        """The second connection to a node presents the same certificate, minted once."""
        options = self.options()
        first = served(connect(options, apiserver("edge-1")))
        second = served(connect(options, apiserver("edge-1")))
        self.assertEqual(first, second)
        self.assertEqual(self.certificates.minted, 1)

    def test_eachNodeItsOwn(self) -> None:
        """edge-2's certificate does not name edge-1: a client going to edge-1 refuses it."""
        options = self.options()
        self.assertHandshake(connect(options, apiserver("edge-2")))
        self.assertEqual(
            served(connect(options, apiserver("edge-2"))).subject.rfc4514_string(), "CN=edge-2"
        )

    def test_sniIP(self) -> None:
        """An SNI that is an IP literal (some clients send one) is looked up as an IP."""
        connection = connect(self.options(), _SNIClient(b"10.0.0.7"))
        self.assertEqual(self.asked, ["10.0.0.7"])
        self.assertEqual(served(connection).subject.rfc4514_string(), "CN=edge-1")

    def test_refusalsLogBounded(self) -> None:
        """A flood of handshakes for unknown names writes a few lines, not one each."""
        options = self.options()
        with capturedLogs() as events:
            for index in range(50):
                self.assertRefused(connect(options, apiserver(f"edge-{index + 10}")))
        lines = [e for e in events if "no serving certificate" in e["log_format"]]
        self.assertLessEqual(len(lines), 10)
        self.assertEqual(self.serving.chosen, {"none": 50})

    def test_unknownNodeRefused(self) -> None:
        """
        An SNI naming no known node: nothing is minted, no certificate is
        presented, the handshake fails, with one warning line naming it.
        """
        with capturedLogs() as events:
            connection = connect(self.options(), apiserver("edge-9"))
        self.assertRefused(connection)
        self.assertEqual(self.certificates.minted, 0)
        warnings = [e for e in events if "no serving certificate" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["destination"], "edge-9")
        self.assertEqual(self.serving.chosen, {"none": 1})

    def test_arbitrarySNINeverMinted(self) -> None:
        """Wildcards, upper case, junk: never looked up as nodes, never minted."""
        for name in (b"*.edge-1", b"edge-1.evil.example", b"\xff\xfe", b"a" * 254, b"edge_1"):
            with capturedLogs():
                self.assertRefused(connect(self.options(), _SNIClient(name)))
        self.assertEqual(self.asked, ["edge-1.evil.example"])  # a name: looked up, unknown
        self.assertEqual(self.certificates.minted, 0)

    def test_sniCaseFolded(self) -> None:
        """DNS names ignore case: C{EDGE-1.} is edge-1."""
        connection = connect(self.options(), _SNIClient(b"EDGE-1."))
        self.assertEqual(self.asked, ["edge-1"])
        self.assertEqual(served(connection).subject.rfc4514_string(), "CN=edge-1")

    def test_noDestinationRefused(self) -> None:
        """Not DNATed and no SNI (an IP dialled directly): no node, no certificate."""
        with capturedLogs():
            connection = connect(self.options(), apiserver("10.0.0.7"))
        self.assertRefused(connection)
        self.assertEqual(self.asked, [])

    def test_unknownGetsTheStaticCertificate(self) -> None:
        """With C{--proxy-serving-cert} given, an unknown destination gets it."""
        client = pki.client("kube-apiserver")
        creds = makeCredentials([pki.ca.certificate], client.certificate, client.key)
        connection = connect(self.options(fallback=True), agentOptions(creds, "localhost"))
        self.assertHandshake(connection)
        self.assertEqual(served(connection), pki.server.certificate)
        self.assertEqual(self.certificates.minted, 0)
        self.assertEqual(self.serving.chosen, {"static": 1})

    def test_noSNIGetsTheStaticCertificate(self) -> None:
        """
        A client that sends no SNI (it dialled an IP) is still asked about:
        OpenSSL calls the server name callback for every ClientHello.
        """
        client = pki.client("kube-apiserver")
        creds = makeCredentials([pki.ca.certificate], client.certificate, client.key)
        connection = connect(self.options(fallback=True), agentOptions(creds, "127.0.0.1"))
        self.assertHandshake(connection)
        self.assertEqual(served(connection), pki.server.certificate)

    def test_knownNodeNeverTheStaticCertificate(self) -> None:
        """A known node gets its minted certificate even when a static one is configured."""
        connection = connect(self.options(fallback=True), apiserver("edge-1"))
        self.assertEqual(served(connection).subject.rfc4514_string(), "CN=edge-1")

    def test_overTheRate(self) -> None:
        """Minting over its rate: no certificate (no fallback), the handshake fails."""
        self.certificates = ServingCertificates(authority(), self.clock, rate=1, burst=1)
        options = self.options()
        self.assertHandshake(connect(options, apiserver("edge-1")))
        with capturedLogs() as events:
            self.assertRefused(connect(options, apiserver("edge-2")))
        self.assertTrue(any("over the rate" in e.get("why", "") for e in events))
        self.assertHandshake(connect(options, apiserver("edge-1")))  # cached: no token

    def test_wrongCAAtTheClient(self) -> None:
        """A client trusting another CA refuses the minted certificate."""
        connection = connect(self.options(), apiserver("edge-1", pki.otherCA.certificate))
        self.assertEqual(connection.client.app.handshakes, 0)
        reason = connection.client.app.lostReason
        assert reason is not None
        self.assertIn("certificate verify failed", str(reason.value))

    def test_clientWithoutCertificate(self) -> None:
        """As with a static certificate: no client certificate, no handshake."""
        anonymous = optionsForClientTLS(
            "edge-1", trustRoot=Certificate.loadPEM(servingCA().certificatePEM())
        )
        self.assertRefused(connect(self.options(), anonymous))

    def test_agentCertificateRefused(self) -> None:
        """As with a static certificate: an agent's (node) certificate is refused."""
        agent = pki.agent("edge-1")
        creds = makeCredentials([servingCA().certificate], agent.certificate, agent.key)
        self.assertRefused(connect(self.options(), agentOptions(creds, "edge-1")))

    def test_http11(self) -> None:
        """ALPN offers HTTP/1.1 only, as the static listener does."""
        client = pki.client("kube-apiserver")
        offering = optionsForClientTLS(
            "edge-1",
            trustRoot=Certificate.loadPEM(servingCA().certificatePEM()),
            extraCertificateOptions={"certificate": client.certificate, "privateKey": client.key},
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        connection = connect(self.options(), offering)
        self.assertHandshake(connection)
        self.assertEqual(connection.client.tls.negotiatedProtocol, b"http/1.1")

    def test_update(self) -> None:
        """A rotation of the listener's credentials: new handshakes use the new static one."""
        options = self.options(fallback=True)
        options.update(pki.credentials(pki.serverFor("other.example")))
        client = pki.client("kube-apiserver")
        creds = makeCredentials([pki.ca.certificate], client.certificate, client.key)
        connection = connect(options, agentOptions(creds, "other.example"))
        self.assertHandshake(connection)

    def test_failureInTheCallbackRefuses(self) -> None:
        """A bug while choosing fails the handshake (no certificate), logged."""

        def broken(address: str) -> Node | None:
            raise RuntimeError("boom")

        options = NodeServingOptions(
            pki.credentials(pki.server), self.certificates, broken, Clock(), fallback=True
        )
        with capturedLogs() as events:
            connection = connect(options, apiserver("edge-1"))
        self.assertRefused(connection)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(any("choosing" in e["log_format"] for e in events))


@implementer(IOpenSSLClientConnectionCreator)
class _SNIClient:
    """A client that sends exactly this SNI and checks nothing (for odd names)."""

    def __init__(self, name: bytes) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_NONE)
        client = pki.client("kube-apiserver")
        context.use_certificate(client.certificate)
        context.use_privatekey(client.key)
        self.context = context
        self.name = name

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self.name)
        return connection
