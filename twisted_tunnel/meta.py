# -*- test-case-name: tests.meta.test_meta -*-
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
serves nothing else, without authentication, so it listens on 127.0.0.1 by
default (in a pod: the pod's IP, for the kubelet's probes and Prometheus),
and what it serves is listed in C{docs/operations.md}.

A client gets L{REQUEST_DEADLINE} seconds to send a whole request, head and
body (at most L{MAX_REQUEST_BYTES}), counted from when it connects or from
the previous response: twisted.web's own timeout is an idle timer, reset by
every byte, so a client sending one byte every few seconds held a
connection for ever.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

#: Seconds between heartbeats.
HEARTBEAT = 1.0

#: How late the heartbeat may be before C{/healthz} says the reactor stalled.
STALL_LIMIT = 10.0

#: A readiness check: C{None} when fine, else why not (one line).
Check = Callable[[], str | None]

#: Seconds a client has to send a whole request (head and body), from when
#: it connects or was answered: probes and scrapes send theirs at once.
REQUEST_DEADLINE = 10.0

#: Bytes a client may send for one request, head and body: the meta
#: listener only answers GETs, which have no body.
MAX_REQUEST_BYTES = 64 * 1024

_log = Logger(namespace=__name__)
_DONE = Failure(ConnectionDone())


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


class Metrics(Resource):
    """
    C{/metrics}, rendered in the reactor's thread, in the format the scraper
    asks for (OpenMetrics or the Prometheus text format).

    Not C{prometheus_client.twisted.MetricsResource}: that one imports the
    global reactor (installing the default one, whatever the program
    chose) and renders in the reactor's thread pool, where our collectors
    would read the tunnels' state while the reactor thread changes it.
    Rendering here costs the reactor the time of one collection (well
    under a millisecond for a few thousand series).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader("accept") or ""
        encode, contentType = choose_encoder(accept)
        request.setHeader("content-type", contentType)
        return encode(self.registry)


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


class MetaChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that gives each request a deadline and a size limit
    (see the module's docstring); past either, the connection is aborted.

    @ivar deadline: seconds to send a whole request.
    @ivar maxRequestBytes: the most bytes one request may take.
    """

    deadline = REQUEST_DEADLINE
    maxRequestBytes = MAX_REQUEST_BYTES
    _deadlineCall: IDelayedCall | None = None
    _received = 0

    def connectionMade(self) -> None:
        site = self.factory
        if isinstance(site, MetaSite):
            self.deadline = site.requestDeadline
            self.maxRequestBytes = site.maxRequestBytes
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.maxRequestBytes:
            self._refuse(f"sent more than {self.maxRequestBytes} bytes for one request")
            return
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()  # a whole request: the deadline is met
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # armed first: the parent may go on at once with a request buffered
        # behind this one, which then disarms it again
        self._arm()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        self._disarm()
        self._received = 0
        self._deadlineCall = self.callLater(self.deadline, self._expired)

    def _disarm(self) -> None:
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()

    def _expired(self) -> None:
        self._deadlineCall = None
        self._refuse(f"sent no whole request within {self.deadline:g}s")

    def _refuse(self, reason: str) -> None:
        self._disarm()
        transport = self.transport
        if transport is None:
            return
        _log.debug(
            "meta listener: {peer} {reason}; connection aborted",
            peer=str(transport.getPeer()),
            reason=reason,
        )
        transport.abortConnection()  # type: ignore[attr-defined]


class MetaSite(Site):
    """
    A site that logs no line per request (probes come every few seconds),
    speaks plain HTTP/1.1 through L{MetaChannel}, and keeps its timers on
    the reactor it is given.
    """

    noisy = False
    # HTTP/1.1 only (no HTTP/2 switch: that takes TLS); twisted.web's
    # buildProtocol hands it this site, its clock and its request class
    protocol = MetaChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        clock: IReactorTime,
        *,
        requestDeadline: float = REQUEST_DEADLINE,
        maxRequestBytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        super().__init__(resource, reactor=clock, timeout=requestDeadline)
        self.requestDeadline = requestDeadline
        self.maxRequestBytes = maxRequestBytes

    def log(self, request: object) -> None:
        pass


def metaSite(
    heartbeat: Heartbeat,
    registry: CollectorRegistry,
    checks: Sequence[Check],
    summary: Callable[[], str],
    extra: dict[bytes, Resource] | None = None,
    *,
    requestDeadline: float = REQUEST_DEADLINE,
) -> Site:
    """
    The meta listener's site: C{/healthz}, C{/readyz}, C{/metrics}, and
    C{extra} resources (the server's C{/agents}); its timers run on the
    heartbeat's clock.
    """
    root = Resource()
    root.putChild(b"healthz", Health(heartbeat))
    root.putChild(b"readyz", Ready(checks, summary))
    root.putChild(b"metrics", Metrics(registry))
    for name, resource in (extra or {}).items():
        root.putChild(name, resource)
    return MetaSite(root, heartbeat.clock, requestDeadline=requestDeadline)


def _timestamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def agentsDocument(server: Any) -> dict[str, Any]:
    """
    What C{/agents} serves: this server, and each connected agent with
    where it connected from, since when, its streams and bytes, and the
    certificate it proved its node with (serial, and when the tunnel is
    closed for its expiry): which one of a rotation an agent uses.
    """
    agents = []
    for record in sorted(server.registry, key=lambda r: r.node):
        tunnel = record.tunnel
        identity = record.identity
        serial = identity.serial if identity is not None else None
        expires = identity.expires() if identity is not None else None
        agents.append(
            {
                "node": record.node,
                "ips": list(record.ips),
                "peer": record.peer,
                "connected_since": _timestamp(record.connectedAt),
                "streams_open": tunnel.streamCount,
                "bytes_to_node": tunnel.bytesSent,
                "bytes_from_node": tunnel.bytesReceived,
                "certificate_serial": f"{serial:#x}" if serial is not None else None,
                "certificate_expires": _timestamp(expires.timestamp()) if expires else None,
            }
        )
    return {
        "server_id": server.serverId,
        "server_count": server.serverCount,
        "draining": server.draining,
        "agents": agents,
    }
