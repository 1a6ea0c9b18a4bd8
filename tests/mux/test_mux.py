# -*- test-case-name: tests.mux.test_mux -*-
"""
Tests for L{twisted_tunnel.mux}: the HELLO exchange, streams as transports,
per-stream flow control, half-close, keepalive, drain and protocol errors.

Two tunnels talk through C{StringTransport}s moved by the pump in
L{tests.memory}; a few tests drive one tunnel with hand-made frames instead,
to play a peer that breaks the rules.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPullProducer,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.memory import (
    SMALL_WINDOW,
    HalfCloser,
    ProtocolFactory,
    PushProducer,
    Recorder,
    RecordingHandler,
    TunnelPair,
    frames,
    framesOfType,
    streamOf,
)
from twisted_tunnel import mux, wire
from twisted_tunnel.errors import StreamOpenFailed, StreamOpenTimeout, TunnelClosed
from twisted_tunnel.mux import ITunnelHandler, Keepalive, Refused, Settings, Tunnel
from twisted_tunnel.wire import (
    Close,
    Data,
    Eof,
    ErrorCode,
    GoAway,
    Hello,
    Open,
    OpenFail,
    OpenFailReason,
    OpenOk,
    Ping,
    Pong,
    Reset,
    Window,
)

SMALL = Settings(window=SMALL_WINDOW)


class Raw:
    """
    One tunnel on a C{StringTransport}, fed hand-made frames by the test
    (which plays the peer).
    """

    def __init__(
        self, *, isClient: bool, settings: Settings = SMALL, hello: bool = True, version: int = 1
    ) -> None:
        """
        @param version: the protocol version the peer's HELLO offers (and
            so the connection's).
        """
        self.clock = Clock()
        self.handler = RecordingHandler({"node": "edge-1"})
        self.tunnel = Tunnel(self.handler, self.clock, isClient=isClient, settings=settings)
        self.transport = StringTransport()
        self.tunnel.makeConnection(self.transport)
        if hello:
            if isClient:
                self.feed(Hello(version, version, {"server_id": "srv-a", **SMALL.toInfo()}))
            else:
                self.feed(Hello(version, version, {"node": "edge-1", **SMALL.toInfo()}))
            assert self.tunnel.established
            self.sent()

    def feed(self, *items: wire.Frame | bytes, byteAtATime: bool = False) -> None:
        data = b"".join(i if isinstance(i, bytes) else i.encode() for i in items)
        if byteAtATime:
            for i in range(len(data)):
                self.tunnel.dataReceived(data[i : i + 1])
        else:
            self.tunnel.dataReceived(data)

    def sent(self) -> list[wire.Frame]:
        return frames(self.transport)

    def end(self) -> None:
        self.tunnel.connectionLost(Failure(ConnectionDone()))


def raw(kind: int, streamId: int, payload: bytes = b"") -> bytes:
    return wire.HEADER.pack(len(payload), kind, 0, streamId) + payload


class TunnelTestCase(SynchronousTestCase):
    def assertGoAway(self, sent: list[wire.Frame], code: ErrorCode) -> GoAway:
        goaways: list[GoAway] = framesOfType(sent, GoAway)
        self.assertEqual([g.code for g in goaways], [code], sent)
        return goaways[0]

    def assertNoDelayedCalls(self, clock: Clock) -> None:
        self.assertEqual(clock.getDelayedCalls(), [])

    def endPair(self, pair: TunnelPair) -> None:
        """End both tunnels and check that no timer is left behind."""
        if not pair.lost:
            pair.lose(Failure(ConnectionDone()))
        self.assertNoDelayedCalls(pair.clock)


class InterfaceTests(TunnelTestCase):
    def test_interfaces(self) -> None:
        """
        The handlers, the tunnel and its streams provide what they declare.
        """
        pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        pair.establish()
        verifyObject(ITunnelHandler, pair.clientHandler)
        verifyObject(IPushProducer, pair.client)
        opener, acceptor = pair.open(pair.client, Recorder())
        for stream in (streamOf(opener), streamOf(acceptor)):
            verifyObject(ITransport, stream)
            verifyObject(IConsumer, stream)
            verifyObject(IPushProducer, stream)
        verifyObject(IHalfCloseableProtocol, HalfCloser())
        self.endPair(pair)


class HelloTests(TunnelTestCase):
    def test_exchange(self) -> None:
        """
        The agent's HELLO offers its versions; the server answers with the
        version it chose; each learns the other's info and settings.
        """
        pair = TunnelPair(clientSettings=SMALL, serverSettings=Settings(maxStreams=7))
        established = pair.client.whenEstablished()
        pair.establish()
        self.assertIs(self.successResultOf(established), pair.client)
        self.assertEqual((pair.client.version, pair.server.version), (2, 2))
        self.assertEqual(pair.serverHandler.hellos[0]["node"], "edge-1")
        self.assertEqual(pair.clientHandler.hellos[0]["server_id"], "srv-a")
        assert pair.server.peerSettings is not None and pair.client.peerSettings is not None
        self.assertEqual(pair.server.peerSettings.window, SMALL_WINDOW)
        self.assertEqual(pair.client.peerSettings.maxStreams, 7)
        self.endPair(pair)

    def test_highestCommonVersion(self) -> None:
        """
        The server chooses the highest version in both ranges.
        """
        self.patch(wire, "SUPPORTED_VERSIONS", (1, 2, 3))
        peer = Raw(isClient=False, hello=False)
        peer.feed(Hello(2, 5, {}))
        hellos = framesOfType(peer.sent(), Hello)
        self.assertEqual([(h.minVersion, h.maxVersion) for h in hellos], [(3, 3)])
        self.assertEqual(peer.tunnel.version, 3)
        peer.end()

    def test_clientOffersItsRange(self) -> None:
        self.patch(wire, "SUPPORTED_VERSIONS", (1, 2))
        peer = Raw(isClient=True, hello=False)
        [hello] = peer.sent()
        assert isinstance(hello, Hello)
        self.assertEqual((hello.minVersion, hello.maxVersion), (1, 2))
        self.assertEqual(hello.info["window"], SMALL_WINDOW)
        peer.feed(Hello(2, 2, {}))
        self.assertEqual(peer.tunnel.version, 2)
        peer.end()

    def test_noCommonVersion(self) -> None:
        """
        No common version: GOAWAY UNSUPPORTED_VERSION naming both ranges,
        no HELLO, the connection closed, and whoever waits is told.
        """
        peer = Raw(isClient=False, hello=False)
        established = peer.tunnel.whenEstablished()
        with capturedLogs() as events:
            peer.feed(Hello(3, 4, {}))
        sent = peer.sent()
        goaway = self.assertGoAway(sent, ErrorCode.UNSUPPORTED_VERSION)
        self.assertIn("3..4", goaway.text)
        self.assertIn("1..2", goaway.text)
        self.assertEqual(framesOfType(sent, Hello), [])
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(len(events), 1)
        peer.end()
        self.failureResultOf(established, TunnelClosed)
        self.assertNoDelayedCalls(peer.clock)

    def test_serverChoosesVersionNotOffered(self) -> None:
        peer = Raw(isClient=True, hello=False)
        peer.sent()
        peer.feed(Hello(3, 3, {}))
        self.assertGoAway(peer.sent(), ErrorCode.UNSUPPORTED_VERSION)
        self.assertTrue(peer.transport.disconnecting)
        peer.end()

    def test_frameBeforeHello(self) -> None:
        peer = Raw(isClient=False, hello=False)
        peer.feed(Ping(b"12345678"))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        self.assertTrue(peer.transport.disconnecting)
        self.assertIsNone(peer.tunnel.version)
        peer.end()

    def test_badSetting(self) -> None:
        peer = Raw(isClient=False, hello=False)
        peer.feed(Hello(1, 1, {"window": 1024}))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        peer.end()

    def test_refused(self) -> None:
        """
        L{Refused} from the handler: GOAWAY with its code and text to the
        peer, both sides log the reason, both connections close.
        """
        pair = TunnelPair()
        pair.serverHandler.refuse = Refused(ErrorCode.UNAUTHORIZED, "edge-2 is not edge-1")
        established = pair.client.whenEstablished()
        with capturedLogs() as events:
            pair.pump()
        self.assertTrue(pair.lost)
        texts = [
            (e["log_namespace"], e.get("reason"), e.get("code"))
            for e in events
            if e.get("log_level") == LogLevel.warn
        ]
        self.assertEqual(
            texts,
            [
                ("twisted_tunnel.mux.tunnel.Tunnel", "edge-2 is not edge-1", "unauthorized"),
                ("twisted_tunnel.mux.tunnel.Tunnel", "edge-2 is not edge-1", "unauthorized"),
            ],
        )
        self.assertIsNone(pair.client.version)
        self.assertIsNone(pair.server.version)
        self.failureResultOf(established, TunnelClosed)
        self.assertEqual(len(pair.clientHandler.lost), 1)
        self.assertNoDelayedCalls(pair.clock)

    def test_secondHello(self) -> None:
        peer = Raw(isClient=False)
        peer.feed(Hello(1, 1, {}))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        self.assertEqual(len(peer.handler.hellos), 1)
        peer.end()


class OpenTests(TunnelTestCase):
    def setUp(self) -> None:
        self.pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        self.pair.establish()

    def tearDown(self) -> None:
        self.endPair(self.pair)

    def test_openOk(self) -> None:
        """
        OPEN_OK gives the opener a connected protocol; the acceptor's
        protocol is connected too, and bytes flow both ways.
        """
        pair = self.pair
        factory = ProtocolFactory()
        opened = pair.client.openStream("10.0.0.7", 10250, factory)
        pair.pump()
        [(address, _)] = pair.serverHandler.opens
        self.assertEqual((address.host, address.port), ("10.0.0.7", 10250))
        self.assertNoResult(opened)
        acceptor = Recorder()
        pair.serverHandler.accept(acceptor)
        pair.pump()
        opener: Any = self.successResultOf(opened)
        self.assertIs(opener, factory.built[0])
        self.assertEqual(opener.events, ["connectionMade"])
        self.assertEqual(acceptor.events, ["connectionMade"])
        stream = streamOf(opener)
        self.assertEqual(stream.streamId, 1)
        self.assertEqual(stream.getPeer().host, "10.0.0.7")
        streamOf(opener).write(b"ping")
        streamOf(acceptor).writeSequence([b"po", b"ng"])
        pair.pump()
        self.assertEqual(acceptor.received, b"ping")
        self.assertEqual(opener.received, b"pong")

    def test_serverOpensEvenIds(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.server, Recorder())
        opener2, _ = pair.open(pair.server, Recorder())
        self.assertEqual((streamOf(opener).streamId, streamOf(opener2).streamId), (2, 4))
        streamOf(acceptor).write(b"up")
        pair.pump()
        self.assertEqual(opener.received, b"up")

    def test_openFail(self) -> None:
        """
        OPEN_FAIL gives L{StreamOpenFailed} with the reason and text; both
        sides forget the stream.
        """
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        pair.serverHandler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "connection refused"))
        pair.pump()
        error = self.failureResultOf(opened, StreamOpenFailed).value
        self.assertEqual(
            (error.reason, error.text), (OpenFailReason.REFUSED, "connection refused")
        )
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.assertEqual(pair.server._peerOpened, 0)

    def test_openFailsUnexpectedly(self) -> None:
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        pair.serverHandler.fail(ZeroDivisionError())
        pair.pump()
        error = self.failureResultOf(opened, StreamOpenFailed).value
        self.assertEqual(error.reason, OpenFailReason.INTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_handlerFailsWithCancelledError(self) -> None:
        """
        A handler's own CancelledError (one we did not cause) is an open
        failure like any other: the peer is answered and the id forgotten.
        """
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        pair.serverHandler.fail(CancelledError())
        pair.pump()
        self.failureResultOf(opened, StreamOpenFailed)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.assertEqual(pair.server._peerOpened, 0)
        self.flushLoggedErrors(CancelledError)

    def test_timeout(self) -> None:
        """
        No answer in time: L{StreamOpenTimeout}, a RESET to the peer, whose
        handler's Deferred is cancelled; both sides forget the stream.
        """
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory(), timeout=5)
        pair.pump()
        pair.clock.advance(5)
        self.failureResultOf(opened, StreamOpenTimeout)
        [reset] = framesOfType(wire.decodeAll(pair.clientTransport.value()), Reset)
        self.assertEqual(reset.code, ErrorCode.CANCEL)
        pair.pump()
        self.assertEqual(len(pair.serverHandler.cancelled), 1)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.assertEqual(pair.server._peerOpened, 0)
        self.assertTrue(pair.client.established)

    def test_timeoutCrossesOpenOk(self) -> None:
        """
        The open times out while the peer's OPEN_OK (and data) is on its way:
        the late answer is ignored, the peer's protocol sees the reset, and
        the tunnel stays up.
        """
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory(), timeout=5)
        pair.pump()
        pair.clock.advance(5)  # RESET written, not delivered yet
        acceptor = Recorder()
        pair.serverHandler.accept(acceptor)
        streamOf(acceptor).write(b"banner")
        pair.pump()
        self.failureResultOf(opened, StreamOpenTimeout)
        self.assertTrue(pair.client.established)
        self.assertTrue(pair.server.established)
        assert acceptor.lostReason is not None
        acceptor.lostReason.trap(ConnectionLost)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.assertEqual(pair.server._peerOpened, 0)

    def test_cancelCrossesOpenFail(self) -> None:
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        opened.cancel()
        pair.serverHandler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "refused"))
        pair.pump()
        self.failureResultOf(opened, CancelledError)
        self.assertTrue(pair.client.established)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))

    def test_cancel(self) -> None:
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory(), timeout=30)
        pair.pump()
        opened.cancel()
        self.failureResultOf(opened, CancelledError)
        [reset] = framesOfType(wire.decodeAll(pair.clientTransport.value()), Reset)
        self.assertEqual(reset.streamId, 1)
        pair.pump()
        self.assertEqual(len(pair.serverHandler.cancelled), 1)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        # only the keepalive timers are left
        self.assertEqual(len(pair.clock.getDelayedCalls()), 2)

    def test_cancelledDialFailsItsOwnWay(self) -> None:
        """
        A handler whose Deferred, when cancelled, fails with
        L{StreamOpenFailed} (the agent's dial does) is not answered twice
        and not counted twice.
        """
        pair = self.pair
        dial: Deferred[Any] = Deferred(
            lambda d: d.errback(StreamOpenFailed(OpenFailReason.INTERNAL, "dial cancelled"))
        )
        pair.serverHandler.openRequested = lambda tunnel, address: dial  # type: ignore[method-assign]
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        opened.cancel()
        self.failureResultOf(opened, CancelledError)
        pair.clientTransport.value()
        pair.server.dataReceived(pair.clientTransport.value())
        pair.clientTransport.clear()
        sent = wire.decodeAll(pair.serverTransport.value())
        self.assertEqual(sent, [Close(1)])
        self.assertEqual(pair.server._peerOpened, 0)
        pair.pump()
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))

    def test_acceptedTooLate(self) -> None:
        """
        A handler whose Deferred still delivers a protocol after the peer
        gave up: that protocol is connected and told at once that the
        stream is over.
        """
        pair = self.pair
        late = Recorder()
        dial: Deferred[Any] = Deferred(lambda d: d.callback(late))
        pair.serverHandler.openRequested = lambda tunnel, address: dial  # type: ignore[method-assign]
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        opened.cancel()
        self.failureResultOf(opened, CancelledError)
        pair.pump()
        self.assertEqual(late.events, ["connectionMade", "connectionLost"])
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.assertEqual(pair.server._peerOpened, 0)

    def test_tooManyStreamsLocally(self) -> None:
        """
        The opener counts its open and opening streams against the peer's
        C{max_streams}, each once.
        """
        pair = TunnelPair(serverSettings=Settings(maxStreams=2))
        pair.establish()
        first = pair.client.openStream("10.0.0.7", 1, ProtocolFactory())
        second = pair.client.openStream("10.0.0.7", 2, ProtocolFactory())
        third = pair.client.openStream("10.0.0.7", 3, ProtocolFactory())
        self.assertNoResult(first)
        self.assertNoResult(second)
        error = self.failureResultOf(third, StreamOpenFailed).value
        self.assertEqual(error.reason, OpenFailReason.TOO_MANY_STREAMS)
        pair.pump()
        self.assertEqual(len(pair.serverHandler.opens), 2)
        self.endPair(pair)
        self.failureResultOf(first, TunnelClosed)
        self.failureResultOf(second, TunnelClosed)

    def test_streamSlotsComeBack(self) -> None:
        """
        A stream counts against the limit until it is over: a refused open
        and a closed stream each give their slot back, and streams the peer
        opened to us never count against ours.
        """
        pair = TunnelPair(serverSettings=Settings(maxStreams=2))
        pair.establish()
        incoming = pair.server.openStream("127.0.0.1", 9, ProtocolFactory())
        refused = pair.client.openStream("10.0.0.7", 1, ProtocolFactory())
        kept = pair.client.openStream("10.0.0.7", 2, ProtocolFactory())
        pair.pump()
        pair.clientHandler.accept(Recorder())
        pair.serverHandler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "no"), index=0)
        pair.serverHandler.accept(Recorder(), index=1)
        pair.pump()
        self.successResultOf(incoming)
        self.failureResultOf(refused, StreamOpenFailed)
        keptProtocol = self.successResultOf(kept)
        again = pair.client.openStream("10.0.0.7", 3, ProtocolFactory())
        full = pair.client.openStream("10.0.0.7", 4, ProtocolFactory())
        self.assertEqual(
            self.failureResultOf(full, StreamOpenFailed).value.reason,
            OpenFailReason.TOO_MANY_STREAMS,
        )
        pair.pump()
        pair.serverHandler.accept(Recorder())
        pair.pump()
        self.successResultOf(again)
        keptProtocol.transport.loseConnection()
        pair.pump()
        last = pair.client.openStream("10.0.0.7", 5, ProtocolFactory())
        self.assertNoResult(last)  # not refused: the closed stream gave its slot back
        self.endPair(pair)
        self.failureResultOf(last, TunnelClosed)

    def test_tooManyStreamsAtTheAcceptor(self) -> None:
        peer = Raw(isClient=False, settings=Settings(maxStreams=1))
        peer.feed(Open(1, "10.0.0.7", 80), Open(3, "10.0.0.7", 80))
        self.assertEqual(
            peer.sent(),
            [OpenFail(3, OpenFailReason.TOO_MANY_STREAMS, "at most 1 streams at once")],
        )
        self.assertEqual(len(peer.handler.opens), 1)
        self.assertTrue(peer.tunnel.established)
        # frames crossing the refusal are ignored
        peer.feed(Reset(3, ErrorCode.CANCEL, ""))
        self.assertEqual(peer.sent(), [])
        peer.handler.accept(Recorder())
        peer.end()

    def test_factoryReturnsNone(self) -> None:
        """
        The opener's factory refusing: L{StreamOpenFailed}, a RESET to the
        acceptor, whose data already on its way is dropped quietly.
        """
        pair = self.pair
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory(lambda: None))
        pair.pump()
        acceptor = Recorder()
        pair.serverHandler.accept(acceptor)
        streamOf(acceptor).write(b"banner")
        pair.pump()
        error = self.failureResultOf(opened, StreamOpenFailed).value
        self.assertEqual(error.reason, OpenFailReason.INTERNAL)
        assert acceptor.lostReason is not None
        acceptor.lostReason.trap(ConnectionLost)
        self.assertTrue(pair.client.established)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))

    def test_factoryRaises(self) -> None:
        pair = self.pair

        def broken() -> Protocol:
            raise ZeroDivisionError()

        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory(broken))
        pair.pump()
        acceptor = Recorder()
        pair.serverHandler.accept(acceptor)
        pair.pump()
        self.failureResultOf(opened, ZeroDivisionError)
        self.assertTrue(pair.client.established)
        assert acceptor.lostReason is not None
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))

    def test_notEstablished(self) -> None:
        pair = TunnelPair()
        opened = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        self.failureResultOf(opened, TunnelClosed)
        self.endPair(pair)

    def test_acceptorProtocolFailsToConnect(self) -> None:
        """
        A protocol that raises in C{connectionMade} resets its stream only.
        """
        pair = self.pair

        class Broken(Recorder):
            def connectionMade(self) -> None:
                raise ZeroDivisionError()

        opener, acceptor = pair.open(pair.client, Broken())
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionLost)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(pair.client.established)
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))


class FlowControlTests(TunnelTestCase):
    def setUp(self) -> None:
        self.pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        self.pair.establish()

    def tearDown(self) -> None:
        self.endPair(self.pair)

    def test_pausedReceiverHoldsOneWindow(self) -> None:
        """
        A paused receiver buffers exactly one window and returns no credit;
        the sender keeps the rest and pauses its producer; another stream on
        the same tunnel flows meanwhile; resuming delivers everything in
        order and returns the credit.
        """
        pair = self.pair
        window = SMALL_WINDOW
        sender, receiver = pair.open(pair.client, Recorder(pauseOnConnect=True))
        otherSender, otherReceiver = pair.open(pair.client, Recorder())
        producer = PushProducer()
        streamOf(sender).registerProducer(producer, True)
        payload = bytes(range(256)) * (5 * window // 256)
        for i in range(0, len(payload), 10_000):
            streamOf(sender).write(payload[i : i + 10_000])
        pair.pump()
        self.assertEqual(streamOf(receiver).bufferedBytes, window)
        self.assertEqual(receiver.received, b"")
        self.assertEqual(streamOf(sender).bufferedBytes, 4 * window)
        self.assertTrue(producer.paused)

        other = b"x" * (3 * window)
        streamOf(otherSender).write(other)
        pair.pump()
        self.assertEqual(otherReceiver.received, other)
        self.assertEqual(streamOf(otherSender).bufferedBytes, 0)

        streamOf(receiver).resumeProducing()
        pair.pump()
        self.assertEqual(receiver.received, payload)
        self.assertEqual(streamOf(receiver).bufferedBytes, 0)
        self.assertEqual(streamOf(sender).bufferedBytes, 0)
        self.assertFalse(producer.paused)
        self.assertEqual(producer.resumes, 1)
        # all credit but the last, unbatched part is back with the sender
        self.assertGreater(streamOf(sender).credit, window * 3 // 4)

    def test_creditOnlyAfterConsumption(self) -> None:
        """
        No WINDOW is sent for bytes that sit in the buffer; WINDOW comes as
        the consumer takes them, in batches of at least a quarter window.
        """
        pair = self.pair
        sender, receiver = pair.open(pair.client, Recorder(pauseOnConnect=True))
        streamOf(sender).write(b"a" * (SMALL_WINDOW // 2))
        pair.server.dataReceived(pair.clientTransport.value())
        pair.clientTransport.clear()
        self.assertEqual(frames(pair.serverTransport), [])
        streamOf(receiver).resumeProducing()
        self.assertEqual(frames(pair.serverTransport), [Window(1, SMALL_WINDOW // 2)])

        streamOf(sender).write(b"b" * (SMALL_WINDOW // 8))
        pair.server.dataReceived(pair.clientTransport.value())
        pair.clientTransport.clear()
        self.assertEqual(frames(pair.serverTransport), [])  # below a quarter window
        streamOf(sender).write(b"c" * (SMALL_WINDOW // 8))
        pair.server.dataReceived(pair.clientTransport.value())
        pair.clientTransport.clear()
        self.assertEqual(frames(pair.serverTransport), [Window(1, SMALL_WINDOW // 4)])

    def test_pauseWhileTakingData(self) -> None:
        """
        Bytes taken by a consumer that pushed back while taking them are
        credited only when it resumes.
        """
        pair = self.pair

        class Pauser(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.stream.pauseProducing()

        sender, receiver = pair.open(pair.client, Pauser())
        streamOf(sender).write(b"a" * SMALL_WINDOW)
        pair.pump()
        self.assertEqual(len(receiver.chunks), 1)
        self.assertEqual(streamOf(sender).credit, 0)
        for _ in range(10):
            streamOf(receiver).resumeProducing()
            pair.pump()
        self.assertEqual(receiver.received, b"a" * SMALL_WINDOW)
        self.assertEqual(streamOf(sender).credit, SMALL_WINDOW)

    def test_dataBeyondWindow(self) -> None:
        """
        DATA beyond the credit granted: FLOW_CONTROL_ERROR, connection closed,
        nothing raised.
        """
        peer = Raw(isClient=False)
        peer.feed(Open(1, "10.0.0.7", 80))
        peer.handler.accept(Recorder(pauseOnConnect=True))
        self.assertEqual(peer.sent(), [OpenOk(1)])
        with capturedLogs() as events:
            peer.feed(
                Data(1, b"x" * SMALL_WINDOW),
                Data(1, b"y"),
            )
        self.assertGoAway(peer.sent(), ErrorCode.FLOW_CONTROL_ERROR)
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual(len(events), 1)
        peer.end()
        self.assertNoDelayedCalls(peer.clock)

    def test_windowOverflow(self) -> None:
        peer = Raw(isClient=False)
        peer.feed(Open(1, "10.0.0.7", 80))
        peer.handler.accept(Recorder())
        peer.sent()
        peer.feed(Window(1, 2**31 - 1))
        self.assertGoAway(peer.sent(), ErrorCode.FLOW_CONTROL_ERROR)
        peer.end()

    def test_dataSplitByPeerMaxFrame(self) -> None:
        pair = TunnelPair(serverSettings=Settings(maxFrame=16 * 1024))
        pair.establish()
        sender, receiver = pair.open(pair.client, Recorder())
        streamOf(sender).write(b"z" * 40_000)
        sizes = [len(f.data) for f in framesOfType(frames(pair.clientTransport), Data)]
        self.assertEqual(sizes, [16384, 16384, 40_000 - 32768])
        self.endPair(pair)

    def test_oneLargeWrite(self) -> None:
        """
        One write of many windows goes out in frames no larger than the
        peer's limit, window by window, every byte in order.
        """
        pair = TunnelPair(
            clientSettings=SMALL, serverSettings=Settings(window=SMALL_WINDOW, maxFrame=16384)
        )
        pair.establish()
        sender, receiver = pair.open(pair.client, Recorder(pauseOnConnect=True))
        payload = bytes(i * 7 % 251 for i in range(5 * SMALL_WINDOW + 123))
        streamOf(sender).write(payload)
        self.assertEqual(streamOf(sender).bufferedBytes, len(payload) - SMALL_WINDOW)
        pair.pump()
        for _ in range(10):
            streamOf(receiver).resumeProducing()
            streamOf(receiver).pauseProducing()
            pair.pump()
        streamOf(receiver).resumeProducing()
        pair.pump()
        self.assertEqual(receiver.received, payload)
        self.assertTrue(all(len(chunk) <= 16384 for chunk in receiver.chunks))
        self.assertEqual(streamOf(sender).bufferedBytes, 0)
        self.endPair(pair)

    def test_windowArrivesWhileFlushing(self) -> None:
        """
        Credit that arrives while the stream is sending (the transport
        delivers synchronously) keeps the bytes in order.
        """
        pair = self.pair
        sender, receiver = pair.open(pair.client, Recorder(pauseOnConnect=True))
        payload = bytes(range(256)) * (2 * SMALL_WINDOW // 256)
        streamOf(sender).write(payload)  # one window goes, one is kept
        self.assertEqual(streamOf(sender).credit, 0)
        pair.pump()
        written: list[bytes] = []
        transport = pair.clientTransport
        original = transport.writeSequence

        def writeSequence(data: list[bytes]) -> None:
            original(data)
            written.append(b"".join(data))
            if len(written) == 1:
                # more credit arrives while the first frame is being written
                pair.client.dataReceived(Window(1, SMALL_WINDOW // 2).encode())

        transport.writeSequence = writeSequence  # type: ignore[method-assign]
        pair.client.dataReceived(Window(1, SMALL_WINDOW // 2).encode())
        sent = b"".join(f.data for f in framesOfType(frames(transport), Data))
        self.assertEqual(sent, payload[SMALL_WINDOW:])
        self.assertEqual(streamOf(sender).bufferedBytes, 0)
        del transport.writeSequence

    def test_pullProducer(self) -> None:
        """
        A pull producer is asked for more as long as credit lasts, in a loop,
        not by recursion (it writes from inside C{resumeProducing}).
        """
        pair = TunnelPair()
        pair.establish()
        sender, receiver = pair.open(pair.client, Recorder())

        @implementer(IPullProducer)
        class Puller:
            written = 0

            def resumeProducing(self) -> None:
                if self.written >= 500_000:
                    streamOf(sender).unregisterProducer()
                    return
                self.written += 100
                streamOf(sender).write(b"p" * 100)

            def stopProducing(self) -> None:
                pass

        puller = Puller()
        streamOf(sender).registerProducer(puller, False)
        self.assertEqual(puller.written, 500_000)
        pair.pump()
        self.assertEqual(len(receiver.received), 500_000)
        self.endPair(pair)


class PushBackTests(TunnelTestCase):
    def setUp(self) -> None:
        self.pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        self.pair.establish()

    def tearDown(self) -> None:
        self.endPair(self.pair)

    def test_pauseAndResume(self) -> None:
        """
        While the connection pushes back, streams keep their data and pause
        their producers; on resume they drain and their producers resume.
        """
        pair = self.pair
        (a, ra), (b, rb) = pair.open(pair.client, Recorder()), pair.open(pair.client, Recorder())
        pa, pb = PushProducer(), PushProducer()
        streamOf(a).registerProducer(pa, True)
        streamOf(b).registerProducer(pb, True)
        pair.client.pauseProducing()
        streamOf(a).write(b"a" * 1000)
        streamOf(b).write(b"b" * 1000)
        self.assertEqual(framesOfType(frames(pair.clientTransport), Data), [])
        self.assertTrue(pa.paused and pb.paused)
        self.assertEqual(streamOf(a).bufferedBytes, 1000)
        pair.client.resumeProducing()
        self.assertFalse(pa.paused or pb.paused)
        pair.pump()
        self.assertEqual((ra.received, rb.received), (b"a" * 1000, b"b" * 1000))

    def test_roundRobin(self) -> None:
        """
        Streams waiting for the connection take turns, one write each while
        the connection keeps pushing back after every write.
        """
        pair = self.pair
        (a, _), (b, _) = pair.open(pair.client, Recorder()), pair.open(pair.client, Recorder())
        pair.client.sendMaxFrame = 16 * 1024
        pair.client.pauseProducing()
        streamOf(a).write(b"a" * 40_000)
        streamOf(b).write(b"b" * 40_000)
        transport = pair.clientTransport
        original = transport.writeSequence

        def writeSequence(data: list[bytes]) -> None:
            original(data)
            pair.client.pauseProducing()

        transport.writeSequence = writeSequence  # type: ignore[method-assign]
        order: list[int] = []
        for _ in range(8):
            pair.client.resumeProducing()
            order.extend(f.streamId for f in framesOfType(frames(transport), Data))
        self.assertEqual(order, [1, 3, 1, 3, 1, 3])
        del transport.writeSequence
        pair.client.resumeProducing()


class EndingTests(TunnelTestCase):
    def setUp(self) -> None:
        self.pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        self.pair.establish()

    def tearDown(self) -> None:
        self.endPair(self.pair)

    def assertForgotten(self) -> None:
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))
        self.assertEqual(self.pair.server._peerOpened, 0)
        self.assertEqual(self.pair.client._peerOpened, 0)

    def test_halfCloseBothWays(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.client, HalfCloser(), HalfCloser())
        streamOf(opener).write(b"request")
        streamOf(opener).loseWriteConnection()
        streamOf(opener).write(b"ignored")
        pair.pump()
        self.assertEqual(acceptor.received, b"request")
        self.assertEqual(opener.events, ["connectionMade", "writeConnectionLost"])
        self.assertEqual(acceptor.events, ["connectionMade", "readConnectionLost"])
        streamOf(acceptor).write(b"response")
        pair.pump()
        self.assertEqual(opener.received, b"response")
        streamOf(acceptor).loseWriteConnection()
        pair.pump()
        self.assertEqual(
            opener.events,
            ["connectionMade", "writeConnectionLost", "readConnectionLost", "connectionLost"],
        )
        self.assertEqual(
            acceptor.events,
            ["connectionMade", "readConnectionLost", "writeConnectionLost", "connectionLost"],
        )
        for protocol in (opener, acceptor):
            assert protocol.lostReason is not None
            protocol.lostReason.trap(ConnectionDone)
        self.assertForgotten()

    def test_eofToPlainProtocol(self) -> None:
        """
        A protocol that does not half-close is disconnected by the peer's EOF.
        Its CLOSE is FINAL (version 2: it had the EOF), and carries its EOF
        (the opener's protocol hears C{readConnectionLost}, as TCP tells a
        FIN on a half-closed connection); nobody answers it.
        """
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder(), HalfCloser())
        streamOf(opener).write(b"request")
        streamOf(opener).loseWriteConnection()
        pair.pump()
        self.assertEqual(acceptor.received, b"request")
        assert acceptor.lostReason is not None
        acceptor.lostReason.trap(ConnectionDone)
        self.assertEqual(
            opener.events,
            ["connectionMade", "writeConnectionLost", "readConnectionLost", "connectionLost"],
        )
        self.assertForgotten()

    def test_eofToPlainProtocolVersion1(self) -> None:
        """
        On a version 1 connection the plain protocol's CLOSE is an ordinary
        one: no EOF came back, and the opener answers it.
        """
        pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL, connect=False)
        pair.client.versions = (1,)
        pair.connect()
        pair.establish()
        opener, acceptor = pair.open(pair.client, Recorder(), HalfCloser())
        streamOf(opener).write(b"request")
        streamOf(opener).loseWriteConnection()
        pair.pump()
        self.assertEqual(acceptor.received, b"request")
        self.assertEqual(
            opener.events, ["connectionMade", "writeConnectionLost", "connectionLost"]
        )
        self.assertEqual((pair.client.streamCount, pair.server.streamCount), (0, 0))
        self.endPair(pair)

    def test_loseConnectionFlushesBacklog(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder(pauseOnConnect=True))
        payload = b"q" * (3 * SMALL_WINDOW)
        streamOf(opener).write(payload)
        streamOf(opener).loseConnection()
        pair.pump()
        self.assertTrue(streamOf(opener).disconnecting)
        self.assertIsNone(opener.lostReason)
        self.assertEqual(framesOfType(frames(pair.clientTransport), Close), [])
        streamOf(acceptor).resumeProducing()
        pair.pump()
        self.assertEqual(acceptor.received, payload)
        assert acceptor.lostReason is not None and opener.lostReason is not None
        acceptor.lostReason.trap(ConnectionDone)
        opener.lostReason.trap(ConnectionDone)
        self.assertForgotten()

    def test_abortConnection(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder(pauseOnConnect=True))
        streamOf(acceptor).write(b"unsent")
        streamOf(opener).write(b"dropped")
        pair.pump()
        streamOf(opener).abortConnection()
        pair.pump()
        assert acceptor.lostReason is not None and opener.lostReason is not None
        acceptor.lostReason.trap(ConnectionLost)
        opener.lostReason.trap(ConnectionLost)
        self.assertEqual(acceptor.received, b"")
        self.assertForgotten()

    def test_resetReachesPausedProtocol(self) -> None:
        """
        A RESET is not held back behind a paused consumer: its protocol
        hears of it at once, and the stream is forgotten.
        """
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder(pauseOnConnect=True))
        streamOf(opener).write(b"never read")
        pair.pump()
        streamOf(opener).abortConnection()
        pair.pump()
        assert acceptor.lostReason is not None
        acceptor.lostReason.trap(ConnectionLost)
        self.assertIn("cancel", acceptor.lostReason.getErrorMessage())
        self.assertForgotten()

    def test_closeWaitsForPausedConsumer(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder(pauseOnConnect=True))
        streamOf(opener).write(b"all of it")
        streamOf(opener).loseConnection()
        pair.pump()
        self.assertIsNone(acceptor.lostReason)
        self.assertEqual(pair.server.streamCount, 1)
        streamOf(acceptor).resumeProducing()
        pair.pump()
        self.assertEqual(acceptor.received, b"all of it")
        self.assertForgotten()

    def test_protocolRaises(self) -> None:
        """
        A protocol that raises in C{dataReceived} resets its own stream only.
        """
        pair = self.pair

        class Broken(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise ZeroDivisionError()

        opener, broken = pair.open(pair.client, Broken())
        other, otherAcceptor = pair.open(pair.client, Recorder())
        streamOf(opener).write(b"boom")
        streamOf(other).write(b"fine")
        pair.pump()
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        assert broken.lostReason is not None and opener.lostReason is not None
        opener.lostReason.trap(ConnectionLost)
        self.assertEqual(otherAcceptor.received, b"fine")
        self.assertIsNone(otherAcceptor.lostReason)
        self.assertTrue(pair.client.established)
        self.assertEqual(pair.server.streamCount, 1)

    def test_closeInsideDataReceived(self) -> None:
        pair = self.pair

        class Closer(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.write(b"bye")  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        opener, closer = pair.open(pair.client, Closer())
        streamOf(opener).write(b"one")
        pair.pump()
        streamOf(opener).write(b"two")
        pair.pump()
        self.assertEqual(closer.received, b"one")
        self.assertEqual(opener.received, b"bye")
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionDone)
        self.assertForgotten()

    def test_connectionLostAfterTheProtocolReturns(self) -> None:
        """
        A protocol that closes (or aborts) its stream from inside one of its
        own methods hears connectionLost only once that method has returned,
        as with TCP: TLSMemoryBIOProtocol run over a stream relies on it.
        """
        pair = self.pair
        events: list[str] = []

        class Closer(Recorder):
            def dataReceived(self, data: bytes) -> None:
                events.append("dataReceived: in")
                self.transport.loseConnection()  # type: ignore[union-attr]
                events.append("dataReceived: out")

            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
                events.append("connectionLost")
                super().connectionLost(reason)

        class Aborter(Closer):
            def dataReceived(self, data: bytes) -> None:
                events.append("dataReceived: in")
                self.transport.abortConnection()  # type: ignore[union-attr]
                events.append("dataReceived: out")

        for protocol in (Closer(), Aborter()):
            del events[:]
            opener, _ = pair.open(pair.client, protocol)
            streamOf(opener).write(b"one")
            pair.pump()
            self.assertEqual(events, ["dataReceived: in", "dataReceived: out", "connectionLost"])

    def test_framesForForgottenStreamIgnored(self) -> None:
        peer = Raw(isClient=False)
        peer.feed(Open(1, "10.0.0.7", 80))
        protocol = Recorder()
        peer.handler.accept(protocol)
        peer.feed(Close(1))
        self.assertEqual(peer.sent(), [OpenOk(1), Close(1)])
        self.assertEqual(peer.tunnel.streamCount, 0)
        peer.feed(Window(1, 100), Eof(1), Reset(1, ErrorCode.CANCEL, ""))
        self.assertEqual(peer.sent(), [])
        self.assertTrue(peer.tunnel.established)
        peer.end()

    def test_writeAfterClose(self) -> None:
        pair = self.pair
        opener, acceptor = pair.open(pair.client, Recorder())
        streamOf(opener).loseConnection()
        streamOf(opener).write(b"late")
        pair.pump()
        self.assertEqual(acceptor.received, b"")
        self.assertForgotten()


class KeepaliveTests(TunnelTestCase):
    def test_pingAndPong(self) -> None:
        pair = TunnelPair(keepalive=Keepalive(interval=10, misses=3))
        pair.establish()
        pair.clock.advance(9.9)
        self.assertEqual(pair.clientTransport.value(), b"")
        pair.clock.advance(0.1)
        [ping] = frames(pair.clientTransport)
        assert isinstance(ping, Ping)
        pair.server.dataReceived(ping.encode())
        self.assertIn(Pong(ping.opaque), frames(pair.serverTransport))
        self.endPair(pair)

    def test_pingAfterIntervalOfSilence(self) -> None:
        """
        The PING goes out C{interval} seconds after the last thing heard, not
        at the next multiple of C{interval}.
        """
        peer = Raw(isClient=True)
        peer.tunnel.keepalive = Keepalive(interval=10, misses=3)
        peer.clock.advance(3)
        peer.feed(Pong(b"\x00" * 8))
        peer.clock.advance(7)
        self.assertEqual(peer.sent(), [])
        peer.clock.advance(3)
        self.assertEqual([type(f) for f in peer.sent()], [Ping])
        peer.end()

    def test_deadPeer(self) -> None:
        """
        Nothing heard for C{interval * misses}: GOAWAY KEEPALIVE_TIMEOUT, the
        connection aborted, every stream's protocol told, pending opens
        failed with L{TunnelClosed}, no timer left.
        """
        pair = TunnelPair(
            clientSettings=SMALL, serverSettings=SMALL, keepalive=Keepalive(interval=10, misses=3)
        )
        pair.establish()
        opener, acceptor = pair.open(pair.client, Recorder())
        pending = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        pair.serverToClient = False
        with capturedLogs() as events:
            for _ in range(2):
                pair.clock.advance(10)
                pair.pump()
                self.assertTrue(pair.client.established)
            pair.clock.advance(10)
        self.assertTrue(pair.clientTransport.disconnected)
        sent = frames(pair.clientTransport)
        self.assertGoAway(sent, ErrorCode.KEEPALIVE_TIMEOUT)
        self.assertTrue(any("is dead" in e["log_format"] for e in events))
        pair.lose(Failure(ConnectionLost()))
        assert opener.lostReason is not None and acceptor.lostReason is not None
        opener.lostReason.trap(ConnectionLost)
        self.failureResultOf(pending, TunnelClosed)
        self.assertEqual(len(pair.serverHandler.cancelled), 1)
        self.assertEqual(len(pair.clientHandler.lost), 1)
        self.assertNoDelayedCalls(pair.clock)

    def test_serverNeverPingsALiveAgent(self) -> None:
        """
        The agent keeps the tunnel alive; the server only answers: a minute
        of idle tunnel is six PINGs one way and six PONGs back.
        """
        pair = TunnelPair(keepalive=Keepalive(interval=10, misses=3))
        pair.establish()
        written: dict[str, list[bytes]] = {"client": [], "server": []}
        for side, transport in (
            ("client", pair.clientTransport),
            ("server", pair.serverTransport),
        ):
            write = transport.write
            transport.write = lambda data, side=side, write=write: (  # type: ignore[method-assign]
                written[side].append(data),
                write(data),
            )
        for _ in range(60):
            pair.clock.advance(1)
            pair.pump()
        clientFrames = wire.decodeAll(b"".join(written["client"]))
        serverFrames = wire.decodeAll(b"".join(written["server"]))
        self.assertEqual([type(f) for f in clientFrames], [Ping] * 6)
        self.assertEqual([type(f) for f in serverFrames], [Pong] * 6)
        self.assertTrue(pair.server.established and pair.client.established)
        self.endPair(pair)

    def test_serverProbesASilentAgentOnce(self) -> None:
        """
        The server pings a silent agent once, C{interval * (misses - 1)}
        after it last heard from it, and gives up at the deadline.
        """
        peer = Raw(isClient=False)
        peer.tunnel.keepalive = Keepalive(interval=10, misses=3)
        peer.clock.advance(19.9)
        self.assertEqual(peer.sent(), [])
        peer.clock.advance(0.1)
        self.assertEqual([type(f) for f in peer.sent()], [Ping])
        peer.clock.advance(9.9)
        self.assertEqual(peer.sent(), [])
        peer.clock.advance(0.1)
        self.assertGoAway(peer.sent(), ErrorCode.KEEPALIVE_TIMEOUT)
        self.assertTrue(peer.transport.disconnected)
        peer.end()

    def test_pingsRepeatWhileSilent(self) -> None:
        """The agent pings every C{interval} while nothing comes back."""
        peer = Raw(isClient=True)
        peer.tunnel.keepalive = Keepalive(interval=10, misses=4)
        sent: list[type] = []
        for _ in range(39):
            peer.clock.advance(1)
            sent += [type(f) for f in peer.sent()]
        self.assertEqual(sent, [Ping, Ping, Ping])
        self.assertTrue(peer.tunnel.established)
        peer.clock.advance(1)
        self.assertGoAway(peer.sent(), ErrorCode.KEEPALIVE_TIMEOUT)
        peer.end()


class KeepaliveSweepTests(TunnelTestCase):
    def sweptPair(self, sweep: mux.KeepaliveSweep, clock: Clock) -> TunnelPair:
        """A pair whose server side is kept by C{sweep}, not by its own timer."""
        pair = TunnelPair(clock=clock, keepalive=Keepalive(interval=10, misses=3), connect=False)
        pair.server = Tunnel(
            pair.serverHandler,
            clock,
            isClient=False,
            keepalive=Keepalive(interval=10, misses=3),
            keepaliveSweep=sweep,
        )
        pair.connect()
        pair.establish()
        return pair

    def test_oneTimerForAllTunnels(self) -> None:
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 2.5)
        pairs = [self.sweptPair(sweep, clock) for _ in range(3)]
        self.assertEqual(len(sweep), 3)
        # three agents' own timers, and the sweep's one
        self.assertEqual(len(clock.getDelayedCalls()), 4)
        for pair in pairs:
            pair.lose(Failure(ConnectionDone()))
        self.assertEqual(len(sweep), 0)
        self.assertNoDelayedCalls(clock)

    def test_silentAgentFoundWithinAPeriodOfTheDeadline(self) -> None:
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 2.5)
        silent = self.sweptPair(sweep, clock)
        alive = self.sweptPair(sweep, clock)
        silent.clientToServer = False
        with capturedLogs() as events:
            for _ in range(int(29.5 / 0.5)):
                clock.advance(0.5)
                silent.pump()
                alive.pump()
            self.assertTrue(silent.server.established)  # silent for 29.5 s: alive
            for _ in range(int(3 / 0.5)):
                clock.advance(0.5)
                silent.pump()
                alive.pump()
        self.assertTrue(silent.lost)
        self.assertTrue(silent.serverTransport.disconnected)
        self.assertEqual([e["log_format"] for e in events if e.get("silent")], [mux.Tunnel.DEAD])
        self.assertTrue(alive.server.established and alive.client.established)
        self.assertEqual(len(sweep), 1)
        self.endPair(alive)
        self.assertNoDelayedCalls(clock)

    def test_lateSweepJudgesNobody(self) -> None:
        """
        A sweep that fires long after it was due (the reactor was stalled)
        declares nobody dead: the peers' bytes may be waiting to be read.
        The next sweep on time does.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 2.5)
        pair = self.sweptPair(sweep, clock)
        pair.clientToServer = False
        pair.serverToClient = False
        clock.advance(60)  # one stalled reactor turn, a minute long
        self.assertTrue(pair.server.established)
        self.assertFalse(pair.serverTransport.disconnected)
        with capturedLogs():
            clock.advance(2.5)
        self.assertTrue(pair.serverTransport.disconnected)
        pair.lose(Failure(ConnectionLost()))
        self.assertEqual(len(sweep), 0)


