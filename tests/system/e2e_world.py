# -*- test-case-name: tests.system.test_e2e -*-
"""
The end-to-end suite's network (L{tests.system.test_e2e}): a cloud, a load
balancer and edge nodes, each a network namespace of its own
(L{tests.netns}), with the real daemons, HAProxy, a kubelet stand-in and
curl::

        cloud                      lb                       edge N (N = 1, 2)
  +----------------------+   +---------------------+   +------------------------------+
  | edge-tunnel-server   |   | HAProxy, mode tcp   |   | edge-tunnel-agent, dialing   |
  |  *:10262 (tunnel) <--+---+- 10.199.0.1:10262 <-+---+-  10.199.0.1:10262           |
  |  10.200.0.1:10263    |   |   (the SLB address) |   | kubelet stand-in:            |
  |  10.200.0.1:10264    |   |                     |   |  *:10250 (mTLS), *:10255     |
  |  10.200.0.1:10268    |   | FORWARD: REJECT     |   |  127.0.0.1:10267             |
  | curl                 |   |  (tcp-reset)        |   |  172.30.N.10:9051            |
  | default via the lb --+-->|                     |   | node IP 172.30.N.10 (dummy)  |
  +----------------------+   +---------------------+   | route to 10.199.0.1 only     |
     10.200.0.1/24 ------ 10.200.0.2/24                +------------------------------+
                             10.201.N.1/24 ------------ 10.201.N.2/24

The edges' node addresses (C{172.30.N.10}) are private: the cloud's
default route leads to the load balancer, which forwards nothing (its
C{FORWARD} chain answers every TCP connection with a reset, so a client
that tries the edge address directly is refused at once rather than left
hanging), and the edges can reach nothing but the load balancer's address.
The only way from the cloud to an edge service is the tunnel that each
agent dials out through HAProxy.

Addresses are used only inside the namespaces made here; nothing is sent
to the host's network.  Namespaces, veth pairs and dummies get names unique
to this process (L{tests.netns}), every process runs in a namespace and is
killed (by PID) when its namespace is deleted, and the scratch directory
(certificates, the ConfigMap, the daemons' logs) is removed: all of it
through the cleanups of the test case given as C{scope},
so it happens even when the setup fails half way.

Nothing here sleeps: every wait polls a condition (a log line, a listening
socket, a process's exit) with a deadline, and its failure message carries
the logs that explain it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from attrs import frozen

from tests.netns import Namespace, link, pollUntil
from tests.pki import TestPKI
from tests.realnet import REPO_ROOT, daemonEnvironment, twistdCommand
from twisted_tunnel.tls.certs import Issued, mintCA, mintClient, mintServer, writePair

__all__ = [
    "CLOUD_ADDRESS",
    "HTTPS_LISTENER_PORT",
    "HTTP_LISTENER_PORT",
    "LB_ADDRESS",
    "BASE_CONFIG",
    "CurlResult",
    "Edge",
    "Process",
    "Scope",
    "World",
    "nodeIP",
    "normalizedTable",
]

#: The server's address in the cloud namespace (its proxy listeners bind it).
CLOUD_ADDRESS = "10.200.0.1"
#: The load balancer's side of the cloud link: the cloud's default gateway.
LB_CLOUD_SIDE = "10.200.0.2"
#: The load balancer's service address, the one agents dial (the SLB's).
LB_ADDRESS = "10.199.0.1"
#: The name the server's certificate carries and agents check.
SERVER_NAME = "tunnel.e2e.test"

TUNNEL_PORT = 10262
HTTPS_LISTENER_PORT = 10263
HTTP_LISTENER_PORT = 10264
TCP_LISTENER_PORT = 10268

#: The ConfigMap the server starts with: 10267 is a localhost port by
#: default, but only a protocol key makes it forwarded.
BASE_CONFIG: Mapping[str, str] = {"http-proxy-ports": "10267"}

#: How long a process may take to start, or to print a line we wait for.
STARTUP_TIMEOUT = 20.0

#: How long a process may take to exit once signalled.
EXIT_TIMEOUT = 10.0

_pki = TestPKI()


class Scope(Protocol):
    """What the world needs of a test case (trial's, C{unittest}'s)."""

    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None: ...

    def skipTest(self, reason: str) -> Any: ...

    def fail(self, msg: Any = None) -> Any: ...


def nodeIP(index: int) -> str:
    """The private node address of edge C{index} (1, 2...)."""
    return f"172.30.{index}.10"


def normalizedTable(saved: str) -> list[str]:
    """
    C{iptables-save} output without what changes by itself: its comment
    lines (with a timestamp) and the packet and byte counters.
    """
    return [
        re.sub(r" \[\d+:\d+\]$", "", line)
        for line in saved.splitlines()
        if line and not line.startswith("#")
    ]


class Process:
    """
    A process started in a namespace, its output going to a log file.

    @ivar name: What to call it in messages.
    @ivar popen: The process (its PID is the program's: C{ip netns exec}
        execs it in place).
    @ivar logPath: Its stdout and stderr.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], logPath: str) -> None:
        self.name = name
        self.popen = popen
        self.logPath = logPath

    def __repr__(self) -> str:
        return f"<Process {self.name} pid {self.popen.pid}>"

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything it printed so far."""
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def mark(self) -> int:
        """How many lines it printed so far: for L{waitForLine}'s C{start}."""
        return len(self.lines())

    def count(self, pattern: str, start: int = 0) -> int:
        """How many of its lines, from line C{start} on, match C{pattern}."""
        compiled = re.compile(pattern)
        return sum(1 for line in self.lines()[start:] if compiled.search(line))

    def waitForLine(
        self, pattern: str, timeout: float = STARTUP_TIMEOUT, *, start: int = 0
    ) -> re.Match[str]:
        """
        The match of the first line, from line C{start} on, that matches
        C{pattern}, printed so far or within C{timeout} seconds.

        @raise AssertionError: It did not come in time, or the process
            ended first; the message has the process's whole log.
        """
        compiled = re.compile(pattern)
        found: list[re.Match[str]] = []

        def printed() -> bool:
            ended = not self.running
            for line in self.lines()[start:]:
                match = compiled.search(line)
                if match is not None:
                    found.append(match)
                    return True
            if ended:
                raise AssertionError(
                    f"{self.name} exited with status {self.popen.returncode} before "
                    f"printing {pattern!r}; its log:\n{self.log()}"
                )
            return False

        try:
            pollUntil(printed, timeout, f"{self.name} to print {pattern!r}", interval=0.02)
        except AssertionError as e:
            if "its log:" in str(e):
                raise
            raise AssertionError(f"{e}; its log:\n{self.log()}") from None
        return found[0]

    def sendSignal(self, number: int) -> None:
        """Send signal C{number} to it, by PID, if it still runs."""
        if self.running:
            os.kill(self.popen.pid, number)

    def stop(self, number: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> float:
        """
        Send it signal C{number} and wait until it has exited.

        @return: How many seconds it took to exit.
        """
        start = time.monotonic()
        self.sendSignal(number)
        self.waitForExit(timeout, f"signal {number}")
        return time.monotonic() - start

    def waitForExit(self, timeout: float = EXIT_TIMEOUT, after: str = "") -> None:
        """
        Wait until it has exited.

        @param after: What should have made it exit, for the failure message.
        @raise AssertionError: It still runs after C{timeout} seconds; the
            message has its log.
        """
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still runs {timeout:g}s after {after or 'we began to wait'}; "
                f"its log:\n{self.log()}"
            ) from None


