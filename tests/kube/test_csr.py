# -*- test-case-name: tests.kube.test_csr -*-
"""
Tests for L{twisted_tunnel.kube.csr}: which CSRs the tunnel's signer
approves (only a node asking for its own name, with a client
certificate's usages), and the certificates it signs; from real requests
built with C{cryptography}.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lightkube.models.certificates_v1 import (
    CertificateSigningRequestCondition,
    CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_tunnel.kube.bootstrap import buildRequest
from twisted_tunnel.kube.csr import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    MAX_REQUEST_BYTES,
    MIN_LIFETIME,
    NODE_RATE,
    SIGNER_NAME,
    CSRApprover,
    judgeRequest,
    signAgentRequest,
)
from twisted_tunnel.kube.watch import IWatchListener
from twisted_tunnel.tls.certs import mintCA
from twisted_tunnel.tls.minting import ServingAuthority

NODE = "edge-c1"
USAGES = ["digital signature", "client auth"]


def request(
    subject: list[tuple[Any, str]] | None = None,
    key: Any = None,
    extensions: list[x509.ExtensionType] = (),  # type: ignore[assignment]
) -> bytes:
    """A PEM request, by default node C{edge-c1}'s, signed with a P-256 key."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    if subject is None:
        subject = [
            (NameOID.ORGANIZATION_NAME, "system:nodes"),
            (NameOID.COMMON_NAME, f"system:node:{NODE}"),
        ]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value) for oid, value in subject])
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    hashing = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, hashing).public_bytes(serialization.Encoding.PEM)


def judge(**overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "username": f"system:node:{NODE}",
        "groups": ["system:nodes", "system:authenticated"],
        "usages": USAGES,
        "request": request(),
    }
    arguments.update(overrides)
    return judgeRequest(**arguments)


class JudgeTests(SynchronousTestCase):
    def test_nodeAskingForItself(self) -> None:
        """A node asking, for its own name, a client certificate: approved."""
        verdict = judge()
        self.assertTrue(verdict.approved, verdict.reason)
        self.assertEqual(verdict.node, NODE)
        self.assertEqual(verdict.lifetime, DEFAULT_LIFETIME)
        # the agent's own request is such a one
        key = ec.generate_private_key(ec.SECP256R1())
        self.assertTrue(judge(request=buildRequest(NODE, key)).approved)

    def test_anotherNodesName(self) -> None:
        """A node asking for another node's name is denied, naming both."""
        verdict = judge(
            request=request(
                [
                    (NameOID.ORGANIZATION_NAME, "system:nodes"),
                    (NameOID.COMMON_NAME, "system:node:edge-c2"),
                ]
            )
        )
        self.assertFalse(verdict.approved)
        self.assertIn("system:node:edge-c2", verdict.reason)
        self.assertIn(f"CN=system:node:{NODE},O=system:nodes", verdict.reason)

    def test_subjectNotExactly(self) -> None:
        """A subject without O=system:nodes, or with more in it, is denied."""
        for subject in (
            [(NameOID.COMMON_NAME, f"system:node:{NODE}")],
            [
                (NameOID.ORGANIZATION_NAME, "system:masters"),
                (NameOID.COMMON_NAME, f"system:node:{NODE}"),
            ],
            [
                (NameOID.ORGANIZATION_NAME, "system:nodes"),
                (NameOID.ORGANIZATION_NAME, "system:masters"),
                (NameOID.COMMON_NAME, f"system:node:{NODE}"),
            ],
        ):
            verdict = judge(request=request(subject))
            self.assertFalse(verdict.approved, subject)
            self.assertIn("is not the requester's", verdict.reason)

    def test_wrongUsages(self) -> None:
        """Server auth, a missing client auth, or key encipherment for an EC key: denied."""
        for usages in (
            ["digital signature", "client auth", "server auth"],
            ["digital signature"],
            ["digital signature", "key encipherment", "client auth"],
            ["client auth", "cert sign"],
        ):
            verdict = judge(usages=usages)
            self.assertFalse(verdict.approved, usages)
            self.assertIn("usages", verdict.reason)

    def test_rsaMayAskKeyEncipherment(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        verdict = judge(request=request(key=key), usages=[*USAGES, "key encipherment"])
        self.assertTrue(verdict.approved, verdict.reason)

    def test_nonNodeRequester(self) -> None:
        """The admin, a ServiceAccount, or a node name outside system:nodes: denied."""
        for username, groups in (
            ("interop-admin", ["system:masters"]),
            ("system:serviceaccount:kube-system:edge-tunnel-server", ["system:serviceaccounts"]),
            ("system:node:", ["system:nodes"]),
            ("system:node:Not_A_Name", ["system:nodes"]),
        ):
            verdict = judge(username=username, groups=groups)
            self.assertFalse(verdict.approved, username)
            self.assertIn("is not a node", verdict.reason)
        verdict = judge(groups=["system:authenticated"])
        self.assertFalse(verdict.approved)
        self.assertIn("not in group system:nodes", verdict.reason)

    def test_extensionsRefused(self) -> None:
        """A request for any subjectAltName (or other extension) is denied."""
        for extension in (
            x509.SubjectAlternativeName([x509.DNSName(NODE)]),
            x509.BasicConstraints(ca=True, path_length=None),
        ):
            verdict = judge(request=request(extensions=[extension]))
            self.assertFalse(verdict.approved)
            self.assertIn("extensions", verdict.reason)

    def test_keys(self) -> None:
        """Small RSA, other curves, Ed25519: denied."""
        for key in (
            rsa.generate_private_key(public_exponent=65537, key_size=1024),
            ec.generate_private_key(ec.SECP521R1()),
            ed25519.Ed25519PrivateKey.generate(),
        ):
            self.assertFalse(judge(request=request(key=key)).approved, key)
        self.assertTrue(
            judge(request=request(key=ec.generate_private_key(ec.SECP384R1()))).approved
        )

    def test_malformed(self) -> None:
        """Not PEM, too large, or a bad signature: denied."""
        self.assertIn("not a PEM", judge(request=b"junk").reason)
        self.assertIn("at most", judge(request=b"x" * (MAX_REQUEST_BYTES + 1)).reason)
        good = request()
        der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
        tampered = bytearray(der)
        tampered[-5] ^= 0x01  # in the signature
        pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM)
        self.assertIn("signature", judge(request=pem).reason)

    def test_lifetimeClamped(self) -> None:
        self.assertEqual(judge(expirationSeconds=10 * 86400).lifetime, MAX_LIFETIME)
        self.assertEqual(judge(expirationSeconds=60).lifetime, MIN_LIFETIME)
        self.assertEqual(judge(expirationSeconds=3600).lifetime, 3600)