class DrainTests(TunnelTestCase):
    def test_drain(self) -> None:
        """
        drain(): the peer's handler is told; new opens from either side are
        refused; existing streams finish; then the connection closes.
        """
        pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        pair.establish()
        opener, acceptor = pair.open(pair.client, Recorder())
        done = pair.server.drain("restarting")
        crossing = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        self.assertEqual(pair.clientHandler.draining, [pair.client])
        error = self.failureResultOf(crossing, StreamOpenFailed).value
        self.assertEqual(error.reason, OpenFailReason.GOING_AWAY)
        for tunnel in (pair.client, pair.server):
            error = self.failureResultOf(
                tunnel.openStream("10.0.0.7", 22, ProtocolFactory()), StreamOpenFailed
            ).value
            self.assertEqual(error.reason, OpenFailReason.GOING_AWAY)
        streamOf(opener).write(b"still flowing")
        pair.pump()
        self.assertEqual(acceptor.received, b"still flowing")
        self.assertNoResult(done)
        self.assertFalse(pair.lost)
        streamOf(acceptor).loseConnection()
        pair.pump()
        self.assertTrue(pair.lost)
        self.successResultOf(done)
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionDone)
        self.assertNoDelayedCalls(pair.clock)

    def test_drainIdle(self) -> None:
        pair = TunnelPair()
        pair.establish()
        done = pair.client.drain()
        pair.pump()
        self.assertTrue(pair.lost)
        self.successResultOf(done)
        self.assertEqual(pair.serverHandler.draining, [pair.server])
        self.assertNoDelayedCalls(pair.clock)

    def test_openCrossingTheClose(self) -> None:
        """
        An OPEN that reaches a tunnel closing after its drain is refused
        with GOING_AWAY, not left to fail with the connection.
        """
        pair = TunnelPair()
        pair.establish()
        done = pair.server.drain()
        self.assertTrue(pair.serverTransport.disconnecting)
        crossing = pair.client.openStream("10.0.0.7", 22, ProtocolFactory())
        pair.pump()
        error = self.failureResultOf(crossing, StreamOpenFailed).value
        self.assertEqual(error.reason, OpenFailReason.GOING_AWAY)
        self.assertTrue(pair.lost)
        self.successResultOf(done)
        self.assertNoDelayedCalls(pair.clock)

    def test_errorAfterGracefulClose(self) -> None:
        peer = Raw(isClient=False)
        peer.tunnel.drain()
        self.assertEqual(
            [g.code for g in framesOfType(peer.sent(), GoAway)],
            [ErrorCode.SHUTTING_DOWN, ErrorCode.NO_ERROR],
        )
        with capturedLogs() as events:
            peer.feed(GoAway(ErrorCode.INTERNAL_ERROR, "oops"), Ping(b"12345678"))
        self.assertEqual(peer.sent(), [])
        self.assertEqual(len(events), 1)
        peer.end()
        self.assertNoDelayedCalls(peer.clock)

    def test_protocolErrorAfterGracefulClose(self) -> None:
        peer = Raw(isClient=False)
        peer.tunnel.drain()
        peer.sent()
        with capturedLogs() as events:
            peer.feed(raw(0x42, 0))
            peer.feed(Ping(b"12345678"))
        self.assertEqual(len(events), 1)
        peer.end()

    def test_goAwayWithError(self) -> None:
        pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        pair.establish()
        opener, acceptor = pair.open(pair.client, Recorder())
        pair.server.close(ErrorCode.REPLACED, "a newer connection replaced this one")
        pair.pump()
        self.assertTrue(pair.lost)
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionLost)
        self.assertNoDelayedCalls(pair.clock)

    def test_closeLosesConnectionSynchronously(self) -> None:
        """
        A transport that reports the loss from inside C{loseConnection} leaves
        no abort timer behind.
        """
        clock = Clock()
        tunnel = Tunnel(RecordingHandler(), clock, isClient=True)
        transport = StringTransport()
        tunnel.makeConnection(transport)
        transport.loseConnection = lambda: tunnel.connectionLost(  # type: ignore[method-assign]
            Failure(ConnectionDone())
        )
        tunnel.close(ErrorCode.NO_ERROR, "bye")
        self.assertNoDelayedCalls(clock)


