"""
Many agents, one server: how far does one C{edge-tunnel-server} process scale?

For each size N (C{--agents 1000 5000 10000}) this starts a fresh server
process, then, in this one process, N simulated agents, each a real mutual
TLS connection with a certificate of its own (node C{edge-00001}.., IP
C{127.1.x.y}, minted in memory from one CA), and measures:

 - how long all N take to connect (dial, TLS handshake, HELLO both ways),
   with a bounded number of handshakes in flight;
 - the server's memory (C{VmRSS} and C{VmHWM} from C{/proc}) before the
   agents, once they are all connected, and once they have left again;
 - the CPU of the server, of this process and of everything else on the
   machine while the tunnels sit idle with only keepalives flowing;
 - the latency of opening a stream to a random agent through the server's
   CONNECT door and echoing a payload byte-exact through it.

The agents are the library's own L{TunnelAgent}s (with L{agentOptions} and
L{makeCredentials}), not a second implementation of the protocol: what is
measured is what real agents would make the server do.  Everything listens
and connects on 127.0.0.0/8 only.  Every phase has a deadline; the tool
stops exactly the server processes it started (by PID) and removes its
temporary directory.

    usage: agents.py [--agents N ...] [--idle-seconds S] [--opens K] [--keep-going]

See C{bench/results/scale.md} for results and how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater, react
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
from _procs import REPO, TWISTD, daemonEnv  # noqa: E402

sys.path.insert(0, str(REPO))  # run from anywhere, with the repository's twisted_tunnel

from twisted_tunnel.agent import TunnelAgent  # noqa: E402
from twisted_tunnel.certs import Issued, mintAgent, mintCA, mintServer, writePair  # noqa: E402
from twisted_tunnel.mux import Keepalive, Tunnel, TunnelAddress  # noqa: E402
from twisted_tunnel.tls import Credentials, agentOptions, makeCredentials  # noqa: E402

SERVER_NAME = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Seconds a server may take to listen, and to exit after SIGTERM before SIGKILL.
SERVER_START_DEADLINE = 30.0
SERVER_STOP_GRACE = 15.0
#: Seconds one agent may take from dial to HELLO done.
AGENT_CONNECT_TIMEOUT = 60.0
#: The whole connect phase may take this long plus this much per agent; agents
#: not started by then are counted as failed, not waited for.
CONNECT_PHASE_BASE = 60.0
CONNECT_PHASE_PER_AGENT = 0.05
#: Seconds one stream open through the CONNECT door may take, echo included.
OPEN_TIMEOUT = 10.0
#: The open phase stops starting opens after this many seconds.
OPEN_PHASE_DEADLINE = 120.0
#: Opens not counted in the latency, so that the first ones warm caches up.
OPEN_WARMUP = 10
#: Bytes sent through each opened stream and expected back.
ECHO_BYTES = 1024
#: Seconds the server may take to process every agent's departure.
DEPARTURE_DEADLINE = 120.0
#: Seconds to let the last handshakes' work settle before measuring memory and idle CPU.
SETTLE_SECONDS = 3.0
#: File descriptors this process and the server need beyond one per agent.
SPARE_DESCRIPTORS = 256


def log(message: str) -> None:
    print(f"agents: {message}", file=sys.stderr, flush=True)


# -- identities ------------------------------------------------------------------------------


def nodeName(index: int) -> str:
    """Agent C{index} (from 1) serves node C{edge-00001}, C{edge-00002}, ..."""
    return f"edge-{index:05d}"


def nodeIP(index: int) -> str:
    """
    A distinct loopback address per agent (127.1.0.1 .. 127.1.39.250 for
    10,000): the server keeps a registry by IP and enforces that each is
    carried by the agent's certificate, so each agent needs its own.
    """
    return f"127.1.{index // 250}.{index % 250 + 1}"


@dataclass(frozen=True)
class AgentIdentity:
    node: str
    ip: str
    credentials: Credentials


@dataclass
class Fleet:
    """One CA, the server's certificate, and every agent's identity."""

    ca: Issued
    server: Issued
    agents: list[AgentIdentity] = field(default_factory=list)

    def grow(self, count: int) -> None:
        """Mint agents until there are C{count}: P-256 keys, as in production."""
        caCertificate = self.ca.certificate
        for index in range(len(self.agents) + 1, count + 1):
            name, ip = nodeName(index), nodeIP(index)
            issued = mintAgent(self.ca, name, [ip])
            credentials = makeCredentials([caCertificate], issued.certificate, issued.key)
            self.agents.append(AgentIdentity(name, ip, credentials))

    def writeServerPKI(self, directory: Path) -> dict[str, Path]:
        """The files the server process reads (C{--ca}, C{--cert}, C{--key})."""
        directory.mkdir(exist_ok=True)
        paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
        writePair(self.ca, paths["ca"], paths["ca-key"])
        writePair(self.server, paths["cert"], paths["key"])
        return paths


def newFleet() -> Fleet:
    ca = mintCA()
    return Fleet(ca=ca, server=mintServer(ca, [SERVER_NAME]))


# -- the simulated agent ---------------------------------------------------------------------


class SimulatedAgent(TunnelAgent):
    """
    A library L{TunnelAgent} whose node is simulated: its node IP
    (127.1.x.y) has no service of its own, so a dial to it goes to the
    shared echo service on 127.0.0.1 instead.  Everything else, the
    allowlist check included, is the library's.
    """

    def dial(self, address: TunnelAddress) -> Deferred[Any]:
        if address.host in self.nodeIPs:
            address = TunnelAddress(address.node, "127.0.0.1", address.port)
        return super().dial(address)


def agentEndpoint(reactor: Any, identity: AgentIdentity, port: int) -> IStreamClientEndpoint:
    """
    TLS with the library's agent options, over TCP from the agent's own
    loopback address, so that the server sees N distinct peers.
    """
    tcp = TCP4ClientEndpoint(reactor, SERVER_NAME, port, timeout=10, bindAddress=(identity.ip, 0))
    return wrapClientTLS(agentOptions(identity.credentials, SERVER_NAME), tcp)


def makeAgent(reactor: Any, identity: AgentIdentity, port: int, keepalive: Keepalive) -> Any:
    return SimulatedAgent(
        reactor,
        identity.credentials,
        (SERVER_NAME, port),
        identity.node,
        [identity.ip],
        keepalive=keepalive,
        endpoint=agentEndpoint(reactor, identity, port),
    )


class FrameCounter:
    """
    Counts the frames the simulated agents send and receive, by type, by
    wrapping two methods of L{Tunnel} in this process only: what the agents
    do is unchanged, and the server is not touched.  During the idle window
    this shows how many keepalive frames each tunnel costs.
    """

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self._originals: tuple[Any, Any] | None = None

    def install(self) -> None:
        send, receive = Tunnel._sendFrame, Tunnel._frameReceived
        self._originals = (send, receive)
        sent, received = self.sent, self.received

        def countedSend(tunnel: Tunnel, frame: Any) -> None:
            sent[frame.TYPE.name] += 1
            send(tunnel, frame)

        def countedReceive(tunnel: Tunnel, frame: Any) -> None:
            received[frame.TYPE.name] += 1
            receive(tunnel, frame)

        Tunnel._sendFrame = countedSend  # type: ignore[method-assign]
        Tunnel._frameReceived = countedReceive  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._originals is not None:
            Tunnel._sendFrame, Tunnel._frameReceived = self._originals  # type: ignore[method-assign]
            self._originals = None

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.sent), Counter(self.received)


# -- /proc -----------------------------------------------------------------------------------


def processCPU(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def processMemory(pid: int) -> dict[str, int]:
    """C{VmRSS} and C{VmHWM} of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def machineBusy() -> float:
    """CPU seconds the whole machine spent, all cores, except idle, iowait and steal."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle, iowait, steal = values[3], values[4], values[7]
    return (sum(values[:8]) - idle - iowait - steal) / CLOCK_TICKS


def tcpCounters() -> Counter[str]:
    """
    Machine-wide TCP counters that explain slow connects: accept queue
    overflows and drops (C{TcpExt}), and retransmitted segments (C{Tcp}).
    """
    wanted = {
        "TcpExt": ("ListenOverflows", "ListenDrops"),
        "Tcp": ("RetransSegs",),
    }
    found: Counter[str] = Counter()
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            kind, _, keys = names.partition(":")
            for key, value in zip(keys.split(), values.partition(":")[2].split(), strict=False):
                if key in wanted.get(kind, ()):
                    found[key] = int(value)
    return found


@dataclass(frozen=True)
class CPUSample:
    wall: float
    server: float
    load: float
    machine: float


def sampleCPU(serverPID: int) -> CPUSample:
    own = os.times()
    return CPUSample(time.monotonic(), processCPU(serverPID), own.user + own.system, machineBusy())


@dataclass(frozen=True)
class CPUShare:
    """CPU used between two samples, in % of one core."""

    server: float
    load: float
    others: float

    @classmethod
    def between(cls, before: CPUSample, after: CPUSample) -> CPUShare:
        wall = after.wall - before.wall
        server = after.server - before.server
        load = after.load - before.load
        others = max(0.0, after.machine - before.machine - server - load)
        return cls(100 * server / wall, 100 * load / wall, 100 * others / wall)


# -- descriptors -----------------------------------------------------------------------------


def raiseDescriptorLimit(needed: int) -> int:
    """
    Raise RLIMIT_NOFILE's soft limit to the hard one (and the hard one to
    C{needed} if we may): every agent is a socket here and in the server.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _serverDescriptorLimit() -> None:
    """In the server child, before exec: soft RLIMIT_NOFILE up to the hard limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the server process ----------------------------------------------------------------------


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """One C{twistd edge-tunnel-server}, started by us, stopped by PID."""

    process: subprocess.Popen[bytes]
    logPath: Path
    tunnelPort: int
    connectPort: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory(self) -> dict[str, int]:
        return processMemory(self.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def logProblems(self) -> list[str]:
        """The server's warning and error lines (twistd's text log: C{[ns#warn]})."""
        with open(self.logPath, errors="replace") as f:
            return [line.rstrip() for line in f if any(m in line for m in _PROBLEMS)]

    def logCount(self, text: str) -> int:
        with open(self.logPath, errors="replace") as f:
            return sum(1 for line in f if text in line)


#: Every server process started, so that an interrupted run still stops them (by PID).
_started: list[subprocess.Popen[bytes]] = []

_PROBLEMS = ("#warn]", "#error]", "#critical]", "Traceback")


def startServer(
    work: Path, pki: dict[str, Path], keepaliveInterval: float, bootstrap: str = TWISTD
) -> ServerProcess:
    """
    C{twistd -n edge-tunnel-server} on loopback, proxy listeners off,
    iptables untouched; the CONNECT door is how the opens reach agents.

    @param bootstrap: the C{python -c} program that runs twistd; profiling
        scripts pass one that sets up e.g. C{tracemalloc} first.
    """
    tunnelPort, connectPort = freePort(), freePort()
    argv = [
        sys.executable,
        *("-c", bootstrap, "-n", "--pidfile=", "edge-tunnel-server"),
        f"--tunnel-endpoint=tcp:{tunnelPort}:interface=127.0.0.1",
        f"--connect-endpoint=tcp:{connectPort}:interface=127.0.0.1",
        f"--ca={pki['ca']}",
        f"--cert={pki['cert']}",
        f"--key={pki['key']}",
        "--https-proxy-endpoint=none",
        "--http-proxy-endpoint=none",
        "--tcp-proxy-endpoint=none",
        "--no-iptables",
        f"--keepalive-interval={keepaliveInterval:g}",
    ]
    env = daemonEnv()
    logPath = work / f"server-{tunnelPort}.log"
    with open(logPath, "wb") as logFile:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logFile,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches us only; we stop it
            preexec_fn=_serverDescriptorLimit,
        )
    _started.append(process)
    return ServerProcess(process, logPath, tunnelPort, connectPort)


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def waitForListening(reactor: Any, server: ServerProcess) -> None:
    """
    Poll until the CONNECT door accepts, or fail at the deadline.  The
    agent port is opened before it; probing that one would log a refused
    agent (no TLS handshake) in the server's log.
    """
    deadline = time.monotonic() + SERVER_START_DEADLINE
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.connectPort, timeout=1)
    while True:
        if not server.alive():
            raise RuntimeError(f"the server exited at startup; log:\n{tail(server.logPath)}")
        try:
            probe = await endpoint.connect(Factory.forProtocol(Protocol))
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not listen within {SERVER_START_DEADLINE:g}s"
                ) from None
            await sleep(reactor, 0.1)
        else:
            probe.transport.loseConnection()
            return


