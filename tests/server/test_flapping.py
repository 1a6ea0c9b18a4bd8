# -*- test-case-name: tests.server.test_flapping -*-
"""
Tests for L{twisted_tunnel.server.flapping}: two agents proving one node
replace each other's tunnel; the server names the likely cause, once per
window.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.server.test_security_identity import _ServerTestCase, pki, warnings
from twisted_tunnel.server.flapping import ReplacementWatch


class ReplacementWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.watch = ReplacementWatch(self.clock, window=30, threshold=4, maxNodes=2)

    def replace(self, times: int, every: float, node: str = "edge-1") -> list[str | None]:
        said = []
        for i in range(times):
            self.clock.advance(every)
            said.append(self.watch.replaced(node, f"10.0.0.{i % 2}:1", f"10.0.0.{(i + 1) % 2}:2"))
        return said

    def test_flapping(self) -> None:
        """The fourth replacement within 30 s says so, naming both peers and the cause."""
        said = self.replace(4, 1.0)
        self.assertEqual(said[:3], [None, None, None])
        assert said[3] is not None
        self.assertIn("node edge-1: its tunnel was replaced 4 times in 3 s", said[3])
        self.assertIn("10.0.0.1:1", said[3])
        self.assertIn("one certificate", said[3])

    def test_oncePerWindow(self) -> None:
        said = self.replace(12, 1.0)
        self.assertEqual(sum(s is not None for s in said), 1)
        said = self.replace(12, 3.0)  # past the window since the warning: once more
        self.assertEqual(sum(s is not None for s in said), 1)

    def test_reconnectsNowAndThen(self) -> None:
        """An agent that reconnects every minute is not flapping."""
        self.assertEqual(self.replace(10, 60.0), [None] * 10)

    def test_bounded(self) -> None:
        """At most maxNodes nodes are followed."""
        for node in ("a", "b", "c"):
            self.watch.replaced(node, "p", "q")
        self.assertEqual(list(self.watch._times), ["b", "c"])


class FlappingAgentsTests(_ServerTestCase):
    async def test_twoAgentsOneNode(self) -> None:
        """Real tunnels replacing each other: the server warns, naming the cause."""
        with capturedLogs() as events:
            for _ in range(5):  # the first connects, the next four replace
                connection = await self.agent(pki.agent("edge-1")).hello("edge-1", [])
                self.assertTrue(connection.accepted, connection.goaway)
        self.assertTrue(warnings(events, "edge-1", "replaced 4 times", "two agents"), events)
