# -*- test-case-name: tests.test_forward -*-
"""
Static forward listeners: every connection accepted on a local endpoint is
carried to one fixed port on one edge node, like C{ssh -R}'s forwards.

For tools that cannot speak CONNECT (iperf3, a browser, a script) and for
the benchmark.  The listener belongs to the operator's configuration
(C{--forward}), so it reaches exactly one node and port.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .errors import TunnelError
from .relay import RelayProtocol, splice
from .server import TunnelServer


class _StreamEndFactory(Factory):
    noisy = False
    protocol = RelayProtocol


_streamEnds = _StreamEndFactory()


class ForwardProtocol(RelayProtocol):
    """The local end: paused until the stream to the node is open."""

    factory: ForwardFactory
    log = Logger()

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self._opening: Deferred[IProtocol] | None = factory.server.endpointForNode(
            factory.node, factory.port
        ).connect(_streamEnds)
        self._opening.addCallbacks(self._opened, self._failed)

    def _opened(self, streamEnd: IProtocol) -> None:
        self._opening = None
        assert isinstance(streamEnd, RelayProtocol)
        if not self.connected or self.transport is None:
            streamEnd.transport.loseConnection()  # type: ignore[union-attr]
            return
        splice(self, streamEnd)

    def _failed(self, failure: Failure) -> None:
        self._opening = None
        if failure.check(TunnelError):
            reason = failure.getErrorMessage()
        else:
            reason = "internal error"
            self.log.failure("forward to {node}:{port} failed", failure, **self._fields())
        self.log.info(
            "forward to {node}:{port} refused: {reason}", reason=reason, **self._fields()
        )
        if self.transport is not None:
            self.transport.loseConnection()

    def _fields(self) -> dict[str, Any]:
        return {"node": self.factory.node, "port": self.factory.port}

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        opening, self._opening = getattr(self, "_opening", None), None
        if opening is not None:
            opening.cancel()
        super().connectionLost(reason)


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
    node, colon, port = target.rpartition(":")
    if not sep or not colon or not node or not endpoint:
        raise ValueError(f"--forward {spec!r}: expected NODE:PORT=ENDPOINT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--forward {spec!r}: {port!r} is not a port")
    return node.strip("[]"), int(port), endpoint
