# -*- test-case-name: tests.kube.test_watch -*-
"""
Watching Kubernetes objects from a Twisted program: list, then watch from
the list's C{resourceVersion}, in a thread of the watch's own, with what
arrives handed to the reactor thread.

Why a thread per watch, and not the reactor's pool: a watch blocks on its
socket for minutes; in the shared pool it would hold a thread that name
resolution and C{deferToThread} callers wait for.  Why threads at all: see
C{docs/kubernetes.md} (lightkube's synchronous client; no asyncio reactor
on the data path).

What the loop does, as client-go's reflector does it:

  - B{list} (in pages of L{WatchBounds.pageSize}), then deliver the whole
    set at once (L{IWatchListener.listed}): the listener replaces what it
    knew, so a relist after a gap loses nothing and keeps nothing stale;
  - B{watch} from the list's C{resourceVersion} with
    C{allowWatchBookmarks} (bookmarks move the version on without an
    object) and a server-side timeout of one to two minutes; when the
    server ends the watch, watch again from the last version seen;
  - B{410 Gone} (the version fell out of the server's window) relists;
  - any other error waits (bounded exponential backoff with jitter, so a
    fleet of servers does not reconnect in step) and watches again from
    the last version, or relists if there is none;
  - B{bounded memory}: a line of the stream is read up to
    L{WatchBounds.maxObjectBytes} (plus the event's envelope) and no
    further: a larger object is refused (L{IWatchListener.refused}) and
    logged, never held; a list page is read up to C{pageSize} times that;
    at most L{WatchBounds.maxPending} deliveries wait for the reactor, and
    the thread waits for them to be taken;
  - B{stop} shuts the socket down, which wakes the thread at once; a
    thread blocked opening a request (connecting, or waiting for the
    answer's head, up to the client's timeouts) cannot be woken that way:
    L{Watch.stopService} does not wait for it, and the thread, finding the
    loop stopped when the request returns, closes it and ends, unheard.

The loop (L{WatchLoop}) runs against an L{IWatchSource}; L{APISource} is
kube-apiserver through L{KubeClient}.
"""

from __future__ import annotations

import enum
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import msgspec
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .client import KubeClient, abortResponse, describeApiError

#: Bytes of a Node object past which it is refused: real ones are 5 to 20
#: KiB (images, conditions, addresses); kube-apiserver takes up to 1.5 MiB.
DEFAULT_MAX_OBJECT_BYTES = 256 * 1024
#: The watch event's envelope around an object (C{{"type":...,"object":}}).
ENVELOPE_BYTES = 4096
#: Seconds of the server-side watch timeout: a random value in this range
#: each time, so that watches do not all end together.
WATCH_TIMEOUT_RANGE = (60, 120)
#: Seconds a watch may stay silent past its server-side timeout before it
#: is taken for dead (a connection a NAT forgot): bookmarks and the
#: server's own end come well before.
WATCH_READ_SLACK = 15.0
#: A watch the server ends sooner than this (seconds) without a line is a
#: failure (backed off), not its timeout: no busy loop against a proxy that
#: closes every watch at once.
QUICK_END = 1.0
#: The backoff after an error: first delay, factor, longest delay (seconds).
BACKOFF = (0.5, 2.0, 30.0)


class WatchState(enum.Enum):
    """Where a watch's loop is; L{MOVES} lists the legal transitions."""

    IDLE = "idle"
    LISTING = "listing"
    WATCHING = "watching"
    BACKING_OFF = "backing off"
    STOPPED = "stopped"


MOVES: dict[WatchState, frozenset[WatchState]] = {
    WatchState.IDLE: frozenset({WatchState.LISTING, WatchState.WATCHING, WatchState.STOPPED}),
    WatchState.LISTING: frozenset(
        {WatchState.WATCHING, WatchState.BACKING_OFF, WatchState.STOPPED}
    ),
    WatchState.WATCHING: frozenset(
        {WatchState.WATCHING, WatchState.LISTING, WatchState.BACKING_OFF, WatchState.STOPPED}
    ),
    WatchState.BACKING_OFF: frozenset(
        {WatchState.LISTING, WatchState.WATCHING, WatchState.STOPPED}
    ),
    WatchState.STOPPED: frozenset(),
}


