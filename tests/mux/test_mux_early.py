# -*- test-case-name: tests.mux.test_mux_early -*-
"""
Tests for what protocol version 2 adds to L{twisted_tunnel.mux}: early opens
(an L{IEarlyStreamFactory}'s protocol writes right behind OPEN, before
OPEN_OK), CLOSE FINAL, and the frames one short stream costs; and that a
version 2 end and a version 1 end still work together exactly as before.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.memory import (
    SMALL_WINDOW,
    HalfCloser,
    Recorder,
    TunnelPair,
    framesOfType,
    streamOf,
)
from tests.mux.test_mux import SMALL, Raw, TunnelTestCase
from twisted_tunnel import wire
from twisted_tunnel.errors import StreamOpenFailed, StreamOpenTimeout, TunnelClosed
from twisted_tunnel.mux import IEarlyStreamFactory, Receiving, Sending, Tunnel
from twisted_tunnel.wire import (
    Close,
    Data,
    Eof,
    ErrorCode,
    GoAway,
    Open,
    OpenFail,
    OpenFailReason,
    OpenOk,
    Reset,
    Window,
)


@implementer(IEarlyStreamFactory)
class EarlyFactory(Factory):
    """Hands out one protocol, built before the open is answered."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.built = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.built += 1
        return self.protocol


class CountingPair(TunnelPair):
    """A L{TunnelPair} that records every frame after HELLO, with its direction."""

    def __init__(self, *, client: tuple[int, ...] | None, server: tuple[int, ...] | None) -> None:
        super().__init__(clientSettings=SMALL, serverSettings=SMALL, connect=False)
        self.client.versions = client
        self.server.versions = server
        self.seen: list[tuple[str, wire.Frame]] = []
        self.connect()
        self.establish()
        self.seen.clear()

    def _move(self, transport: StringTransport, tunnel: Tunnel, enabled: bool) -> bool:
        if enabled and not self.lost and not transport.disconnected:
            way = "c>s" if tunnel is self.server else "s>c"
            for frame in wire.decodeAll(transport.value()):
                if not isinstance(frame, wire.Hello):
                    self.seen.append((way, frame))
        return super()._move(transport, tunnel, enabled)

    def kinds(self) -> list[str]:
        return [f"{way} {frame.TYPE.name}" for way, frame in self.seen]


def mixes() -> dict[str, tuple[tuple[int, ...] | None, tuple[int, ...] | None]]:
    """Which versions the agent (client) and the server speak: new is 1..2."""
    return {
        "new-new": (None, None),
        "old agent": ((1,), None),
        "old server": (None, (1,)),
    }


class VersionMixTests(TunnelTestCase):
    def test_negotiated(self) -> None:
        """
        Two new ends agree on version 2; a new end and an old one (version 1
        only) agree on 1, whichever is the agent.
        """
        for name, (client, server) in mixes().items():
            pair = CountingPair(client=client, server=server)
            expected = 2 if name == "new-new" else 1
            self.assertEqual((pair.client.version, pair.server.version), (expected,) * 2, name)
            self.assertEqual(pair.client.earlyOpens, expected == 2, name)
            self.assertEqual(pair.server.finalClose, expected == 2, name)
            self.endPair(pair)

    def test_ordinaryStreamEveryMix(self) -> None:
        """
        An ordinary open behaves as it always did in every mix: the opener's
        protocol is built at OPEN_OK, and data flows both ways.
        """
        for name, (client, server) in mixes().items():
            pair = CountingPair(client=client, server=server)
            opener, acceptor = pair.open(pair.server, HalfCloser(), HalfCloser())
            streamOf(opener).write(b"ping")
            pair.pump()
            streamOf(acceptor).write(b"pong")
            pair.pump()
            self.assertEqual((acceptor.received, opener.received), (b"ping", b"pong"), name)
            self.assertEqual(
                pair.kinds()[:2], ["s>c OPEN", "c>s OPEN_OK"], f"{name}: {pair.kinds()}"
            )
            self.endPair(pair)

    def test_earlyOpenEveryMix(self) -> None:
        """
        An early open works in every mix.  On version 2 the first bytes and
        the EOF go right behind OPEN; on version 1 they wait in the stream
        for OPEN_OK, so the old peer sees nothing it does not expect.
        """
        for name, (client, server) in mixes().items():
            pair = CountingPair(client=client, server=server)
            opener = HalfCloser()
            opened = pair.server.openStream("127.0.0.1", 80, EarlyFactory(opener))
            self.assertEqual(opener.events, ["connectionMade"], name)
            streamOf(opener).write(b"request")
            streamOf(opener).loseWriteConnection()
            pair.pump()
            acceptor = HalfCloser()
            pair.clientHandler.accept(acceptor)
            pair.pump()
            self.assertIs(self.successResultOf(opened), opener, name)
            self.assertEqual(acceptor.received, b"request", name)
            self.assertIn("readConnectionLost", acceptor.events, name)
            early = name == "new-new"
            expected = (
                ["s>c OPEN", "s>c DATA", "s>c EOF", "c>s OPEN_OK"]
                if early
                else ["s>c OPEN", "c>s OPEN_OK", "s>c DATA", "s>c EOF"]
            )
            self.assertEqual(pair.kinds()[:4], expected, name)
            self.assertFalse(pair.lost, name)
            self.endPair(pair)


