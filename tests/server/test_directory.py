# -*- test-case-name: tests.server.test_directory -*-
"""
Tests for L{twisted_tunnel.server.directory}: the nodes a cluster lists as
a second proof of agents' IPs, and the routes of listed nodes.

The agents are real ones on loopback (L{tests.server.hostile.HostileAgent},
mutual TLS, the server's own HELLO handling); the directory is filled by
hand here, as the Node watch fills it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI
from tests.server.test_security_identity import _ServerTestCase, warnings
from twisted_tunnel.server import AgentRegistry, TunnelServer
from twisted_tunnel.server.directory import (
    MAX_ADDRESSES,
    DirectoryAddressProof,
    ListedNode,
    NodeDirectory,
)
from twisted_tunnel.server.routes import RoutedNode, RoutedNodes

pki = TestPKI()

EDGE1_IP = "172.30.1.10"
EDGE2_IP = "172.30.2.10"


def listed(name: str, *addresses: str) -> ListedNode:
    return ListedNode.of(name, addresses)


class ListedNodeTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        """
        IPs are normalised and kept once, in order; host names (a Node lists
        them too, as C{Hostname}) prove nothing and are left out.
        """
        node = ListedNode.of("edge-1", ["172.30.1.10", "edge-1", "FD00::0001", "172.30.1.10"])
        self.assertEqual(node.addresses, ("172.30.1.10", "fd00::1"))

    def test_specialAddresses(self) -> None:
        """
        Loopback, link-local, multicast and unspecified addresses are left
        out: a node's own status (which its kubelet writes) must not draw
        them into its tunnel.
        """
        special = ["127.0.0.1", "::1", "169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0"]
        self.assertEqual(ListedNode.of("edge-1", [*special, EDGE1_IP]).addresses, (EDGE1_IP,))

    def test_bounded(self) -> None:
        """At most MAX_ADDRESSES addresses of one node are kept."""
        node = ListedNode.of("edge-1", [f"10.0.0.{i}" for i in range(1, 100)])
        self.assertEqual(len(node.addresses), MAX_ADDRESSES)

    def test_invalidName(self) -> None:
        for name in ("", "Edge-1", "a" * 254, "10.0.0.1", "edge_1"):
            with self.assertRaises(ValueError, msg=name):
                ListedNode.of(name, [])


class NodeDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = NodeDirectory(maxNodes=3)
        self.changes: list[Sequence[str]] = []
        self.directory.subscribe(self.changes.append)

    def test_replace(self) -> None:
        """
        A full listing replaces what was there (nodes not in it are gone),
        marks the directory synced, and names every node that changed.
        """
        self.assertFalse(self.directory.synced)
        self.directory.replace([listed("edge-1", EDGE1_IP), listed("edge-2", EDGE2_IP)])
        self.assertTrue(self.directory.synced)
        self.directory.replace([listed("edge-1", EDGE1_IP), listed("edge-3", "172.30.3.10")])
        self.assertEqual(
            [sorted(c) for c in self.changes], [["edge-1", "edge-2"], ["edge-2", "edge-3"]]
        )
        self.assertIsNone(self.directory.get("edge-2"))
        self.assertIsNone(self.directory.owner(EDGE2_IP))
        self.assertEqual(self.directory.owner(EDGE1_IP), "edge-1")

    def test_putAndRemove(self) -> None:
        """A change names its node; putting the same listing again is no change."""
        self.directory.put(listed("edge-1", EDGE1_IP))
        self.directory.put(listed("edge-1", EDGE1_IP))
        self.directory.put(listed("edge-1", "172.30.1.11"))
        self.directory.remove("edge-1")
        self.directory.remove("edge-1")
        self.assertEqual(self.changes, [["edge-1"]] * 3)
        self.assertEqual(len(self.directory), 0)
        self.assertIsNone(self.directory.owner(EDGE1_IP))
        self.assertIsNone(self.directory.owner("172.30.1.11"))

    def test_sharedAddress(self) -> None:
        """An IP two listed nodes claim has no owner until one lets it go."""
        self.directory.put(listed("edge-1", EDGE1_IP))
        self.directory.put(listed("edge-2", EDGE1_IP))
        self.assertIsNone(self.directory.owner(EDGE1_IP))
        self.assertEqual(self.directory.claimants(EDGE1_IP), {"edge-1", "edge-2"})
        self.directory.remove("edge-2")
        self.assertEqual(self.directory.owner(EDGE1_IP), "edge-1")

    def test_cloudNodesClaimToo(self) -> None:
        """
        A node that is not an edge node owns nothing, but its addresses
        count: an edge node listing a cloud node's IP owns it neither.
        """
        self.directory.put(ListedNode.of("cloud-1", [EDGE1_IP], edge=False))
        self.assertIsNone(self.directory.owner(EDGE1_IP))
        self.directory.put(listed("edge-1", EDGE1_IP))
        self.assertIsNone(self.directory.owner(EDGE1_IP))
        self.directory.remove("cloud-1")
        self.assertEqual(self.directory.owner(EDGE1_IP), "edge-1")
        self.assertEqual([node.name for node in self.directory.edges()], ["edge-1"])

    def test_bounded(self) -> None:
        """Past maxNodes, new nodes are not listed, with a warning; known ones still change."""
        with capturedLogs() as events:
            self.directory.replace([listed(f"edge-{i}", f"10.0.0.{i}") for i in range(1, 6)])
            self.directory.put(listed("edge-9", "10.0.0.9"))
            self.directory.put(listed("edge-1", "10.0.1.1"))
        self.assertEqual(len(self.directory), 3)
        self.assertIsNone(self.directory.get("edge-9"))
        self.assertEqual(self.directory.owner("10.0.1.1"), "edge-1")
        self.assertEqual(len(warnings(events, "not listing node", "3")), 3)


class DirectoryProofTests(_ServerTestCase):
    """
    With a L{DirectoryAddressProof}, an agent whose certificate carries no
    IP (a kubelet client certificate) routes the IPs its Node lists, and
    only those; they follow the listing while the tunnel is up.
    """

    def setUp(self) -> None:
        self.directory = NodeDirectory()
        super().setUp()

    def makeServer(self, **kwargs: Any) -> TunnelServer:
        kwargs.setdefault("addressProof", DirectoryAddressProof(self.directory))
        return super().makeServer(directory=self.directory, **kwargs)

    async def test_listedAddressesProve(self) -> None:
        """The IPs the node's listing holds route; the others do not, with the reason."""
        self.directory.replace([listed("edge-1", EDGE1_IP)])
        with capturedLogs() as events:
            connection = await self.agent(pki.agent("edge-1")).hello(
                "edge-1", [EDGE1_IP, "172.30.1.99"]
            )
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP,)})
        self.assertTrue(
            warnings(events, "edge-1", "172.30.1.99", f"its Node lists {EDGE1_IP}"), events
        )

    async def test_anotherNodesListedAddress(self) -> None:
        """edge-2 announcing the IP edge-1's Node lists routes nothing."""
        self.directory.replace([listed("edge-1", EDGE1_IP), listed("edge-2", EDGE2_IP)])
        connection = await self.agent(pki.agent("edge-2")).hello("edge-2", [EDGE1_IP, EDGE2_IP])
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-2": (EDGE2_IP,)})

    async def test_sharedAddressProvesNothing(self) -> None:
        """An IP two Nodes list proves nothing for either, and the reason says so."""
        self.directory.replace([listed("edge-1", EDGE1_IP), listed("edge-2", EDGE1_IP)])
        with capturedLogs() as events:
            await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP])
        self.assertEqual(self.registered(), {"edge-1": ()})
        self.assertTrue(warnings(events, "listed by several Nodes"), events)

    async def test_cloudNodesAddress(self) -> None:
        """
        An edge node's agent announcing an IP that its own Node and a cloud
        node's both list routes nothing: a node's status is written by its
        own kubelet, so a taken edge node could list any address.
        """
        self.directory.replace(
            [listed("edge-1", EDGE1_IP), ListedNode.of("cloud-1", [EDGE1_IP], edge=False)]
        )
        await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP])
        self.assertEqual(self.registered(), {"edge-1": ()})

    async def test_notAnEdgeNode(self) -> None:
        """A node the edge selector does not match proves no IP by its listing."""
        self.directory.replace([ListedNode.of("edge-1", [EDGE1_IP], edge=False)])
        with capturedLogs() as events:
            await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP])
        self.assertEqual(self.registered(), {"edge-1": ()})
        self.assertTrue(warnings(events, "not an edge node"), events)

    async def test_unlisted(self) -> None:
        """
        A node the cluster does not list proves no IP by listing; before the
        first listing the reason says the list was not read yet.
        """
        with capturedLogs() as events:
            await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP])
        self.assertTrue(warnings(events, "has not been read yet"), events)
        self.directory.replace([listed("edge-2", EDGE2_IP)])
        with capturedLogs() as events:
            await self.agent(pki.agent("edge-3")).hello("edge-3", ["172.30.3.10"])
        self.assertTrue(warnings(events, "no Node 'edge-3' is listed"), events)
        self.assertEqual(self.registered(), {"edge-1": (), "edge-3": ()})

    async def test_certificateStillProves(self) -> None:
        """What the certificate carries routes whatever the listing says."""
        self.directory.replace([listed("edge-1", "172.30.1.11")])
        connection = await self.agent(pki.agent("edge-1", [EDGE1_IP])).hello(
            "edge-1", [EDGE1_IP, "172.30.1.11"]
        )
        self.assertTrue(connection.accepted, connection.goaway)
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP, "172.30.1.11")})
        self.directory.remove("edge-1")
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP,)})

    async def test_followsTheListing(self) -> None:
        """
        While the tunnel is up: an address added to the Node routes at once,
        one taken off stops routing, and a deleted Node routes nothing more
        (the tunnel stays, reachable by name).
        """
        self.directory.replace([listed("edge-1")])
        connection = await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP, "fd00::1"])
        self.assertEqual(self.registered(), {"edge-1": ()})
        self.directory.put(listed("edge-1", EDGE1_IP, "fd00::1"))
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP, "fd00::1")})
        self.assertEqual(self.server.registry.lookup("fd00::1").node, "edge-1")  # type: ignore[union-attr]
        self.directory.put(listed("edge-1", "fd00::1"))
        self.assertEqual(self.registered(), {"edge-1": ("fd00::1",)})
        self.assertIsNone(self.server.registry.lookup(EDGE1_IP))
        self.directory.remove("edge-1")
        self.assertEqual(self.registered(), {"edge-1": ()})
        self.assertTrue(connection.accepted)
        self.assertIsNotNone(self.server.registry.lookup("edge-1"))

    async def test_addressMovesBetweenNodes(self) -> None:
        """
        An IP moves in the listing from one connected node to another: while
        both list it, neither routes it; once the first lets it go, the
        second, which announced it, routes it.
        """
        self.directory.replace([listed("edge-1", EDGE1_IP), listed("edge-2")])
        await self.agent(pki.agent("edge-1")).hello("edge-1", [EDGE1_IP])
        await self.agent(pki.agent("edge-2")).hello("edge-2", [EDGE1_IP])
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP,), "edge-2": ()})
        self.directory.put(listed("edge-2", EDGE1_IP))
        self.assertEqual(self.registered(), {"edge-1": (), "edge-2": ()})
        self.directory.put(listed("edge-1"))
        self.assertEqual(self.registered(), {"edge-1": (), "edge-2": (EDGE1_IP,)})

    async def test_connectedOwnerKeepsItsIP(self) -> None:
        """
        A listed IP that another connected node holds (its certificate
        proves it) stays that node's, with a warning naming both.
        """
        self.directory.replace([listed("edge-1"), listed("edge-2")])
        await self.agent(pki.agent("edge-1", [EDGE1_IP])).hello("edge-1", [EDGE1_IP])
        await self.agent(pki.agent("edge-2")).hello("edge-2", [EDGE1_IP])
        with capturedLogs() as events:
            self.directory.put(listed("edge-2", EDGE1_IP))
        self.assertEqual(self.registered(), {"edge-1": (EDGE1_IP,), "edge-2": ()})
        self.assertTrue(warnings(events, "edge-2", EDGE1_IP, "belongs to connected node edge-1"))


