# -*- test-case-name: tests.package.test_public_api -*-
"""
twisted-tunnel: reach Kubernetes edge nodes behind NAT through tunnels that
their agents dial out, one mutually authenticated TLS connection per agent,
with any number of streams inside.

This page is the public API: the names below are the ones a program that
embeds the tunnel needs, and the ones to rely on.  The modules they come from (and
everything else in them) are the implementation, documented for the
curious.  The daemons C{twistd edge-tunnel-server} and C{twistd
edge-tunnel-agent} are built from these same pieces (L{twisted_tunnel.tap}).
Runnable versions of the snippets are in the repository's C{examples/}.

Run a server in your own process
================================

Give a L{TunnelServer} its L{Credentials} (L{loadCredentials} reads the PEM
files, L{makeCredentials} takes objects in memory) and listen for agents
with L{TunnelServer.tunnelFactory}::

    from twisted.internet.endpoints import serverFromString
    from twisted_tunnel import TunnelServer, loadCredentials

    server = TunnelServer(reactor, loadCredentials("ca.pem", "server.pem", "server-key.pem"))
    serverFromString(reactor, "tcp:10262").listen(server.tunnelFactory())

Open a stream to a node's port as an endpoint
=============================================

L{TunnelServer.endpointForNode} is an ordinary C{IStreamClientEndpoint}
(a L{NodeEndpoint}); the stream it connects is a real transport (with flow
control and half-close), so any Twisted client works through it.  It fails
with L{NodeNotConnected}, L{StreamOpenFailed} or L{StreamOpenTimeout}.
For twisted.web's C{Agent} and treq, hand it out from an
C{IAgentEndpointFactory} with C{Agent.usingEndpointFactory}
(C{examples/treq_get.py})::

    endpoint = server.endpointForNode("edge-1", 10250)
    protocol = await connectProtocol(endpoint, MyProtocol())

Run an agent in your own process
================================

A L{TunnelAgent} is a C{Service}: start it, and it holds a tunnel to every
server replica behind the address it dials, reconnecting forever
(L{backoffPolicy}); L{TunnelAgent.whenConnected} fires once one is up::

    from twisted_tunnel import TunnelAgent, loadCredentials

    agent = TunnelAgent(
        reactor,
        loadCredentials("ca.pem", "agent-edge-1.pem", "agent-edge-1-key.pem"),
        ("tunnel.example.com", 10262),
        "edge-1",
    )
    agent.startService()
    await agent.whenConnected()

Under asyncio, install Twisted's asyncio reactor first
(C{twisted.internet.asyncioreactor.install()}); the library's calls return
Deferreds, which asyncio code awaits as C{d.asFuture(loop)}
(C{examples/asyncio_agent.py}).  That is the whole bridge, so the library
has no coroutine wrappers of its own, and no use for txaio.

Register a forwarding policy
============================

A policy provides L{IForwardingPolicy}: a C{name} and C{decide(request)},
which gets a L{ForwardingRequest} and returns a L{ForwardingDecision}, or
says no with C{raise refuse(status, reason)} (L{refuse}).  It is installed
as a Twisted plugin (L{pluginPolicies}), or loaded by import path
(C{package.module:attribute}, L{loadPolicy}) by the operator's own choice:
the daemon's C{--policy NAME=package.module:attribute}, or your program's
code.  A configuration only I{names} policies (a ConfigMap must never make
the server import anything): it binds a name to a port (C{policy-ports:
"9100=metrics-only"}, see L{parseConfigData}), L{findPolicy} looks the name
up among the built-ins and L{knownPolicies}, a L{ForwardingTable} holds the
configuration in force with its policies, and the proxy listeners apply
it: in the daemon, or in your process with a L{ProxyRouter} and a
L{ProxyListenerFactory} (C{examples/custom_policy.py})::

    policy = loadPolicy("metrics_only:policy")
    known = knownPolicies(named={policy.name: policy})
    config = parseConfigData(
        {"http-proxy-ports": "9100", "policy-ports": "9100=metrics-only"},
        resolvePolicy=lambda name: findPolicy(name, known),
    )
    table = ForwardingTable(config, known=known)  # table.replace(new) on a reload
    router = ProxyRouter(server, "http", table)
    serverFromString(reactor, "tcp:10264").listen(ProxyListenerFactory(router, reactor))

The other front doors, for your process too: L{ConnectDoorFactory} (HTTP
CONNECT, as kube-apiserver's egress selector speaks it) and
L{ForwardFactory} (a local port forwarded to one node port).

All the names
=============

  - The server: L{TunnelServer}, L{NodeEndpoint}, L{AgentRecord}.
  - The agent: L{TunnelAgent}, L{backoffPolicy}.
  - Both ends: L{Credentials}, L{loadCredentials}, L{makeCredentials},
    L{Settings}, L{Keepalive}.
  - Policies: L{IForwardingPolicy}, L{ForwardingRequest},
    L{ForwardingDecision}, L{ForwardingRefused}, L{Carrier}, L{refuse},
    L{findPolicy}, L{knownPolicies}, L{loadPolicy}, L{pluginPolicies},
    L{PolicyError}.
  - Configuration: L{ProxyConfig}, L{parseConfigData}, L{loadConfig},
    L{ConfigError}, L{ForwardingTable}.
  - Front doors: L{ProxyRouter}, L{ProxyListenerFactory},
    L{ConnectDoorFactory}, L{ForwardFactory}.
  - Errors: L{TunnelError}, L{NodeNotConnected}, L{StreamOpenFailed},
    L{StreamOpenTimeout}, L{TunnelClosed}, L{CredentialsError}.

Why the names load lazily
=========================

Importing C{twisted_tunnel} imports none of its modules: each name above is
imported from its module the first time it is used (a module
C{__getattr__}, PEP 562).  C{__version__} comes from the leaf module
C{_version}, which the modules that need it import directly.  The sans-IO
codec L{twisted_tunnel.wire} must stay cheap to import (no TLS, no reactor
machinery), which eager re-exports would defeat; nothing here imports the
global reactor either.  Type checkers and pydoctor read the
C{TYPE_CHECKING} imports below, so the names are checked and documented as
if they were imported eagerly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .agent import TunnelAgent, backoffPolicy
    from .doors.connect import ConnectDoorFactory
    from .doors.forward import ForwardFactory
    from .doors.proxy import ProxyListenerFactory, ProxyRouter
    from .errors import (
        CredentialsError,
        NodeNotConnected,
        StreamOpenFailed,
        StreamOpenTimeout,
        TunnelClosed,
        TunnelError,
    )
    from .forwarding.config import ConfigError, ProxyConfig, loadConfig, parseConfigData
    from .forwarding.policy import (
        Carrier,
        ForwardingDecision,
        ForwardingRefused,
        ForwardingRequest,
        IForwardingPolicy,
        PolicyError,
        findPolicy,
        knownPolicies,
        loadPolicy,
        pluginPolicies,
        refuse,
    )
    from .forwarding.table import ForwardingTable
    from .mux import Keepalive, Settings
    from .server import AgentRecord, NodeEndpoint, TunnelServer
    from .tls import Credentials, loadCredentials, makeCredentials

#: Each public name, and the module (under this package) it comes from.
_SOURCES = {
    "TunnelServer": "server",
    "NodeEndpoint": "server",
    "AgentRecord": "server",
    "TunnelAgent": "agent",
    "backoffPolicy": "agent",
    "Settings": "mux",
    "Keepalive": "mux",
    "Credentials": "tls",
    "loadCredentials": "tls",
    "makeCredentials": "tls",
    "IForwardingPolicy": "forwarding.policy",
    "ForwardingRequest": "forwarding.policy",
    "ForwardingDecision": "forwarding.policy",
    "ForwardingRefused": "forwarding.policy",
    "Carrier": "forwarding.policy",
    "refuse": "forwarding.policy",
    "findPolicy": "forwarding.policy",
    "knownPolicies": "forwarding.policy",
    "loadPolicy": "forwarding.policy",
    "pluginPolicies": "forwarding.policy",
    "PolicyError": "forwarding.policy",
    "ProxyConfig": "forwarding.config",
    "parseConfigData": "forwarding.config",
    "loadConfig": "forwarding.config",
    "ConfigError": "forwarding.config",
    "ForwardingTable": "forwarding.table",
    "ProxyRouter": "doors.proxy",
    "ProxyListenerFactory": "doors.proxy",
    "ConnectDoorFactory": "doors.connect",
    "ForwardFactory": "doors.forward",
    "TunnelError": "errors",
    "NodeNotConnected": "errors",
    "StreamOpenFailed": "errors",
    "StreamOpenTimeout": "errors",
    "TunnelClosed": "errors",
    "CredentialsError": "errors",
}

__all__ = [
    "AgentRecord",
    "Carrier",
    "ConfigError",
    "ConnectDoorFactory",
    "Credentials",
    "CredentialsError",
    "ForwardFactory",
    "ForwardingDecision",
    "ForwardingRefused",
    "ForwardingRequest",
    "ForwardingTable",
    "IForwardingPolicy",
    "Keepalive",
    "NodeEndpoint",
    "NodeNotConnected",
    "PolicyError",
    "ProxyConfig",
    "ProxyListenerFactory",
    "ProxyRouter",
    "Settings",
    "StreamOpenFailed",
    "StreamOpenTimeout",
    "TunnelAgent",
    "TunnelClosed",
    "TunnelError",
    "TunnelServer",
    "__version__",
    "backoffPolicy",
    "findPolicy",
    "knownPolicies",
    "loadConfig",
    "loadCredentials",
    "loadPolicy",
    "makeCredentials",
    "parseConfigData",
    "pluginPolicies",
    "refuse",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (see the module docstring)."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
