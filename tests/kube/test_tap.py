# -*- test-case-name: tests.kube.test_tap -*-
"""
The server's options to read its ConfigMap from the API and to watch its
Nodes (C{twisted_tunnel.tap._kubeapi}): what they accept and refuse, the
line a daemon stops with when the C{kubernetes} extra is missing or the API
cannot be read at start-up, the one client they share.
"""

from __future__ import annotations

import io
import os
import sys

from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.kube import unreachableKubeconfig
from tests.pki import temporaryDirectory
from twisted_tunnel.server.directory import NodeDirectory
from twisted_tunnel.tap import _kubeapi
from twisted_tunnel.tap.agent import PROGRAM as AGENT
from twisted_tunnel.tap.server import PROGRAM, Options

FILES = ["--ca", "ca.pem", "--cert", "cert.pem", "--key", "key.pem"]


def parse(*arguments: str) -> Options:
    options = Options()
    options.parseOptions([*FILES, *arguments])
    return options


class OptionTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        options = parse("--config-configmap", "kube-system/edge-tunnel-server-cfg", "--in-cluster")
        self.assertEqual(options["config-configmap"], "kube-system/edge-tunnel-server-cfg")
        self.assertTrue(options["in-cluster"])
        options = parse("--config-configmap", "ns/c", "--kubeconfig", "/etc/k.conf")
        self.assertEqual(options["kubeconfig"], "/etc/k.conf")

    def test_refused(self) -> None:
        """Each refusal says what is wrong, in one line."""
        for arguments, said in [
            (["--config-configmap", "kube-system/cfg"], "needs --kubeconfig or --in-cluster"),
            (
                ["--config-configmap", "kube-system/cfg", "--in-cluster", "--config", "/c"],
                "two sources",
            ),
            (["--kubeconfig", "/k", "--in-cluster"], "two ways"),
            (["--config-configmap", "cfg", "--in-cluster"], "expected NAMESPACE/NAME"),
            (["--config-configmap", "Kube_System/cfg", "--in-cluster"], "NAMESPACE/NAME"),
            (["--config-configmap", "ns/a/b", "--in-cluster"], "NAMESPACE/NAME"),
            (["--config-configmap", "ns/" + "x" * 300, "--in-cluster"], "NAMESPACE/NAME"),
        ]:
            error = self.assertRaises(UsageError, parse, *arguments)
            self.assertIn(said, str(error), arguments)
            self.assertNotIn("\n", str(error))


class StartupTests(SynchronousTestCase):
    def stderr(self) -> io.StringIO:
        out = io.StringIO()
        self.patch(sys, "stderr", out)
        return out

    def stops(self, options: Options) -> str:
        """C{configMapIntake} stops the daemon: the one line it says why in."""
        out = self.stderr()
        top = MultiService()
        self.assertRaises(
            SystemExit,
            _kubeapi.configMapIntake,
            PROGRAM,
            options,
            Clock(),
            top,
            print,
            10264,
            None,
        )
        (line,) = out.getvalue().splitlines()
        self.assertEqual(list(top), [])
        return line

    def test_missingExtra(self) -> None:
        """
        Without lightkube, asking for the API stops the daemon with one line
        naming the extra to install; nothing else needs it.
        """
        saved = {
            name: module
            for name, module in sys.modules.items()
            if name.startswith(("lightkube", "twisted_tunnel.kube"))
        }
        for name in saved:
            del sys.modules[name]
        sys.modules["lightkube"] = None  # type: ignore[assignment]

        def restore() -> None:
            for name in [
                n for n in sys.modules if n.startswith(("lightkube", "twisted_tunnel.kube"))
            ]:
                del sys.modules[name]
            sys.modules.update(saved)

        self.addCleanup(restore)
        out = self.stderr()
        options = parse("--config-configmap", "kube-system/cfg", "--in-cluster")
        self.assertRaises(SystemExit, options.kubeAccess)
        (line,) = out.getvalue().splitlines()
        self.assertTrue(line.startswith(f"{PROGRAM}: --in-cluster needs the Kubernetes client: "))
        self.assertIn("pip install 'twisted-tunnel[kubernetes]'", line)

    def test_apiUnreachableAtStart(self) -> None:
        """
        The ConfigMap is read once at start-up, like the file: an API that
        does not answer stops the daemon with one line naming the API and
        why (here a loopback port nothing listens on).
        """
        path, port = unreachableKubeconfig(self)
        options = parse("--config-configmap", "kube-system/cfg", "--kubeconfig", path)
        line = self.stops(options)
        self.assertTrue(
            line.startswith(
                f"{PROGRAM}: --config-configmap kube-system/cfg: cannot reach the API at "
                f"https://127.0.0.1:{port}: ConnectError"
            ),
            line,
        )

    def test_badKubeconfig(self) -> None:
        """A kubeconfig that is missing, or not one: one line naming it."""
        directory = temporaryDirectory(self)
        notOne = os.path.join(directory, "not-one")
        with open(notOne, "w") as f:
            f.write("just: [a, list]\n")
        for path in (os.path.join(directory, "missing"), notOne):
            line = self.stops(parse("--config-configmap", "kube-system/cfg", "--kubeconfig", path))
            self.assertTrue(line.startswith(f"{PROGRAM}: --kubeconfig {path}: "), line)