class ListedRoutesTests(SynchronousTestCase):
    """The routes of listed nodes whose agent is not connected (L{RoutedNodes})."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = NodeDirectory()
        self.routes = RoutedNodes(self.clock, AgentRegistry(), directory=self.directory)
        self.calls = 0
        self.routes.subscribe(self.count)

    def count(self) -> None:
        self.calls += 1

    def test_listedNodesRouted(self) -> None:
        """
        Every listed node is routed, its agent connected or not, with the
        addresses it alone lists; a deleted one is not; observers hear of both.
        """
        self.directory.replace(
            [
                listed("edge-1", EDGE1_IP),
                listed("edge-2", EDGE2_IP, "172.30.9.9"),
                listed("edge-3", "172.30.9.9"),
            ]
        )
        self.assertEqual(
            list(self.routes),
            [
                RoutedNode("edge-1", (EDGE1_IP,), False),
                RoutedNode("edge-2", (EDGE2_IP,), False),
                RoutedNode("edge-3", (), False),
            ],
        )
        self.directory.remove("edge-1")
        self.assertEqual([r.node for r in self.routes], ["edge-2", "edge-3"])
        self.directory.put(ListedNode.of("cloud-1", ["10.1.2.3"], edge=False))
        self.assertEqual([r.node for r in self.routes], ["edge-2", "edge-3"])
        self.assertIsNone(self.routes.lookup("cloud-1"))
        self.assertIsNone(self.routes.lookup("10.1.2.3"))
        self.assertEqual(self.calls, 3)

    def test_lookup(self) -> None:
        """
        A listed node is found by its name and by an IP it alone lists (the
        HTTPS listener mints its serving certificate); an IP two nodes list
        finds neither, and a deleted node is not found.
        """
        shared = "172.30.9.9"
        self.directory.replace([listed("edge-1", EDGE1_IP, shared), listed("edge-2", shared)])
        expected = RoutedNode("edge-1", (EDGE1_IP,), False)
        self.assertEqual(self.routes.lookup("edge-1"), expected)
        self.assertEqual(self.routes.lookup(EDGE1_IP), expected)
        self.assertIsNone(self.routes.lookup(shared))
        self.directory.remove("edge-1")
        self.assertIsNone(self.routes.lookup("edge-1"))
        self.assertIsNone(self.routes.lookup(EDGE1_IP))