def authority() -> ServingAuthority:
    ca = mintCA("tunnel agent signer")
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    return ServingAuthority(ca.certificate, ca.key)


class SignTests(SynchronousTestCase):
    def test_shape(self) -> None:
        """The node's identity, client auth only, the lifetime asked, chained to the CA."""
        signer = authority()
        verdict = judge(expirationSeconds=3600)
        certificate = signAgentRequest(signer, verdict, now=2_000_000_000)
        self.assertEqual(
            certificate.subject.rfc4514_string(), f"CN=system:node:{NODE},O=system:nodes"
        )
        self.assertEqual(certificate.issuer, signer.certificate.subject)
        certificate.verify_directly_issued_by(signer.certificate)
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [ExtendedKeyUsageOID.CLIENT_AUTH])
        keyUsage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(keyUsage.digital_signature)
        self.assertFalse(keyUsage.key_cert_sign)
        self.assertFalse(
            certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        )
        with self.assertRaises(x509.ExtensionNotFound):
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(certificate.not_valid_after_utc.timestamp(), 2_000_000_000 + 3600)
        self.assertEqual(certificate.not_valid_before_utc.timestamp(), 2_000_000_000 - 300)

    def test_clampedToTheCA(self) -> None:
        """Never past the CA's own end."""
        signer = authority()
        end = signer.certificate.not_valid_after_utc.timestamp()
        certificate = signAgentRequest(signer, judge(), now=end - 60)
        self.assertEqual(certificate.not_valid_after_utc.timestamp(), end)

    def test_deniedNotSigned(self) -> None:
        with self.assertRaises(ValueError):
            signAgentRequest(authority(), judge(usages=["client auth"]))


