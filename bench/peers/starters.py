"""
How the benchmark starts each TCP-forwarding peer (frp, chisel, rathole) on
loopback: its public side (the server) and its node side (one client or
many), with the config files beside this module rendered for the ports
asked for.

Three scripts use it: C{smoke.py} (one forward to an echo service),
C{bench/bench.py} (forwards to nginx's two ports and an iperf3 sink, the
workloads of C{make bench}), and C{idle.py} (one server and K clients, for
the memory an idle tunnel costs).  Each peer is described once here, so the
three drive it the same way.

Nothing here waits without a deadline, and every process goes through
L{_procs.Processes}, so that its caller stops exactly what it started.
"""

from __future__ import annotations

import random
import socket
import string
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
for entry in (str(HERE.parent),):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from _procs import BenchError, Processes, freePort  # noqa: E402  (bench/_procs.py)

#: How long a server may take to listen, and a tunnel to carry its first bytes.
READY_SECONDS = 30.0
TOKEN = "twisted-tunnel-bench"


def portBelow(limit: int = 49151) -> int:
    """
    A free loopback port no higher than C{limit}: Konnectivity refuses
    ephemeral ports (above 49151), where the kernel's own picks usually are.
    """
    for _ in range(200):
        port = random.randint(20000, min(limit, 32000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("no free port below 32000 on 127.0.0.1")


def fill(template: Path, **values: object) -> str:
    """C{template}'s text with its C{${NAME}} placeholders filled in."""
    return string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})


def render(template: Path, target: Path, **values: object) -> Path:
    """C{template} filled in (L{fill}), written to C{target}."""
    target.write_text(fill(template, **values))
    return target


def waitListening(port: int, procs: Processes, name: str) -> None:
    """Until 127.0.0.1:C{port} accepts, so that a client does not start before its server."""
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        procs.checkAlive([name])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within {READY_SECONDS:.0f} s")


def memoryKiB(pid: int) -> tuple[int, int]:
    """
    The process's RSS and PSS in KiB: RSS counts every page of its binary
    that it touched, which N processes of one binary share; PSS charges each
    of them its share, so PSS is what adds up over many clients.
    """
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


@dataclass(frozen=True)
class Forward:
    """One forwarded port: the server listens on C{remote}, the client dials C{local}."""

    name: str
    local: int
    remote: int


@dataclass
class Tunnel:
    """A peer's server and one client, running: where each forwarded port arrives."""

    #: the node's local port -> the loopback port on the server side that reaches it
    remotes: dict[int, int]
    #: the names (in L{Processes}) of the tunnel's two ends, server first
    ends: list[str]
    commands: list[str] = field(default_factory=list)


class Peer:
    """
    How to run one peer: the command line of its server (which may need to
    know every forward, as rathole's does) and of a client carrying some of
    them.  C{build} is the folder (and C{build.py} name) of its binaries.
    """

    build: str
    server: str  # the process names of its two ends
    client: str

    def serverCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward]
    ) -> list[str]:
        raise NotImplementedError

    def clientCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward], index: int
    ) -> list[str]:
        raise NotImplementedError


class Frp(Peer):
    """frps and frpc (token auth, frp's defaults: TLS and yamux on one connection)."""

    build, server, client = "frp", "frps", "frpc"

    def serverCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward]
    ) -> list[str]:
        config = render(
            HERE / "frp" / "frps.toml", work / "frps.toml", SERVER_PORT=port, TOKEN=TOKEN
        )
        return [str(bins / "frps"), "-c", str(config)]

    def clientCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward], index: int
    ) -> list[str]:
        proxy = HERE / "frp" / "proxy.toml"
        text = fill(HERE / "frp" / "frpc.toml", SERVER_PORT=port, TOKEN=TOKEN) + "".join(
            fill(proxy, NAME=f.name, LOCAL_PORT=f.local, REMOTE_PORT=f.remote) for f in forwards
        )
        config = work / f"frpc-{index}.toml"
        config.write_text(text)
        return [str(bins / "frpc"), "-c", str(config)]


class Chisel(Peer):
    """chisel server --reverse and a client with one reverse remote (R:) per forward."""

    build, server, client = "chisel", "chisel-server", "chisel-client"

    def serverCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward]
    ) -> list[str]:
        return [str(bins / "chisel"), "server", "--host", "127.0.0.1", "--port", str(port)] + [
            "--reverse",
            "--auth",
            f"bench:{TOKEN}",
        ]

    def clientCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward], index: int
    ) -> list[str]:
        remotes = [f"R:127.0.0.1:{f.remote}:127.0.0.1:{f.local}" for f in forwards]
        return [str(bins / "chisel"), "client", "--auth", f"bench:{TOKEN}"] + [
            f"http://127.0.0.1:{port}",
            *remotes,
        ]


class Rathole(Peer):
    """rathole --server (every service listed) and --client (its own services)."""

    build, server, client = "rathole", "rathole-server", "rathole-client"

    def serverCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward]
    ) -> list[str]:
        text = fill(HERE / "rathole" / "server.toml", SERVER_PORT=port, TOKEN=TOKEN) + "".join(
            fill(HERE / "rathole" / "server-service.toml", NAME=f.name, REMOTE_PORT=f.remote)
            for f in forwards
        )
        config = work / "rathole-server.toml"
        config.write_text(text)
        return [str(bins / "rathole"), "--server", str(config)]

    def clientCommand(
        self, bins: Path, work: Path, port: int, forwards: Sequence[Forward], index: int
    ) -> list[str]:
        text = fill(HERE / "rathole" / "client.toml", SERVER_PORT=port, TOKEN=TOKEN) + "".join(
            fill(HERE / "rathole" / "client-service.toml", NAME=f.name, LOCAL_PORT=f.local)
            for f in forwards
        )
        config = work / f"rathole-client-{index}.toml"
        config.write_text(text)
        return [str(bins / "rathole"), "--client", str(config)]


#: The TCP-forwarding peers, by name.
PEERS: dict[str, Peer] = {"frp": Frp(), "chisel": Chisel(), "rathole": Rathole()}


def startTunnel(
    peer: Peer, bins: Path, work: Path, procs: Processes, locals_: Sequence[int]
) -> Tunnel:
    """
    Start C{peer}'s server, wait until it listens, then one client that
    forwards each of C{locals_} (the node's ports on 127.0.0.1) to a free
    loopback port of the server's.  Does not wait for the client to log in:
    the caller probes through the tunnel with its own deadline.
    """
    port = freePort()
    forwards = [Forward(f"node{i}", local, freePort()) for i, local in enumerate(locals_)]
    commands = [
        peer.serverCommand(bins, work, port, forwards),
        peer.clientCommand(bins, work, port, forwards, 0),
    ]
    procs.start(peer.server, commands[0])
    waitListening(port, procs, peer.server)
    procs.start(peer.client, commands[1])
    return Tunnel(
        {f.local: f.remote for f in forwards},
        [peer.server, peer.client],
        [" ".join(c) for c in commands],
    )
