"""
Small facts about transports that several front doors need.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import Attribute, Interface


class ITunnelStream(Interface):
    """
    A transport that is a stream inside a tunnel
    (L{twisted_tunnel.mux.Stream}), as the layers below the tunnel see it:
    what a relay needs to judge progress and notice a finished peer that
    a paused TCP transport would show in the kernel's state.
    """

    bytesSent = Attribute("Bytes written into the stream so far (sent or queued).")
    bytesReceived = Attribute("Bytes received from the peer so far.")
    bufferedBytes = Attribute("Bytes the stream holds in memory, both ways.")
    peerFinished = Attribute("Whether the peer has ended its side (EOF, CLOSE or RESET).")

    def abortWhenSent() -> None:
        """
        Reset the stream once what was written to it has been sent: how a
        relay passes on a reset that came after data (TCP delivers the
        data, then the RST).
        """


def pushProducer(transport: object) -> IPushProducer:
    """
    C{transport} as the push producer it is: TCP, TLS, Unix and tunnel
    stream transports all pause and resume reading, though not all of them
    declare C{IPushProducer}.
    """
    return transport  # type: ignore[return-value]


def addressLabel(address: Any) -> str:
    """A short label for an address, for logs: C{host:port}, C{[v6]:port} or a socket path."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return str(address)


#: How many layers L{layers} looks through: a front door's limiter over TLS
#: over TCP is three.
MAX_LAYERS = 4


def layers(transport: object) -> Iterator[object]:
    """
    C{transport}, then the transports under it, each found as the
    C{transport} attribute of the one above (TLS, a front door's limiter),
    at most L{MAX_LAYERS} of them.
    """
    layer: object = transport
    for _ in range(MAX_LAYERS):
        if layer is None:
            return
        yield layer
        layer = getattr(layer, "transport", None)


def heldBytesOf(transport: object) -> int:
    """
    Bytes that C{transport} (a tunnel stream, or a TLS transport over one)
    holds in memory: a stream's C{bufferedBytes}, found through the
    L{layers} above it.  0 for anything else (a TCP upstream holds its data
    in the kernel, not here).
    """
    for layer in layers(transport):
        held = getattr(layer, "bufferedBytes", None)
        if isinstance(held, int):
            return held
    return 0
