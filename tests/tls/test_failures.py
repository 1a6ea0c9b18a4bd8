# -*- test-case-name: tests.tls.test_failures -*-
"""
Tests for L{twisted_tunnel.tls.failures}: failed handshakes described by
whose certificate, which check, and what the peer's alert means, on each
leg, with real pyOpenSSL handshakes in memory (L{tests.tls.test_tls.connect}).
"""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.trial.unittest import SynchronousTestCase

from tests.tls.test_tls import MemoryTLS, Side, anonymousClient, connect, pki
from tests.tls.test_upstream import (
    NODE_IP,
    Upstream,
    clientCredentials,
    impostorCA,
    kubelet,
    kubeletCA,
)
from twisted_tunnel.tls import agentOptions, proxyServingOptions, serverOptions
from twisted_tunnel.tls.certs import mintCA, mintServer
from twisted_tunnel.tls.failures import (
    DOCS,
    describeTLSFailure,
    recordedFailure,
    recordVerifyFailure,
    verifyErrorString,
)


def described(side: Side) -> str:
    """The line for how C{side}'s connection ended; it must be a TLS failure."""
    reason = side.app.lostReason
    assert reason is not None
    line = describeTLSFailure(reason.value, side.app.tlsConnection)
    assert line is not None, reason
    return line


class AgentAndServerTests(SynchronousTestCase):
    """The tunnel's own leg: the agent dialing the server's agent port."""

    def failed(self, connection: MemoryTLS) -> tuple[str, str]:
        # (in TLS 1.3 the client is done before the server checks its certificate)
        self.assertEqual(connection.server.app.handshakes, 0)
        return described(connection.client), described(connection.server)

    def test_serverFromAnotherCA(self) -> None:
        """
        The agent names the server's certificate (subject, issuer) and the
        check (unknown CA); the server hears the agent's alert in words.
        """
        foreign = pki.foreignServer()
        server = serverOptions(pki.credentials(foreign, ca=pki.ca))
        agent, server_ = self.failed(
            connect(server, agentOptions(pki.credentials(pki.agent()), "localhost"))
        )
        self.assertIn("we refused the peer's certificate", agent)
        self.assertIn("unknown CA", agent)
        self.assertIn(foreign.certificate.subject.rfc4514_string(), agent)
        self.assertIn(foreign.certificate.issuer.rfc4514_string(), agent)
        self.assertIn(DOCS, agent)
        self.assertNotIn("SSL routines", agent)
        self.assertIn("the peer does not trust the CA that signed our certificate", server_)

    def test_agentFromAnotherCA(self) -> None:
        """The server names the agent's certificate and the check; the agent hears why."""
        stranger = pki.foreignServer()
        agent = agentOptions(pki.credentials(stranger, ca=pki.ca), "localhost")
        agentLine, serverLine = self.failed(
            connect(serverOptions(pki.credentials(pki.server)), agent)
        )
        self.assertIn("we refused the peer's certificate", serverLine)
        self.assertIn("unknown CA", serverLine)
        self.assertIn(stranger.certificate.subject.rfc4514_string(), serverLine)
        self.assertIn("X509 error 20", serverLine)
        self.assertIn("the peer does not trust the CA that signed our certificate", agentLine)

    def test_expiredServer(self) -> None:
        expired = pki.expiredServer()
        server = serverOptions(pki.credentials(expired))
        agent, _ = self.failed(
            connect(server, agentOptions(pki.credentials(pki.agent()), "localhost"))
        )
        self.assertIn("expired", agent)
        self.assertIn(expired.certificate.subject.rfc4514_string(), agent)

    def test_serverWithoutTheName(self) -> None:
        """Twisted's hostname check refuses: the line says so, with the certificate."""
        connection = connect(
            serverOptions(pki.credentials(pki.server)),
            agentOptions(pki.credentials(pki.agent()), "tunnel.example.com"),
        )
        line = described(connection.client)
        self.assertIn("does not name tunnel.example.com, the host or IP dialed", line)
        self.assertIn(pki.server.certificate.subject.rfc4514_string(), line)

    def test_noClientCertificate(self) -> None:
        connection = connect(serverOptions(pki.credentials(pki.server)), anonymousClient())
        self.assertIn("the peer sent no client certificate", described(connection.server))
        self.assertIn(
            "the peer requires a client certificate, and we sent none",
            described(connection.client),
        )


