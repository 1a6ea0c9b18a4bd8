# -*- test-case-name: tests.doors.test_connect -*-
"""
The HTTP CONNECT front door: how kube-apiserver (EgressSelectorConfiguration
with C{proxyProtocol: HTTPConnect}), C{curl -p -x} and any HTTP client that
tunnels through a proxy reach a port on an edge node.

A client sends one request head::

    CONNECT <node-name-or-node-ip>:<port> HTTP/1.1
    Host: ...

and, once the agent of that node has connected a stream to the port, gets
C{HTTP/1.1 200 Connection established} followed by the relayed bytes.  This
is layer 4 only: TLS to the kubelet stays end to end, the door never sees it.

Everything that can go wrong before the relay starts gets a status code the
client can act on, with the reason as a C{text/plain} body, and one log line
for the operator (no traceback: these are expected conditions):

 - C{400} bad request head or target, C{405} any method but CONNECT,
   C{431} a request head over 16 KiB;
 - C{503} no agent for the node (or its tunnel went away), C{502} the agent
   could not dial (its reason is passed on), C{504} the agent did not answer.

Cloud addresses (L{DirectNetworks}, C{--connect-direct}): with an egress
selector, kube-apiserver sends I{every} connection of its C{cluster} egress
to the door, also those to cloud nodes and to aggregated API servers such
as metrics-server, which no agent carries.  Targets in the networks the
operator names, and held by no agent, are dialled by the server itself;
C{502}/C{504} say why a dial failed.  Nothing else is dialled directly:
loopback, link-local (a cloud's metadata service) and unspecified
addresses can never be named.

The request head is parsed with L{h1<twisted_tunnel.http.h1>}, the same
(strict) parser as the proxy listeners'; a client has C{requestTimeout}
seconds to send all of it, so a silent (or slowloris) client cannot hold a
connection.  A client that leaves while its stream is being opened cancels
the open, which resets the stream on the tunnel: nothing is left half-open
on the edge (the leak of ANP issues #276/#789 and asyncssh #823).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from functools import cached_property
from http import HTTPStatus
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._logthrottle import LogThrottle
from .._text import printable
from ..errors import NodeNotConnected, StreamOpenFailed
from ..http import h1
from ..http.responses import errorResponse
from ..net.addresses import HostPortError, parseIP, splitHostPort
from ..net.relay import RelayProtocol, halfClose, relayEnds, splice
from ..net.sockets import noDelay
from ..net.transports import addressLabel, pushProducer
from ..server import TunnelServer
from ..tls import peerIdentity, refuseNodeIdentity
from ..tls.failures import logClientTLSFailure
from ..wire import OpenFailReason
from .refusals import connectRefusal

__all__ = [
    "DirectNetworks",
    "directNetwork",
    "ConnectDoorFactory",
    "ConnectProtocol",
    "ConnectTarget",
    "BadTarget",
    "parseTarget",
    "MAX_HEAD_SIZE",
    "REQUEST_TIMEOUT",
]

#: The largest request head we accept; larger ones get C{431}.
MAX_HEAD_SIZE = 16 * 1024

#: How long a client may take to send its whole request head.
REQUEST_TIMEOUT = 30.0

#: How much a client may send ahead while its stream is being opened
#: before we stop reading from it.
MAX_PENDING_BYTES = 64 * 1024

#: How long we keep reading (and discarding) after an error response, so
#: that the client can read the response before the connection is reset.
LINGER_TIMEOUT = 5.0

#: The answer that starts the relay.
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

# A node name as Kubernetes allows it (an RFC 1123 subdomain, any case) or
# an IPv4 address.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


class BadTarget(ValueError):
    """A CONNECT request target that is not C{<node>:<port>}."""


@frozen
class ConnectTarget:
    """
    Where a CONNECT request asks to go.

    @ivar node: a node name or a node IP (IPv6 without brackets), as
        L{TunnelServer.endpointForNode} takes it.
    @ivar port: the port on the node.
    """

    node: str
    port: int

    def __str__(self) -> str:
        node = f"[{self.node}]" if ":" in self.node else self.node
        return f"{node}:{self.port}"


def parseTarget(raw: bytes) -> ConnectTarget:
    """
    Parse the authority-form target of a CONNECT request: C{name:port},
    C{ipv4:port} or C{[ipv6]:port}.

    Strict on purpose: whatever passes here reaches the agent, whose
    allowlist is the last line of defence, not the only one.

    @raise BadTarget: with a reason fit for the client and the log.
    """
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BadTarget("the target is not ASCII") from None
    shown = text if len(text) <= 80 else text[:77] + "..."
    try:
        node, port = splitHostPort(text)
    except HostPortError as e:
        if e.problem == "port":
            raise BadTarget(
                f"bad target {shown!r}: {e.port[:20]!r} is not a port number"
            ) from None
        if e.problem == "ipv6":
            raise BadTarget(
                f"bad target {shown!r}: write IPv6 addresses as [address]:port"
            ) from None
        form = "[ipv6]:port" if text.startswith("[") else "<node>:<port>"
        raise BadTarget(f"bad target {shown!r}: expected {form}") from None
    if text.startswith("["):
        try:
            node = ipaddress.IPv6Address(node).compressed
        except ValueError:
            raise BadTarget(
                f"bad target {shown!r}: {node[:80]!r} is not an IPv6 address"
            ) from None
    elif not _NAME.match(node):
        raise BadTarget(f"bad target {shown!r}: {node[:80]!r} is not a node name or IP")
    return ConnectTarget(node, port)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What a direct network may never contain: the server's own loopback, a
#: cloud's link-local metadata service, "this host".
_NEVER_DIRECT: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "::/128", "::1/128", "fe80::/10")
)


def directNetwork(text: str) -> IPNetwork:
    """
    Parse one C{--connect-direct} network.

    @raise ValueError: not a network, or one that overlaps loopback,
        link-local or unspecified addresses (with the reason).
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not an IP network (e.g. 10.0.0.0/16)") from None
    for never in _NEVER_DIRECT:
        if network.version == never.version and network.overlaps(never):
            raise ValueError(
                f"{network} overlaps {never}: the server never dials loopback, link-local "
                "(metadata services) or unspecified addresses for a client"
            )
    return network


