# -*- test-case-name: tests.system.test_manifests -*-
"""
The Kubernetes manifests in C{examples/kubernetes/}: every object is valid
against Kubernetes' own schemas (strict: an unknown or misspelt field
fails), the kustomizations list every file, the ConfigMap is the product
page's, and every daemon command line is one the daemons accept.

Offline: the schemas ship with C{kubernetes-validate}, and each
kustomization is rendered here (resources, then RFC 6902 patches); where
C{kubectl} is installed, C{kubectl kustomize} must render the same objects.
A command line is parsed by twistd's own L{ServerOptions}, which hands the
plugin's arguments to the real L{server.Options} or L{agent.Options}, after
the kubelet's C{$(VAR)} expansion with plausible downward-API values.
Parsing reads no file: certificates are loaded by C{makeService}, which is
not called.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import yaml
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python.usage import Options, UsageError
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.forwarding.test_config import SEED_1_20
from tests.interop.build import cached
from twisted_tunnel.tap import agent, server

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "examples" / "kubernetes"
#: The product page, where the mission's shared folder lies beside the repository.
SEED_PAGE = REPO_ROOT.parent / "shared" / "seed" / "edge-tunnel-overview.txt"

#: The oldest Kubernetes the schemas cover (ACK Edge runs the tunnel below 1.26), and a
#: current one.
KUBERNETES_VERSIONS = ("1.25.0", "1.33.0")

#: What the kubelet would put in each downward-API field, for C{$(VAR)} expansion.
FIELD_VALUES = {
    "spec.nodeName": "edge-1",
    "status.hostIP": "192.0.2.10",
    "status.podIP": "10.244.1.7",
    "metadata.name": "edge-tunnel-server-7d9c6b5f4-x2x9k",
    "metadata.namespace": "kube-system",
}

DAEMONS: dict[str, type[Options]] = {
    "edge-tunnel-server": server.Options,
    "edge-tunnel-agent": agent.Options,
}

WORKLOADS = ("Deployment", "DaemonSet")

#: The options of each daemon that name a file or directory to read.
PATH_OPTIONS = {
    "edge-tunnel-server": (
        "ca",
        "cert",
        "key",
        "config",
        "kubeconfig",
        "connect-ca",
        "proxy-serving-cert",
        "proxy-serving-key",
        "proxy-serving-client-ca",
        "proxy-client-cert",
        "proxy-client-key",
        "proxy-client-ca",
        "agent-ca",
        "agent-signer-ca-cert",
        "agent-signer-ca-key",
    ),
    "edge-tunnel-agent": ("ca", "cert", "key", "kubelet-client-cert", "bootstrap-kubeconfig"),
}


#: The server's whole Role where it reads its ConfigMap from the API: that one
#: ConfigMap, read only, and Events in its namespace.
API_RULES = [
    {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["edge-tunnel-server-cfg"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]

#: The one cluster-wide rule, of a server that watches the Nodes (C{--watch-nodes}).
NODE_RULES = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}]

#: The cluster-wide rules of a server that signs agents' CSRs (C{--agent-signer-ca-cert}).
CSR_RULES = [
    {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["certificatesigningrequests"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["certificatesigningrequests/approval", "certificatesigningrequests/status"],
        "verbs": ["patch"],
    },
    {
        "apiGroups": ["certificates.k8s.io"],
        "resources": ["signers"],
        "resourceNames": ["twisted-tunnel.io/agent"],
        "verbs": ["approve", "sign"],
    },
]


def loadDocuments(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [document for document in yaml.safe_load_all(f) if document is not None]


def yamlFiles() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def kustomizations() -> list[Path]:
    """The directories with a kustomization."""
    return sorted(path.parent for path in MANIFESTS.rglob("kustomization.yaml"))


def kustomization(directory: Path) -> dict[str, Any]:
    (document,) = loadDocuments(directory / "kustomization.yaml")
    assert isinstance(document, dict)
    return document


def patchFiles() -> set[Path]:
    return {
        (directory / patch["path"]).resolve()
        for directory in kustomizations()
        for patch in kustomization(directory).get("patches", [])
    }


def resourceFiles() -> list[Path]:
    """The YAML files that hold Kubernetes objects (not kustomizations, not patches)."""
    patches = patchFiles()
    return [
        path
        for path in yamlFiles()
        if path.name != "kustomization.yaml" and path.resolve() not in patches
    ]


# Rendering a kustomization, the subset of kustomize these manifests use.

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "patches"}


def render(directory: Path) -> list[dict[str, Any]]:
    """
    The objects of a kustomization: its resources (files, or directories
    rendered in turn), then its JSON patches applied to their targets.
    """
    spec = kustomization(directory)
    unknown = set(spec) - KNOWN_FIELDS
    if unknown:
        raise AssertionError(f"{directory}: this test cannot render {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        objects += render(path) if path.is_dir() else copy.deepcopy(loadDocuments(path))
    for patch in spec.get("patches", []):
        operations = loadDocuments(directory / patch["path"])[0]
        targets = [each for each in objects if isTarget(each, patch["target"])]
        if len(targets) != 1:
            raise AssertionError(f"{directory}: {patch} matches {len(targets)} objects")
        for operation in operations:
            applyOperation(targets[0], operation)
    return objects


def isTarget(thing: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = thing["apiVersion"].rpartition("/")
    actual = {
        "group": group,
        "version": version,
        "kind": thing["kind"],
        "name": thing["metadata"]["name"],
        "namespace": thing["metadata"].get("namespace", ""),
    }
    return all(actual[key] == value for key, value in target.items())


def applyOperation(document: dict[str, Any], operation: dict[str, Any]) -> None:
    """Apply one RFC 6902 C{add}, C{replace} or C{remove} in place."""
    if set(operation) - {"op", "path", "value"}:
        raise AssertionError(f"unknown fields in {operation}")
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    container: Any = document
    for part in parents:
        container = container[int(part)] if isinstance(container, list) else container[part]
    op = operation["op"]
    if isinstance(container, list):
        if op == "add":
            index = len(container) if last == "-" else int(last)
            container.insert(index, operation["value"])
            return
        if op == "replace":
            container[int(last)] = operation["value"]
            return
        if op == "remove":
            del container[int(last)]
            return
    else:
        if op == "add":
            container[last] = operation["value"]
            return
        if op in ("replace", "remove") and last not in container:
            raise AssertionError(f"{operation['path']}: nothing to {op}")
        if op == "replace":
            container[last] = operation["value"]
            return
        if op == "remove":
            del container[last]
            return
    raise AssertionError(f"unsupported operation {operation}")


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (each["kind"], each["metadata"].get("namespace", ""), each["metadata"]["name"]): each
        for each in objects
    }


# The daemons' command lines.


def expand(text: str, env: dict[str, str]) -> str:
    """
    The kubelet's expansion of C{$(VAR)} in a container's command and args
    (C{$$} is a literal C{$}); an undefined variable, which the kubelet would
    leave as it is, is an error here.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in env:
            raise UsageError(f"$({name}) is not defined in the container's env")
        return env[name]

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, text)


