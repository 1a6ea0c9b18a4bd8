# -*- test-case-name: tests.mux.test_mux -*-
"""
The protocol on the connection between an agent and a server (L{Tunnel}): it speaks
the frames, opens and accepts streams, keeps the connection alive and drains it.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import wire
from ..errors import StreamOpenFailed, StreamOpenTimeout, TunnelClosed
from ..net.sockets import noDelay, tcpKeepalive
from ..wire import ErrorCode, OpenFailReason, ProtocolError
from .interfaces import (
    IEarlyStreamFactory,
    IStreamCarrier,
    ITunnelHandler,
    ITunnelMeter,
    Refused,
    TunnelAddress,
)
from .keepalive import KEEPALIVE_INFO, SERVER_KEEPS_ALIVE, KeepaliveSweep
from .settings import Keepalive, Settings, StreamBudget
from .states import (
    CONNECTION_CLOSED,
    CONNECTION_CLOSING,
    CONNECTION_DRAINING,
    CONNECTION_FAILED,
    CONNECTION_LOST,
    CONNECTION_OPEN,
    MOVES,
    RECEIVING_ENDED,
    SENDING_ENDED,
    ConnectionState,
)
from .stream import _IGNORED, Stream

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

#: GOAWAY codes that end a connection in good order: reading goes on
GRACEFUL = frozenset({ErrorCode.NO_ERROR, ErrorCode.SHUTTING_DOWN})


#: states in which streams may send
_CARRYING = frozenset({CONNECTION_OPEN, CONNECTION_DRAINING})
#: states in which nothing more is read from the peer
_DEAF = frozenset({CONNECTION_FAILED, CONNECTION_CLOSED, CONNECTION_LOST})
#: states in which this end closes, or closed, the connection
_CLOSED_BY_US = frozenset({CONNECTION_CLOSING, CONNECTION_FAILED, CONNECTION_CLOSED})
#: states in which the connection is gone
_GONE = frozenset({CONNECTION_CLOSED, CONNECTION_LOST})


class _PendingOpen:
    """
    An OPEN we sent, waiting for OPEN_OK or OPEN_FAIL.

    @ivar early: the protocol attached to the stream already (its factory
        is an L{IEarlyStreamFactory}), or C{None}: built at OPEN_OK.
    """

    def __init__(
        self,
        stream: Stream,
        factory: IProtocolFactory,
        result: Deferred[IProtocol],
        timeout: IDelayedCall | None,
        early: IProtocol | None = None,
    ) -> None:
        self.stream = stream
        self.factory = factory
        self.result = result
        self.timeout = timeout
        self.early = early

    def cancelTimeout(self) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None


@implementer(IPushProducer, IStreamCarrier)
class Tunnel(Protocol):
    """
    The multiplexing protocol on one agent-server connection.

    Its life is a L{ConnectionState}, changed only through L{_move}.  It
    hands each L{Stream} its frames through the stream's methods for the
    tunnel, and the streams answer through L{IStreamCarrier}.

    @ivar nodeName: which edge node this tunnel belongs to, once known
        (for logs and addresses).
    @ivar version: the agreed protocol version, once HELLO is done.
    @ivar lastReceived: when we last heard from the peer (the clock's
        seconds): what keepalive judges.
    @ivar sendMaxFrame: the largest DATA payload the peer accepts.
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
        versions: tuple[int, ...] | None = None,
    ) -> None:
        """
        @param peerMayOpen: C{False} on a side that accepts no streams (a
            server): the peer's OPENs are refused, and a flood of them ends
            the connection (L{MAX_FORBIDDEN_OPENS}).
        @param budget: limits shared with other tunnels (an agent's, one
            per server replica) on the streams the peer opens.
        @param versions: the protocol versions this end speaks, oldest
            first (by default L{wire.SUPPORTED_VERSIONS}): tests play an
            older peer with it.
        """
        self.versions = versions
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
        #: version 2 or later: the opener of a stream may send DATA and EOF
        #: before OPEN_OK (L{IEarlyStreamFactory}), and CLOSE may be FINAL
        self.earlyOpens = False
        self.finalClose = False

        self._decoder = wire.FrameDecoder(max(settings.maxFrame, wire.DEFAULT_MAX_FRAME))
        self.sendMaxFrame = wire.DEFAULT_MAX_FRAME
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
        self._state = CONNECTION_OPEN
        self._drainSent = False  # our GOAWAY SHUTTING_DOWN: we take no new streams
        self.lastReceived = 0.0
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
        self.lastReceived = self.clock.seconds()
        if self._keepaliveSweep is not None:
            self._keepaliveSweep.add(self)
        else:
            self._scheduleKeepalive(self.keepalive.interval)
        if self.meter is not None:
            self.meter.tunnelStarted(self)
        if self.isClient:
            versions = self._versions()
            self.sendFrame(wire.Hello(versions[0], versions[-1], self._helloInfo()))

    def _versions(self) -> tuple[int, ...]:
        return self.versions if self.versions is not None else wire.SUPPORTED_VERSIONS

    def whenEstablished(self) -> Deferred[Tunnel]:
        """
        Fires once HELLO is done both ways; fails if the connection ends first.
        """
        return self._established.observe()

    def whenLost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        return self._lost.observe()

    @property
    def state(self) -> ConnectionState:
        """Where the connection is in its life."""
        return self._state

    def _move(self, new: ConnectionState) -> None:
        """The one place the state changes; C{new} must be a legal move."""
        assert new in MOVES[self._state], f"tunnel {self._state.name} -> {new.name}"
        self._state = new

    @property
    def established(self) -> bool:
        return self.version is not None and self._state not in _GONE

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
        if self._state in _GONE:
            return  # told twice (a test's clean-up): the first time did it all
        closed = self._state is CONNECTION_CLOSING or self._state is CONNECTION_FAILED
        self._move(CONNECTION_CLOSED if closed else CONNECTION_LOST)
        for call in (self._keepaliveCall, self._abortCall):
            if call is not None and call.active():
                call.cancel()
        self._keepaliveCall = self._abortCall = None
        if self._keepaliveSweep is not None:
            self._keepaliveSweep.discard(self)
        why = f"tunnel to {self.nodeName or 'peer'} lost: {reason.getErrorMessage()}"
        for pending in list(self._pending.values()):
            pending.cancelTimeout()
            error = TunnelClosed(why)
            if pending.early is not None:
                # its protocol hears that the open failed, not that a
                # connection it had was lost
                pending.stream.tunnelLost(Failure(error))
            pending.result.errback(error)
        self._pending.clear()
        for accepting in list(self._accepting.values()):
            accepting.cancel()
        self._accepting.clear()
        for stream in list(self._streams.values()):
            stream.tunnelLost(Failure(ConnectionLost(why)))
        for stream in self._streams.values():
            self._retire(stream)
            self._releaseBudget(stream)
        self._streams.clear()
        self._ownOpen = self._peerOpened = 0
        self._waitingToSend.clear()
        notEstablished = TunnelClosed(why)
        # what ended it, for a caller that says it in its own words (a failed handshake)
        notEstablished.__cause__ = reason.value
        self._established.fire(Failure(notEstablished))
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
        if self._state not in _CARRYING:
            return
        if code not in GRACEFUL:
            self._fail(wire.GoAway(code, text))
            return
        self._move(CONNECTION_CLOSING)
        self.sendFrame(wire.GoAway(code, text))
        self._loseTransport()

    def _fail(self, goAway: wire.GoAway | None) -> None:
        """
        An error: read nothing more from this peer, even if a graceful
        close is under way; close, with C{goAway} if given, unless closing.
        """
        state = self._state
        if state is CONNECTION_CLOSING:
            self._move(CONNECTION_FAILED)
        elif state in _CARRYING:
            self._move(CONNECTION_FAILED)
            if goAway is not None:
                self.sendFrame(goAway)
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
        if self._state not in _GONE and self._abortCall is None:
            self._abortCall = self.clock.callLater(CLOSE_TIMEOUT, self._abort)

    def drain(self, text: str = "shutting down") -> Deferred[None]:
        """
        Graceful: refuse new streams from now on, let the open ones finish,
        then close.  Fires when the connection is gone.
        """
        done = self.whenLost()
        if not self._drainSent and self._state not in _GONE:
            self._drainSent = True
            if self._state is CONNECTION_OPEN:
                self._move(CONNECTION_DRAINING)
            self.sendFrame(wire.GoAway(ErrorCode.SHUTTING_DOWN, text))
            self._closeIfIdle()
        return done

    def _closeIfIdle(self) -> None:
        if self._state is CONNECTION_DRAINING and not self._streams and not self._pending:
            self.close(ErrorCode.NO_ERROR, "drained")

    def _abort(self) -> None:
        self._abortCall = None
        self._abortNow()

    def _abortNow(self) -> None:
        if self.transport is not None and self._state not in _GONE:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- opening streams -----------------------------------------------------

    def openStream(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float | None = None
    ) -> Deferred[IProtocol]:
        """
        Ask the peer to connect a new stream to C{host}:C{port}, then hand it
        to a protocol built by C{factory}.

        The protocol is built once the peer answers OPEN_OK, so a caller
        learns whether the far side connected before it answers its own
        client (the CONNECT door's C{200}).  A factory that provides
        L{IEarlyStreamFactory} has its protocol built and connected as soon
        as the OPEN is sent instead, so that the protocol's first bytes
        follow the OPEN without waiting a round trip; it hears of a refusal
        in its C{connectionLost} (see L{IEarlyStreamFactory}).

        @return: fires with the connected protocol at OPEN_OK, like
            C{IStreamClientEndpoint.connect}; fails with L{StreamOpenFailed},
            L{StreamOpenTimeout} or L{TunnelClosed}.  Cancelling it resets
            the stream.
        """
        if self.version is None or self._state not in _CARRYING:
            return _failed(TunnelClosed(f"tunnel to {self.nodeName or 'peer'} is not up"))
        if self._state is CONNECTION_DRAINING:
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
        address = TunnelAddress(self.nodeName, host, port)
        early: IProtocol | None = None
        if IEarlyStreamFactory.providedBy(factory):
            try:
                early = factory.buildProtocol(address)
            except Exception:
                return fail()
            if early is None:
                return _failed(
                    StreamOpenFailed(OpenFailReason.INTERNAL, "the protocol factory refused")
                )
        self._nextStreamId += 2
        stream = Stream(self, streamId, address, self.settings.window)
        stream.opening = True

        def cancel(d: Deferred[IProtocol]) -> None:
            pending = self._pending.pop(streamId, None)
            if pending is not None:
                pending.cancelTimeout()
                stream.reset(ErrorCode.CANCEL, "open cancelled")

        result: Deferred[IProtocol] = Deferred(cancel)
        call = None
        if timeout is not None:
            call = self.clock.callLater(timeout, self._openTimedOut, streamId, timeout)
        self._streams[streamId] = stream
        self._ownOpen += 1
        self._pending[streamId] = _PendingOpen(stream, factory, result, call, early)
        self.sendFrame(wire.Open(streamId, host, port))
        if early is not None:
            # the peer's whole window, right behind the OPEN, if it takes
            # DATA before OPEN_OK; else the stream holds it until OPEN_OK
            assert self.peerSettings is not None
            credit = self.peerSettings.window if self.earlyOpens else 0
            stream.attachEarly(early, credit, earlyEof=self.earlyOpens)
        return result

    def _openTimedOut(self, streamId: int, timeout: float) -> None:
        pending = self._pending.pop(streamId, None)
        if pending is None:
            return
        pending.timeout = None
        peer = pending.stream.getPeer()
        error = StreamOpenTimeout(
            f"node {self.nodeName} did not answer the open of {peer.host}:{peer.port} "
            f"within {timeout:g}s"
        )
        # an early stream's protocol hears the open's failure itself
        told = Failure(error) if pending.early is not None else None
        pending.stream.reset(ErrorCode.CANCEL, "open timed out", told)
        pending.result.errback(error)

    # -- IPushProducer, for the connection under us ------------------------

    def pauseProducing(self) -> None:
        self._transportPaused = True

    def resumeProducing(self) -> None:
        self._transportPaused = False
        self._pausedControl = 0
        if self._state not in _CARRYING:
            # streams cannot send any more; flushing them would requeue them forever
            return
        waiting = self._waitingToSend
        while waiting and not self._transportPaused:
            stream = waiting.popleft()
            stream.queuedToSend = False
            stream.resumeSending()
        if self._readingPaused and not self._transportPaused:
            self._resumeReading()

    def stopProducing(self) -> None:
        pass

    # -- sending -------------------------------------------------------------

    # -- IStreamCarrier ------------------------------------------------------

    def maySend(self) -> bool:
        return not self._transportPaused and self._state in _CARRYING

    def wantsToSend(self, stream: Stream) -> None:
        if not stream.queuedToSend:
            stream.queuedToSend = True
            self._waitingToSend.append(stream)

    def sendFrame(self, frame: wire.Frame) -> None:
        if self._state in _GONE or self.transport is None:
            return
        self.transport.write(frame.encode())

    def sendData(self, streamId: int, data: bytes) -> None:
        assert self.transport is not None
        self.transport.writeSequence([wire.dataHeader(streamId, len(data)), data])

    def streamEnded(self, stream: Stream) -> None:
        if stream.ended:
            self._forget(stream.streamId)
            self._closeIfIdle()

    # -- replies ---------------------------------------------------------------

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
        if self._state in _DEAF:
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
        self.sendFrame(frame)

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
        if transport is None or self._state in _GONE:
            return
        transport.resumeProducing()
        if self._decoder.buffered:
            # frames that came in with the ones that made us stop
            self.dataReceived(b"")

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state in _DEAF:
            # a GOAWAY with an error went one way or the other: read no more
            # (a poisoned decoder would raise and log again, a second HELLO
            # would reach the handler again)
            return
        self.lastReceived = self.clock.seconds()
        try:
            frames = self._decoder.feed(data)
            if self._readingPaused:
                # what the transport had read already when we paused it (a
                # TLS record's worth): it waits in the decoder, unparsed
                return
            for frame in frames:
                self._frameReceived(frame)
                if self._state in _DEAF or self._readingPaused:
                    return
        except ProtocolError as e:
            self._protocolError(e)
        except Exception:
            self.log.failure("closing tunnel to {node}: internal error", node=self.nodeName)
            self._fail(wire.GoAway(ErrorCode.INTERNAL_ERROR, "internal error"))

    def _protocolError(self, error: ProtocolError) -> None:
        """The peer broke the protocol: one log line, GOAWAY, read no more, close."""
        self.log.warn(
            "closing tunnel to {node}: protocol error: {reason}",
            node=self.nodeName or self.peerLabel(),
            reason=error.text,
            code=ErrorCode.named(error.code),
        )
        self._fail(wire.GoAway(error.code, error.text))

    @property
    def closing(self) -> bool:
        """
        Whether this end is closing, or closed, the connection (L{close} was
        called, or the peer's GOAWAY reported an error).
        """
        return self._state in _CLOSED_BY_US

    def peerLabel(self) -> str:
        """C{host:port} of the peer, for log lines (C{peer} before there is one)."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        return f"{host}:{getattr(peer, 'port', '')}" if host else "peer"

    def _frameReceived(self, frame: wire.Frame) -> None:
        """
        Act on one frame.  Matched by class, so each branch sees its frame's
        own fields (checked by mypy); DATA first, as nearly every frame is.
        """
        if self.version is None and not isinstance(frame, wire.Hello):
            if isinstance(frame, wire.GoAway):
                self._goAwayReceived(frame)
                return
            raise ProtocolError(f"expected HELLO, got {frame.TYPE.name}")
        match frame:
            case wire.Data():
                self._stream(frame.streamId, True).dataArrived(frame.data)
            case wire.Window():
                self._stream(frame.streamId).creditArrived(frame.increment)
            case wire.Open():
                self._openReceived(frame)
            case wire.OpenOk():
                self._openOkReceived(frame.streamId)
            case wire.OpenFail():
                self._openFailReceived(frame)
            case wire.Eof():
                self._stream(frame.streamId, True).eofArrived()
            case wire.Close():
                self._terminalReceived(frame.streamId, None, frame.final and self.finalClose)
            case wire.Reset():
                self._terminalReceived(frame.streamId, (frame.code, frame.text))
            case wire.Ping():
                self._pingReceived(frame)
            case wire.Pong():
                pass
            case wire.GoAway():
                self._goAwayReceived(frame)
            case wire.Hello():
                self._helloReceived(frame)

    def _stream(self, streamId: int, early: bool = False) -> Stream:
        """
        The live stream with this id, or L{_IGNORED} for one that ended
        recently (frames may cross), or a protocol error for one that never
        existed.

        @param early: the frame is DATA or EOF, which the opener may send
            before our OPEN_OK on a version 2 connection: the stream holds
            them (within the window it granted) until it is connected.
        """
        stream = self._streams.get(streamId)
        if stream is not None:
            if streamId in self._accepting:
                if not (early and self.earlyOpens):
                    raise ProtocolError(f"frame on stream {streamId} before OPEN_OK")
            elif streamId in self._pending:
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
        versions = self._versions()
        if self.isClient:
            if hello.minVersion != hello.maxVersion or hello.minVersion not in versions:
                raise ProtocolError(
                    f"server chose version {hello.minVersion}..{hello.maxVersion}, which we did "
                    "not offer",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            version = hello.minVersion
        else:
            common = [v for v in versions if hello.minVersion <= v <= hello.maxVersion]
            if not common:
                ours = f"{versions[0]}..{versions[-1]}"
                raise ProtocolError(
                    f"no common protocol version: peer speaks "
                    f"{hello.minVersion}..{hello.maxVersion}, we speak {ours}",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            version = common[-1]
        peer = Settings.fromInfo(hello.info)
        self.peerInfo = hello.info
        self.peerSettings = peer
        self.sendMaxFrame = peer.maxFrame
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
        self.earlyOpens = self.finalClose = version >= wire.EARLY_OPEN_VERSION
        if not self.isClient:
            self.sendFrame(wire.Hello(version, version, self._helloInfo()))
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
        if self._drainSent or self._state not in _CARRYING:
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
        stream = Stream(self, streamId, address, self.settings.window)
        if budget is not None:
            stream.budgeted = self.settings.window
        self._streams[streamId] = stream
        self._peerOpened += 1
        accepting = maybeDeferred(self.handler.openRequested, self, address)
        self._accepting[streamId] = accepting

        def accepted(protocol: IProtocol) -> None:
            self._accepting.pop(streamId, None)
            if stream.receiving is RECEIVING_ENDED or self._state in _GONE:
                # Too late: the peer gave up, or the tunnel is gone, and the
                # stream has been told already, while it had no protocol.
                stream.attachEnded(protocol, Failure(ConnectionDone("stream cancelled by peer")))
                return
            self.sendFrame(wire.OpenOk(streamId))
            assert self.peerSettings is not None
            stream.attach(protocol, self.peerSettings.window)

        def refused(failure: Failure) -> None:
            self._accepting.pop(streamId, None)
            if stream.receiving is RECEIVING_ENDED or self._state in _GONE:
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
        assert self.peerSettings is not None
        if pending.early is not None:
            # a version 1 peer granted nothing before this answer
            stream.openAccepted(0 if self.earlyOpens else self.peerSettings.window)
            pending.result.callback(pending.early)
            return
        stream.opening = False
        try:
            protocol = pending.factory.buildProtocol(stream.getPeer())
        except Exception:
            failure = Failure()
            stream.reset(ErrorCode.INTERNAL_ERROR, "the protocol factory failed")
            pending.result.errback(failure)
            return
        if protocol is None:
            stream.reset(ErrorCode.CANCEL, "refused by the local factory")
            pending.result.errback(
                StreamOpenFailed(OpenFailReason.INTERNAL, "the protocol factory refused")
            )
            return
        stream.attach(protocol, self.peerSettings.window)
        pending.result.callback(protocol)

    def _abandoned(self, streamId: int) -> Stream | None:
        """
        Our stream C{streamId} if we gave up its open (timeout, cancel) and
        sent RESET before the peer's answer came.
        """
        stream = self._streams.get(streamId)
        if (
            stream is not None
            and stream.opening
            and streamId not in self._pending
            and stream.sending is SENDING_ENDED
            and stream.receiving is not RECEIVING_ENDED
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
                abandoned.opening = False
                abandoned.endArrived(None)
                return
            self._stream(frame.streamId)
            raise ProtocolError(f"OPEN_FAIL for stream {frame.streamId}, which is not opening")
        pending.cancelTimeout()
        error = StreamOpenFailed(frame.reason, frame.text)
        # an early stream's protocol hears it first, then whoever opened
        pending.stream.openRefused(Failure(error) if pending.early is not None else None)
        self._forget(frame.streamId)
        pending.result.errback(error)
        self._closeIfIdle()

    def _terminalReceived(
        self, streamId: int, reset: tuple[int, str] | None, final: bool = False
    ) -> None:
        pending = self._pending.pop(streamId, None)
        if pending is not None:
            # the peer reset an open it has not answered: treat as a failure
            pending.cancelTimeout()
            code, text = reset if reset is not None else (ErrorCode.CANCEL, "closed")
            error = StreamOpenFailed(OpenFailReason.INTERNAL, text)
            if pending.early is not None:
                pending.stream.openEnded(Failure(error))
            else:
                pending.stream.opening = False
                pending.stream.endArrived(reset)
            pending.result.errback(error)
            return
        accepting = self._accepting.pop(streamId, None)
        self._stream(streamId).endArrived(reset, final)
        if accepting is not None:
            accepting.cancel()

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
        first = self.peerGoAway is None
        if first:
            self.peerGoAway = (code, text)
        if code in GRACEFUL and self.version is not None:
            self.log.info(
                "tunnel to {node} is draining: {reason}", node=self.nodeName, reason=text
            )
            if first:
                if self._state is CONNECTION_OPEN:
                    self._move(CONNECTION_DRAINING)
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
        self._fail(None)

    # -- keepalive -----------------------------------------------------------

    def _scheduleKeepalive(self, delay: float) -> None:
        self._keepaliveCall = self.clock.callLater(max(delay, 0.0), self._keepaliveTick)

    def _keepaliveTick(self) -> None:
        self._keepaliveCall = None
        delay = self.checkKeepalive()
        if delay is not None:
            self._scheduleKeepalive(delay)

    def _keepsAlive(self) -> bool:
        """
        Whether this end pings every C{interval} of silence (it keeps the
        connection alive) rather than only probing before the deadline.

        A server that checks its tunnels with a L{KeepaliveSweep} keeps
        alive those of agents that let it: its PINGs fall due together, slot
        by slot, so their PONGs come back together and wake its reactor once
        for many, where agents' PINGs arrive one by one, each a wakeup of its
        own.  Both sides say C{keepalive: "server"} in HELLO: the agent that
        it lets the server ping, the server that it does.  Where either does
        not (an older peer), the agent pings and the server only probes, as
        before, so a mixed fleet never has both sides pinging.
        """
        if self.isClient:
            return self.peerInfo.get(KEEPALIVE_INFO) != SERVER_KEEPS_ALIVE
        return (
            self._keepaliveSweep is not None
            and self.peerInfo.get(KEEPALIVE_INFO) == SERVER_KEEPS_ALIVE
        )

    def checkKeepalive(self, *, judge: bool = True) -> float | None:
        """
        Act on the silence so far: end a connection silent for the
        deadline, or send a PING when one is due (see L{Keepalive} and
        L{_keepsAlive}).

        @param judge: C{False} to send PINGs but declare nobody dead (for a
            check that ran late: the silence it sees may be its own).
        @return: seconds until something is due, or C{None} once the
            connection is closing.
        """
        if self._state not in _CARRYING:
            return None
        keepalive = self.keepalive
        now = self.clock.seconds()
        silent = now - self.lastReceived
        dies = self.lastReceived + keepalive.deadline
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
        if lastPing is not None and lastPing >= self.lastReceived:
            nextPing = lastPing + keepalive.interval  # pinged; nothing heard since
        elif self._keepsAlive():
            nextPing = self.lastReceived + keepalive.interval
        else:
            nextPing = self.lastReceived + max(
                keepalive.interval, keepalive.deadline - keepalive.interval
            )
        if now >= nextPing:
            self._pingsSent += 1
            self.sendFrame(wire.Ping(_PING_COUNTER.pack(self._pingsSent)))
            self._lastPing = now
            nextPing = now + keepalive.interval
        return max(min(nextPing, dies) - now, 0.0)


_PING_COUNTER = struct.Struct("!Q")


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
