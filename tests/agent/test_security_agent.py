# -*- test-case-name: tests.agent.test_security_agent -*-
"""
The agent facing a hostile or misconfigured server (issue 12, findings 12,
15 and 16): what a server says must not flood the agent's log, make it
storm the replicas, or steer its search for the replicas.

Most tests join a real L{TunnelAgent} to real L{TunnelServer} replicas and
to a L{HostileServer} (a fake server that speaks the wire format itself)
in memory, on one clock, through C{tests.agent.test_replicas.LoadBalancer}; the
last ones put the hostile server on 127.0.0.1 with real TLS and a valid
server certificate.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.agent.hostile_server import HostileServer
from tests.agent.test_replicas import NODE, AgentBehindALoadBalancer, LoadBalancer, replica
from tests.memory import TunnelPair
from tests.pki import TestPKI
from tests.realnet import waitUntil
from twisted_tunnel import wire
from twisted_tunnel._logthrottle import DEFAULT_BURST, DEFAULT_INTERVAL, LogThrottle
from twisted_tunnel.agent import (
    COUNT_MEMORY,
    DEFAULT_MAX_SERVERS,
    SEARCH_SLOWDOWN,
    VERIFY_INTERVAL,
    TunnelAgent,
)
from twisted_tunnel.mux import MAX_SERVER_ID, Tunnel, TunnelAddress, validServerId
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.wire import ErrorCode, OpenFailReason

pki = TestPKI()


def routeToHostile(lb: LoadBalancer, hostile: HostileServer) -> TunnelPair:
    """As L{LoadBalancer.routeTo}, to a L{HostileServer}."""
    lb.clock.advance(0)
    factory, d = lb.pending.pop(0)
    pair = TunnelPair(clock=lb.clock, connect=False)
    address = IPv4Address("TCP", "10.0.0.66", 10262)
    client = factory.buildProtocol(address)
    assert isinstance(client, Tunnel)
    pair.client, pair.server = client, hostile.buildProtocol(address)
    pair.connect()
    d.callback(client)
    pair.pump()
    lb.pairs.append(pair)
    return pair


def messages(events: Any, level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in events if level is None or e["log_level"] is level]


class AgentWorld(AgentBehindALoadBalancer):
    """
    Not a finding: the world of the finding 12, 15 and 16 tests below, an
    agent behind a load balancer, on one clock, and the logs it writes.
    """

    def nextDial(self, agent: TunnelAgent) -> float | None:
        """Seconds until the agent dials again (None: no dial planned)."""
        reconnector = agent._reconnector
        assert reconnector is not None
        calls = [
            c
            for c in self.clock.getDelayedCalls()
            if getattr(c, "func", None) == reconnector._connect
        ]
        return calls[0].getTime() - self.clock.seconds() if calls else None


class LogThrottleTests(SynchronousTestCase):
    """
    Finding 12: a peer decides how often a log line is written; the bound,
    L{LogThrottle}, on its own: bursts, summaries, kinds, bounded memory.
    """

    log = Logger(namespace="tests.throttle")

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LogThrottle(self.clock, burst=3, interval=60.0, maxKinds=4)

    def emit(self, format: str = "refused {what}", **fields: Any) -> bool:
        return self.throttle.emit(self.log, LogLevel.warn, format, **fields)

    def test_burstThenSummary(self) -> None:
        """
        The first C{burst} lines of a kind are written; the rest are counted,
        and summarized (the last one, with the count) when the next line of
        the kind comes after the interval.
        """
        with capturedLogs() as events:
            written = [self.emit(what=i) for i in range(10)]
            self.clock.advance(5)
            self.emit(what=10)
            self.assertEqual(messages(events), ["refused 0", "refused 1", "refused 2"])
            self.clock.advance(55)
            self.emit(what=11)
        self.assertEqual(written, [True] * 3 + [False] * 7)
        self.assertEqual(
            messages(events)[3:],
            ["refused 10 (8 more like this in 5s)", "refused 11"],
        )
        self.assertEqual(events[3]["log_throttle_suppressed"], 8)
        self.assertEqual(events[3]["log_level"], LogLevel.warn)
        self.assertEqual(self.throttle.suppressed, 8)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kinds(self) -> None:
        """Format, level, namespace and key each make a kind of their own."""
        other = Logger(namespace="tests.other")
        with capturedLogs() as events:
            for _ in range(5):
                self.emit()
                self.emit("another {what}")
                self.emit(key="k")
                self.throttle.emit(other, LogLevel.warn, "refused {what}")
        self.assertEqual(len(events), 4 * 3)

    def test_expiredKindSummarizedByAnyLine(self) -> None:
        """A kind whose interval ended is summarized when any line goes through."""
        with capturedLogs() as events:
            for _ in range(5):
                self.emit(what="a")
            self.clock.advance(61)
            self.emit("unrelated")
        self.assertEqual(messages(events)[3:], ["refused a (2 more like this in 0s)", "unrelated"])

    def test_flush(self) -> None:
        """L{LogThrottle.flush} summarizes what was left out, and only that."""
        with capturedLogs() as events:
            for _ in range(4):
                self.emit(what="a")
            self.emit("once")
            self.throttle.flush()
            self.throttle.flush()
        self.assertEqual(
            messages(events), ["refused a"] * 3 + ["once", "refused a (1 more like this in 0s)"]
        )

    def test_boundedKinds(self) -> None:
        """
        At most C{maxKinds} kinds are tracked: the oldest is summarized and
        forgotten to make room, whatever varies.
        """
        with capturedLogs() as events:
            for i in range(1000):
                for _ in range(4):
                    self.emit(key=i, what=i)
        self.assertLessEqual(len(self.throttle._kinds), 4)
        summaries = [e for e in events if "log_throttle_suppressed" in e]
        self.assertEqual(len(summaries), 1000 - 4)
        self.throttle.flush()
        self.assertEqual(self.throttle._kinds, {})

    def test_failure(self) -> None:
        """A failure goes with its line, as with C{Logger.failure}."""
        with capturedLogs() as events:
            self.throttle.emit(self.log, LogLevel.error, "boom", failure=Failure(ValueError("x")))
        self.assertIsInstance(events[0]["log_failure"].value, ValueError)
        # trial fails a test that logs a failure unless the test takes it
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_badArguments(self) -> None:
        for kwargs in ({"burst": 0}, {"interval": 0}, {"maxKinds": 0}):
            self.assertRaises(ValueError, LogThrottle, self.clock, **kwargs)


class RefusedOpenLogFloodTests(AgentWorld):
    """
    Finding 12: a hostile server makes the agent write one warning per
    refused OPEN (20,000 lines in seconds).
    """

    def test_notAllowedFlood(self) -> None:
        """
        20,000 OPENs for an address the agent may not dial: every one is
        refused (OPEN_FAIL NOT_ALLOWED) and counted, and the log gets
        L{DEFAULT_BURST} warnings, then one summary line per interval.
        """
        flood = 20_000
        hostile = HostileServer(lambda n: {"server_id": "evil"}, opens=[("10.9.9.9", 22)] * flood)
        agent = self.startAgent()
        with capturedLogs() as events:
            pair = routeToHostile(self.lb, hostile)
            refusals = [f for f in pair.server.received if isinstance(f, wire.OpenFail)]  # type: ignore[attr-defined]
            self.assertEqual(len(refusals), flood)
            self.assertEqual({f.reason for f in refusals}, {OpenFailReason.NOT_ALLOWED})
            self.assertEqual(agent.metrics.dials["not_allowed"], flood)
            refused = [m for m in messages(events) if m.startswith("refused to dial")]
            self.assertEqual(len(refused), DEFAULT_BURST)
            for _ in range(int(DEFAULT_INTERVAL)):  # a second at a time: keepalives flow
                self.clock.advance(1.0)
                pair.pump()
            self.assertFalse(pair.lost)
            pair.server.open("10.9.9.9", 23)  # type: ignore[attr-defined]
            pair.pump()
        refused = [m for m in messages(events, LogLevel.warn) if m.startswith("refused to dial")]
        self.assertEqual(len(refused), DEFAULT_BURST + 2)
        self.assertIn(f"({flood - DEFAULT_BURST} more like this in 0s)", refused[-2])
        self.assertIn("10.9.9.9:23", refused[-1])

    def test_notAnIPFlood(self) -> None:
        """OPENs for names (not IP addresses): the same bound."""
        agent = self.startAgent()
        with capturedLogs() as events:
            for i in range(500):
                agent.dial(TunnelAddress(NODE, f"host-{i}.example", 80)).addErrback(lambda f: None)
        self.assertEqual(len(messages(events)), DEFAULT_BURST)

    def test_dialFailureFlood(self) -> None:
        """
        OPENs for an allowed port where nothing listens: one line per
        failure kind up to the burst, not one per OPEN.
        """
        agent = self.startAgent()
        with capturedLogs() as events:
            for _ in range(300):
                dialed = agent.dial(TunnelAddress(NODE, "127.0.0.1", 1))
                dialed.addErrback(lambda f: None)
                factory = self.clock.tcpClients[-1][2]
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
        failed = [m for m in messages(events) if m.startswith("dial 127.0.0.1:1 failed")]
        self.assertEqual(len(failed), DEFAULT_BURST)
        self.assertEqual(agent.metrics.dials["refused"], 300)

    def test_stopWritesTheSummary(self) -> None:
        """Stopping the agent writes the count of what was left out."""
        agent = self.startAgent()
        with capturedLogs() as events:
            for _ in range(DEFAULT_BURST + 5):
                agent.dial(TunnelAddress(NODE, "10.9.9.9", 22)).addErrback(lambda f: None)
            agent.stopService()
        self.assertIn("(5 more like this in 0s)", messages(events)[-1])


def sameIdReplicas(clock: MemoryReactorClock) -> list[TunnelServer]:
    """Two replicas given the same --server-id, each saying there are two."""
    return [replica(clock, "srv-1", count=2), replica(clock, "srv-1", count=2)]


class DuplicateServerIdTests(AgentWorld):
    """
    Finding 15: two replicas with one C{--server-id} make a reconnect storm
    with no backoff (948 tunnels in 20 s, the node flapping, 503s).
    """

    def storm(self, replicas: list[TunnelServer], seconds: float, limit: int = 200) -> int:
        """
        Route every dial of the agent to the next replica in turn (a
        round-robin load balancer), for C{seconds} of the clock; how many
        dials there were (at most C{limit}).
        """
        turn = itertools.cycle(replicas)
        dials = 0
        while dials < limit:
            self.clock.advance(0)
            if self.lb.pending:
                self.lb.routeTo(next(turn))
                self.lb.pumpAll()  # closes reach the other side at once
                dials += 1
                continue
            due = [c.getTime() for c in self.clock.getDelayedCalls()]
            if not due or min(due) > seconds:
                break
            self.clock.advance(max(min(due) - self.clock.seconds(), 0))
            self.lb.pumpAll()
        return dials

    def test_noStorm(self) -> None:
        """
        Two replicas with one id, round robin, 20 s: the agent keeps one
        tunnel to the id and dials a handful of times, not hundreds.
        """
        agent = self.startAgent()
        replicas = sameIdReplicas(self.clock)
        dials = self.storm(replicas, 20.0)
        self.assertLessEqual(dials, 5)
        (held,) = agent.tunnels.values()
        self.assertTrue(held.established)
        self.assertEqual(agent.servers(), ["srv-1"])

    def test_saysSoOnBothSides(self) -> None:
        """
        The agent keeps the tunnel it holds, closes the new one with GOAWAY
        DUPLICATE_SERVER_ID and logs an error naming the id and both
        instances; the replica it closed logs an error telling the operator
        what to do; the agent backs off, slowed down.
        """
        agent = self.startAgent()
        first, second = sameIdReplicas(self.clock)
        with capturedLogs() as events:
            a = self.lb.routeTo(first)
            self.lb.routeTo(second)  # accepted: as if first had restarted
            self.lb.pumpAll()
            self.assertTrue(a.lost)
            self.clock.advance(0)
            again = self.lb.routeTo(first)  # first again: two processes
            self.lb.pumpAll()
        self.assertEqual(again.server.peerGoAway[0], ErrorCode.DUPLICATE_SERVER_ID)  # type: ignore[index]
        self.assertTrue(again.lost)
        (held,) = agent.tunnels.values()
        self.assertTrue(held.established)
        self.assertEqual(held.peerInfo["instance"], second.instance)
        errors = messages(events, LogLevel.error)
        agentSays = [m for m in errors if m.startswith("two server processes")]
        self.assertEqual(len(agentSays), 1, errors)
        for word in ("srv-1", first.instance, second.instance, "--server-id"):
            self.assertIn(word, agentSays[0])
        serverSays = [m for m in errors if m.startswith("another replica uses server id srv-1")]
        self.assertEqual(len(serverSays), 1, errors)
        self.assertIn("give each replica its own --server-id", serverSays[0])
        self.assertEqual(agent.metrics.connects["duplicate_server_id"], 1)
        self.assertEqual(self.nextDial(agent), self.policy(1) * SEARCH_SLOWDOWN)

    def test_theOtherIsRefusedToo(self) -> None:
        """
        Once both instances are known, whichever of them the agent does not
        hold is refused, even after the held tunnel was lost and replaced by
        the other: no flapping between them.
        """
        agent = self.startAgent()
        first, second = sameIdReplicas(self.clock)
        self.storm([first, second], 0.0, limit=3)  # first, second, first: refused
        self.assertEqual(agent.tunnels["srv-1"].peerInfo["instance"], second.instance)
        for pair in self.lb.pairs:
            if not pair.lost:
                pair.lose(Failure(ConnectionLost()))  # a network blip
        self.clock.advance(100)
        self.lb.routeTo(first)
        self.assertEqual(agent.tunnels["srv-1"].peerInfo["instance"], first.instance)
        self.clock.advance(0)
        refused = self.lb.routeTo(second)
        self.lb.pumpAll()
        self.assertEqual(refused.server.peerGoAway[0], ErrorCode.DUPLICATE_SERVER_ID)  # type: ignore[index]
        self.assertEqual(agent.tunnels["srv-1"].peerInfo["instance"], first.instance)

    def test_restartsAreAcceptedAtOnce(self) -> None:
        """
        A replica that restarts under its id, again and again (its old
        tunnel silently dead each time): each new instance is taken at once,
        and nothing is called a duplicate.
        """
        agent = self.startAgent()
        with capturedLogs() as events:
            for _ in range(4):
                restarted = replica(self.clock, "srv-1", count=1)
                old = self.lb.pairs[-1] if self.lb.pairs else None
                if old is not None:
                    old.clientToServer = old.serverToClient = False
                    self.clock.advance(1)
                    agent._reconnector._connect()  # type: ignore[union-attr]
                pair = self.lb.routeTo(restarted)
                self.assertIs(agent.tunnels["srv-1"], pair.client)
                self.assertEqual(agent.tunnels["srv-1"].peerInfo["instance"], restarted.instance)
        self.assertEqual(messages(events, LogLevel.error), [])
        self.assertEqual(agent.metrics.connects["duplicate_server_id"], 0)

    def test_serverWithoutInstance(self) -> None:
        """
        A server that announces no instance (an older version) is taken as
        before: the newer tunnel replaces the older.
        """
        agent = self.startAgent()
        hostile = HostileServer(lambda n: {"server_id": "srv-1"})
        routeToHostile(self.lb, hostile)
        self.clock.advance(0)
        agent._reconnector._connect()  # type: ignore[union-attr]
        second = routeToHostile(self.lb, hostile)
        self.assertIs(agent.tunnels["srv-1"], second.client)


class HostileServerHelloTests(AgentWorld):
    """
    Finding 16: a replica (any holder of a CA-signed server certificate)
    steers the agents' search: C{server_count: 1} stops the search, 64
    unique ids make the agent hold 64 tunnels, and two 40 KB server ids
    echoed in every later HELLO make every real replica refuse it.
    """

    def realReplicas(self) -> dict[str, TunnelServer]:
        return {name: replica(self.clock, name) for name in ("srv-1", "srv-2", "srv-3")}

    def test_hugeIdsAreRefusedNotEchoed(self) -> None:
        """
        Two 40 KB server ids: each such HELLO is refused (PROTOCOL_ERROR,
        a failed attempt), nothing of them is echoed, and the real replicas
        reached next accept the agent.
        """
        agent = self.startAgent()
        hostile = HostileServer(lambda n: {"server_id": f"{n}" + "x" * 40_000})
        for _ in range(2):
            pair = routeToHostile(self.lb, hostile)
            self.assertEqual(pair.server.goaways[-1][0], ErrorCode.PROTOCOL_ERROR)  # type: ignore[attr-defined]
            self.assertTrue(pair.lost)
            self.clock.advance(self.nextDial(agent) or 0)
        self.assertEqual(agent.servers(), [])
        replicas = self.realReplicas()
        for server in replicas.values():
            pair = self.lb.routeTo(server)
            self.assertTrue(pair.server.established)
            self.assertLess(len(wire.Hello(1, 1, pair.server.peerInfo).encode()), 1024)
        self.assertEqual(sorted(agent.servers()), sorted(replicas))

    def test_badHelloValuesAreRefused(self) -> None:
        """
        A server id that is not a plain bounded name, an instance that is
        not, a count that is not an integer in 1..64: refused, as a failed
        attempt, and never held.
        """
        bad: list[dict[str, Any]] = [
            {"server_id": ""},
            {"server_id": "x" * (MAX_SERVER_ID + 1)},
            {"server_id": "srv-1\x1b[2J"},
            {"server_id": "srv 1"},
            {"server_id": ["srv-1"]},
            {"server_id": 7},
            {"server_id": "srv-1", "instance": "y" * 300},
            {"server_id": "srv-1", "server_count": 0},
            {"server_id": "srv-1", "server_count": 65},
            {"server_id": "srv-1", "server_count": "3"},
            {"server_id": "srv-1", "server_count": True},
            {"server_id": "srv-1", "server_count": 2.0},
        ]
        agent = self.startAgent()
        for info in bad:
            hostile = HostileServer(lambda n, info=info: info)  # type: ignore[misc]
            pair = routeToHostile(self.lb, hostile)
            self.assertEqual(hostile.goaways, [(ErrorCode.PROTOCOL_ERROR, hostile.goaways[0][1])])
            self.assertNotIn(repr(info)[:40], hostile.goaways[0][1])
            self.assertTrue(pair.lost, info)
            self.assertEqual(agent.servers(), [], info)
            self.clock.advance(self.nextDial(agent) or 0)
        self.assertEqual(len(self.policy.asked), len(bad))

    def test_validServerIds(self) -> None:
        for value in ("srv-1", "a", "edge-tunnel-server-7d9f8b6c5-x2x7q", "0f3c:a.b_c", "z" * 253):
            self.assertTrue(validServerId(value), value)
        bad: tuple[object, ...] = ("", "z" * 254, "a b", "a/b", "é", "a\n", None, 1)
        for wrong in bad:
            self.assertFalse(validServerId(wrong), wrong)

    def test_lowCountCannotStopTheSearch(self) -> None:
        """
        Having held the three real replicas (which announce 3), the agent
        loses them all; the first server it reaches then announces 1: it
        goes on looking for three and finds them.
        """
        agent = self.startAgent()
        replicas = self.realReplicas()
        for server in replicas.values():
            self.lb.routeTo(server)
        for pair in self.lb.pairs:
            pair.lose(Failure(ConnectionLost()))
        self.clock.advance(self.nextDial(agent) or 0)
        liar = HostileServer(lambda n: {"server_id": "liar", "server_count": 1})
        routeToHostile(self.lb, liar)
        self.assertEqual(agent.serversWanted(), 3)
        self.assertEqual(self.nextDial(agent), 0.0, "the search goes on at once")
        for server in replicas.values():
            self.lb.routeTo(server)
        self.assertEqual(sorted(agent.servers()), ["liar", *sorted(replicas)])

    def test_lowCountIsForgottenAfterScaleDown(self) -> None:
        """
        The count of a replica that is gone counts for L{COUNT_MEMORY}
        seconds: after a scale-down from 3 to 2, the agent wants 2 again.
        """
        agent = self.startAgent()
        replicas = self.realReplicas()
        pairs = [self.lb.routeTo(server) for server in replicas.values()]
        pairs[2].lose(Failure(ConnectionLost()))
        for pair in pairs[:2]:
            pair.lose(Failure(ConnectionLost()))  # restarted with --server-count 2
        for name in ("srv-1", "srv-2"):
            self.clock.advance(self.nextDial(agent) or 0)
            self.lb.routeTo(replica(self.clock, name, count=2))
        self.assertEqual(agent.serversWanted(), 3)
        self.clock.advance(COUNT_MEMORY)
        self.assertEqual(agent.serversWanted(), 2)

    def test_lowCountFirstIsCorrectedByTheCheck(self) -> None:
        """
        A fresh agent that reaches the liar first holds 1 of 1; its check
        that no server was missed (after at most L{VERIFY_INTERVAL}) reaches
        a real replica, and it finds them all.
        """
        agent = self.startAgent()
        liar = HostileServer(lambda n: {"server_id": "liar", "server_count": 1})
        routeToHostile(self.lb, liar)
        self.assertEqual((agent.servers(), agent.serversWanted()), (["liar"], 1))
        delay = self.nextDial(agent)
        assert delay is not None
        self.assertLessEqual(delay, VERIFY_INTERVAL)
        for _ in range(int(delay) + 1):  # a second at a time, so that keepalives flow
            self.clock.advance(1.0)
            self.lb.pumpAll()
        replicas = self.realReplicas()
        for server in replicas.values():
            self.lb.routeTo(server)
        self.assertEqual(sorted(agent.servers()), ["liar", *sorted(replicas)])
        self.assertEqual(self.lb.pending, [])

    def test_manyIdsAreCapped(self) -> None:
        """
        A server that shows a new id on every connection and announces 64:
        the agent holds at most C{maxServers} tunnels, its HELLO names at
        most that many ids, and then it stops searching.
        """
        agent = self.startAgent()
        sybil = HostileServer(lambda n: {"server_id": f"sybil-{n}", "server_count": 64})
        while self.lb.pending:
            routeToHostile(self.lb, sybil)
            self.clock.advance(0)
        self.assertEqual(len(agent.servers()), DEFAULT_MAX_SERVERS)
        self.assertEqual(agent.serversWanted(), DEFAULT_MAX_SERVERS)
        self.assertEqual(len(sybil.hellos), DEFAULT_MAX_SERVERS)
        self.assertEqual(max(len(h["servers"]) for h in sybil.hellos), DEFAULT_MAX_SERVERS - 1)
        self.assertGreater(self.nextDial(agent) or 0, VERIFY_INTERVAL / 2 - 1)

    def test_atTheCapTheCheckGoesOn(self) -> None:
        """
        At the cap, the check that no server was missed may reach one more
        id: it is closed, not held, and the agent checks again later (it
        neither holds more nor stops checking).
        """
        agent = self.startAgent(maxServers=2)
        sybil = HostileServer(lambda n: {"server_id": f"sybil-{n}", "server_count": 64})
        while self.lb.pending:
            routeToHostile(self.lb, sybil)
            self.clock.advance(0)
        for _ in range(2):
            delay = self.nextDial(agent)
            assert delay is not None
            self.assertGreater(delay, VERIFY_INTERVAL / 2 - 1)
            for _ in range(int(delay) + 1):  # a second at a time: keepalives flow
                self.clock.advance(1.0)
                self.lb.pumpAll()
            extra = routeToHostile(self.lb, sybil)
            self.assertTrue(extra.lost)
            self.assertEqual(extra.server.goaways[-1][0], ErrorCode.NO_ERROR)  # type: ignore[attr-defined]
            self.assertEqual(agent.servers(), ["sybil-0", "sybil-1"])

    def test_maxServersOption(self) -> None:
        """C{maxServers} (C{--max-servers}) sets the cap."""
        agent = self.startAgent(maxServers=2)
        sybil = HostileServer(lambda n: {"server_id": f"sybil-{n}", "server_count": 64})
        while self.lb.pending:
            routeToHostile(self.lb, sybil)
            self.clock.advance(0)
        self.assertEqual(len(agent.servers()), 2)
        self.assertRaises(ValueError, TunnelAgent, self.clock, None, ("a", 1), NODE, maxServers=0)
        self.assertRaises(ValueError, TunnelAgent, self.clock, None, ("a", 1), NODE, maxServers=65)

    def test_realReplicasFoundAmongSybils(self) -> None:
        """
        A load balancer that sends every other dial to the sybil: the agent
        still finds and keeps the three real replicas.
        """
        agent = self.startAgent()
        sybil = HostileServer(lambda n: {"server_id": f"sybil-{n}", "server_count": 64})
        replicas = iter(self.realReplicas().values())
        route: list[Callable[[], Any]] = [
            lambda: routeToHostile(self.lb, sybil),
            lambda: self.lb.routeTo(next(replicas)),
        ]
        for i in range(6):
            route[i % 2]()
            self.clock.advance(0)
        self.assertEqual(
            sorted(s for s in agent.servers() if s.startswith("srv")), ["srv-1", "srv-2", "srv-3"]
        )


class HostileServerOverTLSTests(TestCase):
    """
    Finding 16: a replica steers the agents' search; here over real TLS on
    127.0.0.1, the hostile server holding a valid server certificate for
    the name the agent checks.
    """

    async def startAgent(self, port: int, **kwargs: Any) -> TunnelAgent:
        agent = TunnelAgent(
            reactor,
            pki.credentials(pki.agent(NODE)),
            ("127.0.0.1", port),
            NODE,
            retryPolicy=lambda failures: 0.01,
            **kwargs,
        )
        agent.startService()
        self.addCleanup(agent.stopService)
        return agent

    async def test_hugeIds(self) -> None:
        """Two 40 KB ids, over and over: refused each time, never held."""
        hostile = HostileServer(lambda n: {"server_id": f"{n % 2}" + "x" * 40_000})
        port = hostile.listen(self, reactor, pki.credentials(pki.server))
        agent = await self.startAgent(port)
        await waitUntil(lambda: len(hostile.goaways) >= 3, 20, "three refusals")
        self.assertEqual({code for code, _ in hostile.goaways}, {ErrorCode.PROTOCOL_ERROR})
        self.assertEqual(agent.servers(), [])
        self.assertTrue(all(h.get("servers") == [] for h in hostile.hellos))

    async def test_manyIds(self) -> None:
        """A new id per connection, announcing 64: the agent holds C{maxServers}, then stops."""
        hostile = HostileServer(lambda n: {"server_id": f"sybil-{n}", "server_count": 64})
        port = hostile.listen(self, reactor, pki.credentials(pki.server))
        agent = await self.startAgent(port, maxServers=3)
        await waitUntil(lambda: len(agent.servers()) == 3, 20, "three tunnels")
        self.assertEqual(len(hostile.connections), 3)
        self.assertEqual(hostile.hellos[-1]["servers"], ["sybil-0", "sybil-1"])
