# -*- test-case-name: tests.kube.test_nodes -*-
"""
The cluster's Node objects, watched through the API into the server's
L{NodeDirectory}: a second proof of the IPs agents announce, and the edge
nodes routed whether or not their agent is connected (issue 16, item 2).

Every Node is watched, not only the edge ones: each claims its addresses,
so that an edge node whose status lists a cloud node's IP (a node's status
is written by its own kubelet) proves nothing with it.  The operator's
label selector (C{--edge-node-selector}: ACK's label by default, or
OpenYurt's) tells the edge nodes apart.  A Node that stops
matching, or is deleted, stops proving and routing at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ..server.directory import ListedNode, NodeDirectory
from .client import KubeClient
from .labels import LabelSelector
from .watch import APISource, IWatchListener, Watch, WatchBounds, WatchTarget

__all__ = [
    "IP_ADDRESS_TYPES",
    "NodeListener",
    "listedNode",
    "nodeWatch",
]

#: The Node address types that hold IPs (kube-apiserver's
#: C{--kubelet-preferred-address-types} may pick either).
IP_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})
#: A Node's JSON larger than this is refused (real ones are 5-20 KiB, most
#: of it images and conditions).
MAX_NODE_BYTES = 256 * 1024


def listedNode(obj: Any, selector: LabelSelector) -> ListedNode | None:
    """
    What the directory keeps of a Node: its name, its IP addresses, and
    whether C{selector} makes it an edge node; C{None} for a Node whose
    name is not a valid node name (the API would not have taken it).
    """
    meta = obj.metadata
    status = obj.status
    addresses = [
        each.address
        for each in (getattr(status, "addresses", None) or ())
        if each.type in IP_ADDRESS_TYPES
    ]
    try:
        return ListedNode.of(meta.name, addresses, edge=selector.matches(meta.labels))
    except ValueError:
        return None


@implementer(IWatchListener)
class NodeListener:
    """Keeps a L{NodeDirectory} to what the Node watch says."""

    log = Logger()

    def __init__(self, directory: NodeDirectory, selector: LabelSelector) -> None:
        self.directory = directory
        self.selector = selector

    def listed(self, objects: Sequence[Any], resourceVersion: str) -> None:
        self.directory.replace(self._nodes(objects))
        self.log.info(
            "Nodes listed: {count} ({edges} edge nodes by {selector!r})",
            count=len(self.directory),
            edges=sum(1 for _ in self.directory.edges()),
            selector=self.selector.text,
        )

    def changed(self, eventType: str, obj: Any) -> None:
        if eventType == "DELETED":
            self.directory.remove(obj.metadata.name)
            return
        for node in self._nodes([obj]):
            self.directory.put(node)

    def refused(self, eventType: str, name: str | None, size: int) -> None:
        # its content is unknown: what we knew of it no longer holds
        if name is not None:
            self.directory.remove(name)

    def broken(self, reason: str, retryIn: float) -> None:
        pass  # the watch logs it; the directory keeps what it knew

    def _nodes(self, objects: Iterable[Any]) -> Iterable[ListedNode]:
        for obj in objects:
            node = listedNode(obj, self.selector)
            if node is None:
                self.log.warn(
                    "Node {name!r}: not a valid node name, left out", name=obj.metadata.name
                )
            else:
                yield node


def nodeWatch(
    reactor: Any, client: KubeClient, directory: NodeDirectory, selector: LabelSelector
) -> Watch:
    """The service that watches every Node and keeps C{directory} to them."""
    from lightkube.core import decoders
    from lightkube.resources.core_v1 import Node

    def decode(raw: bytes) -> Any:
        return decoders.decode_object(raw, Node)

    return Watch(
        reactor,
        APISource(client, WatchTarget(Node)),
        NodeListener(directory, selector),
        decode,
        bounds=WatchBounds(maxObjectBytes=MAX_NODE_BYTES),
    )
