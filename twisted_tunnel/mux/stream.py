# -*- test-case-name: tests.mux.test_mux -*-
"""
One stream inside a tunnel, as a Twisted transport (L{Stream}), and the stand-in for
frames that arrive for a stream already gone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import wire
from ..net.transports import ITunnelStream
from ..wire import ErrorCode, ProtocolError
from .interfaces import IStreamCarrier, TunnelAddress
from .states import (
    DELIVERY_EOF,
    DELIVERY_LOST,
    DELIVERY_OPEN,
    MOVES,
    RECEIVING_ENDED,
    RECEIVING_EOF,
    RECEIVING_OPEN,
    SENDING_CLOSE_QUEUED,
    SENDING_ENDED,
    SENDING_EOF_CLOSE_QUEUED,
    SENDING_EOF_QUEUED,
    SENDING_EOF_SENT,
    SENDING_OPEN,
    SENDING_RESET_QUEUED,
    Delivery,
    Receiving,
    Sending,
    State,
)

_QUEUED = frozenset(
    {SENDING_EOF_QUEUED, SENDING_EOF_CLOSE_QUEUED, SENDING_CLOSE_QUEUED, SENDING_RESET_QUEUED}
)


@implementer(ITransport, IConsumer, IPushProducer, ITunnelStream)
class Stream:
    """
    One stream of a L{Tunnel}, seen by its protocol as its transport.

    The life of a stream, from this side:

     - C{write} sends DATA while credit lasts, then keeps a backlog and
       pauses whoever produces into it;
     - C{loseWriteConnection} sends EOF once the backlog is out;
     - C{loseConnection} sends CLOSE once the backlog is out;
     - C{abortConnection} sends RESET at once and drops the backlog.

    Each half has a state of its own (L{Sending}, L{Receiving}), and so
    has what the protocol has been told (L{Delivery}); every change of
    them goes through L{_move}, which asserts it against L{MOVES}.
    The stream id is forgotten when both halves have I{ENDED}.

    The methods under "for the tunnel" are how L{Tunnel} (an
    L{IStreamCarrier}) hands the stream its frames; the stream answers
    through the carrier's methods.  Neither touches the other's fields.
    """

    # Slots, not a dict: a stream's fields are read on every frame, and
    # CPython 3.11 reads a dict's more slowly once an instance has more than
    # 29 fields (its values are no longer kept inline), which a stream has.
    # Slots are read as fast whatever their number, and take less memory.
    __slots__ = (
        "_tunnel",
        "streamId",
        "_address",
        "protocol",
        "disconnecting",
        "label",
        "bytesSent",
        "bytesReceived",
        "_sending",
        "_receiving",
        "_delivery",
        "_credit",
        "_backlog",
        "_backlogOffset",
        "_backlogSize",
        "_producer",
        "_streamingProducer",
        "_producerPaused",
        "_pulling",
        "_pullAgain",
        "_window",
        "_received",
        "_receivedSize",
        "_consumed",
        "_paused",
        "_heldCredit",
        "_remoteReset",
        "_calling",
        "_lossPending",
        "queuedToSend",
        "budgeted",
        "opening",
        "_earlyEof",
        "_peerFinal",
    )

    def __init__(
        self, tunnel: IStreamCarrier, streamId: int, address: TunnelAddress, window: int
    ) -> None:
        """
        @param window: the bytes of DATA we accept before our first WINDOW:
            granted from the start, since the peer may send DATA right
            behind its OPEN_OK (even to an open we have abandoned).
        """
        self._tunnel = tunnel
        self.streamId = streamId
        self._address = address
        self.protocol: IProtocol | None = None
        self.disconnecting = False
        #: what opened it, for metrics: a policy's name, or a front door's
        #: (L{twisted_tunnel.server.NodeEndpoint} sets it)
        self.label = "other"
        #: DATA bytes sent and received: plain counts, read when metrics are scraped
        self.bytesSent = 0
        self.bytesReceived = 0
        self._sending = SENDING_OPEN
        self._receiving = RECEIVING_OPEN
        self._delivery = DELIVERY_OPEN

        # outbound
        self._credit = 0
        self._backlog: deque[bytes] = deque()
        self._backlogOffset = 0  # how much of the first chunk has been sent
        self._backlogSize = 0
        self._producer: Any = None
        self._streamingProducer = False
        self._producerPaused = False
        self._pulling = False
        self._pullAgain = False

        # inbound
        self._window = window
        self._received: deque[bytes] = deque()
        self._receivedSize = 0
        self._consumed = 0
        self._paused = False
        self._heldCredit = 0
        self._remoteReset: tuple[int, str] | None = None
        self._calling = 0
        self._lossPending: Failure | None = None
        #: in the carrier's queue of streams waiting for the connection (it
        #: sets and clears this)
        self.queuedToSend = False
        #: bytes reserved in the tunnel's L{StreamBudget}, while admitted
        self.budgeted = 0
        #: our OPEN is not answered yet (the tunnel sets and clears this):
        #: a CLOSE now would abandon the open, so it waits for OPEN_OK
        self.opening = False
        #: whether the peer takes EOF before OPEN_OK (protocol version 2)
        self._earlyEof = False
        #: the peer's CLOSE was FINAL: it forgot the stream, and is not answered
        self._peerFinal = False

    def __repr__(self) -> str:
        return f"<Stream {self.streamId} {self._address.host}:{self._address.port}>"

    @property
    def sending(self) -> Sending:
        """Our half's state."""
        return self._sending

    @property
    def receiving(self) -> Receiving:
        """The peer's half's state."""
        return self._receiving

    @property
    def ended(self) -> bool:
        """Whether both halves have ended: the id can be forgotten."""
        return self._sending is SENDING_ENDED and self._receiving is RECEIVING_ENDED

    @property
    def credit(self) -> int:
        """Bytes of DATA the peer lets us send before its next WINDOW."""
        return self._credit

    def _move(self, new: State) -> None:
        """
        The one place a state changes: C{new} is a L{Sending}, L{Receiving}
        or L{Delivery} member, and must be a legal move from the current one.
        """
        if isinstance(new, Sending):
            old: State = self._sending
            self._sending = new
        elif isinstance(new, Receiving):
            old = self._receiving
            self._receiving = new
        else:
            assert isinstance(new, Delivery), new
            old = self._delivery
            self._delivery = new
        assert new in MOVES[old], f"{self!r}: {type(new).__name__} {old.name} -> {new.name}"

    # -- ITransport ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._sending is not SENDING_OPEN or not data:
            return
        self._queue(data)
        self._flush()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close the stream once everything written so far has been sent.
        """
        sending = self._sending
        if sending is SENDING_OPEN or sending is SENDING_EOF_SENT:
            self._move(SENDING_CLOSE_QUEUED)
        elif sending is SENDING_EOF_QUEUED:
            self._move(SENDING_EOF_CLOSE_QUEUED)
        else:
            return  # a CLOSE is on its way, or the stream has ended
        self.disconnecting = True
        self._flush()

    def loseWriteConnection(self) -> None:
        """
        Half-close: send EOF once the backlog is out; reading goes on.
        After C{loseConnection}, nothing: the CLOSE on its way ends our
        half already.
        """
        if self._sending is not SENDING_OPEN:
            return
        self._move(SENDING_EOF_QUEUED)
        self._flush()

    def abortConnection(self) -> None:
        """
        Reset the stream now, dropping whatever has not been sent.
        """
        self.reset(ErrorCode.CANCEL, "aborted")

    def abortWhenSent(self) -> None:
        """
        Reset the stream once what was written to it has been sent: how a
        relay passes on a reset that came after data, as TCP would (the
        data, then the RST).  C{abortConnection} drops the backlog instead.
        """
        sending = self._sending
        if sending is SENDING_ENDED or sending is SENDING_RESET_QUEUED:
            return
        if sending is SENDING_EOF_SENT or not self._backlog:
            self.abortConnection()
            return
        self._move(SENDING_RESET_QUEUED)
        self.disconnecting = True
        self._flush()

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Nothing to do: the tunnel's own socket sends small writes at once
        already.  twisted.web's HTTP client asks this of any TLS transport,
        and TLS asks the stream below it.
        """

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Nothing to do: the tunnel's keepalive covers every stream."""

    def getTcpKeepAlive(self) -> bool:
        return True

    def getPeer(self) -> TunnelAddress:
        return self._address

    def getHost(self) -> TunnelAddress:
        return TunnelAddress(self._tunnel.nodeName, "stream", self.streamId)

    # -- IConsumer -----------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self._producer = producer
        self._streamingProducer = streaming
        self._producerPaused = False
        if self._sending is SENDING_ENDED:
            producer.stopProducing()
        elif not streaming:
            if not self._backlog:
                self._resumeProducer()
        elif self._backlog:
            self._pauseProducer()

    def unregisterProducer(self) -> None:
        self._producer = None

    # -- IPushProducer (for whoever consumes what this stream receives) -----

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._deliverReceived()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- for the tunnel ------------------------------------------------------

    def attach(self, protocol: IProtocol, credit: int) -> None:
        """
        The open succeeded: C{protocol} owns the stream from now on, and
        may send C{credit} bytes before the peer's first WINDOW.
        """
        self.protocol = protocol
        self._credit = credit
        self._call(protocol.makeConnection, self)
        self._deliverReceived()

    def attachEarly(self, protocol: IProtocol, credit: int, *, earlyEof: bool) -> None:
        """
        Our OPEN was just sent and C{protocol} owns the stream already (an
        L{IEarlyStreamFactory<twisted_tunnel.mux.interfaces.IEarlyStreamFactory>}'s):
        it may send C{credit} bytes before OPEN_OK (the peer's whole window
        on a version 2 connection, nothing on a version 1 one) and, if
        C{earlyEof}, its EOF too.  A CLOSE waits for OPEN_OK either way.
        """
        self.opening = True
        self._earlyEof = earlyEof
        self.attach(protocol, credit)

    def openAccepted(self, credit: int) -> None:
        """
        OPEN_OK for a stream attached early: C{credit} more bytes may go
        (what a version 1 peer did not grant before), and so may whatever
        waited for the answer.
        """
        self.opening = False
        self._credit += credit
        if self._sending is not SENDING_ENDED:
            self._flush()

    def openEnded(self, reason: Failure) -> None:
        """
        The peer ended a stream attached early before answering its OPEN
        (a CLOSE or RESET): answer with CLOSE if our half is still going,
        and tell the protocol the open failed (C{reason}).
        """
        self.opening = False
        self._move(RECEIVING_ENDED)
        self._received.clear()
        self._receivedSize = 0
        self._answerPeersEnd()
        self._lose(reason)
        self._tunnel.streamEnded(self)

    def attachEnded(self, protocol: IProtocol, reason: Failure) -> None:
        """
        C{protocol} arrived after the stream ended (the peer gave up, or the
        tunnel went, while it was being built): it must hear of the end
        itself, or it would never let go of what it holds (a relay's
        target connection).
        """
        self._call(protocol.makeConnection, self)
        self._call(protocol.connectionLost, reason)

    def resumeSending(self) -> None:
        """The connection has room again: send what credit allows."""
        self._flush()

    def reset(self, code: ErrorCode, text: str, reason: Failure | None = None) -> None:
        """
        End the stream now with RESET C{code}, dropping what either
        direction holds.

        @param reason: what the protocol is told (by default, that the
            stream was reset): an early stream's open that timed out.
        """
        if self._sending is SENDING_ENDED:
            return
        self._move(SENDING_ENDED)
        self.disconnecting = True
        self._dropBacklog()
        self._received.clear()
        self._receivedSize = 0
        self._tunnel.sendFrame(wire.Reset(self.streamId, code, text))
        self._lose(reason or Failure(ConnectionLost(f"stream reset: {text}")))
        self._tunnel.streamEnded(self)

    def creditArrived(self, increment: int) -> None:
        """A WINDOW frame: the peer took C{increment} bytes."""
        if self._sending is SENDING_ENDED:
            return
        if self._credit + increment > 2**31 - 1:
            raise ProtocolError(
                f"WINDOW on stream {self.streamId} overflows the window",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._credit += increment
        if self._backlog or self._sending in _QUEUED:
            self._flush()

    def dataArrived(self, data: bytes) -> None:
        """A DATA frame for this stream."""
        size = len(data)
        if self._receiving is not RECEIVING_OPEN:
            raise ProtocolError(f"DATA on stream {self.streamId} after EOF")
        if size > self._window:
            raise ProtocolError(
                f"{size} bytes of DATA on stream {self.streamId} exceed its window of "
                f"{self._window}",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._window -= size
        self.bytesReceived += size
        if self._sending is SENDING_ENDED or self._delivery is DELIVERY_LOST:
            return
        self._received.append(data)
        self._receivedSize += size
        self._deliverReceived()

    def eofArrived(self) -> None:
        """An EOF frame: the peer writes no more."""
        if self._receiving is not RECEIVING_OPEN:
            raise ProtocolError(f"second EOF on stream {self.streamId}")
        self._move(RECEIVING_EOF)
        self._deliverReceived()

    def endArrived(self, reset: tuple[int, str] | None, final: bool = False) -> None:
        """
        A CLOSE (C{reset} is C{None}) or a RESET (its code and text): the
        peer is done with the stream.  Its protocol hears of it once
        everything before has been delivered (a RESET drops that); a stream
        with no protocol yet (an open under way) is answered at once.

        @param final: a CLOSE FINAL (version 2): the peer forgot the stream
            as it sent it, so it is not answered.
        """
        if self._receiving is RECEIVING_ENDED:
            raise ProtocolError(f"second CLOSE or RESET on stream {self.streamId}")
        self._move(RECEIVING_ENDED)
        self._peerFinal = final
        if reset is not None:
            self._remoteReset = reset
            self._received.clear()
            self._receivedSize = 0
        if self.protocol is None:
            self._answerPeersEnd()
        else:
            self._deliverReceived()
        self._tunnel.streamEnded(self)

    def openRefused(self, reason: Failure | None = None) -> None:
        """
        The peer answered our OPEN with OPEN_FAIL: the stream never was, and
        both halves are over without a frame more.  A protocol attached
        early is told why (C{reason}); what it wrote is dropped.
        """
        self.opening = False
        if self._sending is not SENDING_ENDED:
            self._move(SENDING_ENDED)
        self._move(RECEIVING_ENDED)
        self.disconnecting = True
        self._dropBacklog()
        if reason is not None:
            self._lose(reason)

    def tunnelLost(self, reason: Failure) -> None:
        """The connection under the stream is gone."""
        if self._sending is not SENDING_ENDED:
            self._move(SENDING_ENDED)
        if self._receiving is not RECEIVING_ENDED:
            self._move(RECEIVING_ENDED)
        self._dropBacklog()
        self._lose(reason)

    # -- sending -------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._backlog.append(data)
        self._backlogSize += len(data)

    def _flush(self) -> None:
        """
        Send what credit and the connection allow; then EOF or CLOSE if they
        are due; then pause or resume our producer to match the backlog.
        """
        tunnel = self._tunnel
        maxFrame = tunnel.sendMaxFrame
        while self._backlog and self._credit > 0 and tunnel.maySend():
            # Take a frame's worth off the front without copying the rest of
            # a large write each time (that is quadratic in the write's size).
            head, offset = self._backlog[0], self._backlogOffset
            size = min(len(head) - offset, self._credit, maxFrame)
            chunk = head if offset == 0 and size == len(head) else head[offset : offset + size]
            if offset + size == len(head):
                self._backlog.popleft()
                self._backlogOffset = 0
            else:
                self._backlogOffset = offset + size
            self._backlogSize -= size
            self._credit -= size
            self.bytesSent += size
            tunnel.sendData(self.streamId, chunk)
        # what the peer lets us send is never overdrawn, and what we hold is
        # what we were given and have not sent
        assert self._credit >= 0 and self._backlogSize >= 0, (self._credit, self._backlogSize)
        if self._backlog:
            if self._credit > 0:
                tunnel.wantsToSend(self)
            self._pauseProducer()
            return
        sending = self._sending
        if sending is SENDING_EOF_QUEUED or sending is SENDING_EOF_CLOSE_QUEUED:
            if self.opening and not self._earlyEof:
                return  # a version 1 peer takes EOF only after OPEN_OK
            self._sendEof()
            sending = self._sending
        if sending is SENDING_CLOSE_QUEUED:
            if self.opening:
                return  # a CLOSE before OPEN_OK would abandon the open
            self._sendClose()
            return
        if sending is SENDING_RESET_QUEUED:
            self.abortConnection()
            return
        self._resumeProducer()

    def _pauseProducer(self) -> None:
        if self._producer is not None and self._streamingProducer and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _resumeProducer(self) -> None:
        if self._producer is None or self._sending is SENDING_ENDED:
            return
        if self._streamingProducer:
            if self._producerPaused:
                self._producerPaused = False
                self._producer.resumeProducing()
            return
        # A pull producer writes from inside resumeProducing, and that write
        # lands here again: ask it again in a loop, not by recursion, or a
        # large window of small writes overflows the stack.
        if self._pulling:
            self._pullAgain = True
            return
        self._pulling = True
        try:
            self._pullAgain = True
            while (
                self._pullAgain
                and self._producer is not None
                and self._sending is not SENDING_ENDED
            ):
                self._pullAgain = False
                self._producer.resumeProducing()
        finally:
            self._pulling = False

    def _sendEof(self) -> None:
        closeNext = self._sending is SENDING_EOF_CLOSE_QUEUED
        # both ways are done once the peer's EOF is delivered: nothing more
        # can pass, and our CLOSE goes at once.  A FINAL one (version 2)
        # carries our EOF too (the peer tells its protocol of it): then an
        # EOF ahead of it would be a frame for nothing.
        bothDone = self._delivery is DELIVERY_EOF
        self._move(SENDING_CLOSE_QUEUED if closeNext else SENDING_EOF_SENT)
        if not (bothDone and self._tunnel.finalClose):
            self._tunnel.sendFrame(wire.Eof(self.streamId))
        protocol = self.protocol
        if IHalfCloseableProtocol.providedBy(protocol):
            self._call(protocol.writeConnectionLost)
        if bothDone:
            self._sendClose()

    def _sendClose(self) -> None:
        if self._sending is SENDING_ENDED:
            return
        self._move(SENDING_ENDED)
        self.disconnecting = True
        self._dropBacklog()
        # After the peer's EOF, the peer sends nothing more that matters
        # (a WINDOW, a RESET crossing this CLOSE): with version 2 the CLOSE
        # says so, the peer does not answer it, and both forget the stream.
        final = self._receiving is RECEIVING_EOF and self._tunnel.finalClose
        self._tunnel.sendFrame(wire.Close(self.streamId, final))
        if final:
            self._move(RECEIVING_ENDED)
        self._lose(Failure(ConnectionDone("stream closed")))
        self._tunnel.streamEnded(self)

    def _dropBacklog(self) -> None:
        self._backlog.clear()
        self._backlogOffset = 0
        self._backlogSize = 0

    # -- receiving -----------------------------------------------------------

    def _deliverReceived(self) -> None:
        """
        Hand buffered data to the protocol while it is not paused, return
        credit for what it took, then report EOF, CLOSE or RESET once
        everything before them has been delivered.
        """
        protocol = self.protocol
        if protocol is None or self._delivery is DELIVERY_LOST:
            return
        if self._remoteReset is not None:
            # a RESET drops whatever is buffered: it need not wait for a
            # paused consumer, which might never resume
            code, text = self._remoteReset
            self._answerPeersEnd()
            self._lose(
                Failure(ConnectionLost(f"stream reset by peer ({ErrorCode.named(code)}): {text}"))
            )
            return
        while self._received and not self._paused and self._delivery is not DELIVERY_LOST:
            data = self._received.popleft()
            self._receivedSize -= len(data)
            self._call(protocol.dataReceived, data)
            if not self._paused:
                self._consumed += len(data)
            else:
                # the consumer pushed back while taking these bytes: they
                # count as consumed only when it asks for more.
                self._heldCredit += len(data)
        if self._paused or self._received or self._delivery is DELIVERY_LOST:
            return
        self._returnCredit()
        receiving = self._receiving
        if receiving is RECEIVING_ENDED:
            self._answerPeersEnd()
            if self._peerFinal and self._delivery is DELIVERY_OPEN:
                # A FINAL CLOSE carries the peer's EOF (it sends none ahead
                # of it: see _sendEof): told first, as TCP tells a FIN on a
                # connection we had half-closed, then the end.
                self._move(DELIVERY_EOF)
                if IHalfCloseableProtocol.providedBy(protocol):
                    self._call(protocol.readConnectionLost)
            self._lose(Failure(ConnectionDone("stream closed by peer")))
            return
        if receiving is RECEIVING_EOF and self._delivery is DELIVERY_OPEN:
            self._move(DELIVERY_EOF)
            if IHalfCloseableProtocol.providedBy(protocol):
                self._call(protocol.readConnectionLost)
                if self._sending is SENDING_EOF_SENT:
                    self._sendClose()
            else:
                self.loseConnection()

    def _returnCredit(self) -> None:
        """
        Give the peer back, in one WINDOW, what the protocol has consumed,
        once that is a quarter of the window: the peer is never owed more
        than a window, and never gets more than one.
        """
        self._consumed += self._heldCredit
        self._heldCredit = 0
        if self._receiving is not RECEIVING_OPEN or self._sending is SENDING_ENDED:
            return
        window = self._tunnel.settings.window
        if self._consumed and self._consumed * 4 >= window:
            increment, self._consumed = self._consumed, 0
            self._window += increment
            assert self._window <= window, (self._window, window)
            self._tunnel.sendFrame(wire.Window(self.streamId, increment))

    def _answerPeersEnd(self) -> None:
        """
        The peer ended the stream: answer with our CLOSE if we have not
        ended it (and the peer's was not FINAL: it forgot the stream).
        """
        if self._sending is not SENDING_ENDED:
            self._move(SENDING_ENDED)
            self.disconnecting = True
            self._dropBacklog()
            if not self._peerFinal:
                self._tunnel.sendFrame(wire.Close(self.streamId))
            self._tunnel.streamEnded(self)

    # -- the protocol's end --------------------------------------------------

    def _lose(self, reason: Failure) -> None:
        """Tell the protocol, once, that the stream is over."""
        if self._delivery is DELIVERY_LOST:
            return
        self._move(DELIVERY_LOST)
        self._received.clear()
        self._receivedSize = 0
        producer, self._producer = self._producer, None
        if producer is not None and self._streamingProducer:
            producer.stopProducing()
        protocol = self.protocol
        if protocol is None:
            return
        if self._calling:
            # The protocol is still inside one of its own methods (it closed
            # or aborted its stream from dataReceived, say): like TCP, tell it
            # only once it has returned.  TLSMemoryBIOProtocol, run over a
            # stream, depends on that.
            self._lossPending = reason
            return
        self._call(protocol.connectionLost, reason)

    def _call(self, f: Callable[..., object], *args: object) -> None:
        """
        Call into the stream's protocol; a bug there resets this stream only.
        """
        self._calling += 1
        try:
            f(*args)
        except Exception:
            self._tunnel.log.failure(
                "stream {stream} protocol raised; resetting the stream", stream=self.streamId
            )
            self.reset(ErrorCode.INTERNAL_ERROR, "application error")
            if f != getattr(self.protocol, "connectionLost", None):
                self._lose(Failure())
        finally:
            self._calling -= 1
        pending = self._lossPending
        if pending is not None and not self._calling:
            self._lossPending = None
            protocol = self.protocol
            assert protocol is not None
            self._call(protocol.connectionLost, pending)

    @property
    def peerFinished(self) -> bool:
        """
        Whether the peer has ended its side (EOF, CLOSE or RESET received),
        delivered to the protocol yet or not (a paused consumer has not
        seen it).
        """
        return self._receiving is not RECEIVING_OPEN

    @property
    def bufferedBytes(self) -> int:
        """Bytes held for this stream, both directions (for tests and metrics)."""
        return self._backlogSize + self._receivedSize


class _IgnoredStream(Stream):
    """Stands in for a stream that ended while frames for it were in flight."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    def dataArrived(self, data: bytes) -> None:
        pass

    def eofArrived(self) -> None:
        pass

    def creditArrived(self, increment: int) -> None:
        pass

    def endArrived(self, reset: tuple[int, str] | None, final: bool = False) -> None:
        pass


_IGNORED = _IgnoredStream()
