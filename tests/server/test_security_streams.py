# -*- test-case-name: tests.server.test_security_streams -*-
"""
Security regression tests for the multiplexer's and the relays' resource
bounds (issue 12, findings 7 and 14): a peer that floods a tunnel with
requests it does not read the answers to, and streams that nobody ends.

Unit tests run on a L{Clock} with in-memory transports that push back like
TCP does; the tests marked as such use real sockets on 127.0.0.1.
"""

from __future__ import annotations

import resource
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.agent.test_agent import FakeEndpoint, RecordingPolicy
from tests.doors.test_security_http import Upstreams
from tests.memory import (
    SMALL_WINDOW,
    HalfCloser,
    ProtocolFactory,
    Recorder,
    RecordingHandler,
    TunnelPair,
    frames,
    framesOfType,
    streamOf,
)
from tests.net.test_relay import TCPLikeTransport
from tests.pki import TestPKI, temporaryDirectory
from twisted_tunnel.agent import (
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_STREAMS_TOTAL,
    TunnelAgent,
    _AgentTunnelFactory,
)
from twisted_tunnel.doors.connect import ConnectDoorFactory
from twisted_tunnel.doors.forward import ForwardFactory
from twisted_tunnel.doors.proxy import ProxyRouter, RawProxyFactory
from twisted_tunnel.errors import StreamOpenFailed
from twisted_tunnel.forwarding.config import ProxyConfig
from twisted_tunnel.http.engine import HTTPProxyFactory, Route
from twisted_tunnel.mux import (
    FD_MARGIN,
    MAX_FORBIDDEN_OPENS,
    PAUSE_READING_AFTER,
    Settings,
    StreamBudget,
    Tunnel,
    openFileLimit,
)
from twisted_tunnel.net.relay import (
    DEFAULT_HALF_CLOSED_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    RelayProtocol,
    RelayReaper,
    RelayTimeouts,
    peerGone,
    splice,
)
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tap import agent as tapagent
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls import PeerIdentity
from twisted_tunnel.wire import ErrorCode, GoAway, Hello, Open, OpenFail, OpenFailReason, Ping

pki = TestPKI()

NODE = "edge-1"


def nodeIdentity(node: str = NODE) -> PeerIdentity:
    """A kubelet-style node identity, as a verified certificate would give it."""
    return PeerIdentity(f"system:node:{node}", organizations=("system:nodes",))


class PushBackTransport(StringTransport):
    """
    A C{StringTransport} that pushes back like a TCP transport: past
    C{bufferSize} unsent bytes it pauses its streaming producer, and
    L{drain} (the peer reading) empties it and resumes the producer.

    Reading is paused with C{pauseProducing} (C{producerState}), as a
    reactor stops reading a socket.
    """

    def __init__(self, bufferSize: int = 64 * 1024) -> None:
        super().__init__()
        self.bufferSize = bufferSize
        self._pushingBack = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._check()

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        self._check()

    def _check(self) -> None:
        if (
            len(self.io.getvalue()) > self.bufferSize
            and self.producer is not None
            and self.streaming
            and not self._pushingBack
        ):
            self._pushingBack = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        data: bytes = self.value()
        self.clear()
        if self._pushingBack and self.producer is not None:
            self._pushingBack = False
            self.producer.resumeProducing()
        return data

    @property
    def reading(self) -> bool:
        return self.producerState != "paused"


def serverTunnel(server: TunnelServer, transport: StringTransport) -> Tunnel:
    """A tunnel of C{server} on C{transport}, HELLO not yet received."""
    tunnel = server.plainTunnelFactory().buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(tunnel, Tunnel)
    tunnel.makeConnection(transport)
    return tunnel


def agentHello(node: str = NODE) -> bytes:
    return Hello(1, 1, {"node": node, "ips": [], **Settings().toInfo()}).encode()


def feedWhileReading(tunnel: Tunnel, transport: PushBackTransport, data: bytes) -> int:
    """
    Feed C{data} in 64 KiB reads, as a reactor does, while the transport is
    reading; return how many bytes were fed.
    """
    fed = 0
    while fed < len(data) and transport.reading and not transport.disconnecting:
        chunk = data[fed : fed + 65536]
        tunnel.dataReceived(chunk)
        fed += len(chunk)
    return fed


