# -*- test-case-name: tests.tls.test_kubelet -*-
"""
The kubelet's own client certificate as an agent's identity: no PKI of the
tunnel's on the edge.

Every node already holds exactly the identity an agent proves: the kubelet's
client certificate for kube-apiserver, C{CN=system:node:<node>,
O=system:nodes}, signed by the cluster's client CA.  The kubelet keeps it,
certificate and key in one PEM file, at
C{/var/lib/kubelet/pki/kubelet-client-current.pem}: a symlink to
C{kubelet-client-<timestamp>.pem}, repointed when the kubelet rotates the
certificate (client-go's C{util/certificate/certificate_store.go}: the new
file is written, mode 0600, then C{kubelet-client-updated.pem} is made to
point at it and renamed over C{-current}, after C{-current} was removed).

L{loadNodeCredentials} loads that file (one read: see L{loadCredentials})
and refuses, with one line, a certificate that is not a node's, is
another node's, or is not valid now; L{whyNotCarrying} is the rule a
rotated certificate must pass too.  Rotation itself is
L{twisted_tunnel.tls.rotation}'s: the file is watched by content, so a
repointed symlink is a change.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from ..errors import CredentialsError
from . import Credentials, loadCredentials
from .certs import NODE_COMMON_NAME_PREFIX, NODE_ORGANIZATION

__all__ = [
    "KUBELET_CLIENT_CERT",
    "KUBELET_CLIENT_CERT_OPTION",
    "keepingNode",
    "loadNodeCredentials",
    "whyNotCarrying",
]

#: Where the kubelet keeps its current client certificate and key.
KUBELET_CLIENT_CERT = "/var/lib/kubelet/pki/kubelet-client-current.pem"

#: The agent's option that names that file (for messages).
KUBELET_CLIENT_CERT_OPTION = "--kubelet-client-cert"


def whyNotCarrying(credentials: Credentials, nodeName: str | None) -> str | None:
    """
    Why C{credentials} cannot be an agent's for C{nodeName} (or, without
    one, for the node their certificate names), in words for one line;
    C{None} if they can.

    The server's rule (L{PeerIdentity.whyNotNode}), checked by the agent
    before it dials: a certificate the server would refuse is refused at
    start-up, and a rotation to one is refused while the one in use stays.
    """
    identity = credentials.identity()
    name = nodeName or identity.nodeName()
    if name is None:
        return (
            f"the certificate ({identity.describe()}) is not a node's: a node's is "
            f"CN={NODE_COMMON_NAME_PREFIX}<node>, O={NODE_ORGANIZATION}"
        )
    return identity.whyNotNode(name)


def loadNodeCredentials(
    caPath: str,
    pemPath: str,
    nodeName: str | None = None,
    *,
    caOption: str = "--ca",
    option: str = KUBELET_CLIENT_CERT_OPTION,
    now: datetime.datetime | None = None,
) -> Credentials:
    """
    Load a node's client certificate and key from the one PEM file that
    holds both (the kubelet's C{kubelet-client-current.pem}), and the CA
    bundle that signs the server's certificate.

    Blocking IO, like L{loadCredentials}: at start-up, or from a rotation's
    poll (a file of at most 1 MiB on a local disk).

    @param nodeName: the node it must be for; by default the one it names.
    @param now: the time to check validity at (for tests).
    @raise CredentialsError: one line naming C{option}, the file and why:
        what L{loadCredentials} refuses (missing, unreadable, no key in it,
        expired or not yet valid, with the dates), or a certificate that
        is not a node's or is another node's (L{whyNotCarrying}).
    """
    credentials = loadCredentials(
        caPath,
        pemPath,
        pemPath,
        caOption=caOption,
        certOption=option,
        keyOption=option,
        now=now,
    )
    why = whyNotCarrying(credentials, nodeName)
    if why is not None:
        raise CredentialsError(f"{option} {pemPath}: {why}")
    return credentials


def keepingNode(load: Callable[[], Credentials], nodeName: str) -> Callable[[], Credentials]:
    """
    C{load}, refusing credentials that no longer carry node C{nodeName}
    (L{whyNotCarrying}): what a rotation must pass on the agent, so that a
    file repointed at another node's certificate, or at one that is no
    node's, leaves the one in use in use (L{CredentialsWatcher} logs the
    refusal) rather than have every reconnection refused by the server.
    """

    def loadForNode() -> Credentials:
        credentials = load()
        why = whyNotCarrying(credentials, nodeName)
        if why is not None:
            raise CredentialsError(
                f"{credentials.certPath}: not node {nodeName}'s certificate: {why}"
            )
        return credentials

    return loadForNode
