"""
The two daemons as real processes: C{twistd edge-tunnel-server} and
C{twistd edge-tunnel-agent}, started the way an operator starts them, with
certificates written by L{tests.pki}.

What only real processes show: an agent killed with SIGKILL, or frozen with
SIGSTOP, in the middle of transfers (every client of the server's forward
listener and CONNECT door is closed within seconds), and what an operator
sees on the command line (C{--help}, and one line, no traceback, for a
certificate or key that cannot be used).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.pki import CredentialPaths, TestPKI, temporaryDirectory
from tests.realnet import Daemon, runTwistd, spawnTwistd, waitUntil
from tests.services import listenAndAbortAtCleanup

pki = TestPKI()

SERVER = "edge-tunnel-server"
AGENT = "edge-tunnel-agent"


class Drip(Protocol):
    """An edge service that sends a little, slowly, forever."""

    factory: DripFactory

    def __init__(self) -> None:
        self.lost: Failure | None = None
        self._dripping = LoopingCall(self._drip)
        self._dripping.clock = reactor

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self._dripping.start(0.02)

    def _drip(self) -> None:
        assert self.transport is not None
        self.transport.write(b"x" * 1024)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason
        if self._dripping.running:
            self._dripping.stop()


class DripFactory(Factory):
    protocol = Drip
    noisy = False

    def __init__(self) -> None:
        self.connections: list[Drip] = []


class Receiver(Protocol):
    """A client that counts what it receives and notes when it is closed."""

    def __init__(self) -> None:
        self.received = 0
        self.lostAt: float | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lostAt = time.monotonic()


class ConnectReceiver(Receiver):
    """A client of the CONNECT door: asks for C{target}, then counts what follows the 200."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.head = b""
        self.status: bytes | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode()
        )

    def dataReceived(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = head.split(b"\r\n")[0]
        super().dataReceived(data)


class TunnelProcessesTestCase(TestCase):
    """Runs an edge service, the two daemons, and clients through the server."""

    def listenEdge(self) -> tuple[DripFactory, int]:
        factory = DripFactory()
        return factory, listenAndAbortAtCleanup(self, factory)

    async def startTunnel(
        self, *serverOptions: str, agentOptions: Sequence[str] = ()
    ) -> tuple[DripFactory, Daemon, Daemon, list[Receiver]]:
        """
        Start an edge service, the server (keepalive 1 s, 3 misses, and
        C{serverOptions}) with a forward listener to the edge service, and
        the agent (with C{agentOptions}); connect three clients through the forward listener and
        three through the CONNECT door, and wait until all of them are
        receiving.
        """
        directory = temporaryDirectory(self)
        serverPaths = pki.paths(pki.server, directory, stem="server")
        agentPaths = pki.paths(pki.agent("edge-1"), directory, stem="agent-edge-1")
        edge, edgePort = self.listenEdge()
        connectSocket = self.connectSocket = os.path.join(directory, "connect.sock")
        keepalive = ["--keepalive-interval", "1", "--keepalive-misses", "3"]
        server = spawnTwistd(
            self,
            SERVER,
            [
                *serverPaths.options(),
                "--tunnel-endpoint",
                "tcp:0:interface=127.0.0.1",
                "--connect-endpoint",
                "unix:" + connectSocket,
                "--forward",
                f"edge-1:{edgePort}=tcp:0:interface=127.0.0.1",
                # the proxy listeners on loopback, and the host's iptables left alone
                "--https-proxy-endpoint=tcp:0:interface=127.0.0.1",
                "--http-proxy-endpoint=tcp:0:interface=127.0.0.1",
                "--tcp-proxy-endpoint=none",
                "--no-iptables",
                *keepalive,
                *serverOptions,
            ],
            cwd=directory,
            name="server",
        )
        tunnelPort = int((await server.waitForLine(rb"\(TLS\) starting on (\d+)")).group(1))
        forwardPort = int(
            (await server.waitForLine(rb"ForwardFactory starting on (\d+)")).group(1)
        )
        await server.waitForLine(rb"ConnectDoorFactory starting on")
        agent = spawnTwistd(
            self,
            AGENT,
            [
                *agentPaths.options(),
                "--server",
                f"127.0.0.1:{tunnelPort}",
                *keepalive,
                *agentOptions,
            ],
            cwd=directory,
            name="agent",
        )
        await agent.waitForLine(rb"tunnel up to server")
        await server.waitForLine(rb"agent edge-1 connected from")

        clients: list[Receiver] = []
        self.forwardPort = forwardPort
        forward = TCP4ClientEndpoint(reactor, "127.0.0.1", forwardPort)
        door = UNIXClientEndpoint(reactor, connectSocket)
        for endpoint, client in [(forward, Receiver()) for _ in range(3)] + [
            (door, ConnectReceiver(f"edge-1:{edgePort}")) for _ in range(3)
        ]:
            await connectProtocol(endpoint, client)
            self.addCleanup(_abort, client)
            clients.append(client)
        await waitUntil(
            lambda: all(c.received >= 8 * 1024 for c in clients),
            20.0,
            "every client to be receiving",
        )
        self.assertEqual(len(edge.connections), len(clients))
        self.assertEqual(
            [c.status for c in clients if isinstance(c, ConnectReceiver)],
            [b"HTTP/1.1 200 Connection established"] * 3,
        )
        self.assertTrue(all(c.lostAt is None for c in clients))
        return edge, server, agent, clients

    async def assertAllClosedWithin(
        self, seconds: float, since: float, clients: list[Receiver]
    ) -> float:
        """Every client is closed within C{seconds} of C{since}; how long the last took."""
        await waitUntil(
            lambda: all(c.lostAt is not None for c in clients),
            seconds,
            "every client to be closed",
        )
        slowest = max(c.lostAt for c in clients if c.lostAt is not None) - since
        self.assertLess(slowest, seconds)
        return slowest


class AgentDiesTests(TunnelProcessesTestCase):
    """
    The agent process dies, or stops answering, while clients stream from
    its node through the server: every one of them is closed soon after.
    """

    async def test_agentKilled(self) -> None:
        """
        The agent is killed with SIGKILL mid-transfer: every client is
        closed within seconds (the kernel ends the agent's connections, so
        the server knows at once), and so is every connection the agent had
        made to the edge service.
        """
        edge, server, agent, clients = await self.startTunnel()
        killedAt = time.monotonic()
        agent.kill(signal.SIGKILL)
        await self.assertAllClosedWithin(10.0, killedAt, clients)
        await waitUntil(
            lambda: all(d.lost is not None for d in edge.connections),
            10.0,
            "the edge service's connections to be closed",
        )
        await server.waitForLine(rb"agent edge-1 disconnected", 10.0)
        await agent.whenEnded()
        self.assertTrue(server.running, server.output())

    async def test_agentFrozen(self) -> None:
        """
        The agent stops (SIGSTOP) mid-transfer: its connection stays open,
        but it answers no PING, so the server's keepalive (1 s, 3 misses)
        declares it dead and closes every client within seconds.
        """
        edge, server, agent, clients = await self.startTunnel()
        frozenAt = time.monotonic()
        agent.kill(signal.SIGSTOP)
        self.addCleanup(agent.kill, signal.SIGCONT)
        slowest = await self.assertAllClosedWithin(10.0, frozenAt, clients)
        # Not before the keepalive could have told (less a tick's slack).
        self.assertGreater(slowest, 1.5)
        await server.waitForLine(rb"tunnel to edge-1 is dead", 1.0)
        self.assertTrue(server.running, server.output())


class StopTests(TunnelProcessesTestCase):
    """
    SIGTERM (what systemd and Kubernetes send) stops a daemon promptly and
    cleanly, and the clients of its node's streams are closed.
    """

    async def assertStopsOnSigterm(self, daemon: Daemon, clients: list[Receiver]) -> None:
        stoppedAt = time.monotonic()
        daemon.kill(signal.SIGTERM)
        await waitUntil(lambda: not daemon.running, 5.0, f"the {daemon.name} to exit")
        self.assertExitedCleanly(daemon)
        await self.assertAllClosedWithin(5.0, stoppedAt, clients)

    def assertExitedCleanly(self, daemon: Daemon) -> None:
        assert daemon.status is not None
        # twistd ends by re-raising the signal it stopped on (or exits 0).
        ended = daemon.status.value
        self.assertIn((ended.exitCode, ended.signal), [(0, None), (None, signal.SIGTERM)])
        self.assertNotIn("Traceback", daemon.output())

    async def assertDrains(
        self, daemon: Daemon, timeout: float, stoppedAt: float, clients: list[Receiver]
    ) -> None:
        """
        C{daemon}, sent SIGTERM at C{stoppedAt} with C{--drain-timeout
        timeout}: its streams keep flowing, then at the timeout they are
        closed, and it exits cleanly.
        """
        before = [c.received for c in clients]
        await deferLater(reactor, 1.0, lambda: None)
        self.assertTrue(time.monotonic() - stoppedAt < 3.0, "the test machine is too slow to tell")
        self.assertTrue(all(c.lostAt is None for c in clients), "closed before the timeout")
        self.assertTrue(
            all(c.received > b for c, b in zip(clients, before, strict=True)),
            "a stream stopped flowing during the drain",
        )
        timedOut = rf"drain timeout of {timeout:g}s: closing 6 stream\(s\) still open"
        await daemon.waitForLine(timedOut.encode(), 10.0)
        slowest = await self.assertAllClosedWithin(timeout + 5.0, stoppedAt, clients)
        self.assertGreater(slowest, timeout - 0.5)
        await waitUntil(lambda: not daemon.running, 10.0, f"the {daemon.name} to exit")
        self.assertExitedCleanly(daemon)

    async def test_serverStopsOnSigterm(self) -> None:
        """With C{--drain-timeout 0} the server closes everything at once."""
        edge, server, agent, clients = await self.startTunnel("--drain-timeout", "0")
        await self.assertStopsOnSigterm(server, clients)
        await agent.waitForLine(rb"tunnel lost", 5.0)
        self.assertTrue(agent.running)

    async def test_serverDrainsOnSigterm(self) -> None:
        """
        SIGTERM to the server: its listeners close at once, the agent is
        told to drain, the streams in flight keep flowing for the drain
        timeout, then the rest are closed and the server exits cleanly.
        """
        edge, server, agent, clients = await self.startTunnel("--drain-timeout", "6")
        stoppedAt = time.monotonic()
        server.kill(signal.SIGTERM)
        await server.waitForLine(rb"draining 1 agent\(s\): streams in flight have 6s", 5.0)
        await agent.waitForLine(rb"is draining our tunnel", 5.0)
        await self.assertDrains(server, 6.0, stoppedAt, clients)
        self.assertTrue(agent.running)

    async def test_agentStopsOnSigterm(self) -> None:
        """With C{--drain-timeout 0} the agent closes everything at once."""
        drain = ["--drain-timeout", "0"]
        edge, server, agent, clients = await self.startTunnel(agentOptions=drain)
        await self.assertStopsOnSigterm(agent, clients)
        await server.waitForLine(rb"agent edge-1 disconnected", 5.0)

    async def test_agentDrainsOnSigterm(self) -> None:
        """
        SIGTERM to the agent: it tells the server, which stops routing new
        streams to the node at once (a new client is turned away), while
        the streams in flight keep flowing for the drain timeout; then the
        rest are closed and the agent exits cleanly.
        """
        drain = ["--drain-timeout", "4"]
        edge, server, agent, clients = await self.startTunnel(agentOptions=drain)
        stoppedAt = time.monotonic()
        agent.kill(signal.SIGTERM)
        await server.waitForLine(rb"agent edge-1 is draining", 5.0)
        latecomer = Receiver()
        forward = TCP4ClientEndpoint(reactor, "127.0.0.1", self.forwardPort)
        await connectProtocol(forward, latecomer)
        self.addCleanup(_abort, latecomer)
        await waitUntil(lambda: latecomer.lostAt is not None, 5.0, "the latecomer to be closed")
        self.assertEqual(latecomer.received, 0)
        await self.assertDrains(agent, 4.0, stoppedAt, clients)
        self.assertTrue(server.running)


def _abort(client: Protocol) -> None:
    if getattr(client, "lostAt", None) is None and client.transport is not None:
        client.transport.abortConnection()  # type: ignore[attr-defined]


class CommandLineTests(SynchronousTestCase):
    """What an operator sees when starting a daemon goes well, or not."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)

    def run_(self, plugin: str, *arguments: str) -> Any:
        return runTwistd(plugin, arguments, cwd=self.directory)

    def assertOneLineError(self, result: Any, *mentions: str) -> None:
        """
        The daemon exited non-zero, saying why in exactly one line on
        stderr, naming C{mentions}, without a traceback.
        """
        self.assertNotEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("Traceback", result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        for mention in mentions:
            self.assertIn(mention, lines[0])

    def test_serverHelp(self) -> None:
        result = self.run_(SERVER, "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--tunnel-endpoint", "--connect-endpoint", "--forward", "--ca"):
            self.assertIn(option, result.stdout)

    def test_agentHelp(self) -> None:
        result = self.run_(AGENT, "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--server", "--node-name", "--node-ip", "--dial-timeout", "--ca"):
            self.assertIn(option, result.stdout)

    def test_serverMissingCertificate(self) -> None:
        paths = pki.paths(pki.server, self.directory, stem="server")
        missing = os.path.join(self.directory, "no-such-server.pem")
        result = self.run_(
            SERVER,
            *CredentialPaths(ca=paths.ca, cert=missing, key=paths.key).options(),
            "--tunnel-endpoint",
            "tcp:0:interface=127.0.0.1",
            "--connect-endpoint",
            "unix:" + os.path.join(self.directory, "connect.sock"),
        )
        self.assertOneLineError(result, "--cert", missing)

    def test_portInUse(self) -> None:
        """A port that is taken stops startup with one line naming the option and the port."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        paths = pki.paths(pki.server, self.directory, stem="server")
        for option in ("--tunnel-endpoint", "--meta-endpoint"):
            result = self.run_(
                SERVER,
                *paths.options(),
                "--tunnel-endpoint=tcp:0:interface=127.0.0.1",
                "--connect-endpoint=unix:" + os.path.join(self.directory, "connect.sock"),
                "--no-iptables",
                f"{option}=tcp:{port}:interface=127.0.0.1",
            )
            self.assertOneLineError(result, option, f"127.0.0.1:{port}", "in use")

    def test_agentMissingCertificate(self) -> None:
        paths = pki.paths(pki.agent("edge-1"), self.directory, stem="agent")
        missing = os.path.join(self.directory, "no-such-agent.pem")
        result = self.run_(
            AGENT,
            *CredentialPaths(ca=paths.ca, cert=missing, key=paths.key).options(),
            "--server",
            "127.0.0.1:9",
        )
        self.assertOneLineError(result, "--cert", missing)

    def test_agentGarbageKey(self) -> None:
        paths = pki.paths(pki.agent("edge-1"), self.directory, stem="agent")
        for name, garbage in [
            ("garbage-key.pem", b"this is not a key\n"),
            (
                "garbage-pem-key.pem",
                b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            ),
        ]:
            key = os.path.join(self.directory, name)
            with open(key, "wb") as f:
                f.write(garbage)
            os.chmod(key, 0o600)
            result = self.run_(
                AGENT,
                *CredentialPaths(ca=paths.ca, cert=paths.cert, key=key).options(),
                "--server",
                "127.0.0.1:9",
            )
            self.assertOneLineError(result, "--key", key)