class OpenFloodTests(SynchronousTestCase):
    """
    Finding 7: an agent flooding OPEN frames made the server queue refusals
    without limit (and other tunnels felt it).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        #: identities of transports that are not edge-1's
        self.identities: dict[object, PeerIdentity] = {}
        self.server = TunnelServer(
            self.clock, None, identify=lambda t: self.identities.get(t, nodeIdentity())
        )

    def flooder(self) -> tuple[Tunnel, PushBackTransport]:
        transport = PushBackTransport()
        tunnel = serverTunnel(self.server, transport)
        tunnel.dataReceived(agentHello())
        self.assertTrue(tunnel.established)
        transport.drain()
        return tunnel, transport

    def test_openFloodEndsTheTunnel(self) -> None:
        """
        OPENs to a server are refused (OPEN_FAIL NOT_ALLOWED) up to
        L{MAX_FORBIDDEN_OPENS} in a window; past it the server sends GOAWAY
        PROTOCOL_ERROR, stops reading, logs one line and counts it.
        """
        tunnel, transport = self.flooder()
        flood = b"".join(Open(2 * i + 1, "10.0.0.1", 22).encode() for i in range(100_000))
        with capturedLogs() as events:
            tunnel.dataReceived(flood)
        sent = frames(transport)
        refusals = framesOfType(sent, OpenFail)
        self.assertEqual(len(refusals), MAX_FORBIDDEN_OPENS)
        self.assertEqual({f.reason for f in refusals}, {OpenFailReason.NOT_ALLOWED})
        self.assertEqual([g.code for g in framesOfType(sent, GoAway)], [ErrorCode.PROTOCOL_ERROR])
        self.assertTrue(transport.disconnecting)
        warnings = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("accepts no streams", warnings[0]["reason"])
        self.assertEqual(self.server.metrics.meter.floods["forbidden_opens"], 1)
        # and no stream or open was ever built for them
        self.assertEqual(tunnel.streamCount, 0)

    def test_slowOpensAreRefusedPolitely(self) -> None:
        """A few OPENs per window are refused, never a reason to close."""
        tunnel, transport = self.flooder()
        streamId = 1
        for _ in range(5):
            for _ in range(MAX_FORBIDDEN_OPENS):
                tunnel.dataReceived(Open(streamId, "127.0.0.1", 10250).encode())
                streamId += 2
            self.clock.advance(10)
        sent = frames(transport)
        self.assertEqual(len(framesOfType(sent, OpenFail)), 5 * MAX_FORBIDDEN_OPENS)
        self.assertEqual(framesOfType(sent, GoAway), [])
        self.assertTrue(tunnel.established)

    def test_refusalsToANonReaderAreBounded(self) -> None:
        """
        On a side that accepts streams (an agent), a peer that asks for
        refusals without reading them makes us stop reading from it, not
        queue them: the bytes we hold stay within a few kilobytes above
        the transport's buffer, however long it goes on.
        """
        clock = Clock()
        handler = RecordingHandler({"node": NODE})
        tunnel = Tunnel(handler, clock, isClient=True, settings=Settings(maxStreams=1))
        transport = PushBackTransport(bufferSize=4096)
        tunnel.makeConnection(transport)
        tunnel.dataReceived(Hello(1, 1, {"server_id": "srv-a", **Settings().toInfo()}).encode())
        transport.drain()
        # one stream open (the limit), then a flood of opens refused with
        # TOO_MANY_STREAMS; the peer never reads
        tunnel.dataReceived(Open(2, "127.0.0.1", 10250).encode())
        flood = b"".join(Open(2 * i, "127.0.0.1", 10250).encode() for i in range(2, 200_000))
        transport.write(b"x" * 5000)  # the connection is already pushing back
        fed = feedWhileReading(tunnel, transport, flood)
        self.assertFalse(transport.reading)
        self.assertLess(fed, len(flood))
        self.assertLess(len(transport.value()), 5000 + 2 * PAUSE_READING_AFTER * 64)
        self.assertFalse(transport.disconnecting)
        # once the peer reads, we read again, and the rest is refused in turn
        while fed < len(flood):
            transport.drain()
            fed += feedWhileReading(tunnel, transport, flood[fed:])
            self.assertLess(len(transport.value()), 4096 + 2 * PAUSE_READING_AFTER * 64)
        transport.drain()
        self.assertTrue(tunnel.established)
        tunnel.connectionLost(Failure(ConnectionDone()))

    def test_pingFloodWithoutReading(self) -> None:
        """PINGs from a peer that does not read stop our reading too."""
        tunnel, transport = self.flooder()
        transport.write(b"x" * 70_000)
        flood = Ping(b"12345678").encode() * 500_000
        fed = feedWhileReading(tunnel, transport, flood)
        self.assertFalse(transport.reading)
        self.assertLess(fed, 2 * 65536)
        self.assertLess(len(transport.value()), 70_000 + 2 * PAUSE_READING_AFTER * 18)

    def test_otherTunnelsDoNotFeelIt(self) -> None:
        """
        While one agent floods its tunnel (PINGs and OPENs, never reading),
        another agent's streams through the same server, on the same clock,
        open and carry their bytes both ways; the flooder's tunnel holds a
        bounded amount of our memory, then dies of its own silence (we no
        longer read it) at the keepalive deadline.
        """
        tunnel, transport = self.flooder()
        # another node: a second edge-1 would replace the flooder's tunnel
        pair = TunnelPair(RecordingHandler({"node": "edge-2"}), clock=self.clock, connect=False)
        self.identities[pair.serverTransport] = nodeIdentity("edge-2")
        good = serverTunnel(self.server, pair.serverTransport)
        pair.server = good
        pair.client.makeConnection(pair.clientTransport)
        pair.pump()
        self.assertTrue(good.established and pair.client.established)

        transport.write(b"x" * 70_000)  # the flooder does not read
        flood = b"".join(
            Ping(b"abcdefgh").encode() + Open(2 * i + 1, "10.0.0.9", 22).encode()
            for i in range(50_000)
        )
        done = 0
        for _ in range(40):
            done += feedWhileReading(tunnel, transport, flood[done : done + 65536])
            self.assertLess(len(transport.value()), 70_000 + 4096)
            # the well-behaved agent keeps working meanwhile
            opened = good.openStream("127.0.0.1", 10250, Factory.forProtocol(Recorder))
            pair.pump()
            near = Recorder()
            pair.clientHandler.accept(near)
            pair.pump()
            far = self.successResultOf(opened)
            assert isinstance(far, Recorder)
            streamOf(far).write(b"ping")
            streamOf(near).write(b"pong")
            pair.pump()
            self.assertEqual((near.received, far.received), (b"ping", b"pong"))
            streamOf(far).loseConnection()
            pair.pump()
            self.clock.advance(1)
            pair.pump()
        self.assertFalse(transport.reading)
        self.assertLess(done, 2 * 65536)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertEqual(self.server.metrics.meter.keepaliveTimeouts, 1)
        self.assertTrue(good.established)
        pair.lose(Failure(ConnectionDone()))
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- finding 14: streams are reaped, and the edge side has its own caps ---------------

IDLE = 600.0
HALF_CLOSED = 60.0
TIMEOUTS = RelayTimeouts(idle=IDLE, halfClosed=HALF_CLOSED)


def tick(clock: Clock, seconds: float, pump: Callable[[], object] | None = None) -> None:
    """
    Let C{seconds} pass a second at a time, as a running reactor would,
    moving the bytes of a L{TunnelPair} (C{pump}) after each: its
    keepalive must see the PONGs.
    """
    for _ in range(int(seconds)):
        clock.advance(1)
        if pump is not None:
            pump()
    clock.advance(seconds - int(seconds))


class SocketTransport(TCPLikeTransport):
    """A TCP-like in-memory transport over a real socket, for C{TCP_INFO}."""

    def __init__(self, handle: socket.socket) -> None:
        super().__init__()
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


def relayedPair(
    reaper: RelayReaper, a: TCPLikeTransport | None = None
) -> tuple[RelayProtocol, TCPLikeTransport, RelayProtocol, TCPLikeTransport]:
    """Two TCP-like connections spliced under C{reaper}."""
    ta = a if a is not None else TCPLikeTransport()
    ea, eb = RelayProtocol(), RelayProtocol()
    ea.makeConnection(ta)
    tb = TCPLikeTransport()
    eb.makeConnection(tb)
    splice(ea, eb, reaper)
    return ea, ta, eb, tb


def gone(transport: StringTransport) -> bool:
    """Whether a relay closed C{transport} (an abort, or a close being flushed)."""
    return bool(transport.disconnecting or transport.disconnected)


class StreamRelayWorld:
    """
    The agent's side of a relay, in memory: a tunnel pair whose server end
    opens streams that the agent end relays to TCP-like targets under a
    L{RelayReaper} on the pair's clock, as L{TunnelAgent.dial} does.
    """

    def __init__(self, timeouts: RelayTimeouts = TIMEOUTS) -> None:
        self.pair = TunnelPair(
            clientSettings=Settings(window=SMALL_WINDOW),
            serverSettings=Settings(window=SMALL_WINDOW),
        )
        self.pair.establish()
        self.clock = self.pair.clock
        self.reaper = RelayReaper(self.clock, timeouts)

    def open(
        self, caller: Recorder | None = None
    ) -> tuple[Recorder, RelayProtocol, RelayProtocol, TCPLikeTransport]:
        """A caller's stream relayed to a target: (caller, stream end, target end, target)."""
        caller = caller if caller is not None else Recorder()
        target, targetTransport = connectedTarget()
        streamEnd = RelayProtocol(peer=target, reaper=self.reaper)
        self.pair.open(self.pair.server, streamEnd, caller)
        return caller, streamEnd, target, targetTransport


