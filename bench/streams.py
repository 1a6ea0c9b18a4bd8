"""
Many streams at once: thousands of concurrent downloads through one
edge-tunnel-server and several edge-tunnel-agents, every byte checked, and
a stalled reader next to request/response traffic.

Why (issue 5, part 4): on OpenShift/Konnectivity, 2,000 concurrent exec
sessions of 5 MB each gave 54,119 errors.  A tunnel that carries many
streams inside one connection must deliver every byte of every stream, keep
its memory bounded by the per-stream windows however many streams are open,
and not let one stream whose reader stopped slow the others down.

What runs, all on 127.0.0.0/8, in a temporary directory removed at the end:

 - one C{edge-tunnel-server} (twistd, started as C{bench/bench.py} starts
   it) with its CONNECT door on 127.0.0.1;
 - C{--agents} C{edge-tunnel-agent}s for nodes edge-01, edge-02, ... with
   node IPs 127.0.0.11, 127.0.0.12, ..., each with a certificate of its own;
 - one edge service process (this file, C{streams.py edge}) with a listener
   on every node IP, which each agent dials for its node;
 - this driver: one asyncio process holding every client socket.

Two phases.  Many streams: C{--streams} CONNECTs spread over the agents and
open at once.  Each asks the edge service for C{--bytes} bytes of a
pseudo-random pool at an offset of its own, compares every chunk with the
pool as it arrives, and expects EOF right after the last byte.  A stalled
reader: C{--pingers} streams to the first node bounce 64-byte messages for
C{--stall-seconds}; then the same again while one more stream on that tunnel
is flooded by its edge service and never read.  The stalled reader runs
first, on fresh daemons, so that what the stalled stream costs in memory is
not hidden in heap that the many streams grew and freed.

Every failure is counted by kind (connect errors, CONNECT refusals, resets,
early EOF, extra or wrong bytes, timeouts).  "Byte-exact" means each chunk
was compared with the bytes expected at its position (C{bytes.startswith}
at an offset: a memcmp without a copy) as it arrived: as strict as a hash of
the whole stream, it names the first wrong byte, and it costs far less CPU
than hashing 10 GB on the two cores that also run the tunnel.  The report
also gives the tunnel processes' peak RSS, their CPU and the other
processes' CPU (the machine is shared), and the kernel's TCP memory and
retransmissions, machine-wide (see L{KernelTCP}).

The driver stops by itself (every wait has a deadline), stops exactly the
processes it started (by PID) and prints a Markdown report on stdout; its
exit status is 1 if any stream failed.

    usage: make bench-streams [BENCH_STREAMS_ARGS="..."]
           streams.py [--streams N] [--agents N] [--bytes SIZE] [--stall-seconds S] ...
           streams.py edge --pool FILE --ready FILE IP...   (the edge service)
           streams.py pki DIR NODES-JSON                     (mints the PKI, see mintPKI)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
from _procs import (  # noqa: E402
    REPO,
    BenchError,
    Processes,
    daemonEnv,
    freePort,
    twistd,
)

MiB = 1024 * 1024

#: The edge service's request, sent by the client right after CONNECT's 200:
#: command, offset into the pool, byte count.
REQUEST = struct.Struct("!cQQ")
SEND, ECHO, FLOOD, STATS = b"S", b"E", b"F", b"Q"

#: Offsets of the streams' windows into the pool: stream i starts at
#: i * STRIDE mod SPAN, so no two of the first SPAN streams expect the same
#: bytes, and a chunk delivered to the wrong stream cannot pass the check.
SPAN = 1 << 20
STRIDE = 4099
POOL_KEY = b"twisted-tunnel bench/streams.py pool"

FLOOD_CHUNK = 16 * 1024  # the granularity of the flood's byte count
PING_SIZE = 64
MAX_HEAD = 16 * 1024
READY_DEADLINE = 60.0
COMPLAINT = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled| refused| failed| abandoned")
DEFAULT_WINDOW = 1 * MiB  # twisted_tunnel.mux.Settings().window, the daemons' default


def log(message: str) -> None:
    print(f"streams: {message}", file=sys.stderr, flush=True)


def parseSize(text: str) -> int:
    """C{5MiB}, C{256KiB}, C{1000000}: a byte count, for argparse."""
    match = re.fullmatch(r"\s*(\d+)\s*(|B|KiB|MiB|GiB|kB|MB|GB)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 5MiB or 256KiB")
    units = {"": 1, "B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}
    units.update({"kB": 1000, "MB": 1000**2, "GB": 1000**3})
    return int(match.group(1)) * units[match.group(2)]


def poolBytes(size: int) -> bytes:
    """The pseudo-random pool that the edge service sends from and the driver checks against."""
    return hashlib.shake_128(POOL_KEY).digest(size)


def streamOffset(index: int) -> int:
    return (index * STRIDE) % SPAN


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (C{q} in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- the edge service (a process of its own: `streams.py edge ...`) ---------------------------


async def serveEdge(poolPath: Path, ips: Sequence[str], readyPath: Path, sndbuf: int) -> None:
    """
    Listen on each node IP; answer each connection as its 17-byte request
    says.  Bulk bytes go out with sendfile(2), so that this process costs
    almost no CPU next to the tunnel it feeds.

    With C{sndbuf}, each connection's send buffer is fixed at that size.
    Left to autotuning, 2,000 sockets whose reader (the agent) waits for
    credit would each hold up to C{tcp_wmem}'s maximum (4 MiB) in the
    kernel: gigabytes, which on one machine push all of TCP into memory
    pressure (see L{KernelTCP}) and starve the tunnel's own connection.
    """
    stats: dict[str, object] = {
        "connections": 0,
        "floodBytes": 0,  # sent by all floods so far
        "floods": {},  # the floods running: the agent's end ("ip:port") -> ours
        "errors": Counter(),
    }
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1  # type: ignore[operator]
        if sndbuf:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        command = b""
        try:
            command, offset, count = REQUEST.unpack(await reader.readexactly(REQUEST.size))
            if command == SEND:
                with open(poolPath, "rb") as pool:
                    await loop.sendfile(writer.transport, pool, offset, count, fallback=False)
            elif command == ECHO:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            elif command == FLOOD:
                await flood(writer, poolPath, stats)
            elif command == STATS:
                writer.write(json.dumps(stats).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.SendfileNotAvailableError) as e:
            # (sendfile says "not available" when the peer is gone before its first byte)
            if command != FLOOD:  # a flood ends when its client leaves: that is no error
                stats["errors"][type(e).__name__] += 1  # type: ignore[index]
        finally:
            writer.close()

    ports = {}
    for ip in ips:
        server = await asyncio.start_server(handle, ip, 0, backlog=4096)
        ports[ip] = server.sockets[0].getsockname()[1]
    readyPath.with_suffix(".tmp").write_text(json.dumps(ports))
    readyPath.with_suffix(".tmp").rename(readyPath)
    await asyncio.Event().wait()  # until SIGTERM


async def flood(writer: asyncio.StreamWriter, poolPath: Path, stats: dict[str, object]) -> None:
    """Send the pool over and over, as fast as the connection takes it, until the peer leaves."""
    loop = asyncio.get_running_loop()
    peer = "{}:{}".format(*writer.get_extra_info("peername"))
    floods: dict[str, str] = stats["floods"]  # type: ignore[assignment]
    floods[peer] = "{}:{}".format(*writer.get_extra_info("sockname"))
    size = poolPath.stat().st_size
    offset = 0
    try:
        with open(poolPath, "rb") as pool:
            while True:
                chunk = FLOOD_CHUNK
                sent = await loop.sendfile(writer.transport, pool, offset, chunk, fallback=False)
                stats["floodBytes"] += sent  # type: ignore[operator]
                offset = (offset + sent) % (size - FLOOD_CHUNK)
    finally:
        del floods[peer]


def edgeMain(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="streams.py edge", description=serveEdge.__doc__)
    parser.add_argument("--pool", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True, help="JSON {ip: port} written here")
    parser.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF of each connection")
    parser.add_argument("ips", nargs="+")
    args = parser.parse_args(argv)
    asyncio.run(serveEdge(args.pool, args.ips, args.ready, args.sndbuf))


# -- processes --------------------------------------------------------------------------------


@dataclass
class Daemons(Processes):
    """L{Processes}, and what this benchmark reads of their logs."""

    def pid(self, name: str) -> int:
        return self.get(name).process.pid

    def logTails(self, lines: int = 15) -> str:
        parts = []
        for entry in self.started:
            text = entry.logPath.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {entry.name} (pid {entry.process.pid}):\n" + "\n".join(text))
        return "\n".join(parts)

    def logSizes(self) -> dict[str, int]:
        return {e.name: e.logPath.stat().st_size for e in self.started}

    def complaints(self, since: dict[str, int]) -> Errors:
        """
        Every warning, error or traceback the processes logged after
        C{since} (their log sizes then), and every line about a refused,
        failed or abandoned stream (the daemons log those at info level):
        a second count of failures, from the tunnel's side.
        """
        found = Errors()
        for entry in self.started:
            with open(entry.logPath, "rb") as logFile:
                logFile.seek(since.get(entry.name, 0))
                text = logFile.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if COMPLAINT.search(line):
                    found.add(f"{entry.name} logged", line[:300])
        return found


def raiseFileLimit(needed: int) -> None:
    """Let this process and its children (which inherit it) hold C{needed} descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(f"RLIMIT_NOFILE hard limit {hard} < {needed}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- the world: PKI, edge service, server, agents -----------------------------------------------


@dataclass(frozen=True)
class Node:
    name: str
    ip: str
    edgePort: int = 0


@dataclass
class World:
    procs: Daemons
    nodes: list[Node]
    connectPort: int
    tunnelPort: int
    pool: bytes
    window: int

    def pids(self) -> dict[str, int]:
        """The tunnel processes whose memory we watch."""
        names = ["edge-tunnel-server"] + [f"agent-{n.name}" for n in self.nodes]
        return {name: self.procs.pid(name) for name in names}


def mintPKI(pki: Path, nodes: Sequence[Node]) -> None:
    """
    A CA, the server's certificate, and one agent certificate per node,
    carrying its IP: minted by a child process (C{streams.py pki}).

    Not here, because this driver times every stream: importing
    C{twisted_tunnel.tls.certs} imports the C{twisted_tunnel.tls} package,
    hence Twisted, pyOpenSSL and service_identity (some 140 modules the
    driver never uses).  They doubled the driver's heap (21,000 to 43,000
    objects), and a full garbage collection of it (some 15 ms) then fell
    in the first 25 ms of every burst, while the driver was opening its
    connections: the open p50 of 500 streams went from ~100 to ~125 ms
    with no change in the tunnel (issue 14's move of certs into tls/).
    The child gets the daemons' environment, so it mints with the same
    twisted_tunnel as they run.
    """
    spec = json.dumps([[node.name, node.ip] for node in nodes])
    subprocess.run([sys.executable, __file__, "pki", str(pki), spec], check=True, env=daemonEnv())


def pkiMain(argv: Sequence[str]) -> None:
    """C{streams.py pki DIR NODES}: what L{mintPKI} runs; C{NODES} is JSON C{[[name, ip], ...]}."""
    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintServer, writePair

    pki = Path(argv[0])
    nodes = [Node(name, ip) for name, ip in json.loads(argv[1])]
    pki.mkdir()
    ca = mintCA()
    writePair(ca, pki / "ca.pem", pki / "ca-key.pem")
    server = mintServer(ca, ["localhost", "127.0.0.1"])
    writePair(server, pki / "server.pem", pki / "server-key.pem")
    for node in nodes:
        agent = mintAgent(ca, node.name, [node.ip])
        writePair(agent, pki / f"{node.name}.pem", pki / f"{node.name}-key.pem")


async def waitFor(
    what: str, condition: Callable[[], Awaitable[bool]], procs: Daemons, deadline: float
) -> None:
    """Poll the async C{condition} until it is true; fail if a process dies or time runs out."""
    end = time.monotonic() + deadline
    while not await condition():
        procs.checkAlive()
        if time.monotonic() > end:
            raise BenchError(f"{what}: not ready after {deadline:.0f} s")
        await asyncio.sleep(0.1)


async def startEdge(cfg: Config, work: Path, procs: Daemons, nodes: list[Node]) -> list[Node]:
    ready = work / "edge-ready.json"
    argv = [sys.executable, __file__, "edge", f"--sndbuf={cfg.edgeSndbuf}"]
    argv += ["--pool", str(work / "pool.bin")]
    procs.start("edge-service", [*argv, "--ready", str(ready), *(n.ip for n in nodes)])

    async def written() -> bool:
        return ready.exists()

    await waitFor("the edge service", written, procs, READY_DEADLINE)
    ports = json.loads(ready.read_text())
    return [Node(n.name, n.ip, ports[n.ip]) for n in nodes]


async def startTunnel(
    cfg: Config, work: Path, procs: Daemons, nodes: list[Node]
) -> tuple[int, int]:
    """The server (CONNECT door only: no proxy listeners, no iptables) and one agent per node."""
    pki = work / "pki"
    tunnelPort, connectPort = freePort(), freePort()
    tls = [f"--ca={pki}/ca.pem"]
    window = [f"--stream-window={cfg.window}"] if cfg.window else []
    server = twistd(
        "edge-tunnel-server",
        f"--tunnel-endpoint=tcp:{tunnelPort}:interface=127.0.0.1",
        f"--connect-endpoint=tcp:{connectPort}:interface=127.0.0.1{cfg.connectBacklog}",
        *tls,
        f"--cert={pki}/server.pem",
        f"--key={pki}/server-key.pem",
        "--https-proxy-endpoint=none",
        "--http-proxy-endpoint=none",
        "--tcp-proxy-endpoint=none",
        "--no-iptables",
        *window,
    )
    started = procs.start("edge-tunnel-server", server, env=daemonEnv())

    async def listening() -> bool:
        # its log says so; a test connection would be logged as a failed agent
        return b"ConnectDoorFactory starting on" in started.logPath.read_bytes()

    await waitFor("edge-tunnel-server", listening, procs, READY_DEADLINE)
    for node in nodes:
        agent = twistd(
            "edge-tunnel-agent",
            f"--server=127.0.0.1:{tunnelPort}",
            *tls,
            f"--cert={pki}/{node.name}.pem",
            f"--key={pki}/{node.name}-key.pem",
            f"--node-ip={node.ip}",
            f"--max-streams={cfg.agentMaxStreams}",
            *window,
        )
        procs.start(f"agent-{node.name}", agent, env=daemonEnv())
    return connectPort, tunnelPort


async def startWorld(cfg: Config, work: Path, procs: Daemons) -> World:
    nodes = [Node(f"edge-{i + 1:02d}", f"127.0.0.{11 + i}") for i in range(cfg.agents)]
    pool = poolBytes(cfg.bytes + SPAN)
    (work / "pool.bin").write_bytes(pool)
    mintPKI(work / "pki", nodes)
    nodes = await startEdge(cfg, work, procs, nodes)
    connectPort, tunnelPort = await startTunnel(cfg, work, procs, nodes)
    world = World(procs, nodes, connectPort, tunnelPort, pool, cfg.window or DEFAULT_WINDOW)
    started = time.monotonic()
    for node in nodes:
        await waitFor(f"agent {node.name}", lambda n=node: probe(world, n), procs, READY_DEADLINE)
    log(
        f"{len(nodes)} agents answer through the CONNECT door ({time.monotonic() - started:.1f} s)"
    )
    return world


async def probe(world: World, node: Node) -> bool:
    """One small checked download to C{node}: the whole path works."""
    outcome = await fetch(world, node, 0, 1024, time.monotonic() + 5)
    return outcome.ok


# -- the client: CONNECT, then check every byte -------------------------------------------------


def connectHead(node: Node) -> bytes:
    target = f"{node.name}:{node.edgePort}"
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def statusOf(head: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None


def errorKind(error: BaseException) -> str:
    """A short, stable name for a failure, to count failures by kind."""
    if isinstance(error, OSError) and error.errno is not None:
        import errno as errnos

        return f"{type(error).__name__} ({errnos.errorcode.get(error.errno, error.errno)})"
    return type(error).__name__


@dataclass
class Outcome:
    """How one stream ended.  C{kind} is empty for a stream that got every byte, then EOF."""

    kind: str = ""
    detail: str = ""
    opened: float | None = None  # seconds from connect() to CONNECT's 200
    took: float | None = None  # seconds from connect() to EOF after the last byte
    received: int = 0

    @property
    def ok(self) -> bool:
        return not self.kind


class Fetch(asyncio.Protocol):
    """
    One download through the CONNECT door: send the CONNECT head, wait for
    200, ask the edge service for C{count} bytes at C{offset} of the pool,
    and compare each chunk with the pool the moment it arrives (no copy, no
    buffering), so that a wrong byte is reported with its position.

    C{opened} fires (True or False) once the stream is open or has failed;
    C{done} fires with the L{Outcome}.
    """

    def __init__(
        self, world: World, node: Node, offset: int, count: int, deadline: float, started: float
    ) -> None:
        loop = asyncio.get_running_loop()
        self.head = connectHead(node)
        self.request = REQUEST.pack(SEND, offset, count)
        self.pool, self.offset, self.count = world.pool, offset, count
        self.started = started
        self.opened: asyncio.Future[bool] = loop.create_future()
        self.done: asyncio.Future[Outcome] = loop.create_future()
        self.outcome = Outcome()
        self.answer = b""
        self.inBody = False
        self.transport: asyncio.Transport | None = None
        remaining = deadline - time.monotonic()
        self.timer = loop.call_later(max(0.0, remaining), self.timedOut)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.head)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if not self.inBody:
            self.answer += data
            end = self.answer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.answer) > MAX_HEAD:
                    self.fail("bad CONNECT answer", repr(self.answer[:80]))
                return
            status, data = statusOf(self.answer), self.answer[end + 4 :]
            if status != 200:
                self.fail(f"CONNECT {status}", self.answer[:end].decode("latin-1")[:200])
                return
            self.inBody = True
            self.outcome.opened = self.elapsed()
            self.opened.set_result(True)
            assert self.transport is not None
            self.transport.write(self.request)
            if not data:
                return
        self.check(data)

    def check(self, data: bytes) -> None:
        got = self.outcome.received
        if got + len(data) > self.count:
            self.fail("more bytes than asked for", f"{got + len(data)} of {self.count}")
        elif not self.pool.startswith(data, self.offset + got):
            expected = self.pool[self.offset + got : self.offset + got + len(data)]
            pairs = enumerate(zip(data, expected, strict=False))
            at = got + next((i for i, (a, b) in pairs if a != b), len(expected))
            self.fail("wrong bytes", f"first wrong byte at {at} of {self.count}")
        else:
            self.outcome.received = got + len(data)

    def eof_received(self) -> bool:
        if not self.inBody:
            self.fail("closed before CONNECT's answer", repr(self.answer[:80]))
        elif self.outcome.received < self.count:
            self.fail("EOF early", f"after {self.outcome.received} of {self.count} bytes")
        else:
            self.outcome.took = self.elapsed()
            self.finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.fail(errorKind(exc), str(exc))
        else:
            self.fail("closed early", f"after {self.outcome.received} of {self.count} bytes")

    def timedOut(self) -> None:
        where = "in the body" if self.inBody else "waiting for CONNECT's answer"
        self.fail("timeout", f"{where}, after {self.outcome.received} of {self.count} bytes")

    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.started

    def fail(self, kind: str, detail: str) -> None:
        if not self.done.done():
            self.outcome.kind, self.outcome.detail = kind, detail
            self.finish()
            if self.transport is not None:
                self.transport.abort()

    def finish(self) -> None:
        self.timer.cancel()
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.done.done():
            self.done.set_result(self.outcome)
            if self.transport is not None:
                self.transport.close()


