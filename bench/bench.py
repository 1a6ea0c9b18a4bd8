"""
The twisted-tunnel benchmark: the same workloads direct, through OpenSSH
C{ssh -R}, through twisted-tunnel and through its peers (frp, chisel,
rathole; Konnectivity when it can be built), side by side in one run.

Run it with C{make bench} (or C{bash bench/run.sh}, which installs the load
tools first).  See C{docs/performance.md} for what is measured and why.

This is a plain blocking script, not Twisted code: it starts the edge
services (nginx, iperf3), the two tunnels and the load generators as
subprocesses, polls with deadlines, and in a C{finally} stops exactly the
processes it started (by PID) and removes its temporary directory.

    usage: bench.py [--seconds S] [--runs N] [--only TUNNEL ...] [--keep]
           TUNNEL: direct ssh ours frp chisel rathole konnectivity
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # build.py, starters.py
import build as peerbuild  # noqa: E402  (bench/peers/build.py)
import starters  # noqa: E402  (bench/peers/starters.py)
from _procs import (  # noqa: E402
    REPO,
    BenchError,
    Processes,
    daemonEnv,
    freePort,
    twistd,
)

RESULTS = REPO / "bench" / "results"
BIG_BYTES = 10 * 1024 * 1024
NODE = "edge-1"
# The edge node's IP: the agent announces it (--node-ip), the proxy listeners
# route a Host of 127.0.0.2:PORT to it, and its agent dials it.  nginx listens
# on it as well as on 127.0.0.1 (which the direct and ssh -R paths use).
NODE_IP = "127.0.0.2"

# The peers that forward TCP (bench/peers/starters.py starts them).
PEER_TUNNELS = tuple(starters.PEERS)
# What --only selects: the ways to reach the edge.
TUNNELS = ("direct", "ssh", "ours", *PEER_TUNNELS, "konnectivity")
# The rows of the table: twisted-tunnel is measured three times, through its
# proxy listeners (the path the targets refer to), through --forward
# static listeners (the same shape as ssh -R and the peers) and through its
# CONNECT door (with bench/loadgen, as Konnectivity's frontend would be);
# "direct" twice, with wrk/hey and with bench/loadgen, to show what the
# load generator itself costs.
ROWS_OF = {
    "direct": ("direct", "ldirect"),
    "ssh": ("ssh",),
    "ours": ("ours", "fwd", "door"),
    **{peer: (peer,) for peer in PEER_TUNNELS},
    "konnectivity": ("konn",),
}
ROWS = tuple(row for tunnel in TUNNELS for row in ROWS_OF[tunnel])
LABELS = {
    "direct": "direct",
    "ldirect": "direct (loadgen)",
    "ssh": "OpenSSH ssh -R",
    "ours": "twisted-tunnel (proxy listeners)",
    "fwd": "twisted-tunnel (--forward)",
    "door": "twisted-tunnel (CONNECT door, mTLS, loadgen)",
    "frp": "frp (tcp proxy)",
    "chisel": "chisel (reverse remote)",
    "rathole": "rathole",
    "konn": "Konnectivity (CONNECT frontend)",
}
SHORT = {
    "direct": "direct",
    "ldirect": "direct (loadgen)",
    "ssh": "ssh -R",
    "ours": "ours: proxy",
    "fwd": "ours: --forward",
    "door": "ours: CONNECT",
    "frp": "frp",
    "chisel": "chisel",
    "rathole": "rathole",
    "konn": "Konnectivity",
}
COLOURS = {
    "direct": "#9e9e9e",
    "ldirect": "#c7c7c7",
    "ssh": "#1f77b4",
    "ours": "#d62728",
    "fwd": "#ff9896",
    "door": "#8c564b",
    "frp": "#2ca02c",
    "chisel": "#9467bd",
    "rathole": "#ff7f0e",
    "konn": "#17becf",
}


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    higherIsBetter: bool = True
    unit: str = "req/s"


METRICS = (
    Metric("bulk", "bulk MB/s (iperf3, 1 stream)", unit="MB/s"),
    Metric("ka1", "req/s keep-alive c=1"),
    Metric("ka64", "req/s keep-alive c=64"),
    Metric("newc", "req/s new connection each, c=16"),
    Metric("big", "MB/s 10 MiB GETs c=4", unit="MB/s"),
    Metric("p50", "stream open p50 ms", higherIsBetter=False, unit="ms"),
    Metric("p99", "stream open p99 ms", higherIsBetter=False, unit="ms"),
    Metric("tka1", "HTTPS req/s keep-alive c=1"),
    Metric("tka64", "HTTPS req/s keep-alive c=64"),
    Metric("tnewc", "HTTPS req/s new connection each, c=16"),
)

TUNNEL_PROCESSES = {
    "ssh": ("sshd", "ssh"),
    "ours": ("edge-tunnel-server", "edge-tunnel-agent"),
    **{name: (peer.server, peer.client) for name, peer in starters.PEERS.items()},
}

# The workloads, in the order they run; "open" yields both p50 and p99.
WORKLOADS = ("bulk", "ka1", "ka64", "newc", "big", "open", "tka1", "tka64", "tnewc")
WORKLOAD_NAMES = {
    "bulk": "bulk",
    "ka1": "keep-alive c=1",
    "ka64": "keep-alive c=64",
    "newc": "new connection c=16",
    "big": "10 MiB GETs c=4",
    "open": "stream open (sequential)",
    "tka1": "HTTPS keep-alive c=1",
    "tka64": "HTTPS keep-alive c=64",
    "tnewc": "HTTPS new connection c=16",
}

LATENCY_REQUESTS = 300
LATENCY_WARMUP = 10
READY_DEADLINE = 30.0
FOREIGN_NOTE = 0.2  # note a measurement during which other processes used 20% of a core


def keysOf(workload: str) -> tuple[str, ...]:
    return ("p50", "p99") if workload == "open" else (workload,)


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"(cannot read {path}: {e})"
    return "\n".join(text[-lines:]) if text else "(empty)"


def tcpOpen(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Target:
    """
    Where a load tool sends its HTTP(S) requests: always a loopback port,
    and for the proxy listeners a C{Host} header naming the node and port
    (they route by it, as iptables did not redirect the connection).
    """

    scheme: str  # "http" or "https"
    port: int
    host: str | None = None  # the Host header, if not the URL's
    #: the client certificate and key the target requires (the HTTPS proxy
    #: listener always does), or None
    certificate: tuple[str, str] | None = None
    #: the CA that signed the target's own certificate, with C{certificate}
    authority: str | None = None

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def hostHeader(self) -> str:
        return self.host or f"127.0.0.1:{self.port}"

    def describe(self) -> str:
        return self.url() + (f" with Host: {self.host}" if self.host else "")


def httpOK(target: Target) -> bool:
    """Does C{target} answer C{GET /} with a 2xx?  (The TLS certificate is not checked.)"""
    argv = ["curl", "-sfk", "-m", "2", "-o", "/dev/null"]
    if target.certificate is not None:
        argv += ["--cert", target.certificate[0], "--key", target.certificate[1]]
    if target.host:
        argv += ["-H", f"Host: {target.host}"]
    result = subprocess.run(
        [*argv, target.url()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def waitFor(
    what: str,
    condition: Callable[[], bool],
    procs: Processes,
    watch: Sequence[str],
    deadline: float = READY_DEADLINE,
) -> float:
    """Poll C{condition} until it holds; fail early if a watched process exits."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        procs.checkAlive(watch)
        if time.monotonic() - start > deadline:
            raise BenchError(f"{what}: not ready after {deadline:.0f} s")
        time.sleep(0.1)


def tool(name: str) -> str:
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
    )
    if not found:
        raise BenchError(f"{name} is not installed (bench/run.sh installs it with apt-get)")
    return found


# -- the edge services and the tunnels ---------------------------------------------------------


