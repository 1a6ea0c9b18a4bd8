# -*- test-case-name: tests.system.test_ha -*-
"""
The fault tests' network (L{tests.system.test_ha}): the world of
L{tests.system.e2e_world} with three server replicas instead of one, HAProxy in
front of their proxy listeners as well as their tunnel ports, and clients
that run as threads of the test process::

        cloud                           lb                               edge N
  +-------------------------+   +------------------------------+   +-------------------+
  | replica-1  10.200.0.11  |   | tunnel LB (HAProxy, tcp):    |   | edge-tunnel-agent |
  | replica-2  10.200.0.12  |<--+-  10.199.0.1:10262, round   <-+---+- dialing until it |
  | replica-3  10.200.0.13  |   |   robin over the replicas'   |   |  holds a tunnel   |
  |  each: :10262 (tunnel), |   |   :10262                     |   |  to every replica |
  |  :10263, :10264, :10268 |   | client LB (HAProxy, tcp):    |   | kubelet stand-in  |
  |  (proxy listeners)    <-+---+-  10.200.0.2:10264, round    |   +-------------------+
  | clients (test threads) -+-->|   robin over the replicas'   |
  |                         |   |   :10264                     |
  +-------------------------+   +------------------------------+

The replicas all run in the cloud namespace, each on an address of its
own on the cloud's link (so HAProxy reaches each one directly), started
with C{--server-id replica-N --server-count 3} and C{--no-iptables} (three
processes rewriting one nat table would fight).  Clients reach "a"
replica the way kube-apiserver instances would reach the server's
Service: through the client LB, which skips a replica that fails its
health check, and retries a connection that a dead replica refuses on
another one (C{retries}, C{option redispatch 1}).  It is a second HAProxy
process so that stopping the tunnel LB, which is a fault under test,
leaves the clients' path alone.

Clients are threads of the test process, not programs: a network
namespace belongs to a thread on Linux, and a socket stays in the
namespace it was made in, so L{socketIn} makes each socket on a
short-lived thread that entered the namespace (C{setns(2)}) and the socket
is then used from anywhere.  Their outcomes (L{Outcome}) are plain objects
the tests can count (L{Tally}), with no output to parse.

Certificates live in Secret-volume layouts (L{SecretVolume}): the
daemons' C{--cert} and C{--key} are symlinks into a C{..data} directory
that a rotation replaces with one C{rename(2)}, as the kubelet updates a
mounted Secret, so a daemon never reads a new certificate next to an old
key.

Timing settings, chosen so that faults show within a test's patience:

    - C{--keepalive-interval 1 --keepalive-misses 3} on both daemons: a
      silent peer is declared dead after 3 s (a server's keepalive sweep
      adds up to a quarter interval), where the default would take 30 s;
      the tunnel sockets' C{TCP_USER_TIMEOUT} follows (3 s);
    - agent C{--max-backoff 2}: after a long outage an agent dials again
      within 2 s, so "back within the backoff cap plus a few seconds" is a
      bound a test can wait for;
    - C{--drain-timeout 1} on both daemons: a SIGTERMed daemon's streams
      get a second to finish, so a restart test sees them end soon;
    - C{--tls-reload-interval 0.2} on both: a rotated certificate is
      picked up within a fifth of a second.

Addresses and traffic stay inside the namespaces made here, which the
test case's cleanups delete (killing every process in them, by PID).
Nothing sleeps to wait for something: every wait polls a condition with a
deadline; the load loop's clients pace their requests (a rate, not a
wait).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import attrs
from attrs import frozen
from cryptography import x509

from tests.netns import Namespace, pollUntil
from tests.pki import TestPKI
from tests.system.e2e_kubelet import READONLY_PORT, bigBody
from tests.system.e2e_world import (
    HTTP_LISTENER_PORT,
    LB_ADDRESS,
    LB_CLOUD_SIDE,
    SERVER_NAME,
    STARTUP_TIMEOUT,
    TUNNEL_PORT,
    Edge,
    Process,
    Scope,
    World,
)
from twisted_tunnel.tls.certs import Issued, mintAgent, mintServer

__all__ = [
    "ALL_TUNNELS_UP",
    "BODY_DIGEST",
    "BODY_SIZE",
    "CLIENT_LB",
    "DEAD_AFTER",
    "DRAIN_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_BACKOFF",
    "REPLICAS",
    "REQUEST_TIMEOUT",
    "TUNNEL_UP",
    "ClientCertificateCatcher",
    "FollowStream",
    "HAWorld",
    "LoadLoop",
    "Outcome",
    "SecretVolume",
    "Tally",
    "UpgradeSession",
    "describeTimes",
    "fetch",
    "phases",
    "servedCertificate",
    "socketIn",
    "tally",
]

#: How many server replicas the world runs.
REPLICAS = 3

#: Keepalive: a PING after 1 s of silence, dead after 3 silent intervals.
KEEPALIVE_INTERVAL = 1.0
KEEPALIVE_MISSES = 3
#: How long a silent peer lives: C{interval * misses}.
DEAD_AFTER = KEEPALIVE_INTERVAL * KEEPALIVE_MISSES

#: The agents' longest wait between two dials.
MAX_BACKOFF = 2.0

#: Both daemons' --drain-timeout.
DRAIN_TIMEOUT = 1.0

_TIMING = [
    "--keepalive-interval", f"{KEEPALIVE_INTERVAL:g}",
    "--keepalive-misses", str(KEEPALIVE_MISSES),
    "--drain-timeout", f"{DRAIN_TIMEOUT:g}",
    "--tls-reload-interval", "0.2",
]  # fmt: skip

#: Options of every replica (with its --server-id).
SERVER_ARGUMENTS = [*_TIMING, "--no-iptables", "--server-count", str(REPLICAS)]

#: Options of every agent.
AGENT_ARGUMENTS = [*_TIMING, "--max-backoff", f"{MAX_BACKOFF:g}"]

#: What the load loop fetches: the first C{BODY_SIZE} bytes of the
#: kubelet stand-in's deterministic body, and their digest.
BODY_SIZE = 256 * 1024
BODY_DIGEST = hashlib.sha256(bigBody(BODY_SIZE)).hexdigest()
BODY_PATH = f"/big?size={BODY_SIZE}"

#: Where clients connect: the client LB.
CLIENT_LB = (LB_CLOUD_SIDE, HTTP_LISTENER_PORT)

#: A client gives up on a request after this many seconds, whatever happens.
REQUEST_TIMEOUT = 5.0

#: The agent's log line for a tunnel up, and for all of them up.
TUNNEL_UP = r"tunnel up to server \S+ at "
ALL_TUNNELS_UP = rf"tunnel up to server \S+ at .* \({REPLICAS} of {REPLICAS} servers\)"

_pki = TestPKI()


def replicaAddress(index: int) -> str:
    """The cloud address of replica C{index} (1, 2, 3)."""
    return f"10.200.0.{10 + index}"


# Sockets in a namespace.

_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def socketIn(namespace: Namespace, family: int = socket.AF_INET) -> socket.socket:
    """
    A TCP socket in C{namespace}, for a client (or a listener) running in
    the test process.

    The socket is made on a thread of its own that enters the namespace
    and ends: the calling thread stays where it is.
    """
    made: list[socket.socket] = []
    errors: list[BaseException] = []

    def make() -> None:
        try:
            fd = os.open(os.path.join("/run/netns", namespace.name), os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    number = ctypes.get_errno()
                    raise OSError(number, f"setns into {namespace.name}: {os.strerror(number)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=make, name=f"socket in {namespace.name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return made[0]


# Certificates as a Secret volume.


class SecretVolume:
    """
    A directory laid out as the kubelet lays out a mounted Secret: each
    file a symlink C{<name> -> ..data/<name>}, C{..data} a symlink to a
    directory holding the current version.  L{write} makes a new version
    directory and swaps C{..data} over to it with one C{rename(2)}, so a
    reader sees the old set of files or the new one, never a mix.
    """

    def __init__(self, directory: str, files: Mapping[str, bytes]) -> None:
        self.directory = directory
        self._versions = 0
        os.makedirs(directory)
        self.write(files)
        for name in files:
            os.symlink(os.path.join("..data", name), self.path(name))

    def path(self, name: str) -> str:
        """Where a daemon reads C{name}."""
        return os.path.join(self.directory, name)

    def write(self, files: Mapping[str, bytes]) -> None:
        """Replace every file at once (C{files} names the same files as before)."""
        self._versions += 1
        version = f"..version-{self._versions}"
        os.makedirs(os.path.join(self.directory, version))
        for name, contents in files.items():
            # readable by the owner only (a Secret's defaultMode 0600): the
            # daemons warn about a private key that others may read
            path = os.path.join(self.directory, version, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(contents)
        current = os.path.join(self.directory, "..data")
        previous = os.readlink(current) if os.path.islink(current) else None
        temporary = os.path.join(self.directory, "..data_tmp")
        os.symlink(version, temporary)
        os.replace(temporary, current)
        if previous is not None:
            for name in os.listdir(os.path.join(self.directory, previous)):
                os.remove(os.path.join(self.directory, previous, name))
            os.rmdir(os.path.join(self.directory, previous))


def _tlsFiles(issued: Issued) -> dict[str, bytes]:
    """A C{kubernetes.io/tls} Secret's files."""
    return {"tls.crt": issued.certificatePEM(), "tls.key": issued.keyPEM()}


