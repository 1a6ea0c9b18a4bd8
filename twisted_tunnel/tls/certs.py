# -*- test-case-name: tests.tls.test_certs -*-
"""
Minting the tunnel's private PKI with C{cryptography}.

The tunnel authenticates both ends with certificates from one small private
certificate authority: the server proves it is the server the agent meant to
dial, and each agent proves which edge node it speaks for.  Operators should
not need the C{openssl} command line (nor its many ways to get an extension
wrong) to bootstrap that, so everything here is done in-process:

    - L{mintCA}: the authority, which signs only end-entity certificates
      (C{path_length=0});
    - L{mintServer}: the cloud side, named by every DNS name or IP address the
      agents may dial (C{service_identity} has no common-name fallback, so
      the names go into subjectAltName);
    - L{mintAgent}: an edge node, following the Kubernetes node-client
      convention (C{CN=system:node:<node>}, C{O=system:nodes}) so that the
      same identity rules as kubelet client certificates apply;
    - L{mintClient}: a client of the CONNECT front door, e.g.
      kube-apiserver.

Keys are ECDSA P-256: they are small, and the handshakes they make are cheap,
which matters when ten thousand agents reconnect after a server restart.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from typing import TypeAlias

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..files import writeAtomically

__all__ = [
    "NODE_COMMON_NAME_PREFIX",
    "NODE_ORGANIZATION",
    "PRIVATE_KEY_TYPES",
    "Issued",
    "PrivateKey",
    "isDNSName",
    "isIPLiteral",
    "isNodeName",
    "mintAgent",
    "mintCA",
    "mintClient",
    "mintServer",
    "readPair",
    "validateClientName",
    "validateNodeName",
    "writePair",
]

PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
"""
Any private key that can sign a certificate and that pyOpenSSL can use.

We only mint ECDSA keys, but a CA or key read back from disk (L{readPair})
may have been made elsewhere, with RSA or Ed25519.  (C{cryptography}'s own
C{CertificateIssuerPrivateKeyTypes} also has ML-DSA, which pyOpenSSL, and so
Twisted, cannot use.)
"""

StrPath: TypeAlias = str | os.PathLike[str]

NODE_COMMON_NAME_PREFIX = "system:node:"
"""The subject common name of a Kubernetes node client certificate is this plus the node name."""

NODE_ORGANIZATION = "system:nodes"
"""The subject organization (group) Kubernetes gives to node client certificates."""

_CLOCK_SKEW = datetime.timedelta(minutes=5)
"""
How far in the past a new certificate starts to be valid.

Edge devices' clocks drift; a certificate minted in the cloud a few seconds
"ahead" of an edge node's clock would otherwise be refused as not yet valid.
"""

# used with fullmatch (a "$" would let a trailing newline through), never with
# IGNORECASE (under which [a-z] matches the Kelvin sign, U+212A)
_DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII
)
_DNS1123_SUBDOMAIN_MAX = 253
_DNS1123_LABEL_MAX = 63

PRIVATE_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
"""The classes of L{PrivateKey}, for C{isinstance}."""

_COMMON_NAME_MAX = 64
"""RFC 5280's ub-common-name, which C{cryptography} enforces by default."""


@frozen
class Issued:
    """
    A certificate together with its private key.

    @ivar certificate: The certificate.
    @ivar key: Its private key.
    """

    certificate: x509.Certificate
    key: PrivateKey

    def certificatePEM(self) -> bytes:
        """The certificate, PEM encoded, as written to C{*.pem} files."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def keyPEM(self) -> bytes:
        """
        The private key, PEM encoded, PKCS#8, unencrypted.

        Unencrypted because daemons must start unattended; the file mode
        (0600, see L{writePair}) is what protects it.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def isDNSName(name: str) -> bool:
    """
    Is C{name} a lowercase RFC 1123 DNS subdomain, as Kubernetes requires of node names?

    Kubernetes' C{IsDNS1123Subdomain} checks the whole name against this
    pattern and a length of 253; we check the same, and also that no label
    is longer than the 63 characters DNS allows one (a node name must
    resolve through the hosts file, and no longer label can).  The test is
    exact: no case or Unicode folding, so C{EDGE-1} and C{edge-\u212a} (a
    Kelvin sign) are not names, rather than other spellings of C{edge-1}
    and C{edge-k}.
    """
    return (
        len(name) <= _DNS1123_SUBDOMAIN_MAX
        and _DNS1123_SUBDOMAIN.fullmatch(name) is not None
        and all(len(label) <= _DNS1123_LABEL_MAX for label in name.split("."))
    )


