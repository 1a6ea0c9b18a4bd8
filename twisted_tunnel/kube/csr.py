# -*- test-case-name: tests.kube.test_csr -*-
"""
The tunnel's own signer for agent certificates, through the Kubernetes
CSR API (issue 16, item 5): an agent that may not read the kubelet's key
asks, with the node's own API credentials, for a certificate of the
tunnel's CA, and the server approves and signs it.

The signer is C{twisted-tunnel.io/agent} (L{SIGNER_NAME}), not
C{kubernetes.io/kube-apiserver-client-kubelet}: its certificates are the
tunnel's, from the tunnel's CA, and the cluster's client CA stays out of
it.  The server is both approver and signer.  A request is approved, and
signed, only when everything in it says one node, the one that asked
(L{judgeRequest}):

  - the requester (C{spec.username}, which kube-apiserver fills in from
    the credentials that created the object) is C{system:node:<n>}, in
    group C{system:nodes};
  - the PEM request's subject is exactly C{CN=system:node:<n>,
    O=system:nodes} for that same C{n}, it asks for no subjectAltName or
    other extension, its signature is valid, its key is EC P-256/P-384 or
    RSA of at least 2048 bits;
  - its usages are exactly digital signature and client auth (and key
    encipherment for an RSA key).

Anything else is denied, with the reason in the Denied condition's
message (C{kubectl get csr -o yaml} shows it) and one log line.  The
certificate's subject is built from the judged node name, never copied
from the request, and its lifetime is the requested C{expirationSeconds}
clamped to L{MIN_LIFETIME}..L{MAX_LIFETIME} (L{DEFAULT_LIFETIME} without
one) and to the CA's own end (L{signAgentRequest}).

Bounded: a request's PEM larger than L{MAX_REQUEST_BYTES} is denied
unread; a CSR object larger than L{MAX_CSR_BYTES} is refused by the watch;
each node may have L{NODE_RATE} requests acted on per minute (more wait
for the next relist or change: they are not denied); at most
L{MAX_IN_FLIGHT} API calls are in flight.
"""

from __future__ import annotations

import base64
import datetime
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger
from zope.interface import implementer

from ..tls.certs import (
    NODE_COMMON_NAME_PREFIX,
    NODE_ORGANIZATION,
    Issued,
    _authorityKeyIdentifier,
    _signatureHash,
    isNodeName,
    leafKeyUsage,
)
from ..tls.minting import ServingAuthority
from .client import KubeClient, describeApiError
from .watch import APISource, IWatchListener, Watch, WatchBounds, WatchTarget

__all__ = [
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "MIN_LIFETIME",
    "SIGNER_NAME",
    "CSRApprover",
    "Verdict",
    "csrWatch",
    "judgeRequest",
    "signAgentRequest",
]

#: The signerName of the tunnel's agent certificates.
SIGNER_NAME = "twisted-tunnel.io/agent"
#: The group every node's credentials carry.
NODES_GROUP = "system:nodes"
#: A certificate's lifetime without C{expirationSeconds}: a day.
DEFAULT_LIFETIME = 24 * 3600
#: The longest lifetime signed, whatever is asked: a week.
MAX_LIFETIME = 7 * 86400
#: The shortest (kube-apiserver refuses an C{expirationSeconds} below it too).
MIN_LIFETIME = 600
#: How far back a certificate's validity starts, for clocks a little behind.
BACKDATE = 300
#: A request's PEM larger than this is denied unread (a P-256 one is ~500 bytes).
MAX_REQUEST_BYTES = 16 * 1024
#: A CSR object's JSON larger than this is refused by the watch.
MAX_CSR_BYTES = 64 * 1024
#: Requests acted on per node per minute.
NODE_RATE = 6
#: Nodes whose recent requests are remembered (the least recent forgotten).
MAX_NODES_TRACKED = 20000
#: API calls in flight at most.
MAX_IN_FLIGHT = 32
#: CSRs remembered as acted on (the oldest forgotten: a CSR is garbage
#: collected by kube-apiserver an hour after it is issued or denied).
MAX_DONE = 10000
#: The usages an agent certificate is for.
REQUIRED_USAGES = frozenset({"digital signature", "client auth"})
#: The reason of the conditions this server writes.
REASON = "EdgeTunnelNodeIdentity"

_log = Logger()


