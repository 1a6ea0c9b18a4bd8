# -*- test-case-name: tests.server.test_flapping -*-
"""
Two agents that prove the same node (one certificate copied to two
machines, or two agents given one node name) replace each other's tunnel
over and over: each connection is the "newer tunnel" that closes the other
one, whose agent reconnects at once.  Each replacement is logged at info
level as a reconnection, which is what it looks like one at a time; this
notices the pattern and names its likely cause, once per window.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from twisted.internet.interfaces import IReactorTime

__all__ = ["ReplacementWatch"]


class ReplacementWatch:
    """
    Counts the replacements of each node's tunnel within C{window} seconds.

    Bounded: at most C{maxNodes} nodes are followed (the least recently
    replaced are forgotten first), each with its last C{threshold}
    replacements.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        window: float = 30.0,
        threshold: int = 4,
        maxNodes: int = 4096,
    ) -> None:
        self.clock = clock
        self.window = window
        self.threshold = threshold
        self.maxNodes = maxNodes
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._warned: dict[str, float] = {}

    def replaced(self, node: str, oldPeer: str, newPeer: str) -> str | None:
        """
        Node C{node}'s tunnel from C{oldPeer} was just replaced by one from
        C{newPeer}.

        @return: what to warn, when this makes C{threshold} replacements
            within C{window} seconds (at most once per window and node);
            else C{None}.
        """
        now = self.clock.seconds()
        times = self._times.pop(node, None) or deque(maxlen=self.threshold)
        times.append(now)
        self._times[node] = times
        while len(self._times) > self.maxNodes:
            forgotten, _ = self._times.popitem(last=False)
            self._warned.pop(forgotten, None)
        if len(times) < self.threshold or now - times[0] > self.window:
            return None
        if now - self._warned.get(node, -self.window) < self.window:
            return None
        self._warned[node] = now
        return (
            f"node {node}: its tunnel was replaced {len(times)} times in "
            f"{now - times[0]:.0f} s (last: the one from {oldPeer} by one from {newPeer}): two "
            "agents prove this node, each closing the other's tunnel; is one certificate "
            "(or one --node-name) used on two machines?"
        )