def connectedTarget() -> tuple[RelayProtocol, TCPLikeTransport]:
    target = RelayProtocol()
    transport = TCPLikeTransport()
    target.makeConnection(transport)
    return target, transport


class ServerDoorWorld:
    """
    A L{TunnelServer} on a L{Clock} with one agent (edge-1) connected in
    memory: its front doors (C{--forward}, the CONNECT door) open streams
    that the fake agent accepts with L{Recorder}s.
    """

    def __init__(self, timeouts: RelayTimeouts = TIMEOUTS) -> None:
        self.clock = Clock()
        self.server = TunnelServer(
            self.clock, None, identify=lambda t: nodeIdentity(), relayTimeouts=timeouts
        )
        self.pair = TunnelPair(RecordingHandler({"node": NODE}), clock=self.clock, connect=False)
        self.pair.server = serverTunnel(self.server, self.pair.serverTransport)
        self.pair.client.makeConnection(self.pair.clientTransport)
        self.pair.pump()
        assert self.pair.server.established

    def acceptLast(self, far: Recorder | None = None) -> Recorder:
        far = far if far is not None else Recorder()
        self.pair.clientHandler.accept(far)
        self.pair.pump()
        return far

    def lose(self) -> None:
        self.pair.lose(Failure(ConnectionDone()))


