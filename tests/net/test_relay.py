# -*- test-case-name: tests.net.test_relay -*-
"""
Tests for L{twisted_tunnel.net.relay}: two connections joined with
back-pressure both ways, half-closes passed on, aborts passed on.

The ends run on C{StringTransport}s made to behave like TCP where it
matters (half-close; C{stopProducing} closes; a lost connection stops its
producer before its protocol hears of it), and on tunnel streams.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.memory import SMALL_WINDOW, HalfCloser, Recorder, TunnelPair, streamOf
from twisted_tunnel.mux import Sending, Settings
from twisted_tunnel.net import relay
from twisted_tunnel.net.relay import RelayProtocol, halfClose, splice


class TCPLikeTransport(StringTransport):
    """
    A C{StringTransport} with what TCP has and it lacks: half-close,
    C{stopProducing} that closes the connection, and a connection loss that
    stops the registered producer before the protocol is told.
    """

    def __init__(self) -> None:
        super().__init__(lenient=True)
        self.writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def stopProducing(self) -> None:
        super().stopProducing()
        self.loseConnection()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    def lose(self, protocol: RelayProtocol, reason: Failure) -> None:
        """What C{FileDescriptor.connectionLost} does, in its order."""
        self.connected = False
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        protocol.connectionLost(reason)


class TLSLikeTransport(StringTransport):
    """No half-close, like TLS."""

    def __init__(self) -> None:
        super().__init__(lenient=True)


def connected(peer: RelayProtocol | None = None) -> tuple[RelayProtocol, TCPLikeTransport]:
    protocol = RelayProtocol(peer)
    transport = TCPLikeTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class SpliceTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        verifyObject(IHalfCloseableProtocol, RelayProtocol())

    def test_pausedUntilSpliced(self) -> None:
        """
        An end with no connected peer pauses its transport; what the
        transport delivered anyway is kept and passed on at the splice.
        """
        a, ta = connected()
        self.assertEqual(ta.producerState, "paused")
        self.assertFalse(a.spliced)
        a.dataReceived(b"early ")
        b, tb = connected(peer=a)
        self.assertTrue(a.spliced and b.spliced)
        self.assertEqual(tb.value(), b"early ")
        self.assertEqual((ta.producerState, tb.producerState), ("producing", "producing"))
        a.dataReceived(b"more")
        b.dataReceived(b"back")
        self.assertEqual((tb.value(), ta.value()), (b"early more", b"back"))

    def test_spliceLater(self) -> None:
        a, ta = connected()
        b, tb = connected()
        b.dataReceived(b"from b")
        self.assertEqual((ta.producerState, tb.producerState), ("paused", "paused"))
        splice(a, b)
        self.assertIs(a.peer, b)
        self.assertIs(b.peer, a)
        self.assertEqual(ta.value(), b"from b")
        self.assertEqual((ta.producerState, tb.producerState), ("producing", "producing"))

    def test_crossRegisteredProducers(self) -> None:
        """
        Each transport's producer is the other end's reading: when one
        transport pushes back, the other stops reading, and vice versa.
        """
        a, ta = connected()
        b, tb = connected(peer=a)
        assert ta.producer is not None and tb.producer is not None
        self.assertTrue(ta.streaming and tb.streaming)
        verifyObject(IPushProducer, ta.producer)
        ta.producer.pauseProducing()
        self.assertEqual((ta.producerState, tb.producerState), ("producing", "paused"))
        ta.producer.resumeProducing()
        tb.producer.pauseProducing()
        self.assertEqual((ta.producerState, tb.producerState), ("paused", "producing"))
        tb.producer.resumeProducing()
        self.assertEqual(ta.producerState, "producing")


class PeerLostTests(SynchronousTestCase):
    def test_default(self) -> None:
        """By default an end is ended the way its peer ended (here: aborted)."""
        a, ta = connected()
        b, tb = connected(peer=a)
        tb.lose(b, Failure(ConnectionLost()))
        self.assertIsNone(ta.producer)
        self.assertTrue(ta.disconnecting)

    def test_override(self) -> None:
        """
        An end may answer its peer's loss its own way (a front door whose
        early stream failed to open): the relay unregisters the producer and
        hands it the reason, and leaves the connection to it.
        """
        told: list[Failure] = []

        class Near(RelayProtocol):
            def peerLost(self, reason: Failure) -> None:
                told.append(reason)

        a = Near()
        ta = TCPLikeTransport()
        a.makeConnection(ta)
        b, tb = connected(peer=a)
        reason = Failure(ConnectionLost("open refused"))
        tb.lose(b, reason)
        self.assertEqual(told, [reason])
        self.assertIsNone(ta.producer)
        self.assertFalse(ta.disconnecting)
        self.assertIsNone(a.peer)


class EndingTests(SynchronousTestCase):
    def test_halfClose(self) -> None:
        """
        EOF on one side half-closes the other; the other direction still
        flows; once both directions are shut, the connections are closed.
        """
        a, ta = connected()
        b, tb = connected(peer=a)
        a.readConnectionLost()
        self.assertTrue(tb.writeClosed)
        self.assertFalse(ta.writeClosed)
        b.dataReceived(b"reply")
        self.assertEqual(ta.value(), b"reply")
        b.readConnectionLost()
        self.assertTrue(ta.writeClosed)
        a.writeConnectionLost()
        b.writeConnectionLost()
        self.assertTrue(ta.disconnecting and tb.disconnecting)

    def test_halfCloseBeforeSplice(self) -> None:
        a, ta = connected()
        a.dataReceived(b"all")
        a.readConnectionLost()
        b, tb = connected(peer=a)
        self.assertEqual(tb.value(), b"all")
        self.assertTrue(tb.writeClosed)

    def test_halfCloseWithoutHalfClose(self) -> None:
        """A transport that cannot half-close (TLS) is closed instead."""
        transport = TLSLikeTransport()
        halfClose(transport)
        self.assertTrue(transport.disconnecting)
        halfClose(None)

    def test_orderlyClose(self) -> None:
        a, ta = connected()
        b, tb = connected(peer=a)
        ta.lose(a, Failure(ConnectionDone()))
        self.assertTrue(tb.disconnecting)
        self.assertFalse(tb.disconnected)
        self.assertIsNone(tb.producer)
        self.assertIsNone(a.peer)
        self.assertIsNone(b.peer)
        tb.lose(b, Failure(ConnectionDone()))  # nothing more to do

    def test_abort(self) -> None:
        """
        An abortive end aborts the other, even though the lost transport
        stops its producer (the other side's reading) first.
        """
        a, ta = connected()
        b, tb = connected(peer=a)
        ta.lose(a, Failure(ConnectionLost()))
        self.assertTrue(tb.disconnected)

    def test_peerGoneBeforeSplice(self) -> None:
        """
        The first end came and went before the second connected: the second
        gets what the first said, and is closed, not left paused.
        """
        a, ta = connected()
        a.dataReceived(b"banner")
        ta.lose(a, Failure(ConnectionDone()))
        b, tb = connected(peer=a)
        self.assertEqual(tb.value(), b"banner")
        self.assertTrue(tb.disconnecting)
        self.assertFalse(tb.disconnected)
        self.assertFalse(b.spliced)

    def test_peerAbortedBeforeSplice(self) -> None:
        a, ta = connected()
        ta.lose(a, Failure(ConnectionLost()))
        b, tb = connected(peer=a)
        self.assertTrue(tb.disconnected)


class StreamRelayTests(SynchronousTestCase):
    """
    A relay between a tunnel stream and a TCP-like connection, the way the
    agent joins a stream to the target it dialled.
    """

    def setUp(self) -> None:
        self.pair = TunnelPair(
            clientSettings=Settings(window=SMALL_WINDOW),
            serverSettings=Settings(window=SMALL_WINDOW),
        )
        self.pair.establish()
        self.target, self.targetTransport = connected()

    def tearDown(self) -> None:
        self.pair.lose(Failure(ConnectionDone()))
        self.assertEqual(self.pair.clock.getDelayedCalls(), [])

    def open(self, caller: Recorder) -> RelayProtocol:
        relay = RelayProtocol(peer=self.target)
        self.pair.open(self.pair.server, relay, caller)
        return relay

    def test_bytesBothWays(self) -> None:
        caller = Recorder()
        self.open(caller)
        streamOf(caller).write(b"GET /healthz")
        self.pair.pump()
        self.assertEqual(self.targetTransport.value(), b"GET /healthz")
        self.target.dataReceived(b"ok")
        self.pair.pump()
        self.assertEqual(caller.received, b"ok")

    def test_backPressure(self) -> None:
        """
        A target that does not keep up stops the stream, which holds one
        window; the caller's side keeps the rest.
        """
        caller = Recorder()
        relay = self.open(caller)
        assert self.targetTransport.producer is not None
        self.targetTransport.producer.pauseProducing()  # the target's socket is full
        streamOf(caller).write(b"x" * (3 * SMALL_WINDOW))
        self.pair.pump()
        self.assertEqual(len(self.targetTransport.value()), 0)
        self.assertEqual(streamOf(relay).bufferedBytes, SMALL_WINDOW)
        self.assertEqual(streamOf(caller).bufferedBytes, 2 * SMALL_WINDOW)
        self.targetTransport.producer.resumeProducing()
        self.pair.pump()
        self.assertEqual(len(self.targetTransport.value()), 3 * SMALL_WINDOW)

    def test_halfCloseAcross(self) -> None:
        caller = HalfCloser()
        relay = self.open(caller)
        streamOf(caller).loseWriteConnection()
        self.pair.pump()
        self.assertTrue(self.targetTransport.writeClosed)
        self.target.dataReceived(b"still talking")
        self.target.readConnectionLost()
        self.pair.pump()
        self.assertEqual(caller.received, b"still talking")
        self.assertIn("readConnectionLost", caller.events)
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionDone)
        self.target.writeConnectionLost()
        self.assertTrue(self.targetTransport.disconnecting)
        self.assertEqual(self.pair.server.streamCount, 0)
        self.assertIsNone(relay.peer)

    def test_targetAborts(self) -> None:
        """The target's connection reset resets the stream."""
        caller = Recorder()
        self.open(caller)
        self.targetTransport.lose(self.target, Failure(ConnectionLost()))
        self.pair.pump()
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionLost)

    def test_targetAbortsAfterSpeaking(self) -> None:
        """
        A target that resets its connection right after speaking (a kubelet
        closing an exec connection with input unread) has all it said
        delivered, then the reset: its words still in the stream's backlog
        (waiting for credit) go out first, RESET after them.
        """
        caller = Recorder()
        relay = self.open(caller)
        self.target.dataReceived(b"x" * (2 * SMALL_WINDOW))
        self.assertEqual(streamOf(relay).bufferedBytes, SMALL_WINDOW)
        self.targetTransport.lose(self.target, Failure(ConnectionLost()))
        self.assertIs(streamOf(relay).sending, Sending.RESET_QUEUED)
        self.pair.pump()
        self.assertEqual(caller.received, b"x" * (2 * SMALL_WINDOW))
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionLost)
        self.assertEqual(self.pair.server.streamCount, 0)

    def test_targetCloses(self) -> None:
        caller = Recorder()
        self.open(caller)
        self.target.dataReceived(b"last words")
        self.targetTransport.lose(self.target, Failure(ConnectionDone()))
        self.pair.pump()
        self.assertEqual(caller.received, b"last words")
        assert caller.lostReason is not None
        caller.lostReason.trap(ConnectionDone)

    def test_streamReset(self) -> None:
        """The caller aborting its stream aborts the target's connection."""
        caller = Recorder()
        self.open(caller)
        streamOf(caller).abortConnection()
        self.pair.pump()
        self.assertTrue(self.targetTransport.disconnected)

    def test_twoStreams(self) -> None:
        """
        A relay between two streams passes an abort on as an abort.
        """
        pair = self.pair
        left, right = Recorder(), Recorder()
        leftRelay = RelayProtocol()
        pair.open(pair.server, leftRelay, left)
        pair.open(pair.server, RelayProtocol(peer=leftRelay), right)
        streamOf(left).write(b"hello")
        pair.pump()
        self.assertEqual(right.received, b"hello")
        streamOf(left).abortConnection()
        pair.pump()
        assert right.lostReason is not None
        right.lostReason.trap(ConnectionLost)


