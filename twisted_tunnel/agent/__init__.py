# -*- test-case-name: tests.agent.test_agent -*-
"""
The edge side: dial out to the server, keep the tunnel up, dial what the
server asks for, within limits.

The agent is the only party that can reach the edge network, so it is the
one that decides what may be reached: by default its own node IPs and the
loopback addresses, nothing else (L{Allowlist}).  A request for anything
else is refused with OPEN_FAIL C{not allowed} and a log line.

It holds a tunnel to every server replica behind its one server address
(the load balancer), so that any replica can reach the node, and it
reconnects forever, with exponential backoff and jitter (so that a
thousand agents coming back after a server restart do not arrive in step).
A server that refuses our HELLO counts as a failed attempt, not a
connection, so a refused agent backs off instead of hammering the server.

Why not C{ClientService}: its C{prepareConnection} is the right hook for
"connected means HELLO done", but in Twisted 26.10 a preparation that fails
because the connection dropped (exactly what a refusal looks like) leaves
its state machine without a transition for the disconnect that follows,
and every refused attempt logs a C{NoTransition} traceback.  L{Reconnector}
is the small loop we need, with an injected clock.
"""

from __future__ import annotations

import ipaddress
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from .._logthrottle import LogThrottle
from .._version import __version__
from ..errors import StreamOpenFailed
from ..metrics import handshakeFailureReason
from ..mux import (
    MAX_SERVER_ID,
    MAX_SERVERS,
    ITunnelHandler,
    Keepalive,
    Refused,
    Settings,
    StreamBudget,
    Tunnel,
    TunnelAddress,
    drainTunnels,
    validServerId,
)
from ..mux.keepalive import KEEPALIVE_INFO, SERVER_KEEPS_ALIVE
from ..net.addresses import IPAddress, parseIP
from ..net.relay import (
    DEFAULT_RELAY_TIMEOUTS,
    RelayProtocol,
    RelayReaper,
    RelayTimeouts,
    relayEnds,
)
from ..tls import Credentials, agentOptions, loadCredentials
from ..tls.failures import describeTLSFailure, handleOf
from ..tls.kubelet import keepingNode
from ..tls.rotation import CredentialsWatcher, watchCredentials
from ..wire import ErrorCode, OpenFailReason
from .metrics import AgentMetrics

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: How long the agent waits for a target to accept a connection.
DEFAULT_DIAL_TIMEOUT = 5.0

#: The most streams the agent holds at once across its tunnels to all the
#: server replicas (each replica may open C{--max-streams} on its own).
DEFAULT_MAX_STREAMS_TOTAL = 1024

#: The most bytes streams may make the agent hold, across its tunnels: each
#: stream reserves its receive window (1 MiB by default: 256 streams), the
#: most a server can send it before its target reads.  A quarter of a small
#: edge node's memory is already a lot for a sidecar.
DEFAULT_MAX_BUFFER = 256 * 1024 * 1024

#: How long the agent waits for its TCP connection to the server address.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: After this many DUPLICATE refusals in a row, the search for a missing
#: server replica slows down by L{SEARCH_SLOWDOWN}: with the default 30 s
#: backoff cap, from every 15-30 s to every 2.5-5 minutes.
SEARCH_PATIENCE = 10
SEARCH_SLOWDOWN = 10.0

#: Default of the most server replicas an agent holds tunnels to, whatever
#: the servers announce (C{--max-servers}): a replica that announces 64
#: makes the agent look for 64 and hold a tunnel to every id it is shown.
#: Real deployments run a handful of replicas.
DEFAULT_MAX_SERVERS = 16

#: How long the C{server_count} announced by a server we held still counts
#: after its tunnel is gone: one replica announcing a lower count (or one
#: reached first after a network blip) cannot stop the search for the
#: others meanwhile.  After a real scale-down, agents look for the replica
#: that is gone this long (at the slowed-down pace), then forget it.
COUNT_MEMORY = 300.0

#: Holding every server it knows of, the agent still dials once in a
#: while (every 7.5-15 minutes): the count it looks for is only what the
#: servers it reached announced, and one that announces 1 (a hostile
#: holder of a server certificate, reached first) must not stop the search
#: for the others for good.  A dial that reaches a server already held is
#: refused (DUPLICATE) at once; for 10,000 agents this costs about 15 TLS
#: handshakes a second across the replicas.
VERIFY_INTERVAL = 900.0

#: Instances (HELLO C{instance}) remembered per server id to tell a replica
#: that restarted under its id from two processes sharing it.
_INSTANCES_PER_ID = 8


