# -*- test-case-name: tests.agent.test_replicas -*-
"""
Several server replicas behind one load balancer: the agent holds a tunnel
to each (L{twisted_tunnel.agent.Reconnector}), a replica refuses a
duplicate (HELLO C{servers}, C{GOAWAY DUPLICATE}), and a stopping agent
drains its tunnels.

The replicas are real L{TunnelServer}s and the agent a real
L{TunnelAgent}; what stands between them is L{LoadBalancer}, an endpoint
whose dials the test routes to the replica it names, each joined to the
agent in memory (L{TunnelPair}).  Everything runs on one L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.agent.test_agent import RecordingPolicy
from tests.memory import ProtocolFactory, Recorder, TunnelPair, frames, framesOfType
from twisted_tunnel import wire
from twisted_tunnel.agent import SEARCH_PATIENCE, SEARCH_SLOWDOWN, VERIFY_INTERVAL, TunnelAgent
from twisted_tunnel.errors import NodeNotConnected
from twisted_tunnel.mux import Tunnel
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import PeerIdentity
from twisted_tunnel.wire import ErrorCode

NODE = "edge-1"


def replica(clock: MemoryReactorClock, serverId: str, count: int = 3) -> TunnelServer:
    """A server replica that takes every peer for the agent of L{NODE}."""
    return TunnelServer(
        clock,
        None,
        serverId=serverId,
        serverCount=count,
        identify=lambda transport: PeerIdentity(
            f"system:node:{NODE}", organizations=("system:nodes",)
        ),
    )


@implementer(IStreamClientEndpoint)
class LoadBalancer:
    """
    The address in front of the replicas: each dial waits in C{pending}
    until the test routes it to a replica (L{routeTo}) or fails it.
    """

    def __init__(self, clock: MemoryReactorClock) -> None:
        self.clock = clock
        self.pending: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []
        self.pairs: list[TunnelPair] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        self.pending.append((protocolFactory, d))
        return d

    def routeTo(self, server: TunnelServer) -> TunnelPair:
        """
        Connect the oldest pending dial (after the dials due now go out) to
        C{server}; exchange HELLOs.
        """
        self.clock.advance(0)
        factory, d = self.pending.pop(0)
        pair = TunnelPair(clock=self.clock, connect=False)
        address = IPv4Address("TCP", "10.0.0.1", 10262)
        client = factory.buildProtocol(address)
        server_ = server.plainTunnelFactory().buildProtocol(address)
        assert isinstance(client, Tunnel) and isinstance(server_, Tunnel)
        pair.client, pair.server = client, server_
        pair.connect()
        d.callback(client)
        pair.pump()
        self.pairs.append(pair)
        return pair

    def pumpAll(self) -> None:
        for pair in self.pairs:
            pair.pump()

    def openStream(self, pair: TunnelPair) -> tuple[Recorder, IProtocol]:
        """
        Open a stream from the server side of C{pair} to the node's kubelet
        port; the agent dials it (on the memory reactor) and the dial is
        answered.  The server's end and the target's protocol.
        """
        opener = Recorder()
        opened = pair.server.openStream("127.0.0.1", 10250, ProtocolFactory(lambda: opener))
        pair.pump()
        factory = self.clock.tcpClients[-1][2]
        target = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10250))
        targetTransport = StringTransport()
        target.makeConnection(targetTransport)
        pair.pump()
        assert _result(opened) is opener
        return opener, target


def _result(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert len(results) == 1, "not fired"
    return results[0]


class AgentBehindALoadBalancer(SynchronousTestCase):
    """
    An agent for L{NODE} dialing a L{LoadBalancer}, on one memory reactor
    and clock, with its retry policy recorded; stopped, and every pair the
    load balancer made lost, at cleanup.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.lb = LoadBalancer(self.clock)
        self.policy = RecordingPolicy()

    def startAgent(self, **kwargs: Any) -> TunnelAgent:
        agent = TunnelAgent(
            self.clock,
            None,
            ("lb.example", 10262),
            NODE,
            ["192.0.2.10"],
            endpoint=self.lb,
            retryPolicy=self.policy,
            **kwargs,
        )
        agent.startService()
        self.addCleanup(self.stop, agent)
        return agent

    def stop(self, agent: TunnelAgent) -> None:
        if agent.running:
            agent.stopService()
        for pair in self.lb.pairs:
            if not pair.lost:
                pair.lose(Failure(ConnectionLost()))


