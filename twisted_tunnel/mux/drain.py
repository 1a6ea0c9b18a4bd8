# -*- test-case-name: tests.mux.test_mux -*-
"""
Ending tunnels gracefully (L{drainTunnels}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IReactorTime,
)
from twisted.logger import Logger

from ..wire import ErrorCode

if TYPE_CHECKING:
    from .tunnel import Tunnel


def drainTunnels(
    clock: IReactorTime, tunnels: list[Tunnel], timeout: float, text: str, log: Logger
) -> Deferred[bool]:
    """
    End C{tunnels} gracefully: drain each (GOAWAY: the peer opens no new
    streams, and each tunnel closes once its streams are done), and after
    C{timeout} seconds close whatever is still open, saying so on C{log}.
    A C{timeout} of 0 closes them at once.

    What a stopping server does to its agents' tunnels, and a stopping
    agent to its servers'.

    @return: fires when every tunnel is gone: with C{True} if they all
        drained before the timeout, else C{False}.
    """
    lost = gatherResults([tunnel.whenLost() for tunnel in tunnels])
    if timeout <= 0:
        for tunnel in tunnels:
            tunnel.close(ErrorCode.SHUTTING_DOWN, text)
        return lost.addCallback(lambda _: False)
    for tunnel in tunnels:
        tunnel.drain(text)

    def late() -> None:
        log.warn(
            "drain timeout of {timeout:g}s: closing {streams} stream(s) still open",
            timeout=timeout,
            streams=sum(tunnel.streamCount for tunnel in tunnels),
        )
        for tunnel in tunnels:
            tunnel.close(ErrorCode.SHUTTING_DOWN, f"{text}: drain timeout")

    call = clock.callLater(timeout, late)

    def done(_: object) -> bool:
        if call.active():
            call.cancel()
            return True
        return False

    return lost.addCallback(done)
