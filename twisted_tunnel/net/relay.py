# -*- test-case-name: tests.net.test_relay -*-
"""
Relaying bytes between two connections with back-pressure both ways.

This is C{twisted.protocols.portforward} grown up: each side is paused
until the other is connected, then each transport is registered as the
other's producer, so a slow reader on either side slows the writer on the
other and nothing is buffered without bound; half-closes (EOF) travel
across, and an abortive end on one side aborts the other.

Either side may be a TCP connection, a TLS connection or a tunnel
L{Stream<twisted_tunnel.mux.Stream>}: all are ordinary transports.

A relay that stops making progress is reaped (L{RelayReaper}): an idle
deadline for a relay that moves no bytes at all, a much shorter one once
either side has sent its EOF (or gone), and a check, while a side is
paused, of whether the connection under it was closed or reset, which a
transport that is not reading cannot see by itself.
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any
from typing import Protocol as TypingProtocol

from attrs import frozen
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._twisted import queuedBytes
from .sockets import noDelay, tcpSocket, unsentBytes
from .transports import ITunnelStream, layers, pushProducer

#: Default idle deadline of a relayed stream, in seconds: no byte either
#: way for this long closes it.  Kubernetes' own for exec, attach and
#: port-forward sessions is 4 hours (the kubelet's
#: C{--streaming-connection-idle-timeout}); a tunnel that cut them sooner
#: would break what the cluster allows, and an idle C{kubectl logs -f} of a
#: quiet pod, which has no timeout of its own, lives as long.
DEFAULT_IDLE_TIMEOUT = 4 * 3600.0

#: Default half-close deadline, in seconds: once either side has sent its
#: EOF (or closed), the relay is closed after this long without a byte
#: moving or being flushed.  The inactivity timeout of HAProxy's
#: C{timeout client-fin}/C{server-fin} for half-closed connections, and
#: nginx's C{proxy_read_timeout}: a side that said it is done gets a minute
#: of silence for the answer, and a transfer that keeps moving is never cut.
DEFAULT_HALF_CLOSED_TIMEOUT = 60.0

#: The longest time between two sweeps of a L{RelayReaper}.
MAX_SWEEP_PERIOD = 15.0

# tcp_info's first byte (Linux include/net/tcp_states.h): the peer sent its
# FIN in these states, and in TCP_CLOSE the connection was reset
_PEER_FINISHED_STATES = frozenset({6, 8, 9, 11})  # TIME_WAIT CLOSE_WAIT LAST_ACK CLOSING
_TCP_CLOSE = 7


@frozen
class RelayTimeouts:
    """
    The deadlines of relayed streams; 0 turns one off.

    @ivar idle: seconds without a byte either way before a relay is closed.
    @ivar halfClosed: the same, once either side has sent EOF or gone.
    """

    idle: float = DEFAULT_IDLE_TIMEOUT
    halfClosed: float = DEFAULT_HALF_CLOSED_TIMEOUT

    @property
    def period(self) -> float:
        """How often a L{RelayReaper} looks: a quarter of the shorter deadline."""
        active = [t for t in (self.idle, self.halfClosed) if t > 0]
        return min(min(active) / 4, MAX_SWEEP_PERIOD) if active else MAX_SWEEP_PERIOD


#: The default deadlines (a module-level value: safe as an argument default).
DEFAULT_RELAY_TIMEOUTS = RelayTimeouts()


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    One end of a relay.

    Built with the other end as C{peer} when that end is already connected
    (then the two are spliced as soon as this one connects); otherwise it
    waits, paused, for L{splice}.
    """

    def __init__(
        self, peer: RelayProtocol | None = None, reaper: RelayReaper | None = None
    ) -> None:
        """
        @param reaper: what holds the relay to its deadlines once spliced.
        """
        self.peer = peer
        self.reaper = reaper
        self._early: list[bytes] = []
        self._readClosed = False
        self._writeClosed = False
        self._lostBeforeSplice: Failure | None = None
        self.spliced = False
        #: the relay this end is part of, once spliced
        self.relay: Relay | None = None
        #: whether the relay paused this end's reading (the other end pushes back)
        self.readingPaused = False

    def connectionMade(self) -> None:
        noDelay(self.transport)
        peer = self.peer
        if peer is not None and peer._lostBeforeSplice is not None:
            # the other end came and went before we connected: pass on what
            # it said and how it ended, rather than wait for it forever
            self.peer = None
            early, peer._early = peer._early, []
            for data in early:
                self.transport.write(data)  # type: ignore[union-attr]
            _end(self.transport, peer._lostBeforeSplice)
        elif peer is not None and peer.connected:
            splice(self, peer, self.reaper)
        else:
            self.readingPaused = True
            pushProducer(self.transport).pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.spliced and self.peer is not None:
            relay = self.relay
            if relay is not None:
                relay.moved += len(data)
            self.peer.transport.write(data)  # type: ignore[union-attr]
        else:
            # a transport may deliver what it had already read when paused
            self._early.append(data)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if self.relay is not None:
            self.relay.halfClose()
        if self.spliced and self.peer is not None:
            halfClose(self.peer.transport)
        self._closeIfShut()

    def writeConnectionLost(self) -> None:
        self._writeClosed = True
        self._closeIfShut()

    def _closeIfShut(self) -> None:
        # TCP does not close a connection whose two halves are shut: we must
        if self._readClosed and self._writeClosed and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.connected = False
        if self.relay is not None:
            self.relay.endLost(self)
        peer, self.peer = self.peer, None
        if not self.spliced:
            self._lostBeforeSplice = reason
        if peer is None or not peer.connected or peer.transport is None:
            return
        peer.peer = None
        peer.transport.unregisterProducer()  # type: ignore[attr-defined]
        peer.peerLost(reason)

    def peerLost(self, reason: Failure) -> None:
        """
        The other end is gone, with C{reason}: end this one the same way
        (L{_end}: a close after an orderly end, an abort once sent after
        anything else).

        A near end that opened its far end early (a tunnel stream spliced
        before the agent answered its OPEN) overrides this to answer a
        failed open its own way: the stream ends with the open's failure
        (a L{TunnelError<twisted_tunnel.errors.TunnelError>}), which is no
        reason to reset the client's connection, and a front door may still
        owe its client an answer (a C{502} with the reason).
        """
        _end(self.transport, reason)


