# -*- test-case-name: tests.http.test_httpproxy -*-
"""
An HTTP/1.1 forwarding engine for the server's proxy listeners.

kube-apiserver, metrics-server and Prometheus send ordinary requests
(C{GET /containerLogs/ns/pod/c?follow=true} with C{Host: <node-ip>:10250})
to a proxy listener; TLS, when there is any, has been terminated before
this protocol by a C{TLSMemoryBIOFactory} wrapper, so what arrives here is
always plaintext HTTP.  This module reads those requests and carries each
one to an upstream, with no knowledge of tunnels, nodes or policies: a
I{router} callback, given the request head and the client's address,
answers with a L{Route} (a key, and an C{IStreamClientEndpoint} to reach
the upstream), or refuses with L{RouteRefused}.

What "HTTP done right" means here:

 - B{One upstream connection per client connection}, opened on the first
   request; the client connection is I{pinned} to the route's key.  Every
   later request on the same client connection is routed again; if its key
   differs it gets C{421 Misdirected Request} and the connection is
   closed, so a request is never delivered to another node than the one
   the connection was routed to.  The upstream connection is reused only
   when the new route has the same destination (L{Route.destination}); a
   router that sends the next request elsewhere (a policy deciding by
   path) gets a new upstream connection for it.  (yurt-tunnel opened a new
   tunnel connection per request; keep-alive reuse makes C{kubectl top}
   and Prometheus scrapes cheap.)

 - B{Or one route for the whole connection}, where the factory knows it
   before any request (L{HTTPProxyFactory.connectionRouterFor}: the proxy
   listeners, for a DNATed connection whose port's policy decides once per
   connection): routed when its first bytes arrive, then relayed as bytes
   like an upgraded connection, nothing parsed.  If its upstream cannot be
   connected, the connection falls back to the rules here, and its first
   request gets that failure's answer.

 - B{The last request is the last}: after a request that ends the
   connection (C{Connection: close}, or HTTP/1.0 without keep-alive),
   nothing the client sends is parsed; that request is answered and the
   connection closed, as nginx does.
   If the upstream ends its keep-alive between two requests, the next one
   opens a new upstream connection for the same key; a request without a
   body that finds its reused upstream closing under it is retried once on
   a new connection, as browsers and Go's transport do.

 - B{Streaming with back-pressure both ways.}  Request bodies go upstream
   as they arrive and response bodies go to the client as they are
   produced, each chunk written at once (C{kubectl logs -f} shows each
   line when the kubelet writes it).  Each transport is registered as the
   other's producer: a client that stops reading stops us reading the
   upstream, and an upstream that stops reading stops us reading the
   client, so nothing is buffered without bound.

 - B{Upgrades} (C{Connection: Upgrade}: SPDY/3.1 for exec, attach and
   port-forward, and WebSocket): C{Connection: Upgrade} and C{Upgrade} go
   upstream; a C{101} is passed back and the connection becomes a raw
   two-way relay, bytes either side had already sent ahead forwarded
   first and half-closes passed on; any other answer is passed back as it
   is and HTTP goes on.

 - B{Origin form upstream}: a request in absolute form (C{GET
   http://edge-1:9051/ HTTP/1.1}, from a client that takes the listener
   for a forward proxy) goes upstream as C{GET / HTTP/1.1}, with the
   target's authority as its C{Host} (RFC 9112 section 3.2.2), unless the
   route rewrites C{Host} itself; L{originForm}.

 - B{Hop-by-hop headers} are removed in both directions (RFC 9110
   section 7.6.1): C{Connection} and every header it names, C{Keep-Alive},
   C{Proxy-Connection}, C{TE}, C{Trailer}, C{Transfer-Encoding}, C{Upgrade}
   (but when upgrading), C{Proxy-Authorization} and C{Proxy-Authenticate}.
   Message framing is ours: h1 parses it on one side and writes it again
   on the other, so a C{Connection} header naming C{Content-Length} cannot
   make the two sides disagree about where a message ends.

 - B{Every failure before a response} gets a status the client can act on,
   its reason as a C{text/plain} body, and I{one} log line for the
   operator (method, target, host, status, reason, peer), never a
   traceback: L{RouteRefused} its own status; a failure the factory's
   L{Explainer} knows, the status it gives (the proxy listeners: no agent
   C{502}, the agent could not dial C{502}, the agent did not answer
   C{504}; see L{twisted_tunnel.doors.refusals}); any other connection
   failure, or an upstream that closes before answering, C{502};
   a malformed request C{400}; a head too large or with too many header
   fields C{431}; a head not complete in time (slowloris) C{408}.  A
   kept-alive connection that stays idle too long is closed quietly.

Nothing here schedules on a global reactor: the clock is given to
L{HTTPProxyFactory}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine, Hashable, Iterable
from http import HTTPStatus
from typing import Any, Union

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logthrottle import LogThrottle
from .._text import printable
from ..net.relay import Relay, RelayReaper, abortWhenSent, halfClose
from ..net.sockets import noDelay
from ..net.transports import addressLabel, heldBytesOf
from . import h1
from .responses import errorResponse

__all__ = [
    "HOP_BY_HOP_HEADERS",
    "HTTPProxyFactory",
    "HTTPProxyProtocol",
    "Describer",
    "Limits",
    "RequestHead",
    "Route",
    "RouteRefused",
    "Router",
    "describeNothing",
    "forwardedRequestHeaders",
    "forwardedResponseHeaders",
    "originForm",
]

#: Headers that belong to one connection, never forwarded as they are
#: (RFC 9110 section 7.6.1, plus the C{Proxy-*} pair and C{Trailer}).  h1
#: writes the framing (C{Transfer-Encoding}, C{Content-Length}) again on
#: each side; C{Connection: Upgrade} and C{Upgrade} are made again when an
#: upgrade is asked for.
HOP_BY_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

# Methods whose request, without a body, may be sent again on a new
# connection when a reused one closes before answering (RFC 9110 section 9.2.2).
_RETRYABLE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

Headers = tuple[tuple[bytes, bytes], ...]


@frozen
class RequestHead:
    """
    What a router sees of a request: its head, never its body.

    @ivar method: e.g. C{b"GET"}.
    @ivar target: the request target as sent, e.g.
        C{b"/containerLogs/ns/pod/c?follow=true"}.
    @ivar headers: the header fields in order, names lower-cased, values
        stripped of surrounding whitespace (as h1 gives them).
    @ivar httpVersion: e.g. C{b"1.1"}.
    """

    method: bytes
    target: bytes
    headers: Headers
    httpVersion: bytes

    def host(self) -> bytes | None:
        """
        The host the request is for, lower-cased and stripped: the authority
        of an absolute-form target (C{GET http://10.0.0.7:10255/metrics}),
        which RFC 9112 section 3.2.2 says wins over C{Host}, else the C{Host}
        header; C{None} when there is neither (an HTTP/1.0 request may have
        no C{Host}).
        """
        _, authority = originForm(self.target)
        if authority is not None:
            return authority.lower()
        value = self.header(b"host")
        return value.strip().lower() if value is not None else None

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header C{name} (lower-case), or C{None}."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def originForm(target: bytes) -> tuple[bytes, bytes | None]:
    """
    A request target as an origin server expects it, and the authority it
    named, if any.

    A client that takes the proxy listener for a forward proxy sends the
    absolute form (C{GET http://edge-1:9051/metrics HTTP/1.1}); kubelets
    and most origin servers answer that with C{404}.  RFC 9112 section 3.2
    wants the origin form (C{GET /metrics}) towards an origin, and section
    3.2.2 the target's authority (without user information) as the C{Host}
    in place of the one received.  Any other form (origin, C{*},
    authority) is given back as it is, with no authority.

    @param target: the request target as received.
    @return: C{(target, authority)}: C{b"/metrics", b"edge-1:9051"} for the
        example above; the path is C{/} when the absolute form had none.
    """
    lowered = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = target[len(scheme) :]
            end = len(rest)
            for delimiter in (b"/", b"?"):
                found = rest.find(delimiter)
                if found != -1:
                    end = min(end, found)
            authority = rest[:end].rsplit(b"@", 1)[-1].strip()
            path = rest[end:]
            if not path.startswith(b"/"):
                path = b"/" + path
            return path, authority or None
    return target, None


@frozen
class Route:
    """
    Where a request goes.

    @ivar key: what the client connection is pinned to, e.g.
        C{("edge-1", 10250)}: a later request on the same connection whose
        route has another key is refused with C{421}.
    @ivar endpoint: how to reach the upstream (a tunnel stream, maybe
        wrapped in client TLS).  It is connected on the first request, and
        again when the upstream closed its connection or a request's route
        has another C{destination}.
    @ivar destination: what an upstream connection made for this route
        reaches (for the proxy listeners: the node, what the agent dials,
        the carrier and the name TLS verifies).  A request is sent on the
        upstream connection of an earlier one only when their routes have
        equal destinations; otherwise that connection is closed and a new
        one is made from C{endpoint}, so a router that decides per request
        (by path, say) is obeyed for every request.  C{None}: the C{key}.
    @ivar hostHeader: the C{Host} to send upstream; C{None} keeps the
        client's.
    @ivar description: how logs name the route, e.g.
        C{"10.0.0.7:10250 via node edge-1 (https)"}.
    """

    key: Hashable
    endpoint: IStreamClientEndpoint
    hostHeader: bytes | None = None
    description: str = ""
    destination: Hashable = None

    def reaches(self) -> Hashable:
        """What an upstream connection made for this route reaches: L{destination}, else L{key}."""
        return self.key if self.destination is None else self.destination


class RouteRefused(Exception):
    """
    A router's refusal, answered with C{status} and C{reason} (as a
    C{text/plain} body), logged as one line, and followed by the end of the
    client connection.

    E.g. C{RouteRefused(403, "port 22 is not forwarded")}, or C{502} for a
    node without an agent.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


#: What a router may return: a route, or a Deferred or coroutine that gives one.
RouteResult = Union[Route, "Deferred[Route]", Coroutine[Any, Any, Route]]

#: Routes one request: called with the request head and the client's address.
Router = Callable[[RequestHead, IAddress], RouteResult]

#: Routes a whole connection, given the client's address, when a request's
#: head has nothing to add (see L{HTTPProxyFactory.connectionRouterFor}):
#: a route, a Deferred that gives one, or C{None} (also from the Deferred)
#: for "route each request".
ConnectionRouter = Callable[[IAddress], Union[Route, "Deferred[Route | None]", None]]

#: Given why a route or its upstream failed, the status and reason to
#: answer, or C{None} for "not a failure I know" (then C{502} with the
#: error's text, C{500} if the router itself failed).  The engine knows
#: nothing of tunnels: the proxy listeners tell it what their failures mean.
Explainer = Callable[[BaseException | None], tuple[int, str] | None]


#: Words for the error a connection ended with, given its transport (what
#: the TLS under it recorded), or C{None} to say it as it is
#: (L{twisted_tunnel.tls.failures.describeTransportFailure}).
Describer = Callable[[BaseException | None, object], str | None]


def describeNothing(error: BaseException | None, transport: object) -> str | None:
    """The default L{Describer}: no words of its own."""
    return None


def explainNothing(error: BaseException | None) -> tuple[int, str] | None:
    """The default L{Explainer}: only L{RouteRefused} is known."""
    return None


@frozen
class Limits:
    """
    What a client (or an upstream) may cost us.

    @ivar maxHeaderBytes: the largest request head (request line and
        header fields); larger ones get C{431}.
    @ivar maxHeaders: the most header fields in a request; more get C{431}.
    @ivar headerTimeout: seconds a request head may take to arrive, counted
        from its first byte (or from the connection for the first request):
        a client that trickles its head (slowloris) gets C{408}.
    @ivar idleTimeout: seconds a kept-alive connection may stay idle between
        requests before it is closed, quietly.
    @ivar upstreamTimeout: seconds the upstream may take to connect, and
        then to start its response once the whole request was sent; C{504}
        after that.  C{None}: no limit here (tunnel streams have their own
        open timeout, and a watch may legitimately wait long).
    @ivar maxResponseHeaderBytes: the largest response head taken from an
        upstream; larger is C{502}.
    @ivar lingerTimeout: how long a connection being closed may take to be
        read (an error response) or flushed before it is aborted.
    """

    maxHeaderBytes: int = 16384
    maxHeaders: int = 100
    headerTimeout: float = 30.0
    idleTimeout: float = 90.0
    upstreamTimeout: float | None = None
    maxResponseHeaderBytes: int = 65536
    lingerTimeout: float = 5.0


# -- headers ---------------------------------------------------------------------


def _connectionTokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased options of every C{Connection} field."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"")
    return tokens


def _wantsUpgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Does a message ask to switch protocols (C{Connection: Upgrade} and C{Upgrade})?"""
    items = list(headers)
    return b"upgrade" in _connectionTokens(items) and any(
        name.lower() == b"upgrade" for name, _ in items
    )


def _endToEnd(
    headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """
    The end-to-end fields of a message (original case, original order), and
    whether its body was chunked.  C{Content-Length} is kept unless the
    message was chunked (then the length is unknown: C{Transfer-Encoding}
    wins, RFC 9112 section 6.3); C{Host} is kept even if C{Connection} names
    it, and so is C{Content-Length}: framing and routing are not options.
    """
    items = list(headers)
    tokens = _connectionTokens(items)
    chunked = any(name.lower() == b"transfer-encoding" for name, _ in items)
    kept: list[tuple[bytes, bytes]] = []
    for name, value in items:
        lowered = name.lower()
        if lowered == b"content-length":
            if not chunked:
                kept.append((name, value))
        elif lowered == b"host":
            kept.append((name, value))
        elif lowered in HOP_BY_HOP_HEADERS or lowered in tokens:
            continue
        else:
            kept.append((name, value))
    if upgrade:
        kept.append((b"Connection", b"Upgrade"))
        kept.extend((name, value) for name, value in items if name.lower() == b"upgrade")
    return kept, chunked


def forwardedRequestHeaders(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    hostHeader: bytes | None = None,
    defaultHost: bytes = b"",
) -> list[tuple[bytes, bytes]]:
    """
    The header fields to send upstream for a request that had C{headers}.

    Hop-by-hop fields are removed (L{HOP_BY_HOP_HEADERS} and those that
    C{Connection} names), but C{Connection: Upgrade} and C{Upgrade} are
    kept for a request that asks to upgrade; a chunked body stays chunked
    (h1 writes the chunks again).  C{Host} becomes C{hostHeader} when that
    is given, and C{defaultHost} when the request had none (HTTP/1.1 needs
    one).
    """
    items = list(headers)
    kept, chunked = _endToEnd(items, upgrade=_wantsUpgrade(items))
    result: list[tuple[bytes, bytes]] = []
    hasHost = False
    for name, value in kept:
        if name.lower() == b"host":
            if hasHost:
                continue
            hasHost = True
            value = hostHeader if hostHeader is not None else value
        result.append((name, value))
    if not hasHost:
        result.insert(0, (b"Host", hostHeader if hostHeader is not None else defaultHost))
    if chunked:
        result.append((b"Transfer-Encoding", b"chunked"))
    return result


def forwardedResponseHeaders(
    headers: Iterable[tuple[bytes, bytes]], *, upgrade: bool = False
) -> list[tuple[bytes, bytes]]:
    """
    The header fields to send the client for a response that had
    C{headers}: hop-by-hop fields removed, C{Connection: Upgrade} and
    C{Upgrade} kept for a C{101}.  Framing is left to h1: without a
    C{Content-Length} it chunks for HTTP/1.1 clients and closes for HTTP/1.0.
    """
    kept, _ = _endToEnd(headers, upgrade=upgrade)
    return kept


def _headSize(request: h1.Request) -> int:
    """About how many bytes the head of C{request} took on the wire."""
    size = len(request.method) + len(request.target) + len(b" HTTP/1.1\r\n") + 1 + 2
    for name, value in request.headers.raw_items():
        size += len(name) + len(value) + 4
    return size


# -- reading, paused for reasons -------------------------------------------------


class _Reading:
    """
    Whether we read from one transport, paused for any number of reasons
    at once (routing in progress, the other side pushing back, too much
    pipelined ahead): it reads again only when no reason is left.
    """

    def __init__(self, transport: object) -> None:
        # TCP, TLS and tunnel stream transports are all push producers,
        # though not all of them declare it.
        #: what is paused and resumed
        self.transport: IPushProducer = transport  # type: ignore[assignment]
        self._reasons: set[str] = set()

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self.transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self.transport.resumeProducing()

    def clear(self) -> None:
        if self._reasons:
            self._reasons.clear()
            self.transport.resumeProducing()


@implementer(IPushProducer)
class _PushBack:
    """
    Registered as the producer of one transport, it pauses reading from the
    other while the first one's send buffer is full.

    C{stopProducing} does nothing: how the other side ends is decided by
    whoever saw the first one end (see L{twisted_tunnel.net.relay._Reading}).
    """

    def __init__(self, reading: _Reading) -> None:
        self._reading = reading

    def pauseProducing(self) -> None:
        self._reading.pause("pushed back")

    def resumeProducing(self) -> None:
        self._reading.resume("pushed back")

    def stopProducing(self) -> None:
        pass

    def heldBytes(self) -> int:
        """
        What the other transport holds in memory (a tunnel stream's buffer)
        while this side does not take it: what a listener's limiter counts
        for a client that does not read (L{twisted_tunnel.doors.limits}).
        """
        return heldBytesOf(self._reading.transport)


class _RelayEnd:
    """
    One side of an upgraded connection as a L{Relay} sees it: its
    transport, and whether the other side's back-pressure paused reading
    from it (L{twisted_tunnel.net.relay.RelayEnd}).
    """

    def __init__(self, protocol: Protocol, reading: _Reading | None) -> None:
        self._protocol = protocol
        self._reading = reading

    @property
    def transport(self) -> Any:
        return self._protocol.transport

    @property
    def readingPaused(self) -> bool:
        return self._reading is not None and self._reading.paused


# -- the upstream ------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class _Upstream(Protocol):
    """
    One upstream connection, speaking HTTP/1.1 as a client (h1) for the
    L{HTTPProxyProtocol} that owns it, or relaying raw bytes after an
    upgrade.  Everything it hears goes to its owner; once detached (owner
    C{None}) it only closes.
    """

    def __init__(self, owner: HTTPProxyProtocol) -> None:
        self.owner: HTTPProxyProtocol | None = owner
        self.clock = owner.clock
        self.lingerTimeout = owner.limits.lingerTimeout
        self.codec = h1.Connection(
            h1.CLIENT, max_incomplete_event_size=owner.limits.maxResponseHeaderBytes
        )
        self.exchanges = 0
        self.receivedThisExchange = 0
        self.readClosed = False
        self.writeClosed = False
        self.lost = False
        self.producerRegistered = False
        self.reading: _Reading | None = None
        #: what this connection reaches (L{Route.reaches} of the route it was made for)
        self.destination: Hashable = None
        self._closeTimer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        noDelay(self.transport)
        self.reading = _Reading(self.transport)
        if self.owner is not None:
            self.owner._upstreamMade(self)

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return  # not the end of the input, which h1 would take it for
        self.receivedThisExchange += len(data)
        if self.owner is not None:
            self.owner._upstreamData(self, data)

    def readConnectionLost(self) -> None:
        self.readClosed = True
        if self.owner is not None:
            self.owner._upstreamEOF(self)
        else:
            self.closeIfShut()

    def writeConnectionLost(self) -> None:
        self.writeClosed = True
        self.closeIfShut()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.lost = True
        self.connected = False
        timer, self._closeTimer = self._closeTimer, None
        if timer is not None and timer.active():
            timer.cancel()
        if self.owner is not None:
            self.owner._upstreamLost(self, reason)

    def send(self, event: h1.Event) -> None:
        """Write one HTTP event to the upstream."""
        data = self.codec.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def closeIfShut(self) -> None:
        """Both halves are shut: TCP will not close such a connection by itself."""
        if self.readClosed and self.writeClosed and not self.lost:
            self.close()

    def close(self, abort: bool = False) -> None:
        """
        Detach from the owner and close: gracefully, or (C{abort}) with a
        reset once what was written has been sent (L{abortWhenSent}); an
        abort ends either if it takes longer than the linger timeout.
        """
        self.owner = None
        transport = self.transport
        if self.lost or transport is None:
            return
        if self.producerRegistered:
            self.producerRegistered = False
            transport.unregisterProducer()  # type: ignore[attr-defined]
        abortConnection = getattr(transport, "abortConnection", None)
        if abort and abortConnection is not None:
            # after what the client said before it went (bounded like a close)
            abortWhenSent(transport)
        else:
            transport.loseConnection()
        if abortConnection is not None and self._closeTimer is None and not self.lost:
            self._closeTimer = self.clock.callLater(self.lingerTimeout, self._closeTimedOut)

    def _closeTimedOut(self) -> None:
        self._closeTimer = None
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _UpstreamFactory(Factory):
    """Builds the upstream end of one client connection.  Quiet: one per connection."""

    noisy = False

    def __init__(self, owner: HTTPProxyProtocol) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> _Upstream:
        upstream = _Upstream(self.owner)
        upstream.factory = self
        return upstream


# -- the client connection ---------------------------------------------------------


class _Phase(enum.Enum):
    HEAD = "waiting for a request head"
    ROUTING = "routing the request and connecting the upstream"
    SPLICING = "connecting the upstream of a connection routed as a whole"
    FORWARDING = "forwarding a request and its response"
    RELAYING = "relaying an upgraded connection"
    CLOSING = "closing"
    CLOSED = "closed"


_ENDED = frozenset({_Phase.CLOSING, _Phase.CLOSED})  # an aborted client gets nothing more


@define
class _Exchange:
    """
    One request and its response, from the head to the end: replaced whole
    when the next begins, so nothing of one exchange leaks into the next.

    @ivar request: the request head as parsed, once it arrived.
    @ivar head: what the router was shown of it.
    @ivar requestDone: its body has all arrived.
    @ivar requestBodyBytes: how much of its body arrived.
    @ivar requestChunked: the client sent its body chunked (so its
        trailers go upstream too).
    @ivar responseStarted: the response head went to the client.
    @ivar responseDone: the response has all gone to the client.
    @ivar responseChunked: the response body goes to the client chunked.
    @ivar responseFramed: the client can tell where the response ends (a
        length, or chunking): cut short, it is closed, not aborted.
    @ivar closeAfterResponse: the client connection ends with this response.
    @ivar retried: it was sent again on a new upstream connection.
    @ivar replaying: it is being sent again now.
    """

    request: h1.Request | None = None
    head: RequestHead | None = None
    requestDone: bool = False
    requestBodyBytes: int = 0
    requestChunked: bool = False
    responseStarted: bool = False
    responseDone: bool = False
    responseChunked: bool = False
    responseFramed: bool = False
    closeAfterResponse: bool = False
    retried: bool = False
    replaying: bool = False


class _ClientTimer(enum.Enum):
    """What the client connection's one timer is counting down."""

    HEADER = "the request head must be complete (slowloris)"
    IDLE = "a kept-alive connection waits for its next request"
    LINGER = "our close must be finished, or we abort"


@implementer(IHalfCloseableProtocol)
class HTTPProxyProtocol(Protocol):
    """
    One client connection of a proxy listener: reads requests (h1, server
    role), routes each, forwards it to the upstream the connection is
    pinned to, and passes the response back (h1, client role, then server
    role again) or, after a C{101}, relays raw bytes.

    One request is in flight at a time (HTTP/1.1 has no multiplexing); what
    a client pipelines behind it waits in h1's buffer, and we stop reading
    once that exceeds a request head's worth.
    """

    def __init__(self, factory: HTTPProxyFactory) -> None:
        self.factory = factory
        self.proxy = factory
        self.router: Router | None = None  # made for the first request
        self.clock = factory.clock
        self.limits = factory.limits
        self.log = factory.log
        self._phase = _Phase.HEAD
        self._server = h1.Connection(
            h1.SERVER, max_incomplete_event_size=self.limits.maxHeaderBytes
        )
        self._reading: _Reading | None = None
        #: the upgraded connection, held to its deadlines, while RELAYING
        self._relay: Relay | None = None
        self._peerAddress: IAddress | None = None
        self._peer = "-"
        self._timer: IDelayedCall | None = None
        self._timerKind: _ClientTimer | None = None
        self._upstreamTimer: IDelayedCall | None = None
        self._upstreamTimedOut = False
        self._pending: Deferred[Any] | None = None
        self._pinned = False
        self._pinnedKey: Hashable = None
        self._pinnedDescription = ""
        self._route: Route | None = None
        self._upstream: _Upstream | None = None
        self._processingClient = False
        self._processingUpstream = False
        # while the upstream's bytes are turned into events, what they make
        # for the client is collected here and written once (one send, not
        # one per head, body and end); every other write and every close
        # flushes it first, so nothing overtakes it
        self._clientOut: list[bytes] | None = None
        self._clientReadClosed = False
        self._clientWriteClosed = False
        #: routes the whole connection at its first bytes, when the factory can
        self._connectionRouter: ConnectionRouter | None = None
        #: what the client sent while the upstream of its connection connects
        self._held: list[bytes] = []
        self._heldSize = 0
        #: the upstream of the connection, made before its open was
        #: answered (an early stream): what the client sends goes to it at
        #: once, and is held too, for the answer if the open fails
        self._early: _Upstream | None = None
        #: why the upstream of the connection could not be connected: the
        #: answer to its first request
        self._spliceRefusal: tuple[int, str] | None = None
        self._resetExchange()

    def _resetExchange(self) -> None:
        """Forget the request that was in flight: a new cycle begins."""
        self._exchange = _Exchange()

    # -- the client connection -----------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self._connectionRouter = self.proxy.connectionRouterFor(transport)
        noDelay(transport)
        self._reading = _Reading(transport)
        self._peerAddress = transport.getPeer()
        self._peer = addressLabel(self._peerAddress)
        # the first request head must arrive in time, too: a client that
        # connects and says nothing holds a connection like any slowloris
        self._setTimer(_ClientTimer.HEADER)

    def dataReceived(self, data: bytes) -> None:
        if not data:
            # h1, like h11, takes b"" for the end of the input; an empty read
            # is not one (found by the fuzzer: the next read then raised)
            return
        phase = self._phase
        if phase is _Phase.RELAYING:
            if self._relay is not None:
                self._relay.moved += len(data)
            upstream = self._upstream
            if upstream is not None and upstream.transport is not None:
                upstream.transport.write(data)
            return
        if phase is _Phase.SPLICING:
            self._hold(data)
            return
        if phase is _Phase.CLOSING or phase is _Phase.CLOSED:
            return  # drained and dropped, so that the client reads our answer
        connectionRouter = self._connectionRouter
        if connectionRouter is not None:
            self._connectionRouter = None
            if self._routeConnection(connectionRouter, data):
                return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        """Feed what the client sent to h1, and act on what it makes of it."""
        if self._exchange.requestDone and self._server.their_state is h1.MUST_CLOSE:
            # after a request that ends the connection (Connection: close,
            # HTTP/1.0) nothing more is read as HTTP: dropped, as nginx does
            return
        if self._phase is _Phase.HEAD and self._timerKind is _ClientTimer.IDLE:
            # the first byte of the next request: its head must now be
            # complete within the header timeout
            self._setTimer(_ClientTimer.HEADER)
        self._server.receive_data(data)
        self._processClient()
        if (
            (self._phase is _Phase.ROUTING or self._exchange.requestDone)
            and self._server.buffered > self.limits.maxHeaderBytes
            and self._reading is not None
        ):
            # sent ahead of what we can forward now (a body while the route is
            # being found, or the next request, pipelined): held by h1 until
            # then, so read no more.  Measured after parsing, on what h1
            # holds: a read that completes a head may carry more behind it
            # (found by the fuzzer: counting reads let the next one in whole).
            self._reading.pause("ahead")

    def readConnectionLost(self) -> None:
        self._clientReadClosed = True
        phase = self._phase
        if phase is _Phase.RELAYING:
            if self._relay is not None:
                self._relay.halfClose()
            upstream = self._upstream
            if upstream is not None:
                halfClose(upstream.transport)
            self._closeIfShut()
        elif phase is _Phase.CLOSING:
            self._loseClient()
        elif phase is _Phase.SPLICING:
            pass  # passed on behind what the client sent, once connected
        elif phase is _Phase.HEAD:
            # h1 decides what the EOF means: a client done with the
            # connection, or a truncated request head
            self._server.receive_data(b"")
            self._processClient()
        elif phase is not _Phase.CLOSED:
            # An HTTP client does not half-close while it waits for an answer
            # (nginx and Go's server read an EOF the same way): it has left.
            # Stop whatever was going on for it upstream.
            request = self._exchange.request
            self.log.debug(
                "client {peer} left before the response to {method} {target} was complete",
                peer=self._peer,
                method=printable(request.method if request else b"-"),
                target=printable(request.target if request else b"-"),
            )
            self._loseClient()

    def writeConnectionLost(self) -> None:
        self._clientWriteClosed = True
        if self._phase is _Phase.RELAYING:
            self._closeIfShut()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if not reason.check(ConnectionDone):
            self._reportFailure(reason)
        phase, self._phase = self._phase, _Phase.CLOSED
        self.connected = False
        self._cancelTimer()
        self._cancelUpstreamTimer()
        self._forgetRelay()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        early, self._early = self._early, None
        if early is not None and not early.lost:
            early.close(abort=not reason.check(ConnectionDone))
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        if (
            phase is _Phase.FORWARDING
            and self._exchange.responseStarted
            and not self._exchange.responseDone
        ):
            self.log.debug(
                "client {peer} left during the response to {method} {target}",
                peer=self._peer,
                method=printable(
                    self._exchange.request.method if self._exchange.request else b"-"
                ),
                target=printable(
                    self._exchange.request.target if self._exchange.request else b"-"
                ),
            )
        # a clean end is passed on as a clean end (a relayed EOF, a stream
        # CLOSE); anything else aborts the other side too
        upstream.close(abort=not reason.check(ConnectionDone))

    # -- requests --------------------------------------------------------------------

    def _processClient(self) -> None:
        """Act on every event h1 can give now, until a request needs waiting for."""
        if self._processingClient:
            return  # the loop further up the stack picks up whatever is new
        self._processingClient = True
        try:
            server = self._server
            while self._phase is _Phase.HEAD or self._phase is _Phase.FORWARDING:
                if self._exchange.requestDone and server.their_state is h1.MUST_CLOSE:
                    # The client's last request is in (Connection: close, or
                    # HTTP/1.0): what it sent after it is not parsed, so it
                    # cannot turn the answer to that request into a 400.
                    # Answer it, then close (nginx does the same).
                    return
                try:
                    event = server.next_event()
                except h1.RemoteProtocolError as e:
                    self._badRequest(e)
                    return
                if event is h1.NEED_DATA or event is h1.PAUSED:
                    return
                if isinstance(event, h1.Request):
                    self._requestReceived(event)
                elif isinstance(event, h1.Data):
                    self._exchange.requestBodyBytes += len(event.data)
                    self._toUpstream(h1.Data(data=event.data))
                elif isinstance(event, h1.EndOfMessage):
                    self._requestEnded(event)
                elif isinstance(event, h1.ConnectionClosed):
                    if self._phase is _Phase.HEAD:
                        # the client is done with the connection
                        self._loseClient()
                    return
        finally:
            self._processingClient = False

    def _requestReceived(self, request: h1.Request) -> None:
        self._cancelTimer()
        self._exchange.request = request
        self._exchange.head = RequestHead(
            method=request.method,
            target=request.target,
            headers=tuple((name, value) for name, value in request.headers),
            httpVersion=request.http_version,
        )
        self._exchange.requestChunked = any(
            name == b"transfer-encoding" for name, _ in request.headers
        )
        limits = self.limits
        if len(request.headers) > limits.maxHeaders:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"more than {limits.maxHeaders} header fields",
            )
            return
        if _headSize(request) > limits.maxHeaderBytes:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head larger than {limits.maxHeaderBytes} bytes",
            )
            return
        if request.method == b"CONNECT":
            self._refuse(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "this proxy forwards requests to a node; CONNECT is not supported here",
            )
            return
        if self._spliceRefusal is not None:
            # the connection was routed as a whole and its upstream failed:
            # this is that failure's answer (not a second attempt)
            self._refuse(*self._spliceRefusal)
            return
        # We keep reading while the request is routed and its upstream
        # connected (up to a head's worth, see dataReceived): a socket the
        # reactor does not read cannot tell us that the client has left, and
        # we must know that to cancel the connection attempt.
        self._phase = _Phase.ROUTING
        try:
            router = self.router
            if router is None:
                # made now, not at connectionMade: a connection routed as a
                # whole never needs one
                router = self.router = self.proxy.routerFor(self.transport)  # type: ignore[arg-type]
            route = router(self._exchange.head, self._peerAddress)  # type: ignore[arg-type]
        except Exception:
            self._routingFailed(Failure())
            return
        if isinstance(route, Coroutine):
            route = ensureDeferred(route)
        if isinstance(route, Deferred):
            self._pending = route
            route.addCallbacks(self._routed, self._routingFailed)
        else:
            # decided at once (every built-in policy does): no Deferred
            self._routed(route)

    def _routed(self, route: object) -> None:
        self._pending = None
        if self._phase is not _Phase.ROUTING:
            return
        if not isinstance(route, Route):
            self.log.error(
                "the router of an HTTP proxy returned {route!r}, not a Route",
                route=route,
            )
            self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return
        if self._pinned and route.key != self._pinnedKey:
            self._route = route
            self._refuse(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"this connection goes to {self._pinnedDescription or repr(self._pinnedKey)}; "
                f"open a new connection for {route.description or repr(route.key)}",
            )
            return
        if not self._pinned:
            self._pin(route)
        self._route = route
        upstream = self._upstream
        if upstream is not None and not upstream.lost:
            if upstream.destination == route.reaches():
                self._sendRequest()
                return
            # The router sent this request elsewhere than the last one (a
            # policy that decides by path, say): never reuse a connection
            # made for another destination.  It is idle (one request at a
            # time), so it closes cleanly.
            self.log.debug(
                "{peer}: {route} is not where the previous request went; new upstream connection",
                peer=self._peer,
                route=self._routeName(),
            )
            self._detachUpstream()
        self._connect()

    def _pin(self, route: Route) -> None:
        """The connection goes where C{route} goes, from now on (a later route elsewhere: 421)."""
        self._pinned = True
        self._pinnedKey = route.key
        self._pinnedDescription = route.description

    def _explain(self, error: BaseException | None) -> tuple[int, str] | None:
        """The status and reason for a failure we expect, or C{None}."""
        if isinstance(error, RouteRefused):
            return error.status, error.reason
        return self.proxy.explain(error)

    def _routingFailed(self, failure: Failure) -> None:
        self._pending = None
        if self._phase is not _Phase.ROUTING:
            return  # the client left; the routing was cancelled
        known = self._explain(failure.value)
        if known is not None:
            self._refuse(*known)
            return
        self.log.failure(
            "the router of an HTTP proxy failed on {method} {target} from {peer}",
            failure,
            method=printable(self._exchange.head.method if self._exchange.head else b"-"),
            target=printable(self._exchange.head.target if self._exchange.head else b"-"),
            peer=self._peer,
        )
        self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    # -- a connection routed as a whole -----------------------------------------------

    def _routeConnection(self, router: ConnectionRouter, data: bytes) -> bool:
        """
        The client's first bytes arrived and the factory may route the
        whole connection (L{HTTPProxyFactory.connectionRouterFor}): ask,
        and if it answers with a route, connect that route's upstream and
        relay the connection as bytes, parsing no HTTP.

        Routed at the first bytes, not at the accept: behind TLS they come
        only once the client's certificate has been checked, so a client
        without one never makes us open a stream (or a TLS connection with
        the proxy client certificate) towards a node.

        @return: whether C{data} was taken (held until the upstream is
            connected); C{False}: route each request, as without a
            connection router.
        """
        try:
            route = router(self._peerAddress)  # type: ignore[arg-type]
        except Exception:
            self.log.failure("routing a connection from {peer} failed", peer=self._peer)
            return False
        if route is None:
            return False
        self._phase = _Phase.SPLICING
        self._cancelTimer()  # the upstream timer, if any, counts from here
        self._hold(data)
        if isinstance(route, Deferred):
            self._pending = route
            route.addCallbacks(self._connectionRouted, self._connectionRoutingFailed)
        else:
            self._connectionRouted(route)
        return True

    def _connectionRouted(self, route: Route | None) -> None:
        self._pending = None
        if self._phase is not _Phase.SPLICING:
            return  # the client left
        if route is None:
            self._unsplice()
            return
        if not isinstance(route, Route):
            self.log.error(
                "the connection router of an HTTP proxy returned {route!r}, not a Route",
                route=route,
            )
            self._unsplice()
            return
        self._pin(route)
        self._route = route
        self._connect()

    def _connectionRoutingFailed(self, failure: Failure) -> None:
        self._pending = None
        if self._phase is not _Phase.SPLICING:
            return
        self.log.failure("routing a connection from {peer} failed", failure, peer=self._peer)
        self._unsplice()

    def _hold(self, data: bytes) -> None:
        """Keep what the client sends while its upstream connects, a head's worth at most."""
        early = self._early
        if early is not None and early.transport is not None:
            early.transport.write(data)
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize > self.limits.maxHeaderBytes and self._reading is not None:
            self._reading.pause("ahead")

    def _upstreamMade(self, upstream: _Upstream) -> None:
        """
        An upstream is connected before its connection attempt fired: a
        stream opened early (the proxy listeners open one so for a
        connection routed as a whole), whose open is not answered yet.
        What the client sent so far follows the OPEN now, a round trip
        sooner; it is still held until the answer comes.
        """
        if self._phase is not _Phase.SPLICING or self._early is not None:
            return
        self._early = upstream
        if upstream.transport is not None:
            for data in self._held:
                upstream.transport.write(data)

    def _unsplice(self) -> None:
        """
        The connection cannot be relayed as a whole: handle it request by
        request, starting with what it sent so far.  When its upstream
        failed, the first request is answered with that failure
        (L{_spliceRefusal}), as the same request routed alone would be.
        """
        held, self._held, self._heldSize = b"".join(self._held), [], 0
        self._phase = _Phase.HEAD
        self._setTimer(_ClientTimer.HEADER)
        if self._reading is not None:
            self._reading.resume("ahead")
        if held:
            self._parse(held)
        if self._clientReadClosed and self._phase not in _ENDED:
            self.readConnectionLost()  # what its EOF means depends on where we are now

    # -- the upstream connection ----------------------------------------------------

    def _connect(self) -> None:
        route = self._route
        assert route is not None
        self._upstreamTimedOut = False
        self._startUpstreamTimer()
        try:
            connecting: Deferred[Any] = route.endpoint.connect(_UpstreamFactory(self))
        except Exception:
            connecting = fail()
        self._pending = connecting
        connecting.addCallbacks(self._upstreamConnected, self._connectFailed)

    def _upstreamConnected(self, upstream: _Upstream) -> None:
        self._pending = None
        self._cancelUpstreamTimer()
        if self._phase is not _Phase.ROUTING and self._phase is not _Phase.SPLICING:
            upstream.close()  # the client left as the connection came up
            return
        if upstream.lost or upstream.transport is None:
            self._refuse(HTTPStatus.BAD_GATEWAY, f"{self._routeName()} closed at once")
            return
        transport = self.transport
        assert transport is not None and upstream.reading is not None
        assert self._reading is not None
        self._upstream = upstream
        assert self._route is not None
        upstream.destination = self._route.reaches()
        # each side's send buffer paces reading from the other
        upstream.transport.registerProducer(_PushBack(self._reading), True)  # type: ignore[attr-defined]
        upstream.producerRegistered = True
        transport.registerProducer(_PushBack(upstream.reading), True)  # type: ignore[attr-defined]
        if self._phase is _Phase.SPLICING:
            held, self._held, self._heldSize = b"".join(self._held), [], 0
            early, self._early = self._early, None
            if early is upstream:
                held = b""  # it has them already
            self._relayWith(upstream, held, self._clientReadClosed, b"", False)
        else:
            self._sendRequest()

    def _connectFailed(self, failure: Failure) -> None:
        self._pending = None
        self._cancelUpstreamTimer()
        if self._phase is _Phase.SPLICING:
            early, self._early = self._early, None
            if early is not None and not early.lost:
                early.close(abort=True)  # what it was given goes nowhere
            self._spliceRefusal = self._connectRefusal(failure)
            self._unsplice()
        elif self._phase is _Phase.ROUTING:
            self._refuse(*self._connectRefusal(failure))

    def _connectRefusal(self, failure: Failure) -> tuple[int, str]:
        """The status and reason that answer a failed upstream connection."""
        name = self._routeName()
        if failure.check(CancelledError) and self._upstreamTimedOut:
            return (
                HTTPStatus.GATEWAY_TIMEOUT,
                f"{name} did not connect within {self.limits.upstreamTimeout:g}s",
            )
        error = failure.value
        known = self._explain(error)
        if known is not None:
            return known
        if isinstance(error, ConnectTimeoutError):
            return HTTPStatus.GATEWAY_TIMEOUT, f"cannot connect to {name}: timed out"
        return HTTPStatus.BAD_GATEWAY, f"cannot connect to {name}: {_describe(error)}"

    def _sendRequest(self) -> None:
        """Send the head of the request in flight upstream, then its body as it comes."""
        request, route, upstream = self._exchange.request, self._route, self._upstream
        assert request is not None and route is not None and upstream is not None
        target, authority = originForm(request.target)
        headers = forwardedRequestHeaders(
            request.headers.raw_items(),
            hostHeader=route.hostHeader if route.hostHeader is not None else authority,
            defaultHost=_hostOf(upstream.transport),
        )
        try:
            upstream.send(h1.Request(method=request.method, target=target, headers=headers))
        except h1.LocalProtocolError as e:
            self._refuse(HTTPStatus.BAD_REQUEST, f"cannot forward this request: {e}")
            return
        self._phase = _Phase.FORWARDING
        assert self._reading is not None
        self._reading.resume("ahead")
        if self._exchange.replaying:
            # the request (without a body) was complete before: send it all
            self._toUpstream(h1.EndOfMessage())
            self._startUpstreamTimer()
        self._processClient()

    def _toUpstream(self, event: h1.Event) -> None:
        upstream = self._upstream
        if upstream is None or upstream.lost:
            return  # answered early and gone: what is left of the body is dropped
        try:
            upstream.send(event)
        except h1.LocalProtocolError as e:
            self._internalError(f"cannot forward the request body: {e}")

    def _requestEnded(self, end: h1.EndOfMessage) -> None:
        self._exchange.requestDone = True
        trailers = end.headers if self._exchange.requestChunked else []
        self._toUpstream(h1.EndOfMessage(headers=list(trailers)))
        if self._exchange.responseDone:
            self._exchangeEnded()
        elif not self._exchange.responseStarted:
            self._startUpstreamTimer()

    def _upstreamData(self, upstream: _Upstream, data: bytes) -> None:
        if upstream is not self._upstream:
            return
        if self._phase is _Phase.RELAYING:
            if self._relay is not None:
                self._relay.moved += len(data)
            if self.transport is not None:
                self.transport.write(data)
            return
        if self._phase is not _Phase.FORWARDING:
            # an upstream speaks only when spoken to
            self.log.debug(
                "{route} sent {size} bytes between requests; closing it",
                route=self._routeName(),
                size=len(data),
            )
            self._detachUpstream()
            return
        upstream.codec.receive_data(data)
        self._processUpstream()

    def _upstreamEOF(self, upstream: _Upstream) -> None:
        if upstream is not self._upstream:
            upstream.closeIfShut()
            return
        if self._phase is _Phase.RELAYING:
            if self._relay is not None:
                self._relay.halfClose()
            halfClose(self.transport)
            upstream.closeIfShut()
            return
        # an upstream that stopped sending cannot serve another request; the
        # EOF may end a connection-delimited response (HTTP/1.0 style)
        upstream.codec.receive_data(b"")
        if self._phase is _Phase.FORWARDING:
            self._processUpstream()
        if upstream is self._upstream:
            self._detachUpstream(lost=True)
            self._upstreamGone(upstream, None)

    def _upstreamLost(self, upstream: _Upstream, reason: Failure) -> None:
        if upstream is not self._upstream:
            return
        if self._phase is _Phase.RELAYING:
            # end the client the way the upstream ended (bounded by the
            # linger timer, not by the relay's deadlines any more)
            self._forgetRelay()
            self._detachUpstream(lost=True)
            self._loseClient(reset=not reason.check(ConnectionDone))
            return
        if self._phase is _Phase.FORWARDING and not upstream.readClosed:
            upstream.readClosed = True
            upstream.codec.receive_data(b"")
            self._processUpstream()
        if upstream is self._upstream:
            self._detachUpstream(lost=True)
            self._upstreamGone(upstream, reason)

    def _upstreamGone(self, upstream: _Upstream, reason: Failure | None) -> None:
        """
        The upstream closed with a request in flight and its response not
        done: retry, answer C{502}, or cut a response short.
        """
        if self._phase is not _Phase.FORWARDING:
            return  # idle: a kept-alive upstream may close whenever it likes
        why = ""
        if reason is not None and not reason.check(ConnectionDone):
            words = self.factory.describeFailure(reason.value, upstream.transport)
            why = f": {words if words is not None else _describe(reason.value)}"
        request = self._exchange.request
        assert request is not None
        if not self._exchange.responseStarted:
            if (
                upstream.exchanges > 0
                and upstream.receivedThisExchange == 0
                and self._exchange.requestDone
                and self._exchange.requestBodyBytes == 0
                and request.method in _RETRYABLE_METHODS
                and not self._exchange.retried
            ):
                self.log.debug(
                    "{route} closed a kept-alive connection as {method} {target} was sent; "
                    "sending it again on a new connection",
                    route=self._routeName(),
                    method=printable(request.method),
                    target=printable(request.target),
                )
                self._exchange.retried = True
                self._exchange.replaying = True
                self._phase = _Phase.ROUTING
                self._connect()
                return
            self._refuse(
                HTTPStatus.BAD_GATEWAY,
                f"{self._routeName()} closed the connection before answering{why}",
            )
            return
        self.log.warn(
            "{route} ended the response to {method} {target} from {peer} before its end{why}",
            route=self._routeName(),
            method=printable(request.method),
            target=printable(request.target),
            peer=self._peer,
            why=printable(why, 500),
        )
        self._cutShort()

    # -- responses -------------------------------------------------------------------

    def _processUpstream(self) -> None:
        if self._processingUpstream:
            return
        self._processingUpstream = True
        self._clientOut = []
        try:
            while self._phase is _Phase.FORWARDING:
                upstream = self._upstream
                if upstream is None:
                    return
                try:
                    event = upstream.codec.next_event()
                except h1.RemoteProtocolError as e:
                    if upstream.readClosed:
                        return  # its EOF came too early: for _upstreamGone to say
                    self._badResponse(f"{self._routeName()} sent a malformed response: {e}")
                    return
                if event is h1.NEED_DATA or event is h1.PAUSED:
                    return
                if isinstance(event, h1.InformationalResponse):
                    if event.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
                        self._switchProtocols(upstream, event)
                        return
                    self._toClient(
                        h1.InformationalResponse(
                            status_code=event.status_code,
                            headers=forwardedResponseHeaders(event.headers.raw_items()),
                            reason=event.reason,
                        )
                    )
                elif isinstance(event, h1.Response):
                    self._responseReceived(event)
                elif isinstance(event, h1.Data):
                    self._toClient(h1.Data(data=event.data))
                elif isinstance(event, h1.EndOfMessage):
                    self._responseEnded(event)
                elif isinstance(event, h1.ConnectionClosed):
                    return
        finally:
            self._processingUpstream = False
            self._flushClient()

    def _responseReceived(self, response: h1.Response) -> None:
        self._cancelUpstreamTimer()
        request = self._exchange.request
        assert request is not None
        headers = forwardedResponseHeaders(response.headers.raw_items())
        if not self._exchange.requestDone:
            # answered before the whole request came (a 413, a 401): the
            # rest of the body may never be read, so this is the last
            # response on the connection
            headers.append((b"Connection", b"close"))
            self._exchange.closeAfterResponse = True
        hasLength = any(name.lower() == b"content-length" for name, _ in headers)
        self._exchange.responseFramed = hasLength or self._server.their_http_version == b"1.1"
        self._exchange.responseChunked = (
            request.method != b"HEAD"
            and response.status_code not in (204, 304)
            and not hasLength
            and self._server.their_http_version == b"1.1"
        )
        self._exchange.responseStarted = True
        self._toClient(
            h1.Response(status_code=response.status_code, headers=headers, reason=response.reason)
        )

    def _responseEnded(self, end: h1.EndOfMessage) -> None:
        trailers = list(end.headers) if self._exchange.responseChunked else []
        self._toClient(h1.EndOfMessage(headers=trailers))
        self._exchange.responseDone = True
        if self._phase is _Phase.FORWARDING:
            self._exchangeEnded()

    def _exchangeEnded(self) -> None:
        """The response is out: keep both connections for the next request, or close."""
        if self._exchange.closeAfterResponse and not self._exchange.requestDone:
            self._closeClient()
            return
        upstream = self._upstream
        if upstream is not None:
            upstream.exchanges += 1
            upstream.receivedThisExchange = 0
            if upstream.codec.our_state is h1.DONE and upstream.codec.their_state is h1.DONE:
                upstream.codec.start_next_cycle()
            else:
                self._detachUpstream()  # it said Connection: close, or spoke HTTP/1.0
        server = self._server
        if server.our_state is not h1.DONE or server.their_state is not h1.DONE:
            # Connection: close, HTTP/1.0, or the client's EOF
            self._closeClient()
            return
        server.start_next_cycle()
        self._resetExchange()
        self._phase = _Phase.HEAD
        assert self._reading is not None
        self._reading.resume("ahead")
        if server.trailing_data[0]:
            self._setTimer(_ClientTimer.HEADER)
        else:
            self._setTimer(_ClientTimer.IDLE)
        self._processClient()

    def _toClient(self, event: h1.Event) -> None:
        try:
            data = self._server.send(event)
        except h1.LocalProtocolError as e:
            self._internalError(f"cannot pass the response on: {e}")
            return
        if data and self.transport is not None:
            if self._clientOut is not None:
                self._clientOut.append(data)
            else:
                self.transport.write(data)

    def _flushClient(self) -> None:
        """Write what the response processing collected for the client."""
        out, self._clientOut = self._clientOut, None
        if out and self.transport is not None and self._phase not in _ENDED:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _switchProtocols(self, upstream: _Upstream, switch: h1.InformationalResponse) -> None:
        """
        The upstream said C{101}: pass it on, then relay raw bytes, first
        those either side had sent ahead (they sit in the h1 buffers).
        """
        self._cancelUpstreamTimer()
        headers = forwardedResponseHeaders(switch.headers.raw_items(), upgrade=True)
        try:
            data = self._server.send(
                h1.InformationalResponse(status_code=101, headers=headers, reason=switch.reason)
            )
        except h1.LocalProtocolError as e:
            self._refuse(
                HTTPStatus.BAD_GATEWAY,
                f"{self._routeName()} switched protocols unasked: {e}",
            )
            return
        self._flushClient()
        transport = self.transport
        assert transport is not None and self._reading is not None
        request = self._exchange.request
        self.log.debug(
            "{method} {target} from {peer} to {route}: upgraded to {protocol}",
            method=printable(request.method if request else b"-"),
            target=printable(request.target if request else b"-"),
            peer=self._peer,
            route=self._routeName(),
            protocol=printable(b", ".join(v for n, v in switch.headers if n == b"upgrade")),
        )
        clientAhead, clientEOF = self._server.trailing_data
        upstreamAhead, upstreamEOF = upstream.codec.trailing_data
        transport.write(data)
        self._relayWith(upstream, clientAhead, clientEOF, upstreamAhead, upstreamEOF)

    def _relayWith(
        self,
        upstream: _Upstream,
        clientAhead: bytes,
        clientEOF: bool,
        upstreamAhead: bytes,
        upstreamEOF: bool,
    ) -> None:
        """
        Relay raw bytes between the client and C{upstream} from now on,
        first those either side sent ahead, and the half-closes either
        already made.
        """
        transport = self.transport
        assert transport is not None and self._reading is not None
        self._phase = _Phase.RELAYING
        self._cancelTimer()
        self._reading.resume("ahead")
        reaper = self.factory.reaper
        if reaper is not None:
            # no HTTP timer runs from now on: an exec session may be quiet
            # for hours, and end by a close the paused side cannot see
            self._relay = Relay(
                _RelayEnd(self, self._reading), _RelayEnd(upstream, upstream.reading)
            )
            self._relay.moved += len(clientAhead) + len(upstreamAhead)
            if clientEOF or upstreamEOF:
                self._relay.halfClose()
            reaper.add(self._relay)
        if upstreamAhead:
            transport.write(upstreamAhead)
        if clientAhead and upstream.transport is not None:
            upstream.transport.write(clientAhead)
        if clientEOF:
            halfClose(upstream.transport)
        if upstreamEOF:
            halfClose(transport)
            upstream.closeIfShut()
        self._closeIfShut()

    # -- relaying --------------------------------------------------------------------

    def _forgetRelay(self) -> None:
        """The upgraded connection is ending: its deadlines no longer apply."""
        relay, self._relay = self._relay, None
        reaper = self.factory.reaper
        if relay is not None and reaper is not None:
            reaper.discard(relay)

    def _closeIfShut(self) -> None:
        if self._clientReadClosed and self._clientWriteClosed:
            self._loseClient()

    # -- timers ------------------------------------------------------------------------

    def _setTimer(self, kind: _ClientTimer) -> None:
        """Count down C{kind} (replacing whatever the timer counted), with its limit."""
        self._cancelTimer()
        limits = self.limits
        delay, then = {
            _ClientTimer.HEADER: (limits.headerTimeout, self._headerTimedOut),
            _ClientTimer.IDLE: (limits.idleTimeout, self._idleTimedOut),
            _ClientTimer.LINGER: (limits.lingerTimeout, self._abortClient),
        }[kind]
        self._timerKind = kind
        self._timer = self.clock.callLater(delay, self._timerFired, then)

    def _timerFired(self, then: Callable[[], None]) -> None:
        self._timer, self._timerKind = None, None
        then()

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        self._timerKind = None
        if timer is not None and timer.active():
            timer.cancel()

    def _headerTimedOut(self) -> None:
        if self._phase is _Phase.HEAD:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"no complete request head within {self.limits.headerTimeout:g}s",
            )

    def _idleTimedOut(self) -> None:
        if self._phase is _Phase.HEAD:
            self.log.debug(
                "client {peer} idle for {timeout:g}s; closing",
                peer=self._peer,
                timeout=self.limits.idleTimeout,
            )
            self._closeClient()

    def _startUpstreamTimer(self) -> None:
        timeout = self.limits.upstreamTimeout
        self._cancelUpstreamTimer()
        if timeout is not None:
            self._upstreamTimer = self.clock.callLater(timeout, self._upstreamTimerFired)

    def _cancelUpstreamTimer(self) -> None:
        timer, self._upstreamTimer = self._upstreamTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _upstreamTimerFired(self) -> None:
        self._upstreamTimer = None
        if (
            self._phase is _Phase.ROUTING or self._phase is _Phase.SPLICING
        ) and self._pending is not None:
            self._upstreamTimedOut = True
            self._pending.cancel()  # _connectFailed answers 504
        elif self._phase is _Phase.FORWARDING and not self._exchange.responseStarted:
            self._refuse(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"{self._routeName()} did not answer within {self.limits.upstreamTimeout:g}s",
            )

    # -- ending ----------------------------------------------------------------------

    def _badRequest(self, error: h1.RemoteProtocolError) -> None:
        status = error.error_status_hint
        if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            reason = f"request head larger than {self.limits.maxHeaderBytes} bytes"
        elif self._clientReadClosed:
            reason = f"the client closed the connection within a request ({error})"
        else:
            reason = f"bad request: {error}"
        self._refuse(status, reason)

    def _badResponse(self, reason: str) -> None:
        if self._exchange.responseStarted:
            self.log.warn(
                "{reason}; cutting the response to {peer} short",
                reason=printable(reason, 500),
                peer=self._peer,
            )
            self._cutShort()
        else:
            self._refuse(HTTPStatus.BAD_GATEWAY, reason)

    def _cutShort(self) -> None:
        """
        End a response that cannot be completed so that the client knows it
        is incomplete.  When its length is known (or it is chunked), a close
        after what we have does: the client keeps the lines a log stream
        already gave and sees the missing end.  A connection-delimited body
        (to an HTTP/1.0 client) would look complete if closed: that one is
        aborted.
        """
        if self._exchange.responseFramed:
            self._loseClient()
        else:
            self._abortClient()

    def _internalError(self, reason: str) -> None:
        self.log.error(
            "HTTP proxy: {reason} (client {peer}, upstream {route})",
            reason=printable(reason, 500),
            peer=self._peer,
            route=self._routeName(),
        )
        self._abortClient()

    def _reportFailure(self, reason: Failure) -> None:
        """
        Under TLS (the HTTPS listener): a client whose connection ended in a
        failure the factory has words for (a certificate refused in the
        handshake) is said to the operator, a few lines then a count.
        """
        factory = self.factory
        words = factory.describeFailure(reason.value, self.transport)
        if words is not None:
            factory.failures.emit(
                factory.log,
                LogLevel.warn,
                "HTTP proxy: TLS with client {peer} failed: {reason}",
                peer=self._peer,
                reason=words,
            )

    def _refuse(self, status: int, reason: str) -> None:
        """
        Answer C{status} with C{reason}, log it as one line, and close the
        connection (the upstream's too): the request was not forwarded, or
        not answered.
        """
        status = int(status)
        head = self._exchange.head
        route = self._route
        log = self.log.warn if status >= 500 else self.log.info
        log(
            "HTTP proxy: {method} {target} (Host {host}) from {peer}: {status} {reason}",
            method=printable(head.method) if head else "-",
            target=printable(head.target) if head else "-",
            host=printable(head.host() or b"-") if head else "-",
            peer=self._peer,
            status=status,
            reason=printable(reason, 500),
            route=route.description if route is not None else "-",
        )
        if self._exchange.responseStarted:
            self._cutShort()
            return
        self._flushClient()
        transport = self.transport
        if transport is None or self._phase in (_Phase.CLOSING, _Phase.CLOSED):
            return
        transport.write(
            errorResponse(status, reason, withBody=head is None or head.method != b"HEAD")
        )
        self._closeClient()

    def _detachUpstream(self, *, lost: bool = False) -> None:
        """Let go of the upstream connection (closing it unless it is already lost)."""
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._reading is not None:
            self._reading.resume("pushed back")
        if lost:
            upstream.owner = None
        upstream.close()

    def _closeClient(self) -> None:
        """
        Close the client connection once what we wrote is out: shut our
        sending side and keep reading (and dropping) until the client
        closes, or until the linger timeout.  Closing with unread input
        would reset the connection, and the client could lose our answer.
        """
        if self._phase is _Phase.CLOSED:
            return
        self._flushClient()
        self._phase = _Phase.CLOSING
        self._cancelUpstreamTimer()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._detachUpstream()
        transport = self.transport
        assert transport is not None and self._reading is not None
        if self._clientReadClosed:
            self._loseClient()
            return
        # the timer first: a transport may report its loss at once
        self._setTimer(_ClientTimer.LINGER)
        self._reading.clear()
        halfClose(transport)

    def _loseClient(self, *, reset: bool = False) -> None:
        """
        Close the client's connection once what it was sent has gone out,
        within the linger timeout; with C{reset}, end it with a reset then
        (L{abortWhenSent}): how a reset upstream of an upgraded connection
        is passed on.
        """
        if self._phase is _Phase.CLOSED:
            return
        self._flushClient()
        self._phase = _Phase.CLOSING
        self._detachUpstream()
        transport = self.transport
        assert transport is not None
        # the timer first: a half-closed TCP transport reports its loss at once
        self._setTimer(_ClientTimer.LINGER)
        if reset:
            abortWhenSent(transport)
        else:
            transport.loseConnection()

    def _abortClient(self) -> None:
        self._cancelTimer()
        if self._phase is _Phase.CLOSED:
            return
        self._phase = _Phase.CLOSING
        self._detachUpstream()
        transport = self.transport
        assert transport is not None
        abort = getattr(transport, "abortConnection", transport.loseConnection)
        abort()

    def _routeName(self) -> str:
        route = self._route
        if route is None:
            return "the upstream"
        return route.description or f"the upstream for {route.key!r}"


class HTTPProxyFactory(Factory):
    """
    Listen with this (wrapped in C{TLSMemoryBIOFactory} for HTTPS) to
    forward HTTP requests wherever C{router} says.

    @ivar router: routes each request (see L{Router}); C{None} for a
        subclass that makes a router per connection (L{routerFor}).
    @ivar clock: times heads, idle connections and upstreams.
    @ivar limits: see L{Limits}.
    @ivar log: where refusals go, one line each.
    @ivar reaper: holds upgraded connections (exec, attach, port-forward,
        WebSocket), which relay raw bytes, to the idle and half-close
        deadlines of every relay (L{RelayReaper}); C{None}: no deadlines.
    @ivar explain: what the failures of routes and upstreams mean
        (L{Explainer}); L{RouteRefused} always means its own status.
    @ivar describeFailure: words for what a connection (the client's, an
        upstream's) ended with (L{Describer}): a failed TLS handshake, for
        the C{502} body and the operator's line.
    """

    noisy = False

    def __init__(
        self,
        router: Router | None,
        clock: IReactorTime,
        *,
        limits: Limits = Limits(),  # noqa: B008 (frozen, so shared safely)
        log: Logger | None = None,
        reaper: RelayReaper | None = None,
        explain: Explainer = explainNothing,
        describeFailure: Describer = describeNothing,
    ) -> None:
        self.router = router
        self.explain = explain
        self.describeFailure = describeFailure
        self.clock = clock
        self.limits = limits
        self.log = log if log is not None else Logger(namespace=__name__)
        self.reaper = reaper
        #: a few lines, then a count, for clients failing TLS in a loop
        self.failures = LogThrottle(clock)

    def routerFor(self, transport: ITransport) -> Router:
        """
        The router for the requests of one client connection:
        L{router} here.

        Override it to route by something only the connection knows, e.g.
        the original destination of a DNATed connection (C{SO_ORIGINAL_DST}
        on C{transport.getHandle()}; under TLS, on C{transport.transport}),
        and give no C{router} to the constructor.  It is called once per
        connection, when its first request is routed (never for a
        connection routed as a whole: see L{connectionRouterFor}).
        """
        if self.router is None:
            raise TypeError(f"{type(self).__name__} has no router: override routerFor")
        return self.router

    def connectionRouterFor(self, transport: ITransport) -> ConnectionRouter | None:
        """
        How to route one client connection as a whole, or C{None} (the
        default) to route each of its requests with L{routerFor}.

        A connection routed as a whole is relayed as bytes once its
        upstream is connected: no HTTP is parsed, so nothing per request
        is checked, rewritten or logged, and it is held to the deadlines of
        a relay (L{reaper}) instead of the HTTP timers.  Override it where
        the answer cannot depend on any request: the proxy listeners do for
        a DNATed connection whose port's policy decides once per
        connection.  The router is called once, when the client's first
        bytes arrive, with the client's address; when it answers C{None},
        or its upstream fails to connect, the connection is handled request
        by request (the first request then gets that failure's answer).
        """
        return None

    def buildProtocol(self, addr: Any) -> HTTPProxyProtocol:
        return HTTPProxyProtocol(self)


# -- helpers -----------------------------------------------------------------------


def _describe(error: BaseException | None) -> str:
    return str(error).strip() or error.__class__.__name__


def _hostOf(transport: object) -> bytes:
    """C{host:port} of a transport's peer, for a request that had no C{Host}."""
    getPeer = getattr(transport, "getPeer", None)
    peer = getPeer() if getPeer is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return b""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}".encode("ascii", "replace")
