# -*- test-case-name: tests.server.test_directory -*-
"""
The nodes a cluster lists, and the addresses it lists for each: a second
way, beside the agent's certificate, to prove which IPs are a node's.

An agent announces its node's IPs in HELLO; the server routes an IP into
its tunnel only when something it trusts vouches for it (issue 12): the
agent's certificate (an IP subjectAltName), or, here, the cluster's own
record of the node (a Node object's C{status.addresses}, issue 16).  The
second matters because kubelet client certificates, the identity most
edge nodes already hold, carry no IP at all.

This module knows nothing of Kubernetes: a L{NodeDirectory} is filled by
whoever watches the cluster (the daemon's Node watch), on the reactor
thread, and read at once by L{DirectoryAddressProof} when an agent says
HELLO, and by L{twisted_tunnel.server.routes.RoutedNodes}, which routes the
listed nodes' addresses to this server whether or not their agent is
connected (as yurt-tunnel's rules follow the Node objects).

Bounded: at most C{maxNodes} nodes and L{MAX_ADDRESSES} addresses each;
an IP that two listed nodes claim proves nothing for either (a misconfigured
cluster, or one node's status written by another).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from attrs import frozen
from twisted.logger import Logger
from zope.interface import implementer

from ..net.addresses import normalIP
from ..tls import PeerIdentity
from ..tls.certs import isNodeName
from .proof import AddressProof, CertificateAddressProof, INodeAddressProof, isSpecial

__all__ = [
    "DEFAULT_MAX_NODES",
    "MAX_ADDRESSES",
    "DirectoryAddressProof",
    "ListedNode",
    "NodeDirectory",
]

#: How many nodes a directory holds at most by default.
DEFAULT_MAX_NODES = 100_000

#: How many addresses of one node are kept at most (a Node lists a few).
MAX_ADDRESSES = 16


@frozen
class ListedNode:
    """
    One node as the cluster lists it: its name, its IP addresses
    (normalised), and whether it is an edge node (the operator's label
    selector matched it).

    Every node the cluster lists counts for the claims on an address (an IP
    another node lists proves nothing), but only edge nodes prove IPs and
    are routed: the tunnel carries edge nodes' traffic, and a cloud node's
    address must never be drawn into a tunnel.
    """

    name: str
    addresses: tuple[str, ...]
    edge: bool = True

    @classmethod
    def of(cls, name: str, addresses: Iterable[str], *, edge: bool = True) -> ListedNode:
        """
        A node from what the cluster says: the texts of C{addresses} that are
        IPs, normalised, without duplicates, at most L{MAX_ADDRESSES} (host
        names, which a Node may list too, are left out: they prove no IP;
        so are loopback, link-local, multicast and unspecified addresses,
        which nothing routes to an edge node).

        @raise ValueError: C{name} is not a valid node name.
        """
        if not isNodeName(name):
            raise ValueError(f"{name!r} is not a valid node name")
        ips: list[str] = []
        for text in addresses:
            ip = normalIP(text)
            if ip is not None and not isSpecial(ip) and ip not in ips:
                ips.append(ip)
                if len(ips) == MAX_ADDRESSES:
                    break
        return cls(name, tuple(ips), edge)


class NodeDirectory:
    """
    The listed nodes, by name and by IP; observers hear of every change.

    C{synced} is false until the first full listing (L{replace}): before
    that, an absent node means "not known yet", not "not listed", and
    L{DirectoryAddressProof} says so in its reasons.
    """

    log = Logger()

    def __init__(self, maxNodes: int = DEFAULT_MAX_NODES) -> None:
        if maxNodes <= 0:
            raise ValueError(f"maxNodes {maxNodes!r}: must be at least 1")
        self.maxNodes = maxNodes
        self.synced = False
        self._nodes: dict[str, ListedNode] = {}
        self._claims: dict[str, set[str]] = {}  # IP -> the nodes listing it
        self._observers: list[Callable[[Sequence[str]], object]] = []

    def subscribe(self, observer: Callable[[Sequence[str]], object]) -> Callable[[], None]:
        """
        Call C{observer} with the names of the nodes that changed (added,
        changed or removed), and of the nodes that share an address with
        them, after every change.

        @return: a function that unsubscribes it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[ListedNode]:
        return iter(list(self._nodes.values()))

    def get(self, name: str) -> ListedNode | None:
        """The listed node called C{name}, if any."""
        return self._nodes.get(name)

    def owner(self, ip: str) -> str | None:
        """
        The one listed edge node whose addresses hold C{ip}; C{None} if no
        node lists it, several do, or the one that does is not an edge node.
        """
        claims = self._claims.get(ip)
        if claims is None or len(claims) != 1:
            return None
        name = next(iter(claims))
        return name if self._nodes[name].edge else None

    def edges(self) -> Iterator[ListedNode]:
        """The listed edge nodes."""
        return (node for node in list(self._nodes.values()) if node.edge)

    def claimants(self, ip: str) -> frozenset[str]:
        """Every listed node whose addresses hold C{ip}."""
        return frozenset(self._claims.get(ip, ()))

    def replace(self, nodes: Iterable[ListedNode]) -> None:
        """
        The full listing (a list, or a relist after the watch fell behind):
        nodes not in it are removed.  Marks the directory L{synced}.
        """
        fresh: dict[str, ListedNode] = {}
        for node in nodes:
            if len(fresh) >= self.maxNodes and node.name not in fresh:
                self._tooMany(node.name)
                continue
            fresh[node.name] = node
        changed = [name for name in self._nodes if name not in fresh]
        changed += [name for name, node in fresh.items() if self._nodes.get(name) != node]
        touched: set[str] = set()
        for name in changed:
            touched.update(self._drop(name))
        for name in changed:
            if name in fresh:
                touched.update(self._add(fresh[name]))
        self.synced = True
        self._changed(changed, touched)

    def put(self, node: ListedNode) -> None:
        """A node was added or changed."""
        if self._nodes.get(node.name) == node:
            return
        if node.name not in self._nodes and len(self._nodes) >= self.maxNodes:
            self._tooMany(node.name)
            return
        touched = self._drop(node.name) + self._add(node)
        self._changed([node.name], touched)

    def remove(self, name: str) -> None:
        """A node was deleted from the cluster."""
        if name in self._nodes:
            self._changed([name], self._drop(name))

    def _add(self, node: ListedNode) -> tuple[str, ...]:
        """List C{node}; its addresses, whose claims changed."""
        self._nodes[node.name] = node
        for ip in node.addresses:
            self._claims.setdefault(ip, set()).add(node.name)
        return node.addresses

    def _drop(self, name: str) -> tuple[str, ...]:
        """Forget node C{name}; the addresses it listed, whose claims changed."""
        node = self._nodes.pop(name, None)
        if node is None:
            return ()
        for ip in node.addresses:
            claims = self._claims.get(ip)
            if claims is not None:
                claims.discard(name)
                if not claims:
                    del self._claims[ip]
        return node.addresses

    def _tooMany(self, name: str) -> None:
        self.log.warn(
            "node directory: not listing node {node}: it holds {count} nodes already, its most",
            node=name,
            count=self.maxNodes,
        )

    def _changed(self, names: Sequence[str], touched: Iterable[str]) -> None:
        """
        Tell the observers of C{names}, and of every other node that claims
        one of the C{touched} addresses: its claim may have become the only
        one (or stopped being it), which changes what it proves.
        """
        names = list(names)
        seen = set(names)
        for ip in touched:
            for other in sorted(self._claims.get(ip, ())):
                if other not in seen:
                    seen.add(other)
                    names.append(other)
        if not names:
            return
        for observer in list(self._observers):
            try:
                observer(names)
            except Exception:
                self.log.failure("a node directory observer failed")


