"""
Tests for L{twisted_tunnel.tls.certs}: what goes into each kind of certificate, and how it
is written.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI, temporaryDirectory
from twisted_tunnel.tls.certs import (
    NODE_COMMON_NAME_PREFIX,
    NODE_ORGANIZATION,
    Issued,
    isDNSName,
    mintAgent,
    mintCA,
    mintClient,
    mintServer,
    readPair,
    validateNodeName,
    writePair,
)

pki = TestPKI()


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _commonName(certificate: x509.Certificate) -> str | bytes:
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _signedBy(issued: Issued, ca: Issued) -> bool:
    try:
        issued.certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CATests(SynchronousTestCase):
    """L{mintCA} makes a CA that can sign end-entity certificates only."""

    def test_constraints(self) -> None:
        ca = pki.ca.certificate
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        self.assertEqual(constraints.value.path_length, 0)
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign)
        self.assertTrue(usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    def test_selfSigned(self) -> None:
        ca = pki.ca.certificate
        self.assertEqual(ca.subject, ca.issuer)
        self.assertTrue(_signedBy(pki.ca, pki.ca))

    def test_keyAndHash(self) -> None:
        self.assertIsInstance(pki.ca.key, ec.EllipticCurvePrivateKey)
        assert isinstance(pki.ca.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(pki.ca.key.curve.name, "secp256r1")
        algorithm = pki.ca.certificate.signature_hash_algorithm
        assert algorithm is not None
        self.assertEqual(algorithm.name, "sha256")

    def test_commonNameAndDays(self) -> None:
        ca = mintCA("my CA", days=10)
        self.assertEqual(_commonName(ca.certificate), "my CA")
        lifetime = ca.certificate.not_valid_after_utc - ca.certificate.not_valid_before_utc
        # Ten days, plus the allowance for clock skew at the start.
        self.assertGreater(lifetime, datetime.timedelta(days=10))
        self.assertLess(lifetime, datetime.timedelta(days=10, hours=1))

    def test_pem(self) -> None:
        self.assertTrue(pki.ca.certificatePEM().startswith(b"-----BEGIN CERTIFICATE-----\n"))
        self.assertTrue(pki.ca.keyPEM().startswith(b"-----BEGIN PRIVATE KEY-----\n"))

    def test_validityOverride(self) -> None:
        start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        end = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
        ca = mintCA(notBefore=start, notAfter=end)
        self.assertEqual(ca.certificate.not_valid_before_utc, start)
        self.assertEqual(ca.certificate.not_valid_after_utc, end)

    def test_neverValid(self) -> None:
        start = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
        with self.assertRaises(ValueError):
            mintCA(notBefore=start, notAfter=start)
        with self.assertRaises(ValueError):
            mintCA(days=0)


class ServerTests(SynchronousTestCase):
    """L{mintServer} names the server in subjectAltName, DNS names and IPs alike."""

    def test_names(self) -> None:
        sans = _sans(pki.server.certificate)
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        self.assertEqual(_commonName(pki.server.certificate), "localhost")

    def test_ipFirst(self) -> None:
        issued = mintServer(pki.ca, ["10.0.0.1", "tunnel.example.com"])
        self.assertEqual(_commonName(issued.certificate), "10.0.0.1")
        sans = _sans(issued.certificate)
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["tunnel.example.com"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("10.0.0.1")]
        )

    def test_serverAuth(self) -> None:
        self.assertEqual(_usages(pki.server.certificate), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_leafExtensions(self) -> None:
        certificate = pki.server.certificate
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = pki.ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(aki.key_identifier, ski.value.digest)
        self.assertEqual(certificate.issuer, pki.ca.certificate.subject)
        self.assertTrue(_signedBy(pki.server, pki.ca))
        self.assertFalse(_signedBy(pki.server, pki.otherCA))

    def test_noNames(self) -> None:
        with self.assertRaises(ValueError):
            mintServer(pki.ca, [])


class AgentTests(SynchronousTestCase):
    """L{mintAgent} follows the Kubernetes node client certificate convention."""

    def test_subject(self) -> None:
        certificate = pki.agent("edge-1").certificate
        self.assertEqual(_commonName(certificate), "system:node:edge-1")
        self.assertEqual(NODE_COMMON_NAME_PREFIX, "system:node:")
        organizations = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        self.assertEqual([o.value for o in organizations], [NODE_ORGANIZATION])
        self.assertEqual(NODE_ORGANIZATION, "system:nodes")

    def test_sans(self) -> None:
        certificate = pki.agent("edge-2", ips=["192.0.2.7", "2001:db8::7"]).certificate
        sans = _sans(certificate)
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["edge-2"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")],
        )

    def test_clientAuthOnly(self) -> None:
        self.assertEqual(_usages(pki.agent().certificate), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_signed(self) -> None:
        self.assertTrue(_signedBy(pki.agent(), pki.ca))
        self.assertTrue(_signedBy(pki.foreignAgent(), pki.otherCA))
        self.assertFalse(_signedBy(pki.foreignAgent(), pki.ca))

    def test_badNodeNames(self) -> None:
        for bad in [
            "",
            "Edge-1",
            "edge_1",
            "-edge",
            "edge-",
            "edge..1",
            ".edge",
            "edge 1",
            "system:node:edge",
            "édge",
            "a" * 254,
            "a" * 64 + ".b",  # a label longer than DNS allows
            "1",  # what inet_aton reads as 0.0.0.1: it would shadow an address
            "127.0.0.3",
            "edge-\u212a",  # a Kelvin sign, which lower-cases to "k"
        ]:
            with self.assertRaises(ValueError, msg=repr(bad)) as raised:
                mintAgent(pki.ca, bad)
            message = str(raised.exception)
            self.assertIn(repr(bad), message)
            self.assertIn("node name", message)
            self.assertNotIn("\n", message)

    def test_goodNodeNames(self) -> None:
        longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
        for good in ["a", "edge-1", "node.zone-a.example", "1a", longest]:
            self.assertEqual(validateNodeName(good), good)

    def test_longNodeName(self) -> None:
        """
        Kubernetes allows node names longer than fit a common name (RFC 5280
        bounds it at 64 characters): they are refused with a clear message,
        rather than minted into certificates that warn on every read.
        """
        longest = "n" * 52
        certificate = mintAgent(pki.ca, longest).certificate
        self.assertEqual(_commonName(certificate), NODE_COMMON_NAME_PREFIX + longest)
        with self.assertRaises(ValueError) as raised:
            mintAgent(pki.ca, longest + "n")
        message = str(raised.exception)
        self.assertIn("too long", message)
        self.assertIn("52 characters", message)
        self.assertNotIn("\n", message)

    def test_longCommonName(self) -> None:
        with self.assertRaises(ValueError) as raised:
            mintClient(pki.ca, "c" * 65)
        self.assertIn("64", str(raised.exception))

    def test_badIP(self) -> None:
        with self.assertRaises(ValueError) as raised:
            mintAgent(pki.ca, "edge-1", ["not-an-ip"])
        self.assertIn("'not-an-ip'", str(raised.exception))


class ClientTests(SynchronousTestCase):
    """L{mintClient} makes client certificates for the CONNECT front door."""

    def test_dnsName(self) -> None:
        certificate = pki.client("kube-apiserver").certificate
        self.assertEqual(_commonName(certificate), "kube-apiserver")
        self.assertEqual(_sans(certificate).get_values_for_type(x509.DNSName), ["kube-apiserver"])
        self.assertEqual(_usages(certificate), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_notADNSName(self) -> None:
        """A name that is no DNS name is only the common name: no subjectAltName."""
        certificate = mintClient(pki.ca, "Kube API").certificate
        self.assertEqual(_commonName(certificate), "Kube API")
        with self.assertRaises(x509.ExtensionNotFound):
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)

    def test_isDNSName(self) -> None:
        self.assertTrue(isDNSName("kube-apiserver"))
        self.assertFalse(isDNSName("Kube API"))


class ExpiryTests(SynchronousTestCase):
    """The keyword-only validity overrides mint certificates that are already expired."""

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        for issued in [pki.expiredAgent(), pki.expiredServer()]:
            self.assertLess(issued.certificate.not_valid_after_utc, now)

    def test_keywordOnly(self) -> None:
        when = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        with self.assertRaises(TypeError):
            mintAgent(pki.ca, "edge-1", (), 365, when)  # type: ignore[call-arg]


class WritePairTests(SynchronousTestCase):
    """L{writePair} writes both files atomically, the key readable by its owner only."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.cert = os.path.join(self.directory, "agent.pem")
        self.key = os.path.join(self.directory, "agent-key.pem")

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_modes(self) -> None:
        writePair(pki.agent(), self.cert, self.key)
        self.assertEqual(self.mode(self.key), 0o600)
        self.assertEqual(self.mode(self.cert), 0o644)

    def test_modesUnderStrictUmask(self) -> None:
        """The certificate is 0644 even when the umask would make it 0600."""
        old = os.umask(0o077)
        self.addCleanup(os.umask, old)
        writePair(pki.agent(), self.cert, self.key)
        self.assertEqual(self.mode(self.cert), 0o644)
        self.assertEqual(self.mode(self.key), 0o600)

    def test_keyNeverExposed(self) -> None:
        """
        The key file is created with mode 0600, not chmod-ed afterwards: under
        a permissive umask, the open call itself gets 0600.
        """
        modes: list[int] = []
        realOpen = os.open

        def recordingOpen(path: str, flags: int, mode: int = 0o777) -> int:
            modes.append(mode)
            return realOpen(path, flags, mode)

        self.patch(os, "open", recordingOpen)
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        writePair(pki.agent(), self.cert, self.key)
        self.assertEqual(modes, [0o600, 0o644])

    def test_roundTrip(self) -> None:
        writePair(pki.agent(), self.cert, self.key)
        issued = readPair(self.cert, self.key)
        self.assertEqual(issued.certificate, pki.agent().certificate)
        self.assertEqual(issued.keyPEM(), pki.agent().keyPEM())

    def test_replaces(self) -> None:
        """Writing again replaces both files and leaves no temporary file behind."""
        writePair(pki.agent("edge-1"), self.cert, self.key)
        writePair(pki.agent("edge-2"), self.cert, self.key)
        self.assertEqual(
            readPair(self.cert, self.key).certificate, pki.agent("edge-2").certificate
        )
        self.assertEqual(sorted(os.listdir(self.directory)), ["agent-key.pem", "agent.pem"])

    def test_failureLeavesNothing(self) -> None:
        """If the write fails, no temporary file is left and the old file stays."""
        writePair(pki.agent("edge-1"), self.cert, self.key)

        def failingReplace(source: str, destination: str) -> None:
            raise OSError("disk on fire")

        self.patch(os, "replace", failingReplace)
        with self.assertRaises(OSError):
            writePair(pki.agent("edge-2"), self.cert, self.key)
        self.assertEqual(sorted(os.listdir(self.directory)), ["agent-key.pem", "agent.pem"])
        self.assertEqual(
            readPair(self.cert, self.key).certificate, pki.agent("edge-1").certificate
        )

    def test_readPairMismatch(self) -> None:
        writePair(pki.agent("edge-1"), self.cert, self.key)
        other = os.path.join(self.directory, "other-key.pem")
        writePair(pki.agent("edge-2"), os.path.join(self.directory, "other.pem"), other)
        with self.assertRaises(ValueError) as raised:
            readPair(self.cert, other)
        self.assertIn(other, str(raised.exception))
