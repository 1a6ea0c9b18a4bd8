"""
twisted-tunnel: reach Kubernetes edge nodes behind NAT through tunnels that
their agents dial out, one mutually authenticated TLS connection per agent.

The pieces a program embedding the tunnel needs::

    from twisted_tunnel import TunnelServer, loadCredentials

    server = TunnelServer(reactor, loadCredentials("ca.pem", "server.pem", "server-key.pem"))
    # listen for agents with server.tunnelFactory(); then, from any Twisted client:
    endpoint = server.endpointForNode("edge-1", 10250)

Everything else lives in the layer modules: L{twisted_tunnel.wire} (the
frame codec), L{twisted_tunnel.mux} (streams), L{twisted_tunnel.tls},
L{twisted_tunnel.server}, L{twisted_tunnel.agent}, L{twisted_tunnel.connect}
and L{twisted_tunnel.forward}.
"""

__version__ = "0.1.0"

from .agent import TunnelAgent  # noqa: E402
from .errors import (  # noqa: E402
    CredentialsError,
    NodeNotConnected,
    StreamOpenFailed,
    StreamOpenTimeout,
    TunnelClosed,
    TunnelError,
)
from .mux import Keepalive, Settings  # noqa: E402
from .server import TunnelServer  # noqa: E402
from .tls import Credentials, loadCredentials  # noqa: E402

__all__ = [
    "Credentials",
    "CredentialsError",
    "Keepalive",
    "NodeNotConnected",
    "Settings",
    "StreamOpenFailed",
    "StreamOpenTimeout",
    "TunnelAgent",
    "TunnelClosed",
    "TunnelError",
    "TunnelServer",
    "__version__",
    "loadCredentials",
]
