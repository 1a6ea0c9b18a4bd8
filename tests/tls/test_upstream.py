"""
Tests for L{twisted_tunnel.tls.upstream} and L{twisted_tunnel.tls.sessions}:
the https policy's TLS towards kubelets, resuming sessions per destination,
and the HTTPS proxy listener, which resumes none unless told to
(C{--proxy-serving-session-lifetime}), and then only from tickets.

The handshakes run in memory (L{tests.tls.test_tls.connect}, on a
L{Clock}) against kubelets made of OpenSSL server contexts that issue
tickets, as Go's servers do.  Whether a handshake was resumed is read from
OpenSSL itself (C{SSL_session_reused}, on both ends), not from our own
bookkeeping, so that these tests fail if resumption does not happen.
"""

from __future__ import annotations

import time
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from twisted.internet.ssl import CertificateOptions, TLSVersion, trustRootFromCertificates
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI
from tests.tls.test_tls import MemoryTLS, connect
from twisted_tunnel.tls import (
    MAX_SERVING_SESSION_LIFETIME,
    Credentials,
    makeCredentials,
    proxyClientOptions,
    proxyServingOptions,
)
from twisted_tunnel.tls.certs import Issued, mintCA, mintClient, mintServer
from twisted_tunnel.tls.rotation import RotatingClientOptions, RotatingServerOptions
from twisted_tunnel.tls.sessions import SESSION_MAX_AGE, ClientSessions
from twisted_tunnel.tls.upstream import IDestinationTLS

NODE_IP = "10.0.0.5"
NODE_NAME = "edge-1.example"

kubeletCA = mintCA("kubelet CA")
proxyClient = mintClient(kubeletCA, "kube-apiserver-kubelet-client")
kubeletServing = mintServer(kubeletCA, [NODE_IP, NODE_NAME])
impostorCA = mintCA("impostor CA")
impostorServing = mintServer(impostorCA, [NODE_IP, NODE_NAME])


def clientCredentials(trusting: Issued = kubeletCA, issued: Issued = proxyClient) -> Credentials:
    """The proxy client certificate, trusting C{trusting} for kubelets (C{--proxy-client-ca})."""
    return makeCredentials([trusting.certificate], issued.certificate, issued.key)


def kubelet(
    serving: Issued = kubeletServing, *, tls12: bool = False, cache: bool = True
) -> CertificateOptions:
    """
    A kubelet's TLS: its serving certificate, a client certificate of the
    kubelet CA required, and resumption on, with its own ticket keys (one
    per options object, as one per kubelet process); without C{cache},
    from tickets only, as Go's servers resume.
    """
    extra: dict[str, Any] = {"lowerMaximumSecurityTo": TLSVersion.TLSv1_2} if tls12 else {}
    return CertificateOptions(
        certificate=serving.certificate,
        privateKey=serving.key,
        trustRoot=trustRootFromCertificates(clientCredentials().authority),
        acceptableProtocols=[b"h2", b"http/1.1"],
        enableSessions=cache,
        enableSessionTickets=True,
        **extra,
    )


def reused(connection: MemoryTLS) -> tuple[bool, bool]:
    """Did OpenSSL resume the session, on the client's and on the server's side?"""
    return (
        bool(_lib.SSL_session_reused(connection.client.tls.getHandle()._ssl)),
        bool(_lib.SSL_session_reused(connection.server.tls.getHandle()._ssl)),
    )


class Upstream:
    """An L{UpstreamTLS} on a fake clock, and connections through it."""

    def __init__(self, credentials: Credentials | None = None, *, verify: bool = True) -> None:
        self.clock = Clock()
        self.tls = proxyClientOptions(
            credentials or clientCredentials(), verify=verify, clock=self.clock.seconds
        )

    def creator(
        self, dialed: str = NODE_IP, node: str = "edge-1", host: str = NODE_IP, port: int = 10250
    ) -> Any:
        return self.tls(dialed).forDestination(node, host, port)


