# -*- test-case-name: tests.doors.test_forward -*-
"""
Static forward listeners: every connection accepted on a local endpoint is
carried to one fixed port on one edge node, like C{ssh -R}'s forwards.

For tools that cannot speak CONNECT (iperf3, a browser, a script) and for
the benchmark.  The listener belongs to the operator's configuration
(C{--forward}), so it reaches exactly one node and port.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import TunnelError
from ..mux import IEarlyStreamFactory
from ..net.addresses import HostPortError, splitHostPort
from ..net.relay import RelayProtocol, RelayReaper, relayEnds, splice
from ..server import TunnelServer


@implementer(IEarlyStreamFactory)
class EarlyRelayEnd(Factory):
    """
    Builds the far end of one relay as an early stream: spliced to C{near}
    as soon as the OPEN is sent, so that what the client sent first travels
    right behind the OPEN instead of a round trip later (see
    L{IEarlyStreamFactory}).  One per connection; quiet.
    """

    noisy = False

    def __init__(self, near: RelayProtocol, reaper: RelayReaper | None) -> None:
        self.near = near
        self.reaper = reaper

    def buildProtocol(self, addr: Any) -> RelayProtocol:
        return RelayProtocol(peer=self.near, reaper=self.reaper)


class OpeningRelay(RelayProtocol):
    """
    A local end that opens its far end when it connects: paused until the
    stream to the node is open, then spliced to it; closed, with one log
    line saying why, when it cannot be opened.

    With L{openEarly}, the far end is an early stream (L{EarlyRelayEnd}):
    spliced at once, so the client's first bytes follow the OPEN; a refused
    open still closes the client's connection with the same log line (its
    bytes sent so far are dropped by the agent).  Only for a relay that
    owes its client no answer before the first byte: the CONNECT door, which
    answers C{200} only once the stream is open, cannot.
    """

    log = Logger()

    #: open the far end early (L{EarlyRelayEnd}) rather than after OPEN_OK
    openEarly = False

    def connectionMade(self) -> None:
        super().connectionMade()
        #: the far end opened early ended before the open was answered
        self._farLost: Failure | None = None
        factory = EarlyRelayEnd(self, self.relayReaper()) if self.openEarly else relayEnds
        self._opening: Deferred[IProtocol] | None = self.openFarEnd(factory)
        self._opening.addCallbacks(self._opened, self._failed)

    def openFarEnd(self, factory: Factory) -> Deferred[IProtocol]:
        """Connect C{factory}'s protocol to where this connection goes."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Structured log fields naming where this connection goes (C{where} at least)."""
        raise NotImplementedError

    def relayReaper(self) -> RelayReaper | None:
        """
        What holds the relay to its idle and half-close deadlines: the
        server's (L{TunnelServer.relayReaper}).
        """
        server = getattr(getattr(self, "factory", None), "server", None)
        if server is None:
            router = getattr(getattr(self, "factory", None), "router", None)
            server = getattr(router, "server", None)
        reaper: RelayReaper | None = getattr(server, "relayReaper", None)
        return reaper

    def _opened(self, streamEnd: IProtocol) -> None:
        self._opening = None
        assert isinstance(streamEnd, RelayProtocol)
        if self.openEarly:
            # spliced when the stream was opened; if it ended before this
            # answer (its own reset), end our side now as it would have
            lost, self._farLost = self._farLost, None
            if lost is not None and self.connected:
                super().peerLost(lost)
            return
        if not self.connected or self.transport is None:
            streamEnd.transport.loseConnection()  # type: ignore[union-attr]
            return
        splice(self, streamEnd, self.relayReaper())

    def _failed(self, failure: Failure) -> None:
        self._opening = None
        if failure.check(CancelledError):
            return
        reason = refusalText(failure)
        if reason is None:
            reason = "internal error"
            self.log.failure("connection to {where} failed", failure, **self.describe())
        self.log.info("connection to {where} refused: {reason}", reason=reason, **self.describe())
        if self.connected and self.transport is not None:
            self.transport.loseConnection()

    def peerLost(self, reason: Failure) -> None:
        if self._opening is not None:
            # an early far end that ended before the answer (the open
            # failed, or it reset itself): the answer decides (_failed
            # closes the client's connection as a refusal, _opened ends it
            # as the far end ended)
            self._farLost = reason
            return
        super().peerLost(reason)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        opening = getattr(self, "_opening", None)
        if opening is not None and not self.openEarly:
            # an early far end is spliced already: it hears of this end's
            # loss from the relay, and its open is left to finish (what the
            # client sent before it went still reaches the node)
            self._opening = None
            opening.cancel()
        super().connectionLost(reason)


def refusalText(failure: Failure) -> str | None:
    """
    The one-line reason for an expected refusal (no agent, dial refused,
    policy said no...), or C{None} for a bug, which deserves a traceback.
    """
    if failure.check(TunnelError):
        return failure.getErrorMessage()
    reason = getattr(failure.value, "reason", None)
    status = getattr(failure.value, "status", None)
    if isinstance(reason, str) and isinstance(status, int):
        return f"{status} {reason}"
    return None


class ForwardProtocol(OpeningRelay):
    """
    The local end of a static forward to one node port: opened early (it
    owes its client no answer; a refused open just closes the connection).
    """

    factory: ForwardFactory
    openEarly = True

    def openFarEnd(self, factory: Factory) -> Deferred[IProtocol]:
        return self.factory.server.endpointForNode(
            self.factory.node, self.factory.port, policy="forward"
        ).connect(factory)

    def describe(self) -> dict[str, Any]:
        node, port = self.factory.node, self.factory.port
        return {"where": f"{node}:{port}", "node": node, "port": port}


class ForwardFactory(Factory):
    """Accepts local connections and forwards each to C{node}:C{port}."""

    noisy = False

    def __init__(self, server: TunnelServer, node: str, port: int) -> None:
        self.server = server
        self.node = node
        self.port = port

    def buildProtocol(self, addr: Any) -> ForwardProtocol:  # type: ignore[override]
        protocol = ForwardProtocol()
        protocol.factory = self
        return protocol


def parseForward(spec: str) -> tuple[str, int, str]:
    """
    Parse C{NODE:PORT=ENDPOINT}, e.g. C{edge-1:9100=tcp:19100:interface=127.0.0.1}.

    @raise ValueError: with a message that names the bad part.
    """
    target, sep, endpoint = spec.partition("=")
    if not sep or not endpoint:
        raise ValueError(f"--forward {spec!r}: expected NODE:PORT=ENDPOINT")
    try:
        node, port = splitHostPort(target)
    except HostPortError as e:
        if e.problem == "port":
            raise ValueError(f"--forward {spec!r}: {e.port!r} is not a port") from None
        if e.problem == "ipv6":
            raise ValueError(
                f"--forward {spec!r}: write IPv6 addresses as [ADDRESS]:PORT"
            ) from None
        raise ValueError(f"--forward {spec!r}: expected NODE:PORT=ENDPOINT") from None
    return node, port, endpoint