@frozen
class WatchTarget:
    """
    What is watched: a resource (a lightkube resource class, e.g.
    C{lightkube.resources.core_v1.Node}) in a namespace (C{None}: a
    cluster-wide resource), narrowed by selectors as kube-apiserver takes
    them (C{"app=x,tier!=y"}, C{"metadata.name=edge-tunnel-server-cfg"}).
    """

    resource: type
    namespace: str | None = None
    labelSelector: str | None = None
    fieldSelector: str | None = None

    def describe(self) -> str:
        """For log lines: C{"configmaps in kube-system (metadata.name=x)"}."""
        plural = getattr(getattr(self.resource, "_api_info", None), "plural", None)
        text = str(plural or self.resource.__name__)
        if self.namespace:
            text += f" in {self.namespace}"
        selectors = [s for s in (self.labelSelector, self.fieldSelector) if s]
        if selectors:
            text += f" ({', '.join(selectors)})"
        return text


@frozen
class WatchBounds:
    """
    The bounds of one watch's memory.

    @ivar maxObjectBytes: an object's JSON larger than this is refused.
    @ivar pageSize: objects per list request; a page is read up to
        C{pageSize * maxObjectBytes}.
    @ivar maxPending: deliveries queued for the reactor at most.
    @ivar watchTimeout: the range the server-side watch timeout is drawn
        from, in seconds (L{WATCH_TIMEOUT_RANGE}).
    """

    maxObjectBytes: int = DEFAULT_MAX_OBJECT_BYTES
    pageSize: int = 100
    maxPending: int = 64
    watchTimeout: tuple[int, int] = WATCH_TIMEOUT_RANGE


class IWatchListener(Interface):
    """What a watch tells, always in the reactor thread."""

    def listed(objects: Sequence[Any], resourceVersion: str) -> None:
        """
        Every object there is (after the first list, and every relist):
        replace what you knew.
        """

    def changed(eventType: str, obj: Any) -> None:
        """C{ADDED}, C{MODIFIED} or C{DELETED}: one object, typed."""

    def refused(eventType: str, name: str | None, size: int) -> None:
        """
        An object larger than the bound arrived and was dropped unread:
        C{eventType} is the event's (C{ADDED}, C{MODIFIED}, C{DELETED}, as its
        first bytes said) or C{LISTED} for a list; C{name} if its first
        bytes said.  Its content is unknown: forget what you knew of it.
        """

    def broken(reason: str, retryIn: float) -> None:
        """The list or watch failed; tried again in C{retryIn} seconds."""


class IWatchStream(Interface):
    """One watch request's response body, being read."""

    def chunks() -> Iterator[bytes]:
        """The body's bytes as they arrive (blocking)."""

    def abort() -> None:
        """From any thread: make a blocked read return at once."""

    def close() -> None:
        """Release it (from the reading thread)."""


class IWatchSource(Interface):
    """Where a watch's bytes come from: blocking, called from its thread."""

    target = Attribute("The L{WatchTarget}.")

    def listPage(continueToken: str | None, limit: int, maxBytes: int) -> IWatchStream:
        """One page of the list (C{continueToken} from the page before)."""

    def watch(resourceVersion: str, timeoutSeconds: int) -> IWatchStream:
        """A watch from C{resourceVersion}, with bookmarks."""


class Gone(Exception):
    """410 Gone: the version is too old; list again."""


class TooLarge(Exception):
    """A response larger than its bound."""


@frozen
class Oversized:
    """A line that was over the bound: its first bytes, and its size."""

    prefix: bytes
    size: int


