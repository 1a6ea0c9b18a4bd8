# -*- test-case-name: tests.system.test_kube -*-
"""
The daemons' Kubernetes API access against the real kube-apiserver
v1.37.2 of the interop world (L{InteropWorld.buildControlPlane}: etcd and
kube-apiserver in the cloud namespace, no edges): the server reads its
ConfigMap from the API (C{--config-configmap}) as the ServiceAccount of
the C{examples/kubernetes/configmap-api} overlay, with exactly that
overlay's RBAC, and everything is driven with the real C{kubectl}.

What is checked: a change applies within 2 s of C{kubectl apply} (timed
over a dozen applies, from the server's own log timestamps); an invalid
change is refused as for the file (one line naming key and value, the last
good configuration kept) and shows as a Warning Event in C{kubectl
describe configmap}, posted once per refusal and version; a deletion keeps
the last good configuration; the watch survives kube-apiserver restarting;
the Role lets the ServiceAccount do exactly what the server needs
(C{kubectl auth can-i}); and the watch bridge itself, for Nodes by label
selector, from a child in the cloud namespace (L{tests.system.kube_probe}).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from tests.interop.build import cached
from tests.interop.world import APISERVER_PORT, Cleanups, InteropWorld, _kubeconfig
from tests.netns import netnsUnavailable, pollUntil, requireNetns
from tests.realnet import daemonEnvironment, twistdCommand
from tests.system.e2e_world import (
    CLOUD_ADDRESS,
    SERVER_NAME,
    TUNNEL_PORT,
    Process,
    _pki,
)
from tests.system.test_manifests import MANIFESTS, render
from twisted_tunnel.kube.bootstrap import buildRequest
from twisted_tunnel.tls.certs import mintAgent, mintCA

NAMESPACE = "kube-system"
NAME = "edge-tunnel-server-cfg"
ACCOUNT = "edge-tunnel-server"
#: The longest a change may take from C{kubectl apply} to the server.
APPLY_TO_EFFECT = 2.0
#: Applies timed.
APPLIES = 12
PROBE = Path(__file__).resolve().parent / "kube_probe.py"
#: The edge label of the Node watch's default selector (ACK's).
EDGE_LABEL = "alibabacloud.com/is-edge-worker"
#: The server's hosts file (in the world's directory) and the address it lists.
HOSTS_FILE = "nodes.hosts"
HOSTS_ADDRESS = "127.0.0.9"
#: The server's meta listener in L{NodeWatchTests}.
META_PORT = 10265
#: The longest a Node's change may take to reach the server's routes.
WATCH_TO_ROUTE = 2.0


def configMap(data: dict[str, str], labels: dict[str, str] | None = None) -> str:
    metadata: dict[str, Any] = {"name": NAME, "namespace": NAMESPACE}
    if labels:
        metadata["labels"] = labels
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
    )


def records(process: Process, start: int = 0) -> list[dict[str, Any]]:
    """The server's JSON log lines from line C{start} on, parsed."""
    found = []
    for line in process.lines()[start:]:
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def _unavailable() -> str | None:
    reason = netnsUnavailable()
    if reason is None and (cached("etcd") is None or cached("kube") is None):
        reason = "not built: etcd, kube (run make interop-build)"
    return reason


class APITestCase(SynchronousTestCase):
    """One control plane and one server for the class: bring-up takes some seconds."""

    world: ClassVar[InteropWorld]
    server: ClassVar[Process]
    scope: ClassVar[Cleanups]
    setUpError: ClassVar[BaseException | None] = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.scope = Cleanups()
        if _unavailable() is not None:
            return
        try:
            cls.world = InteropWorld(cls.scope, edges=0).buildControlPlane()
            cls.startServer()
        except BaseException as e:
            cls.setUpError = e
            cls.scope.run()

    @classmethod
    def tearDownClass(cls) -> None:
        errors = cls.scope.run()
        if errors:
            raise AssertionError(f"tearing the world down failed: {errors!r}")

    #: The overlay whose RBAC the server's ServiceAccount gets.
    overlay: ClassVar[str] = "configmap-api"
    #: More options for the server.
    serverArguments: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def startServer(cls) -> None:
        world = cls.world
        rbac = [
            each
            for each in render(MANIFESTS / cls.overlay)
            if each["kind"]
            in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
        ]
        world.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}),
        )
        world.kubectl("apply", "-f", "-", input=configMap({"http-proxy-ports": "9100"}))
        cls.kubeconfig = world.serviceAccountKubeconfig(NAMESPACE, ACCOUNT)
        cls.server = world.startServer(
            ["--log-format", "json", "--server-id", "api-test", *cls.serverArguments],
            address="127.0.0.1",
            config=["--config-configmap", f"{NAMESPACE}/{NAME}", "--kubeconfig", cls.kubeconfig],
        )
        cls.server.waitForLine(r"watching configmaps in kube-system \(metadata.name=")

    def setUp(self) -> None:
        self.requireControlPlane()
        self.assertTrue(self.server.running, self.server.log()[-4000:])

    def requireControlPlane(self) -> None:
        """Skip, or fail under C{CI=true}, where the world cannot come up; fail if it did not."""
        requireNetns(self, "iptables")
        reason = _unavailable()
        if reason is not None:
            if os.environ.get("CI") == "true":
                self.fail(f"CI=true, so this test must run, but {reason}")
            self.skipTest(reason)
        if self.setUpError is not None:
            raise AssertionError(f"the world did not come up: {self.setUpError}")

    def apply(self, data: dict[str, str], **kwargs: Any) -> tuple[float, float]:
        """C{kubectl apply} the ConfigMap; the wall-clock times kubectl started and ended."""
        started = time.time()
        self.world.kubectl("apply", "-f", "-", input=configMap(data, **kwargs))
        return started, time.time()

    def waitForRecord(self, pattern: str, start: int, timeout: float = 10.0) -> dict[str, Any]:
        match = self.server.waitForLine(pattern, timeout, start=start)
        for record in records(self.server, start):
            if match.group(0) in json.dumps(record) or match.group(0) in record.get("text", ""):
                return record
        raise AssertionError(f"no JSON record for {pattern!r}")


