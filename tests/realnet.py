"""
Helpers for tests on real sockets and real processes.

Nothing here sleeps: waiting is polling a condition, or watching a process's
output, with a deadline, and every process started is killed (by its PID)
and reaped when the test ends.

Typical use, in a trial C{TestCase}::

    daemon = spawnTwistd(self, "edge-tunnel-server", [...], cwd=directory)
    match = await daemon.waitForLine(rb"ForwardFactory starting on (\\d+)")
    ...
    await waitUntil(lambda: all(c.lost for c in clients), 10, "the clients to be closed")

and, for a tunnel without processes or TLS::

    server, agent, agentTunnel = await plainTunnel(self, "edge-1")
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.services import listen
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.mux import Tunnel
from twisted_tunnel.server import DEFAULT_OPEN_TIMEOUT, TunnelServer
from twisted_tunnel.tls import PeerIdentity

__all__ = [
    "REPO_ROOT",
    "Daemon",
    "daemonEnvironment",
    "loadScript",
    "openSockets",
    "plainTunnel",
    "runTwistd",
    "spawnTwistd",
    "twistdCommand",
    "waitForSocketsClosedAtCleanup",
    "waitUntil",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The repository: its C{twisted/plugins} holds the daemons' twistd plugins."""


def loadScript(relative: str) -> ModuleType:
    """
    A script of the repository outside any package (C{image/build.py}),
    loaded by its path, once.
    """
    name = "script_" + re.sub(r"\W", "_", relative.removesuffix(".py"))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, relative))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


#: How long a daemon may take to start or to print a line we wait for.
STARTUP_TIMEOUT = 20.0


