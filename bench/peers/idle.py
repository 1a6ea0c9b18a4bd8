"""
Memory per idle tunnel, for each TCP-forwarding peer: one server and K
clients, each client its own process with its own tunnel (one forward), as
K edge nodes would run them.

For each peer: start its server (configured for the K forwards: rathole's
server lists its services), note its memory; start the clients in batches,
and after each batch wait until every new tunnel carries a probe (a few
bytes echoed through it, each wait bounded); once all K are up, let them
sit idle for C{--settle} seconds and note the server's memory again and
every client's.  Then stop exactly the processes it started, by PID.

What it reports, per peer: the server's RSS before and after, and its growth
per tunnel (what one more idle node costs the public side); each client's
RSS and PSS (the mean; PSS charges each process its share of the pages the
K processes of one binary share, so it is what K clients really add up to).

Memory is checked before it is spent: after the first batch the script
extrapolates the clients' PSS to K and stops adding clients if that would
pass C{--budget-mib} (4 GiB by default; the machine is shared), and says so.
Go clients (frpc, chisel) take some 10-17 MiB of RSS each but about 2 MiB
of PSS, so 1,000 of them fit; our agent is a Python process (some 20 MiB of
PSS: 50 of them take about 1.8 GiB), so its K is 50.

    usage: python bench/peers/idle.py [--settle S] [--budget-mib M] [PEER=K ...]
           PEER: rathole frp chisel, or ours (twisted-tunnel: real agent processes)
           (default: rathole=1000 frp=1000 chisel=1000 ours=50)
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
for entry in (str(HERE.parent.parent), str(HERE.parent), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import build as peerbuild  # noqa: E402  (bench/peers/build.py)
from _procs import BenchError, Processes, freePort  # noqa: E402  (bench/_procs.py)
from smoke import EchoServer, probe, tcpDialer  # noqa: E402  (bench/peers/smoke.py)
from starters import PEERS, Forward, memoryKiB, waitListening  # noqa: E402

DEFAULT_COUNTS = {"rathole": 1000, "frp": 1000, "chisel": 1000, "ours": 50}
#: Clients started before their tunnels are probed.
BATCH = 50
#: How long one batch's tunnels may take to carry their probes.
BATCH_SECONDS = 60.0
#: The whole of one peer's run, start to stop.
PEER_SECONDS = 600.0


@dataclass
class IdleResult:
    peer: str
    asked: int
    clients: int = 0
    serverBefore: tuple[int, int] = (0, 0)  # RSS, PSS in KiB, no client
    serverAfter: tuple[int, int] = (0, 0)  # with every client connected and idle
    clientMemory: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def perTunnelKiB(self) -> float | None:
        if not self.clients:
            return None
        return (self.serverAfter[0] - self.serverBefore[0]) / self.clients


def overBudget(pids: list[int], count: int, budgetKiB: int, what: str) -> str | None:
    """
    Why not to start all C{count} clients, if their PSS, extrapolated from
    the mean of those running (C{pids}), would pass the budget.
    """
    pss = statistics.mean(memoryKiB(pid)[1] for pid in pids)
    if pss * count <= budgetKiB:
        return None
    return (
        f"stopped at {len(pids)} {what}: {count} would take about {pss * count / 1024:.0f} "
        f"MiB of PSS, more than --budget-mib {budgetKiB // 1024}"
    )


def measureIdle(
    result: IdleResult, procs: Processes, server: int, clients: list[str], settle: float
) -> None:
    """After C{settle} idle seconds, the server's memory and every client's."""
    time.sleep(settle)
    procs.checkAlive()
    result.serverAfter = memoryKiB(server)
    result.clientMemory = [memoryKiB(procs.get(name).process.pid) for name in clients]


def runPeer(name: str, count: int, settle: float, budgetKiB: int, work: Path) -> IdleResult:
    peer = PEERS[name]
    result = IdleResult(name, count)
    bins = peerbuild.cached(peer.build)
    if bins is None:
        result.note = f"not built: {peerbuild.failure(peer.build)}"
        return result
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes(work, say=lambda message: print(message, file=sys.stderr, flush=True))
    echo = EchoServer()
    started = time.monotonic()
    stop = started + PEER_SECONDS
    try:
        port = freePort()
        forwards = [Forward(f"node{i}", echo.port, freePort()) for i in range(count)]
        procs.start(peer.server, peer.serverCommand(bins, work, port, forwards))
        waitListening(port, procs, peer.server)
        time.sleep(1.0)
        serverPid = procs.get(peer.server).process.pid
        result.serverBefore = memoryKiB(serverPid)
        for first in range(0, count, BATCH):
            batch = forwards[first : first + BATCH]
            for i, forward in enumerate(batch, first):
                procs.start(
                    f"{peer.client}-{i}", peer.clientCommand(bins, work, port, [forward], i)
                )
            deadline = min(stop, time.monotonic() + BATCH_SECONDS)
            for forward in batch:
                probe(tcpDialer(forward.remote), deadline)
            procs.checkAlive()
            result.clients = first + len(batch)
            names = [f"{peer.client}-{i}" for i in range(result.clients)]
            if first == 0 and result.clients < count:
                pids = [procs.get(name).process.pid for name in names]
                result.note = overBudget(pids, count, budgetKiB, "clients") or ""
                if result.note:
                    break
            print(f"{name}: {result.clients} tunnels up", file=sys.stderr, flush=True)
        measureIdle(result, procs, serverPid, names, settle)
    except BenchError as e:
        result.note = str(e) if not result.note else f"{result.note}; {e}"
    finally:
        procs.stopAll()
        echo.close()
        result.seconds = time.monotonic() - started
    return result


def runOurs(count: int, settle: float, budgetKiB: int, work: Path) -> IdleResult:
    """
    The same for twisted-tunnel: one edge-tunnel-server and K real
    edge-tunnel-agent processes (twistd), each with its own node name,
    certificate and IP as bench/agents.py gives them; a tunnel is up when the
    server logs its agent's connection.  (bench/agents.py measures the
    server with 10,000 simulated agents in one process; this measures real
    agent processes, as the peers' clients are measured.)
    """
    from _procs import daemonEnv, twistd
    from agents import nodeIP, nodeName

    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintServer, writePair

    result = IdleResult("twisted-tunnel", count)
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes(work, say=lambda message: print(message, file=sys.stderr, flush=True))
    started = time.monotonic()
    stop = started + PEER_SECONDS
    env = daemonEnv()
    try:
        ca = mintCA()
        writePair(ca, work / "ca.pem", work / "ca-key.pem")
        writePair(mintServer(ca, ["127.0.0.1"]), work / "server.pem", work / "server-key.pem")
        port = freePort()
        server = "edge-tunnel-server"
        procs.start(
            server,
            twistd(
                server,
                f"--tunnel-endpoint=tcp:{port}:interface=127.0.0.1",
                f"--ca={work}/ca.pem",
                f"--cert={work}/server.pem",
                f"--key={work}/server-key.pem",
                "--connect-endpoint=none",
                "--http-proxy-endpoint=none",
                "--https-proxy-endpoint=none",
                "--tcp-proxy-endpoint=none",
                "--no-iptables",
            ),
            env=env,
        )
        waitListening(port, procs, server)
        time.sleep(1.0)
        serverPid = procs.get(server).process.pid
        serverLog = procs.get(server).logPath
        result.serverBefore = memoryKiB(serverPid)
        for first in range(0, count, BATCH):
            last = min(count, first + BATCH)
            for i in range(first + 1, last + 1):
                pair = (work / f"agent-{i}.pem", work / f"agent-{i}-key.pem")
                writePair(mintAgent(ca, nodeName(i), [nodeIP(i)]), *pair)
                procs.start(
                    f"agent-{i}",
                    twistd(
                        "edge-tunnel-agent",
                        f"--server=127.0.0.1:{port}",
                        f"--ca={work}/ca.pem",
                        f"--cert={pair[0]}",
                        f"--key={pair[1]}",
                        f"--node-ip={nodeIP(i)}",
                    ),
                    env=env,
                )
            deadline = min(stop, time.monotonic() + BATCH_SECONDS)
            while serverLog.read_text(errors="replace").count(" connected from ") < last:
                procs.checkAlive()
                if time.monotonic() > deadline:
                    raise BenchError(f"not every agent of {first + 1}..{last} connected in time")
                time.sleep(0.5)
            result.clients = last
            names = [f"agent-{i}" for i in range(1, last + 1)]
            if first == 0 and last < count:
                pids = [procs.get(name).process.pid for name in names]
                result.note = overBudget(pids, count, budgetKiB, "agents") or ""
                if result.note:
                    break
            print(f"twisted-tunnel: {last} tunnels up", file=sys.stderr, flush=True)
        measureIdle(result, procs, serverPid, names, settle)
    except BenchError as e:
        result.note = str(e) if not result.note else f"{result.note}; {e}"
    finally:
        procs.stopAll()
        result.seconds = time.monotonic() - started
    return result


def report(results: list[IdleResult], settle: float) -> str:
    lines = [
        "| peer | clients (asked) | server RSS before / after, MiB | server RSS per tunnel, KiB "
        "| client RSS, MiB (mean) | client PSS, MiB (mean) | clients' PSS together, MiB "
        "| took | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per = r.perTunnelKiB()
        cells = ["-"] * 5
        if r.clientMemory and per is not None:
            rss = [m[0] for m in r.clientMemory]
            pss = [m[1] for m in r.clientMemory]
            cells = [
                f"{r.serverBefore[0] / 1024:.1f} / {r.serverAfter[0] / 1024:.1f}",
                f"{per:.0f}",
                f"{statistics.mean(rss) / 1024:.1f}",
                f"{statistics.mean(pss) / 1024:.2f}",
                f"{sum(pss) / 1024:.0f}",
            ]
        row = [r.peer, f"{r.clients} ({r.asked})", *cells, f"{r.seconds:.0f} s", r.note]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "After every client's tunnel carried one probe (twisted-tunnel: the server logged",
        f"every agent's connection), {settle:.0f} s idle. RSS and PSS from",
        "/proc/PID/smaps_rollup; per tunnel: (server RSS after - before) / clients.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("counts", nargs="*", metavar="PEER=K", help="peers and their clients")
    parser.add_argument("--settle", type=float, default=10.0, help="idle seconds before measuring")
    parser.add_argument("--budget-mib", type=int, default=4096, help="clients' PSS at most")
    args = parser.parse_args(argv)
    counts = dict(DEFAULT_COUNTS)
    if args.counts:
        counts = {}
        for item in args.counts:
            name, _, k = item.partition("=")
            if name not in (*PEERS, "ours") or not k.isdigit() or not 0 < int(k) <= 2000:
                known = ", ".join((*PEERS, "ours"))
                parser.error(f"{item}: expected PEER=K, PEER one of {known}, K 1-2000")
            counts[name] = int(k)
    # Each client is a connection (and rathole's server a listener per service) on the server.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workRoot = Path(tempfile.mkdtemp(prefix="tt-peers-idle-"))
    results = []
    try:
        for name, count in counts.items():
            print(f"{name}: {count} clients", file=sys.stderr, flush=True)
            run = runOurs if name == "ours" else partial(runPeer, name)
            results.append(run(count, args.settle, args.budget_mib * 1024, workRoot / name))
    finally:
        shutil.rmtree(workRoot, ignore_errors=True)
    print(report(results, args.settle))
    return 0 if all(r.clients for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
