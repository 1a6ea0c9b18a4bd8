"""
The HTTPS proxy listener: clients must present a certificate from
C{--proxy-serving-client-ca} (by default C{--ca}), and not an agent's (real
sockets and real TLS on 127.0.0.1), since the listener lends out the proxy
client certificate.
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.pki import TestPKI
from twisted_tunnel.doors.proxy import ProxyListenerFactory, ProxyRouter
from twisted_tunnel.forwarding.config import ProxyConfig
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import agentOptions, proxyServingOptions

pki = TestPKI()


class Ask(Protocol):
    """Sends one request and collects the answer until the connection ends."""

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET /pods HTTP/1.1\r\nHost: edge-1:10250\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.done.callback(None)


class ServingClientCATests(TestCase):
    def setUp(self) -> None:
        server = TunnelServer(reactor, None)
        router = ProxyRouter(server, "https", ProxyConfig)
        serving = pki.credentials(pki.server)
        options = proxyServingOptions(serving)
        factory = TLSMemoryBIOFactory(options, False, ProxyListenerFactory(router, reactor))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def ask(self, creator: object) -> Ask:
        asker = Ask()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))  # type: ignore[arg-type]
        await connectProtocol(endpoint, asker)
        await asker.done
        return asker

    async def test_withCertificate(self) -> None:
        """A client with a certificate from the CA gets an HTTP answer (502: no agent here)."""
        asker = await self.ask(
            agentOptions(pki.credentials(pki.client("kube-apiserver")), "127.0.0.1")
        )
        self.assertTrue(asker.received.startswith(b"HTTP/1.1 502 "), asker.received)

    async def test_withoutCertificate(self) -> None:
        """A client without a certificate gets no HTTP at all: the handshake fails."""
        authority = pki.credentials(pki.server).authority
        asker = await self.ask(
            optionsForClientTLS("127.0.0.1", trustRoot=trustRootFromCertificates(authority))
        )
        self.assertEqual(asker.received, b"")
        assert asker.reason is not None
        self.assertIn("certificate required", asker.reason.getErrorMessage())
        self.flushLoggedErrors(SSL.Error)

    async def test_agentCertificate(self) -> None:
        """
        An agent's certificate (same CA) gets no HTTP at all: the handshake
        fails (OpenSSL's alert for a refusal by the verify callback is
        "internal error"; the server logs the reason at debug).
        """
        asker = await self.ask(agentOptions(pki.credentials(pki.agent("edge-1")), "127.0.0.1"))
        self.assertEqual(asker.received, b"")
        assert asker.reason is not None
        self.assertTrue(asker.reason.check(SSL.Error), asker.reason)
        self.flushLoggedErrors(SSL.Error)
