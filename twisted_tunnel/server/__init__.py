# -*- test-case-name: tests.server.test_integration -*-
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

Identity rules (issue 12, findings 1, 2, 9, 17, 19): an agent is exactly a
C{CN=system:node:<name>, O=system:nodes} certificate for the node its HELLO
names, compared exactly; node names are lower-case DNS-1123 names that are
not IP literals; the IPs it announces route to it only once proven
(L{INodeAddressProof}: by default the certificate's IP subjectAltNames);
and a tunnel whose certificate expires, or stops passing the trust in force
after a C{--ca} rotation, is closed.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

from attrs import evolve, frozen
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
from twisted.python.failure import Failure
from zope.interface import implementer

from .._version import __version__
from ..errors import NodeNotConnected, StreamOpenFailed
from ..metrics import handshakeFailureReason
from ..mux import (
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
    validServerId,
)
from ..mux.keepalive import KEEPALIVE_INFO, SERVER_KEEPS_ALIVE, SWEEP_SLOTS
from ..net.addresses import normalIP
from ..net.relay import DEFAULT_RELAY_TIMEOUTS, RelayReaper, RelayTimeouts
from ..tls import Credentials, PeerIdentity, peerIdentity, verifyChain
from ..tls.certs import isNodeName, validateNodeName
from ..tls.failures import describeTLSFailure, handleOf
from ..tls.rotation import RotatingServerOptions
from ..wire import ErrorCode, OpenFailReason
from .directory import NodeDirectory
from .expiry import CertificateExpiry
from .flapping import ReplacementWatch
from .memory import MemoryReturn
from .metrics import ServerMetrics

# the provers are public here, where they were before proof.py held them
from .proof import AddressProof as AddressProof
from .proof import CertificateAddressProof, INodeAddressProof
from .proof import TrustAnnouncedAddresses as TrustAnnouncedAddresses
from .routes import DEFAULT_KEEP_GONE, RoutedNodes
from .tlsreplies import ReplyingTLSFactory

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
    #: every IP its agent announced, proven or not (L{ips} are the proven
    #: ones): proven again when a L{NodeDirectory} changes
    announced: tuple[str, ...] = ()


class AgentRegistry:
    """
    The live tunnels, by node name and by node IP.

    It enforces two rules: an IP belongs to one node at a time (an agent
    cannot claim another connected node's traffic), and a node has one
    tunnel (a newer one replaces the older).  Node names are exact: only
    valid node names (L{isNodeName}) are registered, and nothing is folded.
    """

    log = Logger()

    def __init__(self) -> None:
        self._byNode: dict[str, AgentRecord] = {}
        self._byIP: dict[str, str] = {}
        self._byTunnel: dict[Tunnel, AgentRecord] = {}  # the current tunnels only
        self._observers: list[Callable[[], object]] = []
        self._leaving: list[Callable[[AgentRecord], object]] = []

    def subscribe(self, observer: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{observer} (without arguments) after every change: an agent
        connected, was replaced, or went away.  The iptables rules and the
        hosts file follow the registry this way.

        @return: a function that unsubscribes it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def subscribeLeaving(self, observer: Callable[[AgentRecord], object]) -> Callable[[], None]:
        """
        Call C{observer} with the record of every agent that goes away (its
        tunnel lost or draining; not one replaced by a newer tunnel of its
        node), before the observers of L{subscribe} hear of the change.
        L{RoutedNodes} remembers gone nodes this way.

        @return: a function that unsubscribes it.
        """
        self._leaving.append(observer)
        return lambda: self._leaving.remove(observer)

    def _changed(self, left: AgentRecord | None = None) -> None:
        observers: list[Callable[[], object]] = list(self._observers)
        if left is not None:
            observers[:0] = [partial(observer, left) for observer in self._leaving]
        for observer in observers:
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
        @raise Refused: one of its IPs belongs to another connected node,
            or its node name is not a valid node name.
        """
        if not isNodeName(record.node):
            raise Refused(ErrorCode.UNAUTHORIZED, f"{record.node!r} is not a valid node name")
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

    def reroute(self, node: str, ips: Sequence[str]) -> AgentRecord | None:
        """
        Route C{ips}, and only those, to connected node C{node}'s tunnel (its
        IPs were proven again).  An IP another connected node holds stays
        that node's, with a warning: the first to prove it keeps it.

        @return: the node's record as it now is; C{None} if it is not
            connected.
        """
        record = self._byNode.get(node)
        if record is None:
            return None
        taken = [ip for ip in ips if self._byIP.get(ip, node) != node]
        for ip in taken:
            self.log.warn(
                "node {node}: not routing IP {ip}: it belongs to connected node {owner}",
                node=node,
                ip=ip,
                owner=self._byIP[ip],
            )
        routed = tuple(ip for ip in ips if ip not in taken)
        if routed == record.ips:
            return record
        self._forgetIPs(record)
        record = evolve(record, ips=routed)
        self._byNode[node] = record
        self._byTunnel[record.tunnel] = record
        for ip in routed:
            self._byIP[ip] = node
        self._changed()
        return record

    def unregister(self, tunnel: Tunnel) -> AgentRecord | None:
        """Forget the agent on C{tunnel}, unless a newer tunnel replaced it."""
        # by the tunnel, not by a scan of every record: ten thousand agents
        # leaving at once would make that quadratic
        record = self._byTunnel.pop(tunnel, None)
        if record is None:
            return None
        del self._byNode[record.node]
        self._forgetIPs(record)
        self._changed(left=record)
        return record

    def _forgetIPs(self, record: AgentRecord) -> None:
        for ip in record.ips:
            if self._byIP.get(ip) == record.node:
                del self._byIP[ip]

    def lookup(self, nameOrIP: str) -> AgentRecord | None:
        """
        The agent for a node name or one of its IPs, if connected.

        What reads as an IP address is looked up as one, and only as one:
        a name never shadows an address (node names that read as IPs are
        never registered, either).  Names match exactly: they are
        registered exactly as the certificates spell them, lower case.
        """
        ip = normalIP(nameOrIP)
        if ip is not None:
            node = self._byIP.get(ip)
            return self._byNode.get(node) if node is not None else None
        return self._byNode.get(nameOrIP)


def _announcedIPs(rawIPs: object) -> tuple[str, ...]:
    """
    The IPs of HELLO C{ips}, normalised, without duplicates.

    @raise Refused: a malformed list (a protocol error): not a list, more
        than 64, or something that is not an IP.
    """
    if not isinstance(rawIPs, list) or len(rawIPs) > 64:
        raise Refused(ErrorCode.PROTOCOL_ERROR, "HELLO ips must be a list of at most 64")
    ips: list[str] = []
    for raw in rawIPs:
        ip = normalIP(raw) if isinstance(raw, str) else None
        if ip is None:
            raise Refused(ErrorCode.PROTOCOL_ERROR, f"HELLO ips holds {raw!r}, not an IP")
        if ip not in ips:
            ips.append(ip)
    return tuple(ips)


@implementer(ITunnelHandler)
class _ServerSide:
    """The server's half of one tunnel: checks who the agent is, registers it."""

    log = Logger()

    def __init__(self, server: TunnelServer) -> None:
        self.server = server

    def helloInfo(self) -> dict[str, Any]:
        return {
            "server_id": self.server.serverId,
            # one per process: lets agents tell a replica that restarted
            # under its id from two replicas given the same id
            "instance": self.server.instance,
            "server_count": self.server.serverCount,
            "software": f"twisted-tunnel {__version__}",
            # this server pings its agents (its KeepaliveSweep): they need only probe
            KEEPALIVE_INFO: SERVER_KEEPS_ALIVE,
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
        try:
            validateNodeName(node)
        except ValueError as e:
            raise Refused(ErrorCode.UNAUTHORIZED, f"HELLO: {e}") from None
        why = identity.whyNotNode(node)
        if why is not None:
            raise Refused(
                ErrorCode.UNAUTHORIZED,
                f"agent announces node {node!r} but its certificate ({identity.describe()}) "
                f"does not carry that name: {why}",
            )
        expires = identity.expires()
        if expires is not None and expires.timestamp() <= self.server.clock.seconds():
            raise Refused(
                ErrorCode.UNAUTHORIZED,
                f"agent {node!r}: its certificate expired at {expires:%Y-%m-%d %H:%M:%S}Z",
            )
        announced = _announcedIPs(info.get("ips", []))
        ips = self.server.proveIPs(node, identity, announced)
        self._refuseDuplicate(node, info.get("servers", []))
        tunnel.nodeName = node
        record = AgentRecord(
            node=node,
            ips=tuple(ips),
            tunnel=tunnel,
            identity=identity,
            connectedAt=self.server.clock.seconds(),
            peer=tunnel.peerLabel(),
            announced=announced,
        )
        replaced = self.server.registry.register(record)
        self.server.expiry.watch(record)
        if replaced is not None:
            self.log.info(
                "agent {node} reconnected from {peer}; replacing its tunnel from {old}",
                node=node,
                peer=record.peer,
                old=replaced.peer,
            )
            replaced.tunnel.close(ErrorCode.REPLACED, "a newer connection for this node")
            flapping = self.server.replacements.replaced(node, replaced.peer, record.peer)
            if flapping is not None:
                self.log.warn("{warning}", warning=flapping, node=node)
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
        if (
            not isinstance(held, list)
            or len(held) > MAX_SERVERS
            or not all(validServerId(serverId) for serverId in held)
        ):
            raise Refused(
                ErrorCode.PROTOCOL_ERROR,
                f"HELLO servers must be a list of at most {MAX_SERVERS} server ids",
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
        self.server.expiry.forget(tunnel)
        if tunnel.version is None and not tunnel.closing:
            # the TLS handshake failed (wrong CA, no client certificate,
            # expired) or the peer never sent HELLO: one line saying why
            message = reason.getErrorMessage()
            why = handshakeFailureReason(message)
            self.server.metrics.handshakeFailures[why] += 1
            described = describeTLSFailure(reason.value, handleOf(tunnel.transport))
            # a connection that just closed, with no TLS error, is most often
            # a load balancer's TCP health check: not worth a warning each time
            self.log.emit(
                LogLevel.debug if why == "connection_closed" else LogLevel.warn,
                "refused agent connection from {peer}: no tunnel established "
                "(TLS handshake or HELLO failed): {reason}",
                peer=tunnel.peerLabel(),
                reason=described if described is not None else message,
            )
            return
        self.server.registry.unregister(tunnel)
        goaway = tunnel.peerGoAway
        if goaway is not None and goaway[0] == ErrorCode.DUPLICATE_SERVER_ID:
            # the agent holds a tunnel to another process announcing our id
            self.log.error(
                "another replica uses server id {server_id}: give each replica its own "
                "--server-id (agent {node} at {peer} closed our tunnel: {reason})",
                server_id=self.server.serverId,
                node=tunnel.nodeName,
                peer=tunnel.peerLabel(),
                reason=goaway[1],
            )
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
            # agents open no streams to a server: a flood of OPENs ends the tunnel
            peerMayOpen=False,
        )


class TunnelServer:
    """
    The server as a library: give it credentials, listen with
    L{tunnelFactory}, and reach edge nodes with L{endpointForNode}.

    @ivar registry: the connected agents.
    @ivar directory: the nodes the cluster lists (L{NodeDirectory}), when
        the server watches them: a second proof of agents' IPs (with a
        L{DirectoryAddressProof}, which the caller passes as C{addressProof})
        and routes for listed nodes whose agent is not connected.
    @ivar routes: the nodes whose traffic this server takes (L{RoutedNodes}):
        the connected ones, and for C{keepGone} seconds (a constructor
        argument) those whose agent left, so that their clients are
        answered by the server rather than sent past it.
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
        addressProof: INodeAddressProof | None = None,
        relayTimeouts: RelayTimeouts = DEFAULT_RELAY_TIMEOUTS,
        keepGone: float = DEFAULT_KEEP_GONE,
        directory: NodeDirectory | None = None,
    ) -> None:
        self.clock = clock
        self.credentials = credentials
        #: holds the front doors' relays (CONNECT, forwards) to their
        #: idle and half-close deadlines
        self.relayReaper = RelayReaper(clock, relayTimeouts)
        self.serverId = serverId or uuid.uuid4().hex[:12]
        if not validServerId(self.serverId):
            # agents refuse a HELLO with such an id (and echo the ids they hold)
            raise ValueError(
                f"server id {self.serverId[:64]!r}: use 1 to 253 letters, digits and . _ : -"
            )
        if not 1 <= serverCount <= MAX_SERVERS:
            raise ValueError(f"server count {serverCount}: agents accept 1 to {MAX_SERVERS}")
        #: this process's instance, announced in HELLO next to the id
        self.instance = uuid.uuid4().hex[:16]
        self.serverCount = serverCount
        self.settings = settings
        self.keepalive = keepalive
        # one timer keeps every agent's tunnel alive, in slots of SWEEP_SLOTS
        # per interval: the PINGs of a slot leave (and their PONGs return)
        # together
        self.keepaliveSweep = KeepaliveSweep(clock, keepalive.interval / SWEEP_SLOTS)
        self.openTimeout = openTimeout
        self.identify = identify or _peerIdentity
        self.addressProof: INodeAddressProof = addressProof or CertificateAddressProof()
        self.registry = AgentRegistry()
        #: notices two agents proving one node, replacing each other's tunnel
        self.replacements = ReplacementWatch(clock)
        #: trims the heap once after a mass departure (see MemoryReturn)
        self.memoryReturn = MemoryReturn(clock, self.registry.__len__)
        self.registry.subscribe(self.memoryReturn.changed)
        self.directory = directory
        self.routes = RoutedNodes(clock, self.registry, keepGone=keepGone, directory=directory)
        if directory is not None:
            directory.subscribe(self._listingChanged)
        #: closes each agent's tunnel when its certificate expires
        self.expiry = CertificateExpiry(clock, self.log)
        self.draining = False
        self.metrics = ServerMetrics(self, perNode=metricsPerNode)
        self._tls: RotatingServerOptions | None = None

    def proveIPs(
        self, node: str, identity: PeerIdentity | None, announced: Sequence[str]
    ) -> tuple[str, ...]:
        """
        The IPs of C{announced} that the server's L{INodeAddressProof}
        proves to be C{node}'s; the others are dropped with one warning line.

        Dropped, not refused: the tunnel is accepted and routes by name.
        Refusing would take down every node whose certificate has no IP
        subjectAltName (the kubelet case) on upgrade, name routes included,
        while dropping already closes the hole: an unproven IP never
        reaches the registry, so it routes nothing.
        """
        if not announced or identity is None:
            return ()
        proof = self.addressProof.prove(node, identity, tuple(announced))
        proven = set(proof.proven)
        unproven = [ip for ip in announced if ip not in proven]
        if unproven:
            self.log.warn(
                "agent {node}: not routing IPs {ips} it announces: unproven, because {why}",
                node=node,
                ips=", ".join(unproven),
                why=proof.why or "no proof was found",
            )
        return tuple(ip for ip in announced if ip in proven)

    def _listingChanged(self, nodes: Sequence[str]) -> None:
        """
        Nodes' listings changed (L{NodeDirectory}): prove their connected
        agents' IPs again, so that a Node's new address routes at once and
        a deleted Node's addresses stop routing.
        """
        for node in nodes:
            record = self.registry.lookup(node)
            if record is None:
                continue
            proven = self.proveIPs(node, record.identity, record.announced)
            now = self.registry.reroute(node, proven)
            if now is not None and now.ips != record.ips:
                self.log.info(
                    "agent {node}: its Node's listing changed; routing IPs {ips}",
                    node=node,
                    ips=", ".join(now.ips) or "(none)",
                )

    def tunnelFactory(self) -> IProtocolFactory:
        """
        The factory to listen with for agents: mutual TLS around L{Tunnel}.
        New handshakes use the credentials of the last L{updateCredentials}.
        """
        if self.credentials is None:
            raise ValueError("a server without credentials cannot accept agents over TLS")
        if self._tls is None:
            self._tls = RotatingServerOptions(self.credentials)
        return ReplyingTLSFactory(self._tls, False, _TunnelFactory(self), self.clock)

    def updateCredentials(self, credentials: Credentials) -> None:
        """
        Use C{credentials} for agents' handshakes from now on (a rotated
        certificate, key or CA).  Tunnels already up keep their TLS
        session; if the trusted authorities changed, each is checked
        against the new ones and closed if it no longer passes
        (L{revalidate}).
        """
        previous = self.credentials
        self.credentials = credentials
        if self._tls is not None:
            self._tls.update(credentials)
        if previous is None or _fingerprints(previous) != _fingerprints(credentials):
            self.revalidate()

    def revalidate(self) -> int:
        """
        Check every connected agent's certificate chain against the trust
        in force (L{Credentials.authority}, at the clock's time) and close
        the tunnels that would not pass a handshake now, with GOAWAY
        UNAUTHORIZED and one warning line per node.

        Called when the C{--ca} bundle is rotated: an agent whose CA was
        removed must not go on serving on the strength of a handshake made
        under the old trust.  Records without a chain (an C{identify}
        function that made the identity by hand) are left alone.  The cost
        is one chain verification per agent (some 0.1 ms for ECDSA P-256),
        once per rotation of the CA.

        @return: how many tunnels were closed.
        """
        if self.credentials is None:
            return 0
        authority = self.credentials.authority
        when = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        closed = 0
        for record in self.registry:
            identity = record.identity
            if identity is None or not identity.chain:
                continue
            reason = verifyChain(identity.chain, authority, when)
            if reason is None:
                continue
            self.log.warn(
                "agent {node}: closing its tunnel: its certificate ({certificate}) no longer "
                "passes the trusted CAs (--agent-ca, else --ca): {reason}",
                node=record.node,
                certificate=identity.certificate(),
                reason=reason,
            )
            record.tunnel.close(
                ErrorCode.UNAUTHORIZED,
                f"the server no longer trusts this agent's certificate: {reason}",
            )
            closed += 1
        return closed

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


def _fingerprints(credentials: Credentials) -> set[bytes]:
    """The trusted authorities of C{credentials}, comparable across reloads."""
    return {ca.dump() for ca in credentials.authority}


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
            metrics.openRefused("unknown_node")
            d: Deferred[IProtocol] = Deferred()
            d.errback(NodeNotConnected(self.node))
            return d
        host = self.host
        if host is None:
            asked = normalIP(self.node)
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
