"""
Tests for the states of L{twisted_tunnel.mux}: each half of a L{Stream}
(L{Sending}, L{Receiving}) and what its protocol has been told
(L{Delivery}), and a L{Tunnel}'s L{ConnectionState}: the tables of legal
moves, and the states the frames and calls lead to.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import (
    SMALL_WINDOW,
    HalfCloser,
    Recorder,
    TunnelPair,
    frames,
    framesOfType,
    streamOf,
)
from twisted_tunnel import wire
from twisted_tunnel.mux import MOVES, ConnectionState, Delivery, Receiving, Sending, Settings
from twisted_tunnel.mux.states import State
from twisted_tunnel.wire import Close, Eof, ErrorCode, GoAway


def reachable(start: State) -> set[State]:
    """The states C{start} can become, itself included."""
    seen, todo = {start}, [start]
    while todo:
        for following in MOVES[todo.pop()]:
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return seen


class MoveTableTests(SynchronousTestCase):
    """
    The tables of legal moves: every state has its row, every state can
    be reached from the first, and every life can end.
    """

    def test_streamHalves(self) -> None:
        for kind, first, last in (
            (Sending, Sending.OPEN, Sending.ENDED),
            (Receiving, Receiving.OPEN, Receiving.ENDED),
            (Delivery, Delivery.OPEN, Delivery.LOST),
        ):
            self.assertEqual(reachable(first), set(kind))
            self.assertEqual(MOVES[last], frozenset())
            for state in kind:
                self.assertTrue(
                    all(type(s) is kind for s in MOVES[state]), f"{state} leaves its kind"
                )
                if state is not last:
                    self.assertIn(last, reachable(state))

    def test_tunnel(self) -> None:
        self.assertEqual(reachable(ConnectionState.OPEN), set(ConnectionState))
        for gone in (ConnectionState.CLOSED, ConnectionState.LOST):
            self.assertEqual(MOVES[gone], frozenset())
        # what this end begins, ends CLOSED; what it did not begin, LOST
        self.assertNotIn(ConnectionState.LOST, MOVES[ConnectionState.CLOSING])
        self.assertNotIn(ConnectionState.CLOSED, MOVES[ConnectionState.OPEN])


class StreamStateTests(SynchronousTestCase):
    """The states that writes, closes and the peer's frames lead a stream to."""

    def setUp(self) -> None:
        self.pair = TunnelPair(
            clientSettings=Settings(window=SMALL_WINDOW),
            serverSettings=Settings(window=SMALL_WINDOW),
        )
        self.pair.establish()

    def openHalfClosing(self) -> tuple[HalfCloser, HalfCloser]:
        sender, receiver = self.pair.open(
            self.pair.server, HalfCloser(pauseOnConnect=True), HalfCloser()
        )
        return sender, receiver

    def test_queuedBehindTheBacklog(self) -> None:
        """
        EOF and CLOSE asked for while DATA waits for credit are queued, in
        that order, and go out behind the DATA once the peer reads.
        """
        sender, receiver = self.openHalfClosing()
        stream = streamOf(sender)
        stream.write(b"x" * (SMALL_WINDOW + 10))
        self.assertEqual(stream.credit, 0)
        stream.loseWriteConnection()
        self.assertIs(stream.sending, Sending.EOF_QUEUED)
        stream.loseConnection()
        self.assertIs(stream.sending, Sending.EOF_CLOSE_QUEUED)
        stream.loseWriteConnection()  # nothing more to queue
        self.assertIs(stream.sending, Sending.EOF_CLOSE_QUEUED)
        self.pair.pump()
        self.assertEqual(framesOfType(frames(self.pair.serverTransport), Eof), [])

        streamOf(receiver).resumeProducing()
        self.pair.pump()
        self.assertIs(stream.sending, Sending.ENDED)
        self.assertEqual(b"".join(receiver.chunks), b"x" * (SMALL_WINDOW + 10))
        self.assertEqual(
            receiver.events, ["connectionMade", "readConnectionLost", "connectionLost"]
        )
        self.assertEqual(
            sender.events, ["connectionMade", "writeConnectionLost", "connectionLost"]
        )
        self.assertEqual(self.pair.server.streamCount, 0)
        self.assertEqual(self.pair.client.streamCount, 0)

    def test_closeAfterClose(self) -> None:
        """
        After C{loseConnection}, C{loseWriteConnection} sends no EOF ahead of
        the CLOSE: the CLOSE ends our half already.
        """
        sender, receiver = self.openHalfClosing()
        stream = streamOf(sender)
        stream.write(b"x" * (SMALL_WINDOW + 1))
        stream.loseConnection()
        stream.loseWriteConnection()
        self.assertIs(stream.sending, Sending.CLOSE_QUEUED)
        self.pair.pump()
        self.pair.serverToClient = False
        streamOf(receiver).resumeProducing()
        self.pair.pump()
        sent = wire.decodeAll(self.pair.serverTransport.value())
        self.assertEqual(framesOfType(sent, Eof), [])
        self.assertEqual(len(framesOfType(sent, Close)), 1)
        self.assertIs(stream.sending, Sending.ENDED)
        self.pair.serverToClient = True
        self.pair.pump()
        self.assertEqual(receiver.events, ["connectionMade", "connectionLost"])

    def test_halfClosedBothWays(self) -> None:
        """
        Each half ends on its own: EOF sent leaves the stream readable, and
        the peer's EOF after it ends the stream with CLOSE both ways.
        """
        sender, receiver = self.openHalfClosing()
        stream, peer = streamOf(sender), streamOf(receiver)
        peer.resumeProducing()
        stream.loseWriteConnection()
        self.pair.pump()
        self.assertIs(stream.sending, Sending.EOF_SENT)
        self.assertIs(stream.receiving, Receiving.OPEN)
        self.assertIs(peer.receiving, Receiving.EOF)
        self.assertIs(peer.sending, Sending.OPEN)
        peer.write(b"answer")
        peer.loseWriteConnection()
        self.pair.pump()
        self.assertEqual(sender.chunks, [b"answer"])
        for end in (stream, peer):
            self.assertIs(end.sending, Sending.ENDED)
            self.assertIs(end.receiving, Receiving.ENDED)
        self.assertEqual(self.pair.server.streamCount, 0)

    def test_resetByPeer(self) -> None:
        """A RESET ends both halves at once, whatever was buffered."""
        sender, receiver = self.pair.open(self.pair.server, Recorder(pauseOnConnect=True))
        stream, peer = streamOf(sender), streamOf(receiver)
        stream.write(b"held")
        self.pair.pump()
        self.assertEqual(peer.bufferedBytes, 4)
        stream.abortConnection()
        self.assertIs(stream.sending, Sending.ENDED)
        self.assertIs(stream.receiving, Receiving.OPEN)
        self.pair.pump()
        self.assertIs(peer.receiving, Receiving.ENDED)
        self.assertIs(peer.sending, Sending.ENDED)
        self.assertIs(stream.receiving, Receiving.ENDED)
        self.assertEqual(peer.bufferedBytes, 0)
        self.assertEqual(receiver.chunks, [])

    def test_tunnelLost(self) -> None:
        """The connection's end ends every stream's halves."""
        sender, _ = self.pair.open(self.pair.server, Recorder())
        stream = streamOf(sender)
        self.pair.lose(Failure(ConnectionDone()))
        self.assertIs(stream.sending, Sending.ENDED)
        self.assertIs(stream.receiving, Receiving.ENDED)
        self.assertIsNotNone(sender.lostReason)


