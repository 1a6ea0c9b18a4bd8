# -*- test-case-name: tests.agent.test_security_agent -*-
"""
Rate-limited log lines: at most a few lines of one kind per interval, then
one summary line that says how many were left out.

A peer decides how often some of our log lines are written: a hostile
server that sends 20,000 OPENs for an address the agent may not dial made it
write 20,000 warnings in seconds, drowning everything else (and filling the
node's disk).  One line per refusal is right for an operator reading the log
of a normal day; under a flood, the first few lines and a count say as much.

Usage::

    throttle = LogThrottle(clock)
    throttle.emit(log, LogLevel.warn, "refused to dial {host}:{port}", host=h, port=p)

Lines are grouped by their logger's namespace, format string, level and an optional
C{key} (a few fields that make lines "of one kind": never a field the peer
chooses freely, or a flood with a new value each time would make new kinds).
Per kind, the first C{burst} lines of an interval of C{interval} seconds are
written; the others are counted, and when a line of that kind next comes
after the interval (or at L{LogThrottle.flush}), one summary is written
first: the last line left out, followed by C{(N more like this in T s)}.
No timer is involved, so a throttle has no lifecycle of its own: a kind
whose interval ended is summarized the next time any line goes through the
throttle, and L{LogThrottle.flush} writes what is left (call it when the
owner stops).

At most C{maxKinds} kinds are tracked (the oldest is summarized and
forgotten to make room), so the memory held is bounded whatever the peer
sends.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

#: Defaults: 10 lines of a kind per minute, then a summary a minute.
DEFAULT_BURST = 10
DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_KINDS = 256

#: Appended to the format of a summary line.
SUMMARY = " ({log_throttle_suppressed} more like this in {log_throttle_seconds:.0f}s)"


class _Kind:
    """One kind of line: its current interval, what was written and left out."""

    __slots__ = ("log", "level", "format", "start", "written", "suppressed", "last", "lastAt")

    def __init__(self, log: Logger, level: LogLevel, format: str, start: float) -> None:
        self.log = log
        self.level = level
        self.format = format
        self.start = start
        self.written = 0
        self.suppressed = 0
        self.last: dict[str, Any] = {}
        self.lastAt = start


class LogThrottle:
    """
    Writes log lines through a C{Logger}, at most C{burst} of a kind per
    C{interval} seconds (see the module docstring).

    @ivar suppressed: how many lines were left out so far, all kinds
        together (for a metric or a test).
    """

    def __init__(
        self,
        clock: IReactorTime,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        maxKinds: int = DEFAULT_MAX_KINDS,
    ) -> None:
        if burst < 1 or interval <= 0 or maxKinds < 1:
            raise ValueError("burst and maxKinds must be >= 1, interval > 0")
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.maxKinds = maxKinds
        self.suppressed = 0
        # oldest interval first: the head is the next to end
        self._kinds: OrderedDict[Hashable, _Kind] = OrderedDict()

    def emit(
        self,
        log: Logger,
        level: LogLevel,
        format: str,
        *,
        key: Hashable = (),
        failure: Failure | None = None,
        **fields: Any,
    ) -> bool:
        """
        Write C{format} with C{fields} at C{level} through C{log}, unless
        C{burst} lines of this kind were written in the current interval.

        @param key: what else, besides C{log}, C{level} and C{format}, makes
            lines of one kind; hashable and bounded (not a peer's free text).
        @param failure: write it with the line, as C{Logger.failure} does.
        @return: whether the line was written.
        """
        now = self.clock.seconds()
        self._summarizeEnded(now)
        identity = (log.namespace, level, format, key)
        kind = self._kinds.get(identity)
        if kind is None:
            while len(self._kinds) >= self.maxKinds:
                _, oldest = self._kinds.popitem(last=False)
                self._summarize(oldest)
            kind = self._kinds[identity] = _Kind(log, level, format, now)
        if kind.written < self.burst:
            kind.written += 1
            _write(log, level, format, failure, fields)
            return True
        kind.suppressed += 1
        kind.last = fields
        kind.lastAt = now
        self.suppressed += 1
        return False

    def flush(self) -> None:
        """Write the summary of every kind with lines left out, and forget them all."""
        kinds, self._kinds = self._kinds, OrderedDict()
        for kind in kinds.values():
            self._summarize(kind)

    def _summarizeEnded(self, now: float) -> None:
        """Summarize and forget the kinds whose interval has ended."""
        while self._kinds:
            identity, kind = next(iter(self._kinds.items()))
            if now - kind.start < self.interval:
                return
            del self._kinds[identity]
            self._summarize(kind)

    def _summarize(self, kind: _Kind) -> None:
        if not kind.suppressed:
            return
        fields = dict(kind.last)
        fields["log_throttle_suppressed"] = kind.suppressed
        fields["log_throttle_seconds"] = kind.lastAt - kind.start
        _write(kind.log, kind.level, kind.format + SUMMARY, None, fields)


def _write(
    log: Logger, level: LogLevel, format: str, failure: Failure | None, fields: dict[str, Any]
) -> None:
    if failure is not None:
        log.failure(format, failure, level, **fields)
    else:
        log.emit(level, format, **fields)