class RelayIdleTests(SynchronousTestCase):
    """
    Finding 14: a relayed stream that moves nothing was never closed, so
    each abandoned one held a stream slot and sockets on the node forever.
    """

    def test_idleRelayIsClosed(self) -> None:
        """
        No byte either way for the idle deadline: both sides are aborted
        (RST, stream RESET), counted and logged in one line; the reaper's
        timer stops with its last relay.
        """
        clock = Clock()
        reaper = RelayReaper(clock, TIMEOUTS)
        ea, ta, eb, tb = relayedPair(reaper)
        self.assertEqual(len(reaper), 1)
        tick(clock, IDLE - 1)
        self.assertFalse(gone(ta) or gone(tb))
        with capturedLogs() as events:
            tick(clock, 2 * TIMEOUTS.period + 1)
        self.assertTrue(ta.disconnected and tb.disconnected)
        self.assertEqual(reaper.reaped, {"idle": 1})
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.info]), 1)
        ta.lose(ea, Failure(ConnectionLost()))
        tb.lose(eb, Failure(ConnectionLost()))
        self.assertEqual(len(reaper), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_trafficKeepsItOpen(self) -> None:
        """A relay that moves a byte now and then lives as long as it does."""
        clock = Clock()
        reaper = RelayReaper(clock, TIMEOUTS)
        ea, ta, eb, tb = relayedPair(reaper)
        for _ in range(20):
            tick(clock, IDLE / 2)
            ea.dataReceived(b"still here")
        self.assertFalse(gone(ta) or gone(tb))
        self.assertEqual(tb.value(), b"still here" * 20)
        self.assertEqual(reaper.reaped, {})
        # then it stops: the deadline runs from its last byte
        tick(clock, IDLE + 2 * TIMEOUTS.period)
        self.assertEqual(reaper.reaped, {"idle": 1})

    def test_streamRelayIdle(self) -> None:
        """The agent's relay of a stream to its target: the stream is reset, the slot freed."""
        world = StreamRelayWorld()
        caller, streamEnd, target, targetTransport = world.open()
        self.assertEqual(world.pair.client.streamCount, 1)
        tick(world.clock, IDLE + 2 * TIMEOUTS.period, world.pair.pump)
        world.pair.pump()
        self.assertTrue(targetTransport.disconnected)
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionLost)
        self.assertEqual((world.pair.client.streamCount, world.pair.server.streamCount), (0, 0))
        self.assertTrue(world.pair.client.established)  # the tunnel lives on
        targetTransport.lose(target, Failure(ConnectionLost()))
        self.assertEqual(len(world.reaper), 0)
        world.pair.lose(Failure(ConnectionDone()))
        self.assertEqual(world.clock.getDelayedCalls(), [])

    def test_forwardDoor(self) -> None:
        """A C{--forward} connection is held to the server's deadlines."""
        world = ServerDoorWorld()
        client = ForwardFactory(world.server, NODE, 9100).buildProtocol(None)
        transport = TCPLikeTransport()
        client.makeConnection(transport)
        world.pair.pump()
        far = world.acceptLast()
        client.dataReceived(b"hello")
        world.pair.pump()
        self.assertEqual(far.received, b"hello")
        self.assertEqual(len(world.server.relayReaper), 1)
        self.assertReapedWhenIdle(world, transport, far)

    def assertReapedWhenIdle(
        self, world: ServerDoorWorld, transport: TCPLikeTransport, far: Recorder
    ) -> None:
        """
        Past the idle deadline, the front door's relay is aborted on both
        sides (the client's C{transport}, the stream to C{far}) and counted,
        and the tunnel that carried it lives on.
        """
        tick(world.clock, IDLE + 2 * TIMEOUTS.period, world.pair.pump)
        world.pair.pump()
        self.assertTrue(transport.disconnected)
        assert far.lostReason is not None
        far.lostReason.trap(ConnectionLost)
        self.assertEqual(world.server.relayReaper.reaped, {"idle": 1})
        self.assertTrue(world.pair.server.established)
        world.lose()

    def test_connectDoor(self) -> None:
        """A CONNECT door tunnel is held to the server's deadlines."""
        world = ServerDoorWorld()
        client = ConnectDoorFactory(world.server).buildProtocol(None)
        transport = TCPLikeTransport()
        client.makeConnection(transport)
        client.dataReceived(b"CONNECT edge-1:9100 HTTP/1.1\r\nHost: edge-1:9100\r\n\r\n")
        world.pair.pump()
        far = world.acceptLast()
        self.assertIn(b"200", transport.value())
        self.assertEqual(len(world.server.relayReaper), 1)
        self.assertReapedWhenIdle(world, transport, far)

    def test_rawTCPListener(self) -> None:
        """The raw TCP listener's relays are held to the server's deadlines too."""
        server = TunnelServer(Clock(), None)
        router = ProxyRouter(server, "tcp", lambda: ProxyConfig())
        self.assertIs(
            RawProxyFactory(router).buildProtocol(None).relayReaper(), server.relayReaper
        )

    def test_agentDial(self) -> None:
        """The agent's dial to a target is held to the agent's deadlines."""
        reactor = MemoryReactorClock()
        endpoint = FakeEndpoint(reactor)
        agent = TunnelAgent(
            reactor,
            None,
            ("127.0.0.1", 10262),
            NODE,
            ["192.0.2.10"],
            endpoint=endpoint,
            retryPolicy=RecordingPolicy(),
            relayTimeouts=TIMEOUTS,
        )
        agent.startService()
        pair = endpoint.answer()
        caller = Recorder()
        opened = pair.server.openStream("192.0.2.10", 10250, ProtocolFactory(lambda: caller))
        pair.pump()
        factory = reactor.tcpClients[-1][2]
        target = factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 10250))
        assert target is not None
        targetTransport = TCPLikeTransport()
        target.makeConnection(targetTransport)
        pair.pump()
        self.assertIs(self.successResultOf(opened), caller)
        tick(reactor, IDLE + 2 * TIMEOUTS.period, pair.pump)
        pair.pump()
        self.assertTrue(targetTransport.disconnected)
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionLost)
        self.assertEqual(agent.relayReaper.reaped, {"idle": 1})
        self.assertTrue(pair.client.established)  # the tunnel lives on
        self.assertEqual(
            agent.metrics.registry.get_sample_value(
                "edge_tunnel_agent_relays_reaped_total", {"reason": "idle"}
            ),
            1,
        )
        agent.stopService()
        pair.lose(Failure(ConnectionDone()))