@dataclass(frozen=True)
class Door:
    """
    Where bench/loadgen sends its requests: C{addr}, and with C{connect}
    through an HTTP CONNECT tunnel to that target; over mutual TLS with
    C{tls} (CA, client certificate, key).
    """

    binary: str
    addr: str
    connect: str | None = None
    tls: tuple[str, str, str] | None = None
    #: the Host header of the GETs (without CONNECT: a proxy listener routes by it)
    host: str | None = None

    def describe(self) -> str:
        how = f"CONNECT {self.connect} at {self.addr}" if self.connect else f"http://{self.addr}/"
        return how + (" over mutual TLS" if self.tls else "")


@dataclass
class Row:
    """
    How the load tools reach the edge on one row of the table, and what that
    needs: wrk/hey/iperf3 to C{http}, C{https} and C{iperfPort}, or
    bench/loadgen through C{door}.
    """

    http: Target | None
    https: Target | None
    iperfPort: int | None  # None: no bulk measurement on this row
    watch: list[str]  # processes it needs
    cpuRoots: list[str]  # the tunnel processes, whose CPU is accounted
    door: Door | None = None


@dataclass
class Edge:
    """The edge services' ports: nginx plain and TLS, and one iperf3 sink per tunnel."""

    http: int = 0
    https: int = 0
    iperf: dict[str, int] = field(default_factory=dict)


@dataclass
class Setup:
    work: Path
    procs: Processes
    edge: Edge = field(default_factory=Edge)
    rows: dict[str, Row] = field(default_factory=dict)
    extraPorts: dict[str, int] = field(default_factory=dict)
    #: rows that were not run, and why (a peer not built, or that did not start)
    missing: dict[str, str] = field(default_factory=dict)
    #: the command lines that started each tunnel, for the report
    commands: dict[str, list[str]] = field(default_factory=dict)


class NotRun(Exception):
    """A tunnel cannot be measured here (its binaries are not built); the message says why."""


def loadgenBinary() -> str:
    """bench/loadgen, built by `make peers` (bench/peers/build.py); L{NotRun} if it is not."""
    bins = peerbuild.cached("loadgen")
    if bins is None:
        raise NotRun(f"bench/loadgen not built: {peerbuild.failure('loadgen')}")
    return str(bins / "loadgen")


def mintPKI(work: Path) -> Path:
    """
    Two private CAs minted with twisted_tunnel.tls.certs: the tunnel's (server,
    agent, and the client certificate the https policy presents to nodes),
    and the edge's, which signs nginx's serving certificate as a cluster CA
    signs kubelets' (given to the server as --proxy-client-ca).
    """
    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient, mintServer, writePair

    pki = work / "pki"
    pki.mkdir()
    ca = mintCA()
    writePair(ca, pki / "ca.pem", pki / "ca-key.pem")
    writePair(
        mintServer(ca, ["localhost", "127.0.0.1"]), pki / "server.pem", pki / "server-key.pem"
    )
    writePair(mintAgent(ca, NODE, [NODE_IP]), pki / "agent.pem", pki / "agent-key.pem")
    writePair(
        mintClient(ca, "kube-apiserver-kubelet-client"),
        pki / "proxy-client.pem",
        pki / "proxy-client-key.pem",
    )
    # what a client of the HTTPS proxy listener presents (its client CA is --ca)
    writePair(mintClient(ca, "bench-client"), pki / "client.pem", pki / "client-key.pem")
    edgeCA = mintCA("edge kubelet CA")
    writePair(edgeCA, pki / "edge-ca.pem", pki / "edge-ca-key.pem")
    writePair(
        mintServer(edgeCA, [NODE_IP, "127.0.0.1", "localhost"]),
        pki / "edge.pem",
        pki / "edge-key.pem",
    )
    return pki


def startEdge(setup: Setup, tunnels: Sequence[str], pki: Path) -> None:
    """
    The "edge" services: nginx (a small reply on /, a 10 MiB file on /big),
    in plain HTTP and over TLS, on 127.0.0.1 and on the node IP 127.0.0.2;
    and one iperf3 sink per tunnel, so that an iperf3 server left busy by
    one path's failed test cannot spoil the others.
    """
    work = setup.work
    edge = setup.edge
    edge.http, edge.https = freePort(), freePort()
    (work / "big.bin").write_bytes(os.urandom(BIG_BYTES))
    (work / "big.bin").chmod(0o644)
    listen = "".join(
        f"listen {address}:{edge.http}; listen {address}:{edge.https} ssl; "
        for address in ("127.0.0.1", NODE_IP)
    )
    (work / "nginx.conf").write_text(
        f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off;
  ssl_certificate {pki}/edge.pem; ssl_certificate_key {pki}/edge-key.pem;
  server {{ {listen}
    location = / {{ return 200 "ok-from-edge\\n"; }}
    location = /big {{ alias {work}/big.bin; }} }} }}
"""
    )
    setup.procs.start(
        "nginx", [tool("nginx"), "-e", f"{work}/nginx.err", "-c", f"{work}/nginx.conf"]
    )
    for tunnel in tunnels:
        if tunnel == "konnectivity":
            continue  # its frontend is HTTP CONNECT: no bulk measurement
        # Each sink listens where its tunnel delivers: the agent dials the node IP.
        port = freePort()
        address = NODE_IP if tunnel == "ours" else "127.0.0.1"
        setup.procs.start(
            f"iperf3-{tunnel}", [tool("iperf3"), "-s", "-B", address, "-p", str(port)]
        )
        edge.iperf[tunnel] = port
    for target in (Target("http", edge.http), Target("https", edge.https)):
        waitFor(f"nginx ({target.scheme})", partial(httpOK, target), setup.procs, ["nginx"])
        waitFor(
            f"nginx ({target.scheme}) on {NODE_IP}",
            partial(tcpOpen, target.port, NODE_IP),
            setup.procs,
            ["nginx"],
        )
    for tunnel, port in edge.iperf.items():
        address = NODE_IP if tunnel == "ours" else "127.0.0.1"
        waitFor(
            f"iperf3 -s for {tunnel}",
            partial(tcpOpen, port, address),
            setup.procs,
            [f"iperf3-{tunnel}"],
        )
    setup.extraPorts["nginx HTTP (127.0.0.1 and 127.0.0.2)"] = edge.http
    setup.extraPorts["nginx HTTPS (127.0.0.1 and 127.0.0.2)"] = edge.https
    for tunnel, port in edge.iperf.items():
        setup.extraPorts[f"iperf3 -s ({tunnel})"] = port


def startDirect(setup: Setup, pki: Path) -> None:
    edge = setup.edge
    setup.rows["direct"] = Row(
        http=Target("http", edge.http),
        https=Target("https", edge.https),
        iperfPort=edge.iperf["direct"],
        watch=["nginx", "iperf3-direct"],
        cpuRoots=[],
    )
    try:
        door = Door(loadgenBinary(), f"127.0.0.1:{edge.http}")
    except NotRun as e:
        setup.missing["ldirect"] = str(e)
        return
    setup.rows["ldirect"] = Row(None, None, None, watch=["nginx"], cpuRoots=[], door=door)


def startSSH(setup: Setup, pki: Path) -> None:
    """sshd plays the cloud side, C{ssh -R} the agent dialling out: as in openssh-baseline.sh."""
    work, edge = setup.work, setup.edge
    sshPort, tHttp, tHttps, tIperf = freePort(), freePort(), freePort(), freePort()
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    for key in ("host", "user"):
        subprocess.run(
            [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)],
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
    shutil.copy(work / "user.pub", work / "authorized_keys")
    (work / "sshd_config").write_text(
        f"""Port {sshPort}