class Allowlist:
    """
    What the agent may dial for the server: its node IPs, the loopback
    addresses, and any networks the operator adds.  Anything else is
    refused: an agent must never become a way into the edge network.
    """

    def __init__(self, nodeIPs: Iterable[str], extra: Iterable[str] = ()) -> None:
        self.nodeIPs = frozenset(ipaddress.ip_address(ip) for ip in nodeIPs)
        self.loopback = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
        self.networks: tuple[_IPNetwork, ...] = tuple(
            ipaddress.ip_network(net, strict=False) for net in extra
        )

    def permits(self, address: IPAddress) -> bool:
        if address in self.nodeIPs or address in self.loopback:
            return True
        return any(address in network for network in self.networks)

    def describe(self) -> str:
        parts = [str(ip) for ip in sorted(self.nodeIPs | self.loopback, key=str)]
        parts += [str(net) for net in self.networks]
        return ", ".join(parts)


def backoffPolicy(
    initialDelay: float = 1.0,
    maxDelay: float = 30.0,
    factor: float = 2.0,
    jitter: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """
    Exponential backoff with "equal jitter": the delay for attempt M{n} is
    uniformly spread over the upper half of M{min(max, initial * factor^n)}.

    Half fixed, half random keeps a fleet from reconnecting in step after
    a server restart, without ever retrying at once in a tight loop.
    """

    def policy(attempt: int) -> float:
        ceiling = min(initialDelay * factor ** min(attempt, 64), maxDelay)
        return ceiling / 2 + jitter() * ceiling / 2

    return policy


def _dialFailure(failure: Failure, address: TunnelAddress, timeout: float) -> StreamOpenFailed:
    where = f"{address.host}:{address.port}"
    if failure.check(ConnectionRefusedError):
        return StreamOpenFailed(OpenFailReason.REFUSED, f"connection to {where} refused")
    if failure.check(TimeoutError, TCPTimedOutError):
        return StreamOpenFailed(
            OpenFailReason.TIMEOUT, f"connection to {where} timed out after {timeout:g}s"
        )
    if failure.check(NoRouteError, DNSLookupError):
        return StreamOpenFailed(OpenFailReason.UNREACHABLE, f"no route to {where}")
    if failure.check(ConnectError):
        return StreamOpenFailed(
            OpenFailReason.UNREACHABLE, f"cannot connect to {where}: {failure.getErrorMessage()}"
        )
    reason = failure.getErrorMessage()
    return StreamOpenFailed(OpenFailReason.INTERNAL, f"dialing {where}: {reason}")


@implementer(ITunnelHandler)
class _AgentSide:
    """The agent's half of one tunnel: announces the node, dials targets."""

    log = Logger()

    def __init__(self, agent: TunnelAgent) -> None:
        self.agent = agent

    def helloInfo(self) -> dict[str, Any]:
        return {
            "node": self.agent.nodeName,
            "ips": list(self.agent.nodeIPs),
            # the replicas we hold already: one of them refuses a second tunnel
            "servers": self.agent.servers(),
            "software": f"twisted-tunnel {__version__}",
            # a server that sweeps may keep this tunnel alive: we then only probe
            KEEPALIVE_INFO: SERVER_KEEPS_ALIVE,
        }

    def helloReceived(self, tunnel: Tunnel, info: dict[str, Any]) -> None:
        _checkServerHello(info)
        tunnel.nodeName = self.agent.nodeName

    def openRequested(self, tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        return self.agent.dial(address)

    def tunnelDraining(self, tunnel: Tunnel) -> None:
        self.agent._tunnelDraining(tunnel)

    def tunnelLost(self, tunnel: Tunnel, reason: Failure) -> None:
        if tunnel.version is not None:
            self.log.info("tunnel lost: {reason}", reason=reason.getErrorMessage())


class _AgentTunnelFactory(Factory):
    noisy = False

    def __init__(self, agent: TunnelAgent) -> None:
        self.agent = agent

    def buildProtocol(self, addr: Any) -> Tunnel:
        agent = self.agent
        return Tunnel(
            _AgentSide(agent),
            agent.reactor,
            isClient=True,
            settings=agent.settings,
            keepalive=agent.keepalive,
            nodeName=agent.nodeName,
            meter=agent.metrics.meter,
            # one budget for the tunnels to every replica
            budget=agent.budget,
        )


class Reconnector:
    """
    Keeps a tunnel up to every server replica behind one address, forever.

    The replicas sit behind one load balancer, so the only way to reach a
    particular one is to dial and see who answers.  It dials one connection
    at a time: after each new server it dials again at once, until it
    holds as many distinct servers as their HELLOs announce
    (C{server_count}).  A replica it already holds refuses the extra
    connection (C{DUPLICATE}), which counts as a miss, so the search backs
    off like a failure and never hammers the servers; holding all of them,
    it dials only once every L{VERIFY_INTERVAL} or so, to check that no
    server was missed, until a tunnel is lost or drained.  A failed attempt
    or a lost tunnel waits as C{retryPolicy} says, then dials again.

    What servers announce steers this search, so it is bounded: at most
    C{maxServers} tunnels whatever they announce, ids checked before they
    are held or echoed (L{_checkServerHello}), and a count that one server
    cannot lower on its own, counted only among the servers that announce
    it (see L{wanted} and L{held}).

    Two server processes that announce one id (replicas given the same
    C{--server-id}) would each accept the agent in turn, each replacing the
    other's tunnel: a reconnect storm.  Every server process announces a
    random C{instance}; a restarted replica comes back with a new one, and
    an instance never comes back once its process is gone.  So when an
    instance we replaced by another instance of the same id answers again,
    two processes share that id: the agent keeps the tunnel it holds,
    closes the new one with C{GOAWAY DUPLICATE_SERVER_ID} (the server logs
    an error), logs an error naming the id, and dials again only after a
    slowed-down backoff.

    @ivar tunnels: the tunnels that are up and not draining, by server id.
    @ivar failures: attempts in a row that brought no new server.
    @ivar report: told how each attempt ended (see L{attemptResult}).
    @ivar maxServers: the most tunnels held at once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        retryPolicy: Callable[[int], float],
        describe: str,
        report: Callable[[str], object] = lambda result: None,
        *,
        maxServers: int = DEFAULT_MAX_SERVERS,
        logThrottle: LogThrottle | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not 1 <= maxServers <= MAX_SERVERS:
            raise ValueError(f"maxServers must be in 1..{MAX_SERVERS}")
        self.clock = clock
        self.jitter = jitter
        self.endpoint = endpoint
        self.factory = factory
        self.retryPolicy = retryPolicy
        self.describe = describe
        self.report = report
        self.maxServers = maxServers
        self.logThrottle = logThrottle or LogThrottle(clock)
        self.tunnels: dict[str, Tunnel] = {}
        self.failures = 0
        self._duplicates = 0  # DUPLICATE refusals in a row
        # server id -> (server_count it announced, when its tunnel went),
        # for servers no longer held; oldest first, at most maxServers
        self._remembered: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # server id -> instances of it that another instance replaced
        self._replaced: OrderedDict[str, list[str]] = OrderedDict()
        self._draining: set[Tunnel] = set()
        self._running = False
        self._attempt: Deferred[Tunnel] | None = None
        self._handshaking: Tunnel | None = None
        self._retry: IDelayedCall | None = None
        self._verifying = False  # whether _retry is a check that no server was missed
        self._waiting: list[tuple[Deferred[Tunnel], int | None]] = []

    @property
    def tunnel(self) -> Tunnel | None:
        """A tunnel that is up (the oldest), if any."""
        return next(iter(self.tunnels.values()), None)

    @property
    def wanted(self) -> int:
        """
        How many servers there are to hold: the largest C{server_count}
        announced by a server we hold, or held less than L{COUNT_MEMORY}
        seconds ago, at most C{maxServers}; 1 if none.

        The largest, not the latest or the most common: too low a count
        locks the agent out of the replicas it stops looking for (their
        requests for this node fail), while too high a count costs a search
        that slows down to one dial every few minutes, bounded by
        C{maxServers}.  So one server announcing 1 (a hostile one, or the
        first reached after a network blip) cannot stop the search for the
        others that announced 3; after a scale-down, every remaining replica
        announces the new count, and the count of the replica that is gone
        is forgotten after L{COUNT_MEMORY}.
        """
        now = self.clock.seconds()
        remembered = self._remembered
        while remembered and now - next(iter(remembered.values()))[1] >= COUNT_MEMORY:
            remembered.popitem(last=False)
        counts = [_serverCount(t) for t in self.tunnels.values()]
        counts += [count for sid, (count, _) in remembered.items() if sid not in self.tunnels]
        return min(max(counts, default=1), self.maxServers)

    @property
    def held(self) -> int:
        """
        How many of the servers held count toward L{wanted}: those that
        announce at least that many replicas (all of them, unless servers
        disagree).

        A server that announces fewer (C{server_count: 1} from a hostile
        holder of a server certificate, or an old replica during a change
        of C{--server-count}) is held but not counted: the replicas that
        announced more are still looked for, so that it cannot stand in for
        one of them.
        """
        wanted = self.wanted
        return sum(1 for t in self.tunnels.values() if _serverCount(t) >= wanted)

    def _remember(self, serverId: str, tunnel: Tunnel) -> None:
        """C{tunnel}, the one held for C{serverId}, is no longer held: remember its count."""
        self._remembered.pop(serverId, None)
        self._remembered[serverId] = (_serverCount(tunnel), self.clock.seconds())
        while len(self._remembered) > self.maxServers:
            self._remembered.popitem(last=False)

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._connect()

    def stop(self, reason: str = "agent stopping", drainTimeout: float = 0.0) -> Deferred[None]:
        """
        Stop dialing and end every tunnel, telling each server why.  With a
        C{drainTimeout}, drain them (GOAWAY: the servers route no new
        streams here, and the streams in flight have that long to finish)
        instead of closing them at once.  Fires when every connection is
        gone.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiting, self._waiting = self._waiting, []
        for d, _ in waiting:
            d.errback(CancelledError("the agent stopped"))
        tunnels = [*self.tunnels.values(), *self._draining]
        self.tunnels.clear()
        self._draining.clear()
        if self._handshaking is not None:
            # connected but HELLO not done yet: that tunnel must end too
            tunnels.append(self._handshaking)
            self._handshaking = None
        if self._attempt is not None:
            self._attempt.cancel()
        if not tunnels:
            return succeed(None)
        ended = drainTunnels(self.clock, tunnels, drainTimeout, reason, self.log)
        return ended.addCallback(lambda _: None)

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[Tunnel]:
        """
        A tunnel that is up, or the next one to come up.

        @param failAfterFailures: fail with the reason of the last attempt
            after this many more failed attempts (C{None}: never fail).
        """
        tunnel = self.tunnel
        if tunnel is not None:
            return succeed(tunnel)
        d: Deferred[Tunnel] = Deferred()
        self._waiting.append((d, failAfterFailures))
        return d

    def draining(self, tunnel: Tunnel) -> None:
        """
        C{tunnel}'s server is draining it (it is shutting down): stop
        counting it, let its streams finish, and find its replacement.
        """
        serverId = _serverId(tunnel)
        if self.tunnels.get(serverId) is tunnel:
            del self.tunnels[serverId]
            self._remember(serverId, tunnel)
            self._duplicates = 0
            self._draining.add(tunnel)
            tunnel.whenLost().addCallback(lambda _: self._draining.discard(tunnel))
            self._dialIfShort(self.retryPolicy(0), f"server {serverId} is draining our tunnel")

    @property
    def _short(self) -> bool:
        """Whether a server is missing, and one more could be held."""
        return self.held < self.wanted and len(self.tunnels) < self.maxServers

    def _dialIfShort(self, delay: float, why: str) -> None:
        """
        Dial in C{delay} seconds if a server is missing and no dial is under
        way.  A dial planned later (the check that no server was missed, or
        a slowed-down backoff, as after a duplicate server id or many
        C{DUPLICATE} refusals) is brought forward: losing a tunnel is a
        change, and the node may have no tunnel left at all.
        """
        if not self._running or self._attempt is not None:
            return
        short = self._short
        retry = self._retry
        if retry is not None:
            if short and (self._verifying or retry.getTime() > self.clock.seconds() + delay):
                retry.cancel()
                self._retry = None
                self._verifying = False
            else:
                return
        if not short:
            self._verifyLater()
            return
        self.log.info(
            "{why}; dialing {server} in {delay:.1f}s ({held} of {wanted} servers held)",
            why=why,
            server=self.describe,
            delay=delay,
            held=self.held,
            wanted=self.wanted,
        )
        self._retry = self.clock.callLater(delay, self._connect)

    def _verifyLater(self) -> None:
        """
        Holding every server known, dial once more after about
        L{VERIFY_INTERVAL}, in case the servers held announced too few.
        """
        if not self._running or self._retry is not None or self._attempt is not None:
            return
        delay = VERIFY_INTERVAL * (1 + self.jitter()) / 2
        self._retry = self.clock.callLater(delay, self._connect)
        self._verifying = True

    def _connect(self) -> None:
        self._retry = None
        self._verifying = False
        attempt: Deferred[Any] = self.endpoint.connect(self.factory)
        attempt.addCallback(self._handshake)
        self._attempt = attempt
        attempt.addCallbacks(self._established, self._failed)

    def _handshake(self, tunnel: Tunnel) -> Deferred[Tunnel]:
        self._handshaking = tunnel
        return tunnel.whenEstablished()

    def _established(self, tunnel: Tunnel) -> None:
        self._attempt = self._handshaking = None
        if not self._running:
            tunnel.close(ErrorCode.SHUTTING_DOWN, "agent stopping")
            return
        serverId = _serverId(tunnel)
        old = self.tunnels.get(serverId)
        if old is not None and self._sharesId(serverId, old, tunnel):
            self._refuseSharedId(serverId, old, tunnel)
            return
        if old is None and len(self.tunnels) >= self.maxServers:
            # at the cap (the check that no server was missed found one
            # more): what servers announce never makes the agent hold more
            tunnel.close(ErrorCode.NO_ERROR, f"the agent holds its {self.maxServers} servers")
            self._verifyLater()
            return
        self.failures = self._duplicates = 0
        self.report("ok")
        self.tunnels.pop(serverId, None)
        self.tunnels[serverId] = tunnel
        self._remembered.pop(serverId, None)
        if old is not None:
            # the server accepted a second tunnel, so it no longer had the
            # first (it replaced it, or restarted under the same id)
            self._replacedBy(serverId, old, tunnel)
            old.close(ErrorCode.REPLACED, "a newer tunnel to the same server")
        tunnel.whenLost().addCallback(self._lost, tunnel)
        announced = _serverCount(tunnel)
        if announced > self.maxServers:
            self.logThrottle.emit(
                self.log,
                LogLevel.warn,
                "server {server_id} announces {count} replicas, more than --max-servers "
                "{max_servers}: holding tunnels to {max_servers} of them at most",
                server_id=serverId,
                count=announced,
                max_servers=self.maxServers,
            )
        self.log.info(
            "tunnel up to server {server_id} at {peer} ({held} of {wanted} servers)",
            server_id=serverId or "(unnamed)",
            peer=tunnel.peerLabel(),
            held=self.held,
            wanted=self.wanted,
        )
        waiting, self._waiting = self._waiting, []
        for d, _ in waiting:
            d.callback(tunnel)
        self._dialIfShort(0.0, "looking for the other servers")

    def _sharesId(self, serverId: str, held: Tunnel, new: Tunnel) -> bool:
        """
        Whether C{new} comes from a second process that announces
        C{serverId}, which C{held} announces too: its instance is one that
        another instance of the id replaced earlier, so it was alive all
        along (a restarted process never comes back with its old instance).
        """
        instance = _instance(new)
        return (
            bool(instance)
            and instance != _instance(held)
            and (instance in self._replaced.get(serverId, ()))
        )

    def _replacedBy(self, serverId: str, old: Tunnel, new: Tunnel) -> None:
        """Remember that C{old}'s instance of C{serverId} was replaced by another."""
        instance = _instance(old)
        if not instance or instance == _instance(new):
            return
        instances = self._replaced.pop(serverId, [])
        if instance not in instances:
            instances = [*instances, instance][-_INSTANCES_PER_ID:]
        self._replaced[serverId] = instances
        while len(self._replaced) > 2 * self.maxServers:
            self._replaced.popitem(last=False)

    def _refuseSharedId(self, serverId: str, held: Tunnel, new: Tunnel) -> None:
        """
        Two server processes announce C{serverId}: keep C{held}, close
        C{new}, say so, and dial again only after a slowed-down backoff (a
        count of replicas that share ids can never be reached).
        """
        self.failures += 1
        self.report("duplicate_server_id")
        self._replacedBy(serverId, held, new)  # whichever of the two comes next is refused
        delay = self.retryPolicy(self.failures) * SEARCH_SLOWDOWN
        new.close(
            ErrorCode.DUPLICATE_SERVER_ID,
            f"another server process uses server id {serverId} (the agent holds a tunnel to "
            "it): give each replica its own --server-id",
        )
        self.logThrottle.emit(
            self.log,
            LogLevel.error,
            "two server processes announce server id {server_id} (instance {held_instance} "
            "at {held_peer}, held, and instance {new_instance} at {new_peer}, closed): give "
            "each replica its own --server-id; dialing {server} again in {delay:.0f}s",
            key=serverId,
            server_id=serverId,
            held_instance=_instance(held),
            held_peer=held.peerLabel(),
            new_instance=_instance(new),
            new_peer=new.peerLabel(),
            server=self.describe,
            delay=delay,
        )
        if self._short:
            self._retry = self.clock.callLater(delay, self._connect)

    def _failed(self, failure: Failure) -> None:
        attempted, self._handshaking = self._handshaking, None
        self._attempt = None
        if not self._running:
            return
        goaway = attempted.peerGoAway if attempted is not None else None
        self.report(attemptResult(failure, goaway))
        why = goaway[1] if goaway is not None else _attemptFailure(failure, attempted)
        if not self._short:
            # a check that no server was missed: none was (or no answer)
            self.log.debug(
                "holding {held} of {wanted} servers, none missed: {reason}",
                held=self.held,
                wanted=self.wanted,
                reason=why,
            )
            self._verifyLater()
            return
        self.failures += 1
        delay = self.retryPolicy(self.failures)
        if goaway is not None and goaway[0] == ErrorCode.DUPLICATE:
            self._duplicates += 1
            if self._duplicates >= SEARCH_PATIENCE:
                # a replica that stays missing (gone for good, or a
                # --server-count above the replicas running): do not make
                # every agent of the fleet handshake with the others forever
                delay *= SEARCH_SLOWDOWN
                if self._duplicates == SEARCH_PATIENCE:
                    self.log.info(
                        "still holding {held} of {wanted} servers after {tries} tries; "
                        "looking every few minutes from now on (does --server-count match "
                        "the replicas running?)",
                        held=self.held,
                        wanted=self.wanted,
                        tries=self._duplicates,
                    )
            self.log.debug(
                "reached a server we already hold ({reason}); dialing again in {delay:.1f}s",
                reason=goaway[1],
                delay=delay,
            )
        else:
            self._failWaiting(failure)
            self.log.emit(
                LogLevel.info if self.tunnels else LogLevel.warn,
                "no tunnel to {server}: {reason}; retrying in {delay:.1f}s "
                "({held} of {wanted} servers held)",
                server=self.describe,
                reason=why,
                delay=delay,
                failures=self.failures,
                held=self.held,
                wanted=self.wanted,
            )
        self._retry = self.clock.callLater(delay, self._connect)

    def _failWaiting(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d, remaining in waiting:
            if remaining is not None and remaining <= 1:
                d.errback(failure)
            else:
                self._waiting.append((d, None if remaining is None else remaining - 1))

    def _lost(self, _: None, tunnel: Tunnel) -> None:
        serverId = _serverId(tunnel)
        goaway = tunnel.peerGoAway
        if goaway is not None and goaway[0] == ErrorCode.REPLACED:
            self._replacedByAnother(serverId, tunnel, goaway[1])
        if self.tunnels.get(serverId) is tunnel:
            del self.tunnels[serverId]
            self._remember(serverId, tunnel)
            self._duplicates = 0  # something changed: search at the normal pace again
            self._dialIfShort(self.retryPolicy(0), f"tunnel to server {serverId} lost")

    def _replacedByAnother(self, serverId: str, tunnel: Tunnel, reason: str) -> None:
        """
        The server replaced C{tunnel} by a newer connection for our node.
        Not one of ours: our HELLO lists the servers we hold, and a server
        refuses (C{DUPLICATE}) a second tunnel from an agent that holds one
        to it.  So another agent proves this node, and the two will replace
        each other's tunnels, over and over: say so, and what to check.
        (The server says it too: L{twisted_tunnel.server.flapping}.)
        """
        self.logThrottle.emit(
            self.log,
            LogLevel.warn,
            "server {server_id} replaced our tunnel for node {node} with a newer connection "
            "({reason}) that this agent did not make: another agent proves this node (one "
            "certificate, or one --node-name, used on two machines?); each closes the "
            "other's tunnel: give each machine its own",
            key=serverId,
            server_id=serverId or "(unnamed)",
            node=tunnel.nodeName or "-",
            reason=reason,
        )


def attemptResult(failure: Failure, goaway: tuple[int, str] | None) -> str:
    """
    How a failed connection to the server ended, for metrics: C{duplicate},
    C{refused} (any other GOAWAY), C{connect_refused}, C{connect_timeout},
    C{dns}, or a TLS handshake failure's reason.
    """
    if goaway is not None:
        return "duplicate" if goaway[0] == ErrorCode.DUPLICATE else "refused"
    if failure.check(ConnectionRefusedError):
        return "connect_refused"
    if failure.check(TimeoutError, TCPTimedOutError):
        return "connect_timeout"
    if failure.check(DNSLookupError):
        return "dns"
    return handshakeFailureReason(failure.getErrorMessage())


def _attemptFailure(failure: Failure, attempted: Tunnel | None) -> str:
    """
    Why an attempt failed, in one line: a failed TLS handshake in words
    (whose certificate, which check: L{describeTLSFailure}), else the error.
    """
    transport = attempted.transport if attempted is not None else None
    # the tunnel's "lost before it was up" names the error that ended it as its cause
    error = failure.value
    error = (error.__cause__ if error is not None else None) or error
    described = describeTLSFailure(error, handleOf(transport))
    return described if described is not None else failure.getErrorMessage()


def _checkServerHello(info: dict[str, Any]) -> None:
    """
    Refuse a server HELLO whose C{server_id}, C{instance} or
    C{server_count} is not what a real server sends.

    The agent echoes the ids it holds in every later HELLO (C{servers}), and
    counts the replicas by them: an unbounded id (two of 40 KB made every
    real replica refuse our HELLO as too large) or an absurd count is a
    hostile or broken server, and counts as a failed attempt.

    @raise Refused: C{PROTOCOL_ERROR}, saying which key is wrong (the value
        itself is not repeated: it may be anything).
    """
    for key in ("server_id", "instance"):
        if key in info and not validServerId(info[key]):
            raise Refused(
                ErrorCode.PROTOCOL_ERROR,
                f"server HELLO {key} is not 1 to {MAX_SERVER_ID} letters, digits and . _ : -",
            )
    count = info.get("server_count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SERVERS:
        raise Refused(
            ErrorCode.PROTOCOL_ERROR,
            f"server HELLO server_count is not an integer in 1..{MAX_SERVERS}",
        )


def _serverId(tunnel: Tunnel) -> str:
    """The C{server_id} in a server's HELLO ("" if absent; checked by L{_checkServerHello})."""
    return str(tunnel.peerInfo.get("server_id", ""))


def _instance(tunnel: Tunnel) -> str:
    """The C{instance} in a server's HELLO: one per server process ("" if absent)."""
    return str(tunnel.peerInfo.get("instance", ""))


def _serverCount(tunnel: Tunnel) -> int:
    """The C{server_count} in a server's HELLO: 1 if absent (checked by L{_checkServerHello})."""
    count: int = tunnel.peerInfo.get("server_count", 1)
    return count


@implementer(IStreamClientEndpoint)
class _DialWithCurrentCredentials:
    """The agent's server endpoint, made afresh for each dial."""

    def __init__(self, agent: TunnelAgent) -> None:
        self.agent = agent

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting: Deferred[IProtocol] = self.agent._tlsEndpoint().connect(protocolFactory)
        return connecting


class TunnelAgent(Service):
    """
    The agent as a service: holds a tunnel to every server replica behind
    its server address, forever (see L{Reconnector}).

    Stopping it sends GOAWAY on every tunnel, so the servers know at once
    (without waiting for their keepalive) and route no new streams here.
    With a C{drainTimeout}, the streams in flight have that long to finish;
    without, they are closed at once.

    With a C{reloadInterval}, the files its credentials came from are
    checked that often, and a rotated set is used from the next dial on
    (see L{twisted_tunnel.tls.rotation}); the tunnels already up keep the
    certificate they proved themselves with, until they must reconnect or
    the server closes them when it expires.  A rotated certificate that no
    longer carries C{nodeName} is refused, and the one in use kept: the
    server would refuse it.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        credentials: Credentials | None,
        server: tuple[str, int],
        nodeName: str,
        nodeIPs: Sequence[str] = (),
        *,
        serverName: str | None = None,
        allow: Iterable[str] = (),
        settings: Settings = Settings(),
        keepalive: Keepalive = Keepalive(),
        dialTimeout: float = DEFAULT_DIAL_TIMEOUT,
        retryPolicy: Callable[[int], float] | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        reloadInterval: float = 0.0,
        drainTimeout: float = 0.0,
        connectTimeout: float = DEFAULT_CONNECT_TIMEOUT,
        maxServers: int = DEFAULT_MAX_SERVERS,
        relayTimeouts: RelayTimeouts = DEFAULT_RELAY_TIMEOUTS,
        budget: StreamBudget | None = None,
        reload: Callable[[], Credentials] | None = None,
    ) -> None:
        """
        @param relayTimeouts: the idle and half-close deadlines of the
            streams it relays to targets.
        @param reload: loads and checks the credentials' files again on a
            rotation (e.g. L{twisted_tunnel.tls.kubelet.loadNodeCredentials}
            for the kubelet's file); by default L{loadCredentials} with the
            paths they came from.
        @param budget: the limits on streams across all its tunnels (by
            default L{DEFAULT_MAX_STREAMS_TOTAL} streams and
            L{DEFAULT_MAX_BUFFER} bytes, within the open-file limit).
        """
        if not 1 <= maxServers <= MAX_SERVERS:
            raise ValueError(f"maxServers must be in 1..{MAX_SERVERS}")
        self.reactor = reactor
        self.credentials = credentials
        self.server = server
        self.serverName = serverName or server[0]
        self.nodeName = nodeName
        self.nodeIPs = tuple(str(ipaddress.ip_address(ip)) for ip in nodeIPs)
        self.allowlist = Allowlist(self.nodeIPs, allow)
        self.settings = settings
        self.keepalive = keepalive
        self.dialTimeout = dialTimeout
        self.retryPolicy = retryPolicy or backoffPolicy()
        self.drainTimeout = drainTimeout
        self.connectTimeout = connectTimeout
        self.maxServers = maxServers
        self.relayReaper = RelayReaper(reactor, relayTimeouts)
        if budget is None:
            budget = StreamBudget.forProcess(
                reactor, maxStreams=DEFAULT_MAX_STREAMS_TOTAL, maxBufferBytes=DEFAULT_MAX_BUFFER
            )
        self.budget = budget
        # the server decides how often we refuse or fail a dial: one line
        # per refusal, up to a few a minute, then a count
        self.logThrottle = LogThrottle(reactor)
        self.metrics = AgentMetrics(self)
        self._endpoint = endpoint
        self._reconnector: Reconnector | None = None
        self.reloadInterval = reloadInterval
        self._reload = reload
        self._watcher: CredentialsWatcher | None = None

    def serverEndpoint(self) -> IStreamClientEndpoint:
        """
        Where to dial: TLS to the server (or the load balancer in front),
        with the credentials current at each dial (see L{updateCredentials}).
        """
        if self._endpoint is not None:
            return self._endpoint
        if self.credentials is None:
            raise ValueError("an agent without credentials cannot dial a server over TLS")
        return _DialWithCurrentCredentials(self)

    def _tlsEndpoint(self) -> IStreamClientEndpoint:
        assert self.credentials is not None
        host, port = self.server
        return wrapClientTLS(
            agentOptions(self.credentials, self.serverName),
            HostnameEndpoint(self.reactor, host, port, timeout=self.connectTimeout),
        )

    def updateCredentials(self, credentials: Credentials) -> None:
        """
        Dial with C{credentials} from now on (a rotated certificate, key or
        CA); the tunnel already up keeps its connection.
        """
        self.credentials = credentials

    def _reloadCredentials(self) -> Credentials:
        """The credentials' files, loaded again for a rotation (see L{keepingNode})."""
        assert self.credentials is not None
        current = self.credentials
        load = self._reload or partial(
            loadCredentials, current.caPath, current.certPath, current.keyPath
        )
        return keepingNode(load, self.nodeName)()

    def startService(self) -> None:
        super().startService()
        if self.credentials is not None and self._endpoint is None:
            self._watcher = watchCredentials(
                self.credentials,
                self.updateCredentials,
                self.reactor,
                self.reloadInterval,
                load=self._reloadCredentials,
            )
            if self._watcher is not None:
                self._watcher.startService()
        self.log.info(
            "agent for node {node} dialing {host}:{port}; may dial {allowed}",
            node=self.nodeName,
            host=self.server[0],
            port=self.server[1],
            allowed=self.allowlist.describe(),
        )
        host, port = self.server
        self._reconnector = Reconnector(
            self.reactor,
            self.serverEndpoint(),
            _AgentTunnelFactory(self),
            self.retryPolicy,
            f"{host}:{port}",
            self.metrics.connectAttempted,
            maxServers=self.maxServers,
            logThrottle=self.logThrottle,
        )
        self._reconnector.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stopService()
        reconnector, self._reconnector = self._reconnector, None
        self.logThrottle.flush()
        if reconnector is not None:
            return reconnector.stop(drainTimeout=self.drainTimeout)
        return None

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[Tunnel]:
        """
        Fires with the L{Tunnel} once it is up (HELLO done both ways); see
        L{Reconnector.whenConnected}.
        """
        assert self._reconnector is not None, "the agent is not running"
        return self._reconnector.whenConnected(failAfterFailures)

    @property
    def tunnel(self) -> Tunnel | None:
        """A tunnel that is up (to the server held longest), if any."""
        return self._reconnector.tunnel if self._reconnector is not None else None

    @property
    def tunnels(self) -> dict[str, Tunnel]:
        """The tunnels that are up and not draining, by server id."""
        return dict(self._reconnector.tunnels) if self._reconnector is not None else {}

    @property
    def serverId(self) -> str:
        """The id of the server that L{tunnel} leads to ("" if none)."""
        tunnel = self.tunnel
        return _serverId(tunnel) if tunnel is not None else ""

    def servers(self) -> list[str]:
        """The ids of the server replicas we hold a tunnel to."""
        return list(self._reconnector.tunnels) if self._reconnector is not None else []

    def serversWanted(self) -> int:
        """How many server replicas there are to hold (see L{Reconnector.wanted})."""
        return self._reconnector.wanted if self._reconnector is not None else 1

    def _tunnelDraining(self, tunnel: Tunnel) -> None:
        if self._reconnector is not None:
            self._reconnector.draining(tunnel)

    def dial(self, address: TunnelAddress) -> Deferred[IProtocol]:
        """
        Connect to a target the server asked for, if the allowlist permits.

        @return: fires with the relay end for the stream, already paired
            with the connected target; fails with L{StreamOpenFailed}.
        """
        result: Deferred[IProtocol] = Deferred()
        ip = parseIP(address.host)
        if ip is None:
            self.logThrottle.emit(
                self.log,
                LogLevel.warn,
                "refused to dial {host}:{port}: not an IP address",
                host=address.host,
                port=address.port,
            )
            self.metrics.dialed("not_allowed")
            result.errback(
                StreamOpenFailed(
                    OpenFailReason.NOT_ALLOWED, f"{address.host!r} is not an IP address"
                )
            )
            return result
        if not self.allowlist.permits(ip):
            self.logThrottle.emit(
                self.log,
                LogLevel.warn,
                "refused to dial {host}:{port}: not allowed (may dial {allowed})",
                host=str(ip),
                port=address.port,
                allowed=self.allowlist.describe(),
            )
            self.metrics.dialed("not_allowed")
            result.errback(
                StreamOpenFailed(
                    OpenFailReason.NOT_ALLOWED,
                    f"agent of {self.nodeName} may not dial {ip}:{address.port}",
                )
            )
            return result
        reactor: IReactorTCP = self.reactor
        endpointType = TCP4ClientEndpoint if ip.version == 4 else TCP6ClientEndpoint
        endpoint = endpointType(reactor, str(ip), address.port, timeout=self.dialTimeout)
        connecting = endpoint.connect(relayEnds)

        def connected(target: IProtocol) -> IProtocol:
            assert isinstance(target, RelayProtocol)
            self.metrics.dialed("ok")
            return RelayProtocol(peer=target, reaper=self.relayReaper)

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            error = _dialFailure(failure, address, self.dialTimeout)
            self.metrics.dialed(OpenFailReason(error.reason).name.lower())
            self.logThrottle.emit(
                self.log,
                LogLevel.info,
                "dial {host}:{port} failed: {reason}",
                key=error.reason,
                host=address.host,
                port=address.port,
                reason=error.text,
            )
            return Failure(error)

        connecting.addCallbacks(connected, failed)
        return connecting