# The world.


def _haproxyConfig(bind: str, port: int, backends: Sequence[tuple[str, str]]) -> str:
    """
    HAProxy in TCP mode on C{bind}:C{port}, round robin over C{backends}
    (name, address) on the same port, each health-checked on its HTTP
    proxy listener every 250 ms (two misses and it is skipped; a TCP
    connection to a replica's tunnel port would make it log a refused
    handshake every time).  A connection a replica refuses is retried on
    another (C{retries}, C{redispatch} on every retry).
    """
    servers = "".join(f"    server {name} {address}:{port}\n" for name, address in backends)
    return (
        "global\n"
        "    maxconn 1024\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 1s\n"
        "    timeout client 1h\n"
        "    timeout server 1h\n"
        "    retries 3\n"
        "    option redispatch 1\n"
        "frontend front\n"
        f"    bind {bind}:{port}\n"
        "    default_backend replicas\n"
        "backend replicas\n"
        "    balance roundrobin\n"
        f"    default-server check port {HTTP_LISTENER_PORT} inter 250ms fall 2 rise 2\n"
        f"{servers}"
    )


class HAWorld(World):
    """
    L{World} with L{REPLICAS} server replicas, a tunnel LB and a client LB
    (see the module docstring), built by L{build}.

    @ivar replicas: The replicas' processes by server id (C{replica-1}...).
    @ivar replicaAddresses: Their addresses by server id.
    @ivar clientLB: The HAProxy in front of their HTTP proxy listeners.
    @ivar haproxy: The HAProxy in front of their tunnel ports (the SLB);
        L{tunnelLB} once built.
    @ivar server: The last replica started (L{World}'s single server): use
        L{replicas}.
    """

    def __init__(self, scope: Scope, edges: int = 2) -> None:
        super().__init__(scope, edges, SERVER_ARGUMENTS)
        self.replicaAddresses = {
            f"replica-{index}": replicaAddress(index) for index in range(1, REPLICAS + 1)
        }
        self.replicas: dict[str, Process] = {}
        self.clientLB: Process | None = None
        self.agentSecrets: dict[str, SecretVolume] = {}

    def build(self, beforeServer: Callable[[Namespace], object] | None = None) -> HAWorld:
        """L{World.build}, then the client LB; return when it listens."""
        super().build(beforeServer)
        self.clientLB = self.startHAProxy("client-lb", self.clientLBConfig())
        self.waitListening(self.lb, HTTP_LISTENER_PORT, "the client load balancer")
        return self

    def _credentials(self) -> None:
        super()._credentials()
        self.serverSecret = SecretVolume(
            os.path.join(self.directory, "server-tls"),
            {"tls.crt": _read(self.serverCert), "tls.key": _read(self.serverKey)},
        )
        self.serverCert = self.serverSecret.path("tls.crt")
        self.serverKey = self.serverSecret.path("tls.key")

    def _network(self) -> None:
        super()._network()
        for address in self.replicaAddresses.values():
            self.cloud.addAddress(self.cloudLink.nameA, f"{address}/24")
        for position, edge in enumerate(self.edges):
            ca, cert, key = edge.agentCredentials
            secret = SecretVolume(
                os.path.join(self.directory, f"agent-{edge.name}-tls"),
                {"tls.crt": _read(cert), "tls.key": _read(key)},
            )
            self.agentSecrets[edge.name] = secret
            self.edges[position] = attrs.evolve(
                edge, agentCredentials=(ca, secret.path("tls.crt"), secret.path("tls.key"))
            )

    # The replicas and the load balancers.

    def startServers(self) -> None:
        for serverId in self.replicaAddresses:
            self.startReplica(serverId)

    def waitForServers(self) -> None:
        for replica in self.replicas.values():
            self.waitForServer(replica)

    def startReplica(self, serverId: str) -> Process:
        """
        Start replica C{serverId}, on its own address (its CONNECT door, not
        used here, on a unix socket of its own).
        """
        address = self.replicaAddresses[serverId]
        connectDoor = os.path.join(self.directory, f"{serverId}-connect.sock")
        self.replicas[serverId] = self.startServer(
            ["--server-id", serverId, "--connect-endpoint", f"unix:{connectDoor}"],
            name=serverId,
            address=address,
            tunnelEndpoint=f"tcp:{TUNNEL_PORT}:interface={address}",
        )
        return self.replicas[serverId]

    def haproxyConfig(self) -> str:
        """The tunnel LB: the SLB address in front of the replicas' tunnel ports."""
        return _haproxyConfig(LB_ADDRESS, TUNNEL_PORT, list(self.replicaAddresses.items()))

    def clientLBConfig(self) -> str:
        """The client LB: the lb's cloud-side address in front of the HTTP listeners."""
        return _haproxyConfig(
            LB_CLOUD_SIDE, HTTP_LISTENER_PORT, list(self.replicaAddresses.items())
        )

    @property
    def tunnelLB(self) -> Process:
        """The HAProxy in front of the tunnel ports (the SLB)."""
        assert self.haproxy is not None, "the world is not built"
        return self.haproxy

    def restartTunnelLB(self) -> Process:
        """Start the tunnel LB again (once stopped); return once it listens."""
        self.haproxy = self.startHAProxy()
        self.waitListening(self.lb, TUNNEL_PORT, "the tunnel load balancer")
        return self.haproxy

    # The agents.

    def startAgent(self, edge: Edge, arguments: Sequence[str] = ()) -> Process:
        return super().startAgent(edge, [*AGENT_ARGUMENTS, *arguments])

    def waitForAgent(self, edge: Edge, *, serverMark: int = 0) -> None:
        """
        Wait until C{edge}'s agent holds a tunnel to every replica (each
        replica's log has its own length, so C{serverMark} is not used).
        """
        agent = self.agents[edge.name]
        self.waitForAll({edge.name: (agent, ALL_TUNNELS_UP, 0)}, STARTUP_TIMEOUT)

    # Waiting.

    def waitForAll(
        self,
        watches: Mapping[str, tuple[Process, str, int]],
        timeout: float,
        since: float | None = None,
    ) -> dict[str, float]:
        """
        Wait until, for each C{label: (process, pattern, mark)}, the process
        has printed a line matching C{pattern} from line C{mark} on.

        They are polled together, so each time is when its own line came
        (to within the polling interval of 20 ms).

        @param since: When (C{time.monotonic()}) the times count from; by
            default, now.
        @return: The seconds each took, by label.
        @raise AssertionError: One did not come within C{timeout}; the
            message says which, with every process's log.
        """
        start = time.monotonic() if since is None else since
        seen: dict[str, float] = {}

        def allPrinted() -> bool:
            for label, (process, pattern, mark) in watches.items():
                if label not in seen and process.count(pattern, start=mark):
                    seen[label] = time.monotonic() - start
            return len(seen) == len(watches)

        try:
            pollUntil(allPrinted, timeout, "log lines", interval=0.02)
        except AssertionError:
            missing = {
                label: pattern for label, (_, pattern, _) in watches.items() if label not in seen
            }
            raise AssertionError(
                f"after {timeout:g}s, still no line for {missing} (the others came after "
                f"{seen}); the logs:\n{self.logs()}"
            ) from None
        return seen

    # Rotation.

    def rotateServerCertificate(self) -> int:
        """
        Give every replica a new certificate (same CA, same names, a new
        key and serial), the way a Secret update does.

        @return: Its serial number.
        """
        issued = mintServer(_pki.ca, [SERVER_NAME, LB_ADDRESS])
        self.serverSecret.write(_tlsFiles(issued))
        return issued.certificate.serial_number

    def rotateAgentCertificate(self, edge: Edge) -> int:
        """
        Give C{edge}'s agent a new certificate (same CA, node and IP, a new
        key and serial).

        @return: Its serial number.
        """
        issued = mintAgent(_pki.ca, edge.name, [edge.nodeIP])
        self.agentSecrets[edge.name].write(_tlsFiles(issued))
        return issued.certificate.serial_number


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# Clients.


