# -*- test-case-name: tests.tls.test_serving -*-
"""
The HTTPS proxy listener's certificate, chosen per connection: the minted
certificate of the node the client dialled (L{twisted_tunnel.tls.minting}).

Which hook: the server name callback of the listener's one C{SSL_CTX}.
OpenSSL calls it while it reads the ClientHello, for every ClientHello
(with or without SNI: Go sends none when it dials an IP), before it
chooses the certificate; by then the TLS protocol (the connection's
C{app_data}) has its transport, whose socket knows the original
destination (C{SO_ORIGINAL_DST}), and the SNI, if any, has been read.
C{IOpenSSLServerConnectionCreator.serverConnectionForTLS} alone would not
do: Twisted calls it in C{TLSMemoryBIOProtocol.makeConnection} I{before}
the protocol is given its transport, so nothing there says where the
client was going.  That method only makes the connection, on the shared
context.

Why set the certificate on the connection (C{SSL_use_certificate}) rather
than switch the connection to a context per node (C{SSL_set_SSL_CTX}, the
usual SNI idiom): after such a switch OpenSSL takes the trust store, the
client CA list and the ALPN callback from the new context, so every
node's context would have to repeat the listener's client-certificate
rules (tens of KiB each, times ten thousand), and a mistake there would
let a client in.  Here the one context built by L{proxyServingOptions}
keeps them all (client certificate required, node certificates refused,
HTTP/1.1), exactly as with a static certificate; it holds no certificate
of its own (an RSA static certificate left in the context would sit next
to a minted ECDSA one, and OpenSSL could pick either), and each
connection gets exactly one: the node's, the static fallback, or none,
which fails the handshake (C{handshake_failure}) after one log line.

Where the client was going: the original destination's IP when iptables
DNATed the connection (kube-apiserver dials the node IP), else the SNI
name (DNS mode: node names resolve to the server).  Either is looked up
among the nodes the server knows (C{nodes}); nothing else is ever minted
for, whatever SNI a client sends.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from .._logthrottle import LogThrottle
from ..net.addresses import parseIP
from ..net.origdst import originalDestination
from . import Credentials, proxyServingOptions
from .certs import isNodeName
from .minting import MintedCertificate, ServedNode, ServingCertificates

__all__ = ["NodeServingOptions", "clientDestination"]

#: The longest SNI looked up: a DNS name is at most 253 characters.
_MAX_SERVER_NAME = 253


def clientDestination(connection: SSL.Connection) -> str | None:
    """
    Where the client of C{connection} (in its handshake, past the
    ClientHello) was going: the IP of its original destination if it was
    DNATed, else the node name or IP its SNI names (lower case, without a
    trailing dot), else C{None}.
    """
    protocol = connection.get_app_data()
    destination = originalDestination(protocol) if protocol is not None else None
    if destination is not None:
        return destination[0]
    raw = connection.get_servername()
    if not raw or len(raw) > _MAX_SERVER_NAME:
        return None
    try:
        name = raw.decode("ascii").lower().removesuffix(".")
    except UnicodeDecodeError:
        return None
    address = parseIP(name)
    if address is not None:
        return str(address)
    return name if isNodeName(name) else None


@implementer(IOpenSSLServerConnectionCreator)
class NodeServingOptions:
    """
    The HTTPS proxy listener's TLS when it mints: each connection presents
    the certificate of the node its client dialled (see the module).

    @param credentials: the listener's credentials (C{--proxy-serving-*}):
        the client CA, and the static certificate.
    @param certificates: mints and keeps the nodes' certificates.
    @param nodes: the node the server knows at an address (IP or name), or
        C{None}.
    @param fallback: present the static certificate to a client that
        dialled no known node (C{--proxy-serving-cert} was given); else
        such a handshake fails.  Its leaf only: the intermediates of its
        file (C{Credentials.chain}) would be the context's, sent with the
        minted certificates too, so they are left out here.
    @param build: makes the listener's options from C{credentials} with no
        certificate in them (L{proxyServingOptions}).
    """

    log = Logger()

    def __init__(
        self,
        credentials: Credentials,
        certificates: ServingCertificates,
        nodes: Callable[[str], ServedNode | None],
        clock: IReactorTime,
        *,
        fallback: bool,
        build: Callable[..., Any] = proxyServingOptions,
    ) -> None:
        self.certificates = certificates
        self.nodes = nodes
        self.fallback = fallback
        #: what each handshake was given: C{node} (its minted certificate),
        #: C{static} (C{--proxy-serving-cert}) or C{none} (refused)
        self.chosen: Counter[str] = Counter()
        self._build = build
        self._throttle = LogThrottle(clock)
        self.update(credentials)

    def update(self, credentials: Credentials) -> None:
        """New credentials (a rotation): new handshakes use them."""
        options = self._build(credentials, presentCertificate=False)
        context = options.getContext()
        context.set_tlsext_servername_callback(self._chooseCertificate)
        self._context = context
        own = credentials.certificate
        self._static = MintedCertificate("", (), own.original, own.privateKey.original, math.inf)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A connection on the listener's context; its certificate comes with its ClientHello."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection

    def _chooseCertificate(self, connection: SSL.Connection) -> None:
        """The server name callback: present one certificate, or none (see the module)."""
        try:
            chosen = self.certificateFor(clientDestination(connection))
            if chosen is not None:
                chosen.presentOn(connection)
        except Exception:
            # no certificate: the handshake fails, and nothing is let in
            self.log.failure("HTTPS proxy listener: choosing the serving certificate failed")

    def certificateFor(self, destination: str | None) -> MintedCertificate | None:
        """
        The certificate for a client going to C{destination} (L{clientDestination}):
        the minted one of the node there, else the static one if allowed, else none.
        """
        node = self.nodes(destination) if destination is not None else None
        if node is not None:
            minted = self.certificates.certificateFor(node)
            if minted is not None:
                self.chosen["node"] += 1
                return minted
            why = "no certificate could be minted (over the rate, or the CA expired)"
        else:
            why = "not a known node's IP or name"
        if self.fallback:
            self.chosen["static"] += 1
            return self._static
        self.chosen["none"] += 1
        self._throttle.emit(
            self.log,
            LogLevel.warn,
            "HTTPS proxy listener: no serving certificate for a client going to "
            "{destination} ({why}): handshake refused",
            key=why,
            destination=destination or "an unknown destination (not DNATed, no SNI)",
            why=why,
        )
        return None
