# -*- test-case-name: tests.kube.test_watch -*-
"""
The watch loop's state handling (L{WatchLoop}), driven synchronously by a
scripted, transport-free source: what determinism needs (the order of a
410 against a bookmark, a stream cut at a chosen byte, the exact backoff
delays).  The same bytes a kube-apiserver sends, decoded by lightkube's
own models.  Against the real kube-apiserver: L{tests.system.test_kube}.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from lightkube.core import decoders
from lightkube.resources.core_v1 import ConfigMap
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_tunnel.kube.watch import (
    BACKOFF,
    ENVELOPE_BYTES,
    MOVES,
    IWatchListener,
    IWatchSource,
    IWatchStream,
    LineReader,
    Oversized,
    Watch,
    WatchBounds,
    WatchLoop,
    WatchState,
    WatchTarget,
    backoffDelay,
    nameFromPrefix,
)


def configMap(name: str, version: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "uid": f"uid-{name}",
            "resourceVersion": version,
        },
        "data": data or {},
    }


def page(items: list[dict[str, Any]], version: str, token: str | None = None) -> bytes:
    metadata: dict[str, Any] = {"resourceVersion": version}
    if token:
        metadata["continue"] = token
    return json.dumps(
        {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": metadata, "items": items},
        separators=(",", ":"),
    ).encode()


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def bookmark(version: str) -> bytes:
    return event("BOOKMARK", {"kind": "ConfigMap", "metadata": {"resourceVersion": version}})


def gone() -> bytes:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410}
    return event("ERROR", {**status, "message": "too old resource version", "reason": "Expired"})


@implementer(IWatchStream)
class ScriptedStream:
    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.pieces = chunks
        self.error = error
        self.aborted = False
        self.closed = False

    def chunks(self) -> Iterator[bytes]:
        for chunk in self.pieces:
            if self.aborted:
                raise OSError("aborted")
            yield chunk
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


@implementer(IWatchSource)
class ScriptedSource:
    """
    Answers each request with the next step of its script: a stream, or
    an exception to raise; the loop is stopped when the script ends.
    """

    target = WatchTarget(ConfigMap, namespace="kube-system", fieldSelector="metadata.name=c")

    def __init__(self, script: list[tuple[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[Any, ...]] = []
        self.loop: WatchLoop | None = None
        self.streams: list[ScriptedStream] = []

    def _next(self, kind: str) -> ScriptedStream:
        if not self.script:
            assert self.loop is not None
            self.loop.stop()
            stream = ScriptedStream([])
            self.streams.append(stream)
            return stream
        expected, answer = self.script.pop(0)
        assert expected == kind, (expected, kind)
        if isinstance(answer, Exception):
            raise answer
        stream = answer if isinstance(answer, ScriptedStream) else ScriptedStream(answer)
        self.streams.append(stream)
        return stream

    def listPage(self, continueToken: str | None, limit: int, maxBytes: int) -> ScriptedStream:
        self.requests.append(("list", continueToken, limit))
        return self._next("list")

    def watch(self, resourceVersion: str, timeoutSeconds: int) -> ScriptedStream:
        self.requests.append(("watch", resourceVersion))
        return self._next("watch")


@implementer(IWatchListener)
class Listener:
    """Records what it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def listed(self, objects: Any, resourceVersion: str) -> None:
        self.heard.append(("listed", objects, resourceVersion))

    def changed(self, eventType: str, obj: Any) -> None:
        self.heard.append(("changed", eventType, obj))

    def refused(self, eventType: str, name: str | None, size: int) -> None:
        self.heard.append(("refused", eventType, name, size))

    def broken(self, reason: str, retryIn: float) -> None:
        self.heard.append(("broken", reason, retryIn))


class Gone(Exception):
    """What L{APISource.watch} raises for an HTTP 410 (the loop's own class)."""


def decode(raw: bytes) -> Any:
    return decoders.decode_object(raw, ConfigMap)


class LoopTestCase(SynchronousTestCase):
    def run_(self, script: list[tuple[str, Any]], **bounds: int) -> ScriptedSource:
        self.source = ScriptedSource(script)
        self.delivered: list[tuple[Any, ...]] = []
        self.waits: list[float] = []

        def deliver(function: Any, *args: Any, **kwargs: Any) -> None:
            if function.__name__ == "_call":
                self.delivered.append(args)
            else:
                self.delivered.append(("log", args[2], kwargs))

        loop = WatchLoop(
            self.source,
            deliver,
            decode,
            bounds=WatchBounds(**bounds),
            randomness=lambda: 1.0,
            wait=self.waits.append,
        )
        self.source.loop = loop
        self.loop = loop
        loop.run()
        return self.source

    def calls(self, name: str | None = None) -> list[tuple[Any, ...]]:
        return [d for d in self.delivered if d[0] != "log" and (name is None or d[0] == name)]


