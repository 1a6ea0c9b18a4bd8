# -*- test-case-name: tests.server.test_security_identity -*-
"""
Which of the IPs an agent announces are its node's: the provers the server
asks once per HELLO (L{INodeAddressProof}), and what they answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from attrs import frozen
from twisted.logger import Logger
from zope.interface import Interface, implementer

from ..net.addresses import normalIP
from ..tls import PeerIdentity

__all__ = [
    "AddressProof",
    "CertificateAddressProof",
    "INodeAddressProof",
    "TrustAnnouncedAddresses",
    "isSpecial",
]


@frozen
class AddressProof:
    """
    What an L{INodeAddressProof} made of the IPs an agent announced.

    @ivar proven: the IPs proven to be the node's: they route to its tunnel.
    @ivar unproven: the others, which route nothing.
    @ivar why: why those are not proven, for the log line (e.g. "its
        certificate carries no IP address").
    """

    proven: tuple[str, ...]
    unproven: tuple[str, ...] = ()
    why: str = ""


class INodeAddressProof(Interface):
    """
    Decides which of the IPs an agent announces are its node's.

    An announced IP is a claim: once registered, the server DNATs traffic
    for it into the agent's tunnel, so an agent that could claim any IP
    could take over another node's traffic, or a cloud address's (finding
    1 of issue 12).  The server asks one of these, once per HELLO, and
    routes only what it proves.  The default is L{CertificateAddressProof};
    a second prover (the Node object's addresses, once the server watches
    the Node API) plugs in here as C{TunnelServer(addressProof=...)}.

    It is called on the reactor thread and must answer at once: a prover
    that needs the API reads a watch cache, not the API itself.
    """

    def prove(node: str, identity: PeerIdentity, announced: Sequence[str]) -> AddressProof:
        """
        Which of C{announced} (normalized IP texts, no duplicates) are node
        C{node}'s, whose agent presented C{identity}?  Anything returned in
        C{proven} that was not announced is ignored.
        """


@implementer(INodeAddressProof)
class CertificateAddressProof:
    """
    An IP is proven when the agent's certificate carries it as an IP
    subjectAltName: the CA that signed it vouched for it.

    Kubelet client certificates (from the CSR API) carry none: then no IP
    is proven, and the node is reachable by name only (the hosts file,
    CONNECT by name) until another prover (the Node API) proves its IPs.
    """

    def prove(self, node: str, identity: PeerIdentity, announced: Sequence[str]) -> AddressProof:
        certified = {normalIP(ip) for ip in identity.ipAddresses} - {None}
        proven = tuple(ip for ip in announced if ip in certified)
        unproven = tuple(ip for ip in announced if ip not in certified)
        if not certified:
            why = (
                "its certificate carries no IP address (subjectAltName): the node is "
                "reachable by name only (hosts file, CONNECT by name)"
            )
        else:
            why = f"its certificate carries only {', '.join(identity.ipAddresses)}"
        return AddressProof(proven, unproven, why)


@implementer(INodeAddressProof)
class TrustAnnouncedAddresses:
    """
    The explicit opt-in (C{--trust-announced-ips}): route every IP an agent
    announces, proven or not, with a warning per agent that says which IPs
    were taken on its word.

    That is what this server did before issue 12, and it lets any holder
    of any node certificate take over another node's IPs (the first to
    connect wins) or a cloud address.  It exists for fleets of kubelet
    certificates (no IP subjectAltNames) that must be reached by IP before
    the Node API can prove addresses.  Even so, loopback, unspecified,
    multicast and link-local addresses are never taken on trust: nothing
    legitimate routes them to an edge node.

    @param proof: proves what it can first (the certificate, by default).
    """

    log = Logger()

    def __init__(self, proof: INodeAddressProof | None = None) -> None:
        self.proof = proof or CertificateAddressProof()

    def prove(self, node: str, identity: PeerIdentity, announced: Sequence[str]) -> AddressProof:
        first = self.proof.prove(node, identity, announced)
        special = tuple(ip for ip in first.unproven if isSpecial(ip))
        trusted = tuple(ip for ip in first.unproven if ip not in special)
        if trusted:
            self.log.warn(
                "agent {node}: routing IPs {ips} on its word alone (--trust-announced-ips), "
                "unproven because {why}",
                node=node,
                ips=", ".join(trusted),
                why=first.why,
            )
        return AddressProof(
            first.proven + trusted,
            special,
            "loopback, unspecified, multicast and link-local addresses are never trusted unproven",
        )


def isSpecial(ip: str) -> bool:
    """
    Loopback, unspecified, multicast or link-local: nothing legitimate
    routes such an address to an edge node, so no announcement or listing
    proves it.
    """
    address = ipaddress.ip_address(ip)
    return (
        address.is_loopback
        or address.is_unspecified
        or address.is_multicast
        or address.is_link_local
    )
