# -*- test-case-name: tests.tls.test_minting -*-
"""
Per-node kubelet serving certificates, minted on demand from a CA the
operator gives the server.

kube-apiserver dials C{<node-ip>:10250} and, with
C{--kubelet-certificate-authority}, checks that the certificate it gets
names that IP and comes from that CA.  The HTTPS proxy listener answers in
the kubelet's place: with one static certificate it would have to list
every node IP ahead of time, which no fleet can.  So, given the CA's
certificate and key (L{loadServingAuthority}), the server mints, for each
node it knows, a certificate shaped like a kubelet's serving certificate
(L{mintServingCertificate}) and keeps it (L{ServingCertificates}) until it
is due for renewal.

Bounded, whatever clients do:

  - only nodes the server knows get one (the caller looks the address up
    in its registry; this module never mints for a name it is handed
    blindly);
  - the cache holds at most C{maxEntries} certificates, each of bounded size
    (a node name is at most 253 characters, a node at most 64 IPs), the
    least recently used going first;
  - minting spends tokens of a bucket (C{rate} per second, C{burst} at
    once): a flood of handshakes for ever new nodes, or a cache too small
    for the fleet, costs at most that much signing;
  - certificates are short-lived (L{DEFAULT_LIFETIME}, at most
    L{MAX_LIFETIME}) and renewed once two thirds of their life is gone, so
    one has at least a third of its life left when it is presented (unless
    minting is over its rate: the kept one is then presented until it
    expires).

The certificates minted within a third of their lifetime share one leaf
key (a fresh ECDSA P-256 key per such I{generation}); a renewal, which
comes two thirds into a certificate's life, falls in a later generation,
so it comes with a new key.  C{bench/serving_certs.py} measured, at 10,000
nodes (docs/performance.md): a key per certificate costs some 2 KiB more
per cached node (an OpenSSL C{EVP_PKEY} for P-256, with its own copy of
the curve, outweighs the certificate's DER), 89 MiB instead of 68 MiB,
and mints up to 20 % fewer certificates a second (within the noise in
some runs).  What a key per node
would buy is little: the CA key that signs them all sits in the same
process, and what matters, that no leaf key answers for long, holds
either way (a generation's key is used for at most a third of a
lifetime, and the last certificate made with it expires one lifetime
later).  A copy of one generation's key would answer for every node for
that long, where a node's own would answer for that node only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import warnings
from collections import OrderedDict
from typing import Protocol

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL.crypto import X509, PKey
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from .._logthrottle import LogThrottle
from ..errors import CredentialsError
from . import (
    Credentials,
    _formatTime,
    _loadCertificates,
    _loadKey,
    _publicKeyDER,
    _readFile,
    makeCredentials,
)
from .certs import (
    _COMMON_NAME_MAX,
    PRIVATE_KEY_TYPES,
    Issued,
    PrivateKey,
    _authorityKeyIdentifier,
    _signatureHash,
    isNodeName,
    leafKeyUsage,
)

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_RATE",
    "MAX_LIFETIME",
    "MIN_LIFETIME",
    "MintedCertificate",
    "ServedNode",
    "ServingAuthority",
    "ServingCertificates",
    "loadServingAuthority",
    "mintServingCertificate",
]

#: How long a minted certificate is valid by default (seconds): four hours.
DEFAULT_LIFETIME = 4 * 3600.0

#: The shortest lifetime allowed: below it, renewal (at two thirds) would
#: mint every few minutes per node, for no gain.
MIN_LIFETIME = 600.0

#: The longest lifetime allowed: a week.  Longer is no short-lived
#: certificate any more; a real kubelet's are rotated at 70-90 % of a year.
MAX_LIFETIME = 7 * 86400.0

#: How far back a certificate's validity starts, for clocks a little behind ours.
BACKDATE = 300.0

#: How many certificates are kept by default (the least recently used go
#: first).  Some 7 KiB each when cached (mostly OpenSSL's parsed C{X509};
#: C{bench/serving_certs.py} measured 68 MiB for 10,000 nodes), so a full
#: cache is some 140 MiB.  A fleet larger than this should say so
#: (C{--proxy-serving-cert-cache}): otherwise its nodes' certificates are
#: minted again and again, within the rate.
DEFAULT_MAX_ENTRIES = 20000

#: Mints per second on average, by default: 500 is at most some 4-6 % of a
#: core (70-130 us each).
DEFAULT_RATE = 500.0

#: Mints at once, by default: a server starting under 10,000 nodes' worth
#: of traffic has them all within some 16 s.
DEFAULT_BURST = 2000.0

#: The IPs a node may have (a HELLO carries at most 64).
MAX_NODE_IPS = 64

_log = Logger()


class ServedNode(Protocol):
    """
    What a certificate is minted for: a node the server knows, and its IPs
    (an L{twisted_tunnel.server.AgentRecord} or a routed node are such).
    """

    @property
    def node(self) -> str: ...

    @property
    def ips(self) -> tuple[str, ...]: ...


@frozen
class ServingAuthority:
    """
    The CA that signs the kubelet serving certificates (kube-apiserver's
    C{--kubelet-certificate-authority}), with its key.

    @ivar certPath: the file C{certificate} came from (for messages).
    """

    certificate: x509.Certificate
    key: PrivateKey
    certPath: str = ""

    def describe(self) -> str:
        """The CA's subject, for logs."""
        return self.certificate.subject.rfc4514_string()

    def credentials(self) -> Credentials:
        """
        As L{Credentials} (the CA presenting itself, trusting itself): what
        L{twisted_tunnel.tls.rotation.CredentialsWatcher} hands over, so that
        its files are watched as every other certificate's.
        """
        return makeCredentials(
            [self.certificate], self.certificate, self.key, certPath=self.certPath
        )

    @classmethod
    def fromCredentials(cls, credentials: Credentials) -> ServingAuthority:
        """The authority L{credentials} was made from."""
        own = credentials.certificate
        key = own.privateKey.original.to_cryptography_key()
        assert isinstance(key, PRIVATE_KEY_TYPES)
        return cls(own.original.to_cryptography(), key, credentials.certPath)