class ShortStreamFrameTests(SynchronousTestCase):
    """
    The frames of one short request/response stream, as a C{--forward}
    connection makes them (the server opens; its client sends a request and
    waits; the edge service answers and closes; the client closes after
    reading the answer).
    """

    def exchange(self, pair: CountingPair, early: bool) -> list[str]:
        class Client(HalfCloser):
            def connectionMade(self) -> None:
                super().connectionMade()
                self.transport.write(b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[union-attr]

            def readConnectionLost(self) -> None:
                super().readConnectionLost()
                self.transport.loseWriteConnection()  # type: ignore[union-attr]

        class Service(HalfCloser):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.transport.write(b"HTTP/1.1 200 OK\r\n\r\nhello")  # type: ignore[union-attr]
                self.transport.loseWriteConnection()  # type: ignore[union-attr]

            def readConnectionLost(self) -> None:
                super().readConnectionLost()
                self.transport.loseConnection()  # type: ignore[union-attr]

        client, service = Client(), Service()
        factory = EarlyFactory(client) if early else Factory.forProtocol(lambda: client)
        opened = pair.server.openStream("127.0.0.1", 80, factory)
        pair.pump()
        pair.clientHandler.accept(service)
        pair.pump()
        assert opened.called
        assert client.received == b"HTTP/1.1 200 OK\r\n\r\nhello", client.received
        assert service.received == b"GET / HTTP/1.1\r\n\r\n"
        assert client.lostReason is not None and service.lostReason is not None
        client.lostReason.trap(ConnectionDone)
        service.lostReason.trap(ConnectionDone)
        assert (pair.client.streamCount, pair.server.streamCount) == (0, 0)
        return pair.kinds()

    def test_version1(self) -> None:
        """
        Between a new end and an old one (and so, before version 2, between
        any two): 8 frames, as ever.  The open waits a round trip.
        """
        pair = CountingPair(client=(1,), server=None)
        self.assertEqual(
            self.exchange(pair, early=False),
            [
                "s>c OPEN",
                "c>s OPEN_OK",
                "s>c DATA",
                "c>s DATA",
                "c>s EOF",
                "s>c EOF",
                "s>c CLOSE",
                "c>s CLOSE",
            ],
        )
        pair.lose(Failure(ConnectionDone()))

    def test_version2(self) -> None:
        """
        Version 2, opened early: 6 frames.  The request follows OPEN without
        waiting for OPEN_OK; the client's close needs no EOF (its CLOSE is
        FINAL and says it), and the FINAL CLOSE is not answered.  No WINDOW
        (the stream is far below a quarter of its window).
        """
        pair = CountingPair(client=None, server=None)
        kinds = self.exchange(pair, early=True)
        self.assertEqual(
            kinds,
            ["s>c OPEN", "s>c DATA", "c>s OPEN_OK", "c>s DATA", "c>s EOF", "s>c CLOSE"],
        )
        closes = framesOfType([frame for _, frame in pair.seen], Close)
        self.assertEqual([c.final for c in closes], [True])
        pair.lose(Failure(ConnectionDone()))

    def test_version2NotEarly(self) -> None:
        """
        Version 2 with an ordinary open (the CONNECT door's): 6 frames too,
        the request a round trip later.
        """
        pair = CountingPair(client=None, server=None)
        self.assertEqual(
            self.exchange(pair, early=False),
            ["s>c OPEN", "c>s OPEN_OK", "s>c DATA", "c>s DATA", "c>s EOF", "s>c CLOSE"],
        )
        pair.lose(Failure(ConnectionDone()))


class EarlyOpenTests(TunnelTestCase):
    """Early opens between two version 2 ends."""

    def setUp(self) -> None:
        self.pair = TunnelPair(clientSettings=SMALL, serverSettings=SMALL)
        self.pair.establish()

    def tearDown(self) -> None:
        self.endPair(self.pair)

    def openEarly(self, protocol: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        protocol = protocol if protocol is not None else Recorder()
        opened = self.pair.server.openStream(
            "127.0.0.1", 80, EarlyFactory(protocol), timeout=timeout
        )
        return protocol, opened

    def test_protocolConnectedAtOnce(self) -> None:
        """
        The protocol is connected before the OPEN is answered, and the
        Deferred fires with it at OPEN_OK.
        """
        opener, opened = self.openEarly()
        self.assertEqual(opener.events, ["connectionMade"])
        self.assertNoResult(opened)
        self.assertTrue(streamOf(opener).opening)
        self.pair.pump()
        self.pair.clientHandler.accept(Recorder())
        self.pair.pump()
        self.assertIs(self.successResultOf(opened), opener)
        self.assertFalse(streamOf(opener).opening)

    def test_dataHeldInOrderUntilAccepted(self) -> None:
        """
        DATA sent before OPEN_OK is held by the acceptor while its handler
        decides, and delivered in order once the stream is connected.
        """
        opener, _ = self.openEarly()
        for chunk in (b"one ", b"two ", b"three"):
            streamOf(opener).write(chunk)
        self.pair.pump()
        [accepting] = self.pair.client.streams()
        self.assertEqual(accepting.bufferedBytes, len(b"one two three"))
        acceptor = Recorder()
        self.pair.clientHandler.accept(acceptor)
        self.pair.pump()
        self.assertEqual(acceptor.chunks, [b"one ", b"two ", b"three"])
        self.assertEqual(accepting.bufferedBytes, 0)

    def test_earlyDataUpToTheWindow(self) -> None:
        """
        Before OPEN_OK the opener sends at most the peer's window (what it
        learnt from HELLO); the rest waits for credit as usual.
        """
        opener, _ = self.openEarly()
        payload = bytes(range(256)) * ((SMALL_WINDOW + 1000) // 256 + 1)
        streamOf(opener).write(payload)
        sent = self.pair.serverTransport.value()
        data = framesOfType(wire.decodeAll(sent), Data)
        self.assertEqual(sum(len(d.data) for d in data), SMALL_WINDOW)
        self.assertEqual(streamOf(opener).credit, 0)
        self.pair.pump()
        acceptor = Recorder()
        self.pair.clientHandler.accept(acceptor)
        self.pair.pump()
        self.assertEqual(acceptor.received, payload)
        self.assertFalse(self.pair.lost)

    def test_refusedDropsEarlyData(self) -> None:
        """
        A refused open drops what came early; the opener's protocol hears
        first, with the agent's reason and text, then the Deferred fails
        with the same error.  Both ends forget the stream.
        """
        order: list[str] = []

        class Opener(Recorder):
            def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
                order.append("connectionLost")
                super().connectionLost(reason)

        opener, opened = self.openEarly(Opener())

        def failed(failure: Failure) -> Failure:
            order.append("opened failed")
            return failure

        opened.addErrback(failed)
        streamOf(opener).write(b"dropped")
        self.pair.pump()
        self.pair.clientHandler.fail(
            StreamOpenFailed(OpenFailReason.REFUSED, "connection refused")
        )
        self.pair.pump()
        assert opener.lostReason is not None
        error = opener.lostReason.trap(StreamOpenFailed)
        self.assertIs(error, StreamOpenFailed)
        self.assertEqual(opener.lostReason.value.reason, OpenFailReason.REFUSED)
        self.assertEqual(opener.lostReason.value.text, "connection refused")
        failure = self.failureResultOf(opened, StreamOpenFailed)
        self.assertIs(failure.value, opener.lostReason.value)
        self.assertEqual(order, ["connectionLost", "opened failed"])
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))
        self.assertFalse(self.pair.lost)

    def test_refusedAfterMoreData(self) -> None:
        """
        DATA still on its way when the acceptor refused is ignored there (the
        id is forgotten), not a protocol error; so is the opener's EOF.
        """
        opener, opened = self.openEarly()
        streamOf(opener).write(b"first")
        self.pair.pump()
        self.pair.clientHandler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "no"))
        # more from the opener, crossing the OPEN_FAIL
        streamOf(opener).write(b"second")
        streamOf(opener).loseWriteConnection()
        self.pair.pump()
        self.failureResultOf(opened, StreamOpenFailed)
        self.assertFalse(self.pair.lost)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_eofBeforeOpenOk(self) -> None:
        """
        An EOF before OPEN_OK is held behind the early data: the acceptor's
        protocol gets the data, then C{readConnectionLost}.
        """
        opener, _ = self.openEarly(HalfCloser())
        streamOf(opener).write(b"request")
        streamOf(opener).loseWriteConnection()
        self.assertEqual(opener.events, ["connectionMade", "writeConnectionLost"])
        self.pair.pump()
        acceptor = HalfCloser()
        self.pair.clientHandler.accept(acceptor)
        self.pair.pump()
        self.assertEqual(acceptor.received, b"request")
        self.assertEqual(acceptor.events, ["connectionMade", "readConnectionLost"])
        streamOf(acceptor).write(b"answer")
        streamOf(acceptor).loseConnection()
        self.pair.pump()
        self.assertEqual(opener.received, b"answer")
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionDone)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_closeWaitsForOpenOk(self) -> None:
        """
        C{loseConnection} before OPEN_OK does not abandon the open (a CLOSE
        now would): the data goes, the CLOSE waits for OPEN_OK, and the
        acceptor gets the data, then the end.
        """
        opener, opened = self.openEarly()
        streamOf(opener).write(b"fire and forget")
        streamOf(opener).loseConnection()
        self.assertIs(streamOf(opener).sending, Sending.CLOSE_QUEUED)
        sent = wire.decodeAll(self.pair.serverTransport.value())
        self.assertEqual(framesOfType(sent, Close), [])
        self.pair.pump()
        acceptor = Recorder()
        self.pair.clientHandler.accept(acceptor)
        self.pair.pump()
        self.successResultOf(opened)
        self.assertEqual(acceptor.received, b"fire and forget")
        assert acceptor.lostReason is not None and opener.lostReason is not None
        acceptor.lostReason.trap(ConnectionDone)
        opener.lostReason.trap(ConnectionDone)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_closeWaitsThenRefused(self) -> None:
        """A CLOSE waiting for OPEN_OK is dropped with the stream if the open is refused."""
        opener, opened = self.openEarly()
        streamOf(opener).write(b"x")
        streamOf(opener).loseConnection()
        self.pair.pump()
        self.pair.clientHandler.fail(StreamOpenFailed(OpenFailReason.NOT_ALLOWED, "policy"))
        self.pair.pump()
        assert opener.lostReason is not None
        opener.lostReason.trap(StreamOpenFailed)
        self.failureResultOf(opened, StreamOpenFailed)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_abortBeforeOpenOk(self) -> None:
        """
        The opener's protocol aborts before the answer: RESET goes, the
        acceptor drops the early data and cancels its open, answers CLOSE,
        and both forget the stream; the Deferred fails.
        """
        opener, opened = self.openEarly()
        streamOf(opener).write(b"never delivered")
        self.pair.pump()
        streamOf(opener).abortConnection()
        self.pair.pump()
        self.assertEqual(len(self.pair.clientHandler.cancelled), 1)
        assert opener.lostReason is not None
        opener.lostReason.trap(ConnectionLost)
        self.failureResultOf(opened, StreamOpenFailed)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))
        self.assertFalse(self.pair.lost)

    def test_abortCrossesOpenOk(self) -> None:
        """
        The opener aborts while the OPEN_OK is on its way: the Deferred still
        fires (the open did succeed), the peer answers the RESET with CLOSE,
        and both forget the stream.
        """
        opener, opened = self.openEarly()
        self.pair.pump()
        acceptor = Recorder()
        self.pair.clientHandler.accept(acceptor)  # OPEN_OK now in flight
        streamOf(opener).abortConnection()
        self.pair.pump()
        self.assertIs(self.successResultOf(opened), opener)
        assert acceptor.lostReason is not None
        acceptor.lostReason.trap(ConnectionLost)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))
        self.assertFalse(self.pair.lost)

    def test_timeout(self) -> None:
        """
        An early open that is not answered in time: RESET CANCEL, the
        protocol hears L{StreamOpenTimeout}, then the Deferred fails with it;
        a late OPEN_OK is ignored, and the stream forgotten once the peer
        answers the RESET.
        """
        opener, opened = self.openEarly(timeout=5.0)
        streamOf(opener).write(b"x")
        self.pair.pump()
        self.pair.clock.advance(5.0)
        assert opener.lostReason is not None
        opener.lostReason.trap(StreamOpenTimeout)
        self.failureResultOf(opened, StreamOpenTimeout)
        self.pair.clientHandler.accept(Recorder())
        self.pair.pump()
        self.assertFalse(self.pair.lost)
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_cancel(self) -> None:
        """Cancelling the Deferred resets the early stream; its protocol hears of it."""
        opener, opened = self.openEarly()
        opened.cancel()
        self.failureResultOf(opened)
        assert opener.lostReason is not None
        self.pair.pump()
        self.assertEqual((self.pair.client.streamCount, self.pair.server.streamCount), (0, 0))

    def test_tunnelLost(self) -> None:
        """
        The tunnel goes while an early open waits: the protocol hears
        L{TunnelClosed} (the open failed), and so does the Deferred.
        """
        opener, opened = self.openEarly()
        self.pair.lose(Failure(ConnectionLost()))
        assert opener.lostReason is not None
        opener.lostReason.trap(TunnelClosed)
        self.failureResultOf(opened, TunnelClosed)

    def test_factoryFails(self) -> None:
        """
        A factory that raises, or returns C{None}, fails the open before
        anything is sent.
        """

        @implementer(IEarlyStreamFactory)
        class Broken(Factory):
            def buildProtocol(self, addr: Any) -> Any:
                raise RuntimeError("broken")

        self.pair.serverTransport.clear()
        self.failureResultOf(self.pair.server.openStream("h", 1, Broken()), RuntimeError)
        refused = self.pair.server.openStream("h", 1, EarlyFactory(None))
        self.failureResultOf(refused, StreamOpenFailed)
        self.assertEqual(self.pair.serverTransport.value(), b"")
        self.assertEqual(self.pair.server.streamCount, 0)


