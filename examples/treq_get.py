"""
treq through the tunnel: GET a kubelet endpoint of an edge node.

kube-apiserver reaches C{https://<node>:10250/...}; a Twisted program that
embeds the tunnel server does the same with treq (or twisted.web's
C{Agent}), whose connections go through L{TunnelServer.endpointForNode}
instead of the network.  C{Agent.usingEndpointFactory} is the hook: the
endpoint factory below turns C{https://edge-1:10250/healthz} into a stream
to port 10250 of node C{edge-1}, with TLS from end to end (the client
checks the kubelet's certificate; the tunnel only carries the bytes).

Everything runs in this one process, on loopback, with throwaway
certificates: the server, a stand-in kubelet and the node's agent (see
C{_standins.py}).  Run it with C{python examples/treq_get.py}.
"""

from __future__ import annotations

from typing import Any

from _standins import NODE, ThrowawayPKI, kubeletStandIn, listenOnLoopback, showLogs, startAgent
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import react
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from twisted_tunnel import NodeNotConnected, TunnelServer

try:
    from treq.client import HTTPClient
except ImportError:
    raise SystemExit("this example needs treq: pip install 'twisted-tunnel[examples]'") from None


@implementer(IAgentEndpointFactory)
class ThroughTheTunnel:
    """
    Endpoints for URLs that name an edge node (by name or IP) and a port
    on it: a stream through the node's tunnel, wrapped in TLS for C{https}
    URLs (verified against C{trustRoot}, for the name in the URL).
    """

    def __init__(self, server: TunnelServer, trustRoot: Certificate) -> None:
        self.server = server
        self.trustRoot = trustRoot

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        node = uri.host.decode("ascii")
        endpoint = self.server.endpointForNode(node, uri.port)
        if uri.scheme == b"https":
            tls = optionsForClientTLS(node, trustRoot=self.trustRoot)
            endpoint = wrapClientTLS(tls, endpoint)
        return endpoint


async def main(reactor: Any) -> None:
    showLogs()
    pki = ThrowawayPKI.mint()

    # the cloud side: a tunnel server, listening for agents
    server = TunnelServer(reactor, pki.server)
    agents = await listenOnLoopback(reactor, server.tunnelFactory())

    # the edge side: the node's kubelet and its agent, which dials the server
    kubelet = await kubeletStandIn(reactor, pki)
    agent = await startAgent(reactor, pki, agents.getHost().port)

    # treq, whose every connection is a stream through the tunnel
    http = HTTPClient(Agent.usingEndpointFactory(reactor, ThroughTheTunnel(server, pki.kubeletCA)))
    url = f"https://{NODE}:{kubelet.getHost().port}/healthz"
    response = await http.get(url)
    print(f"GET {url} -> {response.code} {await response.text()}")

    try:
        await http.get("https://edge-9:10250/healthz")
    except NodeNotConnected as e:
        print(f"GET https://edge-9:10250/healthz -> NodeNotConnected: {e}")

    await agent.stopService()
    await agents.stopListening()
    await kubelet.stopListening()


if __name__ == "__main__":
    react(main)
