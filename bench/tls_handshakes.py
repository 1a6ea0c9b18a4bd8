"""
TLS handshakes per second on the HTTPS path, full and resumed, on both of
its legs (issue 15), and the effect on a new connection per request
through the HTTPS proxy listener; with C{--tree}, several checkouts of
twisted-tunnel interleaved round by round (an A/B of a change against
its parent).

    .venv/bin/python bench/tls_handshakes.py [--seconds 4] [--count 3000]
        [--rounds 3] [--tree NAME=PATH ...] [--leg upstream|listener|path ...]
        [--kubelet PATH | --nginx] [--concurrency N]

The legs:

  upstream  the https policy's TLS client (C{proxyClientOptions}, the
            creator made as C{ProxyRouter} makes it) towards a kubelet: one
            connection after another (C{GET /healthz}, C{Connection:
            close}), in a child process of its own whose CPU is what we
            count.  Each tree once as the router uses it, and once with a
            creator used as is (no destination: full handshakes always).
            The kubelet is the interop suite's (C{tests/interop/kubelet},
            Go's crypto/tls, as a real kubelet's), else nginx.
  listener  the HTTPS proxy listener's TLS server (C{proxyServingOptions}),
            in a child process whose CPU is counted, with a client
            presenting a certificate; and the same with sessions on, as
            C{--proxy-serving-session-lifetime=300} makes it (opt-in:
            docs/security.md says why), with a client that offers its
            previous session and one that does not.
  path      the whole HTTPS path, C{edge-tunnel-server} (HTTPS proxy
            listener, https policy towards the kubelet) and an agent from
            each tree: a new client connection (with a client certificate)
            per request, C{Host: 127.0.0.2:PORT}; requests per second and
            the server's CPU per request.  Once as the daemon starts by
            default, and once (where the tree has the option) with
            C{--proxy-serving-session-lifetime=300} and a client that
            offers its previous session.

Everything listens and connects on loopback (127.0.0.1, 127.0.0.2).
Every measurement is bounded by C{--count} connections and C{--seconds};
the script stops exactly the processes it started (by PID) and removes its
temporary directory.  Prints a Markdown table; the load average before and
after goes with it (others share the machine).
"""

from __future__ import annotations

import argparse
import glob
import inspect
import itertools
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
from _procs import REPO, BenchError, Processes, freePort, twistd  # noqa: E402

NODE = "edge-1"
NODE_IP = "127.0.0.2"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Where a tree's server options are, to tell whether it has one.
SERVER_OPTIONS = Path("twisted_tunnel/tap/server.py")


