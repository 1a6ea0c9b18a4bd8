# -*- test-case-name: tests.tls.test_kubelet -*-
"""
Tests for L{twisted_tunnel.tls.kubelet}: the kubelet's own client
certificate (C{kubelet-client-current.pem}) as the agent's identity, loaded
from a real kubelet layout (L{KubeletCertificateStore}: certificate and key
in one file, a symlink the kubelet repoints) and followed through its
rotations on a L{Clock}.
"""

from __future__ import annotations

import datetime
import os
from functools import partial
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import KubeletCertificateStore, TestPKI, temporaryDirectory
from twisted_tunnel import files
from twisted_tunnel.errors import CredentialsError
from twisted_tunnel.tls import Credentials
from twisted_tunnel.tls.kubelet import (
    KUBELET_CLIENT_CERT,
    keepingNode,
    loadNodeCredentials,
    whyNotCarrying,
)
from twisted_tunnel.tls.rotation import CredentialsWatcher, watchCredentials

pki = TestPKI()
INTERVAL = 10.0
DAY = datetime.timedelta(days=1)


def serial(credentials: Credentials) -> int:
    return int(credentials.certificate.original.get_serial_number())


class _KubeletTestCase(SynchronousTestCase):
    """A kubelet's pki directory and the tunnel CA that signs the server (the agent's --ca)."""

    def setUp(self) -> None:
        directory = temporaryDirectory(self)
        self.store = KubeletCertificateStore(os.path.join(directory, "var/lib/kubelet/pki"))
        self.ca = pki.paths(pki.server, directory, stem="server").ca

    def load(self, nodeName: str | None = None) -> Credentials:
        return loadNodeCredentials(self.ca, self.store.current, nodeName)

    def refusal(self, nodeName: str | None = None) -> str:
        """The one line L{loadNodeCredentials} refuses the current file with."""
        error = self.assertRaises(CredentialsError, self.load, nodeName)
        line = str(error)
        self.assertNotIn("\n", line)
        self.assertTrue(line.startswith(f"--kubelet-client-cert {self.store.current}: "), line)
        return line


