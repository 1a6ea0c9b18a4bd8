# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics of a server or an agent, each in a registry of its own.

No global registry: two servers in one process (or in one test run) do not
mix their numbers.  Counting on the hot path is plain arithmetic on objects
that exist anyway (streams count their bytes, a few C{collections.Counter}
tallies); the Prometheus families are built only when C{/metrics} is
scraped, by collectors that read that state.  The one exception is the
stream-open latency, a real C{Histogram}, observed once per open.

Labels stay low-cardinality: policies, reasons, directions and server ids.
Nothing is labelled by URL path or stream id, and per-node series exist
only when asked for (C{perNode}), as a fleet of 10,000 nodes would
otherwise make 10,000 series per metric.

Every metric is listed, with its meaning, in C{docs/operations.md}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.python.failure import Failure
from zope.interface import implementer

from ._version import __version__
from .errors import openFailure
from .mux import ITunnelMeter, Stream, Tunnel

if TYPE_CHECKING:
    from .agent import TunnelAgent
    from .server import TunnelServer

#: Buckets for stream-open latency: a LAN round trip to a node is ~1 ms,
#: a satellite link ~600 ms, and the open timeout is 10 s.
OPEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def openFailureReason(failure: Failure) -> str:
    """
    The C{reason} label of a failed stream open (L{OpenFailure.label}), or
    C{other} for a failure that is not a tunnel's.
    """
    known = openFailure(failure.value)
    return "other" if known is None else known.label


#: What a TLS handshake failure's message says, and the C{reason} label for it.
_HANDSHAKE_REASONS = (
    ("expired", "certificate_expired"),
    ("unknown ca", "unknown_ca"),
    ("certificate verify failed", "certificate_verify_failed"),
    ("did not return a certificate", "no_client_certificate"),
    ("certificate required", "no_client_certificate"),
    ("bad certificate", "bad_certificate"),
    ("wrong version number", "not_tls"),
    ("http request", "not_tls"),
    ("unsupported protocol", "protocol_version"),
    ("version too low", "protocol_version"),
    ("no shared cipher", "no_shared_cipher"),
)


def handshakeFailureReason(message: str) -> str:
    """The C{reason} label for a failed TLS handshake, from its error message."""
    lowered = message.lower()
    for needle, reason in _HANDSHAKE_REASONS:
        if needle in lowered:
            return reason
    return "connection_closed" if "connection" in lowered else "other"