def loadServingAuthority(
    certPath: str,
    keyPath: str,
    *,
    certOption: str = "--proxy-serving-ca-cert",
    keyOption: str = "--proxy-serving-ca-key",
    now: datetime.datetime | None = None,
) -> ServingAuthority:
    """
    Load and check the CA that mints serving certificates: at start-up, and
    again when its files change (as every credential file is read: regular
    files of at most 1 MiB, so a FIFO or C{/dev/zero} cannot stall the
    reactor).

    Refused, with one line naming the option, the file and the reason: what
    L{twisted_tunnel.tls.loadCredentials} refuses (missing, not PEM, a key
    that does not match), a file of more than one certificate (the CA must
    be the one kube-apiserver trusts; intermediates are not sent), a
    certificate that is no CA (basicConstraints CA:TRUE, and keyCertSign if
    it has a keyUsage), one that expired or is not yet valid, and a key
    file that others may read or write.  That last one is a warning for
    other keys, and a refusal here: whoever reads this key can mint a
    certificate that kube-apiserver takes for any node's kubelet.  A key
    file that the group may read is accepted with a warning (a Secret
    mounted with C{defaultMode: 0440} and an C{fsGroup}).
    """
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    certificates = _loadCertificates(certOption, certPath, _readFile(certOption, certPath))
    if len(certificates) != 1:
        raise CredentialsError(
            f"{certOption} {certPath}: {len(certificates)} certificates; exactly one CA "
            "certificate is expected (the one kube-apiserver's "
            "--kubelet-certificate-authority trusts)"
        )
    (ca,) = certificates
    why = _whyNotCA(ca)
    if why is not None:
        raise CredentialsError(f"{certOption} {certPath}: {why}")
    if now < ca.not_valid_before_utc:
        raise CredentialsError(
            f"{certOption} {certPath}: CA certificate is not valid until "
            f"{_formatTime(ca.not_valid_before_utc)} (check the clock?)"
        )
    if ca.not_valid_after_utc <= now:
        raise CredentialsError(
            f"{certOption} {certPath}: CA certificate expired on "
            f"{_formatTime(ca.not_valid_after_utc)}"
        )
    _refuseExposed(keyOption, keyPath)
    key = _loadKey(keyOption, keyPath, _readFile(keyOption, keyPath))
    if _publicKeyDER(key) != _publicKeyDER(ca):
        raise CredentialsError(
            f"{keyOption} {keyPath}: private key does not match the CA certificate "
            f"in {certOption} {certPath}"
        )
    return ServingAuthority(ca, key, certPath)


def _whyNotCA(certificate: x509.Certificate) -> str | None:
    """Why C{certificate} cannot sign certificates, or C{None} if it can."""
    subject = certificate.subject.rfc4514_string()
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return f"{subject} is not a CA certificate (no basicConstraints extension)"
    if not constraints.value.ca:
        return f"{subject} is not a CA certificate (basicConstraints CA:FALSE)"
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    except x509.ExtensionNotFound:
        return None
    if not usage.value.key_cert_sign:
        return f"{subject} may not sign certificates (its keyUsage lacks keyCertSign)"
    return None


