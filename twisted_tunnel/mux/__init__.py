# -*- test-case-name: tests.test_mux -*-
"""
The multiplexer: many streams over one connection, each a real transport.

L{Tunnel} is the protocol that runs on the (TLS) connection between an
agent and a server.  It speaks the frames of L{twisted_tunnel.wire} and
gives each stream to an ordinary Twisted protocol through a L{Stream}, which
provides C{ITransport}, C{IConsumer} and C{IPushProducer} like a TCP
connection does.

Flow control follows the HTTP/2 implementation in C{twisted.web._http2}:

 - a stream whose send credit is exhausted keeps what it was given in its
   own backlog and pauses I{only its own} producer;
 - inbound data for a stream whose consumer paused it is kept in that
   stream's buffer, and credit goes back to the peer only once the
   consumer has actually taken the bytes, so the peer can never make us
   hold more than one window per stream;
 - the tunnel itself is the producer registered with the connection: when
   the connection pushes back, every stream keeps its data and the backlog
   drains in turn when the connection resumes.

The role-specific parts (what to say in HELLO, who may connect, how to
dial) live in an L{ITunnelHandler}, so the same code runs on both ends.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .. import wire
from .._logthrottle import LogThrottle
from ..errors import StreamOpenFailed, StreamOpenTimeout, TunnelClosed
from ..net.sockets import noDelay, tcpKeepalive
from ..net.transports import ITunnelStream
from ..wire import ErrorCode, FrameType, OpenFailReason, ProtocolError

_T = TypeVar("_T")
_CONNECTION_DONE = Failure(ConnectionDone())

#: How long an orderly close may wait for the peer before the connection is aborted.
CLOSE_TIMEOUT = 5.0

#: How many replies (PONG, OPEN_FAIL) we queue while the connection is
#: pushing back before we stop reading from the peer: a peer that does not
#: read what we send gets no more of our memory for its requests, only a
#: full socket buffer of its own.
PAUSE_READING_AFTER = 100

#: How many replies we queue while the connection is pushing back before we
#: decide the peer is flooding us and end the connection (the HTTP/2
#: control-frame cap, in spirit).  Reading stops at L{PAUSE_READING_AFTER},
#: so only frames already read (one socket read's worth) can get this far.
MAX_PENDING_CONTROL = 1000

#: How many OPENs a side that accepts none (a server: agents may not open
#: streams to it) refuses per L{FORBIDDEN_OPENS_PERIOD} seconds before it
#: ends the connection with PROTOCOL_ERROR.  No agent of ours sends one; a
#: few are refused politely (OPEN_FAIL NOT_ALLOWED, as the protocol says),
#: a flood is a hostile or broken peer: 600,000 of them once cost a server
#: 24 s of CPU and 29 MB of queued refusals.
MAX_FORBIDDEN_OPENS = 64
FORBIDDEN_OPENS_PERIOD = 10.0

#: Refusals that are part of normal operation, logged at debug level: an
#: agent that reaches, through the load balancer, a server replica it
#: already holds a tunnel to is refused with DUPLICATE and dials again.
ROUTINE_REFUSALS = frozenset({ErrorCode.DUPLICATE})

#: The most server replicas behind one address: a bound on HELLO's
#: C{server_count} and on the C{servers} an agent names.
MAX_SERVERS = 64

#: The longest server id (HELLO C{server_id}, C{instance}, and each of an
#: agent's C{servers}): a Kubernetes object name's length, so a pod name
#: fits.  With L{MAX_SERVERS} of them an agent's HELLO stays near 16 KiB,
#: far below the 64 KiB a HELLO may hold: an id a peer sent us can never
#: make our own HELLO too large for the other replicas.
MAX_SERVER_ID = 253

_SERVER_ID_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-"
)


def validServerId(value: object) -> bool:
    """
    Whether C{value} may be a server id: a string of 1 to L{MAX_SERVER_ID}
    ASCII letters, digits and C{. _ : -} (a pod name, a UUID, a host name),
    nothing that needs escaping in a log line, a label or a HELLO.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SERVER_ID
        and _SERVER_ID_CHARACTERS.issuperset(value)
    )


@frozen
class Settings:
    """
    What one side grants the other; sent in HELLO.

    @ivar window: initial receive window per stream, in bytes.
    @ivar maxFrame: the largest DATA payload accepted.
    @ivar maxStreams: how many streams opened by the peer may be open at once.
    """

    window: int = 1024 * 1024
    maxFrame: int = wire.DEFAULT_MAX_FRAME
    maxStreams: int = 1024

    def toInfo(self) -> dict[str, int]:
        return {"window": self.window, "max_frame": self.maxFrame, "max_streams": self.maxStreams}

    @classmethod
    def fromInfo(cls, info: dict[str, Any]) -> Settings:
        """
        Read the peer's settings out of its HELLO, within sane bounds.

        @raise ProtocolError: a setting is missing its type or its bounds.
        """
        default = cls()
        window = _bounded(info, "window", default.window, 64 * 1024, 2**31 - 1)
        maxFrame = _bounded(
            info, "max_frame", default.maxFrame, 16 * 1024, wire.ABSOLUTE_MAX_FRAME
        )
        maxStreams = _bounded(info, "max_streams", default.maxStreams, 1, 2**31 - 1)
        return cls(window=window, maxFrame=maxFrame, maxStreams=maxStreams)


def _bounded(info: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = info.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"HELLO setting {key}={value!r} is not an integer in {low}..{high}")
    return value


@frozen
class Keepalive:
    """
    Dead-peer detection: give up after C{interval * misses} seconds without
    hearing anything.

    The agent (the client side) keeps the tunnel alive: it sends a PING
    after C{interval} seconds of silence, and again every C{interval} while
    nothing comes back.  The server answers, and sends a PING of its own
    only to a peer silent for C{interval * (misses - 1)} seconds, a last
    probe before giving up.  With a live agent the server never pings: one
    PING and one PONG per interval instead of up to two of each, which is
    most of what ten thousand idle agents cost a server.
    """

    interval: float = 10.0
    misses: int = 3

    @property
    def deadline(self) -> float:
        return self.interval * self.misses