async def stopServer(reactor: Any, server: ServerProcess) -> int | None:
    """SIGTERM, then SIGKILL after a grace period; only this PID, never by name."""
    if server.alive():
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SERVER_STOP_GRACE
        while server.alive() and time.monotonic() < deadline:
            await sleep(reactor, 0.1)
    if server.alive():
        log(f"server {server.pid} still running {SERVER_STOP_GRACE:g}s after SIGTERM: SIGKILL")
        server.process.kill()
    return server.process.wait(timeout=10)


#: twistd stops cleanly on SIGTERM, then re-raises it to exit "killed by SIGTERM".
CLEAN_EXITS = (0, -signal.SIGTERM)


def stopLeftovers() -> None:
    """After an interrupted run: SIGKILL any server we started that still runs."""
    for process in _started:
        if process.poll() is None:
            log(f"stopping leftover server {process.pid}")
            process.kill()
            process.wait(timeout=10)


def tail(path: Path, lines: int = 20) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


# -- connecting the agents -------------------------------------------------------------------


@dataclass
class ConnectResult:
    agents: list[Any]
    seconds: float
    latencies: list[float]
    failures: Counter[str]
    cpu: CPUShare
    tcp: Counter[str]

    @property
    def connected(self) -> int:
        return len(self.latencies)


