# -*- test-case-name: tests.server.test_routes -*-
"""
Which nodes the server takes traffic for: the connected ones, and for a
while the ones whose agent has just gone.

The iptables rules (L{twisted_tunnel.host.iptables}) and the hosts file
(L{twisted_tunnel.host.hostsfile}) bring a node's traffic to the server.  If
they followed only the live tunnels, an agent going away (a restart, a
drain, a network cut) would take its node's rules with it at once, and
then:

  - kube-apiserver would dial the node's private address directly, past
    the server: C{connection refused}, or a 30 s hang where the network
    drops the packets, instead of the server's immediate answer that no
    agent is connected (which kubectl shows);
  - removing a rule deletes the conntrack entries of its destination, so
    the streams a draining agent is still finishing would lose their NAT
    in the middle (kube-apiserver notices only when it next sends).

Both were found by the real kube-apiserver in the interop suite (issue 13,
item 10).  So a node whose agent leaves stays routed for C{keepGone}
seconds (a day by default): its new connections reach the proxy
listeners, which answer at once that no agent is connected, and name the
node and when its agent left; established connections keep their NAT until
the tunnel under them ends them.  This is yurt-tunnel's behaviour too,
whose rules follow the Node objects, not the tunnels.

Bounded: at most C{maxGone} gone nodes are remembered (the oldest are
forgotten first), and expiry needs no timer of its own: it is applied
whenever the routes are read, which the iptables manager does at every
periodic resync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

if TYPE_CHECKING:
    from . import AgentRecord, AgentRegistry
    from .directory import ListedNode, NodeDirectory

__all__ = [
    "DEFAULT_KEEP_GONE",
    "DEFAULT_MAX_GONE",
    "GoneNode",
    "NodeRoutes",
    "RoutedNode",
    "RoutedNodes",
]

#: Seconds a node stays routed after its agent left.
DEFAULT_KEEP_GONE = 86400.0

#: How many gone nodes are remembered at most.
DEFAULT_MAX_GONE = 65536


class _Routed(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def ips(self) -> tuple[str, ...]: ...


class NodeRoutes(Protocol):
    """
    What the iptables manager and the hosts file follow: nodes with their
    IPs, and a way to hear of changes.  L{RoutedNodes} is one (connected
    and recently gone nodes); an L{AgentRegistry} is another (connected
    nodes only).
    """

    def subscribe(self, observer: Callable[[], object]) -> Callable[[], None]: ...

    def __iter__(self) -> Iterator[_Routed]: ...


@frozen
class RoutedNode:
    """One node whose traffic the server takes, and whether its agent is connected."""

    node: str
    ips: tuple[str, ...]
    connected: bool


@frozen
class GoneNode:
    """A node whose agent left at C{since} (the clock's seconds)."""

    node: str
    ips: tuple[str, ...]
    since: float


class RoutedNodes:
    """
    The connected nodes (from the L{AgentRegistry}) and the recently gone
    ones, for whoever routes traffic to the server.

    Iterating yields one L{RoutedNode} per node: every connected node, then
    every gone node that is not connected again and not past C{keepGone};
    an IP a connected node holds is never listed for a gone one.
    Observers (L{subscribe}) are called after every change of the registry.
    """

    def __init__(
        self,
        clock: IReactorTime,
        registry: AgentRegistry,
        *,
        keepGone: float = DEFAULT_KEEP_GONE,
        maxGone: int = DEFAULT_MAX_GONE,
        directory: NodeDirectory | None = None,
    ) -> None:
        """
        @param keepGone: seconds a node stays routed after its agent left;
            0 routes only connected nodes.
        @param maxGone: how many gone nodes are remembered at most.
        @param directory: the nodes the cluster lists, if the server watches
            them: each is routed whether or not its agent is connected (its
            listed addresses), and a node the cluster deleted is no longer
            routed as a gone one.
        """
        if keepGone < 0:
            raise ValueError(f"keepGone {keepGone!r}: must be 0 or more seconds")
        if maxGone < 0:
            raise ValueError(f"maxGone {maxGone!r}: must be 0 or more")
        self.clock = clock
        self.registry = registry
        self.keepGone = keepGone
        self.maxGone = maxGone
        # by node name, oldest first (a node that leaves again moves to the end)
        self._gone: dict[str, GoneNode] = {}
        self._goneByIP: dict[str, str] = {}
        self.directory = directory
        registry.subscribeLeaving(self._left)
        if directory is not None:
            directory.subscribe(self._listingChanged)

    def subscribe(self, observer: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{observer} after every change: an agent connected, was
        replaced, or went away; a listed node was added, changed or deleted.

        @return: a function that unsubscribes it.
        """
        unsubscribes = [self.registry.subscribe(observer)]
        if self.directory is not None:
            unsubscribes.append(self.directory.subscribe(lambda _: observer()))

        def unsubscribe() -> None:
            for each in unsubscribes:
                each()

        return unsubscribe

    def _listingChanged(self, nodes: Sequence[str]) -> None:
        assert self.directory is not None
        for node in nodes:
            if self.directory.get(node) is None:
                self._forget(node)

    def _left(self, record: AgentRecord) -> None:
        if self.keepGone <= 0 or self.maxGone == 0:
            return
        self._forget(record.node)
        self._gone[record.node] = GoneNode(record.node, record.ips, self.clock.seconds())
        for ip in record.ips:
            self._goneByIP[ip] = record.node
        while len(self._gone) > self.maxGone:
            self._forget(next(iter(self._gone)))

    def _forget(self, node: str) -> None:
        gone = self._gone.pop(node, None)
        if gone is not None:
            for ip in gone.ips:
                if self._goneByIP.get(ip) == node:
                    del self._goneByIP[ip]

    def _expire(self) -> None:
        horizon = self.clock.seconds() - self.keepGone
        while self._gone:
            oldest = next(iter(self._gone.values()))
            if oldest.since > horizon:
                break
            self._forget(oldest.node)

    def gone(self, nameOrIP: str) -> GoneNode | None:
        """
        The gone node, not connected again, that C{nameOrIP} (a node name
        or one of its IPs) routes to; for the answer a client gets.
        """
        self._expire()
        if self.registry.lookup(nameOrIP) is not None:
            return None
        return self._gone.get(self._goneByIP.get(nameOrIP, nameOrIP))

    def lookup(self, nameOrIP: str) -> RoutedNode | None:
        """
        The routed node C{nameOrIP} (a node name or one of its IPs) names:
        the connected one, else a gone one not past C{keepGone} (without
        the IPs a connected node holds now), else one the cluster lists
        (with the IPs it alone lists).  The HTTPS proxy listener
        mints serving certificates for these, and for nothing else
        (L{twisted_tunnel.tls.serving}): a gone node's clients are then
        told, over TLS they can verify, that its agent left.
        """
        record = self.registry.lookup(nameOrIP)
        if record is not None:
            return RoutedNode(record.node, record.ips, True)
        gone = self.gone(nameOrIP)
        if gone is not None:
            ips = tuple(ip for ip in gone.ips if self.registry.lookup(ip) is None)
            return RoutedNode(gone.node, ips, False)
        return self._listed(nameOrIP)

    def _listed(self, nameOrIP: str) -> RoutedNode | None:
        """The node the directory lists by that name, or the one listing that IP."""
        if self.directory is None:
            return None
        listed = self.directory.get(nameOrIP)
        if listed is None:
            owner = self.directory.owner(nameOrIP)
            listed = self.directory.get(owner) if owner is not None else None
        if listed is None or not listed.edge:
            return None
        return RoutedNode(listed.name, self._listedIPs(listed), False)

    def _listedIPs(self, listed: ListedNode) -> tuple[str, ...]:
        """The IPs C{listed} alone lists that no connected or gone node holds."""
        assert self.directory is not None
        return tuple(
            ip
            for ip in listed.addresses
            if self.directory.owner(ip) == listed.name
            and self.registry.lookup(ip) is None
            and ip not in self._goneByIP
        )

    def noAgent(self, address: str) -> str:
        """
        What a client is told when C{address} (a node name or IP) has no
        agent: the node, and when its agent left, if it is a gone node.
        """
        gone = self.gone(address)
        if gone is None:
            return f"no agent connected for node {address!r}"
        ago = self.clock.seconds() - gone.since
        named = repr(gone.node) if gone.node == address else f"{gone.node!r} ({address})"
        return f"no agent connected for node {named}: its agent left {ago:.0f}s ago"

    def __iter__(self) -> Iterator[RoutedNode]:
        self._expire()
        for record in self.registry:
            yield RoutedNode(record.node, record.ips, True)
        for gone in list(self._gone.values()):
            if self.registry.lookup(gone.node) is not None:
                continue
            ips = tuple(ip for ip in gone.ips if self.registry.lookup(ip) is None)
            yield RoutedNode(gone.node, ips, False)
        for listed in self.directory.edges() if self.directory is not None else ():
            if self.registry.lookup(listed.name) is not None or listed.name in self._gone:
                continue
            yield RoutedNode(listed.name, self._listedIPs(listed), False)
