# -*- test-case-name: tests.net.test_origdst -*-
"""
Where a DNATed connection was really going: Linux's C{SO_ORIGINAL_DST}.

Clients such as kube-apiserver dial C{<edge-node-ip>:10250}.  On the
server's host an iptables rule in the C{nat} table DNATs that to one of our
proxy listeners, rewriting the destination address and port of every
packet.  The listener's socket then only knows its own address; the original
one is remembered by conntrack, the kernel's connection tracker, which keeps
both the original and the rewritten form of each NATed connection so that
replies can be rewritten back.  Linux lets the receiving socket ask for it
with C{getsockopt(SOL_IP, SO_ORIGINAL_DST)} (and C{IP6T_SO_ORIGINAL_DST} on
C{SOL_IPV6} for IPv6).

The proxy listener needs that address to route a connection to the right
edge node without a C{Host} header: raw TCP has none, and even for HTTP it
is the one answer that does not depend on what the client wrote.

L{originalDestination} never raises: whenever the answer is not a genuine
original destination it returns C{None}, and the caller falls back to other
ways of routing (the C{Host} header) or refuses the connection.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

__all__ = ["IP6T_SO_ORIGINAL_DST", "SO_ORIGINAL_DST", "originalDestination"]

SO_ORIGINAL_DST = 80
"""C{<linux/netfilter_ipv4.h>}: the original destination, at level C{SOL_IP}."""

IP6T_SO_ORIGINAL_DST = 80
"""C{<linux/netfilter_ipv6/ip6_tables.h>}: the same for IPv6, at level C{SOL_IPV6}."""

# Levels as Linux numbers them (IPPROTO_IP, IPPROTO_IPV6); only used on Linux.
_SOL_IP = 0
_SOL_IPV6 = 41

# struct sockaddr_in: sa_family_t (host order), port (network order), address.
_SOCKADDR_IN = struct.Struct("=H")
_SOCKADDR_IN_SIZE = 16
# struct sockaddr_in6: family, port, flowinfo, 16-byte address, scope id.
_SOCKADDR_IN6_SIZE = 28

# How many wrappers (TLS, policies) to look through for the socket.
_MAX_WRAPPERS = 8

_isLinux = sys.platform.startswith("linux")

_log = Logger()


def _socketOf(transport: object) -> socket.socket | None:
    """
    The socket under C{transport}, if there is one.

    A TCP transport's C{getHandle()} is its socket.  A C{ProtocolWrapper}
    acting as a transport (C{twisted.protocols.tls.TLSMemoryBIOProtocol}
    among others) has a handle of its own (for TLS, the C{OpenSSL}
    connection), so we look at the transport it wraps.  Only wrappers are
    looked through: an object that merely has a C{transport} attribute (a
    stream inside a tunnel, say) is not the connection that attribute leads
    to, and reporting the tunnel's destination for it would misroute.
    """
    current: object = transport
    for _ in range(_MAX_WRAPPERS):
        getHandle = getattr(current, "getHandle", None)
        if callable(getHandle):
            try:
                handle = getHandle()
            except Exception:
                handle = None
            if isinstance(handle, socket.socket):
                return handle
        if not isinstance(current, ProtocolWrapper):
            return None
        current = current.transport
    return None


def _localAddress(
    sock: socket.socket,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """The socket's own address (what C{getHost()} reports), without any scope."""
    name = sock.getsockname()
    host = str(name[0]).partition("%")[0]
    return ipaddress.ip_address(host), int(name[1])


def _ipv4OriginalDestination(sock: socket.socket) -> tuple[str, int] | None:
    raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN_SIZE)
    if len(raw) < 8 or _SOCKADDR_IN.unpack_from(raw)[0] != socket.AF_INET:
        return None
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


def _ipv6OriginalDestination(sock: socket.socket) -> tuple[str, int] | None:
    raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6_SIZE)
    if len(raw) < 24 or _SOCKADDR_IN.unpack_from(raw)[0] != socket.AF_INET6:
        return None
    (port,) = struct.unpack_from("!H", raw, 2)
    return str(ipaddress.IPv6Address(raw[8:24])), port


def _query(sock: socket.socket) -> tuple[str, int] | None:
    local: tuple[object, ...]
    if sock.family == socket.AF_INET:
        # the common case, on every connection a proxy listener accepts:
        # dotted quads both, compared as text (ipaddress costs microseconds)
        original = _ipv4OriginalDestination(sock)
        local = sock.getsockname()
    elif sock.family == socket.AF_INET6:
        address, localPort = _localAddress(sock)
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if mapped is not None:
            # An IPv4 connection accepted by a dual-stack IPv6 socket: its
            # conntrack entry is an IPv4 one, which SOL_IP finds.
            original = _ipv4OriginalDestination(sock)
            local = (str(mapped), localPort)
        else:
            original = _ipv6OriginalDestination(sock)
            local = (str(address), localPort)
    else:
        return None
    if original is None or original == local:
        # Not tracked, or tracked but not NATed: conntrack's original
        # destination is us.
        return None
    return original


def originalDestination(transport: object) -> tuple[str, int] | None:
    """
    The destination a DNATed TCP connection was addressed to, before iptables
    rewrote it to reach us.

    @param transport: The connection's transport: a TCP transport, or a
        wrapper around one such as the TLS transport of
        C{twisted.protocols.tls.TLSMemoryBIOFactory}.  Works before, during
        and after a TLS handshake.

    @return: C{(ip, port)}, the address as text (IPv4 dotted, IPv6
        compressed; an IPv4 connection to a dual-stack IPv6 listener gives
        the IPv4 form), or C{None} when there is no original destination to
        report: the connection was not DNATed (conntrack's original
        destination is then the socket's own address, what C{getHost()}
        says), conntrack has no entry for it or the option is missing
        (C{ENOENT}, C{ENOPROTOOPT}), the system is not Linux, or the
        transport has no socket (a stream inside the tunnel, a
        C{StringTransport}, a
        closed connection).  It never raises.
    """
    if not _isLinux:
        # Elsewhere, option 80 at these levels means something else, or nothing.
        return None
    sock = _socketOf(transport)
    if sock is None:
        return None
    try:
        return _query(sock)
    except (OSError, ValueError, struct.error):
        # ENOENT (no conntrack entry), ENOPROTOOPT (no conntrack in this
        # kernel, or not TCP), EBADF (closed): nothing to report.
        return None
    except Exception:
        # A bug of ours must not cost the caller its connection: it can
        # still route by other means.
        _log.failure("reading the original destination of {transport!r}", transport=transport)
        return None