def isIPLiteral(text: str) -> bool:
    """
    Could C{text} be read as an IP address by anything that routes?

    That is a literal C{ipaddress} parses (C{10.0.0.5}, C{fd00::5}), and
    also the legacy IPv4 spellings C{inet_aton} and so C{getaddrinfo}
    accept (C{127.1}, C{0x7f000001}, C{2130706433}): a node named so
    could be taken for an address by a client, a resolver or a log reader.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return True
    if not text or not text.isascii() or any(c.isspace() for c in text):
        return False
    try:
        socket.inet_aton(text)
    except (OSError, ValueError):
        return False
    return True


def isNodeName(name: str) -> bool:
    """
    Can C{name} name a node here: an exact DNS-1123 subdomain that is not an IP literal?

    Node names and node IPs share one lookup (a client asks for
    C{<node>:10250} or C{<node-ip>:10250}); a node named C{127.0.0.3}
    would shadow, or be shadowed by, that address.
    """
    return isDNSName(name) and not isIPLiteral(name)


def validateNodeName(nodeName: str) -> str:
    """
    Check that C{nodeName} can name a node (L{isNodeName}).

    This is the one check for every way a node name comes in: the
    C{edge-tunnel certs agent} command, the agent's C{--node-name}, the
    agent certificate's common name and the HELLO the agent sends.

    @return: C{nodeName}, unchanged.
    @raise ValueError: with a one-line message saying why it cannot.
    """
    if isDNSName(nodeName) and isIPLiteral(nodeName):
        raise ValueError(
            f"invalid node name {nodeName!r}: it reads as an IP address, and a node "
            "name must not shadow a node IP"
        )
    if not isDNSName(nodeName):
        raise ValueError(
            f"invalid node name {nodeName!r}: a node name must be a lowercase RFC 1123 DNS "
            "subdomain (letters a-z, digits, '-' and '.', starting and ending with a letter "
            f"or digit, labels of at most {_DNS1123_LABEL_MAX} and names of at most "
            f"{_DNS1123_SUBDOMAIN_MAX} characters)"
        )
    return nodeName


def _parseIP(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse C{text} as an IP address literal, or return C{None} if it is not one."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _requireIP(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse C{text} as an IP address literal, with a clear error if it is not one."""
    address = _parseIP(text)
    if address is None:
        raise ValueError(f"not an IP address: {text!r}")
    return address


def _commonName(value: str) -> x509.NameAttribute[str]:
    """
    Make a subject common name attribute.

    @raise ValueError: If C{value} is longer than the 64 characters RFC 5280
        allows a common name (C{cryptography} would raise a less helpful
        error, or, told not to, warn on every read of the certificate).
    """
    if not 1 <= len(value) <= _COMMON_NAME_MAX:
        raise ValueError(
            f"common name {value!r} is {len(value)} characters long; a certificate's "
            f"common name must be 1 to {_COMMON_NAME_MAX} characters (RFC 5280)"
        )
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