ListenAddress 127.0.0.1
HostKey {work}/host
PermitRootLogin prohibit-password
AuthorizedKeysFile {work}/authorized_keys
StrictModes no
AllowTcpForwarding yes
UsePAM no
PidFile {work}/sshd.pid
"""
    )
    setup.procs.start("sshd", [tool("sshd"), "-D", "-e", "-f", str(work / "sshd_config")])
    waitFor("sshd", lambda: tcpOpen(sshPort), setup.procs, ["sshd"], deadline=10)
    # Same options as the baseline; BatchMode only stops ssh from prompting if
    # the key is refused, and ExitOnForwardFailure makes a failed -R visible.
    options = (
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        " -o BatchMode=yes -o ExitOnForwardFailure=yes"
    )
    forwards = [
        *("-R", f"127.0.0.1:{tHttp}:127.0.0.1:{edge.http}"),
        # TLS end to end: the ssh channel carries nginx's TLS as it is.
        *("-R", f"127.0.0.1:{tHttps}:127.0.0.1:{edge.https}"),
        *("-R", f"127.0.0.1:{tIperf}:127.0.0.1:{edge.iperf['ssh']}"),
    ]
    login = f"{getpass.getuser()}@127.0.0.1"
    identity = ["-i", str(work / "user"), "-p", str(sshPort)]
    setup.procs.start("ssh", [tool("ssh"), "-N", *options.split(), *identity, *forwards, login])
    http, https = Target("http", tHttp), Target("https", tHttps)
    took = waitFor("ssh -R", lambda: httpOK(http) and httpOK(https), setup.procs, ["sshd", "ssh"])
    log(f"ssh -R ready after {took:.1f} s")
    setup.rows["ssh"] = Row(
        http=http,
        https=https,
        iperfPort=tIperf,
        watch=["nginx", "iperf3-ssh", "sshd", "ssh"],
        cpuRoots=["sshd", "ssh"],
    )
    setup.extraPorts["sshd"] = sshPort


def startOurs(setup: Setup, pki: Path) -> None:
    """
    The cloud side (edge-tunnel-server) and one agent for node edge-1 at
    127.0.0.2.  The server serves the two rows of twisted-tunnel at once:

     - its HTTP and HTTPS proxy listeners, which route by the request's
       C{Host: 127.0.0.2:PORT} (no iptables here) with the http and https
       policies, for the ports the ConfigMap (C{--config}) lists under
       http-proxy-ports and https-proxy-ports.  The HTTPS listener ends the
       client's TLS and makes a new TLS connection to nginx, presenting the
       proxy client certificate and verifying nginx against the edge CA;
     - three C{--forward} static listeners (nginx plain, nginx TLS carried
       end to end, iperf3), the shape of C{ssh -R}; iperf3 is not HTTP, so
       bulk goes this way for both rows;
     - its CONNECT door over mutual TLS (client certificate from C{--ca}),
       as it serves beyond loopback and as Konnectivity's TCP frontend
       does, measured with bench/loadgen.  On 127.0.0.1 the door would be
       plain (only this host can reach it); it listens on C{::ffff:127.0.0.1}
       instead, the same loopback address spelled as IPv4-mapped IPv6, which
       the server does not count as loopback: so the door requires TLS and
       client certificates, while every byte stays on loopback.
    """
    work, edge = setup.work, setup.edge
    tunnelPort, connectPort = freePort(), freePort()
    httpProxy, httpsProxy = freePort(), freePort()
    tHttp, tHttps, tIperf = freePort(), freePort(), freePort()
    # The edge-tunnel-server-cfg ConfigMap, as a manifest file (docs/config.md).
    # nginx's ports are not in localhost-proxy-ports, so the agent dials the
    # node IP, 127.0.0.2.
    config = work / "edge-tunnel-server-cfg.yaml"
    config.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edge-tunnel-server-cfg\n"
        f'data:\n  http-proxy-ports: "{edge.http}"\n  https-proxy-ports: "{edge.https}"\n'
    )
    env = daemonEnv()
    setup.procs.start(
        "edge-tunnel-server",
        twistd(
            "edge-tunnel-server",
            f"--tunnel-endpoint=tcp:{tunnelPort}:interface=127.0.0.1",
            f"--connect-endpoint=tcp6:{connectPort}:interface=\\:\\:ffff\\:127.0.0.1",
            f"--ca={pki}/ca.pem",
            f"--cert={pki}/server.pem",
            f"--key={pki}/server-key.pem",
            f"--http-proxy-endpoint=tcp:{httpProxy}:interface=127.0.0.1",
            f"--https-proxy-endpoint=tcp:{httpsProxy}:interface=127.0.0.1",
            "--tcp-proxy-endpoint=none",
            f"--proxy-serving-cert={pki}/server.pem",
            f"--proxy-serving-key={pki}/server-key.pem",
            f"--proxy-client-cert={pki}/proxy-client.pem",
            f"--proxy-client-key={pki}/proxy-client-key.pem",
            f"--proxy-client-ca={pki}/edge-ca.pem",
            f"--config={config}",
            f"--forward={NODE}:{edge.http}=tcp:{tHttp}:interface=127.0.0.1",
            f"--forward={NODE}:{edge.https}=tcp:{tHttps}:interface=127.0.0.1",
            f"--forward={NODE}:{edge.iperf['ours']}=tcp:{tIperf}:interface=127.0.0.1",
            "--no-iptables",
        ),
        env=env,
    )
    waitFor("edge-tunnel-server", lambda: tcpOpen(tunnelPort), setup.procs, ["edge-tunnel-server"])
    setup.procs.start(
        "edge-tunnel-agent",
        twistd(
            "edge-tunnel-agent",
            f"--server=127.0.0.1:{tunnelPort}",
            f"--ca={pki}/ca.pem",
            f"--cert={pki}/agent.pem",
            f"--key={pki}/agent-key.pem",
            f"--node-ip={NODE_IP}",
        ),
        env=env,
    )
    rows = {
        "ours": Row(
            http=Target("http", httpProxy, f"{NODE_IP}:{edge.http}"),
            https=Target(
                "https",
                httpsProxy,
                f"{NODE_IP}:{edge.https}",
                (f"{pki}/client.pem", f"{pki}/client-key.pem"),
                f"{pki}/ca.pem",
            ),
            iperfPort=tIperf,
            watch=["nginx", "iperf3-ours", "edge-tunnel-server", "edge-tunnel-agent"],
            cpuRoots=["edge-tunnel-server", "edge-tunnel-agent"],
        ),
        "fwd": Row(
            http=Target("http", tHttp),
            https=Target("https", tHttps),
            iperfPort=None,
            watch=["nginx", "edge-tunnel-server", "edge-tunnel-agent"],
            cpuRoots=["edge-tunnel-server", "edge-tunnel-agent"],
        ),
    }
    targets = [t for row in rows.values() for t in (row.http, row.https) if t is not None]
    took = waitFor(
        "twisted-tunnel",
        lambda: all(httpOK(t) for t in targets),
        setup.procs,
        ["edge-tunnel-server", "edge-tunnel-agent"],
    )
    log(f"twisted-tunnel ready after {took:.1f} s")
    setup.rows.update(rows)
    try:
        door = Door(
            loadgenBinary(),
            f"127.0.0.1:{connectPort}",
            f"{NODE_IP}:{edge.http}",
            (f"{pki}/ca.pem", f"{pki}/client.pem", f"{pki}/client-key.pem"),
        )
    except NotRun as e:
        setup.missing["door"] = str(e)
    else:
        setup.rows["door"] = Row(
            None,
            None,
            None,
            watch=["nginx", "edge-tunnel-server", "edge-tunnel-agent"],
            cpuRoots=["edge-tunnel-server", "edge-tunnel-agent"],
            door=door,
        )
        waitFor(
            "the CONNECT door",
            lambda: loadgenOK(door),
            setup.procs,
            ["edge-tunnel-server", "edge-tunnel-agent"],
        )
    setup.commands["ours"] = [
        shlex.join(setup.procs.get(name).process.args)  # type: ignore[arg-type]
        for name in TUNNEL_PROCESSES["ours"]
    ]
    setup.extraPorts["edge-tunnel-server agents (--tunnel-endpoint)"] = tunnelPort
    setup.extraPorts["edge-tunnel-server CONNECT (--connect-endpoint, mutual TLS)"] = connectPort
    setup.extraPorts["edge-tunnel-server --http-proxy-endpoint"] = httpProxy
    setup.extraPorts["edge-tunnel-server --https-proxy-endpoint"] = httpsProxy
    setup.extraPorts["edge-tunnel-server --forward iperf3"] = tIperf


def startPeer(setup: Setup, pki: Path, name: str) -> None:
    """
    A TCP-forwarding peer (frp, chisel, rathole) from its cached build, with
    bench/peers/starters.py: its server and one client that forwards
    nginx's two ports and this tunnel's iperf3 sink, as C{ssh -R} does.
    """
    peer = starters.PEERS[name]
    bins = peerbuild.cached(peer.build)
    if bins is None:
        raise NotRun(f"not built: {peerbuild.failure(peer.build)}")
    edge = setup.edge
    locals_ = [edge.http, edge.https, edge.iperf[name]]
    tunnel = starters.startTunnel(peer, bins, setup.work, setup.procs, locals_)
    setup.commands[name] = tunnel.commands
    http = Target("http", tunnel.remotes[edge.http])
    https = Target("https", tunnel.remotes[edge.https])
    took = waitFor(name, lambda: httpOK(http) and httpOK(https), setup.procs, tunnel.ends)
    log(f"{name} ready after {took:.1f} s")
    setup.rows[name] = Row(
        http=http,
        https=https,
        iperfPort=tunnel.remotes[edge.iperf[name]],
        watch=["nginx", f"iperf3-{name}", *tunnel.ends],
        cpuRoots=tunnel.ends,
    )


def startKonnectivity(setup: Setup, pki: Path) -> None:
    """
    Konnectivity's proxy-server and agent.  Not built here (the module proxy
    refuses the module: bench/peers/README.md), so never driven yet: its
    row says why.
    """
    if peerbuild.cached("konnectivity") is None:
        raise NotRun(f"not built: {peerbuild.failure('konnectivity')}")
    raise NotRun(
        "built, but bench.py does not drive it yet (bench/peers/smoke.py knows how to start it; "
        "its CONNECT frontend would be measured with bench/loadgen as the CONNECT door is)"
    )


# -- CPU accounting ---------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    cpu: float  # user + system seconds of the process itself
    reaped: float  # user + system seconds of its children that it has waited for
    name: str


@dataclass(frozen=True)
class Snapshot:
    procs: dict[int, ProcStat]
    busy: float  # CPU seconds the whole machine spent (all but idle, iowait and steal)
    mine: float  # this script's own CPU seconds and its reaped children's (the load tools)


def snapshot() -> Snapshot:
    """Every process's CPU times, the whole machine's, and ours, from /proc."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        f = text[text.rindex(")") + 2 :].split()
        procs[int(entry)] = ProcStat(
            ppid=int(f[1]),
            cpu=(int(f[11]) + int(f[12])) / CLOCK_TICKS,
            reaped=(int(f[13]) + int(f[14])) / CLOCK_TICKS,
            name=name,
        )
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.readline().split()[1:8])
    times = os.times()
    mine = times.user + times.system + times.children_user + times.children_system
    return Snapshot(procs, (user + nice + system + irq + softirq) / CLOCK_TICKS, mine)


