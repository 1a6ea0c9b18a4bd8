# -*- test-case-name: tests.server.test_security_identity -*-
"""
Closing an agent's tunnel when its certificate expires (L{CertificateExpiry}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ..wire import ErrorCode

if TYPE_CHECKING:
    from ..mux import Tunnel
    from . import AgentRecord


class CertificateExpiry:
    """
    One timer per agent tunnel, due when its certificate chain expires: the
    handshake proved the agent's identity only for the chain's validity,
    and a tunnel may outlive it by months.
    """

    def __init__(self, clock: IReactorTime, log: Logger) -> None:
        self.clock = clock
        self.log = log
        self._calls: dict[Tunnel, IDelayedCall] = {}

    def watch(self, record: AgentRecord) -> None:
        """Close C{record}'s tunnel when its certificate chain expires."""
        expires = record.identity.expires() if record.identity is not None else None
        if expires is None:
            return
        self.forget(record.tunnel)
        delay = max(0.0, expires.timestamp() - self.clock.seconds())
        self._calls[record.tunnel] = self.clock.callLater(delay, self._expired, record)

    def forget(self, tunnel: Tunnel) -> None:
        """C{tunnel} is gone: drop its timer."""
        call = self._calls.pop(tunnel, None)
        if call is not None and call.active():
            call.cancel()

    def _expired(self, record: AgentRecord) -> None:
        self._calls.pop(record.tunnel, None)
        expires = record.identity.expires() if record.identity is not None else None
        when = f"{expires:%Y-%m-%d %H:%M:%S}Z" if expires is not None else "now"
        self.log.warn(
            "agent {node}: closing its tunnel: its certificate expired at {when}",
            node=record.node,
            when=when,
        )
        record.tunnel.close(ErrorCode.UNAUTHORIZED, f"the agent's certificate expired at {when}")
