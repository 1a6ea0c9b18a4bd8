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

With C{--storm} (issue 6, "reconnect storms stay calm"), for each size
(default 1,000) it connects the agents, each with the library's own
reconnect behaviour (L{TunnelAgent}'s default backoff: exponential with
equal jitter, capped at 30 s), stops the server by PID (C{--signal kill}, a
crash, or C{term}, a graceful restart), starts a fresh one on the same
ports, and measures:

 - when each agent is back (HELLO done) after the new server listens:
   p50, p90, max, and how many came back in each second;
 - that none gave up: each still running, each back;
 - that the server answers throughout: a health check every 0.25 s from a
   separate process (L{HealthProbe}), C{CONNECT} to a node that does not
   exist through the CONNECT door, answered (any status) within 1 s;
 - the server's CPU and memory during the storm.

The agents are the library's own L{TunnelAgent}s (with L{agentOptions} and
L{makeCredentials}), not a second implementation of the protocol: what is
measured is what real agents would make the server do.  Everything listens
and connects on 127.0.0.0/8 only.  Every phase has a deadline; the tool
stops exactly the processes it started (by PID) and removes its temporary
directory.

    usage: agents.py [--agents N ...] [--idle-seconds S] [--opens K] [--keep-going]
           agents.py --storm [--agents N ...] [--signal kill|term] [--storm-outage S]

See C{bench/results/scale.md} and C{bench/results/storm.md} for results and
how to read them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater, react
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
)
from twisted.protocols.wire import Echo
from twisted.python.failure import Failure
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_procs.py, however loaded
from _procs import META_ENDPOINT, REPO, TWISTD, daemonEnv, freePort  # noqa: E402

sys.path.insert(0, str(REPO))  # run from anywhere, with the repository's twisted_tunnel

from twisted_tunnel.agent import TunnelAgent  # noqa: E402
from twisted_tunnel.mux import Keepalive, Tunnel, TunnelAddress  # noqa: E402
from twisted_tunnel.tls import Credentials, agentOptions, makeCredentials  # noqa: E402
from twisted_tunnel.tls.certs import Issued, mintAgent, mintCA, mintServer, writePair  # noqa: E402

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
        send, receive = Tunnel.sendFrame, Tunnel._frameReceived
        self._originals = (send, receive)
        sent, received = self.sent, self.received

        def countedSend(tunnel: Tunnel, frame: Any) -> None:
            sent[frame.TYPE.name] += 1
            send(tunnel, frame)

        def countedReceive(tunnel: Tunnel, frame: Any) -> None:
            received[frame.TYPE.name] += 1
            receive(tunnel, frame)

        Tunnel.sendFrame = countedSend  # type: ignore[method-assign]
        Tunnel._frameReceived = countedReceive  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._originals is not None:
            Tunnel.sendFrame, Tunnel._frameReceived = self._originals  # type: ignore[method-assign]
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

    def logLines(self, text: str) -> list[str]:
        with open(self.logPath, errors="replace") as f:
            return [line.rstrip() for line in f if text in line]

    def logCount(self, text: str) -> int:
        with open(self.logPath, errors="replace") as f:
            return sum(1 for line in f if text in line)


#: Every server process started, so that an interrupted run still stops them (by PID).
_started: list[subprocess.Popen[bytes]] = []

_PROBLEMS = ("#warn]", "#error]", "#critical]", "Traceback")


def startServer(
    work: Path,
    pki: dict[str, Path],
    keepaliveInterval: float,
    bootstrap: str = TWISTD,
    ports: tuple[int, int] | None = None,
    logName: str | None = None,
) -> ServerProcess:
    """
    C{twistd -n edge-tunnel-server} on loopback, proxy listeners off,
    iptables untouched; the CONNECT door is how the opens reach agents.

    @param bootstrap: the C{python -c} program that runs twistd; profiling
        scripts pass one that sets up e.g. C{tracemalloc} first.
    @param ports: the agent port and the CONNECT door's port, e.g. those of
        a server this one replaces; by default two free ones.
    @param logName: the log file's name in C{work}; by default
        C{server-<agent port>.log}.
    """
    tunnelPort, connectPort = ports if ports is not None else (freePort(), freePort())
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
        META_ENDPOINT,
    ]
    env = daemonEnv()
    logPath = work / (logName or f"server-{tunnelPort}.log")
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