class DoorAndKubeletTests(SynchronousTestCase):
    """The HTTPS proxy listener's clients, and its connections to kubelets."""

    def test_nodeCertificateAtTheListener(self) -> None:
        """An agent's certificate at the listener: refused, and the line says by which rule."""
        agentIssued = pki.agent("edge-1")
        connection = connect(
            proxyServingOptions(pki.credentials(pki.server)),
            agentOptions(pki.credentials(agentIssued), "localhost"),
        )
        line = described(connection.server)
        self.assertIn("is an agent's certificate; agents may not use this door", line)
        self.assertIn(agentIssued.certificate.subject.rfc4514_string(), line)

    def test_kubeletFromAnotherCA(self) -> None:
        connection = connect(kubelet(mintServer(impostorCA, [NODE_IP])), Upstream().creator())
        line = described(connection.client)
        self.assertIn("unknown CA", line)
        self.assertIn("CN=impostor CA", line)

    def test_kubeletWithoutTheAddress(self) -> None:
        """Our own check (the address dialed), recorded in the callback, in words."""
        connection = connect(kubelet(mintServer(kubeletCA, ["10.0.0.6"])), Upstream().creator())
        line = described(connection.client)
        self.assertIn(f"does not name {NODE_IP}, the address dialed", line)
        self.assertIn("CN=kubelet CA", line)

    def test_kubeletWantsAnotherClientCertificate(self) -> None:
        """Our client certificate is not from the kubelet's client CA: its alert, in words."""
        upstream = Upstream(clientCredentials(issued=mintServer(impostorCA, ["x.example"])))
        connection = connect(kubelet(), upstream.creator())
        self.assertIn("we refused the peer's certificate", described(connection.server))


class WordsTests(SynchronousTestCase):
    def test_verifyErrors(self) -> None:
        self.assertEqual(verifyErrorString(10), "expired")
        self.assertIn("unknown CA", verifyErrorString(20))
        # OpenSSL's own words for the others
        self.assertNotIn("X509 verify error", verifyErrorString(23))

    def test_alerts(self) -> None:
        for reason, words in [
            ("wrong version number", "does not speak TLS"),
            ("http request", "plain HTTP"),
            ("tlsv1 alert unknown ca", "does not trust the CA"),
            ("sslv3 alert certificate expired", "our certificate has expired"),
            ("something new", "TLS failed: something new"),
        ]:
            line = describeTLSFailure(SSL.Error([("SSL routines", "", reason)]))
            assert line is not None
            self.assertIn(words, line)
            self.assertIn(DOCS, line)
            self.assertNotIn("[(", line)

    def test_peersNamesArePrintableAndShort(self) -> None:
        """
        A subject is the peer's choice: a line break or an escape in it
        never reaches a log line as it is (nor does a huge one: cut short).
        """
        hostile = mintCA("evil\n[server#info] agent edge-9 connected \x1b[2J")
        connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        recordVerifyFailure(connection, X509.from_cryptography(hostile.certificate), 0, error=20)
        recorded = recordedFailure(connection)
        assert recorded is not None
        for text in (recorded.subject, recorded.issuer, recorded.describe()):
            self.assertNotIn("\n", text)
            self.assertNotIn("\x1b", text)

    def test_notTLS(self) -> None:
        self.assertIsNone(describeTLSFailure(ValueError("x")))
        self.assertIsNone(describeTLSFailure(None))