async def connectFetch(
    world: World, node: Node, offset: int, count: int, deadline: float
) -> Fetch | Outcome:
    """Connect a L{Fetch} to the CONNECT door; an L{Outcome} with a kind if that fails."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: Fetch(world, node, offset, count, deadline, started),
                "127.0.0.1",
                world.connectPort,
            ),
            max(0.0, deadline - time.monotonic()),
        )
    except (OSError, TimeoutError) as e:
        return Outcome(kind=f"connect: {errorKind(e)}", detail=str(e))
    return protocol


async def fetch(world: World, node: Node, offset: int, count: int, deadline: float) -> Outcome:
    """Download and check one stream; never raises: a failure is an L{Outcome} with a kind."""
    protocol = await connectFetch(world, node, offset, count, deadline)
    return protocol if isinstance(protocol, Outcome) else await protocol.done


class Errors:
    """Every failure, counted by kind, with the first few details of each kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, detail: str = "") -> None:
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 3:
            examples.append(detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        return [
            f"- {count} x {kind}: {'; '.join(self.examples[kind])}"
            for kind, count in self.counts.most_common()
        ] or ["- none"]


# -- watching the processes: memory and CPU ---------------------------------------------------


def procStatus(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)
    return {key: int(kb) * 1024 for key, kb in found}


def allCpu() -> dict[int, float]:
    """CPU seconds of every user-space process (kernel threads left out)."""
    result = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[6]) & 0x00200000:  # PF_KTHREAD
                continue
            result[int(entry.name)] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return result