async def waitForListening(reactor: Any, server: ServerProcess, poll: float = 0.1) -> None:
    """
    Poll every C{poll} seconds until the CONNECT door accepts, or fail at
    the deadline.  The agent port is opened before it; probing that one
    would log a refused agent (no TLS handshake) in the server's log.
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
            await sleep(reactor, poll)
        else:
            probe.transport.loseConnection()
            return


async def stopServer(
    reactor: Any, server: ServerProcess, sig: int = signal.SIGTERM, poll: float = 0.1
) -> int | None:
    """
    C{sig} (SIGTERM), then SIGKILL after a grace period; only this PID,
    never by name.  Looks every C{poll} seconds whether it is gone.
    """
    if server.alive():
        server.process.send_signal(sig)
        deadline = time.monotonic() + SERVER_STOP_GRACE
        while server.alive() and time.monotonic() < deadline:
            await sleep(reactor, poll)
    if server.alive():
        name = signal.Signals(sig).name
        log(f"server {server.pid} still running {SERVER_STOP_GRACE:g}s after {name}: SIGKILL")
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
    #: how many times the agents connect and leave, against the one server
    #: (issue 15: does the memory come back, or grow storm after storm?)
    cycles: int = 1


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
    #: server RSS (KiB) connected and after all left, for each cycle after
    #: the first (see L{SizeOptions.cycles})
    moreCycles: list[tuple[int, int]] = field(default_factory=list)
    #: the server's log lines of each trim after the agents left (the
    #: memory it returned, how long malloc_trim blocked it)
    serverTrims: list[str] = field(default_factory=list)

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
        for cycle in range(2, options.cycles + 1):
            again = await connectAgents(
                reactor, fleet.agents[:count], server, options.inFlight, keepalive
            )
            agents = again.agents
            await sleep(reactor, options.settleSeconds)
            connectedRSS = server.memory()["VmRSS"]
            result.agentsNotStopped += await stopAgents(reactor, agents)
            agents = []
            await waitForDepartures(reactor, server, again.connected)
            await sleep(reactor, options.settleSeconds)
            leftRSS = server.memory()["VmRSS"]
            result.moreCycles.append((connectedRSS, leftRSS))
            log(
                f"N={count}: cycle {cycle}: {again.connected} connected, RSS"
                f" {connectedRSS // 1024} MiB; all left, RSS {leftRSS // 1024} MiB"
            )
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
        result.serverTrims = server.logLines("malloc_trim took")
        for line in result.serverTrims:
            log(f"N={count}: server: {line.split('] ', 1)[-1]}")
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
    cycles = [r for r in results if r.moreCycles]
    if cycles:
        memory += "\n\n" + markdownTable(
            ["agents", "server RSS MiB, connected → after all left, cycle by cycle"],
            [
                [
                    f"{r.agents:,}",
                    ", ".join(
                        f"{mib(c)} → {mib(left)}"
                        for c, left in [
                            (r.memoryConnected.get("VmRSS"), r.memoryLeft.get("VmRSS")),
                            *r.moreCycles,
                        ]
                    ),
                ]
                for r in cycles
            ],
        )
    for r in results:
        if r.serverTrims:
            memory += (
                f"\n\nN={r.agents:,}: the server returned memory after the agents left:\n"
                + "\n".join(f"- `{line.split('] ', 1)[-1]}`" for line in r.serverTrims)
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


def reportHeader(argv: Sequence[str], warnings: int) -> list[str]:
    """A report's title and what was measured where: machine, library, command."""
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
    return [
        f"# bench/agents.py, {when}",
        "",
        f"- machine: `{' '.join(platform.uname())}`, {cpu}, {os.cpu_count()} CPUs",
        f"- library: {commit}",
        f"- command: `{' '.join(['bench/agents.py', *argv])}`",
        f"- warnings logged by the agents in this process: {warnings}",
    ]


def report(results: Sequence[SizeResult], argv: Sequence[str], warnings: int) -> str:
    return "\n".join(
        [
            *reportHeader(argv, warnings),
            "",
            resultsTable(results),
            "",
            "Failures:",
            "",
            problems(results),
            "",
        ]
    )


# -- the reconnect storm ---------------------------------------------------------------------

#: The issue's bound: every agent is back this many seconds after the new server listens.
STORM_BOUND = 30.0
#: Seconds between two health checks, and how long one may take to be answered.
HEALTH_INTERVAL = 0.25
HEALTH_DEADLINE = 1.0
#: What a health check asks the CONNECT door for: a node that never exists, so that
#: the server answers (C{503}) by itself, from its registry, without any agent's help.
HEALTH_TARGET = "storm-probe.invalid:1"
#: Seconds the health-check process lives at most, whatever becomes of us.
HEALTH_PROBE_LIFETIME = 900.0
#: Seconds the health-check process may take to report its first check.
HEALTH_PROBE_START_DEADLINE = 30.0
#: Seconds between two samples of the new server's CPU and memory.
SERVER_SAMPLE_INTERVAL = 0.25


@dataclass(frozen=True)
class HealthSample:
    """
    One health check: when it started (C{time.monotonic()}, one clock for
    every process on the machine), how long it took, and the answer: the
    status code (C{"503"}), or what went wrong (C{"ConnectionRefusedError"},
    C{"TimeoutError"}, ...).
    """

    started: float
    seconds: float
    answer: str

    @property
    def answered(self) -> bool:
        return self.answer.isdigit()


