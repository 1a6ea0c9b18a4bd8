"""
The interop world: the real Kubernetes components on both sides of the
tunnel, in network namespaces (L{tests.netns}), laid out as
L{tests.system.e2e_world} lays out its stand-ins, whose L{World} this extends::

        cloud                          lb                         edge N (N = 1, 2)
  +---------------------------+  +----------------------+  +-------------------------------+
  | etcd 127.0.0.1:2379       |  | HAProxy, mode tcp    |  | edge-tunnel-agent -> :10262   |
  | kube-apiserver            |  |  10.199.0.1:10262 ---+->|   (node IP 172.30.N.10)       |
  |  10.200.0.1:6443 <--------+--+- 10.199.0.1:6443 <---+--+ kubelet (virtual-kubelet API) |
  | edge-tunnel-server        |  |                      |  |  *:10250, mTLS;               |
  |  *:10262, --iptables      |  | FORWARD: REJECT      |  |  registers Node edge-N via    |
  |  proxy listeners on       |  |                      |  |  the lb's :6443               |
  |   127.0.0.1 (DNAT targets)|  |                      |  | prometheus-node-exporter      |
  |   HTTPS 10263, HTTP 10264 |  |                      |  |  172.30.N.10:9100             |
  |  meta 127.0.0.1:10265     |  |                      |  |                               |
  | metrics-server            |  |                      |  |                               |
  |  10.200.0.3:4443 (dummy)  |  |                      |  |                               |
  | prometheus 127.0.0.1:9090 |  |                      |  |                               |
  | kubectl                   |  |                      |  |                               |
  +---------------------------+  +----------------------+  +-------------------------------+

Mode A (transparent, the seed's way): kube-apiserver dials
C{<InternalIP>:10250} as it always does; the server's OUTPUT DNAT brings the
connection to its HTTPS proxy listener, which ends kube-apiserver's TLS and
makes a new TLS connection to the kubelet, through the agent's tunnel, with
the proxy client certificate.  metrics-server dials the same address the
same way (it has no egress selector), and Prometheus dials
C{<InternalIP>:9100}, which the ConfigMap's C{http-proxy-ports} sends to the
HTTP proxy listener.  kube-apiserver reaches metrics-server (its APIService)
directly, at the EndpointSlice's address (C{--enable-aggregator-routing}).

Mode B (L{MODES}: C{B-tcp}, C{B-unix}): kube-apiserver is given an
EgressSelectorConfiguration whose C{cluster} egress is C{HTTPConnect} to the
server's CONNECT door, over TCP with mutual TLS or over a UNIX socket: it
sends C{CONNECT <InternalIP>:10250}, and TLS runs end to end from it to the
kubelet.  The aggregator's connections to metrics-server take the same
egress, so the door dials the cloud network itself (C{--connect-direct}).
metrics-server and Prometheus, which have no egress selector, keep the DNAT
path of mode A.

Who trusts whom:
  - the cluster CA signs kube-apiserver's serving certificate (for the cloud
    address and the load balancer's), the admin's client certificate
    (C{O=system:masters}) and each kubelet's API client certificate
    (C{CN=system:node:edge-N, O=system:nodes}); kube-apiserver's
    C{--client-ca-file};
  - the kubelet CA (L{World}'s) signs the kubelets' serving certificates,
    kube-apiserver's C{--kubelet-client-certificate} (also the server's
    C{--proxy-client-cert}: the tunnel re-originates TLS with
    kube-apiserver's own kubelet client identity) and the HTTPS proxy
    listener's serving certificate (C{--proxy-serving-cert}, with every
    node IP as IP subjectAltName).  The kubelets require client
    certificates from it; so does the HTTPS proxy listener
    (C{--proxy-serving-client-ca}); kube-apiserver verifies what the
    listener presents with it (C{--kubelet-certificate-authority}), and the
    server verifies the kubelets' serving certificates with it
    (C{--proxy-client-ca}).  Both TLS legs are verified.  It also signs
    the client certificate metrics-server shows the kubelets
    (C{--kubelet-client-certificate}: the HTTPS proxy listener refuses a
    client without one), and metrics-server checks the listener's
    certificate with it (C{--kubelet-certificate-authority}).
  - the cluster CA also signs metrics-server's API identity (user
    C{metrics-server}, with its manifests' RBAC) and its serving
    certificate (the APIService's C{caBundle}); a front-proxy CA signs
    kube-apiserver's C{--proxy-client-cert-file} (C{front-proxy-client}),
    which metrics-server trusts through the
    C{extension-apiserver-authentication} ConfigMap.
  - the tunnel CA (L{tests.pki}) signs the tunnel server's certificate and
    the agents' (C{CN=system:node:edge-N}, the node IP as IP subjectAltName).

Usable from a script (L{Cleanups} stands for a test case) or a test case.
Everything is undone by the scope's cleanups, in reverse: every process is
sent SIGTERM by PID (then the namespaces' deletion kills what is left, by
PID), the namespaces and the scratch directory are removed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.interop.build import build
from tests.netns import pollUntil
from tests.pki import KubeletCertificateStore
from tests.system.containers import NONROOT, ROOT, ContainerDaemons
from tests.system.e2e_world import (
    CLOUD_ADDRESS,
    EXIT_TIMEOUT,
    HTTP_LISTENER_PORT,
    HTTPS_LISTENER_PORT,
    LB_ADDRESS,
    SERVER_NAME,
    TCP_LISTENER_PORT,
    TUNNEL_PORT,
    Edge,
    Process,
    Scope,
    World,
    nodeIP,
)
from twisted_tunnel.tap.agent import DEFAULT_DRAIN_TIMEOUT
from twisted_tunnel.tls.certs import (
    Issued,
    _mintLeaf,
    mintAgent,
    mintCA,
    mintClient,
    mintServer,
)

__all__ = [
    "MODES",
    "AGENT_DRAIN_TIMEOUT",
    "COMPONENTS",
    "APISERVER_PORT",
    "Cleanups",
    "InteropWorld",
    "binaries",
]

#: kube-apiserver's port, on the cloud address and, through HAProxy, on the lb's.
APISERVER_PORT = 6443
#: The kubelet API port (what the DNAT catches).
KUBELET_PORT = 10250
#: prometheus-node-exporter's port on each node IP.
NODE_EXPORTER_PORT = 9100
#: The TCP servers of each edge that port-forward reaches (on the edge's loopback).
ECHO_PORT = 7000
SINK_PORT = 7001
#: metrics-server's own address in the cloud (on a dummy): the EndpointSlice
#: behind its APIService may not hold a loopback address.
METRICS_SERVER_ADDRESS = "10.200.0.3"
METRICS_SERVER_PORT = 4443
#: metrics-server's --metric-resolution (its minimum): kubectl top has a
#: node or pod after two scrapes.
METRIC_RESOLUTION = 10
#: Prometheus's web listener (its HTTP API), on the cloud's loopback.
PROMETHEUS_ADDRESS = ("127.0.0.1", 9090)
#: The tunnel server's meta listener (its /metrics): the server's default.
SERVER_META = ("127.0.0.1", 10265)

#: The ConfigMap: the node exporters' port is forwarded as plain HTTP.
INTEROP_CONFIG: Mapping[str, str] = {"http-proxy-ports": str(NODE_EXPORTER_PORT)}

#: The agents' --drain-timeout: their default (the world does not set it).
AGENT_DRAIN_TIMEOUT = DEFAULT_DRAIN_TIMEOUT

#: How kube-apiserver reaches the kubelets (issue 13): A, transparent (it
#: dials the node IP, the server's DNAT brings it to the HTTPS proxy
#: listener); B over TCP (an EgressSelectorConfiguration whose cluster
#: egress is HTTPConnect to the CONNECT door, mutual TLS); B over a UNIX
#: socket (the same, to the door on a socket); DNS (issue 17: kube-apiserver
#: prefers the Hostname address, and resolves node names through the server's
#: hosts file, to the HTTPS proxy listener on L{HOSTS_ADDRESS}:10250).
MODES = ("A", "B-tcp", "B-unix", "DNS")
#: What the HTTPS proxy listener presents (issue 16, item 3): C{static}, one
#: certificate naming every node IP, signed by the kubelet CA (what
#: kube-apiserver's --kubelet-certificate-authority names); C{minted}, a
#: certificate per node minted by the server from a kubelet serving CA
#: (C{--proxy-serving-ca-cert}), the CA kube-apiserver then trusts, with no
#: static certificate at all; C{untrusted}, minted as well, but
#: kube-apiserver (and metrics-server) trust the kubelet CA instead: a wrong
#: CA on their side.  Mode A only: in mode B kube-apiserver's TLS runs to
#: the kubelets themselves.
SERVING = ("static", "minted", "untrusted")
#: The CONNECT door's port on the cloud address (mode B over TCP).
CONNECT_PORT = 10261
#: What the door dials itself in mode B: the cloud's network, where the
#: aggregator reaches metrics-server and kube-apiserver the cloud node's
#: kubelet (no agent holds those addresses).
CLOUD_NETWORK = "10.200.0.0/24"
#: The cloud node (C{InteropWorld(cloudNode=True)}): a kubelet in the cloud
#: namespace, on a dummy address of the cloud network, with no agent.
CLOUD_NODE = "cloud-1"
CLOUD_NODE_ADDRESS = "10.200.0.4"
#: DNS mode: where the server's hosts file sends node names, on a dummy in
#: the cloud; the HTTPS proxy listener listens there on the kubelet port, so
#: that kube-apiserver's dial of C{<node-name>:10250} reaches it unNATed (the
#: listener then routes by the C{Host} header).
HOSTS_ADDRESS = "10.200.0.6"
#: Who the doors admit (C{--proxy-serving-client-name}, C{--connect-client-name}):
#: the CNs of kube-apiserver's kubelet client certificate (which it also
#: presents to the CONNECT door) and of metrics-server's.
PROXY_SERVING_CLIENT_NAMES = ("kube-apiserver", "metrics-server")
CONNECT_CLIENT_NAMES = ("kube-apiserver",)

#: Runs a command as root with no capability: none in its bounding set, so
#: that the program it execs has none (issue 16: the agent that reads the
#: kubelet's key needs none).
NO_CAPABILITIES = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")

#: How long kube-apiserver, a Node or a pod may take to become ready.
READY_TIMEOUT = 60.0

HERE = Path(__file__).resolve().parent


#: Every component the world can run, each built by C{tests/interop/build.py};
#: L{InteropWorld.buildControlPlane} needs the first two.
COMPONENTS = ("etcd", "kube", "kubelet", "metrics-server")


def binaries(components: Sequence[str] = COMPONENTS) -> dict[str, Path]:
    """
    Every interop component's binary by name (C{kube-apiserver}, C{kubectl},
    C{etcd}, C{kubelet}, C{metrics-server}), built by C{tests/interop/build.py}
    if not cached; only those of C{components} if given.
    """
    found: dict[str, Path] = {}
    for component in components:
        directory, _seconds = build(component)
        for path in directory.iterdir():
            found[path.name] = path
    return found


class Cleanups:
    """A stand-in for a test case outside one: its cleanups, run by L{run}."""

    def __init__(self) -> None:
        self._cleanups: list[tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]] = []

    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None:
        self._cleanups.append((function, args, kwargs))

    def skipTest(self, reason: str) -> Any:
        raise SystemExit(f"cannot run: {reason}")

    def fail(self, msg: Any = None) -> Any:
        raise AssertionError(msg)

    def run(self) -> list[BaseException]:
        """Run every cleanup, last added first; the errors they raised."""
        errors: list[BaseException] = []
        while self._cleanups:
            function, args, kwargs = self._cleanups.pop()
            try:
                function(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - every cleanup must run
                errors.append(e)
        return errors


def _kubeconfig(path: str, server: str, ca: str, cert: str, key: str, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "interop", "cluster": {"server": server, "certificate-authority": ca}}
        ],
        "users": [{"name": user, "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "interop", "context": {"cluster": "interop", "user": user}}],
        "current-context": "interop",
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)  # JSON is YAML


#: What the kubelets' API identity needs beyond the Node authorizer: the
#: pod controller's informers list secrets, configmaps and services.  And a
#: ServiceAccount for pods (no controller-manager makes it).
BOOTSTRAP_OBJECTS: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "interop-virtual-kubelet"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["secrets", "configmaps", "services"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "interop-virtual-kubelet"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "interop-virtual-kubelet",
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
        ],
    },
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
]


def _user(name: str) -> dict[str, str]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}


def metricsServerObjects(caBundle: bytes) -> list[dict[str, Any]]:
    """
    What metrics-server needs in the cluster, as its own manifests
    (C{manifests/base}) give it, for the user C{metrics-server} (its client
    certificate's CN) rather than a ServiceAccount; and, with no
    controller-manager to make it, the EndpointSlice behind its Service,
    which kube-apiserver's aggregator (C{--enable-aggregator-routing})
    dials: L{METRICS_SERVER_ADDRESS}.
    """
    user = [_user("metrics-server")]
    name = "system:metrics-server"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": user,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "metrics-server:system:auth-delegator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": user,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": user,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-server", "namespace": "kube-system"},
            "spec": {
                "ports": [
                    {
                        "name": "https",
                        "port": 443,
                        "protocol": "TCP",
                        "targetPort": METRICS_SERVER_PORT,
                    }
                ]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "metrics-server-interop",
                "namespace": "kube-system",
                "labels": {"kubernetes.io/service-name": "metrics-server"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [METRICS_SERVER_ADDRESS], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": METRICS_SERVER_PORT, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {
                "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "caBundle": base64.b64encode(caBundle).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def prometheusConfig(nodeExporters: Sequence[str], serverMeta: str) -> dict[str, Any]:
    """Prometheus's configuration: each node exporter, and the server's meta listener."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": list(nodeExporters)}]},
            {"job_name": "edge-tunnel-server", "static_configs": [{"targets": [serverMeta]}]},
        ],
    }