def _newKey() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: small, and fast to handshake with."""
    return ec.generate_private_key(ec.SECP256R1())


def _validity(
    days: int,
    notBefore: datetime.datetime | None,
    notAfter: datetime.datetime | None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """
    Work out the validity period of a new certificate.

    By default it starts a little in the past (see L{_CLOCK_SKEW}) and lasts
    C{days} from now; tests override either end, e.g. to mint an expired
    certificate.
    """
    if notAfter is None and days < 1:
        raise ValueError(f"a certificate must be valid for at least 1 day, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    start = notBefore if notBefore is not None else now - _CLOCK_SKEW
    end = notAfter if notAfter is not None else now + datetime.timedelta(days=days)
    if end <= start:
        raise ValueError(f"certificate would never be valid: notAfter {end} <= notBefore {start}")
    return start, end


def _authorityKeyIdentifier(ca: Issued) -> x509.AuthorityKeyIdentifier:
    """
    Identify C{ca}'s key in a certificate it signs.

    Prefer the CA's own SubjectKeyIdentifier, so that the two match byte for
    byte even for a CA minted by some other tool with another SKI method.
    """
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _signatureHash(key: PrivateKey) -> hashes.SHA256 | None:
    """SHA-256, except for Ed25519/Ed448 keys, which take no separate hash."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def leafKeyUsage(*, keyEncipherment: bool = False) -> x509.KeyUsage:
    """
    The keyUsage of an end-entity certificate: digitalSignature (what
    ECDSA and TLS 1.3 use), and keyEncipherment if asked (an RSA key, for
    TLS 1.2's RSA key exchange, as the kubelet asks for one).
    """
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=keyEncipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _mintLeaf(
    ca: Issued,
    subject: x509.Name,
    sans: Sequence[x509.GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    days: int,
    notBefore: datetime.datetime | None,
    notAfter: datetime.datetime | None,
) -> Issued:
    """Mint an end-entity certificate signed by C{ca}."""
    key = _newKey()
    start, end = _validity(days, notBefore, notAfter)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leafKeyUsage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authorityKeyIdentifier(ca), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    certificate = builder.sign(ca.key, _signatureHash(ca.key))
    return Issued(certificate=certificate, key=key)


def mintCA(
    commonName: str = "edge-tunnel CA",
    days: int = 3650,
    *,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> Issued:
    """
    Mint a self-signed certificate authority for one tunnel deployment.

    It may sign only end-entity certificates (C{path_length=0}): the tunnel
    has no use for intermediate CAs, and forbidding them means no certificate
    it signs can be used to mint further trusted certificates.

    @param commonName: The subject common name of the CA.
    @param days: How long it is valid, from now.
    @param notBefore: Override the start of validity (for tests).
    @param notAfter: Override the end of validity (for tests).
    """
    key = _newKey()
    start, end = _validity(days, notBefore, notAfter)
    name = x509.Name([_commonName(commonName)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate=certificate, key=key)


def mintServer(
    ca: Issued,
    names: Sequence[str],
    days: int = 365,
    *,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> Issued:
    """
    Mint the tunnel server's certificate.

    @param ca: The authority that signs it.
    @param names: Every name agents may dial the server by: an IP address
        literal becomes an IP address subjectAltName, anything else a DNS
        name.  The first one is also the subject common name, for humans;
        verification only looks at subjectAltName.
    @param days: How long it is valid, from now.
    @raise ValueError: If C{names} is empty.
    """
    if not names:
        raise ValueError("a server certificate needs at least one name")
    sans: list[x509.GeneralName] = []
    for name in names:
        address = _parseIP(name)
        if address is not None:
            sans.append(x509.IPAddress(address))
        else:
            sans.append(x509.DNSName(name))
    return _mintLeaf(
        ca,
        x509.Name([_commonName(names[0])]),
        sans,
        [ExtendedKeyUsageOID.SERVER_AUTH],
        days,
        notBefore,
        notAfter,
    )


def mintAgent(
    ca: Issued,
    nodeName: str,
    ips: Sequence[str] = (),
    days: int = 365,
    *,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> Issued:
    """
    Mint an edge agent's certificate for the node C{nodeName}.

    The subject is C{CN=system:node:<nodeName>, O=system:nodes}, as for a
    kubelet client certificate, and the node name is also a DNS
    subjectAltName.  The server routes traffic for a node only through the
    tunnel of an agent whose certificate carries that node's name.

    @param ca: The authority that signs it.
    @param nodeName: The Kubernetes node name.
    @param ips: The node's IP addresses, added as IP subjectAltNames.
    @param days: How long it is valid, from now.
    @raise ValueError: If C{nodeName} is not a valid node name, or an entry
        of C{ips} is not an IP address.
    """
    validateNodeName(nodeName)
    if len(NODE_COMMON_NAME_PREFIX + nodeName) > _COMMON_NAME_MAX:
        raise ValueError(
            f"node name {nodeName!r} is too long for a node certificate: "
            f"{NODE_COMMON_NAME_PREFIX}<node> must fit the {_COMMON_NAME_MAX}-character "
            f"limit on a common name (RFC 5280), so node names of at most "
            f"{_COMMON_NAME_MAX - len(NODE_COMMON_NAME_PREFIX)} characters are supported"
        )
    sans: list[x509.GeneralName] = [x509.DNSName(nodeName)]
    sans.extend(x509.IPAddress(_requireIP(ip)) for ip in ips)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
            _commonName(NODE_COMMON_NAME_PREFIX + nodeName),
        ]
    )
    return _mintLeaf(
        ca, subject, sans, [ExtendedKeyUsageOID.CLIENT_AUTH], days, notBefore, notAfter
    )


def validateClientName(name: str) -> str:
    """
    Check that C{name} can name a client of the doors (CONNECT, HTTPS listener).

    A client is never an agent: the server takes a C{system:node:<name>}
    certificate for the agent of that node, so a "client" certificate
    with such a name would carry that node's tunnel, and the doors refuse
    it anyway.  The prefix is refused in any case (C{System:Node:}, and
    C{system:nodes}, the nodes' group), though only the exact
    C{system:node:} is a node identity: one more guard against a typo
    that makes a certificate mean something else than intended.

    @return: C{name}, unchanged.
    @raise ValueError: with a one-line message saying why it cannot.
    """
    if not name:
        raise ValueError("a client certificate needs a name")
    if name.casefold().startswith(NODE_COMMON_NAME_PREFIX.rstrip(":")):
        raise ValueError(
            f"client name {name!r} is a node identity ({NODE_COMMON_NAME_PREFIX}<node>, "
            f"O={NODE_ORGANIZATION}): a client is never an agent; make an agent's "
            "certificate with 'certs agent NODE' instead"
        )
    return name


def mintClient(
    ca: Issued,
    name: str,
    days: int = 365,
    *,
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> Issued:
    """
    Mint a certificate for a client of the CONNECT front door (e.g. kube-apiserver).

    @param ca: The authority that signs it.
    @param name: The subject common name; also a DNS subjectAltName if it is
        a valid DNS name (C{"kube-apiserver"} is, C{"Kube API"} is not).
    @param days: How long it is valid, from now.
    @raise ValueError: If C{name} is empty or names a node
        (L{validateClientName}).
    """
    validateClientName(name)
    sans: list[x509.GeneralName] = [x509.DNSName(name)] if isDNSName(name) else []
    return _mintLeaf(
        ca,
        x509.Name([_commonName(name)]),
        sans,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        days,
        notBefore,
        notAfter,
    )


def writePair(issued: Issued, certPath: StrPath, keyPath: StrPath) -> None:
    """
    Write a certificate (mode 0644) and its private key (mode 0600).

    Each file is replaced atomically.  The key is written first, so that a
    process watching the certificate file never sees a new certificate next
    to the old key.
    """
    writeAtomically(keyPath, issued.keyPEM(), 0o600)
    writeAtomically(certPath, issued.certificatePEM(), 0o644)


def readPair(certPath: StrPath, keyPath: StrPath) -> Issued:
    """
    Read back a certificate and key, e.g. the CA that signs new certificates.

    Only the first certificate of C{certPath} is used.

    @raise OSError: If a file cannot be read.
    @raise ValueError: If a file holds no PEM certificate or unencrypted
        PEM key, or the key does not belong to the certificate; the message
        names the file.
    """
    certPath = os.fspath(certPath)
    keyPath = os.fspath(keyPath)
    with open(certPath, "rb") as f:
        certData = f.read()
    with open(keyPath, "rb") as f:
        keyData = f.read()
    try:
        certificate = x509.load_pem_x509_certificates(certData)[0]
    except ValueError:
        raise ValueError(f"{certPath}: no PEM certificate in this file") from None
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{keyPath}: no unencrypted PEM private key in this file") from None
    if not isinstance(key, PRIVATE_KEY_TYPES):
        raise ValueError(f"{keyPath}: this kind of key cannot sign certificates")
    if _publicKeyBytes(key.public_key()) != _publicKeyBytes(certificate.public_key()):
        raise ValueError(f"{keyPath}: this key does not belong to the certificate in {certPath}")
    return Issued(certificate=certificate, key=key)


def _publicKeyBytes(key: PublicKeyTypes) -> bytes:
    """Encode a public key so that two of them can be compared."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
