# -*- test-case-name: tests.test_tls -*-
"""
Mutual TLS for the tunnel: credentials, connection options, and peer identity.

Both daemons load their credentials once, at startup, with
L{loadCredentials}; anything wrong with a file becomes one
L{CredentialsError} line naming the option, the file and the reason, so that
the daemon can print it and exit rather than fail on the first connection
with a traceback.

L{serverOptions} makes the agent port I{require} a client certificate signed
by the configured authority (a C{trustRoot} does that in Twisted), and
L{agentOptions} makes the agent check the server's certificate against the
name or IP address it dialled (C{service_identity} does that, including for
IP address literals).  Neither side will speak anything older than TLS 1.2.

Who a peer is comes from its certificate, never from anything it says later:
L{peerIdentity} reads it off a connected transport (after the handshake, e.g.
in C{handshakeCompleted}) as a L{PeerIdentity}.  Agents follow the Kubernetes
node-client convention (C{CN=system:node:<node>}), so the server can refuse
an agent that asks to carry another node's traffic.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from attrs import field, frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, ISSLTransport
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger

from twisted_tunnel.certs import NODE_COMMON_NAME_PREFIX, PRIVATE_KEY_TYPES, PrivateKey
from twisted_tunnel.errors import CredentialsError

__all__ = [
    "NODE_COMMON_NAME_PREFIX",
    "Credentials",
    "PeerIdentity",
    "agentOptions",
    "proxyClientOptions",
    "proxyServingOptions",
    "enableReleaseBuffers",
    "identityOfCertificate",
    "loadCredentials",
    "makeCredentials",
    "peerIdentity",
    "serverOptions",
]

_log = Logger()

MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2
"""The oldest TLS version either end of a tunnel will negotiate."""


@frozen
class Credentials:
    """
    What one end of the tunnel proves itself with, and whom it trusts.

    @ivar authority: The certificates of the authorities that sign the
        other end's certificates (a CA bundle file may hold several, e.g.
        the old and the new CA while rotating).
    @ivar certificate: Our own certificate, with its private key.
    @ivar chain: Intermediate certificates sent along with C{certificate}
        (the certificates after the first one in the certificate file).
    @ivar caPath: The file C{authority} came from (for messages).
    @ivar certPath: The file C{certificate} came from.
    @ivar keyPath: The file the private key came from.
    """

    authority: list[Certificate]
    certificate: PrivateCertificate
    caPath: str = ""
    certPath: str = ""
    keyPath: str = ""
    chain: tuple[Certificate, ...] = ()

    def identity(self) -> PeerIdentity:
        """Who our own certificate says we are (e.g. the agent's default node name)."""
        return identityOfCertificate(self.certificate.original.to_cryptography())


def makeCredentials(
    authority: Sequence[x509.Certificate],
    certificate: x509.Certificate,
    key: PrivateKey,
    *,
    chain: Sequence[x509.Certificate] = (),
    caPath: str = "",
    certPath: str = "",
    keyPath: str = "",
) -> Credentials:
    """
    Make L{Credentials} from C{cryptography} objects, without any file.

    For programs that hold their certificates in memory (and for tests).
    Unlike L{loadCredentials} it checks nothing.
    """
    own = Certificate(X509.from_cryptography(certificate))
    return Credentials(
        authority=[Certificate(X509.from_cryptography(c)) for c in authority],
        certificate=PrivateCertificate.fromCertificateAndKeyPair(
            own, KeyPair(PKey.from_cryptography_key(key))
        ),
        chain=tuple(Certificate(X509.from_cryptography(c)) for c in chain),
        caPath=caPath,
        certPath=certPath,
        keyPath=keyPath,
    )


def _readFile(option: str, path: str) -> bytes:
    """Read a whole credentials file, or explain in one line why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "is a directory, not a file"
    except PermissionError:
        reason = "permission denied (cannot read the file)"
    except OSError as e:
        reason = f"cannot read the file: {e.strerror or e}"
    raise CredentialsError(f"{option} {path}: {reason}")


def _loadCertificates(option: str, path: str, data: bytes) -> list[x509.Certificate]:
    """Parse every PEM certificate in C{data}, or explain in one line why not."""
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"{option} {path}: not a PEM file (no '-----BEGIN' line)")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CredentialsError(f"{option} {path}: no certificate in this PEM file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CredentialsError(f"{option} {path}: malformed PEM certificate ({e})") from None


def _loadKey(option: str, path: str, data: bytes) -> PrivateKey:
    """Parse the PEM private key in C{data}, or explain in one line why not."""
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"{option} {path}: not a PEM file (no '-----BEGIN' line)")
    if b"PRIVATE KEY-----" not in data:
        raise CredentialsError(f"{option} {path}: no private key in this PEM file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CredentialsError(
            f"{option} {path}: the private key is encrypted; an unencrypted key is needed"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CredentialsError(f"{option} {path}: malformed PEM private key ({e})") from None
    if not isinstance(key, PRIVATE_KEY_TYPES):
        raise CredentialsError(
            f"{option} {path}: unsupported kind of private key ({type(key).__name__})"
        )
    return key


def _publicKeyDER(certificateOrKey: x509.Certificate | PrivateKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate or private key, to compare them."""
    public = certificateOrKey.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _formatTime(when: datetime.datetime) -> str:
    """A certificate date, as operators read them."""
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def loadCredentials(
    caPath: str,
    certPath: str,
    keyPath: str,
    *,
    caOption: str = "--ca",
    certOption: str = "--cert",
    keyOption: str = "--key",
    now: datetime.datetime | None = None,
) -> Credentials:
    """
    Load and check a CA bundle, a certificate and its private key from PEM files.

    This reads files with blocking IO: call it once, when the daemon starts
    (e.g. in C{makeService}), never per connection.

    The certificate file may hold intermediates after the certificate itself;
    they are sent along (L{Credentials.chain}).  A key file that group or
    others may read is accepted, with a warning in the log.

    @param caPath: The CA bundle that signs the other end's certificates.
    @param certPath: Our certificate.
    @param keyPath: Its private key (unencrypted).
    @param caOption: How the operator named C{caPath} (for messages).
    @param certOption: How the operator named C{certPath}.
    @param keyOption: How the operator named C{keyPath}.
    @param now: The time to check validity at (for tests); by default now.

    @raise CredentialsError: With one line naming the option, the file, and
        why it cannot be used: missing or unreadable, not PEM, no certificate
        or key in it, a key that does not belong to the certificate, or a
        certificate that has expired or is not yet valid.
    """
    if now is None:
        now = datetime.datetime.now(datetime.UTC)

    authority = _loadCertificates(caOption, caPath, _readFile(caOption, caPath))
    for ca in authority:
        if ca.not_valid_after_utc < now:
            # Not an error: a bundle may keep an old CA next to its successor.
            _log.warn(
                "{option} {path}: CA certificate {subject} expired on {expiry}",
                option=caOption,
                path=caPath,
                subject=ca.subject.rfc4514_string(),
                expiry=_formatTime(ca.not_valid_after_utc),
            )

    certificates = _loadCertificates(certOption, certPath, _readFile(certOption, certPath))
    leaf = certificates[0]
    if now < leaf.not_valid_before_utc:
        raise CredentialsError(
            f"{certOption} {certPath}: certificate is not valid until "
            f"{_formatTime(leaf.not_valid_before_utc)} (check the clock?)"
        )
    if leaf.not_valid_after_utc < now:
        raise CredentialsError(
            f"{certOption} {certPath}: certificate expired on "
            f"{_formatTime(leaf.not_valid_after_utc)}"
        )

    key = _loadKey(keyOption, keyPath, _readFile(keyOption, keyPath))
    if _publicKeyDER(key) != _publicKeyDER(leaf):
        raise CredentialsError(
            f"{keyOption} {keyPath}: private key does not match the certificate "
            f"in {certOption} {certPath}"
        )
    _warnIfExposed(keyOption, keyPath)

    return makeCredentials(
        authority,
        leaf,
        key,
        chain=certificates[1:],
        caPath=caPath,
        certPath=certPath,
        keyPath=keyPath,
    )


def _warnIfExposed(option: str, path: str) -> None:
    """Log a warning if group or others may access a private key file."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o077:
        _log.warn(
            "{option} {path}: private key file is accessible by group or others "
            "(mode {mode:04o}); chmod 600 it",
            option=option,
            path=path,
            mode=mode,
        )


def enableReleaseBuffers(context: SSL.Context) -> bool:
    """
    Make C{context}'s connections free their read and write buffers while idle.

    That is OpenSSL's C{SSL_MODE_RELEASE_BUFFERS}: some 34 KiB less per idle
    connection, which adds up over ten thousand agents that mostly sit idle.
    Twisted's C{CertificateOptions} already sets it on every context it makes;
    this is for contexts made some other way, and to check that it is on.

    @return: Whether the mode is now set (C{False} if this pyOpenSSL does not
        expose the flag).
    """
    flag: int | None = getattr(SSL, "MODE_RELEASE_BUFFERS", None)
    if flag is None:
        return False
    return bool(context.set_mode(flag) & flag)


def _ownCertificateOptions(creds: Credentials) -> dict[str, Any]:
    """
    The C{CertificateOptions} arguments that present C{creds.certificate}.

    They are handed over as C{cryptography} objects, not pyOpenSSL ones:
    C{CertificateOptions} only passes them on to C{Context.use_certificate}
    and friends, and pyOpenSSL deprecates its own C{X509} and C{PKey} there
    (a C{DeprecationWarning} per context).  Twisted's annotations still say
    pyOpenSSL types, hence the C{Any}.
    """
    options: dict[str, Any] = {
        "certificate": creds.certificate.original.to_cryptography(),
        "privateKey": creds.certificate.privateKey.original.to_cryptography_key(),
    }
    if creds.chain:
        options["extraCertChain"] = [c.original.to_cryptography() for c in creds.chain]
    return options


def serverOptions(creds: Credentials) -> CertificateOptions:
    """
    TLS options for the server's agent port (and other mutually authenticated front doors).

    A client must present a certificate signed by one of C{creds.authority}:
    the C{trustRoot} makes C{CertificateOptions} verify the peer and fail the
    handshake when it sends no certificate (C{VERIFY_FAIL_IF_NO_PEER_CERT}).
    No session tickets or session cache: every connection does a full
    handshake, so every connection checks a certificate.

    The OpenSSL context is built here, eagerly, rather than lazily on the
    first connection: a problem with the credentials surfaces at startup, and
    L{enableReleaseBuffers} is applied to the one cached context that
    C{CertificateOptions.getContext} hands to every connection.  (Twisted
    already sets that mode; doing it here needs no subclass reaching into
    the private C{_makeContext}, and keeps it set should Twisted ever stop.)
    """
    options = CertificateOptions(
        trustRoot=trustRootFromCertificates(creds.authority),
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        enableSessions=False,
        enableSessionTickets=False,
        **_ownCertificateOptions(creds),
    )
    enableReleaseBuffers(options.getContext())
    return options


def agentOptions(creds: Credentials, serverName: str) -> IOpenSSLClientConnectionCreator:
    """
    TLS options for an agent dialling the server at C{serverName}.

    The server's certificate must be signed by one of C{creds.authority} and
    carry C{serverName} in its subjectAltName: as a DNS name, or as an IP
    address when C{serverName} is an IP literal (then no SNI is sent, as the
    RFCs require).  The agent presents C{creds.certificate}.
    Release-buffers mode is on: Twisted sets it on every context it makes.

    The client certificate goes in through C{extraCertificateOptions} rather
    than C{clientCertificate=}, which is exactly what C{optionsForClientTLS}
    does with it, minus pyOpenSSL's deprecation warnings (see
    L{_ownCertificateOptions}).
    """
    return optionsForClientTLS(
        serverName,
        trustRoot=trustRootFromCertificates(creds.authority),
        extraCertificateOptions={
            "raiseMinimumTo": MINIMUM_TLS_VERSION,
            **_ownCertificateOptions(creds),
        },
    )


#: The HTTPS proxy listener speaks HTTP/1.1 on both of its TLS legs.
HTTP_1_1 = [b"http/1.1"]


def proxyServingOptions(
    creds: Credentials, *, requireClientCertificate: bool = False
) -> CertificateOptions:
    """
    TLS options for the HTTPS proxy listener, which kube-apiserver takes for
    the kubelet: it presents C{creds.certificate} (C{--proxy-serving-cert})
    and offers only HTTP/1.1 in ALPN, as the requests are relayed as
    HTTP/1.1.

    With C{requireClientCertificate}, a client must present a certificate
    signed by one of C{creds.authority} (C{--proxy-serving-client-ca}), as
    a kubelet would demand of kube-apiserver: the listener lends out the
    proxy client certificate, so who may use it matters.
    """
    extra: dict[str, Any] = {}
    if requireClientCertificate:
        extra["trustRoot"] = trustRootFromCertificates(creds.authority)
    options = CertificateOptions(
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        acceptableProtocols=HTTP_1_1,
        **extra,
        **_ownCertificateOptions(creds),
    )
    enableReleaseBuffers(options.getContext())
    return options


#: How many nodes' verifying TLS client contexts the https policy keeps.
PROXY_CLIENT_CONTEXTS = 4096


def proxyClientOptions(creds: Credentials, *, verify: bool) -> Callable[[str], Any]:
    """
    TLS towards a node for the https policy: present C{creds.certificate}
    (C{--proxy-client-cert}, the identity the kubelet authorizes) and, when
    C{verify}, check the kubelet's certificate against C{creds.authority}
    (C{--proxy-client-ca}) for the address dialed.  Without it, like
    kube-apiserver without C{--kubelet-certificate-authority}, the kubelet
    is not verified.

    @return: the connection creator to use for a given dialed host.
    """
    if verify:
        trustRoot = trustRootFromCertificates(creds.authority)
        own = _ownCertificateOptions(creds)

        # One creator (and so one OpenSSL context, with its key, certificate
        # and trust store loaded) per node address, not one per request:
        # building them is far dearer than the request itself.
        @lru_cache(maxsize=PROXY_CLIENT_CONTEXTS)
        def verified(host: str) -> IOpenSSLClientConnectionCreator:
            return optionsForClientTLS(
                host,
                trustRoot=trustRoot,
                acceptableProtocols=HTTP_1_1,
                extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS_VERSION, **own},
            )

        return verified
    shared = CertificateOptions(
        verify=False,
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        acceptableProtocols=HTTP_1_1,
        **_ownCertificateOptions(creds),
    )
    return lambda host: shared


@frozen
class PeerIdentity:
    """
    Who a certificate says its holder is.

    @ivar commonName: The subject common name, if any.
    @ivar dnsNames: The DNS names in its subjectAltName.
    @ivar ipAddresses: The IP addresses in its subjectAltName, as text.
    @ivar organizations: The subject organizations (Kubernetes groups).
    @ivar serial: The certificate's serial number, for logs (which one is in use).
    @ivar notAfter: When the certificate expires, for logs.
    """

    commonName: str | None
    dnsNames: tuple[str, ...] = ()
    ipAddresses: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    # which certificate carried the identity: for logs, not part of who it is
    serial: int | None = field(default=None, eq=False)
    notAfter: datetime.datetime | None = field(default=None, eq=False)

    def nodeName(self) -> str | None:
        """
        The node named by a C{system:node:<name>} common name, or C{None}.

        Only the common name counts here, as for Kubernetes' node authorizer:
        a DNS subjectAltName alone does not make a node certificate.
        """
        cn = self.commonName
        if cn is None or not cn.startswith(NODE_COMMON_NAME_PREFIX):
            return None
        return cn[len(NODE_COMMON_NAME_PREFIX) :] or None

    def isNodeCertificate(self) -> bool:
        """Is this a node (agent) certificate, i.e. is its common name C{system:node:<name>}?"""
        return self.nodeName() is not None

    def carriesNode(self, name: str) -> bool:
        """
        May the holder of this certificate carry the traffic of node C{name}?

        Yes if the common name is C{system:node:<name>} or a DNS
        subjectAltName is C{name}; DNS names compare case-insensitively.
        """
        wanted = name.lower()
        node = self.nodeName()
        if node is not None and node.lower() == wanted:
            return True
        return any(dnsName.lower() == wanted for dnsName in self.dnsNames)

    def certificate(self) -> str:
        """The certificate's serial and expiry, for logs: C{serial 0x1f.., valid until 2027-..}."""
        serial = f"serial {self.serial:#x}" if self.serial is not None else "no serial"
        until = f", valid until {self.notAfter:%Y-%m-%d %H:%M}Z" if self.notAfter else ""
        return serial + until

    def describe(self) -> str:
        """A short description, for logs: C{node edge-1} or C{CN=kube-apiserver}."""
        node = self.nodeName()
        if node is not None:
            return f"node {node}"
        if self.commonName is not None:
            return f"CN={self.commonName}"
        if self.dnsNames:
            return f"DNS:{self.dnsNames[0]}"
        if self.ipAddresses:
            return f"IP:{self.ipAddresses[0]}"
        return "anonymous certificate"