class ReplicaTests(AgentBehindALoadBalancer):
    def setUp(self) -> None:
        super().setUp()
        self.replicas = {name: replica(self.clock, name) for name in ("srv-1", "srv-2", "srv-3")}

    def startAgent(self, drainTimeout: float = 0.0, **kwargs: Any) -> TunnelAgent:
        return super().startAgent(drainTimeout=drainTimeout, **kwargs)

    def holdAll(self, agent: TunnelAgent) -> dict[str, TunnelPair]:
        pairs = {name: self.lb.routeTo(server) for name, server in self.replicas.items()}
        self.assertEqual(sorted(agent.servers()), sorted(self.replicas))
        return pairs

    def registered(self, serverId: str) -> Tunnel | None:
        record = self.replicas[serverId].registry.lookup(NODE)
        return record.tunnel if record is not None else None

    def test_dialsUntilEveryReplicaIsHeld(self) -> None:
        """
        After each new replica the agent dials again at once; the count it
        looks for is the C{server_count} the servers announce; holding all,
        it dials no more.
        """
        agent = self.startAgent()
        self.assertEqual(agent.serversWanted(), 1)
        pairs = [self.lb.routeTo(self.replicas["srv-1"])]
        self.assertEqual((agent.servers(), agent.serversWanted()), (["srv-1"], 3))
        self.clock.advance(0)
        self.assertEqual(len(self.lb.pending), 1, "the next dial goes out at once")
        pairs.append(self.lb.routeTo(self.replicas["srv-2"]))
        pairs.append(self.lb.routeTo(self.replicas["srv-3"]))
        self.assertEqual(agent.servers(), ["srv-1", "srv-2", "srv-3"])
        for name, pair in zip(self.replicas, pairs, strict=True):
            self.assertIs(agent.tunnels[name], pair.client, name)
            self.assertIs(self.registered(name), pair.server, name)
        self.assertEqual(self.lb.pending, [])
        self.clock.advance(VERIFY_INTERVAL / 2 - 1)
        self.assertEqual(self.lb.pending, [], "holding every replica, it stops searching")
        self.clock.advance(VERIFY_INTERVAL / 2 + 1)
        self.assertEqual(len(self.lb.pending), 1, "but checks once in a while that none is missed")
        self.assertEqual(self.policy.asked, [])

    def test_duplicateIsRefusedAndTheHeldTunnelKept(self) -> None:
        """
        Reaching a replica it already holds: the replica refuses the new
        connection with DUPLICATE (its registry keeps the first), the agent
        keeps the first and dials again after C{retryPolicy(failures)}.
        """
        agent = self.startAgent()
        first = self.lb.routeTo(self.replicas["srv-1"])
        again = self.lb.routeTo(self.replicas["srv-1"])
        self.assertEqual(again.server.peerInfo["servers"], ["srv-1"])
        self.assertEqual(again.client.peerGoAway[0], ErrorCode.DUPLICATE)  # type: ignore[index]
        self.assertTrue(again.lost)
        self.assertFalse(first.lost)
        self.assertIs(self.registered("srv-1"), first.server)
        self.assertEqual(agent.tunnels, {"srv-1": first.client})
        self.assertEqual(self.policy.asked, [1])
        self.assertEqual(self.lb.pending, [])
        self.clock.advance(20.0)
        self.lb.pumpAll()
        self.assertEqual(len(self.lb.pending), 1)
        self.lb.routeTo(self.replicas["srv-2"])
        self.assertEqual(agent.servers(), ["srv-1", "srv-2"])
        self.assertEqual(agent._reconnector.failures, 0)  # type: ignore[union-attr]

    def test_searchSlowsDownForAReplicaThatStaysMissing(self) -> None:
        """
        After SEARCH_PATIENCE duplicates in a row the search for the missing
        replica waits SEARCH_SLOWDOWN times longer; a replica found makes it
        search at the normal pace again.
        """
        agent = self.startAgent()
        kept = self.lb.routeTo(self.replicas["srv-1"])
        for attempt in range(1, SEARCH_PATIENCE + 1):
            self.lb.routeTo(self.replicas["srv-1"])
            delay = self.nextDial(agent)
            slowdown = SEARCH_SLOWDOWN if attempt >= SEARCH_PATIENCE else 1
            self.assertEqual(delay, 10.0 * (attempt + 1) * slowdown, attempt)
            for _ in range(int(delay)):  # a second at a time, so that keepalives flow
                self.clock.advance(1.0)
                self.lb.pumpAll()
        self.assertFalse(kept.lost)
        self.assertEqual(agent.servers(), ["srv-1"])
        self.lb.routeTo(self.replicas["srv-2"])
        self.clock.advance(0)
        self.lb.routeTo(self.replicas["srv-2"])
        self.assertEqual(self.nextDial(agent), 20.0, "the pace is back to normal")

    def nextDial(self, agent: TunnelAgent) -> float:
        """Seconds until the agent dials again."""
        reconnector = agent._reconnector
        assert reconnector is not None
        (call,) = [c for c in self.clock.getDelayedCalls() if c.func == reconnector._connect]
        return call.getTime() - self.clock.seconds()

    def test_lostReplicaIsLookedForAgain(self) -> None:
        """A tunnel lost (a replica died): dial after C{retryPolicy(0)}, find its replacement."""
        agent = self.startAgent()
        pairs = self.holdAll(agent)
        pairs["srv-2"].lose(Failure(ConnectionLost()))
        self.assertEqual(agent.servers(), ["srv-1", "srv-3"])
        self.assertEqual(self.policy.asked, [0])
        self.clock.advance(10.0)
        self.lb.pumpAll()
        self.assertEqual(len(self.lb.pending), 1)
        self.replicas["srv-4"] = replica(self.clock, "srv-4")
        self.lb.routeTo(self.replicas["srv-4"])
        self.assertEqual(sorted(agent.servers()), ["srv-1", "srv-3", "srv-4"])
        self.assertEqual(self.lb.pending, [])

    def test_everyTunnelLost(self) -> None:
        """Losing them all, it still looks for the count it knew."""
        agent = self.startAgent()
        for pair in self.holdAll(agent).values():
            pair.lose(Failure(ConnectionLost()))
        self.assertEqual((agent.servers(), agent.serversWanted()), ([], 3))
        self.assertIsNone(agent.tunnel)
        self.clock.advance(10.0)
        self.lb.routeTo(self.replicas["srv-3"])
        self.clock.advance(0)
        self.assertEqual(len(self.lb.pending), 1)

    def test_scaleDown(self) -> None:
        """Once the replicas it holds announce a smaller count, it wants that many."""
        agent = self.startAgent()
        self.replicas = {name: replica(self.clock, name, count=2) for name in ("srv-1", "srv-2")}
        self.holdAll(agent)
        self.assertEqual(agent.serversWanted(), 2)
        self.assertEqual(self.lb.pending, [])

    def test_restartedUnderTheSameId(self) -> None:
        """
        A replica that restarted under the same id no longer holds the
        node: it accepts the agent that names it in C{servers}, and the
        agent closes its old (dead, not yet noticed) tunnel to it.
        """
        agent = self.startAgent()
        old = self.lb.routeTo(self.replicas["srv-1"])
        old.clientToServer = old.serverToClient = False  # silently dead
        self.replicas["srv-1"] = replica(self.clock, "srv-1")
        new = self.lb.routeTo(self.replicas["srv-1"])
        self.assertEqual(agent.tunnels, {"srv-1": new.client})
        self.assertIs(self.registered("srv-1"), new.server)
        goaways = framesOfType(frames(old.clientTransport), wire.GoAway)
        self.assertEqual([g.code for g in goaways], [ErrorCode.REPLACED])

    def test_replacedByAnotherAgent(self) -> None:
        """
        A second agent for the same node (one certificate on two machines)
        replaces the first one's tunnel: the first agent says that another
        agent proves its node, once (throttled), with what to check.  Its
        own dials never draw that line (it lists the servers it holds).
        """
        first = self.startAgent()
        self.holdAll(first)
        second = self.startAgent()
        with capturedLogs() as events:
            pair = self.lb.routeTo(self.replicas["srv-1"])
            self.lb.pumpAll()
        self.assertIs(self.registered("srv-1"), pair.server)
        self.assertEqual(second.servers(), ["srv-1"])
        lines = [formatEvent(e) for e in events if "another agent proves" in e["log_format"]]
        self.assertEqual(len(lines), 1, [formatEvent(e) for e in events])
        self.assertIn(f"server srv-1 replaced our tunnel for node {NODE}", lines[0])
        self.assertIn("one certificate, or one --node-name, used on two machines", lines[0])

    def test_drainingReplica(self) -> None:
        """
        A replica that drains (it is stopping): the agent stops counting
        it at once and looks for its replacement, while the stream in
        flight on it finishes.
        """
        agent = self.startAgent()
        pairs = self.holdAll(agent)
        draining = pairs["srv-2"]
        opener, target = self.lb.openStream(draining)
        drained = self.replicas["srv-2"].drain()
        draining.pump()
        self.assertEqual(agent.servers(), ["srv-1", "srv-3"])
        self.assertEqual(self.policy.asked, [0])
        self.clock.advance(10.0)
        self.assertEqual(len(self.lb.pending), 1)
        opener.transport.write(b"in flight")  # type: ignore[union-attr]
        draining.pump()
        self.assertEqual(target.transport.value(), b"in flight")  # type: ignore[union-attr]
        self.assertFalse(draining.lost, "the stream in flight keeps its tunnel")
        opener.transport.loseConnection()  # type: ignore[union-attr]
        draining.pump()
        target.connectionLost(Failure(ConnectionDone()))
        draining.pump()
        self.assertTrue(draining.lost)
        self.successResultOf(drained)
        self.lb.routeTo(self.replicas["srv-3"])  # the replacement is not there yet
        self.assertEqual(agent.servers(), ["srv-1", "srv-3"])

    def test_stopDrains(self) -> None:
        """
        SIGTERM to the agent: GOAWAY SHUTTING_DOWN on every tunnel, every
        replica stops routing to the node at once, idle tunnels close, and
        a stream in flight may go on until the drain timeout.
        """
        agent = self.startAgent(drainTimeout=5.0)
        pairs = self.holdAll(agent)
        busy = pairs["srv-1"]
        opener, target = self.lb.openStream(busy)
        stopped = agent.stopService()
        assert stopped is not None
        self.lb.pumpAll()
        for name, pair in pairs.items():
            self.assertEqual(pair.server.peerGoAway[0], ErrorCode.SHUTTING_DOWN, name)  # type: ignore[index]
            self.assertIsNone(self.registered(name), name)
            endpoint = self.replicas[name].endpointForNode(NODE, 10250)
            self.failureResultOf(endpoint.connect(_Factory()), NodeNotConnected)
        self.assertEqual([n for n, p in pairs.items() if not p.lost], ["srv-1"])
        opener.transport.write(b"still flowing")  # type: ignore[union-attr]
        busy.pump()
        self.assertEqual(target.transport.value(), b"still flowing")  # type: ignore[union-attr]
        self.assertNoResult(stopped)
        self.clock.advance(5.0)
        busy.pump()
        self.assertTrue(busy.lost)
        self.successResultOf(stopped)
        self.assertEqual(self.lb.pending, [])