class HalfClosedRelayTests(SynchronousTestCase):
    """
    Finding 14: a half-closed relay whose other side never answered (1,024
    streams half-closed and abandoned at the CONNECT door) stayed open, and
    the node refused everyone once its stream limit was held.
    """

    def test_halfClosedIsClosedAfterDeadline(self) -> None:
        """The caller sent EOF, the target never answers: closed after the deadline."""
        world = StreamRelayWorld()
        caller, streamEnd, target, targetTransport = world.open(HalfCloser())
        streamOf(caller).loseWriteConnection()
        world.pair.pump()
        self.assertTrue(targetTransport.writeClosed)
        tick(world.clock, HALF_CLOSED - 1, world.pair.pump)
        self.assertFalse(gone(targetTransport))
        tick(world.clock, 2 * TIMEOUTS.period + 1, world.pair.pump)
        world.pair.pump()
        self.assertTrue(targetTransport.disconnected)
        self.assertEqual(world.reaper.reaped, {"half_closed": 1})
        self.assertEqual(world.pair.client.streamCount, 0)
        self.assertTrue(world.pair.client.established)
        targetTransport.lose(target, Failure(ConnectionLost()))
        world.pair.lose(Failure(ConnectionDone()))

    def test_movingTransferIsNotCut(self) -> None:
        """
        After the caller's EOF, an answer that keeps coming (a download)
        is never cut, however long it lasts; once it stops, the deadline
        runs from its last byte.
        """
        world = StreamRelayWorld()
        caller, streamEnd, target, targetTransport = world.open(HalfCloser())
        streamOf(caller).loseWriteConnection()
        world.pair.pump()
        for _ in range(100):
            tick(world.clock, HALF_CLOSED / 2, world.pair.pump)
            target.dataReceived(b"x" * 1000)
            world.pair.pump()
        self.assertFalse(gone(targetTransport))
        self.assertEqual(len(caller.received), 100 * 1000)
        tick(world.clock, HALF_CLOSED + 2 * TIMEOUTS.period, world.pair.pump)
        world.pair.pump()
        self.assertTrue(targetTransport.disconnected)
        self.assertEqual(world.reaper.reaped, {"half_closed": 1})
        targetTransport.lose(target, Failure(ConnectionLost()))
        world.pair.lose(Failure(ConnectionDone()))

    def test_halfClosedAtTheDoor(self) -> None:
        """A CONNECT client that sent EOF and waits for nothing frees its stream."""
        world = ServerDoorWorld()
        client = ConnectDoorFactory(world.server).buildProtocol(None)
        transport = TCPLikeTransport()
        client.makeConnection(transport)
        client.dataReceived(b"CONNECT edge-1:9100 HTTP/1.1\r\nHost: edge-1:9100\r\n\r\n")
        world.pair.pump()
        world.acceptLast(HalfCloser())
        client.readConnectionLost()
        world.pair.pump()
        self.assertEqual(world.pair.client.streamCount, 1)
        tick(world.clock, HALF_CLOSED + 2 * TIMEOUTS.period, world.pair.pump)
        world.pair.pump()
        self.assertTrue(transport.disconnected)
        self.assertEqual(world.pair.client.streamCount, 0)
        self.assertEqual(world.server.relayReaper.reaped, {"half_closed": 1})
        self.assertEqual(
            world.server.metrics.registry.get_sample_value(
                "edge_tunnel_server_relays_reaped_total", {"reason": "half_closed"}
            ),
            1,
        )
        world.lose()