@frozen
class Outcome:
    """
    One request of a client.

    @ivar node: The node IP it asked for.
    @ivar start: When it began (C{time.monotonic()}).
    @ivar end: When it ended, answered or not.
    @ivar status: The HTTP status, 0 if no response head came.
    @ivar error: Why it failed (C{"<kind>: <detail>"}), C{""} if it succeeded.
    @ivar corrupt: Its body came whole but with the wrong digest.
    """

    node: str
    start: float
    end: float
    status: int
    error: str
    corrupt: bool = False

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def kind(self) -> str:
        """What went wrong, without the details: C{"HTTP 503"}, C{"cut"}..."""
        return self.error.split(":", 1)[0]


def _parseHead(head: bytes) -> tuple[int, dict[str, str]]:
    statusLine, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(statusLine.split()[1]), headers


def fetch(
    cloud: Namespace,
    nodeIP: str,
    path: str = BODY_PATH,
    *,
    digest: str | None = BODY_DIGEST,
    via: tuple[str, int] = CLIENT_LB,
    timeout: float = REQUEST_TIMEOUT,
) -> Outcome:
    """
    C{GET http://<nodeIP>:10255<path>} from the cloud, at C{via} (the
    client LB, or one replica's HTTP listener), on a connection of its own;
    ended after C{timeout} seconds whatever happens.

    @param digest: The SHA-256 a complete C{200} body must have (L{None}:
        any body).
    """
    start = time.monotonic()
    deadline = start + timeout
    status = 0
    received = bytearray()
    head: bytes | None = None
    length: int | None = None

    def outcome(error: str = "", corrupt: bool = False) -> Outcome:
        return Outcome(nodeIP, start, time.monotonic(), status, error, corrupt)

    try:
        with socketIn(cloud) as connection:
            connection.settimeout(timeout)
            connection.connect(via)
            connection.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {nodeIP}:{READONLY_PORT}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            while length is None or len(received) < length:
                connection.settimeout(max(deadline - time.monotonic(), 0.001))
                data = connection.recv(65536)
                if not data:
                    break
                received += data
                if head is None and b"\r\n\r\n" in received:
                    head, _, rest = bytes(received).partition(b"\r\n\r\n")
                    received = bytearray(rest)
                    status, headers = _parseHead(head)
                    if "content-length" in headers:
                        length = int(headers["content-length"])
    except TimeoutError:
        return outcome(f"timeout: no whole answer within {timeout:g}s ({len(received)} bytes)")
    except OSError as e:
        return outcome(f"{type(e).__name__}: {e}")
    if head is None:
        return outcome(f"no answer: closed before a response head ({len(received)} bytes)")
    if status != 200:
        firstLine = bytes(received).split(b"\n", 1)[0].decode("utf-8", "replace")
        return outcome(f"HTTP {status}: {firstLine}")
    if length is None:
        return outcome("unframed: no Content-Length")
    if len(received) < length:
        return outcome(f"cut: closed after {len(received)} of {length} bytes")
    if digest is not None and hashlib.sha256(received).hexdigest() != digest:
        return outcome(f"corrupt: {length} bytes with the wrong SHA-256", corrupt=True)
    return outcome()


