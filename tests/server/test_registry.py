"""
The server's registry of connected agents: lookups, the two rules it
enforces, and the observers that follow it (iptables rules, hosts file).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.mux import Refused
from twisted_tunnel.server import AgentRecord, AgentRegistry


def record(node: str, *ips: str, tunnel: Any = None) -> AgentRecord:
    return AgentRecord(
        node=node,
        ips=ips,
        tunnel=tunnel if tunnel is not None else object(),  # type: ignore[arg-type]
        identity=None,
        connectedAt=0.0,
        peer="192.0.2.1:5000",
    )


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = AgentRegistry()
        self.changes = 0

        def changed() -> None:
            self.changes += 1

        self.unsubscribe = self.registry.subscribe(changed)

    def test_lookup(self) -> None:
        edge = record("edge-1", "10.0.0.5", "fd00::5")
        self.registry.register(edge)
        for name in ("edge-1", "10.0.0.5", "fd00:0::5", "[fd00::5]"):
            self.assertIs(self.registry.lookup(name), edge, name)
        self.assertIsNone(self.registry.lookup("10.0.0.6"))

    def test_lookupIsExact(self) -> None:
        """
        Names match exactly, as Kubernetes names do: no case folding (the
        registry used to lower-case lookups, and Unicode lower-casing turns
        a Kelvin sign into "k").
        """
        edge = record("edge-k", "10.0.0.5")
        self.registry.register(edge)
        for name in ("EDGE-K", "edge-\u212a", "edge-k."):
            self.assertIsNone(self.registry.lookup(name), name)

    def test_invalidNamesAreNotRegistered(self) -> None:
        """Only valid node names enter the registry: no IP literals, no upper case."""
        for name in ("127.0.0.3", "127.1", "Edge-1", ""):
            with self.assertRaises(Refused, msg=name):
                self.registry.register(record(name))
        self.assertEqual(len(self.registry), 0)
        self.assertEqual(self.changes, 0)

    def test_observersFollowChanges(self) -> None:
        first = record("edge-1", "10.0.0.5")
        self.registry.register(first)
        self.assertEqual(self.changes, 1)
        second = record("edge-1", "10.0.0.5")
        self.assertIs(self.registry.register(second), first)
        self.assertEqual(self.changes, 2)
        self.assertIsNone(self.registry.unregister(first.tunnel))  # replaced: nothing to do
        self.assertEqual(self.changes, 2)
        self.assertIs(self.registry.unregister(second.tunnel), second)
        self.assertEqual(self.changes, 3)
        self.unsubscribe()
        self.registry.register(record("edge-2"))
        self.assertEqual(self.changes, 3)

    def test_ipBelongsToOneNode(self) -> None:
        self.registry.register(record("edge-1", "10.0.0.5"))
        with self.assertRaises(Refused) as caught:
            self.registry.register(record("edge-2", "10.0.0.5"))
        self.assertIn("belongs to connected node 'edge-1'", caught.exception.text)
        self.assertEqual(self.changes, 1)

    def test_failingObserverIsLogged(self) -> None:
        def broken() -> None:
            raise RuntimeError("observer bug")

        self.registry.subscribe(broken)
        self.registry.register(record("edge-1"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.changes, 1)