def loopbackPair(test: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1 (client, accepted), closed at cleanup."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    test.addCleanup(listener.close)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    test.addCleanup(client.close)
    accepted, _ = listener.accept()
    test.addCleanup(accepted.close)
    return client, accepted


def waitForPeer(sock: socket.socket, seconds: float = 5.0) -> None:
    """Wait (bounded) until C{sock} has something to read: the peer's FIN or RST."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], deadline - time.monotonic())
        if readable:
            return
    raise AssertionError("the peer's FIN or RST never arrived")


class PausedRelayPeerGoneTests(SynchronousTestCase):
    """
    Finding 14: a relay paused by back-pressure never saw its client close
    or reset (a transport that does not read sees nothing), so streams
    abandoned while pushing into a non-reading target stayed open.
    """

    def test_streamClosedWhilePaused(self) -> None:
        """
        The target does not read; the caller fills the window and closes.
        The paused stream end never delivers the CLOSE, but the relay is
        closed at the half-close deadline and the slot is freed.
        """
        world = StreamRelayWorld()
        caller, streamEnd, target, targetTransport = world.open()
        assert targetTransport.producer is not None
        targetTransport.producer.pauseProducing()  # the target's socket is full
        streamOf(caller).write(b"x" * SMALL_WINDOW)
        world.pair.pump()
        streamOf(caller).loseConnection()
        world.pair.pump()
        self.assertTrue(streamEnd.readingPaused)
        self.assertTrue(streamOf(streamEnd).peerFinished)
        self.assertEqual(world.pair.client.streamCount, 1)
        tick(world.clock, IDLE / 2, world.pair.pump)
        world.pair.pump()
        self.assertTrue(targetTransport.disconnected)
        self.assertEqual(world.reaper.reaped, {"half_closed": 1})
        self.assertEqual(world.pair.client.streamCount, 0)
        self.assertTrue(world.pair.client.established)
        targetTransport.lose(target, Failure(ConnectionLost()))
        world.pair.lose(Failure(ConnectionDone()))

    def test_tcpResetWhilePaused(self) -> None:
        """
        A client's TCP connection is reset while the relay does not read
        it: the kernel's C{TCP_INFO} says so, and the relay is aborted at
        the next sweep, without waiting for any deadline.
        """
        if not hasattr(socket, "TCP_INFO"):
            raise SkipTest("TCP_INFO is Linux's")
        client, accepted = loopbackPair(self)
        clock = Clock()
        reaper = RelayReaper(clock, TIMEOUTS)
        ea, ta, eb, tb = relayedPair(reaper, SocketTransport(accepted))
        assert tb.producer is not None
        tb.producer.pauseProducing()  # the other side pushes back: ea stops reading
        self.assertTrue(ea.readingPaused)
        self.assertIsNone(peerGone(ta))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        waitForPeer(accepted)
        self.assertEqual(peerGone(ta), "reset")
        tick(clock, TIMEOUTS.period)
        self.assertEqual(reaper.reaped, {"peer_reset": 1})
        self.assertTrue(ta.disconnected and tb.disconnected)

    def test_tcpCloseWhilePaused(self) -> None:
        """
        A client that closed (FIN, the socket in CLOSE-WAIT) while the
        relay does not read it gets the half-close deadline, not the idle one.
        """
        if not hasattr(socket, "TCP_INFO"):
            raise SkipTest("TCP_INFO is Linux's")
        client, accepted = loopbackPair(self)
        clock = Clock()
        reaper = RelayReaper(clock, TIMEOUTS)
        ea, ta, eb, tb = relayedPair(reaper, SocketTransport(accepted))
        assert tb.producer is not None
        tb.producer.pauseProducing()
        client.close()
        waitForPeer(accepted)
        self.assertEqual(peerGone(ta), "finished")
        tick(clock, TIMEOUTS.period)
        self.assertFalse(gone(ta))
        tick(clock, HALF_CLOSED + TIMEOUTS.period)
        self.assertEqual(reaper.reaped, {"half_closed": 1})
        self.assertTrue(ta.disconnected and tb.disconnected)


def replicaTunnel(
    agent: TunnelAgent, clock: Clock, serverId: str, window: int = SMALL_WINDOW
) -> TunnelPair:
    """One of the agent's tunnels, to the replica C{serverId}, in memory."""
    pair = TunnelPair(
        serverHandler=RecordingHandler({"server_id": serverId}),
        clock=clock,
        connect=False,
        serverSettings=Settings(window=window),
    )
    client = _AgentTunnelFactory(agent).buildProtocol(None)
    pair.client = client
    pair.connect()
    pair.establish()
    return pair


class AgentStreamBudgetTests(SynchronousTestCase):
    """
    Finding 14: the agent's only cap on streams was per tunnel, so every
    server replica could open --max-streams on its own (300 streams x 6 MiB
    took an agent from 77 to 357 MiB and 1,038 file descriptors).
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.opened: list[Deferred[IProtocol]] = []
        # opens still pending when a tunnel is lost fail; nobody waits for them
        self.addCleanup(lambda: [d.addErrback(lambda _: None) for d in self.opened])

    def agent(self, budget: StreamBudget) -> TunnelAgent:
        return TunnelAgent(
            self.reactor,
            None,
            ("127.0.0.1", 10262),
            NODE,
            ["192.0.2.10"],
            endpoint=FakeEndpoint(self.reactor),
            settings=Settings(window=SMALL_WINDOW),
            budget=budget,
        )

    def open(self, pair: TunnelPair) -> Deferred[IProtocol]:
        opened = pair.server.openStream("192.0.2.10", 10250, ProtocolFactory())
        self.opened.append(opened)
        pair.pump()
        return opened

    def assertRefused(self, opened: Deferred[IProtocol], text: str) -> None:
        error = self.failureResultOf(opened, StreamOpenFailed).value
        assert isinstance(error, StreamOpenFailed)
        self.assertEqual(error.reason, OpenFailReason.TOO_MANY_STREAMS)
        self.assertIn(text, error.text)

    def test_streamsAcrossReplicas(self) -> None:
        """
        A cap of 3 streams holds across the tunnels to two replicas: the
        fourth open, on either, is refused (TOO_MANY_STREAMS, and not
        dialed); a stream that ends frees its place.
        """
        budget = StreamBudget(self.reactor, maxStreams=3, maxBufferBytes=2**40)
        agent = self.agent(budget)
        a, b = (
            replicaTunnel(agent, self.reactor, "srv-a"),
            replicaTunnel(agent, self.reactor, "srv-b"),
        )
        for pair in (a, a, b):
            self.assertNoResult(self.open(pair))
        self.assertEqual(len(self.reactor.tcpClients), 3)
        with capturedLogs() as events:
            self.assertRefused(self.open(b), "across this agent's tunnels")
            self.assertRefused(self.open(a), "across this agent's tunnels")
        self.assertEqual(len(self.reactor.tcpClients), 3)  # never dialed
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.warn]), 1)
        self.assertEqual(budget.refusals, {"streams": 2})
        self.assertEqual(
            agent.metrics.registry.get_sample_value(
                "edge_tunnel_agent_stream_refusals_total", {"limit": "streams"}
            ),
            2,
        )
        # one dial fails: its stream is gone, and the next open is taken
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        a.pump()
        b.pump()
        self.assertEqual(budget.streams, 2)
        self.assertNoResult(self.open(b))
        self.assertEqual(budget.streams, 3)
        # a lost tunnel gives back every place it held
        a.lose(Failure(ConnectionDone()))
        self.assertEqual(budget.streams, 2)
        b.lose(Failure(ConnectionDone()))
        self.assertEqual((budget.streams, budget.reserved), (0, 0))

    def test_bytesAcrossReplicas(self) -> None:
        """
        Each stream reserves its receive window: a buffer cap of two
        windows admits two streams across the replicas, whatever the
        stream count allows.
        """
        budget = StreamBudget(self.reactor, maxStreams=1000, maxBufferBytes=2 * SMALL_WINDOW)
        agent = self.agent(budget)
        a, b = (
            replicaTunnel(agent, self.reactor, "srv-a"),
            replicaTunnel(agent, self.reactor, "srv-b"),
        )
        self.assertNoResult(self.open(a))
        self.assertNoResult(self.open(b))
        self.assertEqual(budget.reserved, 2 * SMALL_WINDOW)
        self.assertRefused(self.open(a), "buffer limit")
        self.assertEqual(budget.refusals, {"buffer": 1})
        self.assertEqual(budget.streamLimit(SMALL_WINDOW), 2)
        a.lose(Failure(ConnectionDone()))
        b.lose(Failure(ConnectionDone()))
        self.assertEqual(budget.reserved, 0)

    def test_oneBudgetForEveryTunnel(self) -> None:
        """The tunnels an agent builds all carry its one budget, by default too."""
        agent = TunnelAgent(self.reactor, None, ("127.0.0.1", 10262), NODE, [])
        factory = _AgentTunnelFactory(agent)
        self.assertIs(factory.buildProtocol(None).budget, agent.budget)
        self.assertIs(factory.buildProtocol(None).budget, agent.budget)
        self.assertEqual(agent.budget.maxStreams, DEFAULT_MAX_STREAMS_TOTAL)
        self.assertEqual(agent.budget.maxBufferBytes, DEFAULT_MAX_BUFFER)


class FileLimitTests(SynchronousTestCase):
    """
    Finding 14: the agent took streams past its open-file limit (one
    descriptor per target), so a flood of streams failed everything else
    it does: accepting, dialing, logging.
    """

    def test_fileLimitBoundsStreams(self) -> None:
        """The open-file limit less L{FD_MARGIN} is a cap of its own."""
        clock = Clock()
        budget = StreamBudget(
            clock, maxStreams=1000, maxBufferBytes=2**40, fileLimit=FD_MARGIN + 2
        )
        self.assertEqual(budget.streamLimit(SMALL_WINDOW), 2)
        self.assertIsNone(budget.admit(SMALL_WINDOW))
        self.assertIsNone(budget.admit(SMALL_WINDOW))
        refusal = budget.admit(SMALL_WINDOW)
        assert refusal is not None
        self.assertIn(f"open-file limit ({FD_MARGIN + 2})", refusal)
        self.assertEqual(budget.refusals, {"fds": 1})
        budget.release(SMALL_WINDOW)
        self.assertIsNone(budget.admit(SMALL_WINDOW))

    def test_readFromTheProcess(self) -> None:
        """
        L{StreamBudget.forProcess} reads the soft C{RLIMIT_NOFILE}, and says
        at start when it, not the stream cap, is the bound.
        """
        limits = {resource.RLIMIT_NOFILE: (FD_MARGIN + 10, 4096)}
        self.patch(resource, "getrlimit", lambda which: limits[which])
        with capturedLogs() as events:
            budget = StreamBudget.forProcess(Clock(), maxStreams=1024, maxBufferBytes=2**40)
        self.assertEqual((budget.fileLimit, budget.fileStreams), (FD_MARGIN + 10, 10))
        self.assertEqual(budget.streamLimit(SMALL_WINDOW), 10)
        (warning,) = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(warning["fileStreams"], 10)

    def test_agentDefault(self) -> None:
        """An agent's default budget is within this process's real limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        agent = TunnelAgent(MemoryReactorClock(), None, ("127.0.0.1", 10262), NODE, [])
        expected = None if soft == resource.RLIM_INFINITY else soft
        self.assertEqual(agent.budget.fileLimit, expected)


class StreamOptionsTests(SynchronousTestCase):
    """
    Finding 14: neither daemon could be given stream deadlines, nor the
    agent its caps across replicas.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)

    def test_agent(self) -> None:
        paths = pki.paths(pki.agent(NODE, ["192.0.2.10"]), self.directory)
        options = tapagent.Options()
        options.parseOptions(
            [
                *paths.options(),
                "--server",
                "127.0.0.1:10262",
                "--relay-idle-timeout",
                "900",
                "--relay-half-close-timeout",
                "30",
                "--max-streams-total",
                "300",
                "--max-buffered-mib",
                "64",
            ]
        )
        top = tapagent.makeService(options)
        assert isinstance(top, MultiService)
        agent = top.getServiceNamed("agent")
        assert isinstance(agent, TunnelAgent)
        self.assertEqual(agent.relayReaper.timeouts, RelayTimeouts(idle=900, halfClosed=30))
        self.assertEqual(
            (agent.budget.maxStreams, agent.budget.maxBufferBytes), (300, 64 * 1024 * 1024)
        )
        self.assertEqual(agent.budget.fileLimit, openFileLimit())

    def test_agentDefaults(self) -> None:
        options = tapagent.Options()
        paths = pki.paths(pki.agent(NODE, ["192.0.2.10"]), self.directory)
        options.parseOptions([*paths.options(), "--server", "127.0.0.1:10262"])
        self.assertEqual(options["relay-idle-timeout"], DEFAULT_IDLE_TIMEOUT)
        self.assertEqual(options["relay-half-close-timeout"], DEFAULT_HALF_CLOSED_TIMEOUT)
        self.assertEqual(options["max-streams-total"], DEFAULT_MAX_STREAMS_TOTAL)
        self.assertEqual(options["max-buffered-mib"] * 1024 * 1024, DEFAULT_MAX_BUFFER)

    def test_agentBufferBelowAWindow(self) -> None:
        """A buffer cap that cannot hold one stream's window is refused at start."""
        paths = pki.paths(pki.agent(NODE, ["192.0.2.10"]), self.directory)
        args = [*paths.options(), "--server", "127.0.0.1:10262"]
        args += ["--stream-window", str(4 * 1024 * 1024)]
        tapagent.Options().parseOptions([*args, "--max-buffered-mib", "4"])
        error = self.assertRaises(
            UsageError, tapagent.Options().parseOptions, [*args, "--max-buffered-mib", "3"]
        )
        self.assertIn("--max-buffered-mib must hold at least one --stream-window", str(error))

    def test_server(self) -> None:
        paths = pki.paths(pki.server, self.directory)
        options = tapserver.Options()
        options.parseOptions(
            [*paths.options(), "--relay-idle-timeout", "0", "--relay-half-close-timeout", "15"]
        )
        top = tapserver.makeService(options)
        server = top.tunnelServer  # type: ignore[attr-defined]
        self.assertIsInstance(server, TunnelServer)
        self.assertEqual(server.relayReaper.timeouts, RelayTimeouts(idle=0, halfClosed=15))


class UpgradedHTTPRelayTests(SynchronousTestCase):
    """
    Finding 14, through the proxy listeners: an upgraded connection (exec,
    attach, port-forward: C{101 Switching Protocols}) relays raw bytes with
    no HTTP timer left, so one abandoned was never closed on the server.
    """

    def upgraded(self) -> tuple[Clock, RelayReaper, StringTransport, StringTransport]:
        """A client whose request was upgraded by the upstream: both transports."""
        clock = Clock()
        reaper = RelayReaper(clock, TIMEOUTS)
        upstreams = Upstreams()
        factory = HTTPProxyFactory(
            lambda head, peer: Route(key="edge-1", endpoint=upstreams),  # type: ignore[arg-type]
            clock,
            reaper=reaper,
        )
        client = factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
        clientTransport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        client.makeConnection(clientTransport)
        client.dataReceived(
            b"POST /exec/ns/pod/c?command=sh HTTP/1.1\r\nHost: edge-1:10250\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n"
        )
        [(upstream, upstreamTransport)] = upstreams.connections
        upstream.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        )
        self.assertIn(b"101 Switching Protocols", clientTransport.value())
        self.assertEqual(len(reaper), 1)
        self.upstream, self.client = upstream, client
        return clock, reaper, clientTransport, upstreamTransport

    def test_idleSessionIsClosed(self) -> None:
        """No byte either way for the idle deadline: both sides aborted."""
        clock, reaper, client, upstream = self.upgraded()
        tick(clock, IDLE - 1)
        self.assertFalse(gone(client) or gone(upstream))
        tick(clock, 2 * TIMEOUTS.period + 1)
        self.assertTrue(gone(client) and gone(upstream))
        self.assertEqual(reaper.reaped, {"idle": 1})

    def test_activeSessionLives(self) -> None:
        """A session that moves a byte now and then, either way, is never cut."""
        clock, reaper, client, upstream = self.upgraded()
        for i in range(20):
            tick(clock, IDLE / 2)
            if i % 2:
                self.client.dataReceived(b"ls\n")
            else:
                self.upstream.dataReceived(b"file\n")
        self.assertFalse(gone(client) or gone(upstream))
        self.assertEqual(reaper.reaped, {})

    def test_halfClosedSession(self) -> None:
        """The client sent its EOF and nothing moves: closed after the half-close deadline."""
        clock, reaper, client, upstream = self.upgraded()
        self.client.readConnectionLost()  # type: ignore[attr-defined]
        tick(clock, HALF_CLOSED + 2 * TIMEOUTS.period + 1)
        self.assertTrue(gone(client) and gone(upstream))
        self.assertEqual(reaper.reaped, {"half_closed": 1})

    def test_closedSessionLeavesTheReaper(self) -> None:
        """A session that ends by itself is forgotten at once: its timer stops."""
        clock, reaper, client, upstream = self.upgraded()
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(reaper), 0)
        tick(clock, IDLE + 2 * TIMEOUTS.period)
        self.assertEqual(reaper.reaped, {})