def exchange(testCase: SynchronousTestCase, server: Any, creator: Any) -> tuple[bool, bool]:
    """
    One connection: handshake, the tickets the kubelet sends after it, then
    a clean close (OpenSSL keeps no session of a connection cut short).

    @return: L{reused}, after the handshake completed on both ends.
    """
    connection = connect(server, creator)
    testCase.assertEqual(
        (connection.client.app.handshakes, connection.server.app.handshakes), (1, 1)
    )
    result = reused(connection)
    connection.client.tls.loseConnection()
    connection.pump()
    return result


def refused(
    testCase: SynchronousTestCase, server: Any, creator: Any, *, by: str = "client"
) -> None:
    """
    The handshake fails: the side that refuses (C{by}) never completes it,
    and the client's connection is lost.  (In TLS 1.3 the client is done
    before the server has checked its certificate.)
    """
    connection = connect(server, creator)
    refusing = connection.client if by == "client" else connection.server
    testCase.assertEqual(refusing.app.handshakes, 0)
    testCase.assertIsNotNone(connection.client.app.lostReason)


class ResumptionTests(SynchronousTestCase):
    def test_tls13(self) -> None:
        """
        The second connection to a kubelet resumes the session of the first
        (from the ticket it sent after the TLS 1.3 handshake), on both ends.
        """
        upstream, server = Upstream(), kubelet()
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))
        self.assertEqual(len(upstream.tls.sessions), 1)
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))

    def test_tls12(self) -> None:
        """A TLS 1.2 kubelet resumes from its ticket too."""
        upstream, server = Upstream(), kubelet(tls12=True)
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))

    def test_tls12TicketsOnly(self) -> None:
        """
        A TLS 1.2 kubelet that keeps no sessions of its own and resumes
        only from tickets (as Go's servers do): the client asks for one
        (Twisted's default, C{OP_NO_TICKET}, would not).
        """
        upstream, server = Upstream(), kubelet(tls12=True, cache=False)
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))

    def test_theKubeletIsStillWhoItWas(self) -> None:
        """
        A resumed connection carries the identities of the full handshake:
        the kubelet sees the proxy client certificate, and the proxy the
        kubelet's (what C{peerIdentity} and the kubelet's authorizer read).
        """
        upstream, server = Upstream(), kubelet()
        exchange(self, server, upstream.creator())
        connection = connect(server, upstream.creator())
        self.assertEqual(reused(connection), (True, True))
        assert connection.server.app.identity is not None
        self.assertEqual(
            connection.server.app.identity.commonName, "kube-apiserver-kubelet-client"
        )
        assert connection.client.app.identity is not None
        self.assertIn(NODE_IP, connection.client.app.identity.ipAddresses)

    def test_onlyTheSameDestination(self) -> None:
        """
        A session is offered only where its full handshake went: another
        node, agent host, port or dialed name (even one the same
        certificate is valid for) does its own full handshake.
        """
        upstream, server = Upstream(), kubelet()
        exchange(self, server, upstream.creator())
        for other in (
            upstream.creator(node="edge-2"),
            upstream.creator(host="127.0.0.1"),
            upstream.creator(port=10255),
            upstream.creator(dialed=NODE_NAME),
        ):
            self.assertEqual(exchange(self, server, other), (False, False))
        self.assertEqual(len(upstream.tls.sessions), 5)
        self.assertEqual(exchange(self, server, upstream.creator(node="edge-2")), (True, True))

    def test_withoutDestinationNothingResumes(self) -> None:
        """The creator used as is (no destination) does full handshakes and keeps nothing."""
        upstream, server = Upstream(), kubelet()
        plain = upstream.tls(NODE_IP)
        for _ in range(2):
            self.assertEqual(exchange(self, server, plain), (False, False))
        self.assertEqual(len(upstream.tls.sessions), 0)

    def test_shortLived(self) -> None:
        """
        Sessions are resumed for L{SESSION_MAX_AGE} after the full
        handshake that checked the kubelet, however many resumptions lie
        between: the one after that is a full handshake again.
        """
        upstream, server = Upstream(), kubelet()
        exchange(self, server, upstream.creator())
        upstream.clock.advance(SESSION_MAX_AGE - 10)
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))
        upstream.clock.advance(10)
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))

    def test_rotationRetiresTheSessions(self) -> None:
        """
        New credentials (any of --proxy-client-ca, -cert, -key): no session
        of the old ones is offered, and connections still being made with
        the old ones (a route made before) keep none.
        """
        options = RotatingClientOptions(clientCredentials(), verify=True)
        server = kubelet()
        before = options(NODE_IP).forDestination("edge-1", NODE_IP, 10250)
        exchange(self, server, before)
        self.assertEqual(exchange(self, server, before), (True, True))
        options.update(clientCredentials())
        after = options(NODE_IP).forDestination("edge-1", NODE_IP, 10250)
        self.assertEqual(exchange(self, server, after), (False, False))
        self.assertEqual(exchange(self, server, before), (False, False))
        self.assertEqual(exchange(self, server, before), (False, False))
        self.assertEqual(exchange(self, server, after), (True, True))

    def test_kubeletRestarted(self) -> None:
        """
        A kubelet that no longer knows the session (restarted: new ticket
        keys) makes a full handshake, checked, and its new session is kept.
        """
        upstream = Upstream()
        exchange(self, kubelet(), upstream.creator())
        restarted = kubelet()
        self.assertEqual(exchange(self, restarted, upstream.creator()), (False, False))
        self.assertEqual(exchange(self, restarted, upstream.creator()), (True, True))

    def test_impostorCannotResume(self) -> None:
        """
        Someone else at the kubelet's address, with a certificate of
        another CA, gets the session offered but cannot take it up (it
        lacks the kubelet's ticket key): the full handshake that follows
        checks its certificate and fails.  The session offered to it is
        forgotten.
        """
        upstream = Upstream()
        exchange(self, kubelet(), upstream.creator())
        refused(self, kubelet(impostorServing), upstream.creator())
        self.assertEqual(len(upstream.tls.sessions), 0)

    def test_wrongNameRefusedAndNotKept(self) -> None:
        """
        A kubelet certificate that does not name the dialed address is
        refused (the address is what is checked, not the CA alone), and a
        refused handshake leaves no session behind.
        """
        upstream = Upstream()
        refused(self, kubelet(mintServer(kubeletCA, ["10.0.0.6"])), upstream.creator())
        refused(self, kubelet(mintServer(kubeletCA, ["10.0.0.6"])), upstream.tls(NODE_IP))
        refused(self, kubelet(), upstream.creator(dialed="other.example"))
        refused(self, kubelet(), upstream.creator(dialed="edge-1..example"))  # no DNS name
        self.assertEqual(len(upstream.tls.sessions), 0)

    def test_otherCARefused(self) -> None:
        """A kubelet certificate from a CA other than --proxy-client-ca is refused."""
        upstream = Upstream(clientCredentials(trusting=impostorCA))
        refused(self, kubelet(), upstream.creator())
        self.assertEqual(len(upstream.tls.sessions), 0)

    def test_withoutVerification(self) -> None:
        """
        Without --proxy-client-ca the kubelet is not checked (any
        certificate will do), and sessions are resumed all the same,
        within the same age bound.
        """
        upstream = Upstream(verify=False)
        server = kubelet(impostorServing)
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))
        upstream.clock.advance(SESSION_MAX_AGE - 10)
        self.assertEqual(exchange(self, server, upstream.creator()), (True, True))
        upstream.clock.advance(10)
        self.assertEqual(exchange(self, server, upstream.creator()), (False, False))

    def test_proxyClientOptions(self) -> None:
        """What the daemon builds offers a destination, and resumes through it."""
        options = proxyClientOptions(clientCredentials(), verify=True)
        creator = options(NODE_IP)
        self.assertIs(options(NODE_IP), creator)
        resuming = IDestinationTLS(creator)
        server = kubelet()
        exchange(self, server, resuming.forDestination("edge-1", NODE_IP, 10250))
        self.assertEqual(
            exchange(self, server, resuming.forDestination("edge-1", NODE_IP, 10250)),
            (True, True),
        )

    def test_http11Offered(self) -> None:
        """The kubelet is offered HTTP/1.1 only in ALPN, as the requests are relayed as such."""
        server = CertificateOptions(
            certificate=kubeletServing.certificate,
            privateKey=kubeletServing.key,
            trustRoot=trustRootFromCertificates(clientCredentials().authority),
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        connection = connect(server, Upstream().creator())
        self.assertEqual(connection.client.tls.negotiatedProtocol, b"http/1.1")

    def test_serverNameIndication(self) -> None:
        """SNI names a dialed name, and is not sent for an IP literal."""
        upstream = Upstream()
        names: list[bytes | None] = []
        server = kubelet()
        server.getContext().set_tlsext_servername_callback(
            lambda connection: names.append(connection.get_servername())
        )
        exchange(self, server, upstream.creator(dialed=NODE_NAME))
        exchange(self, server, upstream.creator())
        self.assertEqual(names, [NODE_NAME.encode(), None])


class SessionCacheTests(SynchronousTestCase):
    """L{ClientSessions}' bounds, with stand-ins for sessions."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.sessions = ClientSessions(maxEntries=3, maxAge=60, clock=self.clock.seconds)

    def put(self, key: str, verifiedAt: float = 0) -> object:
        session = object()
        self.sessions.put(key, session, verifiedAt)  # type: ignore[arg-type]
        return session

    def test_newestPerKey(self) -> None:
        self.put("a")
        second = self.put("a")
        kept = self.sessions.get("a")
        assert kept is not None
        self.assertIs(kept.session, second)
        self.assertEqual(len(self.sessions), 1)

    def test_boundedInCount(self) -> None:
        """The least recently stored go first."""
        for key in "abcd":
            self.put(key)
        self.assertIsNone(self.sessions.get("a"))
        self.assertEqual(len(self.sessions), 3)
        self.put("b")
        self.put("e")
        self.assertIsNotNone(self.sessions.get("b"))
        self.assertIsNone(self.sessions.get("c"))

    def test_boundedInAge(self) -> None:
        """The age counts from C{verifiedAt}, not from when it was stored."""
        self.put("a", verifiedAt=0)
        self.clock.advance(59)
        self.assertIsNotNone(self.sessions.get("a"))
        self.put("a", verifiedAt=0)
        self.clock.advance(1)
        self.assertIsNone(self.sessions.get("a"))
        self.assertEqual(len(self.sessions), 0)
        self.put("b", verifiedAt=0)
        self.assertEqual(len(self.sessions), 0)

    def test_discard(self) -> None:
        """Only the session that failed is forgotten, not a newer one."""
        self.put("a")
        failed = self.sessions.get("a")
        assert failed is not None
        self.put("a")
        self.sessions.discard("a", failed)
        self.assertIsNotNone(self.sessions.get("a"))
        newer = self.sessions.get("a")
        assert newer is not None
        self.sessions.discard("a", newer)
        self.assertIsNone(self.sessions.get("a"))

    def test_retire(self) -> None:
        self.put("a")
        self.sessions.retire()
        self.assertIsNone(self.sessions.get("a"))
        self.put("b")
        self.assertEqual(len(self.sessions), 0)


class ListenerCase(SynchronousTestCase):
    """The HTTPS proxy listener's TLS, and clients that would resume if it let them."""

    def setUp(self) -> None:
        self.pki = TestPKI()
        self.serving = self.pki.credentials(self.pki.server)

    def client(self, issued: Issued | None = None) -> Any:
        """A client that offers its sessions again (C{localhost} is in the listener's cert)."""
        issued = issued or self.pki.client()
        credentials = makeCredentials([self.pki.ca.certificate], issued.certificate, issued.key)
        return proxyClientOptions(credentials, verify=True)("localhost").forDestination(
            "-", "localhost", 443
        )

    def assertRefusedAfterClientCARotated(self, sessionLifetime: int) -> None:
        """
        After the client CA is rotated, a client of the old CA is refused,
        although it connected a moment before (and, if the listener resumes,
        holds a session: its ticket is not taken up, its certificate is
        checked and fails).
        """
        listener = RotatingServerOptions(
            self.serving, lambda creds: proxyServingOptions(creds, sessionLifetime=sessionLifetime)
        )
        client = self.client()
        exchange(self, listener, client)
        listener.update(
            makeCredentials(
                [self.pki.otherCA.certificate],
                self.pki.server.certificate,
                self.pki.server.key,
            )
        )
        refused(self, listener, client, by="server")


class ListenerTests(ListenerCase):
    """
    By default the HTTPS proxy listener resumes no session: every client shows a
    certificate, checked against the client CA in force and refused if it
    is a node's, on every connection (docs/security.md says why).
    """

    def test_noResumption(self) -> None:
        listener = proxyServingOptions(self.serving)
        client = self.client()
        self.assertEqual(exchange(self, listener, client), (False, False))
        self.assertEqual(exchange(self, listener, client), (False, False))
        context = proxyServingOptions(self.serving).getContext()
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)

    def test_nodeCertificateRefusedEveryTime(self) -> None:
        listener = proxyServingOptions(self.serving)
        node = self.client(self.pki.agent("edge-1"))
        for _ in range(2):
            refused(self, listener, node, by="server")

    def test_clientCARotated(self) -> None:
        self.assertRefusedAfterClientCARotated(sessionLifetime=0)