class ListThenWatchTests(LoopTestCase):
    def test_interfaces(self) -> None:
        verifyObject(IWatchSource, ScriptedSource([]))
        verifyObject(IWatchStream, ScriptedStream([]))

    def test_listThenWatch(self) -> None:
        """
        The list's objects are delivered at once, typed, with its version;
        the watch starts from that version, with the events in order; a
        bookmark moves the version without a delivery; when the server
        ends the watch, the next one starts from the last version.
        """
        a1 = configMap("c", "10", {"http-proxy-ports": "9100"})
        a2 = configMap("c", "12", {"http-proxy-ports": "9101"})
        self.run_(
            [
                ("list", [page([a1], "11")]),
                ("watch", [event("MODIFIED", a2), bookmark("15")]),
                ("watch", [event("DELETED", a2)]),
            ]
        )
        self.assertEqual(
            self.source.requests,
            [("list", None, 100), ("watch", "11"), ("watch", "15"), ("watch", "12")],
        )
        (listed, changed, deleted) = self.calls()
        self.assertEqual(listed[0], "listed")
        self.assertEqual([o.data for o in listed[1]], [{"http-proxy-ports": "9100"}])
        self.assertEqual(listed[2], "11")
        self.assertEqual(changed[:2], ("changed", "MODIFIED"))
        self.assertIsInstance(changed[2], ConfigMap)
        self.assertEqual(changed[2].data, {"http-proxy-ports": "9101"})
        self.assertEqual(deleted[:2], ("changed", "DELETED"))
        self.assertEqual(self.waits, [])
        self.assertEqual(self.loop.state, WatchState.STOPPED)
        self.assertTrue(all(stream.closed for stream in self.source.streams))

    def test_pages(self) -> None:
        """A list in pages: each next page asks with the continue token; one delivery."""
        self.run_(
            [
                ("list", [page([configMap("a", "1")], "20", token="next")]),
                ("list", [page([configMap("b", "2")], "20")]),
            ],
            pageSize=1,
        )
        self.assertEqual(
            self.source.requests[:3], [("list", None, 1), ("list", "next", 1), ("watch", "20")]
        )
        (listed,) = self.calls("listed")
        self.assertEqual([o.metadata.name for o in listed[1]], ["a", "b"])

    def test_goneInTheStreamRelists(self) -> None:
        """
        An ERROR event with 410 Gone (the version left the server's window)
        makes the loop list again, at once the first time, and deliver the
        whole set again.
        """
        self.run_(
            [
                ("list", [page([configMap("c", "1")], "5")]),
                ("watch", [gone()]),
                ("list", [page([configMap("c", "30")], "31")]),
                ("watch", [bookmark("32")]),
            ]
        )
        self.assertEqual(
            self.source.requests,
            [
                ("list", None, 100),
                ("watch", "5"),
                ("list", None, 100),
                ("watch", "31"),
                ("watch", "32"),
            ],
        )
        self.assertEqual([c[2] for c in self.calls("listed")], ["5", "31"])
        self.assertEqual(self.waits, [])

    def test_goneAnswerRelists(self) -> None:
        """A watch request answered 410 (the source raises Gone) relists too."""
        from twisted_tunnel.kube.watch import Gone as LoopGone

        self.run_(
            [
                ("list", [page([], "5")]),
                ("watch", LoopGone()),
                ("list", [page([], "40")]),
            ]
        )
        self.assertEqual(
            self.source.requests,
            [("list", None, 100), ("watch", "5"), ("list", None, 100), ("watch", "40")],
        )

    def test_goneTwiceBacksOff(self) -> None:
        """410 after 410 with nothing between: the second one waits (no relist storm)."""
        from twisted_tunnel.kube.watch import Gone as LoopGone

        self.run_(
            [
                ("list", [page([], "5")]),
                ("watch", LoopGone()),
                ("list", [page([], "6")]),
                ("watch", LoopGone()),
            ]
        )
        self.assertEqual(len(self.waits), 0 + 0)  # a successful list in between resets
        self.run_(
            [
                ("list", [page([], "5")]),
                ("watch", [gone()]),
                ("list", OSError("refused")),
                ("list", [page([], "7")]),
            ]
        )
        self.assertEqual(self.waits, [BACKOFF[0] * BACKOFF[1]])

    def test_errorsBackOffThenResume(self) -> None:
        """
        A failed watch waits (exponential, capped), then watches again from
        the last version seen, without a relist; each failure is delivered
        (C{broken}) and logged; a success resets the delays.
        """
        cut = ScriptedStream([event("MODIFIED", configMap("c", "8"))], error=OSError("reset"))
        self.run_(
            [
                ("list", [page([], "5")]),
                ("watch", OSError("connection refused")),
                ("watch", OSError("connection refused")),
                ("watch", cut),
                ("watch", OSError("connection refused")),
            ]
        )
        self.assertEqual(
            self.source.requests,
            [("list", None, 100)] + [("watch", v) for v in ("5", "5", "5", "8", "8")],
        )
        first, factor, _ = BACKOFF
        self.assertEqual(self.waits, [first, first * factor, first, first * factor])
        self.assertEqual(len(self.calls("broken")), 4)
        self.assertEqual(self.calls("broken")[0][2], first)
        logs = [d for d in self.delivered if d[0] == "log"]
        self.assertTrue(any("connection refused" in str(d[2].get("reason")) for d in logs))

    def test_listFailureRetriesTheList(self) -> None:
        """A list that fails is retried after a wait; nothing is delivered for it."""
        self.run_([("list", OSError("down")), ("list", [page([], "3")])])
        self.assertEqual(self.waits, [BACKOFF[0]])
        self.assertEqual([c[2] for c in self.calls("listed")], ["3"])