class _RelayEnds(Factory):
    """Builds relay ends that wait, paused, for L{splice}.  Quiet: one per connection."""

    noisy = False
    protocol = RelayProtocol


#: The factory to connect (or open) the far end of a relay with: a
#: L{RelayProtocol} that reads nothing until L{splice}, so that nothing from
#: it can overtake what the near end must say first (a CONNECT door's
#: C{200}).  Shared by the CONNECT door, the forwards and the agent.
relayEnds = _RelayEnds()


def splice(a: RelayProtocol, b: RelayProtocol, reaper: RelayReaper | None = None) -> Relay:
    """
    Join two connected relay ends: from now on each forwards to the other,
    each transport is the other's producer, and both are reading.

    @param reaper: holds the relay to its deadlines (L{RelayReaper}).
    """
    a.peer, b.peer = b, a
    a.spliced = b.spliced = True
    relay = Relay(a, b)
    a.relay = b.relay = relay
    assert a.transport is not None and b.transport is not None
    a.transport.registerProducer(_Reading(b), True)  # type: ignore[attr-defined]
    b.transport.registerProducer(_Reading(a), True)  # type: ignore[attr-defined]
    for this, other in ((a, b), (b, a)):
        early, this._early = this._early, []
        for data in early:
            other.transport.write(data)  # type: ignore[union-attr]
        if this._readClosed:
            relay.halfClose()
            halfClose(other.transport)
    for end in (a, b):
        if end.connected and end.transport is not None:
            end.readingPaused = False
            pushProducer(end.transport).resumeProducing()
    if reaper is not None and not relay.gone:
        reaper.add(relay)
    return relay


class RelayEnd(TypingProtocol):
    """
    One side of a L{Relay}, as its deadlines see it: a L{RelayProtocol}, or
    a side of an upgraded HTTP connection
    (L{twisted_tunnel.http.engine}), which relays raw bytes too.
    """

    @property
    def transport(self) -> Any:
        """The side's transport (C{None} before it connects)."""

    @property
    def readingPaused(self) -> bool:
        """Whether the relay stopped reading from this side (the other pushes back)."""


