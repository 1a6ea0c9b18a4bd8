"""
Fault tests of the end-to-end suite: three server replicas behind HAProxy,
two edges whose agents each hold a tunnel to every replica, and a load of
requests through a second HAProxy in front of the replicas' HTTP proxy
listeners (L{tests.system.ha_world}).  Each test breaks something while
requests flow and checks that:

    - no byte is lost or corrupted on the requests that complete (every
      200 body has its SHA-256, L{tests.system.ha_world.BODY_DIGEST});
    - no client waits forever on one that cannot complete (every request
      ends within its client's time limit, a stream cut off by the fault
      sees its connection close);
    - service comes back, within a bound the daemons' settings promise.

The numbers each test measures (success rates, reconnect and detection
times) go to its output as one C{HA:} line (C{pytest -s tests/system/test_ha.py}
shows them), and into its failure messages with the daemons' logs.

Each test builds its own world (about two seconds) since each breaks it.
The suite needs root, C{ip}, C{iptables}, C{haproxy} and C{ss}: it skips
without them, except under C{CI=true}, where it fails
(L{tests.netns.requireNetns}).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import pollUntil, requireNetns
from tests.system.e2e_world import HTTP_LISTENER_PORT, LB_ADDRESS, TUNNEL_PORT, Edge
from tests.system.ha_world import (
    ALL_TUNNELS_UP,
    CLIENT_LB,
    DEAD_AFTER,
    DRAIN_TIMEOUT,
    KEEPALIVE_INTERVAL,
    MAX_BACKOFF,
    REQUEST_TIMEOUT,
    TUNNEL_UP,
    ClientCertificateCatcher,
    FollowStream,
    HAWorld,
    LoadLoop,
    Outcome,
    UpgradeSession,
    describeTimes,
    fetch,
    phases,
    servedCertificate,
    tally,
)

#: What the suite runs besides C{ip}.
COMMANDS = ("iptables", "haproxy", "ss")

#: A refusal (no agent for the node) must come within this many seconds.
PROMPT = 2.0

#: Scheduling slack on top of a bound the daemons' settings give.
SLACK = 3.0

#: How a request fails when its node's tunnels go or are away: refused
#: (502, no agent), or, for one in flight, cut off or answered 502 (the
#: stream reset before the response head), or closed before it.
EXPLAINED = {"HTTP 502", "cut", "no answer"}

#: How long the tunnel LB stays down (the issue's definition).
LB_OUTAGE = 20.0

#: How long an edge's traffic is dropped: well past the keepalive timeout.
SILENCE = DEAD_AFTER + 3.0

#: The kill -9 test's window of grace: failures are counted, not refused,
#: in the first seconds after the kill.
GRACE = 5.0


def report(name: str, text: str) -> None:
    """Put a test's numbers in its output, on one line that says whose they are."""
    print(f"\nHA: {name}: {text}")