class LoadTests(_KubeletTestCase):
    def test_defaultPath(self) -> None:
        """The option's documented default is where the kubelet keeps it."""
        self.assertEqual(KUBELET_CLIENT_CERT, "/var/lib/kubelet/pki/kubelet-client-current.pem")

    def test_theKubeletsFile(self) -> None:
        """
        The symlink, certificate and SEC1 key in one 0600 file: the node
        name comes from the certificate, and both paths are the one file.
        """
        issued = pki.kubeletClient("edge-1")
        self.store.update(issued)
        self.assertTrue(os.path.islink(self.store.current))
        credentials = self.load()
        self.assertEqual(credentials.identity().nodeName(), "edge-1")
        self.assertEqual(serial(credentials), issued.certificate.serial_number)
        self.assertEqual((credentials.certPath, credentials.keyPath), (self.store.current,) * 2)
        self.assertEqual(credentials.chain, ())
        self.assertEqual(self.load("edge-1").identity(), credentials.identity())

    def test_intermediatesSentAlong(self) -> None:
        """Certificates after the first (intermediates, kept by the kubelet) are the chain."""
        issued = pki.kubeletClient("edge-1")
        self.store.unlinkCurrent(
            self.store.write(self.store.pem(issued, [pki.clusterCA.certificate]))
        )
        self.store.linkCurrent()
        credentials = self.load()
        self.assertEqual(
            [c.original.to_cryptography() for c in credentials.chain], [pki.clusterCA.certificate]
        )

    def test_readOnce(self) -> None:
        """
        The file is read once, certificate and key from the same bytes: two
        reads could straddle a rotation and pair the old certificate with
        the new key.
        """
        self.store.update(pki.kubeletClient("edge-1"))
        reads: list[str] = []
        realReadFile = files.readFile

        def counting(path: str, *args: Any) -> bytes:
            reads.append(path)
            return realReadFile(path, *args)

        self.patch(files, "readFile", counting)
        self.load()
        self.assertEqual(reads, [self.ca, self.store.current])

    def test_notANode(self) -> None:
        """An admin's certificate from the cluster CA is refused, saying what a node's is."""
        self.store.update(pki.clusterClient("admin", "system:masters"))
        line = self.refusal()
        self.assertIn("CN=admin", line)
        self.assertIn("not a node's", line)
        self.assertIn("CN=system:node:<node>, O=system:nodes", line)

    def test_kubeApiserversOwn(self) -> None:
        """kube-apiserver's kubelet client certificate is no node's either."""
        self.store.update(
            pki.clusterClient("kube-apiserver-kubelet-client", "kubeadm:cluster-admins")
        )
        self.assertIn("not a node's", self.refusal())
        self.assertIn("not a node certificate", self.refusal("edge-1"))

    def test_theNodesGroupMissing(self) -> None:
        """C{CN=system:node:edge-1} without C{O=system:nodes} is refused."""
        self.store.update(pki.clusterClient("system:node:edge-1"))
        self.assertIn("lacks O=system:nodes", self.refusal())

    def test_anotherNode(self) -> None:
        """With C{--node-name edge-1}, edge-2's certificate is refused, naming both."""
        self.store.update(pki.kubeletClient("edge-2"))
        line = self.refusal("edge-1")
        self.assertIn("'system:node:edge-2', not system:node:edge-1", line)

    def test_expired(self) -> None:
        """An expired certificate is refused, with the date it expired."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        expired = pki.kubeletClient("edge-1", notBefore=now - 30 * DAY, notAfter=now - DAY)
        self.store.update(expired)
        line = self.refusal()
        self.assertIn(f"certificate expired on {now - DAY:%Y-%m-%d %H:%M:%S} UTC", line)

    def test_notYetValid(self) -> None:
        """A certificate valid only from tomorrow is refused, with that date."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        future = pki.kubeletClient("edge-1", notBefore=now + DAY, notAfter=now + 30 * DAY)
        self.store.update(future)
        line = self.refusal()
        self.assertIn(f"not valid until {now + DAY:%Y-%m-%d %H:%M:%S} UTC", line)
        self.assertIn("check the clock", line)

    def test_noKey(self) -> None:
        """A file with the certificate alone (a --cert file given by mistake) is refused."""
        issued = pki.kubeletClient("edge-1")
        self.store.unlinkCurrent(self.store.write(issued.certificatePEM()))
        self.store.linkCurrent()
        self.assertIn("no private key in this PEM file", self.refusal())

    def test_keyOfAnotherCertificate(self) -> None:
        """A file whose key is not the certificate's is refused."""
        data = pki.kubeletClient("edge-1").certificatePEM() + pki.kubeletClient("edge-2").keyPEM()
        self.store.unlinkCurrent(self.store.write(data))
        self.store.linkCurrent()
        self.assertIn("private key does not match the certificate", self.refusal())

    def test_missing(self) -> None:
        """No kubelet certificate at all (not bootstrapped yet, or the wrong path)."""
        self.assertIn("no such file", self.refusal())

    def test_theRule(self) -> None:
        """L{whyNotCarrying}: with or without a node name, for in-memory credentials."""
        edge1 = pki.credentials(pki.kubeletClient("edge-1"), ca=pki.clusterCA)
        self.assertIsNone(whyNotCarrying(edge1, None))
        self.assertIsNone(whyNotCarrying(edge1, "edge-1"))
        self.assertIsNotNone(whyNotCarrying(edge1, "edge-2"))
        self.assertIsNotNone(whyNotCarrying(edge1, "EDGE-1"))
        serving = pki.credentials(pki.kubeletServing("edge-1"), ca=pki.clusterCA)
        self.assertIsNone(whyNotCarrying(serving, "edge-1"))  # the server's TLS refuses it


