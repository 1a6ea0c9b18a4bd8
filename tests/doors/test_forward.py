# -*- test-case-name: tests.doors.test_forward -*-
"""
Tests for L{twisted_tunnel.doors.forward}: the C{--forward NODE:PORT=ENDPOINT}
parser, and static forward listeners over real loopback sockets (a tunnel
server, a real agent, an echo service on the "edge", and raw TCP clients).

Everything listens on 127.0.0.1 port 0, and no traffic leaves loopback.
"""

from __future__ import annotations

import socket
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.realnet import plainTunnel, waitUntil
from tests.services import Echo, QuietFactory, connectRecordingClient, listen
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.doors.forward import ForwardFactory, ForwardProtocol, parseForward
from twisted_tunnel.mux import TunnelAddress
from twisted_tunnel.server import TunnelServer

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


class ForwardOverSocketsTests(TestCase):
    """A forward listener in front of a real server and agent on loopback."""

    timeout = 20

    async def world(self) -> tuple[TunnelServer, int]:
        """A server with the agent of C{edge-1} connected; the port of an echo service."""
        server, _, _ = await plainTunnel(self, NODE)
        return server, listen(self, QuietFactory(Echo))

    def heldDials(self, agent: TunnelAgent) -> Deferred[None]:
        """
        Hold the agent's dials until the Deferred returned fires: the test
        decides when the agent answers an OPEN.
        """
        release: Deferred[None] = Deferred()
        dial = agent.dial

        def held(address: TunnelAddress) -> Deferred[IProtocol]:
            answer: Deferred[IProtocol] = Deferred()
            release.addCallback(lambda _: dial(address).chainDeferred(answer))
            return answer

        self.patch(agent, "dial", held)
        return release

    def captureForwardLog(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        self.patch(ForwardProtocol, "log", Logger(observer=cast(ILogObserver, events.append)))
        return events

    async def test_relayBothWays(self) -> None:
        """
        Bytes written to the forward listener reach the edge service and its
        answer comes back; the client's EOF travels through and ends it all.
        """
        server, echo = await self.world()
        events = self.captureForwardLog()
        forward = listen(self, ForwardFactory(server, NODE, echo))
        client = await connectRecordingClient(self, forward)
        assert client.transport is not None
        client.transport.write(b"ping")
        await waitUntil(lambda: client.received == b"ping", 10.0, "the echo")
        payload = bytes(range(256)) * 1024
        client.transport.write(payload)
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await client.lost
        self.assertTrue(client.eof, "the forward reset the connection instead of closing it")
        self.assertEqual(client.received, b"ping" + payload)
        record = server.registry.lookup(NODE)
        assert record is not None
        await waitUntil(lambda: record.tunnel.streamCount == 0, 10.0, "the stream to end")
        self.assertEqual(events, [])

    async def test_unknownNode(self) -> None:
        """
        A forward to a node without an agent closes the client's connection
        at once, with one log line saying why.
        """
        server, echo = await self.world()
        events = self.captureForwardLog()
        forward = listen(self, ForwardFactory(server, "edge-9", echo))
        client = await connectRecordingClient(self, forward)
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(len(events), 1, [formatEvent(e) for e in events])
        (event,) = events
        self.assertEqual((event["node"], event["port"]), ("edge-9", echo))
        self.assertIn("no agent connected for node 'edge-9'", formatEvent(event))
        self.assertNotIn("log_failure", event)

    async def test_firstBytesBeforeTheAgentAnswers(self) -> None:
        """
        The forward opens its stream early: the client's first bytes and its
        EOF reach the agent right behind the OPEN, held there while the
        agent dials, then delivered; the answer comes back as ever.
        """
        server, agent, agentTunnel = await plainTunnel(self, NODE)
        echo = listen(self, QuietFactory(Echo))
        release = self.heldDials(agent)
        forward = listen(self, ForwardFactory(server, NODE, echo))
        client = await connectRecordingClient(self, forward)
        assert client.transport is not None
        client.transport.write(b"early bytes")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]

        def heldAtTheAgent() -> bool:
            return [s.bufferedBytes for s in agentTunnel.streams()] == [len(b"early bytes")]

        await waitUntil(heldAtTheAgent, 10.0, "the early bytes at the agent")
        [opening] = agentTunnel.streams()
        self.assertTrue(opening.peerFinished, "the EOF came early too")
        release.callback(None)
        await client.lost
        self.assertEqual(client.received, b"early bytes")
        self.assertTrue(client.eof)
        record = server.registry.lookup(NODE)
        assert record is not None
        await waitUntil(lambda: record.tunnel.streamCount == 0, 10.0, "the stream to end")

    async def test_refusedAfterTheClientSpoke(self) -> None:
        """
        An open the agent refuses after the client's first bytes went ahead
        of its answer still closes the client's connection as before: a
        clean close, nothing relayed, one log line with the agent's reason.
        """
        server, agent, agentTunnel = await plainTunnel(self, NODE)
        closed = _closedPort()
        release = self.heldDials(agent)
        events = self.captureForwardLog()
        forward = listen(self, ForwardFactory(server, NODE, closed))
        client = await connectRecordingClient(self, forward)
        assert client.transport is not None
        client.transport.write(b"dropped by the agent")
        await waitUntil(
            lambda: [s.bufferedBytes for s in agentTunnel.streams()] == [20],
            10.0,
            "the early bytes at the agent",
        )
        release.callback(None)
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertTrue(client.eof, "the forward reset the connection instead of closing it")
        self.assertEqual(len(events), 1, [formatEvent(e) for e in events])
        self.assertEqual(
            formatEvent(events[0]),
            f"connection to {NODE}:{closed} refused: connection to 127.0.0.1:{closed} refused",
        )
        self.assertNotIn("log_failure", events[0])
        await waitUntil(lambda: agentTunnel.streamCount == 0, 10.0, "the agent to forget it")
        record = server.registry.lookup(NODE)
        assert record is not None
        self.assertEqual(record.tunnel.streamCount, 0)

    async def test_clientGoneBeforeTheAnswer(self) -> None:
        """
        A client that sends and leaves before the agent answers: what it
        sent still reaches the edge service, and the stream then ends.
        """
        server, agent, agentTunnel = await plainTunnel(self, NODE)
        received: list[bytes] = []
        sink = listen(self, QuietFactory(lambda: _Sink(received)))
        release = self.heldDials(agent)
        forward = listen(self, ForwardFactory(server, NODE, sink))
        client = await connectRecordingClient(self, forward)
        assert client.transport is not None
        client.transport.write(b"last words")
        client.transport.loseConnection()
        await client.lost
        await waitUntil(
            lambda: [s.bufferedBytes for s in agentTunnel.streams()] == [10],
            10.0,
            "the early bytes at the agent",
        )
        release.callback(None)
        await waitUntil(lambda: b"".join(received) == b"last words", 10.0, "the last words")
        record = server.registry.lookup(NODE)
        assert record is not None
        await waitUntil(
            lambda: record.tunnel.streamCount == agentTunnel.streamCount == 0,
            10.0,
            "the stream to end",
        )


def _closedPort() -> int:
    """A loopback port nothing listens on (bound, then closed at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Sink(Echo):
    """Keeps what it receives (and echoes it, which nobody reads)."""

    def __init__(self, into: list[bytes]) -> None:
        super().__init__()
        self.into = into

    def dataReceived(self, data: bytes) -> None:
        self.into.append(data)