class FakeLightkube:
    """Records what the approver sends (the API itself is tested in tests.system.test_kube)."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, Any]] = []

    def patch(self, resource: type, name: str, body: Any, **kwargs: Any) -> None:
        self.patches.append((resource.__name__, name, body))


class InlineClient:
    """A KubeClient whose calls run at once, in the test's thread."""

    def __init__(self) -> None:
        self.client = FakeLightkube()

    def callInThread(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return succeed(function(*args, **kwargs))


def csr(
    name: str,
    *,
    signer: str = SIGNER_NAME,
    conditions: list[str] = (),  # type: ignore[assignment]
    **overrides: Any,
) -> Any:
    spec: dict[str, Any] = {
        "username": f"system:node:{NODE}",
        "groups": ["system:nodes"],
        "usages": USAGES,
        "request": base64.b64encode(request()).decode(),
        "signerName": signer,
    }
    spec.update(overrides)
    return CertificateSigningRequest(
        metadata=ObjectMeta(name=name, resourceVersion="7", uid=f"uid-{name}"),
        spec=CertificateSigningRequestSpec(**spec),
        status=CertificateSigningRequestStatus(
            conditions=[
                CertificateSigningRequestCondition(type=kind, status="True") for kind in conditions
            ]
        ),
    )


class ApproverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client = InlineClient()
        self.now = 2_000_000_000.0
        self.approver = CSRApprover(
            self.client,  # type: ignore[arg-type]
            authority(),
            clock=lambda: self.now,
        )

    def kinds(self) -> list[tuple[str, str]]:
        return [(resource, name) for resource, name, _ in self.client.client.patches]

    def test_interface(self) -> None:
        verifyObject(IWatchListener, self.approver)

    def test_approvesThenSigns(self) -> None:
        self.approver.changed("ADDED", csr("a"))
        self.assertEqual(
            self.kinds(),
            [("CertificateSigningRequestApproval", "a"), ("CertificateSigningRequestStatus", "a")],
        )
        approval = self.client.client.patches[0][2]
        self.assertEqual(approval["metadata"], {"resourceVersion": "7"})
        self.assertEqual(approval["status"]["conditions"][0]["type"], "Approved")
        pem = base64.b64decode(self.client.client.patches[1][2]["status"]["certificate"])
        issued = x509.load_pem_x509_certificate(pem)
        self.assertEqual(issued.subject.rfc4514_string(), f"CN=system:node:{NODE},O=system:nodes")

    def test_deniesWithTheReason(self) -> None:
        self.approver.changed("ADDED", csr("b", username="interop-admin"))
        (patch,) = self.client.client.patches
        self.assertEqual(patch[:2], ("CertificateSigningRequestApproval", "b"))
        (condition,) = patch[2]["status"]["conditions"]
        self.assertEqual(condition["type"], "Denied")
        self.assertIn("is not a node", condition["message"])

    def test_otherSignersLeftAlone(self) -> None:
        """Never approve nor deny another signer's CSR."""
        self.approver.listed(
            [
                csr("c", signer="kubernetes.io/kube-apiserver-client"),
                csr("d", signer="kubernetes.io/kube-apiserver-client-kubelet"),
            ],
            "1",
        )
        self.assertEqual(self.kinds(), [])

    def test_doneOnesLeftAlone(self) -> None:
        self.approver.listed(
            [csr("e", conditions=["Denied"]), csr("f", conditions=["Failed"])], "1"
        )
        self.assertEqual(self.kinds(), [])

    def test_approvedBySomeoneElseButWrongNotSigned(self) -> None:
        """An admin's approval of another node's name is no licence to sign it."""
        other = base64.b64encode(
            request(
                [
                    (NameOID.ORGANIZATION_NAME, "system:nodes"),
                    (NameOID.COMMON_NAME, "system:node:edge-c2"),
                ]
            )
        ).decode()
        self.approver.changed("MODIFIED", csr("g", conditions=["Approved"], request=other))
        self.assertEqual(self.kinds(), [])
        self.approver.changed("MODIFIED", csr("h", conditions=["Approved"]))
        self.assertEqual(self.kinds(), [("CertificateSigningRequestStatus", "h")])

    def test_actedOnOnce(self) -> None:
        """The approval's own event, arriving after the CSR was signed, is not acted on again."""
        pending = csr("once")
        self.approver.changed("ADDED", pending)
        self.approver.changed("MODIFIED", csr("once", conditions=["Approved"]))
        self.assertEqual(len(self.kinds()), 2)

    def test_rate(self) -> None:
        """At most NODE_RATE requests of a node a minute are acted on."""
        for index in range(NODE_RATE + 3):
            self.approver.changed("ADDED", csr(f"r{index}"))
        self.assertEqual(len(self.kinds()), 2 * NODE_RATE)
        self.now += 61
        self.approver.changed("ADDED", csr("later"))
        self.assertEqual(len(self.kinds()), 2 * NODE_RATE + 2)
