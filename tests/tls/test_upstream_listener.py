"""
Session resumption towards the kubelet through the HTTPS proxy listener
itself (L{ProxyRouter} asks the https policy's creator for the route's
destination), on the listener harness of C{tests/doors/test_listeners.py}:
a real tunnel and agent on loopback, a kubelet stand-in that resumes
sessions.  Whether the kubelet resumed is read from OpenSSL on its side.
"""

from __future__ import annotations

from typing import Any

from OpenSSL._util import lib as _lib
from twisted.internet.ssl import CertificateOptions, trustRootFromCertificates
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from tests.doors.test_listeners import (
    NODE,
    NODE_IP,
    CountingSite,
    Hello,
    ListenerTestCase,
    credentials,
    kubeletPKI,
    listen,
)
from tests.realnet import waitUntil
from twisted_tunnel.tls import proxyClientOptions


class RecordingTLSFactory(TLSMemoryBIOFactory):
    """The kubelet's TLS, keeping each connection to ask OpenSSL about it afterwards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: list[TLSMemoryBIOProtocol] = []

    def buildProtocol(self, addr: Any) -> TLSMemoryBIOProtocol | None:
        protocol = super().buildProtocol(addr)
        if isinstance(protocol, TLSMemoryBIOProtocol):
            self.connections.append(protocol)
        return protocol


class ThroughTheListenerTests(ListenerTestCase):
    def resumingKubelet(self) -> tuple[int, RecordingTLSFactory]:
        """A kubelet stand-in whose TLS resumes sessions (tickets on, as Go's)."""
        pki = kubeletPKI()
        own = credentials(pki.serving, pki.ca)
        options = CertificateOptions(
            privateKey=own.certificate.privateKey.original.to_cryptography_key(),
            certificate=own.certificate.original.to_cryptography(),
            trustRoot=trustRootFromCertificates(own.authority),
            acceptableProtocols=[b"http/1.1"],
            enableSessions=True,
            enableSessionTickets=True,
        )
        factory = RecordingTLSFactory(options, False, CountingSite(Hello("kubelet")))
        return listen(self, factory, NODE_IP), factory

    async def requests(self, port: int, kubelet: RecordingTLSFactory, count: int) -> list[bool]:
        """C{count} requests, each on a new client connection: did the kubelet resume each?"""
        before = len(kubelet.connections)
        for _ in range(count):
            exchange = await self.get(f"{NODE}:{port}", b"/pods", "https")
            self.assertEqual(exchange.status, 200)
        await waitUntil(
            lambda: len(kubelet.connections) == before + count, 5, "the kubelet's connections"
        )
        return [
            bool(_lib.SSL_session_reused(c.getHandle()._ssl)) for c in kubelet.connections[before:]
        ]

    async def test_newClientConnectionsResume(self) -> None:
        """
        Each new client connection makes a new connection to the kubelet;
        from the second on, it resumes the session of the one before.
        """
        pki = kubeletPKI()
        self.upstreamTLS = proxyClientOptions(credentials(pki.proxyClient, pki.ca), verify=True)
        port, kubelet = self.resumingKubelet()
        self.configure(https_proxy_ports=str(port), localhost_proxy_ports="")
        self.assertEqual(await self.requests(port, kubelet, 3), [False, True, True])

    async def test_portsKeptApart(self) -> None:
        """A kubelet on another port of the node gets a full handshake of its own."""
        pki = kubeletPKI()
        self.upstreamTLS = proxyClientOptions(credentials(pki.proxyClient, pki.ca), verify=True)
        first, firstKubelet = self.resumingKubelet()
        second, secondKubelet = self.resumingKubelet()
        self.configure(https_proxy_ports=f"{first},{second}", localhost_proxy_ports="")
        self.assertEqual(await self.requests(first, firstKubelet, 2), [False, True])
        self.assertEqual(await self.requests(second, secondKubelet, 2), [False, True])