class Sink(Protocol):
    """Keeps what it reads, and says how its connection ended."""

    def __init__(self) -> None:
        self.received = 0
        self.reason: Failure | None = None
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason
        self.ended.callback(None)


class AbortAfterDataTests(TestCase):
    """
    Over real loopback TCP: an end lost abortively after it spoke has its
    words delivered by the other end's socket, then the reset.  Twisted's
    C{abortConnection} alone would drop what its send buffer still holds.
    """

    async def relayToSink(self) -> tuple[Sink, RelayProtocol, TCPLikeTransport]:
        """
        A relay between an in-memory end (returned with its transport) and
        a real TCP connection to a L{Sink}.
        """
        sink = Sink()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        far = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), RelayProtocol()
        )
        near, nearTransport = connected(peer=far)
        self.assertTrue(near.spliced)
        return sink, near, nearTransport

    async def test_resetFollowsTheData(self) -> None:
        sink, near, nearTransport = await self.relayToSink()
        payload = 8 * 1024 * 1024  # more than one write of the socket takes
        near.dataReceived(b"y" * payload)
        nearTransport.lose(near, Failure(ConnectionLost()))
        await sink.ended
        self.assertEqual(sink.received, payload)
        assert sink.reason is not None
        sink.reason.trap(ConnectionLost)
        self.assertFalse(sink.reason.check(ConnectionDone))

    async def test_nothingQueuedAbortsAtOnce(self) -> None:
        sink, near, nearTransport = await self.relayToSink()
        nearTransport.lose(near, Failure(ConnectionLost()))
        await sink.ended
        assert sink.reason is not None
        sink.reason.trap(ConnectionLost)
        self.assertEqual(sink.received, 0)


