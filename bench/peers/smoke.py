"""
Drive each peer once on loopback: its server and its client, a TCP echo
service as the node, and 1 MiB echoed byte-exact through the tunnel.

For each peer the script starts the public side and the node side exactly as
the benchmark will (the config files beside this script, rendered with
ports from 127.0.0.1; the command lines below), waits until a probe echoes
through the tunnel, then sends C{--bytes} (1 MiB) of random data on one
connection while reading it back, and compares.  It also notes whether a
half-close (the client's FIN) comes back as an EOF, and each end's
memory (RSS and PSS) once the transfer is done.  Every process it started is
stopped by PID (L{_procs.Processes}); every wait is bounded.

    usage: python3 bench/peers/smoke.py [--bytes N] [--keep] [PEER ...]
           (PEER: frp chisel rathole konnectivity konnectivity-mtls; all by default)

A peer not built yet is built first (C{nice -n 19 bench/peers/build.py}).  Prints one
Markdown table; exits 1 if a peer failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for entry in (str(REPO), str(HERE.parent), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import build as peerbuild  # noqa: E402  (bench/peers/build.py)
from _procs import BenchError, Processes  # noqa: E402  (bench/_procs.py)
from starters import (  # noqa: E402  (bench/peers/starters.py)
    PEERS,
    READY_SECONDS,
    memoryKiB,
    portBelow,
    startTunnel,
    waitListening,
)

#: How long one transfer may take.
TRANSFER_SECONDS = 60.0


class EchoServer:
    """The node's service: a TCP echo on 127.0.0.1, one thread per connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TRANSFER_SECONDS)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


#: How to open a connection that the tunnel carries to the echo service.
Dialer = Callable[[], socket.socket]


def tcpDialer(port: int) -> Dialer:
    def dial() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=5)

    return dial


def connectDialer(open_: Callable[[], socket.socket], target: str, reply: list[bytes]) -> Dialer:
    """
    Open a socket with C{open_}, ask for C{target} with HTTP CONNECT and
    return it once the answer is a 200; the first answer's head is kept in
    C{reply}.
    """

    def dial() -> socket.socket:
        sock = open_()
        sock.settimeout(5)
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: nothing past the head may be eaten
            if not chunk:
                sock.close()
                raise ConnectionError(f"CONNECT {target}: closed after {head!r}")
            head += chunk
        if not reply:
            reply.append(head)
        status = head.split(b"\r\n", 1)[0]
        if not re.match(rb"HTTP/1\.[01] 200", status):
            sock.close()
            raise ConnectionError(f"CONNECT {target}: {status.decode(errors='replace')}")
        return sock

    return dial


def probe(dial: Dialer, deadline: float) -> float:
    """Seconds until a small message echoes through C{dial}'s tunnel."""
    started = time.monotonic()
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with dial() as sock:
                sock.settimeout(3)
                sock.sendall(b"ping\n")
                got = b""
                while len(got) < 5:
                    chunk = sock.recv(5 - len(got))
                    if not chunk:
                        raise ConnectionError("closed before the probe came back")
                    got += chunk
                if got == b"ping\n":
                    return time.monotonic() - started
                raise ConnectionError(f"probe came back as {got!r}")
        except (OSError, ConnectionError) as e:
            last = e
            time.sleep(0.25)
    raise BenchError(f"no echo through the tunnel within {READY_SECONDS:.0f} s: {last}")


@dataclass
class Transfer:
    ok: bool
    seconds: float
    received: int
    halfClose: str
    detail: str = ""


def transfer(dial: Dialer, size: int) -> Transfer:
    """Send C{size} random bytes on one connection, read them back, compare."""
    payload = os.urandom(size)
    sock = dial()
    sock.settimeout(TRANSFER_SECONDS)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            view = memoryview(payload)
            for offset in range(0, size, 65536):
                sock.sendall(view[offset : offset + 65536])
        except BaseException as e:  # reported by the reader below
            errors.append(e)

    started = time.monotonic()
    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    digest = hashlib.sha256()
    received = 0
    mismatch = ""
    try:
        while received < size:
            chunk = sock.recv(min(262144, size - received))
            if not chunk:
                break
            if not mismatch and chunk != payload[received : received + len(chunk)]:
                mismatch = f"first difference within bytes {received}..{received + len(chunk)}"
            digest.update(chunk)
            received += len(chunk)
        seconds = time.monotonic() - started
        writer.join(5)
        # The half-close: does our FIN reach the echo service, and its FIN come back?
        halfClose = "no EOF within 3 s"
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(3)
            extra = sock.recv(1)
            halfClose = "EOF came back" if not extra else f"unexpected byte {extra!r}"
        except TimeoutError:
            pass
        except OSError as e:
            halfClose = f"error: {e}"
    except OSError as e:
        return Transfer(False, time.monotonic() - started, received, "-", f"{e}")
    finally:
        sock.close()
    ok = received == size and not mismatch and not errors
    why = mismatch or (f"sender: {errors[0]}" if errors else "")
    if received != size:
        why = why or f"only {received} of {size} bytes came back"
    ok = ok and digest.digest() == hashlib.sha256(payload).digest()
    return Transfer(ok, seconds, received, halfClose, why)