@implementer(INodeAddressProof)
class DirectoryAddressProof:
    """
    An IP is proven when C{first} proves it (the agent's certificate, by
    default), or when the node's listing holds it and no other listed node
    does.

    The certificate's proof stands whatever the listing says: the CA that
    signed it vouched for those IPs.  The listing adds to it; it never takes
    away.  What it adds follows the listing: when a Node's addresses change,
    or the Node is deleted, the server proves its agent's IPs again
    (L{TunnelServer} subscribes to the directory).
    """

    def __init__(self, directory: NodeDirectory, first: INodeAddressProof | None = None) -> None:
        self.directory = directory
        self.first = first or CertificateAddressProof()

    def prove(self, node: str, identity: PeerIdentity, announced: Sequence[str]) -> AddressProof:
        first = self.first.prove(node, identity, announced)
        listed = self.directory.get(node)
        if listed is None:
            return AddressProof(first.proven, first.unproven, f"{first.why}; {self._absent(node)}")
        if not listed.edge:
            why = f"{first.why}; its Node is not an edge node (the edge node selector)"
            return AddressProof(first.proven, first.unproven, why)
        added = tuple(
            ip
            for ip in first.unproven
            if ip in listed.addresses and self.directory.owner(ip) == node
        )
        unproven = tuple(ip for ip in first.unproven if ip not in added)
        reasons = [first.why, f"its Node lists {', '.join(listed.addresses) or 'no IP'}"]
        shared = [ip for ip in unproven if len(self.directory.claimants(ip)) > 1]
        if shared:
            reasons.append(f"{', '.join(shared)} listed by several Nodes proves nothing")
        return AddressProof(first.proven + added, unproven, "; ".join(reasons))

    def _absent(self, node: str) -> str:
        if not self.directory.synced:
            return "the Node list has not been read yet"
        return f"no Node {node!r} is listed"
