# -*- test-case-name: tests.system.test_chart -*-
"""
The Helm chart in C{charts/twisted-tunnel/}, linted and rendered by a real
C{helm} (v4.3.2, built from C{helm.sh/helm/v4} on the Go module proxy by
C{tests/interop/build.py helm}; C{make test} builds it).

What is checked: C{helm lint} (and C{--strict}) passes for the default
values and every mode; every object of a matrix of values is valid against
Kubernetes' schemas (strict); the daemons' command lines parse with their own
options; the chart is kept in step with the kustomize overlays of
C{examples/kubernetes/} (for each overlay, the chart with the equivalent
values renders the same objects, compared field by field where it matters:
the daemons' parsed options, ports, volumes and mounts, security contexts,
RBAC rules, Services, the disruption budget); what the values add (iptables
mode on named nodes, the CONNECT door behind a Service with mutual TLS and
its C{EgressSelectorConfiguration}, the edge node labels, the
NetworkPolicy) renders as documented; and a bad value is refused with a
line that names it.

The overlays' own checks (L{tests.system.test_manifests.DaemonCommandTests}:
files mounted whole, RBAC minimal and bound to the server alone, replicas
and grace periods, the load balancer) are run again on the chart's objects,
by L{ChartDaemonCommandTests}.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from tests.interop.build import cached
from tests.system import test_kube, test_manifests
from tests.system.test_manifests import (
    MANIFESTS,
    REPO_ROOT,
    WORKLOADS,
    keyed,
    render,
    twistdContainers,
)
from twisted_tunnel._version import __version__
from twisted_tunnel.forwarding.config import KNOWN_KEYS

CHART = REPO_ROOT / "charts" / "twisted-tunnel"
RELEASE = "edge-tunnel"
NAMESPACE = "kube-system"

#: For each kustomize overlay, the chart's values that render the same objects.
OVERLAY_VALUES: dict[str, dict[str, Any]] = {
    "base": {},
    "iptables": {"server": {"iptables": {"enabled": True}}},
    "configmap-api": {"config": {"fromAPI": True}},
    "node-api": {"config": {"fromAPI": True}, "server": {"watchNodes": True}},
    "kubelet-certificate": {
        "config": {"fromAPI": True},
        "server": {"watchNodes": True},
        "agent": {"identity": "kubeletCert"},
    },
    "csr-bootstrap": {
        "config": {"fromAPI": True},
        "server": {"watchNodes": True},
        "agent": {"identity": "csrBootstrap"},
    },
}

#: The CONNECT door's peer in these tests: kube-apiserver's hosts.
APISERVER_PEER = [{"ipBlock": {"cidr": "192.0.2.0/28"}}]

#: Egress-selector mode, as the README's commands install it.
CONNECT_VALUES: dict[str, Any] = {
    "server": {
        "connect": {
            "enabled": True,
            "service": {"clusterIP": "10.96.0.61"},
            "direct": ["10.0.0.0/16", "10.96.0.0/12"],
        }
    },
    "networkPolicy": {"apiServer": APISERVER_PEER},
}

#: iptables mode on three named control-plane nodes.
IPTABLES_VALUES: dict[str, Any] = {
    "server": {"iptables": {"enabled": True, "nodes": ["cp-1", "cp-2", "cp-3"]}}
}

#: Every mode the chart has, by name: the overlays' and the chart's own.
MODES: dict[str, dict[str, Any]] = {
    **OVERLAY_VALUES,
    "iptables-nodes": IPTABLES_VALUES,
    "connect": CONNECT_VALUES,
    "openyurt": {
        "edgeNodeSelector": {"preset": "openyurt"},
        "config": {"fromAPI": True},
        "server": {
            "watchNodes": True,
            "replicas": 3,
            "pdb": {"maxUnavailable": 1, "minAvailable": None},
        },
    },
    "custom-edge": {
        "edgeNodeSelector": {"preset": "custom", "custom": {"example.com/edge": "yes"}},
        "server": {"watchNodes": True},
        "networkPolicy": {
            "monitoring": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "nodes": [{"ipBlock": {"cidr": "10.0.0.0/16"}}],
        },
    },
    "iptables-kubelet-cert": {
        "server": {"iptables": {"enabled": True}, "watchNodes": True},
        "agent": {"identity": "kubeletCert"},
    },
    "connect-kubelet-cert": {
        **CONNECT_VALUES,
        "server": {**CONNECT_VALUES["server"], "watchNodes": True},
        "agent": {"identity": "kubeletCert"},
        "config": {"fromAPI": True},
    },
}


def helmBinary() -> str | None:
    """The helm C{tests/interop/build.py} built, if it did."""
    directory = cached("helm")
    return str(directory / "helm") if directory is not None else None


def requireHelm(case: SynchronousTestCase) -> str:
    helm = helmBinary()
    if helm is None:
        reason = "helm is not built (make helm)"
        if os.environ.get("CI") == "true":
            case.fail(f"CI=true, so this test must run, but {reason}")
        case.skipTest(reason)
    assert helm is not None
    return helm


class Helm:
    """The real helm, run on the chart with values given as Python objects."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.home = tempfile.mkdtemp(prefix="twisted-tunnel-helm-")

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)

    def run(
        self, *arguments: str, values: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """
        C{helm ARGUMENTS} with C{values} in a values file, offline: its
        configuration, cache and data in a directory of its own, no
        kubeconfig.
        """
        command = [self.binary, *arguments]
        if values is not None:
            path = os.path.join(self.home, "values.json")
            with open(path, "w") as f:
                json.dump(values, f)
            command += ["--values", path]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.home,
            "HELM_CONFIG_HOME": os.path.join(self.home, "config"),
            "HELM_CACHE_HOME": os.path.join(self.home, "cache"),
            "HELM_DATA_HOME": os.path.join(self.home, "data"),
            "KUBECONFIG": os.devnull,
        }
        return subprocess.run(
            command, capture_output=True, text=True, timeout=120, check=False, env=env
        )

    def template(self, values: dict[str, Any], namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        """The objects C{helm template} renders for C{values} in C{namespace}."""
        done = self.run("template", RELEASE, str(CHART), "--namespace", namespace, values=values)
        if done.returncode != 0:
            raise AssertionError(f"helm template {values}: {done.stderr}")
        return [each for each in yaml.safe_load_all(done.stdout) if each]

    def refusal(self, values: dict[str, Any]) -> str:
        """What C{helm template} says when it refuses C{values}."""
        done = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
        if done.returncode == 0:
            raise AssertionError(f"helm template accepted {values}")
        return done.stderr

    def notes(self, values: dict[str, Any]) -> str:
        """NOTES.txt as C{helm install --dry-run=client} prints it (no cluster)."""
        done = self.run(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
            values=values,
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"helm install --dry-run {values}: {done.stderr}")
        notes = done.stdout.split("\nNOTES:\n", 1)
        if len(notes) != 2:
            raise AssertionError(f"no NOTES in {done.stdout[-2000:]}")
        return notes[1]


class HelmTestCase(SynchronousTestCase):
    helm: Helm

    def setUp(self) -> None:
        self.helm = Helm(requireHelm(self))
        self.addCleanup(self.helm.close)

    def objects(self, values: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return keyed(self.helm.template(values))

    def server(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.objects(values)[("Deployment", NAMESPACE, "edge-tunnel-server")]

    def agent(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.objects(values)[("DaemonSet", NAMESPACE, "edge-tunnel-agent")]

    def options(self, values: dict[str, Any], plugin: str) -> Any:
        """The parsed options of C{plugin}'s container for C{values}."""
        (options,) = [
            o for _, _, p, o in twistdContainers(self.helm.template(values)) if p == plugin
        ]
        return options


def podSpec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = podSpec(workload)["containers"]
    return only


class ChartVersionTests(SynchronousTestCase):
    def test_versionIsTheProjects(self) -> None:
        """The chart's version and appVersion are the project's version."""
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["version"], __version__)
        self.assertEqual(chart["appVersion"], __version__)


class LintTests(HelmTestCase):
    def test_helmVersion(self) -> None:
        """The helm in use is the pinned release, stamped as upstream stamps it."""
        done = self.helm.run("version", "--short")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith("v4.3.2"), done.stdout)

    def test_lint(self) -> None:
        """C{helm lint} and C{helm lint --strict} pass for the defaults and every mode."""
        for name, values in {"default": {}, **MODES}.items():
            for strict in ((), ("--strict",)):
                done = self.helm.run(
                    "lint", str(CHART), "--namespace", NAMESPACE, *strict, values=values
                )
                self.assertEqual(
                    done.returncode, 0, f"{name} {strict}: {done.stdout}{done.stderr}"
                )
                self.assertIn("0 chart(s) failed", done.stdout, name)

    def test_lintFails(self) -> None:
        """A refused value fails the lint too: the check above can fail."""
        done = self.helm.run("lint", str(CHART), values={"server": {"replica": 3}})
        self.assertNotEqual(done.returncode, 0, done.stdout)


class SchemaTests(HelmTestCase):
    """values.schema.json and the chart's own checks refuse bad values, saying which."""

    def test_typoRefused(self) -> None:
        """A misspelt key anywhere is refused, naming it."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"server": {"replica": 3}}, "replica"),
            ({"server": {"iptables": {"node": ["cp-1"]}}}, "node"),
            ({"networkPolicy": {"apiserver": APISERVER_PEER}}, "apiserver"),
            ({"imag": {"tag": "x"}}, "imag"),
        ]
        for values, word in cases:
            message = self.helm.refusal(values)
            self.assertIn("values don't meet the specifications of the schema", message)
            self.assertRegex(message, rf"additional properties? '{word}' not allowed", values)

    def test_configKeysAreTheServers(self) -> None:
        """The ConfigMap keys the schema admits are those the server reads."""
        schema = json.loads((CHART / "values.schema.json").read_text())
        data = schema["properties"]["config"]["properties"]["configMap"]["properties"]["data"]
        self.assertEqual(sorted(data["properties"]), sorted(KNOWN_KEYS))
        self.assertIs(data["additionalProperties"], False)
        message = self.helm.refusal({"config": {"configMap": {"data": {"http-proxy-port": "1"}}}})
        self.assertIn("additional properties 'http-proxy-port' not allowed", message)

    def test_badValuesRefused(self) -> None:
        """A wrong type, an unknown mode, a malformed CIDR or port: refused, naming the key."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"agent": {"identity": "kubelet"}}, "/agent/identity"),
            ({"edgeNodeSelector": {"preset": "yurt"}}, "/edgeNodeSelector/preset"),
            ({"server": {"replicas": "two"}}, "/server/replicas"),
            ({"server": {"replicas": 0}}, "/server/replicas"),
            ({"server": {"connect": {"direct": ["10.0.0.0"]}}}, "/server/connect/direct/0"),
            ({"server": {"tunnel": {"port": 70000}}}, "/server/tunnel/port"),
            ({"agent": {"server": "https://tunnel.example.com"}}, "/agent/server"),
            ({"image": {"pullPolicy": "always"}}, "/image/pullPolicy"),
        ]
        for values, where in cases:
            message = self.helm.refusal(values)
            self.assertIn(f"at '{where}'", message, values)

    def test_combinationsRefused(self) -> None:
        """What the schema cannot say: one line that says what to do."""
        combinations: list[tuple[dict[str, Any], str]] = [
            (
                {"server": {"iptables": {"enabled": True}, "connect": {"enabled": True}}},
                "server.iptables.enabled and server.connect.enabled: choose one way",
            ),
            (
                {"agent": {"identity": "kubeletCert"}},
                "agent.identity=kubeletCert needs server.watchNodes=true",
            ),
            (
                {"server": {"connect": {"enabled": True}}},
                "networkPolicy.apiServer: name kube-apiserver's addresses",
            ),
            (
                {"edgeNodeSelector": {"preset": "custom"}},
                "edgeNodeSelector.custom: name at least one label",
            ),
            (
                {"edgeNodeSelector": {"custom": {"example.com/edge": "true"}}},
                "edgeNodeSelector.custom is used only with preset custom (preset is ack)",
            ),
            (
                {"server": {"pdb": {"maxUnavailable": 1}}},
                "server.pdb: give minAvailable or maxUnavailable, not both",
            ),
        ]
        for values, line in combinations:
            self.assertIn(line, self.helm.refusal(values))


class RenderTests(HelmTestCase):
    """Every mode renders valid objects, with what its values ask for."""

    def test_schemas(self) -> None:
        """Every object of every mode is valid against Kubernetes' schemas, strictly."""
        for name, values in {"default": {}, **MODES}.items():
            for thing in self.helm.template(values):
                test_manifests.assertValid(self, thing, name)

    def test_flagsParse(self) -> None:
        """Every mode runs both daemons, with command lines their own options accept."""
        for name, values in MODES.items():
            plugins = sorted(p for _, _, p, _ in twistdContainers(self.helm.template(values)))
            self.assertEqual(plugins, ["edge-tunnel-agent", "edge-tunnel-server"], name)

    def readmeInstalls(self, readme: Path) -> list[dict[tuple[str, str, str], dict[str, Any]]]:
        """
        What each C{helm install} command of C{readme} renders, offline
        (C{helm template} with the same arguments), in the order written.
        """
        text = readme.read_text()
        blocks = re.findall(r"```sh\n([ ]*helm install .*?)```", text, re.S)
        rendered = []
        for block in blocks:
            command = shlex.split(textwrap.dedent(block).replace("\\\n", " "))
            self.assertEqual(command[:3], ["helm", "install", RELEASE])
            self.assertEqual(command[3], "charts/twisted-tunnel")
            done = self.helm.run("template", RELEASE, str(CHART), *command[4:])
            self.assertEqual(done.returncode, 0, done.stderr)
            rendered.append(keyed([each for each in yaml.safe_load_all(done.stdout) if each]))
        return rendered

    def test_readmeCommands(self) -> None:
        """
        The C{helm install} commands of the chart's README and of the
        project's (ACK with iptables, OpenYurt with the egress selector)
        render, offline, what they say.
        """
        for readme in (CHART / "README.md", REPO_ROOT / "README.md"):
            rendered = self.readmeInstalls(readme)
            self.assertEqual(len(rendered), 2, readme)
            ack, openyurt = rendered
            server = ack[("Deployment", NAMESPACE, "edge-tunnel-server")]
            self.assertIs(podSpec(server)["hostNetwork"], True)
            self.assertEqual(server["spec"]["replicas"], 3)
            agent = openyurt[("DaemonSet", NAMESPACE, "edge-tunnel-agent")]
            self.assertEqual(
                podSpec(agent)["nodeSelector"], {"openyurt.io/is-edge-worker": "true"}
            )
            self.assertIn(("Service", NAMESPACE, "edge-tunnel-server-connect"), openyurt)
            for objects in rendered:
                agent = objects[("DaemonSet", NAMESPACE, "edge-tunnel-agent")]
                self.assertIn("--server=tunnel.example.com:10262", container(agent)["args"])

    def test_image(self) -> None:
        """The image is the project's version by default; repository, tag, policy are values."""
        for workload in (self.server({}), self.agent({})):
            self.assertEqual(container(workload)["image"], f"twisted-tunnel:{__version__}")
            self.assertEqual(container(workload)["imagePullPolicy"], "IfNotPresent")
        values = {
            "image": {"repository": "registry.example/tt", "tag": "1.2", "pullPolicy": "Never"}
        }
        for workload in (self.server(values), self.agent(values)):
            self.assertEqual(container(workload)["image"], "registry.example/tt:1.2")
            self.assertEqual(container(workload)["imagePullPolicy"], "Never")

    def test_replicasAndResources(self) -> None:
        """server.replicas is the Deployment's and --server-count; resources as given."""
        resources = {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }
        values = {
            "server": {"replicas": 3, "resources": resources},
            "agent": {"resources": resources},
        }
        server = self.server(values)
        self.assertEqual(server["spec"]["replicas"], 3)
        self.assertEqual(self.options(values, "edge-tunnel-server")["server-count"], 3)
        self.assertEqual(container(server)["resources"], resources)
        self.assertEqual(container(self.agent(values))["resources"], resources)

    def test_pdb(self) -> None:
        """The budget: minAvailable 1 by default, or maxUnavailable, or none."""
        selector = {"matchLabels": {"app.kubernetes.io/name": "edge-tunnel-server"}}
        key = ("PodDisruptionBudget", NAMESPACE, "edge-tunnel-server")
        self.assertEqual(self.objects({})[key]["spec"], {"minAvailable": 1, "selector": selector})
        values = {"server": {"pdb": {"minAvailable": None, "maxUnavailable": "50%"}}}
        self.assertEqual(
            self.objects(values)[key]["spec"], {"maxUnavailable": "50%", "selector": selector}
        )
        self.assertNotIn(key, self.objects({"server": {"pdb": {"enabled": False}}}))
        # a budget that no drain can meet is pointed out
        warning = "server.pdb.minAvailable is 1, every replica: no node running one can be drained"
        self.assertIn(warning, self.helm.notes({"server": {"replicas": 1}}))
        self.assertNotIn("server.pdb.minAvailable", self.helm.notes({}))

    def test_iptablesOnNamedNodes(self) -> None:
        """
        iptables mode on named nodes: a replica on each of them alone (node
        affinity on the hostname, one per node), in the host network, as root
        with NET_ADMIN and no other capability, the proxy listeners on the
        host's loopback and not declared as host ports; no NetworkPolicy.
        """
        objects = self.objects(IPTABLES_VALUES)
        server = objects[("Deployment", NAMESPACE, "edge-tunnel-server")]
        spec = podSpec(server)
        self.assertEqual(server["spec"]["replicas"], 3)
        self.assertIs(spec["hostNetwork"], True)
        self.assertNotIn("nodeSelector", spec)
        (term,) = spec["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        self.assertEqual(
            term,
            {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/hostname",
                        "operator": "In",
                        "values": ["cp-1", "cp-2", "cp-3"],
                    }
                ]
            },
        )
        self.assertIn(
            "requiredDuringSchedulingIgnoredDuringExecution", spec["affinity"]["podAntiAffinity"]
        )
        self.assertEqual(
            container(server)["securityContext"]["capabilities"],
            {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        )
        self.assertEqual(spec["securityContext"]["runAsUser"], 0)
        self.assertEqual([p["name"] for p in container(server)["ports"]], ["tunnel", "meta"])
        options = self.options(IPTABLES_VALUES, "edge-tunnel-server")
        self.assertTrue(options["iptables"])
        self.assertEqual(options["server-count"], 3)
        for listener in ("https-proxy-endpoint", "http-proxy-endpoint", "tcp-proxy-endpoint"):
            self.assertEqual(test_manifests.endpointPort(options[listener])[1], "127.0.0.1")
        self.assertFalse([k for k in objects if k[0] == "NetworkPolicy"])
        # everywhere else: no capability at all, non-root
        for values in ({}, CONNECT_VALUES):
            for workload in (self.server(values), self.agent(values)):
                self.assertEqual(
                    container(workload)["securityContext"]["capabilities"], {"drop": ["ALL"]}
                )
                self.assertIs(podSpec(workload)["securityContext"]["runAsNonRoot"], True)

    def test_connectDoor(self) -> None:
        """
        Egress-selector mode: the door at the pod IP on the port of a
        ClusterIP Service, mutual TLS with kube-apiserver's kubelet client CA
        (or a CA Secret of its own), the networks it dials itself; nothing of
        it otherwise.
        """
        objects = self.objects(CONNECT_VALUES)
        service = objects[("Service", NAMESPACE, "edge-tunnel-server-connect")]
        self.assertEqual(service["spec"]["type"], "ClusterIP")
        self.assertEqual(service["spec"]["clusterIP"], "10.96.0.61")
        self.assertEqual(
            service["spec"]["ports"],
            [{"name": "connect", "protocol": "TCP", "port": 10261, "targetPort": "connect"}],
        )
        server = objects[("Deployment", NAMESPACE, "edge-tunnel-server")]
        self.assertIn({"name": "connect", "containerPort": 10261}, container(server)["ports"])
        options = self.options(CONNECT_VALUES, "edge-tunnel-server")
        self.assertEqual(options["connect-endpoint"], "tcp:10261:interface=10.244.1.7")
        self.assertEqual(options["connect-ca"], "/etc/edge-tunnel/kubelet-client/ca.crt")
        self.assertEqual(
            [str(n) for n in options["connect-direct"]], ["10.0.0.0/16", "10.96.0.0/12"]
        )
        # a CA Secret of its own, mounted whole
        values = json.loads(json.dumps(CONNECT_VALUES))
        values["server"]["connect"]["caSecret"] = "apiserver-egress-ca"
        server = self.server(values)
        self.assertEqual(
            self.options(values, "edge-tunnel-server")["connect-ca"],
            "/etc/edge-tunnel/connect-ca/ca.crt",
        )
        (volume,) = [v for v in podSpec(server)["volumes"] if v["name"] == "connect-ca"]
        self.assertEqual(volume["secret"]["secretName"], "apiserver-egress-ca")
        # without it: the door stays on the pod's loopback (the default), no Service
        options = self.options({}, "edge-tunnel-server")
        self.assertEqual(options["connect-endpoint"], "tcp:10261:interface=127.0.0.1")
        self.assertEqual(options["connect-direct"], [])
        self.assertNotIn(("Service", NAMESPACE, "edge-tunnel-server-connect"), self.objects({}))

    def test_egressSelectorInNotes(self) -> None:
        """
        NOTES.txt holds kube-apiserver's EgressSelectorConfiguration in the
        form the interop world runs (tests/interop/world.py: the cluster
        egress, HTTP CONNECT over TCP with mutual TLS), pointed at the door's
        Service and named for the server's certificate.
        """
        notes = self.helm.notes(CONNECT_VALUES)
        configuration = yaml.safe_load(
            notes.split("# --- /etc/kubernetes/egress-selector.yaml ---\n", 1)[1]
        )
        tls = {
            "caBundle": "/etc/kubernetes/pki/edge-tunnel-ca.pem",
            "clientCert": "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
            "clientKey": "/etc/kubernetes/pki/apiserver-kubelet-client.key",
            "tlsServerName": "edge-tunnel-server-connect.kube-system.svc",
        }
        transport = {"tcp": {"url": "https://10.96.0.61:10261", "tlsConfig": tls}}
        self.assertEqual(
            configuration,
            {
                "apiVersion": "apiserver.k8s.io/v1beta1",
                "kind": "EgressSelectorConfiguration",
                "egressSelections": [
                    {
                        "name": "cluster",
                        "connection": {"proxyProtocol": "HTTPConnect", "transport": transport},
                    }
                ],
            },
        )
        self.assertIn("--egress-selector-config-file=/etc/kubernetes/egress-selector.yaml", notes)
        self.assertNotIn("EgressSelectorConfiguration", self.helm.notes({}))
        self.assertIn("agent.server is still the placeholder", self.helm.notes({}))
        # no pass-through networks: the notes say what breaks
        values = json.loads(json.dumps(CONNECT_VALUES))
        values["server"]["connect"]["direct"] = []
        self.assertIn("will answer 503", self.helm.notes(values))

    def test_clientNameHooks(self) -> None:
        """The allowlists of client names are rendered only when given."""
        names = ("--connect-client-name=", "--proxy-serving-client-name=")
        for values in ({}, CONNECT_VALUES):
            arguments = container(self.server(values))["args"]
            self.assertFalse([a for a in arguments if a.startswith(names)])
        values = json.loads(json.dumps(CONNECT_VALUES))
        values["server"]["connect"]["clientNames"] = ["kube-apiserver", "kube-apiserver-2"]
        values["server"]["proxy"] = {"clientNames": ["kube-apiserver-kubelet-client"]}
        arguments = container(self.server(values))["args"]
        self.assertEqual(
            [a for a in arguments if a.startswith(names)],
            [
                "--proxy-serving-client-name=kube-apiserver-kubelet-client",
                "--connect-client-name=kube-apiserver",
                "--connect-client-name=kube-apiserver-2",
            ],
        )

    def test_edgeNodeSelector(self) -> None:
        """
        The presets and a custom selector: the agents' nodeSelector and, with
        server.watchNodes, the server's --edge-node-selector.
        """
        for selector, labels, flag in [
            (
                {"preset": "ack"},
                {"alibabacloud.com/is-edge-worker": "true"},
                "alibabacloud.com/is-edge-worker=true",
            ),
            (
                {"preset": "openyurt"},
                {"openyurt.io/is-edge-worker": "true"},
                "openyurt.io/is-edge-worker=true",
            ),
            (
                {
                    "preset": "custom",
                    "custom": {"example.com/edge": "yes", "example.com/zone": "z1"},
                },
                {"example.com/edge": "yes", "example.com/zone": "z1"},
                "example.com/edge=yes,example.com/zone=z1",
            ),
        ]:
            values = {"edgeNodeSelector": selector, "server": {"watchNodes": True}}
            self.assertEqual(podSpec(self.agent(values))["nodeSelector"], labels)
            self.assertEqual(
                self.options(values, "edge-tunnel-server")["edge-node-selector"], flag
            )
            values = {"edgeNodeSelector": selector}
            self.assertEqual(podSpec(self.agent(values))["nodeSelector"], labels)
            arguments = container(self.server(values))["args"]
            self.assertFalse([a for a in arguments if a.startswith("--edge-node-selector")])

    def test_watchNodesAlone(self) -> None:
        """
        server.watchNodes without config.fromAPI: the ConfigMap stays a
        volume; the account gets the Nodes' ClusterRole and no Role.
        """
        values = {"server": {"watchNodes": True}}
        objects = self.objects(values)
        kinds = sorted(
            kind for kind, _, _ in objects if "Role" in kind or kind == "ServiceAccount"
        )
        self.assertEqual(kinds, ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"])
        (role,) = [each for (kind, _, _), each in objects.items() if kind == "ClusterRole"]
        self.assertEqual(role["rules"], test_manifests.NODE_RULES)
        options = self.options(values, "edge-tunnel-server")
        self.assertEqual(options["config"], "/etc/edge-tunnel/config")
        self.assertTrue(options["in-cluster"])
        self.assertTrue(options["watch-nodes"])

    def test_configMapOwnedElsewhere(self) -> None:
        """
        config.configMap.create false: the chart reads the ConfigMap it does
        not make; its data otherwise merged with the product page's.
        """
        objects = self.objects({"config": {"configMap": {"create": False}}})
        self.assertNotIn(("ConfigMap", NAMESPACE, "edge-tunnel-server-cfg"), objects)
        # keys are merged with the defaults; null removes one
        data = {"http-proxy-ports": "9051, 9100", "localhost-proxy-ports": None}
        objects = self.objects({"config": {"configMap": {"data": data}}})
        self.assertEqual(
            objects[("ConfigMap", NAMESPACE, "edge-tunnel-server-cfg")]["data"],
            {"http-proxy-ports": "9051, 9100", "https-proxy-ports": "9052, 8080"},
        )

    def test_namespaceOfItsOwn(self) -> None:
        """
        Installed beside ACK Edge's own tunnel (docs/migration.md), in a
        namespace of its own: every object, every reference to a namespace
        (the ConfigMap read from the API, the RBAC subjects) is in that
        namespace, so nothing touches kube-system's edge-tunnel-server.
        """
        modes: list[dict[str, Any]] = [
            {},
            {"config": {"fromAPI": True}, "server": {"watchNodes": True}},
            {"agent": {"identity": "csrBootstrap"}, "server": {"watchNodes": True}},
        ]
        for values in modes:
            rendered = self.helm.template(values, namespace="edge-tunnel")
            text = yaml.safe_dump_all(rendered)
            self.assertNotIn(NAMESPACE, text, values)
            for each in rendered:
                namespace = each["metadata"].get("namespace")
                if each["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                    self.assertEqual(namespace, "edge-tunnel", (values, each["kind"]))
                for subject in each.get("subjects", []):
                    self.assertEqual(subject.get("namespace"), "edge-tunnel", values)
        options = self.options({"config": {"fromAPI": True}}, "edge-tunnel-server")
        # rendered in kube-system by options(): the default namespace is the release's
        self.assertEqual(options["config-configmap"], f"{NAMESPACE}/edge-tunnel-server-cfg")


class NetworkPolicyTests(HelmTestCase):
    """Each listener admits only whom it serves."""

    def policy(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.objects(values)[("NetworkPolicy", NAMESPACE, "edge-tunnel-server")]

    def rules(self, values: dict[str, Any]) -> dict[tuple[int, ...], list[Any] | None]:
        """The ingress rules, by the ports they open: the peers (None: anyone)."""
        spec = self.policy(values)["spec"]
        self.assertEqual(spec["policyTypes"], ["Ingress"])
        self.assertEqual(
            spec["podSelector"], {"matchLabels": {"app.kubernetes.io/name": "edge-tunnel-server"}}
        )
        rules: dict[tuple[int, ...], list[Any] | None] = {}
        for rule in spec["ingress"]:
            self.assertEqual({p["protocol"] for p in rule["ports"]}, {"TCP"})
            rules[tuple(p["port"] for p in rule["ports"])] = rule.get("from")
        return rules

    def test_default(self) -> None:
        """
        By default only the tunnel port is open, to anyone: the meta port and
        the proxy listeners admit nobody not named (the node's own traffic
        aside, which most network plugins admit).
        """
        self.assertEqual(self.rules({}), {(10262,): None})

    def test_peers(self) -> None:
        """
        The CONNECT door from kube-apiserver alone, the meta port from the
        monitoring and the nodes, the proxy listeners from the nodes.
        """
        monitoring = [
            {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}, "podSelector": {}}
        ]
        nodes = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
        values = json.loads(json.dumps(CONNECT_VALUES))
        values["networkPolicy"].update(monitoring=monitoring, nodes=nodes)
        self.assertEqual(
            self.rules(values),
            {
                (10262,): None,
                (10261,): APISERVER_PEER,
                (10265,): monitoring + nodes,
                (10263, 10264, 10268): nodes,
            },
        )

    def test_disabledAndHostNetwork(self) -> None:
        """None when disabled, and none in iptables mode (host network: see the template)."""
        for values in (
            {"networkPolicy": {"enabled": False}},
            {"server": {"iptables": {"enabled": True}}},
        ):
            self.assertFalse([k for k in self.objects(values) if k[0] == "NetworkPolicy"])


#: The fields of a workload compared with the overlays' (what runs, with what rights).
POD_FIELDS = (
    "hostNetwork",
    "securityContext",
    "serviceAccountName",
    "automountServiceAccountToken",
    "nodeSelector",
    "tolerations",
    "affinity",
    "dnsPolicy",
    "priorityClassName",
    "terminationGracePeriodSeconds",
)
CONTAINER_FIELDS = (
    "name",
    "command",
    "ports",
    "env",
    "securityContext",
    "resources",
    "livenessProbe",
    "readinessProbe",
)


def byName(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda each: each["name"])


def significant(thing: dict[str, Any]) -> Any:
    """What of an object must agree between the chart and the overlay."""
    kind = thing["kind"]
    if kind in WORKLOADS:
        spec = podSpec(thing)
        (only,) = spec["containers"]
        options = test_manifests.daemonCommand(only)
        return {
            "selector": thing["spec"]["selector"],
            "replicas": thing["spec"].get("replicas"),
            "strategy": thing["spec"].get("strategy", thing["spec"].get("updateStrategy")),
            "pod": {field: spec.get(field) for field in POD_FIELDS},
            "volumes": byName(spec["volumes"]),
            "container": {field: only.get(field) for field in CONTAINER_FIELDS},
            "volumeMounts": byName(only["volumeMounts"]),
            "plugin": options[0],
            "options": dict(options[1]),
        }
    if kind in ("Role", "ClusterRole"):
        return thing["rules"]
    if kind in ("RoleBinding", "ClusterRoleBinding"):
        return {"roleRef": thing["roleRef"], "subjects": thing["subjects"]}
    if kind == "ServiceAccount":
        return thing.get("automountServiceAccountToken")
    if kind == "ConfigMap":
        return thing["data"]
    return thing["spec"]


class OverlayTests(HelmTestCase):
    """The chart and the kustomize overlays render the same deployment."""

    def kustomize(self, overlay: str) -> list[dict[str, Any]]:
        """
        C{kubectl kustomize} of the overlay, where kubectl is built; else the
        renderer of L{tests.system.test_manifests}, which its
        C{test_kubectlAgrees} holds to kubectl's output.
        """
        kubectl = test_manifests.kubectlBinary()
        if kubectl is None:
            return render(MANIFESTS / overlay)
        return test_manifests.kustomize(kubectl, MANIFESTS / overlay)

    def test_overlaysCovered(self) -> None:
        """Every kustomization has its values here."""
        self.assertEqual(
            sorted(OVERLAY_VALUES), sorted(p.name for p in test_manifests.kustomizations())
        )

    def test_sameObjects(self) -> None:
        """
        For each overlay, the chart with its values renders the same objects
        (by kind, namespace, name; the chart adds only its NetworkPolicy),
        alike in every field that says what runs and with what rights.
        """
        for overlay, values in OVERLAY_VALUES.items():
            theirs = keyed(self.kustomize(overlay))
            ours = keyed(self.helm.template(values))
            extra = {key for key in ours.keys() - theirs.keys() if key[0] != "NetworkPolicy"}
            self.assertEqual((extra, theirs.keys() - ours.keys()), (set(), set()), overlay)
            for key, thing in theirs.items():
                self.assertEqual(significant(ours[key]), significant(thing), f"{overlay}: {key}")
                labels = ours[key]["metadata"]["labels"]
                self.assertEqual(
                    thing["metadata"].get("labels", {}).items() - labels.items(), set()
                )

    def test_differenceFound(self) -> None:
        """A difference in what runs is found: the comparison above can fail."""
        (thing,) = [t for t in render(MANIFESTS / "base") if t["kind"] == "Deployment"]
        ours = self.server({})
        self.assertEqual(significant(ours), significant(thing))
        container(ours)["args"].append("--iptables-interval=30")
        self.assertNotEqual(significant(ours), significant(thing))


class ChartDaemonCommandTests(test_manifests.DaemonCommandTests):
    """
    The overlays' checks of L{tests.system.test_manifests.DaemonCommandTests},
    run on the chart rendered with each overlay's values.
    """

    def setUp(self) -> None:
        self.helm = Helm(requireHelm(self))
        self.addCleanup(self.helm.close)

    def rendered(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        for overlay, values in OVERLAY_VALUES.items():
            yield Path(overlay), self.helm.template(values)


class ServerDryRunTests(test_kube.APITestCase):
    """
    Every mode's objects, C{kubectl apply --dry-run=server} against the real
    kube-apiserver v1.37.2 of the interop world (the control plane of
    L{tests.system.test_kube}, with no server started): validated, defaulted
    and admitted (priority classes, RBAC escalation checks) as a cluster
    would, stored nowhere.
    """

    @classmethod
    def startServer(cls) -> None:
        """No server: only kube-apiserver is needed."""

    def setUp(self) -> None:
        self.helm = Helm(requireHelm(self))
        self.addCleanup(self.helm.close)
        self.requireControlPlane()

    def dryRun(self, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        return self.world.kubectl(
            "apply", "--dry-run=server", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
            check=False,
        )  # fmt: skip

    def test_everyModeAdmitted(self) -> None:
        """Every object of every mode is admitted by kube-apiserver."""
        for name, values in {"default": {}, **MODES}.items():
            objects = self.helm.template(values)
            done = self.dryRun(objects)
            self.assertEqual(done.returncode, 0, f"{name}: {done.stderr}")
            self.assertEqual(done.stdout.count("(server dry run)"), len(objects), done.stdout)

    def test_refusalSeen(self) -> None:
        """An object kube-apiserver refuses fails the check: it can fail."""
        objects = self.helm.template({})
        for thing in objects:
            if thing["kind"] == "Deployment":
                thing["spec"]["replicas"] = -1
        done = self.dryRun(objects)
        self.assertNotEqual(done.returncode, 0, done.stdout)
        self.assertIn("spec.replicas", done.stderr)