def checkHealth(port: int, deadline: float, target: str = HEALTH_TARGET) -> HealthSample:
    """
    One health check with a blocking socket: C{CONNECT target} to the door
    on 127.0.0.1:C{port}.  Answered once a status line is back, whatever its
    code; failed (C{TimeoutError}) if that takes more than C{deadline}
    seconds in all, connecting included.
    """
    started = time.monotonic()
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii")
    received = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=deadline) as s:
            s.sendall(request)
            while b"\r\n" not in received:
                remaining = started + deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                s.settimeout(remaining)
                chunk = s.recv(4096)
                if not chunk:
                    return HealthSample(started, time.monotonic() - started, "closed, no answer")
                received += chunk
    except OSError as e:
        return HealthSample(started, time.monotonic() - started, type(e).__name__)
    seconds = time.monotonic() - started
    words = received.split(b"\r\n", 1)[0].split()
    if len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit():
        return HealthSample(started, seconds, words[1].decode("ascii"))
    return HealthSample(started, seconds, f"not HTTP: {received[:40]!r}")


def runHealthProbe(port: int, interval: float, deadline: float, out: IO[str]) -> None:
    """
    The health-check process (C{agents.py --health-probe PORT}): a check
    starts every C{interval} seconds, or at once after one that took longer
    (so that at any moment a check is under way or due within C{interval});
    one JSON line per check on C{out}, until our stdin closes (the storm is
    over) or L{HEALTH_PROBE_LIFETIME} has passed.
    """
    begun = tick = time.monotonic()
    stdin = sys.stdin.fileno()
    while time.monotonic() - begun < HEALTH_PROBE_LIFETIME:
        sample = checkHealth(port, deadline)
        out.write(json.dumps([sample.started, sample.seconds, sample.answer]) + "\n")
        out.flush()
        now = time.monotonic()
        tick = max(tick + interval, now)
        ready, _, _ = select.select([stdin], [], [], tick - now)
        if ready and not os.read(stdin, 4096):
            return


@dataclass
class HealthProbe:
    """
    The health-check process, started by us and stopped by PID.

    Why a process of its own: the checks measure the server, but this
    process is busy with a thousand agents' TLS handshakes.  A check run by
    this reactor would start late and see its answer late whenever the
    agents keep the reactor busy, and a thread here would wait for the GIL
    behind them; either would blame the server for our own slowness (or
    hide how slow it is, if checks are skipped).  A separate process with
    a blocking socket only competes for a core, like the server does.
    """

    process: subprocess.Popen[bytes]
    outPath: Path

    def samples(self) -> list[HealthSample]:
        found = []
        with open(self.outPath) as f:
            for line in f:
                try:
                    started, seconds, answer = json.loads(line)
                except ValueError:
                    continue  # a line being written as we read
                found.append(HealthSample(float(started), float(seconds), str(answer)))
        return found

    async def firstSample(self, reactor: Any) -> None:
        deadline = time.monotonic() + HEALTH_PROBE_START_DEADLINE
        while not self.samples():
            if self.process.poll() is not None:
                raise RuntimeError(f"the health-check process exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no health check within {HEALTH_PROBE_START_DEADLINE:g}s of starting"
                )
            await sleep(reactor, 0.05)

    async def stop(self, reactor: Any) -> list[HealthSample]:
        """Close its stdin (it stops after the check in hand), SIGKILL it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        deadline = time.monotonic() + HEALTH_DEADLINE + 5.0
        while self.process.poll() is None and time.monotonic() < deadline:
            await sleep(reactor, 0.05)
        if self.process.poll() is None:
            log(f"health-check process {self.process.pid} still running: SIGKILL")
            self.process.kill()
        self.process.wait(timeout=10)
        return self.samples()


def startHealthProbe(work: Path, port: int, interval: float, deadline: float) -> HealthProbe:
    outPath = work / f"health-{port}.jsonl"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--health-probe", str(port)),
        *(f"--health-interval={interval:g}", f"--health-deadline={deadline:g}"),
    ]
    with open(outPath, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.DEVNULL,
            cwd=work,
            start_new_session=True,
        )
    _started.append(process)
    return HealthProbe(process, outPath)


def isRetryEvent(event: dict[str, Any]) -> bool:
    """The reconnecting agent's "no tunnel to ...; retrying in ..." warning."""
    return "failures" in event and "delay" in event


@implementer(ILogObserver)
class RetryCounter:
    """
    The agents' failed attempts, from their log events (the retry warning
    carries C{failures}, the agent's failed attempts in a row, and C{delay},
    the backoff before the next): when each failed and why, how far into
    its backoff each agent went, the longest delay chosen.
    """

    def __init__(self) -> None:
        self.failed: list[tuple[float, str]] = []
        self.deepest: dict[object, int] = {}
        self.longestDelay = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        if not isRetryEvent(event):
            return
        self.failed.append((time.monotonic(), str(event.get("reason"))))
        source = event.get("log_source")
        self.deepest[source] = max(self.deepest.get(source, 0), int(event["failures"]))
        self.longestDelay = max(self.longestDelay, float(event["delay"]))

    def reasons(self, start: float, end: float) -> Counter[str]:
        """Why the attempts that failed in [C{start}, C{end}) failed."""
        return Counter(why for when, why in self.failed if start <= when < end)

    def byFailures(self, agents: int) -> Counter[int]:
        """How many agents failed 0, 1, 2, ... attempts in a row before they were back."""
        counts = Counter(self.deepest.values())
        counts[0] += agents - len(self.deepest)
        return counts