def descendants(procs: dict[int, ProcStat], roots: Sequence[int]) -> set[int]:
    """These processes and all their descendants (e.g. sshd's session children)."""
    children: dict[int, list[int]] = {}
    for pid, stat in procs.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def tunnelCPU(before: Snapshot, after: Snapshot, roots: Sequence[int]) -> float:
    """CPU seconds the tunnel processes (and their descendants) used between two snapshots."""
    total = 0.0
    for pid in descendants(after.procs, roots):
        old = before.procs.get(pid)
        total += after.procs[pid].cpu - (old.cpu if old else 0.0)
    return total


def foreignCPU(before: Snapshot, after: Snapshot) -> tuple[float, list[tuple[float, str]]]:
    """
    CPU seconds used between two snapshots by processes this script did not
    start (another test suite, a build...), which compete with the
    benchmark for the same cores; and the biggest of them by name.

    The total is the machine's busy time less ours: this script, the load
    tools it ran, and the services and tunnels it started with their
    descendants; or, if larger, the sum of the CPU time used meanwhile by
    the processes we did not start.  Either is approximate, to within
    10-20% of a core.
    """
    me = os.getpid()
    started = descendants(after.procs, [me]) - {me}
    ours = after.mine - before.mine
    for pid in started:
        old = before.procs.get(pid)
        ours += after.procs[pid].cpu - (old.cpu if old else 0.0)
    used: list[tuple[float, str]] = []
    for pid, new in after.procs.items():
        if pid in started or pid == me or pid == 2 or new.ppid == 2:
            continue
        old = before.procs.get(pid)
        delta = new.cpu - old.cpu if old else new.cpu + new.reaped
        if delta > 0:
            used.append((delta, f"{new.name}[{pid}]"))
    used.sort(reverse=True)
    # Both estimates miss something (the machine's total is blurred by how
    # the kernel charges interrupts; the names miss processes that came and
    # went), so take the larger one.
    named = sum(d for d, _ in used)
    return max(named, (after.busy - before.busy) - ours), used[:3]


@dataclass(frozen=True)
class TCPMemory:
    pages: int  # memory the kernel's TCP sockets hold, in pages
    low: int  # net.ipv4.tcp_mem: below low the kernel leaves memory pressure...
    pressure: int  # ...and above pressure it enters it, clamping every socket's buffers
    sockets: int  # TCP sockets in use on the machine

    def strained(self) -> bool:
        return self.pages > self.low

    def describe(self) -> str:
        return (
            f"the kernel's TCP memory was {self.pages} pages with {self.sockets} TCP sockets "
            f"in use (net.ipv4.tcp_mem: memory pressure from {self.pressure} pages until "
            f"back below {self.low}): under pressure every socket's buffers are clamped, "
            "and throughput on every path can fall 10-50x"
        )


def tcpMemory() -> TCPMemory | None:
    """The machine's TCP memory use, from /proc (None if it cannot be read)."""
    try:
        sockstat = Path("/proc/net/sockstat").read_text()
        low, pressure, _high = map(int, Path("/proc/sys/net/ipv4/tcp_mem").read_text().split())
    except (OSError, ValueError):
        return None
    tcp = re.search(r"^TCP: inuse (\d+) .*\bmem (\d+)", sockstat, re.M)
    if not tcp:
        return None
    return TCPMemory(int(tcp.group(2)), low, pressure, int(tcp.group(1)))


# -- workloads ---------------------------------------------------------------------------------


def runTool(argv: Sequence[str], timeout: float) -> str:
    try:
        result = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{shlex.join(argv)}: still running after {timeout:.0f} s, killed"
        ) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise BenchError(
            f"{shlex.join(argv)}: exit status {result.returncode}: {' / '.join(detail)}"
        )
    return result.stdout


