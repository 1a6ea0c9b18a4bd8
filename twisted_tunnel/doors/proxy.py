# -*- test-case-name: tests.doors.test_proxy -*-
"""
The proxy listeners' routing: which node, which port, which policy.

kube-apiserver, metrics-server and Prometheus reach C{<node-ip>:10250}
(or C{<node-name>:10250}) with no change on their side; iptables DNAT or
DNS bring their connections to the server's proxy listeners, and this
module turns each one into a route through the right node's tunnel:

 1. the target: the connection's original destination (C{SO_ORIGINAL_DST},
    when iptables DNATed it), else the request's C{Host};
 2. the port must be one the configuration forwards, and forwarded from
    this listener: HTTPS ports from the HTTPS listener only, HTTP and dnat
    ports from the HTTP listener only, raw TCP ports from the TCP listener
    only.  Anything else is refused (C{403}), so the listeners are never an
    open proxy into the edge network, and a plaintext listener never lends
    out the proxy client certificate that the kubelet trusts;
 3. the node must have a connected agent (C{502} otherwise, with the reason:
    kube-apiserver shows kubectl the body of a kubelet's 502, not of a 503);
 4. the port's policy decides what the agent dials and how the bytes go.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IAddress,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..forwarding.config import Listener, ProxyConfig
from ..forwarding.policy import (
    Carrier,
    ForwardingDecision,
    ForwardingRefused,
    ForwardingRequest,
    IForwardingPolicy,
    decideNow,
    decidesPerConnection,
)
from ..forwarding.table import ForwardingTable, NotForwarded
from ..http.engine import (
    ConnectionRouter,
    HTTPProxyFactory,
    RequestHead,
    Route,
    Router,
    RouteRefused,
)
from ..mux import IEarlyStreamFactory
from ..net.addresses import HostPortError, splitHostPort
from ..net.origdst import originalDestination
from ..server import TunnelServer
from ..tls.failures import describeTransportFailure
from ..tls.upstream import IDestinationTLS
from .forward import OpeningRelay
from .refusals import proxyRefusal


class RoutingRefused(RouteRefused):
    """Routing said no: answer C{status} with C{reason} (and log it)."""


@frozen
class Target:
    """The node address (name or IP) and port a client asked for."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parseHost(host: bytes | None) -> Target:
    """
    The target named by a C{Host} header (C{name:port}, C{ip:port},
    C{[v6]:port}).

    @raise RoutingRefused: C{400} when it is missing or has no valid port.
    """
    if not host:
        raise RoutingRefused(400, "the request has no Host header and was not DNATed")
    text = host.decode("ascii", "replace").strip().lower()
    try:
        name, number = splitHostPort(text)
    except HostPortError as e:
        if e.problem == "ipv6":
            why = "an IPv6 address must be in brackets"
            raise RoutingRefused(400, f"Host {text!r}: {why}") from None
        if e.problem == "port" and e.port.isdigit():
            raise RoutingRefused(400, f"Host {text!r}: {e.port} is not a port") from None
        raise RoutingRefused(400, f"Host {text!r} does not name a port") from None
    return Target(name, number)


def targetOf(
    originalDestination: tuple[str, int] | None,
    listenerAddress: tuple[object, object] | None,
    host: bytes | None,
) -> Target:
    """
    Where the client meant to go: the original destination of a DNATed
    connection (unless that is the listener itself, i.e. it was not
    DNATed), else the C{Host} header.
    """
    if originalDestination is not None and originalDestination != listenerAddress:
        address, port = originalDestination
        return Target(str(ipaddress.ip_address(address)), port)
    return parseHost(host)


@frozen
class Routed:
    """
    A route: the node (what an HTTP connection stays pinned to), the
    decision, and the endpoint that reaches it (already wrapped in client
    TLS for the HTTPS carrier).
    """

    node: str
    target: Target
    decision: ForwardingDecision
    policy: str
    endpoint: IStreamClientEndpoint

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.target.port)

    @property
    def destination(self) -> tuple[object, ...]:
        """
        What an upstream connection made for this route reaches: the node,
        what the agent dials, how it is carried, and for HTTPS the name the
        kubelet's certificate is checked against.  A kept-alive upstream is
        reused only for a request whose route has the same destination, so
        a policy that routes each request (by path, say) is obeyed for each
        one.  The decision's C{hostHeader} is not part of it: it is written
        into each request, not into the connection.
        """
        d = self.decision
        tlsName = self.target.address if d.carrier is Carrier.HTTPS else None
        return (self.node, d.host, d.port, d.carrier, tlsName, self.policy)

    def describe(self) -> str:
        d = self.decision
        return f"{self.target} via node {self.node} to {d.host}:{d.port} ({self.policy})"


