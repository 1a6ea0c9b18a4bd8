# -*- test-case-name: tests.kube.test_bootstrap -*-
"""
The agent's side of the CSR bootstrap (issue 16, item 5): its tunnel
certificate asked for through the Kubernetes CSR API with the node's own
credentials, kept in a directory of its own, and renewed before it
expires.

The key is made here (ECDSA P-256), written with the certificate to one
0600 file (L{CERT_FILE}, certificate then key, as the kubelet keeps its
own: so the agent loads and follows it exactly as it follows the
kubelet's, L{twisted_tunnel.tls.kubelet}), and never leaves the node: only
the request, signed with it, goes to the API.  The server
(L{twisted_tunnel.kube.csr}) approves it only if the requester is the node
the request names.

Renewal (L{CertificateRenewer}) comes at two thirds of the certificate's
life, less up to a tenth of it at random (so a fleet started together
does not renew together), with a new key; a failed renewal keeps the
certificate in use and tries again with backoff.
"""

from __future__ import annotations

import base64
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..errors import TunnelError
from ..files import writeAtomically
from ..tls.certs import NODE_COMMON_NAME_PREFIX, NODE_ORGANIZATION
from .client import KubeClient, describeApiError
from .csr import DEFAULT_LIFETIME, SIGNER_NAME

__all__ = [
    "CERT_FILE",
    "CSRRefused",
    "CertificateRenewer",
    "buildRequest",
    "renewalDelay",
    "requestCertificate",
]

#: The file in C{--cert-dir} that holds the certificate and its key.
CERT_FILE = "edge-tunnel-agent-current.pem"
#: A certificate in a CSR's status larger than this is refused.
MAX_CERTIFICATE_BYTES = 64 * 1024
#: Seconds to wait for a CSR to be approved and signed, by default.
DEFAULT_WAIT = 300.0
#: Seconds between polls of a pending CSR: first, longest (the server signs
#: within some 30 ms of the request in the interop world; the wait doubles).
POLL = (0.1, 5.0)
#: The backoff of a failed renewal: first delay, longest (seconds).
RENEW_BACKOFF = (10.0, 600.0)


class CSRRefused(TunnelError):
    """The CSR was denied or failed, or was not signed in time: one line saying which and why."""


def newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def buildRequest(node: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The PEM request for C{node}: C{CN=system:node:<node>, O=system:nodes}, no extension."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, NODE_COMMON_NAME_PREFIX + node),
        ]
    )
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _csrName(node: str) -> str:
    return f"edge-tunnel-agent-{node[:200]}-{secrets.token_hex(4)}"