def log(message: str) -> None:
    print(f"[tls_handshakes] {message}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpuSeconds(pid: int) -> float:
    """User + system CPU of process C{pid} so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def waitFor(
    what: str, condition: Callable[[], bool], procs: Processes, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        procs.checkAlive()
        if time.monotonic() > deadline:
            raise BenchError(f"gave up waiting for {what}")
        time.sleep(0.05)


def tcpOpen(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- the certificates ------------------------------------------------------------------------


def mintPKI(work: Path) -> Path:
    """
    The tunnel's CA (server, agent, the listener's client) and a kubelet
    CA (the kubelet's serving certificate and the proxy client certificate
    it accepts), as kube-apiserver's world has them.
    """
    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient, mintServer, writePair

    pki = work / "pki"
    pki.mkdir()
    ca = mintCA("tunnel CA")
    writePair(ca, pki / "ca.pem", pki / "ca-key.pem")
    writePair(
        mintServer(ca, ["localhost", "127.0.0.1"]), pki / "server.pem", pki / "server-key.pem"
    )
    writePair(mintAgent(ca, NODE, [NODE_IP]), pki / "agent.pem", pki / "agent-key.pem")
    writePair(mintClient(ca, "kube-apiserver"), pki / "client.pem", pki / "client-key.pem")
    kubeletCA = mintCA("kubelet CA")
    writePair(kubeletCA, pki / "kubelet-ca.pem", pki / "kubelet-ca-key.pem")
    writePair(
        mintServer(kubeletCA, [NODE_IP, "127.0.0.1"]), pki / "kubelet.pem", pki / "kubelet-key.pem"
    )
    writePair(
        mintClient(kubeletCA, "kube-apiserver-kubelet-client"),
        pki / "proxy-client.pem",
        pki / "proxy-client-key.pem",
    )
    return pki


# -- child processes (run with PYTHONPATH set to the tree measured) ---------------------------


def childUpstream(a: dict[str, Any]) -> dict[str, Any]:
    """
    Connections from the https policy's TLS client to the kubelet, one
    after another (C{concurrency} at a time), in this process: how many,
    how long, our CPU, and how many OpenSSL says were resumed.
    """
    from OpenSSL._util import lib
    from twisted.internet import defer, protocol, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

    from twisted_tunnel.tls import loadCredentials, proxyClientOptions

    try:
        from twisted_tunnel.tls.upstream import IDestinationTLS
    except ImportError:  # a tree without it: the router uses the creator as is
        IDestinationTLS = None  # noqa: N806

    pki = Path(a["pki"])
    creds = loadCredentials(
        str(pki / "kubelet-ca.pem"),
        str(pki / "proxy-client.pem"),
        str(pki / "proxy-client-key.pem"),
    )
    upstream = proxyClientOptions(creds, verify=True)
    host, port = a["host"], a["port"]
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()

    def creator() -> Any:
        made = upstream(host)
        if a["asRouted"] and IDestinationTLS is not None:
            resuming = IDestinationTLS(made, None)
            if resuming is not None:
                return resuming.forDestination(NODE, host, port)
        return made

    class Get(protocol.Protocol):
        def __init__(self) -> None:
            self.done: defer.Deferred[tuple[bool, bool]] = defer.Deferred()
            self.head = b""

        def connectionMade(self) -> None:
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            if len(self.head) < 12:
                self.head += data

        def connectionLost(self, reason: Any) -> None:
            handle = self.transport.getHandle()
            self.done.callback(
                (self.head.startswith(b"HTTP/1.1 200"), bool(lib.SSL_session_reused(handle._ssl)))
            )

    counts = {"n": 0, "ok": 0, "resumed": 0}
    deadline = time.monotonic() + a["seconds"]

    async def worker(limit: int) -> None:
        while counts["n"] < limit and time.monotonic() < deadline:
            counts["n"] += 1
            get = Get()
            endpoint = wrapClientTLS(creator(), TCP4ClientEndpoint(reactor, "127.0.0.1", port))
            await connectProtocol(endpoint, get)
            ok, resumed = await get.done
            counts["ok"] += ok
            counts["resumed"] += resumed

    result: dict[str, Any] = {}

    async def main() -> None:
        await worker(1)  # the first connection alone: a session to resume from
        counts.update(n=0, ok=0, resumed=0)
        start = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_SELF)
        await defer.gatherResults(
            [defer.Deferred.fromCoroutine(worker(a["count"])) for _ in range(a["concurrency"])]
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        result.update(
            counts,
            wall=time.monotonic() - start,
            cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        )

    def run() -> None:
        d = defer.Deferred.fromCoroutine(main())
        d.addErrback(lambda f: result.update(error=f.getErrorMessage()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    return result


def childListener(a: dict[str, Any]) -> None:
    """
    The HTTPS proxy listener's TLS (C{proxyServingOptions}), or with
    C{whatIf} the same with sessions on (C{sessionLifetime=300}, as
    C{--proxy-serving-session-lifetime=300}; in a tree from before that
    option, sessions and tickets turned on by hand), answering every
    request with a small response and closing; runs until SIGTERM.
    """
    from twisted.internet import protocol, reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint
    from twisted.internet.ssl import CertificateOptions, trustRootFromCertificates

    from twisted_tunnel.tls import (
        HTTP_1_1,
        _ownCertificateOptions,
        _refuseNodeCertificates,
        loadCredentials,
        proxyServingOptions,
    )

    pki = Path(a["pki"])
    creds = loadCredentials(
        str(pki / "ca.pem"), str(pki / "server.pem"), str(pki / "server-key.pem")
    )
    if a["whatIf"] and "sessionLifetime" in inspect.signature(proxyServingOptions).parameters:
        options = proxyServingOptions(creds, sessionLifetime=300)
    elif a["whatIf"]:  # a tree from before --proxy-serving-session-lifetime
        options = CertificateOptions(
            trustRoot=trustRootFromCertificates(creds.authority),
            acceptableProtocols=HTTP_1_1,
            enableSessions=True,
            enableSessionTickets=True,
            **_ownCertificateOptions(creds),
        )
        context = options.getContext()
        context.set_verify(context.get_verify_mode(), _refuseNodeCertificates)
    else:
        options = proxyServingOptions(creds)

    class Answer(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
            )
            self.transport.loseConnection()

    factory = protocol.Factory.forProtocol(Answer)
    SSL4ServerEndpoint(reactor, a["port"], options, interface="127.0.0.1").listen(factory)
    reactor.run()


def childClient(a: dict[str, Any]) -> dict[str, Any]:
    """
    A client of the HTTPS proxy listener (Python's C{ssl}, in C): a new
    connection per request, with a client certificate, C{concurrency}
    threads; with C{resume}, each offers its previous session.
    """
    pki = Path(a["pki"])
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client-key.pem"))
    context.check_hostname = False
    request = (
        f"GET {a['path']} HTTP/1.1\r\nHost: {a['host']}\r\nConnection: close\r\n\r\n".encode()
    )
    counts = {"n": 0, "ok": 0, "resumed": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + a["seconds"]

    def one(session: ssl.SSLSession | None) -> ssl.SSLSession | None:
        with socket.create_connection(("127.0.0.1", a["port"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(request)
                head = b""
                while chunk := tls.recv(65536):
                    head = head or chunk
                with lock:
                    counts["ok"] += head.startswith(b"HTTP/1.1 200")
                    counts["resumed"] += tls.session_reused
                return tls.session if a["resume"] else None

    def worker() -> None:
        session = None
        while time.monotonic() < deadline:
            with lock:
                if counts["n"] >= a["count"]:
                    return
                counts["n"] += 1
            session = one(session)

    one(None)
    counts.update(n=0, ok=0, resumed=0)
    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(a["concurrency"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(counts, wall=time.monotonic() - start)


def child(mode: str, arguments: str) -> int:
    a = json.loads(arguments)
    if mode == "upstream":
        print(json.dumps(childUpstream(a)), flush=True)
    elif mode == "listener":
        childListener(a)
    elif mode == "client":
        print(json.dumps(childClient(a)), flush=True)
    else:
        raise SystemExit(f"unknown child {mode}")
    return 0


def runChild(tree: Path, mode: str, a: dict[str, Any], timeout: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, json.dumps(a)],
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"child {mode} ({tree}) failed: {out.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise BenchError(f"child {mode} ({tree}): {result['error']}")
    return result


# -- the servers -------------------------------------------------------------------------------


def kubeletBinary(given: str | None) -> str | None:
    if given:
        return given
    found = sorted(
        glob.glob(os.path.expanduser("~/.cache/twisted-tunnel/interop/kubelet-*/bin/kubelet"))
    )
    return found[-1] if found else None


def startKubelet(procs: Processes, work: Path, pki: Path, binary: str | None) -> tuple[int, str]:
    """
    The kubelet on C{NODE_IP}:port (and 127.0.0.1:port for the upstream
    leg): the interop suite's (Go) if built, else nginx.  Both demand a
    client certificate of the kubelet CA.
    """
    port = freePort()
    if binary:
        root = work / "kubelet-root"
        root.mkdir()
        for address in (NODE_IP, "127.0.0.1"):
            procs.start(
                f"kubelet-{address}",
                [
                    binary, f"--listen={address}:{port}", f"--cert={pki}/kubelet.pem",
                    f"--key={pki}/kubelet-key.pem", f"--client-ca={pki}/kubelet-ca.pem",
                    f"--node-name={NODE}", f"--root={root}/{address}", "--disable-http2",
                ],
            )  # fmt: skip
        kind = "kubelet (interop suite, Go crypto/tls)"
    else:
        if shutil.which("nginx") is None:
            raise BenchError(
                "neither the interop kubelet (tests/interop/build.py kubelet) nor nginx"
            )
        listen = "".join(f"listen {a}:{port} ssl; " for a in (NODE_IP, "127.0.0.1"))
        (work / "nginx.conf").write_text(
            f"""worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off;
  server {{ {listen} ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {pki}/kubelet.pem; ssl_certificate_key {pki}/kubelet-key.pem;
    ssl_client_certificate {pki}/kubelet-ca.pem; ssl_verify_client on;
    location = /healthz {{ return 200 "ok"; }} }} }}
