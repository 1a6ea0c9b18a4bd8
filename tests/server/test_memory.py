"""
L{MemoryReturn}: one trim after a mass departure, none otherwise.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.server.memory import (
    TRIM_AFTER_DEPARTURES,
    TRIM_AT_LATEST,
    TRIM_QUIET,
    MemoryReturn,
    glibcMallocTrim,
    residentBytes,
)


class MemoryReturnTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connected = 0
        self.trimmed: list[float] = []
        sizes = iter(range(10**9, 0, -(10**6)))
        self.memory = MemoryReturn(
            self.clock,
            lambda: self.connected,
            self.trim,
            resident=lambda: next(sizes),
        )

    def trim(self) -> int:
        self.trimmed.append(self.clock.seconds())
        return 1

    def arrive(self, count: int) -> None:
        for _ in range(count):
            self.connected += 1
            self.memory.changed()

    def leave(self, count: int, every: float = 0.0) -> None:
        for _ in range(count):
            self.connected -= 1
            self.memory.changed()
            self.clock.advance(every)

    def test_trimOnceAfterAMassDeparture(self) -> None:
        """
        Once enough agents have gone, one trim, when departures have been
        quiet for a while; logged with what it took.
        """
        self.arrive(3 * TRIM_AFTER_DEPARTURES)
        with capturedLogs() as events:
            self.leave(3 * TRIM_AFTER_DEPARTURES, every=0.001)
            self.assertEqual(self.trimmed, [])
            self.clock.advance(TRIM_QUIET)
        self.assertEqual(len(self.trimmed), 1)
        [event] = [e for e in events if "malloc_trim" in e["log_format"]]
        self.assertEqual(event["gone"], 3 * TRIM_AFTER_DEPARTURES)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_fewDeparturesNoTrim(self) -> None:
        self.arrive(TRIM_AFTER_DEPARTURES)
        self.leave(TRIM_AFTER_DEPARTURES - 1)
        self.arrive(10)
        self.leave(10)
        self.clock.advance(TRIM_AT_LATEST)
        self.assertEqual(self.trimmed, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_trimAtLatestWhileChurning(self) -> None:
        """Agents that keep coming and going delay the trim only so long."""
        self.arrive(2 * TRIM_AFTER_DEPARTURES)
        self.leave(TRIM_AFTER_DEPARTURES)
        with capturedLogs():
            for _ in range(int(2 * TRIM_AT_LATEST)):
                self.arrive(1)
                self.leave(1, every=1.0)
        self.assertEqual(len(self.trimmed), 1)

    def test_noTrimWithout(self) -> None:
        """Without a trim function (not glibc) nothing is scheduled."""
        memory = MemoryReturn(self.clock, lambda: 0, None)
        memory.trim = None
        memory.changed()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_glibcHelpers(self) -> None:
        """Here (Linux with glibc) there is a trim, and it runs."""
        trim = glibcMallocTrim()
        if trim is None:
            raise self.skipTest("no glibc malloc_trim here")
        self.assertIn(trim(), (0, 1))
        resident = residentBytes()
        assert resident is not None
        self.assertGreater(resident, 0)
