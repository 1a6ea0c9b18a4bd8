"""
Twisted application plugin for C{twistd edge-tunnel-server}.

Inert on purpose: L{ServiceMaker} imports L{twisted_tunnel.tap.server} only
when the service is made, and nothing here touches the reactor.
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "edge-tunnel-server",
    "twisted_tunnel.tap.server",
    "Cloud side of the edge tunnel: accepts agents, forwards requests to edge nodes.",
    "edge-tunnel-server",
)