#: File descriptors an agent keeps for other things than streams' targets:
#: a tunnel per server replica, the meta listener and its clients, logs,
#: the reactor's own.  A stream costs one (its target connection).
FD_MARGIN = 64 + MAX_SERVERS

#: At most one log line per this many seconds when a budget refuses streams.
BUDGET_LOG_INTERVAL = 60.0


def openFileLimit() -> int | None:
    """This process's soft limit on open files (C{None}: no limit known)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class StreamBudget:
    """
    Limits on the streams peers open, shared by several tunnels: an agent
    holds one tunnel per server replica, and every replica may open
    C{max_streams} on its own, so a per-tunnel limit alone lets three
    replicas make the node hold three times what it can.

    Three limits, each refused with OPEN_FAIL C{TOO_MANY_STREAMS} and a
    text that says which:

     - C{maxStreams} streams at once across the tunnels;
     - the open-file limit less L{FD_MARGIN}: every stream holds a
       connection to its target, and running out of descriptors would
       fail everything else the process does (accepting, logging);
     - C{maxBufferBytes}: each stream reserves its receive window, the
       most its peer may send before the target reads (a target that never
       reads leaves exactly that much in our memory), so this bounds what
       streams can make the process hold, whatever the peers do.

    A refusal is logged at most once per L{BUDGET_LOG_INTERVAL} seconds
    (L{LogThrottle}: the next line says how many were left out).

    @ivar streams: streams admitted and not yet gone.
    @ivar reserved: bytes of window those streams reserve.
    @ivar refusals: opens refused, by limit (C{streams}, C{fds}, C{buffer}).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        maxStreams: int,
        maxBufferBytes: int,
        fileLimit: int | None = None,
    ) -> None:
        self.clock = clock
        self.maxStreams = maxStreams
        self.maxBufferBytes = maxBufferBytes
        self.fileLimit = fileLimit
        self.streams = 0
        self.reserved = 0
        self.refusals: Counter[str] = Counter()
        self._throttle = LogThrottle(clock, burst=1, interval=BUDGET_LOG_INTERVAL)

    @classmethod
    def forProcess(
        cls, clock: IReactorTime, *, maxStreams: int, maxBufferBytes: int
    ) -> StreamBudget:
        """
        A budget within this process's open-file limit (C{ulimit -n}, read
        once: a process cannot raise its own past the hard limit, and what
        it lowers it to is for it to know).  Says so once at start if that
        limit, not C{maxStreams}, is what bounds the streams.
        """
        budget = cls(
            clock,
            maxStreams=maxStreams,
            maxBufferBytes=maxBufferBytes,
            fileLimit=openFileLimit(),
        )
        fileStreams = budget.fileStreams
        if fileStreams is not None and fileStreams < maxStreams:
            cls.log.warn(
                "the open-file limit ({fileLimit}) leaves room for {fileStreams} streams, "
                "fewer than the {maxStreams} allowed; raise it (ulimit -n) to allow more",
                fileLimit=budget.fileLimit,
                fileStreams=fileStreams,
                maxStreams=maxStreams,
            )
        return budget

    @property
    def fileStreams(self) -> int | None:
        """How many streams the open-file limit leaves room for."""
        if self.fileLimit is None:
            return None
        return max(self.fileLimit - FD_MARGIN, 0)

    def streamLimit(self, window: int) -> int:
        """How many streams of C{window} bytes each fit in every limit."""
        limits = [self.maxStreams, self.maxBufferBytes // max(window, 1)]
        if self.fileStreams is not None:
            limits.append(self.fileStreams)
        return min(limits)

    def admit(self, window: int) -> str | None:
        """
        Take a stream that reserves C{window} bytes, or say why not.

        @return: C{None} if admitted (give it back with L{release}), else
            the refusal's text.
        """
        fileStreams = self.fileStreams
        if self.streams >= self.maxStreams:
            which = "streams"
            text = f"{self.streams} streams open, the limit across this agent's tunnels"
        elif fileStreams is not None and self.streams >= fileStreams:
            which = "fds"
            text = (
                f"{self.streams} streams open, all the open-file limit "
                f"({self.fileLimit}) leaves room for"
            )
        elif self.reserved + window > self.maxBufferBytes:
            which = "buffer"
            text = (
                f"{self.streams} streams open hold up to {self.reserved} bytes, and another "
                f"would pass the buffer limit of {self.maxBufferBytes}"
            )
        else:
            self.streams += 1
            self.reserved += window
            return None
        self.refusals[which] += 1
        self._logRefusal(which, text)
        return text

    def release(self, window: int) -> None:
        """A stream admitted with C{window} is gone."""
        self.streams -= 1
        self.reserved -= window

    def _logRefusal(self, which: str, text: str) -> None:
        self._throttle.emit(
            self.log, LogLevel.warn, "refusing new streams: {reason}", reason=text, limit=which
        )


@implementer(IAddress)
@frozen
class TunnelAddress:
    """
    One end of a stream: which node's tunnel carries it and which host and
    port the edge side dials (or, for the local end, the stream's id).
    """

    node: str
    host: str
    port: int


class Refused(Exception):
    """
    Raised by L{ITunnelHandler.helloReceived} to turn a peer away; the
    code and text go to the peer in GOAWAY and to our log.
    """

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class ITunnelHandler(Interface):
    """
    The role-specific half of a tunnel: the server's and the agent's.
    """

    def helloInfo() -> dict[str, Any]:
        """
        Identity and facts to announce in our HELLO (settings are added).
        """

    def helloReceived(tunnel: Tunnel, info: dict[str, Any]) -> None:
        """
        The peer's HELLO arrived and the version is agreed.

        @raise Refused: to end the connection with the given reason.
        """

    def openRequested(tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        """
        The peer asks us to connect a new stream to C{address.host}:C{port}.

        @return: fires with the protocol that will own the stream, or fails
            with L{StreamOpenFailed}.  It is cancelled if the peer gives up.
        """

    def tunnelDraining(tunnel: Tunnel) -> None:
        """The peer sent a graceful GOAWAY: open no new streams on this tunnel."""

    def tunnelLost(tunnel: Tunnel, reason: Failure) -> None:
        """The connection is gone; every stream has been told."""


class ITunnelMeter(Interface):
    """
    What metrics need to hear from a tunnel: the few events that counting
    on the fly cannot see.  Streams count their own bytes; a meter reads
    them when scraped, and is told when a stream is gone so that its
    counts are kept.
    """

    def tunnelStarted(tunnel: Tunnel) -> None:
        """C{tunnel} is connected (HELLO not done yet)."""

    def streamRetired(tunnel: Tunnel, stream: Stream) -> None:
        """C{stream} is gone; its byte counts are final."""

    def tunnelEnded(tunnel: Tunnel) -> None:
        """C{tunnel}'s connection is gone, and so are all its streams."""

    def keepaliveTimedOut(tunnel: Tunnel) -> None:
        """C{tunnel} was declared dead: nothing heard for too long."""

    def floodDetected(tunnel: Tunnel, reason: str) -> None:
        """
        C{tunnel} is being closed because its peer flooded it: C{reason} is
        C{forbidden_opens} (OPENs to a side that accepts none) or
        C{control_backlog} (requests for replies that it does not read).
        """


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


class _PendingOpen:
    """An OPEN we sent, waiting for OPEN_OK or OPEN_FAIL."""

    def __init__(
        self,
        stream: Stream,
        factory: IProtocolFactory,
        result: Deferred[IProtocol],
        timeout: IDelayedCall | None,
    ) -> None:
        self.stream = stream
        self.factory = factory
        self.result = result
        self.timeout = timeout

    def cancelTimeout(self) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None


@implementer(IPushProducer)
class Tunnel(Protocol):
    """
    The multiplexing protocol on one agent-server connection.

    @ivar nodeName: which edge node this tunnel belongs to, once known
        (for logs and addresses).
    @ivar version: the agreed protocol version, once HELLO is done.
    """

    log = Logger()

    #: the log line of a connection found dead by keepalive
    DEAD = "tunnel to {node} is dead: nothing heard for {silent:.1f}s"

    def __init__(
        self,
        handler: ITunnelHandler,
        clock: IReactorTime,
        *,
        isClient: bool,
        settings: Settings = Settings(),
        keepalive: Keepalive = Keepalive(),
        nodeName: str = "",
        keepaliveSweep: KeepaliveSweep | None = None,
        meter: ITunnelMeter | None = None,
        peerMayOpen: bool = True,
        budget: StreamBudget | None = None,
    ) -> None:
        """
        @param peerMayOpen: C{False} on a side that accepts no streams (a
            server): the peer's OPENs are refused, and a flood of them ends
            the connection (L{MAX_FORBIDDEN_OPENS}).
        @param budget: limits shared with other tunnels (an agent's, one
            per server replica) on the streams the peer opens.
        """
        self.handler = handler
        self.meter = meter
        self.peerMayOpen = peerMayOpen
        self.budget = budget
        self.clock = clock
        self.isClient = isClient
        self.settings = settings
        self.keepalive = keepalive
        self.nodeName = nodeName
        self.version: int | None = None
        self.peerInfo: dict[str, Any] = {}
        #: the peer's first GOAWAY (code, text): why it began to end
        self.peerGoAway: tuple[int, str] | None = None
        self.peerSettings: Settings | None = None

        self._decoder = wire.FrameDecoder(max(settings.maxFrame, wire.DEFAULT_MAX_FRAME))
        self._sendMaxFrame = wire.DEFAULT_MAX_FRAME
        self._streams: dict[int, Stream] = {}
        self._pending: dict[int, _PendingOpen] = {}
        self._accepting: dict[int, Deferred[IProtocol]] = {}
        self._nextStreamId = 1 if isClient else 2
        self._highestPeerStream = 0
        self._peerOpened = 0  # the peer's streams in _streams
        self._ownOpen = 0  # ours, pending opens included
        self._waitingToSend: deque[Stream] = deque()
        self._transportPaused = False
        self._pausedControl = 0  # replies queued since the connection pushed back
        self._readingPaused = False  # we paused reading: the peer does not read
        self._forbiddenOpens = 0
        self._forbiddenSince = 0.0
        self._draining = False
        self._peerDraining = False
        self._closing = False
        self._readingStopped = False
        self._done = False
        self._lastReceived = 0.0
        self._lastPing: float | None = None
        self._pingsSent = 0
        self._keepaliveCall: IDelayedCall | None = None
        self._keepaliveSweep = keepaliveSweep
        self._abortCall: IDelayedCall | None = None
        self._established: _Outcome[Tunnel] = _Outcome()
        self._lost: _Outcome[None] = _Outcome()
        #: DATA bytes of this tunnel's streams that are gone (see L{bytesSent})
        self._retiredSent = 0
        self._retiredReceived = 0

    # -- life cycle ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        assert transport is not None
        transport.registerProducer(self, True)
        noDelay(transport)
        tcpKeepalive(transport, self.keepalive)
        self._lastReceived = self.clock.seconds()
        if self._keepaliveSweep is not None:
            self._keepaliveSweep.add(self)
        else:
            self._scheduleKeepalive(self.keepalive.interval)
        if self.meter is not None:
            self.meter.tunnelStarted(self)
        if self.isClient:
            low, high = wire.SUPPORTED_VERSIONS[0], wire.SUPPORTED_VERSIONS[-1]
            self._sendFrame(wire.Hello(low, high, self._helloInfo()))

    def whenEstablished(self) -> Deferred[Tunnel]:
        """
        Fires once HELLO is done both ways; fails if the connection ends first.
        """
        return self._established.observe()

    def whenLost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        return self._lost.observe()

    @property
    def established(self) -> bool:
        return self.version is not None and not self._done

    @property
    def streamCount(self) -> int:
        return len(self._streams)

    def streams(self) -> list[Stream]:
        """The streams open now."""
        return list(self._streams.values())

    @property
    def bytesSent(self) -> int:
        """DATA bytes sent on all streams, ever."""
        return self._retiredSent + sum(s.bytesSent for s in self._streams.values())

    @property
    def bytesReceived(self) -> int:
        """DATA bytes received on all streams, ever."""
        return self._retiredReceived + sum(s.bytesReceived for s in self._streams.values())

    def _releaseBudget(self, stream: Stream) -> None:
        if stream.budgeted and self.budget is not None:
            self.budget.release(stream.budgeted)
            stream.budgeted = 0

    def _retire(self, stream: Stream) -> None:
        self._retiredSent += stream.bytesSent
        self._retiredReceived += stream.bytesReceived
        if self.meter is not None:
            self.meter.streamRetired(self, stream)

    def _helloInfo(self) -> dict[str, Any]:
        info = dict(self.handler.helloInfo())
        info.update(self.settings.toInfo())
        return info

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._done = True
        for call in (self._keepaliveCall, self._abortCall):
            if call is not None and call.active():
                call.cancel()
        self._keepaliveCall = self._abortCall = None
        if self._keepaliveSweep is not None:
            self._keepaliveSweep.discard(self)
        why = f"tunnel to {self.nodeName or 'peer'} lost: {reason.getErrorMessage()}"
        for pending in list(self._pending.values()):
            pending.cancelTimeout()
            pending.result.errback(TunnelClosed(why))
        self._pending.clear()
        for accepting in list(self._accepting.values()):
            accepting.cancel()
        self._accepting.clear()
        for stream in list(self._streams.values()):
            stream._tunnelLost(Failure(ConnectionLost(why)))
        for stream in self._streams.values():
            self._retire(stream)
            self._releaseBudget(stream)
        self._streams.clear()
        self._ownOpen = self._peerOpened = 0
        self._waitingToSend.clear()
        self._established.fire(Failure(TunnelClosed(why)))
        if self.meter is not None:
            self.meter.tunnelEnded(self)
        try:
            self.handler.tunnelLost(self, reason)
        finally:
            self._lost.fire(None)

    def close(self, code: ErrorCode, text: str) -> None:
        """
        End the connection now, telling the peer why.
        """
        if self._closing or self._done:
            return
        self._closing = True
        if code not in (ErrorCode.NO_ERROR, ErrorCode.SHUTTING_DOWN):
            # an error: read nothing more from this peer
            self._readingStopped = True
        self._sendFrame(wire.GoAway(code, text))
        self._loseTransport()

    def _loseTransport(self) -> None:
        """
        Close the connection, and abort it if the close does not finish in
        time (a transport may report the loss from inside loseConnection:
        then there is nothing left to time).
        """
        transport: Any = self.transport
        assert transport is not None
        transport.unregisterProducer()
        transport.loseConnection()
        if not self._done and self._abortCall is None:
            self._abortCall = self.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def drain(self, text: str = "shutting down") -> Deferred[None]:
        """
        Graceful: refuse new streams from now on, let the open ones finish,
        then close.  Fires when the connection is gone.
        """
        done = self.whenLost()
        if not self._draining and not self._done:
            self._draining = True
            self._sendFrame(wire.GoAway(ErrorCode.SHUTTING_DOWN, text))
            self._closeIfIdle()
        return done

    def _closeIfIdle(self) -> None:
        if (self._draining or self._peerDraining) and not self._streams and not self._pending:
            self.close(ErrorCode.NO_ERROR, "drained")

    def _abort(self) -> None:
        self._abortCall = None
        self._abortNow()

    def _abortNow(self) -> None:
        if self.transport is not None and not self._done:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- opening streams -----------------------------------------------------

    def openStream(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float | None = None
    ) -> Deferred[IProtocol]:
        """
        Ask the peer to connect a new stream to C{host}:C{port}, then hand it
        to a protocol built by C{factory}.

        @return: fires with the connected protocol, like
            C{IStreamClientEndpoint.connect}; fails with L{StreamOpenFailed},
            L{StreamOpenTimeout} or L{TunnelClosed}.  Cancelling it resets
            the stream.
        """
        if not self.established or self._closing:
            return _failed(TunnelClosed(f"tunnel to {self.nodeName or 'peer'} is not up"))
        if self._draining or self._peerDraining:
            return _failed(
                StreamOpenFailed(
                    OpenFailReason.GOING_AWAY, f"tunnel to {self.nodeName} is draining"
                )
            )
        assert self.peerSettings is not None
        # pending opens are in _streams already: count them once
        if self._ownOpen >= self.peerSettings.maxStreams:
            return _failed(
                StreamOpenFailed(
                    OpenFailReason.TOO_MANY_STREAMS,
                    f"node {self.nodeName} accepts {self.peerSettings.maxStreams} streams at once",
                )
            )
        streamId = self._nextStreamId
        if streamId > wire.MAX_STREAM_ID:
            return _failed(TunnelClosed("stream ids exhausted on this tunnel"))
        self._nextStreamId += 2
        stream = Stream(self, streamId, TunnelAddress(self.nodeName, host, port))
        # The peer may send DATA right behind its OPEN_OK, even when we
        # abandon the open meanwhile: the window we grant holds from the start.
        stream._window = self.settings.window

        def cancel(d: Deferred[IProtocol]) -> None:
            pending = self._pending.pop(streamId, None)
            if pending is not None:
                pending.cancelTimeout()
                stream._reset(ErrorCode.CANCEL, "open cancelled")

        result: Deferred[IProtocol] = Deferred(cancel)
        call = None
        if timeout is not None:
            call = self.clock.callLater(timeout, self._openTimedOut, streamId, timeout)
        self._streams[streamId] = stream
        self._ownOpen += 1
        self._pending[streamId] = _PendingOpen(stream, factory, result, call)
        self._sendFrame(wire.Open(streamId, host, port))
        return result

    def _openTimedOut(self, streamId: int, timeout: float) -> None:
        pending = self._pending.pop(streamId, None)
        if pending is None:
            return
        pending.timeout = None
        pending.stream._reset(ErrorCode.CANCEL, "open timed out")
        pending.result.errback(
            StreamOpenTimeout(
                f"node {self.nodeName} did not answer the open of "
                f"{pending.stream.getPeer().host}:{pending.stream.getPeer().port} "
                f"within {timeout:g}s"
            )
        )

    # -- IPushProducer, for the connection under us ------------------------

    def pauseProducing(self) -> None:
        self._transportPaused = True

    def resumeProducing(self) -> None:
        self._transportPaused = False
        self._pausedControl = 0
        if self._closing or self._done:
            # streams cannot send any more; flushing them would requeue them forever
            return
        waiting = self._waitingToSend
        while waiting and not self._transportPaused:
            stream = waiting.popleft()
            stream.queuedToSend = False
            stream._flush()
        if self._readingPaused and not self._transportPaused:
            self._resumeReading()

    def stopProducing(self) -> None:
        pass

    # -- sending -------------------------------------------------------------

    def _canSend(self, stream: Stream) -> bool:
        return not (self._transportPaused or self._closing or self._done)

    def _wantsToSend(self, stream: Stream) -> None:
        if not stream.queuedToSend:
            stream.queuedToSend = True
            self._waitingToSend.append(stream)

    def _sendFrame(self, frame: wire.Frame) -> None:
        if self._done or self.transport is None:
            return
        self.transport.write(frame.encode())

    def _reply(self, frame: wire.Frame) -> None:
        """
        Send a frame that answers one of the peer's (PONG, OPEN_FAIL), and
        keep a peer that asks without reading the answers from making us
        queue them without bound.

        While the connection pushes back (the peer is not reading what we
        send), each reply is counted: after L{PAUSE_READING_AFTER} we stop
        reading from the peer until the connection drains, so its requests
        wait in its own socket buffer, not in our memory; past
        L{MAX_PENDING_CONTROL} (frames read before reading stopped) the
        connection ends.  Only replies count: frames we send of our own
        accord (WINDOW, CLOSE) are bounded by the streams and their windows.
        Reading stops only for a peer that asks for many replies and reads
        none: our own peers ask for a handful (PING every C{interval}), so
        two of them never both stop reading, which would deadlock.

        A reply may also be sent later (a dial that failed), outside
        L{dataReceived}: so past the cap the connection is closed here, not
        by raising.
        """
        if self._done or self._readingStopped:
            return
        if self._transportPaused:
            self._pausedControl += 1
            if self._pausedControl > MAX_PENDING_CONTROL:
                if self.meter is not None:
                    self.meter.floodDetected(self, "control_backlog")
                self._protocolError(
                    ProtocolError(
                        f"more than {MAX_PENDING_CONTROL} requests for replies while the "
                        "connection is pushing back (the peer does not read)"
                    )
                )
                return
            if self._pausedControl >= PAUSE_READING_AFTER and not self._readingPaused:
                self._pauseReading()
        self._sendFrame(frame)

    def _pauseReading(self) -> None:
        """Stop reading from the peer until the connection drains (see L{_reply})."""
        self._readingPaused = True
        self.log.debug(
            "tunnel to {node}: the peer does not read our replies; reading paused",
            node=self.nodeName or self.peerLabel(),
        )
        transport: Any = self.transport
        if transport is not None:
            transport.pauseProducing()

    def _resumeReading(self) -> None:
        self._readingPaused = False
        transport: Any = self.transport
        if transport is None or self._done:
            return
        transport.resumeProducing()
        if self._decoder.buffered:
            # frames that came in with the ones that made us stop
            self.dataReceived(b"")

    def _sendData(self, streamId: int, data: bytes) -> None:
        assert self.transport is not None
        self.transport.writeSequence([wire.dataHeader(streamId, len(data)), data])

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._done or self._readingStopped:
            # a GOAWAY with an error went one way or the other: read no more
            # (a poisoned decoder would raise and log again, a second HELLO
            # would reach the handler again)
            return
        self._lastReceived = self.clock.seconds()
        try:
            frames = self._decoder.feed(data)
            if self._readingPaused:
                # what the transport had read already when we paused it (a
                # TLS record's worth): it waits in the decoder, unparsed
                return
            for frame in frames:
                self._frameReceived(frame)
                if self._readingStopped or self._done or self._readingPaused:
                    return
        except ProtocolError as e:
            self._protocolError(e)
        except Exception:
            self.log.failure("closing tunnel to {node}: internal error", node=self.nodeName)
            self._readingStopped = True
            self.close(ErrorCode.INTERNAL_ERROR, "internal error")

    def _protocolError(self, error: ProtocolError) -> None:
        """The peer broke the protocol: one log line, GOAWAY, read no more, close."""
        self.log.warn(
            "closing tunnel to {node}: protocol error: {reason}",
            node=self.nodeName or self.peerLabel(),
            reason=error.text,
            code=ErrorCode.named(error.code),
        )
        self._readingStopped = True  # even if a graceful close is under way
        self.close(error.code, error.text)

    @property
    def closing(self) -> bool:
        """Whether this end is closing the connection (L{close} was called)."""
        return self._closing

    def peerLabel(self) -> str:
        """C{host:port} of the peer, for log lines (C{peer} before there is one)."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        return f"{host}:{getattr(peer, 'port', '')}" if host else "peer"

    def _frameReceived(self, frame: wire.Frame) -> None:
        kind = frame.TYPE
        if self.version is None and kind is not FrameType.HELLO:
            if kind is FrameType.GOAWAY:
                self._goAwayReceived(frame)  # type: ignore[arg-type]
                return
            raise ProtocolError(f"expected HELLO, got {kind.name}")
        if kind is FrameType.DATA:
            self._stream(frame.streamId)._dataReceived(frame.data)  # type: ignore[attr-defined]
        elif kind is FrameType.WINDOW:
            stream = self._stream(frame.streamId)
            if not stream._sentTerminal:
                stream._creditReceived(frame.increment)  # type: ignore[attr-defined]
        elif kind is FrameType.OPEN:
            self._openReceived(frame)  # type: ignore[arg-type]
        elif kind is FrameType.OPEN_OK:
            self._openOkReceived(frame.streamId)
        elif kind is FrameType.OPEN_FAIL:
            self._openFailReceived(frame)  # type: ignore[arg-type]
        elif kind is FrameType.EOF:
            self._stream(frame.streamId)._eofReceived()
        elif kind is FrameType.CLOSE:
            self._terminalReceived(frame.streamId, None)
        elif kind is FrameType.RESET:
            self._terminalReceived(frame.streamId, (frame.code, frame.text))  # type: ignore[attr-defined]
        elif kind is FrameType.PING:
            self._pingReceived(frame)  # type: ignore[arg-type]
        elif kind is FrameType.PONG:
            pass
        elif kind is FrameType.GOAWAY:
            self._goAwayReceived(frame)  # type: ignore[arg-type]
        elif kind is FrameType.HELLO:
            self._helloReceived(frame)  # type: ignore[arg-type]

    def _stream(self, streamId: int) -> Stream:
        """
        The live stream with this id, or L{_IGNORED} for one that ended
        recently (frames may cross), or a protocol error for one that never
        existed.
        """
        stream = self._streams.get(streamId)
        if stream is not None:
            if streamId in self._pending or streamId in self._accepting:
                raise ProtocolError(f"frame on stream {streamId} before OPEN_OK")
            return stream
        ours = (streamId % 2 == 1) == self.isClient
        if ours and streamId < self._nextStreamId:
            return _IGNORED
        if not ours and streamId <= self._highestPeerStream:
            return _IGNORED
        raise ProtocolError(f"frame for stream {streamId}, which was never opened")

    def _helloReceived(self, hello: wire.Hello) -> None:
        if self.version is not None:
            raise ProtocolError("second HELLO")
        if self.isClient:
            if (
                hello.minVersion != hello.maxVersion
                or hello.minVersion not in wire.SUPPORTED_VERSIONS
            ):
                raise ProtocolError(
                    f"server chose version {hello.minVersion}..{hello.maxVersion}, which we did "
                    "not offer",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            version = hello.minVersion
        else:
            common = [
                v for v in wire.SUPPORTED_VERSIONS if hello.minVersion <= v <= hello.maxVersion
            ]
            if not common:
                ours = f"{wire.SUPPORTED_VERSIONS[0]}..{wire.SUPPORTED_VERSIONS[-1]}"
                raise ProtocolError(
                    f"no common protocol version: peer speaks "
                    f"{hello.minVersion}..{hello.maxVersion}, we speak {ours}",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            version = common[-1]
        peer = Settings.fromInfo(hello.info)
        self.peerInfo = hello.info
        self.peerSettings = peer
        self._sendMaxFrame = peer.maxFrame
        try:
            self.handler.helloReceived(self, hello.info)
        except Refused as refused:
            self.log.emit(
                LogLevel.debug if refused.code in ROUTINE_REFUSALS else LogLevel.warn,
                "refusing tunnel from {peer}: {reason}",
                peer=self.peerLabel(),
                reason=refused.text,
                code=ErrorCode.named(refused.code),
            )
            self.close(refused.code, refused.text)
            return
        self.version = version
        if not self.isClient:
            self._sendFrame(wire.Hello(version, version, self._helloInfo()))
        self._established.fire(self)

    def _openReceived(self, frame: wire.Open) -> None:
        streamId = frame.streamId
        if (streamId % 2 == 1) == self.isClient or streamId <= self._highestPeerStream:
            raise ProtocolError(f"OPEN with stream id {streamId} out of sequence")
        self._highestPeerStream = streamId
        if not self.peerMayOpen:
            self._forbiddenOpenReceived(streamId)
            return
        address = TunnelAddress(self.nodeName, frame.host, frame.port)
        if self._draining or self._closing:
            self._refuse(streamId, OpenFailReason.GOING_AWAY, "tunnel is draining")
            return
        if self._peerOpened >= self.settings.maxStreams:
            self._refuse(
                streamId,
                OpenFailReason.TOO_MANY_STREAMS,
                f"at most {self.settings.maxStreams} streams at once",
            )
            return
        budget = self.budget
        if budget is not None:
            refusal = budget.admit(self.settings.window)
            if refusal is not None:
                self._refuse(streamId, OpenFailReason.TOO_MANY_STREAMS, refusal)
                return
        stream = Stream(self, streamId, address)
        if budget is not None:
            stream.budgeted = self.settings.window
        self._streams[streamId] = stream
        self._peerOpened += 1
        accepting = maybeDeferred(self.handler.openRequested, self, address)
        self._accepting[streamId] = accepting

        def accepted(protocol: IProtocol) -> None:
            self._accepting.pop(streamId, None)
            if stream._gotTerminal or self._done:
                # Too late: the peer gave up, or the tunnel is gone, and the
                # stream has been told already, while it had no protocol.
                # This protocol must hear of the end itself, or it would never
                # let go of what it holds (a relay's target connection).
                stream._call(protocol.makeConnection, stream)
                stream._call(
                    protocol.connectionLost, Failure(ConnectionDone("stream cancelled by peer"))
                )
                return
            self._sendFrame(wire.OpenOk(streamId))
            assert self.peerSettings is not None
            stream._connect(protocol, self.peerSettings.window, self.settings.window)

        def refused(failure: Failure) -> None:
            self._accepting.pop(streamId, None)
            if stream._gotTerminal or self._done:
                # we cancelled it: the peer gave up (and the stream is
                # forgotten) or the tunnel is gone.  However the handler
                # failed, there is nobody to answer and nothing to count.
                return
            if failure.check(StreamOpenFailed):
                error: Any = failure.value
                reason, text = error.reason, error.text
            else:
                self.log.failure(
                    "opening {host}:{port} failed unexpectedly",
                    failure,
                    host=address.host,
                    port=address.port,
                )
                reason, text = OpenFailReason.INTERNAL, "internal error"
            self._forget(streamId)
            self._refuse(streamId, reason, text)
            self._closeIfIdle()

        accepting.addCallbacks(accepted, refused)

    def _refuse(self, streamId: int, reason: int, text: str) -> None:
        self._reply(wire.OpenFail(streamId, reason, text))

    def _forbiddenOpenReceived(self, streamId: int) -> None:
        """
        An OPEN to a side that accepts none: refuse it without building
        anything, and end the connection if they come at a flood's rate.

        @raise ProtocolError: more than L{MAX_FORBIDDEN_OPENS} in
            L{FORBIDDEN_OPENS_PERIOD} seconds.
        """
        now = self.clock.seconds()
        if now - self._forbiddenSince >= FORBIDDEN_OPENS_PERIOD:
            self._forbiddenSince, self._forbiddenOpens = now, 0
        self._forbiddenOpens += 1
        if self._forbiddenOpens > MAX_FORBIDDEN_OPENS:
            if self.meter is not None:
                self.meter.floodDetected(self, "forbidden_opens")
            raise ProtocolError(
                f"more than {MAX_FORBIDDEN_OPENS} OPENs in {FORBIDDEN_OPENS_PERIOD:g}s; "
                "this side accepts no streams"
            )
        self._refuse(streamId, OpenFailReason.NOT_ALLOWED, "this side accepts no streams")

    def _openOkReceived(self, streamId: int) -> None:
        pending = self._pending.pop(streamId, None)
        if pending is None:
            if self._abandoned(streamId) is not None:
                # it crossed our RESET, which the peer answers with CLOSE
                return
            self._stream(streamId)  # raises for a stream never opened
            raise ProtocolError(f"OPEN_OK for stream {streamId}, which is not opening")
        pending.cancelTimeout()
        stream = pending.stream
        try:
            protocol = pending.factory.buildProtocol(stream.getPeer())
        except Exception:
            failure = Failure()
            stream._reset(ErrorCode.INTERNAL_ERROR, "the protocol factory failed")
            pending.result.errback(failure)
            return
        assert self.peerSettings is not None
        if protocol is None:
            stream._reset(ErrorCode.CANCEL, "refused by the local factory")
            pending.result.errback(
                StreamOpenFailed(OpenFailReason.INTERNAL, "the protocol factory refused")
            )
            return
        stream._connect(protocol, self.peerSettings.window, self.settings.window)
        pending.result.callback(protocol)

    def _abandoned(self, streamId: int) -> Stream | None:
        """
        Our stream C{streamId} if we gave up its open (timeout, cancel) and
        sent RESET before the peer's answer came.
        """
        stream = self._streams.get(streamId)
        if (
            stream is not None
            and stream.protocol is None
            and stream._sentTerminal
            and not stream._gotTerminal
            and (streamId % 2 == 1) == self.isClient
        ):
            return stream
        return None

    def _openFailReceived(self, frame: wire.OpenFail) -> None:
        pending = self._pending.pop(frame.streamId, None)
        if pending is None:
            abandoned = self._abandoned(frame.streamId)
            if abandoned is not None:
                # it crossed our RESET; the peer forgot the id when it sent it
                abandoned._gotTerminal = True
                self._maybeForget(abandoned)
                return
            self._stream(frame.streamId)
            raise ProtocolError(f"OPEN_FAIL for stream {frame.streamId}, which is not opening")
        pending.cancelTimeout()
        stream = pending.stream
        stream._sentTerminal = stream._gotTerminal = True
        self._forget(frame.streamId)
        pending.result.errback(StreamOpenFailed(frame.reason, frame.text))
        self._closeIfIdle()

    def _terminalReceived(self, streamId: int, reset: tuple[int, str] | None) -> None:
        pending = self._pending.pop(streamId, None)
        if pending is not None:
            # the peer reset an open it has not answered: treat as a failure
            pending.cancelTimeout()
            code, text = reset if reset is not None else (ErrorCode.CANCEL, "closed")
            stream = pending.stream
            stream._gotTerminal = True
            stream._sentTerminalAfterPeer()
            pending.result.errback(StreamOpenFailed(OpenFailReason.INTERNAL, text))
            return
        accepting = self._accepting.pop(streamId, None)
        stream = self._stream(streamId)
        if accepting is not None:
            stream._gotTerminal = True
            stream._sentTerminalAfterPeer()
            accepting.cancel()
            return
        stream._terminalReceived(reset)

    def _maybeForget(self, stream: Stream) -> None:
        if stream._sentTerminal and stream._gotTerminal:
            self._forget(stream.streamId)
            self._closeIfIdle()

    def _forget(self, streamId: int) -> None:
        """Drop a stream id, keeping the per-side counts the stream limits use."""
        stream = self._streams.pop(streamId, None)
        if stream is not None:
            self._retire(stream)
            self._releaseBudget(stream)
            if (streamId % 2 == 1) == self.isClient:
                self._ownOpen -= 1
            else:
                self._peerOpened -= 1

    def _pingReceived(self, ping: wire.Ping) -> None:
        self._reply(wire.Pong(ping.opaque))

    def _goAwayReceived(self, goaway: wire.GoAway) -> None:
        code, text = goaway.code, goaway.text
        if self.peerGoAway is None:
            self.peerGoAway = (code, text)
        if code in (ErrorCode.NO_ERROR, ErrorCode.SHUTTING_DOWN) and self.version is not None:
            self.log.info(
                "tunnel to {node} is draining: {reason}", node=self.nodeName, reason=text
            )
            if not self._peerDraining:
                self._peerDraining = True
                self.handler.tunnelDraining(self)
            self._closeIfIdle()
            return
        self.log.emit(
            LogLevel.debug if code in ROUTINE_REFUSALS else LogLevel.warn,
            "tunnel to {node} closed by peer ({code}): {reason}",
            node=self.nodeName or self.peerLabel(),
            code=ErrorCode.named(code),
            reason=text,
        )
        self._readingStopped = True
        if self._closing:
            return
        self._closing = True
        self._loseTransport()

    # -- keepalive -----------------------------------------------------------

    def _scheduleKeepalive(self, delay: float) -> None:
        self._keepaliveCall = self.clock.callLater(max(delay, 0.0), self._keepaliveTick)

    def _keepaliveTick(self) -> None:
        self._keepaliveCall = None
        delay = self.checkKeepalive()
        if delay is not None:
            self._scheduleKeepalive(delay)

    def checkKeepalive(self, *, judge: bool = True) -> float | None:
        """
        Act on the silence so far: end a connection silent for the
        deadline, or send a PING when one is due (see L{Keepalive}).

        @param judge: C{False} to send PINGs but declare nobody dead (for a
            check that ran late: the silence it sees may be its own).
        @return: seconds until something is due, or C{None} once the
            connection is closing.
        """
        if self._done or self._closing:
            return None
        keepalive = self.keepalive
        now = self.clock.seconds()
        silent = now - self._lastReceived
        dies = self._lastReceived + keepalive.deadline
        if judge and now >= dies:
            self.log.warn(
                self.DEAD,
                node=self.nodeName or self.peerLabel(),
                silent=silent,
            )
            if self.meter is not None:
                self.meter.keepaliveTimedOut(self)
            self.close(ErrorCode.KEEPALIVE_TIMEOUT, f"nothing heard for {silent:.1f}s")
            self._abortNow()
            return None
        if self.version is None:
            return max(dies - now, 0.0)  # no PING before HELLO
        lastPing = self._lastPing
        if lastPing is not None and lastPing >= self._lastReceived:
            nextPing = lastPing + keepalive.interval  # pinged; nothing heard since
        elif self.isClient:
            nextPing = self._lastReceived + keepalive.interval
        else:
            nextPing = self._lastReceived + max(
                keepalive.interval, keepalive.deadline - keepalive.interval
            )
        if now >= nextPing:
            self._pingsSent += 1
            self._sendFrame(wire.Ping(_PING_COUNTER.pack(self._pingsSent)))
            self._lastPing = now
            nextPing = now + keepalive.interval
        return max(min(nextPing, dies) - now, 0.0)


class KeepaliveSweep:
    """
    One timer for the keepalive of many tunnels, instead of one each.

    A server holds a tunnel per edge node.  With a timer per tunnel, ten
    thousand idle agents kept ten thousand C{IDelayedCall}s in the
    reactor's heap and rescheduled one every millisecond: a quarter of an
    idle server's CPU (C{bench/agents.py}).  The sweep looks at every
    tunnel once per C{period} instead, so a dead peer is found between
    C{deadline} and C{deadline + period} seconds after it fell silent.

    A sweep that runs more than a period late judges nobody dead that
    round: the reactor was stalled, and the silence it would see is its
    own (the peers' bytes are waiting to be read).
    """

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self.clock = clock
        self.period = period
        self._tunnels: set[Tunnel] = set()
        self._call: IDelayedCall | None = None
        self._due = 0.0

    def __len__(self) -> int:
        return len(self._tunnels)

    def add(self, tunnel: Tunnel) -> None:
        self._tunnels.add(tunnel)
        if self._call is None:
            self._schedule()

    def discard(self, tunnel: Tunnel) -> None:
        self._tunnels.discard(tunnel)
        if not self._tunnels and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.period
        self._call = self.clock.callLater(self.period, self._sweep)

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        judge = now - self._due <= self.period
        for tunnel in list(self._tunnels):
            if now - tunnel._lastReceived < tunnel.keepalive.interval:
                # heard from within an interval: nothing can be due yet (the
                # common case, kept to a comparison for ten thousand tunnels)
                continue
            tunnel.checkKeepalive(judge=judge)
        if self._tunnels and self._call is None:
            self._schedule()


_PING_COUNTER = struct.Struct("!Q")


def drainTunnels(
    clock: IReactorTime, tunnels: list[Tunnel], timeout: float, text: str, log: Logger
) -> Deferred[bool]:
    """
    End C{tunnels} gracefully: drain each (GOAWAY: the peer opens no new
    streams, and each tunnel closes once its streams are done), and after
    C{timeout} seconds close whatever is still open, saying so on C{log}.
    A C{timeout} of 0 closes them at once.

    What a stopping server does to its agents' tunnels, and a stopping
    agent to its servers'.

    @return: fires when every tunnel is gone: with C{True} if they all
        drained before the timeout, else C{False}.
    """
    lost = gatherResults([tunnel.whenLost() for tunnel in tunnels])
    if timeout <= 0:
        for tunnel in tunnels:
            tunnel.close(ErrorCode.SHUTTING_DOWN, text)
        return lost.addCallback(lambda _: False)
    for tunnel in tunnels:
        tunnel.drain(text)

    def late() -> None:
        log.warn(
            "drain timeout of {timeout:g}s: closing {streams} stream(s) still open",
            timeout=timeout,
            streams=sum(tunnel.streamCount for tunnel in tunnels),
        )
        for tunnel in tunnels:
            tunnel.close(ErrorCode.SHUTTING_DOWN, f"{text}: drain timeout")

    call = clock.callLater(timeout, late)

    def done(_: object) -> bool:
        if call.active():
            call.cancel()
            return True
        return False

    return lost.addCallback(done)


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


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d


class _Outcome(Generic[_T]):
    """
    A result that happens once and that any number of callers may wait for,
    each with a Deferred of their own (so nobody's callbacks change
    another's result, and an outcome nobody waits for logs nothing).
    """

    def __init__(self) -> None:
        self._result: _T | Failure | None = None
        self._fired = False
        self._waiters: list[Deferred[_T]] = []

    def observe(self) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        if self._fired:
            self._deliver(d)
        else:
            self._waiters.append(d)
        return d

    def fire(self, result: _T | Failure) -> None:
        if self._fired:
            return
        self._fired, self._result = True, result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def _deliver(self, d: Deferred[_T]) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)  # type: ignore[arg-type]
