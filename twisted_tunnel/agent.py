# -*- test-case-name: tests.test_agent -*-
"""
The edge side: dial out to the server, keep the tunnel up, dial what the
server asks for, within limits.

The agent is the only party that can reach the edge network, so it is the
one that decides what may be reached: by default its own node IPs and the
loopback addresses, nothing else (L{Allowlist}).  A request for anything
else is refused with OPEN_FAIL C{not allowed} and a log line.

It reconnects forever, with exponential backoff and jitter (so that a
thousand agents coming back after a server restart do not arrive in step),
using Twisted's C{ClientService}; a server that refuses our HELLO counts as
a failed attempt, not a connection.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
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
from twisted.internet.interfaces import IProtocol, IReactorTCP, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__
from .errors import StreamOpenFailed
from .mux import ITunnelHandler, Keepalive, Settings, Tunnel, TunnelAddress
from .relay import RelayProtocol
from .tls import Credentials, agentOptions
from .wire import OpenFailReason

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


def _established(tunnel: Any) -> Deferred[Tunnel]:
    """
    C{ClientService}'s connection is made only when HELLO is done.  (It
    hands us a proxy of the L{Tunnel}, hence C{Any}.)
    """
    established: Deferred[Tunnel] = tunnel.whenEstablished()
    return established


class TunnelAgent(Service):
    """
    The agent as a service: holds one tunnel to the server, forever.

    @ivar whenConnected: see L{ClientService.whenConnected}.
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
        self._service: ClientService | None = None

    def serverEndpoint(self) -> IStreamClientEndpoint:
        """Where to dial: TLS to the server (or the load balancer in front)."""
        if self._endpoint is not None:
            return self._endpoint
        if self.credentials is None:
            raise ValueError("an agent without credentials cannot dial a server over TLS")
        host, port = self.server
        return wrapClientTLS(
            agentOptions(self.credentials, self.serverName),
            HostnameEndpoint(self.reactor, host, port, timeout=10),
        )

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "agent for node {node} dialing {host}:{port}; may dial {allowed}",
            node=self.nodeName,
            host=self.server[0],
            port=self.server[1],
            allowed=self.allowlist.describe(),
        )
        self._service = ClientService(
            self.serverEndpoint(),
            _AgentTunnelFactory(self),
            retryPolicy=self.retryPolicy,
            clock=self.reactor,
            prepareConnection=_established,
        )
        self._service.startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        service, self._service = self._service, None
        if service is not None:
            return service.stopService()
        return None

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[IProtocol]:
        """Fires with the L{Tunnel} once it is up (HELLO done both ways)."""
        assert self._service is not None, "the agent is not running"
        return self._service.whenConnected(failAfterFailures=failAfterFailures)

    def dial(self, address: TunnelAddress) -> Deferred[IProtocol]:
        """
        Connect to a target the server asked for, if the allowlist permits.

        @return: fires with the relay end for the stream, already paired
            with the connected target; fails with L{StreamOpenFailed}.
        """
        result: Deferred[IProtocol] = Deferred()
        try:
            ip = ipaddress.ip_address(address.host.strip("[]"))
        except ValueError:
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