class WatchNodesOptionTests(SynchronousTestCase):
    """C{--watch-nodes} and C{--edge-node-selector}."""

    def test_refused(self) -> None:
        for arguments, said in [
            (["--watch-nodes"], "--watch-nodes needs --kubeconfig or --in-cluster"),
            (
                ["--watch-nodes", "--in-cluster", "--edge-node-selector", "a in (b)"],
                "set-based",
            ),
            (["--watch-nodes", "--in-cluster", "--edge-node-selector", "a b"], "label key"),
        ]:
            error = self.assertRaises(UsageError, parse, *arguments)
            self.assertIn(said, str(error), arguments)
            self.assertNotIn("\n", str(error))

    def test_defaultSelector(self) -> None:
        """ACK's label by default; OpenYurt's is taken as well."""
        options = parse("--watch-nodes", "--in-cluster")
        self.assertEqual(options["edge-node-selector"], "alibabacloud.com/is-edge-worker=true")
        options = parse(
            "--watch-nodes",
            "--in-cluster",
            "--edge-node-selector",
            _kubeapi.OPENYURT_EDGE_SELECTOR,
        )
        self.assertEqual(options["edge-node-selector"], "openyurt.io/is-edge-worker=true")

    def test_oneClient(self) -> None:
        """
        The Node watch and the ConfigMap share the daemon's one client of the
        API, a service added before the watches (so stopped after them).
        """
        path, _ = unreachableKubeconfig(self)
        options = parse("--watch-nodes", "--kubeconfig", path)
        top = MultiService()
        access = options.kubeAccess()
        assert access is not None
        first = _kubeapi.sharedClient(PROGRAM, access, Clock(), top)
        self.addCleanup(first.stop)
        self.assertIs(_kubeapi.sharedClient(PROGRAM, access, Clock(), top), first)
        _kubeapi.watchNodes(PROGRAM, options, Clock(), top, NodeDirectory())
        self.assertEqual(
            [service.name for service in top], [_kubeapi.CLIENT_SERVICE, "--watch-nodes"]
        )

    def test_linesUnderTheDaemonsNamespace(self) -> None:
        """
        What this module logs for a daemon is logged under that daemon's
        namespace: the server's lines under the server's, the agent's
        (its CSR bootstrap) under the agent's.
        """
        path, _ = unreachableKubeconfig(self)
        options = parse("--watch-nodes", "--kubeconfig", path)
        top = MultiService()
        with capturedLogs() as events:
            _kubeapi.watchNodes(PROGRAM, options, Clock(), top, NodeDirectory())
        self.addCleanup(_kubeapi.sharedClient(PROGRAM, options.kubeAccess(), Clock(), top).stop)
        self.assertEqual(
            [event["log_namespace"] for event in events], ["twisted_tunnel.tap.server"]
        )
        self.assertEqual(_kubeapi.logFor(AGENT).namespace, "twisted_tunnel.tap.agent")
        self.assertEqual(_kubeapi.logFor(PROGRAM).namespace, "twisted_tunnel.tap.server")