class Relay:
    """
    Two spliced ends, and what their deadlines need: how much has moved,
    whether either side has sent EOF, which ends are gone.

    @ivar moved: bytes received by either end (and one per EOF), ever.
    @ivar halfClosed: either side sent EOF, or one end is gone and the
        other is being closed.
    """

    def __init__(self, a: RelayEnd, b: RelayEnd) -> None:
        self.ends = (a, b)
        self.moved = 0
        self.halfClosed = False
        self.reaper: RelayReaper | None = None
        self._lost: set[RelayEnd] = set()
        self._progress = -1
        self._lastProgress = 0.0

    def __repr__(self) -> str:
        a, b = (_describe(end) for end in self.ends)
        return f"<Relay {a} <-> {b}>"

    @property
    def gone(self) -> bool:
        return len(self._lost) == len(self.ends)

    def halfClose(self) -> None:
        if not self.halfClosed:
            self.halfClosed = True
            self.moved += 1  # the deadline counts from the EOF

    def endLost(self, end: RelayEnd) -> None:
        """
        C{end} is gone: the other is being ended, and gets the half-close
        deadline to finish flushing what it was given (a close does not
        finish while a peer does not read).
        """
        self._lost.add(end)
        self.halfClose()
        if self.gone and self.reaper is not None:
            self.reaper.discard(self)

    def progress(self) -> int:
        """Bytes moved so far, counting what the streams sent from their backlogs."""
        moved = self.moved
        for end in self.ends:
            transport = end.transport
            if ITunnelStream.providedBy(transport):
                moved += transport.bytesSent + transport.bytesReceived
        return moved

    def check(self, now: float, timeouts: RelayTimeouts) -> str | None:
        """
        Whether the relay is past a deadline, or a side's connection is gone
        unseen.

        @return: why to reap it (C{idle}, C{half_closed}, C{peer_reset}),
            or C{None}.
        """
        progress = self.progress()
        if progress != self._progress:
            self._progress, self._lastProgress = progress, now
        for end in self.ends:
            if not end.readingPaused or end in self._lost:
                continue
            gone = peerGone(end.transport)
            if gone == "reset":
                return "peer_reset"
            if gone == "finished" and not self.halfClosed:
                # an EOF behind data the paused transport has not read
                self.halfClosed = True
                self._lastProgress = now
        limit = timeouts.halfClosed if self.halfClosed else timeouts.idle
        if limit > 0 and now - self._lastProgress >= limit:
            return "half_closed" if self.halfClosed else "idle"
        return None

    def abort(self) -> None:
        """Close both sides now (RESET on a stream, RST on TCP)."""
        for end in self.ends:
            transport = end.transport
            if end not in self._lost and transport is not None:
                abort = getattr(transport, "abortConnection", transport.loseConnection)
                abort()


def _describe(end: RelayEnd) -> str:
    transport = end.transport
    if transport is None:
        return "-"
    peer = transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


def peerGone(transport: object) -> str | None:
    """
    Whether the far side of C{transport} has finished, as far as can be
    told without reading from it: C{"finished"} (it sent EOF or CLOSE),
    C{"reset"} (its TCP connection was reset), or C{None}.

    A transport paused by back-pressure does not read, so it never sees
    the EOF or the reset that would end it: for a tunnel stream, the
    stream knows (the frames still arrive); for TCP (under TLS too), the
    kernel's C{TCP_INFO} state says it, on Linux.
    """
    if ITunnelStream.providedBy(transport):
        return "finished" if transport.peerFinished else None
    sock = tcpSocket(transport)
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, option, 1)[0]
    except (OSError, IndexError):
        return None
    if state == _TCP_CLOSE:
        return "reset"
    if state in _PEER_FINISHED_STATES:
        return "finished"
    return None


