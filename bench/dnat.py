"""
The path kube-apiserver takes, measured: connections to C{<node-ip>:PORT}
that iptables DNATs to the server's HTTP proxy listener, side by side with
OpenSSH C{ssh -R} in one run, and, with C{--tree}, the same for several
checkouts of twisted-tunnel interleaved (an A/B of a change against its
parent).

    sudo .venv/bin/python bench/dnat.py [--seconds 5] [--rounds 3]
        [--tree NAME=PATH ...] [--no-ssh] [--workload ka1|ka64|newc|big ...]

C{bench/bench.py} routes by C{Host} on loopback (no iptables there), so
it measures the path of a connection that was I{not} DNATed.  This one
makes two network namespaces of its own (deleted at the end, also when it
fails) and runs everything inside them:

    cloud  10.252.0.1  edge-tunnel-server (iptables on: it DNATs
                       10.252.0.2:8080 to its HTTP listener 10.252.0.1:18080),
                       sshd, and the load tools (wrk, hey)
    edge   10.252.0.2  the node: nginx on 10.252.0.2:8080 ("/" 13 bytes,
                       "/big" 10 MiB), edge-tunnel-agent, ssh -R

The load tools ask for C{http://10.252.0.2:8080/} as kube-apiserver asks
for C{https://<node-ip>:10250/}; the cloud has a route to the edge, so
without the server's DNAT rule they would reach nginx directly (that is
the "direct" row, measured before any tunnel starts; then the edge
rejects them, as NAT would).  C{ssh -R} forwards
C{127.0.0.1:18081} in the cloud to the same nginx.  Each round measures
ssh, then each tree (its server and agent started, measured, stopped), so
drift on a shared machine spreads over all of them.  Medians of the rounds
are printed as a Markdown table with ratios to C{ssh -R} and to the first
tree.  Needs root, C{ip}, C{iptables}, nginx, sshd, wrk and hey.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # build.py
import build as peerbuild  # noqa: E402  (bench/peers/build.py: where loadgen is)
from _procs import REPO, BenchError, Processes, twistd  # noqa: E402

CLOUD_IP, NODE_IP = "10.252.0.1", "10.252.0.2"
NGINX_PORT, LISTENER_PORT, SSH_FORWARD, SSHD_PORT, TUNNEL_PORT = 8080, 18080, 18081, 18022, 18062
#: nginx over TLS (as a kubelet's 10250), the HTTPS proxy listener, and ssh -R's forward of it
NGINX_TLS_PORT, TLS_LISTENER_PORT, SSH_TLS_FORWARD = 8443, 18443, 18444
NODE = "edge-1"
BIG_BYTES = 10 * 1024 * 1024

#: name -> (what it is, how it is measured)
WORKLOADS: dict[str, str] = {
    "ka1": "keep-alive, 1 connection (wrk -c1), req/s",
    "ka64": "keep-alive, 64 connections (wrk -c64), req/s",
    "newc": "new connection per request, 16 at once (hey -disable-keepalive), req/s",
    "big": "10 MiB GETs, 4 at once (hey), MB/s",
    # HTTPS to https://<node-ip>:8443/ with bench/loadgen, which presents a client
    # certificate (the HTTPS proxy listener asks for one); ssh -R carries nginx's TLS
    "tka1": "HTTPS keep-alive, 1 connection (loadgen), req/s",
    "tka64": "HTTPS keep-alive, 64 connections (loadgen), req/s",
    "tnewc": "HTTPS new connection per request, 16 at once (loadgen), req/s",
    # not a measurement: what the smoke test runs (curl is all it needs)
    "check": "GET / and /big with curl, the 10 MiB compared (1 = right)",
}


def log(message: str) -> None:
    print(f"[dnat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(*argv: str, timeout: float = 30) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: {result.returncode}: {result.stderr.strip()[-300:]}")
    return result.stdout


class Namespaces:
    """The cloud and the edge, linked by a veth pair; C{close} deletes both."""

    def __init__(self, work: Path) -> None:
        self.work = work
        tag = f"ttd{os.getpid()}"
        self.cloud, self.edge = f"{tag}c", f"{tag}e"
        self.made: list[str] = []
        for ns in (self.cloud, self.edge):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # both ends are created inside our namespaces: nothing appears on the host
        run("ip", "-n", self.cloud, "link", "add", "c0", "type", "veth", "peer", "e0",
            "netns", self.edge)  # fmt: skip
        for ns, device, address in ((self.cloud, "c0", CLOUD_IP), (self.edge, "e0", NODE_IP)):
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", device)
            run("ip", "-n", ns, "link", "set", device, "up")

    def inside(self, ns: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def waitFor(
    what: str, condition: Callable[[], bool], procs: Processes, deadline: float = 30
) -> None:
    start = time.monotonic()
    while not condition():
        procs.checkAlive()
        if time.monotonic() - start > deadline:
            raise BenchError(f"{what}: not ready after {deadline:.0f} s")
        time.sleep(0.1)


def curlOK(nets: Namespaces, url: str) -> bool:
    argv = nets.inside(nets.cloud, ["curl", "-sf", "-m", "2", "-o", "/dev/null", url])
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def startNginx(nets: Namespaces, work: Path, procs: Processes) -> None:
    (work / "big.bin").write_bytes(os.urandom(BIG_BYTES))
    (work / "big.bin").chmod(0o644)
    (work / "nginx.conf").write_text(
        f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off;
  ssl_certificate {work}/pki/edge.pem; ssl_certificate_key {work}/pki/edge-key.pem;
  server {{ listen {NODE_IP}:{NGINX_PORT}; listen {NODE_IP}:{NGINX_TLS_PORT} ssl;
    location = / {{ return 200 "ok-from-edge\\n"; }}
    location = /big {{ alias {work}/big.bin; }} }} }}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start("nginx", nets.inside(nets.edge, [nginx, "-c", str(work / "nginx.conf")]))
    waitFor("nginx", lambda: curlOK(nets, f"http://{NODE_IP}:{NGINX_PORT}/"), procs)


def startSSH(nets: Namespaces, work: Path, procs: Processes) -> None:
    """sshd in the cloud, C{ssh -R} dialling out from the edge, as in bench/bench.py."""
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    for key in ("host", "user"):
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key))
    shutil.copy(work / "user.pub", work / "authorized_keys")
    (work / "sshd_config").write_text(
        f"Port {SSHD_PORT}\nListenAddress {CLOUD_IP}\nHostKey {work}/host\n"
        "PermitRootLogin prohibit-password\n"
        f"AuthorizedKeysFile {work}/authorized_keys\nStrictModes no\nAllowTcpForwarding yes\n"
        f"UsePAM no\nPidFile {work}/sshd.pid\n"
    )
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    procs.start(
        "sshd", nets.inside(nets.cloud, [sshd, "-D", "-e", "-f", str(work / "sshd_config")])
    )
    time.sleep(0.5)
    options = (
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        " -o BatchMode=yes -o ExitOnForwardFailure=yes"
    ).split()
    forward = f"127.0.0.1:{SSH_FORWARD}:{NODE_IP}:{NGINX_PORT}"
    forwardTLS = f"127.0.0.1:{SSH_TLS_FORWARD}:{NODE_IP}:{NGINX_TLS_PORT}"
    ssh = [
        "ssh", "-N", *options, "-i", str(work / "user"), "-p", str(SSHD_PORT),
        "-R", forward, "-R", forwardTLS, f"{getpass.getuser()}@{CLOUD_IP}",
    ]  # fmt: skip
    procs.start("ssh", nets.inside(nets.edge, ssh))
    waitFor("ssh -R", lambda: curlOK(nets, f"http://127.0.0.1:{SSH_FORWARD}/"), procs)


def mintPKI(work: Path) -> Path:
    """
    The tunnel's CA (server, agent, the proxy client certificate, the
    HTTPS listener's serving certificate for the node IP the client dials,
    and the load tool's client certificate) and the edge's CA, which signs
    nginx's serving certificate as a cluster CA signs kubelets'.
    """
    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient, mintServer, writePair

    pki = work / "pki"
    pki.mkdir()
    ca = mintCA()
    writePair(ca, pki / "ca.pem", pki / "ca-key.pem")
    writePair(mintServer(ca, [CLOUD_IP, NODE_IP]), pki / "server.pem", pki / "server-key.pem")
    writePair(mintAgent(ca, NODE, [NODE_IP]), pki / "agent.pem", pki / "agent-key.pem")
    writePair(
        mintClient(ca, "kube-apiserver-kubelet-client"), pki / "proxy.pem", pki / "proxy-key.pem"
    )
    writePair(mintClient(ca, "bench-client"), pki / "client.pem", pki / "client-key.pem")
    edge = mintCA("edge kubelet CA")
    writePair(edge, pki / "edge-ca.pem", pki / "edge-ca-key.pem")
    writePair(mintServer(edge, [NODE_IP]), pki / "edge.pem", pki / "edge-key.pem")
    return pki


def startOurs(nets: Namespaces, work: Path, pki: Path, tree: Path, procs: Processes) -> None:
    """The server (iptables on, in the cloud) and the agent of the node, from C{tree}."""
    config = work / "edge-tunnel-server-cfg.yaml"
    config.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edge-tunnel-server-cfg\n"
        f'data:\n  http-proxy-ports: "{NGINX_PORT}"\n  https-proxy-ports: "{NGINX_TLS_PORT}"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    server = twistd(
        "edge-tunnel-server",
        f"--tunnel-endpoint=tcp:{TUNNEL_PORT}:interface={CLOUD_IP}",
        f"--ca={pki}/ca.pem", f"--cert={pki}/server.pem", f"--key={pki}/server-key.pem",
        f"--http-proxy-endpoint=tcp:{LISTENER_PORT}:interface={CLOUD_IP}",
        f"--https-proxy-endpoint=tcp:{TLS_LISTENER_PORT}:interface={CLOUD_IP}",
        f"--proxy-serving-cert={pki}/server.pem", f"--proxy-serving-key={pki}/server-key.pem",
        f"--proxy-client-cert={pki}/proxy.pem", f"--proxy-client-key={pki}/proxy-key.pem",
        f"--proxy-client-ca={pki}/edge-ca.pem",
        "--tcp-proxy-endpoint=none", "--connect-endpoint=none",
        f"--config={config}",
    )  # fmt: skip
    procs.start("edge-tunnel-server", nets.inside(nets.cloud, server), env=env)
    agent = twistd(
        "edge-tunnel-agent",
        f"--server={CLOUD_IP}:{TUNNEL_PORT}",
        f"--ca={pki}/ca.pem", f"--cert={pki}/agent.pem", f"--key={pki}/agent-key.pem",
        f"--node-ip={NODE_IP}",
    )  # fmt: skip
    procs.start("edge-tunnel-agent", nets.inside(nets.edge, agent), env=env)

    def dnatted() -> bool:
        nat = run(*nets.inside(nets.cloud, ["iptables-save", "-t", "nat"]))
        return f"--dport {NGINX_PORT}" in nat and curlOK(nets, f"http://{NODE_IP}:{NGINX_PORT}/")

    waitFor("twisted-tunnel's DNAT rule and route", dnatted, procs)


def tlsURL(url: str) -> tuple[str, list[str]]:
    """
    Where the HTTPS workloads go for a row whose plain HTTP goes to C{url},
    and bench/loadgen's TLS options: through ssh -R, nginx's own TLS (checked
    against the edge CA); otherwise the node IP's TLS port, which the server
    DNATs to its HTTPS proxy listener (the tunnel's CA, and a client
    certificate, which that listener asks for).
    """
    pki = Path(os.environ["TT_DNAT_PKI"])
    if url.startswith("http://127.0.0.1:"):
        return f"127.0.0.1:{SSH_TLS_FORWARD}", ["-ca", f"{pki}/edge-ca.pem"]
    client = ["-cert", f"{pki}/client.pem", "-key", f"{pki}/client-key.pem"]
    return f"{NODE_IP}:{NGINX_TLS_PORT}", ["-ca", f"{pki}/ca.pem", *client]


def measureTLS(nets: Namespaces, workload: str, url: str, seconds: int) -> float:
    """An HTTPS workload with bench/loadgen (built by make peers), from the cloud."""
    bins = peerbuild.cached("loadgen")
    if bins is None:
        raise BenchError("bench/loadgen is not built (make peers)")
    addr, options = tlsURL(url)
    connections = {"tka1": "1", "tka64": "64", "tnewc": "16"}[workload]
    mode = "new" if workload == "tnewc" else "keepalive"
    argv = [str(bins / "loadgen"), "-addr", addr, "-tls", *options, "-server-name", NODE_IP,
            "-c", connections, "-mode", mode, "-d", f"{seconds}s",
            "-expect-bytes", "13"]  # fmt: skip
    report = json.loads(run(*nets.inside(nets.cloud, argv), timeout=seconds + 60))
    if report["errors"] or not report["ok"]:
        raise BenchError(f"loadgen against {addr}: {report['errors']} errors, {report['ok']} ok")
    return float(report["requestsPerSecond"])


#: The HTTPS workloads.
TLS = frozenset({"tka1", "tka64", "tnewc"})

TICKS = os.sysconf("SC_CLK_TCK")


def cpuSeconds(roots: Sequence[int]) -> float:
    """User and system CPU seconds of C{roots} and all their descendants, from /proc."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the name: state, ppid, ... utime (14th field) and stime (15th)
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    wanted, total = set(roots), 0.0
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                grew = True
    for pid in wanted:
        total += stats.get(pid, (0, 0.0))[1]
    return total


