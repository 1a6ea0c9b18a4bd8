# -*- test-case-name: tests.tls.test_upstream -*-
"""
TLS from the HTTPS proxy listener to a node's kubelet (the https policy),
resuming the sessions of earlier connections to the same destination.

kube-apiserver opens a new connection for every exec, attach, port-forward
and log stream, and the HTTPS proxy listener opens one towards the kubelet
for each: without resumption each pays a full handshake on both ends (our
certificate signed, the kubelet's chain and name checked, in Python).  A
resumed one skips all of that, so it is allowed only where it is as good as
the check it skips (L{twisted_tunnel.tls.sessions}):

  - a session is offered only to the destination its full handshake
    verified: the dialed name the kubelet's certificate was checked
    against, the node whose tunnel carries it, and the host and port the
    agent dials; never to another node;
  - only within L{SESSION_MAX_AGE} of that check, however many
    resumptions lie between;
  - only with the credentials (trust root, our certificate) it was made
    with: a rotation retires the whole cache;
  - and only a session whose handshake completed, after the kubelet's
    certificate passed (a handshake that failed leaves nothing to resume,
    so a man in the middle that was refused once is not let in later).

Hostname checking is done here, in the verify callback, with
C{service_identity} (as Twisted's C{optionsForClientTLS} does): the
connections are made from one OpenSSL context for all nodes, whose info
callback this module owns, rather than from one context per node address.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache

from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import Interface, implementer

from .failures import recordingVerify, recordVerifyFailure
from .sessions import ClientSessions, Kept

__all__ = ["IDestinationTLS", "NodeTLS", "UpstreamTLS"]

#: How many node addresses' creators are kept (each a few small objects;
#: the OpenSSL context is shared).
NODE_CREATORS = 4096

#: OpenSSL's name for the state in which a client reads a NewSessionTicket
#: (C{TLS_ST_CR_SESSION_TICKET}).  In TLS 1.3 tickets come after the
#: handshake, and the session becomes resumable only once one was read:
#: the info callback sees this state, then the end of that message.
_TICKET_STATE = b"SSLv3/TLS read server session ticket"


class IDestinationTLS(Interface):
    """A TLS client connection creator that can resume sessions, per destination."""

    def forDestination(node: str, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        """
        The creator for connections that reach C{host}:C{port} as dialed
        by C{node}'s agent: it offers (and keeps) sessions of that exact
        destination only.
        """


class UpstreamTLS:
    """
    TLS towards nodes for one set of credentials (built by
    L{twisted_tunnel.tls.proxyClientOptions}): a creator per dialed node
    address, all sharing one OpenSSL context and one L{ClientSessions}
    cache.

    @param context: the client context: our certificate, and with
        C{verify} the trust store that kubelets' certificates must chain to.
    @param verify: check the kubelet's certificate against the trust store
        and the dialed address.
    @param protocols: what to offer in ALPN.
    @param clock: monotonic seconds, for the sessions' age.
    """

    def __init__(
        self,
        context: SSL.Context,
        *,
        verify: bool,
        protocols: Sequence[bytes] = (),
        clock: Callable[[], float] = time.monotonic,
        sessions: ClientSessions | None = None,
    ) -> None:
        self.context = context
        self.verify = verify
        self.protocols = list(protocols)
        self.clock = clock
        self.sessions = sessions if sessions is not None else ClientSessions(clock=clock)
        self._forHost = lru_cache(maxsize=NODE_CREATORS)(self._nodeTLS)

    def __call__(self, host: str) -> NodeTLS:
        """The creator for connections to node address (or name) C{host}."""
        return self._forHost(host)

    def retire(self) -> None:
        """These credentials were replaced: resume nothing made with them any more."""
        self.sessions.retire()

    def _nodeTLS(self, host: str) -> NodeTLS:
        return NodeTLS(self, host)


@implementer(IOpenSSLClientConnectionCreator, IDestinationTLS)
class NodeTLS:
    """
    Client TLS to one node address: SNI for a name (none for an IP literal,
    as the RFCs require), and with C{verify} the kubelet's certificate
    must be valid for C{host}.  Used as is, every connection does a full
    handshake; L{forDestination} gives one that resumes.
    """

    def __init__(self, upstream: UpstreamTLS, host: str) -> None:
        self.upstream = upstream
        self.host = host
        self._serverName: bytes | None = None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            self.isIP = False
            try:
                self._serverName = host.encode("idna")
            except UnicodeError:
                pass  # no SNI for what is no DNS name; the name check refuses it
        else:
            self.isIP = True

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.connection(None)

    def forDestination(self, node: str, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        return _Resuming(self, (self.host, node, host, port))

    def connection(self, key: Hashable | None) -> SSL.Connection:
        """
        A new client connection; with C{key}, it offers the session kept
        for C{key} (if any) and keeps the one it ends up with.
        """
        upstream = self.upstream
        connection = SSL.Connection(upstream.context, None)
        # per connection: Twisted's context sets only the server's ALPN callback
        if upstream.protocols:
            connection.set_alpn_protos(upstream.protocols)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        handshake = _Handshake(self, key)
        if key is not None:
            kept = upstream.sessions.get(key)
            if kept is not None:
                connection.set_session(kept.session)
                handshake.offered = kept
                handshake.verifiedAt = kept.verifiedAt
            connection.set_info_callback(handshake.info)
        if upstream.verify:
            connection.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, handshake.verify
            )
        return connection

    def checkName(self, certificate: X509) -> str | None:
        """Why C{certificate} is not valid for C{host}, or C{None} if it is."""
        try:
            if self.isIP:
                verify_certificate_ip_address(certificate.to_cryptography(), self.host)
            else:
                verify_certificate_hostname(certificate.to_cryptography(), self.host)
        except Exception as e:  # a mismatch, or a certificate that cannot be read
            return f"{type(e).__name__}: {e}"
        return None


@implementer(IOpenSSLClientConnectionCreator)
class _Resuming:
    """L{NodeTLS} for one destination (L{NodeTLS.forDestination})."""

    def __init__(self, node: NodeTLS, key: Hashable) -> None:
        self.node = node
        self.key = key

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return self.node.connection(self.key)


class _Handshake:
    """
    One connection's handshake, as OpenSSL reports it through the verify
    and info callbacks.

    @ivar verifiedAt: when the kubelet's certificate was last checked for
        the session this connection ends up with: now, if this handshake
        checked it; the offered session's time, if it resumed that one.
    @ivar done: the handshake completed (OpenSSL's C{HANDSHAKE_DONE}).
    """

    def __init__(self, node: NodeTLS, key: Hashable | None) -> None:
        self.node = node
        self.key = key
        self.offered: Kept | None = None
        self.verifiedAt: float | None = None
        self.done = False
        self.ticket = False

    def verify(
        self, connection: SSL.Connection, certificate: X509, errno: int, depth: int, ok: int
    ) -> bool:
        """
        OpenSSL's verdict stands; the kubelet's own certificate must also
        name the host.  A refusal is recorded (L{recordVerifyFailure}) for
        the answer the proxy's client gets.
        """
        if not ok or depth != 0:
            return recordingVerify(connection, certificate, errno, depth, ok)
        reason = self.node.checkName(certificate)
        if reason is not None:
            recordVerifyFailure(
                connection,
                certificate,
                depth,
                check=f"does not name {self.node.host}, the address dialed",
            )
            return False
        self.verifiedAt = self.node.upstream.clock()
        return True

    def info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        """
        Keep the session once it is resumable: at the end of a TLS 1.2
        handshake, and after each TLS 1.3 NewSessionTicket.
        """
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self.done = True
            if self.verifiedAt is None and not self.node.upstream.verify:
                # nothing to check, so the age counts from the first handshake
                self.verifiedAt = self.node.upstream.clock()
            if connection.get_protocol_version_name() != "TLSv1.3":
                self.keep(connection)
        elif not self.done:
            if where & SSL.SSL_CB_ALERT and self.offered is not None:
                # a server that chokes on the session we offered: offer it no more
                self.node.upstream.sessions.discard(self.key, self.offered)
                self.offered = None
        elif where & SSL.SSL_CB_LOOP:
            self.ticket = self.ticket or connection.get_state_string() == _TICKET_STATE
        elif self.ticket and where & SSL.SSL_CB_EXIT:
            self.ticket = False
            self.keep(connection)

    def keep(self, connection: SSL.Connection) -> None:
        """Keep this connection's session for its destination, if verified (see L{verifiedAt})."""
        session = connection.get_session()
        if session is None or self.verifiedAt is None or self.key is None:
            return
        self.node.upstream.sessions.put(self.key, session, self.verifiedAt)