def tickerPod(name: str, node: str) -> dict[str, Any]:
    """A pod bound to C{node}: a C{ticker} container (a timestamped line each 100 ms)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            # stdin: kubectl attach -i refuses a container without it
            "containers": [{"name": "ticker", "image": "interop/ticker", "stdin": True}],
        },
    }


class InteropWorld(World):
    """
    L{World} with the real components instead of the stand-ins (see the
    module docstring); L{build} returns when both Nodes are Ready, the
    agents are connected and the DNAT rules are in place.

    @ivar timings: Seconds each bring-up step took, in order.
    """

    def __init__(
        self,
        scope: Scope,
        edges: int = 2,
        mode: str = "A",
        *,
        kubeletClientCert: bool = False,
        observability: bool = True,
        serving: str = "static",
        cloudNode: bool = False,
    ) -> None:
        """
        @param kubeletClientCert: the agents prove their node with the
            kubelet's own client certificate (issue 16): each node's API
            client certificate from the cluster CA is kept as the kubelet
            keeps it (L{KubeletCertificateStore}: C{kubelet-client-current.pem},
            which the kubelet's kubeconfig names too), the agent reads it with
            C{--kubelet-client-cert} as root with no capability at all
            (C{setpriv}), and the server trusts the cluster CA for agents
            (C{--agent-ca}).
        @param observability: also run metrics-server, Prometheus and the
            node exporters (items 7 and 9); without, the world needs no
            metrics-server build and comes up sooner.
        @param serving: the HTTPS proxy listener's certificate (issue 16,
            item 3; one of C{SERVING}): C{static}, one for every node IP;
            C{minted}, per node from the kubelet CA, which kube-apiserver
            trusts; C{untrusted}, minted from a CA kube-apiserver does not
            trust.
        @param cloudNode: also run a kubelet in the cloud namespace, Node
            L{CLOUD_NODE} at L{CLOUD_NODE_ADDRESS} (in L{CLOUD_NETWORK}),
            with no agent and no edge label (issue 17): in mode B the door
            dials it itself (C{--connect-direct}).
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {MODES}")
        if serving not in SERVING or (serving != "static" and mode != "A"):
            raise ValueError(f"serving {serving!r}: one of {SERVING}, and only in mode A")
        self.mode = mode
        self.kubeletClientCert = kubeletClientCert
        self.observability = observability
        self.serving = serving
        self.cloudNode = cloudNode
        super().__init__(scope, edges, serverArguments=[])
        self.timings: dict[str, float] = {}
        self.nodeExporters: dict[str, Process] = {}
        self.kubeletStores: dict[str, KubeletCertificateStore] = {}

    # Building.

    def build(self, beforeServer: Callable[[Any], object] | None = None) -> InteropWorld:
        started = time.monotonic()

        def step(name: str) -> None:
            self.timings[name] = time.monotonic() - started

        self.bin = binaries(COMPONENTS if self.observability else ("etcd", "kube", "kubelet"))
        step("binaries")
        self.directory = tempfile.mkdtemp(prefix="twisted-tunnel-interop-")
        self.scope.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self._credentials()
        self._network()
        self.cloud.addDummy(f"{METRICS_SERVER_ADDRESS}/32")
        if self.cloudNode:
            self.cloud.addDummy(f"{CLOUD_NODE_ADDRESS}/32")
        # Registered after the namespaces' deletion, so it runs before it.
        self.scope.addCleanup(self.stopAll)
        step("credentials and network")
        self.configPath = os.path.join(self.directory, "edge-tunnel-server-cfg.yaml")
        self.writeConfig(INTEROP_CONFIG)
        if beforeServer is not None:
            beforeServer(self.cloud)
        self.etcd = self.startEtcd()
        if self.mode == "DNS":
            self._hostsFile()
        else:
            self.apiserver = self.startAPIServer()
        self.startServers()
        if self.observability:
            self.prometheus = self.startPrometheus()
        self.haproxy = self.startHAProxy()
        for edge in self.edges:
            self.startAgent(edge)
            if self.observability:
                self.nodeExporters[edge.name] = self.startNodeExporter(edge)
        self.waitForServers()
        self.waitListening(self.lb, APISERVER_PORT, "HAProxy")
        for edge in self.edges:
            self.waitForAgent(edge)
        step("tunnel up")
        if self.mode == "DNS":
            # only now: its /etc/hosts is the hosts file as it is at its start
            self.waitForHosts()
            self.apiserver = self.startAPIServer()
        self.waitForAPIServer()
        step("kube-apiserver ready")
        with open(self.clusterCA, "rb") as f:
            caBundle = f.read()
        metricsServer = metricsServerObjects(caBundle) if self.observability else []
        self.kubectl("apply", "-f", "-", input=_list(BOOTSTRAP_OBJECTS + metricsServer))
        for edge in self.edges:
            self.kubelets[edge.name] = self._startKubelet(edge)
        if self.cloudNode:
            self.kubelets[CLOUD_NODE] = self._startCloudKubelet()
        if self.observability:
            # early: kubectl top has a node only after two of its scrapes
            self.metricsServer = self.startMetricsServer()
        for name in self.kubelets:
            self.kubelets[name].waitForLine(rf"node {name} registered and Ready", READY_TIMEOUT)
        step("nodes registered")
        self.waitForNat(
            lambda table: (
                all(
                    f"-A EDGE-TUNNEL-{kind} -d {edge.nodeIP}/32 -p tcp -j DNAT"
                    f" --to-destination {listener}" in table
                    for edge in self.edges
                    for kind, listener in self.dnatTargets()
                )
                and f"--dport {NODE_EXPORTER_PORT} -j EDGE-TUNNEL-HTTP" in table
            ),
            "the DNAT of every node's HTTPS and HTTP ports (9100) to the proxy listeners",
        )
        step("DNAT rules")
        self.bringUpSeconds = time.monotonic() - started
        return self

    def buildControlPlane(self) -> InteropWorld:
        """
        Only the control plane: the credentials, the cloud's network, etcd
        and kube-apiserver (ready), and the bootstrap objects; no server,
        agent or kubelet (build the world with C{edges=0}).  For the tests of
        the daemons' own API access (L{tests.system.test_kube}), which start
        the server themselves.
        """
        self.bin = binaries(COMPONENTS[:2])
        self.directory = tempfile.mkdtemp(prefix="twisted-tunnel-interop-")
        self.scope.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self._credentials()
        self._network()
        # Registered after the namespaces' deletion, so it runs before it.
        self.scope.addCleanup(self.stopAll)
        self.etcd = self.startEtcd()
        self.apiserver = self.startAPIServer()
        self.waitForAPIServer()
        self.kubectl("apply", "-f", "-", input=_list(BOOTSTRAP_OBJECTS))
        return self

    def serviceAccountKubeconfig(self, namespace: str, name: str) -> str:
        """
        A kubeconfig that acts as ServiceAccount C{namespace/name} (which
        must exist): a token from the TokenRequest API (C{kubectl create
        token}), as the kubelet mounts one in a pod.
        """
        token = self.kubectl(
            "create", "token", name, "--namespace", namespace, "--duration=1h"
        ).stdout.strip()
        path = os.path.join(self.directory, f"sa-{namespace}-{name}.kubeconfig")
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "interop",
                    "cluster": {
                        "server": f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}",
                        "certificate-authority": self.clusterCA,
                    },
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "interop", "context": {"cluster": "interop", "user": name}}],
            "current-context": "interop",
        }
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
        return path

    def _credentials(self) -> None:
        super()._credentials()
        kubeletCA = self.kubeletAuthority
        # The HTTPS proxy listener presents a certificate for every node IP,
        # signed by the kubelet CA: kube-apiserver checks it with
        # --kubelet-certificate-authority as it would a kubelet's.
        nodeIPs = [nodeIP(index) for index in range(1, self.edgeCount + 1)]
        # and every node name: in DNS mode kube-apiserver checks the name it dialled
        nodeNames = [f"edge-{index}" for index in range(1, self.edgeCount + 1)]
        self.proxyServingCert, self.proxyServingKey = self._write(
            # (a world without edges, buildControlPlane's, still needs a name)
            mintServer(kubeletCA, [*nodeIPs, *nodeNames] or ["127.0.0.1"]),
            "proxy-serving",
        )
        clusterCA = mintCA("interop cluster CA")
        self.clusterCA = os.path.join(self.directory, "cluster-ca.pem")
        with open(self.clusterCA, "wb") as f:
            f.write(clusterCA.certificatePEM())
        self.apiserverServing = self._write(
            mintServer(
                clusterCA,
                [
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                    CLOUD_ADDRESS,
                    LB_ADDRESS,
                    "10.96.0.1",
                    "127.0.0.1",
                ],
            ),
            "apiserver-serving",
        )
        admin = _mintLeaf(
            clusterCA,
            _name("interop-admin", "system:masters"),
            [],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            30,
            None,
            None,
        )
        self.adminCert, self.adminKey = self._write(admin, "admin")
        self.adminKubeconfig = os.path.join(self.directory, "admin.kubeconfig")
        _kubeconfig(
            self.adminKubeconfig,
            f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}",
            self.clusterCA,
            self.adminCert,
            self.adminKey,
            "interop-admin",
        )
        self.clusterAuthority = clusterCA
        self.kubeletKubeconfigs: dict[str, str] = {}
        for index, address in enumerate(nodeIPs, 1):
            name = f"edge-{index}"
            issued = mintAgent(clusterCA, name, [address])
            cert, key = self._write(issued, f"node-{name}")
            if self.kubeletClientCert:
                # where and as the kubelet keeps it; its kubeconfig names it, as a real one's
                store = KubeletCertificateStore(
                    os.path.join(self.directory, f"node-{name}", "var/lib/kubelet/pki")
                )
                store.update(issued)
                self.kubeletStores[name] = store
                cert = key = store.current
            path = os.path.join(self.directory, f"kubelet-{name}.kubeconfig")
            _kubeconfig(
                path,
                f"https://{LB_ADDRESS}:{APISERVER_PORT}",
                self.clusterCA,
                cert,
                key,
                f"system:node:{name}",
            )
            self.kubeletKubeconfigs[name] = path
        if self.cloudNode:
            self._cloudNodeCredentials(clusterCA)
        # The aggregation layer: kube-apiserver's front-proxy client
        # certificate, which metrics-server trusts through the
        # extension-apiserver-authentication ConfigMap.
        frontProxyCA = mintCA("interop front-proxy CA")
        self.frontProxyCA = os.path.join(self.directory, "front-proxy-ca.pem")
        with open(self.frontProxyCA, "wb") as f:
            f.write(frontProxyCA.certificatePEM())
        self.frontProxyCert, self.frontProxyKey = self._write(
            mintClient(frontProxyCA, "front-proxy-client"), "front-proxy-client"
        )
        # metrics-server: its API identity (user metrics-server), its serving
        # certificate (the APIService's caBundle is the cluster CA), and the
        # client certificate it shows the kubelets, which is what the HTTPS
        # proxy listener sees (it requires one from the kubelet CA).
        cert, key = self._write(mintClient(clusterCA, "metrics-server"), "metrics-server-api")
        self.metricsServerKubeconfig = os.path.join(self.directory, "metrics-server.kubeconfig")
        _kubeconfig(
            self.metricsServerKubeconfig,
            f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}",
            self.clusterCA,
            cert,
            key,
            "metrics-server",
        )
        self.metricsServerServing = self._write(
            mintServer(
                clusterCA,
                ["metrics-server.kube-system.svc", METRICS_SERVER_ADDRESS],
            ),
            "metrics-server-serving",
        )
        self.metricsServerKubeletClient = self._write(
            mintClient(kubeletCA, "metrics-server"), "metrics-server-kubelet-client"
        )
        signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.serviceAccountKey = os.path.join(self.directory, "sa.key")
        self.serviceAccountPub = os.path.join(self.directory, "sa.pub")
        with open(self.serviceAccountKey, "wb") as f:
            f.write(
                signing.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with open(self.serviceAccountPub, "wb") as f:
            f.write(
                signing.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        # The server's extra options: DNAT, both TLS legs verified, its meta
        # listener where the server puts it by default.
        self.serverArguments = [
            "--iptables",
            *self._servingArguments(),
            "--proxy-client-ca", self.kubeletCA,
            # its default (the tests' twistdCommand would pick a free port),
            # where Prometheus scrapes it
            "--meta-endpoint", "tcp:{1}:interface={0}".format(*SERVER_META),
        ]  # fmt: skip
        if self.mode.startswith("B"):
            self.serverArguments += self._egressSelection()
        if self.kubeletClientCert:
            # the agents' certificates are the kubelets': the cluster CA signs them
            self.serverArguments += ["--agent-ca", self.clusterCA]
        for name in PROXY_SERVING_CLIENT_NAMES:
            self.serverArguments += ["--proxy-serving-client-name", name]

    def _cloudNodeCredentials(self, clusterCA: Issued) -> None:
        """
        The cloud node's kubelet: its serving certificate (kubelet CA, as
        the edges'), its API client certificate (cluster CA,
        C{CN=system:node:cloud-1}) and its kubeconfig, to kube-apiserver's
        cloud address (it runs in the cloud).
        """
        self.kubeletCerts[CLOUD_NODE] = self._write(
            mintServer(self.kubeletAuthority, [CLOUD_NODE, CLOUD_NODE_ADDRESS]),
            f"kubelet-{CLOUD_NODE}",
        )
        cert, key = self._write(
            mintAgent(clusterCA, CLOUD_NODE, [CLOUD_NODE_ADDRESS]), f"node-{CLOUD_NODE}"
        )
        path = os.path.join(self.directory, f"kubelet-{CLOUD_NODE}.kubeconfig")
        _kubeconfig(
            path,
            f"https://{CLOUD_ADDRESS}:{APISERVER_PORT}",
            self.clusterCA,
            cert,
            key,
            f"system:node:{CLOUD_NODE}",
        )
        self.kubeletKubeconfigs[CLOUD_NODE] = path

    def _servingArguments(self) -> list[str]:
        """
        The HTTPS proxy listener's certificate (L{SERVING}): the static one,
        or the CA it mints with (C{servingCA}; no static certificate), and
        which CA kube-apiserver and metrics-server check it with
        (C{listenerTrust}).
        """
        if self.serving == "static":
            self.listenerTrust = self.kubeletCA
            return [
                "--proxy-serving-cert", self.proxyServingCert,
                "--proxy-serving-key", self.proxyServingKey,
            ]  # fmt: skip
        self.servingCA, self.servingCAKey = self._write(
            mintCA("interop kubelet serving CA"), "kubelet-serving-ca"
        )
        self.listenerTrust = self.servingCA if self.serving == "minted" else self.kubeletCA
        return [
            "--proxy-serving-ca-cert", self.servingCA,
            "--proxy-serving-ca-key", self.servingCAKey,
        ]  # fmt: skip

    def _egressSelection(self) -> list[str]:
        """
        Mode B: kube-apiserver's EgressSelectorConfiguration (written to
        C{egressConfig}) and the server's CONNECT door for it: over TCP on
        the cloud address with mutual TLS (the door presents the server's
        certificate, named L{SERVER_NAME}, and takes kube-apiserver's
        kubelet client certificate, from the kubelet CA), or on a UNIX
        socket (plain: the socket is the server's, 0600).  Either way the
        door dials the cloud network itself (C{--connect-direct}): the
        aggregator's connections to metrics-server come through it too.
        """
        if self.mode == "B-tcp":
            transport: dict[str, Any] = {
                "tcp": {
                    "url": f"https://{CLOUD_ADDRESS}:{CONNECT_PORT}",
                    "tlsConfig": {
                        "caBundle": self.tunnelCA,
                        "clientCert": self.apiserverCert,
                        "clientKey": self.apiserverKey,
                        "tlsServerName": SERVER_NAME,
                    },
                }
            }
            door = [
                "--connect-endpoint", f"tcp:{CONNECT_PORT}:interface={CLOUD_ADDRESS}",
                "--connect-ca", self.kubeletCA,
            ]  # fmt: skip
            for name in CONNECT_CLIENT_NAMES:
                door += ["--connect-client-name", name]
        else:
            socket = os.path.join(self.directory, "connect.sock")
            transport = {"uds": {"udsName": socket}}
            door = ["--connect-endpoint", f"unix:{socket}"]
        configuration = {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [
                {
                    "name": "cluster",
                    "connection": {"proxyProtocol": "HTTPConnect", "transport": transport},
                }
            ],
        }
        self.egressConfig = os.path.join(self.directory, "egress-selector.yaml")
        with open(self.egressConfig, "w") as f:
            json.dump(configuration, f, indent=2)
        return [*door, "--connect-direct", CLOUD_NETWORK]

    def haproxyConfig(self) -> str:
        """L{World}'s, and kube-apiserver behind the lb's address, for the kubelets."""
        return super().haproxyConfig() + (
            "frontend apiserver\n"
            f"    bind {LB_ADDRESS}:{APISERVER_PORT}\n"
            "    default_backend apiservers\n"
            "backend apiservers\n"
            f"    server cloud {CLOUD_ADDRESS}:{APISERVER_PORT}\n"
        )

    # The agents' identity (issue 16).

    def agentIdentity(self, edge: Edge) -> list[str]:
        """With L{kubeletClientCert}, the kubelet's file instead of a tunnel certificate."""
        if not self.kubeletClientCert:
            return super().agentIdentity(edge)
        return [
            "--ca",
            self.tunnelCA,
            "--kubelet-client-cert",
            self.kubeletStores[edge.name].current,
        ]

    def agentCommand(self, edge: Edge, options: Sequence[str]) -> list[str]:
        """
        With L{kubeletClientCert}, the agent runs as the overlay runs it:
        root, with every capability gone (an empty bounding set: what it
        execs gets none), which reads the kubelet's 0600 file as its owner.
        """
        command = super().agentCommand(edge, options)
        if not self.kubeletClientCert:
            return command
        return [*NO_CAPABILITIES, *command]

    def rotateKubeletCertificate(self, edge: Edge, issued: Issued | None = None) -> Issued:
        """
        Rotate C{edge}'s kubelet client certificate as the kubelet does (a
        new file, the symlink repointed): to C{issued}, by default a new one
        from the cluster CA for the node; what it rotated to.
        """
        if issued is None:
            issued = mintAgent(self.clusterAuthority, edge.name, [edge.nodeIP])
        self.kubeletStores[edge.name].update(issued)
        return issued

    # The processes.

    def startServers(self) -> None:
        """The tunnel server, its proxy listeners on loopback (the DNAT target)."""
        self.startServer(address="127.0.0.1")

    def waitForServers(self) -> None:
        """In DNS mode, the HTTPS proxy listener is on L{HOSTS_ADDRESS}:10250."""
        if self.mode != "DNS":
            super().waitForServers()
            return
        assert self.server is not None
        for port in (TUNNEL_PORT, KUBELET_PORT, HTTP_LISTENER_PORT, TCP_LISTENER_PORT):
            self.server.waitForLine(rf"starting on {port}\b")

    def dnatTargets(self) -> list[tuple[str, str]]:
        """Where the server's DNAT sends a node's HTTPS and HTTP ports."""
        https = (
            f"{HOSTS_ADDRESS}:{KUBELET_PORT}"
            if self.mode == "DNS"
            else f"127.0.0.1:{HTTPS_LISTENER_PORT}"
        )
        return [("HTTPS", https), ("HTTP", f"127.0.0.1:{HTTP_LISTENER_PORT}")]

    # DNS mode.

    def _hostsFile(self) -> None:
        """
        DNS mode: the server keeps the cloud namespace's hosts file
        (C{/etc/netns/<cloud>/hosts}, which C{ip netns exec} bind-mounts over
        C{/etc/hosts} for what it starts there afterwards), naming each
        connected node L{HOSTS_ADDRESS}, where its HTTPS proxy listener
        listens on the kubelet port.  The folder goes with the world.
        """
        folder = os.path.join("/etc/netns", self.cloud.name)
        os.makedirs(folder)
        self.scope.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        self.hostsPath = os.path.join(folder, "hosts")
        self.cloud.addDummy(f"{HOSTS_ADDRESS}/32")
        self.serverArguments += [
            "--hosts-file", self.hostsPath,
            "--hosts-address", HOSTS_ADDRESS,
            "--https-proxy-endpoint", f"tcp:{KUBELET_PORT}:interface={HOSTS_ADDRESS}",
        ]  # fmt: skip

    def waitForHosts(self) -> None:
        """Wait until the hosts file names every edge L{HOSTS_ADDRESS}."""

        def listed() -> bool:
            try:
                with open(self.hostsPath) as f:
                    lines = set(f.read().splitlines())
            except FileNotFoundError:
                return False
            return all(f"{HOSTS_ADDRESS} {edge.name}" in lines for edge in self.edges)

        pollUntil(listed, READY_TIMEOUT, "the hosts file to name every edge", interval=0.05)

    def startEtcd(self) -> Process:
        data = os.path.join(self.directory, "etcd")
        argv = [
            str(self.bin["etcd"]),
            "--name", "interop", "--data-dir", data,
            "--listen-client-urls", "http://127.0.0.1:2379",
            "--advertise-client-urls", "http://127.0.0.1:2379",
            "--listen-peer-urls", "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
            "--initial-cluster", "interop=http://127.0.0.1:2380",
            "--log-level", "warn",
        ]  # fmt: skip
        return self._spawn(self.cloud, "etcd", argv, cwd=self.directory)

    def startAPIServer(self) -> Process:
        cert, key = self.apiserverServing
        argv = [
            str(self.bin["kube-apiserver"]),
            "--etcd-servers=http://127.0.0.1:2379",
            f"--bind-address={CLOUD_ADDRESS}",
            f"--secure-port={APISERVER_PORT}",
            f"--advertise-address={CLOUD_ADDRESS}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.clusterCA}",
            f"--service-account-key-file={self.serviceAccountPub}",
            f"--service-account-signing-key-file={self.serviceAccountKey}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            # kube-apiserver's kubelet client identity: the HTTPS proxy
            # listener requires it (--proxy-serving-client-ca = its CA)
            f"--kubelet-client-certificate={self.apiserverCert}",
            f"--kubelet-client-key={self.apiserverKey}",
            # what the HTTPS proxy listener presents for every node IP
            # (the static certificate's CA, or the minting CA)
            f"--kubelet-certificate-authority={self.listenerTrust}",
            "--kubelet-preferred-address-types="
            + ("Hostname" if self.mode == "DNS" else "InternalIP"),
            f"--cert-dir={os.path.join(self.directory, 'apiserver-certs')}",
            "--profiling=false",
            # the aggregation layer (kubeadm's flags), for metrics-server's
            # APIService; no kube-proxy, so the aggregator dials the
            # EndpointSlice's address, not the Service's ClusterIP
            f"--requestheader-client-ca-file={self.frontProxyCA}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.frontProxyCert}",
            f"--proxy-client-key-file={self.frontProxyKey}",
            "--enable-aggregator-routing=true",
        ]
        if self.mode.startswith("B"):
            argv.append(f"--egress-selector-config-file={self.egressConfig}")
        return self._spawn(self.cloud, "kube-apiserver", argv, cwd=self.directory)

    def waitForAPIServer(self) -> None:
        assert self.apiserver is not None

        def ready() -> bool:
            if not self.apiserver.running:
                raise AssertionError(f"kube-apiserver exited:\n{self.apiserver.log()}")
            result = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
            return result.returncode == 0 and result.stdout.strip() == "ok"

        try:
            pollUntil(ready, READY_TIMEOUT, "kube-apiserver's /readyz", interval=0.2)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.apiserver.log()[-5000:]}") from None

    def _startKubelet(self, edge: Edge) -> Process:
        # every address, as a real kubelet (--address 0.0.0.0): the agent
        # dials 127.0.0.1:10250 (localhost-proxy-ports' default has 10250)
        return self._spawnKubelet(edge.namespace, edge.name, edge.nodeIP, "0.0.0.0", "127.0.0.1")

    def _startCloudKubelet(self) -> Process:
        """
        The cloud node's kubelet (L{cloudNode}): in the cloud namespace, on
        its own address only (the cloud's loopback is the server's and
        etcd's), registering Node L{CLOUD_NODE} with no edge label.
        """
        address = CLOUD_NODE_ADDRESS
        return self._spawnKubelet(self.cloud, CLOUD_NODE, address, address, address)

    def _spawnKubelet(
        self, namespace: Any, node: str, nodeIP: str, listen: str, servers: str
    ) -> Process:
        """Our kubelet for C{node}; its port-forward targets on C{servers}."""
        cert, key = self.kubeletCerts[node]
        argv = [
            str(self.bin["kubelet"]),
            "--listen", f"{listen}:{KUBELET_PORT}",
            "--cert", cert, "--key", key, "--client-ca", self.kubeletCA,
            "--node-name", node, "--internal-ip", nodeIP,
            "--kubeconfig", self.kubeletKubeconfigs[node],
            "--root", os.path.join(self.directory, f"kubelet-{node}"),
            "--echo-listen", f"{servers}:{ECHO_PORT}",
            "--sink-listen", f"{servers}:{SINK_PORT}",
        ]  # fmt: skip
        if servers != "127.0.0.1":
            argv += ["--forward-host", servers]
        return self._spawn(namespace, f"kubelet-{node}", argv, cwd=self.directory)

    def startNodeExporter(self, edge: Edge) -> Process:
        argv = [
            "prometheus-node-exporter",
            f"--web.listen-address={edge.nodeIP}:{NODE_EXPORTER_PORT}",
            "--no-collector.systemd",
        ]
        return self._spawn(edge.namespace, f"node-exporter-{edge.name}", argv, cwd=self.directory)

    def startPrometheus(self) -> Process:
        """
        Debian's Prometheus in the cloud, scraping every node exporter at
        C{<InternalIP>:9100} (the DNAT brings it to the HTTP proxy listener:
        9100 is in the ConfigMap's C{http-proxy-ports}) and the server's meta
        listener, each second; its web listener on L{PROMETHEUS_ADDRESS}.
        """
        if shutil.which("prometheus") is None:
            raise AssertionError("no prometheus on PATH: apt-get install prometheus (Debian's)")
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w") as f:
            json.dump(  # JSON is YAML
                prometheusConfig(
                    [f"{edge.nodeIP}:{NODE_EXPORTER_PORT}" for edge in self.edges],
                    "{}:{}".format(*SERVER_META),
                ),
                f,
                indent=1,
            )
        argv = [
            "prometheus",
            f"--config.file={config}",
            "--web.listen-address={}:{}".format(*PROMETHEUS_ADDRESS),
            f"--storage.tsdb.path={os.path.join(self.directory, 'prometheus')}",
        ]
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return self._spawn(self.cloud, "prometheus", argv, cwd=self.directory, env=environment)

    def startMetricsServer(self) -> Process:
        """
        metrics-server v0.8.0 in the cloud, on L{METRICS_SERVER_ADDRESS}:
        it scrapes each node's C{<InternalIP>:10250/metrics/resource}, which
        the DNAT brings to the HTTPS proxy listener; it shows that listener
        a client certificate of the kubelet CA and checks the listener's
        (the proxy-serving certificate) with the kubelet CA.
        """
        cert, key = self.metricsServerServing
        kubeletCert, kubeletKey = self.metricsServerKubeletClient
        kubeconfig = self.metricsServerKubeconfig
        argv = [
            str(self.bin["metrics-server"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={METRICS_SERVER_ADDRESS}",
            f"--secure-port={METRICS_SERVER_PORT}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--cert-dir={os.path.join(self.directory, 'metrics-server-certs')}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={kubeletCert}",
            f"--kubelet-client-key={kubeletKey}",
            f"--kubelet-certificate-authority={self.listenerTrust}",
            f"--metric-resolution={METRIC_RESOLUTION}s",
            "--kubelet-request-timeout=5s",
        ]
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return self._spawn(self.cloud, "metrics-server", argv, cwd=self.directory, env=environment)

    def stopAgent(self, edge: Edge) -> float:
        """
        Send C{edge}'s agent SIGTERM, by PID, and wait until it has exited
        (it drains for up to L{AGENT_DRAIN_TIMEOUT}); the seconds it took.
        """
        return self.agents[edge.name].stop(signal.SIGTERM, AGENT_DRAIN_TIMEOUT + EXIT_TIMEOUT)

    def restartAgent(self, edge: Edge) -> float:
        """
        Start C{edge}'s agent again, as L{build} started it, and wait until
        its tunnel is up, the server has it and the node's DNAT rules are
        back; the seconds that took.
        """
        assert self.server is not None
        previous = self.agents[edge.name]
        if previous.running:
            raise AssertionError(f"{previous} still runs: stop it first")
        started = time.monotonic()
        mark = self.server.mark()
        self.startAgent(edge)
        self.waitForAgent(edge, serverMark=mark)
        # The server lays the node's DNAT rules down just after it logs the
        # agent: until then kube-apiserver's dial goes past the tunnel.
        self.waitForNat(
            lambda table: all(
                f"-A EDGE-TUNNEL-{kind} -d {edge.nodeIP}/32 -p tcp -j DNAT"
                f" --to-destination {listener}" in table
                for kind, listener in self.dnatTargets()
            ),
            f"the DNAT of {edge.name}'s HTTPS and HTTP ports to the proxy listeners",
        )
        return time.monotonic() - started

    def stopAll(self) -> None:
        """
        SIGTERM every process still running, by PID, newest first, each
        waited for in turn (kube-apiserver before etcd: with etcd gone first
        it takes many seconds to stop); SIGKILL one that takes over
        L{EXIT_TIMEOUT}.  C{stopSeconds}: when each had stopped.
        """
        self.stopSeconds: dict[str, float] = {}
        started = time.monotonic()
        for process in reversed(self.processes):
            process.sendSignal(signal.SIGTERM)
            try:
                process.popen.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.sendSignal(signal.SIGKILL)
                process.popen.wait(EXIT_TIMEOUT)
            self.stopSeconds[process.name] = time.monotonic() - started

    # Clients.

    def kubectlCommand(self, *arguments: str) -> list[str]:
        """The command line that runs kubectl, as the admin, in the cloud."""
        return self.cloud.command(
            str(self.bin["kubectl"]), f"--kubeconfig={self.adminKubeconfig}", *arguments
        )

    def kubectlEnvironment(self) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        environment["HOME"] = self.directory  # its discovery cache
        environment.pop("KUBECONFIG", None)
        return environment

    def kubectl(
        self,
        *arguments: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 30.0,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run kubectl (L{kubectlCommand}) to completion."""
        result = subprocess.run(
            self.kubectlCommand(*arguments),
            input=input,
            capture_output=True,
            text=text,
            env=self.kubectlEnvironment(),
            cwd=self.directory,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(arguments)} exited {result.returncode}:\n"
                f"{result.stdout!r}\n{result.stderr!r}"
            )
        return result

    def kubectlPopen(self, *arguments: str, **popenArguments: Any) -> subprocess.Popen[Any]:
        """Start kubectl (L{kubectlCommand}); the caller ends it."""
        return subprocess.Popen(
            self.kubectlCommand(*arguments),
            env=self.kubectlEnvironment(),
            cwd=self.directory,
            **popenArguments,
        )

    def createTicker(self, edge: Edge) -> str:
        """Create a ticker pod bound to C{edge}'s node; its name, once Running."""
        return self.createTickerOn(edge.name)

    def createTickerOn(self, node: str) -> str:
        """Create a ticker pod bound to Node C{node}; its name, once Running."""
        name = f"tick-{node}"
        self.kubectl("apply", "-f", "-", input=json.dumps(tickerPod(name, node)))
        self.kubectl(
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            f"pod/{name}",
            f"--timeout={READY_TIMEOUT:g}s",
            timeout=READY_TIMEOUT + 10,
        )
        return name


class ImageInteropWorld(ContainerDaemons, InteropWorld):
    """
    Mode A with the server and the agents run from the image (C{make
    image}; L{tests.system.containers}): the server as root with
    C{NET_ADMIN} alone, its DNAT rules in the cloud namespace where
    kube-apiserver dials; the agents as user 65532 with no capability; both
    on a read-only root.  The path a reader of the README takes, from the
    image to C{kubectl logs}.
    """

    def __init__(self, scope: Scope, image: str, edges: int = 2) -> None:
        super().__init__(
            scope,
            image,
            serverUser=ROOT,
            serverCapabilities=["NET_ADMIN"],
            edges=edges,
            mode="A",
            observability=False,
        )

    def build(self, beforeServer: Callable[[Any], object] | None = None) -> InteropWorld:
        """
        Bring the world up, then make sure each daemon is the image's: a
        running container, as the user L{ContainerDaemons} gave it.
        """
        super().build(beforeServer)
        daemons = [self.server, *self.agents.values()]
        for process in daemons:
            assert process is not None
            status = self.status(process)
            uid = self.serverUser if process is self.server else NONROOT
            if status["Uid"].split()[0] != str(uid):
                raise AssertionError(f"{process.name} runs as {status['Uid']}, not {uid}")
        return self


def buildOrReport(world: InteropWorld) -> bool:
    """
    Bring C{world} up, for the scripts run by hand: on a failure, print the
    traceback and the last lines of each process's log, and say so.
    """
    try:
        world.build()
    except BaseException:
        traceback.print_exc()
        print("bring-up FAILED; the processes' logs (last 4000 characters each):")
        for process in world.processes:
            print(f"--- {process.name} (pid {process.popen.pid}):\n{process.log()[-4000:]}")
        return False
    return True


def _name(commonName: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )


def _list(objects: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
