"""
TCP transports that send small writes at once.

Twisted's C{FileDescriptor.write} only queues: the bytes leave when the
reactor next finds the socket writable.  For each burst of writes that costs
an C{epoll_ctl} to watch for writability, a trip round the reactor loop, the
C{send}, and another C{epoll_ctl} to stop watching.  A tunnel hop forwards
each read as one write, so on a request/response exchange that overhead is
paid at every hop, in both directions: it was a large part of a keep-alive
request's latency through the tunnel.

The transports here try C{send()} straight away when nothing is queued
before them, as asyncio's selector transports do, and leave whatever the
kernel does not take (and every write while something is queued) to
Twisted's buffering, so ordering, back-pressure and error handling stay
Twisted's own.  Large writes always take the buffered path: bulk transfers
are better served by one big C{send} per reactor turn than by one per write
(a TLS layer writes each 16 KiB record separately).

L{EagerTCPReactor} wraps a reactor so that endpoints built on it
(C{serverFromString}, C{TCP4ClientEndpoint}, C{HostnameEndpoint}) make
these transports; everything else is the wrapped reactor's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from zope.interface import directlyProvides, providedBy

from ._twisted import sendBufferIdle

#: Writes up to this size are sent at once when nothing is queued.
EAGER_LIMIT = 16 * 1024


class _SendAtOnce:
    """
    Mixed into a C{tcp.Connection} subclass: C{write} tries C{send()} first.
    """

    def write(self, data: bytes) -> None:
        conn: Any = self  # a tcp.Connection: these are its attributes
        if (
            0 < len(data) <= EAGER_LIMIT
            and not conn.TLS
            and isinstance(data, bytes)
            and sendBufferIdle(conn)
        ):
            try:
                sent = conn.socket.send(data)
            except OSError:
                # EAGAIN: the kernel took nothing.  Anything worse is seen
                # again, and reported the usual way, by doWrite.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))


class EagerServer(_SendAtOnce, tcp.Server):
    """An accepted connection that sends small writes at once."""


class EagerClient(_SendAtOnce, tcp.Client):
    """An outgoing connection that sends small writes at once."""


class EagerPort(tcp.Port):
    """A listening port whose connections are L{EagerServer}s."""

    transport = EagerServer


class EagerConnector(tcp.Connector):
    """A connector that makes L{EagerClient}s."""

    def _makeTransport(self) -> EagerClient:
        return EagerClient(self.host, self.port, self.bindAddress, self, self.reactor)


class EagerTCPReactor:
    """
    C{reactor}, except that C{listenTCP} and C{connectTCP} make transports
    that send small writes at once.

    It provides every interface C{reactor} does, so that endpoints accept it
    wherever they accept the reactor itself.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        directlyProvides(self, *providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = EagerPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> Any:
        connector = EagerConnector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.connect()
        return connector
