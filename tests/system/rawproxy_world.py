# -*- test-case-name: tests.system.test_rawproxy -*-
"""
A whole raw TCP proxy world in one process, for L{tests.system.test_rawproxy} to
run inside a network namespace::

    python -m tests.system.rawproxy_world < scenario.json

In that process: a plain-TCP L{TunnelServer} on 127.0.0.1, a
L{TunnelAgent} for node C{edge-1} announcing the scenario's node IP, an
echo service on C{127.0.0.1:<echoPort>} (loopback only: the node's IP does
not reach it), and the raw listener (L{RawProxyFactory}) on
C{127.0.0.1:<listenerPort>} with the scenario's ConfigMap data.  The test
has already installed the iptables DNAT rules that bring C{<nodeIP>:<port>}
to the raw listener.  Then the scenario's clients connect, one after the
other, each sending its bytes and half-closing (or sending nothing and
waiting), and the program prints one JSON object, L{World.report}, saying
what it saw:

    - C{cases}: for each client, what it received, whether the far side
      closed cleanly (EOF) first, and the log lines of the raw listener's
      refusals that were emitted while it ran;
    - C{opens}: every stream the server's tunnel opened, as C{[host, port]};
    - C{streamsOpenAtEnd}: the server tunnel's open streams once all is done;
    - C{echoConnections}: what the echo service saw of each connection (its
      peer, its own address, and L{originalDestination} of it).

It exits with status 3, saying so on stderr, if the scenario does not end
within L{SCENARIO_TIMEOUT} seconds.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.realnet import waitUntil
from tests.services import OneProtocolFactory, RecordingClient
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.doors.proxy import ProxyRouter, RawProxyFactory
from twisted_tunnel.forwarding.config import parseConfigData
from twisted_tunnel.net.origdst import originalDestination
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import PeerIdentity

#: The node the agent serves.
NODE = "edge-1"

#: How long the whole scenario may take, start to end.
SCENARIO_TIMEOUT = 15.0

#: How long one step (the tunnel coming up, one client's exchange) may take.
STEP_TIMEOUT = 5.0

#: The raw listener's refusals are logged with this format (L{OpeningRelay}).
REFUSAL_FORMAT = "connection to {where} refused: {reason}"


@implementer(IHalfCloseableProtocol)
class RecordingEcho(Protocol):
    """
    Echoes; closes once the client's EOF has come and the echo is flushed;
    records what it saw of its connection in its factory's C{seen}.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer, host = transport.getPeer(), transport.getHost()
        destination = originalDestination(transport)
        factory: Any = self.factory
        factory.seen.append(
            {
                "peer": [peer.host, peer.port],
                "host": [host.host, host.port],
                "originalDestination": None if destination is None else list(destination),
            }
        )

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class RecordingEchoFactory(Factory):
    noisy = False
    protocol = RecordingEcho

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []


class World:
    """The server, the agent, the echo service and the raw listener, in one reactor."""

    def __init__(self, reactor: Any, scenario: dict[str, Any]) -> None:
        self.reactor = reactor
        self.scenario = scenario
        self.events: list[dict[str, Any]] = []
        self.observer = cast(ILogObserver, self.events.append)
        self.opens: list[list[Any]] = []
        self.echo = RecordingEchoFactory()
        self.ports: list[Any] = []
        # a kubelet-style node certificate whose IP subjectAltName proves the node IP
        identity = PeerIdentity(
            f"system:node:{NODE}",
            ipAddresses=(scenario["nodeIP"],),
            organizations=("system:nodes",),
        )
        self.server = TunnelServer(reactor, None, identify=lambda transport: identity)
        self.agent: TunnelAgent | None = None

    async def start(self) -> None:
        reactor = self.reactor
        scenario = self.scenario
        globalLogPublisher.addObserver(self.observer)
        self.ports.append(
            reactor.listenTCP(scenario["echoPort"], self.echo, interface="127.0.0.1")
        )
        tunnelPort = reactor.listenTCP(0, self.server.plainTunnelFactory(), interface="127.0.0.1")
        self.ports.append(tunnelPort)
        address = ("127.0.0.1", tunnelPort.getHost().port)
        self.agent = TunnelAgent(
            reactor,
            None,
            address,
            NODE,
            [scenario["nodeIP"]],
            endpoint=TCP4ClientEndpoint(reactor, *address),
        )
        self.agent.startService()
        await self.agent.whenConnected(failAfterFailures=1).addTimeout(STEP_TIMEOUT, reactor)
        record = self.server.registry.lookup(NODE)
        assert record is not None, "the agent is connected but not registered"
        tunnel: Any = record.tunnel
        openStream = tunnel.openStream

        def recordingOpenStream(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            self.opens.append([host, port])
            return openStream(host, port, *args, **kwargs)

        tunnel.openStream = recordingOpenStream
        self.tunnel = tunnel
        config = parseConfigData(scenario["config"])
        router = ProxyRouter(self.server, "tcp", lambda: config)
        self.ports.append(
            reactor.listenTCP(
                scenario["listenerPort"], RawProxyFactory(router), interface="127.0.0.1"
            )
        )

    async def connect(self, case: dict[str, Any]) -> dict[str, Any]:
        """
        Connect to C{case["host"]:case["port"]}, send C{case["send"]} (text)
        and half-close if there is any, and wait until the connection ends.
        """
        first = len(self.events)
        client = RecordingClient()
        endpoint = TCP4ClientEndpoint(self.reactor, case["host"], case["port"], timeout=5)
        try:
            await endpoint.connect(OneProtocolFactory(client)).addTimeout(
                STEP_TIMEOUT, self.reactor
            )
        except Exception as e:
            return {"error": f"could not connect: {e!r}"}
        transport: Any = client.transport
        send = case["send"].encode()
        if send:
            transport.write(send)
            transport.loseWriteConnection()
        try:
            await client.lost.addTimeout(STEP_TIMEOUT, self.reactor)
        except Exception as e:
            transport.abortConnection()
            return {"error": f"not closed within {STEP_TIMEOUT:g}s: {e!r}"}
        refusals = [
            {
                "text": formatEvent(event),
                "level": event["log_level"].name,
                "where": event.get("where"),
                "listener": event.get("listener"),
            }
            for event in self.events[first:]
            if event.get("log_format") == REFUSAL_FORMAT
        ]
        return {
            "received": client.received.decode(errors="replace"),
            "eof": client.eof,
            "refusals": refusals,
        }

    async def report(self) -> dict[str, Any]:
        cases = {}
        for case in self.scenario["connections"]:
            cases[case["case"]] = await self.connect(case)
        # The stream ends on the server's side once both ends' close frames
        # are through, a moment after the client saw its end.
        await waitUntil(
            lambda: self.tunnel.streamCount == 0,
            STEP_TIMEOUT,
            "the server tunnel's streams to end",
            clock=self.reactor,
        )
        failures = [
            formatEvent(event)
            for event in self.events
            if event.get("log_failure") is not None or event["log_level"].name == "critical"
        ]
        return {
            "cases": cases,
            "opens": self.opens,
            "streamsOpenAtEnd": self.tunnel.streamCount,
            "echoConnections": self.echo.seen,
            "failures": failures,
        }

    async def stop(self) -> None:
        stopped = self.agent.stopService() if self.agent is not None else None
        if stopped is not None:
            await stopped
        for port in self.ports:
            await port.stopListening()
        globalLogPublisher.removeObserver(self.observer)


def main() -> None:
    """
    C{python -m tests.system.rawproxy_world < scenario.json}: the scenario, one
    JSON object on stdin, is C{{"nodeIP", "echoPort", "listenerPort",
    "config": <ConfigMap data>, "connections": [{"case", "host", "port",
    "send"}, ...]}}.
    """
    from twisted.internet.task import react

    scenario = json.loads(sys.stdin.read())

    def timedOut() -> None:
        print(f"gave up after {SCENARIO_TIMEOUT:g}s", file=sys.stderr, flush=True)
        os._exit(3)

    async def run(reactor: Any) -> None:
        timeout = reactor.callLater(SCENARIO_TIMEOUT, timedOut)
        world = World(reactor, scenario)
        await world.start()
        report = await world.report()
        await world.stop()
        timeout.cancel()
        print(json.dumps(report), flush=True)

    def failed(failure: Failure) -> Failure:
        print(failure.getTraceback(), file=sys.stderr, flush=True)
        return failure

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)).addErrback(failed))


if __name__ == "__main__":
    main()