class ProxyRouter:
    """
    Routes connections (or HTTP requests) arriving at one proxy listener:
    the table says which policy decides (or refuses), the registry which
    tunnel carries it.

    @param table: the forwarding in force (L{ForwardingTable}: it changes on
        reload; a route uses what is in force when it is made), or a
        function returning the configuration in force, read at every request.
    @param customPolicies: with a function for C{table}: returns the ports
        bound to custom policies.
    @param upstreamTLS: makes the client TLS creator for the HTTPS carrier,
        given the node address the client asked for (what the kubelet's
        certificate is verified against, when it is).  A creator that
        provides L{IDestinationTLS} is asked for the route's destination,
        so that it resumes only sessions made for it.
    """

    log = Logger()

    def __init__(
        self,
        server: TunnelServer,
        listener: Listener | str,
        table: ForwardingTable | Callable[[], ProxyConfig],
        *,
        customPolicies: Callable[[], Mapping[int, IForwardingPolicy]] = dict,
        upstreamTLS: Callable[[str], Any] | None = None,
    ) -> None:
        try:
            self.listener = Listener(listener)
        except ValueError:
            raise ValueError(f"unknown listener kind {listener!r}") from None
        if not isinstance(table, ForwardingTable):
            table = ForwardingTable.following(table, customPolicies)
        self.server = server
        self.table = table
        self.upstreamTLS = upstreamTLS

    def route(
        self,
        target: Target,
        *,
        method: bytes | None = None,
        requestTarget: bytes | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        peer: IAddress | None = None,
    ) -> Deferred[Routed]:
        """
        Route a connection (or one HTTP request) for C{target}.

        @return: fails with L{RoutingRefused} for everything the client
            should be told (403, 502, 400), or with the policy's
            L{ForwardingRefused}.
        """
        routed: Deferred[Routed] = maybeDeferred(
            self.routeNow,  # type: ignore[arg-type]
            target,
            method=method,
            requestTarget=requestTarget,
            headers=headers,
            peer=peer,
        )
        return routed

    def routeNow(
        self,
        target: Target,
        *,
        method: bytes | None = None,
        requestTarget: bytes | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        peer: IAddress | None = None,
    ) -> Routed | Deferred[Routed]:
        """
        L{route}, but the route itself when the policy decides at once (the
        built-in ones do), without a C{Deferred} on the way: the HTTP proxy
        routes every request.

        @raise RoutingRefused: for everything the client should be told.
        """
        try:
            policy = self.table.lookup(target.port, self.listener)
        except NotForwarded as refused:
            raise RoutingRefused(refused.status, refused.reason) from None
        record = self.server.registry.lookup(target.address)
        if record is None or not record.tunnel.established:
            self.server.metrics.openRefused("unknown_node")
            raise RoutingRefused(502, self.server.routes.noAgent(target.address))
        request = self._request(
            record, target, peer, method=method, target=requestTarget, headers=headers
        )

        def refusedByPolicy(failure: Any) -> Any:
            failure.trap(ForwardingRefused)
            self.server.metrics.openRefused("policy_refused")
            raise RoutingRefused(failure.value.status, failure.value.reason)

        try:
            decision = decideNow(policy, request)
        except ForwardingRefused as refused:
            self.server.metrics.openRefused("policy_refused")
            raise RoutingRefused(refused.status, refused.reason) from None
        if isinstance(decision, Deferred):
            return decision.addCallbacks(
                lambda decided: self._routed(record.node, target, policy.name, decided),
                refusedByPolicy,
            )
        return self._routed(record.node, target, policy.name, decision)

    def routeConnection(
        self, target: Target, *, peer: IAddress | None = None
    ) -> Routed | Deferred[Routed | None] | None:
        """
        Route a whole connection for C{target}, if that can be done once:
        its port's policy decides per connection (L{decidesPerConnection})
        and asks for nothing that needs each request (a C{Host} to write
        into it), and the node's tunnel is up.

        Nothing is counted or refused here: C{None} means "route each
        request", and the per-request path gives the refusal, its status,
        its log line and its metric, exactly once.
        """
        try:
            policy = self.table.lookup(target.port, self.listener)
        except NotForwarded:
            return None
        if not decidesPerConnection(policy):
            return None
        record = self.server.registry.lookup(target.address)
        if record is None or not record.tunnel.established:
            return None
        request = self._request(record, target, peer)

        def routed(decision: ForwardingDecision) -> Routed | None:
            if decision.hostHeader is not None:
                return None
            try:
                return self._routed(record.node, target, policy.name, decision)
            except RoutingRefused:
                return None

        try:
            decision = decideNow(policy, request)
        except ForwardingRefused:
            return None
        if isinstance(decision, Deferred):
            return decision.addCallbacks(routed, _perRequestIfRefused)
        return routed(decision)

    def _request(
        self, record: Any, asked: Target, peer: IAddress | None, /, **http: Any
    ) -> ForwardingRequest:
        """What the policy decides on (C{http}: a request's method, target, headers)."""
        return ForwardingRequest(
            node=record.node,
            nodeIPs=record.ips,
            address=asked.address,
            port=asked.port,
            listener=self.listener,
            peer=peer,
            **http,
        )

    def _routed(
        self, node: str, target: Target, policy: str, decision: ForwardingDecision
    ) -> Routed:
        """
        The route for C{decision}: the endpoint that reaches it, in client
        TLS for the HTTPS carrier.

        @raise RoutingRefused: the decision cannot be carried here.
        """
        endpoint = self.server.endpointForNode(
            node, decision.port, host=decision.host, policy=policy
        )
        if decision.carrier is Carrier.HTTPS:
            if self.upstreamTLS is None:
                raise RoutingRefused(
                    502, "the https policy needs --proxy-client-cert and --proxy-client-key"
                )
            # Verify the kubelet against the address the client asked for
            # (node IP or name), as kube-apiserver would: with the localhost
            # policy the agent dials 127.0.0.1, which no kubelet serving
            # certificate names.
            creator = self.upstreamTLS(target.address)
            resuming = IDestinationTLS(creator, None)
            if resuming is not None:
                # sessions resumed only towards exactly this destination
                creator = resuming.forDestination(node, decision.host, decision.port)
            endpoint = wrapClientTLS(creator, endpoint)
        elif decision.carrier is Carrier.RAW and self.listener != "tcp":
            raise RoutingRefused(502, f"policy {policy} chose raw TCP for an HTTP request")
        return Routed(node, target, decision, policy, endpoint)