class ConfigMapFromTheAPITests(APITestCase):
    def test_applyToEffect(self) -> None:
        """
        Each change applies within L{APPLY_TO_EFFECT} seconds of C{kubectl
        apply}: from the moment kubectl started (its own start-up
        included) to the server's log line saying it reloaded, by the
        server's own clock (the JSON line's C{log_time}), over L{APPLIES}
        applies. Median and maximum are printed.
        """
        fromStart, fromEnd = [], []
        for index in range(APPLIES):
            mark = self.server.mark()
            ports = f"9100, {9200 + index}"
            started, ended = self.apply({"http-proxy-ports": ports})
            record = self.waitForRecord(r"config reloaded from configmap kube-system/", mark)
            self.assertIn("http ports", record["text"])
            self.assertIn(str(9200 + index), record["config"])
            fromStart.append(record["log_time"] - started)
            fromEnd.append(record["log_time"] - ended)
        report = (
            f"apply-to-effect over {APPLIES} applies: from kubectl's start median "
            f"{statistics.median(fromStart) * 1000:.0f} ms, max {max(fromStart) * 1000:.0f} ms; "
            f"from kubectl's exit median {statistics.median(fromEnd) * 1000:.0f} ms, "
            f"max {max(fromEnd) * 1000:.0f} ms"
        )
        print(report, file=sys.stderr)
        self.assertLess(max(fromStart), APPLY_TO_EFFECT, report)

    def test_invalidChangeRefusedWithAnEvent(self) -> None:
        """
        An invalid change: refused with one log line naming the key and the
        value, the last good configuration kept; a Warning Event on the
        ConfigMap (its uid and resourceVersion), which C{kubectl describe}
        shows; the same refused content again (another version: a label
        changed) logs nothing more; a valid change then applies.
        """
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 9300"})
        self.waitForRecord(r"config reloaded from", mark)
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 99999"})
        record = self.waitForRecord(r"config refused, the last good one stays active", mark)
        self.assertEqual(record["key"], "http-proxy-ports")
        self.assertEqual(record["value"], "9100, 99999")
        self.assertEqual(
            record["text"],
            "config refused, the last good one stays active: configmap "
            "kube-system/edge-tunnel-server-cfg: key 'http-proxy-ports', value '9100, 99999': "
            "99999 is outside 1-65535",
        )
        live = json.loads(
            self.world.kubectl("get", "configmap", "-n", NAMESPACE, NAME, "-o", "json").stdout
        )
        uid, version = live["metadata"]["uid"], live["metadata"]["resourceVersion"]

        def events() -> list[dict[str, Any]]:
            listed = self.world.kubectl(
                "get", "events", "-n", NAMESPACE, "-o", "json",
                f"--field-selector=involvedObject.uid={uid},reason=ConfigRefused",
            )  # fmt: skip
            return [
                each
                for each in json.loads(listed.stdout)["items"]
                if each["involvedObject"].get("resourceVersion") == version
            ]

        pollUntil(lambda: len(events()) == 1, 10.0, "the ConfigRefused event")
        (event,) = events()
        self.assertEqual(event["type"], "Warning")
        self.assertEqual(
            {k: event["involvedObject"].get(k) for k in ("kind", "namespace", "name", "uid")},
            {"kind": "ConfigMap", "namespace": NAMESPACE, "name": NAME, "uid": uid},
        )
        self.assertIn("key 'http-proxy-ports', value '9100, 99999'", event["message"])
        self.assertEqual(event["source"]["component"], "edge-tunnel-server")
        described = self.world.kubectl("describe", "configmap", "-n", NAMESPACE, NAME).stdout
        self.assertRegex(described, r"Warning\s+ConfigRefused\s+.*edge-tunnel-server")
        self.assertIn("99999 is outside 1-65535", described)

        # the same refused data in a new version: no second line, no second event
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 99999"}, labels={"touched": "yes"})
        self.apply({"http-proxy-ports": "9100, 9301"})
        self.waitForRecord(r"config reloaded from", mark)
        self.assertEqual(self.server.count(r"config refused", mark), 0)
        self.assertEqual(len(events()), 1)
        self.assertEqual(self.server.count(r"could not post"), 0)

    def test_deletedKeepsTheLastGood(self) -> None:
        """
        Deleting the ConfigMap keeps the configuration in force, said once
        in the log; created again, it applies.
        """
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 9400"})
        self.waitForRecord(r"config reloaded from", mark)
        mark = self.server.mark()
        self.world.kubectl("delete", "configmap", "-n", NAMESPACE, NAME)
        record = self.waitForRecord(
            r"was deleted: the last good configuration stays in force", mark
        )
        self.assertIn("9400", record["text"])
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 9401"})
        record = self.waitForRecord(r"config reloaded from", mark)
        self.assertEqual(record["changes"], "http ports 9100, 9400, 10255 → 9100, 9401, 10255")

    def test_watchSurvivesAnAPIServerRestart(self) -> None:
        """
        kube-apiserver killed (SIGKILL: a graceful stop waits a minute for
        the open watches) and started again: the watch fails, backs off,
        comes back (from its last version, or by listing), and the next
        change applies.
        """
        world = self.world
        mark = self.server.mark()
        world.apiserver.stop(signal.SIGKILL, 30)
        self.server.waitForLine(r"watch configmaps in kube-system .* failed", 30, start=mark)
        world.apiserver = world.startAPIServer()
        world.waitForAPIServer()
        mark = self.server.mark()
        self.apply({"http-proxy-ports": "9100, 9500"})
        self.waitForRecord(r"config reloaded from", mark, timeout=40)
        self.assertTrue(self.server.running)