@frozen
class CurlResult:
    """
    What one C{curl} run saw.

    @ivar exitCode: curl's exit status (0, 7 for a refused connection, 28
        for a timeout...).
    @ivar status: The HTTP status, 0 when there was no response.
    @ivar headers: The response headers, names in lower case.
    @ivar body: The response body.
    @ivar error: curl's error message, if any.
    @ivar elapsed: Seconds from start to exit.
    """

    exitCode: int
    status: int
    headers: Mapping[str, str]
    body: bytes
    error: str
    elapsed: float

    def describe(self) -> str:
        body = self.body[:300].decode("utf-8", "replace")
        return (
            f"curl exit {self.exitCode}, HTTP {self.status}, {self.elapsed:.2f}s, "
            f"error {self.error!r}, headers {dict(self.headers)}, body {body!r}"
        )


@frozen
class Edge:
    """One edge namespace: its node, its agent and its kubelet stand-in."""

    index: int
    name: str
    nodeIP: str
    namespace: Namespace
    agentCredentials: tuple[str, str, str]  # --ca, --cert, --key


class World:
    """
    The cloud, the load balancer and the edges (see the module docstring),
    built by L{build}; torn down by C{scope}'s cleanups.

    @ivar scope: Whose cleanups undo everything: a test case, or an object
        with its three methods standing for a test class.
    @ivar serverArguments: Extra options for every server started.
    """

    def __init__(self, scope: Scope, edges: int = 2, serverArguments: Sequence[str] = ()) -> None:
        self.scope = scope
        self.edgeCount = edges
        self.serverArguments = list(serverArguments)
        self.edges: list[Edge] = []
        self.agents: dict[str, Process] = {}
        self.kubelets: dict[str, Process] = {}
        self.server: Process | None = None
        self.haproxy: Process | None = None
        self.processes: list[Process] = []
        self._logs = 0
        self._headerFiles = 0

    # Building.

    def build(self, beforeServer: Callable[[Namespace], object] | None = None) -> World:
        """
        Make the namespaces, links and processes; return when all agents are up.

        @param beforeServer: Called with the cloud namespace once its
            network is up, before the server starts (to lay down iptables
            rules of other owners, say).
        """
        self.directory = tempfile.mkdtemp(prefix="twisted-tunnel-e2e-")
        self.scope.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self._credentials()
        self._network()
        self.configPath = os.path.join(self.directory, "edge-tunnel-server-cfg.yaml")
        self.writeConfig(BASE_CONFIG)
        if beforeServer is not None:
            beforeServer(self.cloud)
        self.startServers()
        self.haproxy = self.startHAProxy()
        for edge in self.edges:
            self.kubelets[edge.name] = self._startKubelet(edge)
        self.waitForServers()
        self.waitListening(self.lb, TUNNEL_PORT, "HAProxy")
        for edge in self.edges:
            self.kubelets[edge.name].waitForLine(r"^ready$")
            self.startAgent(edge)
        for edge in self.edges:
            self.waitForAgent(edge)
        return self

    def _write(self, issued: Issued, stem: str) -> tuple[str, str]:
        cert = os.path.join(self.directory, f"{stem}.pem")
        key = os.path.join(self.directory, f"{stem}-key.pem")
        writePair(issued, cert, key)
        return cert, key

    def _credentials(self) -> None:
        """
        The tunnel's PKI (L{TestPKI}: its CA signs the server and the
        agents), and the kubelets' own CA, which signs the kubelets'
        serving certificates and the client certificate the server
        presents to them (C{--proxy-client-cert}), as in a cluster.
        """
        self.tunnelCA = os.path.join(self.directory, "tunnel-ca.pem")
        with open(self.tunnelCA, "wb") as f:
            f.write(_pki.ca.certificatePEM())
        self.serverCert, self.serverKey = self._write(
            _pki.serverFor(SERVER_NAME, LB_ADDRESS), "server"
        )
        kubeletCA = self.kubeletAuthority = mintCA("e2e kubelet CA")
        self.kubeletCA = os.path.join(self.directory, "kubelet-ca.pem")
        with open(self.kubeletCA, "wb") as f:
            f.write(kubeletCA.certificatePEM())
        self.proxyClientCert, self.proxyClientKey = self._write(
            mintClient(kubeletCA, "kube-apiserver-kubelet-client"), "proxy-client"
        )
        # what the clients in the cloud (curl, as kube-apiserver) present to the
        # HTTPS proxy listener, which asks for one from the kubelet client CA
        self.apiserverCert, self.apiserverKey = self._write(
            mintClient(kubeletCA, "kube-apiserver"), "apiserver-client"
        )
        self.kubeletCerts: dict[str, tuple[str, str]] = {}
        for index in range(1, self.edgeCount + 1):
            name, address = f"edge-{index}", nodeIP(index)
            self.kubeletCerts[name] = self._write(
                mintServer(kubeletCA, [name, address, "127.0.0.1"]), f"kubelet-{name}"
            )

    def _network(self) -> None:
        scope = self.scope
        self.cloud = Namespace.create(scope, "tt-e2e-cloud")
        self.lb = Namespace.create(scope, "tt-e2e-lb")
        self.cloudLink = link(self.cloud, self.lb, f"{CLOUD_ADDRESS}/24", f"{LB_CLOUD_SIDE}/24")
        self.cloud.addRoute("default", via=LB_CLOUD_SIDE)
        self.lb.addDummy(f"{LB_ADDRESS}/32")
        # The load balancer's way out (to "the internet"): a default route,
        # so that what the cloud sends to edge addresses is forwarded, and
        # so meets the FORWARD chain, which refuses it at once.
        self.lb.ip("route", "add", "default", "dev", self.lb.addDummy())
        self.lb.sysctl("net.ipv4.ip_forward", "1")
        self.lb.iptables(
            "-A", "FORWARD", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"
        )
        self.lb.iptables("-A", "FORWARD", "-j", "REJECT")
        for index in range(1, self.edgeCount + 1):
            namespace = Namespace.create(scope, f"tt-e2e-edge{index}")
            link(self.lb, namespace, f"10.201.{index}.1/24", f"10.201.{index}.2/24")
            namespace.addDummy(f"{nodeIP(index)}/32")
            namespace.addRoute(f"{LB_ADDRESS}/32", via=f"10.201.{index}.1")
            name = f"edge-{index}"
            cert, key = self._write(_pki.agent(name, ips=[nodeIP(index)]), f"agent-{name}")
            self.edges.append(
                Edge(index, name, nodeIP(index), namespace, (self.tunnelCA, cert, key))
            )

    def _spawn(
        self, namespace: Namespace | None, name: str, argv: Sequence[str], **kwargs: Any
    ) -> Process:
        """
        Start C{argv} in C{namespace}, or on the host if C{None} (a
        C{podman run} that puts its container into a namespace itself).
        """
        self._logs += 1
        logPath = os.path.join(self.directory, f"{self._logs:02d}-{name}.log")
        output = {"stdin": subprocess.DEVNULL, "stderr": subprocess.STDOUT, **kwargs}
        with open(logPath, "wb") as log:
            if namespace is None:
                popen = subprocess.Popen(argv, start_new_session=True, stdout=log, **output)
            else:
                popen = namespace.spawn(argv, stdout=log, **output)
        process = Process(name, popen, logPath)
        self.processes.append(process)
        return process

    # The processes.

    def startServers(self) -> None:
        """Start the servers the world begins with: here one, L{server}."""
        self.startServer()

    def waitForServers(self) -> None:
        """Wait until every server L{startServers} started listens."""
        self.waitForServer()

    def startServer(
        self,
        arguments: Sequence[str] = (),
        *,
        name: str = "server",
        address: str = CLOUD_ADDRESS,
        tunnelEndpoint: str = f"tcp:{TUNNEL_PORT}",
        config: Sequence[str] | None = None,
    ) -> Process:
        """
        Start C{twistd edge-tunnel-server} in the cloud namespace (it becomes
        L{server}); L{waitForServer} waits until it listens.

        @param name: What to call it in messages and log file names.
        @param address: The address its proxy listeners bind.
        @param tunnelEndpoint: Where it listens for agents.
        @param config: Where it reads the ConfigMap (default: C{--config},
            the world's file, polled every 0.1 s).
        """
        if config is None:
            config = ["--config", self.configPath, "--config-interval", "0.1"]
        options = [
            "--ca", self.tunnelCA, "--cert", self.serverCert, "--key", self.serverKey,
            "--tunnel-endpoint", tunnelEndpoint,
            "--https-proxy-endpoint", f"tcp:{HTTPS_LISTENER_PORT}:interface={address}",
            "--http-proxy-endpoint", f"tcp:{HTTP_LISTENER_PORT}:interface={address}",
            "--tcp-proxy-endpoint", f"tcp:{TCP_LISTENER_PORT}:interface={address}",
            "--proxy-client-cert", self.proxyClientCert,
            "--proxy-client-key", self.proxyClientKey,
            "--proxy-serving-client-ca", self.kubeletCA,
            *config,
            *self.serverArguments,
            *arguments,
        ]  # fmt: skip
        self.server = self._spawn(
            self.daemonNamespace(self.cloud),
            name,
            self.serverCommand(options),
            env=daemonEnvironment(),
            cwd=self.directory,
        )
        return self.server

    def serverCommand(self, options: Sequence[str]) -> list[str]:
        """The command line of a server with C{options}."""
        return twistdCommand("edge-tunnel-server", options)

    def daemonNamespace(self, namespace: Namespace) -> Namespace | None:
        """
        Where the command of a daemon that belongs in C{namespace} runs: in
        it (L{tests.system.test_image} runs it on the host instead, and
        podman puts its container in there).
        """
        return namespace

    def waitForServer(self, server: Process | None = None) -> None:
        """Wait until C{server}'s (L{server}'s) tunnel and proxy listeners listen."""
        server = server or self.server
        assert server is not None
        for port in (TUNNEL_PORT, HTTPS_LISTENER_PORT, HTTP_LISTENER_PORT, TCP_LISTENER_PORT):
            server.waitForLine(rf"starting on {port}\b")

    def haproxyConfig(self) -> str:
        """The load balancer's configuration: the SLB address, in front of the server."""
        return (
            "global\n"
            "    maxconn 256\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "frontend tunnel\n"
            f"    bind {LB_ADDRESS}:{TUNNEL_PORT}\n"
            "    default_backend servers\n"
            "backend servers\n"
            f"    server cloud {CLOUD_ADDRESS}:{TUNNEL_PORT}\n"
        )

    def startHAProxy(self, name: str = "haproxy", config: str | None = None) -> Process:
        """
        Start HAProxy in the load balancer's namespace with C{config} (by
        default L{haproxyConfig}), written to C{<name>.cfg}.
        """
        path = os.path.join(self.directory, f"{name}.cfg")
        with open(path, "w") as f:
            f.write(self.haproxyConfig() if config is None else config)
        return self._spawn(self.lb, name, ["haproxy", "-f", path, "-db"])

    def _startKubelet(self, edge: Edge) -> Process:
        cert, key = self.kubeletCerts[edge.name]
        argv = [
            sys.executable, "-m", "tests.system.e2e_kubelet",
            "--node", edge.name, "--node-ip", edge.nodeIP,
            "--cert", cert, "--key", key, "--client-ca", self.kubeletCA,
        ]  # fmt: skip
        return self._spawn(
            edge.namespace, f"kubelet-{edge.name}", argv, env=daemonEnvironment(), cwd=REPO_ROOT
        )

    def agentIdentity(self, edge: Edge) -> list[str]:
        """The options an agent proves C{edge}'s node with (and checks the server with)."""
        ca, cert, key = edge.agentCredentials
        return ["--ca", ca, "--cert", cert, "--key", key]

    def agentCommand(self, edge: Edge, options: Sequence[str]) -> list[str]:
        """The command line of C{edge}'s agent with C{options}."""
        return twistdCommand("edge-tunnel-agent", options)

    def startAgent(self, edge: Edge, arguments: Sequence[str] = ()) -> Process:
        """
        Start C{twistd edge-tunnel-agent} in C{edge}'s namespace, dialing the
        load balancer, with extra options C{arguments} (a later option wins).
        """
        options = [
            *self.agentIdentity(edge),
            "--server", f"{LB_ADDRESS}:{TUNNEL_PORT}", "--server-name", SERVER_NAME,
            "--node-ip", edge.nodeIP,
            "--max-backoff", "0.5",
            *arguments,
        ]  # fmt: skip
        agent = self._spawn(
            self.daemonNamespace(edge.namespace),
            f"agent-{edge.name}",
            self.agentCommand(edge, options),
            env=daemonEnvironment(),
            cwd=self.directory,
        )
        self.agents[edge.name] = agent
        return agent

    def waitForAgent(self, edge: Edge, *, serverMark: int = 0) -> None:
        """
        Wait until C{edge}'s agent is registered with the server (from the
        server's line C{serverMark} on).
        """
        assert self.server is not None
        self.agents[edge.name].waitForLine(r"tunnel up to server")
        self.server.waitForLine(rf"agent {edge.name} connected from", start=serverMark)

    def waitListening(self, namespace: Namespace, port: int, what: str) -> None:
        """Wait until something listens on TCP C{port} in C{namespace}."""

        def listening() -> bool:
            result = namespace.run("ss", "-Hltn", f"sport = :{port}", check=False)
            return bool(result.stdout.strip())

        pollUntil(listening, STARTUP_TIMEOUT, f"{what} to listen on {port}", interval=0.02)

    # The cloud's nat table.

    def nat(self) -> str:
        """What C{iptables-save -t nat} prints in the cloud namespace."""
        return self.cloud.iptablesSave("nat")

    def waitForNat(
        self, condition: Callable[[str], bool], what: str, timeout: float = 10.0
    ) -> str:
        """
        Poll the cloud's nat table until C{condition} holds of it.

        @return: The table, as C{iptables-save -t nat} printed it then.
        """
        seen: list[str] = []

        def holds() -> bool:
            seen[:] = [self.nat()]
            return condition(seen[0])

        try:
            pollUntil(holds, timeout, what, interval=0.05)
        except AssertionError as e:
            server = self.server.log() if self.server is not None else ""
            raise AssertionError(
                f"{e}; the nat table:\n{seen[0]}\nthe server's log:\n{server}"
            ) from None
        return seen[0]

    # The ConfigMap.

    def writeConfig(self, data: Mapping[str, str]) -> None:
        """
        Replace the ConfigMap manifest with one holding C{data}, atomically
        (a new file renamed over the old one), as C{kubectl apply} would
        change it: the server never reads half of it.
        """
        lines = ["apiVersion: v1", "data:"]
        lines += [f"  {key}: '{value}'" for key, value in data.items()]
        lines += [
            "kind: ConfigMap",
            "metadata:",
            "  name: edge-tunnel-server-cfg",
            "  namespace: kube-system",
        ]
        temporary = self.configPath + ".new"
        with open(temporary, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, self.configPath)

    def applyConfig(self, data: Mapping[str, str]) -> None:
        """
        L{writeConfig}, then wait until the server says it reloaded it
        (C{data} must change the configuration in force: an identical one
        is not announced).
        """
        assert self.server is not None
        mark = self.server.mark()
        self.writeConfig(data)
        self.server.waitForLine(r"config reloaded from", start=mark)

    # Clients.

    def clientCertificate(self) -> list[str]:
        """
        curl's options to present kube-apiserver's client certificate, as
        the HTTPS proxy listener requires (ignored for plain HTTP).
        """
        return ["--cert", self.apiserverCert, "--key", self.apiserverKey]

    def curl(
        self, *arguments: str, timeout: float = 10.0, clientCertificate: bool = True
    ) -> CurlResult:
        """
        Run C{curl} in the cloud namespace, with no proxy settings at all.

        @param arguments: URL and options (C{-H}, C{-k}, C{--connect-to}...).
        @param timeout: curl's C{--max-time}.
        @param clientCertificate: present kube-apiserver's client certificate
            (L{clientCertificate}).
        """
        self._headerFiles += 1
        headerPath = os.path.join(self.directory, f"curl-{self._headerFiles}.headers")
        certificate = self.clientCertificate() if clientCertificate else []
        argv = self.cloud.command(
            "curl", "-sS", "--noproxy", "*", "--max-time", f"{timeout:g}",
            "-D", headerPath, "-w", "%{stderr}\ntt-http-code %{http_code}\n",
            *certificate, *arguments,
        )  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        start = time.monotonic()
        completed = subprocess.run(
            argv, capture_output=True, timeout=timeout + 10, env=environment, check=False
        )
        elapsed = time.monotonic() - start
        stderr = completed.stderr.decode("utf-8", "replace")
        code = re.search(r"^tt-http-code (\d+)$", stderr, re.MULTILINE)
        error = re.sub(r"^tt-http-code \d+$", "", stderr, flags=re.MULTILINE).strip()
        headers: dict[str, str] = {}
        if os.path.exists(headerPath):
            with open(headerPath, "rb") as f:
                for line in f.read().decode("latin-1").splitlines():
                    if line.startswith("HTTP/"):
                        headers = {}  # only the final response's headers count
                    name, colon, value = line.partition(":")
                    if colon:
                        headers[name.strip().lower()] = value.strip()
            os.remove(headerPath)
        return CurlResult(
            exitCode=completed.returncode,
            status=int(code.group(1)) if code else 0,
            headers=headers,
            body=completed.stdout,
            error=error,
            elapsed=elapsed,
        )

    def curlLines(
        self, *arguments: str, timeout: float = 10.0
    ) -> tuple[list[tuple[float, bytes]], int, str]:
        """
        Run C{curl -N} (no output buffering) in the cloud namespace and
        note when each line of the body arrives.

        @return: Each line with the seconds from start to its arrival;
            curl's exit status; its error message.
        """
        argv = self.cloud.command(
            "curl", "-sS", "-N", "--noproxy", "*", "--max-time", f"{timeout:g}",
            *self.clientCertificate(), *arguments,
        )  # fmt: skip
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        start = time.monotonic()
        lines: list[tuple[float, bytes]] = []
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
        ) as curl:
            assert curl.stdout is not None and curl.stderr is not None
            # curl ends by itself within --max-time; readline returns each
            # line as soon as the pipe has it.
            for line in iter(curl.stdout.readline, b""):
                lines.append((time.monotonic() - start, line))
            error = curl.stderr.read().decode("utf-8", "replace").strip()
            exitCode = curl.wait(timeout)
        return lines, exitCode, error

    def runInCloud(self, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run a program (a module of ours: C{-m tests.system.e2e_client}...) in the cloud."""
        return subprocess.run(
            self.cloud.command(sys.executable, *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=daemonEnvironment(),
            cwd=REPO_ROOT,
            check=False,
        )

    def logs(self) -> str:
        """Every process's log, for failure messages."""
        return "\n".join(f"--- {p.name} (pid {p.popen.pid}):\n{p.log()}" for p in self.processes)
