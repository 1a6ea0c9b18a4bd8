# -*- test-case-name: tests.test_agent -*-
"""
The edge side: dial out to the server, keep the tunnel up, dial what the
server asks for, within limits.

The agent is the only party that can reach the edge network, so it is the
one that decides what may be reached: by default its own node IPs and the
loopback addresses, nothing else (L{Allowlist}).  A request for anything
else is refused with OPEN_FAIL C{not allowed} and a log line.

It reconnects forever, with exponential backoff and jitter (so that a
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
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
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
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__
from .errors import StreamOpenFailed
from .mux import ITunnelHandler, Keepalive, Settings, Tunnel, TunnelAddress
from .relay import RelayProtocol
from .rotation import CredentialsWatcher, watchCredentials
from .tls import Credentials, agentOptions
from .wire import ErrorCode, OpenFailReason

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: How long the agent waits for a target to accept a connection.
DEFAULT_DIAL_TIMEOUT = 5.0


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

    def permits(self, address: _IPAddress) -> bool:
        if address in self.nodeIPs or address in self.loopback:
            return True
        return any(address in network for network in self.networks)

    def describe(self) -> str:
        parts = [str(ip) for ip in sorted(self.nodeIPs | self.loopback, key=str)]
        parts += [str(net) for net in self.networks]
        return ", ".join(parts)


@lru_cache(maxsize=1024)
def _parseIP(host: str) -> _IPAddress | None:
    """
    The IP address in C{host}, or L{None}: cached, since a server asks for the
    same few addresses (node IPs, loopback) on every stream open.
    """
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


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
            "software": f"twisted-tunnel {__version__}",
        }

    def helloReceived(self, tunnel: Tunnel, info: dict[str, Any]) -> None:
        tunnel.nodeName = self.agent.nodeName
        self.agent.serverId = str(info.get("server_id", ""))
        self.log.info(
            "tunnel up to server {server_id} at {peer}",
            server_id=self.agent.serverId,
            peer=tunnel._peerLabel(),
        )

    def openRequested(self, tunnel: Tunnel, address: TunnelAddress) -> Deferred[IProtocol]:
        return self.agent.dial(address)

    def tunnelDraining(self, tunnel: Tunnel) -> None:
        self.log.info("server {server_id} is draining our tunnel", server_id=self.agent.serverId)

    def tunnelLost(self, tunnel: Tunnel, reason: Failure) -> None:
        if tunnel.version is not None:
            self.log.info("tunnel lost: {reason}", reason=reason.getErrorMessage())


class _TargetFactory(Factory):
    """Builds the target end of a relay; quiet, as there is one per stream."""

    noisy = False
    protocol = RelayProtocol


_targetFactory = _TargetFactory()


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
        )


class Reconnector:
    """
    Keeps one tunnel up, forever: dial, wait for HELLO both ways, and when
    the attempt fails or the tunnel is lost, wait as C{retryPolicy} says and
    dial again.

    @ivar tunnel: the tunnel that is up, if any.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        retryPolicy: Callable[[int], float],
        describe: str,
    ) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.factory = factory
        self.retryPolicy = retryPolicy
        self.describe = describe
        self.tunnel: Tunnel | None = None
        self.failures = 0
        self._running = False
        self._attempt: Deferred[Tunnel] | None = None
        self._handshaking: Tunnel | None = None
        self._retry: IDelayedCall | None = None
        self._waiting: list[tuple[Deferred[Tunnel], int | None]] = []

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._connect()

    def stop(self, reason: str = "agent stopping") -> Deferred[None]:
        """
        Stop dialing; close the tunnel, telling the server why.  Fires
        when the connection is gone.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiting, self._waiting = self._waiting, []
        for d, _ in waiting:
            d.errback(CancelledError("the agent stopped"))
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is None:
            # connected but HELLO not done yet: that tunnel must end too
            tunnel, self._handshaking = self._handshaking, None
        if self._attempt is not None:
            self._attempt.cancel()
        if tunnel is None:
            return succeed(None)
        lost = tunnel.whenLost()
        tunnel.close(ErrorCode.SHUTTING_DOWN, reason)
        return lost

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[Tunnel]:
        """
        The tunnel that is up, or the next one to come up.

        @param failAfterFailures: fail with the reason of the last attempt
            after this many more failed attempts (L{None}: never fail).
        """
        if self.tunnel is not None:
            return succeed(self.tunnel)
        d: Deferred[Tunnel] = Deferred()
        self._waiting.append((d, failAfterFailures))
        return d

    def _connect(self) -> None:
        self._retry = None
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
        self.failures = 0
        self.tunnel = tunnel
        tunnel.whenLost().addCallback(self._lost, tunnel)
        waiting, self._waiting = self._waiting, []
        for d, _ in waiting:
            d.callback(tunnel)

    def _failed(self, failure: Failure) -> None:
        self._attempt = self._handshaking = None
        if not self._running:
            return
        self.failures += 1
        waiting, self._waiting = self._waiting, []
        for d, remaining in waiting:
            if remaining is not None and remaining <= 1:
                d.errback(failure)
            else:
                self._waiting.append((d, None if remaining is None else remaining - 1))
        delay = self.retryPolicy(self.failures)
        self.log.warn(
            "no tunnel to {server}: {reason}; retrying in {delay:.1f}s",
            server=self.describe,
            reason=failure.getErrorMessage(),
            delay=delay,
            failures=self.failures,
        )
        self._retry = self.clock.callLater(delay, self._connect)

    def _lost(self, _: None, tunnel: Tunnel) -> None:
        if self.tunnel is tunnel:
            self.tunnel = None
        if self._running and self._retry is None and self._attempt is None:
            delay = self.retryPolicy(0)
            self.log.info(
                "tunnel to {server} lost; reconnecting in {delay:.1f}s",
                server=self.describe,
                delay=delay,
            )
            self._retry = self.clock.callLater(delay, self._connect)


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
    The agent as a service: holds one tunnel to the server, forever.

    Stopping it closes the tunnel with GOAWAY, so the server knows at once
    (without waiting for its keepalive) and the process exits promptly.

    With a C{reloadInterval}, the files its credentials came from are
    checked that often, and a rotated set is used from the next dial on
    (see L{twisted_tunnel.rotation}).
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
    ) -> None:
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
        self.serverId = ""
        self._endpoint = endpoint
        self._reconnector: Reconnector | None = None
        self.reloadInterval = reloadInterval
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
            HostnameEndpoint(self.reactor, host, port, timeout=10),
        )

    def updateCredentials(self, credentials: Credentials) -> None:
        """
        Dial with C{credentials} from now on (a rotated certificate, key or
        CA); the tunnel already up keeps its connection.
        """
        self.credentials = credentials

    def startService(self) -> None:
        super().startService()
        if self.credentials is not None and self._endpoint is None:
            self._watcher = watchCredentials(
                self.credentials, self.updateCredentials, self.reactor, self.reloadInterval
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
        )
        self._reconnector.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stopService()
        reconnector, self._reconnector = self._reconnector, None
        if reconnector is not None:
            return reconnector.stop()
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
        """The tunnel that is up, if any."""
        return self._reconnector.tunnel if self._reconnector is not None else None

    def dial(self, address: TunnelAddress) -> Deferred[IProtocol]:
        """
        Connect to a target the server asked for, if the allowlist permits.

        @return: fires with the relay end for the stream, already paired
            with the connected target; fails with L{StreamOpenFailed}.
        """
        result: Deferred[IProtocol] = Deferred()
        ip = _parseIP(address.host)
        if ip is None:
            self.log.warn(
                "refused to dial {host}:{port}: not an IP address",
                host=address.host,
                port=address.port,
            )
            result.errback(
                StreamOpenFailed(
                    OpenFailReason.NOT_ALLOWED, f"{address.host!r} is not an IP address"
                )
            )
            return result
        if not self.allowlist.permits(ip):
            self.log.warn(
                "refused to dial {host}:{port}: not allowed (may dial {allowed})",
                host=str(ip),
                port=address.port,
                allowed=self.allowlist.describe(),
            )
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
        connecting = endpoint.connect(_targetFactory)

        def connected(target: IProtocol) -> IProtocol:
            assert isinstance(target, RelayProtocol)
            return RelayProtocol(peer=target)

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            error = _dialFailure(failure, address, self.dialTimeout)
            self.log.info(
                "dial {host}:{port} failed: {reason}",
                host=address.host,
                port=address.port,
                reason=error.text,
            )
            return Failure(error)

        connecting.addCallbacks(connected, failed)
        return connecting
