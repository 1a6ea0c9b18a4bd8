"""
L{RoutedNodes}: a node whose agent left stays routed for a while, bounded
in time and in count, and never over a connected node's IP.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.server.test_registry import record
from twisted_tunnel.server import AgentRegistry
from twisted_tunnel.server.routes import GoneNode, RoutedNode, RoutedNodes


class RoutedNodesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = AgentRegistry()
        self.routes = RoutedNodes(self.clock, self.registry, keepGone=300.0, maxGone=3)

    def routed(self) -> list[RoutedNode]:
        return list(self.routes)

    def test_connected(self) -> None:
        """Connected nodes are routed, as connected; nothing is gone."""
        self.registry.register(record("edge-1", "10.0.0.1"))
        self.assertEqual(self.routed(), [RoutedNode("edge-1", ("10.0.0.1",), True)])
        self.assertIsNone(self.routes.gone("edge-1"))
        self.assertIsNone(self.routes.gone("10.0.0.1"))

    def test_goneStaysRoutedForKeepGone(self) -> None:
        """
        A node whose agent left stays routed, as gone, until C{keepGone}
        seconds have passed; L{RoutedNodes.gone} finds it by name and by IP
        and says since when.
        """
        edge = record("edge-1", "10.0.0.1", "fd00::1")
        self.registry.register(edge)
        self.clock.advance(10)
        self.registry.unregister(edge.tunnel)
        self.assertEqual(self.routed(), [RoutedNode("edge-1", ("10.0.0.1", "fd00::1"), False)])
        expected = GoneNode("edge-1", ("10.0.0.1", "fd00::1"), 10.0)
        for key in ("edge-1", "10.0.0.1", "fd00::1"):
            self.assertEqual(self.routes.gone(key), expected, key)
        self.assertIsNone(self.routes.gone("10.0.0.2"))
        self.clock.advance(299)
        self.assertEqual(len(self.routed()), 1)
        self.clock.advance(1)
        self.assertEqual(self.routed(), [])
        self.assertIsNone(self.routes.gone("10.0.0.1"))

    def test_lookup(self) -> None:
        """
        L{RoutedNodes.lookup} finds a connected node, then a gone one (by
        name or IP, without an IP a connected node took over), until
        C{keepGone}; nothing else.
        """
        edge = record("edge-1", "10.0.0.1", "10.0.0.2")
        self.registry.register(edge)
        connected = RoutedNode("edge-1", ("10.0.0.1", "10.0.0.2"), True)
        self.assertEqual(self.routes.lookup("edge-1"), connected)
        self.assertEqual(self.routes.lookup("10.0.0.2"), connected)
        self.registry.unregister(edge.tunnel)
        self.registry.register(record("edge-2", "10.0.0.1"))
        gone = RoutedNode("edge-1", ("10.0.0.2",), False)
        self.assertEqual(self.routes.lookup("edge-1"), gone)
        self.assertEqual(self.routes.lookup("10.0.0.2"), gone)
        self.assertEqual(self.routes.lookup("10.0.0.1"), RoutedNode("edge-2", ("10.0.0.1",), True))
        for unknown in ("edge-3", "10.0.0.3", "*.edge-1", ""):
            self.assertIsNone(self.routes.lookup(unknown), unknown)
        self.clock.advance(300)
        self.assertIsNone(self.routes.lookup("edge-1"))

    def test_backAgain(self) -> None:
        """A gone node that connects again is listed once, connected; it is not gone."""
        edge = record("edge-1", "10.0.0.1")
        self.registry.register(edge)
        self.registry.unregister(edge.tunnel)
        self.registry.register(record("edge-1", "10.0.0.1"))
        self.assertEqual(self.routed(), [RoutedNode("edge-1", ("10.0.0.1",), True)])
        self.assertIsNone(self.routes.gone("edge-1"))

    def test_replacedIsNotGone(self) -> None:
        """A tunnel replaced by a newer one of its node is not a node gone."""
        self.registry.register(record("edge-1", "10.0.0.1"))
        newer = record("edge-1", "10.0.0.1")
        self.registry.register(newer)
        self.registry.unregister(newer.tunnel)
        self.assertEqual(self.routes.gone("edge-1"), GoneNode("edge-1", ("10.0.0.1",), 0.0))
        self.assertEqual(len(self.routed()), 1)

    def test_connectedNodeKeepsItsIP(self) -> None:
        """
        An IP a gone node had and a connected node now holds routes to the
        connected node only: it is not listed for the gone one, and
        L{RoutedNodes.gone} does not answer for it.
        """
        old = record("edge-1", "10.0.0.1", "10.0.0.2")
        self.registry.register(old)
        self.registry.unregister(old.tunnel)
        self.registry.register(record("edge-2", "10.0.0.1"))
        self.assertEqual(
            self.routed(),
            [
                RoutedNode("edge-2", ("10.0.0.1",), True),
                RoutedNode("edge-1", ("10.0.0.2",), False),
            ],
        )
        self.assertIsNone(self.routes.gone("10.0.0.1"))
        self.assertEqual(self.routes.gone("10.0.0.2").node, "edge-1")  # type: ignore[union-attr]

    def test_boundedInCount(self) -> None:
        """At most C{maxGone} gone nodes are remembered: the oldest go first."""
        for n in range(5):
            edge = record(f"edge-{n}", f"10.0.0.{n}")
            self.registry.register(edge)
            self.clock.advance(1)
            self.registry.unregister(edge.tunnel)
        self.assertEqual([r.node for r in self.routed()], ["edge-2", "edge-3", "edge-4"])
        self.assertIsNone(self.routes.gone("10.0.0.0"))
        self.assertIsNone(self.routes.gone("edge-1"))

    def test_leavingAgainMovesToTheEnd(self) -> None:
        """A node that leaves again is remembered from its latest departure."""
        first = record("edge-1", "10.0.0.1")
        self.registry.register(first)
        self.registry.unregister(first.tunnel)
        other = record("edge-2", "10.0.0.2")
        self.registry.register(other)
        self.clock.advance(1)
        self.registry.unregister(other.tunnel)
        self.clock.advance(250)
        again = record("edge-1", "10.0.0.1")
        self.registry.register(again)
        self.registry.unregister(again.tunnel)
        self.clock.advance(60)  # edge-2 left 310 s ago, edge-1 60 s ago
        self.assertEqual([r.node for r in self.routed()], ["edge-1"])
        self.assertEqual(self.routes.gone("10.0.0.1").since, 251.0)  # type: ignore[union-attr]

    def test_keepGoneZero(self) -> None:
        """With C{keepGone} 0, only connected nodes are routed."""
        routes = RoutedNodes(self.clock, self.registry, keepGone=0)
        edge = record("edge-1", "10.0.0.1")
        self.registry.register(edge)
        self.registry.unregister(edge.tunnel)
        self.assertEqual(list(routes), [])
        self.assertIsNone(routes.gone("edge-1"))

    def test_observersSeeTheGoneNode(self) -> None:
        """
        Observers are told of a departure after the node is remembered: the
        sync an agent's leaving triggers keeps its rules.
        """
        seen: list[list[RoutedNode]] = []
        self.routes.subscribe(lambda: seen.append(list(self.routes)))
        edge = record("edge-1", "10.0.0.1")
        self.registry.register(edge)
        self.registry.unregister(edge.tunnel)
        self.assertEqual(seen[-1], [RoutedNode("edge-1", ("10.0.0.1",), False)])

    def test_invalid(self) -> None:
        for keepGone, maxGone in ((-1.0, 1), (1.0, -1)):
            with self.assertRaises(ValueError):
                RoutedNodes(self.clock, self.registry, keepGone=keepGone, maxGone=maxGone)