@frozen
class Verdict:
    """
    What L{judgeRequest} decided.

    @ivar node: the node the request is for (when it names one).
    @ivar reason: why it is denied; C{None}: approved.
    @ivar request: the parsed request, when approved.
    @ivar lifetime: seconds the certificate will be valid for, when approved.
    """

    node: str | None
    reason: str | None
    request: x509.CertificateSigningRequest | None = None
    lifetime: int = DEFAULT_LIFETIME

    @property
    def approved(self) -> bool:
        return self.reason is None


def _nodeOf(commonName: str) -> str | None:
    if not commonName.startswith(NODE_COMMON_NAME_PREFIX):
        return None
    name = commonName[len(NODE_COMMON_NAME_PREFIX) :]
    return name if isNodeName(name) else None


def _keyProblem(request: x509.CertificateSigningRequest) -> str | None:
    key = request.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            return f"EC key on curve {key.curve.name}: P-256 or P-384 only"
        return None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return f"RSA key of {key.key_size} bits: at least 2048"
        return None
    return f"{type(key).__name__.lstrip('_')}: EC P-256/P-384 or RSA only"


def judgeRequest(
    *,
    username: str,
    groups: Sequence[str],
    usages: Sequence[str],
    request: bytes,
    expirationSeconds: int | None = None,
) -> Verdict:
    """
    Whether a CSR of L{SIGNER_NAME} is to be approved: pure, from the
    CSR's C{spec} fields (C{request} is the PEM, base64-decoded).

    The requester is judged first, so that a request from anyone but a
    node is denied without its bytes being parsed.
    """
    requester = _nodeOf(username)
    if requester is None:
        return Verdict(None, f"requester {username[:100]!r} is not a node (system:node:<name>)")
    if NODES_GROUP not in groups:
        return Verdict(requester, f"requester {username!r} is not in group {NODES_GROUP}")
    if len(request) > MAX_REQUEST_BYTES:
        return Verdict(requester, f"request of {len(request)} bytes: at most {MAX_REQUEST_BYTES}")
    try:
        parsed = x509.load_pem_x509_csr(request)
    except ValueError:
        return Verdict(requester, "request is not a PEM certificate request")
    try:
        valid = parsed.is_signature_valid
    except Exception:  # an algorithm cryptography cannot check
        valid = False
    if not valid:
        return Verdict(requester, "request's signature is not valid")
    subject = parsed.subject
    expected = f"CN={NODE_COMMON_NAME_PREFIX}{requester},O={NODE_ORGANIZATION}"
    names = [(each.oid, each.value) for each in subject]
    if (
        sorted(names, key=lambda pair: pair[0].dotted_string)
        != sorted(
            [
                (NameOID.COMMON_NAME, NODE_COMMON_NAME_PREFIX + requester),
                (NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
            ],
            key=lambda pair: pair[0].dotted_string,
        )
        or len(subject.rdns) != 2
    ):
        return Verdict(
            requester,
            f"subject {subject.rfc4514_string()[:200]!r} is not the requester's: {expected}",
        )
    if len(parsed.extensions) > 0:
        kinds = ", ".join(sorted(type(each.value).__name__ for each in parsed.extensions))
        return Verdict(requester, f"request asks for extensions ({kinds}): none are allowed")
    problem = _keyProblem(parsed)
    if problem is not None:
        return Verdict(requester, problem)
    allowed = set(REQUIRED_USAGES)
    if isinstance(parsed.public_key(), rsa.RSAPublicKey):
        allowed.add("key encipherment")
    asked = set(usages)
    if not REQUIRED_USAGES <= asked or not asked <= allowed:
        return Verdict(
            requester,
            f"usages {sorted(asked)!r}: exactly {sorted(REQUIRED_USAGES)!r} "
            "(and key encipherment for an RSA key)",
        )
    lifetime = DEFAULT_LIFETIME if expirationSeconds is None else int(expirationSeconds)
    lifetime = max(MIN_LIFETIME, min(MAX_LIFETIME, lifetime))
    return Verdict(requester, None, parsed, lifetime)


def signAgentRequest(
    authority: ServingAuthority, verdict: Verdict, now: float | None = None
) -> x509.Certificate:
    """
    The certificate for an approved L{Verdict}: C{CN=system:node:<n>,
    O=system:nodes} (built from the judged name), no subjectAltName,
    keyUsage digitalSignature (and keyEncipherment for RSA),
    extendedKeyUsage clientAuth only, valid from L{BACKDATE} seconds ago
    for the verdict's lifetime, and never past the CA's own end.

    @raise ValueError: the verdict is not an approval.
    """
    if verdict.reason is not None or verdict.request is None or verdict.node is None:
        raise ValueError(f"not an approved request: {verdict.reason}")
    if now is None:
        now = time.time()
    key = verdict.request.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    ca = authority.certificate
    start = datetime.datetime.fromtimestamp(now - BACKDATE, datetime.UTC)
    end = min(
        datetime.datetime.fromtimestamp(now + verdict.lifetime, datetime.UTC),
        ca.not_valid_after_utc,
    )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, NODE_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, NODE_COMMON_NAME_PREFIX + verdict.node),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            leafKeyUsage(keyEncipherment=isinstance(key, rsa.RSAPublicKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authorityKeyIdentifier(Issued(ca, authority.key)), critical=False)
    )
    return builder.sign(authority.key, _signatureHash(authority.key))