def _tally(family: Any, tally: Counter[Any]) -> Metric:
    """C{family} with a sample per key of C{tally} (keys: a label value or a tuple of them)."""
    for key, value in sorted(tally.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    result: Metric = family
    return result


@implementer(ITunnelMeter)
class TunnelMeter:
    """
    What every tunnel of one process reports (see L{ITunnelMeter}): the
    live tunnels, and the byte counts of streams that are gone, by label
    and direction, so that the byte counters stay monotonic.
    """

    def __init__(self) -> None:
        self.tunnels: set[Tunnel] = set()
        self.retiredBytes: Counter[tuple[str, str]] = Counter()
        self.keepaliveTimeouts = 0
        #: tunnels closed because their peer flooded them, by reason
        self.floods: Counter[str] = Counter()

    def tunnelStarted(self, tunnel: Tunnel) -> None:
        self.tunnels.add(tunnel)

    def streamRetired(self, tunnel: Tunnel, stream: Stream) -> None:
        self.retiredBytes[stream.label, "sent"] += stream.bytesSent
        self.retiredBytes[stream.label, "received"] += stream.bytesReceived

    def tunnelEnded(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)

    def keepaliveTimedOut(self, tunnel: Tunnel) -> None:
        self.keepaliveTimeouts += 1

    def floodDetected(self, tunnel: Tunnel, reason: str) -> None:
        self.floods[reason] += 1

    def liveStreams(self) -> Iterator[tuple[Tunnel, Stream]]:
        for tunnel in list(self.tunnels):
            for stream in tunnel.streams():
                yield tunnel, stream

    def bytesByLabel(self) -> Counter[tuple[str, str]]:
        """Bytes sent and received by streams, ever, by (label, "sent"/"received")."""
        total = Counter(self.retiredBytes)
        for _, stream in self.liveStreams():
            total[stream.label, "sent"] += stream.bytesSent
            total[stream.label, "received"] += stream.bytesReceived
        return total


class ServerMetrics:
    """
    The metrics of one L{TunnelServer}.  Front doors report opens through
    L{openSucceeded} and L{openFailed} (L{NodeEndpoint} does it for them);
    the daemon adds its configuration watcher and iptables sync with
    L{watchConfig} and L{watchIptables}.

    @ivar registry: what C{/metrics} serves.
    """

    def __init__(self, server: TunnelServer, *, perNode: bool = False) -> None:
        self.server = server
        self.perNode = perNode
        self.meter = TunnelMeter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.opened: Counter[str] = Counter()
        self.openFailures: Counter[str] = Counter()
        self.handshakeFailures: Counter[str] = Counter()
        self.helloRefusals: Counter[str] = Counter()
        self.openSeconds = Histogram(
            "edge_tunnel_server_stream_open_seconds",
            "Seconds from a stream open to the agent's answer, by policy.",
            ["policy"],
            buckets=OPEN_BUCKETS,
            registry=self.registry,
        )
        self._config: Any = None
        self._iptables: Any = None
        self._clientLimiters: list[Any] = []
        self.registry.register(_ServerCollector(self))

    def openSucceeded(self, policy: str, seconds: float) -> None:
        self.opened[policy] += 1
        self.openSeconds.labels(policy).observe(seconds)

    def openFailed(self, failure: Failure) -> None:
        """A stream open that failed (L{openFailureReason} labels it)."""
        self.openFailures[openFailureReason(failure)] += 1

    def openRefused(self, label: str) -> None:
        """
        A stream never asked for: C{unknown_node} (no agent holds the node)
        or C{policy_refused} (a forwarding policy said no).  The front doors
        and L{NodeEndpoint} count them here, one place for the label set.
        """
        self.openFailures[label] += 1

    def watchConfig(self, watcher: Any) -> None:
        """Report C{watcher}'s reloads, refusals and staleness (a L{ConfigWatcher})."""
        self._config = watcher

    def watchIptables(self, sync: Any) -> None:
        """Report C{sync}'s syncs, their duration and errors (an C{IptablesSync})."""
        self._iptables = sync

    def watchClientLimiter(self, limiter: Any) -> None:
        """Report a front door's connections, memory held and limit hits (a C{ClientLimiter})."""
        self._clientLimiters.append(limiter)


class _ServerCollector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m, server = self.metrics, self.metrics.server
        info = GaugeMetricFamily(
            "edge_tunnel_server_info",
            "This server replica: its id, the replica count it announces, the version.",
            labels=["server_id", "server_count", "version"],
        )
        info.add_metric([server.serverId, str(server.serverCount), __version__], 1)
        yield info
        agents = list(server.registry)
        yield GaugeMetricFamily(
            "edge_tunnel_server_agents_connected",
            "Agents with a tunnel to this server.",
            value=len(agents),
        )
        yield GaugeMetricFamily(
            "edge_tunnel_server_draining",
            "1 while this server drains (SIGTERM), else 0.",
            value=1 if server.draining else 0,
        )
        streams: Counter[str] = Counter(stream.label for _, stream in m.meter.liveStreams())
        yield _tally(
            GaugeMetricFamily(
                "edge_tunnel_server_streams_open",
                "Streams open now, by the policy that opened them.",
                labels=["policy"],
            ),
            streams,
        )
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_streams_opened",
                "Streams opened, by policy.",
                labels=["policy"],
            ),
            m.opened,
        )
        directions = {"sent": "to_node", "received": "from_node"}
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_stream_bytes",
                "Bytes carried by streams, by policy and direction (to_node, from_node).",
                labels=["policy", "direction"],
            ),
            Counter(
                {(label, directions[way]): n for (label, way), n in m.meter.bytesByLabel().items()}
            ),
        )
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_stream_open_failures",
                "Stream opens that failed, by reason.",
                labels=["reason"],
            ),
            m.openFailures,
        )
        yield CounterMetricFamily(
            "edge_tunnel_server_keepalive_timeouts",
            "Agent tunnels declared dead: nothing heard for interval x misses.",
            value=m.meter.keepaliveTimeouts,
        )
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_tls_handshake_failures",
                "Agent connections whose TLS handshake failed, by reason.",
                labels=["reason"],
            ),
            m.handshakeFailures,
        )
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_hello_refusals",
                "Agents refused after the handshake (identity, duplicate...), by GOAWAY code.",
                labels=["code"],
            ),
            m.helloRefusals,
        )
        yield GaugeMetricFamily(
            "edge_tunnel_server_relays",
            "Connections relayed now by the front doors (CONNECT, --forward, raw TCP).",
            value=len(server.relayReaper),
        )
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_server_relays_reaped",
                "Relayed connections closed for making no progress, by reason (idle, "
                "half_closed, peer_reset).",
                labels=["reason"],
            ),
            server.relayReaper.reaped,
        )
        yield from self._config(m._config)
        yield from self._iptables(m._iptables)
        yield from self._clients(m._clientLimiters)
        if m.perNode:
            yield from self._nodes(agents)

    def _config(self, watcher: Any) -> Iterator[Metric]:
        if watcher is None:
            return
        reloads = CounterMetricFamily(
            "edge_tunnel_server_config_reloads",
            "ConfigMap changes taken into force (ok) or refused (failed).",
            labels=["result"],
        )
        reloads.add_metric(["ok"], watcher.reloads)
        reloads.add_metric(["failed"], watcher.refusals)
        yield reloads
        yield GaugeMetricFamily(
            "edge_tunnel_server_config_stale",
            "1 when the ConfigMap on disk was refused or is missing and the last good one "
            "is in force, else 0.",
            value=1 if watcher.stale else 0,
        )
        yield GaugeMetricFamily(
            "edge_tunnel_server_config_last_reload_timestamp_seconds",
            "When the configuration in force was loaded (Unix time).",
            value=watcher.lastLoaded,
        )

    def _clients(self, limiters: list[Any]) -> Iterator[Metric]:
        if not limiters:
            return
        connections = GaugeMetricFamily(
            "edge_tunnel_server_client_connections",
            "Client connections open now at a front door, by listener.",
            labels=["listener"],
        )
        buffered = GaugeMetricFamily(
            "edge_tunnel_server_client_buffered_bytes",
            "Bytes held in memory for a front door's clients that stopped reading, by listener.",
            labels=["listener"],
        )
        hits = CounterMetricFamily(
            "edge_tunnel_server_client_limit_hits",
            "Client connections refused or closed by a front door's limits, by listener and "
            "limit (connections, connections_per_address, buffered_bytes).",
            labels=["listener", "limit"],
        )
        for limiter in limiters:
            connections.add_metric([limiter.name], limiter.connections)
            buffered.add_metric([limiter.name], limiter.bufferedBytes)
            for limit in ("connections", "connections_per_address", "buffered_bytes"):
                hits.add_metric([limiter.name, limit], limiter.hits[limit])
        yield connections
        yield buffered
        yield hits

    def _iptables(self, sync: Any) -> Iterator[Metric]:
        if sync is None:
            return
        yield CounterMetricFamily(
            "edge_tunnel_server_iptables_syncs",
            "iptables syncs that ended, successful or not.",
            value=sync.syncCount,
        )
        yield CounterMetricFamily(
            "edge_tunnel_server_iptables_sync_errors",
            "iptables syncs and cleanups that failed.",
            value=sync.syncErrors,
        )
        yield CounterMetricFamily(
            "edge_tunnel_server_iptables_sync_seconds",
            "Seconds spent in successful iptables syncs.",
            value=sync.syncSeconds,
        )
        if sync.lastSyncDuration is not None:
            yield GaugeMetricFamily(
                "edge_tunnel_server_iptables_last_sync_seconds",
                "Seconds the last successful iptables sync took.",
                value=sync.lastSyncDuration,
            )

    def _nodes(self, agents: list[Any]) -> Iterator[Metric]:
        streams = GaugeMetricFamily(
            "edge_tunnel_server_node_streams_open",
            "Streams open now, by node (--metrics-per-node).",
            labels=["node"],
        )
        carried = CounterMetricFamily(
            "edge_tunnel_server_node_stream_bytes",
            "Bytes carried by the streams of this node's current tunnel, by direction "
            "(--metrics-per-node).",
            labels=["node", "direction"],
        )
        for record in agents:
            streams.add_metric([record.node], record.tunnel.streamCount)
            carried.add_metric([record.node, "to_node"], record.tunnel.bytesSent)
            carried.add_metric([record.node, "from_node"], record.tunnel.bytesReceived)
        yield streams
        yield carried


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
        yield _tally(carried, byDirection)
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_agent_dials",
                "Connections the agent made to targets for the servers, by result.",
                labels=["result"],
            ),
            m.dials,
        )
        yield _tally(
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
        yield _tally(
            CounterMetricFamily(
                "edge_tunnel_agent_relays_reaped",
                "Streams relayed to targets closed for making no progress, by reason (idle, "
                "half_closed, peer_reset).",
                labels=["reason"],
            ),
            agent.relayReaper.reaped,
        )
        budget = agent.budget
        yield _tally(
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


__all__ = [
    "AgentMetrics",
    "ServerMetrics",
    "TunnelMeter",
    "handshakeFailureReason",
    "openFailureReason",
]
