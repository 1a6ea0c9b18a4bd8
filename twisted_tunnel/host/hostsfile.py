# -*- test-case-name: tests.host.test_hostsfile -*-
"""
Node-name routing for DNS setups: a hosts file of the connected nodes.

kube-apiserver prefers a node's hostname when it reaches a kubelet, and
metrics-server can be told to; when those names resolve to the server's
proxy listeners (its Service IP, say), requests for C{edge-1:10250} reach
the tunnel with no iptables at all.  CoreDNS's C{hosts} plugin serves such
a file; this keeps one up to date, C{<server-address> <node-name>} per
routed node (L{twisted_tunnel.server.routes.RoutedNodes}): the connected ones,
and for a while the ones whose agent has gone, whose clients the server
then answers at once (naming the node and when its agent left)
rather than leaving them to a name that no longer resolves.  A gone node
leaves the file at the first write after its time is up.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..files import writeAtomically
from ..server.routes import NodeRoutes

HEADER = "# written by edge-tunnel-server: the nodes routed to it\n"


def render(address: str, nodes: list[str]) -> str:
    """The file's content: one C{address node} line per node, sorted."""
    return HEADER + "".join(f"{address} {node}\n" for node in sorted(set(nodes)))


class HostsFile(Service):
    """
    Keeps C{path} listing every routed node as C{address}.

    Changes are coalesced (C{delay} seconds) so that a thousand agents
    reconnecting after a restart cost a few writes, not a thousand.  On
    stop, the file is emptied of nodes: with no server, no node should
    resolve to it.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        address: str,
        registry: NodeRoutes,
        clock: IReactorTime,
        *,
        delay: float = 0.2,
    ) -> None:
        self.path = path
        self.address = address
        self.registry = registry
        self.clock = clock
        self.delay = delay
        self._call: IDelayedCall | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.writes = 0

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self.registry.subscribe(self._changed)
        self.write()

    def stopService(self) -> None:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._write([])

    def _changed(self) -> None:
        if self._call is None or not self._call.active():
            self._call = self.clock.callLater(self.delay, self.write)

    def write(self) -> None:
        """Write the file now, from the registry as it is."""
        self._call = None
        self._write([record.node for record in self.registry])

    def _write(self, nodes: list[str]) -> None:
        try:
            writeAtomically(self.path, render(self.address, nodes))
        except OSError as e:
            self.log.warn(
                "cannot write the hosts file {path}: {reason}", path=self.path, reason=str(e)
            )
            return
        self.writes += 1
        self.log.debug("hosts file {path}: {count} nodes", path=self.path, count=len(nodes))