def measure(nets: Namespaces, workload: str, url: str, seconds: int) -> float:
    """One measurement of C{workload} against C{url} (from the cloud)."""
    if workload in ("tka1", "tka64", "tnewc"):
        return measureTLS(nets, workload, url, seconds)
    if workload == "check":
        small = run(*nets.inside(nets.cloud, ["curl", "-sf", "-m", "10", url]))
        big = subprocess.run(
            nets.inside(nets.cloud, ["curl", "-sf", "-m", "30", url + "big"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
        expected = (nets.work / "big.bin").read_bytes()
        return float(small == "ok-from-edge\n" and big.stdout == expected)
    if workload in ("ka1", "ka64"):
        connections = "1" if workload == "ka1" else "64"
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", url]
    elif workload == "newc":
        argv = ["hey", "-z", f"{seconds}s", "-c", "16", "-disable-keepalive", url]
    else:
        argv = ["hey", "-z", f"{seconds}s", "-c", "4", url + "big"]
    out = run(*nets.inside(nets.cloud, argv), timeout=seconds + 60)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if match is None:
        raise BenchError(f"{argv[0]}: no Requests/sec in {out[-300:]!r}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*|Error distribution", out)
    if bad is not None:
        raise BenchError(f"{argv[0]} against {url}: {bad.group(0)}")
    rate = float(match.group(1))
    return rate * BIG_BYTES / 1e6 if workload == "big" else rate


#: The processes of one tree: the tunnel's two ends.
DAEMONS = ("edge-tunnel-server", "edge-tunnel-agent")


def perRequest(seconds: float, rate: float, workload: str, args: argparse.Namespace) -> float:
    """CPU microseconds per request (per MB for C{big}) over a measurement of C{rate}."""
    if workload == "check" or rate <= 0:
        return 0.0
    return seconds * 1e6 / (rate * args.seconds)


def profile(
    where: Path | None, procs: Processes, label: str, seconds: int
) -> list[subprocess.Popen[bytes]]:
    """With C{--py-spy}: record both daemons for the next C{seconds}."""
    if where is None:
        return []
    where.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    return [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "--format",
                "raw",
                "-r",
                "250",
                "-d",
                str(seconds),
                "-o",
                str(where / f"{label}-{daemon}.txt"),
                "--pid",
                str(procs.get(daemon).process.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for daemon in DAEMONS
    ]


def table(results: dict[str, dict[str, list[float]]], workloads: Sequence[str]) -> str:
    rows = list(results)
    base = next((r for r in rows if r not in ("direct", "ssh -R")), None)
    head = "| row | " + " | ".join(WORKLOADS[w] for w in workloads) + " |"
    lines = [head, "|---" * (len(workloads) + 1) + "|"]
    for row in rows:
        cells = []
        for w in workloads:
            values = results[row].get(w, [])
            if not values:
                cells.append("–")
                continue
            median = statistics.median(values)
            text = f"{median:,.0f}" if median >= 100 else f"{median:.1f}"
            ssh = results.get("ssh -R", {}).get(w)
            if ssh and row != "ssh -R":
                text += f" ({median / statistics.median(ssh):.2f}x ssh)"
            first = results.get(base or "", {}).get(w)
            if first and row not in (base, "ssh -R", "direct"):
                text += f" ({median / statistics.median(first):.2f}x {base})"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Every value (rounds in order):")
    for row in rows:
        for w in workloads:
            values = ", ".join(f"{v:.0f}" for v in results[row].get(w, []))
            lines.append(f"- {row}, {w}: {values}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--no-ssh", action="store_true")
    parser.add_argument("--workload", action="append", choices=list(WORKLOADS))
    parser.add_argument(
        "--py-spy",
        metavar="DIR",
        type=Path,
        help="profile both daemons of every tree during every measurement into DIR "
        "(py-spy record --format raw; the numbers then carry the profiler's cost)",
    )
    args = parser.parse_args(argv)
    workloads = args.workload or [w for w in WORKLOADS if w != "check"]
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("ours", str(REPO))]
    if os.geteuid() != 0:
        print("bench/dnat.py needs root (network namespaces and iptables)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tt-dnat-"))
    work.chmod(0o755)
    nets: Namespaces | None = None
    shared = Processes(work)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        nets = Namespaces(work)
        pki = mintPKI(work)
        os.environ["TT_DNAT_PKI"] = str(pki)
        startNginx(nets, work, shared)
        direct = f"http://{NODE_IP}:{NGINX_PORT}/"
        # (over TLS only through the tunnels: nginx's certificate is the edge CA's)
        results["direct"] = {
            w: [measure(nets, w, direct, args.seconds)] for w in workloads if w not in TLS
        }
        log(f"direct: {results['direct']}")
        # From now on the node is out of the cloud's direct reach (as behind
        # NAT): only the tunnels deliver, so no row can be measured directly
        # by mistake (a DNAT rule not in place yet, say).
        reject = ["-p", "tcp", "-m", "multiport", "--dports", f"{NGINX_PORT},{NGINX_TLS_PORT}",
                  "-j", "REJECT", "--reject-with", "tcp-reset"]  # fmt: skip
        run(*nets.inside(nets.edge, ["iptables", "-A", "INPUT", "-i", "e0", *reject]))
        if not args.no_ssh:
            startSSH(nets, work, shared)
            results["ssh -R"] = {w: [] for w in workloads}
        for name, _ in trees:
            results[name] = {w: [] for w in workloads}
        cpu: dict[str, dict[str, list[float]]] = {
            row: {w: [] for w in workloads} for row in results
        }
        sshRoots = [] if args.no_ssh else [shared.get(n).process.pid for n in ("sshd", "ssh")]
        for number in range(1, args.rounds + 1):
            if not args.no_ssh:
                for w in workloads:
                    before = cpuSeconds(sshRoots)
                    rate = measure(nets, w, f"http://127.0.0.1:{SSH_FORWARD}/", args.seconds)
                    results["ssh -R"][w].append(rate)
                    cpu["ssh -R"][w].append(
                        perRequest(cpuSeconds(sshRoots) - before, rate, w, args)
                    )
                log(f"round {number}, ssh -R: {results['ssh -R']}")
            for name, path in trees:
                procs = Processes(work)
                try:
                    startOurs(nets, work, pki, Path(path), procs)
                    roots = [procs.get(d).process.pid for d in DAEMONS]
                    for w in workloads:
                        spies = profile(args.py_spy, procs, f"{name}-{w}-{number}", args.seconds)
                        before = cpuSeconds(roots)
                        rate = measure(nets, w, direct, args.seconds)
                        results[name][w].append(rate)
                        cpu[name][w].append(perRequest(cpuSeconds(roots) - before, rate, w, args))
                        for spy in spies:
                            spy.wait(timeout=60)
                finally:
                    procs.stopAll()
                log(f"round {number}, {name}: {results[name]}")
        print(f"# DNAT path, {args.rounds} rounds x {args.seconds} s, load {os.getloadavg()}")
        print(table(results, workloads))
        print()
        print("CPU of both ends of each tunnel per request (per MB for 10 MiB GETs), µs, medians:")
        print()
        print("| row | " + " | ".join(workloads) + " |")
        print("|---" * (len(workloads) + 1) + "|")
        for row, values in cpu.items():
            if row == "direct":
                continue
            cells = [
                f"{statistics.median(values[w]):.0f}" if values[w] else "–" for w in workloads
            ]
            print(f"| {row} | " + " | ".join(cells) + " |")
        return 0
    finally:
        shared.stopAll()
        if nets is not None:
            nets.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
