# -*- test-case-name: tests.kube.test_nodes -*-
"""
Tests for L{twisted_tunnel.kube.nodes} and L{twisted_tunnel.kube.labels}:
Node objects (lightkube's own models, as the watch decodes them) into the
server's L{NodeDirectory}, and the edge node selector.
"""

from __future__ import annotations

from typing import Any

from lightkube.models.core_v1 import NodeAddress, NodeStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.kube.labels import LabelSelector, SelectorError
from twisted_tunnel.kube.nodes import NodeListener, listedNode
from twisted_tunnel.server.directory import ListedNode, NodeDirectory
from twisted_tunnel.tap._kubeapi import DEFAULT_EDGE_SELECTOR, OPENYURT_EDGE_SELECTOR

EDGE = {"alibabacloud.com/is-edge-worker": "true"}


def node(name: str, *addresses: tuple[str, str], labels: dict[str, str] | None = None) -> Any:
    """A Node as the API sends it: its name, labels and C{(type, address)} pairs."""
    return Node(
        metadata=ObjectMeta(name=name, labels=labels),
        status=NodeStatus(addresses=[NodeAddress(type=t, address=a) for t, a in addresses]),
    )


class LabelSelectorTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """ACK's label is the default; OpenYurt's is the documented other choice."""
        ack = LabelSelector.parse(DEFAULT_EDGE_SELECTOR)
        yurt = LabelSelector.parse(OPENYURT_EDGE_SELECTOR)
        self.assertTrue(ack.matches(EDGE))
        self.assertFalse(ack.matches({"alibabacloud.com/is-edge-worker": "false"}))
        self.assertFalse(ack.matches(None))
        self.assertTrue(yurt.matches({"openyurt.io/is-edge-worker": "true"}))

    def test_forms(self) -> None:
        """k=v, k==v, k!=v, k and !k, joined by commas; empty matches everything."""
        labels = {"a": "1", "b": "2"}
        for text, expected in [
            ("a=1", True), ("a==1", True), ("a!=1", False), ("c!=1", True), ("a", True),
            ("!a", False), ("!c", True), ("a=1,b=2", True), ("a=1,b=3", False), ("", True),
            ("a=", False), ("x.example/k=v", False),
        ]:  # fmt: skip
            self.assertEqual(LabelSelector.parse(text).matches(labels), expected, text)

    def test_refused(self) -> None:
        """Set-based forms and what Kubernetes would refuse are refused, saying why."""
        for text, why in [
            ("a in (1,2)", "set-based"),
            ("a notin (1)", "set-based"),
            ("a b=1", "not a label key"),
            ("a=b c", "not a label value"),
            ("a=" + "x" * 64, "not a label value"),
            ("a," * 600, "longer than"),
        ]:
            with self.assertRaises(SelectorError) as caught:
                LabelSelector.parse(text)
            self.assertIn(why, str(caught.exception), text)


class ListedNodeTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        """InternalIP and ExternalIP are kept; host names and DNS names are not IPs."""
        got = listedNode(
            node(
                "edge-1",
                ("InternalIP", "172.30.1.10"),
                ("Hostname", "edge-1"),
                ("ExternalIP", "203.0.113.7"),
                ("InternalDNS", "edge-1.example"),
                labels=EDGE,
            ),
            LabelSelector.parse(DEFAULT_EDGE_SELECTOR),
        )
        self.assertEqual(got, ListedNode("edge-1", ("172.30.1.10", "203.0.113.7"), True))

    def test_notEdge(self) -> None:
        got = listedNode(node("cloud-1", ("InternalIP", "10.1.2.3")), LabelSelector.parse("a"))
        self.assertEqual(got, ListedNode("cloud-1", ("10.1.2.3",), False))

    def test_noStatus(self) -> None:
        """A Node without status (just created) lists no address."""
        obj = Node(metadata=ObjectMeta(name="edge-1", labels=EDGE))
        got = listedNode(obj, LabelSelector.parse(DEFAULT_EDGE_SELECTOR))
        self.assertEqual(got, ListedNode("edge-1", (), True))


class NodeListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = NodeDirectory()
        self.listener = NodeListener(self.directory, LabelSelector.parse(DEFAULT_EDGE_SELECTOR))

    def test_listedThenChanged(self) -> None:
        """
        A list replaces the directory; ADDED and MODIFIED put, DELETED
        removes; a node whose label goes stops being an edge node.
        """
        self.listener.listed(
            [node("edge-1", ("InternalIP", "172.30.1.10"), labels=EDGE), node("cloud-1")], "5"
        )
        self.assertTrue(self.directory.synced)
        self.assertEqual([n.name for n in self.directory.edges()], ["edge-1"])
        self.listener.changed("ADDED", node("edge-2", ("InternalIP", "172.30.2.10"), labels=EDGE))
        self.assertEqual(self.directory.owner("172.30.2.10"), "edge-2")
        self.listener.changed("MODIFIED", node("edge-2", ("InternalIP", "172.30.2.10")))
        self.assertIsNone(self.directory.owner("172.30.2.10"))
        self.listener.changed("DELETED", node("edge-1"))
        self.assertIsNone(self.directory.get("edge-1"))
        self.assertEqual(len(self.directory), 2)

    def test_refusedForgets(self) -> None:
        """An oversized Node's content is unknown: what was known of it is forgotten."""
        self.listener.listed([node("edge-1", ("InternalIP", "172.30.1.10"), labels=EDGE)], "5")
        self.listener.refused("MODIFIED", "edge-1", 10**7)
        self.assertIsNone(self.directory.get("edge-1"))
        self.listener.refused("MODIFIED", None, 10**7)

    def test_invalidName(self) -> None:
        """A Node whose name is no valid node name is left out (with a warning)."""
        self.listener.listed([node("Not_A_Node", labels=EDGE)], "5")
        self.assertEqual(len(self.directory), 0)
