# -*- test-case-name: tests.test_meta -*-
"""
The meta listener: what Kubernetes probes and Prometheus scrape.

    - C{/healthz}: the process is alive and its reactor turns.  A
      L{Heartbeat} ticks every second; if the last tick is more than
      L{STALL_LIMIT} seconds old when the probe is answered, the reactor was
      blocked that long and the answer is C{503}.
    - C{/readyz}: ready to serve, by the daemon's own checks (server:
      listeners up, configuration not stale, not draining; agent: a tunnel
      to every known server).  C{200 ok: ...} or C{503} with the reasons, one
      per line, as Kubernetes shows them in events.
    - C{/metrics}: the Prometheus text format, from the process's own
      registry (L{twisted_tunnel.metrics}).
    - C{/agents} (server): the connected agents as JSON.

Plain text, short, no HTML: probes and people with curl read it.  It
serves nothing else, and it is meant for the cluster network only (the
agent's listens on 127.0.0.1 by default).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: Seconds between heartbeats.
HEARTBEAT = 1.0

#: How late the heartbeat may be before C{/healthz} says the reactor stalled.
STALL_LIMIT = 10.0

#: A readiness check: C{None} when fine, else why not (one line).
Check = Callable[[], str | None]


class Heartbeat:
    """
    A tick every L{HEARTBEAT} seconds, so that a probe answered after the
    reactor was blocked can tell: the tick is late.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.last = clock.seconds()
        self._loop = LoopingCall(self._beat)
        self._loop.clock = clock

    def _beat(self) -> None:
        self.last = self.clock.seconds()

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(HEARTBEAT, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def late(self) -> float:
        """Seconds the heartbeat is overdue (0 when on time)."""
        return max(self.clock.seconds() - self.last - HEARTBEAT, 0.0)


class _Text(Resource):
    isLeaf = True

    def answer(self, request: Request, status: int, text: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (text.rstrip("\n") + "\n").encode("utf-8")


class Health(_Text):
    def __init__(self, heartbeat: Heartbeat) -> None:
        super().__init__()
        self.heartbeat = heartbeat

    def render_GET(self, request: Request) -> bytes:
        late = self.heartbeat.late()
        if late > STALL_LIMIT:
            return self.answer(request, 503, f"reactor stalled: heartbeat {late:.1f}s late")
        return self.answer(request, 200, "ok")


class Ready(_Text):
    def __init__(self, checks: Sequence[Check], summary: Callable[[], str]) -> None:
        super().__init__()
        self.checks = checks
        self.summary = summary

    def render_GET(self, request: Request) -> bytes:
        problems = [problem for problem in (check() for check in self.checks) if problem]
        if problems:
            return self.answer(request, 503, "\n".join(problems))
        return self.answer(request, 200, f"ok: {self.summary()}")


class JSONResource(Resource):
    """A JSON document, made when asked for."""

    isLeaf = True

    def __init__(self, document: Callable[[], Any]) -> None:
        super().__init__()
        self.document = document

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self.document(), indent=1, sort_keys=True).encode("utf-8") + b"\n"


class MetaSite(Site):
    """A site that logs no line per request: probes come every few seconds."""

    noisy = False

    def log(self, request: object) -> None:
        pass


def metaSite(
    heartbeat: Heartbeat,
    registry: CollectorRegistry,
    checks: Sequence[Check],
    summary: Callable[[], str],
    extra: dict[bytes, Resource] | None = None,
) -> Site:
    """
    The meta listener's site: C{/healthz}, C{/readyz}, C{/metrics}, and
    C{extra} resources (the server's C{/agents}).
    """
    root = Resource()
    root.putChild(b"healthz", Health(heartbeat))
    root.putChild(b"readyz", Ready(checks, summary))
    root.putChild(b"metrics", MetricsResource(registry))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    return MetaSite(root)


def _timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def agentsDocument(server: Any) -> dict[str, Any]:
    """
    What C{/agents} serves: this server, and each connected agent with
    where it connected from, since when, its streams and bytes.
    """
    agents = []
    for record in sorted(server.registry, key=lambda r: r.node):
        tunnel = record.tunnel
        agents.append(
            {
                "node": record.node,
                "ips": list(record.ips),
                "peer": record.peer,
                "connected_since": _timestamp(record.connectedAt),
                "streams_open": tunnel.streamCount,
                "bytes_to_node": tunnel.bytesSent,
                "bytes_from_node": tunnel.bytesReceived,
            }
        )
    return {
        "server_id": server.serverId,
        "server_count": server.serverCount,
        "draining": server.draining,
        "agents": agents,
    }
