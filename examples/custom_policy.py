"""
A custom forwarding policy, found, bound to a port and applied.

The policy is the one of C{docs/policies.md}, in C{metrics_only.py} beside
this file: on its port, only C{GET /metrics} reaches the node.  Here it is

 1. loaded by import path, C{metrics_only:policy}, by this program's own
    code, as the server daemon loads C{--policy metrics-only=metrics_only:policy}
    once at start-up; a configuration then I{names} it, C{metrics-only},
    and never imports anything itself (installed as a Twisted plugin it
    would be known by that name too);
 2. asked directly, once, to show what it decides;
 3. bound to the port of a stand-in node-exporter by a configuration
    (C{http-proxy-ports} and C{policy-ports}), and applied by an HTTP proxy
    listener running in this process, as the server daemon runs it.

The requests reach the listener the way a DNS name would bring them
(C{Host: edge-1:<port>}); with iptables DNAT nothing changes but how the
listener learns the node.  Everything runs in this one process, on
loopback, with throwaway certificates.  Run it with
C{python examples/custom_policy.py}.
"""

from __future__ import annotations

from typing import Any

from _standins import NODE, ThrowawayPKI, listenOnLoopback, nodeService, showLogs, startAgent
from twisted.internet.task import react
from twisted.web.client import Agent

from twisted_tunnel import (
    ForwardingRefused,
    ForwardingRequest,
    ForwardingTable,
    ProxyListenerFactory,
    ProxyRouter,
    TunnelServer,
    findPolicy,
    knownPolicies,
    loadPolicy,
    parseConfigData,
)

try:
    from treq import text_content
    from treq.client import HTTPClient
except ImportError:
    raise SystemExit("this example needs treq: pip install 'twisted-tunnel[examples]'") from None

POLICY = "metrics_only:policy"


async def main(reactor: Any) -> None:
    showLogs()
    pki = ThrowawayPKI.mint()
    server = TunnelServer(reactor, pki.server)
    agents = await listenOnLoopback(reactor, server.tunnelFactory())
    exporter = await listenOnLoopback(
        reactor, nodeService({b"metrics": b"node_load1 0.42\n", b"": b"the exporter's front page"})
    )
    agent = await startAgent(reactor, pki, agents.getHost().port)
    port = exporter.getHost().port

    # 1. loaded by import path (this directory is on sys.path), once, by our
    # own code; configurations may then name it, and only name it
    policy = loadPolicy(POLICY)
    print(f"{POLICY} is policy {policy.name!r}")
    known = knownPolicies(named={policy.name: policy})

    # 2. what it decides
    for method, target in [(b"GET", b"/metrics?x=1"), (b"POST", b"/metrics")]:
        request = ForwardingRequest(
            node=NODE,
            nodeIPs=(),
            address=NODE,
            port=port,
            listener="http",
            method=method,
            target=target,
        )
        try:
            print(f"decide {method.decode()} {target.decode()}: {policy.decide(request)}")
        except ForwardingRefused as refused:
            print(f"decide {method.decode()} {target.decode()}: refused {refused.status}")

    # 3. bound to the exporter's port, and applied by an HTTP proxy listener
    config = parseConfigData(
        {"http-proxy-ports": str(port), "policy-ports": f"{port}={policy.name}"},
        resolvePolicy=lambda name: findPolicy(name, known),
    )
    table = ForwardingTable(config, known=known)  # table.replace(new) on a reload
    router = ProxyRouter(server, "http", table)
    listener = await listenOnLoopback(reactor, ProxyListenerFactory(router, reactor))

    http = HTTPClient(Agent(reactor))
    at = f"http://127.0.0.1:{listener.getHost().port}"
    for method, path in [("GET", "/metrics"), ("GET", "/"), ("POST", "/metrics")]:
        response = await http.request(method, at + path, headers={"Host": f"{NODE}:{port}"})
        body = (await text_content(response)).strip()
        print(f"{method} {path} at {NODE}:{port} -> {response.code} {body}")

    await agent.stopService()
    for listening in (listener, agents, exporter):
        await listening.stopListening()


if __name__ == "__main__":
    react(main)