class KernelTCP:
    """
    The kernel's TCP, machine-wide: memory (C{/proc/net/sockstat}, against
    the C{tcp_mem} pressure threshold) and counters that show it dropping
    or retransmitting (C{/proc/net/netstat}, C{/proc/net/snmp}).

    Every stream of a tunnel shares one TCP connection: when TCP as a whole
    is short of memory, that connection loses packets and backs off
    (retransmission timeouts, a congestion window of 1), and every stream
    crawls with the CPUs idle.  These numbers tell that apart from a slow
    tunnel.  They count the whole machine, other users included.
    """

    COUNTERS = (
        "TcpExt:TCPMemoryPressures",
        "TcpExt:TCPRcvQDrop",
        "TcpExt:PruneCalled",
        "TcpExt:ListenOverflows",
        "TcpExt:TCPTimeouts",
        "Tcp:RetransSegs",
    )

    @staticmethod
    def memoryBytes() -> int:
        text = Path("/proc/net/sockstat").read_text()
        match = re.search(r"^TCP:.* mem (\d+)", text, re.M)
        return int(match.group(1)) * PAGE if match else 0

    @staticmethod
    def pressureBytes() -> int:
        """C{tcp_mem}'s middle value: above it, TCP is under memory pressure."""
        return int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1]) * PAGE

    @staticmethod
    def counters() -> dict[str, int]:
        values = {}
        for path in ("/proc/net/netstat", "/proc/net/snmp"):
            lines = Path(path).read_text().splitlines()
            for names, numbers in zip(lines[::2], lines[1::2], strict=False):
                prefix = names.split(":")[0]
                for name, number in zip(names.split()[1:], numbers.split()[1:], strict=False):
                    values[f"{prefix}:{name}"] = int(number)
        return {name: values.get(name, 0) for name in KernelTCP.COUNTERS}


