# -*- test-case-name: tests.metrics.test_metrics -*-
"""
The agent's Prometheus metrics (L{AgentMetrics}), in a registry of its
own; what they mean is listed in C{docs/operations.md}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._version import __version__
from ..metrics import TunnelMeter, tally

if TYPE_CHECKING:
    from . import TunnelAgent

__all__ = ["AgentMetrics"]


class AgentMetrics:
    """
    The metrics of one L{TunnelAgent}.

    @ivar registry: what C{/metrics} serves.
    """

    def __init__(self, agent: TunnelAgent) -> None:
        self.agent = agent
        self.meter = TunnelMeter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.dials: Counter[str] = Counter()
        self.connects: Counter[str] = Counter()
        self.handshakeFailures: Counter[str] = Counter()
        self.registry.register(_AgentCollector(self))

    def dialed(self, result: str) -> None:
        """A dial for the server ended: C{ok}, or an OPEN_FAIL reason's name."""
        self.dials[result] += 1

    def connectAttempted(self, result: str) -> None:
        """
        A connection to the server address ended: C{ok}, C{duplicate},
        C{refused} (the server's GOAWAY), or a TLS handshake failure's reason.
        """
        self.connects[result] += 1


class _AgentCollector(Collector):
    def __init__(self, metrics: AgentMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m, agent = self.metrics, self.metrics.agent
        info = GaugeMetricFamily(
            "edge_tunnel_agent_info",
            "This agent: its node and version.",
            labels=["node", "version"],
        )
        info.add_metric([agent.nodeName, __version__], 1)
        yield info
        tunnels = GaugeMetricFamily(
            "edge_tunnel_agent_tunnel_up",
            "1 for each server replica this agent holds a tunnel to, by server id.",
            labels=["server_id"],
        )
        for serverId in sorted(agent.servers()):
            tunnels.add_metric([serverId], 1)
        yield tunnels
        yield GaugeMetricFamily(
            "edge_tunnel_agent_servers_wanted",
            "Server replicas there are to hold (the largest server_count announced).",
            value=agent.serversWanted(),
        )
        yield GaugeMetricFamily(
            "edge_tunnel_agent_streams_open",
            "Streams open now.",
            value=sum(1 for _ in m.meter.liveStreams()),
        )
        directions = {"sent": "from_node", "received": "to_node"}
        carried = CounterMetricFamily(
            "edge_tunnel_agent_stream_bytes",
            "Bytes carried by streams, by direction (to_node, from_node).",
            labels=["direction"],
        )
        byDirection: Counter[str] = Counter()
        for (_, way), n in m.meter.bytesByLabel().items():
            byDirection[directions[way]] += n
        yield tally(carried, byDirection)
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_agent_dials",
                "Connections the agent made to targets for the servers, by result.",
                labels=["result"],
            ),
            m.dials,
        )
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_agent_connects",
                "Connections to the server address, by result (ok: a new tunnel; duplicate: "
                "a replica already held; otherwise why it failed).",
                labels=["result"],
            ),
            m.connects,
        )
        yield CounterMetricFamily(
            "edge_tunnel_agent_keepalive_timeouts",
            "Tunnels declared dead: nothing heard for interval x misses.",
            value=m.meter.keepaliveTimeouts,
        )
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_agent_relays_reaped",
                "Streams relayed to targets closed for making no progress, by reason (idle, "
                "half_closed, peer_reset).",
                labels=["reason"],
            ),
            agent.relayReaper.reaped,
        )
        budget = agent.budget
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_agent_stream_refusals",
                "Stream opens refused by the agent's limits across its tunnels, by limit "
                "(streams, fds, buffer).",
                labels=["limit"],
            ),
            budget.refusals,
        )
        yield GaugeMetricFamily(
            "edge_tunnel_agent_stream_buffer_reserved_bytes",
            "Bytes the open streams may make the agent hold (their receive windows).",
            value=budget.reserved,
        )
        yield GaugeMetricFamily(
            "edge_tunnel_agent_stream_limit",
            "Streams the agent accepts at once across its tunnels: the least of "
            "--max-streams-total, --max-buffered-mib / --stream-window and the open-file limit.",
            value=budget.streamLimit(agent.settings.window),
        )