class BoundTests(LoopTestCase):
    def test_oversizedInTheWatch(self) -> None:
        """
        An object over the bound is refused (named, sized), never decoded or
        held; the events after it arrive; the stream is read in pieces.
        """
        big = configMap("huge", "9", {"k": "x" * 5000})
        line = event("MODIFIED", big)
        after = event("MODIFIED", configMap("c", "10"))
        pieces = [line[i : i + 700] for i in range(0, len(line), 700)] + [after]
        self.run_([("list", [page([], "5")]), ("watch", pieces)], maxObjectBytes=1000)
        refused = self.calls("refused")
        self.assertEqual(refused, [("refused", "MODIFIED", "huge", len(line) - 1)])
        self.assertEqual(self.source.requests[-1], ("watch", "10"))
        (changed,) = self.calls("changed")
        self.assertEqual(changed[2].metadata.name, "c")

    def test_oversizedInTheList(self) -> None:
        """In a list, the object over the bound is refused and the others delivered."""
        big = configMap("huge", "9", {"k": "x" * 5000})
        self.run_([("list", [page([configMap("a", "1"), big], "11")])], maxObjectBytes=2000)
        (refused,) = self.calls("refused")
        self.assertEqual(refused[:3], ("refused", "LISTED", "huge"))
        (listed,) = self.calls("listed")
        self.assertEqual([o.metadata.name for o in listed[1]], ["a"])

    def test_pageOverItsBoundFails(self) -> None:
        """A list page larger than pageSize objects can be is not read further: an error."""
        body = page([configMap(f"n{i}", "1", {"k": "x" * 800}) for i in range(8)], "2")
        self.run_([("list", [body]), ("list", [page([], "3")])], maxObjectBytes=1000, pageSize=2)
        self.assertEqual(len(self.waits), 1)
        self.assertIn("list page over", self.calls("broken")[0][1])


class StopTests(LoopTestCase):
    def test_stopAbortsTheStream(self) -> None:
        """stop() while a stream is open aborts it: the read in progress ends."""
        source = ScriptedSource([("list", [page([], "1")])])
        stream = ScriptedStream([b""] * 3)
        loop = WatchLoop(source, lambda *a, **k: None, decode, wait=lambda d: None)
        source.loop = loop

        def watch(version: str, timeout: int) -> ScriptedStream:
            loop.stop()
            return stream

        source.watch = watch  # type: ignore[method-assign]
        loop.run()
        self.assertTrue(stream.aborted)
        self.assertTrue(stream.closed)
        self.assertEqual(loop.state, WatchState.STOPPED)

    def test_stopDoesNotWaitForAConnect(self) -> None:
        """
        A L{Watch} whose thread is blocked opening its first request (an
        API that does not answer a connect) stops at once: its stop fires
        without waiting for the thread, which ends when the request returns,
        closes it and delivers nothing.
        """
        entered, release = threading.Event(), threading.Event()
        source = ScriptedSource([])
        stream = ScriptedStream([page([], "1")])

        def listPage(token: str | None, limit: int, maxBytes: int) -> ScriptedStream:
            entered.set()
            release.wait(30)
            return stream

        source.listPage = listPage  # type: ignore[method-assign]
        calls: list[tuple[Any, ...]] = []

        class Reactor:
            def callFromThread(self, function: Any, *args: Any) -> None:
                calls.append((function, *args))

        listener = Listener()
        watch = Watch(Reactor(), source, listener, decode)
        watch.startService()
        self.addCleanup(release.set)
        self.assertTrue(entered.wait(30), "the watch never opened its list")
        ended = watch.stopService()
        assert ended is not None
        self.assertIsNone(self.successResultOf(ended))
        release.set()
        assert watch._thread is not None
        watch._thread.join(30)
        self.assertFalse(watch._thread.is_alive())
        self.assertTrue(stream.aborted)
        self.assertTrue(stream.closed)
        # the thread's own end is heard, and changes nothing; nothing else is
        self.assertEqual(len(calls), 1)
        function, *args = calls[0]
        function(*args)
        self.assertEqual(listener.heard, [])

    def test_movesAreChecked(self) -> None:
        """Every state can stop; nothing leaves STOPPED."""
        for state, targets in MOVES.items():
            if state is not WatchState.STOPPED:
                self.assertIn(WatchState.STOPPED, targets)
        loop = WatchLoop(ScriptedSource([]), lambda *a, **k: None, decode)
        loop.state = WatchState.STOPPED
        self.assertRaises(AssertionError, loop._move, WatchState.WATCHING)