async def waitUntil(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    interval: float = 0.005,
    clock: Any = _globalReactor,
) -> float:
    """
    Poll C{condition} until it holds, letting the reactor run in between.

    @param what: what we wait for, for the failure message.
    @return: how many seconds it took.
    @raise AssertionError: C{condition} still did not hold after C{timeout} seconds.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        await deferLater(clock, interval, lambda: None)
    return time.monotonic() - start


def twistdCommand(plugin: str, arguments: Sequence[str]) -> list[str]:
    """
    The command line that runs C{twistd -n <plugin> <arguments>} with this
    Python (and L{META_ENDPOINT} unless C{arguments} name one).

    C{python -m twisted.scripts.twistd} would not do: that module has no
    C{__main__} block, so it exits 0 at once, doing nothing.
    """
    meta = [] if any(a.startswith("--meta-endpoint") for a in arguments) else [META_ENDPOINT]
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        plugin,
        *arguments,
        *meta,
    ]


#: Where the tests' daemons serve /healthz, /readyz and /metrics unless told:
#: a free loopback port, as the default ports would clash between daemons
#: started side by side (and with anything else on this machine).
META_ENDPOINT = "--meta-endpoint=tcp:0:interface=127.0.0.1"


def daemonEnvironment() -> dict[str, str]:
    """Our environment, with the repository first on C{PYTHONPATH} (for the plugins)."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + existing if existing else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def runTwistd(
    plugin: str, arguments: Sequence[str], cwd: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a daemon to completion (for C{--help} and startup errors)."""
    return subprocess.run(
        twistdCommand(plugin, arguments),
        cwd=cwd,
        env=daemonEnvironment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Daemon(ProcessProtocol):
    """
    A running process: its output, line by line, and its end.

    @ivar lines: everything it printed so far, stdout and stderr interleaved
        as they arrived, one C{bytes} per line.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[bytes] = []
        self.status: Failure | None = None
        self._partial = {1: b"", 2: b""}
        self._waiters: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []
        self._ended: list[Deferred[None]] = []

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        return self.status is None

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._partial.get(fd, b"") + data
        *complete, self._partial[fd] = buffered.split(b"\n")
        for line in complete:
            self._lineReceived(line)

    def _lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        for waiter in list(self._waiters):
            pattern, d = waiter
            match = pattern.search(line)
            if match is not None:
                self._waiters.remove(waiter)
                d.callback(match)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest:
                self._partial[fd] = b""
                self._lineReceived(rest)
        self.status = reason
        waiters, self._waiters = self._waiters, []
        for pattern, d in waiters:
            d.errback(
                AssertionError(
                    f"{self.name} ended ({reason.getErrorMessage()}) before printing "
                    f"{pattern.pattern!r}; its output:\n{self.output()}"
                )
            )
        ended, self._ended = self._ended, []
        for e in ended:
            e.callback(None)

    def output(self) -> str:
        return "\n".join(line.decode("utf-8", "replace") for line in self.lines)

    def waitForLine(
        self, pattern: bytes, timeout: float = STARTUP_TIMEOUT, clock: Any = _globalReactor
    ) -> Deferred[re.Match[bytes]]:
        """
        Fire with the match of the first line, printed so far or later, that
        matches C{pattern}; fail if the process ends or C{timeout} passes first.
        """
        compiled = re.compile(pattern)
        d: Deferred[re.Match[bytes]] = Deferred()
        for line in self.lines:
            match = compiled.search(line)
            if match is not None:
                d.callback(match)
                return d
        if not self.running:
            d.errback(AssertionError(f"{self.name} has ended; its output:\n{self.output()}"))
            return d
        waiter = (compiled, d)
        self._waiters.append(waiter)

        def timedOut(result: Any, timeout: float) -> Any:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise AssertionError(
                f"{self.name} did not print {pattern!r} within {timeout:g}s; its output:\n"
                f"{self.output()}"
            )

        d.addTimeout(timeout, clock, onTimeoutCancel=timedOut)
        return d

    def whenEnded(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.running:
            self._ended.append(d)
        else:
            d.callback(None)
        return d

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send C{sig} to the process, by its PID, if it still runs."""
        if not self.running or self.transport is None:
            return
        try:
            self.transport.signalProcess(sig)  # type: ignore[attr-defined]
        except ProcessExitedAlready:
            pass


def spawnTwistd(
    testCase: Any,
    plugin: str,
    arguments: Sequence[str],
    cwd: str,
    *,
    name: str | None = None,
    reactor: Any = _globalReactor,
) -> Daemon:
    """
    Start C{twistd -n <plugin> <arguments>} in C{cwd}; the test's cleanup
    kills it with SIGKILL (by PID) and waits until it is reaped.
    """
    daemon = Daemon(name or plugin)
    command = twistdCommand(plugin, arguments)
    reactor.spawnProcess(daemon, command[0], command, env=daemonEnvironment(), path=cwd)

    def stop() -> Deferred[None]:
        daemon.kill(signal.SIGKILL)
        return daemon.whenEnded()

    testCase.addCleanup(stop)
    return daemon


def openSockets(reactor: Any = _globalReactor) -> set[object]:
    """The reactor's TCP ports and connections (not its wakers and pipes)."""
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return {s for s in selectables if hasattr(s, "socket")}


def waitForSocketsClosedAtCleanup(
    testCase: SynchronousTestCase, timeout: float = 10.0, *, reactor: Any = _globalReactor
) -> None:
    """
    At cleanup (after every cleanup added later), wait until every socket
    opened from now on is closed; fail naming those still open.
    """
    baseline = openSockets(reactor)

    async def quiet() -> None:
        try:
            await waitUntil(
                lambda: openSockets(reactor) <= baseline,
                timeout,
                "every connection to close",
                clock=reactor,
            )
        except AssertionError:
            left = [(s, getattr(s, "protocol", None)) for s in openSockets(reactor) - baseline]
            raise AssertionError(f"still open: {left}") from None

    testCase.addCleanup(quiet)


async def plainTunnel(
    testCase: SynchronousTestCase,
    node: str,
    *,
    openTimeout: float = DEFAULT_OPEN_TIMEOUT,
    ips: Sequence[str] = ("127.0.0.1",),
    reactor: Any = _globalReactor,
) -> tuple[TunnelServer, TunnelAgent, Tunnel]:
    """
    A L{TunnelServer} without TLS, listening on 127.0.0.1, that takes every
    peer for the agent of C{node} (as if it had presented C{node}'s kubelet
    certificate carrying C{ips} as IP subjectAltNames); and a L{TunnelAgent} for C{node} (its IPs:
    C{ips}, 127.0.0.1 unless told otherwise; another loopback address such
    as 127.0.0.2 makes a "node IP" distinct from the node's loopback)
    connected to it over plain TCP.  The server, the agent, and the agent's
    tunnel once it is up.

    The cleanup stops the agent and the listener, then waits until every
    socket opened since this call is closed (see
    L{waitForSocketsClosedAtCleanup}).
    """
    waitForSocketsClosedAtCleanup(testCase, reactor=reactor)  # runs last
    server = TunnelServer(
        reactor,
        None,
        openTimeout=openTimeout,
        # a kubelet-style node certificate that also carries the node's IPs as
        # IP subjectAltNames: what proves them (issue 12, findings 1 and 9)
        identify=lambda transport: PeerIdentity(
            f"system:node:{node}", ipAddresses=tuple(ips), organizations=("system:nodes",)
        ),
    )
    tunnelPort = listen(testCase, server.plainTunnelFactory(), reactor=reactor)
    agent = TunnelAgent(
        reactor,
        None,
        ("127.0.0.1", tunnelPort),
        node,
        list(ips),
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", tunnelPort),
    )
    agent.startService()
    testCase.addCleanup(agent.stopService)
    agentTunnel = await agent.whenConnected(failAfterFailures=1)
    return server, agent, agentTunnel
