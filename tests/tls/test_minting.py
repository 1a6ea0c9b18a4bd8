"""
Per-node serving certificates (L{twisted_tunnel.tls.minting}): what they
say, the CA they come from and what it refuses, the cache, renewal before
expiry on a L{Clock}, and the bounds (entries, rate, lifetime).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import time
import warnings

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI, temporaryDirectory
from twisted_tunnel.errors import CredentialsError
from twisted_tunnel.tls import verifyChain
from twisted_tunnel.tls.certs import Issued, mintCA, writePair
from twisted_tunnel.tls.minting import (
    BACKDATE,
    MAX_LIFETIME,
    MIN_LIFETIME,
    MintedCertificate,
    ServingAuthority,
    ServingCertificates,
    loadServingAuthority,
    mintServingCertificate,
)

pki = TestPKI()


@functools.cache
def servingCA() -> Issued:
    """The CA kube-apiserver's --kubelet-certificate-authority names, in these tests."""
    return mintCA("kubelet serving CA")


def authority() -> ServingAuthority:
    ca = servingCA()
    return ServingAuthority(ca.certificate, ca.key)


@frozen
class Node:
    node: str
    ips: tuple[str, ...] = ()


def wallClock() -> Clock:
    """A L{Clock} at the wall clock's time, so that minted certificates verify now."""
    clock = Clock()
    clock.advance(time.time())
    return clock


def cryptographyOf(minted: MintedCertificate) -> x509.Certificate:
    return minted.certificate.to_cryptography()


def publicKey(minted: MintedCertificate) -> bytes:
    return (
        cryptographyOf(minted)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


class MintServingCertificateTests(SynchronousTestCase):
    """L{mintServingCertificate}: shaped like a kubelet's serving certificate."""

    def setUp(self) -> None:
        self.now = time.time()
        self.key = ec.generate_private_key(ec.SECP256R1())

    def mint(self, node: str = "edge-1", ips: tuple[str, ...] = ("10.0.0.7",)) -> x509.Certificate:
        return mintServingCertificate(
            authority(), node, ips, self.key, self.now - BACKDATE, self.now + 3600
        )

    def test_subjectAndNames(self) -> None:
        """C{CN=<node>}, C{DNS:<node>}, C{IP:<ip>} for each IP, issued by the CA."""
        certificate = self.mint(ips=("10.0.0.7", "fd00::7"))
        self.assertEqual(certificate.subject.rfc4514_string(), "CN=edge-1")
        self.assertEqual(certificate.issuer, servingCA().certificate.subject)
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["edge-1"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("fd00::7")],
        )
        self.assertIsNone(
            verifyChain(
                [certificate],
                pki.credentials(servingCA(), ca=servingCA()).authority,
                datetime.datetime.now(datetime.UTC),
            )
        )

    def test_usages(self) -> None:
        """
        keyUsage digitalSignature only for an ECDSA key (critical),
        extendedKeyUsage serverAuth only, not a CA.
        """
        certificate = self.mint()
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_encipherment)
        self.assertFalse(usage.value.key_cert_sign)
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertFalse(constraints.value.ca)
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        ski = servingCA().certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(aki.value.key_identifier, ski.value.digest)

    def test_rsaKeyEncipherment(self) -> None:
        """An RSA leaf key also gets keyEncipherment, as the kubelet asks for one."""
        key = rsa.generate_private_key(65537, 2048)
        certificate = mintServingCertificate(
            authority(), "edge-1", (), key, self.now, self.now + 3600
        )
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertTrue(usage.key_encipherment)

    def test_validity(self) -> None:
        """From C{notBefore} to C{notAfter}, whole seconds."""
        certificate = self.mint()
        self.assertEqual(certificate.not_valid_before_utc.timestamp(), int(self.now - BACKDATE))
        self.assertEqual(certificate.not_valid_after_utc.timestamp(), int(self.now + 3600))

    def test_clampedToTheCA(self) -> None:
        """A certificate never outlives its CA."""
        end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=30)
        shortCA = mintCA("short", notAfter=end)
        certificate = mintServingCertificate(
            ServingAuthority(shortCA.certificate, shortCA.key),
            "edge-1",
            (),
            self.key,
            self.now,
            self.now + 86400,
        )
        self.assertEqual(certificate.not_valid_after_utc, shortCA.certificate.not_valid_after_utc)

    def test_longNameHasNoCommonName(self) -> None:
        """A node name longer than a CN may be is in the subjectAltName only (critical then)."""
        name = ".".join(["a" * 60] * 4)  # 243 characters: a valid node name
        certificate = self.mint(node=name)
        self.assertEqual(len(certificate.subject), 0)
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertTrue(sans.critical)
        self.assertEqual(sans.value.get_values_for_type(x509.DNSName), [name])

    def test_refusesNonNodeNames(self) -> None:
        """Never minted for what is not a node name (a wildcard, an IP, upper case)."""
        for name in ("*.example", "10.0.0.7", "EDGE-1", "", "a..b"):
            with self.assertRaises(ValueError, msg=name):
                self.mint(node=name)

    def test_refusesTooManyIPs(self) -> None:
        ips = tuple(f"10.0.{i // 256}.{i % 256}" for i in range(65))
        with self.assertRaises(ValueError):
            self.mint(ips=ips)