@frozen
class Tally:
    """The outcomes of requests that started within a window."""

    outcomes: tuple[Outcome, ...]

    @property
    def total(self) -> int:
        return len(self.outcomes)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok)

    @property
    def failed(self) -> int:
        return self.total - self.succeeded

    @property
    def corrupt(self) -> int:
        return sum(1 for o in self.outcomes if o.corrupt)

    @property
    def longest(self) -> float:
        return max((o.end - o.start for o in self.outcomes), default=0.0)

    def failures(self, origin: float) -> list[tuple[float, float, str]]:
        """When each failed request began and ended (seconds after C{origin}), and why."""
        return [
            (round(o.start - origin, 3), round(o.end - origin, 3), o.error)
            for o in self.outcomes
            if not o.ok
        ]

    def describe(self) -> str:
        """C{"97 of 100 (97.0%) succeeded; failed: 3 x HTTP 503 (...)"}."""
        if not self.total:
            return "no request"
        rate = 100.0 * self.succeeded / self.total
        text = f"{self.succeeded} of {self.total} ({rate:.1f}%) succeeded"
        kinds = Counter(o.kind for o in self.outcomes if not o.ok)
        if kinds:
            examples = {o.kind: o.error for o in self.outcomes if not o.ok}
            text += "; failed: " + ", ".join(
                f"{count} x {examples[kind]!r}" for kind, count in kinds.most_common()
            )
        return f"{text}; longest {self.longest:.2f}s"


