"""
Socket options for the connections that carry the tunnel and its clients:
Nagle off, the kernel's keepalive checks, and the TCP socket under a
(possibly TLS-wrapped) transport.  Every helper is a no-op where there is
no TCP socket underneath (a UNIX socket, a tunnel stream, a test transport).
"""

from __future__ import annotations

import fcntl
import socket
import struct
from typing import Protocol

from .transports import layers

__all__ = ["KeepaliveTimes", "noDelay", "tcpKeepalive", "tcpSocket", "unsentBytes"]


class KeepaliveTimes(Protocol):
    """What L{tcpKeepalive} needs to know (L{twisted_tunnel.mux.Keepalive} is one)."""

    @property
    def interval(self) -> float: ...

    @property
    def misses(self) -> int: ...

    @property
    def deadline(self) -> float: ...


def noDelay(transport: object) -> None:
    """
    Turn Nagle's algorithm off where there is a TCP socket underneath.

    Frames are small and request/response shaped (OPEN, then OPEN_OK; a
    request, then its answer): with Nagle on, the second small write waits
    for the ACK of the first, which the peer delays by up to 40 ms.  Twisted
    coalesces writes per reactor turn anyway, so nothing is lost.  TLS
    transports pass the call on to the TCP transport under them.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except OSError:
            pass  # not a TCP socket after all (e.g. a unix socket)


def tcpKeepalive(transport: object, keepalive: KeepaliveTimes) -> bool:
    """
    Have the kernel watch the connection too, where there is a TCP socket
    underneath: keepalive probes after C{keepalive.interval} idle seconds,
    C{misses} of them an interval apart, and C{TCP_USER_TIMEOUT} of
    C{keepalive.deadline}: data sent and not acknowledged for that long
    ends the connection.

    PING finds a dead peer on its own; the kernel's checks are a second
    line that works while the reactor is busy or stalled, and without
    C{TCP_USER_TIMEOUT} Linux retransmits unacknowledged data into a path
    that silently drops it for about fifteen minutes before giving up.
    Options the platform lacks are skipped.

    @return: whether there was a TCP socket to set them on.
    """
    sock = tcpSocket(transport)
    if sock is None:
        return False
    interval = max(1, int(keepalive.interval))
    options = [
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", interval),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", interval),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", keepalive.misses),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", int(keepalive.deadline * 1000)),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is None:
            continue
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass  # the platform refuses this one: the others still help
    return True


def tcpSocket(transport: object) -> socket.socket | None:
    """The TCP socket under C{transport} (through TLS wrappers), if there is one."""
    for layer in layers(transport):
        getHandle = getattr(layer, "getHandle", None)
        handle = getHandle() if getHandle is not None else None
        if isinstance(handle, socket.socket):
            if handle.type == socket.SOCK_STREAM and handle.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                return handle
            return None
    return None


#: Linux's ioctl for the bytes of a socket's send queue not yet sent
#: (C{SIOCOUTQNSD}, include/uapi/linux/sockios.h); C{TIOCOUTQ} would count
#: those sent and not yet acknowledged too, and wait for a delayed ACK.
SIOCOUTQNSD = 0x894B


def unsentBytes(transport: object) -> int:
    """
    Bytes the kernel holds in the send queue of C{transport}'s socket and
    has not sent yet; 0 where that cannot be asked (no socket, or a
    platform without C{SIOCOUTQNSD}).

    A reset (C{SO_LINGER} 0, what C{abortConnection} does) discards them,
    while what was sent arrives before the RST: a relay passing a reset on
    waits for this to reach 0 first.
    """
    handle = getattr(transport, "getHandle", None)
    if handle is None:
        return 0
    try:
        fileno = handle().fileno()
        answer = fcntl.ioctl(fileno, SIOCOUTQNSD, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    unsent: int = struct.unpack("i", answer)[0]
    return unsent