def _conditions(obj: Any) -> set[str]:
    status = getattr(obj, "status", None)
    return {
        each.type
        for each in (getattr(status, "conditions", None) or ())
        if (each.status or "True") == "True"
    }


def verdictOf(obj: Any) -> Verdict:
    """L{judgeRequest} on a lightkube C{CertificateSigningRequest}."""
    spec = obj.spec
    raw = spec.request or ""
    if len(raw) > MAX_REQUEST_BYTES * 4 // 3 + 8:
        return judgeRequest(
            username=spec.username or "",
            groups=spec.groups or (),
            usages=spec.usages or (),
            request=b"\0" * (MAX_REQUEST_BYTES + 1),
        )
    try:
        request = base64.b64decode(raw, validate=True) if isinstance(raw, str) else bytes(raw)
    except ValueError:
        request = b""
    return judgeRequest(
        username=spec.username or "",
        groups=spec.groups or (),
        usages=spec.usages or (),
        request=request,
        expirationSeconds=spec.expirationSeconds,
    )


class _NodeRate:
    """At most L{NODE_RATE} requests per node in any minute, for a bounded set of nodes."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.recent: OrderedDict[str, deque[float]] = OrderedDict()

    def take(self, node: str) -> bool:
        now = self.clock()
        times = self.recent.pop(node, None) or deque()
        while times and times[0] <= now - 60:
            times.popleft()
        allowed = len(times) < NODE_RATE
        if allowed:
            times.append(now)
        self.recent[node] = times
        while len(self.recent) > MAX_NODES_TRACKED:
            self.recent.popitem(last=False)
        return allowed


@implementer(IWatchListener)
class CSRApprover:
    """
    Approves, denies and signs the CSRs of L{SIGNER_NAME} the watch tells
    of, through C{client}'s threads.  Only pending ones are acted on: a
    CSR that is denied, failed or already issued is left alone; one that
    someone else approved is signed only if L{judgeRequest} approves it
    too (an approval is no licence to sign another node's name).

    @ivar authority: the CA that signs (L{replaceAuthority} swaps it).
    """

    log = Logger()

    def __init__(
        self,
        client: KubeClient,
        authority: ServingAuthority,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.authority = authority
        self.clock = clock
        self.rate = _NodeRate(clock)
        self.inFlight: set[str] = set()
        #: the CSRs (by uid) acted on: an event of one that was in flight
        #: when it was sent (the approval's own) is not acted on again
        self.done: OrderedDict[str, None] = OrderedDict()

    def replaceAuthority(self, authority: ServingAuthority) -> None:
        self.authority = authority

    def listed(self, objects: Sequence[Any], resourceVersion: str) -> None:
        for obj in objects:
            self.consider(obj)

    def changed(self, eventType: str, obj: Any) -> None:
        if eventType != "DELETED":
            self.consider(obj)

    def refused(self, eventType: str, name: str | None, size: int) -> None:
        self.log.warn(
            "CSR {name!r}: {size} bytes, more than {limit}: not looked at",
            name=name,
            size=size,
            limit=MAX_CSR_BYTES,
        )

    def broken(self, reason: str, retryIn: float) -> None:
        pass  # the watch logs it

    def consider(self, obj: Any) -> None:
        """Act on one CSR if it is ours, pending, and its node is within its rate."""
        name = obj.metadata.name
        if obj.spec.signerName != SIGNER_NAME or name in self.inFlight:
            return
        if (obj.metadata.uid or name) in self.done:
            return
        conditions = _conditions(obj)
        if conditions & {"Denied", "Failed"} or getattr(obj.status, "certificate", None):
            return
        if len(self.inFlight) >= MAX_IN_FLIGHT:
            self.log.warn(
                "CSR {name}: {count} in flight, left for later",
                name=name,
                count=len(self.inFlight),
            )
            return
        verdict = verdictOf(obj)
        if not self.rate.take(verdict.node or obj.spec.username or ""):
            self.log.warn(
                "CSR {name}: node {node} over {rate} requests a minute, left for later",
                name=name,
                node=verdict.node,
                rate=NODE_RATE,
            )
            return
        approved = "Approved" in conditions
        if verdict.reason is not None:
            if approved:
                self.log.error(
                    "CSR {name} was approved by someone else, but is not signed: {reason}",
                    name=name,
                    reason=verdict.reason,
                )
                return
            self.log.warn(
                "CSR {name} from {requester} denied: {reason}",
                name=name,
                requester=obj.spec.username,
                reason=verdict.reason,
            )
            self._call(obj, self._condition, obj, "Denied", verdict.reason)
            return
        self._call(obj, self._approveAndSign, obj, verdict, approved)

    def _call(self, obj: Any, function: Callable[..., Any], *args: Any) -> None:
        name = obj.metadata.name
        self.inFlight.add(name)
        d = self.client.callInThread(function, *args)

        def succeeded(_: object) -> None:
            self.done[obj.metadata.uid or name] = None
            while len(self.done) > MAX_DONE:
                self.done.popitem(last=False)

        def failed(failure: Any) -> None:
            # judged again on its next event or relist
            self.log.warn("CSR {name}: {error}", name=name, error=describeApiError(failure.value))

        def done(_: object) -> None:
            self.inFlight.discard(name)

        d.addCallbacks(succeeded, failed)
        d.addBoth(done)

    def _condition(self, obj: Any, kind: str, message: str) -> None:
        """Blocking: add condition C{kind} through the approval subresource."""
        from lightkube.resources.certificates_v1 import CertificateSigningRequestApproval
        from lightkube.types import PatchType

        conditions = [
            {
                "type": each.type,
                "status": each.status,
                "reason": each.reason,
                "message": each.message,
            }
            for each in (getattr(obj.status, "conditions", None) or ())
        ]
        conditions.append(
            {"type": kind, "status": "True", "reason": REASON, "message": message[:1000]}
        )
        self.client.client.patch(
            CertificateSigningRequestApproval,
            obj.metadata.name,
            {
                # a precondition: a CSR changed since it was judged is judged again
                "metadata": {"resourceVersion": obj.metadata.resourceVersion},
                "status": {"conditions": conditions},
            },
            patch_type=PatchType.MERGE,
        )

    def _approveAndSign(self, obj: Any, verdict: Verdict, approved: bool) -> None:
        """Blocking: approve (unless it is), then sign through the status subresource."""
        from cryptography.hazmat.primitives.serialization import Encoding
        from lightkube.resources.certificates_v1 import CertificateSigningRequestStatus
        from lightkube.types import PatchType

        name = obj.metadata.name
        if not approved:
            self._condition(
                obj, "Approved", f"node {verdict.node} asked for its own tunnel certificate"
            )
        certificate = signAgentRequest(self.authority, verdict, self.clock())
        pem = certificate.public_bytes(Encoding.PEM)
        self.client.client.patch(
            CertificateSigningRequestStatus,
            name,
            {"status": {"certificate": base64.b64encode(pem).decode("ascii")}},
            patch_type=PatchType.MERGE,
        )
        self.log.info(
            "CSR {name}: node {node}'s certificate signed, valid until {end}",
            name=name,
            node=verdict.node,
            end=certificate.not_valid_after_utc.isoformat(),
        )


def csrWatch(reactor: Any, client: KubeClient, approver: CSRApprover) -> Watch:
    """The service that watches the CSRs of L{SIGNER_NAME} for C{approver}."""
    from lightkube.core import decoders
    from lightkube.resources.certificates_v1 import CertificateSigningRequest

    def decode(raw: bytes) -> Any:
        return decoders.decode_object(raw, CertificateSigningRequest)

    return Watch(
        reactor,
        APISource(
            client,
            WatchTarget(CertificateSigningRequest, fieldSelector=f"spec.signerName={SIGNER_NAME}"),
        ),
        approver,
        decode,
        bounds=WatchBounds(maxObjectBytes=MAX_CSR_BYTES),
    )
