# -*- test-case-name: tests.test_forward -*-
"""
Tests for L{twisted_tunnel.forward}: the C{--forward NODE:PORT=ENDPOINT}
parser, and static forward listeners over real loopback sockets (a tunnel
server, a real agent, an echo service on the "edge", and raw TCP clients).

Everything listens on 127.0.0.1 port 0, and no traffic leaves loopback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.forward import ForwardFactory, ForwardProtocol, parseForward
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import PeerIdentity

reactor: Any = _reactor

NODE = "edge-1"


class ParseForwardTests(SynchronousTestCase):
    """C{NODE:PORT=ENDPOINT}: what is accepted, and what is refused with the spec named."""

    def test_good(self) -> None:
        table = {
            "edge-1:9100=tcp:19100:interface=127.0.0.1": (
                "edge-1",
                9100,
                "tcp:19100:interface=127.0.0.1",
            ),
            "[fd00::1]:80=unix:/x": ("fd00::1", 80, "unix:/x"),
            "10.0.0.7:1=tcp:1": ("10.0.0.7", 1, "tcp:1"),
            "edge-1:65535=unix:/run/edge.sock": ("edge-1", 65535, "unix:/run/edge.sock"),
        }
        for spec, expected in table.items():
            self.assertEqual(parseForward(spec), expected, spec)

    def test_bad(self) -> None:
        for spec in [
            "edge-1:9100",  # no "="
            "edge-1=tcp:19100",  # no port
            ":9100=tcp:19100",  # no node
            "edge-1:0=tcp:19100",
            "edge-1:70000=tcp:19100",
            "edge-1:abc=tcp:19100",
            "edge-1:-1=tcp:19100",
            "edge-1:=tcp:19100",
            "edge-1:9100=",  # empty endpoint
            "",
        ]:
            with self.assertRaises(ValueError, msg=spec) as caught:
                parseForward(spec)
            self.assertIn(repr(spec), str(caught.exception))


# -- real sockets ----------------------------------------------------------------


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll C{predicate} until it holds; fail after C{timeout} seconds."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.005, lambda: None)


def _sockets() -> set[object]:
    """The reactor's TCP ports and connections (not its wakers and pipes)."""
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return {s for s in selectables if hasattr(s, "socket")}


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Echoes, and closes once the client's EOF has arrived (after the echo)."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """Records what it receives; closes when the other side's EOF arrives."""

    def __init__(self) -> None:
        self.received = b""
        self.eof = False
        self.closed = False
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self.lost.callback(None)


class _Quiet(Factory):
    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self.build = build

    def buildProtocol(self, addr: object) -> Protocol:
        protocol = self.build()
        protocol.factory = self
        return protocol


class ForwardOverSocketsTests(TestCase):
    """A forward listener in front of a real server and agent on loopback."""

    timeout = 20

    def listen(self, factory: IProtocolFactory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def quiet(self, baseline: set[object]) -> None:
        """Wait until every socket a test opened is closed."""
        try:
            await until(lambda: _sockets() <= baseline, "every connection to close")
        except AssertionError:
            left = [(s, getattr(s, "protocol", None)) for s in _sockets() - baseline]
            raise AssertionError(f"still open: {left}") from None

    async def world(self) -> tuple[TunnelServer, int]:
        """A server with the agent of C{edge-1} connected; the port of an echo service."""
        baseline = _sockets()
        self.addCleanup(self.quiet, baseline)  # runs last
        server = TunnelServer(
            reactor, None, identify=lambda transport: PeerIdentity(f"system:node:{NODE}")
        )
        tunnelPort = self.listen(server.plainTunnelFactory())
        agent = TunnelAgent(
            reactor,
            None,
            ("127.0.0.1", tunnelPort),
            NODE,
            ["127.0.0.1"],
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", tunnelPort),
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        await agent.whenConnected(failAfterFailures=1)
        return server, self.listen(_Quiet(Echo))

    def captureForwardLog(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(ForwardProtocol, "log", Logger(observer=cast(ILogObserver, events.append)))
        return events

    async def client(self, port: int) -> Client:
        client = Client()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(_Quiet(lambda: client))
        self.addCleanup(self.closeClient, client)
        return client

    async def closeClient(self, client: Client) -> None:
        if not client.closed:
            assert client.transport is not None
            client.transport.abortConnection()  # type: ignore[attr-defined]
            await client.lost

    async def test_relayBothWays(self) -> None:
        """
        Bytes written to the forward listener reach the edge service and its
        answer comes back; the client's EOF travels through and ends it all.
        """
        server, echo = await self.world()
        events = self.captureForwardLog()
        forward = self.listen(ForwardFactory(server, NODE, echo))
        client = await self.client(forward)
        assert client.transport is not None
        client.transport.write(b"ping")
        await until(lambda: client.received == b"ping", "the echo")
        payload = bytes(range(256)) * 1024
        client.transport.write(payload)
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await client.lost
        self.assertTrue(client.eof, "the forward reset the connection instead of closing it")
        self.assertEqual(client.received, b"ping" + payload)
        record = server.registry.lookup(NODE)
        assert record is not None
        await until(lambda: record.tunnel.streamCount == 0, "the stream to end")
        self.assertEqual(events, [])

    async def test_unknownNode(self) -> None:
        """
        A forward to a node without an agent closes the client's connection
        at once, with one log line saying why.
        """
        server, echo = await self.world()
        events = self.captureForwardLog()
        forward = self.listen(ForwardFactory(server, "edge-9", echo))
        client = await self.client(forward)
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(len(events), 1, [formatEvent(e) for e in events])
        (event,) = events
        self.assertEqual((event["node"], event["port"]), ("edge-9", echo))
        self.assertIn("no agent connected for node 'edge-9'", formatEvent(event))
        self.assertNotIn("log_failure", event)
