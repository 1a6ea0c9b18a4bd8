# -*- test-case-name: tests.metrics.test_metrics -*-
"""
The server's Prometheus metrics (L{ServerMetrics}), in a registry of its
own; what they mean is listed in C{docs/operations.md}, and the parts the
server and the agent share are in L{twisted_tunnel.metrics}.
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

from .._version import __version__
from ..metrics import OPEN_BUCKETS, TunnelMeter, openFailureReason, tally

if TYPE_CHECKING:
    from . import TunnelServer

__all__ = ["ServerMetrics"]


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
        #: the daemon's configuration watcher, once L{watchConfig} gave it
        self.configWatcher: Any = None
        #: the daemon's iptables sync, once L{watchIptables} gave it
        self.iptablesSync: Any = None
        #: the front doors' limiters (L{watchClientLimiter})
        self.clientLimiters: list[Any] = []
        #: the HTTPS listener's minting, once L{watchServingCertificates} gave it
        self.servingCertificates: Any = None
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
        self.configWatcher = watcher

    def watchIptables(self, sync: Any) -> None:
        """Report C{sync}'s syncs, their duration and errors (an C{IptablesSync})."""
        self.iptablesSync = sync

    def watchServingCertificates(self, serving: Any) -> None:
        """
        Report the HTTPS proxy listener's minted certificates and what each
        handshake was given (a L{twisted_tunnel.tls.serving.NodeServingOptions}).
        """
        self.servingCertificates = serving

    def watchClientLimiter(self, limiter: Any) -> None:
        """Report a front door's connections, memory held and limit hits (a C{ClientLimiter})."""
        self.clientLimiters.append(limiter)


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
        yield tally(
            GaugeMetricFamily(
                "edge_tunnel_server_streams_open",
                "Streams open now, by the policy that opened them.",
                labels=["policy"],
            ),
            streams,
        )
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_server_streams_opened",
                "Streams opened, by policy.",
                labels=["policy"],
            ),
            m.opened,
        )
        directions = {"sent": "to_node", "received": "from_node"}
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_server_stream_bytes",
                "Bytes carried by streams, by policy and direction (to_node, from_node).",
                labels=["policy", "direction"],
            ),
            Counter(
                {(label, directions[way]): n for (label, way), n in m.meter.bytesByLabel().items()}
            ),
        )
        yield tally(
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
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_server_tls_handshake_failures",
                "Agent connections whose TLS handshake failed, by reason.",
                labels=["reason"],
            ),
            m.handshakeFailures,
        )
        yield tally(
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
        yield tally(
            CounterMetricFamily(
                "edge_tunnel_server_relays_reaped",
                "Relayed connections closed for making no progress, by reason (idle, "
                "half_closed, peer_reset).",
                labels=["reason"],
            ),
            server.relayReaper.reaped,
        )
        yield from self._config(m.configWatcher)
        yield from self._iptables(m.iptablesSync)
        yield from self._clients(m.clientLimiters)
        yield from self._serving(m.servingCertificates)
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

    def _serving(self, serving: Any) -> Iterator[Metric]:
        if serving is None:
            return
        minting = serving.certificates
        yield CounterMetricFamily(
            "edge_tunnel_server_serving_certificates_minted",
            "Serving certificates minted for nodes by the HTTPS proxy listener.",
            value=minting.minted,
        )
        yield CounterMetricFamily(
            "edge_tunnel_server_serving_certificates_throttled",
            "Serving certificates not minted because minting was over its rate.",
            value=minting.throttled,
        )
        yield GaugeMetricFamily(
            "edge_tunnel_server_serving_certificates_cached",
            "Minted serving certificates kept now.",
            value=len(minting),
        )
        chosen = CounterMetricFamily(
            "edge_tunnel_server_serving_certificate_choices",
            "HTTPS proxy listener handshakes, by the certificate they were given: node (its "
            "minted one), static (--proxy-serving-cert), none (refused).",
            labels=["certificate"],
        )
        for certificate in ("node", "static", "none"):
            chosen.add_metric([certificate], serving.chosen[certificate])
        yield chosen

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