class RotationTests(_KubeletTestCase):
    """
    The kubelet rotates its certificate: a new file, the symlink repointed.
    The agent's watcher (L{watchCredentials} with L{keepingNode}) takes the
    new one into use, or refuses it and keeps the one in use.
    """

    def setUp(self) -> None:
        super().setUp()
        self.first = pki.kubeletClient("edge-1")
        self.store.update(self.first)
        self.clock = Clock()
        self.changes: list[Credentials] = []
        watcher = watchCredentials(
            self.load(),
            self.changes.append,
            self.clock,
            interval=INTERVAL,
            load=keepingNode(partial(loadNodeCredentials, self.ca, self.store.current), "edge-1"),
        )
        assert watcher is not None
        self.watcher: CredentialsWatcher = watcher
        watcher.startService()
        self.addCleanup(watcher.stopService)

    def poll(self) -> list[dict[str, Any]]:
        """Let one interval pass; the log events of that poll."""
        with capturedLogs() as events:
            self.clock.advance(INTERVAL)
        return list(events)

    def assertRefused(self, *mentions: str) -> None:
        events = self.poll()
        self.assertEqual([e["log_level"] for e in events], [LogLevel.error], events)
        line = formatEvent(events[0])
        self.assertIn("keeping the certificates in use", line)
        for mention in mentions:
            self.assertIn(mention, line)
        self.assertEqual(self.changes, [])

    def test_theFileWatchedOnce(self) -> None:
        self.assertEqual(self.watcher.paths, (self.ca, self.store.current))

    def test_repointedSymlinkFollowed(self) -> None:
        """A rotation is taken into use at the next poll, with its serial logged; once."""
        rotated = pki.kubeletClient("edge-1", notAfter=None, notBefore=_now() - DAY)
        self.store.update(rotated)
        events = self.poll()
        [credentials] = self.changes
        self.assertEqual(serial(credentials), rotated.certificate.serial_number)
        self.assertIn(f"serial {rotated.certificate.serial_number:#x}", formatEvent(events[-1]))
        self.assertEqual(self.poll(), [])
        self.assertEqual(len(self.changes), 1)

    def test_theInstantWithoutTheLink(self) -> None:
        """
        A poll between the removal of C{-current} and the rename of
        C{-updated} over it (client-go's order) keeps the certificate in
        use; the next poll takes the new one.
        """
        rotated = pki.kubeletClient("edge-1", notBefore=_now() - DAY)
        self.store.unlinkCurrent(self.store.write(self.store.pem(rotated)))
        self.assertRefused("no such file")
        self.store.linkCurrent()
        self.poll()
        self.assertEqual([serial(c) for c in self.changes], [rotated.certificate.serial_number])

    def test_anotherNodesRefused(self) -> None:
        """A rotation to another node's certificate is refused; the one in use stays."""
        self.store.update(pki.kubeletClient("edge-2"))
        self.assertRefused(
            self.store.current, "not node edge-1's certificate", "system:node:edge-2"
        )

    def test_notANodesRefused(self) -> None:
        """So is a rotation to a certificate that is no node's."""
        self.store.update(pki.clusterClient("admin", "system:masters"))
        self.assertRefused("not a node's")

    def test_expiredRefused(self) -> None:
        """And one that has expired."""
        now = _now()
        self.store.update(
            pki.kubeletClient("edge-1", notBefore=now - 30 * DAY, notAfter=now - DAY)
        )
        self.assertRefused("expired on")

    def test_refusedThenGood(self) -> None:
        """After a refused rotation, the next good one is taken."""
        self.store.update(pki.kubeletClient("edge-2"))
        self.poll()
        good = pki.kubeletClient("edge-1", notBefore=_now() - 2 * DAY)
        self.store.update(good)
        self.poll()
        self.assertEqual([serial(c) for c in self.changes], [good.certificate.serial_number])
        self.assertEqual(
            self.clock.getDelayedCalls()[0].getTime(), self.clock.seconds() + INTERVAL
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