async def connectAgents(
    reactor: Any,
    identities: Sequence[AgentIdentity],
    server: ServerProcess,
    inFlight: int,
    keepalive: Keepalive,
) -> ConnectResult:
    """
    Start every agent, at most C{inFlight} handshakes at a time: an
    unbounded burst would mostly measure the listen backlog overflowing
    (SYN retries after 1 s), not what the server can do.  An agent whose
    first attempt fails is counted with its reason and stopped, not left
    to retry behind our back.
    """
    semaphore = DeferredSemaphore(inFlight)
    deadline = time.monotonic() + CONNECT_PHASE_BASE + CONNECT_PHASE_PER_AGENT * len(identities)
    agents: list[Any] = []
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def connectOne(identity: AgentIdentity) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            failures["not started: the connect phase ran out of time"] += 1
            return
        agent = makeAgent(reactor, identity, server.tunnelPort, keepalive)
        agents.append(agent)
        started = time.monotonic()
        agent.startService()
        waiting = agent.whenConnected(failAfterFailures=1)
        waiting.addTimeout(min(AGENT_CONNECT_TIMEOUT, remaining), reactor)
        try:
            await waiting
        except Exception as e:
            failures[f"{type(e).__name__}: {e}"] += 1
            await stopAgents(reactor, [agent])
            agents.remove(agent)
            return
        latencies.append(time.monotonic() - started)

    def paced(identity: AgentIdentity) -> Deferred[None]:
        return semaphore.run(lambda: Deferred.fromCoroutine(connectOne(identity)))

    before, tcpBefore = sampleCPU(server.pid), tcpCounters()
    await gatherResults([paced(identity) for identity in identities])
    after, tcpAfter = sampleCPU(server.pid), tcpCounters()
    tcpAfter.subtract(tcpBefore)
    return ConnectResult(
        agents,
        after.wall - before.wall,
        latencies,
        failures,
        CPUShare.between(before, after),
        tcpAfter,
    )


