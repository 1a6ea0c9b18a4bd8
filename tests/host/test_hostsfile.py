"""
The hosts file for DNS setups: the connected nodes, written atomically,
following the registry, emptied on stop.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import temporaryDirectory
from tests.server.test_registry import record
from twisted_tunnel.host.hostsfile import HEADER, HostsFile, render
from twisted_tunnel.server import AgentRegistry


class HostsFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(temporaryDirectory(self), "hosts")
        self.clock = Clock()
        self.registry = AgentRegistry()
        self.hosts = HostsFile(self.path, "10.96.0.50", self.registry, self.clock, delay=0.2)

    def content(self) -> str:
        with open(self.path) as f:
            return f.read()

    def test_render(self) -> None:
        self.assertEqual(
            render("10.96.0.50", ["edge-2", "edge-1", "edge-1"]),
            HEADER + "10.96.0.50 edge-1\n10.96.0.50 edge-2\n",
        )

    def test_followsTheRegistry(self) -> None:
        self.registry.register(record("edge-1", "172.30.1.10"))
        self.hosts.startService()
        self.assertEqual(self.content(), HEADER + "10.96.0.50 edge-1\n")
        edge2 = record("edge-2")
        self.registry.register(edge2)
        self.registry.register(record("edge-3"))
        self.assertEqual(self.content(), HEADER + "10.96.0.50 edge-1\n")  # not yet: coalesced
        self.clock.advance(0.2)
        self.assertEqual(self.hosts.writes, 2)
        self.assertIn("10.96.0.50 edge-3\n", self.content())
        self.registry.unregister(edge2.tunnel)
        self.clock.advance(0.2)
        self.assertEqual(self.content(), HEADER + "10.96.0.50 edge-1\n10.96.0.50 edge-3\n")
        self.hosts.stopService()
        self.assertEqual(self.content(), HEADER)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writtenAtomically(self) -> None:
        """No temporary file is left beside it, and it is readable by CoreDNS."""
        self.hosts.startService()
        self.addCleanup(self.hosts.stopService)
        directory = os.path.dirname(self.path)
        self.assertEqual(os.listdir(directory), ["hosts"])
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o644)

    def test_unwritableLogsOnce(self) -> None:
        hosts = HostsFile("/nonexistent-dir/hosts", "10.96.0.50", self.registry, self.clock)
        hosts.startService()
        hosts.stopService()
        self.assertEqual(hosts.writes, 0)