def bulk(port: int, seconds: int) -> tuple[float, list[str]]:
    out = runTool(
        [tool("iperf3"), "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
        seconds + 30,
    )
    try:
        report = json.loads(out)
    except ValueError:
        raise BenchError(f"iperf3: unreadable JSON: {out[:200]!r}") from None
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    return report["end"]["sum_received"]["bits_per_second"] / 8e6, []


def keepAlive(target: Target, seconds: int, connections: int) -> tuple[float, list[str]]:
    argv = [tool("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    if target.host:
        argv += ["-H", f"Host: {target.host}"]
    out = runTool([*argv, target.url()], seconds + 30)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not match:
        raise BenchError(f"wrk: no Requests/sec in {out!r}")
    problems = []
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if errors and any(int(n) for n in errors.groups()):
        problems.append(errors.group(0))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        problems.append(non2xx.group(0))
    return float(match.group(1)), problems


def hey(
    target: Target, path: str, seconds: int, connections: int, *extra: str
) -> tuple[float, list[str]]:
    argv = [tool("hey"), "-z", f"{seconds}s", "-c", str(connections), *extra]
    if target.host:
        argv += ["-host", target.host]
    out = runTool([*argv, target.url(path)], seconds + 60)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not match:
        raise BenchError(f"hey: no Requests/sec in {out[-300:]!r}")
    problems = []
    for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", out):
        if code != "200":
            problems.append(f"{count} responses with status {code}")
    if "Error distribution:" in out:
        for line in out.split("Error distribution:", 1)[1].strip().splitlines()[:3]:
            problems.append(line.strip())
    return float(match.group(1)), problems


def newConnections(target: Target, seconds: int) -> tuple[float, list[str]]:
    return hey(target, "/", seconds, 16, "-disable-keepalive")


def bigGets(target: Target, seconds: int) -> tuple[float, list[str]]:
    rate, problems = hey(target, "/big", seconds, 4)
    return rate * BIG_BYTES / 1e6, problems


def openLatency(target: Target) -> tuple[tuple[float, float], list[str]]:
    """
    Time from connect() to the first byte of the answer, for fresh
    connections made one after another: for a tunnel this is accepting the
    local connection, (for the proxy listener) reading the request and
    routing it, opening a stream to the node, the agent dialling nginx, and
    the request and the first byte of the reply crossing the tunnel.
    """
    request = (
        f"GET / HTTP/1.1\r\nHost: {target.hostHeader()}\r\nConnection: close\r\n\r\n"
    ).encode()
    samples: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + 60
    for i in range(LATENCY_WARMUP + LATENCY_REQUESTS):
        if time.monotonic() > deadline:
            failures.append(f"stopped after {i} requests: 60 s deadline")
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(5)
            start = time.perf_counter()
            s.connect(("127.0.0.1", target.port))
            s.sendall(request)
            first = s.recv(65536)
            elapsed = time.perf_counter() - start
            if not first:
                raise BenchError("closed before answering")
            reply = first
            while chunk := s.recv(65536):  # read the rest, until the server closes
                reply += chunk
            if not reply.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
                status = reply.split(b"\r\n", 1)[0]
                raise BenchError(f"answered {status!r}")
            if i >= LATENCY_WARMUP:
                samples.append(elapsed)
        except (OSError, BenchError) as e:
            failures.append(f"request {i}: {e}")
        finally:
            s.close()
    if len(samples) < LATENCY_REQUESTS // 2:
        raise BenchError(
            f"only {len(samples)} of {LATENCY_REQUESTS} requests answered: {failures[:3]}"
        )
    samples.sort()
    p50 = statistics.median(samples) * 1e3
    p99 = samples[max(0, math.ceil(0.99 * len(samples)) - 1)] * 1e3
    problems = [f"{len(failures)} failed requests, e.g. {failures[0]}"] if failures else []
    return (p50, p99), problems


#: What nginx answers on / ("ok-from-edge\n"): bench/loadgen checks every body's length.
SMALL_BODY = 13


def loadgen(
    door: Door,
    seconds: float,
    connections: int,
    mode: str = "keepalive",
    path: str = "/",
    requests: int = 0,
) -> tuple[dict[str, object], list[str]]:
    """
    Run bench/loadgen (C{mode}: keepalive or new, C{connections} at a time,
    for C{seconds} or C{requests}) and return its JSON report and the
    problems it saw (errors, statuses other than 200, bodies of the wrong
    length).
    """
    argv = [door.binary, "-addr", door.addr, "-c", str(connections), "-mode", mode]
    argv += ["-d", f"{seconds}s", "-path", path, "-timeout", "10s"]
    argv += ["-expect-bytes", str(BIG_BYTES if path == "/big" else SMALL_BODY)]
    if door.connect:
        argv += ["-connect", door.connect]
    if door.host:
        argv += ["-host", door.host]
    if door.tls:
        ca, cert, key = door.tls
        argv += ["-tls", "-ca", ca, "-cert", cert, "-key", key, "-server-name", "127.0.0.1"]
    if requests:
        argv += ["-n", str(requests)]
    out = runTool(argv, seconds + 60)
    try:
        report = json.loads(out)
    except ValueError:
        raise BenchError(f"loadgen: unreadable JSON: {out[:200]!r}") from None
    problems = []
    if report["errors"]:
        samples = "; ".join(report["errorSamples"][:2])
        problems.append(f"loadgen: {report['errors']} failed requests (e.g. {samples})")
    if not report["ok"]:
        raise BenchError(f"loadgen: no request answered: {problems}")
    return report, problems


def loadgenOK(door: Door) -> bool:
    """Does one request through C{door} come back as a 200 with the expected body?"""
    try:
        report, problems = loadgen(door, 2, 1, requests=1)
    except BenchError:
        return False
    return report["ok"] == 1 and not problems


def loadgenWorkload(
    door: Door, workload: str, seconds: int
) -> tuple[float | tuple[float, float], list[str]]:
    """The workloads of a bench/loadgen row, the same shapes as wrk's and hey's."""
    if workload in ("ka1", "ka64", "newc"):
        connections = {"ka1": 1, "ka64": 64, "newc": 16}[workload]
        mode = "new" if workload == "newc" else "keepalive"
        report, problems = loadgen(door, seconds, connections, mode)
        return float(report["requestsPerSecond"]), problems  # type: ignore[arg-type]
    if workload == "big":
        report, problems = loadgen(door, seconds, 4, path="/big")
        return float(report["bytesPerSecond"]) / 1e6, problems  # type: ignore[arg-type]
    if workload == "open":
        # As openLatency: warm-up, then sequential requests, a new connection each
        # (and here a TLS handshake and a CONNECT each), timed to the end of the reply.
        loadgen(door, 60, 1, "new", requests=LATENCY_WARMUP)
        report, problems = loadgen(door, 60, 1, "new", requests=LATENCY_REQUESTS)
        return (float(report["latencyP50Ms"]), float(report["latencyP99Ms"])), problems  # type: ignore[arg-type]
    raise AssertionError(workload)


def runWorkload(
    row: Row, workload: str, seconds: int
) -> tuple[float | tuple[float, float], list[str]]:
    if row.door is not None:
        return loadgenWorkload(row.door, workload, seconds)
    assert row.http is not None and row.https is not None
    if workload == "bulk":
        assert row.iperfPort is not None
        return bulk(row.iperfPort, seconds)
    if workload == "ka1":
        return keepAlive(row.http, seconds, 1)
    if workload == "ka64":
        return keepAlive(row.http, seconds, 64)
    if workload == "newc":
        return newConnections(row.http, seconds)
    if workload == "big":
        return bigGets(row.http, seconds)
    if workload == "open":
        return openLatency(row.http)
    if workload in TLS_WORKLOADS and row.https.certificate is not None:
        # a listener that asks for a client certificate: bench/loadgen presents one
        return loadgenWorkload(clientCertificateDoor(row.https), workload[1:], seconds)
    if workload == "tka1":
        return keepAlive(row.https, seconds, 1)
    if workload == "tka64":
        return keepAlive(row.https, seconds, 64)
    if workload == "tnewc":
        return newConnections(row.https, seconds)
    raise AssertionError(workload)


#: The workloads over TLS.
TLS_WORKLOADS = frozenset({"tka1", "tka64", "tnewc"})
#: The workloads of the rows measured with bench/loadgen.
LOADGEN_WORKLOADS = frozenset({"ka1", "ka64", "newc", "big", "open"})

#: Why a row whose HTTPS target requires a client certificate is not measured over TLS.
NO_CLIENT_CERTIFICATES = (
    "HTTPS through the proxy listener is not measured: the listener requires a client "
    "certificate (issue 12), wrk and hey cannot present one, and bench/loadgen (which "
    "does) is not built"
)


def clientCertificateDoor(target: Target) -> Door:
    """bench/loadgen straight to C{target} (no CONNECT), over TLS with its client certificate."""
    assert target.certificate is not None and target.authority is not None
    cert, key = target.certificate
    return Door(
        loadgenBinary(),
        f"127.0.0.1:{target.port}",
        tls=(target.authority, cert, key),
        host=target.host,
    )


def measures(row: Row, workload: str) -> bool:
    """
    Does this row take part in this workload?  Bulk needs an iperf3 path;
    the TLS workloads need a target the load tools can reach: without a
    client certificate with wrk and hey, with one with bench/loadgen.
    """
    if row.door is not None:
        return workload in LOADGEN_WORKLOADS
    if workload == "bulk":
        return row.iperfPort is not None
    if workload in TLS_WORKLOADS:
        if row.https is None:
            return False
        if row.https.certificate is None:
            return True
        try:
            loadgenBinary()
        except NotRun:
            return False
        return True
    return True


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    foreign: list[float] = field(default_factory=list)  # % of a core, per measurement
    strained: int = 0  # measurements during which the kernel's TCP memory was strained
    notes: list[str] = field(default_factory=list)

    def add(self, path: str, key: str, value: float | None) -> None:
        self.values.setdefault(path, {}).setdefault(key, []).append(value)

    def measured(self, path: str, key: str) -> bool:
        return bool(self.values.get(path, {}).get(key))

    def median(self, path: str, key: str) -> float | None:
        got = [v for v in self.values.get(path, {}).get(key, []) if v is not None]
        return statistics.median(got) if got else None

    def failed(self, path: str, key: str) -> int:
        return sum(v is None for v in self.values.get(path, {}).get(key, []))

    def toJSON(self) -> dict[str, object]:
        return {"values": self.values, "cpu": self.cpu, "foreign": self.foreign}


def measure(
    setup: Setup, results: Results, path: str, workload: str, seconds: int, run: int
) -> None:
    row = setup.rows[path]
    roots = [setup.procs.get(name).process.pid for name in row.cpuRoots]
    keys = keysOf(workload)
    try:
        setup.procs.checkAlive(row.watch)
        memoryBefore = tcpMemory()
        statsBefore, clockBefore = snapshot(), time.monotonic()
        value, problems = runWorkload(row, workload, seconds)
        statsAfter, elapsed = snapshot(), time.monotonic() - clockBefore
        if roots:
            busy = tunnelCPU(statsBefore, statsAfter, roots) / elapsed
            results.cpu.setdefault(path, {}).setdefault(workload, []).append(busy * 100)
        memory = max(
            filter(None, (memoryBefore, tcpMemory())), key=lambda m: m.pages, default=None
        )
        if memory is not None and memory.strained():
            results.strained += 1
            problems.append(memory.describe())
        foreign, top = foreignCPU(statsBefore, statsAfter)
        results.foreign.append(foreign / elapsed * 100)
        if foreign / elapsed > FOREIGN_NOTE:
            who = ", ".join(f"{name} {d / elapsed:.0%}" for d, name in top if d / elapsed >= 0.01)
            problems.append(
                f"other processes used {foreign / elapsed:.0%} of a core"
                + (f" ({who})" if who else " (short-lived ones: no single process stands out)")
            )
    except BenchError as e:
        for key in keys:
            results.add(path, key, None)
        results.notes.append(f"run {run}, {LABELS[path]}, {workload}: FAILED: {e}")
        log(f"run {run} {path} {workload}: FAILED: {e}")
        return
    values = value if isinstance(value, tuple) else (value,)
    for key, v in zip(keys, values, strict=True):
        results.add(path, key, v)
    shown = ", ".join(f"{k}={fmt(v)}" for k, v in zip(keys, values, strict=True))
    log(
        f"run {run} {path:6} {workload:5}: {shown}"
        + (f"  ({'; '.join(problems)})" if problems else "")
    )
    for problem in problems:
        results.notes.append(f"run {run}, {LABELS[path]}, {workload}: {problem}")


def fmt(value: float | None) -> str:
    if value is None:
        return "fail"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# Ratio rows: (numerator row, denominator row).
RATIOS = (
    ("ours", "ssh"),
    ("ours", "direct"),
    ("fwd", "ssh"),
    *((peer, "ssh") for peer in PEER_TUNNELS),
    ("door", "konn"),
    ("ours", "konn"),
    ("ldirect", "direct"),
)


def ratio(results: Results, top: str, bottom: str, key: str) -> float | None:
    ours, other = results.median(top, key), results.median(bottom, key)
    return ours / other if ours is not None and other else None


def table(results: Results, paths: Sequence[str], missing: Mapping[str, str]) -> str:
    """
    The medians, a row per path, then the ratio rows; a path that was not
    run (C{missing}) keeps its row, which says why, and so do the ratio
    rows that need it.
    """
    lines = [
        "| path | " + " | ".join(m.header for m in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for path in paths:
        if path in missing:
            lines.append(
                f"| {LABELS[path]}: {missing[path]} | " + " | ".join("-" for _ in METRICS) + " |"
            )
            continue
        cells = []
        for m in METRICS:
            if not results.measured(path, m.key):
                cells.append("-")
                continue
            cell = fmt(results.median(path, m.key))
            if results.failed(path, m.key) and results.median(path, m.key) is not None:
                cell += f" ({results.failed(path, m.key)} failed)"
            cells.append(cell)
        lines.append(f"| {LABELS[path]} | " + " | ".join(cells) + " |")
    for top, bottom in RATIOS:
        if top in paths and bottom in paths:
            label = f"{LABELS[top]} / {LABELS[bottom]}"
            absent = [p for p in (top, bottom) if p in missing]
            if absent:
                why = "; ".join(f"{SHORT[p]} not run" for p in absent)
                lines.append(f"| {label} ({why}) | " + " | ".join("-" for _ in METRICS) + " |")
                continue
            cells = []
            for m in METRICS:
                got = ratio(results, top, bottom, m.key)
                cells.append(f"{got:.2f}x" if got is not None else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpuTable(results: Results, paths: Sequence[str]) -> str:
    tunnels = [p for p in paths if p in results.cpu]
    if not tunnels:
        return ""
    lines = [
        "| tunnel | " + " | ".join(WORKLOAD_NAMES[w] for w in WORKLOADS) + " |",
        "|---|" + "---|" * len(WORKLOADS),
    ]
    for path in tunnels:
        cells = []
        for w in WORKLOADS:
            got = results.cpu[path].get(w)
            cells.append(f"{statistics.median(got):.0f}%" if got else "-")
        lines.append(f"| {LABELS[path]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The workloads measured in requests per second: CPU per request is theirs.
REQUEST_WORKLOADS = ("ka1", "ka64", "newc", "tka1", "tka64", "tnewc")


def cpuPerRequest(results: Results, path: str, workload: str) -> float | None:
    """
    Microseconds of CPU the tunnel's processes (both ends) spent per
    request: their median share of a core over the workload's median rate.
    """
    shares = results.cpu.get(path, {}).get(workload)
    rate = results.median(path, workload)
    if not shares or not rate:
        return None
    return statistics.median(shares) / 100 / rate * 1e6


def cpuPerRequestTable(results: Results, paths: Sequence[str]) -> str:
    tunnels = [p for p in paths if p in results.cpu]
    rows = []
    for path in tunnels:
        cells = [cpuPerRequest(results, path, w) for w in REQUEST_WORKLOADS]
        if any(c is not None for c in cells):
            shown = " | ".join("-" if c is None else f"{c:.0f}" for c in cells)
            rows.append(f"| {LABELS[path]} | {shown} |")
    if not rows:
        return ""
    header = "| tunnel | " + " | ".join(WORKLOAD_NAMES[w] for w in REQUEST_WORKLOADS) + " |"
    return "\n".join([header, "|---|" + "---|" * len(REQUEST_WORKLOADS), *rows])


def rawRuns(results: Results, paths: Sequence[str]) -> str:
    lines = ["| path | metric | runs |", "|---|---|---|"]
    for path in paths:
        for m in METRICS:
            runs = results.values.get(path, {}).get(m.key, [])
            if runs:
                lines.append(
                    f"| {LABELS[path]} | {m.header} | {', '.join(fmt(v) for v in runs)} |"
                )
    return "\n".join(lines)


def plot(
    results: Results,
    paths: Sequence[str],
    args: argparse.Namespace,
    info: dict[str, str],
    png: Path,
    missing: Mapping[str, str],
) -> bool:
    """
    One bar chart per column of the table (throughput, request rates,
    latency), a bar per path, each labelled with its median and, for the
    tunnels measured with wrk/hey/iperf3, the ratio to ssh -R.  Returns False
    (and says why) if matplotlib is missing: the report does not need it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install '.[bench]'): no plot")
        return False
    columns = 5
    rowsOfPanels = math.ceil(len(METRICS) / columns)
    fig, axes = plt.subplots(
        rowsOfPanels, columns, figsize=(4.2 * columns, 4.0 * rowsOfPanels), squeeze=False
    )
    for ax, m in zip(axes.flat, METRICS, strict=False):
        shown = [p for p in paths if results.measured(p, m.key)]
        values = [results.median(p, m.key) for p in shown]
        xs = list(range(len(shown)))
        bars = ax.bar(xs, [v or 0.0 for v in values], color=[COLOURS[p] for p in shown], width=0.7)
        for bar, path, v in zip(bars, shown, values, strict=True):
            label = fmt(v)
            if (path, "ssh") in RATIOS and "ssh" in paths:
                got = ratio(results, path, "ssh", m.key)
                if got is not None:
                    label += f"\n{got:.2f}x"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=6,
                xytext=(0, 2),
                textcoords="offset points",
            )
        better = "higher" if m.higherIsBetter else "lower"
        ax.set_title(textwrap.fill(f"{m.header} ({better} is better)", 34), fontsize=9)
        ax.set_ylabel(m.unit, fontsize=8)
        ax.set_xticks(xs, [SHORT[p] for p in shown], rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.25)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.set_visible(False)
    absent = "; ".join(f"{SHORT[p]}: {why}" for p, why in missing.items() if p in paths)
    fig.suptitle(
        f"twisted-tunnel, its peers, OpenSSH ssh -R and direct, loopback; {info['date']}; "
        f"{info['cpu']}; commit {info['commit']}; medians of {args.runs} runs x "
        f"{args.seconds} s; load average {info['loadavg']}; under a bar: its ratio to ssh -R"
        + (f"\nnot run: {textwrap.shorten(absent, 220)}" if absent else ""),
        fontsize=9,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return True


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def out(argv: Sequence[str]) -> str:
        try:
            r = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (
            (r.stdout or r.stderr).strip().splitlines()[0]
            if (r.stdout or r.stderr).strip()
            else "?"
        )

    versions = []
    for name in (*PEER_TUNNELS, "konnectivity"):
        versions.append(f"{name} {peerbuild.version(name)}")
    head = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = out(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "uname": out(["uname", "-a"]),
        "cpu": f"{cpu} ({os.cpu_count()} CPUs online)",
        "commit": head + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "python": platform.python_version(),
        "tools": "; ".join(
            [
                out(["nginx", "-v"]),
                out(["iperf3", "--version"]),
                out(["wrk", "--version"]).split(" Copyright")[0],
                out(["ssh", "-V"]),
            ]
        ),
        "peers": "; ".join(versions),
        "loadavg": loadavg(),
    }


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (how busy the machine was, others included)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def quietness(results: Results) -> str:
    """How much CPU other processes took while the workloads ran."""
    if not results.foreign:
        return "other processes: not measured"
    median, worst = statistics.median(results.foreign), max(results.foreign)
    disturbed = sum(f >= FOREIGN_NOTE * 100 for f in results.foreign)
    strained = (
        f"; in {results.strained} the kernel's TCP memory was above net.ipv4.tcp_mem's low "
        "mark (other programs' sockets: buffers clamped, throughput NOT meaningful)"
        if results.strained
        else ""
    )
    return (
        f"other processes (not started by the benchmark) used {median:.0f}% of a core during "
        f"the median measurement, {worst:.0f}% at most; {disturbed} of {len(results.foreign)} "
        f"measurements had more than {FOREIGN_NOTE:.0%} of a core taken by others"
        + (" (listed in the notes)" if disturbed else "")
        + strained
    )


def report(
    results: Results,
    paths: Sequence[str],
    args: argparse.Namespace,
    info: dict[str, str],
    png: Path | None,
    setup: Setup,
) -> str:
    entry = os.environ.get("BENCH_ENTRY", f"{sys.executable} bench/bench.py")
    command = " ".join([entry, *map(shlex.quote, sys.argv[1:])])
    parts = [
        "# twisted-tunnel benchmark: latest results",
        "",
        f"- date: {info['date']}",
        f"- machine: `{info['uname']}`",
        f"- CPU: {info['cpu']}",
        f"- command: `{command}` ({args.runs} run{'s' if args.runs != 1 else ''} of "
        f"{args.seconds} s per workload; medians)",
        f"- twisted-tunnel commit: {info['commit']}; Python {info['python']}",
        f"- tools: {info['tools']}",
        f"- peers: {info['peers']} (bench/peers/README.md says how each is built and driven)",
        f"- load average (1, 5, 15 min) at the start: {info.get('loadavgStart', '?')}; "
        f"at the end: {info['loadavg']}",
        f"- {quietness(results)}",
        "",
        "Medians over the runs. Throughput and req/s: higher is better. Stream-open latency",
        "(connect() to the first byte of the reply, a fresh connection each, one at a time):",
        "lower is better.",
        "",
        "twisted-tunnel (proxy listeners): HTTP requests go to the server's HTTP proxy",
        f"listener with `Host: {NODE_IP}:<nginx port>`, HTTPS requests to its HTTPS proxy",
        "listener (TLS ended there and made again to nginx); bulk (iperf3 is not HTTP) goes",
        "through a `--forward` listener. twisted-tunnel (--forward): static listeners, the",
        "shape of `ssh -R`, TLS carried end to end as through ssh. twisted-tunnel (CONNECT",
        "door): bench/loadgen over mutual TLS to the door, `CONNECT` to the node's nginx, then",
        "GETs through the tunnel (keep-alive: one CONNECT per connection; new connection: TLS,",
        "CONNECT and GET each; stream open: the same, one at a time, timed to the end of the",
        "reply). frp, chisel, rathole: one server and one client each, forwarding nginx's two",
        "ports and an iperf3 sink like `ssh -R` (TLS end to end through them), measured with",
        "the same tools as `ssh -R`. direct (loadgen): bench/loadgen straight to nginx, to",
        "compare it with wrk and hey. Ratio rows divide the first row's median by the second's.",
        "",
        table(results, paths, setup.missing),
        "",
    ]
    if png is not None:
        parts += [f"![the table as bar charts]({png.name})", ""]
    cpu = cpuTable(results, paths)
    if cpu:
        parts += [
            "CPU used by the tunnel processes while each workload ran (median over runs;",
            "100% = one core; OpenSSH: sshd with its session children + ssh;",
            "twisted-tunnel: server + agent).",
            "The machine has 2 cores shared with the load generator and nginx.",
            "",
            cpu,
            "",
        ]
    perRequest = cpuPerRequestTable(results, paths)
    if perRequest:
        parts += [
            "CPU per request, both ends of the tunnel, in microseconds (the median CPU",
            "share above over the median request rate; lower is better):",
            "",
            perRequest,
            "",
        ]
    parts += ["Every run:", "", rawRuns(results, paths), ""]
    if setup.commands:
        parts += ["How each tunnel was started (ports and paths of this run):", ""]
        for tunnel, commands in setup.commands.items():
            parts += [f"- {tunnel}:", "", *(f"      {c}" for c in commands), ""]
    if results.notes:
        parts += ["Notes (errors reported by the load tools, failed workloads):", ""]
        parts += [f"- {note}" for note in results.notes]
        parts.append("")
    return "\n".join(parts)


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="twisted-tunnel vs its peers vs OpenSSH ssh -R vs direct, in one run.",
    )
    parser.add_argument(
        "--seconds", type=int, default=5, help="length of each workload (default 5)"
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs of every workload; medians are reported (default 3)",
    )
    parser.add_argument(
        "--only",
        choices=TUNNELS,
        action="append",
        help="measure only this path (repeatable): " + ", ".join(TUNNELS) + " (ours: its "
        "proxy-listener, --forward and CONNECT door rows; direct: with wrk/hey and with "
        "bench/loadgen)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave every process running at the end and print their ports and PIDs (for py-spy); "
        "with --runs 0 nothing is measured",
    )
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    if args.runs < 0:
        parser.error("--runs must not be negative")
    return args


def ourTrouble(setup: Setup, results: Results) -> None:
    """
    Note what was not measured and tunnel reconnections; show the daemon
    logs if a workload failed or a daemon died.
    """
    if any(
        row in setup.rows and not measures(setup.rows[row], w)
        for row in ("ours", "fwd")
        for w in TLS_WORKLOADS
    ):
        results.notes.append(NO_CLIENT_CERTIFICATES)
        log(NO_CLIENT_CERTIFICATES)
    serverLog = setup.procs.get("edge-tunnel-server").logPath.read_text(errors="replace")
    connects = serverLog.count(f"agent {NODE} connected from")
    if connects > 1:
        note = (
            f"the agent connected {connects} times during the run (server log lines "
            f"'agent {NODE} connected from'); each new tunnel replaces the old one "
            "and resets the streams it carried"
        )
        results.notes.append(note)
        log(note)
    failed = any(results.failed(row, m.key) for row in ROWS_OF["ours"] for m in METRICS)
    for name in TUNNEL_PROCESSES["ours"]:
        entry = setup.procs.get(name)
        lines = entry.logPath.read_text(errors="replace").count("\n")
        code = entry.process.poll()
        log(
            f"{name}: {lines} log lines; "
            + ("still running" if code is None else f"exited with status {code}")
        )
        if failed or code is not None:
            print(f"--- tail of {entry.logPath.name} ---\n{tail(entry.logPath)}", file=sys.stderr)


def printKept(setup: Setup) -> None:
    print("\nprocesses left running (--keep):")
    for entry in setup.procs.started:
        print(f"  {entry.name:20} pid {entry.process.pid:7}  log {entry.logPath}")
    print("where the load tools go:")
    for path, row in setup.rows.items():
        print(f"  {LABELS[path]}:")
        if row.door is not None:
            print(f"    bench/loadgen: {row.door.describe()}")
        if row.http is not None and row.https is not None:
            print(f"    HTTP  {row.http.describe()}")
            print(f"    HTTPS {row.https.describe()}")
        if row.iperfPort is not None:
            print(f"    iperf3 -c 127.0.0.1 -p {row.iperfPort}")
    print("other ports:")
    for name, port in setup.extraPorts.items():
        print(f"  {name}: {port}")
    pids = " ".join(str(e.process.pid) for e in reversed(setup.procs.started))
    if "ours" in setup.rows:
        print(f"e.g. py-spy top --pid {setup.procs.get('edge-tunnel-server').process.pid}")
    print(f"stop them with: kill {pids}; rm -rf {setup.work}", flush=True)


def main(argv: Sequence[str]) -> int:
    args = parseArgs(argv)
    tunnels = [t for t in TUNNELS if not args.only or t in args.only]
    paths = [row for t in tunnels for row in ROWS_OF[t]]
    for name in (
        "nginx",
        "iperf3",
        "wrk",
        "hey",
        "curl",
        *(("sshd", "ssh", "ssh-keygen") if "ssh" in tunnels else ()),
    ):
        tool(name)

    # SIGTERM (e.g. from a CI timeout) unwinds through the finally below too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    work = Path(tempfile.mkdtemp(prefix="twisted-tunnel-bench-"))
    work.chmod(0o755)  # nginx workers must read big.bin
    setup = Setup(work, Processes(work, log))
    results = Results()
    keep = False
    loadStart = loadavg()
    try:
        pki = mintPKI(work)
        startEdge(setup, tunnels, pki)
        starts: dict[str, Callable[[Setup, Path], None]] = {
            "direct": startDirect,
            "ssh": startSSH,
            "ours": startOurs,
            **{peer: partial(startPeer, name=peer) for peer in PEER_TUNNELS},
            "konnectivity": startKonnectivity,
        }
        for tunnel in tunnels:
            try:
                starts[tunnel](setup, pki)
            except NotRun as e:
                # A peer that is not built: its rows say so, the others run.
                log(f"{tunnel}: {e}")
                for row in ROWS_OF[tunnel]:
                    setup.missing[row] = str(e)
            except BenchError as e:
                log(f"{tunnel} did not start: {e}")
                for entry in setup.procs.started:
                    if entry.name in TUNNEL_PROCESSES.get(tunnel, ()):
                        print(
                            f"--- tail of {entry.logPath.name} ---\n{tail(entry.logPath)}",
                            file=sys.stderr,
                        )
                if tunnel in PEER_TUNNELS:  # a peer's trouble does not stop the run
                    for row in ROWS_OF[tunnel]:
                        setup.missing[row] = f"did not start: {e}"
                    continue
                keep = args.keep
                return 1
        for row, why in setup.missing.items():
            results.notes.append(f"{LABELS[row]}: not run: {why}")
        if args.keep:
            keep = True
            printKept(setup)

        memory = tcpMemory()
        if memory is not None and memory.strained():
            log(f"warning: {memory.describe()}; wait until the machine is quiet")
        paths = [p for p in paths if p in setup.rows or p in setup.missing]
        running = [p for p in paths if p in setup.rows]
        plan = [(w, p) for w in WORKLOADS for p in running if measures(setup.rows[p], w)]
        if args.runs:
            log(
                f"measuring {', '.join(running)}: {args.runs} runs x {len(plan)} measurements, "
                f"about {args.runs * len(plan) * (args.seconds + 1.5) / 60:.0f} min"
            )
        for run in range(1, args.runs + 1):
            # Rotate the order of the paths from run to run, so that none is
            # always measured first (or right after the heaviest one).
            turn = (run - 1) % len(running)
            order = running[turn:] + running[:turn]
            for workload in WORKLOADS:
                for path in order:
                    if measures(setup.rows[path], workload):
                        measure(setup, results, path, workload, args.seconds, run)
                        time.sleep(0.3)

        if "ours" in tunnels and args.runs:
            ourTrouble(setup, results)
        if args.runs:
            log(quietness(results))
            print(table(results, paths, setup.missing), flush=True)
            info = machine()
            info["loadavgStart"] = loadStart
            if set(tunnels) == set(TUNNELS):
                target = RESULTS / "latest.md"
            else:  # a partial (profiling) run must not replace the full comparison
                target = RESULTS / "tmp" / f"latest-{'-'.join(tunnels)}.md"
            target.parent.mkdir(parents=True, exist_ok=True)
            png = target.with_suffix(".png")
            drawn = plot(results, paths, args, info, png, setup.missing)
            target.write_text(report(results, paths, args, info, png if drawn else None, setup))
            document = {"info": info, **results.toJSON(), "notRun": setup.missing}
            target.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
            log(f"wrote {target.relative_to(REPO)}" + (f" and {png.name}" if drawn else ""))
            if results.notes:
                where = target.relative_to(REPO)
                log(f"{len(results.notes)} notes (errors, failures): see {where}")
        if keep and args.runs:
            printKept(setup)
        return 0
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        if not keep:
            setup.procs.stopAll()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
