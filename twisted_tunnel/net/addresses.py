"""
IP addresses and C{host:port} pairs as the rest of the package reads
them: one parser of each.

Node IPs, targets and listener addresses arrive as text, sometimes in
brackets (C{[fd00::1]}); every stream open looks one up, and parsing an
address costs more than the rest of that lookup, so the parse is cached
(the same few addresses come back all the time: node IPs, loopback).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["HostPortError", "IPAddress", "normalIP", "parseIP", "splitHostPort"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=4096)
def parseIP(text: str) -> IPAddress | None:
    """The IP address C{text} spells (brackets allowed), or C{None} if it is not one."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


@lru_cache(maxsize=4096)
def normalIP(text: str) -> str | None:
    """
    C{text} as the canonical spelling of its IP address, or C{None} if it is
    not one.  Cached as well: the registry asks it at every stream open, and
    spelling an address costs as much as parsing it.
    """
    address = parseIP(text)
    return None if address is None else str(address)


class HostPortError(ValueError):
    """
    A C{host:port} that is not one.

    @ivar problem: which part is wrong: C{"form"} (no port, no host, an
        unclosed bracket), C{"ipv6"} (an IPv6 address without brackets) or
        C{"port"} (not a number from 1 to 65535).
    @ivar port: the port as written (for C{"port"}), else C{""}.
    """

    def __init__(self, problem: str, port: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.port = port


def splitHostPort(text: str) -> tuple[str, int]:
    """
    C{host:port}, C{ipv4:port} or C{[ipv6]:port}: the host (without its
    brackets) and the port.  Every door and option that takes one reads it
    here, then adds its own rules for the host (a node name, an address)
    and its own words for the errors.

    @raise HostPortError: saying which part is wrong.
    """
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket or not host:
            raise HostPortError("form")
    else:
        host, colon, port = text.rpartition(":")
        if not colon or not host:
            raise HostPortError("form")
        if ":" in host:
            raise HostPortError("ipv6")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise HostPortError("port", port)
    return host, int(port)