class EarlyOpenVersion1Tests(TunnelTestCase):
    """An early open to a version 1 peer: nothing goes before OPEN_OK."""

    def test_heldUntilOpenOk(self) -> None:
        peer = Raw(isClient=True, version=1)
        opener = HalfCloser()
        opened = peer.tunnel.openStream("127.0.0.1", 80, EarlyFactory(opener))
        streamOf(opener).write(b"request")
        streamOf(opener).loseWriteConnection()
        streamOf(opener).loseConnection()
        self.assertEqual(peer.sent(), [Open(1, "127.0.0.1", 80)])
        peer.feed(OpenOk(1))
        self.assertEqual(peer.sent(), [Data(1, b"request"), Eof(1), Close(1)])
        self.assertIs(self.successResultOf(opened), opener)
        peer.feed(Close(1))
        self.assertEqual(peer.tunnel.streamCount, 0)
        peer.end()

    def test_finalFlagIgnored(self) -> None:
        """On version 1 a CLOSE's flags mean nothing: it is answered as ever."""
        peer = Raw(isClient=False, version=1)
        peer.feed(Open(1, "10.0.0.7", 80))
        peer.handler.accept(Recorder())
        peer.sent()
        peer.feed(Eof(1), Close(1, final=True))
        self.assertEqual(peer.sent(), [Close(1)])
        self.assertEqual(peer.tunnel.streamCount, 0)
        peer.end()