"""
        )
        procs.start("nginx", ["nginx", "-e", f"{work}/nginx.err", "-c", f"{work}/nginx.conf"])
        kind = "nginx"
    waitFor(kind, lambda: tcpOpen(port) and tcpOpen(port, NODE_IP), procs)
    return port, kind


def startOurs(
    procs: Processes,
    work: Path,
    pki: Path,
    tree: Path,
    name: str,
    kubeletPort: int,
    *serverArguments: str,
) -> int:
    """
    edge-tunnel-server (HTTPS proxy listener, https policy, and
    C{serverArguments}) and an agent, from C{tree}.
    """
    config = work / f"cfg-{name}.yaml"
    config.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edge-tunnel-server-cfg\n"
        f'data:\n  https-proxy-ports: "{kubeletPort}"\n'
    )
    env = dict(os.environ, PYTHONPATH=str(tree))
    tunnel, https = freePort(), freePort()
    procs.start(
        f"server-{name}",
        twistd(
            "edge-tunnel-server",
            f"--tunnel-endpoint=tcp:{tunnel}:interface=127.0.0.1",
            f"--ca={pki}/ca.pem", f"--cert={pki}/server.pem", f"--key={pki}/server-key.pem",
            "--http-proxy-endpoint=none", "--tcp-proxy-endpoint=none", "--connect-endpoint=none",
            f"--https-proxy-endpoint=tcp:{https}:interface=127.0.0.1",
            f"--proxy-serving-cert={pki}/server.pem", f"--proxy-serving-key={pki}/server-key.pem",
            f"--proxy-client-cert={pki}/proxy-client.pem",
            f"--proxy-client-key={pki}/proxy-client-key.pem",
            f"--proxy-client-ca={pki}/kubelet-ca.pem",
            f"--config={config}", "--no-iptables", *serverArguments,
        ),
        env=env,
    )  # fmt: skip
    waitFor(f"server {name}", lambda: tcpOpen(tunnel) and tcpOpen(https), procs)
    procs.start(
        f"agent-{name}",
        twistd(
            "edge-tunnel-agent",
            f"--server=127.0.0.1:{tunnel}",
            f"--ca={pki}/ca.pem", f"--cert={pki}/agent.pem", f"--key={pki}/agent-key.pem",
            f"--node-ip={NODE_IP}",
        ),
        env=env,
    )  # fmt: skip
    return https


def stop(procs: Processes, *names: str) -> None:
    for name in names:
        entry = procs.get(name)
        if entry.process.poll() is None:
            entry.process.terminate()
            try:
                entry.process.wait(5)
            except subprocess.TimeoutExpired:
                entry.process.kill()
                entry.process.wait()
    procs.started = [e for e in procs.started if e.name not in names]


# -- the legs ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What every leg measures with: options, trees, certificates, processes, kubelet, results."""

    args: argparse.Namespace
    trees: dict[str, Path]
    pki: Path
    procs: Processes
    work: Path
    kubeletPort: int
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def legUpstream(run: Run) -> None:
    args, pki, port, results = run.args, run.pki, run.kubeletPort, run.results
    for name, tree in run.trees.items():
        for asRouted in (False, True):
            how = "as routed" if asRouted else "no destination (full)"
            row = f"upstream {name} {how} c={args.concurrency}"
            a = dict(
                pki=str(pki), host="127.0.0.1", port=port, count=args.count, seconds=args.seconds,
                concurrency=args.concurrency, asRouted=asRouted,
            )  # fmt: skip
            got = runChild(tree, "upstream", a, args.seconds + 60)
            results.setdefault(row, []).append(got)
            log(
                f"{row}: {rate(got):.0f}/s, {perUnit(got):.0f} µs CPU each, "
                f"resumed {got['resumed']}/{got['n']}"
            )


