"""
Issue 6, part 3, "Reconnect storms stay calm": after a server restart,
1,000 agents are all back within 30 s, spread by jitter, with the server
answering health checks throughout, and no agent ever gives up.

The integration test runs the storm mode of C{bench/agents.py}: a real
C{edge-tunnel-server} process, 1,000 simulated agents in this process (each
a library L{TunnelAgent} with its default backoff, over mutual TLS from its
own 127.1.x.y address), the server killed by PID and a fresh one started on
the same ports, and a health check through its CONNECT door every 0.25 s
from a separate process.  The other tests cover the storm's own pieces.
"""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.system.test_bench_agents import agents

#: The issue's numbers.
AGENTS = 1000
BOUND = 30.0


class HealthCheckTests(SynchronousTestCase):
    """L{agents.checkHealth}: answered means a status line within the deadline."""

    def listener(self) -> socket.socket:
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        return server

    def test_answered(self) -> None:
        """Any status line counts as an answer; its code is the answer."""
        server = self.listener()

        def answer() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno agent\n")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        sample = agents.checkHealth(server.getsockname()[1], deadline=5.0)
        thread.join(5.0)
        self.assertEqual(sample.answer, "503")
        self.assertTrue(sample.answered)
        self.assertLess(sample.seconds, 5.0)

    def test_silentServer(self) -> None:
        """A server that accepts (in its backlog) but never answers fails at the deadline."""
        server = self.listener()
        sample = agents.checkHealth(server.getsockname()[1], deadline=0.2)
        self.assertEqual(sample.answer, "TimeoutError")
        self.assertFalse(sample.answered)
        self.assertGreaterEqual(sample.seconds, 0.2)
        self.assertLess(sample.seconds, 2.0)

    def test_refused(self) -> None:
        port = agents.freePort()
        sample = agents.checkHealth(port, deadline=1.0)
        self.assertEqual(sample.answer, "ConnectionRefusedError")
        self.assertFalse(sample.answered)


class SummaryTests(SynchronousTestCase):
    def test_histogramKeepsEmptySeconds(self) -> None:
        """Every second up to the last is a bin, empty or not; early values count in the first."""
        self.assertEqual(agents.histogram([0.2, 0.7, 2.5, -0.01]), [(0.0, 3), (1.0, 0), (2.0, 1)])
        self.assertEqual(agents.histogram([]), [])

    def test_peakCPU(self) -> None:
        samples = [
            agents.ServerSample(0.0, 0.0, 1),
            agents.ServerSample(0.5, 0.1, 1),
            agents.ServerSample(1.0, 0.2, 1),
            agents.ServerSample(2.0, 1.1, 1),
        ]
        self.assertAlmostEqual(agents.peakCPU(samples), 90.0)
        self.assertIsNone(agents.peakCPU(samples[:1]))

    def calmStorm(self) -> Any:
        """A storm that went by the book: three agents, four health checks."""
        result = agents.StormResult(3, "SIGKILL")
        result.signalled, result.exited, result.started, result.listening = 10, 10.1, 10.2, 11
        result.ended = 20
        result.back = [11.5, 12.0, 13.0]
        result.health = [
            agents.HealthSample(9.0, 0.01, "503"),
            agents.HealthSample(10.5, 0.0, "ConnectionRefusedError"),
            agents.HealthSample(11.0, 0.2, "503"),
            agents.HealthSample(19.9, 0.1, "503"),
        ]
        return result

    def test_calm(self) -> None:
        """
        Checks while no server listened do not count against it; reconnect
        times count from the new server listening.
        """
        result = self.calmStorm()
        self.assertEqual(result.verdict(), [])
        self.assertEqual(result.reconnectSeconds, [0.5, 1.0, 2.0])
        self.assertEqual(result.allBackSeconds, 2.0)
        self.assertEqual(len(result.healthBefore), 1)
        self.assertEqual(len(result.healthDuring), 2)
        self.assertIn("| 0-1 | 1 |", agents.stormHistogram(result))

    def test_notCalm(self) -> None:
        """Late agents, agents missing, and a check unanswered are all said."""
        result = self.calmStorm()
        result.back = [11.5, 11 + BOUND + 0.5]
        result.health.append(agents.HealthSample(15.0, 1.0, "TimeoutError"))
        [missing, unanswered] = result.verdict()
        self.assertIn("1 of 3 agents not back", missing)
        self.assertIn("1 of 3 health checks not answered", unanswered)
        result.back.append(12.0)
        [late, _] = result.verdict()
        self.assertIn(f"{BOUND + 0.5:.1f}s after listening", late)


class StormTests(TestCase):
    """The storm itself, against a real server process."""

    #: Minting and connecting 1,000 agents, the storm, stopping everything:
    #: about 20 s on a quiet 2-core machine; the storm waits at most 40 s.
    timeout = 150

    def setUp(self) -> None:
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, limits)
        needed = AGENTS + agents.SPARE_DESCRIPTORS
        limit = agents.raiseDescriptorLimit(needed)
        if limit < needed:
            self.fail(f"RLIMIT_NOFILE is {limit}: {AGENTS} agents need {needed}")
        work = Path(tempfile.mkdtemp(prefix="test-storm-"))
        self.addCleanup(shutil.rmtree, work, True)
        self.work = work

    def storm(self, restart: signal.Signals) -> Deferred[None]:
        """
        The server is stopped by C{restart} with 1,000 agents connected and
        a fresh one started on the same ports: every agent is back within
        30 s of it listening, none gave up, every health check while it ran
        was answered within 1 s, and everything stops cleanly.
        """
        options = agents.StormOptions(signal=restart, waitSeconds=BOUND + 10, holdSeconds=3.0)
        running = Deferred.fromCoroutine(
            agents.runStorm(reactor, agents.newFleet(), AGENTS, options, self.work)
        )

        def check(result: object) -> None:
            assert isinstance(result, agents.StormResult)
            report = agents.stormReport([result], ["(tests/system/test_storm.py)"], 0)
            self.assertEqual(result.verdict(), [], report)
            self.assertEqual(len(result.back), AGENTS, report)
            allBack = result.allBackSeconds
            assert allBack is not None
            self.assertLessEqual(allBack, BOUND, report)
            self.assertEqual((result.notRunning, result.withoutTunnel), (0, 0), report)
            self.assertEqual(dict(result.gaveUp), {}, report)
            during = result.healthDuring
            self.assertTrue(during, report)
            self.assertTrue(all(s.answered for s in during), report)
            self.assertLessEqual(max(s.seconds for s in during), options.healthDeadline, report)
            self.assertEqual(result.serverConnectedLines, AGENTS, report)
            self.assertEqual(result.agentsNotStopped, 0, report)
            self.assertIn(result.oldExit, (-restart, *agents.CLEAN_EXITS), report)
            self.assertIn(result.serverExit, agents.CLEAN_EXITS, report)
            self.assertEqual(result.serverProblems, [], report)

        return running.addCallback(check)

    def test_crash(self) -> Deferred[None]:
        """SIGKILL: the agents see their connections reset, no GOAWAY."""
        return self.storm(signal.SIGKILL)

    def test_gracefulRestart(self) -> Deferred[None]:
        """SIGTERM: the server drains (GOAWAY), exits; the agents back off meanwhile."""
        return self.storm(signal.SIGTERM)