async def reconnection(reactor: Any, agent: TunnelAgent, before: Tunnel) -> float:
    """
    When (C{time.monotonic()}) C{agent} is connected again, HELLO done, after
    losing C{before}.  Fails if the agent stops trying (its
    L{TunnelAgent.whenConnected} fails when it stops).
    """
    await before.whenLost()
    while True:
        tunnel = await agent.whenConnected()
        if tunnel is not before:
            return time.monotonic()
        await sleep(reactor, 0.01)


@dataclass(frozen=True)
class ServerSample:
    wall: float
    cpu: float
    rss: int


def peakCPU(samples: Sequence[ServerSample], window: float = 1.0) -> float | None:
    """The busiest C{window} seconds' CPU, in % of one core."""
    best = None
    for i, first in enumerate(samples):
        for last in samples[i + 1 :]:
            if last.wall - first.wall >= window:
                share = 100 * (last.cpu - first.cpu) / (last.wall - first.wall)
                best = share if best is None else max(best, share)
                break
    return best


def histogram(values: Sequence[float], width: float = 1.0) -> list[tuple[float, int]]:
    """
    (bin start, count) for every C{width}-second bin from 0 to the last one
    used, the empty ones too, so that the spread shows.  A value below 0
    counts in the first bin.
    """
    if not values:
        return []
    counts = Counter(max(0, int(v // width)) for v in values)
    return [(b * width, counts[b]) for b in range(max(counts) + 1)]


@dataclass
class StormOptions:
    """
    @ivar signal: what restarts the server: C{SIGKILL} (a crash) or
        C{SIGTERM} (a graceful restart: GOAWAY, drain, exit).
    @ivar outageSeconds: how long to wait, once the old server is gone,
        before starting the new one (a restart that takes longer, e.g. a
        pod rescheduled): the agents go deeper into their backoff.
    @ivar waitSeconds: how long after the new server listens to wait for
        the last agent before giving up on it (the bound checked is
        L{STORM_BOUND}; waiting longer shows by how much it was missed).
    @ivar baselineSeconds: how long the health checks run against the old
        server, every agent connected, before the restart.
    @ivar holdSeconds: how long the health checks go on once every agent
        is back.
    @ivar bootstrap: the servers' C{python -c} program (see L{startServer}).
    """

    signal: signal.Signals = signal.SIGKILL
    inFlight: int = 32
    keepaliveInterval: float = Keepalive().interval
    outageSeconds: float = 0.0
    waitSeconds: float = 120.0
    baselineSeconds: float = 2.0
    holdSeconds: float = 5.0
    settleSeconds: float = SETTLE_SECONDS
    healthInterval: float = HEALTH_INTERVAL
    healthDeadline: float = HEALTH_DEADLINE
    bootstrap: str = TWISTD


@dataclass
class StormResult:
    """
    One storm.  The instants are C{time.monotonic()}: C{signalled} the old
    server was sent the signal, C{exited} it was gone, C{started} the new
    one was started on the same ports, C{listening} its CONNECT door first
    accepted a connection (the agent port opens just before), C{ended} the
    health checks stopped.  C{back} holds when each agent that came back
    had its tunnel up again.
    """

    agents: int
    signal: str
    connect: ConnectResult | None = None
    signalled: float | None = None
    exited: float | None = None
    started: float | None = None
    listening: float | None = None
    ended: float | None = None
    oldExit: int | None = None
    back: list[float] = field(default_factory=list)
    gaveUp: Counter[str] = field(default_factory=Counter)
    notBack: int = 0
    notRunning: int = 0
    withoutTunnel: int = 0
    failedWhileDown: Counter[str] = field(default_factory=Counter)
    failedAfterListening: Counter[str] = field(default_factory=Counter)
    byFailures: Counter[int] = field(default_factory=Counter)
    longestDelay: float = 0.0
    health: list[HealthSample] = field(default_factory=list)
    serverSamples: list[ServerSample] = field(default_factory=list)
    cpu: CPUShare | None = None
    memoryBefore: dict[str, int] = field(default_factory=dict)
    memoryAfter: dict[str, int] = field(default_factory=dict)
    serverConnectedLines: int = 0
    serverProblems: list[str] = field(default_factory=list)
    agentsNotStopped: int = 0
    serverExit: int | None = None
    error: str | None = None

    @property
    def reconnectSeconds(self) -> list[float]:
        """Per agent back: seconds from the new server listening to its tunnel up."""
        if self.listening is None:
            return []
        return sorted(t - self.listening for t in self.back)

    @property
    def allBackSeconds(self) -> float | None:
        seconds = self.reconnectSeconds
        return seconds[-1] if seconds and len(seconds) == self.agents else None

    def healthIn(self, start: float | None, end: float | None) -> list[HealthSample]:
        """The checks that started in [C{start}, C{end})."""
        if start is None or end is None:
            return []
        return [s for s in self.health if start <= s.started < end]

    @property
    def healthDuring(self) -> list[HealthSample]:
        """The checks from the new server listening to the end: all must be answered."""
        return self.healthIn(self.listening, self.ended)

    @property
    def healthBefore(self) -> list[HealthSample]:
        """The checks against the old server, all agents connected."""
        first = self.health[0].started if self.health else None
        return self.healthIn(first, self.signalled)

    def verdict(self) -> list[str]:
        """What the issue asks that did not hold (empty: the storm stayed calm)."""
        found = []
        if self.error is not None:
            found.append(f"the run failed: {self.error}")
        allBack = self.allBackSeconds
        if allBack is None:
            found.append(f"{self.agents - len(self.back)} of {self.agents} agents not back")
        elif allBack > STORM_BOUND:
            found.append(f"the last agent was back {allBack:.1f}s after listening")
        if self.gaveUp or self.notRunning:
            found.append(
                f"agents gave up: {self.notRunning} not running, reasons {dict(self.gaveUp)}"
            )
        during = self.healthDuring
        unanswered = [s for s in during if not s.answered]
        if not during:
            found.append("no health check while the new server ran")
        elif unanswered:
            answers = Counter(s.answer for s in unanswered)
            found.append(
                f"{len(unanswered)} of {len(during)} health checks not answered: {dict(answers)}"
            )
        return found

    @property
    def ok(self) -> bool:
        return not self.verdict()


async def runStorm(
    reactor: Any, fleet: Fleet, count: int, options: StormOptions, work: Path
) -> StormResult:
    """
    A server and C{count} agents with the library's reconnect behaviour;
    the server restarted with C{options.signal} (by PID) and a fresh one
    started on the same ports; then wait for every agent to be back, with
    health checks throughout (L{HealthProbe}).  Everything stopped at the end.
    """
    result = StormResult(count, options.signal.name)
    fleet.grow(count)
    keepalive = Keepalive(interval=options.keepaliveInterval)
    pki = fleet.writeServerPKI(work / "pki")
    server = startServer(
        work, pki, options.keepaliveInterval, options.bootstrap, logName="server-before.log"
    )
    servers = [server]
    retries = RetryCounter()
    probe: HealthProbe | None = None
    samples: list[ServerSample] = []
    sampler: LoopingCall | None = None
    agents: list[Any] = []
    back: dict[int, float] = {}
    gaveUp: dict[int, str] = {}
    try:
        await waitForListening(reactor, server)
        await sleep(reactor, options.settleSeconds)
        connect = await connectAgents(
            reactor, fleet.agents[:count], server, options.inFlight, keepalive
        )
        result.connect, agents = connect, connect.agents
        if connect.connected < count:
            raise RuntimeError(f"{connect.connected} of {count} agents connected at first")
        log(f"storm N={count}: {count} connected in {connect.seconds:.1f}s")
        await sleep(reactor, options.settleSeconds)
        result.memoryBefore = server.memory()
        probe = startHealthProbe(
            work, server.connectPort, options.healthInterval, options.healthDeadline
        )
        await probe.firstSample(reactor)
        await sleep(reactor, options.baselineSeconds)

        def watch(index: int, agent: TunnelAgent) -> None:
            before = agent.tunnel
            assert before is not None, f"{agent.nodeName} has no tunnel"
            waiting = Deferred.fromCoroutine(reconnection(reactor, agent, before))
            waiting.addCallbacks(
                lambda when: back.__setitem__(index, when),
                lambda failure: gaveUp.__setitem__(index, failure.getErrorMessage()),
            )

        for index, agent in enumerate(agents):
            watch(index, agent)
        globalLogPublisher.addObserver(retries)
        result.signalled = time.monotonic()
        result.oldExit = await stopServer(reactor, server, options.signal, poll=0.02)
        result.exited = time.monotonic()
        await sleep(reactor, options.outageSeconds)
        server = startServer(
            work,
            pki,
            options.keepaliveInterval,
            options.bootstrap,
            ports=(server.tunnelPort, server.connectPort),
            logName="server-after.log",
        )
        servers.append(server)
        result.started = time.monotonic()
        await waitForListening(reactor, server, poll=0.02)
        result.listening = time.monotonic()
        log(
            f"storm N={count}: {options.signal.name}; the old server was gone after"
            f" {result.exited - result.signalled:.2f}s, the new one listened"
            f" {result.listening - result.started:.2f}s after its start"
        )
        atListening = sampleCPU(server.pid)
        newServer = server

        def sample() -> None:
            try:
                cpu, rss = processCPU(newServer.pid), newServer.memory()["VmRSS"]
            except (OSError, KeyError):
                return  # it exited: the end of the run says so
            samples.append(ServerSample(time.monotonic(), cpu, rss))

        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(SERVER_SAMPLE_INTERVAL)
        deadline = result.listening + options.waitSeconds
        while len(back) + len(gaveUp) < count and time.monotonic() < deadline:
            await sleep(reactor, 0.05)
        result.cpu = CPUShare.between(atListening, sampleCPU(server.pid))
        result.memoryAfter = server.memory()
        log(f"storm N={count}: {len(back)} back, {len(gaveUp)} gave up; holding")
        await sleep(reactor, options.holdSeconds)
        result.ended = time.monotonic()
        result.notRunning = sum(1 for agent in agents if not agent.running)
        result.withoutTunnel = sum(1 for agent in agents if agent.tunnel is None)
    except Exception as e:
        result.error = f"{type(e).__name__}: {e}"
        log(f"storm N={count}: {result.error}")
    finally:
        globalLogPublisher.removeObserver(retries)
        if sampler is not None and sampler.running:
            sampler.stop()
        if probe is not None:
            result.health = await probe.stop(reactor)
        result.back = sorted(back.values())
        result.gaveUp = Counter(gaveUp.values())
        result.notBack = count - len(back) - len(gaveUp) if agents else count
        if agents:
            result.agentsNotStopped = await stopAgents(reactor, agents)
        for old in servers[:-1]:
            await stopServer(reactor, old)
        result.serverExit = await stopServer(reactor, servers[-1])
        if len(servers) > 1:
            result.serverConnectedLines = servers[-1].logCount("connected from")
        result.serverProblems = [line for s in servers for line in s.logProblems()]
    result.serverSamples = samples
    listening = result.listening if result.listening is not None else float("inf")
    result.failedWhileDown = retries.reasons(float("-inf"), listening)
    result.failedAfterListening = retries.reasons(listening, float("inf"))
    result.byFailures = retries.byFailures(count)
    result.longestDelay = retries.longestDelay
    return result


def seconds3(values: Sequence[float]) -> str:
    """p50 / p90 / max of durations in seconds."""
    if not values:
        return "-"
    return " / ".join(
        f"{v:.2f}" for v in (percentile(values, 0.5), percentile(values, 0.9), max(values))
    )


def stormRows(r: StormResult) -> tuple[list[str], list[str]]:
    """A row of the reconnecting table and one of the server table."""
    outage = "-"
    if r.signalled is not None and r.listening is not None and r.exited is not None:
        assert r.started is not None
        outage = (
            f"{r.listening - r.signalled:.2f} ({r.exited - r.signalled:.2f} + "
            f"{r.started - r.exited:.2f} + {r.listening - r.started:.2f})"
        )
    allBack = r.allBackSeconds
    steps = " / ".join(str(r.byFailures[k]) for k in range(max(r.byFailures, default=0) + 1))
    reconnecting = [
        f"{r.agents:,}",
        r.signal,
        f"{len(r.back):,}",
        str(sum(r.gaveUp.values()) + r.notRunning),
        outage,
        "-" if allBack is None else f"{allBack:.2f}",
        seconds3(r.reconnectSeconds),
        f"{r.failedWhileDown.total()} / {r.failedAfterListening.total()}",
        steps or "-",
        f"{r.longestDelay:.1f}",
    ]
    during, before = r.healthDuring, r.healthBefore
    answered = [s for s in during if s.answered]
    starts = [s.started for s in during]
    gap = max((b - a for a, b in zip(starts, starts[1:], strict=False)), default=None)
    answers = Counter(s.answer for s in during)
    peak = peakCPU(r.serverSamples)
    cpu = r.cpu
    server = [
        f"{r.agents:,}",
        f"{len(answered)} / {len(during)}",
        "-" if not during else f"{1000 * max(s.seconds for s in during):.0f}",
        "-" if not answered else f"{1000 * percentile([s.seconds for s in answered], 0.5):.1f}",
        ", ".join(f"{a}: {n}" for a, n in answers.most_common()) or "-",
        "-" if gap is None else f"{gap:.2f}",
        f"{sum(s.answered for s in before)} / {len(before)}",
        "-" if cpu is None else f"{cpu.server:.0f} / {cpu.load:.0f} / {cpu.others:.0f}",
        "-" if peak is None else f"{peak:.0f}",
        f"{mib(r.memoryBefore.get('VmRSS'))} / {mib(r.memoryAfter.get('VmRSS'))}"
        f" / {mib(r.memoryAfter.get('VmHWM'))}",
    ]
    return reconnecting, server


def stormTables(results: Sequence[StormResult]) -> str:
    rows = [stormRows(r) for r in results]
    reconnecting = markdownTable(
        [
            "agents",
            "signal",
            "back",
            "gave up",
            "outage s (old gone + down + new listening)",
            "all back s after listening",
            "reconnect p50 / p90 / max s",
            "failed attempts while down / after listening",
            "agents by failed attempts in a row 0 / 1 / 2 ...",
            "longest backoff s",
        ],
        [row for row, _ in rows],
    )
    server = markdownTable(
        [
            "agents",
            "health checks answered / total",
            "worst ms",
            "p50 ms",
            "answers",
            "longest gap between checks s",
            "before the restart answered / total",
            "CPU server / load / others % (listening to all back)",
            "server CPU peak % (1 s)",
            "server RSS before / all back / VmHWM MiB",
        ],
        [row for _, row in rows],
    )
    return "\n\n".join([reconnecting, server])


def _milliseconds(seconds: float) -> str:
    return "unanswered" if seconds == float("inf") else f"{1000 * seconds:.0f}"


def stormHistogram(r: StormResult, width: float = 1.0) -> str:
    """
    Per second after the new server listened: the agents back in it (with a
    bar), and the health checks started in it (how many, the slowest), up
    to the end of the checks.
    """
    if r.listening is None:
        return "(the new server never listened)"
    listening = r.listening
    back = dict(histogram(r.reconnectSeconds, width))
    checks: dict[float, list[float]] = {}
    for sample in r.healthDuring:
        start = (sample.started - listening) // width * width
        checks.setdefault(start, []).append(sample.seconds if sample.answered else float("inf"))
    starts = sorted(set(back) | set(checks))
    if not starts:
        return "(no agent back, no health check)"
    scale = max(back.values(), default=0) / 50 or 1
    rows = []
    for start in [b * width for b in range(round(starts[-1] / width) + 1)]:
        n, latencies = back.get(start, 0), checks.get(start, [])
        slowest = max(latencies, default=None)
        rows.append(
            [
                f"{start:g}-{start + width:g}",
                str(n),
                "#" * round(n / scale),
                str(len(latencies)),
                "-" if slowest is None else _milliseconds(slowest),
            ]
        )
    return markdownTable(
        ["s after listening", "agents back", "", "health checks", "slowest ms"], rows
    )


def stormProblems(r: StormResult) -> str:
    found = [f"- {line}" for line in r.verdict()]
    found += [
        f"- {n} attempts failed after the new server listened: {why}"
        for why, n in r.failedAfterListening.most_common()
    ]
    if r.withoutTunnel:
        found.append(f"- {r.withoutTunnel} agents had no tunnel at the end")
    if r.agentsNotStopped:
        found.append(f"- {r.agentsNotStopped} agents had not closed 60 s after stopping")
    if r.back and r.serverConnectedLines != len(r.back):
        found.append(
            f"- the new server logged {r.serverConnectedLines} 'connected' lines"
            f" for {len(r.back)} agents back"
        )
    if r.oldExit not in (-signal.Signals[r.signal], *CLEAN_EXITS, None):
        found.append(f"- the old server exited with status {r.oldExit}")
    if r.serverExit not in (*CLEAN_EXITS, None):
        found.append(f"- the new server exited with status {r.serverExit}")
    if r.serverProblems:
        found.append(f"- the servers logged {len(r.serverProblems)} warnings or errors, e.g.:")
        found += [f"  `{line[:200]}`" for line in r.serverProblems[:5]]
    return "\n".join(found) or "none"


def stormReport(results: Sequence[StormResult], argv: Sequence[str], warnings: int) -> str:
    lines = [*reportHeader(argv, warnings), "", stormTables(results), ""]
    for index, r in enumerate(results, 1):
        lines += [
            f"## Storm {index}: {r.agents:,} agents, {r.signal}",
            "",
            stormHistogram(r),
            "",
            "Attempts that failed while no server listened (expected): "
            + (", ".join(f"{n} {why}" for why, n in r.failedWhileDown.most_common()) or "none"),
            "",
            "Problems: " + stormProblems(r),
            "",
        ]
    return "\n".join(lines)


# -- the command line ------------------------------------------------------------------------


@implementer(ILogObserver)
class WarningCounter:
    """
    This process's log: 10,000 agents' info lines would cost CPU and
    memory for nothing, so only warnings and errors count, and the first
    few are shown.  Those C{expected} says are part of the run (an agent's
    retry warning in a reconnect storm) are not counted here.
    """

    def __init__(
        self, show: int = 10, expected: Callable[[dict[str, Any]], bool] | None = None
    ) -> None:
        self.count = 0
        self.show = show
        self.expected = expected

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level", LogLevel.info) < LogLevel.warn:
            return
        if self.expected is not None and self.expected(event):
            return
        self.count += 1
        if self.count <= self.show:
            log(f"agent-side warning: {formatEvent(event)}")


def parseArgs(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/agents.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument(
        "--agents",
        type=int,
        nargs="+",
        help="sizes to run (default 1000 5000 10000; with --storm, 1000)",
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="connect the agents and let them leave this many times against one server, "
        "reporting the server's memory after each (does it come back?)",
    )
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
    storm = parser.add_argument_group(
        "reconnect storm",
        "Connect the agents, restart the server (same ports), measure how they come back.",
    )
    storm.add_argument(
        "--storm", action="store_true", help="a storm per size instead of the scale run"
    )
    storm.add_argument(
        "--signal",
        choices=["kill", "term"],
        default="kill",
        help="restart by SIGKILL (a crash, the default) or SIGTERM (graceful)",
    )
    storm.add_argument(
        "--storm-outage",
        type=float,
        default=StormOptions.outageSeconds,
        help="seconds between the old server gone and the new one started",
    )
    storm.add_argument(
        "--storm-wait",
        type=float,
        default=StormOptions.waitSeconds,
        help="seconds after listening to wait for the last agent",
    )
    storm.add_argument(
        "--storm-hold",
        type=float,
        default=StormOptions.holdSeconds,
        help="seconds of health checks once all are back",
    )
    storm.add_argument("--health-interval", type=float, default=HEALTH_INTERVAL)
    storm.add_argument("--health-deadline", type=float, default=HEALTH_DEADLINE)
    storm.add_argument("--health-probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.agents is None:
        args.agents = [1000] if args.storm else [1000, 5000, 10000]
    return args


_Result = TypeVar("_Result", SizeResult, StormResult)


async def eachSize(
    args: argparse.Namespace,
    run: Callable[[Fleet, int], Awaitable[_Result]],
    table: Callable[[Sequence[_Result]], str],
) -> list[_Result]:
    """
    Mint the largest fleet once, then C{run} each size in turn; stop at
    the first that fails unless C{--keep-going}.
    """
    started = time.monotonic()
    fleet = newFleet()
    fleet.grow(max(args.agents))
    log(f"minted {len(fleet.agents)} agent certificates in {time.monotonic() - started:.1f}s")
    gc.freeze()  # the certificates live to the end: keep them out of every collection
    results = []
    for count in args.agents:
        result = await run(fleet, count)
        results.append(result)
        print(table([result]), file=sys.stderr, flush=True)
        if not result.ok and not args.keep_going:
            log(f"N={count} failed; stopping (--keep-going runs the next sizes anyway)")
            break
    return results


async def runAll(reactor: Any, args: argparse.Namespace, work: Path) -> list[SizeResult]:
    options = SizeOptions(
        idleSeconds=args.idle_seconds,
        opens=args.opens,
        inFlight=args.in_flight,
        keepaliveInterval=args.keepalive_interval,
        seed=args.seed,
        cycles=args.cycles,
    )

    def run(fleet: Fleet, count: int) -> Awaitable[SizeResult]:
        return runSize(reactor, fleet, count, options, work)

    return await eachSize(args, run, resultsTable)


async def runStorms(reactor: Any, args: argparse.Namespace, work: Path) -> list[StormResult]:
    options = StormOptions(
        signal=signal.SIGKILL if args.signal == "kill" else signal.SIGTERM,
        inFlight=args.in_flight,
        keepaliveInterval=args.keepalive_interval,
        outageSeconds=args.storm_outage,
        waitSeconds=args.storm_wait,
        holdSeconds=args.storm_hold,
        healthInterval=args.health_interval,
        healthDeadline=args.health_deadline,
    )

    def run(fleet: Fleet, count: int) -> Awaitable[StormResult]:
        return runStorm(reactor, fleet, count, options, work)

    return await eachSize(args, run, stormTables)


def main(argv: Sequence[str]) -> int:
    args = parseArgs(argv)
    if args.health_probe is not None:
        runHealthProbe(args.health_probe, args.health_interval, args.health_deadline, sys.stdout)
        return 0
    limit = raiseDescriptorLimit(max(args.agents) + SPARE_DESCRIPTORS)
    if limit < max(args.agents) + SPARE_DESCRIPTORS:
        log(f"RLIMIT_NOFILE is {limit}: too low for {max(args.agents)} agents")
        return 2
    warnings = WarningCounter(expected=isRetryEvent if args.storm else None)
    globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)
    work = Path(tempfile.mkdtemp(prefix="bench-agents-"))
    runs: Callable[[Any, argparse.Namespace, Path], Awaitable[Sequence[SizeResult | StormResult]]]
    runs, write = (runStorms, stormReport) if args.storm else (runAll, report)
    outcome: dict[str, Sequence[Any]] = {}

    async def body(reactor: Any) -> None:
        outcome["results"] = await runs(reactor, args, work)

    try:
        react(lambda reactor: Deferred.fromCoroutine(body(reactor)))
    except SystemExit:
        pass
    finally:
        stopLeftovers()
        shutil.rmtree(work, ignore_errors=True)
    results = outcome.get("results", [])
    text = write(results, argv, warnings.count)
    print(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    ok = len(results) == len(args.agents) and all(r.ok for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
