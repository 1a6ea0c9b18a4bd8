"""
Edge services and clients for tests on real sockets: the half-closing echo,
the recording client, quiet factories, and listening so that the test's
cleanup stops the listener (and, for services that keep their connections,
aborts those first).

Everything listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

__all__ = [
    "Echo",
    "EdgeServiceFactory",
    "OneProtocolFactory",
    "QuietFactory",
    "RecordingClient",
    "connectRecordingClient",
    "listen",
    "listenAndAbortAtCleanup",
]


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Echoes, and closes once the client's EOF has arrived and the echo is
    flushed.

    It must be half-closeable: for a protocol without
    L{IHalfCloseableProtocol}, Twisted drops the connection, and whatever it
    has not yet written, the moment the EOF arrives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class RecordingClient(Protocol):
    """
    A client that records everything it receives, and when it ends: C{eof}
    once the other side's EOF arrived (it then closes its side too),
    C{closed} and C{lost} once the connection is gone.
    """

    def __init__(self) -> None:
        self.received = b""
        self.eof = False
        self.closed = False
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.eof = True
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self.lost.callback(None)


class QuietFactory(Factory):
    """A factory that builds with C{build} (a protocol class, or any callable); logs nothing."""

    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self.build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = self.build()
        protocol.factory = self
        return protocol


class OneProtocolFactory(Factory):
    """A factory that hands out one given protocol (a client made beforehand), and logs nothing."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self.protocol_


def listen(
    testCase: SynchronousTestCase,
    factory: IProtocolFactory,
    interface: str = "127.0.0.1",
    *,
    reactor: Any = _globalReactor,
) -> int:
    """Listen with C{factory} on a free port of C{interface} until the test ends; the port."""
    port = reactor.listenTCP(0, factory, interface=interface)
    testCase.addCleanup(port.stopListening)
    return int(port.getHost().port)


class _EdgeConnection(TypingProtocol):
    @property
    def lost(self) -> object: ...

    @property
    def transport(self) -> Any: ...


class EdgeServiceFactory(TypingProtocol):
    """A factory that keeps the connections it made, each with C{lost} set once it ended."""

    @property
    def connections(self) -> Sequence[_EdgeConnection]: ...


def listenAndAbortAtCleanup(
    testCase: SynchronousTestCase,
    factory: EdgeServiceFactory,
    interface: str = "127.0.0.1",
    *,
    reactor: Any = _globalReactor,
) -> int:
    """
    Listen as L{listen} does; at cleanup, first abort every connection of
    C{factory} that has not ended yet.  The port.
    """
    port = listen(testCase, factory, interface, reactor=reactor)  # type: ignore[arg-type]

    def abortAll() -> None:
        for connection in factory.connections:
            if connection.lost is None and connection.transport is not None:
                connection.transport.abortConnection()

    testCase.addCleanup(abortAll)
    return port


async def connectRecordingClient(
    testCase: SynchronousTestCase,
    port: int,
    host: str = "127.0.0.1",
    *,
    reactor: Any = _globalReactor,
) -> RecordingClient:
    """A L{RecordingClient} connected to C{port}; the cleanup aborts it if it is still open."""
    client = RecordingClient()
    await TCP4ClientEndpoint(reactor, host, port).connect(OneProtocolFactory(client))

    async def abort() -> None:
        if not client.closed:
            assert client.transport is not None
            client.transport.abortConnection()  # type: ignore[attr-defined]
            await client.lost

    testCase.addCleanup(abort)
    return client


class Lines(Resource):
    """
    Writes C{count} lines, one every C{interval} seconds, chunked: a
    C{kubectl logs -f}.  C{text(n)} makes line C{n}.
    """

    isLeaf = True

    def __init__(
        self,
        count: int = 10,
        interval: float = 0.1,
        text: Callable[[int], str] = lambda n: f"line {n}\n",
    ) -> None:
        super().__init__()
        self.count = count
        self.interval = interval
        self.text = text

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/plain")
        pending: list[Any] = []

        def line(n: int) -> None:
            pending.clear()
            request.write(self.text(n).encode())
            if n + 1 < self.count:
                pending.append(_globalReactor.callLater(self.interval, line, n + 1))
            else:
                request.finish()

        def gone(_: object) -> None:
            for call in pending:
                if call.active():
                    call.cancel()

        request.notifyFinish().addErrback(gone)
        line(0)
        return NOT_DONE_YET