async def stopAgents(reactor: Any, agents: Sequence[Any], timeout: float = 60.0) -> int:
    """
    Stop agents (GOAWAY, close); fires when their connections are gone, or
    at the deadline.

    @return: how many had not finished closing by the deadline.
    """
    stopping = [Deferred.fromCoroutine(_stopOne(agent)) for agent in agents]
    done = gatherResults(stopping, consumeErrors=True)
    done.addTimeout(timeout, reactor)
    try:
        await done
    except Exception:
        return sum(1 for d in stopping if not d.called)
    return 0


async def _stopOne(agent: Any) -> None:
    stopped = agent.stopService()
    if stopped is not None:
        await stopped


async def waitForDepartures(reactor: Any, server: ServerProcess, count: int) -> float | None:
    """
    Wait until the server has logged C{count} agents as disconnected: our
    side of a connection is gone long before the server has processed its
    end, and its memory is only worth reading once it has.

    @return: seconds waited, or L{None} at the deadline.
    """
    started = time.monotonic()
    while server.logCount(" disconnected: ") < count:
        if time.monotonic() - started > DEPARTURE_DEADLINE:
            return None
        await sleep(reactor, 0.5)
    return time.monotonic() - started


# -- stream opens through the CONNECT door ---------------------------------------------------


class ConnectAndEcho(Protocol):
    """
    One CONNECT client: ask for C{node:port}, wait for C{200}, send the
    payload, expect it back byte for byte, close.  C{finished} fires with
    (seconds to the C{200}, seconds to the whole echo) once the connection
    is gone, or fails saying what went wrong.
    """

    def __init__(self, target: str, payload: bytes, started: float) -> None:
        self.target = target
        self.payload = payload
        self.started = started
        self.buffer = b""
        self.opened: float | None = None
        self.echoed: float | None = None
        self.error: str | None = None
        self.finished: Deferred[tuple[float, float]] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        head = f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n"
        self.transport.write(head.encode("ascii"))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if self.opened is None:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 200"):
                self.error = (
                    head.split(b"\r\n")[0].decode("latin-1") + " " + rest[:200].decode("latin-1")
                )
                self.transport.loseConnection()
                return
            self.opened = time.monotonic()
            self.buffer = rest
            self.transport.write(self.payload)
        if len(self.buffer) >= len(self.payload) and self.echoed is None:
            self.echoed = time.monotonic()
            if self.buffer != self.payload:
                self.error = f"echo differs: {len(self.buffer)} bytes back, not the ones sent"
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.error is None and (self.opened is None or self.echoed is None):
            self.error = f"closed before the echo: {reason.getErrorMessage()}"
        if self.error is not None:
            self.finished.errback(RuntimeError(self.error))
        else:
            assert self.opened is not None and self.echoed is not None
            self.finished.callback((self.opened - self.started, self.echoed - self.started))