class AbortWhenDrainedTests(SynchronousTestCase):
    """
    The wait of a connection to be reset for its kernel send queue:
    it looks again after DRAIN_POLL, then twice as long each time up to
    DRAIN_POLL_MAX, and aborts once nothing is left unsent.
    """

    def test_backsOff(self) -> None:
        clock = Clock()
        connection = FileDescriptor(clock)  # type: ignore[arg-type]
        connection.connected = True
        aborted: list[bool] = []
        connection.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        unsent = [1]
        self.patch(relay, "unsentBytes", lambda c: unsent[0])
        relay.abortWhenSent(connection)
        self.assertIsInstance(connection.producer, relay._AbortWhenDrained)
        looks = []
        for _ in range(12):
            (call,) = clock.getDelayedCalls()
            looks.append(round(call.getTime() - clock.seconds(), 3))
            clock.advance(call.getTime() - clock.seconds())
        self.assertEqual(
            looks, [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.0, 1.0, 1.0, 1.0, 1.0]
        )
        self.assertEqual(aborted, [])
        connection.producer.resumeProducing()  # asked again while a look is due: no second look
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        unsent[0] = 0
        clock.advance(1.0)
        self.assertEqual(aborted, [True])
        self.assertIsNone(connection.producer)
        self.assertEqual(clock.getDelayedCalls(), [])