def identityOfCertificate(certificate: x509.Certificate) -> PeerIdentity:
    """
    Read the identity out of a certificate.

    Used for the peer's certificate (L{peerIdentity}) and for our own: the
    agent takes its default node name from its certificate.
    """
    commonNames = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    organizations = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        dnsNames: list[str] = []
        ipAddresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    else:
        dnsNames = sans.get_values_for_type(x509.DNSName)
        ipAddresses = [
            address
            for address in sans.get_values_for_type(x509.IPAddress)
            if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ]
    return PeerIdentity(
        commonName=_text(commonNames[0].value) if commonNames else None,
        dnsNames=tuple(dnsNames),
        ipAddresses=tuple(str(address) for address in ipAddresses),
        organizations=tuple(_text(o.value) for o in organizations),
        serial=certificate.serial_number,
        notAfter=certificate.not_valid_after_utc,
    )


def _text(value: str | bytes) -> str:
    """A name attribute's value as text (only a few exotic attributes are bytes)."""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def peerIdentity(transport: object) -> PeerIdentity | None:
    """
    The identity in the certificate the peer of C{transport} presented.

    Call it once the handshake has completed (C{handshakeCompleted}, or any
    data received after it): before that there is no certificate yet.

    @return: C{None} if C{transport} is not a TLS transport or the peer
        presented no certificate.
    """
    tls = ISSLTransport(transport, None)
    if tls is None:
        return None
    peer = tls.getPeerCertificate()
    if peer is None:
        return None
    if isinstance(peer, X509):
        peer = peer.to_cryptography()
    if not isinstance(peer, x509.Certificate):
        return None
    return identityOfCertificate(peer)
