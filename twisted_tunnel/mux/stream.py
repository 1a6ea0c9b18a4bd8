# -*- test-case-name: tests.test_mux -*-
"""
One stream inside a tunnel, as a Twisted transport (L{Stream}), and the stand-in for
frames that arrive for a stream already gone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from .interfaces import TunnelAddress

if TYPE_CHECKING:
    from .tunnel import Tunnel


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

    The stream id is forgotten when we have both sent and received a
    CLOSE or RESET.
    """

    disconnecting = False

    #: what opened it, for metrics: a policy's name, or a front door's
    #: (L{twisted_tunnel.server.NodeEndpoint} sets it)
    label = "other"

    def __init__(self, tunnel: Tunnel, streamId: int, address: TunnelAddress) -> None:
        self._tunnel = tunnel
        self.streamId = streamId
        self._address = address
        self.protocol: IProtocol | None = None
        #: DATA bytes sent and received: plain counts, read when metrics are scraped
        self.bytesSent = 0
        self.bytesReceived = 0

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
        self._eofPending = False
        self._closePending = False
        self._sentEof = False
        self._sentTerminal = False

        # inbound
        self._window = 0
        self._received: deque[bytes] = deque()
        self._receivedSize = 0
        self._consumed = 0
        self._paused = False
        self._gotEof = False
        self._gotTerminal = False
        self._eofDelivered = False
        self._heldCredit = 0
        self._remoteReset: tuple[int, str] | None = None
        self._lost = False
        self._calling = 0
        self._lossPending: Failure | None = None
        self.queuedToSend = False
        #: bytes reserved in the tunnel's L{StreamBudget}, while admitted
        self.budgeted = 0

    def __repr__(self) -> str:
        return f"<Stream {self.streamId} {self._address.host}:{self._address.port}>"

    # -- ITransport ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closePending or self._eofPending or self._sentEof or self._sentTerminal:
            return
        if not data:
            return
        self._queue(data)
        self._flush()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close the stream once everything written so far has been sent.
        """
        if self._sentTerminal or self._closePending:
            return
        self._closePending = True
        self.disconnecting = True
        self._flush()

    def loseWriteConnection(self) -> None:
        """
        Half-close: send EOF once the backlog is out; reading goes on.
        """
        if self._sentEof or self._eofPending or self._sentTerminal:
            return
        self._eofPending = True
        self._flush()

    def abortConnection(self) -> None:
        """
        Reset the stream now, dropping whatever has not been sent.
        """
        self._reset(ErrorCode.CANCEL, "aborted")

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
        if self._sentTerminal:
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
        maxFrame = tunnel._sendMaxFrame
        while self._backlog and self._credit > 0 and tunnel._canSend(self):
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
            tunnel._sendData(self.streamId, chunk)
        if self._backlog:
            if self._credit > 0:
                tunnel._wantsToSend(self)
            self._pauseProducer()
            return
        if self._eofPending:
            self._eofPending = False
            self._sendEof()
        if self._closePending:
            self._sendClose()
            return
        self._resumeProducer()

    def _pauseProducer(self) -> None:
        if self._producer is not None and self._streamingProducer and not self._producerPaused:
            self._producerPaused = True
            self._producer.pauseProducing()

    def _resumeProducer(self) -> None:
        if self._producer is None or self._sentTerminal:
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
            while self._pullAgain and self._producer is not None and not self._sentTerminal:
                self._pullAgain = False
                self._producer.resumeProducing()
        finally:
            self._pulling = False

    def _sendEof(self) -> None:
        self._sentEof = True
        self._tunnel._sendFrame(wire.Eof(self.streamId))
        protocol = self.protocol
        if IHalfCloseableProtocol.providedBy(protocol):
            self._call(protocol.writeConnectionLost)
        if self._eofDelivered:
            self._sendClose()

    def _sendClose(self) -> None:
        if self._sentTerminal:
            return
        self._sentTerminal = True
        self.disconnecting = True
        self._dropBacklog()
        self._tunnel._sendFrame(wire.Close(self.streamId))
        self._lose(Failure(ConnectionDone("stream closed")))
        self._tunnel._maybeForget(self)

    def _reset(self, code: ErrorCode, text: str) -> None:
        if self._sentTerminal:
            return
        self._sentTerminal = True
        self.disconnecting = True
        self._dropBacklog()
        self._received.clear()
        self._receivedSize = 0
        self._tunnel._sendFrame(wire.Reset(self.streamId, code, text))
        self._lose(Failure(ConnectionLost(f"stream reset: {text}")))
        self._tunnel._maybeForget(self)

    def _dropBacklog(self) -> None:
        self._backlog.clear()
        self._backlogOffset = 0
        self._backlogSize = 0
        self._eofPending = False
        self._closePending = False

    def _creditReceived(self, increment: int) -> None:
        if self._credit + increment > 2**31 - 1:
            raise ProtocolError(
                f"WINDOW on stream {self.streamId} overflows the window",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._credit += increment
        if self._backlog or self._eofPending or self._closePending:
            self._flush()

    # -- receiving -----------------------------------------------------------

    def _dataReceived(self, data: bytes) -> None:
        size = len(data)
        if self._gotEof or self._gotTerminal:
            raise ProtocolError(f"DATA on stream {self.streamId} after EOF")
        if size > self._window:
            raise ProtocolError(
                f"{size} bytes of DATA on stream {self.streamId} exceed its window of "
                f"{self._window}",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._window -= size
        self.bytesReceived += size
        if self._sentTerminal or self._lost:
            return
        self._received.append(data)
        self._receivedSize += size
        self._deliverReceived()

    def _eofReceived(self) -> None:
        if self._gotEof or self._gotTerminal:
            raise ProtocolError(f"second EOF on stream {self.streamId}")
        self._gotEof = True
        self._deliverReceived()

    def _terminalReceived(self, reset: tuple[int, str] | None) -> None:
        if self._gotTerminal:
            raise ProtocolError(f"second CLOSE or RESET on stream {self.streamId}")
        self._gotTerminal = True
        if reset is not None:
            self._remoteReset = reset
            self._received.clear()
            self._receivedSize = 0
        self._deliverReceived()
        self._tunnel._maybeForget(self)

    def _deliverReceived(self) -> None:
        """
        Hand buffered data to the protocol while it is not paused, return
        credit for what it took, then report EOF, CLOSE or RESET once
        everything before them has been delivered.
        """
        protocol = self.protocol
        if protocol is None or self._lost:
            return
        if self._remoteReset is not None:
            # a RESET drops whatever is buffered: it need not wait for a
            # paused consumer, which might never resume
            code, text = self._remoteReset
            self._sentTerminalAfterPeer()
            self._lose(
                Failure(ConnectionLost(f"stream reset by peer ({ErrorCode.named(code)}): {text}"))
            )
            return
        while self._received and not self._paused and not self._lost:
            data = self._received.popleft()
            self._receivedSize -= len(data)
            self._call(protocol.dataReceived, data)
            if not self._paused:
                self._consumed += len(data)
            else:
                # the consumer pushed back while taking these bytes: they
                # count as consumed only when it asks for more.
                self._heldCredit += len(data)
        if self._paused or self._received or self._lost:
            return
        self._returnCredit()
        if self._gotTerminal:
            self._sentTerminalAfterPeer()
            self._lose(Failure(ConnectionDone("stream closed by peer")))
            return
        if self._gotEof and not self._eofDelivered:
            self._eofDelivered = True
            if IHalfCloseableProtocol.providedBy(protocol):
                self._call(protocol.readConnectionLost)
                if self._sentEof:
                    self._sendClose()
            else:
                self.loseConnection()

    def _returnCredit(self) -> None:
        self._consumed += self._heldCredit
        self._heldCredit = 0
        if self._gotEof or self._gotTerminal or self._sentTerminal:
            return
        if self._consumed and self._consumed * 4 >= self._tunnel.settings.window:
            increment, self._consumed = self._consumed, 0
            self._window += increment
            self._tunnel._sendFrame(wire.Window(self.streamId, increment))

    def _sentTerminalAfterPeer(self) -> None:
        """The peer ended the stream: answer with our CLOSE if we have not ended it."""
        if not self._sentTerminal:
            self._sentTerminal = True
            self.disconnecting = True
            self._dropBacklog()
            self._tunnel._sendFrame(wire.Close(self.streamId))
            self._tunnel._maybeForget(self)

    # -- the protocol's end --------------------------------------------------

    def _connect(self, protocol: IProtocol, credit: int, window: int) -> None:
        self.protocol = protocol
        self._credit = credit
        self._window = window
        self._call(protocol.makeConnection, self)
        self._deliverReceived()

    def _lose(self, reason: Failure) -> None:
        """Tell the protocol, once, that the stream is over."""
        if self._lost:
            return
        self._lost = True
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

    def _tunnelLost(self, reason: Failure) -> None:
        self._sentTerminal = self._gotTerminal = True
        self._dropBacklog()
        self._lose(reason)

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
            if not self._sentTerminal:
                self._reset(ErrorCode.INTERNAL_ERROR, "application error")
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
        return self._gotEof or self._gotTerminal

    @property
    def bufferedBytes(self) -> int:
        """Bytes held for this stream, both directions (for tests and metrics)."""
        return self._backlogSize + self._receivedSize


class _IgnoredStream(Stream):
    """Stands in for a stream that ended while frames for it were in flight."""

    def __init__(self) -> None:
        pass

    def _dataReceived(self, data: bytes) -> None:
        pass

    def _eofReceived(self) -> None:
        pass

    def _creditReceived(self, increment: int) -> None:
        pass

    def _terminalReceived(self, reset: tuple[int, str] | None) -> None:
        pass

    _sentTerminal = True


_IGNORED = _IgnoredStream()