async def openOnce(reactor: Any, connectPort: int, target: str) -> tuple[float, float]:
    payload = os.urandom(ECHO_BYTES)
    started = time.monotonic()
    client = ConnectAndEcho(target, payload, started)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", connectPort, timeout=OPEN_TIMEOUT)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    finished = client.finished
    finished.addTimeout(OPEN_TIMEOUT, reactor)
    try:
        return await finished
    except Exception:
        if client.transport is not None:
            client.transport.abortConnection()  # type: ignore[attr-defined]
        raise


@dataclass
class OpenResult:
    opened: list[float]  # seconds from connect() to "200 Connection established"
    echoed: list[float]  # seconds from connect() to the whole payload back
    failures: Counter[str]


async def openStreams(
    reactor: Any,
    connectPort: int,
    nodes: Sequence[str],
    echoPort: int,
    count: int,
    rng: random.Random,
) -> OpenResult:
    """
    C{OPEN_WARMUP} + C{count} sequential opens, each to a random connected
    node: sequential, so this is latency, not a rate.
    """
    result = OpenResult([], [], Counter())
    deadline = time.monotonic() + OPEN_PHASE_DEADLINE
    for index in range(OPEN_WARMUP + count):
        if time.monotonic() > deadline:
            result.failures["not started: the open phase ran out of time"] += 1
            continue
        target = f"{rng.choice(nodes)}:{echoPort}"
        try:
            opened, echoed = await openOnce(reactor, connectPort, target)
        except Exception as e:
            result.failures[f"{type(e).__name__}: {e}"] += 1
            continue
        if index >= OPEN_WARMUP:
            result.opened.append(opened)
            result.echoed.append(echoed)
    return result


def listenEcho(reactor: Any) -> Deferred[IListeningPort]:
    """The simulated nodes' one service: TCP echo on 127.0.0.1, any free port."""
    return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))


# -- one size --------------------------------------------------------------------------------


@dataclass
class SizeOptions:
    """
    @ivar bootstrap: the server's C{python -c} program (see L{startServer}).
    @ivar atIdle: called with the server when the idle window starts, e.g.
        by a profiling script to attach py-spy.
    """

    idleSeconds: float = 60.0
    opens: int = 200
    inFlight: int = 32
    keepaliveInterval: float = Keepalive().interval
    seed: int = 1
    settleSeconds: float = SETTLE_SECONDS
    bootstrap: str = TWISTD
    atIdle: Callable[[ServerProcess], object] | None = None


@dataclass
class IdleResult:
    """CPU while only keepalives flow, and the frames the agents sent and received."""

    seconds: float
    cpu: CPUShare
    sent: Counter[str]
    received: Counter[str]

    def perAgentMinute(self, counts: Counter[str], kind: str, agents: int) -> float:
        return counts[kind] * 60 / self.seconds / max(agents, 1)