class RawProxyProtocol(OpeningRelay):
    """
    A connection at the raw TCP listener: routed by its original
    destination (it has no Host header), then relayed as it is.
    """

    factory: RawProxyFactory
    _target: Target | None = None

    def openFarEnd(self, factory: Factory) -> Deferred[IProtocol]:
        transport = self.transport
        assert transport is not None
        destination = originalDestination(transport)
        if destination is None or destination == _listenerAddress(transport):
            return fail(
                RoutingRefused(
                    400,
                    "raw TCP is routed by original destination; this connection was not DNATed",
                )
            )
        self._target = targetOf(destination, None, None)
        routing = self.factory.router.route(self._target, peer=transport.getPeer())
        return routing.addCallback(lambda routed: routed.endpoint.connect(factory))

    def describe(self) -> dict[str, Any]:
        return {"where": str(self._target or "an unknown destination"), "listener": "tcp"}


class RawProxyFactory(Factory):
    """The raw TCP listener (C{--tcp-proxy-endpoint}): C{tcp-proxy-ports}."""

    noisy = False

    def __init__(self, router: ProxyRouter) -> None:
        self.router = router

    def buildProtocol(self, addr: Any) -> RawProxyProtocol:  # type: ignore[override]
        protocol = RawProxyProtocol()
        protocol.factory = self
        return protocol


