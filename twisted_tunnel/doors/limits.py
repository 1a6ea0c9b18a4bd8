# -*- test-case-name: tests.doors.test_security_http -*-
"""
What the clients of one front door may cost the server: connections, and
memory held for clients that do not read.

Every front door (the HTTP, HTTPS and raw TCP proxy listeners, the CONNECT
door, the C{--forward} listeners) is built by wrapping its factory with
L{ClientLimiter.wrap}, the same way for all of them:

 - B{Connections}, per listener and per client address, are counted as
   they are accepted; one over either cap is closed at once (before any
   TLS handshake: the cheapest refusal there is), counted, and logged.

 - B{Memory held for clients that do not read.}  Back-pressure already
   bounds what I{one} client can make us hold: when its socket's send
   buffer is full (Twisted pauses the producer at 64 KiB), we stop
   reading its upstream, and a tunnel stream then holds at most one
   window (1 MiB by default) that the agent was allowed to send.  That is
   about 1.1 MiB per client that never reads, and nothing bounded the
   number of such clients: 150 of them held 127 MB.  So each listener
   has a budget of buffered bytes: what is queued toward its clients'
   sockets plus what their upstreams (tunnel streams) buffer for them.

   When the budget is exhausted, the client that has held its bytes the
   longest without reading is closed (aborted: its buffers are freed at
   once), then the next, until the listener is within budget.  Why that
   design, and not the others:

    - I{stop taking from the tunnel} is what back-pressure already does;
      it bounds each client to one window, not the sum;
    - I{refusing new connections} once the budget is spent bounds memory
      but hands the listener to whoever holds the memory: 250 clients that
      never read would lock kube-apiserver and Prometheus out;
    - I{closing the worst offender} bounds memory and hurts only clients
      that stopped reading: a client that reads, however slowly, drains
      its socket buffer and is resumed (its "stalled since" clock starts
      again), while one that never reads stays stalled for ever and is
      the first chosen.  Ties go to the larger holder.

   Only clients that pushed back (their transport paused us) are looked
   at, once a second while there are any, so a listener whose clients
   all read costs nothing here: no per-byte or per-request work, no
   timer.  The wrapper adds no call to the data path either: reads and
   writes go straight between the protocol and the socket.

Each hit is counted by listener and limit (the metric
C{edge_tunnel_server_client_limit_hits_total}) and logged: one line per
listener and limit every L{LOG_INTERVAL} seconds at most (a flood of
refusals must not flood the log), then one that says how many were left
out (L{twisted_tunnel._logthrottle}).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from attrs import frozen
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from .._logthrottle import LogThrottle
from .._text import printable
from ..net._twisted import innerProducer, queuedBytes

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS",
    "LIMITS",
    "LOG_INTERVAL",
    "ClientLimiter",
    "ClientLimits",
    "frontDoorLabel",
]

MiB = 1024 * 1024

#: The names of the limits, as the metric's C{limit} label has them.
LIMITS = ("connections", "connections_per_address", "buffered_bytes")

#: The defaults of L{ClientLimits} (see there why these numbers).
DEFAULT_MAX_CONNECTIONS = 100_000
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 50_000
DEFAULT_MAX_BUFFERED_BYTES = 256 * MiB

_DONE = Failure(ConnectionDone())

#: At most one log line per listener and limit this often (seconds).
LOG_INTERVAL = 10.0


@frozen
class ClientLimits:
    """
    The caps of one listener.  The defaults are sized for a fleet of 10,000
    nodes served by one replica: kube-apiserver (one kept-alive connection
    per node it talks to, plus a session per C{logs}, C{exec} or
    C{port-forward}), metrics-server (one per node) and Prometheus (one
    per node and scrape job: kubelet, cAdvisor, resource: three) make
    about 50,000 connections at one listener, 30,000 of them from one
    Prometheus.

    @ivar maxConnections: connections at once at the listener: 100,000,
        twice that estimate.  Each is one file descriptor: keep it under
        the process's open-file limit.
    @ivar maxConnectionsPerAddress: connections at once from one client
        address: 50,000, as much as the estimate for the whole listener,
        since every client may come from one address (processes on the
        server's host, DNATed in C{OUTPUT}, or clients behind one SNAT).
    @ivar maxBufferedBytes: bytes held for the listener's clients that
        do not read: 256 MiB.  Clients that read hold nearly nothing
        (Prometheus and kube-apiserver read as fast as the tunnel
        delivers); a few hundred scrapes at once, each holding a window
        while Prometheus parses, stay well below.  About 230 clients that
        never read fit before the first one is closed.
    @ivar sweepInterval: seconds between two looks at the clients that
        do not read, while there are any.
    """

    maxConnections: int = DEFAULT_MAX_CONNECTIONS
    maxConnectionsPerAddress: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    maxBufferedBytes: int = DEFAULT_MAX_BUFFERED_BYTES
    sweepInterval: float = 1.0

    def __attrs_post_init__(self) -> None:
        for name in ("maxConnections", "maxConnectionsPerAddress", "maxBufferedBytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.sweepInterval <= 0:
            raise ValueError("sweepInterval must be positive")


# -- what a connection holds ---------------------------------------------------------


def _producerHolds(producer: object) -> int:
    """
    What the producer registered with a client's transport (the upstream
    side of a proxy, a relay's other end) holds for that client: its
    C{heldBytes()} when it has one, found through the membrane TLS
    registers around it.
    """
    for _ in range(3):
        held = getattr(producer, "heldBytes", None)
        if held is not None:
            return int(held())
        inner = innerProducer(producer)
        if inner is None:
            return 0
        producer = inner
    return 0


# -- the wrapper ---------------------------------------------------------------------


@implementer(IPushProducer)
class _Watch:
    """
    Registered with the client's transport in place of the producer the
    protocol registered: passes every call on, and notes when the client
    stopped taking data (its send buffer is full) and when it took again.
    """

    def __init__(self, connection: _LimitedConnection, producer: IPushProducer) -> None:
        self.connection = connection
        self.producer = producer

    def pauseProducing(self) -> None:
        self.connection._stalled()
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.connection._flowing()
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.connection._flowing()
        self.producer.stopProducing()


#: What a L{_LimitedConnection} provides, by what its transport provides and
#: whether its protocol is half-closeable: a handful of kinds of transport
#: make a handful of declarations, made once each.  (zope's
#: C{directlyProvides} and C{alsoProvides} took 8% of the server's CPU per
#: new connection.)
_DECLARATIONS: dict[tuple[object, bool], object] = {}


def _declare(connection: _LimitedConnection, transport: object, half: bool) -> None:
    """
    Make C{connection} provide what C{transport} provides, and
    C{IHalfCloseableProtocol} too when C{half}: what C{directlyProvides}
    would do, with the declaration it made for the first such connection.
    """
    key = (providedBy(transport), half)
    declaration = _DECLARATIONS.get(key)
    if declaration is None:
        directlyProvides(connection, key[0], *([IHalfCloseableProtocol] if half else []))
        if len(_DECLARATIONS) < 64:  # a bound, whatever transports come
            _DECLARATIONS[key] = connection.__provides__
    else:
        connection.__provides__ = declaration  # type: ignore[attr-defined]


class _LimitedConnection(Protocol):
    """
    Stands between a client's transport and the front door's protocol, as
    its protocol and as the protocol's transport.  Reads and writes do not
    pass through it (the bound methods are handed on at connection time);
    it sees the connection begin and end, and the producer the protocol
    registers.
    """

    #: the client's transport (TCP or Unix), once connected
    transport: Any = None

    def __init__(self, limiter: ClientLimiter, wrapped: IProtocol, address: str) -> None:
        self.limiter = limiter
        self.wrapped = wrapped
        self.address = address
        self.stalledSince: float | None = None
        self.producer: IPushProducer | None = None
        # the data path, straight to the protocol (no frame of ours per read)
        self.dataReceived = wrapped.dataReceived  # type: ignore[method-assign]

    # -- as the protocol of the client's transport

    def write(self, data: bytes) -> None:  # replaced by the transport's own at connection
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:  # likewise
        self.transport.writeSequence(data)

    def makeConnection(self, transport: Any) -> None:
        # The protocol sees the transport's interfaces (ITCPTransport,
        # ISSLTransport...) on us, and the transport sees that we are
        # half-closeable when the protocol is.
        _declare(self, transport, IHalfCloseableProtocol.providedBy(self.wrapped))
        self.connected = 1
        self.transport = transport
        # the data path, straight to the transport (no frame of ours per write)
        self.write = transport.write  # type: ignore[method-assign]
        self.writeSequence = transport.writeSequence  # type: ignore[method-assign]
        self.wrapped.makeConnection(self)  # type: ignore[arg-type]

    def readConnectionLost(self) -> None:
        self.wrapped.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        self.wrapped.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.connected = 0
        self.limiter._lost(self)
        wrapped, self.wrapped = self.wrapped, None  # type: ignore[assignment]
        if wrapped is not None:
            wrapped.connectionLost(reason)
        self.producer = None

    # -- as the protocol's transport

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def loseWriteConnection(self) -> None:
        # on the class: relay.halfClose looks for it there
        self.transport.loseWriteConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def getPeer(self) -> IAddress:
        peer: IAddress = self.transport.getPeer()
        return peer

    def getHost(self) -> IAddress:
        host: IAddress = self.transport.getHost()
        return host

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer
        self.transport.registerProducer(
            _Watch(self, producer) if streaming else producer, streaming
        )

    def unregisterProducer(self) -> None:
        self.producer = None
        self._flowing()
        self.transport.unregisterProducer()

    def __getattr__(self, name: str) -> Any:
        # anything else a protocol asks of its transport (getHandle,
        # setTcpNoDelay, getPeerCertificate...) is the transport's
        if name == "transport":
            raise AttributeError(name)
        return getattr(self.transport, name)

    # -- stalls

    def _stalled(self) -> None:
        if self.stalledSince is None:
            self.stalledSince = self.limiter.clock.seconds()
            self.limiter._stalled(self)

    def _flowing(self) -> None:
        if self.stalledSince is not None:
            self.stalledSince = None
            self.limiter._flowing(self)

    def held(self) -> int:
        """Bytes held for this client now: queued to its socket, and buffered upstream."""
        held = queuedBytes(self.transport)
        if self.producer is not None:
            held += _producerHolds(self.producer)
        return held


class _LimitedFactory(Factory):
    """The front door's factory, behind the limiter: see L{ClientLimiter.wrap}."""

    noisy = False

    def __init__(self, limiter: ClientLimiter, wrapped: IProtocolFactory) -> None:
        self.limiter = limiter
        self.wrappedFactory = wrapped

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        return prefix() if prefix is not None else self.wrappedFactory.__class__.__name__

    def buildProtocol(self, addr: IAddress) -> _LimitedConnection | None:  # type: ignore[override]
        return self.limiter._admit(addr, self.wrappedFactory)


# -- the limiter -----------------------------------------------------------------------


class ClientLimiter:
    """
    The caps of one listener, its counts, and what it reports.

    @ivar name: the listener, as metrics and logs name it (e.g.
        C{"--https-proxy-endpoint"}).
    @ivar connections: connections open now.
    @ivar hits: limit hits, by limit (see L{LIMITS}).
    @ivar bufferedBytes: bytes held for clients that do not read, as the
        last look found them (0 when every client reads).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        limits: ClientLimits = ClientLimits(),  # noqa: B008 (frozen, so shared safely)
        *,
        log: Logger | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.limits = limits
        if log is not None:
            self.log = log
        self.connections = 0
        self.byAddress: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.bufferedBytes = 0
        self._stalledConnections: set[_LimitedConnection] = set()
        self._sweep: IDelayedCall | None = None
        # one line per limit and interval; then a summary that counts the rest
        self._throttle = LogThrottle(clock, burst=1, interval=LOG_INTERVAL)

    def wrap(self, factory: IProtocolFactory) -> IProtocolFactory:
        """C{factory} behind this limiter: listen with what this returns."""
        return _LimitedFactory(self, factory)

    # -- connections

    def _admit(self, addr: IAddress, factory: IProtocolFactory) -> _LimitedConnection | None:
        limits = self.limits
        address = _addressKey(addr)
        if self.connections >= limits.maxConnections:
            self._hit(
                "connections",
                "refused a connection from {address}: {count} connections at once "
                "(--client-max-connections)",
                address=address,
                count=self.connections,
            )
            return None
        count = self.byAddress[address]
        if count >= limits.maxConnectionsPerAddress:
            self._hit(
                "connections_per_address",
                "refused a connection from {address}: {count} connections at once from it "
                "(--client-max-connections-per-address)",
                address=address,
                count=count,
            )
            return None
        wrapped = factory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.connections += 1
        self.byAddress[address] = count + 1
        return _LimitedConnection(self, wrapped, address)

    def _lost(self, connection: _LimitedConnection) -> None:
        self.connections -= 1
        left = self.byAddress[connection.address] - 1
        if left > 0:
            self.byAddress[connection.address] = left
        else:
            del self.byAddress[connection.address]
        if connection.stalledSince is not None:
            connection.stalledSince = None
            self._flowing(connection)

    # -- memory

    def _stalled(self, connection: _LimitedConnection) -> None:
        self._stalledConnections.add(connection)
        if self._sweep is None:
            self._sweep = self.clock.callLater(self.limits.sweepInterval, self._swept)

    def _flowing(self, connection: _LimitedConnection) -> None:
        self._stalledConnections.discard(connection)
        if not self._stalledConnections:
            self.bufferedBytes = 0
            sweep, self._sweep = self._sweep, None
            if sweep is not None and sweep.active():
                sweep.cancel()

    def _swept(self) -> None:
        self._sweep = None
        self.sweep()
        if self._stalledConnections and self._sweep is None:
            self._sweep = self.clock.callLater(self.limits.sweepInterval, self._swept)

    def sweep(self) -> int:
        """
        Look at the clients that do not read: add up what they hold, and
        close the one stalled the longest (the larger holder first among
        equals) until the listener is within its budget.

        @return: how many clients were closed.
        """
        now = self.clock.seconds()
        held = {c: c.held() for c in self._stalledConnections}
        since = {c: now if c.stalledSince is None else c.stalledSince for c in held}
        total = sum(held.values())
        budget = self.limits.maxBufferedBytes
        closed = 0
        if total > budget:
            worst = sorted(held, key=lambda c: (since[c], -held[c]))
            for connection in worst:
                if total <= budget:
                    break
                total -= held[connection]
                closed += 1
                self._hit(
                    "buffered_bytes",
                    "closed {address}, which read nothing for {seconds:.0f}s and held "
                    "{held} bytes: {total} bytes held for clients that do not read "
                    "(--client-max-buffered-mib)",
                    address=connection.address,
                    seconds=now - since[connection],
                    held=held[connection],
                    total=total + held[connection],
                )
                self._stalledConnections.discard(connection)
                connection.stalledSince = None
                connection.transport.abortConnection()
        self.bufferedBytes = total if self._stalledConnections else 0
        return closed

    # -- reporting

    def _hit(self, limit: str, message: str, **fields: Any) -> None:
        self.hits[limit] += 1
        self._throttle.emit(
            self.log,
            LogLevel.warn,
            "{listener}: " + message,
            key=limit,
            listener=self.name,
            limit=limit,
            **fields,
        )


def frontDoorLabel(option: str) -> str:
    """
    The C{listener} label of a front door, from the option that made it:
    C{--https-proxy-endpoint} is C{https-proxy}, C{--connect-endpoint}
    C{connect}, C{--forward edge-1:9100} C{forward edge-1:9100}.
    """
    return option.removeprefix("--").removesuffix("-endpoint")


def _addressKey(addr: IAddress) -> str:
    """The client address a per-address cap counts by: its IP; one key for Unix sockets."""
    host = getattr(addr, "host", None)
    if isinstance(host, str):
        return printable(host, 64)
    return "unix"