async def measureIdle(
    reactor: Any, server: ServerProcess, seconds: float, frames: FrameCounter
) -> IdleResult:
    sentBefore, receivedBefore = frames.snapshot()
    before = sampleCPU(server.pid)
    await sleep(reactor, seconds)
    after = sampleCPU(server.pid)
    sent, received = frames.snapshot()
    sent.subtract(sentBefore)
    received.subtract(receivedBefore)
    return IdleResult(after.wall - before.wall, CPUShare.between(before, after), sent, received)


@dataclass
class SizeResult:
    agents: int
    connect: ConnectResult | None = None
    memoryBefore: dict[str, int] = field(default_factory=dict)
    memoryConnected: dict[str, int] = field(default_factory=dict)
    memoryAfterOpens: dict[str, int] = field(default_factory=dict)
    memoryLeft: dict[str, int] = field(default_factory=dict)
    loadMemoryConnected: dict[str, int] = field(default_factory=dict)
    departSeconds: float | None = None
    idle: IdleResult | None = None
    opens: OpenResult | None = None
    serverConnectedLines: int = 0
    serverProblems: list[str] = field(default_factory=list)
    agentsNotStopped: int = 0
    serverExit: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        connect, opens = self.connect, self.opens
        return (
            self.error is None
            and connect is not None
            and connect.connected == self.agents
            and opens is not None
            and not opens.failures
        )


async def runSize(
    reactor: Any, fleet: Fleet, count: int, options: SizeOptions, work: Path
) -> SizeResult:
    """A fresh server, C{count} agents, the measurements; everything stopped at the end."""
    result = SizeResult(count)
    fleet.grow(count)
    keepalive = Keepalive(interval=options.keepaliveInterval)
    server = startServer(
        work, fleet.writeServerPKI(work / "pki"), options.keepaliveInterval, options.bootstrap
    )
    echo = await listenEcho(reactor)
    frames = FrameCounter()
    frames.install()
    agents: list[Any] = []
    try:
        await waitForListening(reactor, server)
        await sleep(reactor, options.settleSeconds)  # the fresh process's startup work
        result.memoryBefore = server.memory()
        log(f"N={count}: server pid {server.pid} up, RSS {result.memoryBefore['VmRSS']} KiB")
        connect = await connectAgents(
            reactor, fleet.agents[:count], server, options.inFlight, keepalive
        )
        agents = connect.agents
        result.connect = connect
        log(
            f"N={count}: {connect.connected} connected in {connect.seconds:.1f}s"
            f" ({sum(connect.failures.values())} failed)"
        )
        await sleep(reactor, options.settleSeconds)
        result.memoryConnected = server.memory()
        result.loadMemoryConnected = processMemory(os.getpid())
        if options.atIdle is not None:
            options.atIdle(server)
        result.idle = idle = await measureIdle(reactor, server, options.idleSeconds, frames)
        cpu, sent = idle.cpu, {kind: n for kind, n in idle.sent.items() if n}
        log(
            f"N={count}: idle for {idle.seconds:.0f}s: CPU server {cpu.server:.1f}%,"
            f" load {cpu.load:.1f}%, others {cpu.others:.1f}%; the agents sent {sent}"
        )
        nodes = [agent.nodeName for agent in agents]
        if nodes:
            result.opens = await openStreams(
                reactor,
                server.connectPort,
                nodes,
                echo.getHost().port,
                options.opens,
                random.Random(options.seed),
            )
        result.memoryAfterOpens = server.memory()
        departing = time.monotonic()
        result.agentsNotStopped = await stopAgents(reactor, agents)
        agents = []
        result.departSeconds = await waitForDepartures(reactor, server, connect.connected)
        if result.departSeconds is not None:
            result.departSeconds = time.monotonic() - departing
        await sleep(reactor, options.settleSeconds)
        result.memoryLeft = server.memory()
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
        log(f"N={count}: {result.error}")
    finally:
        frames.uninstall()
        if agents:
            result.agentsNotStopped = await stopAgents(reactor, agents)
        await echo.stopListening()
        result.serverExit = await stopServer(reactor, server)
        result.serverConnectedLines = server.logCount("connected from")
        result.serverProblems = server.logProblems()
    return result


# -- the report ------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def markdownTable(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ms(values: Sequence[float]) -> str:
    """p50 / p99 of durations in seconds, as milliseconds."""
    if not values:
        return "-"
    return f"{1000 * percentile(values, 0.5):.2f} / {1000 * percentile(values, 0.99):.2f}"


def connectRow(r: SizeResult) -> list[str]:
    c = r.connect
    if c is None:
        return [f"{r.agents:,}", *["-"] * 7]
    return [
        f"{r.agents:,}",
        f"{c.connected:,}",
        str(sum(c.failures.values())),
        f"{c.seconds:.1f}",
        f"{c.connected / c.seconds:.0f}" if c.seconds else "-",
        ms(c.latencies),
        f"{c.cpu.server:.0f} / {c.cpu.load:.0f} / {c.cpu.others:.0f}",
        f"{c.tcp['ListenOverflows']} / {c.tcp['ListenDrops']} / {c.tcp['RetransSegs']}",
    ]


def memoryRow(r: SizeResult) -> list[str]:
    before = r.memoryBefore.get("VmRSS")
    connected = r.memoryConnected.get("VmRSS")
    count = r.connect.connected if r.connect is not None else 0
    perAgent = "-"
    if count and before is not None and connected is not None:
        perAgent = f"{(connected - before) / count:.1f}"
    hwm = r.memoryLeft.get("VmHWM") or r.memoryAfterOpens.get("VmHWM")
    return [
        f"{r.agents:,}",
        mib(before),
        mib(connected),
        perAgent,
        mib(hwm),
        "-" if r.departSeconds is None else f"{r.departSeconds:.1f}",
        mib(r.memoryLeft.get("VmRSS")),
        mib(r.loadMemoryConnected.get("VmRSS")),
    ]


def idleRow(r: SizeResult) -> list[str]:
    idle, o = r.idle, r.opens
    count = r.connect.connected if r.connect is not None else 0
    if idle is None:
        cpu = ["-"] * 5
    else:
        ping = idle.perAgentMinute(idle.sent, "PING", count)
        pong = idle.perAgentMinute(idle.received, "PING", count)
        cpu = [
            f"{idle.seconds:.0f}",
            f"{idle.cpu.server:.1f}",
            f"{idle.cpu.load:.1f}",
            f"{idle.cpu.others:.1f}",
            f"{ping:.1f} / {pong:.1f}",
        ]
    return [
        f"{r.agents:,}",
        *cpu,
        "-" if o is None else f"{len(o.opened)}",
        "-" if o is None else ms(o.opened),
        "-" if o is None else ms(o.echoed),
        "-" if o is None else str(sum(o.failures.values())),
    ]


def resultsTable(results: Sequence[SizeResult]) -> str:
    """Three tables: connecting, memory, idle CPU and stream opens."""
    connect = markdownTable(
        [
            "agents",
            "connected",
            "failed",
            "connect s",
            "agents/s",
            "dial to HELLO p50 / p99 ms",
            "CPU server / load / others % (connecting)",
            "listen overflows / drops / TCP retransmits (machine)",
        ],
        [connectRow(r) for r in results],
    )
    memory = markdownTable(
        [
            "agents",
            "server RSS before MiB",
            "server RSS connected MiB",
            "KiB per agent",
            "server VmHWM MiB",
            "s until the server saw all leave",
            "server RSS after they left MiB",
            "load process RSS MiB",
        ],
        [memoryRow(r) for r in results],
    )
    idle = markdownTable(
        [
            "agents",
            "idle s",
            "idle CPU server %",
            "idle CPU load process %",
            "idle CPU others %",
            "PINGs per tunnel per minute, from agent / from server",
            "opens",
            "open p50 / p99 ms",
            "open + 1 KiB echo p50 / p99 ms",
            "open failures",
        ],
        [idleRow(r) for r in results],
    )
    return "\n\n".join([connect, memory, idle])


def problems(results: Sequence[SizeResult]) -> str:
    """Every failure, counted, and the server's warning lines: nothing hidden."""
    lines = []
    for r in results:
        found = []
        if r.error:
            found.append(f"- run failed: {r.error}")
        if r.connect is not None:
            found += [
                f"- {n} agents failed to connect: {why}" for why, n in r.connect.failures.items()
            ]
        if r.opens is not None:
            found += [f"- {n} opens failed: {why}" for why, n in r.opens.failures.items()]
        if r.connect is not None and r.connect.connected and r.departSeconds is None:
            found.append(
                f"- the server had not logged every agent's departure {DEPARTURE_DEADLINE:g}s "
                "after they left"
            )
        if r.agentsNotStopped:
            found.append(f"- {r.agentsNotStopped} agents had not closed 60 s after stopping")
        if r.connect is not None and r.serverConnectedLines != r.connect.connected:
            found.append(
                f"- the server logged {r.serverConnectedLines} 'connected' lines for "
                f"{r.connect.connected} agents"
            )
        if r.serverExit not in (*CLEAN_EXITS, None):
            found.append(f"- the server exited with status {r.serverExit}")
        if r.serverProblems:
            found.append(f"- the server logged {len(r.serverProblems)} warnings or errors, e.g.:")
            found += [f"  `{line[:200]}`" for line in r.serverProblems[:5]]
        lines.append(f"N={r.agents:,}: " + ("none" if not found else "\n" + "\n".join(found)))
    return "\n".join(lines)