def tally(outcomes: Sequence[Outcome]) -> Tally:
    """All of C{outcomes}, counted."""
    return Tally(tuple(outcomes))


def phases(
    outcomes: Sequence[Outcome], fault: float, settled: float
) -> tuple[Tally, Tally, Tally]:
    """
    The requests around a fault that began at C{fault} (C{time.monotonic()})
    and whose effects should be over by C{settled}: those that ended before
    the fault; those in flight at the fault or begun before C{settled};
    those begun at C{settled} or later.
    """
    return (
        Tally(tuple(o for o in outcomes if o.end < fault)),
        Tally(tuple(o for o in outcomes if o.end >= fault and o.start < settled)),
        Tally(tuple(o for o in outcomes if o.start >= settled)),
    )


class LoadLoop:
    """
    Concurrent clients fetching L{BODY_SIZE} bytes of known digest from
    the edges through the client LB (L{fetch}), each starting a request
    every C{interval} seconds (alternating between C{nodes}), until
    C{duration} seconds have passed, C{requests} have been made, or
    L{stop}.  Every request ends within L{REQUEST_TIMEOUT}, so the loop
    ends by itself.
    """

    def __init__(
        self,
        cloud: Namespace,
        nodes: Sequence[str],
        *,
        clients: int = 4,
        interval: float = 0.1,
        duration: float = 30.0,
        requests: int = 2000,
    ) -> None:
        self.cloud = cloud
        self.nodes = list(nodes)
        self.interval = interval
        self.duration = duration
        self.requests = requests
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(n,), name=f"load client {n}", daemon=True)
            for n in range(clients)
        ]

    def start(self) -> LoadLoop:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _client(self, number: int) -> None:
        due = self.started + number * self.interval / len(self._threads)
        made = 0
        while not self._stopped.is_set() and time.monotonic() < self.started + self.duration:
            with self._lock:
                if len(self._outcomes) + made >= self.requests:
                    return
            node = self.nodes[(number + made) % len(self.nodes)]
            outcome = fetch(self.cloud, node)
            with self._lock:
                self._outcomes.append(outcome)
            made += 1
            due += self.interval
            # pacing, not waiting for anything: a steady rate of requests
            self._stopped.wait(max(due - time.monotonic(), 0.0))

    @property
    def outcomes(self) -> list[Outcome]:
        """What has ended so far, in the order it ended."""
        with self._lock:
            return list(self._outcomes)

    def waitForSuccesses(self, count: int, timeout: float, since: float = 0.0) -> None:
        """Wait until C{count} requests that started after C{since} have succeeded."""

        def enough() -> bool:
            return sum(1 for o in self.outcomes if o.ok and o.start >= since) >= count

        try:
            pollUntil(enough, timeout, f"{count} successful requests", interval=0.02)
        except AssertionError as e:
            begun = [o for o in self.outcomes if o.start >= since]
            raise AssertionError(f"{e}: {tally(begun).describe()}") from None

    def stop(self) -> None:
        """Start no more requests."""
        self._stopped.set()

    def finish(self) -> list[Outcome]:
        """L{stop}, then L{join}."""
        self.stop()
        return self.join()

    def join(self) -> list[Outcome]:
        """
        Wait until every client has ended, by itself or after L{stop}
        (within its duration and a request's time limit), and return the
        outcomes.
        """
        deadline = max(time.monotonic(), self.started + self.duration) + REQUEST_TIMEOUT + 5.0
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        if hung:
            raise AssertionError(
                f"{hung} still in a request {REQUEST_TIMEOUT + 5:g}s past the end"
            )
        return self.outcomes