class AcceptorVersion2Tests(TunnelTestCase):
    """The acceptor's side, fed hand-made frames by a version 2 peer."""

    def accepting(self) -> Raw:
        peer = Raw(isClient=False, version=2)
        self.assertTrue(peer.tunnel.earlyOpens)
        return peer

    def test_overdrawnBeforeOpenOk(self) -> None:
        """
        Early DATA beyond the window the acceptor announced is a
        FLOW_CONTROL_ERROR, as after OPEN_OK: what it holds for an open under
        way is bounded by that window.
        """
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80), Data(1, b"x" * SMALL_WINDOW), Data(1, b"one too many"))
        self.assertGoAway(peer.sent(), ErrorCode.FLOW_CONTROL_ERROR)
        peer.end()

    def test_windowBeforeOpenOk(self) -> None:
        """The acceptor sent no DATA yet: a WINDOW for it is still a protocol error."""
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80), Window(1, 10))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        peer.end()

    def test_dataAfterEarlyEof(self) -> None:
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80), Eof(1), Data(1, b"late"))
        self.assertGoAway(peer.sent(), ErrorCode.PROTOCOL_ERROR)
        peer.end()

    def test_resetBeforeOpenOk(self) -> None:
        """
        A RESET before OPEN_OK drops the early data, cancels the open, and is
        answered with CLOSE; a CLOSE does the same (it abandons the open).
        """
        for end in (Reset(1, ErrorCode.CANCEL, "gone"), Close(1)):
            peer = self.accepting()
            peer.feed(Open(1, "10.0.0.7", 80), Data(1, b"dropped"), Eof(1), end)
            self.assertEqual(len(peer.handler.cancelled), 1, end)
            self.assertEqual(peer.sent(), [Close(1)], end)
            self.assertEqual(peer.tunnel.streamCount, 0, end)
            self.assertFalse(peer.transport.disconnecting, end)
            peer.end()

    def test_finalCloseNotAnswered(self) -> None:
        """
        A CLOSE FINAL from the peer (which had our EOF) is not answered: both
        ends forget the stream, and frames crossing it are ignored.
        """
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80))
        acceptor = HalfCloser()
        peer.handler.accept(acceptor)
        streamOf(acceptor).write(b"answer")
        streamOf(acceptor).loseWriteConnection()
        self.assertEqual(peer.sent(), [OpenOk(1), Data(1, b"answer"), Eof(1)])
        peer.feed(Close(1, final=True))
        self.assertEqual(peer.sent(), [])
        self.assertEqual(peer.tunnel.streamCount, 0)
        self.assertEqual(
            acceptor.events,
            ["connectionMade", "writeConnectionLost", "readConnectionLost", "connectionLost"],
        )
        peer.feed(Window(1, 6), Close(1))  # crossing: ignored
        self.assertFalse(peer.transport.disconnecting)
        peer.end()

    def test_finalCloseSent(self) -> None:
        """
        Closing after the peer's EOF sends one CLOSE FINAL, no EOF ahead of
        it, and forgets the stream at once: no answer is awaited.
        """
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80), Data(1, b"question"), Eof(1))
        acceptor = HalfCloser()
        peer.handler.accept(acceptor)
        streamOf(acceptor).write(b"answer")
        streamOf(acceptor).loseWriteConnection()
        self.assertEqual(peer.sent(), [OpenOk(1), Data(1, b"answer"), Close(1, final=True)])
        self.assertEqual(peer.tunnel.streamCount, 0)
        stream = streamOf(acceptor)
        self.assertIs(stream.receiving, Receiving.ENDED)
        peer.feed(Close(1))  # an old-style answer, or a crossing CLOSE: ignored
        self.assertFalse(peer.transport.disconnecting)
        peer.end()

    def test_refusedEarlyOpenForgotten(self) -> None:
        """A refusal forgets the id: DATA and EOF still in flight are ignored."""
        peer = self.accepting()
        peer.feed(Open(1, "10.0.0.7", 80), Data(1, b"a"))
        peer.handler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "refused"))
        self.assertEqual(peer.sent(), [OpenFail(1, OpenFailReason.REFUSED, "refused")])
        peer.feed(Data(1, b"b"), Eof(1))
        self.assertFalse(peer.transport.disconnecting)
        self.assertEqual(peer.tunnel.streamCount, 0)
        peer.end()