PAGE = os.sysconf("SC_PAGE_SIZE")


def sockets(info: bool = False) -> list[tuple[str, str, int, int, str]]:
    """
    Established TCP connections as C{ss} shows them: (local, peer, Recv-Q,
    Send-Q, the C{-i} details).  C{ss} reads the kernel's socket tables, so
    it sees the queues of the daemons' sockets too.
    """
    argv = ["ss", "-tnH"] + (["-i"] if info else []) + ["state", "established"]
    try:
        text = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    result = []
    for line in text.splitlines():
        if line.startswith(("\t", " ")) and result:
            result[-1] = (*result[-1][:4], line.strip())
            continue
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            result.append((fields[2], fields[3], int(fields[0]), int(fields[1]), ""))
    return result


def queues() -> dict[tuple[str, str], tuple[int, int]]:
    """(Recv-Q, Send-Q) of each established connection, by (local, peer) address."""
    return {(here, there): (recvQ, sendQ) for here, there, recvQ, sendQ, _ in sockets()}


def tunnelRetransmits(tunnelPort: int) -> tuple[int, int]:
    """Bytes sent and bytes retransmitted by the agents on their tunnel connections."""
    sent = retransmitted = 0
    for _, peer, _, _, details in sockets(info=True):
        if peer == f"127.0.0.1:{tunnelPort}":
            found = dict(re.findall(r"\b(bytes_sent|bytes_retrans):(\d+)", details))
            sent += int(found.get("bytes_sent", 0))
            retransmitted += int(found.get("bytes_retrans", 0))
    return sent, retransmitted


class Watch:
    """
    Memory and CPU of the tunnel processes over one phase.

    At the start it resets each process's peak RSS (C{echo 5 >
    /proc/PID/clear_refs}), so that VmHWM at the end is the peak of this
    phase alone; it also samples VmRSS every 0.2 s, in case the reset is
    not allowed.  CPU is counted for our processes and, to tell a quiet
    machine from a busy one, for every other process.
    """

    def __init__(self, world: World) -> None:
        self.pids = world.pids()
        self.pids["edge-service"] = world.procs.pid("edge-service")
        self.ours = {*self.pids.values(), os.getpid()}
        self.before: dict[str, int] = {}
        self.sampled: dict[str, int] = {}
        self.hwmReset = True
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for name, pid in self.pids.items():
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                self.hwmReset = False
            self.before[name] = procStatus(pid).get("VmRSS", 0)
        self.sampled = dict(self.before)
        self.cpu0, self.t0 = allCpu(), time.monotonic()
        self.tcp0, self.tcpPeak = KernelTCP.counters(), KernelTCP.memoryBytes()
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.2)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            rss = procStatus(pid).get("VmRSS", 0)
            self.sampled[name] = max(self.sampled.get(name, 0), rss)
        self.tcpPeak = max(self.tcpPeak, KernelTCP.memoryBytes())

    def stop(self) -> PhaseUsage:
        assert self._task is not None
        self._task.cancel()
        self.sample()
        cpu1, seconds = allCpu(), time.monotonic() - self.t0
        used = {pid: cpu1[pid] - self.cpu0.get(pid, 0.0) for pid in cpu1}
        memory = {}
        for name, pid in self.pids.items():
            hwm = procStatus(pid).get("VmHWM", 0)
            peak = hwm if self.hwmReset else self.sampled[name]
            memory[name] = Memory(self.before[name], max(peak, self.sampled[name]))
        byName = {name: used.get(pid, 0.0) for name, pid in self.pids.items()}
        byName["driver"] = used.get(os.getpid(), 0.0)
        other = sum(cpu for pid, cpu in used.items() if pid not in self.ours)
        tcp1 = KernelTCP.counters()
        tcp = {name: tcp1[name] - self.tcp0[name] for name in tcp1}
        return PhaseUsage(seconds, memory, byName, other, self.tcpPeak, tcp)


