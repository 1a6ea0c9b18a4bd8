"""
L{CertificateExpiry}: one timer for every agent's certificate expiry.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.server.expiry import CertificateExpiry


class FakeIdentity:
    def __init__(self, expires: float) -> None:
        self._expires = datetime.datetime.fromtimestamp(expires, datetime.UTC)

    def expires(self) -> datetime.datetime:
        return self._expires


class FakeTunnel:
    def __init__(self) -> None:
        self.closed: list[tuple[int, str]] = []

    def close(self, code: int, text: str) -> None:
        self.closed.append((code, text))


class FakeRecord:
    def __init__(self, node: str, expires: float) -> None:
        self.node = node
        self.tunnel = FakeTunnel()
        self.identity = FakeIdentity(expires)


class CertificateExpiryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.expiry = CertificateExpiry(self.clock, Logger())

    def watch(self, node: str, inSeconds: float) -> Any:
        record = FakeRecord(node, self.clock.seconds() + inSeconds)
        self.expiry.watch(record)  # type: ignore[arg-type]
        return record

    def test_oneTimerForAll(self) -> None:
        """
        However many agents, one reactor timer, due at the earliest expiry;
        each tunnel is closed at its own, not a second before.
        """
        records = [self.watch(f"edge-{i}", 3600 * (10 - i)) for i in range(10)]
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), self.clock.seconds() + 3600)
        with capturedLogs():
            for hours in range(1, 11):
                self.clock.advance(3599)
                self.assertEqual(sum(bool(r.tunnel.closed) for r in records), hours - 1)
                self.clock.advance(1)
                self.assertEqual(sum(bool(r.tunnel.closed) for r in records), hours)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.expiry), 0)

    def test_goneTunnelsAreForgotten(self) -> None:
        """
        A tunnel that went away is not closed at its expiry, and agents that
        come and go do not grow what is kept.
        """
        keep = self.watch("edge-keep", 7200)
        for i in range(1000):
            gone = self.watch(f"edge-{i}", 3600)
            self.expiry.forget(gone.tunnel)
        self.assertEqual(len(self.expiry), 1)
        self.assertLessEqual(len(self.expiry._heap), 2 + 64 + 1)
        with capturedLogs():
            self.clock.advance(3600)
            self.assertEqual(keep.tunnel.closed, [])
            self.clock.advance(3600)
        self.assertEqual(len(keep.tunnel.closed), 1)
        self.expiry.forget(keep.tunnel)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_watchingAgainReplaces(self) -> None:
        """A tunnel watched again (a new certificate) keeps only its latest expiry."""
        record = self.watch("edge-1", 60)
        record.identity = FakeIdentity(self.clock.seconds() + 120)
        self.expiry.watch(record)
        self.assertEqual(len(self.expiry), 1)
        self.clock.advance(60)
        self.assertEqual(record.tunnel.closed, [])
        with capturedLogs():
            self.clock.advance(60)
        self.assertEqual(len(record.tunnel.closed), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