class LineReader:
    """
    Splits a stream's bytes into lines, holding at most C{maxLine} bytes of
    one line: a longer line is skipped to its end, and reported as
    L{Oversized} with its first bytes (which name the object).
    """

    PREFIX = 1024

    def __init__(self, maxLine: int) -> None:
        self.maxLine = maxLine
        self._buffer = bytearray()
        self._skipping = False
        self._skipped = 0
        self._prefix = b""

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        out: list[bytes | Oversized] = []
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if self._skipping:
                self._skipped += len(piece)
            elif len(self._buffer) + len(piece) > self.maxLine:
                self._skipping = True
                self._prefix = bytes((self._buffer + piece)[: self.PREFIX])
                self._skipped = len(self._buffer) + len(piece)
                self._buffer.clear()
            else:
                self._buffer += piece
            if end < 0:
                break
            if self._skipping:
                out.append(Oversized(self._prefix, self._skipped))
                self._skipping, self._skipped, self._prefix = False, 0, b""
            elif self._buffer.strip():
                out.append(bytes(self._buffer))
            self._buffer.clear()
            start = end + 1
        return out


class _Meta(msgspec.Struct):
    name: str | None = None
    namespace: str | None = None
    resourceVersion: str | None = None
    uid: str | None = None


class _Object(msgspec.Struct):
    metadata: _Meta | None = None