def _refuseExposed(option: str, path: str) -> None:
    """Refuse a CA key file others may access; warn if the group may."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # reading it says why
    if mode & 0o007:
        raise CredentialsError(
            f"{option} {path}: the CA key file is accessible by others (mode {mode:04o}); "
            "whoever reads it can impersonate every kubelet: chmod 600 it"
        )
    if mode & 0o070:
        _log.warn(
            "{option} {path}: CA key file is accessible by its group (mode {mode:04o}); "
            "chmod 600 it unless that group is this server alone",
            option=option,
            path=path,
            mode=mode,
        )


def _at(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def mintServingCertificate(
    authority: ServingAuthority,
    node: str,
    ips: tuple[str, ...],
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    notBefore: float,
    notAfter: float,
) -> x509.Certificate:
    """
    A kubelet-shaped serving certificate for C{node}: C{CN=<node>} (when it
    fits the 64 characters of a common name; clients check the
    subjectAltName, never the CN), subjectAltName C{DNS:<node>} and
    C{IP:<ip>} for each of C{ips}, keyUsage digitalSignature (and
    keyEncipherment for an RSA key, as the kubelet asks), extendedKeyUsage
    serverAuth only: it cannot serve as a client certificate.

    The CN is the node's name, not the C{system:node:<name>} of a
    CSR-issued kubelet serving certificate: nothing checks a serving
    certificate's CN, and a subject that reads as a node's identity is
    what this server refuses from clients (L{refuseNodeIdentity}); better
    that no minted certificate ever looks like one.

    @param notBefore: seconds since the epoch.
    @param notAfter: seconds since the epoch; clamped to the CA's own end.
    @raise ValueError: C{node} is no node name, or an IP is malformed.
    """
    if not isNodeName(node):
        raise ValueError(f"{node!r} is not a node name")
    if len(ips) > MAX_NODE_IPS:
        raise ValueError(f"node {node!r} has {len(ips)} IPs; at most {MAX_NODE_IPS}")
    subject = (
        [x509.NameAttribute(NameOID.COMMON_NAME, node)] if len(node) <= _COMMON_NAME_MAX else []
    )
    sans: list[x509.GeneralName] = [x509.DNSName(node)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    ca = authority.certificate
    end = min(_at(notAfter), ca.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_at(notBefore))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            leafKeyUsage(keyEncipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
        # which of the CAs a bundle may hold (two with one subject, while
        # rotating) signed it
        .add_extension(_authorityKeyIdentifier(Issued(ca, authority.key)), critical=False)
    )
    return builder.sign(authority.key, _signatureHash(authority.key))


class MintedCertificate:
    """
    A certificate and its key, as a TLS connection takes them, and when it
    is due for renewal.

    Kept as pyOpenSSL objects, converted once: a connection takes them with
    C{Connection.use_certificate} and C{use_privatekey}, which would
    otherwise turn C{cryptography} objects into pyOpenSSL ones (a DER
    round trip, some 120 us) at every handshake.  The key object is shared
    by the certificates of one generation.

    @ivar notAfter: the end of its validity, seconds since the epoch.
    @ivar renewAt: when it is due for renewal, on the same clock.
    """

    __slots__ = ("node", "ips", "certificate", "key", "notAfter", "renewAt", "serial")

    def __init__(
        self, node: str, ips: tuple[str, ...], certificate: X509, key: PKey, renewAt: float
    ) -> None:
        self.node = node
        self.ips = ips
        self.certificate = certificate
        self.key = key
        self.notAfter = certificate.to_cryptography().not_valid_after_utc.timestamp()
        self.renewAt = renewAt
        self.serial = certificate.get_serial_number()

    def presentOn(self, connection: object) -> None:
        """
        Make C{connection} (an C{OpenSSL.SSL.Connection}, in its handshake)
        present this certificate.

        pyOpenSSL deprecates its own X509 and PKey objects here in favour
        of C{cryptography}'s, whose conversion costs more than the rest of
        the choice; the warning is silenced for these two calls only (this
        runs on the reactor thread).
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Passing pyOpenSSL", DeprecationWarning)
            connection.use_certificate(self.certificate)  # type: ignore[attr-defined]
            connection.use_privatekey(self.key)  # type: ignore[attr-defined]


