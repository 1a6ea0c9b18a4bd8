# -*- test-case-name: tests.tls.test_failures -*-
"""
Failed TLS handshakes in words: whose certificate was refused, by which
check, and what the peer's alert means.

OpenSSL reports a failed handshake as a list of tuples
(C{[('SSL routines', '', 'certificate verify failed')]}): which of the two
ends refused, which certificate, and why are not in it.  What is known is
known in the verify callback, while the handshake runs: the X509 error
number (C{X509_V_ERR_...}), the depth in the chain, and the certificate.
So:

  - every verify callback of ours records the first failure of each
    connection's verification (L{recordingVerify}, L{recordVerifyFailure}),
    kept with the connection (in a weak dictionary: nothing outlives the
    connection);
  - where the callback is not ours (the agent's, Twisted's
    C{optionsForClientTLS}, which checks the server's name in it), the
    chain the peer sent is verified again against the context's own trust
    store when the failure is described, which finds the same error;
  - L{describeTLSFailure} turns the error a connection ended with, and what
    was recorded for it, into one line: the certificate's subject and
    issuer, the check that failed (unknown CA, expired, hostname or IP not
    in it, no client certificate...), or what the peer's alert says of
    ours, always with a pointer to the operations guide (L{DOCS}).

Used by both daemons on every leg: the agent dialing the server, the
server's agent port, its HTTPS listener and CONNECT door (their clients),
and the HTTPS listener's connections to kubelets (the C{502} body).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from attrs import frozen
from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509, X509StoreContext, X509StoreContextError
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from .._text import printable

if TYPE_CHECKING:
    from .._logthrottle import LogThrottle

__all__ = [
    "DOCS",
    "VerifyFailure",
    "describeTLSFailure",
    "describeTransportFailure",
    "handleOf",
    "isTLSFailure",
    "logClientTLSFailure",
    "recordVerifyFailure",
    "recordedFailure",
    "recordingContext",
    "recordingVerify",
    "verifyErrorString",
]

#: Where an operator reads what each failure means and how to fix it.
DOCS = "docs/operations.md, 'TLS failures'"

#: The X509 verify errors operators meet, in words (OpenSSL's own string is
#: used for any other; these are clearer about what to do).
_X509_ERRORS = {
    2: "unknown CA (the issuer's certificate is not in the trusted bundle)",
    9: "not yet valid (check the clocks)",
    10: "expired",
    18: "self-signed, and not in the trusted bundle",
    19: "a self-signed CA in its chain is not in the trusted bundle",
    20: "unknown CA (the issuer's certificate is not in the trusted bundle)",
    21: "unknown CA (the issuer's certificate is not in the trusted bundle)",
    24: "its issuer is not a CA certificate",
    26: "not meant for this use (extendedKeyUsage)",
    62: "does not name the host dialed (hostname mismatch)",
    64: "does not name the IP address dialed (IP address mismatch)",
}

#: What the reasons OpenSSL gives for a failed handshake mean, first match
#: wins: (needle in the lower-cased reason, words).
_REASONS = (
    ("alert unknown ca", "the peer does not trust the CA that signed our certificate"),
    ("alert certificate expired", "the peer says our certificate has expired"),
    ("alert certificate required", "the peer requires a client certificate, and we sent none"),
    ("alert bad certificate", "the peer refused our certificate"),
    ("alert unsupported certificate", "the peer refused our certificate's type or usage"),
    ("alert certificate unknown", "the peer refused our certificate"),
    ("alert access denied", "the peer refused our certificate (access denied)"),
    ("alert decrypt error", "the peer could not check our key (a key not of the certificate?)"),
    ("did not return a certificate", "the peer sent no client certificate"),
    ("alert handshake failure", "the peer ended the handshake (nothing in common, or refused)"),
    ("alert protocol version", "no TLS version in common (1.2 or later are spoken here)"),
    ("unsupported protocol", "no TLS version in common (1.2 or later are spoken here)"),
    ("version too low", "no TLS version in common (1.2 or later are spoken here)"),
    ("no shared cipher", "no cipher in common"),
    ("wrong version number", "the peer does not speak TLS (plain HTTP to a TLS port?)"),
    ("http request", "the peer sent plain HTTP to a TLS port"),
    ("packet length too long", "the peer does not speak TLS"),
)


@frozen
class VerifyFailure:
    """
    Why one certificate of a peer's chain was refused.

    @ivar check: the check that failed, in words (e.g. C{expired}).
    @ivar depth: where in the chain: 0 for the peer's own certificate.
    @ivar subject: its subject (RFC 4514).
    @ivar issuer: its issuer (RFC 4514).
    @ivar error: OpenSSL's C{X509_V_ERR_...} number, if it was OpenSSL's
        check; C{None} for one of ours (a node's certificate at a door that
        refuses them, a kubelet's certificate for another host).
    """

    check: str
    depth: int
    subject: str
    issuer: str
    error: int | None = None

    def describe(self) -> str:
        """One clause: whose certificate, and which check it failed."""
        whose = "its certificate" if self.depth == 0 else f"a CA of its chain (depth {self.depth})"
        number = f", X509 error {self.error}" if self.error is not None else ""
        return f"{whose} {self.subject!r} issued by {self.issuer!r}: {self.check}{number}"


_recorded: WeakKeyDictionary[SSL.Connection, VerifyFailure] = WeakKeyDictionary()


def verifyErrorString(error: int) -> str:
    """The words for X509 verify error C{error}: ours, else OpenSSL's own."""
    known = _X509_ERRORS.get(error)
    if known is not None:
        return known
    try:
        from cryptography.hazmat.bindings.openssl.binding import Binding

        text = Binding.ffi.string(Binding.lib.X509_verify_cert_error_string(error))
        return str(text.decode("ascii", "replace"))
    except Exception:  # an OpenSSL binding without it
        return f"X509 verify error {error}"


def nameLine(name: x509.Name) -> str:
    """
    A certificate's subject or issuer, as one short printable line: the
    peer chose it (RFC 4514 escapes commas, not newlines or terminal
    escapes), and it goes into log lines and answers.
    """
    return printable(str(name.rfc4514_string()), 200) or "(empty)"


def _name(certificate: X509, which: str) -> str:
    """L{nameLine} of a pyOpenSSL certificate's C{subject} or C{issuer}."""
    try:
        return nameLine(getattr(certificate.to_cryptography(), which))
    except Exception:  # an unreadable certificate is still a refused one
        return "(unreadable)"


def recordVerifyFailure(
    connection: SSL.Connection,
    certificate: X509,
    depth: int,
    *,
    error: int | None = None,
    check: str | None = None,
) -> None:
    """
    Keep why C{connection}'s verification refused C{certificate}: OpenSSL's
    C{error}, or our own C{check} in words.  The first failure is kept (the
    one that decided); later ones add nothing.
    """
    if connection in _recorded:
        return
    words = check if check is not None else verifyErrorString(error or 0)
    _recorded[connection] = VerifyFailure(
        words, depth, _name(certificate, "subject"), _name(certificate, "issuer"), error
    )


def recordedFailure(connection: SSL.Connection | None) -> VerifyFailure | None:
    """What L{recordVerifyFailure} kept for C{connection}, if anything."""
    return _recorded.get(connection) if connection is not None else None


def recordingVerify(
    connection: SSL.Connection, certificate: X509, error: int, depth: int, ok: int
) -> bool:
    """
    A verify callback that changes nothing (OpenSSL's verdict stands, as
    with Twisted's own) and records a refusal (L{recordVerifyFailure}).
    """
    if not ok:
        recordVerifyFailure(connection, certificate, depth, error=error)
    return bool(ok)


def recordingContext(context: SSL.Context) -> SSL.Context:
    """C{context}, its verification recorded by L{recordingVerify}; its mode kept."""
    context.set_verify(context.get_verify_mode(), recordingVerify)
    return context


def describeTLSFailure(
    error: BaseException | None, connection: SSL.Connection | None = None
) -> str | None:
    """
    One line for a TLS failure, or C{None} if C{error} is none.

    @param error: what the connection ended with: OpenSSL's C{SSL.Error}, or
        Twisted's hostname check's C{VerificationError}.
    @param connection: the TLS connection, for what its verification
        recorded and, after a hostname mismatch, the peer's certificate.
    """
    recorded = recordedFailure(connection)
    if isinstance(error, SSL.Error):
        reasons = _reasons(error)
        lowered = reasons.lower()
        if "certificate verify failed" in lowered:
            what = "we refused the peer's certificate"
            if recorded is None:
                recorded = _verifyAgain(connection)
            detail = recorded.describe() if recorded is not None else reasons
            return f"{what}: {detail}; see {DOCS}"
        for needle, words in _REASONS:
            if needle in lowered:
                return f"{words} ({reasons}); see {DOCS}"
        if recorded is not None:
            return f"we refused the peer's certificate: {recorded.describe()}; see {DOCS}"
        return f"TLS failed: {reasons}; see {DOCS}"
    if _isVerificationError(error):
        peer = _peerCertificate(connection)
        whose = (
            f"its certificate {_name(peer, 'subject')!r} issued by {_name(peer, 'issuer')!r}"
            if peer is not None
            else "its certificate"
        )
        return (
            f"we refused the peer's certificate: {whose} does not name "
            f"{printable(_mismatched(error), 200)}, the host or IP dialed; see {DOCS}"
        )
    return None


def _verifyAgain(connection: SSL.Connection | None) -> VerifyFailure | None:
    """
    Why the chain C{connection}'s peer sent fails verification against the
    connection's trust store (OpenSSL's check again, after the fact), if
    the chain is still known.
    """
    if connection is None:
        return None
    try:
        chain = connection.get_peer_cert_chain() or []
        store = connection.get_context().get_cert_store()
        if not chain or store is None:
            return None
        X509StoreContext(store, chain[0], chain[1:]).verify_certificate()
    except X509StoreContextError as e:
        error, depth = (e.errors[0], e.errors[1]) if len(e.errors) >= 2 else (0, 0)
        certificate = e.certificate if e.certificate is not None else chain[0]
        return VerifyFailure(
            verifyErrorString(error),
            depth,
            _name(certificate, "subject"),
            _name(certificate, "issuer"),
            error,
        )
    except Exception:  # a connection already freed: say what OpenSSL said
        return None
    return None


def _reasons(error: SSL.Error) -> str:
    """The reasons in an C{SSL.Error}'s list of tuples, joined."""
    parts: list[str] = []
    for arg in error.args:
        if isinstance(arg, list):
            for item in arg:
                if isinstance(item, tuple) and item:
                    parts.append(str(item[-1]))
                else:
                    parts.append(str(item))
        else:
            parts.append(str(arg))
    return printable(", ".join(p for p in parts if p), 300) or type(error).__name__


def isTLSFailure(error: BaseException | None) -> bool:
    """Whether C{error} is a TLS failure L{describeTLSFailure} has words for."""
    return isinstance(error, SSL.Error) or _isVerificationError(error)


def _isVerificationError(error: BaseException | None) -> bool:
    try:
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover (a dependency of ours)
        return False
    return isinstance(error, VerificationError)


def _mismatched(error: BaseException | None) -> str:
    """The names or IPs a C{VerificationError} says the certificate lacks."""
    names = []
    for each in getattr(error, "errors", ()):
        identity = getattr(each, "mismatched_id", None)
        value = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if value is not None:
            names.append(str(value))
    return ", ".join(names) or "the name expected"


def _peerCertificate(connection: SSL.Connection | None) -> X509 | None:
    """The peer's certificate; on a client whose check failed, the first of its chain."""
    if connection is None:
        return None
    try:
        peer = connection.get_peer_certificate()
        if peer is None:
            chain = connection.get_peer_cert_chain()
            peer = chain[0] if chain else None
        return peer
    except Exception:  # a connection already freed
        return None


def handleOf(transport: object) -> SSL.Connection | None:
    """
    The TLS connection under C{transport} (a C{TLSMemoryBIOProtocol}, or a
    protocol wrapping one, like the client limits' wrapper), if any.
    """
    for _ in range(4):
        getHandle: Callable[[], object] | None = getattr(transport, "getHandle", None)
        if getHandle is None:
            return None
        try:
            handle = getHandle()
        except Exception:  # a closed TCP transport has no socket any more
            return None
        if isinstance(handle, SSL.Connection):
            return handle
        transport = handle
    return None


def describeTransportFailure(error: BaseException | None, transport: object) -> str | None:
    """
    L{describeTLSFailure} for a connection known by its transport (a
    C{TLSMemoryBIOProtocol}, or one wrapping it), C{None} for anything but
    a TLS failure: the HTTP engine's C{Describer}.
    """
    if not isTLSFailure(error):
        return None
    return describeTLSFailure(error, handleOf(transport))


def logClientTLSFailure(
    throttle: LogThrottle, log: Logger, door: str, peer: str, transport: object, reason: Failure
) -> bool:
    """
    One line for a client of a front door (the HTTPS proxy listener, the
    CONNECT door) whose connection ended in a TLS failure (a certificate
    refused, none sent, not TLS at all), through C{throttle}: a client
    that retries in a loop writes a few lines and a count, not a flood.

    @return: whether it was a TLS failure.
    """
    line = describeTransportFailure(reason.value, transport)
    if line is None:
        return False
    throttle.emit(
        log,
        LogLevel.warn,
        "{door}: TLS with client {peer} failed: {reason}",
        door=door,
        peer=peer,
        reason=line,
    )
    return True