class ListenerResumptionTests(ListenerCase):
    """
    C{--proxy-serving-session-lifetime}: the HTTPS proxy listener lets a
    client resume, from tickets only, for as long as it was told, and never
    across a rotation or for a client it refused.
    """

    def setUp(self) -> None:
        super().setUp()
        self.listener = proxyServingOptions(self.serving, sessionLifetime=300)

    def test_resumed(self) -> None:
        """
        The second connection resumes the first one's session, on both ends;
        the listener keeps nothing of it (no session cache: the ticket holds
        it all) and lets it live C{sessionLifetime} seconds.
        """
        client = self.client()
        self.assertEqual(exchange(self, self.listener, client), (False, False))
        self.assertEqual(exchange(self, self.listener, client), (True, True))
        context = self.listener.getContext()
        self.assertEqual(context.get_session_cache_mode(), SSL.SESS_CACHE_OFF)
        self.assertEqual(context.get_timeout(), 300)

    def test_resumedIdentity(self) -> None:
        """A resumed connection still tells whose certificate made the session."""
        client = self.client(self.pki.client("kube-apiserver"))
        exchange(self, self.listener, client)
        connection = connect(self.listener, client)
        self.assertEqual(reused(connection), (True, True))
        identity = connection.server.app.identity
        assert identity is not None
        self.assertEqual(identity.commonName, "kube-apiserver")

    def test_nodeCertificateNeverGetsASession(self) -> None:
        """A node's certificate is refused in the handshake, every time: no ticket to resume."""
        node = self.client(self.pki.agent("edge-1"))
        for _ in range(2):
            refused(self, self.listener, node, by="server")

    def test_rotationEndsEverySession(self) -> None:
        """
        A rotation of the listener's files (here the same files again) makes a
        new context, whose ticket keys did not make the old tickets: the
        next connection makes a full handshake, and resumes after that.
        """
        listener = RotatingServerOptions(
            self.serving, lambda creds: proxyServingOptions(creds, sessionLifetime=300)
        )
        client = self.client()
        exchange(self, listener, client)
        self.assertEqual(exchange(self, listener, client), (True, True))
        listener.update(self.serving)
        self.assertEqual(exchange(self, listener, client), (False, False))
        self.assertEqual(exchange(self, listener, client), (True, True))

    def test_clientCARotated(self) -> None:
        self.assertRefusedAfterClientCARotated(sessionLifetime=300)

    def test_lifetimeBounded(self) -> None:
        """A lifetime below 0 or above an hour is refused, naming the bound."""
        for lifetime in (-1, MAX_SERVING_SESSION_LIFETIME + 1):
            with self.assertRaises(ValueError) as caught:
                proxyServingOptions(self.serving, sessionLifetime=lifetime)
            self.assertIn(str(MAX_SERVING_SESSION_LIFETIME), str(caught.exception))

    def test_expired(self) -> None:
        """
        A session older than the lifetime is not resumed (OpenSSL counts in
        wall-clock seconds, so this waits two of them: a slow test).
        """
        listener = proxyServingOptions(self.serving, sessionLifetime=1)
        client = self.client()
        exchange(self, listener, client)
        self.assertEqual(exchange(self, listener, client), (True, True))
        time.sleep(2.1)
        self.assertEqual(exchange(self, listener, client), (False, False))
