# -*- test-case-name: tests.metrics.test_metrics -*-
"""
What the server's and the agent's Prometheus metrics share
(L{twisted_tunnel.server.metrics}, L{twisted_tunnel.agent.metrics}), each
in a registry of its own.

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
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    Metric,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import openFailure
from .mux import ITunnelMeter, Stream, Tunnel

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


def tally(family: Any, tally: Counter[Any]) -> Metric:
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


__all__ = [
    "OPEN_BUCKETS",
    "TunnelMeter",
    "handshakeFailureReason",
    "openFailureReason",
    "tally",
]
