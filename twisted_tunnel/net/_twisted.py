# -*- test-case-name: tests.net.test_twisted_internals -*-
"""
Every private attribute of Twisted this package reads or sets, in one
place: each has no public equivalent, and each is pinned by
C{tests/net/test_twisted_internals.py} against the Twisted installed, so that a
Twisted release that renames one fails a test instead of a deployment.

  - a file descriptor's send buffer: C{dataBuffer} from C{offset}, plus
    C{_tempDataLen} bytes not yet joined to it
    (C{twisted.internet.abstract.FileDescriptor});
  - whether its writing side is shut: C{_writeDisconnecting},
    C{_writeDisconnected};
  - the membrane TLS registers around a producer, which keeps the producer
    as C{_producer} (C{twisted.protocols.tls._ProducerMembrane});
  - C{StreamServerEndpointService._raiseSynchronously}, which makes a
    listening failure (a port in use) stop C{startService} instead of
    being logged and forgotten;
  - the port a TCP server endpoint will listen on (C{_port}), known before
    it listens.
"""

from __future__ import annotations

from typing import Any

__all__ = ["innerProducer", "listeningPort", "queuedBytes", "raiseListenErrors", "sendBufferIdle"]


def queuedBytes(transport: object) -> int:
    """
    Bytes written to a TCP (or Unix) transport and not yet sent; 0 for a
    transport without a send buffer of its own.
    """
    buffered = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    pending = getattr(transport, "_tempDataLen", 0)
    try:
        return max(0, len(buffered) - int(offset)) + int(pending)
    except TypeError:
        return 0


def sendBufferIdle(connection: Any) -> bool:
    """
    Whether a C{tcp.Connection} may send at once: connected, writing side
    open, nothing queued.
    """
    return bool(
        connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnecting
        and not connection._writeDisconnected
        and not connection._tempDataLen
        and connection.offset == len(connection.dataBuffer)
    )


def innerProducer(producer: object) -> object | None:
    """The producer a TLS membrane wraps, or C{None} if C{producer} is not one."""
    return getattr(producer, "_producer", None)


def raiseListenErrors(service: Any) -> None:
    """Make a C{StreamServerEndpointService} fail its C{startService} if it cannot listen."""
    service._raiseSynchronously = True


def listeningPort(endpoint: object) -> int | None:
    """The port a TCP server endpoint is set to listen on, or C{None} for another kind."""
    port = getattr(endpoint, "_port", None)
    return port if isinstance(port, int) else None
