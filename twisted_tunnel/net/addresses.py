"""
IP addresses as the rest of the package reads them: one parser, cached.

Node IPs, targets and listener addresses arrive as text, sometimes in
brackets (C{[fd00::1]}); every stream open looks one up, and parsing an
address costs more than the rest of that lookup, so the parse is cached
(the same few addresses come back all the time: node IPs, loopback).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

__all__ = ["IPAddress", "normalIP", "parseIP"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=4096)
def parseIP(text: str) -> IPAddress | None:
    """The IP address C{text} spells (brackets allowed), or C{None} if it is not one."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def normalIP(text: str) -> str | None:
    """C{text} as the canonical spelling of its IP address, or C{None} if it is not one."""
    address = parseIP(text)
    return None if address is None else str(address)
