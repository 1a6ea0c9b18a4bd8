# -*- test-case-name: tests.tap.test_agent_signer -*-
"""
The daemons' options of the CSR bootstrap: the server's
C{--agent-signer-ca-cert}/C{--agent-signer-ca-key} refused at start-up as
the minting CA is (exposed key, no CA), and when agents would not be
checked against it; the agent's C{--bootstrap-kubeconfig} and what it
excludes.  The CSR API itself: L{tests.system.test_kube.CSRBootstrapTests}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI, temporaryDirectory
from tests.tap import test_serving_certs as servingTests
from twisted_tunnel.tap import agent as tapagent
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls.certs import mintAgent, mintCA, writePair

pki = TestPKI()


class ServerOptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory, stem="server")
        self.signer = mintCA("agent signer")
        pair = pki.writePair(self.signer, self.directory, "signer")
        self.signerArgs = ["--agent-signer-ca-cert", pair.cert, "--agent-signer-ca-key", pair.key]
        self.bundle = os.path.join(self.directory, "agent-ca.pem")
        with open(self.bundle, "wb") as f:
            f.write(pki.ca.certificatePEM() + self.signer.certificatePEM())
        self.kubeconfig = os.path.join(self.directory, "kubeconfig")
        with open(self.kubeconfig, "w") as f:
            json.dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                },
                f,
            )

    # the minting CA's start-up tests' helpers: the options with this
    # server's certificate, and the one line it stops with
    options = servingTests.MintingListenerTests.options
    fatal = servingTests.MintingListenerTests.fatal

    def test_needsTheAPI(self) -> None:
        with self.assertRaises(UsageError) as raised:
            self.options(*self.signerArgs)
        self.assertIn("needs --kubeconfig or --in-cluster", str(raised.exception))

    def test_together(self) -> None:
        with self.assertRaises(UsageError):
            self.options(*self.signerArgs[:2], "--kubeconfig", self.kubeconfig)

    def test_exposedKeyStopsStartup(self) -> None:
        os.chmod(self.signerArgs[3], 0o644)
        line = self.fatal(
            *self.signerArgs, "--agent-ca", self.bundle, "--kubeconfig", self.kubeconfig
        )
        self.assertIn("--agent-signer-ca-key", line)
        self.assertIn("accessible by others", line)

    def test_notACA(self) -> None:
        leaf = pki.writePair(mintAgent(self.signer, "edge-1"), self.directory, "leaf")
        line = self.fatal(
            "--agent-signer-ca-cert", leaf.cert, "--agent-signer-ca-key", leaf.key,
            "--kubeconfig", self.kubeconfig,
        )  # fmt: skip
        self.assertIn("is not a CA certificate", line)

    def test_notInTheAgentCA(self) -> None:
        """The agents' CA bundle (--ca here) must hold it: its certificates would be refused."""
        line = self.fatal(*self.signerArgs, "--kubeconfig", self.kubeconfig)
        self.assertIn("is not in the CA bundle agents are checked against", line)

    def test_started(self) -> None:
        """With all that right, the CSR watch is a service of the daemon."""
        top = tapserver.makeService(
            self.options(
                *self.signerArgs, "--agent-ca", self.bundle, "--kubeconfig", self.kubeconfig
            )
        )
        self.assertIsNotNone(top.getServiceNamed("--agent-signer-ca-cert"))  # type: ignore[attr-defined]

    def test_signerRotation(self) -> None:
        """
        The signer's files are watched as every other certificate's: a new
        CA in the agents' bundle signs from the next CSR on; one that is
        not in the bundle (its certificates would be refused) is refused
        with one line, and the CA in force stays.
        """
        nextSigner, stranger = mintCA("agent signer, next"), mintCA("not in the bundle")
        with open(self.bundle, "ab") as f:
            f.write(nextSigner.certificatePEM())
        top: Any = tapserver.makeService(
            self.options(
                *self.signerArgs, "--agent-ca", self.bundle, "--kubeconfig", self.kubeconfig
            )
        )
        approver = top.getServiceNamed("--agent-signer-ca-cert").listener
        watcher = top.getServiceNamed("tls:--agent-signer-ca-cert")
        watcher.startService()
        self.addCleanup(watcher.stopService)
        self.assertEqual(approver.authority.certificate.subject, self.signer.certificate.subject)
        writePair(nextSigner, self.signerArgs[1], self.signerArgs[3])
        self.assertTrue(watcher.poll())
        self.assertEqual(approver.authority.certificate.subject, nextSigner.certificate.subject)
        writePair(stranger, self.signerArgs[1], self.signerArgs[3])
        with capturedLogs() as events:
            self.assertFalse(watcher.poll())
        refused = [e for e in events if "rotation refused" in e["log_format"]]
        self.assertEqual(len(refused), 1, events)
        self.assertIn("is not in the CA bundle agents are checked against", refused[0]["reason"])
        self.assertEqual(approver.authority.certificate.subject, nextSigner.certificate.subject)

    def test_agentBundleRotation(self) -> None:
        """
        The signer is checked against the agents' bundle as it is now: a
        CA added to it by a rotation can sign once the signer's files turn
        to it; a rotation of the bundle that drops the CA in force (every
        agent it signed would be refused) is refused with one line, and
        the bundle in force stays.
        """
        top: Any = tapserver.makeService(
            self.options(
                *self.signerArgs, "--agent-ca", self.bundle, "--kubeconfig", self.kubeconfig
            )
        )
        approver = top.getServiceNamed("--agent-signer-ca-cert").listener
        signerWatcher = top.getServiceNamed("tls:--agent-signer-ca-cert")
        bundleWatcher = top.getServiceNamed("tls:--cert")
        server = top.tunnelServer
        nextSigner = mintCA("agent signer, next")
        with open(self.bundle, "ab") as f:
            f.write(nextSigner.certificatePEM())
        self.assertTrue(bundleWatcher.poll())
        self.assertEqual(len(server.credentials.authority), 3)
        writePair(nextSigner, self.signerArgs[1], self.signerArgs[3])
        self.assertTrue(signerWatcher.poll())
        self.assertEqual(approver.authority.certificate.subject, nextSigner.certificate.subject)
        with open(self.bundle, "wb") as f:
            f.write(pki.ca.certificatePEM() + self.signer.certificatePEM())
        with capturedLogs() as events:
            self.assertFalse(bundleWatcher.poll())
        refused = [e for e in events if "rotation refused" in e["log_format"]]
        self.assertEqual(len(refused), 1, events)
        self.assertIn("the new bundle lacks", refused[0]["reason"])
        self.assertIn("--agent-ca", refused[0]["reason"])
        self.assertEqual(len(server.credentials.authority), 3)


class AgentOptionTests(SynchronousTestCase):
    def parse(self, *arguments: str) -> tapagent.Options:
        options = tapagent.Options()
        directory = temporaryDirectory(self)
        ca = pki.writePair(pki.ca, directory, "ca").cert
        options.parseOptions(["--server", "127.0.0.1:10262", "--ca", ca, *arguments])
        return options

    def test_excludes(self) -> None:
        for other in ("--cert", "--key", "--kubelet-client-cert"):
            with self.assertRaises(UsageError) as raised:
                self.parse("--bootstrap-kubeconfig", "/k", "--node-name", "edge-1", other, "/x")
            self.assertIn("exclude each other", str(raised.exception))

    def test_needsNodeName(self) -> None:
        with self.assertRaises(UsageError) as raised:
            self.parse("--bootstrap-kubeconfig", "/k")
        self.assertIn("needs --node-name", str(raised.exception))

    def test_parsed(self) -> None:
        options = self.parse("--bootstrap-kubeconfig", "/k", "--node-name", "edge-1")
        self.assertEqual(options["cert-dir"], "/var/lib/edge-tunnel/pki")
        self.assertEqual(options["bootstrap-timeout"], 300.0)