class RelayReaper:
    """
    Holds many relays to their deadlines with one timer (see
    L{RelayTimeouts}), like L{KeepaliveSweep<twisted_tunnel.mux.KeepaliveSweep>}
    does tunnels.  Progress is sampled at each sweep (nothing is timed on
    the path of the bytes), so a relay is closed between its deadline and
    two sweep periods after it.  The timer runs only while there are relays.

    @ivar reaped: relays closed, by why (C{idle}, C{half_closed},
        C{peer_reset}).
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, timeouts: RelayTimeouts = DEFAULT_RELAY_TIMEOUTS
    ) -> None:
        self.clock = clock
        self.timeouts = timeouts
        self.reaped: Counter[str] = Counter()
        self._relays: set[Relay] = set()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._relays)

    def add(self, relay: Relay) -> None:
        relay.reaper = self
        relay._progress, relay._lastProgress = relay.progress(), self.clock.seconds()
        self._relays.add(relay)
        if self._call is None:
            self._call = self.clock.callLater(self.timeouts.period, self.sweep)

    def discard(self, relay: Relay) -> None:
        self._relays.discard(relay)
        if not self._relays and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def sweep(self) -> None:
        """Close every relay past its deadline; one log line for all of them."""
        self._call = None
        now = self.clock.seconds()
        reaped: Counter[str] = Counter()
        for relay in list(self._relays):
            why = relay.check(now, self.timeouts)
            if why is None:
                continue
            reaped[why] += 1
            self.log.debug("closing {relay}: {why}", relay=repr(relay), why=why)
            self.discard(relay)
            relay.abort()
        if reaped:
            self.reaped.update(reaped)
            self.log.info(
                "closed {count} relayed stream(s) that made no progress: {reasons} "
                "(idle timeout {idle:g}s, half-close timeout {halfClosed:g}s)",
                count=sum(reaped.values()),
                reasons=", ".join(f"{n} {why}" for why, n in sorted(reaped.items())),
                idle=self.timeouts.idle,
                halfClosed=self.timeouts.halfClosed,
            )
        if self._relays and self._call is None:
            self._call = self.clock.callLater(self.timeouts.period, self.sweep)


def halfClose(transport: ITransport | None) -> None:
    """
    Pass an EOF on: half-close when the transport can (TCP, streams), or
    close once its buffer is flushed when it cannot (TLS has no half-close).

    The method is looked up on the class: C{TLSMemoryBIOProtocol} passes
    unknown attributes on to the TCP transport under it, and a TCP
    half-close there would end the TLS session without its C{close_notify}.
    """
    if transport is None:
        return
    if getattr(type(transport), "loseWriteConnection", None) is not None:
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()


def _end(transport: Any, reason: Failure) -> None:
    """
    End C{transport} the way its peer ended: close after an orderly end,
    abort after anything else, in both cases once what the peer said
    before it ended has been sent on.
    """
    if reason.check(ConnectionDone) or not hasattr(transport, "abortConnection"):
        transport.loseConnection()
    else:
        abortWhenSent(transport)


#: How soon a connection waiting to be reset first looks again at its
#: kernel send queue; each look after doubles the wait, up to
#: L{DRAIN_POLL_MAX}: a peer that reads costs a few looks, one that does not
#: read (until the relay's half-close deadline) about one a second, however
#: many connections it holds that way.
DRAIN_POLL = 0.01
DRAIN_POLL_MAX = 1.0


def abortWhenSent(transport: Any) -> None:
    """
    Abort C{transport} once what was written to it has left this process.

    A peer that resets its connection right after speaking (a kubelet that
    closes an exec connection with input unread: the kernel sends RST)
    must not lose its last words on the way through a relay: over one TCP
    connection they arrive before the reset.  C{abortConnection} drops
    what Twisted still holds for the socket, and the last words of a
    stream that arrive with its RESET in one read are still held there.
    So: a tunnel stream sends its backlog, then RESET; a TCP, Unix or TLS
    transport (or a wrapper over one) is aborted when its send buffer drains
    (a pull producer is asked for more exactly then) and the kernel's send
    queue after it: as long as the other side takes to read, bounded by
    the relay's half-close deadline (or the HTTP engine's linger timeout).
    """
    if ITunnelStream.providedBy(transport):
        transport.abortWhenSent()
        return
    connection = _socketUnder(transport)
    if (
        connection is None
        or connection.producer is not None
        or (queuedBytes(connection) == 0 and unsentBytes(connection) == 0)
    ):
        transport.abortConnection()
        return
    connection.registerProducer(_AbortWhenDrained(transport, connection), False)


def _socketUnder(transport: Any) -> FileDescriptor | None:
    """
    The socket's transport under C{transport} (found through its
    L{layers}: TLS, a front door's limiter), or C{None}.
    """
    for layer in layers(transport):
        if isinstance(layer, FileDescriptor):
            return layer
    return None


@implementer(IPullProducer)
class _AbortWhenDrained:
    """
    The pull producer of a connection with bytes queued: Twisted asks it
    for more when its send buffer is empty; then it waits for the kernel's
    send queue to empty too (a reset discards it), looking after
    L{DRAIN_POLL} seconds, then twice as long each time up to
    L{DRAIN_POLL_MAX}, and aborts the transport (the connection, or the TLS
    session over it).
    """

    def __init__(self, transport: Any, connection: FileDescriptor) -> None:
        self.transport = transport
        self.connection = connection
        self._poll: IDelayedCall | None = None
        self._wait = DRAIN_POLL

    def resumeProducing(self) -> None:
        if self._poll is not None and self._poll.active():
            return  # a look is due already
        self._poll = None
        connection = self.connection
        if queuedBytes(connection) != 0 or not connection.connected:
            return  # Twisted asks again when its buffer is empty
        if unsentBytes(connection) > 0:
            clock = IReactorTime(connection.reactor)
            self._poll = clock.callLater(self._wait, self._look)
            self._wait = min(self._wait * 2, DRAIN_POLL_MAX)
            return
        connection.unregisterProducer()
        self.transport.abortConnection()

    def _look(self) -> None:
        self._poll = None
        self.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone already: nothing to abort."""
        if self._poll is not None and self._poll.active():
            self._poll.cancel()
        self._poll = None


@implementer(IPushProducer)
class _Reading:
    """
    The reading side of one end, registered as the producer of the other
    end's transport; it notes whether that end is paused, for
    L{Relay.check}.

    It passes pause and resume on, but not C{stopProducing}: a transport
    that is lost stops its producer I{before} its protocol hears why, and a
    transport's C{stopProducing} is an orderly C{loseConnection}, which
    would turn an abort into a clean close on the other side.  How the other
    side ends is for L{RelayProtocol.connectionLost} to decide.
    """

    def __init__(self, end: RelayProtocol) -> None:
        self._end = end
        self._transport = pushProducer(end.transport)

    def pauseProducing(self) -> None:
        self._end.readingPaused = True
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._end.readingPaused = False
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass
