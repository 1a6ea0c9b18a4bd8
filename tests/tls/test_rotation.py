"""
Tests for L{twisted_tunnel.tls.rotation}: certificate files replaced under a
running server or agent.

The watcher runs on a L{Clock} against real files; the rotation of a live
TLS listener runs on real sockets.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import CredentialPaths, TestPKI, temporaryDirectory
from tests.realnet import waitUntil
from tests.server.test_integration import DEADLINE, ExchangeClient, TunnelTestCase
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.tls import Credentials, loadCredentials, serverOptions
from twisted_tunnel.tls.certs import Issued
from twisted_tunnel.tls.rotation import (
    CredentialsWatcher,
    RotatingClientOptions,
    RotatingServerOptions,
    watchCredentials,
)
from twisted_tunnel.wire import ErrorCode

pki = TestPKI()
INTERVAL = 10.0


class Rotation:
    """A daemon's three files in a directory, and what its watcher handed over."""

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.directory = temporaryDirectory(testCase)
        self.paths = pki.paths(pki.server, self.directory, stem="server")
        self.clock = Clock()
        self.changes: list[Credentials] = []
        watcher = watchCredentials(
            self.paths.load(), self.changes.append, self.clock, interval=INTERVAL
        )
        assert watcher is not None
        self.watcher: CredentialsWatcher = watcher

    def replaceWith(self, issued: Issued) -> None:
        """Write C{issued} over the certificate and key files, as a rotation does."""
        other = pki.paths(issued, os.path.join(self.directory, "new"))
        shutil.copyfile(other.cert, self.paths.cert)
        shutil.copyfile(other.key, self.paths.key)

    def write(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def pollLogged(self) -> list[dict[str, Any]]:
        """Let one interval pass; the log events of that poll."""
        with capturedLogs() as events:
            self.clock.advance(INTERVAL)
        return list(events)


class CredentialsWatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.rotation = Rotation(self)
        self.rotation.watcher.startService()
        self.addCleanup(self.rotation.watcher.stopService)

    def test_unchangedFilesAreNotReloaded(self) -> None:
        self.assertEqual(self.rotation.pollLogged(), [])
        self.assertEqual(self.rotation.changes, [])

    def test_rotatedCertificateIsTakenIntoUse(self) -> None:
        rotated = pki.serverFor("localhost", "127.0.0.1", "rotated.example")
        self.rotation.replaceWith(rotated)
        events = self.rotation.pollLogged()
        [credentials] = self.rotation.changes
        self.assertEqual(
            credentials.certificate.original.to_cryptography().serial_number,
            rotated.certificate.serial_number,
        )
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        self.assertIn("certificates reloaded", formatEvent(events[0]))
        # which certificate is now in use: an operator can tell
        self.assertIn(f"serial {rotated.certificate.serial_number:#x}", formatEvent(events[0]))
        # and only once
        self.assertEqual(self.rotation.pollLogged(), [])
        self.assertEqual(len(self.rotation.changes), 1)

    def assertRefused(self, *mentions: str) -> None:
        """One error line naming C{mentions}; nothing handed over; silence after."""
        events = self.rotation.pollLogged()
        self.assertEqual([e["log_level"] for e in events], [LogLevel.error], events)
        line = formatEvent(events[0])
        self.assertIn("keeping the certificates in use", line)
        for mention in mentions:
            self.assertIn(mention, line)
        self.assertEqual(self.rotation.changes, [])
        self.assertEqual(self.rotation.pollLogged(), [])

    def test_garbageCertificate(self) -> None:
        self.rotation.write(self.rotation.paths.cert, b"not a certificate\n")
        self.assertRefused(self.rotation.paths.cert)

    def test_keyOfAnotherCertificate(self) -> None:
        other = pki.paths(pki.agent("edge-9"), os.path.join(self.rotation.directory, "x"))
        shutil.copyfile(other.key, self.rotation.paths.key)
        self.assertRefused(self.rotation.paths.key, "does not match")

    def test_expiredCertificate(self) -> None:
        self.rotation.replaceWith(pki.expiredServer())
        self.assertRefused(self.rotation.paths.cert, "expired")

    def test_halfWrittenRotationThenComplete(self) -> None:
        """
        The certificate is replaced before the key (a rotation seen half
        way): refused, then taken once the key follows.
        """
        rotated = pki.serverFor("localhost", "127.0.0.1", "half.example")
        other = pki.paths(rotated, os.path.join(self.rotation.directory, "half"))
        shutil.copyfile(other.cert, self.rotation.paths.cert)
        self.assertRefused(self.rotation.paths.key)
        shutil.copyfile(other.key, self.rotation.paths.key)
        self.rotation.pollLogged()
        self.assertEqual(len(self.rotation.changes), 1)

    def test_rotationBeforeTheWatcherIsSeen(self) -> None:
        """
        Files replaced after the credentials in use were loaded but before
        their watcher was made (the rest of C{makeService}; an agent's
        watcher is made at C{startService}) are a change: the digest is
        the one taken when they were loaded, not when the watcher was made.
        """
        loaded = self.rotation.paths.load()
        self.assertIsNotNone(loaded.filesDigest)
        rotated = pki.serverFor("localhost", "127.0.0.1", "early.example")
        self.rotation.replaceWith(rotated)
        changes: list[Credentials] = []
        watcher = watchCredentials(loaded, changes.append, self.rotation.clock, INTERVAL)
        assert watcher is not None
        self.assertTrue(watcher.poll())
        [credentials] = changes
        self.assertEqual(
            credentials.certificate.original.to_cryptography().serial_number,
            rotated.certificate.serial_number,
        )
        self.assertFalse(watcher.poll())

    def test_notFromFiles(self) -> None:
        """In-memory credentials (no paths) and an interval of 0 watch nothing."""
        self.assertIsNone(watchCredentials(pki.credentials(pki.server), print, Clock()))
        paths = self.rotation.paths
        self.assertIsNone(watchCredentials(paths.load(), print, Clock(), interval=0))


class RotatingOptionsTests(SynchronousTestCase):
    def test_serverOptionsBuiltFromTheNewCredentials(self) -> None:
        """The listener's own way of building its options is used again on rotation."""
        built: list[Credentials] = []

        def build(credentials: Credentials) -> Any:
            built.append(credentials)
            return serverOptions(credentials)

        first, second = pki.credentials(pki.server), pki.credentials(pki.serverFor("b.example"))
        options = RotatingServerOptions(first, build)
        before = options.getContext()
        options.update(second)
        self.assertEqual(built, [first, second])
        self.assertIsNot(options.getContext(), before)

    def test_clientOptionsForgetTheirCache(self) -> None:
        """
        The https policy's creators are cached per address; a rotation
        makes new ones, from the new credentials.
        """
        options = RotatingClientOptions(pki.credentials(pki.client()), verify=True)
        before = options("10.0.0.5")
        self.assertIs(options("10.0.0.5"), before)
        options.update(pki.credentials(pki.client("other-apiserver")))
        self.assertIsNot(options("10.0.0.5"), before)


class LiveRotationTests(TunnelTestCase):
    async def test_newHandshakesUseTheNewCertificate(self) -> None:
        """
        The server's certificate is rotated while an agent is connected:
        that tunnel goes on, and the next agent's handshake sees the new
        certificate.
        """
        directory = temporaryDirectory(self)
        first: CredentialPaths = pki.paths(pki.server, directory, stem="server")
        server, serverPort = self.startServer()
        server.updateCredentials(loadCredentials(first.ca, first.cert, first.key))
        before = await self.connectedAgent(serverPort, "edge-1")
        rotated = pki.serverFor("localhost", "127.0.0.1", "rotated.example")
        second = pki.paths(rotated, directory, stem="server-rotated")
        server.updateCredentials(loadCredentials(second.ca, second.cert, second.key))
        after = await self.connectedAgent(serverPort, "edge-2")
        self.assertTrue(before.established)
        seen = [
            tunnel.transport.getPeerCertificate().get_serial_number()  # type: ignore[union-attr]
            for tunnel in (before, after)
        ]
        self.assertEqual(
            seen, [pki.server.certificate.serial_number, rotated.certificate.serial_number]
        )
        # and streams still flow on the tunnel that was up before
        edge, edgePort = self.listenEdge()
        client = await self.openStream(
            server, edgePort, ExchangeClient(0, 1000, 0, 1000), node="edge-1"
        )
        await client.done

    async def test_agentDialsWithTheNewCertificate(self) -> None:
        """
        The agent's credentials are rotated while its tunnel is up: that
        tunnel goes on; its next connection presents the new certificate.
        """
        server, serverPort = self.startServer()
        agent = TunnelAgent(
            reactor,
            pki.credentials(pki.agent("edge-1")),
            ("127.0.0.1", serverPort),
            "edge-1",
            retryPolicy=lambda attempt: 0.05,
        )
        agent.startService()
        self.addCleanup(self.stopAgent, agent)
        first = await agent.whenConnected()
        rotated = pki.agent("edge-1", ("127.0.0.1",))
        agent.updateCredentials(pki.credentials(rotated))
        self.assertTrue(first.established)

        def presented() -> int | None:
            record = server.registry.lookup("edge-1")
            if record is None or record.tunnel.transport is None:
                return None
            certificate = record.tunnel.transport.getPeerCertificate()  # type: ignore[attr-defined]
            return int(certificate.get_serial_number())

        self.assertEqual(presented(), pki.agent("edge-1").certificate.serial_number)
        first.close(ErrorCode.SHUTTING_DOWN, "the test reconnects")
        await waitUntil(
            lambda: presented() == rotated.certificate.serial_number,
            DEADLINE,
            "the agent to come back with its new certificate",
        )