def requestCertificate(
    client: Any,
    node: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    lifetime: int = DEFAULT_LIFETIME,
    wait: float = DEFAULT_WAIT,
    usages: tuple[str, ...] = ("digital signature", "client auth"),
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> bytes:
    """
    Create a CSR for C{node} signed with C{key}, and wait until it is
    signed: the certificate's PEM.  Blocking: call it in a thread.

    @param client: a lightkube C{Client} with the node's credentials.
    @raise CSRRefused: denied (quoting the reason), failed, not signed
        within C{wait} seconds, or signed with a certificate that is not
        for C{key} and C{node}.
    """
    from lightkube.models.certificates_v1 import CertificateSigningRequestSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.certificates_v1 import CertificateSigningRequest

    name = _csrName(node)
    client.create(
        CertificateSigningRequest(
            metadata=ObjectMeta(name=name),
            spec=CertificateSigningRequestSpec(
                request=base64.b64encode(buildRequest(node, key)).decode("ascii"),
                signerName=SIGNER_NAME,
                usages=list(usages),
                expirationSeconds=lifetime,
            ),
        )
    )
    deadline = monotonic() + wait
    delay = POLL[0]
    while True:
        obj = client.get(CertificateSigningRequest, name)
        status = obj.status
        for condition in getattr(status, "conditions", None) or ():
            if condition.type in ("Denied", "Failed") and (condition.status or "True") == "True":
                raise CSRRefused(
                    f"CSR {name}: {condition.type.lower()} by {condition.reason or '?'}: "
                    f"{(condition.message or '')[:500]}"
                )
        certificate = getattr(status, "certificate", None)
        if certificate:
            return _checkIssued(name, certificate, node, key)
        if monotonic() + delay > deadline:
            raise CSRRefused(
                f"CSR {name}: not signed within {wait:g} s (is the server's signer on?)"
            )
        sleep(delay)
        delay = min(delay * 2, POLL[1])


def _checkIssued(name: str, certificate: str, node: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    if len(certificate) > MAX_CERTIFICATE_BYTES:
        raise CSRRefused(f"CSR {name}: a certificate of {len(certificate)} bytes")
    pem = base64.b64decode(certificate)
    try:
        issued = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CSRRefused(f"CSR {name}: the certificate in its status is not PEM") from None
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = issued.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise CSRRefused(f"CSR {name}: the certificate is not for this agent's key")
    names = issued.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [each.value for each in names] != [NODE_COMMON_NAME_PREFIX + node]:
        raise CSRRefused(
            f"CSR {name}: the certificate is for {issued.subject.rfc4514_string()!r}, not {node}"
        )
    return issued.public_bytes(serialization.Encoding.PEM)


def obtainCertificate(
    client: Any,
    node: str,
    path: str,
    *,
    lifetime: int = DEFAULT_LIFETIME,
    wait: float = DEFAULT_WAIT,
) -> x509.Certificate:
    """
    A new key, a CSR, and the certificate and key written to C{path} (0600,
    atomically): what the agent starts from and renews with.  Blocking.
    """
    key = newKey()
    pem = requestCertificate(client, node, key, lifetime=lifetime, wait=wait)
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    writeAtomically(path, pem + keyPEM, mode=0o600)
    return x509.load_pem_x509_certificate(pem)


def renewalDelay(notBefore: float, notAfter: float, now: float, jitter: float) -> float:
    """
    Seconds from C{now} until a certificate valid from C{notBefore} to
    C{notAfter} is renewed: at two thirds of its life, less C{jitter}
    (0..1) tenths of it; at once if that is past.
    """
    life = notAfter - notBefore
    due = notBefore + life * (2 / 3 - 0.1 * jitter)
    return max(0.0, due - now)


class CertificateRenewer(Service):
    """
    Renews the certificate in L{path} before it expires, by a new CSR with
    a new key (in C{client}'s threads); the agent's credentials watcher
    picks the new file up.  A failed renewal keeps the file as it is and
    tries again with backoff (L{RENEW_BACKOFF}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        client: KubeClient,
        node: str,
        path: str,
        current: x509.Certificate,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        wait: float = DEFAULT_WAIT,
        jitter: Callable[[], float] = random.random,
        obtain: Callable[..., x509.Certificate] = obtainCertificate,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.node = node
        self.path = path
        self.current = current
        self.lifetime = lifetime
        self.wait = wait
        self.jitter = jitter
        self.obtain = obtain
        self.pending: IDelayedCall | None = None
        self.failures = 0

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> Any:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        return super().stopService()

    def _schedule(self) -> None:
        delay = renewalDelay(
            self.current.not_valid_before_utc.timestamp(),
            self.current.not_valid_after_utc.timestamp(),
            self.reactor.seconds(),
            self.jitter(),
        )
        self.log.info(
            "node {node}'s certificate (until {end}) renewed in {delay:.0f} s",
            node=self.node,
            end=self.current.not_valid_after_utc.isoformat(),
            delay=delay,
        )
        self.pending = self.reactor.callLater(delay, self._renew)

    def _renew(self) -> None:
        self.pending = None
        d = self.client.callInThread(
            self.obtain,
            self.client.client,
            self.node,
            self.path,
            lifetime=self.lifetime,
            wait=self.wait,
        )
        d.addCallbacks(self._renewed, self._failed)

    def _renewed(self, certificate: x509.Certificate) -> None:
        self.failures = 0
        self.current = certificate
        self.log.info(
            "node {node}'s certificate renewed, valid until {end}",
            node=self.node,
            end=certificate.not_valid_after_utc.isoformat(),
        )
        if self.running:
            self._schedule()

    def _failed(self, failure: Any) -> None:
        self.failures += 1
        first, longest = RENEW_BACKOFF
        delay = min(longest, first * 2 ** (self.failures - 1)) * (0.5 + 0.5 * self.jitter())
        self.log.warn(
            "renewing node {node}'s certificate failed ({error}); the current one is kept "
            "(until {end}), tried again in {delay:.0f} s",
            node=self.node,
            error=describeApiError(failure.value)
            if not isinstance(failure.value, TunnelError)
            else str(failure.value),
            end=self.current.not_valid_after_utc.isoformat(),
            delay=delay,
        )
        if self.running:
            self.pending = self.reactor.callLater(delay, self._renew)