class _ClosedWatch:
    """
    A client connection whose end a thread watches for: C{endedAt} (a
    C{time.monotonic()}) and C{how} it ended, once it has.
    """

    def __init__(
        self,
        cloud: Namespace,
        nodeIP: str,
        request: str,
        timeout: float,
        via: tuple[str, int] = CLIENT_LB,
    ) -> None:
        self.nodeIP = nodeIP
        self.timeout = timeout
        self.connection = socketIn(cloud)
        self.connection.settimeout(REQUEST_TIMEOUT)
        self.connection.connect(via)
        self.connection.sendall(request.encode())
        self.received = bytearray()
        self.endedAt: float | None = None
        self.how = ""
        self._ended = threading.Event()
        self._reader: threading.Thread | None = None

    def watch(self) -> None:
        """Read, in a thread, until the connection ends (or L{timeout} passes)."""
        self._reader = threading.Thread(target=self._read, name=f"watching {self!r}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
                data = self.connection.recv(65536)
                if not data:
                    self.how = "closed (EOF)"
                    break
                self.received += data
                self.dataReceived()
        except TimeoutError:
            self.how = f"still open after {self.timeout:g}s"
        except OSError as e:
            self.how = f"{type(e).__name__}: {e}"
        self.endedAt = time.monotonic()
        self._ended.set()

    def dataReceived(self) -> None:
        """More of C{received} came."""

    def waitForEnd(self, timeout: float) -> float:
        """
        Wait until the connection has ended; return when (monotonic).

        @raise AssertionError: It is still open after C{timeout} seconds.
        """
        if not self._ended.wait(timeout):
            raise AssertionError(
                f"{self!r} still open after {timeout:g}s ({len(self.received)} bytes so far)"
            )
        assert self.endedAt is not None
        return self.endedAt

    def close(self) -> None:
        """
        Hang up, and wait for the watching thread to see it: a shutdown
        wakes a blocked C{recv}, where closing the socket under it would
        not.
        """
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        if self._reader is not None:
            self._reader.join(REQUEST_TIMEOUT)
        self.connection.close()


class FollowStream(_ClosedWatch):
    """
    A C{kubectl logs -f} client: C{GET /containerLogs/...?follow=true} for
    C{lines} lines (a tenth of a second apart), through the client LB (or
    C{via} another address), read as they come.  C{lines} holds the
    numbers of the log lines received so far.
    """

    def __init__(
        self,
        cloud: Namespace,
        nodeIP: str,
        lines: int = 600,
        timeout: float = 60.0,
        via: tuple[str, int] = CLIENT_LB,
    ) -> None:
        super().__init__(
            cloud,
            nodeIP,
            f"GET /containerLogs/default/pod/c?follow=true&lines={lines} HTTP/1.1\r\n"
            f"Host: {nodeIP}:{READONLY_PORT}\r\n\r\n",
            timeout,
            via,
        )
        self.lines: list[int] = []
        self.watch()

    def __repr__(self) -> str:
        return f"<FollowStream to {self.nodeIP}, {len(self.lines)} lines>"

    def dataReceived(self) -> None:
        self.lines = [int(n) for n in re.findall(rb"log line (\d+)\n", self.received)]

    @property
    def complete(self) -> bool:
        """Did the response end properly (its last chunk)?"""
        return self.received.endswith(b"\r\n0\r\n\r\n")

    def waitForLines(self, count: int, timeout: float = 10.0) -> None:
        pollUntil(lambda: len(self.lines) >= count, timeout, f"{count} lines of {self!r}")


class UpgradeSession(_ClosedWatch):
    """
    A C{kubectl exec} client: an upgraded connection to the kubelet
    stand-in's echo through the client LB.  L{roundTrip} before L{watch}.
    """

    def __init__(self, cloud: Namespace, nodeIP: str, timeout: float = 60.0) -> None:
        super().__init__(
            cloud,
            nodeIP,
            f"GET /exec/default/pod/c?command=cat HTTP/1.1\r\nHost: {nodeIP}:{READONLY_PORT}\r\n"
            "Connection: Upgrade\r\nUpgrade: tt-echo\r\n\r\n",
            timeout,
        )
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = self.connection.recv(65536)
            if not data:
                raise AssertionError(f"upgrade to {nodeIP}: closed before the head: {head!r}")
            head += data
        response, _, rest = bytes(head).partition(b"\r\n\r\n")
        self.received = bytearray(rest)
        self.status, self.headers = _parseHead(response)

    def __repr__(self) -> str:
        return f"<UpgradeSession to {self.nodeIP}, HTTP {self.status}>"

    def roundTrip(self, message: bytes) -> bytes:
        """Send C{message}; return its echo (as much as came before a timeout)."""
        self.connection.sendall(message)
        echo = bytearray(self.received)
        while len(echo) < len(message):
            data = self.connection.recv(65536)
            if not data:
                break
            echo += data
        self.received = bytearray()
        return bytes(echo)


# Certificates on the wire.


def _tlsContext(side: int, ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(side)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def servedCertificate(
    namespace: Namespace,
    address: tuple[str, int],
    credentials: tuple[str, str, str],
    serverName: str = SERVER_NAME,
) -> x509.Certificate:
    """
    The certificate a server presents to a TLS client in C{namespace}
    (C{openssl s_client}, in a few lines), checked against the CA of
    C{credentials} (C{--ca}, C{--cert}, C{--key}), whose certificate and
    key the client presents.
    """
    context = _tlsContext(ssl.PROTOCOL_TLS_CLIENT, *credentials)
    with socketIn(namespace) as plain:
        plain.settimeout(REQUEST_TIMEOUT)
        plain.connect(address)
        with context.wrap_socket(plain, server_hostname=serverName) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


class ClientCertificateCatcher:
    """
    A TLS listener in C{namespace} that asks every client for a certificate
    (signed by C{ca}), notes its subject's common name and serial number,
    and hangs up: put where agents dial, it shows which certificate they
    dial with.  Its thread ends when L{stop} is called.

    @ivar seen: The serial numbers presented, by common name.
    """

    def __init__(
        self, namespace: Namespace, address: tuple[str, int], credentials: tuple[str, str, str]
    ) -> None:
        self.context = _tlsContext(ssl.PROTOCOL_TLS_SERVER, *credentials)
        self.listener = socketIn(namespace)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(address)
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.seen: dict[str, set[int]] = {}
        self.errors: list[str] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="certificate catcher")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(REQUEST_TIMEOUT)
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
            except (OSError, ssl.SSLError) as e:
                self.errors.append(repr(e))
                continue
            assert der is not None
            certificate = x509.load_der_x509_certificate(der)
            names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            self.seen.setdefault(str(names[0].value), set()).add(certificate.serial_number)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(REQUEST_TIMEOUT + 1)
        self.listener.close()


def describeTimes(times: Mapping[str, float]) -> str:
    """C{{"a": 1.234}} as C{"a 1.23s"}, sorted by label."""
    return ", ".join(f"{label} {seconds:.2f}s" for label, seconds in sorted(times.items()))
