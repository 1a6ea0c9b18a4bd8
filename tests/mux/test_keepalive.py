"""
Keepalive kept by a server's L{KeepaliveSweep}: who pings, when, how often
each tunnel is looked at, and that a dead peer is still found in time on
both sides.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import RecordingHandler, TunnelPair
from twisted_tunnel import mux, wire
from twisted_tunnel.mux import Keepalive, Tunnel
from twisted_tunnel.mux.keepalive import KEEPALIVE_INFO, SERVER_KEEPS_ALIVE
from twisted_tunnel.wire import ErrorCode, Ping, Pong

KEEPALIVE = Keepalive(interval=10, misses=3)

#: what an agent and a server that sweeps say in their HELLOs
AGENT = {"node": "edge-1", KEEPALIVE_INFO: SERVER_KEEPS_ALIVE}
SWEEPING_SERVER = {"server_id": "srv-a", KEEPALIVE_INFO: SERVER_KEEPS_ALIVE}


def sweptPair(
    sweep: mux.KeepaliveSweep,
    clock: Clock,
    serverInfo: dict[str, Any] = SWEEPING_SERVER,
    agentInfo: dict[str, Any] = AGENT,
) -> TunnelPair:
    """
    An agent and a server whose side is kept by C{sweep}, joined in memory,
    with HELLO done; they announce C{agentInfo} and C{serverInfo}.
    """
    pair = TunnelPair(
        clientHandler=RecordingHandler(agentInfo),
        serverHandler=RecordingHandler(serverInfo),
        clock=clock,
        keepalive=KEEPALIVE,
        connect=False,
    )
    pair.server = Tunnel(
        pair.serverHandler, clock, isClient=False, keepalive=KEEPALIVE, keepaliveSweep=sweep
    )
    pair.connect()
    pair.establish()
    return pair


class Recorded:
    """The frames each side of a pair writes, kept as they are written."""

    def __init__(self, pair: TunnelPair) -> None:
        self.written: dict[str, list[bytes]] = {"client": [], "server": []}
        for side, transport in (
            ("client", pair.clientTransport),
            ("server", pair.serverTransport),
        ):
            write = transport.write
            transport.write = lambda data, side=side, write=write: (  # type: ignore[method-assign]
                self.written[side].append(data),
                write(data),
            )

    def types(self, side: str) -> list[type]:
        return [type(f) for f in wire.decodeAll(b"".join(self.written[side]))]


class SweepingServerKeepsAliveTests(SynchronousTestCase):
    def test_serverPingsAndTheAgentOnlyAnswers(self) -> None:
        """
        A server with a sweep says so in HELLO and pings; its agent only
        answers: a minute of idle tunnel is six PINGs from the server and
        six PONGs back, none from the agent.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        pair = sweptPair(sweep, clock)
        recorded = Recorded(pair)
        for _ in range(240):
            clock.advance(0.25)
            pair.pump()
        self.assertEqual(recorded.types("server"), [Ping] * 6)
        self.assertEqual(recorded.types("client"), [Pong] * 6)
        self.assertTrue(pair.server.established and pair.client.established)
        pair.lose(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_pingsDueTogetherLeaveInOneSweep(self) -> None:
        """
        Tunnels that fell silent in the same slot are pinged by the same
        run of the timer: one wakeup sends them all.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        pairs = [sweptPair(sweep, clock) for _ in range(5)]
        self.assertEqual(len(clock.getDelayedCalls()), 1 + 5)  # the sweep, the agents' own
        clock.advance(9.75)
        self.assertEqual([p.serverTransport.value() for p in pairs], [b""] * 5)
        clock.advance(0.25)
        for pair in pairs:
            self.assertEqual(
                [type(f) for f in wire.decodeAll(pair.serverTransport.value())], [Ping]
            )
            pair.pump()
            pair.lose(Failure(ConnectionDone()))
        self.assertEqual(len(sweep), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_tunnelWithTrafficIsLookedAtOncePerInterval(self) -> None:
        """
        However short the period, a tunnel that hears from its peer is
        looked at (refiled) about once per interval, not every slot, and
        is never pinged.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.1)
        pair = sweptPair(sweep, clock)
        checks: list[float] = []
        check = pair.server.checkKeepalive
        pair.server.checkKeepalive = lambda **kw: (  # type: ignore[method-assign]
            checks.append(clock.seconds()),
            check(**kw),
        )[1]
        runs = []
        sweepOnce = sweep._sweep
        sweep._sweep = lambda: (runs.append(clock.seconds()), sweepOnce())  # type: ignore[method-assign]
        recorded = Recorded(pair)
        for _ in range(600):  # a minute, the agent saying something every 4 s
            clock.advance(0.1)
            if round(clock.seconds() * 10) % 40 == 0:
                pair.client.sendFrame(Pong(b"\0" * 8))
            pair.pump()
        self.assertEqual(checks, [])
        self.assertNotIn(Ping, recorded.types("server"))
        self.assertLessEqual(len(runs), 7, runs)
        pair.lose(Failure(ConnectionDone()))

    def test_agentOfASweepingServerProbesOnly(self) -> None:
        """
        The agent of a server that keeps the tunnel alive pings only after
        C{interval * (misses - 1)} of silence, and finds the dead server at
        the deadline.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        pair = sweptPair(sweep, clock)
        pair.serverToClient = False
        sent: list[wire.Frame] = []
        with capturedLogs() as events:
            for _ in range(int(19.75 / 0.25)):
                clock.advance(0.25)
                sent += wire.decodeAll(pair.clientTransport.value())
                pair.clientTransport.clear()
            self.assertEqual([type(f) for f in sent], [])
            clock.advance(0.25)  # 20 s of silence
            self.assertEqual(
                [type(f) for f in wire.decodeAll(pair.clientTransport.value())], [Ping]
            )
            clock.advance(9.75)
            self.assertTrue(pair.client.established)
            clock.advance(0.25)  # 30 s
        self.assertTrue(pair.clientTransport.disconnected)
        self.assertTrue(any(e.get("log_format") == Tunnel.DEAD for e in events), events)
        pair.lose(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_olderPeersLeaveItToTheAgent(self) -> None:
        """
        Where either side does not say C{keepalive: "server"} in HELLO (an
        older agent or server), the agent pings every interval and the
        server, hearing it, never pings, as before.
        """
        for agentInfo, older in [(AGENT, "server"), ({"node": "edge-1"}, "agent")]:
            with self.subTest(older=older):
                clock = Clock()
                if older == "server":  # one timer per tunnel, says nothing
                    pair = TunnelPair(
                        clientHandler=RecordingHandler(agentInfo), clock=clock, keepalive=KEEPALIVE
                    )
                    pair.establish()
                else:  # says nothing, and pings whatever the server says
                    pair = sweptPair(
                        mux.KeepaliveSweep(clock, 0.25),
                        clock,
                        agentInfo=agentInfo,
                        serverInfo={"server_id": "srv-a"},
                    )
                self.assertOnlyTheAgentPings(pair)

    def assertOnlyTheAgentPings(self, pair: TunnelPair) -> None:
        clock = pair.clock
        recorded = Recorded(pair)
        for _ in range(240):
            clock.advance(0.25)
            pair.pump()
        self.assertEqual(recorded.types("client"), [Ping] * 6)
        self.assertEqual(recorded.types("server"), [Pong] * 6)
        pair.lose(Failure(ConnectionDone()))

    def test_silentAgentFoundWithinAPeriodOfTheDeadline(self) -> None:
        """
        The server finds an agent that stopped answering its PINGs dead
        between the deadline and one period after it.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        silent = sweptPair(sweep, clock)
        alive = sweptPair(sweep, clock)
        silent.clientToServer = False
        with capturedLogs() as events:
            for _ in range(int(29.75 / 0.25)):
                clock.advance(0.25)
                silent.pump()
                alive.pump()
            self.assertTrue(silent.server.established)
            clock.advance(0.25)
            clock.advance(0.25)
            silent.pump()
        self.assertTrue(silent.serverTransport.disconnected)
        self.assertTrue(silent.lost)
        self.assertEqual([e["log_format"] for e in events if e.get("silent")], [Tunnel.DEAD])
        self.assertTrue(alive.server.established)
        self.assertEqual(len(sweep), 1)
        alive.lose(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class SweepBookkeepingTests(SynchronousTestCase):
    def test_closingAnotherTunnelDuringASweep(self) -> None:
        """
        A check that ends another tunnel due in the same slot (its handler
        closes it) leaves the sweep consistent: the other is not checked,
        and both are forgotten.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        first, second = sweptPair(sweep, clock), sweptPair(sweep, clock)
        first.clientToServer = second.clientToServer = False
        checked: list[Tunnel] = []
        for pair, other in ((first, second), (second, first)):
            check = pair.server.checkKeepalive

            def wrapped(
                *,
                judge: bool = True,
                check: Any = check,
                pair: TunnelPair = pair,
                other: Any = other,
            ) -> float | None:
                checked.append(pair.server)
                other.lose(Failure(ConnectionLost()))
                return check(judge=judge)  # type: ignore[no-any-return]

            pair.server.checkKeepalive = wrapped  # type: ignore[method-assign]
        clock.advance(10)
        self.assertEqual(len(checked), 1)
        self.assertEqual(len(sweep), 1)
        for pair in (first, second):
            if not pair.lost:
                pair.lose(Failure(ConnectionDone()))
        self.assertEqual(len(sweep), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lateSlotJudgesNobody(self) -> None:
        """
        A slot handled more than a period late (the reactor was stalled)
        pings but declares nobody dead; the next slot on time does.
        """
        clock = Clock()
        sweep = mux.KeepaliveSweep(clock, 0.25)
        pair = sweptPair(sweep, clock)
        pair.clientToServer = pair.serverToClient = False
        clock.advance(60)
        self.assertTrue(pair.server.established)
        self.assertEqual([type(f) for f in wire.decodeAll(pair.serverTransport.value())], [Ping])
        with capturedLogs():
            clock.advance(0.25)
        self.assertTrue(pair.serverTransport.disconnected)
        sent = wire.decodeAll(pair.serverTransport.value())
        self.assertEqual(
            [f.code for f in sent if isinstance(f, wire.GoAway)], [ErrorCode.KEEPALIVE_TIMEOUT]
        )
        pair.lose(Failure(ConnectionLost()))
        self.assertEqual(len(sweep), 0)
