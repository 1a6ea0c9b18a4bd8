# -*- test-case-name: tests.test_server -*-
"""
The cloud side: accept agents, know who is connected, open streams to them.

An agent proves which node it is with its client certificate; the server
keeps a L{AgentRegistry} of live tunnels by node name and node IP, and
hands out ordinary C{IStreamClientEndpoint}s (L{TunnelServer.endpointForNode})
so that any Twisted client can reach a port on an edge node.

The replacement rule: a node has at most one tunnel per server.  When an
agent for a node that is already connected completes its handshake, the
new tunnel replaces the old one, whose streams are closed.  A reconnecting
agent is by far the common case, and the old connection is then most
likely dead (its keepalive would find out only later).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__
from .errors import NodeNotConnected, StreamOpenFailed
from .metrics import ServerMetrics, handshakeFailureReason
from .mux import (
    MAX_SERVERS,
    ITunnelHandler,
    Keepalive,
    KeepaliveSweep,
    Refused,
    Settings,
    Stream,
    Tunnel,
    TunnelAddress,
    drainTunnels,
)
from .rotation import RotatingServerOptions
from .tls import Credentials, PeerIdentity, peerIdentity
from .wire import ErrorCode, OpenFailReason

#: How long an open may wait for the agent's answer by default.
DEFAULT_OPEN_TIMEOUT = 10.0


@frozen
class AgentRecord:
    """What the server knows of one connected agent."""

    node: str
    ips: tuple[str, ...]
    tunnel: Tunnel
    identity: PeerIdentity | None
    connectedAt: float
    peer: str


class AgentRegistry:
    """
    The live tunnels, by node name and by node IP.

    It enforces two rules: an IP belongs to one node at a time (an agent
    cannot claim another connected node's traffic), and a node has one
    tunnel (a newer one replaces the older).
    """

    log = Logger()

    def __init__(self) -> None:
        self._byNode: dict[str, AgentRecord] = {}
        self._byIP: dict[str, str] = {}
        self._byTunnel: dict[Tunnel, AgentRecord] = {}  # the current tunnels only
        self._observers: list[Callable[[], object]] = []

    def subscribe(self, observer: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{observer} (without arguments) after every change: an agent
        connected, was replaced, or went away.  The iptables rules and the
        hosts file follow the registry this way.

        @return: a function that unsubscribes it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def _changed(self) -> None:
        for observer in list(self._observers):
            try:
                observer()
            except Exception:
                self.log.failure("a registry observer failed")

    def __len__(self) -> int:
        return len(self._byNode)

    def __iter__(self) -> Iterator[AgentRecord]:
        return iter(list(self._byNode.values()))

    def register(self, record: AgentRecord) -> AgentRecord | None:
        """
        Add a connected agent.

        @return: the record it replaces, if its node was already connected;
            the caller closes that tunnel.
        @raise Refused: one of its IPs belongs to another connected node.
        """
        for ip in record.ips:
            owner = self._byIP.get(ip)
            if owner is not None and owner != record.node:
                raise Refused(
                    ErrorCode.UNAUTHORIZED,
                    f"node {record.node!r} announces IP {ip}, which belongs to connected node "
                    f"{owner!r}",
                )
        replaced = self._byNode.get(record.node)
        if replaced is not None:
            self._forgetIPs(replaced)
            del self._byTunnel[replaced.tunnel]
        self._byNode[record.node] = record
        self._byTunnel[record.tunnel] = record
        for ip in record.ips:
            self._byIP[ip] = record.node
        self._changed()
        return replaced

    def unregister(self, tunnel: Tunnel) -> AgentRecord | None:
        """Forget the agent on C{tunnel}, unless a newer tunnel replaced it."""
        # by the tunnel, not by a scan of every record: ten thousand agents
        # leaving at once would make that quadratic
        record = self._byTunnel.pop(tunnel, None)
        if record is None:
            return None
        del self._byNode[record.node]
        self._forgetIPs(record)
        self._changed()
        return record

    def _forgetIPs(self, record: AgentRecord) -> None:
        for ip in record.ips:
            if self._byIP.get(ip) == record.node:
                del self._byIP[ip]

    def lookup(self, nameOrIP: str) -> AgentRecord | None:
        """The agent for a node name or one of its IPs, if connected."""
        record = self._byNode.get(nameOrIP.lower())
        if record is not None:
            return record
        node = self._byIP.get(_normalIP(nameOrIP) or "")
        return self._byNode.get(node) if node is not None else None


@lru_cache(maxsize=4096)
def _normalIP(text: str) -> str | None:
    # cached: every stream open looks its node up by the address asked for,
    # and parsing an address costs more than the rest of the lookup
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


@implementer(ITunnelHandler)
class _ServerSide:
    """The server's half of one tunnel: checks who the agent is, registers it."""

    log = Logger()

    def __init__(self, server: TunnelServer) -> None:
        self.server = server

    def helloInfo(self) -> dict[str, Any]:
        return {
            "server_id": self.server.serverId,
            "server_count": self.server.serverCount,
            "software": f"twisted-tunnel {__version__}",
        }

    def helloReceived(self, tunnel: Tunnel, info: dict[str, Any]) -> None:
        try:
            self._admit(tunnel, info)
        except Refused as refused:
            self.server.metrics.helloRefusals[ErrorCode.named(refused.code)] += 1
            raise

    def _admit(self, tunnel: Tunnel, info: dict[str, Any]) -> None:
        identity = self.server.identify(tunnel.transport)
        node = info.get("node")
        if identity is None:
            raise Refused(ErrorCode.UNAUTHORIZED, "no client certificate")
        if not isinstance(node, str) or not node:
            raise Refused(ErrorCode.UNAUTHORIZED, "HELLO does not name a node")
        if not identity.carriesNode(node):
            raise Refused(
                ErrorCode.UNAUTHORIZED,
                f"agent announces node {node!r} but its certificate ({identity.describe()}) "
                "does not carry that name",
            )
        rawIPs = info.get("ips", [])
        if not isinstance(rawIPs, list) or len(rawIPs) > 64:
            raise Refused(ErrorCode.PROTOCOL_ERROR, "HELLO ips must be a list of at most 64")
        ips = []
        for raw in rawIPs:
            ip = _normalIP(raw) if isinstance(raw, str) else None
            if ip is None:
                raise Refused(ErrorCode.PROTOCOL_ERROR, f"HELLO ips holds {raw!r}, not an IP")
            ips.append(ip)
        certified = {_normalIP(ip) for ip in identity.ipAddresses}
        uncertified = [ip for ip in ips if certified and ip not in certified]
        if uncertified:
            raise Refused(
                ErrorCode.UNAUTHORIZED,
                f"agent {node!r} announces {', '.join(uncertified)}, which its certificate "
                f"does not carry (it carries {', '.join(identity.ipAddresses)})",
            )
        node = node.lower()
        self._refuseDuplicate(node, info.get("servers", []))
        tunnel.nodeName = node
        record = AgentRecord(
            node=node,
            ips=tuple(ips),
            tunnel=tunnel,
            identity=identity,
            connectedAt=self.server.clock.seconds(),
            peer=tunnel._peerLabel(),
        )
        replaced = self.server.registry.register(record)
        if replaced is not None:
            self.log.info(
                "agent {node} reconnected from {peer}; replacing its tunnel from {old}",
                node=node,
                peer=record.peer,
                old=replaced.peer,
            )
            replaced.tunnel.close(ErrorCode.REPLACED, "a newer connection for this node")
        self.log.info(
            "agent {node} connected from {peer} with IPs {ips} ({certificate})",
            node=node,
            peer=record.peer,
            ips=", ".join(ips) or "(none)",
            certificate=identity.certificate(),
        )

    def _refuseDuplicate(self, node: str, held: object) -> None:
        """
        Refuse a second tunnel from an agent that says it already holds one
        to this server (HELLO C{servers}), if that tunnel is indeed up here.

        An agent reaches every replica through one load-balanced address,
        so it keeps dialing until it holds a tunnel to each, and it lands on
        replicas it already holds along the way.  Without this refusal the
        replacement rule would close its working tunnel (and its streams)
        for the new one.  If this server has no live tunnel for the node
        (it restarted under the same id, say), the agent's old one is dead:
        the new one is accepted and the agent drops the old.
        """
        if not isinstance(held, list) or len(held) > MAX_SERVERS:
            raise Refused(
                ErrorCode.PROTOCOL_ERROR, f"HELLO servers must be a list of at most {MAX_SERVERS}"
            )
        if self.server.serverId not in held:
            return
        current = self.server.registry.lookup(node)
        if current is not None and current.tunnel.established:
            raise Refused(
                ErrorCode.DUPLICATE,
                f"agent {node!r} already holds a tunnel to server {self.server.serverId}",
            )

    def openRequested(self, tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = Deferred()
        d.errback(
            StreamOpenFailed(OpenFailReason.NOT_ALLOWED, "agents may not open streams to a server")
        )
        return d

    def tunnelDraining(self, tunnel: Tunnel) -> None:
        self.log.info("agent {node} is draining", node=tunnel.nodeName)
        self.server.registry.unregister(tunnel)

    def tunnelLost(self, tunnel: Tunnel, reason: Failure) -> None:
        if tunnel.version is None and not tunnel._closing:
            # the TLS handshake failed (wrong CA, no client certificate,
            # expired) or the peer never sent HELLO: one line saying why
            message = reason.getErrorMessage()
            why = handshakeFailureReason(message)
            self.server.metrics.handshakeFailures[why] += 1
            # a connection that just closed, with no TLS error, is most often
            # a load balancer's TCP health check: not worth a warning each time
            self.log.emit(
                LogLevel.debug if why == "connection_closed" else LogLevel.warn,
                "refused agent connection from {peer}: no tunnel established "
                "(TLS handshake or HELLO failed): {reason}",
                peer=tunnel._peerLabel(),
                reason=message,
            )
            return
        self.server.registry.unregister(tunnel)
        if tunnel.nodeName:
            self.log.info(
                "agent {node} disconnected: {reason}",
                node=tunnel.nodeName,
                reason=reason.getErrorMessage(),
            )


class _TunnelFactory(Factory):
    noisy = False

    def __init__(self, server: TunnelServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> Tunnel:
        server = self.server
        return Tunnel(
            _ServerSide(server),
            server.clock,
            isClient=False,
            settings=server.settings,
            keepalive=server.keepalive,
            keepaliveSweep=server.keepaliveSweep,
            meter=server.metrics.meter,
        )


class TunnelServer:
    """
    The server as a library: give it credentials, listen with
    L{tunnelFactory}, and reach edge nodes with L{endpointForNode}.

    @ivar registry: the connected agents.
    @ivar metrics: its Prometheus metrics (L{ServerMetrics}).
    @ivar draining: whether it is draining (shutting down).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        credentials: Credentials | None,
        *,
        serverId: str | None = None,
        serverCount: int = 1,
        settings: Settings = Settings(),
        keepalive: Keepalive = Keepalive(),
        openTimeout: float = DEFAULT_OPEN_TIMEOUT,
        identify: Callable[[ITransport | None], PeerIdentity | None] | None = None,
        metricsPerNode: bool = False,
    ) -> None:
        self.clock = clock
        self.credentials = credentials
        self.serverId = serverId or uuid.uuid4().hex[:12]
        self.serverCount = serverCount
        self.settings = settings
        self.keepalive = keepalive
        # one timer checks every agent's keepalive, a quarter interval apart
        self.keepaliveSweep = KeepaliveSweep(clock, keepalive.interval / 4)
        self.openTimeout = openTimeout
        self.identify = identify or _peerIdentity
        self.registry = AgentRegistry()
        self.draining = False
        self.metrics = ServerMetrics(self, perNode=metricsPerNode)
        self._tls: RotatingServerOptions | None = None

    def tunnelFactory(self) -> IProtocolFactory:
        """
        The factory to listen with for agents: mutual TLS around L{Tunnel}.
        New handshakes use the credentials of the last L{updateCredentials}.
        """
        if self.credentials is None:
            raise ValueError("a server without credentials cannot accept agents over TLS")
        if self._tls is None:
            self._tls = RotatingServerOptions(self.credentials)
        return TLSMemoryBIOFactory(self._tls, False, _TunnelFactory(self))

    def updateCredentials(self, credentials: Credentials) -> None:
        """
        Use C{credentials} for agents' handshakes from now on (a rotated
        certificate, key or CA); tunnels already up keep theirs.
        """
        self.credentials = credentials
        if self._tls is not None:
            self._tls.update(credentials)

    def plainTunnelFactory(self) -> IProtocolFactory:
        """
        L{Tunnel} without TLS, for tests that bring their own identity.
        """
        return _TunnelFactory(self)

    def endpointForNode(
        self,
        node: str,
        port: int,
        host: str | None = None,
        timeout: float | None = None,
        *,
        policy: str = "endpoint",
    ) -> IStreamClientEndpoint:
        """
        An endpoint that connects to C{port} on edge node C{node} through
        its tunnel.

        @param node: the node's name or one of its IPs.
        @param host: what the agent dials; by default the node IP that was
            asked for, else the node's first announced IP, else its loopback.
        @param policy: what the streams count as in the metrics (the
            forwarding policy's name, say).
        """
        return NodeEndpoint(self, node, port, host, timeout or self.openTimeout, policy)

    def agents(self) -> Iterable[AgentRecord]:
        return iter(self.registry)

    def closeAll(self, text: str = "server shutting down") -> None:
        """Close every tunnel now, telling each agent why (GOAWAY)."""
        for record in self.registry:
            record.tunnel.close(ErrorCode.SHUTTING_DOWN, text)

    def drain(self, text: str = "server shutting down") -> Deferred[list[Any]]:
        """Drain every tunnel; fires when all are gone."""
        self.draining = True
        return gatherResults([record.tunnel.drain(text) for record in self.registry])

    def drainWithin(self, timeout: float, text: str = "server shutting down") -> Deferred[None]:
        """
        Drain every tunnel (GOAWAY: the agents open no new streams here, and
        each tunnel closes once its streams are done), and after C{timeout}
        seconds close whatever is still open (0: at once; see
        L{drainTunnels}).  Fires when every tunnel is gone.
        """
        self.draining = True
        agents = len(self.registry)
        if not agents:
            return succeed(None)
        if timeout > 0:
            self.log.info(
                "draining {agents} agent(s): streams in flight have {timeout:g}s to finish",
                agents=agents,
                timeout=timeout,
            )
        started = self.clock.seconds()
        tunnels = [record.tunnel for record in self.registry]

        def done(drained: bool) -> None:
            if drained:
                self.log.info("drained in {seconds:.1f}s", seconds=self.clock.seconds() - started)

        return drainTunnels(self.clock, tunnels, timeout, text, self.log).addCallback(done)


def _peerIdentity(transport: ITransport | None) -> PeerIdentity | None:
    return peerIdentity(transport) if transport is not None else None


@implementer(IStreamClientEndpoint)
class NodeEndpoint:
    """
    Connects a protocol to a port on an edge node, through the node's tunnel.

    Fails with L{NodeNotConnected} when no agent serves the node,
    L{StreamOpenFailed} when the agent could not dial, and
    L{StreamOpenTimeout} when it did not answer in time.
    """

    def __init__(
        self,
        server: TunnelServer,
        node: str,
        port: int,
        host: str | None,
        timeout: float,
        policy: str = "endpoint",
    ) -> None:
        self.server = server
        self.node = node
        self.port = port
        self.host = host
        self.timeout = timeout
        self.policy = policy

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        metrics = self.server.metrics
        record = self.server.registry.lookup(self.node)
        if record is None or not record.tunnel.established:
            metrics.openFailures["unknown_node"] += 1
            d: Deferred[IProtocol] = Deferred()
            d.errback(NodeNotConnected(self.node))
            return d
        host = self.host
        if host is None:
            asked = _normalIP(self.node)
            host = asked or (record.ips[0] if record.ips else "127.0.0.1")
        clock = self.server.clock
        started = clock.seconds()
        opening = record.tunnel.openStream(host, self.port, protocolFactory, self.timeout)

        def opened(protocol: IProtocol) -> IProtocol:
            stream = getattr(protocol, "transport", None)
            if isinstance(stream, Stream):
                stream.label = self.policy
            metrics.openSucceeded(self.policy, clock.seconds() - started)
            return protocol

        def failed(failure: Failure) -> Failure:
            if not failure.check(CancelledError):
                metrics.openFailed(failure)
            return failure

        return opening.addCallbacks(opened, failed)