def libraryVersion() -> str:
    """The commit measured, and whether twisted_tunnel/ differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{REPO} (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "twisted_tunnel")
    return f"commit {commit}" + (" with uncommitted changes in twisted_tunnel/" if dirty else "")


def report(results: Sequence[SizeResult], argv: Sequence[str], warnings: int) -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    commit = libraryVersion()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"# bench/agents.py, {when}",
            "",
            f"- machine: `{' '.join(platform.uname())}`, {cpu}, {os.cpu_count()} CPUs",
            f"- library: {commit}",
            f"- command: `{' '.join(['bench/agents.py', *argv])}`",
            f"- warnings logged by the agents in this process: {warnings}",
            "",
            resultsTable(results),
            "",
            "Failures:",
            "",
            problems(results),
            "",
        ]
    )


# -- the command line ------------------------------------------------------------------------


@implementer(ILogObserver)
class WarningCounter:
    """
    This process's log: 10,000 agents' info lines would cost CPU and
    memory for nothing, so only warnings and errors count, and the first
    few are shown.
    """

    def __init__(self, show: int = 10) -> None:
        self.count = 0
        self.show = show

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) < LogLevel.warn:
            return
        self.count += 1
        if self.count <= self.show:
            log(f"agent-side warning: {formatEvent(event)}")


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/agents.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--agents", type=int, nargs="+", default=[1000, 5000, 10000], help="sizes to run"
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--opens", type=int, default=200, help="sequential stream opens per size")
    parser.add_argument(
        "--in-flight", type=int, default=32, help="handshakes at once (below the backlog of 50)"
    )
    parser.add_argument("--keepalive-interval", type=float, default=Keepalive().interval)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, help="also write the report (Markdown) here")
    parser.add_argument(
        "--keep-going", action="store_true", help="run the next size even if one failed"
    )
    return parser.parse_args(argv)


async def runAll(reactor: Any, args: argparse.Namespace, work: Path) -> list[SizeResult]:
    options = SizeOptions(
        idleSeconds=args.idle_seconds,
        opens=args.opens,
        inFlight=args.in_flight,
        keepaliveInterval=args.keepalive_interval,
        seed=args.seed,
    )
    started = time.monotonic()
    fleet = newFleet()
    fleet.grow(max(args.agents))
    log(f"minted {len(fleet.agents)} agent certificates in {time.monotonic() - started:.1f}s")
    gc.freeze()  # the certificates live to the end: keep them out of every collection
    results = []
    for count in args.agents:
        result = await runSize(reactor, fleet, count, options, work)
        results.append(result)
        print(resultsTable([result]), file=sys.stderr, flush=True)
        if not result.ok and not args.keep_going:
            log(f"N={count} failed; stopping (--keep-going runs the next sizes anyway)")
            break
    return results


def main(argv: Sequence[str]) -> int:
    args = parseArgs(argv)
    limit = raiseDescriptorLimit(max(args.agents) + SPARE_DESCRIPTORS)
    if limit < max(args.agents) + SPARE_DESCRIPTORS:
        log(f"RLIMIT_NOFILE is {limit}: too low for {max(args.agents)} agents")
        return 2
    warnings = WarningCounter()
    globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)
    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    outcome: dict[str, list[SizeResult]] = {}

    async def body(reactor: Any) -> None:
        outcome["results"] = await runAll(reactor, args, work)

    try:
        react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
    except SystemExit:
        pass
    finally:
        stopLeftovers()
        shutil.rmtree(work, ignore_errors=True)
    results = outcome.get("results", [])
    text = report(results, argv, warnings.count)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    ok = len(results) == len(args.agents) and all(r.ok for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
