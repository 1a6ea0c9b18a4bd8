"""
What the examples need but do not teach: throwaway certificates, and
stand-ins, on loopback, for what would run on other machines.

In real life the tunnel server runs in the cloud, the agent and the kubelet
on an edge node, and the certificates come from C{edge-tunnel certs} or
cert-manager.  Here everything is minted in memory and listens on
127.0.0.1, so each example runs alone, in one process, in a second or two.
"""

from __future__ import annotations

import sys
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from twisted_tunnel import Credentials, TunnelAgent, makeCredentials
from twisted_tunnel.tls.certs import Issued, mintAgent, mintCA, mintServer

#: The edge node of every example.
NODE = "edge-1"


def showLogs(level: LogLevel = LogLevel.info) -> None:
    """Send the library's log lines (at C{level} and above) to stderr."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _credentials(ca: Issued, own: Issued) -> Credentials:
    return makeCredentials([ca.certificate], own.certificate, own.key)


@frozen
class ThrowawayPKI:
    """
    Two small certificate authorities, as a real deployment has them: the
    tunnel's (server and agents) and the cluster's (the kubelet's serving
    certificate).

    @ivar server: the tunnel server's credentials (for C{127.0.0.1}).
    @ivar agent: the agent's credentials, for node L{NODE}.
    @ivar kubelet: the kubelet's serving certificate, for the name L{NODE}.
    @ivar kubeletCA: what a client of the kubelet trusts.
    """

    server: Credentials
    agent: Credentials
    kubelet: PrivateCertificate
    kubeletCA: Certificate

    @classmethod
    def mint(cls) -> ThrowawayPKI:
        tunnelCA = mintCA("example tunnel CA")
        clusterCA = mintCA("example cluster CA")
        kubelet = mintServer(clusterCA, [NODE])
        return cls(
            server=_credentials(tunnelCA, mintServer(tunnelCA, ["127.0.0.1"])),
            agent=_credentials(tunnelCA, mintAgent(tunnelCA, NODE)),
            kubelet=PrivateCertificate.loadPEM(kubelet.certificatePEM() + kubelet.keyPEM()),
            kubeletCA=Certificate.loadPEM(clusterCA.certificatePEM()),
        )


def listenOnLoopback(
    reactor: Any, factory: IProtocolFactory, tls: CertificateOptions | None = None
) -> Deferred[IListeningPort]:
    """Listen on 127.0.0.1, on a port the system picks (C{port.getHost().port})."""
    if tls is None:
        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(factory)


def nodeService(pages: dict[bytes, bytes]) -> Site:
    """A web service of the edge node: each path answers its text."""
    root = Resource()
    for path, text in pages.items():
        root.putChild(path, Data(text, "text/plain"))
    return Site(root)


def kubeletStandIn(reactor: Any, pki: ThrowawayPKI) -> Deferred[IListeningPort]:
    """
    The node's kubelet: HTTPS, with C{/healthz} and C{/metrics}, listening
    on the node's loopback (as a kubelet reached through C{localhost-proxy-ports}).
    """
    site = nodeService({b"healthz": b"ok", b"metrics": b"kubelet_running_pods 3\n"})
    return listenOnLoopback(reactor, site, pki.kubelet.options())


async def startAgent(reactor: Any, pki: ThrowawayPKI, serverPort: int) -> TunnelAgent:
    """
    The node's agent, as C{twistd edge-tunnel-agent} would run it: dial the
    server, and wait for the tunnel to be up (or fail after three tries).
    """
    agent = TunnelAgent(reactor, pki.agent, ("127.0.0.1", serverPort), NODE)
    agent.startService()
    await agent.whenConnected(failAfterFailures=3)
    return agent
