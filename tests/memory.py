"""
In-memory plumbing for tunnel tests: two L{Tunnel}s joined by
C{StringTransport}s and a pump that moves bytes between them on demand, plus
small recording handlers, protocols and producers.

Nothing here touches a socket or the global reactor: time is a L{Clock} and
bytes move only when a test calls L{TunnelPair.pump}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_tunnel import wire
from twisted_tunnel.mux import ITunnelHandler, Keepalive, Refused, Settings, Tunnel, TunnelAddress

#: The smallest window a peer may announce; keeps flow-control tests small.
SMALL_WINDOW = 64 * 1024


@implementer(ITunnelHandler)
class RecordingHandler:
    """
    An L{ITunnelHandler} that records what happens and lets the test decide
    every open: each C{openRequested} returns a new L{Deferred} kept in
    C{opens}, for the test to fire (see L{accept} and L{fail}).

    @ivar refuse: when set, C{helloReceived} raises it.
    @ivar autoAccept: when set, a factory whose protocols accept every open
        at once.
    """

    def __init__(self, info: dict[str, Any] | None = None) -> None:
        self.info = dict(info or {})
        self.hellos: list[dict[str, Any]] = []
        self.opens: list[tuple[TunnelAddress, Deferred[IProtocol]]] = []
        self.cancelled: list[TunnelAddress] = []
        self.draining: list[Tunnel] = []
        self.lost: list[Failure] = []
        self.refuse: Refused | None = None
        self.autoAccept: Factory | None = None

    def helloInfo(self) -> dict[str, Any]:
        return dict(self.info)

    def helloReceived(self, tunnel: Tunnel, info: dict[str, Any]) -> None:
        self.hellos.append(info)
        if self.refuse is not None:
            raise self.refuse

    def openRequested(self, tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred(lambda _: self.cancelled.append(address))
        self.opens.append((address, d))
        if self.autoAccept is not None:
            protocol = self.autoAccept.buildProtocol(address)
            assert protocol is not None
            d.callback(protocol)
        return d

    def tunnelDraining(self, tunnel: Tunnel) -> None:
        self.draining.append(tunnel)

    def tunnelLost(self, tunnel: Tunnel, reason: Failure) -> None:
        self.lost.append(reason)

    def accept(self, protocol: IProtocol, index: int = -1) -> None:
        self.opens[index][1].callback(protocol)

    def fail(self, error: Exception, index: int = -1) -> None:
        self.opens[index][1].errback(error)


class Recorder(Protocol):
    """
    A stream's protocol that keeps what it receives and how it ended.

    @ivar pauseOnConnect: pause the stream (its inbound side) in
        C{connectionMade}.
    """

    def __init__(self, pauseOnConnect: bool = False) -> None:
        self.pauseOnConnect = pauseOnConnect
        self.chunks: list[bytes] = []
        self.lostReason: Failure | None = None
        self.events: list[str] = []

    def connectionMade(self) -> None:
        self.events.append("connectionMade")
        if self.pauseOnConnect:
            self.stream.pauseProducing()

    @property
    def stream(self) -> Any:
        return self.transport

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        assert self.lostReason is None, "connectionLost called twice"
        self.events.append("connectionLost")
        self.lostReason = reason

    @property
    def received(self) -> bytes:
        return b"".join(self.chunks)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Recorder):
    """A L{Recorder} that understands half-close."""

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


@implementer(IPushProducer)
class PushProducer:
    """A streaming producer that only records what it is told."""

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1

    def stopProducing(self) -> None:
        self.stopped = True


class ProtocolFactory(Factory):
    """Builds protocols by calling C{make}; remembers them."""

    def __init__(self, make: Any = Recorder) -> None:
        self.make = make
        self.built: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.make()
        self.built.append(protocol)
        return protocol


class TunnelPair:
    """
    An agent-side (client) and a server-side L{Tunnel} joined in memory.

    Bytes move only in L{pump}.  Either direction can be held back
    (C{clientToServer}, C{serverToClient}) to simulate a peer that has
    gone silent.  When either side has closed its transport and nothing
    more moves, both tunnels are told the connection is lost, as TCP would.
    """

    def __init__(
        self,
        clientHandler: RecordingHandler | None = None,
        serverHandler: RecordingHandler | None = None,
        *,
        clock: Clock | None = None,
        clientSettings: Settings = Settings(),
        serverSettings: Settings = Settings(),
        keepalive: Keepalive = Keepalive(),
        connect: bool = True,
        chunkSize: int | None = None,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.clientHandler = clientHandler or RecordingHandler({"node": "edge-1"})
        self.serverHandler = serverHandler or RecordingHandler({"server_id": "srv-a"})
        self.client = Tunnel(
            self.clientHandler,
            self.clock,
            isClient=True,
            settings=clientSettings,
            keepalive=keepalive,
            nodeName="edge-1",
        )
        self.server = Tunnel(
            self.serverHandler,
            self.clock,
            isClient=False,
            settings=serverSettings,
            keepalive=keepalive,
            nodeName="edge-1",
        )
        self.clientTransport = StringTransport()
        self.serverTransport = StringTransport()
        self.clientToServer = True
        self.serverToClient = True
        self.chunkSize = chunkSize
        self.lost = False
        if connect:
            self.connect()

    def connect(self) -> None:
        self.server.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)

    def pump(self, rounds: int = 10_000) -> None:
        """
        Move bytes both ways until nothing moves; then, if either side has
        closed its connection, end the connection for both.
        """
        for _ in range(rounds):
            moved = self._move(self.clientTransport, self.server, self.clientToServer)
            moved = self._move(self.serverTransport, self.client, self.serverToClient) or moved
            if not moved:
                break
        else:
            raise AssertionError("the pump did not settle")
        if self.lost:
            return
        aborted = self.clientTransport.disconnected or self.serverTransport.disconnected
        if aborted or self.clientTransport.disconnecting or self.serverTransport.disconnecting:
            self.lose(Failure(ConnectionAborted() if aborted else ConnectionDone()))

    def lose(self, reason: Failure) -> None:
        """The connection under both tunnels is gone."""
        self.lost = True
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)

    def _move(self, transport: StringTransport, tunnel: Tunnel, enabled: bool) -> bool:
        if not enabled or self.lost:
            return False
        data = transport.value()
        if not data:
            return False
        transport.clear()
        if transport.disconnected:
            return False  # aborted: whatever was buffered is dropped
        step = self.chunkSize or len(data)
        for i in range(0, len(data), step):
            tunnel.dataReceived(data[i : i + step])
        return True

    def establish(self) -> None:
        """Run the HELLO exchange and check that it worked."""
        self.pump()
        assert self.client.established and self.server.established

    def open(
        self,
        opener: Tunnel,
        acceptorProtocol: IProtocol,
        openerProtocol: IProtocol | None = None,
        host: str = "127.0.0.1",
        port: int = 10250,
    ) -> tuple[Any, Any]:
        """
        Open a stream from C{opener}, accept it on the other side with
        C{acceptorProtocol}, and return both ends' protocols.
        """
        handler = self.serverHandler if opener is self.client else self.clientHandler
        openerProtocol = openerProtocol if openerProtocol is not None else Recorder()
        built = openerProtocol
        factory = ProtocolFactory(lambda: built)
        opened = opener.openStream(host, port, factory)
        self.pump()
        handler.accept(acceptorProtocol)
        self.pump()
        results: list[Any] = []
        opened.addBoth(results.append)
        assert results == [openerProtocol], results
        return openerProtocol, acceptorProtocol


def frames(transport: StringTransport) -> list[wire.Frame]:
    """Decode and clear everything written to C{transport}."""
    data = transport.value()
    transport.clear()
    return wire.decodeAll(data)


def framesOfType(found: list[wire.Frame], kind: type[wire.Frame]) -> list[Any]:
    return [f for f in found if isinstance(f, kind)]


def streamOf(protocol: IProtocol) -> Any:
    transport = getattr(protocol, "transport", None)
    assert ITransport.providedBy(transport)
    return transport