class LineReaderTests(SynchronousTestCase):
    def test_byteAtATime(self) -> None:
        """Fed one byte at a time or all at once, the same lines."""
        data = b'{"a":1}\n\n{"b":22}\n{"c":333}\n'
        whole = LineReader(100).feed(data)
        reader = LineReader(100)
        pieces = [line for i in range(len(data)) for line in reader.feed(data[i : i + 1])]
        self.assertEqual(whole, pieces)
        self.assertEqual(whole, [b'{"a":1}', b'{"b":22}', b'{"c":333}'])

    def test_longLineSkipped(self) -> None:
        """A line over the bound is reported with its first bytes and its size, never held."""
        reader = LineReader(10)
        out = reader.feed(b"0123456789ABCDEF")
        self.assertEqual(out, [])
        self.assertEqual(len(reader._buffer), 0)
        out = reader.feed(b"GH\nok\n")
        self.assertEqual(out, [Oversized(b"0123456789ABCDEF", 18), b"ok"])

    def test_nameFromPrefix(self) -> None:
        self.assertEqual(
            nameFromPrefix(
                b'{"type":"ADDED","object":{"kind":"Node","metadata":{"name":"edge-1",'
            ),
            "edge-1",
        )
        self.assertIsNone(nameFromPrefix(b'{"type":"ADDED","object":{"kind"'))


class BackoffTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """Exponential from the first delay, capped, jittered between half and all of it."""
        first, factor, most = BACKOFF
        self.assertEqual(backoffDelay(1, lambda: 1.0), first)
        self.assertEqual(backoffDelay(1, lambda: 0.0), first / 2)
        self.assertEqual(backoffDelay(3, lambda: 1.0), first * factor**2)
        self.assertEqual(backoffDelay(1000, lambda: 1.0), most)
        self.assertEqual(backoffDelay(1000, lambda: 0.0), most / 2)

    def test_envelope(self) -> None:
        self.assertGreater(ENVELOPE_BYTES, len(bookmark("123456789")))


class PoisonTests(LoopTestCase):
    def test_undecodableObjectRefused(self) -> None:
        """
        An object that does not fit its model is refused (not a watch
        failure, which would be served the same object forever); the watch
        goes on from its version.
        """
        bad = configMap("bad", "7")
        bad["data"] = ["a list"]  # data is a mapping
        self.run_(
            [
                ("list", [page([configMap("a", "1"), bad], "5")]),
                ("watch", [event("MODIFIED", bad), event("MODIFIED", configMap("c", "8"))]),
            ]
        )
        refused = self.calls("refused")
        self.assertEqual(
            [r[:3] for r in refused],
            [("refused", "LISTED", "bad"), ("refused", "MODIFIED", "bad")],
        )
        self.assertEqual([o.metadata.name for o in self.calls("listed")[0][1]], ["a"])
        self.assertEqual(self.calls("changed")[0][2].metadata.name, "c")
        self.assertEqual(self.waits, [])
        self.assertEqual(self.source.requests[-1], ("watch", "8"))

    def test_watchEndingAtOnceBacksOff(self) -> None:
        """
        A watch the server ends at once with nothing is a failure (waited
        for), not a timeout to follow at once: no busy loop.
        """
        self.run_([("list", [page([], "5")]), ("watch", []), ("watch", [])])
        first, factor, _ = BACKOFF
        self.assertEqual(self.waits, [first, first * factor])
        self.assertEqual(self.source.requests[1:], [("watch", "5")] * 3)

    def test_resumeFromAVersion(self) -> None:
        """Given a version, the loop watches from it without listing."""
        self.source = ScriptedSource([("watch", [bookmark("9")])])
        loop = WatchLoop(self.source, lambda *a, **k: None, decode, resourceVersion="7")
        self.source.loop = loop
        loop.run()
        self.assertEqual(self.source.requests, [("watch", "7"), ("watch", "9")])
