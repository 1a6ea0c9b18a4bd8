"""
Allowlists of client names (L{twisted_tunnel.tls.clientnames}): the HTTPS
proxy listener's options (L{proxyServingOptions}) and a mutual TLS door's
(L{serverOptions}) restricted to named clients, with real TLS handshakes in
memory between real pyOpenSSL contexts.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI
from tests.tls.test_tls import MemoryTLS, anonymousClient, connect
from twisted_tunnel.tls import (
    PeerIdentity,
    agentOptions,
    proxyServingOptions,
    serverOptions,
)
from twisted_tunnel.tls.certs import Issued
from twisted_tunnel.tls.clientnames import ClientNames, clientName

pki = TestPKI()

OPTION = "--proxy-serving-client-name"


def client(issued: Issued) -> object:
    """A client presenting C{issued}, checking the server's certificate for localhost."""
    return agentOptions(pki.credentials(issued), "localhost")


def names(*admitted: str, clock: Clock | None = None) -> ClientNames:
    return ClientNames(OPTION, "HTTPS proxy listener", admitted, clock or Clock())


def warnings(events: list[dict[str, object]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class ClientNameTests(SynchronousTestCase):
    """What C{--proxy-serving-client-name} and C{--connect-client-name} accept."""

    def test_accepted(self) -> None:
        for name in ["kube-apiserver-kubelet-client", "metrics-server", "system:kube-apiserver"]:
            self.assertEqual(clientName(name), name)

    def test_refused(self) -> None:
        """Empty, spaces, control characters, wildcards, nodes' names, too long."""
        for name, why in [
            ("", "empty"),
            ("kube apiserver", "spaces"),
            ("kube\x00apiserver", "control"),
            ("*.example", "wildcards"),
            ("system:node:edge-1", "node"),
            ("a" * 254, "longer than 253"),
        ]:
            with self.assertRaises(ValueError) as raised:
                clientName(name)
            self.assertIn(why, str(raised.exception), name)

    def test_noNames(self) -> None:
        with self.assertRaises(ValueError):
            names()


class WhyRefusedTests(SynchronousTestCase):
    """The rule: the common name, or a DNS subjectAltName, exactly."""

    def test_commonName(self) -> None:
        admitted = names("kube-apiserver-kubelet-client")
        self.assertIsNone(admitted.whyRefused(PeerIdentity("kube-apiserver-kubelet-client")))

    def test_dnsName(self) -> None:
        """A certificate with no common name (cert-manager's habit) is named by a DNS SAN."""
        admitted = names("metrics-server.kube-system")
        self.assertIsNone(
            admitted.whyRefused(PeerIdentity(None, dnsNames=("x", "metrics-server.kube-system")))
        )

    def test_exact(self) -> None:
        """No case folding, no prefix or suffix, no organization, no IP."""
        admitted = names("kube-apiserver")
        for identity in [
            PeerIdentity("Kube-apiserver"),
            PeerIdentity("kube-apiserver-x"),
            PeerIdentity("kube"),
            PeerIdentity("alice", organizations=("kube-apiserver",)),
            PeerIdentity(None, ipAddresses=("10.0.0.1",)),
            PeerIdentity("alice", dnsNames=("kube-apiserver.example",)),
        ]:
            reason = admitted.whyRefused(identity)
            self.assertIsNotNone(reason, identity)
            self.assertIn(f"is not named by {OPTION}", str(reason))


class HandshakeTests(SynchronousTestCase):
    """The names checked in the TLS handshake, on real pyOpenSSL contexts in memory."""

    def assertAdmitted(self, connection: MemoryTLS, commonName: str) -> None:
        self.assertEqual(connection.server.app.handshakes, 1)
        identity = connection.server.app.identity
        assert identity is not None
        self.assertEqual(identity.commonName, commonName)

    def assertRefused(self, connection: MemoryTLS) -> None:
        """No handshake on the server's side, which dropped the connection on an OpenSSL error."""
        server = connection.server
        self.assertEqual((server.app.handshakes, server.lost), (0, True))
        self.assertTrue(server.app.lostReason and server.app.lostReason.check(SSL.Error))

    def listener(self, *admitted: str) -> object:
        return proxyServingOptions(
            pki.credentials(pki.server), clientNames=names(*admitted, clock=self.clock)
        )

    def setUp(self) -> None:
        self.clock = Clock()

    def test_httpsListenerAdmitsNamed(self) -> None:
        """kube-apiserver's and metrics-server's certificates get in."""
        options = self.listener("kube-apiserver-kubelet-client", "metrics-server")
        for name in ["kube-apiserver-kubelet-client", "metrics-server"]:
            self.assertAdmitted(connect(options, client(pki.client(name))), name)

    def test_httpsListenerRefusesOthers(self) -> None:
        """
        A user's certificate from the same CA is refused in the handshake,
        with one warning naming its subject, its issuer and the option.
        """
        options = self.listener("kube-apiserver-kubelet-client")
        with capturedLogs() as events:
            self.assertRefused(connect(options, client(pki.leaf("alice", organizations=()))))
        [line] = warnings(events)
        # (StringTransport's peer)
        self.assertIn("HTTPS proxy listener: refused the TLS client 192.168.1.1:54321", line)
        self.assertIn("subject CN=alice", line)
        self.assertIn(f"issuer {pki.ca.certificate.subject.rfc4514_string()}", line)
        self.assertIn(f"CN=alice is not named by {OPTION}", line)
        self.assertIn("admitted: kube-apiserver-kubelet-client", line)

    def test_refusedNameEscaped(self) -> None:
        """
        The subject and the reason are the client's choice (a CSR-approved
        user picks its CN): a newline or a terminal escape in them is
        escaped, so the warning stays one line the client cannot forge.
        """
        options = self.listener("kube-apiserver-kubelet-client")
        hostile = "alice\nFORGED line\x1b[31m"
        with capturedLogs() as events:
            self.assertRefused(connect(options, client(pki.leaf(hostile, organizations=()))))
        [line] = warnings(events)
        self.assertNotIn("\n", line)
        self.assertNotIn("\x1b", line)
        self.assertEqual(line.count("FORGED line"), 2, line)  # subject and reason
        self.assertIn("alice\\x0aFORGED line\\x1b[31m", line)

    def test_byDNSName(self) -> None:
        """A certificate whose DNS subjectAltName is listed gets in, whatever its CN."""
        options = self.listener("scraper.monitoring")
        certificate = pki.leaf("scraper", organizations=(), dnsNames=["scraper.monitoring"])
        self.assertAdmitted(connect(options, client(certificate)), "scraper")

    def test_nodesStillRefused(self) -> None:
        """
        The node rule still holds with names: a node certificate whose DNS
        subjectAltName is on the list is refused, without a names warning
        (it never got that far).
        """
        options = self.listener("edge-1")
        with capturedLogs() as events:
            self.assertRefused(connect(options, client(pki.agent("edge-1"))))
        self.assertEqual(warnings(events), [])

    def test_noCertificate(self) -> None:
        """A client without a certificate is refused as before."""
        self.assertRefused(connect(self.listener("kube-apiserver"), anonymousClient()))

    def test_otherCA(self) -> None:
        """A listed name from a CA not trusted is refused by OpenSSL first: no names warning."""
        options = self.listener("kube-apiserver")
        with capturedLogs() as events:
            self.assertRefused(
                connect(
                    options,
                    agentOptions(
                        pki.credentials(pki.foreignAgent("edge-9"), ca=pki.ca), "localhost"
                    ),
                )
            )
        self.assertEqual(warnings(events), [])

    def test_door(self) -> None:
        """L{ClientNames.restrict} on a mutual TLS door's context (C{--connect-client-name})."""
        options = serverOptions(pki.credentials(pki.server))
        door = ClientNames("--connect-client-name", "CONNECT door", ["kube-apiserver"], self.clock)
        door.restrict(options.getContext())
        self.assertAdmitted(
            connect(options, client(pki.client("kube-apiserver"))), "kube-apiserver"
        )
        with capturedLogs() as events:
            self.assertRefused(connect(options, client(pki.client("bob"))))
        [line] = warnings(events)
        self.assertIn("CONNECT door: refused the TLS client", line)
        self.assertIn("not named by --connect-client-name", line)

    def test_refusalsRateLimited(self) -> None:
        """
        A client refused in a loop writes the first lines and then one
        summary when the interval is over, not a line per handshake.
        """
        options = self.listener("kube-apiserver")
        with capturedLogs() as events:
            for _ in range(30):
                self.assertRefused(connect(options, client(pki.client("mallory"))))
            self.clock.advance(61)
            self.assertRefused(connect(options, client(pki.client("mallory"))))
        lines = warnings(events)
        self.assertEqual(len(lines), 12, lines)
        self.assertIn("(20 more like this in", lines[10])