class ServingCertificates:
    """
    The certificates minted for nodes, by node: L{certificateFor} returns
    one that has at least a third of its life left, minting it (within the
    rate) when there is none, it is due, or the node's IPs changed.

    @param clock: the wall clock (C{seconds()}: the certificates' validity).
    @param lifetime: seconds a certificate is valid (L{MIN_LIFETIME} to
        L{MAX_LIFETIME}).
    @param maxEntries: certificates kept at most.
    @param rate: mints per second on average.
    @param burst: mints at once.
    """

    log = Logger()

    def __init__(
        self,
        authority: ServingAuthority,
        clock: IReactorTime,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        maxEntries: int = DEFAULT_MAX_ENTRIES,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
    ) -> None:
        if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            raise ValueError(
                f"lifetime {lifetime!r}: must be {MIN_LIFETIME:.0f} to {MAX_LIFETIME:.0f} seconds"
            )
        if maxEntries < 1:
            raise ValueError(f"maxEntries {maxEntries!r}: must be 1 or more")
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {rate!r}, burst {burst!r}: must be positive, burst 1 or more")
        self.authority = authority
        self.clock = clock
        self.lifetime = lifetime
        self.maxEntries = maxEntries
        self.rate = rate
        self.burst = burst
        #: how many certificates were minted, and how many mints the rate refused
        self.minted = 0
        self.throttled = 0
        self._kept: OrderedDict[str, MintedCertificate] = OrderedDict()
        self._tokens = burst
        self._filledAt = clock.seconds()
        self._throttle = LogThrottle(clock)
        #: the leaf key of this generation, as both libraries take it, and its end
        self._generation: tuple[ec.EllipticCurvePrivateKey, PKey, float] | None = None

    def __len__(self) -> int:
        return len(self._kept)

    def replaceAuthority(self, authority: ServingAuthority) -> None:
        """
        Mint with C{authority} from now on (its files were rotated): every
        certificate kept, and the leaf key, are dropped, so no handshake
        presents one signed by the old CA (it may be rotated out because it
        was compromised, or kube-apiserver may trust only the new one).
        Each node's next handshake mints again, within the rate.
        """
        dropped = len(self._kept)
        self.authority = authority
        self._kept.clear()
        self._generation = None
        self.log.info(
            "serving certificates: minting with CA {ca} from now on; {dropped} certificates "
            "of the previous CA dropped",
            ca=authority.describe(),
            dropped=dropped,
        )

    def certificateFor(self, node: ServedNode) -> MintedCertificate | None:
        """
        The certificate to present for C{node}: the kept one if it is not
        due and names the node's IPs of now, else a new one.

        @return: C{None} if none can be had: minting is over the rate (or
            failed, logged) and nothing kept is still valid.
        """
        now = self.clock.seconds()
        kept = self._kept.get(node.node)
        if kept is not None:
            if kept.ips == node.ips and now < kept.renewAt:
                self._kept.move_to_end(node.node)
                return kept
            if now >= kept.notAfter:
                del self._kept[node.node]
                kept = None
        minted = self._mint(node, now)
        if minted is None:
            # over the rate: a kept certificate still valid for the node's
            # IPs of now is better than none (it has up to a third of its
            # life left)
            if kept is not None and kept.ips == node.ips:
                return kept
            return None
        self._kept[node.node] = minted
        self._kept.move_to_end(node.node)
        while len(self._kept) > self.maxEntries:
            self._kept.popitem(last=False)
        return minted

    def _takeToken(self, now: float) -> bool:
        """The token bucket: C{rate} tokens a second, at most C{burst} saved."""
        elapsed = max(0.0, now - self._filledAt)
        self._filledAt = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _mint(self, node: ServedNode, now: float) -> MintedCertificate | None:
        if not self._takeToken(now):
            self.throttled += 1
            return None
        caEnd = self.authority.certificate.not_valid_after_utc.timestamp()
        if caEnd <= now:
            self._throttle.emit(
                self.log,
                LogLevel.error,
                "cannot mint serving certificates: the CA {ca} expired on {expiry}",
                ca=self.authority.describe(),
                expiry=_formatTime(_at(caEnd)),
            )
            return None
        notAfter = min(now + self.lifetime, caEnd)
        key, pkey = self._leafKey(now)
        try:
            certificate = mintServingCertificate(
                self.authority, node.node, node.ips, key, now - BACKDATE, notAfter
            )
        except ValueError as e:
            self._throttle.emit(
                self.log,
                LogLevel.warn,
                "cannot mint a serving certificate for node {node}: {reason}",
                node=node.node,
                reason=str(e),
            )
            return None
        self.minted += 1
        # renewed once two thirds of its (possibly clamped) life are gone
        renewAt = now + (notAfter - now) * 2 / 3
        return MintedCertificate(
            node.node, node.ips, X509.from_cryptography(certificate), pkey, renewAt
        )

    def _leafKey(self, now: float) -> tuple[ec.EllipticCurvePrivateKey, PKey]:
        """
        The leaf key of the generation in force: a fresh ECDSA P-256 key
        (13 us to make, the cheapest to handshake with) every third of a
        lifetime.
        """
        if self._generation is None or now >= self._generation[2]:
            key = ec.generate_private_key(ec.SECP256R1())
            pkey = PKey.from_cryptography_key(key)
            self._generation = (key, pkey, now + self.lifetime / 3)
        key, pkey, _ = self._generation
        return key, pkey