@dataclass
class Setup:
    """What a peer's starter hands back: how to reach the echo service through it."""

    dial: Dialer
    #: The names of the processes (in L{Processes}) that are the tunnel's two ends.
    ends: list[str]
    commands: list[str] = field(default_factory=list)


Starter = Callable[[Path, Path, Processes, int], Setup]


def tcpStarter(name: str) -> Starter:
    """The starter of a TCP-forwarding peer (L{starters.PEERS}): one forward, to the echo."""
    peer = PEERS[name]

    def start(bins: Path, work: Path, procs: Processes, echo: int) -> Setup:
        tunnel = startTunnel(peer, bins, work, procs, [echo])
        return Setup(tcpDialer(tunnel.remotes[echo]), tunnel.ends, tunnel.commands)

    return start


def konnectivityPKI(work: Path) -> Path:
    """
    One private CA (minted with twisted_tunnel.tls.certs): the proxy-server's
    certificate for both its listeners, the agent's client certificate, and a
    frontend client certificate (for the mTLS frontend).
    """
    from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient, mintServer, writePair

    pki = work / "pki"
    pki.mkdir(exist_ok=True)
    ca = mintCA("konnectivity bench CA")
    (pki / "ca.pem").write_bytes(ca.certificatePEM())
    writePair(
        mintServer(ca, ["localhost", "127.0.0.1"]), pki / "server.pem", pki / "server-key.pem"
    )
    writePair(mintAgent(ca, "bench-node", ["127.0.0.1"]), pki / "agent.pem", pki / "agent-key.pem")
    writePair(mintClient(ca, "bench-client"), pki / "client.pem", pki / "client-key.pem")
    return pki


def _startKonnectivity(
    bins: Path, work: Path, procs: Processes, echo: int, mtls: bool
) -> tuple[list[list[str]], int, Path]:
    pki = konnectivityPKI(work)
    agentPort, adminPort, healthPort = portBelow(), portBelow(), portBelow()
    frontend = portBelow() if mtls else 0
    uds = work / "konnectivity.sock"
    server = [
        str(bins / "server"),
        "--mode=http-connect",
        f"--agent-port={agentPort}",
        "--agent-bind-address=127.0.0.1",
        f"--admin-port={adminPort}",
        "--admin-bind-address=127.0.0.1",
        f"--health-port={healthPort}",
        "--health-bind-address=127.0.0.1",
        f"--cluster-cert={pki / 'server.pem'}",
        f"--cluster-key={pki / 'server-key.pem'}",
        f"--cluster-ca-cert={pki / 'ca.pem'}",
        "--server-count=1",
        "--proxy-strategies=default",
    ]
    if mtls:
        server += [
            f"--server-port={frontend}",
            "--server-bind-address=127.0.0.1",
            f"--server-cert={pki / 'server.pem'}",
            f"--server-key={pki / 'server-key.pem'}",
            f"--server-ca-cert={pki / 'ca.pem'}",
        ]
    else:
        server += ["--server-port=0", f"--uds-name={uds}", "--delete-existing-uds-file"]
    agent = [
        str(bins / "agent"),
        f"--ca-cert={pki / 'ca.pem'}",
        f"--agent-cert={pki / 'agent.pem'}",
        f"--agent-key={pki / 'agent-key.pem'}",
        "--proxy-server-host=127.0.0.1",
        f"--proxy-server-port={agentPort}",
        f"--health-server-port={portBelow()}",
        f"--admin-server-port={portBelow()}",
        "--agent-id=bench-node",
    ]
    procs.start("konnectivity-server", server)
    waitListening(agentPort, procs, "konnectivity-server")
    procs.start("konnectivity-agent", agent)
    return [server, agent], frontend, uds


def startKonnectivity(bins: Path, work: Path, procs: Processes, echo: int) -> Setup:
    """proxy-server's HTTP CONNECT frontend on a Unix socket (kube-apiserver's egress UDS)."""
    commands, _, uds = _startKonnectivity(bins, work, procs, echo, mtls=False)

    def openUDS() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(str(uds))
        except OSError:
            sock.close()
            raise
        return sock

    dial = connectDialer(openUDS, f"127.0.0.1:{echo}", [])
    ends = ["konnectivity-server", "konnectivity-agent"]
    return Setup(dial, ends, [" ".join(c) for c in commands])


