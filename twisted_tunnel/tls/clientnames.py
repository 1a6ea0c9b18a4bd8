# -*- test-case-name: tests.tls.test_clientnames -*-
"""
Allowlists of client names for the doors that serve kube-apiserver and its
kin: the HTTPS proxy listener (C{--proxy-serving-client-name}) and the
CONNECT door over TLS (C{--connect-client-name}).

Why a CA is not enough: the HTTPS proxy listener lends kube-apiserver's
kubelet client identity (C{--proxy-client-cert}) to whoever it lets in, and
the CONNECT door reaches every node.  Both admit any certificate their CA
signed, except nodes' (L{refuseNodeIdentity<twisted_tunnel.tls.refuseNodeIdentity>}).
On kubeadm the CA of kube-apiserver's kubelet client certificate is the
cluster CA, which also signs every user's certificate and every one the CSR
API approves: any such user would reach every kubelet as kube-apiserver.
With an allowlist only the named clients get in.

What a name matches, exactly: the client certificate's subject common name
(the user name Kubernetes takes from a certificate), or one of its DNS
subjectAltNames (cert-manager often issues certificates with no common
name), compared as strings: exact, case-sensitive, no wildcards, no
organization.  The check runs in the TLS handshake, after OpenSSL verified
the chain, on the client's own certificate: a refused client gets no
byte of HTTP, and the operator one log line with the certificate's subject
and issuer (rate-limited: a client in a loop cannot flood the log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from .._logthrottle import LogThrottle
from . import PeerIdentity, identityOfCertificate
from .failures import nameLine

__all__ = ["ClientNames", "VerifyCallback", "clientName"]

#: OpenSSL's verify callback, as pyOpenSSL calls it:
#: C{(connection, certificate, errno, depth, ok) -> bool}.
VerifyCallback = Callable[[SSL.Connection, X509, int, int, int], bool]

#: The longest name accepted: a DNS name's limit.
MAX_NAME_LENGTH = 253

_NODE_PREFIX = "system:node:"


def clientName(text: str) -> str:
    """
    Check one name given to C{--proxy-serving-client-name} or
    C{--connect-client-name}.

    @raise ValueError: empty, too long, with spaces or control characters,
        a wildcard (names match exactly), or a node's name (those are
        refused whatever the list says).
    """
    if not text:
        raise ValueError("an empty name")
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"{text[:40]!r}...: longer than {MAX_NAME_LENGTH} characters")
    if not text.isprintable() or any(c.isspace() for c in text):
        raise ValueError(f"{text[:60]!r} has spaces or control characters")
    if "*" in text:
        raise ValueError(f"{text[:60]!r}: names match exactly; there are no wildcards")
    if text.startswith(_NODE_PREFIX):
        raise ValueError(
            f"{text[:60]!r} is a node's name; node certificates are always refused here"
        )
    return text


def _subjectAndIssuer(certificate: x509.Certificate | None) -> tuple[str, str]:
    if certificate is None:
        return "?", "?"
    return nameLine(certificate.subject), nameLine(certificate.issuer)


class ClientNames:
    """
    The client names one door admits, and the refusal of the others.

    @ivar option: the option that named them, for log lines.
    @ivar door: what the door is called in log lines.
    @ivar names: the names admitted (see the module docstring).
    """

    log = Logger()

    def __init__(
        self,
        option: str,
        door: str,
        names: Iterable[str],
        clock: IReactorTime,
        throttle: LogThrottle | None = None,
    ) -> None:
        self.option = option
        self.door = door
        self.names = frozenset(names)
        if not self.names:
            raise ValueError(f"{option}: no name given")
        self._throttle = throttle if throttle is not None else LogThrottle(clock)

    def describe(self) -> str:
        """The names, sorted, for the start-up line."""
        return ", ".join(sorted(self.names))

    def whyRefused(self, identity: PeerIdentity) -> str | None:
        """Why a client with C{identity} is not admitted, or C{None} if it is."""
        if identity.commonName in self.names:
            return None
        if any(name in self.names for name in identity.dnsNames):
            return None
        return f"{identity.describe()} is not named by {self.option}"

    def admits(self, certificate: x509.Certificate, peer: str) -> bool:
        """
        Whether the client at C{peer} presenting C{certificate} is admitted;
        if not, say so in one (rate-limited) line.
        """
        try:
            reason = self.whyRefused(identityOfCertificate(certificate))
        except Exception as e:  # an unreadable certificate is refused, never let in
            reason = f"unreadable client certificate ({type(e).__name__})"
        if reason is None:
            return True
        subject, issuer = _subjectAndIssuer(certificate)
        self._throttle.emit(
            self.log,
            LogLevel.warn,
            "{door}: refused the TLS client {peer}: {reason} (subject {subject}, "
            "issuer {issuer}); admitted: {admitted}",
            key=self.option,
            door=self.door,
            peer=peer,
            reason=reason,
            subject=subject,
            issuer=issuer,
            admitted=self.describe(),
        )
        return False

    def verifier(self, inner: VerifyCallback | None = None) -> VerifyCallback:
        """
        An OpenSSL verify callback: C{inner}'s verdict (by default OpenSSL's
        own), and for the client's own certificate (depth 0) the names.
        """

        def verify(
            connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
        ) -> bool:
            if inner is not None:
                if not inner(connection, certificate, errno, depth, ok):
                    return False
            elif not ok:
                return False
            if depth != 0:
                return True
            return self.admits(certificate.to_cryptography(), _peerOf(connection))

        return verify

    def restrict(self, context: SSL.Context, inner: VerifyCallback | None = None) -> None:
        """Make C{context} (one that requires client certificates) admit only these names."""
        context.set_verify(context.get_verify_mode(), self.verifier(inner))


def _peerOf(connection: SSL.Connection) -> str:
    """The client's address, as C{host:port}, from the TLS protocol pyOpenSSL holds."""
    peer: Any = getattr(connection.get_app_data(), "getPeer", lambda: None)()
    return f"{peer.host}:{peer.port}" if hasattr(peer, "host") else "?"
