"""
Twisted application plugin for C{twistd edge-tunnel-agent}.

Inert on purpose: L{ServiceMaker} imports L{twisted_tunnel.tap.agent} only
when the service is made, and nothing here touches the reactor.
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "edge-tunnel-agent",
    "twisted_tunnel.tap.agent",
    "Edge side of the edge tunnel: dials the server, serves requests for this node.",
    "edge-tunnel-agent",
)