def legListener(run: Run) -> None:
    args, pki, procs, results = run.args, run.pki, run.procs, run.results
    for name, tree in run.trees.items():
        for whatIf in (False, True):
            port = freePort()
            label = f"listener-{name}-{whatIf}"
            procs.start(
                label,
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "listener",
                    json.dumps(dict(pki=str(pki), port=port, whatIf=whatIf)),
                ],
                env=dict(os.environ, PYTHONPATH=str(tree)),
            )
            waitFor(label, lambda: tcpOpen(port), procs)  # noqa: B023
            pid = procs.get(label).process.pid
            for resume in (False, True) if whatIf else (True,):
                before = cpuSeconds(pid)
                a = dict(
                    pki=str(pki), port=port, host="localhost", path="/", count=args.count,
                    seconds=args.seconds, concurrency=args.concurrency, resume=resume,
                )  # fmt: skip
                got = runChild(REPO, "client", a, args.seconds + 60)
                got["cpu"] = cpuSeconds(pid) - before
                row = (
                    f"listener {name} {'sessions on' if whatIf else 'by default'}, "
                    f"client {'offers its session' if resume else 'full'} c={args.concurrency}"
                )
                results.setdefault(row, []).append(got)
                log(
                    f"{row}: {rate(got):.0f}/s, {perUnit(got):.0f} µs server CPU each, "
                    f"resumed {got['resumed']}/{got['n']}"
                )
            stop(procs, label)