# -- a version 2 acceptor, fed whatever a peer may send --------------------------

_events = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 2)),
        st.tuples(
            st.just("data"),
            st.integers(0, 2),
            # the window's edges: a few frames fill it, or pass it by a byte
            st.sampled_from([0, 1, 4096, SMALL_WINDOW // 2, SMALL_WINDOW // 2 + 1, SMALL_WINDOW]),
        ),
        st.tuples(st.just("eof"), st.integers(0, 2)),
        st.tuples(st.just("close"), st.integers(0, 2), st.booleans()),
        st.tuples(st.just("reset"), st.integers(0, 2)),
        st.tuples(st.just("window"), st.integers(0, 2)),
        st.tuples(st.just("accept"), st.integers(0, 2)),
        st.tuples(st.just("refuse"), st.integers(0, 2)),
        st.tuples(st.just("read"), st.integers(0, 2)),
    ),
    max_size=30,
)


class AcceptorPropertyTests(TunnelTestCase):
    @settings(max_examples=200, deadline=None)
    @given(events=_events)
    def test_anySequence(self, events: list[tuple[Any, ...]]) -> None:
        """
        Whatever a version 2 peer sends on up to three streams, before or
        after each is accepted or refused: the acceptor never raises, logs
        no error, holds at most the window it granted per stream, delivers
        each stream's bytes in order to its protocol, and either stays up or
        ends with one GOAWAY for a protocol or flow-control error; and if
        every frame was certainly legal (by a conservative model of the
        rules: DATA and EOF before OPEN_OK included), it stays up.
        """
        peer = Raw(isClient=False, version=2)
        ids = [1, 3, 5]
        opened: list[int] = []
        sent: dict[int, bytes] = {i: b"" for i in ids}
        protocols: dict[int, Recorder] = {}
        counter = 0
        # the model: what the peer has said on each stream, and whether all
        # of it was certainly legal
        received: dict[int, int] = {i: 0 for i in ids}
        eofs: set[int] = set()
        ends: set[int] = set()
        refused: set[int] = set()
        legal = True
        with capturedLogs() as logged:
            for event in events:
                if peer.transport.disconnecting:
                    break
                kind, index = event[0], event[1]
                streamId = ids[index]
                if kind == "open":
                    if streamId not in opened and all(i not in opened for i in ids[index:]):
                        opened.append(streamId)
                        peer.feed(Open(streamId, "10.0.0.7", 80))
                    continue
                if streamId not in opened:
                    continue
                gone = streamId in refused
                if kind == "data":
                    received[streamId] += event[2]
                    ok = received[streamId] <= SMALL_WINDOW and not (eofs | ends) & {streamId}
                    legal = legal and (gone or ok)
                    counter += 1
                    chunk = bytes([counter % 256]) * event[2]
                    sent[streamId] += chunk
                    peer.feed(Data(streamId, chunk))
                elif kind == "eof":
                    legal = legal and (gone or not (eofs | ends) & {streamId})
                    eofs.add(streamId)
                    peer.feed(Eof(streamId))
                elif kind == "close":
                    legal = legal and (gone or streamId not in ends)
                    ends.add(streamId)
                    peer.feed(Close(streamId, final=event[2]))
                elif kind == "reset":
                    legal = legal and (gone or streamId not in ends)
                    ends.add(streamId)
                    peer.feed(Reset(streamId, ErrorCode.CANCEL, "gone"))
                elif kind == "window":
                    accepted = streamId in protocols
                    legal = legal and (gone or (accepted and streamId not in ends))
                    peer.feed(Window(streamId, 1))
                elif kind in ("accept", "refuse"):
                    position = opened.index(streamId)
                    deferred = peer.handler.opens[position][1]
                    if deferred.called:
                        continue
                    if kind == "accept":
                        protocols[streamId] = Recorder(pauseOnConnect=True)
                        peer.handler.accept(protocols[streamId], position)
                    else:
                        refused.add(streamId)
                        peer.handler.fail(StreamOpenFailed(OpenFailReason.REFUSED, "no"), position)
                elif kind == "read" and streamId in protocols:
                    transport = protocols[streamId].transport
                    if transport is not None:
                        transport.resumeProducing()  # type: ignore[attr-defined]
                for stream in peer.tunnel.streams():
                    self.assertLessEqual(stream.bufferedBytes, SMALL_WINDOW)
        problems = [e for e in logged if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(problems, [])
        frames = peer.sent()
        goaways = framesOfType(frames, GoAway)
        if peer.transport.disconnecting:
            self.assertEqual(len(goaways), 1, frames)
            self.assertIn(
                goaways[0].code, (ErrorCode.PROTOCOL_ERROR, ErrorCode.FLOW_CONTROL_ERROR)
            )
            self.assertFalse(legal, f"a legal sequence was refused: {goaways[0].text}")
        else:
            self.assertEqual(goaways, [])
        for streamId, protocol in protocols.items():
            self.assertTrue(sent[streamId].startswith(protocol.received), streamId)
        peer.end()