class ProxyListenerFactory(HTTPProxyFactory):
    """
    An HTTP proxy listener (C{--http-proxy-endpoint}, and under TLS
    C{--https-proxy-endpoint}): every request is routed by L{ProxyRouter},
    by the connection's original destination when iptables DNATed it, else
    by its C{Host}.  A connection stays with the node it was first routed
    to (L{Routed.key}); the engine refuses a later request for another one.
    """

    def __init__(self, router: ProxyRouter, clock: Any, **kw: Any) -> None:
        # upgraded connections (exec, attach, port-forward) are relays like
        # the CONNECT door's, held to the same deadlines
        kw.setdefault("reaper", router.server.relayReaper)
        kw.setdefault("explain", proxyRefusal)
        kw.setdefault("describeFailure", describeTransportFailure)
        super().__init__(None, clock, **kw)  # a router per connection: routerFor
        self.proxyRouter = router

    def connectionRouterFor(self, transport: Any) -> ConnectionRouter | None:
        """
        A DNATed connection is routed as a whole when its port's policy
        decides once per connection (L{ProxyRouter.routeConnection}): its
        target is its original destination, which no request can change.
        A connection routed by C{Host} is routed request by request, so
        that each request is checked against the node it is pinned to
        (C{421}).
        """
        destination = originalDestination(transport)
        if destination is None or destination == _listenerAddress(transport):
            return None
        target = targetOf(destination, None, None)
        router = self.proxyRouter

        def route(peer: IAddress) -> Route | Deferred[Route | None] | None:
            routed = router.routeConnection(target, peer=peer)
            if isinstance(routed, Deferred):
                return routed.addCallback(lambda r: None if r is None else _asEarlyRoute(r))
            return None if routed is None else _asEarlyRoute(routed)

        return route

    def routerFor(self, transport: Any) -> Router:
        destination = originalDestination(transport)
        listener = _listenerAddress(transport)
        router = self.proxyRouter

        def route(head: RequestHead, peer: IAddress) -> Route | Deferred[Route]:
            target = targetOf(destination, listener, head.host())
            routed = router.routeNow(
                target,
                method=head.method,
                requestTarget=head.target,
                headers=head.headers,
                peer=peer,
            )
            if isinstance(routed, Deferred):
                return routed.addCallback(_asRoute)
            return _asRoute(routed)

        return route


def _perRequestIfRefused(failure: Failure) -> None:
    """A policy refused a connection: its first request is refused as usual (and counted)."""
    failure.trap(ForwardingRefused)


def _listenerAddress(transport: Any) -> tuple[object, object]:
    """The address a connection arrived at: what its original destination is if not DNATed."""
    local = transport.getHost()
    return (getattr(local, "host", None), getattr(local, "port", None))


@implementer(IProtocolFactory, IEarlyStreamFactory)
class _EarlyFactory:
    """
    C{factory}, marked as taking its stream before the open is answered
    (L{IEarlyStreamFactory}): the engine's upstream of a connection routed
    as a whole holds what it relays until the answer, so that a refused
    open is still answered with its reason.
    """

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        return self._factory.buildProtocol(addr)

    def doStart(self) -> None:
        self._factory.doStart()

    def doStop(self) -> None:
        self._factory.doStop()


@implementer(IStreamClientEndpoint)
class _EarlyEndpoint:
    """Connects through C{endpoint} with an early stream (L{_EarlyFactory})."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return self._endpoint.connect(_EarlyFactory(protocolFactory))


def _asEarlyRoute(routed: Routed) -> Route:
    """
    The route of a connection routed as a whole: its stream opened early,
    so that the client's first bytes follow the OPEN.  Only for plain
    carriers: the HTTPS one wraps the stream in client TLS, whose
    factory is not ours to mark.
    """
    route = _asRoute(routed)
    if routed.decision.carrier is Carrier.HTTPS:
        return route
    return evolve(route, endpoint=_EarlyEndpoint(route.endpoint))


def _asRoute(routed: Routed) -> Route:
    """What the HTTP engine needs of a route."""
    return Route(
        key=routed.key,
        endpoint=routed.endpoint,
        hostHeader=routed.decision.hostHeader,
        description=routed.describe(),
        destination=routed.destination,
    )