@dataclass
class Memory:
    before: int  # VmRSS at the start of the phase
    peak: int  # the largest RSS during the phase

    @property
    def growth(self) -> int:
        return self.peak - self.before


@dataclass
class PhaseUsage:
    seconds: float
    memory: dict[str, Memory]
    cpu: dict[str, float]  # CPU seconds per process name, and "driver"
    otherCpu: float  # CPU seconds of all the processes we did not start
    tcpMemoryPeak: int  # the kernel's TCP memory, machine-wide, at its highest
    tcpCounters: dict[str, int]  # KernelTCP.COUNTERS: how much each grew

    def agents(self) -> list[Memory]:
        return [m for name, m in self.memory.items() if name.startswith("agent-")]


# -- many streams -------------------------------------------------------------------------------


@dataclass
class StreamsResult:
    streams: int
    bytesEach: int
    ok: int
    verifiedBytes: int
    seconds: float
    completion: list[float]
    opens: list[float]
    peakOpen: int
    errors: Errors
    usage: PhaseUsage
    tunnelSent: int = 0  # bytes the agents' tunnel connections sent during the phase (ss)
    tunnelRetransmitted: int = 0  # and retransmitted


async def manyStreams(cfg: Config, world: World) -> StreamsResult:
    """
    Open C{cfg.streams} streams, round robin over the nodes, and download
    and check C{cfg.bytes} on each.  At most C{cfg.openConcurrency} are
    being opened at a time (connect and CONNECT answer); once open, a stream
    stays open until its download ends, so all of them run at once.
    """
    deadline = time.monotonic() + cfg.deadline
    opening = asyncio.Semaphore(cfg.openConcurrency)
    state = {"open": 0, "peak": 0}

    async def one(index: int) -> Outcome:
        node = world.nodes[index % len(world.nodes)]
        async with opening:
            protocol = await connectFetch(world, node, streamOffset(index), cfg.bytes, deadline)
            if isinstance(protocol, Outcome):
                return protocol
            if not await protocol.opened:
                return await protocol.done
        state["open"] += 1
        state["peak"] = max(state["peak"], state["open"])
        outcome = await protocol.done
        state["open"] -= 1
        return outcome

    watch = Watch(world)
    watch.start()
    sent0, retransmitted0 = tunnelRetransmits(world.tunnelPort)
    started = time.monotonic()
    outcomes = await asyncio.gather(*(one(i) for i in range(cfg.streams)))
    seconds = time.monotonic() - started
    usage = watch.stop()
    sent1, retransmitted1 = tunnelRetransmits(world.tunnelPort)
    errors = Errors()
    for index, outcome in enumerate(outcomes):
        if not outcome.ok:
            node = world.nodes[index % len(world.nodes)].name
            errors.add(outcome.kind, f"stream {index} ({node}): {outcome.detail}")
    good = [o for o in outcomes if o.ok]
    return StreamsResult(
        streams=cfg.streams,
        bytesEach=cfg.bytes,
        ok=len(good),
        verifiedBytes=sum(o.received for o in good),
        seconds=seconds,
        completion=[o.took for o in good if o.took is not None],
        opens=[o.opened for o in outcomes if o.opened is not None],
        peakOpen=state["peak"],
        errors=errors,
        usage=usage,
        tunnelSent=sent1 - sent0,
        tunnelRetransmitted=retransmitted1 - retransmitted0,
    )


# -- a stalled reader next to small request/response streams ----------------------------------


class StreamFailed(BenchError):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


async def openStream(
    world: World, node: Node, request: bytes, deadline: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream through the CONNECT door, with C{request} sent to the edge service."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", world.connectPort), deadline - time.monotonic()
        )
        writer.write(connectHead(node))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), deadline - time.monotonic())
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise StreamFailed(f"opening a stream: {errorKind(e)}", str(e)) from e
    if statusOf(head) != 200:
        writer.close()
        raise StreamFailed(f"CONNECT {statusOf(head)}", head.decode("latin-1")[:200])
    writer.write(request)
    return reader, writer