@frozen
class DirectNetworks:
    """
    Networks whose addresses the CONNECT door dials itself, when no agent
    holds them: the cloud's own nodes and services.

    @ivar networks: parsed with L{directNetwork}.
    @ivar endpoint: makes the endpoint to dial C{(ip, port)} with (the
        daemon's: TCP with a connect timeout).
    """

    networks: tuple[IPNetwork, ...]
    endpoint: Callable[[str, int], IStreamClientEndpoint]

    def covers(self, host: str) -> bool:
        """Whether C{host}, an IP literal, is in one of the networks."""
        address = parseIP(host)
        return address is not None and any(address in network for network in self.networks)


class _State(enum.Enum):
    READING = "reading the request head"
    OPENING = "opening the stream"
    RELAYING = "relaying"
    CLOSING = "closing after an error response"
    CLOSED = "closed"


class ConnectProtocol(RelayProtocol):
    """
    One client of the door: reads a CONNECT request head, opens the stream,
    answers, then becomes the client end of a relay to that stream.

    While the stream is being opened we keep reading from the client (up to
    C{maxPendingBytes}, then it is paused): a socket the reactor is not
    reading from cannot report that the client has gone, and we must know
    that to cancel the open.
    """

    def __init__(self, door: ConnectDoorFactory) -> None:
        super().__init__()
        self.door = door
        self._state = _State.READING
        self._parser: h1.Connection | None = h1.Connection(
            h1.SERVER, max_incomplete_event_size=door.maxHeadSize
        )
        self._fed = 0
        self._method = "-"
        self._rawTarget = "-"
        self._target: ConnectTarget | None = None
        self._timer: IDelayedCall | None = None
        self._opening: Deferred[IProtocol] | None = None
        self._pendingSize = 0
        self._readingPaused = False
        self._peer = "-"
        self._direct = False

    # -- the connection ------------------------------------------------------

    def connectionMade(self) -> None:
        # Not RelayProtocol's: we read the request head before pausing.
        assert self.transport is not None
        noDelay(self.transport)
        self._peer = addressLabel(self.transport.getPeer())
        self._timer = self.door.clock.callLater(self.door.requestTimeout, self._requestTimedOut)

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state is _State.READING:
            self._parse(data)
        elif state is _State.OPENING:
            self._hold(data)
        elif state is _State.RELAYING:
            super().dataReceived(data)
        # CLOSING: drained and dropped, so that the client reads our answer

    def readConnectionLost(self) -> None:
        state = self._state
        if state is _State.RELAYING:
            super().readConnectionLost()
            return
        if state is _State.OPENING:
            # A CONNECT client does not half-close before it has its answer:
            # an EOF now means it gave up.
            self._abandon()
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._reportTLSFailure(reason)
        state, self._state = self._state, _State.CLOSED
        self._cancelTimer()
        if state is _State.OPENING:
            self._abandon()
        elif state is _State.RELAYING:
            super().connectionLost(reason)

    def _reportTLSFailure(self, reason: Failure) -> None:
        """Over the door's TLS: a client refused in the handshake, said in words."""
        if not reason.check(ConnectionDone):
            door = self.door
            logClientTLSFailure(
                door.tlsFailures, door.log, "CONNECT door", self._peer, self.transport, reason
            )

    # -- the request head ----------------------------------------------------

    def _parse(self, data: bytes) -> None:
        if not data:
            # the parser (h1, like h11) takes b"" for the end of the input,
            # after which it answers ConnectionClosed for ever: found by the
            # fuzzer (a transport may deliver an empty read), it spun the reactor
            return
        parser = self._parser
        assert parser is not None
        self._fed += len(data)
        parser.receive_data(data)
        try:
            while self._state is _State.READING:
                event = parser.next_event()
                if event is h1.NEED_DATA:
                    return
                if isinstance(event, h1.ConnectionClosed):
                    self.readConnectionLost()
                    return
                if isinstance(event, h1.Request):
                    self._requestReceived(event)
                elif event is h1.PAUSED:
                    self._headReceived()
        except h1.RemoteProtocolError as e:
            status = e.error_status_hint
            if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                self._refuse(status, f"request head larger than {self.door.maxHeadSize} bytes")
            else:
                self._refuse(status, f"bad request: {e}")

    def _requestReceived(self, request: h1.Request) -> None:
        self._method = request.method.decode("ascii", "replace")
        self._rawTarget = printable(request.target, 80)
        if request.method != b"CONNECT":
            self._refuse(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"this is a CONNECT proxy; {self._method} is not supported",
                [("Allow", "CONNECT")],
            )
            return
        for name, value in request.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                self._refuse(HTTPStatus.BAD_REQUEST, "a CONNECT request has no body")
                return
        try:
            self._target = parseTarget(request.target)
        except BadTarget as e:
            self._refuse(HTTPStatus.BAD_REQUEST, str(e))
            return
        authorize = self.door.authorize
        refusal = authorize(self.transport) if authorize is not None else None
        if refusal is not None:
            self._refuse(HTTPStatus.FORBIDDEN, refusal)

    def _headReceived(self) -> None:
        """The whole head is in: open the stream, keep what came after it."""
        target, parser = self._target, self._parser
        assert target is not None and parser is not None
        trailing, _ = parser.trailing_data
        if self._fed - len(trailing) > self.door.maxHeadSize:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head larger than {self.door.maxHeadSize} bytes",
            )
            return
        self._cancelTimer()
        self._state = _State.OPENING
        self._parser = None  # its buffer held a copy of the trailing bytes
        if trailing:
            self._hold(trailing)
        opening = maybeDeferred(self._endpoint(target).connect, relayEnds)
        self._opening = opening
        opening.addCallbacks(self._opened, self._openFailed)

    def _endpoint(self, target: ConnectTarget) -> IStreamClientEndpoint:
        """The node's tunnel; or, for a direct address no agent holds, a dial of our own."""
        server, direct = self.door.server, self.door.direct
        if (
            direct is not None
            and direct.covers(target.node)
            and server.registry.lookup(target.node) is None
        ):
            self._direct = True
            return direct.endpoint(target.node, target.port)
        return server.endpointForNode(target.node, target.port, policy="connect")

    def _hold(self, data: bytes) -> None:
        """Keep what the client sends ahead, in order, for the relay."""
        self._early.append(data)
        self._pendingSize += len(data)
        if self._pendingSize > self.door.maxPendingBytes and not self._readingPaused:
            self._readingPaused = True
            pushProducer(self.transport).pauseProducing()

    def _requestTimedOut(self) -> None:
        self._timer = None
        if self._state is not _State.READING:
            return
        self.door.log.info(
            "CONNECT client {peer} sent no complete request within {timeout:g}s; closing",
            peer=self._peer,
            timeout=self.door.requestTimeout,
            received=self._fed,
        )
        self._state = _State.CLOSING
        assert self.transport is not None
        self.transport.loseConnection()

    # -- opening the stream --------------------------------------------------

    def _opened(self, streamEnd: IProtocol) -> None:
        self._opening = None
        assert isinstance(streamEnd, RelayProtocol)
        if self._state is not _State.OPENING:
            # the client left as the answer arrived
            if streamEnd.transport is not None:
                streamEnd.transport.loseConnection()
            return
        assert self.transport is not None
        self._state = _State.RELAYING
        self._readingPaused = False
        self.transport.write(ESTABLISHED)
        # writes what each side sent ahead (the client's first), resumes both
        splice(self, streamEnd, self.door.server.relayReaper)

    def _openFailed(self, failure: Failure) -> None:
        self._opening = None
        if self._state is not _State.OPENING:
            return  # cancelled: the client left, _abandon logged it
        error = failure.value
        if self._direct and isinstance(error, ConnectError):
            dialStatus = (
                HTTPStatus.GATEWAY_TIMEOUT
                if isinstance(error, ConnectTimeout)
                else HTTPStatus.BAD_GATEWAY
            )
            self._refuse(
                dialStatus, f"dialling {self._target} directly failed: {_dialError(error)}"
            )
        elif (refusal := connectRefusal(error)) is not None:
            status, why = refusal
            if isinstance(error, NodeNotConnected):
                self._refuse(status, self.door.server.routes.noAgent(error.node))
            elif isinstance(error, StreamOpenFailed):
                self._refuse(status, why.reason, openFail=OpenFailReason.named(error.reason))
            else:
                self._refuse(status, why.reason)
        else:
            self.door.log.failure(
                "CONNECT {target} from {peer} failed unexpectedly",
                failure,
                target=str(self._target),
                peer=self._peer,
            )
            self._respondAndClose(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

    def _abandon(self) -> None:
        """The client left while its stream was opening: cancel the open."""
        opening, self._opening = self._opening, None
        self._early = []
        if opening is None:
            return
        self.door.log.info(
            "CONNECT {target} from {peer} abandoned by the client while opening",
            target=str(self._target),
            peer=self._peer,
        )
        # _openFailed ignores the CancelledError: nobody is left to answer
        self._state = _State.CLOSED
        opening.cancel()

    # -- answering errors ----------------------------------------------------

    def _refuse(
        self,
        status: int,
        reason: str,
        headers: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> None:
        target = self._target
        self.door.log.info(
            "{method} {target} from {peer} refused: {status} {reason}",
            method=self._method,
            target=self._rawTarget if target is None else str(target),
            node=None if target is None else target.node,
            port=None if target is None else target.port,
            status=int(status),
            reason=printable(reason, 500),
            peer=self._peer,
            **fields,
        )
        self._respondAndClose(status, reason, headers)

    def _respondAndClose(
        self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        """
        Answer, then close gracefully: send our FIN but keep reading (and
        dropping) what the client still sends, for a while.  Closing with
        unread input would reset the connection and the client could lose
        the answer.
        """
        self._cancelTimer()
        self._state = _State.CLOSING
        self._early = []
        transport = self.transport
        assert transport is not None
        # a gateway failure's reason in the status line too: kube-apiserver's
        # egress dialer shows kubectl the status line of a refused CONNECT,
        # not its body
        transport.write(
            errorResponse(int(status), reason, headers, reasonInStatusLine=status >= 500)
        )
        halfClose(transport)
        if self._readingPaused:
            self._readingPaused = False
            pushProducer(transport).resumeProducing()
        self._timer = self.door.clock.callLater(self.door.lingerTimeout, self._lingerEnded)

    def _lingerEnded(self) -> None:
        self._timer = None
        transport = self.transport
        if self._state is _State.CLOSING and transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class ConnectDoorFactory(Factory):
    """
    Listen with this to let HTTP CONNECT clients reach edge nodes through
    C{server}.

    @ivar server: opens the streams (L{TunnelServer.endpointForNode}); its
        C{clock} times requests.
    @ivar log: where refusals go, one line each.
    @ivar requestTimeout: seconds a client has to send its whole request head.
    @ivar maxHeadSize: the largest request head accepted.
    @ivar maxPendingBytes: how much a client may send ahead while its stream
        opens before we stop reading from it.
    @ivar lingerTimeout: how long an error response may take to be read.
    @ivar authorize: given a client's transport, the reason to refuse it
        (C{403}), or C{None} to let it in; see L{refuseAgentCertificates}.
    @ivar direct: the networks dialled directly, or C{None} (nothing is).
    """

    noisy = False

    def __init__(
        self,
        server: TunnelServer,
        log: Logger | None = None,
        *,
        requestTimeout: float = REQUEST_TIMEOUT,
        maxHeadSize: int = MAX_HEAD_SIZE,
        maxPendingBytes: int = MAX_PENDING_BYTES,
        lingerTimeout: float = LINGER_TIMEOUT,
        authorize: Callable[[ITransport | None], str | None] | None = None,
        direct: DirectNetworks | None = None,
    ) -> None:
        self.server = server
        self.authorize = authorize
        self.direct = direct
        self.log = log if log is not None else Logger(namespace=__name__)
        self.requestTimeout = requestTimeout
        self.maxHeadSize = maxHeadSize
        self.maxPendingBytes = maxPendingBytes
        self.lingerTimeout = lingerTimeout

    @property
    def clock(self) -> IReactorTime:
        return self.server.clock

    @cached_property
    def tlsFailures(self) -> LogThrottle:
        """A few lines, then a count, for clients failing TLS in a loop."""
        return LogThrottle(self.clock)

    def buildProtocol(self, addr: Any) -> ConnectProtocol:
        protocol = ConnectProtocol(self)
        protocol.factory = self
        return protocol


def _dialError(error: ConnectError) -> str:
    """C{connection refused}, not Twisted's C{Connection was refused by other side: 111: ...}."""
    if isinstance(error, ConnectTimeout):
        return "timed out"
    said = error.args[0] if error.args and isinstance(error.args[0], str) else ""
    return (said or error.__doc__ or type(error).__name__).strip().rstrip(".").lower()


def refuseAgentCertificates(transport: ITransport | None) -> str | None:
    """
    For a door served over mutual TLS: let in clients such as
    kube-apiserver, but not agents.

    Agents' certificates come from the same CA, and an agent's certificate
    proves only which node it may carry.  A stolen edge node's key must not
    become a way to reach every other node through the door.  The rule is
    L{refuseNodeIdentity}'s, shared with the HTTPS proxy listener.
    """
    return refuseNodeIdentity(peerIdentity(transport))