def legPath(run: Run) -> None:
    args, pki, kubeletPort, procs, results = (
        run.args,
        run.pki,
        run.kubeletPort,
        run.procs,
        run.results,
    )
    for (name, tree), lifetime in itertools.product(run.trees.items(), (0, 300)):
        option = f"--proxy-serving-session-lifetime={lifetime}"
        if lifetime and option[2:].split("=")[0] not in (tree / SERVER_OPTIONS).read_text():
            continue  # a tree from before the option
        extra = [option] if lifetime else []
        https = startOurs(procs, run.work, pki, tree, name, kubeletPort, *extra)
        a = dict(
            pki=str(pki), port=https, host=f"{NODE_IP}:{kubeletPort}", path="/healthz",
            count=args.count,
            seconds=args.seconds, concurrency=args.concurrency, resume=bool(lifetime),
        )  # fmt: skip

        def ready(a: dict[str, Any] = a) -> bool:
            try:
                return runChild(REPO, "client", dict(a, count=1, seconds=5), 30)["ok"] == 1
            except BenchError:
                return False

        waitFor(f"the HTTPS path through {name}", ready, procs, timeout=40)
        pid = procs.get(f"server-{name}").process.pid
        before = cpuSeconds(pid)
        got = runChild(REPO, "client", a, args.seconds + 60)
        got["cpu"] = cpuSeconds(pid) - before
        row = f"path {name}: new connection per request c={args.concurrency}" + (
            f", {option}, the client resuming" if lifetime else ""
        )
        results.setdefault(row, []).append(got)
        log(
            f"{row}: {rate(got):.0f} req/s, {perUnit(got):.0f} µs server CPU each, "
            f"ok {got['ok']}/{got['n']}"
        )
        stop(procs, f"agent-{name}", f"server-{name}")


LEGS: dict[str, Callable[[Run], None]] = {
    "upstream": legUpstream,
    "listener": legListener,
    "path": legPath,
}


def rate(r: dict[str, Any]) -> float:
    return float(r["n"] / r["wall"]) if r["wall"] else 0.0


def perUnit(r: dict[str, Any]) -> float:
    return float(r["cpu"] / r["n"] * 1e6) if r["n"] else 0.0


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| measured | per second (median) | CPU µs each (median) | resumed | runs |",
        "|---|---|---|---|---|",
    ]
    for row, runs in results.items():
        rates = ", ".join(f"{rate(r):.0f}" for r in runs)
        lines.append(
            f"| {row} | {statistics.median(rate(r) for r in runs):.0f} ({rates}) "
            f"| {statistics.median(perUnit(r) for r in runs):.0f} "
            f"| {sum(r['resumed'] for r in runs)}/{sum(r['n'] for r in runs)} | {len(runs)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=4.0, help="bound of each measurement")
    parser.add_argument("--count", type=int, default=3000, help="most connections per measurement")
    parser.add_argument("--concurrency", type=int, default=1, help="connections at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument(
        "--leg",
        action="append",
        choices=["upstream", "listener", "path"],
        help="default: all three",
    )
    parser.add_argument(
        "--kubelet", help="the interop kubelet binary (default: the build cache's)"
    )
    parser.add_argument("--nginx", action="store_true", help="nginx as the kubelet")
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if not (
        0 < args.seconds <= 60
        and 0 < args.count <= 100_000
        and 0 < args.rounds <= 10
        and 0 < args.concurrency <= 64
    ):
        parser.error(
            "--seconds in (0, 60], --count in (0, 100000], --rounds in (0, 10], "
            "--concurrency in (0, 64]"
        )
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(REPO)}
    treePaths = {name: Path(path).resolve() for name, path in trees.items()}
    legs = args.leg or ["upstream", "listener", "path"]
    work = Path(tempfile.mkdtemp(prefix="tls-handshakes-"))
    procs = Processes(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        log(f"load average before: {loadavg()}")
        pki = mintPKI(work)
        kubeletPort, kind = startKubelet(
            procs, work, pki, None if args.nginx else kubeletBinary(args.kubelet)
        )
        log(f"kubelet: {kind} on {NODE_IP}:{kubeletPort} and 127.0.0.1:{kubeletPort}")
        run = Run(args, treePaths, pki, procs, work, kubeletPort)
        for round_ in range(args.rounds):
            log(f"round {round_ + 1} of {args.rounds}")
            for leg in legs:
                LEGS[leg](run)
        print(
            f"kubelet: {kind}; trees: {trees}; {args.rounds} rounds, each run ≤ {args.count} "
            f"connections and ≤ {args.seconds:g} s, concurrency {args.concurrency}"
        )
        print(f"load average after: {loadavg()}\n")
        print(table(run.results))
    except BenchError as e:
        log(f"failed: {e}")
        return 1
    finally:
        procs.stopAll()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