class RBACTests(APITestCase):
    """The overlay's Role, as the real kube-apiserver authorizes it."""

    def canI(self, *arguments: str) -> bool:
        result = self.world.kubectl(
            "auth", "can-i", *arguments, f"--as=system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
            check=False,
        )  # fmt: skip
        answer = result.stdout.strip()
        self.assertIn(answer, ("yes", "no"), result.stderr)
        return answer == "yes"

    def test_exactlyWhatItNeeds(self) -> None:
        """
        The ServiceAccount can get, list and watch its ConfigMap (by name)
        and create and patch Events in its namespace; nothing else: not
        another ConfigMap, not every ConfigMap, not a Secret, not a change
        to its ConfigMap, not Events elsewhere.
        """
        allowed = [
            ("get", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("list", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("watch", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("create", "events", "-n", NAMESPACE),
            ("patch", "events", "-n", NAMESPACE),
        ]
        refused = [
            ("get", "configmaps/coredns", "-n", NAMESPACE),
            ("list", "configmaps", "-n", NAMESPACE),
            ("watch", "configmaps", "-n", NAMESPACE),
            ("get", "configmaps", "-n", NAMESPACE),
            ("get", f"configmaps/{NAME}", "-n", "default"),
            ("update", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("patch", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("delete", f"configmaps/{NAME}", "-n", NAMESPACE),
            ("get", "secrets", "-n", NAMESPACE),
            ("list", "secrets", "-n", NAMESPACE),
            ("get", "secrets/anything", "-n", NAMESPACE),
            ("create", "events", "-n", "default"),
            ("delete", "events", "-n", NAMESPACE),
            ("list", "events", "-n", NAMESPACE),
            ("list", "nodes"),
            ("create", "configmaps", "-n", NAMESPACE),
        ]
        for arguments in allowed:
            self.assertTrue(self.canI(*arguments), arguments)
        for arguments in refused:
            self.assertFalse(self.canI(*arguments), arguments)

    def test_fieldSelectorIsAuthorizedByName(self) -> None:
        """
        What the server's watch does, as that ServiceAccount: a list and a
        watch with C{fieldSelector=metadata.name=<its ConfigMap>} are
        allowed by the Role's C{resourceNames}; without the selector, or
        for another name, they are forbidden (403).
        """
        path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"

        def get(query: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                self.world.cloud.command(
                    str(self.world.bin["kubectl"]),
                    f"--kubeconfig={self.kubeconfig}",
                    "get",
                    "--raw",
                    f"{path}?{query}",
                ),  # fmt: skip
                capture_output=True,
                text=True,
                env=self.world.kubectlEnvironment(),
                timeout=30,
                check=False,
            )

        for query in (
            f"fieldSelector=metadata.name%3D{NAME}",
            f"fieldSelector=metadata.name%3D{NAME}&watch=true&timeoutSeconds=1",
        ):
            done = get(query)
            self.assertEqual(done.returncode, 0, (query, done.stderr))
        for query in ("", "fieldSelector=metadata.name%3Dcoredns", "watch=true&timeoutSeconds=1"):
            done = get(query)
            self.assertNotEqual(done.returncode, 0, query)
            self.assertIn("forbidden", done.stderr, query)


class WatchBridgeTests(APITestCase):
    """
    The watch bridge itself, reused for Nodes by label selector (what
    "node IPs from the API" builds on), in a child process in the cloud
    namespace (L{tests.system.kube_probe}: a real reactor, a real
    L{KubeClient}, the admin's kubeconfig), driven with kubectl.
    """

    def createNode(self, name: str, labels: dict[str, str], address: str) -> None:
        """A Node, then its address (status, which a create does not set)."""
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        self.world.kubectl("create", "-f", "-", input=json.dumps(node))
        status = {"status": {"addresses": [{"type": "InternalIP", "address": address}]}}
        self.world.kubectl(
            "patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )

    def startProbe(
        self,
        credentials: str,
        selector: str,
        environment: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[str], Any, list[dict[str, Any]]]:
        """
        The probe, a function that reads its JSON lines until one matches
        (failing with all it said after a deadline), and the lines read.
        """
        probe = subprocess.Popen(
            # watches the server ends every 2 s: several reconnects in one test
            self.world.cloud.command(
                sys.executable, str(PROBE), credentials, selector, "65536", "2"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(daemonEnvironment(), **(environment or {})),
        )
        self.addCleanup(lambda: probe.poll() is None and probe.kill())
        lines: list[dict[str, Any]] = []
        output: queue.Queue[str] = queue.Queue()
        other: list[str] = []
        reader = threading.Thread(
            target=lambda: [output.put(line) for line in probe.stdout or ()], daemon=True
        )
        reader.start()

        def until(predicate: Any, what: str, timeout: float = 15.0) -> dict[str, Any]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    line = output.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    other.append(line)
                    continue
                lines.append(record)
                if predicate(record):
                    return record
            raise AssertionError(f"the probe never said {what}: {lines}\n{''.join(other)}")

        return probe, until, lines

    def test_inCluster(self) -> None:
        """
        A client from in-cluster credentials (a ServiceAccount's token and
        the cluster CA in a directory, the API's address in
        C{KUBERNETES_SERVICE_HOST} and C{_PORT}) lists and watches the real
        API, as that ServiceAccount.
        """
        world = self.world
        world.kubectl("create", "serviceaccount", "probe", "-n", NAMESPACE)
        world.kubectl(
            "create", "clusterrole", "probe-nodes", "--verb=get,list,watch", "--resource=nodes"
        )
        world.kubectl(
            "create", "clusterrolebinding", "probe-nodes", "--clusterrole=probe-nodes",
            f"--serviceaccount={NAMESPACE}:probe",
        )  # fmt: skip
        directory = os.path.join(world.directory, "serviceaccount")
        os.mkdir(directory)
        token = world.kubectl("create", "token", "probe", "-n", NAMESPACE).stdout.strip()
        with open(world.clusterCA) as f:
            contents = {"token": token, "ca.crt": f.read(), "namespace": NAMESPACE}
        for name, content in contents.items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(content)
        self.createNode("probe-in-cluster", {"probe": "in-cluster"}, "172.30.9.7")
        self.addCleanup(world.kubectl, "delete", "node", "probe-in-cluster", check=False)
        probe, until, _ = self.startProbe(
            f"in-cluster:{directory}",
            "probe=in-cluster",
            {
                "KUBERNETES_SERVICE_HOST": CLOUD_ADDRESS,
                "KUBERNETES_SERVICE_PORT": str(APISERVER_PORT),
            },
        )
        said = until(lambda r: r["event"] == "client", "its server")
        self.assertEqual(said["server"], f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}")
        listed = until(lambda r: r["event"] == "listed", "listed")
        self.assertEqual(listed["nodes"], {"probe-in-cluster": ["172.30.9.7"]})
        world.kubectl("delete", "node", "probe-in-cluster")
        deleted = until(lambda r: r["event"] == "changed", "the deletion")
        self.assertEqual((deleted["type"], deleted["name"]), ("DELETED", "probe-in-cluster"))
        assert probe.stdin is not None
        probe.stdin.write("stop\n")
        probe.stdin.flush()
        until(lambda r: r["event"] == "stopped", "stopped")
        self.assertEqual(probe.wait(10), 0)

    def test_nodesByLabel(self) -> None:
        """
        The probe lists the edge Nodes (label selector), hears each change
        typed (an address added, a label removed: DELETED for the
        selector, a Node deleted), refuses a Node grown over its bound
        (logged, not delivered), and stops within a second while blocked
        on the watch; every delivery runs in the reactor thread. The server
        ends each watch after 2 s: every change still arrives, once.
        """
        world = self.world
        label = "alibabacloud.com/is-edge-worker"
        self.createNode("probe-1", {label: "true"}, "172.30.9.1")
        self.createNode("probe-cloud", {}, "10.200.0.9")
        probe, until, lines = self.startProbe(world.adminKubeconfig, f"{label}=true")
        assert probe.stdin is not None
        listed = until(lambda r: r["event"] == "listed", "listed")
        self.assertEqual(listed["nodes"], {"probe-1": ["172.30.9.1"]})
        self.createNode("probe-2", {label: "true"}, "172.30.9.2")
        added = until(lambda r: r["event"] == "changed", "probe-2 added")
        self.assertEqual((added["type"], added["name"]), ("ADDED", "probe-2"))
        addressed = until(lambda r: r["event"] == "changed", "probe-2's address")
        self.assertEqual((addressed["type"], addressed["addresses"]), ("MODIFIED", ["172.30.9.2"]))
        world.kubectl("label", "node", "probe-1", f"{label}-")
        gone = until(lambda r: r["event"] == "changed" and r["name"] == "probe-1", "probe-1 left")
        self.assertEqual(gone["type"], "DELETED")
        world.kubectl("annotate", "node", "probe-2", f"big={'x' * 70000}", "--overwrite")
        refused = until(lambda r: r["event"] == "refused", "the big Node refused")
        self.assertEqual((refused["where"], refused["name"]), ("MODIFIED", "probe-2"))
        self.assertGreater(refused["size"], 65536)
        # its deletion carries its last (oversized) state: refused too, but told as a deletion
        world.kubectl("delete", "node", "probe-2")
        deleted = until(lambda r: r["event"] == "refused", "probe-2 deleted")
        self.assertEqual((deleted["where"], deleted["name"]), ("DELETED", "probe-2"))
        self.assertFalse(
            [r for r in lines if r["event"] == "changed" and r["name"] == "probe-cloud"]
        )
        probe.stdin.write("stop\n")
        probe.stdin.flush()
        stopped = until(lambda r: r["event"] == "stopped", "stopped")
        # every delivery ran in the reactor thread, none in the watch's
        self.assertEqual({r["inReactor"] for r in lines}, {True})
        # the server ended the watch every 2 s (timeoutSeconds=2), and the
        # bridge watched again from where it was: no failure, nothing missed
        self.assertEqual([r for r in lines if r["event"] == "broken"], [])
        changes = [(r["type"], r["name"]) for r in lines if r["event"] == "changed"]
        self.assertEqual(
            changes,
            [("ADDED", "probe-2"), ("MODIFIED", "probe-2"), ("DELETED", "probe-1")],
        )
        self.assertLess(stopped["seconds"], 1.0)
        self.assertEqual(probe.wait(10), 0)
        world.kubectl("delete", "node", "probe-cloud")


class NodeWatchTests(APITestCase):
    """
    C{--watch-nodes}, as the C{node-api} overlay's ServiceAccount: the
    edge Nodes are routed (here: the hosts file lists them), a Node's
    addresses prove its agent's IPs (an agent whose certificate carries
    none, as a kubelet's), and both follow the API: a label removed, an
    address changed, a Node deleted.
    """

    overlay = "node-api"
    serverArguments = (
        "--watch-nodes",
        "--hosts-file",
        HOSTS_FILE,
        "--hosts-address",
        HOSTS_ADDRESS,
        "--meta-endpoint",
        f"tcp:{META_PORT}:interface=127.0.0.1",
    )

    createNode = WatchBridgeTests.createNode

    def hosts(self) -> set[str]:
        """The node names the server's hosts file lists."""
        try:
            text = Path(self.world.directory, HOSTS_FILE).read_text()
        except FileNotFoundError:
            return set()
        return {line.split()[1] for line in text.splitlines() if line.startswith(HOSTS_ADDRESS)}

    def agents(self) -> dict[str, list[str]]:
        """Each connected agent's routed IPs, from the server's C{/agents}."""
        result = subprocess.run(
            self.world.cloud.command("curl", "-sf", f"http://127.0.0.1:{META_PORT}/agents"),
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0:
            return {}
        return {a["node"]: a["ips"] for a in json.loads(result.stdout)["agents"]}

    def dnat(self) -> str:
        """The server's NAT rules in the cloud namespace (C{iptables-save})."""
        return subprocess.run(
            self.world.cloud.command("iptables-save", "-t", "nat"),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    def test_edgeNodesRouted(self) -> None:
        """
        Every edge Node is routed (its DNAT rules, the hosts file), a cloud
        Node is not; a Node labelled as edge comes in, one whose label goes,
        or that is deleted, leaves. The time from C{kubectl label} to the
        rules and to the file is measured.
        """
        address = "172.30.8.21"
        self.createNode("edge-r1", {EDGE_LABEL: "true"}, "172.30.8.1")
        self.createNode("cloud-r1", {}, address)
        pollUntil(lambda: "edge-r1" in self.hosts(), 10, "edge-r1 routed")
        pollUntil(lambda: "172.30.8.1/32" in self.dnat(), 10, "edge-r1's DNAT")
        self.assertNotIn("cloud-r1", self.hosts())
        self.assertNotIn(f"{address}/32", self.dnat())
        toRules, toFile = [], []
        for _ in range(5):
            for change, present in (
                (("label", "node", "cloud-r1", f"{EDGE_LABEL}=true"), True),
                (("label", "node", "cloud-r1", f"{EDGE_LABEL}-"), False),
            ):
                start = time.monotonic()
                self.world.kubectl(*change)
                seen: dict[str, float] = {}
                while len(seen) < 2 and time.monotonic() - start < 10:
                    if "rules" not in seen and (f"{address}/32" in self.dnat()) == present:
                        seen["rules"] = time.monotonic() - start
                    if "file" not in seen and ("cloud-r1" in self.hosts()) == present:
                        seen["file"] = time.monotonic() - start
                    time.sleep(0.005)
                self.assertEqual(set(seen), {"rules", "file"}, f"{change}: only {seen}")
                toRules.append(seen["rules"])
                toFile.append(seen["file"])
        self.world.kubectl("delete", "node", "edge-r1", "cloud-r1")
        pollUntil(lambda: not self.hosts() & {"edge-r1", "cloud-r1"}, 10, "deleted, unrouted")
        pollUntil(lambda: "172.30.8.1/32" not in self.dnat(), 10, "deleted, no DNAT")
        for what, seconds in (("DNAT rules", toRules), ("hosts file", toFile)):
            print(
                f"\nkubectl label -> {what}: median {statistics.median(seconds) * 1000:.0f} ms, "
                f"max {max(seconds) * 1000:.0f} ms over {len(seconds)}",
                file=sys.stderr,
            )
        self.assertLess(max(toFile + toRules), WATCH_TO_ROUTE)

    def test_agentsIPsProvenByItsNode(self) -> None:
        """
        An agent whose certificate carries no IP announces its node's IP: it
        routes once its edge Node lists it, stops when the Node lists
        another address, and comes back; another Node listing it too makes
        it prove nothing.
        """
        world = self.world
        self.createNode("edge-p1", {EDGE_LABEL: "true"}, "172.30.8.11")
        pollUntil(lambda: "edge-p1" in self.hosts(), 10, "edge-p1 listed")
        cert, key = world._write(_pki.agent("edge-p1"), "agent-edge-p1")
        agent = world._spawn(
            world.cloud,
            "agent-edge-p1",
            twistdCommand(
                "edge-tunnel-agent",
                [
                    "--ca",
                    world.tunnelCA,
                    "--cert",
                    cert,
                    "--key",
                    key,
                    "--server",
                    f"127.0.0.1:{TUNNEL_PORT}",
                    "--server-name",
                    SERVER_NAME,
                    "--node-ip",
                    "172.30.8.11",
                    "--max-backoff",
                    "0.5",
                    "--meta-endpoint",
                    "none",
                ],
            ),  # fmt: skip
            env=daemonEnvironment(),
            cwd=world.directory,
        )
        self.addCleanup(agent.stop)
        pollUntil(lambda: self.agents().get("edge-p1") == ["172.30.8.11"], 15, "proven")
        status = {"status": {"addresses": [{"type": "InternalIP", "address": "172.30.8.12"}]}}
        world.kubectl(
            "patch", "node", "edge-p1", "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip
        pollUntil(lambda: self.agents().get("edge-p1") == [], 10, "unproven by the new address")
        status["status"]["addresses"][0]["address"] = "172.30.8.11"
        world.kubectl(
            "patch", "node", "edge-p1", "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip
        pollUntil(lambda: self.agents().get("edge-p1") == ["172.30.8.11"], 10, "proven again")
        self.createNode("cloud-p1", {}, "172.30.8.11")
        pollUntil(lambda: self.agents().get("edge-p1") == [], 10, "claimed by a cloud Node too")
        world.kubectl("delete", "node", "cloud-p1")
        pollUntil(lambda: self.agents().get("edge-p1") == ["172.30.8.11"], 10, "its own again")
        world.kubectl("delete", "node", "edge-p1")
        pollUntil(lambda: self.agents().get("edge-p1") == [], 10, "its Node deleted")

    def test_rbac(self) -> None:
        """The ServiceAccount lists and watches Nodes, and changes none, nor reads Secrets."""
        canI = RBACTests.canI
        for arguments in (("list", "nodes"), ("watch", "nodes")):
            self.assertTrue(canI(self, *arguments), arguments)  # type: ignore[arg-type]
        for arguments in (
            ("get", "nodes"),
            ("update", "nodes"),
            ("patch", "nodes/status"),
            ("delete", "nodes"),
            ("get", "nodes/proxy"),
            ("create", "nodes"),
            ("list", "secrets", "-A"),
            ("list", "pods", "-A"),
        ):
            self.assertFalse(canI(self, *arguments), arguments)  # type: ignore[arg-type]


__all__ = ["APISERVER_PORT", "CLOUD_ADDRESS"]


#: The tunnel's signer of agent certificates.
AGENT_SIGNER = "twisted-tunnel.io/agent"


class CSRBootstrapTests(APITestCase):
    """
    C{--agent-signer-ca-cert} and the agent's C{--bootstrap-kubeconfig}, as
    the C{csr-bootstrap} overlay's ServiceAccount: a node's request, made
    with the node's own credentials (a client certificate of the cluster CA
    for C{system:node:edge-c1}), is approved and signed, and the agent
    holds its tunnel with the certificate; a request for another node's
    name, with the wrong usages, or from anyone but a node is denied with
    its reason in the CSR; another signer's CSR is left alone.
    """

    overlay = "csr-bootstrap"

    @classmethod
    def startServer(cls) -> None:
        world = cls.world
        signer = mintCA("interop agent signer")
        cls.signerCert, cls.signerKey = world._write(signer, "agent-signer")
        bundle = os.path.join(world.directory, "agent-ca-bundle.pem")
        with open(world.tunnelCA, "rb") as f:
            tunnelCA = f.read()
        with open(bundle, "wb") as f:
            f.write(tunnelCA + signer.certificatePEM())
        cls.serverArguments = (
            "--agent-signer-ca-cert", cls.signerCert,
            "--agent-signer-ca-key", cls.signerKey,
            "--agent-ca", bundle,
        )  # fmt: skip
        super().startServer()
        cls.server.waitForLine(r"watching certificatesigningrequests \(spec.signerName=")

    def nodeKubeconfig(self, name: str) -> str:
        """A kubeconfig that authenticates as node C{name} (a cluster CA client certificate)."""
        world = self.world
        cert, key = world._write(mintAgent(world.clusterAuthority, name), f"node-api-{name}")
        path = os.path.join(world.directory, f"node-{name}.kubeconfig")
        _kubeconfig(
            path,
            f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}",
            world.clusterCA,
            cert,
            key,
            f"system:node:{name}",
        )
        return path

    def kubectlAs(
        self, kubeconfig: str, *arguments: str, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.world.cloud.command(
                str(self.world.bin["kubectl"]), f"--kubeconfig={kubeconfig}", *arguments
            ),
            input=input,
            capture_output=True,
            text=True,
            env=self.world.kubectlEnvironment(),
            timeout=30,
            check=False,
        )

    def createCSR(
        self,
        kubeconfig: str | None,
        name: str,
        subjectNode: str,
        usages: list[str],
        signer: str = AGENT_SIGNER,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        body = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {
                "request": base64.b64encode(buildRequest(subjectNode, key)).decode(),
                "signerName": signer,
                "usages": usages,
                "expirationSeconds": 3600,
            },
        }
        if kubeconfig is None:
            self.world.kubectl("create", "-f", "-", input=json.dumps(body))
        else:
            done = self.kubectlAs(kubeconfig, "create", "-f", "-", input=json.dumps(body))
            self.assertEqual(done.returncode, 0, done.stderr)

    def csr(self, name: str) -> dict[str, Any]:
        return json.loads(self.world.kubectl("get", "csr", name, "-o", "json").stdout)

    def condition(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first condition of CSR C{name}, once it has one."""
        found: list[dict[str, Any]] = []

        def has() -> bool:
            found[:] = self.csr(name).get("status", {}).get("conditions", [])
            return bool(found)

        pollUntil(has, timeout, f"CSR {name} decided")
        return found[0]

    def test_nodeMayCreateCSRs(self) -> None:
        """The Node authorizer lets a node create and read CSRs: no binding needed."""
        for verb in ("create", "get", "list", "watch"):
            result = self.world.kubectl(
                "auth", "can-i", verb, "certificatesigningrequests.certificates.k8s.io",
                "--as=system:node:edge-c9", "--as-group=system:nodes", check=False,
            )  # fmt: skip
            self.assertEqual(result.stdout.strip(), "yes", (verb, result.stderr))

    def startAgent(self, node: str, kubeconfig: str, certDir: str) -> Process:
        world = self.world
        return world._spawn(
            world.cloud,
            f"agent-{node}",
            twistdCommand(
                "edge-tunnel-agent",
                [
                    "--ca",
                    world.tunnelCA,
                    "--bootstrap-kubeconfig",
                    kubeconfig,
                    "--cert-dir",
                    certDir,
                    "--node-name",
                    node,
                    "--server",
                    f"127.0.0.1:{TUNNEL_PORT}",
                    "--server-name",
                    SERVER_NAME,
                    "--max-backoff",
                    "0.5",
                    "--meta-endpoint",
                    "none",
                    "--bootstrap-timeout",
                    "30",
                ],
            ),  # fmt: skip
            env=daemonEnvironment(),
            cwd=world.directory,
        )

    def agentCSRs(self, node: str) -> list[str]:
        listed = self.world.kubectl("get", "csr", "--no-headers").stdout
        return [line for line in listed.splitlines() if f"edge-tunnel-agent-{node}-" in line]

    def test_agentDeniedStops(self) -> None:
        """
        An agent whose credentials are another node's asks for its own name:
        denied, and it stops with one line quoting the reason.
        """
        kubeconfig = self.nodeKubeconfig("edge-c5")
        agent = self.startAgent("edge-c4", kubeconfig, os.path.join(self.world.directory, "c4"))
        self.addCleanup(agent.stop)
        pollUntil(lambda: not agent.running, 30, "the denied agent stopped")
        self.assertIn(
            "edge-tunnel-agent: --bootstrap-kubeconfig: CSR edge-tunnel-agent-edge-c4-",
            agent.log(),
        )
        self.assertRegex(
            agent.log(),
            r"denied by EdgeTunnelNodeIdentity: subject 'CN=system:node:edge-c4,O=system:nodes' "
            r"is not the requester's: CN=system:node:edge-c5,O=system:nodes",
        )
        self.assertFalse(
            os.path.exists(
                os.path.join(self.world.directory, "c4", "edge-tunnel-agent-current.pem")
            )
        )

    def test_agentBootstrapsAndConnects(self) -> None:
        """
        The agent asks with the node's credentials, the server approves and
        signs (C{kubectl get csr}: Approved,Issued), the agent's key and
        certificate are in its C{--cert-dir} (0600), and it holds its
        tunnel with them; a second request, as a renewal makes, gets a new
        certificate for a new key.
        """
        world = self.world
        kubeconfig = self.nodeKubeconfig("edge-c1")
        certDir = os.path.join(world.directory, "agent-c1-pki")
        start = len(self.server.lines())
        agent = self.startAgent("edge-c1", kubeconfig, certDir)
        self.addCleanup(agent.stop)
        self.server.waitForLine(r"agent edge-c1 connected from", 30, start=start)
        (row,) = self.agentCSRs("edge-c1")
        self.assertIn(AGENT_SIGNER, row)
        self.assertIn("system:node:edge-c1", row)
        self.assertTrue(row.rstrip().endswith("Approved,Issued"), row)
        path = os.path.join(certDir, "edge-tunnel-agent-current.pem")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, "rb") as f:
            pem = f.read()
        first = x509.load_pem_x509_certificate(pem)
        self.assertEqual(first.subject.rfc4514_string(), "CN=system:node:edge-c1,O=system:nodes")
        first.verify_directly_issued_by(x509.load_pem_x509_certificate(
            open(self.signerCert, "rb").read()
        ))  # fmt: skip
        lifetime = first.not_valid_after_utc - first.not_valid_before_utc
        self.assertEqual(lifetime.total_seconds(), 24 * 3600 + 300)
        # a renewal's request: the code the renewer runs, as the node, in the cloud
        done = subprocess.run(
            world.cloud.command(
                sys.executable,
                "-c",
                "import sys, time\n"
                "from lightkube import Client\n"
                "from lightkube.config.kubeconfig import KubeConfig\n"
                "from twisted_tunnel.kube.bootstrap import obtainCertificate\n"
                "client = Client(KubeConfig.from_file(sys.argv[1]), trust_env=False)\n"
                "started = time.monotonic()\n"
                "obtainCertificate(client, 'edge-c1', sys.argv[2], lifetime=3600, wait=30)\n"
                "print(f'{time.monotonic() - started:.3f}')\n",
                kubeconfig,
                path,
            ),  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
            env=daemonEnvironment(),
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        # request to certificate in hand (created, approved, signed, polled)
        print(f"\nCSR request to certificate: {float(done.stdout):.3f} s")
        with open(path, "rb") as f:
            renewed = f.read()
        second = x509.load_pem_x509_certificate(renewed)
        self.assertNotEqual(second.serial_number, first.serial_number)
        self.assertNotEqual(
            second.public_key().public_numbers(), first.public_key().public_numbers()
        )
        self.assertEqual(
            (second.not_valid_after_utc - second.not_valid_before_utc).total_seconds(), 3900
        )
        # the running agent follows the renewed file, as it follows the kubelet's
        agent.waitForLine(
            rf"certificates reloaded: node edge-c1, serial {second.serial_number:#x}\b", 30
        )
        # started again: the certificate in --cert-dir, no new request
        agent.stop()
        requests = len(self.agentCSRs("edge-c1"))
        start = len(self.server.lines())
        again = self.startAgent("edge-c1", kubeconfig, certDir)
        self.addCleanup(again.stop)
        self.server.waitForLine(r"agent edge-c1 connected from", 30, start=start)
        self.assertEqual(len(self.agentCSRs("edge-c1")), requests)
        self.assertNotIn("no usable certificate in --cert-dir", again.log())
        self.assertIn("renewed in", again.log())

    def test_refusals(self) -> None:
        """
        Another node's name, the wrong usages, a requester that is no node
        (the admin): each denied, its reason in the CSR and one log line;
        another signer's CSR is neither approved nor denied.
        """
        kubeconfig = self.nodeKubeconfig("edge-c2")
        usages = ["digital signature", "client auth"]
        start = len(self.server.lines())
        self.createCSR(
            None, "other-signer", "edge-c2", usages, "kubernetes.io/kube-apiserver-client"
        )
        self.createCSR(kubeconfig, "another-nodes-name", "edge-c3", usages)
        self.createCSR(kubeconfig, "wrong-usages", "edge-c2", [*usages, "server auth"])
        self.createCSR(None, "not-a-node", "edge-c2", usages)
        for name, reason in (
            (
                "another-nodes-name",
                "'CN=system:node:edge-c3,O=system:nodes' is not the requester's",
            ),
            ("wrong-usages", "usages ['client auth', 'digital signature', 'server auth']"),
            ("not-a-node", "requester 'interop-admin' is not a node"),
        ):
            condition = self.condition(name)
            self.assertEqual(condition["type"], "Denied", name)
            self.assertEqual(condition["reason"], "EdgeTunnelNodeIdentity")
            self.assertIn(reason, condition["message"], name)
            self.assertNotIn("certificate", self.csr(name).get("status", {}))
            shown = self.world.kubectl("get", "csr", name, "-o", "yaml").stdout
            self.assertIn("type: Denied", shown)
            self.server.waitForLine(rf"CSR {name} from .* denied: ", 5, start=start)
        self.assertEqual(self.csr("other-signer").get("status", {}), {})

    def test_rbac(self) -> None:
        """
        The ServiceAccount reads CSRs, patches their approval and status,
        approves and signs for the tunnel's signer alone: not for
        kube-apiserver's client signers, not creating or deleting CSRs,
        not Secrets, not Nodes' changes (the overlay builds on C{node-api},
        which lists and watches them).
        """
        csrs = "certificatesigningrequests.certificates.k8s.io"
        signers = "signers.certificates.k8s.io"

        def canI(self: Any, verb: str, resource: str, *more: str) -> bool:
            # kubectl auth can-i takes no resource name with a slash in it
            # (a signer's): a SubjectAccessReview does
            if not resource.startswith(signers + "/"):
                return RBACTests.canI(self, verb, resource, *more)
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
                    "resourceAttributes": {
                        "group": "certificates.k8s.io",
                        "resource": "signers",
                        "verb": verb,
                        "name": resource[len(signers) + 1 :],
                    },
                },
            }
            answer = self.world.kubectl(
                "create", "-o", "json", "-f", "-", input=json.dumps(review)
            ).stdout
            return bool(json.loads(answer)["status"].get("allowed"))

        for arguments in (
            ("get", csrs), ("list", csrs), ("watch", csrs),
            ("patch", csrs, "--subresource=approval"), ("patch", csrs, "--subresource=status"),
            ("approve", f"{signers}/{AGENT_SIGNER}"), ("sign", f"{signers}/{AGENT_SIGNER}"),
        ):  # fmt: skip
            self.assertTrue(canI(self, *arguments), arguments)
        for arguments in (
            ("create", csrs), ("delete", csrs), ("update", csrs), ("patch", csrs),
            ("update", csrs, "--subresource=approval"), ("update", csrs, "--subresource=status"),
            ("approve", f"{signers}/kubernetes.io/kube-apiserver-client"),
            ("approve", f"{signers}/kubernetes.io/kube-apiserver-client-kubelet"),
            ("sign", f"{signers}/kubernetes.io/kube-apiserver-client"),
            ("sign", f"{signers}/kubernetes.io/legacy-unknown"),
            ("approve", f"{signers}/twisted-tunnel.io/other"),
            ("get", "secrets", "-n", NAMESPACE), ("list", "secrets", "-A"),
            ("update", "nodes"), ("patch", "nodes", "--subresource=status"),
        ):  # fmt: skip
            self.assertFalse(canI(self, *arguments), arguments)