class LoadServingAuthorityTests(SynchronousTestCase):
    """L{loadServingAuthority}: a CA and its key, or one line saying why not."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)

    def write(self, issued: Issued, stem: str, mode: int = 0o600) -> tuple[str, str]:
        cert = os.path.join(self.directory, f"{stem}.pem")
        key = os.path.join(self.directory, f"{stem}-key.pem")
        writePair(issued, cert, key)
        os.chmod(key, mode)
        return cert, key

    def assertRefused(self, cert: str, key: str, option: str, path: str, why: str) -> None:
        with self.assertRaises(CredentialsError) as raised:
            loadServingAuthority(cert, key)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"{option} {path}: "), message)
        self.assertIn(why, message)

    def test_good(self) -> None:
        cert, key = self.write(servingCA(), "ca")
        with capturedLogs() as events:
            loaded = loadServingAuthority(cert, key)
        self.assertEqual(loaded.certificate, servingCA().certificate)
        self.assertEqual(events, [])

    def test_notACA(self) -> None:
        """A server's certificate (basicConstraints CA:FALSE) signs nothing."""
        cert, key = self.write(pki.server, "server")
        self.assertRefused(cert, key, "--proxy-serving-ca-cert", cert, "CA:FALSE")

    def test_noKeyCertSign(self) -> None:
        """A CA:TRUE certificate whose keyUsage lacks keyCertSign is refused too."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd CA")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        cert, keyPath = self.write(Issued(certificate, key), "odd")
        self.assertRefused(cert, keyPath, "--proxy-serving-ca-cert", cert, "keyCertSign")

    def test_keyOfAnotherCA(self) -> None:
        cert, _ = self.write(servingCA(), "ca")
        _, other = self.write(pki.otherCA, "other")
        self.assertRefused(cert, other, "--proxy-serving-ca-key", other, "does not match")

    def test_keyReadableByOthers(self) -> None:
        """Whoever reads the CA key impersonates every kubelet: refused, not warned."""
        cert, key = self.write(servingCA(), "ca", mode=0o604)
        self.assertRefused(cert, key, "--proxy-serving-ca-key", key, "accessible by others")

    def test_keyReadableByGroup(self) -> None:
        """A key the group may read is accepted with a warning (an fsGroup mount)."""
        cert, key = self.write(servingCA(), "ca", mode=0o640)
        with capturedLogs() as events:
            loadServingAuthority(cert, key)
        self.assertEqual(len(events), 1)
        self.assertIn("group", events[0]["log_format"])

    def test_expired(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        old = mintCA(
            "old",
            notBefore=now - datetime.timedelta(days=3),
            notAfter=now - datetime.timedelta(days=1),
        )
        cert, key = self.write(old, "old")
        self.assertRefused(cert, key, "--proxy-serving-ca-cert", cert, "expired")

    def test_twoCertificates(self) -> None:
        """A bundle is refused: one CA, the one kube-apiserver trusts."""
        cert, key = self.write(servingCA(), "ca")
        with open(cert, "ab") as f:
            f.write(pki.otherCA.certificatePEM())
        self.assertRefused(cert, key, "--proxy-serving-ca-cert", cert, "2 certificates")

    def test_missing(self) -> None:
        cert, key = self.write(servingCA(), "ca")
        missing = os.path.join(self.directory, "nope.pem")
        self.assertRefused(missing, key, "--proxy-serving-ca-cert", missing, "no such file")

    def test_encryptedKey(self) -> None:
        cert, key = self.write(servingCA(), "ca")
        with open(key, "wb") as f:
            f.write(
                servingCA().key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        self.assertRefused(cert, key, "--proxy-serving-ca-key", key, "encrypted")


class ServingCertificatesTests(SynchronousTestCase):
    """L{ServingCertificates}: cached, renewed before expiry, bounded."""

    def setUp(self) -> None:
        self.clock = wallClock()

    def certificates(self, **kw: float) -> ServingCertificates:
        return ServingCertificates(authority(), self.clock, **kw)  # type: ignore[arg-type]

    def test_mintedOnceThenCached(self) -> None:
        certificates = self.certificates()
        first = certificates.certificateFor(Node("edge-1", ("10.0.0.7",)))
        second = certificates.certificateFor(Node("edge-1", ("10.0.0.7",)))
        assert first is not None
        self.assertIs(first, second)
        self.assertEqual(certificates.minted, 1)
        self.assertEqual(len(certificates), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_keyPerGeneration(self) -> None:
        """
        The certificates minted within a third of a lifetime share a key; a
        renewal (two thirds into its certificate's life) gets a new one.
        """
        certificates = self.certificates(lifetime=3600)
        one = certificates.certificateFor(Node("edge-1"))
        self.clock.advance(1199)
        two = certificates.certificateFor(Node("edge-2"))
        self.clock.advance(1)
        three = certificates.certificateFor(Node("edge-3"))
        self.clock.advance(1200)
        renewed = certificates.certificateFor(Node("edge-1"))
        assert one is not None and two is not None and three is not None
        assert renewed is not None
        self.assertIsNot(renewed, one)
        keys = [publicKey(m) for m in (one, two, three, renewed)]
        self.assertEqual(keys[0], keys[1])
        self.assertNotEqual(keys[1], keys[2])
        self.assertNotEqual(keys[2], keys[3])
        self.assertNotEqual(keys[0], keys[3])

    def test_lifetime(self) -> None:
        """Valid from a little before now to C{lifetime} from now."""
        certificates = self.certificates(lifetime=3600)
        minted = certificates.certificateFor(Node("edge-1"))
        assert minted is not None
        certificate = cryptographyOf(minted)
        now = self.clock.seconds()
        self.assertEqual(certificate.not_valid_after_utc.timestamp(), int(now + 3600))
        self.assertEqual(certificate.not_valid_before_utc.timestamp(), int(now - BACKDATE))

    def test_renewedBeforeExpiry(self) -> None:
        """
        The same certificate until two thirds of its life are gone, then a
        new one: what is presented always has a third of its life left.
        """
        certificates = self.certificates(lifetime=3600)
        node = Node("edge-1", ("10.0.0.7",))
        first = certificates.certificateFor(node)
        assert first is not None
        self.clock.advance(2399)
        self.assertIs(certificates.certificateFor(node), first)
        self.clock.advance(1)
        renewed = certificates.certificateFor(node)
        assert renewed is not None
        self.assertIsNot(renewed, first)
        self.assertNotEqual(renewed.serial, first.serial)
        self.assertGreaterEqual(renewed.notAfter - self.clock.seconds(), 3600 - 1)
        self.assertEqual(certificates.minted, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_newIPsNewCertificate(self) -> None:
        """A node whose IPs changed gets a certificate for its IPs of now."""
        certificates = self.certificates()
        first = certificates.certificateFor(Node("edge-1", ("10.0.0.7",)))
        moved = certificates.certificateFor(Node("edge-1", ("10.0.0.8",)))
        assert first is not None and moved is not None
        self.assertIsNot(first, moved)
        sans = cryptographyOf(moved).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        self.assertEqual(
            sans.value.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("10.0.0.8")]
        )

    def test_boundedEntries(self) -> None:
        """At most C{maxEntries} kept; the least recently used goes first."""
        certificates = self.certificates(maxEntries=2)
        a = certificates.certificateFor(Node("a"))
        certificates.certificateFor(Node("b"))
        self.assertIs(certificates.certificateFor(Node("a")), a)  # a used last
        certificates.certificateFor(Node("c"))  # b goes
        self.assertEqual(len(certificates), 2)
        self.assertIs(certificates.certificateFor(Node("a")), a)
        self.assertEqual(certificates.minted, 3)
        certificates.certificateFor(Node("b"))
        self.assertEqual(certificates.minted, 4)

    def test_rateBounded(self) -> None:
        """
        A burst, then C{rate} a second: past it, nothing is minted (and
        C{None} says so), however many nodes are asked for.
        """
        certificates = self.certificates(rate=2, burst=3)
        got = [certificates.certificateFor(Node(f"n{i}")) for i in range(10)]
        self.assertEqual(sum(m is not None for m in got), 3)
        self.assertEqual(certificates.minted, 3)
        self.assertEqual(certificates.throttled, 7)
        self.clock.advance(1)
        got = [certificates.certificateFor(Node(f"m{i}")) for i in range(10)]
        self.assertEqual(sum(m is not None for m in got), 2)
        self.clock.advance(3600)  # the bucket holds at most the burst
        got = [certificates.certificateFor(Node(f"k{i}")) for i in range(10)]
        self.assertEqual(sum(m is not None for m in got), 3)

    def test_cachedDespiteTheRate(self) -> None:
        """A cached certificate costs no token: hits are never throttled."""
        certificates = self.certificates(rate=1, burst=1)
        first = certificates.certificateFor(Node("edge-1"))
        for _ in range(100):
            self.assertIs(certificates.certificateFor(Node("edge-1")), first)
        self.assertEqual(certificates.throttled, 0)

    def test_dueButThrottledKeepsTheValidOne(self) -> None:
        """
        Due for renewal but over the rate: the kept one, still valid, is
        presented; once it expired, none.
        """
        certificates = self.certificates(lifetime=3600, rate=1 / 7200, burst=1)
        first = certificates.certificateFor(Node("edge-1"))
        assert first is not None
        self.clock.advance(3000)
        self.assertIs(certificates.certificateFor(Node("edge-1")), first)
        self.assertEqual(certificates.throttled, 1)
        self.clock.advance(600)
        self.assertIsNone(certificates.certificateFor(Node("edge-1")))
        self.assertEqual(len(certificates), 0)

    def test_expiredCA(self) -> None:
        """Past the CA's end, nothing is minted, with one error line."""
        end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        shortCA = mintCA("short", notAfter=end)
        certificates = ServingCertificates(
            ServingAuthority(shortCA.certificate, shortCA.key), self.clock
        )
        self.clock.advance(7200)
        with capturedLogs() as events:
            self.assertIsNone(certificates.certificateFor(Node("edge-1")))
        self.assertEqual(len(events), 1)
        self.assertIn("expired", events[0]["log_format"])

    def test_badNodeLogged(self) -> None:
        """A node that cannot have a certificate gets none, and one warning."""
        certificates = self.certificates()
        with capturedLogs() as events:
            self.assertIsNone(certificates.certificateFor(Node("edge-1", ("not an ip",))))
        self.assertEqual(len(events), 1)

    def test_bounds(self) -> None:
        """The lifetime, size and rate are checked."""
        for kw in (
            {"lifetime": MIN_LIFETIME - 1},
            {"lifetime": MAX_LIFETIME + 1},
            {"maxEntries": 0},
            {"rate": 0},
            {"burst": 0.5},
        ):
            with self.assertRaises(ValueError, msg=kw):
                self.certificates(**kw)

    def test_presentOn(self) -> None:
        """A connection takes the certificate and its key, with no warning."""
        minted = self.certificates().certificateFor(Node("edge-1"))
        assert minted is not None
        connection = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            minted.presentOn(connection)
        self.assertEqual([str(w.message) for w in caught], [])
        presented = connection.get_certificate()
        assert presented is not None
        self.assertEqual(presented.to_cryptography(), cryptographyOf(minted))
