"""
Small facts about transports that several front doors need.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer


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
