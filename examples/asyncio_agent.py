"""
An asyncio program with a tunnel agent in it.

Twisted's asyncio reactor runs on asyncio's event loop, so the agent (which
is Twisted code) and the program's own coroutines share one loop and one
thread.  Two things to know:

  - install the reactor before anything imports C{twisted.internet.reactor}
    (nothing in C{twisted_tunnel} does, so "first thing in C{__main__}" is
    early enough);
  - the library's calls return Deferreds: a coroutine under asyncio awaits
    them as C{d.asFuture(loop)} (and Twisted code awaits an asyncio future as
    C{Deferred.fromFuture(future)}).

The program: the edge node's own service is an asyncio server; a ticker
runs alongside; the agent is started and awaited; then a stream comes
through the tunnel from the server side to the asyncio service, and its
answer is printed.  In real life the tunnel server runs in the cloud
(C{twistd edge-tunnel-server}); here it is a stand-in in the same process,
on loopback, with throwaway certificates.  Run it with
C{python examples/asyncio_agent.py}.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _standins import NODE, ThrowawayPKI, listenOnLoopback, showLogs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import react
from twisted.python.failure import Failure

from twisted_tunnel import TunnelAgent, TunnelServer


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The node's service, plain asyncio: answer one line, then close."""
    line = await reader.readline()
    writer.write(b"asyncio on " + NODE.encode() + b" got: " + line)
    await writer.drain()
    writer.close()


async def tick(ticks: list[float]) -> None:
    """Other asyncio work, alongside the agent."""
    loop = asyncio.get_running_loop()
    while True:
        ticks.append(loop.time())
        await asyncio.sleep(0.01)


class Exchange(Protocol):
    """Send one line, keep everything that comes back until the stream ends."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.line)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.received)


async def program(reactor: Any) -> None:
    loop = asyncio.get_running_loop()
    print(f"one loop: {type(reactor).__name__} on {type(loop).__name__}")
    showLogs()
    pki = ThrowawayPKI.mint()
    service = await asyncio.start_server(answer, "127.0.0.1", 0)
    servicePort = service.sockets[0].getsockname()[1]
    ticks: list[float] = []
    ticker = asyncio.create_task(tick(ticks))

    # the stand-in for the cloud: a tunnel server in this process
    server = TunnelServer(reactor, pki.server)
    listening = await listenOnLoopback(reactor, server.tunnelFactory()).asFuture(loop)

    # the agent, embedded: a Twisted service, started and awaited from asyncio
    agent = TunnelAgent(reactor, pki.agent, ("127.0.0.1", listening.getHost().port), NODE)
    agent.startService()
    connecting = agent.whenConnected(failAfterFailures=3).asFuture(loop)
    tunnel = await asyncio.wait_for(connecting, timeout=10)
    print(f"agent for {NODE} connected to server {tunnel.peerInfo['server_id']}")

    # a stream from the server, through the tunnel, to the asyncio service
    exchange = Exchange(b"hello through the tunnel\n")
    await connectProtocol(server.endpointForNode(NODE, servicePort), exchange).asFuture(loop)
    reply = await asyncio.wait_for(exchange.done.asFuture(loop), timeout=10)
    print(f"stream to {NODE}:{servicePort} answered: {reply.decode().strip()}")
    print(f"the asyncio ticker ran alongside: {len(ticks)} ticks")

    stopping = agent.stopService()
    if stopping is not None:
        await stopping.asFuture(loop)
    await listening.stopListening().asFuture(loop)
    ticker.cancel()
    service.close()
    await service.wait_closed()


def main(reactor: Any) -> Deferred[None]:
    """Run L{program} as an asyncio task; the reactor stops when it ends."""
    return Deferred.fromFuture(asyncio.ensure_future(program(reactor)))


if __name__ == "__main__":
    from twisted.internet import asyncioreactor

    asyncioreactor.install()  # before anything imports twisted.internet.reactor
    react(main)
