# -*- test-case-name: tests.tls.test_tls -*-
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
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from attrs import evolve, field, frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey, X509Store, X509StoreContext, X509StoreContextError
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

from twisted_tunnel._text import printable
from twisted_tunnel.errors import CredentialsError
from twisted_tunnel.tls.certs import (
    NODE_COMMON_NAME_PREFIX,
    NODE_ORGANIZATION,
    PRIVATE_KEY_TYPES,
    PrivateKey,
    isNodeName,
)
from twisted_tunnel.tls.upstream import IDestinationTLS, UpstreamTLS

if TYPE_CHECKING:
    from twisted_tunnel.tls.clientnames import ClientNames

__all__ = [
    "MAX_SERVING_SESSION_LIFETIME",
    "NODE_COMMON_NAME_PREFIX",
    "Credentials",
    "IDestinationTLS",
    "PeerIdentity",
    "UpstreamTLS",
    "agentOptions",
    "proxyClientOptions",
    "proxyServingOptions",
    "refuseNodeIdentity",
    "enableReleaseBuffers",
    "identityOfCertificate",
    "loadCredentials",
    "makeCredentials",
    "peerIdentity",
    "serverOptions",
    "verifyChain",
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
    @ivar filesDigest: The digest of those files' contents as they were read
        (L{twisted_tunnel.files.contentsDigest}), for a rotation watcher to
        compare with; C{None} when they were not loaded from files.
    """

    authority: list[Certificate]
    certificate: PrivateCertificate
    caPath: str = ""
    certPath: str = ""
    keyPath: str = ""
    chain: tuple[Certificate, ...] = ()
    filesDigest: bytes | None = None

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
    """
    Read a whole credentials file, or explain in one line why it cannot be read.

    Only a regular file of at most 1 MiB (a Secret's limit) is read, with
    L{twisted_tunnel.files.readFile}: this runs on the reactor thread when a
    rotation is picked up, where a FIFO swapped in under C{..data} would
    block it and C{/dev/zero} would be read until memory ran out.
    """
    from twisted_tunnel.files import FileRefused, readFile

    try:
        return readFile(path)
    except FileNotFoundError:
        reason = "no such file"
    except FileRefused as e:
        reason = f"{e.strerror}; a certificate or key file is expected"
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
    others may read is accepted, with a warning in the log.  C{certPath} and
    C{keyPath} may name the same file, holding the certificates and the key
    (as the kubelet keeps its client certificate): it is then read once.

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
    caData = _readFile(caOption, caPath)
    authority = _loadCertificates(caOption, caPath, caData)
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

    certData = _readFile(certOption, certPath)
    certificates = _loadCertificates(certOption, certPath, certData)
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

    # One file with both (the kubelet's kubelet-client-current.pem) is read
    # once: a symlink repointed between two reads would pair the old
    # certificate with the new key.
    keyData = certData if keyPath == certPath else _readFile(keyOption, keyPath)
    key = _loadKey(keyOption, keyPath, keyData)
    if _publicKeyDER(key) != _publicKeyDER(leaf):
        raise CredentialsError(
            f"{keyOption} {keyPath}: private key does not match the certificate "
            f"in {certOption} {certPath}"
        )
    _warnIfExposed(keyOption, keyPath)

    credentials = makeCredentials(
        authority,
        leaf,
        key,
        chain=certificates[1:],
        caPath=caPath,
        certPath=certPath,
        keyPath=keyPath,
    )
    from twisted_tunnel.files import contentsDigest

    # what was read, for the rotation watcher: a file replaced after its
    # read is a change, whenever the watcher starts
    digest = contentsDigest({caPath: caData, certPath: certData, keyPath: keyData})
    return evolve(credentials, filesDigest=digest)


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
    _recordFailures(options.getContext())
    return options


def _recordFailures(context: SSL.Context) -> None:
    """
    Record why a peer's certificate is refused, for the log line
    (L{twisted_tunnel.tls.failures}).
    """
    from .failures import recordingContext

    recordingContext(context)


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


#: The longest C{proxyServingOptions} lets a client resume a session, in
#: seconds: a resumed handshake checks no certificate, so a session must
#: not outlive by much the trust it was made under.
MAX_SERVING_SESSION_LIFETIME = 3600


def proxyServingOptions(
    creds: Credentials,
    *,
    sessionLifetime: int = 0,
    presentCertificate: bool = True,
    clientNames: ClientNames | None = None,
) -> CertificateOptions:
    """
    TLS options for the HTTPS proxy listener, which kube-apiserver takes for
    the kubelet: it presents C{creds.certificate} (C{--proxy-serving-cert})
    and offers only HTTP/1.1 in ALPN, as the requests are relayed as
    HTTP/1.1.

    A client must present a certificate signed by one of C{creds.authority}
    (C{--proxy-serving-client-ca}, by default C{--ca}), as a kubelet demands
    of kube-apiserver, and never a node's (L{refuseNodeIdentity}): the
    listener lends out the proxy client certificate that the kubelets
    authorize, so an anonymous client, or an edge node holding an agent
    certificate from the same CA, must not get to use it.  Both are refused
    in the handshake, before any HTTP is read.

    By default no session cache or tickets, as for L{serverOptions}: every
    connection checks a certificate.  With C{sessionLifetime} (seconds,
    C{--proxy-serving-session-lifetime}, opt-in: kube-apiserver never
    resumes, docs/security.md), a client may resume for that long after a
    full handshake, from session tickets only (TLS 1.3 and 1.2): nothing is
    kept in the listener's memory, a ticket is issued only after a handshake
    that passed every check above (a node's certificate never gets one),
    and the tickets' keys belong to this context, which a rotation of any
    of C{creds} replaces, so no session survives a new client CA.

    @param presentCertificate: C{False} leaves the certificate out of the
        context, for L{twisted_tunnel.tls.serving}, which sets one per
        connection.
    @param clientNames: with it, only the clients it names get in
        (C{--proxy-serving-client-name}; L{twisted_tunnel.tls.clientnames}),
        also checked in the handshake.
    @raise ValueError: if C{sessionLifetime} is negative or above
        L{MAX_SERVING_SESSION_LIFETIME}.
    """
    if not 0 <= sessionLifetime <= MAX_SERVING_SESSION_LIFETIME:
        raise ValueError(
            f"session lifetime {sessionLifetime} s is not between 0 (off) and "
            f"{MAX_SERVING_SESSION_LIFETIME}"
        )
    options = CertificateOptions(
        trustRoot=trustRootFromCertificates(creds.authority),
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        acceptableProtocols=HTTP_1_1,
        # Stateless tickets need no session cache; a cache would keep every
        # client's session (and certificate) in memory.
        enableSessions=False,
        enableSessionTickets=sessionLifetime > 0,
        **(_ownCertificateOptions(creds) if presentCertificate else {}),
    )
    context = options.getContext()
    enableReleaseBuffers(context)
    if clientNames is None:
        context.set_verify(context.get_verify_mode(), _refuseNodeCertificates)
    else:
        clientNames.restrict(context, _refuseNodeCertificates)
    if sessionLifetime:
        context.set_timeout(sessionLifetime)
    return options


def refuseNodeIdentity(identity: PeerIdentity | None) -> str | None:
    """
    The rule of every door that serves kube-apiserver and other clients (the
    CONNECT door over TLS, the HTTPS proxy listener): why a client holding
    C{identity} is refused, or C{None} to let it in.

    A node's certificate (C{CN=system:node:<name>} or C{O=system:nodes}, the
    kubelet convention agents follow) is refused: agents' certificates come
    from the same CA as kube-apiserver's, and prove only which node their
    holder may carry.  A stolen edge node's key must not become a way to
    reach every other node.
    """
    if identity is None:
        return "no client certificate"
    if identity.isNodeCertificate():
        return f"{identity.describe()} is an agent's certificate; agents may not use this door"
    return None


def _refuseNodeCertificates(
    connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
) -> bool:
    """
    OpenSSL's verify callback for the HTTPS proxy listener: what OpenSSL
    verified stays verified, and the client's own certificate (depth 0)
    must also pass L{refuseNodeIdentity}.
    """
    from .failures import recordingVerify, recordVerifyFailure

    if not ok or depth != 0:
        return recordingVerify(connection, certificate, errno, depth, ok)
    try:
        reason = refuseNodeIdentity(identityOfCertificate(certificate.to_cryptography()))
    except Exception as e:  # an unreadable certificate is refused, never let in
        reason = f"unreadable client certificate ({type(e).__name__})"
    if reason is None:
        return True
    recordVerifyFailure(connection, certificate, depth, check=reason)
    peer: Any = getattr(connection.get_app_data(), "getPeer", lambda: None)()
    _log.debug(
        "HTTPS proxy listener: refused the TLS client {peer}: {reason}",
        peer=f"{peer.host}:{peer.port}" if hasattr(peer, "host") else "?",
        reason=reason,
    )
    return False


def proxyClientOptions(
    creds: Credentials,
    *,
    verify: bool,
    clock: Callable[[], float] = time.monotonic,
) -> UpstreamTLS:
    """
    TLS towards a node for the https policy: present C{creds.certificate}
    (C{--proxy-client-cert}, the identity the kubelet authorizes) and, when
    C{verify}, check the kubelet's certificate against C{creds.authority}
    (C{--proxy-client-ca}) for the address dialed.  Without it, like
    kube-apiserver without C{--kubelet-certificate-authority}, the kubelet
    is not verified.  HTTP/1.1 only in ALPN, as the requests are relayed
    as such.

    Connections made through L{IDestinationTLS.forDestination} resume the
    sessions of earlier ones to the same destination (see
    L{twisted_tunnel.tls.upstream}); a rotation must L{UpstreamTLS.retire}
    the options it replaces.

    @param clock: monotonic seconds, for the age of sessions.
    @return: the connection creator to use for a given dialed host.
    """
    trust: dict[str, Any] = (
        {"trustRoot": trustRootFromCertificates(creds.authority)} if verify else {"verify": False}
    )
    options = CertificateOptions(
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        # TLS 1.2 servers (Go's among them) resume only from tickets; TLS
        # 1.3 ones send theirs whatever this says.
        enableSessionTickets=True,
        **trust,
        **_ownCertificateOptions(creds),
    )
    return UpstreamTLS(options.getContext(), verify=verify, protocols=HTTP_1_1, clock=clock)


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
    @ivar chain: The certificates the identity was proven with, leaf first:
        the chain the TLS handshake verified (up to the trust anchor) when
        there is one, so that the server can check it again when its trust
        changes (L{verifyChain}) and close the tunnel when any of them
        expires (L{expires}).  Empty for an identity made by hand.
    """

    commonName: str | None
    dnsNames: tuple[str, ...] = ()
    ipAddresses: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    # which certificate carried the identity: for logs, not part of who it is
    serial: int | None = field(default=None, eq=False)
    notAfter: datetime.datetime | None = field(default=None, eq=False)
    chain: tuple[x509.Certificate, ...] = field(default=(), eq=False, repr=False)

    def nodeName(self) -> str | None:
        """
        The node named by a C{system:node:<name>} common name, or C{None}.

        Only the common name counts here, as for Kubernetes' node authorizer:
        a DNS subjectAltName alone does not make a node certificate.  The
        name must be a valid node name exactly as written (L{isNodeName}:
        lower-case DNS-1123, not an IP literal); C{system:node:EDGE-1} names
        no node, rather than C{edge-1}.
        """
        cn = self.commonName
        if cn is None or not cn.startswith(NODE_COMMON_NAME_PREFIX):
            return None
        name = cn[len(NODE_COMMON_NAME_PREFIX) :]
        return name if isNodeName(name) else None

    def isNodeCertificate(self) -> bool:
        """
        Does this certificate claim a node identity at all?

        That is a C{system:node:} common name (valid node name or not) or
        the C{system:nodes} organization.  The doors (CONNECT, the HTTPS
        listener) refuse such certificates: a node's certificate is for its
        own tunnel, never a way to reach other nodes.  Broader than
        L{carriesNode} on purpose: a malformed node certificate is no
        agent, and no client either.
        """
        cn = self.commonName or ""
        return cn.startswith(NODE_COMMON_NAME_PREFIX) or NODE_ORGANIZATION in self.organizations

    def carriesNode(self, name: str) -> bool:
        """
        May the holder of this certificate carry the traffic of node C{name}?

        Only if it is exactly a Kubernetes node client certificate for it:
        common name C{system:node:<name>} and organization C{system:nodes},
        the kubelet convention (L{whyNotNode} says why not).
        """
        return self.whyNotNode(name) is None

    def whyNotNode(self, name: str) -> str | None:
        """
        Why the holder of this certificate may not carry node C{name}'s
        traffic, in words for a log line; C{None} if it may.

        Names compare exactly, with no case or Unicode folding: Kubernetes
        node names are exact lower-case DNS-1123 names, and anything else
        (C{EDGE-1}, C{edge-\u212a} with a Kelvin sign) is refused rather than
        taken for another spelling of a node.  A DNS subjectAltName does
        not count: C{CN=edge-1-ops} with C{DNS:edge-1} is not edge-1's agent.
        """
        if not isNodeName(name):
            return f"{name!r} is not a valid node name"
        cn = self.commonName
        if cn is None or not cn.startswith(NODE_COMMON_NAME_PREFIX):
            return (
                f"the certificate ({self.describe()}) is not a node certificate "
                f"(CN={NODE_COMMON_NAME_PREFIX}<node>, O={NODE_ORGANIZATION})"
            )
        if cn != NODE_COMMON_NAME_PREFIX + name:
            return f"the certificate is for {cn!r}, not {NODE_COMMON_NAME_PREFIX}{name}"
        if NODE_ORGANIZATION not in self.organizations:
            return (
                f"the certificate (CN={cn}) lacks O={NODE_ORGANIZATION}, which every node "
                "certificate carries"
            )
        return None

    def expires(self) -> datetime.datetime | None:
        """
        When the identity stops being proven: the earliest end of validity
        of L{chain} (the leaf, an intermediate or the trust anchor),
        else L{notAfter}; C{None} if unknown.
        """
        if self.chain:
            return min(c.not_valid_after_utc for c in self.chain)
        return self.notAfter

    def certificate(self) -> str:
        """The certificate's serial and expiry, for logs: C{serial 0x1f.., valid until 2027-..}."""
        serial = f"serial {self.serial:#x}" if self.serial is not None else "no serial"
        until = f", valid until {self.notAfter:%Y-%m-%d %H:%M}Z" if self.notAfter else ""
        return serial + until

    def describe(self) -> str:
        """
        A short description, for logs: C{node edge-1} or C{CN=kube-apiserver};
        one printable line, since whoever got the certificate issued chose
        its names (a newline or a terminal escape in a CN is escaped).
        """
        node = self.nodeName()
        if node is not None:
            described = f"node {node}"
        elif self.commonName is not None:
            described = f"CN={self.commonName}"
        elif self.dnsNames:
            described = f"DNS:{self.dnsNames[0]}"
        elif self.ipAddresses:
            described = f"IP:{self.ipAddresses[0]}"
        else:
            described = "anonymous certificate"
        return printable(described, 200)


def identityOfCertificate(
    certificate: x509.Certificate, chain: Sequence[x509.Certificate] = ()
) -> PeerIdentity:
    """
    Read the identity out of a certificate.

    Used for the peer's certificate (L{peerIdentity}) and for our own: the
    agent takes its default node name from its certificate.

    @param chain: the chain C{certificate} was verified with, C{certificate}
        first (L{PeerIdentity.chain}); by default just C{certificate}.
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
        chain=tuple(chain) or (certificate,),
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
    return identityOfCertificate(peer, _verifiedChain(tls, peer))


def _verifiedChain(tls: ISSLTransport, leaf: x509.Certificate) -> list[x509.Certificate]:
    """
    The chain the handshake verified C{leaf} with, leaf first, trust anchor
    last (OpenSSL's C{SSL_get0_verified_chain}); just C{[leaf]} when the
    transport cannot tell.  It costs nothing: the handshake built it.
    """
    getHandle = getattr(tls, "getHandle", None)
    handle = getHandle() if getHandle is not None else None
    verified = getattr(handle, "get_verified_chain", None)
    chain = verified(as_cryptography=True) if verified is not None else None
    if not chain or chain[0] != leaf:
        return [leaf]
    return list(chain)


def verifyChain(
    chain: Sequence[x509.Certificate],
    authority: Sequence[Certificate],
    when: datetime.datetime,
) -> str | None:
    """
    Would C{chain} (leaf first, as in L{PeerIdentity.chain}) pass a TLS
    handshake against C{authority} at C{when}?  For tunnels already up when
    the trust changes (a rotated C{--ca} bundle): the handshake checked the
    chain against the trust of its day only.

    This is OpenSSL's own verification (C{X509_verify_cert}, through
    pyOpenSSL's C{X509StoreContext}), as in the handshake, so that a chain
    passes here exactly when a handshake would pass it: everything after
    the leaf goes in as untrusted intermediates, the anchor must be in
    C{authority}.  The leaf's purpose (clientAuth) is not checked again: it
    is part of the certificate, which has not changed since the handshake.

    @return: why it would not pass, in OpenSSL's words, or C{None} if it would.
    """
    if not chain:
        return "no certificate to verify"
    store = X509Store()
    for ca in authority:
        store.add_cert(ca.original)
    store.set_time(when)
    context = X509StoreContext(
        store,
        X509.from_cryptography(chain[0]),
        [X509.from_cryptography(c) for c in chain[1:]],
    )
    try:
        context.verify_certificate()
    except X509StoreContextError as e:
        return str(e)
    return None
