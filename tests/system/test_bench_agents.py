"""
A smoke test of the scale benchmark, C{bench/agents.py}: twenty simulated
agents against a real C{edge-tunnel-server} process, a short idle window
and twenty stream opens.  No timing is asserted (the machine may be busy);
what must hold is that every agent connected, every open echoed its bytes
exactly, and nothing was left running.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

REPO = Path(__file__).resolve().parents[2]


def loadTool() -> ModuleType:
    """C{bench/} is not a package: load C{bench/agents.py} by path."""
    spec = importlib.util.spec_from_file_location("bench_agents", REPO / "bench" / "agents.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


agents = loadTool()


class IdentityTests(SynchronousTestCase):
    def test_distinctNamesAndLoopbackIPs(self) -> None:
        """Ten thousand agents get distinct node names and distinct 127.1.x.y addresses."""
        names = {agents.nodeName(i) for i in range(1, 10001)}
        ips = {agents.nodeIP(i) for i in range(1, 10001)}
        self.assertEqual((len(names), len(ips)), (10000, 10000))
        self.assertEqual(agents.nodeName(1), "edge-00001")
        self.assertTrue(all(ip.startswith("127.1.") and not ip.endswith(".0") for ip in ips))

    def test_percentile(self) -> None:
        values = [float(v) for v in range(1, 201)]
        self.assertEqual(agents.percentile(values, 0.5), 100.0)
        self.assertEqual(agents.percentile(values, 0.99), 198.0)


class SmokeTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        work = Path(tempfile.mkdtemp(prefix="test-bench-agents-"))
        self.addCleanup(shutil.rmtree, work, True)
        self.work = work

    def test_twentyAgents(self) -> Deferred[None]:
        """All twenty connect, all twenty opens echo byte-exact, the server stops cleanly."""
        fleet = agents.newFleet()
        options = agents.SizeOptions(idleSeconds=1.0, opens=20, settleSeconds=0.5)
        running = Deferred.fromCoroutine(agents.runSize(reactor, fleet, 20, options, self.work))

        def check(result: object) -> None:
            assert isinstance(result, agents.SizeResult)
            self.assertIsNone(result.error)
            assert result.connect is not None and result.opens is not None
            self.assertEqual(result.connect.connected, 20)
            self.assertEqual(dict(result.connect.failures), {})
            self.assertEqual(result.serverConnectedLines, 20)
            self.assertEqual((len(result.opens.opened), len(result.opens.echoed)), (20, 20))
            self.assertEqual(dict(result.opens.failures), {})
            self.assertEqual(result.agentsNotStopped, 0)
            self.assertIsNotNone(result.departSeconds)
            self.assertIn(result.serverExit, agents.CLEAN_EXITS)
            self.assertEqual(result.serverProblems, [])
            self.assertTrue(result.ok)
            self.assertIn("| 20 | 20 | 0 |", agents.resultsTable([result]))

        return running.addCallback(check)

    def test_cycles(self) -> Deferred[None]:
        """
        With C{cycles}, the same agents connect and leave again against the
        one server, and the report gives its memory after each cycle.
        """
        fleet = agents.newFleet()
        options = agents.SizeOptions(idleSeconds=1.0, opens=2, settleSeconds=0.5, cycles=3)
        running = Deferred.fromCoroutine(agents.runSize(reactor, fleet, 10, options, self.work))

        def check(result: object) -> None:
            assert isinstance(result, agents.SizeResult)
            self.assertIsNone(result.error)
            self.assertEqual(len(result.moreCycles), 2)
            self.assertTrue(all(rss > 0 for cycle in result.moreCycles for rss in cycle))
            # three connections per agent, one per cycle, each logged by the server
            self.assertEqual(result.serverConnectedLines, 30)
            self.assertEqual(result.agentsNotStopped, 0)
            self.assertEqual(result.serverProblems, [])
            self.assertIn("cycle by cycle", agents.resultsTable([result]))

        return running.addCallback(check)
