"""
A hostile (or broken) server replica, for testing what an agent does with
what a server says.

L{HostileServer} is no L{TunnelServer}: it speaks the wire format itself
(L{twisted_tunnel.wire}), so it can send what no real server sends: any
HELLO info (a server id of 40 KB, a fresh id on every connection, a
C{server_count} of 1 or 64), and a flood of OPENs for addresses the agent
may not dial.  It answers PING, records every frame, and otherwise follows
the protocol well enough for an agent to take it for a server.

It joins an agent in memory (L{HostileServer.plainTunnelFactory}, as
C{tests.agent.test_replicas.LoadBalancer.routeTo} expects of a replica), or
listens on 127.0.0.1 with real TLS and a valid server certificate
(L{HostileServer.listen}, certificates from L{tests.pki}).

Typical use::

    hostile = HostileServer(lambda n: {"server_id": "x" * 40_000, "server_count": 1})
    port = hostile.listen(self, reactor, pki.credentials(pki.server))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel import wire
from twisted_tunnel.tls import Credentials, serverOptions


class HostileConnection(Protocol):
    """
    One agent's connection to a L{HostileServer}.

    @ivar number: which connection this is (0 for the first).
    @ivar received: every frame the agent sent, in order.
    @ivar goaways: every GOAWAY the agent sent on it, as C{(code, text)}.
    @ivar lost: whether the connection is gone.
    """

    def __init__(self, server: HostileServer, number: int) -> None:
        self.server = server
        self.number = number
        self.decoder = wire.FrameDecoder(wire.ABSOLUTE_MAX_FRAME)
        self.received: list[wire.Frame] = []
        self.goaways: list[tuple[int, str]] = []
        self.lost = False
        self._nextStream = 2

    def dataReceived(self, data: bytes) -> None:
        try:
            for frame in self.decoder.feed(data):
                self.frameReceived(frame)
        except wire.ProtocolError as e:
            self.server.errors.append(e.text)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def frameReceived(self, frame: wire.Frame) -> None:
        self.received.append(frame)
        if isinstance(frame, wire.Hello):
            self.server.hellos.append(frame.info)
            self.send(wire.Hello(1, 1, self.server.helloInfo(self.number)))
            for host, port in self.server.opens:
                self.open(host, port)
        elif isinstance(frame, wire.Ping):
            self.send(wire.Pong(frame.opaque))
        elif isinstance(frame, wire.GoAway):
            self.goaways.append((frame.code, frame.text))
            self.server.goaways.append((frame.code, frame.text))

    def open(self, host: str, port: int) -> int:
        """Send OPEN for C{host}:C{port}; the stream id."""
        streamId, self._nextStream = self._nextStream, self._nextStream + 2
        self.send(wire.Open(streamId, host, port))
        return streamId

    def send(self, frame: wire.Frame) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(frame.encode())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


class HostileServer:
    """
    A server replica that says what the test wants.

    @param helloInfo: the info of its HELLO on connection number M{n}
        (from 0), sent as is, whatever it holds.
    @param opens: C{(host, port)} to OPEN on every connection right after
        its HELLO.
    @ivar hellos: the HELLO info of every agent that connected.
    @ivar goaways: every GOAWAY received on any connection, as C{(code, text)}.
    @ivar connections: every connection, in order.
    @ivar errors: the protocol errors in what agents sent.
    """

    def __init__(
        self,
        helloInfo: Callable[[int], dict[str, Any]],
        opens: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.helloInfo = helloInfo
        self.opens = list(opens)
        self.hellos: list[dict[str, Any]] = []
        self.goaways: list[tuple[int, str]] = []
        self.connections: list[HostileConnection] = []
        self.errors: list[str] = []

    def buildProtocol(self, addr: Any) -> HostileConnection:
        connection = HostileConnection(self, len(self.connections))
        self.connections.append(connection)
        return connection

    def plainTunnelFactory(self) -> Factory:
        """A factory of its connections, without TLS (for in-memory tests)."""
        return _Factory(self)

    def listen(self, testCase: SynchronousTestCase, reactor: Any, credentials: Credentials) -> int:
        """
        Listen on 127.0.0.1 (a free port) with TLS and C{credentials}, until
        C{testCase} ends (its connections are aborted then); the port.
        """
        factory = TLSMemoryBIOFactory(serverOptions(credentials), False, _Factory(self))
        port: IListeningPort = reactor.listenTCP(0, factory, interface="127.0.0.1")

        def stop() -> Any:
            for connection in self.connections:
                if not connection.lost and connection.transport is not None:
                    connection.transport.abortConnection()  # type: ignore[attr-defined]
            return port.stopListening()

        testCase.addCleanup(stop)
        return int(port.getHost().port)  # type: ignore[attr-defined]


class _Factory(Factory):
    noisy = False

    def __init__(self, server: HostileServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> HostileConnection:
        return self.server.buildProtocol(addr)
