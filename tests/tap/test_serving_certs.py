"""
C{twistd edge-tunnel-server --proxy-serving-ca-cert/--proxy-serving-ca-key}:
the HTTPS proxy listener, built as the daemon builds it, mints a serving
certificate per known node (real sockets and real TLS on 127.0.0.1); the
options and their refusals.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import TestCase

from tests.doors.test_proxy_tls import Ask
from tests.pki import TestPKI, temporaryDirectory
from tests.server.test_registry import record
from tests.tap.test_security_exposure import resumptions, startHTTPSListener
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls.certs import mintCA, writePair

pki = TestPKI()


class _Asked(Ask):
    """L{Ask}, keeping the certificate the listener presented."""

    presented: x509.Certificate | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.presented is None:
            peer = self.transport.getPeerCertificate()  # type: ignore[union-attr]
            self.presented = peer.to_cryptography() if peer is not None else None
        super().dataReceived(data)


class MintingListenerTests(TestCase):
    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory, stem="server")
        self.servingCA = mintCA("kubelet serving CA")
        pair = pki.writePair(self.servingCA, self.directory, "serving-ca")
        self.caArgs = ["--proxy-serving-ca-cert", pair.cert, "--proxy-serving-ca-key", pair.key]

    def options(self, *arguments: str) -> tapserver.Options:
        options = tapserver.Options()
        options.parseOptions([*self.paths.options(), "--no-iptables", *arguments])
        return options

    async def startListener(self, *arguments: str) -> tuple[int, TunnelServer]:
        """The daemon's service, with only its HTTPS listener started: its port, its server."""
        port, self.top = await startHTTPSListener(self, self.paths.options(), *arguments)
        return port, self.top.tunnelServer  # type: ignore[attr-defined]

    async def ask(self, port: int, serverName: str, trust: Any) -> _Asked:
        """One request, as kube-apiserver with --kubelet-certificate-authority=C{trust}."""
        client = pki.client("kube-apiserver")
        tls = optionsForClientTLS(
            serverName,
            trustRoot=trustRootFromCertificates([trust]),
            extraCertificateOptions={"certificate": client.certificate, "privateKey": client.key},
        )
        asker = _Asked()
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, asker)
        await asker.done
        return asker

    def trust(self, issued: Any) -> Any:
        return pki.credentials(issued, ca=issued).authority[0]

    async def test_knownNodeMinted(self) -> None:
        """
        A client that dialled a node this server routes (by name: SNI)
        verifies the minted certificate against the minting CA and gets an
        HTTP answer: 502, naming the node, whose agent has just left.
        """
        port, server = await self.startListener(*self.caArgs)
        edge = record("edge-1", "10.0.0.7")
        server.registry.register(edge)
        server.registry.unregister(edge.tunnel)  # gone: still routed, still minted for
        asker = await self.ask(port, "edge-1", self.trust(self.servingCA))
        self.assertTrue(asker.received.startswith(b"HTTP/1.1 502 "), asker.received)
        self.assertIn(b"its agent left", asker.received)
        assert asker.presented is not None
        self.assertEqual(asker.presented.subject.rfc4514_string(), "CN=edge-1")

    async def test_sessionLifetime(self) -> None:
        """
        With C{--proxy-serving-session-lifetime} too, a client that caches
        sessions resumes with the node's minted certificate's session.
        """
        port, server = await self.startListener(
            *self.caArgs, "--proxy-serving-session-lifetime=300"
        )
        edge = record("edge-1", "10.0.0.7")
        server.registry.register(edge)
        server.registry.unregister(edge.tunnel)  # gone: still routed, still minted for
        trust = pki.writePair(self.servingCA, self.directory, "trust").cert
        client = pki.writePair(pki.client(), self.directory, "client")
        got = await deferToThread(resumptions, port, trust, client, "edge-1")
        self.assertEqual(got, [False, True])

    async def test_caRotation(self) -> None:
        """
        The CA's files are watched as the other certificates are: once they
        hold another CA, the next handshake gets a certificate minted by it
        (the old CA's are dropped); a rotation to something that is no CA
        is refused with one line, and the CA in force stays.
        """
        port, server = await self.startListener(*self.caArgs)
        edge = record("edge-1", "10.0.0.7")
        server.registry.register(edge)
        server.registry.unregister(edge.tunnel)
        first = await self.ask(port, "edge-1", self.trust(self.servingCA))
        assert first.presented is not None
        newCA = mintCA("kubelet serving CA, next")
        writePair(newCA, self.caArgs[1], self.caArgs[3])
        watcher = self.top.getServiceNamed("tls:--proxy-serving-ca-cert")  # type: ignore[attr-defined]
        with capturedLogs() as events:
            self.assertTrue(watcher.poll())
        self.assertTrue(any("dropped" in e["log_format"] for e in events), events)
        second = await self.ask(port, "edge-1", self.trust(newCA))
        assert second.presented is not None
        self.assertEqual(second.presented.issuer, newCA.certificate.subject)
        self.assertNotEqual(second.presented.serial_number, first.presented.serial_number)
        stale = await self.ask(port, "edge-1", self.trust(self.servingCA))
        self.assertEqual(stale.received, b"")  # the old CA's client refuses the new one
        writePair(pki.server, self.caArgs[1], self.caArgs[3])
        with capturedLogs() as events:
            self.assertFalse(watcher.poll())
        refused = [e for e in events if "rotation refused" in e["log_format"]]
        self.assertEqual(len(refused), 1)
        self.assertIn("is not a CA certificate", refused[0]["reason"])
        third = await self.ask(port, "edge-1", self.trust(newCA))
        assert third.presented is not None
        self.assertEqual(third.presented.serial_number, second.presented.serial_number)
        self.flushLoggedErrors(SSL.Error)

    async def test_unknownNodeRefused(self) -> None:
        """No such node, no static certificate given: no certificate, no HTTP."""
        port, _ = await self.startListener(*self.caArgs)
        asker = await self.ask(port, "edge-9", self.trust(self.servingCA))
        self.assertEqual(asker.received, b"")
        assert asker.reason is not None
        self.assertIn("handshake failure", asker.reason.getErrorMessage())

    async def test_unknownNodeStatic(self) -> None:
        """With --proxy-serving-cert given, an unknown destination gets that certificate."""
        port, _ = await self.startListener(
            *self.caArgs,
            "--proxy-serving-cert", self.paths.cert, "--proxy-serving-key", self.paths.key,
        )  # fmt: skip
        asker = await self.ask(port, "localhost", self.trust(pki.ca))
        self.assertTrue(asker.received.startswith(b"HTTP/1.1 "), asker.received)
        self.assertEqual(asker.presented, pki.server.certificate)

    def test_optionsGoTogether(self) -> None:
        with self.assertRaises(UsageError) as caught:
            self.options(*self.caArgs[:2])
        self.assertIn("go together", str(caught.exception))

    def test_needsTheListener(self) -> None:
        with self.assertRaises(UsageError) as caught:
            self.options(*self.caArgs, "--https-proxy-endpoint", "none")
        self.assertIn("--https-proxy-endpoint none", str(caught.exception))

    def test_lifetimeBounded(self) -> None:
        for value in ("599", "604801"):
            with self.assertRaises(UsageError) as caught:
                self.options(*self.caArgs, "--proxy-serving-cert-lifetime", value)
            self.assertIn("--proxy-serving-cert-lifetime", str(caught.exception))
        self.assertEqual(
            self.options(*self.caArgs, "--proxy-serving-cert-lifetime", "3600")[
                "proxy-serving-cert-lifetime"
            ],
            3600,
        )

    def test_notACAStopsStartup(self) -> None:
        """A certificate that is no CA stops the daemon with one line."""
        line = self.fatal(
            "--proxy-serving-ca-cert", self.paths.cert, "--proxy-serving-ca-key", self.paths.key
        )
        self.assertIn("is not a CA certificate", line)

    def test_exposedKeyStopsStartup(self) -> None:
        os.chmod(self.caArgs[3], 0o644)
        line = self.fatal(*self.caArgs)
        self.assertIn("accessible by others", line)

    def fatal(self, *arguments: str) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit):
            tapserver.makeService(self.options(*arguments))
        written = stderr.getvalue()
        self.assertEqual(written.count("\n"), 1, written)
        self.assertTrue(written.startswith("edge-tunnel-server: "), written)
        return written
