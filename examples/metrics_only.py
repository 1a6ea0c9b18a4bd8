"""
A custom forwarding policy: only C{GET /metrics} may pass.

Bind it to a port, e.g. node-exporter's 9100, and Prometheus can scrape
the node through the tunnel while nothing else on that port can be
reached.  Use it by import path (C{metrics_only:policy}, with this
directory on C{sys.path}) or ship it as a Twisted plugin: put a module in
a C{twisted/plugins/} directory of your package that does
C{from metrics_only import policy}; the object provides C{IPlugin} too.
See C{docs/policies.md}.
"""

from __future__ import annotations

from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_tunnel.forwarding.policy import (
    Carrier,
    ForwardingDecision,
    ForwardingRequest,
    IForwardingPolicy,
    refuse,
)


@implementer(IPlugin, IForwardingPolicy)
class MetricsOnly:
    """Plain HTTP to the node, for C{GET /metrics} (any query) and nothing else."""

    name = "metrics-only"

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        path = (request.target or b"").split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD") or path != b"/metrics":
            method = (request.method or b"?").decode("ascii", "replace")
            raise refuse(403, f"only GET /metrics may reach port {request.port}, not {method}")
        return ForwardingDecision(request.defaultHost(), request.port, Carrier.HTTP)


policy = MetricsOnly()