def environment(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            env[variable["name"]] = FIELD_VALUES[variable["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def daemonCommand(container: dict[str, Any]) -> tuple[str, Options]:
    """
    Parse a container's twistd command line as twistd would, with the plugin's
    own options: return the plugin's name and its parsed options.

    @raise UsageError: if twistd or the plugin refuses it.
    """
    env = environment(container)
    command = [expand(text, env) for text in container["command"] + container.get("args", [])]
    if command[0] != "twistd":
        raise UsageError(f"not twistd: {command}")
    options = ServerOptions()
    options.parseOptions(command[1:])
    if not options["nodaemon"] or options["pidfile"]:
        raise UsageError("run twistd in the foreground (--nodaemon) and with no pidfile")
    return options.subCommand, options.subOptions


def containers(thing: dict[str, Any]) -> list[dict[str, Any]]:
    spec = thing["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def twistdContainers(
    objects: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any], str, Options]]:
    """Each workload container that runs twistd, with its workload and parsed options."""
    for workload in objects:
        if workload["kind"] in WORKLOADS:
            for container in containers(workload):
                if container.get("command", [""])[0] == "twistd":
                    plugin, options = daemonCommand(container)
                    yield workload, container, plugin, options


def agentsAndServers(
    objects: list[dict[str, Any]],
) -> tuple[list[tuple[dict[str, Any], dict[str, Any], Options]], list[Options]]:
    """
    The agents' containers (workload, container, parsed options) and the
    servers' parsed options among C{objects} (L{twistdContainers}).
    """
    agents, servers = [], []
    for workload, container, plugin, options in twistdContainers(objects):
        if plugin == "edge-tunnel-agent":
            agents.append((workload, container, options))
        elif plugin == "edge-tunnel-server":
            servers.append(options)
    return agents, servers


def endpointPort(description: str) -> tuple[int, str]:
    """The port and interface of a TCP server endpoint description."""
    endpoint = serverFromString(MemoryReactor(), description)
    return endpoint._port, endpoint._interface  # type: ignore[attr-defined]


def probePort(container: dict[str, Any], port: int | str) -> int:
    """A probe's port, a number or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [each["containerPort"] for each in container["ports"] if each["name"] == port]
    return int(number)


def assertValid(case: SynchronousTestCase, document: Any, where: str) -> None:
    """Fail C{case} unless C{document} is valid, strictly, for every L{KUBERNETES_VERSIONS}."""
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(part) for part in e.path)
            case.fail(f"{where}: {document['kind']} invalid for {version} at {path}: {e}")


class ManifestFilesTests(SynchronousTestCase):
    """The files, and the kustomizations that gather them."""

    def test_kustomizationsListEveryFile(self) -> None:
        """
        Every YAML file is a kustomization or is named by one (as a resource or
        a patch), and everything a kustomization names exists.
        """
        self.assertTrue(kustomizations(), f"no kustomization.yaml under {MANIFESTS}")
        named = set()
        for directory in kustomizations():
            spec = kustomization(directory)
            self.assertEqual(spec["apiVersion"], "kustomize.config.k8s.io/v1beta1")
            self.assertEqual(spec["kind"], "Kustomization")
            entries = spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]
            for entry in entries:
                path = (directory / entry).resolve()
                self.assertTrue(path.exists(), f"{directory}: {entry} does not exist")
                named.add(path)
        for path in yamlFiles():
            if path.name != "kustomization.yaml":
                self.assertIn(path.resolve(), named, f"no kustomization lists {path}")

    def test_schemas(self) -> None:
        """
        Every object in every file, and every object each kustomization
        renders, is valid against Kubernetes' schemas in strict mode.
        """
        checked = 0
        for path in resourceFiles():
            for document in loadDocuments(path):
                self.assertValid(document, str(path.relative_to(REPO_ROOT)))
                checked += 1
        for directory in kustomizations():
            for document in render(directory):
                self.assertValid(document, f"{directory.relative_to(REPO_ROOT)} (rendered)")
        self.assertGreaterEqual(checked, 5)

    def assertValid(self, document: Any, where: str) -> None:
        assertValid(self, document, where)

    def test_validationIsStrict(self) -> None:
        """A misspelt field fails validation: the check above can fail."""
        (deployment,) = [
            each for each in render(MANIFESTS / "base") if each["kind"] == "Deployment"
        ]
        deployment["spec"]["template"]["spec"]["hostNetwrok"] = True
        self.assertRaises(
            kubernetes_validate.ValidationError,
            kubernetes_validate.validate,
            deployment,
            KUBERNETES_VERSIONS[-1],
            strict=True,
        )

    def test_kubectlAgrees(self) -> None:
        """
        C{kubectl kustomize} renders the same objects as this test's
        renderer: the kubectl on PATH, else the one C{make test} built for
        the interop tests (C{tests/interop/build.py kube}).
        """
        kubectl = kubectlBinary()
        if kubectl is None:
            raise SkipTest("kubectl is not installed, nor built (make interop-build)")
        for directory in kustomizations():
            theirs = keyed(kustomize(kubectl, directory))
            self.assertEqual(theirs, keyed(render(directory)), directory)

    def test_configMapIsTheSeeds(self) -> None:
        """
        The ConfigMap file is the product page's example, byte for byte, and
        every kustomization renders it unchanged.
        """
        (path,) = [
            path
            for path in resourceFiles()
            if any(each["kind"] == "ConfigMap" for each in loadDocuments(path))
        ]
        self.assertEqual(path.read_text(encoding="utf-8"), SEED_1_20)
        if SEED_PAGE.exists():
            page = SEED_PAGE.read_text(encoding="utf-8")
            bodies = re.findall(r"cat <<EOF \| kubectl apply -f -\n(.*?\n)EOF\n", page, re.S)
            self.assertIn(SEED_1_20, bodies)
        expected = yaml.safe_load(SEED_1_20)
        for directory in kustomizations():
            configMaps = [each for each in render(directory) if each["kind"] == "ConfigMap"]
            self.assertEqual(configMaps, [expected], directory)


class DaemonCommandTests(SynchronousTestCase):
    """The command lines of the daemons, as the daemons parse them."""

    def rendered(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        for directory in kustomizations():
            yield directory, render(directory)

    def test_flagsParse(self) -> None:
        """
        Every twistd command line parses, with the real options of its plugin,
        and every kustomization runs both daemons.
        """
        for directory, objects in self.rendered():
            plugins = []
            for _, container, plugin, options in twistdContainers(objects):
                self.assertIsInstance(options, DAEMONS[plugin], f"{directory}: {container}")
                plugins.append(plugin)
            self.assertEqual(sorted(plugins), sorted(DAEMONS), directory)

    def test_typoFails(self) -> None:
        """
        A misspelt flag, a bad value, or a variable the container does not
        define, is refused: the check above can fail.
        """
        for mistake in ("--server-cont=2", "--drain-timeout=soon", "--server-id=$(POD)"):
            for _, container, plugin, _ in twistdContainers(render(MANIFESTS / "base")):
                if plugin == "edge-tunnel-server":
                    container["args"].append(mistake)
                    self.assertRaises(UsageError, daemonCommand, container)

    def test_filesAreMounted(self) -> None:
        """
        Every file a daemon reads is in the directory where a whole volume is
        mounted (not a subPath, which Kubernetes never updates), and
        C{--config} is where the C{edge-tunnel-server-cfg} ConfigMap is.
        """
        for directory, objects in self.rendered():
            for workload, container, plugin, options in twistdContainers(objects):
                volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
                mounts = {
                    m["mountPath"]: volumes[m["name"]]
                    for m in container["volumeMounts"]
                    if "subPath" not in m
                }
                for name in PATH_OPTIONS[plugin]:
                    if options[name]:
                        path = PurePosixPath(options[name])
                        where = f"{directory}: {plugin} --{name} {path}"
                        if name == "config":
                            # the ConfigMap mounted as a directory
                            self.assertIn(str(path), mounts, where)
                            volume = mounts[str(path)]["configMap"]
                            self.assertEqual(volume["name"], "edge-tunnel-server-cfg", where)
                        else:
                            self.assertIn(str(path.parent), mounts, where)

    def test_probes(self) -> None:
        """
        Liveness and readiness ask the meta listener (C{--meta-endpoint}) for
        C{/healthz} and C{/readyz}. A meta listener on loopback is probed at
        127.0.0.1, which the kubelet reaches only in the node's network; any
        other is bound to the pod's IP (downward API), never to every
        interface: it is unauthenticated, and C{/agents} lists every node.
        """
        for directory, objects in self.rendered():
            for workload, container, plugin, options in twistdContainers(objects):
                port, interface = endpointPort(options["meta-endpoint"])
                for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    where = f"{directory}: {plugin} {kind}"
                    probe = container[kind]["httpGet"]
                    self.assertEqual(probe["path"], path, where)
                    self.assertEqual(probePort(container, probe["port"]), port, where)
                    if interface in ("127.0.0.1", "::1", "localhost"):
                        self.assertEqual(probe.get("host"), "127.0.0.1", where)
                        self.assertTrue(workload["spec"]["template"]["spec"]["hostNetwork"])
                    else:
                        self.assertEqual(interface, FIELD_VALUES["status.podIP"], where)
                        self.assertNotIn("host", probe, where)

    def test_listenersBoundOnPurpose(self) -> None:
        """
        No server listener but the agents' binds every interface: each proxy
        listener is on loopback or at the pod IP, named explicitly; the HTTPS
        one, which lends out the proxy client certificate, asks for a
        certificate from the kubelet client CA.
        """
        for directory, objects in self.rendered():
            for _, container, plugin, options in twistdContainers(objects):
                if plugin != "edge-tunnel-server":
                    continue
                for kind in ("https", "http", "tcp"):
                    where = f"{directory}: --{kind}-proxy-endpoint"
                    self.assertTrue(
                        any(a.startswith(f"--{kind}-proxy-endpoint=") for a in container["args"]),
                        f"{where}: say where it listens",
                    )
                    _, interface = endpointPort(options[f"{kind}-proxy-endpoint"])
                    self.assertIn(interface, ("127.0.0.1", FIELD_VALUES["status.podIP"]), where)
                self.assertEqual(
                    options["proxy-serving-client-ca"], "/etc/edge-tunnel/kubelet-client/ca.crt"
                )

    def test_agentDaemonSet(self) -> None:
        """
        The agent runs on every edge node whatever its taints, in the node's
        network, and names its node from the downward API.
        """
        for directory, objects in self.rendered():
            for workload, container, plugin, options in twistdContainers(objects):
                if plugin != "edge-tunnel-agent":
                    continue
                spec = workload["spec"]["template"]["spec"]
                self.assertEqual(workload["kind"], "DaemonSet", directory)
                self.assertIs(spec["hostNetwork"], True)
                self.assertIn({"operator": "Exists"}, spec["tolerations"])
                self.assertIn("--node-name=$(NODE_NAME)", container["args"])
                self.assertIn(
                    {
                        "name": "NODE_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                    },
                    container["env"],
                )
                self.assertEqual(options["node-name"], FIELD_VALUES["spec.nodeName"])

    def test_netAdminOnlyWithIptables(self) -> None:
        """
        Only a server that manages iptables gets C{NET_ADMIN} (and root, and the
        host's network, where the connections it intercepts are born); every
        other container runs as non-root, but an agent that reads the kubelet's
        key (root's, mode 0600), which runs as root with no capability at all.
        All drop every other capability and cannot write their image.
        """
        iptablesSeen = set()
        kubeletKeySeen = set()
        for directory, objects in self.rendered():
            for workload, container, plugin, options in twistdContainers(objects):
                spec = workload["spec"]["template"]["spec"]
                security = container["securityContext"]
                iptables = plugin == "edge-tunnel-server" and not options["no-iptables"]
                iptablesSeen.add(iptables)
                kubeletKey = plugin == "edge-tunnel-agent" and bool(options["kubelet-client-cert"])
                kubeletKeySeen.add(kubeletKey)
                where = f"{directory}: {plugin}"
                self.assertEqual(security["capabilities"]["drop"], ["ALL"], where)
                self.assertEqual(
                    security["capabilities"].get("add", []), ["NET_ADMIN"] if iptables else []
                )
                self.assertIs(security["readOnlyRootFilesystem"], True, where)
                self.assertIs(security["allowPrivilegeEscalation"], False, where)
                self.assertNotIn("privileged", security, where)
                self.assertIs(spec["automountServiceAccountToken"], False, where)
                if iptables:
                    self.assertTrue(options["iptables"], f"{where}: say --iptables")
                    self.assertIs(spec["hostNetwork"], True, where)
                elif kubeletKey:
                    self.assertEqual(security["capabilities"], {"drop": ["ALL"]}, where)
                    self.assertEqual(spec["securityContext"]["runAsUser"], 0, where)
                    self.assertNotIn("runAsUser", security, where)
                else:
                    self.assertIs(spec["securityContext"]["runAsNonRoot"], True, where)
                    self.assertNotEqual(spec["securityContext"]["runAsUser"], 0, where)
        self.assertEqual(iptablesSeen, {True, False})
        self.assertEqual(kubeletKeySeen, {True, False})

    def test_kubeletCertificateOverlay(self) -> None:
        """
        An agent with C{--kubelet-client-cert} reads the kubelet's file where
        the kubelet keeps it, from a read-only hostPath of C{/var/lib/kubelet/pki}
        mounted at that same path (the kubelet's symlink names its target by
        absolute path), with no other hostPath and no C{--cert}/C{--key}; the
        server of that kustomization trusts kube-apiserver's client CA for
        agents, from the ConfigMap kube-apiserver keeps it in, and for nothing
        else.
        """
        seen = 0
        for directory, objects in self.rendered():
            agents, servers = agentsAndServers(objects)
            for workload, container, options in agents:
                if not options["kubelet-client-cert"]:
                    if not options["bootstrap-kubeconfig"]:
                        self.assertIsNone(servers[0]["agent-ca"], directory)
                    continue
                seen += 1
                self.assertEqual(
                    options["kubelet-client-cert"],
                    "/var/lib/kubelet/pki/kubelet-client-current.pem",
                )
                self.assertIsNone(options["cert"])
                self.assertIsNone(options["key"])
                self.assertEqual(options["node-name"], FIELD_VALUES["spec.nodeName"])
                volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
                hostPaths = [
                    (mount, volumes[mount["name"]]["hostPath"])
                    for mount in container["volumeMounts"]
                    if "hostPath" in volumes[mount["name"]]
                ]
                self.assertEqual(
                    [(m["mountPath"], m.get("readOnly"), h) for m, h in hostPaths],
                    [
                        (
                            "/var/lib/kubelet/pki",
                            True,
                            {"path": "/var/lib/kubelet/pki", "type": "Directory"},
                        )
                    ],
                    directory,
                )
                for serverOptions in servers:
                    agentCA = serverOptions["agent-ca"]
                    self.assertEqual(agentCA, "/etc/edge-tunnel/agent-ca/ca.crt")
                    self.assertNotEqual(serverOptions["connect-ca"], agentCA)
                    self.assertNotEqual(serverOptions["proxy-serving-client-ca"], agentCA)
                (deployment,) = [w for w in objects if w["kind"] == "Deployment"]
                (volume,) = [
                    v
                    for v in deployment["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == "agent-ca"
                ]
                self.assertEqual(
                    volume["configMap"],
                    {
                        "name": "extension-apiserver-authentication",
                        "items": [{"key": "client-ca-file", "path": "ca.crt"}],
                    },
                )
        self.assertEqual(seen, 1)

    def test_csrBootstrapOverlay(self) -> None:
        """
        An agent with C{--bootstrap-kubeconfig} has no C{--cert}/C{--key},
        reads the node's kubeconfig from a read-only hostPath and keeps its
        key in an emptyDir; the server of that kustomization signs with the
        Secret's CA, mounted 0400, and checks agents against that CA.
        """
        seen = 0
        for directory, objects in self.rendered():
            agents, servers = agentsAndServers(objects)
            for workload, container, options in agents:
                if not options["bootstrap-kubeconfig"]:
                    for serverOptions in servers:
                        self.assertIsNone(serverOptions["agent-signer-ca-cert"], directory)
                    continue
                seen += 1
                self.assertIsNone(options["cert"])
                self.assertIsNone(options["key"])
                self.assertEqual(options["node-name"], FIELD_VALUES["spec.nodeName"])
                volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                node = mounts["/etc/edge-tunnel/node"]
                self.assertIs(node.get("readOnly"), True)
                self.assertEqual(
                    volumes[node["name"]]["hostPath"]["path"], "/etc/edge-tunnel/node"
                )
                certDir = mounts[options["cert-dir"]]
                self.assertIn("emptyDir", volumes[certDir["name"]])
                hostPaths = [v for v in volumes.values() if "hostPath" in v]
                self.assertEqual(len(hostPaths), 1, directory)
                (serverOptions,) = servers
                self.assertEqual(serverOptions["agent-ca"], serverOptions["agent-signer-ca-cert"])
                (deployment,) = [w for w in objects if w["kind"] == "Deployment"]
                (volume,) = [
                    v
                    for v in deployment["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == "agent-signer"
                ]
                self.assertEqual(
                    volume["secret"],
                    {"secretName": "edge-tunnel-agent-signer", "defaultMode": 0o400},
                )
        self.assertEqual(seen, 1)

    def test_noRBAC(self) -> None:
        """
        Where neither daemon talks to the Kubernetes API: no account, no
        role. Where the server does (C{--in-cluster}), its account and the
        one narrow Role of L{API_RULES}, bound to it alone, and nothing
        cluster-wide but, with C{--watch-nodes}, the ClusterRole of
        L{NODE_RULES} bound to it alone; its token mounted only into its
        container, at the in-cluster path.
        """
        withAPI = set()
        for directory, objects in self.rendered():
            kinds = {each["kind"] for each in objects}
            api = [
                (workload, container, options)
                for workload, container, _, options in twistdContainers(objects)
                if options.get("in-cluster") or options.get("kubeconfig")
            ]
            if not api:
                self.assertFalse(
                    kinds & {"ServiceAccount", "Role", "ClusterRole", "RoleBinding"}, directory
                )
                continue
            withAPI.add(directory.name)
            ((workload, container, options),) = api
            self.assertClusterWide(objects, options, workload, directory.name)
            spec = workload["spec"]["template"]["spec"]
            account = spec["serviceAccountName"]
            self.assertIs(spec["automountServiceAccountToken"], False)
            self.assertEqual(
                [m["mountPath"] for m in container["volumeMounts"] if "secrets" in m["mountPath"]],
                ["/var/run/secrets/kubernetes.io/serviceaccount"],
            )
            (role,) = [each for each in objects if each["kind"] == "Role"]
            (binding,) = [each for each in objects if each["kind"] == "RoleBinding"]
            (sa,) = [each for each in objects if each["kind"] == "ServiceAccount"]
            self.assertEqual(sa["metadata"]["name"], account)
            self.assertEqual(role["rules"], API_RULES)
            namespace, name = options["config-configmap"].split("/")
            self.assertEqual(role["rules"][0]["resourceNames"], [name])
            self.assertEqual(role["metadata"]["namespace"], namespace)
            self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
            self.assertEqual(
                binding["subjects"],
                [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            )
        self.assertEqual(
            withAPI, {"configmap-api", "node-api", "kubelet-certificate", "csr-bootstrap"}
        )

    def assertClusterWide(
        self, objects: list[Any], options: dict[str, Any], workload: Any, where: str
    ) -> None:
        """
        Nothing cluster-wide but, with C{--watch-nodes}, exactly L{NODE_RULES}
        and, with C{--agent-signer-ca-cert}, exactly L{CSR_RULES}, each bound
        to it alone.
        """
        roles = [each for each in objects if each["kind"] == "ClusterRole"]
        bindings = [each for each in objects if each["kind"] == "ClusterRoleBinding"]
        expected = []
        if options.get("watch-nodes"):
            expected.append(NODE_RULES)
        if options.get("agent-signer-ca-cert"):
            expected.append(CSR_RULES)
        self.assertEqual(
            sorted(map(repr, [r["rules"] for r in roles])), sorted(map(repr, expected)), where
        )
        self.assertEqual(len(bindings), len(roles), where)
        account = workload["spec"]["template"]["spec"]["serviceAccountName"]
        namespace = workload["metadata"]["namespace"]
        self.assertEqual(
            sorted(b["roleRef"]["name"] for b in bindings),
            sorted(r["metadata"]["name"] for r in roles),
            where,
        )
        for binding in bindings:
            self.assertEqual(
                binding["subjects"],
                [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
            )

    def test_replicasAndTimeouts(self) -> None:
        """
        C{--server-count} is the number of replicas, the grace period outlasts
        each daemon's C{--drain-timeout}, and the replicas are spread over
        nodes and kept by a disruption budget.
        """
        for directory, objects in self.rendered():
            budgets = [each for each in objects if each["kind"] == "PodDisruptionBudget"]
            for workload, _, plugin, options in twistdContainers(objects):
                spec = workload["spec"]["template"]["spec"]
                self.assertGreater(
                    spec["terminationGracePeriodSeconds"], options["drain-timeout"], directory
                )
                if plugin != "edge-tunnel-server":
                    continue
                labels = workload["spec"]["template"]["metadata"]["labels"]
                self.assertEqual(workload["spec"]["replicas"], 2, directory)
                self.assertEqual(options["server-count"], workload["spec"]["replicas"])
                affinity = spec["affinity"]["podAntiAffinity"]
                terms = [
                    term.get("podAffinityTerm", term)
                    for term in affinity.get("requiredDuringSchedulingIgnoredDuringExecution", [])
                    + affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
                ]
                self.assertEqual(
                    [term["topologyKey"] for term in terms], ["kubernetes.io/hostname"]
                )
                self.assertEqual(
                    terms[0]["labelSelector"]["matchLabels"].items() - labels.items(), set()
                )
                (budget,) = budgets
                self.assertEqual(budget["spec"]["minAvailable"], 1)
                self.assertEqual(
                    budget["spec"]["selector"]["matchLabels"].items() - labels.items(), set()
                )

    def test_loadBalancer(self) -> None:
        """
        A LoadBalancer Service carries the tunnel port, and only it, to the
        server replicas.
        """
        for directory, objects in self.rendered():
            services = [each for each in objects if each["kind"] == "Service"]
            (service,) = services
            self.assertEqual(service["spec"]["type"], "LoadBalancer")
            for workload, container, plugin, options in twistdContainers(objects):
                if plugin != "edge-tunnel-server":
                    continue
                labels = workload["spec"]["template"]["metadata"]["labels"]
                self.assertEqual(service["spec"]["selector"].items() - labels.items(), set())
                (port,) = service["spec"]["ports"]
                tunnelPort, _ = endpointPort(options["tunnel-endpoint"])
                self.assertEqual(port["protocol"], "TCP")
                self.assertEqual(probePort(container, port["targetPort"]), tunnelPort, directory)


def kubectlBinary() -> str | None:
    """The kubectl on PATH, else the one tests/interop/build.py built, if it did."""
    directory = cached("kube")
    return shutil.which("kubectl") or (
        str(directory / "kubectl") if directory is not None else None
    )


def kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    """The objects C{kubectl kustomize DIRECTORY} renders."""
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, KUBECONFIG=os.devnull),
    )
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory}: {done.stderr}")
    return [each for each in yaml.safe_load_all(done.stdout) if each]