class FaultTests(SynchronousTestCase):
    """The issue's five faults, each in a world of its own."""

    def setUp(self) -> None:
        requireNetns(self, *COMMANDS)
        self.world = HAWorld(self).build()
        self.edges = self.world.edges

    # Checks every test makes.

    def assertIntact(self, outcomes: Sequence[Outcome], what: str) -> None:
        """
        No completed body was corrupt, and no request outlived its client's
        time limit.
        """
        corrupt = [o for o in outcomes if o.corrupt]
        self.assertEqual(corrupt, [], f"{what}: corrupt bodies\n{self.world.logs()}")
        late = [o for o in outcomes if o.end - o.start > REQUEST_TIMEOUT + 1.0]
        self.assertEqual(late, [], f"{what}: requests past their time limit")

    def assertAnswered(self, edge: Edge, count: int = 6, via: tuple[str, int] = CLIENT_LB) -> None:
        """
        C{count} requests for C{edge} at C{via} succeed, checksums and all
        (six reach each of three replicas twice through the client LB).
        """
        outcomes = [fetch(self.world.cloud, edge.nodeIP, via=via) for _ in range(count)]
        self.assertEqual(
            [o.error for o in outcomes if not o.ok],
            [],
            f"requests for {edge.name} via {via}\n{self.world.logs()}",
        )

    def assertRefusedPromptly(self, outcomes: Sequence[Outcome], what: str) -> None:
        """Every request was refused (502) at once: no agent to carry it."""
        self.assertNotEqual(outcomes, [], what)
        for outcome in outcomes:
            message = f"{outcome}: {what}\n{self.world.logs()}"
            self.assertEqual(outcome.status, 502, message)
            self.assertIn("no agent connected", outcome.error, message)
            self.assertLess(outcome.end - outcome.start, PROMPT, message)

    def requestsUntil(
        self, deadline: float, edges: Sequence[Edge], interval: float
    ) -> list[Outcome]:
        """
        Requests for C{edges} by two clients, each starting one every
        C{interval} seconds, until C{deadline} (C{time.monotonic()}).
        """
        requests = LoadLoop(
            self.world.cloud,
            [edge.nodeIP for edge in edges],
            clients=2,
            interval=interval,
            duration=max(deadline - time.monotonic(), 0.0),
        ).start()
        self.addCleanup(requests.finish)
        return requests.join()

    def refusals(self, edge: Edge, count: int = 3) -> list[Outcome]:
        """C{count} requests for C{edge}, one after the other."""
        return [fetch(self.world.cloud, edge.nodeIP) for _ in range(count)]

    def marks(self) -> dict[str, int]:
        """How many lines each agent and replica has printed so far, by name."""
        processes = {**self.world.agents, **self.world.replicas}
        return {name: process.mark() for name, process in processes.items()}

    # The faults.

    def test_killReplica(self) -> None:
        """
        C{kill -9} of one replica while requests flow: the requests in
        flight through it fail (each one ends, none hangs), new ones go to
        the other two (the client LB's health check and redispatch skip
        the dead one), so after L{GRACE} seconds every request succeeds;
        and each agent still holds its tunnels to both survivors.
        """
        streams = {
            replica: FollowStream(
                self.world.cloud, self.edges[0].nodeIP, via=(address, HTTP_LISTENER_PORT)
            )
            for replica, address in self.world.replicaAddresses.items()
        }
        for stream in streams.values():
            self.addCleanup(stream.close)
            stream.waitForLines(1)
        load = LoadLoop(self.world.cloud, [edge.nodeIP for edge in self.edges]).start()
        self.addCleanup(load.finish)
        load.waitForSuccesses(20, timeout=10)
        balancers = {"client LB": self.world.clientLB, "tunnel LB": self.world.tunnelLB}
        marks = {name: process.mark() for name, process in balancers.items() if process}
        marks.update(self.marks())
        killedAt = time.monotonic()
        self.world.replicas["replica-2"].stop(signal.SIGKILL)
        cutAfter = streams["replica-2"].waitForEnd(PROMPT) - killedAt
        linesAtKill = {replica: len(stream.lines) for replica, stream in streams.items()}
        noticed = self.world.waitForAll(
            {
                **{
                    name: (process, r"replica-2 is DOWN", marks[name])
                    for name, process in balancers.items()
                    if process
                },
                **{
                    edge.name: (
                        self.world.agents[edge.name],
                        r"tunnel to server replica-2 lost",
                        marks[edge.name],
                    )
                    for edge in self.edges
                },
            },
            timeout=PROMPT,
            since=killedAt,
        )
        load.waitForSuccesses(40, timeout=20, since=killedAt + GRACE)
        outcomes = load.finish()
        before, first, after = phases(outcomes, killedAt, killedAt + GRACE)
        numbers = (
            f"requests done before the kill {before.describe()}; in flight at it or begun "
            f"in the {GRACE:g}s after it {first.describe()}; begun after that "
            f"{after.describe()}; the logs -f stream through replica-2 "
            f"{streams['replica-2'].how} after {cutAfter:.3f}s; marked down or lost after "
            f"{describeTimes(noticed)}"
        )
        report("kill -9 replica-2", numbers)
        self.assertIntact(outcomes, numbers)
        failures = f"{numbers}; failures (from the kill): {first.failures(killedAt)}"
        self.assertEqual(before.failed, 0, failures)
        self.assertEqual(after.failed, 0, f"{failures}\n{self.world.logs()}")
        for survivor in ("replica-1", "replica-3"):
            # its stream went on: a line every tenth of a second
            self.assertGreater(len(streams[survivor].lines), linesAtKill[survivor] + 10, numbers)
            self.assertIsNone(streams[survivor].endedAt, f"{streams[survivor].how}: {numbers}")
            address = self.world.replicaAddresses[survivor]
            for edge in self.edges:
                self.assertAnswered(edge, 2, via=(address, HTTP_LISTENER_PORT))

    def test_loadBalancerStopped(self) -> None:
        """
        The tunnel LB stopped for L{LB_OUTAGE} seconds: every tunnel goes
        with it, so requests for the edges are refused at once (502), not
        left hanging; once it is back, every agent holds a tunnel again
        within its backoff cap (L{MAX_BACKOFF}) plus a few seconds, and
        requests succeed again.
        """
        marks = self.marks()
        stoppedAt = time.monotonic()
        self.world.tunnelLB.stop(signal.SIGTERM)
        self.world.waitForAll(
            {
                f"{replica} lost {edge.name}": (
                    self.world.replicas[replica],
                    rf"agent {edge.name} disconnected",
                    marks[replica],
                )
                for replica in self.world.replicas
                for edge in self.edges
            },
            timeout=PROMPT,
        )
        # Requests during the outage, a few a second for its whole length.
        outage = self.requestsUntil(stoppedAt + LB_OUTAGE, self.edges, interval=0.5)
        marks = self.marks()
        self.world.restartTunnelLB()
        restartedAt = time.monotonic()
        back = self.world.waitForAll(
            {
                f"{label} {edge.name}": (self.world.agents[edge.name], pattern, marks[edge.name])
                for edge in self.edges
                for label, pattern in [("first tunnel", TUNNEL_UP), ("all", ALL_TUNNELS_UP)]
            },
            timeout=MAX_BACKOFF + 20,
        )
        during = tally(outage)
        numbers = (
            f"LB down {restartedAt - stoppedAt:.1f}s; requests meanwhile {during.describe()}; "
            f"after it started again: {describeTimes(back)}"
        )
        report("tunnel LB stopped", numbers)
        self.assertIntact(outage, numbers)
        self.assertRefusedPromptly(outage, numbers)
        for edge in self.edges:
            self.assertLess(back[f"first tunnel {edge.name}"], MAX_BACKOFF + SLACK, numbers)
        for edge in self.edges:
            self.assertAnswered(edge)

    def test_edgeSilentlyDropped(self) -> None:
        """
        An edge whose traffic is silently dropped (iptables DROP, both
        ways) for longer than the keepalive timeout: its agent and every
        replica declare the tunnel dead within L{DEAD_AFTER} seconds (plus
        a sweep and some slack); requests for it are refused at once (502)
        meanwhile, and its C{logs -f} stream is closed rather than left
        hanging; the other edge sees nothing; once the traffic flows again,
        the agent is back and requests for it succeed.
        """
        cut, other = self.edges[1], self.edges[0]
        stream = FollowStream(self.world.cloud, cut.nodeIP)
        self.addCleanup(stream.close)
        stream.waitForLines(3)
        load = LoadLoop(self.world.cloud, [other.nodeIP], clients=2).start()
        self.addCleanup(load.finish)
        marks = self.marks()
        droppedAt = time.monotonic()
        for chain, interface in [("INPUT", "-i"), ("OUTPUT", "-o")]:
            cut.namespace.iptables("-A", chain, "!", interface, "lo", "-j", "DROP")
        dead = rf"tunnel to {cut.name} is dead"
        detected = self.world.waitForAll(
            {
                name: (process, dead, marks[name])
                for name, process in [
                    (cut.name, self.world.agents[cut.name]),
                    *self.world.replicas.items(),
                ]
            },
            timeout=DEAD_AFTER + SLACK,
            since=droppedAt,
        )
        streamEnded = stream.waitForEnd(DEAD_AFTER + SLACK) - droppedAt
        # Requests for the silent node until the silence has lasted SILENCE.
        refusals = self.requestsUntil(droppedAt + SILENCE, [cut], interval=0.25)
        marks = self.marks()
        restoredAt = time.monotonic()
        for chain, interface in [("INPUT", "-i"), ("OUTPUT", "-o")]:
            cut.namespace.iptables("-D", chain, "!", interface, "lo", "-j", "DROP")
        # An agent's dial during the silence waits for a SYN retransmission
        # once the traffic flows (the kernel's, at 1, 3, 7 s...), or for its
        # dial timeout of 10 s.
        back = self.world.waitForAll(
            {
                "first tunnel": (self.world.agents[cut.name], TUNNEL_UP, marks[cut.name]),
                "all": (self.world.agents[cut.name], ALL_TUNNELS_UP, marks[cut.name]),
            },
            timeout=10 + MAX_BACKOFF + SLACK,
            since=restoredAt,
        )
        self.assertAnswered(cut)
        outcomes = load.finish()
        unaffected = tally(outcomes)
        numbers = (
            f"dead after {describeTimes(detected)} (keepalive {DEAD_AFTER:g}s); the logs -f "
            f"stream {stream.how} after {streamEnded:.2f}s with {len(stream.lines)} lines; "
            f"requests for {cut.name} meanwhile {tally(refusals).describe()}; silence "
            f"{restoredAt - droppedAt:.1f}s; back after {describeTimes(back)}; {other.name} "
            f"meanwhile {unaffected.describe()}"
        )
        report(f"{cut.name} silently dropped", numbers)
        self.assertIntact(outcomes, numbers)
        self.assertEqual(unaffected.failed, 0, f"{numbers}\n{self.world.logs()}")
        for name, seconds in detected.items():
            self.assertLess(seconds, DEAD_AFTER + KEEPALIVE_INTERVAL + 1.0, f"{name}: {numbers}")
        self.assertLess(streamEnded, DEAD_AFTER + KEEPALIVE_INTERVAL + 1.0, numbers)
        self.assertFalse(stream.complete, numbers)
        self.assertRefusedPromptly(refusals, numbers)
        self.assertEqual(stream.lines, list(range(len(stream.lines))), numbers)

    def test_agentRestart(self) -> None:
        """
        An agent restarted (SIGTERM, then started again) while a C{logs -f}
        stream and an upgraded connection to its node are open: both
        clients see their connection close within the agent's drain
        timeout (plus slack), requests for the node are refused at once
        while it is away, and succeed as soon as it is back.
        """
        edge = self.edges[0]
        stream = FollowStream(self.world.cloud, edge.nodeIP)
        self.addCleanup(stream.close)
        session = UpgradeSession(self.world.cloud, edge.nodeIP)
        self.addCleanup(session.close)
        self.assertEqual(session.status, 101, session)
        self.assertEqual(session.roundTrip(b"hello, edge\n"), b"hello, edge\n")
        session.watch()
        stream.waitForLines(3)
        marks = self.marks()
        agent = self.world.agents[edge.name]
        stoppedAt = time.monotonic()
        agent.sendSignal(signal.SIGTERM)
        # GOAWAY: every replica stops routing to it at once...
        draining = self.world.waitForAll(
            {
                replica: (process, rf"agent {edge.name} is draining", marks[replica])
                for replica, process in self.world.replicas.items()
            },
            timeout=PROMPT,
            since=stoppedAt,
        )
        whileDraining = self.refusals(edge)
        # ... and its streams end with the drain timeout.
        closed = {
            "logs -f": stream.waitForEnd(DRAIN_TIMEOUT + SLACK) - stoppedAt,
            "upgrade": session.waitForEnd(DRAIN_TIMEOUT + SLACK) - stoppedAt,
        }
        agent.waitForExit(DRAIN_TIMEOUT + SLACK, "SIGTERM")
        exited = time.monotonic() - stoppedAt
        whileAway = self.refusals(edge)
        startedAt = time.monotonic()
        agent = self.world.startAgent(edge)
        back = self.world.waitForAll(
            {"first tunnel": (agent, TUNNEL_UP, 0), "all": (agent, ALL_TUNNELS_UP, 0)},
            timeout=20,
            since=startedAt,
        )
        self.assertAnswered(edge)
        numbers = (
            f"replicas saw the drain after {describeTimes(draining)}; requests during the "
            f"drain {tally(whileDraining).describe()}; clients closed after "
            f"{describeTimes(closed)} ({stream.how}; {session.how}); agent exited after "
            f"{exited:.2f}s (drain timeout {DRAIN_TIMEOUT:g}s); requests while it was away "
            f"{tally(whileAway).describe()}; the new agent's tunnels up after "
            f"{describeTimes(back)} (counted from its start, a Python process's ~1 s included)"
        )
        report(f"{edge.name}'s agent restarted", numbers)
        self.assertRefusedPromptly(whileDraining + whileAway, numbers)
        for client, seconds in closed.items():
            self.assertLess(seconds, DRAIN_TIMEOUT + SLACK, f"{client}: {numbers}")
        self.assertFalse(stream.complete, numbers)
        self.assertEqual(stream.lines, list(range(len(stream.lines))), numbers)

    def test_certificateRotationUnderLoad(self) -> None:
        """
        New server and agent certificates (same CA, new keys and serials)
        written under load, the way a Secret volume is updated: the
        daemons load them within their reload interval and the tunnels up
        keep carrying requests.  Then new handshakes are forced (the tunnel
        LB restarted): the agents dial with their new certificates (a
        listener put where they dial sees the new serials), the replicas
        serve theirs (a TLS client on an edge sees the new serial), and
        the only failed requests are those made while the agents were
        away, refused at once.
        """
        load = LoadLoop(self.world.cloud, [edge.nodeIP for edge in self.edges]).start()
        self.addCleanup(load.finish)
        load.waitForSuccesses(20, timeout=10)
        marks = self.marks()
        rotatedAt = time.monotonic()
        serverSerial = self.world.rotateServerCertificate()
        agentSerials = {edge.name: self.world.rotateAgentCertificate(edge) for edge in self.edges}
        reloaded = self.world.waitForAll(
            {
                name: (process, r"certificates reloaded", marks[name])
                for name, process in {**self.world.agents, **self.world.replicas}.items()
            },
            timeout=5,
            since=rotatedAt,
        )
        # New handshakes: every tunnel goes with the LB; where the agents
        # dial, a listener notes the certificates they present.
        load.waitForSuccesses(20, timeout=10, since=time.monotonic())
        forcedAt = time.monotonic()
        self.world.tunnelLB.stop(signal.SIGTERM)
        catcher = ClientCertificateCatcher(
            self.world.lb,
            (LB_ADDRESS, TUNNEL_PORT),
            (self.world.tunnelCA, self.world.serverCert, self.world.serverKey),
        )
        self.addCleanup(catcher.stop)
        nodes = {f"system:node:{edge.name}": edge.name for edge in self.edges}
        pollUntil(
            lambda: set(catcher.seen) >= set(nodes), MAX_BACKOFF + SLACK, "both agents to dial"
        )
        catcher.stop()
        marks = self.marks()
        self.world.restartTunnelLB()
        back = self.world.waitForAll(
            {
                edge.name: (self.world.agents[edge.name], ALL_TUNNELS_UP, marks[edge.name])
                for edge in self.edges
            },
            timeout=MAX_BACKOFF + 20,
        )
        backAt = time.monotonic()
        served = servedCertificate(
            self.edges[0].namespace, (LB_ADDRESS, TUNNEL_PORT), self.edges[0].agentCredentials
        )
        load.waitForSuccesses(20, timeout=10, since=backAt)
        outcomes = load.finish()
        before, during, after = phases(outcomes, forcedAt, backAt)
        numbers = (
            f"reloaded after {describeTimes(reloaded)}; requests done before the forced "
            f"reconnect {before.describe()}; in flight at it or begun during it "
            f"({backAt - forcedAt:.1f}s) {during.describe()}; begun after "
            f"{after.describe()}; all tunnels back after {describeTimes(back)}"
        )
        report("certificate rotation", numbers)
        self.assertIntact(outcomes, numbers)
        self.assertEqual(
            {nodes[name]: serials for name, serials in catcher.seen.items()},
            {name: {serial} for name, serial in agentSerials.items()},
            numbers,
        )
        self.assertEqual(served.serial_number, serverSerial, numbers)
        # The Secret-volume swap is atomic: no daemon ever saw half a rotation.
        for name, process in {**self.world.agents, **self.world.replicas}.items():
            self.assertEqual(process.count(r"rotation refused"), 0, f"{name}: {process.log()}")
        failures = (
            f"{numbers}; failures (from the forced reconnect): "
            f"{[*before.failures(forcedAt), *after.failures(forcedAt)]}\n{self.world.logs()}"
        )
        self.assertEqual(before.failed, 0, failures)
        self.assertEqual(after.failed, 0, failures)
        # While the agents were away, requests for their nodes were refused
        # at once; one in flight when its tunnel went may have been cut.
        self.assertLessEqual(
            {o.kind for o in during.outcomes if not o.ok},
            EXPLAINED,
            f"{numbers}: {during.failures(forcedAt)}",
        )
        self.assertLess(during.longest, PROMPT, numbers)
