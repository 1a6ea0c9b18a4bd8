# -*- test-case-name: tests.kube.test_bootstrap -*-
"""
Tests for L{twisted_tunnel.kube.bootstrap}: the agent's request, and when
it renews its certificate (with L{Clock}); the CSR API itself is
exercised in L{tests.system.test_kube.CSRBootstrapTests}.
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.kube.bootstrap import (
    RENEW_BACKOFF,
    CertificateRenewer,
    CSRRefused,
    buildRequest,
    renewalDelay,
)
from twisted_tunnel.tls.certs import mintAgent, mintCA

DAY = 86400.0


def certificate(start: float, life: float) -> x509.Certificate:
    return mintAgent(
        mintCA(),
        "edge-c1",
        notBefore=datetime.datetime.fromtimestamp(start, datetime.UTC),
        notAfter=datetime.datetime.fromtimestamp(start + life, datetime.UTC),
    ).certificate


class RequestTests(SynchronousTestCase):
    def test_subjectOnly(self) -> None:
        request = x509.load_pem_x509_csr(
            buildRequest("edge-c1", ec.generate_private_key(ec.SECP256R1()))
        )
        self.assertEqual(request.subject.rfc4514_string(), "CN=system:node:edge-c1,O=system:nodes")
        self.assertEqual(len(request.extensions), 0)
        self.assertTrue(request.is_signature_valid)


class RenewalDelayTests(SynchronousTestCase):
    def test_twoThirds(self) -> None:
        self.assertEqual(renewalDelay(0, 3 * DAY, 0, 0.0), 2 * DAY)
        self.assertAlmostEqual(renewalDelay(0, 3 * DAY, 0, 1.0), 2 * DAY - 0.3 * DAY)
        self.assertEqual(renewalDelay(0, 3 * DAY, DAY, 0.0), DAY)

    def test_pastIsNow(self) -> None:
        self.assertEqual(renewalDelay(0, 3 * DAY, 2.5 * DAY, 0.5), 0.0)


class InlineClient:
    client = object()

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.calls: list[tuple[Any, ...]] = []

    def callInThread(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        self.calls.append(args)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            return fail(result)
        return succeed(result)


class RenewerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.client = InlineClient()
        self.first = certificate(self.clock.seconds(), 3 * DAY)
        self.renewer = CertificateRenewer(
            self.clock,
            self.client,  # type: ignore[arg-type]
            "edge-c1",
            "/nonexistent/edge-tunnel-agent-current.pem",
            self.first,
            jitter=lambda: 0.0,
        )
        self.renewer.startService()

    def tearDown(self) -> None:
        self.renewer.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_renewsAtTwoThirds(self) -> None:
        second = certificate(self.clock.seconds() + 2 * DAY, 3 * DAY)
        self.client.results.append(second)
        self.clock.advance(2 * DAY - 1)
        self.assertEqual(self.client.calls, [])
        self.clock.advance(1)
        self.assertEqual(len(self.client.calls), 1)
        self.assertIs(self.renewer.current, second)
        # and the next one two thirds into the new certificate's life
        (pending,) = self.clock.getDelayedCalls()
        self.assertEqual(pending.getTime(), second.not_valid_before_utc.timestamp() + 2 * DAY)

    def test_failureKeepsAndBacksOff(self) -> None:
        """A failed renewal keeps the certificate, and tries again later, doubling."""
        self.client.results += [CSRRefused("denied"), CSRRefused("denied")]
        self.clock.advance(2 * DAY)
        self.assertIs(self.renewer.current, self.first)
        (pending,) = self.clock.getDelayedCalls()
        self.assertEqual(pending.getTime() - self.clock.seconds(), RENEW_BACKOFF[0] * 0.5)
        self.clock.advance(RENEW_BACKOFF[0] * 0.5)
        (pending,) = self.clock.getDelayedCalls()
        self.assertEqual(pending.getTime() - self.clock.seconds(), RENEW_BACKOFF[0])
        self.assertEqual(len(self.client.calls), 2)
        third = certificate(self.clock.seconds(), 3 * DAY)
        self.client.results.append(third)
        self.clock.advance(RENEW_BACKOFF[0])
        self.assertIs(self.renewer.current, third)
        self.assertEqual(self.renewer.failures, 0)