async def bounce(
    pingers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    seconds: float,
    errors: Errors,
) -> list[float]:
    """
    Each stream sends 64 bytes and waits for its echo, over and over, for
    C{seconds}; returns every round trip's time.  Each message is unique,
    so an echo from another stream, or an old one, is caught.
    """
    latencies: list[float] = []
    until = time.monotonic() + seconds

    async def one(index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count = 0
        while time.monotonic() < until:
            message = struct.pack("!QQ", index, count).ljust(PING_SIZE, b"p")
            sent = time.perf_counter()
            writer.write(message)
            echo = await reader.readexactly(PING_SIZE)
            latencies.append(time.perf_counter() - sent)
            if echo != message:
                raise StreamFailed("wrong echo", f"stream {index}, message {count}")
            count += 1

    async def guarded(
        index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await asyncio.wait_for(one(index, reader, writer), seconds + 30)
        except StreamFailed as e:
            errors.add(e.kind, e.detail)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            errors.add(errorKind(e), f"pinger {index}: {e}")

    await asyncio.gather(*(guarded(i, r, w) for i, (r, w) in enumerate(pingers)))
    return latencies


async def edgeStats(node: Node) -> dict[str, object]:
    """The edge service's counters (asked directly, not through the tunnel)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(node.ip, node.edgePort), 5)
    writer.write(REQUEST.pack(STATS, 0, 0))
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return json.loads(line)


async def floodBytes(node: Node) -> int:
    return int((await edgeStats(node))["floodBytes"])  # type: ignore[call-overload]


def unreadBytes(writer: asyncio.StreamWriter) -> int:
    """Bytes waiting in the kernel for our stalled socket to read them (FIONREAD)."""
    sock = writer.get_extra_info("socket")
    buffer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buffer)[0])


@dataclass
class StallRound:
    baseline: list[float]
    stalled: list[float]
    baselineUsage: PhaseUsage
    stalledUsage: PhaseUsage
    held: FloodHeld  # where the floods' bytes were once they stalled
    floodAtEnd: int  # bytes sent by the floods' edge service at the end of the phase
    stallSeconds: float  # how long the flood took to stall


@dataclass
class FloodHeld:
    """
    Where the bytes that the floods' edge service sent are, once it can
    send no more: in the kernel on each side of the tunnel (from C{ss} and
    FIONREAD), and the rest inside the tunnel (agent and server memory, and
    the tunnel's own TCP connection), which flow control bounds by the
    streams' windows (plus about a read of slack on each side).  Sums over
    the C{streams} flooded streams.
    """

    streams: int
    sent: int
    edgeSendQ: int  # the edge service's socket to the agent
    agentRecvQ: int  # the agent's socket from the edge service
    serverSendQ: int  # the server's socket to our client
    clientRecvQ: int  # our client's socket, never read

    @property
    def inTunnel(self) -> int:
        return self.sent - self.edgeSendQ - self.agentRecvQ - self.serverSendQ - self.clientRecvQ


async def floodHeld(
    world: World, node: Node, flooded: list[asyncio.StreamWriter], sent: int
) -> FloodHeld:
    floods: dict[str, str] = (await edgeStats(node))["floods"]  # type: ignore[assignment]
    kernel = queues()
    server = f"127.0.0.1:{world.connectPort}"
    clients = ["{}:{}".format(*writer.get_extra_info("sockname")) for writer in flooded]
    return FloodHeld(
        streams=len(flooded),
        sent=sent,
        edgeSendQ=sum(kernel.get((edge, agent), (0, 0))[1] for agent, edge in floods.items()),
        agentRecvQ=sum(kernel.get((agent, edge), (0, 0))[0] for agent, edge in floods.items()),
        serverSendQ=sum(kernel.get((server, client), (0, 0))[1] for client in clients),
        clientRecvQ=sum(unreadBytes(writer) for writer in flooded),
    )


@dataclass
class StallResult:
    pingers: int
    seconds: float
    node: str
    rounds: list[StallRound]
    errors: Errors

    def allBaseline(self) -> list[float]:
        return [x for r in self.rounds for x in r.baseline]

    def allStalled(self) -> list[float]:
        return [x for r in self.rounds for x in r.stalled]


async def waitForStall(node: Node, deadline: float, errors: Errors) -> tuple[int, float]:
    """
    Wait until the floods' edge service can send no more (its count stays
    put for 1 s): what the tunnel holds for the stalled streams is then at
    its maximum.  Returns that count and how long it took; a flood that
    never stalls (the window does not hold) is counted as an error.
    """
    started = time.monotonic()
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = await floodBytes(node)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return now, since - started
        await asyncio.sleep(0.1)
    errors.add("flood never stalled", f"{last} bytes sent and still growing")
    return last, time.monotonic() - started


async def stalledReader(cfg: Config, world: World) -> StallResult:
    """
    Round trips of C{cfg.pingers} echo streams on the first node's tunnel,
    first alone, then next to C{cfg.floods} streams (one by default) that
    their edge service floods and whose clients never read.  Per-stream flow
    control should hold each flood to its window, and leave the others'
    latency alone.
    """
    node = world.nodes[0]
    errors = Errors()
    deadline = time.monotonic() + cfg.deadline
    echo = REQUEST.pack(ECHO, 0, 0)
    pingers = await asyncio.gather(
        *(openStream(world, node, echo, deadline) for _ in range(cfg.pingers))
    )
    await bounce(pingers, min(1.0, cfg.stallSeconds), Errors())  # warm-up, not counted
    rounds = []
    try:
        for _ in range(cfg.stallRounds):
            rounds.append(await stallRound(cfg, world, node, pingers, errors, deadline))
    finally:
        for _, writer in pingers:
            writer.close()
    return StallResult(cfg.pingers, cfg.stallSeconds, node.name, rounds, errors)


async def stallRound(
    cfg: Config,
    world: World,
    node: Node,
    pingers: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    errors: Errors,
    deadline: float,
) -> StallRound:
    watch = Watch(world)
    watch.start()
    baseline = await bounce(pingers, cfg.stallSeconds, errors)
    baselineUsage = watch.stop()

    watch = Watch(world)
    watch.start()
    before = await floodBytes(node)
    request = REQUEST.pack(FLOOD, 0, 0)
    opened = await asyncio.gather(
        *(openStream(world, node, request, deadline) for _ in range(cfg.floods))
    )
    flooded = [writer for _, writer in opened]
    for writer in flooded:
        writer.transport.pause_reading()  # and never read
    try:
        atStall, took = await waitForStall(node, min(deadline, time.monotonic() + 30), errors)
        held = await floodHeld(world, node, flooded, atStall - before)
        stalled = await bounce(pingers, cfg.stallSeconds, errors)
        atEnd = await floodBytes(node)
    finally:
        for writer in flooded:
            writer.close()
    stalledUsage = watch.stop()
    return StallRound(
        baseline,
        stalled,
        baselineUsage,
        stalledUsage,
        held=held,
        floodAtEnd=atEnd - before,
        stallSeconds=took,
    )


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Config:
    streams: int = 2000
    agents: int = 10
    bytes: int = 5 * MiB
    openConcurrency: int = 2000
    connectBacklog: str = ""  # e.g. ":backlog=1024", appended to the CONNECT door's endpoint
    window: int = 0  # 0: the daemons' default
    agentMaxStreams: int = 1024
    edgeSndbuf: int = 128 * 1024
    pingers: int = 50
    floods: int = 1
    stallSeconds: float = 10.0
    stallRounds: int = 3
    deadline: float = 600.0


@dataclass
class Results:
    config: Config
    streams: StreamsResult | None = None
    stall: StallResult | None = None
    edgeErrors: dict[str, int] = field(default_factory=dict)
    logged: Errors = field(default_factory=Errors)  # warnings and errors in the logs

    @property
    def errors(self) -> int:
        total = sum(self.edgeErrors.values()) + self.logged.total
        total += self.streams.errors.total if self.streams else 0
        total += self.stall.errors.total if self.stall else 0
        return total


def mib(count: float) -> str:
    return f"{count / MiB:.0f}"


def size(count: int) -> str:
    """256 KiB, 5 MiB, 1000 bytes."""
    for unit, name in ((MiB, "MiB"), (1024, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"


def percent(cpuSeconds: float, seconds: float) -> str:
    return f"{100 * cpuSeconds / seconds:.0f}%" if seconds else "?"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def streamsReport(r: StreamsResult, world: World) -> list[str]:
    usage = r.usage
    server = usage.memory["edge-tunnel-server"]
    agents = usage.agents()
    perAgent = math.ceil(r.streams / len(world.nodes))
    mbps = r.verifiedBytes / r.seconds / 1e6 if r.seconds else 0.0
    return [
        f"### Many streams: {r.streams} x {size(r.bytesEach)} over {len(world.nodes)} agents",
        "",
        "| errors | streams byte-exact | total s | aggregate MB/s | stream time p50 / p99 s "
        "| open p50 / p99 ms | peak open at once |",
        "|---|---|---|---|---|---|---|",
        f"| {r.errors.total} | {r.ok} of {r.streams} | {r.seconds:.1f} | {mbps:.0f} "
        f"| {percentile(r.completion, 0.5):.1f} / {percentile(r.completion, 0.99):.1f} "
        f"| {ms(percentile(r.opens, 0.5))} / {ms(percentile(r.opens, 0.99))} | {r.peakOpen} |",
        "",
        "Errors by kind:",
        *r.errors.lines(),
        "",
        "| process | RSS before MiB | peak RSS MiB | growth MiB | worst case: streams x window |",
        "|---|---|---|---|---|",
        f"| edge-tunnel-server | {mib(server.before)} | {mib(server.peak)} "
        f"| {mib(server.growth)} | {r.streams} x {size(world.window)} = "
        f"{mib(r.streams * world.window)} MiB |",
        f"| each agent (largest of {len(agents)}) | {mib(max(m.before for m in agents))} "
        f"| {mib(max(m.peak for m in agents))} | {mib(max(m.growth for m in agents))} "
        f"| {perAgent} x {size(world.window)} = {mib(perAgent * world.window)} MiB |",
        f"| all agents together | {mib(sum(m.before for m in agents))} "
        f"| {mib(sum(m.peak for m in agents))} | {mib(sum(m.growth for m in agents))} | |",
        "",
        cpuLine(usage),
        tcpLine(usage),
        f"The agents' tunnel connections sent {r.tunnelSent / 1e6:.0f} MB and retransmitted "
        f"{r.tunnelRetransmitted / 1e6:.1f} MB of it.",
    ]


def cpuLine(usage: PhaseUsage) -> str:
    cpu = usage.cpu
    agents = sum(v for k, v in cpu.items() if k.startswith("agent-"))
    percent = 100 / usage.seconds if usage.seconds else 0.0
    server = cpu["edge-tunnel-server"] * percent
    return (
        f"CPU over {usage.seconds:.1f} s, % of one core: server {server:.0f}%,"
        f" agents {agents * percent:.0f}%, edge service {cpu['edge-service'] * percent:.0f}%,"
        f" driver {cpu['driver'] * percent:.0f}%; processes not ours "
        f"{usage.otherCpu * percent:.0f}%."
    )


def tcpLine(usage: PhaseUsage) -> str:
    counters = ", ".join(f"{name.split(':')[1]} +{n}" for name, n in usage.tcpCounters.items())
    pressure = KernelTCP.pressureBytes()
    warning = (
        " **TCP was under memory pressure: every socket's buffers were clamped, on the whole"
        " machine; these numbers show that, not the tunnel.**"
        if usage.tcpMemoryPeak > pressure
        else ""
    )
    return (
        f"Kernel TCP (whole machine): memory peak {mib(usage.tcpMemoryPeak)} MiB "
        f"(pressure above {mib(pressure)} MiB); {counters}.{warning}"
    )


def stallReport(s: StallResult, world: World, cfg: Config) -> list[str]:
    base, stalled = s.allBaseline(), s.allStalled()
    p99b, p99s = percentile(base, 0.99), percentile(stalled, 0.99)
    ratio = p99s / p99b if p99b else math.nan
    verdict = "met" if ratio <= 2 else "MISSED"
    floods = cfg.floods
    readers = "a stalled reader" if floods == 1 else f"{floods} stalled readers"
    lines = [
        f"### Stalled reader: {s.pingers} echo streams of {PING_SIZE} bytes on {s.node}'s "
        f"tunnel, {s.seconds:g} s per phase, {len(s.rounds)} round(s)",
        "",
        "| phase | round trips | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
        f"| alone | {len(base)} | {ms(percentile(base, 0.5))} | {ms(p99b)} | {ms(max(base))} |",
        f"| next to {readers} | {len(stalled)} | {ms(percentile(stalled, 0.5))} "
        f"| {ms(p99s)} | {ms(max(stalled))} |",
        "",
        f"p99 ratio (stalled / alone): {ratio:.2f}x (target at most 2x: {verdict}).",
        "",
        "Errors by kind:",
        *s.errors.lines(),
        "",
        "| round | p99 alone ms | p99 stalled ms | other processes' CPU alone / stalled "
        "| server RSS before / peak / growth MiB | agent RSS before / peak / growth MiB |",
        "|---|---|---|---|---|---|",
    ]
    agent = f"agent-{s.node}"
    for i, r in enumerate(s.rounds, 1):
        alone, next_ = r.baselineUsage, r.stalledUsage
        server, agentMemory = next_.memory["edge-tunnel-server"], next_.memory[agent]
        lines.append(
            f"| {i} | {ms(percentile(r.baseline, 0.99))} | {ms(percentile(r.stalled, 0.99))} "
            f"| {percent(alone.otherCpu, alone.seconds)} "
            f"/ {percent(next_.otherCpu, next_.seconds)} "
            f"| {mib(server.before)} / {mib(server.peak)} / {server.growth / MiB:.1f} "
            f"| {mib(agentMemory.before)} / {mib(agentMemory.peak)} "
            f"/ {agentMemory.growth / MiB:.1f} |"
        )
    lines += [
        "",
        f"Where the floods' bytes were once they stalled (MiB, over {floods} stream(s) of "
        f"{size(world.window)} window each: inside the tunnel should stay under "
        f"{floods} x {size(world.window)} plus a read or two of slack; the edge service's "
        f"SO_SNDBUF is {size(cfg.edgeSndbuf)}, doubled by the kernel):",
        "",
        "| round | stalled after s | sent by the edge service | edge socket Send-Q "
        "| agent socket Recv-Q | inside the tunnel | server socket Send-Q "
        "| client Recv-Q (unread) | sent by the end of the phase |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(s.rounds, 1):
        h = r.held
        cells = (h.sent, h.edgeSendQ, h.agentRecvQ, h.inTunnel, h.serverSendQ, h.clientRecvQ)
        lines.append(
            f"| {i} | {r.stallSeconds:.1f} | "
            + " | ".join(f"{n / MiB:.2f}" for n in cells)
            + f" | {r.floodAtEnd / MiB:.2f} |"
        )
    lines += ["", cpuLine(s.rounds[-1].stalledUsage)]
    return lines


def report(results: Results, world: World, argv: Sequence[str]) -> str:
    cfg = results.config
    lines = [
        f"## bench/streams.py, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`{' '.join(['bench/streams.py', *argv])}` on `{platform.node()}`, "
        f"{platform.platform()}, {os.cpu_count()} CPUs, {cpuModel()}, commit {commit()}.",
        f"Settings: {cfg}.",
        "",
    ]
    if results.streams is not None:
        lines += streamsReport(results.streams, world) + [""]
    if results.stall is not None:
        lines += stallReport(results.stall, world, cfg) + [""]
    edge = ", ".join(f"{n} x {k}" for k, n in results.edgeErrors.items()) or "none"
    lines.append(f"Errors the edge service saw: {edge}.")
    lines += ["", "Warnings and errors the processes logged during the phases:"]
    lines += results.logged.lines() + [""]
    lines.append(f"**Errors in total: {results.errors}.**")
    return "\n".join(lines)


def cpuModel() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else "?"


def commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "?"


# -- running it ---------------------------------------------------------------------------------


async def runPhases(cfg: Config, work: Path, procs: Daemons) -> tuple[Results, World]:
    world = await startWorld(cfg, work, procs)
    logSizes = procs.logSizes()  # start-up (and its readiness probes) is not judged
    results = Results(cfg)
    if cfg.stallSeconds > 0 and cfg.pingers:
        log(f"stalled reader: {cfg.pingers} echo streams, alone then next to a stalled reader")
        results.stall = await stalledReader(cfg, world)
        procs.checkAlive()
    if cfg.streams:
        log(f"many streams: {cfg.streams} x {size(cfg.bytes)} over {cfg.agents} agents")
        results.streams = await manyStreams(cfg, world)
        procs.checkAlive()
        done = results.streams
        log(f"many streams: done in {done.seconds:.1f} s, {done.errors.total} errors")
    stats = await edgeStats(world.nodes[0])
    results.edgeErrors = dict(stats["errors"])  # type: ignore[call-overload]
    results.logged = procs.complaints(logSizes)
    return results, world


def run(cfg: Config) -> tuple[Results, World]:
    """Start everything, run the phases, stop exactly what was started, remove the temp dir."""
    raiseFileLimit(2 * cfg.streams + cfg.pingers + 1024)
    work = Path(tempfile.mkdtemp(prefix="streams-bench-"))
    procs = Daemons(work, log)
    try:
        return asyncio.run(runPhases(cfg, work, procs))
    except BaseException:
        if procs.started:
            log("failed; the last lines of each process's log:\n" + procs.logTails())
        raise
    finally:
        procs.stopAll()
        shutil.rmtree(work, ignore_errors=True)


def parseArgs(argv: Sequence[str]) -> tuple[Config, str | None]:
    parser = argparse.ArgumentParser(
        prog="bench/streams.py", description=__doc__.split("\n\n")[0].strip()
    )
    add = parser.add_argument
    add(
        "--streams",
        type=int,
        default=2000,
        help="concurrent streams of the many-streams phase (0: skip it)",
    )
    add("--agents", type=int, default=10, help="agent processes (nodes), at most 200")
    add("--bytes", type=parseSize, default="5MiB", help="bytes per stream (5MiB, 256KiB, ...)")
    add(
        "--open-concurrency",
        type=int,
        default=2000,
        help="streams being opened at once (all by default: a burst, as 2,000 exec sessions)",
    )
    add("--connect-backlog", type=int, help="listen backlog of the CONNECT door (Twisted: 50)")
    add("--window", type=parseSize, default=0, help="--stream-window of the daemons")
    add("--agent-max-streams", type=int, default=1024, help="--max-streams of each agent")
    add(
        "--edge-sndbuf",
        type=parseSize,
        default="128KiB",
        help="SO_SNDBUF of the edge service's connections (0: kernel autotuning; see serveEdge)",
    )
    add(
        "--pingers",
        type=int,
        default=50,
        help="echo streams of the stalled-reader phase (0: skip it)",
    )
    add(
        "--floods",
        type=int,
        default=1,
        help="stalled readers next to them (1; more to see the windows bound memory)",
    )
    add(
        "--stall-seconds",
        type=float,
        default=10.0,
        help="seconds of each stalled-reader measurement (0: skip the phase)",
    )
    add("--stall-rounds", type=int, default=3, help="alone/stalled measurement pairs")
    add("--deadline", type=float, default=600.0, help="seconds each phase may take at most")
    add("--json", help="also write the raw numbers here")
    args = parser.parse_args(argv)
    if not 1 <= args.agents <= 200:
        parser.error("--agents must be 1..200 (node IPs 127.0.0.11 ..)")
    if args.bytes + SPAN > 1 << 31:
        parser.error("--bytes too large")
    backlog = f":backlog={args.connect_backlog}" if args.connect_backlog else ""
    cfg = Config(
        streams=args.streams,
        agents=args.agents,
        bytes=args.bytes,
        openConcurrency=max(1, args.open_concurrency),
        connectBacklog=backlog,
        window=args.window,
        agentMaxStreams=args.agent_max_streams,
        edgeSndbuf=args.edge_sndbuf,
        pingers=args.pingers,
        floods=max(1, args.floods),
        stallSeconds=args.stall_seconds,
        stallRounds=max(1, args.stall_rounds),
        deadline=args.deadline,
    )
    return cfg, args.json


def toJSON(results: Results) -> str:
    def default(o: object) -> object:
        if isinstance(o, Errors):
            return {"counts": dict(o.counts), "examples": o.examples}
        raise TypeError(type(o))

    raw = asdict(results)
    raw["logged"] = default(results.logged)
    for phase in ("streams", "stall"):
        if getattr(results, phase) is not None:
            raw[phase]["errors"] = default(getattr(results, phase).errors)
    return json.dumps(raw, default=default, indent=1)


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["edge"]:
        edgeMain(argv[1:])
        return 0
    if argv[:1] == ["pki"]:
        pkiMain(argv[1:])
        return 0
    cfg, jsonPath = parseArgs(argv)
    # SIGTERM, like Ctrl-C, unwinds through run()'s finally: our processes are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        results, world = run(cfg)
    except BenchError as e:
        log(f"error: {e}")
        return 1
    print(report(results, world, argv))
    if jsonPath:
        Path(jsonPath).write_text(toJSON(results))
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
