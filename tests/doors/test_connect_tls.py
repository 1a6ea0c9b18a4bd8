"""
The CONNECT door served over mutual TLS, as it is when it listens beyond
loopback: clients such as kube-apiserver get in, agents' certificates do
not (real sockets and real TLS on 127.0.0.1).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.pki import TestPKI
from tests.realnet import waitUntil
from twisted_tunnel.doors.connect import ConnectDoorFactory, refuseAgentCertificates
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import agentOptions, serverOptions
from twisted_tunnel.tls.certs import Issued

pki = TestPKI()


class _Answer(Protocol):
    """Sends one CONNECT request and collects the answer until the door closes."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        request = f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n"
        self.transport.write(request.encode())

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


class ConnectDoorOverTLSTests(TestCase):
    def setUp(self) -> None:
        server = TunnelServer(reactor, pki.credentials(pki.server))
        door = ConnectDoorFactory(server, authorize=refuseAgentCertificates, lingerTimeout=0.5)
        factory = TLSMemoryBIOFactory(serverOptions(server.credentials), False, door)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def ask(self, certificate: Issued) -> bytes:
        options = agentOptions(pki.credentials(certificate), "127.0.0.1")
        endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))
        answer = _Answer("edge-1:10250")
        await connectProtocol(endpoint, answer)
        return await answer.done

    async def test_agentCertificateRefused(self) -> None:
        """An agent's certificate gets 403, saying why."""
        answer = await self.ask(pki.agent("edge-1"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer)
        self.assertIn(b"node edge-1 is an agent's certificate", answer)

    async def test_clientCertificateAdmitted(self) -> None:
        """
        A client's certificate gets past the door: the answer is about the
        node (no agent is connected here), not about who asked.
        """
        answer = await self.ask(pki.client("kube-apiserver"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertIn(b"edge-1", answer)

    async def test_clientOfAnotherCASaid(self) -> None:
        """
        A client whose certificate another CA signed is refused in the
        handshake: the door says so in one line, whose certificate and which
        check, not OpenSSL's tuples.
        """
        stranger = pki.foreignServer()
        with capturedLogs() as events:
            await self.ask(stranger)
            await waitUntil(lambda: said(events), 10, "the door to say why it refused the client")
        [line] = said(events)
        self.assertIn("CONNECT door: TLS with client 127.0.0.1:", line)
        self.assertIn("we refused the peer's certificate", line)
        self.assertIn(stranger.certificate.subject.rfc4514_string(), line)
        self.assertIn("unknown CA", line)


def said(events: list[dict[str, object]]) -> list[str]:
    """The door's lines about clients that failed TLS."""
    return [formatEvent(e) for e in events if "TLS with client" in str(e.get("log_format"))]