class _Event(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _ListMeta(msgspec.Struct):
    resourceVersion: str | None = None
    # the JSON name is "continue", a Python keyword
    continue_: str | None = msgspec.field(default=None, name="continue")


class _Page(msgspec.Struct):
    items: list[msgspec.Raw] | None = None
    metadata: _ListMeta | None = None


_NAME = re.compile(rb'"metadata":\{"name":"([^"\\]{1,253})"')
_TYPE = re.compile(rb'^\{"type":"([A-Z]{1,16})"')
_VERSION = re.compile(rb'"resourceVersion":"([0-9]{1,20})"')


def nameFromPrefix(prefix: bytes) -> str | None:
    """The object's name, if the first bytes of its JSON hold it (the API puts it first)."""
    match = _NAME.search(prefix)
    return match.group(1).decode("utf-8", "replace") if match else None


def typeFromPrefix(prefix: bytes) -> str | None:
    """A watch event's type, from the first bytes of its line."""
    match = _TYPE.match(prefix)
    return match.group(1).decode("ascii") if match else None


def versionFromPrefix(prefix: bytes) -> str | None:
    """The object's C{resourceVersion}, if the first bytes hold it (it comes early in metadata)."""
    match = _VERSION.search(prefix)
    return match.group(1).decode("ascii") if match else None


def backoffDelay(failures: int, randomness: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait after C{failures} failures in a row: exponential from
    L{BACKOFF}'s first delay, capped, and jittered to between half and all
    of it.
    """
    first, factor, most = BACKOFF
    delay = min(most, first * factor ** max(0, min(failures - 1, 32)))
    return delay * (0.5 + randomness() / 2)


class WatchLoop:
    """
    The list-then-watch loop of one watch, blocking, in the thread that
    runs it (L{run}); what it finds goes to C{deliver} (which hands it to
    the reactor thread, see L{Watch}).  Decoding is the lightkube
    resource's own (C{decode}).

    @ivar state: the L{WatchState}; it changes only in L{_move}.
    @ivar resourceVersion: the last version seen (C{None}: list first).
    """

    log = Logger()

    def __init__(
        self,
        source: IWatchSource,
        deliver: Callable[..., object],
        decode: Callable[[bytes], Any],
        *,
        bounds: WatchBounds = WatchBounds(),
        randomness: Callable[[], float] = random.random,
        wait: Callable[[float], object] | None = None,
        now: Callable[[], float] = time.monotonic,
        resourceVersion: str | None = None,
    ) -> None:
        self.source = source
        self.now = now
        self.target: WatchTarget = source.target
        self.deliver = deliver
        self.decode = decode
        self.bounds = bounds
        self.randomness = randomness
        self.stopping = threading.Event()
        self.wait = wait or self.stopping.wait
        self.state = WatchState.IDLE
        self.resourceVersion = resourceVersion
        self.failures = 0
        self._current: IWatchStream | None = None
        self._opening = False
        self._lock = threading.Lock()

    def _move(self, new: WatchState) -> None:
        if new not in MOVES[self.state]:
            raise AssertionError(f"watch {self.target.describe()}: {self.state} -> {new}")
        self.state = new

    def stop(self) -> bool:
        """
        From any thread: end the loop, and the read it is blocked in.

        @return: whether the loop's thread is blocked opening a request,
            which nothing here can interrupt (the connect, the TLS
            handshake, the wait for the answer's head): it ends once that
            returns, and nothing waits for it.
        """
        self.stopping.set()
        with self._lock:
            current, opening = self._current, self._opening
        if current is not None:
            current.abort()
        return opening

    def run(self) -> None:
        """Loop until L{stop}."""
        try:
            while not self.stopping.is_set():
                self.step()
        finally:
            self._move(WatchState.STOPPED)

    def step(self) -> None:
        """One list (if needed) and one watch request, or one failure and its wait."""
        try:
            if self.resourceVersion is None:
                self._move(WatchState.LISTING)
                self._list()
                if self.stopping.is_set():
                    return
            self._move(WatchState.WATCHING)
            self._watch()
        except Gone:
            self.resourceVersion = None
            if self.stopping.is_set():
                return
            self.failures += 1
            if self.failures > 1:
                self._backOff("the version is gone (410) again")
            else:
                self._log("info", "watch {target}: version gone (410 Gone), listing again")
        except Exception as e:
            if self.stopping.is_set():
                return
            self.failures += 1
            self._backOff(describeApiError(e))

    def _backOff(self, reason: str) -> None:
        delay = backoffDelay(self.failures, self.randomness)
        self._move(WatchState.BACKING_OFF)
        self._log(
            "warn",
            "watch {target} failed ({reason}); trying again in {delay:.1f} s",
            reason=reason,
            delay=delay,
            failures=self.failures,
        )
        self.deliver(_call, "broken", reason, delay)
        self.wait(delay)

    def _log(self, level: str, format: str, **fields: Any) -> None:
        self.deliver(_logged, self.log, level, format, target=self.target.describe(), **fields)

    def _open(self, opener: Callable[[], IWatchStream]) -> IWatchStream:
        with self._lock:
            self._opening = True
        try:
            stream = opener()
        finally:
            with self._lock:
                self._opening = False
        with self._lock:
            self._current = stream
        if self.stopping.is_set():
            stream.abort()
        return stream

    def _release(self, stream: IWatchStream) -> None:
        with self._lock:
            self._current = None
        stream.close()

    def _list(self) -> None:
        objects: list[Any] = []
        token: str | None = None
        version: str | None = None
        limit = self.bounds.pageSize
        maxBytes = limit * self.bounds.maxObjectBytes + ENVELOPE_BYTES
        while True:
            stream = self._open(
                lambda token=token: self.source.listPage(token, limit, maxBytes)  # type: ignore[misc]
            )
            try:
                body = bytearray()
                for chunk in stream.chunks():
                    body += chunk
                    if len(body) > maxBytes:
                        raise TooLarge(f"a list page over {maxBytes} bytes")
            finally:
                self._release(stream)
            if self.stopping.is_set():
                return
            page = msgspec.json.decode(bytes(body), type=_Page)
            for raw in page.items or ():
                name = nameFromPrefix(bytes(raw)[:1024])
                if len(raw) > self.bounds.maxObjectBytes:
                    self._refuse("LISTED", name, len(raw))
                    continue
                decoded = self._decode("LISTED", name, bytes(raw))
                if decoded is not None:
                    objects.append(decoded)
            meta = page.metadata or _ListMeta()
            version = meta.resourceVersion
            token = meta.continue_
            if not token:
                break
        if not version:
            raise ValueError("the list has no resourceVersion")
        self.resourceVersion = version
        self.failures = 0
        self.deliver(_call, "listed", objects, version)

    def _watch(self) -> None:
        assert self.resourceVersion is not None
        low, high = self.bounds.watchTimeout
        timeout = low + int(self.randomness() * (high - low))
        version = self.resourceVersion
        stream = self._open(lambda: self.source.watch(version, timeout))
        reader = LineReader(self.bounds.maxObjectBytes + ENVELOPE_BYTES)
        started, lines = self.now(), 0
        try:
            for chunk in stream.chunks():
                for line in reader.feed(chunk):
                    if self.stopping.is_set():
                        return
                    lines += 1
                    self._event(line)
        finally:
            self._release(stream)
        if self.stopping.is_set():
            return
        if not lines and self.now() - started < QUICK_END:
            raise RuntimeError("the server ended the watch at once, with nothing")
        # the server ended the watch (its timeout): watch again from here
        self.failures = 0

    def _event(self, line: bytes | Oversized) -> None:
        if isinstance(line, Oversized):
            eventType = typeFromPrefix(line.prefix)
            if eventType not in ("ADDED", "MODIFIED", "DELETED"):
                raise RuntimeError(f"a watch event of {line.size} bytes, over the bound")
            version = versionFromPrefix(line.prefix)
            if version:
                self.resourceVersion = version
            self._refuse(eventType, nameFromPrefix(line.prefix), line.size)
            return
        event = msgspec.json.decode(line, type=_Event)
        raw = bytes(event.object)
        if event.type == "ERROR":
            from lightkube.core import decoders

            status = decoders.decode_status(raw)
            if status.code == 410:
                raise Gone()
            raise RuntimeError(f"watch error {status.code}: {status.message}")
        try:
            meta = msgspec.json.decode(raw, type=_Object).metadata or _Meta()
        except msgspec.ValidationError:
            meta = _Meta()
        if event.type == "BOOKMARK":
            if meta.resourceVersion:
                self.resourceVersion = meta.resourceVersion
            return
        if event.type not in ("ADDED", "MODIFIED", "DELETED"):
            raise RuntimeError(f"unknown watch event type {event.type[:40]!r}")
        if meta.resourceVersion:
            self.resourceVersion = meta.resourceVersion
        self.failures = 0
        obj = self._decode(event.type, meta.name, raw)
        if obj is not None:
            self.deliver(_call, "changed", event.type, obj)

    def _decode(self, eventType: str, name: str | None, raw: bytes) -> Any:
        """
        The typed object, or C{None} if it does not fit its model: refused
        like an object over the bound, rather than failing the watch, which
        would then be served the same object again and again.
        """
        try:
            return self.decode(raw)
        except Exception as e:
            self._log(
                "warn",
                "watch {target}: object {name} refused ({eventType}): {reason}",
                eventType=eventType,
                name=name or "(unnamed)",
                reason=str(e)[:200],
            )
            self.deliver(_call, "refused", eventType, name, len(raw))
            return None

    def _refuse(self, eventType: str, name: str | None, size: int) -> None:
        self._log(
            "warn",
            "watch {target}: object {name} refused ({eventType}): {size} bytes, over the "
            "bound of {limit}",
            eventType=eventType,
            name=name or "(unnamed)",
            size=size,
            limit=self.bounds.maxObjectBytes,
        )
        self.deliver(_call, "refused", eventType, name, size)


def _call(listener: IWatchListener, method: str, *args: Any) -> None:
    getattr(listener, method)(*args)


def _logged(listener: IWatchListener, log: Logger, level: str, format: str, **fields: Any) -> None:
    getattr(log, level)(format, **fields)


@implementer(IWatchStream)
class _ResponseStream:
    """An httpx2 response, streamed."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def chunks(self) -> Iterator[bytes]:
        return iter(self.response.iter_raw())

    def abort(self) -> None:
        abortResponse(self.response)

    def close(self) -> None:
        self.response.close()


@implementer(IWatchSource)
class APISource:
    """kube-apiserver, through a L{KubeClient}: the real source of a watch."""

    def __init__(self, client: KubeClient, target: WatchTarget) -> None:
        self.client = client
        self.target = target

    def _params(self) -> dict[str, str | None]:
        return {
            "labelSelector": self.target.labelSelector,
            "fieldSelector": self.target.fieldSelector,
        }

    def listPage(self, continueToken: str | None, limit: int, maxBytes: int) -> IWatchStream:
        params = self._params()
        params.update({"limit": str(limit), "continue": continueToken})
        return _ResponseStream(
            self.client.openStream(
                self.target.resource, namespace=self.target.namespace, params=params, watch=False
            )
        )

    def watch(self, resourceVersion: str, timeoutSeconds: int) -> IWatchStream:
        params = self._params()
        params.update(
            {
                "resourceVersion": resourceVersion,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeoutSeconds),
            }
        )
        try:
            response = self.client.openStream(
                self.target.resource,
                namespace=self.target.namespace,
                params=params,
                watch=True,
                readTimeout=timeoutSeconds + WATCH_READ_SLACK,
            )
        except Exception as e:
            status = getattr(e, "status", None)
            if getattr(status, "code", None) == 410:
                raise Gone() from None
            raise
        return _ResponseStream(response)


class _Handoff:
    """
    Hands calls from a watch's thread to the reactor thread, at most
    C{maxPending} waiting at once: past that the thread waits (the API's
    TCP window then holds the rest).  Nothing is delivered once stopped.
    """

    log = Logger()

    def __init__(self, reactor: Any, listener: IWatchListener, maxPending: int) -> None:
        self.reactor = reactor
        self.listener = listener
        self.maxPending = maxPending
        self.slots = threading.Semaphore(maxPending)
        self.stopped = threading.Event()

    def __call__(self, function: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self.slots.acquire()
        if self.stopped.is_set():
            self.slots.release()
            return
        self.reactor.callFromThread(self._run, function, args, kwargs)

    def _run(self, function: Callable[..., object], args: Iterable[Any], kwargs: Any) -> None:
        try:
            if not self.stopped.is_set():
                function(self.listener, *args, **kwargs)
        except Exception:
            self.log.failure("a watch listener failed")
        finally:
            self.slots.release()

    def stop(self) -> None:
        self.stopped.set()
        # wake a thread waiting for a slot: it sees stopped and returns
        for _ in range(self.maxPending):
            self.slots.release()


class Watch(Service):
    """
    One watch as a Twisted service: a thread of its own runs the
    L{WatchLoop} while the service runs; the listener hears of everything
    in the reactor thread.

    @ivar loop: the loop (its C{state} and C{resourceVersion}, for tests
        and status).
    @ivar resourceVersion: where to start watching (a version the caller
        kept), or C{None} to list first.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        source: IWatchSource,
        listener: IWatchListener,
        decode: Callable[[bytes], Any],
        *,
        bounds: WatchBounds = WatchBounds(),
        resourceVersion: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.resourceVersion = resourceVersion
        self.source = source
        self.listener = listener
        self.decode = decode
        self.bounds = bounds
        self.loop: WatchLoop | None = None
        self._thread: threading.Thread | None = None
        self._handoff: _Handoff | None = None
        self._ended: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._handoff = _Handoff(self.reactor, self.listener, self.bounds.maxPending)
        self.loop = WatchLoop(
            self.source,
            self._handoff,
            self.decode,
            bounds=self.bounds,
            resourceVersion=self.resourceVersion,
        )
        ended: Deferred[None] = Deferred()
        self._ended = ended
        loop, reactor = self.loop, self.reactor

        def run() -> None:
            try:
                loop.run()
            finally:
                reactor.callFromThread(_fireOnce, ended)

        self._thread = threading.Thread(
            target=run, name=f"kube-watch {self.source.target.describe()}", daemon=True
        )
        self._thread.start()
        self.log.info("watching {target}", target=self.source.target.describe())

    def stopService(self) -> Deferred[None] | None:
        """
        Stop the loop; fires once its thread has ended (promptly: its socket
        is shut), or at once if the thread is blocked opening a request
        (an API that does not answer a connect would otherwise hold the
        daemon's stop for the client's whole connect timeout): that thread
        ends when the request returns, and delivers nothing.
        """
        super().stopService()
        if self.loop is None or self._handoff is None or self._ended is None:
            return None
        blocked = self.loop.stop()
        self._handoff.stop()
        ended, self._ended = self._ended, None
        if blocked:
            self.log.info(
                "watch {target} stopped while its request was being opened; "
                "its thread ends when that returns",
                target=self.source.target.describe(),
            )
            _fireOnce(ended)
        return ended


def _fireOnce(ended: Deferred[None]) -> None:
    """Fire C{ended}, unless L{Watch.stopService} already did."""
    if not ended.called:
        ended.callback(None)