class ProtocolErrorTests(TunnelTestCase):
    """
    Broken frames from the peer: one GOAWAY with the right code, the
    connection closed, one log line, nothing raised out of dataReceived.
    """

    def check(self, code: ErrorCode, *items: wire.Frame | bytes) -> None:
        for byteAtATime in (False, True):
            peer = Raw(isClient=False)
            peer.feed(Open(1, "10.0.0.7", 80))
            peer.handler.accept(Recorder())
            peer.sent()
            with capturedLogs() as events:
                peer.feed(*items, byteAtATime=byteAtATime)
                peer.feed(Ping(b"12345678"), raw(0x7F, 0))
            self.assertGoAway(peer.sent(), code)
            self.assertTrue(peer.transport.disconnecting)
            self.assertEqual(len(events), 1, events)
            peer.end()
            self.assertNoDelayedCalls(peer.clock)

    def test_unknownFrameType(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, raw(0x42, 1))

    def test_oversizedFrame(self) -> None:
        self.check(ErrorCode.FRAME_TOO_LARGE, wire.HEADER.pack(10_000_000, 4, 0, 1))

    def test_dataForStreamNeverOpened(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Data(5, b"hi"))

    def test_windowForOwnStreamNeverOpened(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Window(2, 10))

    def test_secondHello(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Hello(1, 1, {}))

    def test_openWithWrongParity(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Open(2, "10.0.0.7", 80))

    def test_openNotAscending(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Open(1, "10.0.0.7", 80))

    def test_dataAfterEof(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, Eof(1), Data(1, b"late"))

    def test_dataBeforeOpenOk(self) -> None:
        peer = Raw(isClient=False)
        peer.feed(Open(1, "10.0.0.7", 80), Data(1, b"too early"))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        peer.end()

    def test_openOkForStreamNotOpening(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, OpenOk(1))

    def test_emptyOpenFail(self) -> None:
        self.check(ErrorCode.PROTOCOL_ERROR, raw(wire.FrameType.OPEN_FAIL, 1))

    def test_secondClose(self) -> None:
        peer = Raw(isClient=False)
        peer.feed(Open(1, "10.0.0.7", 80))
        peer.handler.accept(Recorder(pauseOnConnect=True))
        peer.feed(Data(1, b"held"), Close(1), Close(1))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        peer.end()

    def test_nothingRaised(self) -> None:
        """
        An unexpected failure inside the tunnel closes it with
        INTERNAL_ERROR instead of raising into the transport.
        """
        peer = Raw(isClient=False)

        def broken(tunnel: Tunnel) -> None:
            raise ZeroDivisionError()

        peer.handler.tunnelDraining = broken  # type: ignore[method-assign]
        peer.feed(GoAway(ErrorCode.SHUTTING_DOWN, "bye"))
        self.assertGoAway(peer.sent(), ErrorCode.INTERNAL_ERROR)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        peer.end()


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(Settings.fromInfo({}), Settings())

    def test_roundTrip(self) -> None:
        settings = Settings(window=100_000, maxFrame=20_000, maxStreams=3)
        self.assertEqual(Settings.fromInfo(settings.toInfo()), settings)

    def test_wrongType(self) -> None:
        for info in ({"window": "big"}, {"max_streams": True}, {"max_frame": 2**30}):
            self.assertRaises(wire.ProtocolError, Settings.fromInfo, info)

    def test_keepaliveDeadline(self) -> None:
        self.assertEqual(Keepalive(interval=2, misses=4).deadline, 8)
        self.assertEqual(mux.CLOSE_TIMEOUT, 5.0)