class _Factory:
    def buildProtocol(self, addr: Any) -> IProtocol:
        return Recorder()


class HelloServersTests(SynchronousTestCase):
    """What a server accepts in HELLO C{servers}."""

    def hello(self, info: dict[str, Any]) -> TunnelPair:
        clock = MemoryReactorClock()
        server = replica(clock, "srv-1")
        pair = TunnelPair(clock=clock, connect=False)
        pair.server = server.plainTunnelFactory().buildProtocol(None)  # type: ignore[assignment]
        pair.clientHandler.info.update(info)
        pair.connect()
        pair.pump()
        return pair

    def assertRefused(self, info: dict[str, Any], code: ErrorCode) -> None:
        goaway = self.hello(info).client.peerGoAway
        assert goaway is not None
        self.assertEqual(goaway[0], code, goaway[1])

    def test_notAList(self) -> None:
        self.assertRefused({"servers": "srv-1"}, ErrorCode.PROTOCOL_ERROR)

    def test_tooMany(self) -> None:
        self.assertRefused({"servers": [f"s{i}" for i in range(65)]}, ErrorCode.PROTOCOL_ERROR)

    def test_namesThisServerButItHoldsNothing(self) -> None:
        """A claim without a live tunnel here is not a duplicate."""
        self.assertTrue(self.hello({"servers": ["srv-1"]}).server.established)

    def test_absent(self) -> None:
        """An older agent sends no C{servers}: accepted."""
        self.assertTrue(self.hello({}).server.established)