def startKonnectivityMTLS(bins: Path, work: Path, procs: Processes, echo: int) -> Setup:
    """proxy-server's HTTP CONNECT frontend on TCP, mutual TLS (its only TCP form)."""
    import ssl

    commands, frontend, _ = _startKonnectivity(bins, work, procs, echo, mtls=True)
    pki = work / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "client.pem"), str(pki / "client-key.pem"))

    def openTLS() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", frontend), timeout=5)
        try:
            return context.wrap_socket(raw, server_hostname="127.0.0.1")
        except OSError:
            raw.close()
            raise

    dial = connectDialer(openTLS, f"127.0.0.1:{echo}", [])
    ends = ["konnectivity-server", "konnectivity-agent"]
    return Setup(dial, ends, [" ".join(c) for c in commands])


#: The variant's name -> (the peer whose binaries it runs, its starter).
VARIANTS: dict[str, tuple[str, Starter]] = {
    "frp": ("frp", tcpStarter("frp")),
    "chisel": ("chisel", tcpStarter("chisel")),
    "rathole": ("rathole", tcpStarter("rathole")),
    "konnectivity": ("konnectivity", startKonnectivity),
    "konnectivity-mtls": ("konnectivity", startKonnectivityMTLS),
}


@dataclass
class Outcome:
    variant: str
    ok: bool
    note: str
    ready: float = 0.0
    result: Transfer | None = None
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def runOne(variant: str, size: int, workRoot: Path, say: Callable[[str], None]) -> Outcome:
    peer, starter = VARIANTS[variant]
    bins = peerbuild.cached(peer)
    if bins is None:
        # Built at the lowest priority, as `make peers` builds (the machine is shared).
        say(f"{peer}: not built yet; building it (nice -n 19 bench/peers/build.py {peer})")
        built = subprocess.run(["nice", "-n", "19", sys.executable, str(HERE / "build.py"), peer])
        bins = peerbuild.cached(peer)
        if built.returncode or bins is None:
            return Outcome(variant, False, f"build failed (bench/peers/build.py {peer})")
    work = workRoot / variant
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes(work, say=say)
    echo = EchoServer()
    outcome = Outcome(variant, False, "")
    try:
        setup = starter(bins, work, procs, echo.port)
        outcome.commands = setup.commands
        deadline = time.monotonic() + READY_SECONDS
        outcome.ready = probe(setup.dial, deadline)
        procs.checkAlive()
        result = transfer(setup.dial, size)
        outcome.result = result
        procs.checkAlive()
        outcome.memory = {name: memoryKiB(procs.get(name).process.pid) for name in setup.ends}
        outcome.ok = result.ok
        outcome.note = result.detail
    except (BenchError, OSError, ValueError, KeyError) as e:
        outcome.note = f"{type(e).__name__}: {e}" if not isinstance(e, BenchError) else str(e)
    finally:
        procs.stopAll()
        echo.close()
    if not outcome.ok:
        for started in procs.started:
            tail = started.logPath.read_text(errors="replace").splitlines()[-15:]
            say(f"--- {variant}: {started.name} log (last lines) ---\n" + "\n".join(tail))
    return outcome


def report(outcomes: list[Outcome], size: int) -> str:
    lines = [
        f"| peer | result | ready after | {size // 1024} KiB echoed in | half-close "
        "| server RSS / PSS (KiB) | client RSS / PSS (KiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        r = o.result
        ends = [f"{rss} / {pss}" for rss, pss in o.memory.values()] or ["-", "-"]
        lines.append(
            f"| {o.variant} | {'ok' if o.ok else 'FAILED: ' + o.note} | {o.ready:.2f} s "
            f"| {f'{r.seconds * 1000:.0f} ms' if r else '-'} | {r.halfClose if r else '-'} "
            f"| {' | '.join(ends)} |"
        )
    lines.append("")
    for o in outcomes:
        lines.append(f"{o.variant}:")
        lines.extend(f"    {command}" for command in o.commands)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("peers", nargs="*", metavar="PEER", help=", ".join(VARIANTS))
    parser.add_argument("--bytes", type=int, default=1 << 20, help="how much to echo")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    unknown = [name for name in args.peers if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(unknown)}")
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    workRoot = Path(tempfile.mkdtemp(prefix="tt-peers-smoke-"))
    outcomes = []
    try:
        for variant in args.peers or list(VARIANTS):
            say(f"{variant}: starting")
            outcome = runOne(variant, args.bytes, workRoot, say)
            say(f"{variant}: {'ok' if outcome.ok else 'FAILED: ' + outcome.note}")
            outcomes.append(outcome)
    finally:
        if args.keep:
            say(f"work directory kept: {workRoot}")
        else:
            shutil.rmtree(workRoot, ignore_errors=True)
    print(report(outcomes, args.bytes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
