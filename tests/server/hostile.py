"""
A hostile (or merely misconfigured) agent, for testing what a real
L{TunnelServer} does with what an agent claims.

L{HostileAgent} is no L{TunnelAgent}: it speaks the wire format itself
(L{twisted_tunnel.wire}), so it can send any HELLO (any node name, any IPs,
any other field) with any certificate from L{tests.pki} (no IP
subjectAltNames, C{CN=system:node:EDGE-K}, C{CN=edge-1-ops} with
C{DNS:edge-1}, no C{O=system:nodes}, short-lived), over real mutual TLS on
127.0.0.1 to a real L{TunnelServer.tunnelFactory} (L{listenForAgents}).  It
answers PING, records every frame, and reports what the server did: its
HELLO (accepted) or its GOAWAY (refused, and why); the test reads the
registry for the rest.

Typical use::

    clock = serverClock()
    server = TunnelServer(clock, pki.credentials(pki.server))
    port = listenForAgents(self, server)
    impostor = HostileAgent(self, port, pki.agent("edge-2"))
    connection = await impostor.hello("edge-2", ["10.0.0.1"])
    self.assertTrue(connection.accepted)
    self.assertIsNone(server.registry.lookup("10.0.0.1"))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import waitForSocketsClosedAtCleanup, waitUntil
from twisted_tunnel import wire
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import Credentials, agentOptions, makeCredentials
from twisted_tunnel.tls.certs import Issued

__all__ = ["HostileAgent", "HostileAgentConnection", "listenForAgents", "serverClock"]

#: How long a test waits for the server to answer or to close, at most.
ANSWER_TIMEOUT = 10.0


def serverClock(offset: float = 0.0) -> Clock:
    """
    A L{Clock} for the server under test, set to the wall clock's time
    (plus C{offset} seconds): certificates are valid in real time (the TLS
    handshake checks them against it), and the server compares their
    validity with its clock, which the test then moves by hand.  Nothing
    the server schedules on it runs unless the test advances it.
    """
    clock = Clock()
    clock.advance(time.time() + offset)
    return clock


def listenForAgents(
    testCase: SynchronousTestCase, server: TunnelServer, *, reactor: Any = _globalReactor
) -> int:
    """
    Listen on 127.0.0.1 (a free port) with C{server.tunnelFactory()}: real
    mutual TLS with the server's credentials.  At cleanup the listener
    stops, and every socket opened from now on must close (the hostile
    agents abort theirs at cleanup).  The port.
    """
    waitForSocketsClosedAtCleanup(testCase, reactor=reactor)  # runs last
    port = reactor.listenTCP(0, server.tunnelFactory(), interface="127.0.0.1")
    testCase.addCleanup(port.stopListening)
    return int(port.getHost().port)


class HostileAgentConnection(Protocol):
    """
    One connection of a L{HostileAgent}: it sends its HELLO as soon as it
    is connected (the TLS layer holds it until the handshake is done).

    @ivar info: the HELLO info it sent.
    @ivar received: every frame the server sent, in order.
    @ivar serverHello: the server's HELLO info, once it accepted the tunnel.
    @ivar goaway: the server's GOAWAY as C{(code, text)}, if it sent one.
    @ivar lost: why the connection ended, once it did.
    """

    def __init__(self, info: dict[str, Any], minVersion: int = 1, maxVersion: int = 1) -> None:
        self.info = info
        self.versions = (minVersion, maxVersion)
        self.decoder = wire.FrameDecoder(wire.ABSOLUTE_MAX_FRAME)
        self.received: list[wire.Frame] = []
        self.serverHello: dict[str, Any] | None = None
        self.goaway: tuple[int, str] | None = None
        self.lost: Failure | None = None
        self.protocolErrors: list[str] = []

    @property
    def accepted(self) -> bool:
        """Did the server answer our HELLO with its own (and so register us)?"""
        return self.serverHello is not None

    @property
    def refusedWith(self) -> wire.ErrorCode | None:
        """The error code of the server's GOAWAY, if it sent one."""
        return None if self.goaway is None else wire.ErrorCode(self.goaway[0])

    def connectionMade(self) -> None:
        self.send(wire.Hello(*self.versions, self.info))

    def send(self, frame: wire.Frame) -> None:
        """Send C{frame} as it is, whatever it says."""
        if self.transport is not None and self.lost is None:
            self.transport.write(frame.encode())

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = list(self.decoder.feed(data))
        except wire.ProtocolError as e:
            self.protocolErrors.append(e.text)
            self.abort()
            return
        for frame in frames:
            self.received.append(frame)
            if isinstance(frame, wire.Hello):
                self.serverHello = frame.info
            elif isinstance(frame, wire.Ping):
                self.send(wire.Pong(frame.opaque))
            elif isinstance(frame, wire.GoAway) and frame.code != wire.ErrorCode.NO_ERROR:
                self.goaway = (frame.code, frame.text)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason or Failure(ConnectionError("lost"))

    def abort(self) -> None:
        """Drop the connection at once (the test's cleanup does it too)."""
        if self.lost is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    async def closedByServer(self, timeout: float = ANSWER_TIMEOUT) -> tuple[int, str] | None:
        """Wait until the connection is gone; the server's GOAWAY, if any."""
        await waitUntil(lambda: self.lost is not None, timeout, "the server to close the tunnel")
        return self.goaway


class HostileAgent:
    """
    An agent that presents a real certificate (signed by whichever CA
    minted it) and then says what the test wants.

    @param port: the server's tunnel port on 127.0.0.1 (L{listenForAgents}).
    @param issued: its certificate and key, from L{tests.pki.TestPKI}.
    @param trust: the CA it verifies the server's certificate with; by
        default the tunnel's CA (L{tests.pki.TestPKI.ca}), whoever signed
        C{issued}.
    @ivar connections: every connection it made, in order.
    """

    def __init__(
        self,
        testCase: SynchronousTestCase,
        port: int,
        issued: Issued,
        *,
        trust: Issued | None = None,
        reactor: Any = _globalReactor,
    ) -> None:
        from tests.pki import TestPKI

        self.port = port
        self.reactor = reactor
        authority = (trust or TestPKI().ca).certificate
        self.credentials: Credentials = makeCredentials(
            [authority], issued.certificate, issued.key
        )
        self.connections: list[HostileAgentConnection] = []
        testCase.addCleanup(self._abortAll)

    def _abortAll(self) -> None:
        for connection in self.connections:
            connection.abort()

    async def connect(self, info: dict[str, Any]) -> HostileAgentConnection:
        """
        Connect, send a HELLO with exactly C{info}, and wait (bounded) until
        the server answered it with its HELLO or ended the connection.
        """
        connection = HostileAgentConnection(info)
        self.connections.append(connection)
        endpoint = wrapClientTLS(
            agentOptions(self.credentials, "127.0.0.1"),
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port),
        )
        await connectProtocol(endpoint, connection)
        await waitUntil(
            lambda: connection.accepted or connection.lost is not None,
            ANSWER_TIMEOUT,
            "the server to answer the HELLO",
            clock=self.reactor,
        )
        return connection

    async def hello(
        self, node: str, ips: Sequence[str] = (), **extra: Any
    ) -> HostileAgentConnection:
        """
        Connect and claim to be node C{node} with IPs C{ips} (the HELLO a
        real agent sends, default settings, plus C{extra}).
        """
        info: dict[str, Any] = {
            "node": node,
            "ips": list(ips),
            "servers": [],
            "software": "hostile-agent",
        }
        info.update(extra)
        return await self.connect(info)