class ConnectionStateTests(SynchronousTestCase):
    """The states that drain, close, the peer's GOAWAY and errors lead a tunnel to."""

    def setUp(self) -> None:
        self.pair = TunnelPair()
        self.pair.establish()

    def test_drained(self) -> None:
        """
        Draining with a stream open: DRAINING until it ends, then CLOSING,
        then CLOSED here and LOST on the peer, which did not close it.
        """
        server, client = self.pair.server, self.pair.client
        sender, _ = self.pair.open(server, Recorder())
        server.drain()
        self.assertIs(server.state, ConnectionState.DRAINING)
        self.pair.pump()
        self.assertIs(client.state, ConnectionState.DRAINING)
        self.assertFalse(server.closing)
        streamOf(sender).loseConnection()
        self.pair.pump()
        self.assertIs(server.state, ConnectionState.CLOSED)
        self.assertTrue(server.closing)
        self.assertIs(client.state, ConnectionState.CLOSED)  # it drained too, and closed first

    def test_closedByPeer(self) -> None:
        """
        A peer's graceful close: this end drains in turn and closes too, so
        both are CLOSED.
        """
        self.pair.client.close(ErrorCode.NO_ERROR, "bye")
        self.assertIs(self.pair.client.state, ConnectionState.CLOSING)
        self.pair.pump()
        self.assertIs(self.pair.client.state, ConnectionState.CLOSED)
        self.assertIs(self.pair.server.state, ConnectionState.CLOSED)

    def test_lost(self) -> None:
        """A connection that drops under both ends leaves them LOST, never closing."""
        self.pair.lose(Failure(ConnectionDone()))
        for end in (self.pair.client, self.pair.server):
            self.assertIs(end.state, ConnectionState.LOST)
            self.assertFalse(end.closing)
            self.assertFalse(end.established)

    def test_failed(self) -> None:
        """
        A protocol error, even during a graceful close, is FAILED: nothing
        more is read, and one GOAWAY only is sent.
        """
        server = self.pair.server
        server.close(ErrorCode.NO_ERROR, "bye")
        self.assertIs(server.state, ConnectionState.CLOSING)
        server.dataReceived(b"\xff" * 64)  # not a frame
        self.assertIs(server.state, ConnectionState.FAILED)
        sent = frames(self.pair.serverTransport)
        self.assertEqual([g.code for g in framesOfType(sent, GoAway)], [ErrorCode.NO_ERROR])
        server.dataReceived(Close(1).encode())  # read no more: no error about it
        self.assertEqual(frames(self.pair.serverTransport), [])
        self.pair.lose(Failure(ConnectionDone()))
        self.assertIs(server.state, ConnectionState.CLOSED)

    def test_peersErrorGoAway(self) -> None:
        """The peer's GOAWAY with an error: FAILED, and this end closes it."""
        self.pair.client.close(ErrorCode.PROTOCOL_ERROR, "no")
        self.assertIs(self.pair.client.state, ConnectionState.FAILED)
        self.pair.server.dataReceived(takeBytes(self.pair.clientTransport))
        self.assertIs(self.pair.server.state, ConnectionState.FAILED)
        self.assertTrue(self.pair.server.closing)


def takeBytes(transport: StringTransport) -> bytes:
    value: bytes = transport.value()
    transport.clear()
    return value
