# -*- test-case-name: tests.http.test_h1 -*-
"""
A sans-IO HTTP/1.1 codec: the part of C{h11}'s API that the proxy engine
(L{twisted_tunnel.http.engine}) uses, several times faster, and as strict.

Why not h11 itself: profiling the proxy showed h11 taking about half of the
server's CPU per proxied request.  Most of that is generality we do not
need: every event re-validates its headers with one regex per field (even
when the parser has just validated them, or when they were copied from an
event the parser made), the state machine copies dicts on every event, and
the receive buffer slices a C{bytearray} for every body chunk.  Here:

 - a request or response head is found with one regex search, its start
   line checked with one C{fullmatch}, and all its header fields parsed
   and validated with one C{findall} (anchored at each line start, and the
   number of fields checked against the number of lines, so that a line the
   regex does not match whole cannot slip through);
 - events the parser builds skip validation (they were validated as bytes);
   events built by hand validate their field names through a small cache of
   known-good names, and their values with one regex over all of them;
 - what framing needs (length, chunked, C{Connection: close}, C{Upgrade},
   C{Expect}) is worked out once per header list and kept with it;
 - a L{Data} event carries the received C{bytes} object itself whenever the
   whole of it is body, and a body sent with C{Content-Length} is returned
   as the very object given.

Semantics are h11's (0.16) for everything the engine relies on: the same
states (C{our_state}, C{their_state}: L{IDLE}, L{SEND_RESPONSE}, L{SEND_BODY},
L{DONE}, L{MUST_CLOSE}, L{CLOSED}, L{MIGHT_SWITCH_PROTOCOL},
L{SWITCHED_PROTOCOL}, L{ERROR}) and transitions, keep-alive rules, body
framing, automatic C{Transfer-Encoding: chunked} or C{Connection: close} on
responses, L{PAUSED} after a message until L{Connection.start_next_cycle},
protocol switches, the same events for the same bytes (even where a body is
split) and the same bytes for the same events.

It is stricter than h11 where h11 is lenient in ways that can let two
parsers disagree about where a message ends (request smuggling), or that
no peer of ours needs:

 - a message with both C{Content-Length} and C{Transfer-Encoding} is
   rejected (h11 lets C{Transfer-Encoding} win and keeps the connection);
 - obsolete line folding (a field line starting with a space or a tab) is
   rejected (h11 unfolds it);
 - an HTTP version other than 1.x is rejected (h11 takes any C{d.d}), with
   the hint C{505}; C{Host} is required by every 1.x request but 1.0;
 - a reason phrase given to L{Response} or L{InformationalResponse} is
   validated (h11 would write a CR LF in it to the wire as it is).
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, Self, TypeAlias, overload

__all__ = [
    "CLIENT",
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "MIGHT_SWITCH_PROTOCOL",
    "MUST_CLOSE",
    "NEED_DATA",
    "PAUSED",
    "SEND_BODY",
    "SEND_RESPONSE",
    "SERVER",
    "SWITCHED_PROTOCOL",
    "Connection",
    "ConnectionClosed",
    "Data",
    "EndOfMessage",
    "Event",
    "Headers",
    "InformationalResponse",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Sentinel",
]


# -- errors ----------------------------------------------------------------------


#: Bytes of a peer's input an error message quotes at most.
_SHOWN_BYTES = 80


def _shown(data: bytes | bytearray | memoryview) -> str:
    """
    The repr of at most L{_SHOWN_BYTES} of C{data}: an error message quotes
    what was wrong, never all a peer sent (a line may be as long as
    C{max_incomplete_event_size}, and the message ends in logs).
    """
    head = bytes(data[:_SHOWN_BYTES])
    return repr(head) + ("..." if len(data) > _SHOWN_BYTES else "")


class ProtocolError(Exception):
    """
    A violation of HTTP/1.1, by us (L{LocalProtocolError}) or by the peer
    (L{RemoteProtocolError}).

    @ivar error_status_hint: the status a server could answer with: C{400}
        unless said otherwise (C{431} for a head that does not fit in
        C{max_incomplete_event_size}, C{501} for a transfer coding other
        than C{chunked}, C{505} for an HTTP version other than 1.x).
    """

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        Exception.__init__(self, msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (an event that cannot be sent now)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: close the connection (after a 4xx, maybe)."""


# -- sentinels ---------------------------------------------------------------------


class Sentinel:
    """
    A named constant compared by identity (C{state is DONE}), like h11's.
    Only the instances below exist.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


CLIENT: Final = Sentinel("CLIENT")
SERVER: Final = Sentinel("SERVER")
IDLE: Final = Sentinel("IDLE")
SEND_RESPONSE: Final = Sentinel("SEND_RESPONSE")
SEND_BODY: Final = Sentinel("SEND_BODY")
DONE: Final = Sentinel("DONE")
MUST_CLOSE: Final = Sentinel("MUST_CLOSE")
CLOSED: Final = Sentinel("CLOSED")
ERROR: Final = Sentinel("ERROR")
MIGHT_SWITCH_PROTOCOL: Final = Sentinel("MIGHT_SWITCH_PROTOCOL")
SWITCHED_PROTOCOL: Final = Sentinel("SWITCHED_PROTOCOL")
#: What L{Connection.next_event} returns when it needs more bytes.
NEED_DATA: Final = Sentinel("NEED_DATA")
#: What L{Connection.next_event} returns when it will not read until the
#: next cycle (or ever, after a protocol switch).
PAUSED: Final = Sentinel("PAUSED")

# pending protocol switches: internal
_SWITCH_UPGRADE: Final = Sentinel("_SWITCH_UPGRADE")
_SWITCH_CONNECT: Final = Sentinel("_SWITCH_CONNECT")


# -- grammar (RFC 9110, RFC 9112; as in h11's _abnf) -----------------------------

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
# A field value: no NUL, CR, LF (nor VT, FF), no leading or trailing blank.
# Other control characters pass, as in h11 (some cookies carry \x01).
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
_VERSION = rb"HTTP/([0-9]\.[0-9])"

_TOKEN_RE: Final = re.compile(_TOKEN)
_TARGET_RE: Final = re.compile(rb"[\x21-\x7e]+")
_REASON_RE: Final = re.compile(rb"(?:[ \t]|[^\x00\s])*")
_CONTENT_LENGTH_RE: Final = re.compile(rb"[0-9]{1,20}")
_REQUEST_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) " + _VERSION)
_STATUS_LINE_RE: Final = re.compile(_VERSION + rb" ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
# Field lines are parsed with one findall of this: one match per line,
# anchored at the line start and running to its LF, so that the lines are
# all valid iff there are as many matches as LFs, no byte a field may not
# hold (NUL, VT, FF: see _FIELD_BYTES) and no CR but before an LF; the value
# comes without the blanks around it, nor that CR.  (This is h11's
# "name: OWS value OWS" line: sre is slow on negated character classes,
# about 10 ns a byte, and fast on ".", so the bytes are checked apart.)
_FIELD_LINE_RE: Final = re.compile(
    rb"^(" + _TOKEN + rb"):[ \t]*((?:.*[^ \t\r\n])?)[ \t\r]*\n", re.MULTILINE
)
# every byte but those no field line may hold (CR and LF are counted apart)
_FIELD_BYTES: Final = bytes(b for b in range(256) if b not in (0, 0x0B, 0x0C))
# h11's field line, for a line at a time (errors; fields given by hand)
_FIELD_LINE_ALONE_RE: Final = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:" + _FIELD_CONTENT + rb")?)[ \t]*"
)
_FIELD_VALUE_RE: Final = re.compile(rb"(?:" + _FIELD_CONTENT + rb")?")
# The end of a head: a blank line (a bare LF ends a line, as in h11).
_BLANK_LINE_RE: Final = re.compile(rb"\n\r?\n")
# chunk-size [chunk-ext] CRLF; extensions are ignored (and dropped when we
# write the body again), trailing blanks tolerated, as in h11.
_CHUNK_HEADER_RE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")

_MAX_NAME_CACHE = 2048
#: Field names seen valid, mapped to their lower-case form: validating a
#: name we have seen before is one dict look-up.
_NAME_CACHE: dict[bytes, bytes] = {}
_KNOWN_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"}
)
# Field names that decide framing or the connection's fate.
_SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}
)
_second = itemgetter(1)


def _bytesify(s: object) -> bytes:
    """As h11: C{str} is encoded as ASCII, other byte-likes copied, C{int} refused."""
    if type(s) is bytes:
        return s
    if isinstance(s, str):
        return s.encode("ascii")
    if isinstance(s, int):
        raise TypeError("expected bytes-like object, not int")
    return bytes(s)  # type: ignore[call-overload, no-any-return]


def _commaValues(value: bytes) -> list[bytes]:
    """The lower-cased, stripped, non-empty items of a comma-separated value."""
    return [v for v in (x.strip() for x in value.lower().split(b",")) if v]


# -- headers -------------------------------------------------------------------------

_Pair = tuple[bytes, bytes]

# what Headers._flags says
_CHUNKED_FLAG = 1
_CLOSE_FLAG = 2
_UPGRADE_FLAG = 4
_EXPECT_FLAG = 8


class Headers(Sequence[_Pair]):
    """
    The header fields of a message: a sequence of C{(name, value)} pairs,
    names lower-cased, values stripped; L{raw_items} gives the names as
    they were written.  Validated when made, never changed after, and it
    knows what framing needs (so that nothing is looked up twice).
    """

    __slots__ = (
        "_pairs",
        "_names",
        "_raw",
        "_length",
        "_flags",
        "_hosts",
    )

    #: (lower-case name, value): made when first asked for (the engine
    #: reads most heads through raw_items only)
    _pairs: list[_Pair] | None
    _names: list[bytes]
    _raw: list[_Pair]
    #: the Content-Length, if there is one
    _length: int | None
    #: Transfer-Encoding: chunked
    #: _CHUNKED (Transfer-Encoding: chunked), _CLOSE (Connection: close),
    #: _UPGRADE (an Upgrade with a value), _EXPECT (Expect: 100-continue)
    _flags: int
    #: how many Host fields
    _hosts: int

    def __init__(self, items: HeaderTypes = ()) -> None:
        other = _validated(items)
        for name in Headers.__slots__:
            setattr(self, name, getattr(other, name))

    def _items(self) -> list[_Pair]:
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = list(zip(self._names, map(_second, self._raw), strict=True))
        return pairs

    def __len__(self) -> int:
        return len(self._raw)

    def __bool__(self) -> bool:
        return bool(self._raw)

    @overload
    def __getitem__(self, index: int) -> _Pair: ...

    @overload
    def __getitem__(self, index: slice) -> list[_Pair]: ...

    def __getitem__(self, index: int | slice) -> _Pair | list[_Pair]:
        return self._items()[index]

    def __iter__(self) -> Iterator[_Pair]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items() == other._items()
        if isinstance(other, Iterable):
            return self._items() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Headers({self._items()!r})>"

    def raw_items(self) -> list[_Pair]:
        """The fields with their names as written (values normalized)."""
        return list(self._raw)


def _headers(raw: list[_Pair], names: list[bytes]) -> Headers:
    """
    Headers from valid fields: C{raw} as written, C{names} lower-cased.
    Normalizes C{Content-Length} (one value, duplicates dropped) and
    C{Transfer-Encoding} (lower-cased) as h11 does, and refuses what would
    make the framing ambiguous.
    """
    h = object.__new__(Headers)
    h._raw = raw
    h._pairs = None
    h._names = names
    h._length = None
    h._flags = 0
    h._hosts = names.count(b"host")
    present = _SPECIAL.intersection(names)
    if not present:
        return h
    for name in present:
        if names.count(name) > 1:
            return _headersSlowly(h, raw, names)
    for name in present:
        i = names.index(name)
        value = raw[i][1]
        if name == b"content-length":
            if not value.isdigit() or len(value) > 20:
                # a list ("5, 5"), or not a length
                return _headersSlowly(h, raw, names)
            h._length = int(value)
        elif name == b"transfer-encoding":
            if value != b"chunked":
                return _headersSlowly(h, raw, names)
            h._flags |= _CHUNKED_FLAG
        elif name == b"connection":
            if b"close" in _commaValues(value):
                h._flags |= _CLOSE_FLAG
        elif name == b"upgrade":
            if _commaValues(value):
                h._flags |= _UPGRADE_FLAG
        elif name == b"expect":
            if b"100-continue" in _commaValues(value):
                h._flags |= _EXPECT_FLAG
    if h._flags & _CHUNKED_FLAG and h._length is not None:
        raise LocalProtocolError(_BOTH_LENGTHS)
    return h


# RFC 9112 section 6.3: "ought to be handled as an error"; h11 lets
# Transfer-Encoding win (and keeps the connection), while a parser before us
# may have let Content-Length win.
_BOTH_LENGTHS = "both Content-Length and Transfer-Encoding"


def _headersSlowly(h: Headers, raw: list[_Pair], names: list[bytes]) -> Headers:
    """L{_headers} when a framing field is repeated or not in its usual form."""
    length: bytes | None = None
    chunked = close = upgrade = expect = False
    newRaw: list[_Pair] = []
    pairs: list[_Pair] = []
    for (rawName, value), name in zip(raw, names, strict=True):
        if name == b"content-length":
            lengths = {v.strip() for v in value.split(b",")}
            if len(lengths) != 1:
                raise LocalProtocolError("conflicting Content-Length headers")
            value = lengths.pop()
            if _CONTENT_LENGTH_RE.fullmatch(value) is None:
                raise LocalProtocolError("bad Content-Length")
            if length is not None:
                if length != value:
                    raise LocalProtocolError("conflicting Content-Length headers")
                continue
            length = value
        elif name == b"transfer-encoding":
            if chunked:
                raise LocalProtocolError(
                    "multiple Transfer-Encoding headers", error_status_hint=501
                )
            value = value.lower()
            if value != b"chunked":
                raise LocalProtocolError(
                    "Only Transfer-Encoding: chunked is supported", error_status_hint=501
                )
            chunked = True
        elif name == b"connection":
            close = close or b"close" in _commaValues(value)
        elif name == b"upgrade":
            upgrade = upgrade or bool(_commaValues(value))
        elif name == b"expect":
            expect = expect or b"100-continue" in _commaValues(value)
        newRaw.append((rawName, value))
        pairs.append((name, value))
    if chunked and length is not None:
        raise LocalProtocolError(_BOTH_LENGTHS)
    h._raw = newRaw
    h._pairs = pairs
    h._names = [name for name, _ in pairs]
    h._length = int(length) if length is not None else None
    h._flags = (
        (_CHUNKED_FLAG if chunked else 0)
        | (_CLOSE_FLAG if close else 0)
        | (_UPGRADE_FLAG if upgrade else 0)
        | (_EXPECT_FLAG if expect else 0)
    )
    return h


#: What an event's C{headers} may be given as.
HeaderTypes: TypeAlias = (
    Headers
    | Iterable[tuple[bytes, bytes]]
    | Iterable[tuple[str, str]]
    | Iterable[tuple[bytes | str, bytes | str]]
)

_EMPTY_HEADERS: Final = _headers([], [])


def _validated(items: HeaderTypes | None) -> Headers:
    """
    Headers from fields given by hand: names and values checked (names
    through L{_NAME_CACHE}, values all at once), then normalized.  A
    L{Headers} is taken as it is: it was validated when made.
    """
    kind = type(items)
    if kind is Headers:
        return items  # type: ignore[return-value]
    if items is None or (kind is list and not items):
        return _EMPTY_HEADERS
    raw: list[_Pair] = [(name, value) for name, value in items]  # type: ignore[misc]
    if not raw:
        return _EMPTY_HEADERS
    names: list[bytes | None] = [_NAME_CACHE.get(name) for name, _ in raw]
    values = list(map(_second, raw))
    if None in names or {*map(type, values)} != {bytes}:
        return _validatedSlowly(raw)
    # all the values at once: joined with LFs (counted, as a value may not
    # hold one), no byte a value may not hold (memchr is fast), no blank
    # before or after one (strip gives the very object when it strips nothing)
    joined = b"\n".join(values)
    if (
        joined.count(b"\n") != len(values) - 1
        or b"\r" in joined
        or b"\x00" in joined
        or b"\x0b" in joined
        or b"\x0c" in joined
        or [v.strip(b" \t") for v in values] != values
    ):
        return _validatedSlowly(raw)
    return _headers(raw, names)  # type: ignore[arg-type]


def _validatedSlowly(items: Iterable[tuple[bytes | str, bytes | str]]) -> Headers:
    """L{_validated} one field at a time: new names, text, or an invalid field."""
    raw: list[_Pair] = []
    names: list[bytes] = []
    cache = _NAME_CACHE
    for name, value in items:
        name = _bytesify(name)
        value = _bytesify(value)
        lowered = cache.get(name)
        if lowered is None:
            if _TOKEN_RE.fullmatch(name) is None:
                raise LocalProtocolError(f"Illegal header name {_shown(name)}")
            lowered = name.lower()
            if len(cache) >= _MAX_NAME_CACHE:
                cache.clear()
            cache[name] = lowered
        if _FIELD_VALUE_RE.fullmatch(value) is None:
            raise LocalProtocolError(f"Illegal header value {_shown(value)}")
        raw.append((name, value))
        names.append(lowered)
    return _headers(raw, names)


# -- events ---------------------------------------------------------------------------

# The accessor namedtuple gives its fields (a C descriptor in CPython).
_Probe: Any = namedtuple("_Probe", "x")  # noqa: PYI024
_FieldType: Any = type(_Probe.x)


def _field(index: int, doc: str) -> Any:
    """A read-only field of a tuple-based event, as fast to read as a slot."""
    if _FieldType is property:  # pragma: no cover - other Pythons
        return property(itemgetter(index), doc=doc)
    return _FieldType(index, doc)


class Event(tuple[Any, ...]):
    """
    What a connection receives or sends.  Events compare equal when of the
    same type with equal fields, as h11's, and are immutable: each is a
    tuple of its fields underneath (a tuple is made and read faster than an
    object whose attributes cannot be set).
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return super().__ne__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self.__class__.__name__}({fields})"


class Request(Event):
    """
    The head of a request: C{method}, C{target}, C{headers}, C{http_version}
    (C{b"1.1"} unless said).  Made by hand, everything is validated; an
    HTTP/1.1 request needs exactly one C{Host}.
    """

    __slots__ = ()
    _fields = ("method", "headers", "target", "http_version")

    if TYPE_CHECKING:
        method: bytes
        headers: Headers
        target: bytes
        http_version: bytes
    else:
        method = _field(0, "the method, e.g. b'GET'")
        headers = _field(1, "the header fields")
        target = _field(2, "the request target, e.g. b'/'")
        http_version = _field(3, "e.g. b'1.1'")

    def __new__(
        cls,
        *,
        method: bytes | str,
        headers: HeaderTypes,
        target: bytes | str,
        http_version: bytes | str = b"1.1",
    ) -> Request:
        h = _validated(headers)
        if type(method) is not bytes:
            method = _bytesify(method)
        if type(target) is not bytes:
            target = _bytesify(target)
        if type(http_version) is not bytes:
            http_version = _bytesify(http_version)
        if h._hosts != 1:
            if h._hosts > 1:
                raise LocalProtocolError("Found multiple Host: headers")
            if http_version == b"1.1":
                raise LocalProtocolError("Missing mandatory Host: header")
        if method not in _KNOWN_METHODS and _TOKEN_RE.fullmatch(method) is None:
            raise LocalProtocolError("Illegal method characters")
        if _TARGET_RE.fullmatch(target) is None:
            raise LocalProtocolError("Illegal target characters")
        return tuple.__new__(cls, (method, h, target, http_version))


class _ResponseBase(Event):
    __slots__ = ()
    _fields = ("headers", "http_version", "reason", "status_code")

    if TYPE_CHECKING:
        headers: Headers
        http_version: bytes
        reason: bytes
        status_code: int
    else:
        headers = _field(0, "the header fields")
        http_version = _field(1, "e.g. b'1.1'")
        reason = _field(2, "the reason phrase, e.g. b'OK'")
        status_code = _field(3, "the status, e.g. 200")

    _lowest = 100
    _highest = 1000

    def __new__(
        cls,
        *,
        headers: HeaderTypes,
        status_code: int,
        http_version: bytes | str = b"1.1",
        reason: bytes | str = b"",
    ) -> Self:
        h = _validated(headers)
        if not isinstance(status_code, int):
            raise LocalProtocolError("status code must be integer")
        if type(status_code) is not int:
            status_code = int(status_code)  # an IntEnum (HTTPStatus) becomes its number
        if not (cls._lowest <= status_code < cls._highest):
            raise LocalProtocolError(
                f"{cls.__name__} status_code should be in range "
                f"[{cls._lowest}, {cls._highest}), not {status_code}"
            )
        if type(reason) is not bytes:
            reason = _bytesify(reason)
        if reason and _REASON_RE.fullmatch(reason) is None:
            raise LocalProtocolError(f"Illegal reason phrase {reason!r}")
        if type(http_version) is not bytes:
            http_version = _bytesify(http_version)
        return tuple.__new__(cls, (h, http_version, reason, status_code))


class InformationalResponse(_ResponseBase):
    """A 1xx response: C{status_code}, C{headers}, C{reason}, C{http_version}."""

    __slots__ = ()
    _highest = 200


class Response(_ResponseBase):
    """The head of a final response (status 200 to 999)."""

    __slots__ = ()
    _lowest = 200


class Data(Event):
    """
    Part of a body.  C{chunk_start} and C{chunk_end} say where chunks of a
    chunked body received began and ended (ignored when sending, as in h11).
    """

    __slots__ = ()
    _fields = ("data", "chunk_start", "chunk_end")

    if TYPE_CHECKING:
        data: bytes
        chunk_start: bool
        chunk_end: bool
    else:
        data = _field(0, "the bytes")
        chunk_start = _field(1, "a chunk began with these bytes")
        chunk_end = _field(2, "a chunk ended with these bytes")

    def __new__(cls, data: bytes, chunk_start: bool = False, chunk_end: bool = False) -> Data:
        return tuple.__new__(cls, (data, chunk_start, chunk_end))


class EndOfMessage(Event):
    """The end of a message, with its trailer fields (chunked bodies only)."""

    __slots__ = ()
    _fields = ("headers",)

    if TYPE_CHECKING:
        headers: Headers
    else:
        headers = _field(0, "the trailer fields")

    def __new__(cls, *, headers: HeaderTypes | None = None) -> EndOfMessage:
        return tuple.__new__(cls, (_validated(headers),))


class ConnectionClosed(Event):
    """The peer closed its sending side (or we say that we close ours)."""

    __slots__ = ()

    def __new__(cls) -> ConnectionClosed:
        return tuple.__new__(cls)


_new = tuple.__new__


_END: Final[EndOfMessage] = _new(EndOfMessage, (_EMPTY_HEADERS,))


# -- the state machine (h11's _state, as straight code) --------------------------

_EventKey: TypeAlias = type | tuple[type, Sentinel]

_TRANSITIONS: Final[dict[tuple[Sentinel, Sentinel], dict[_EventKey, Sentinel]]] = {
    (CLIENT, IDLE): {Request: SEND_BODY, ConnectionClosed: CLOSED},
    (CLIENT, SEND_BODY): {Data: SEND_BODY, EndOfMessage: DONE},
    (CLIENT, DONE): {ConnectionClosed: CLOSED},
    (CLIENT, MUST_CLOSE): {ConnectionClosed: CLOSED},
    (CLIENT, CLOSED): {ConnectionClosed: CLOSED},
    (CLIENT, MIGHT_SWITCH_PROTOCOL): {},
    (CLIENT, SWITCHED_PROTOCOL): {},
    (CLIENT, ERROR): {},
    (SERVER, IDLE): {
        ConnectionClosed: CLOSED,
        Response: SEND_BODY,
        (Request, CLIENT): SEND_RESPONSE,
    },
    (SERVER, SEND_RESPONSE): {
        InformationalResponse: SEND_RESPONSE,
        Response: SEND_BODY,
        (InformationalResponse, _SWITCH_UPGRADE): SWITCHED_PROTOCOL,
        (Response, _SWITCH_CONNECT): SWITCHED_PROTOCOL,
    },
    (SERVER, SEND_BODY): {Data: SEND_BODY, EndOfMessage: DONE},
    (SERVER, DONE): {ConnectionClosed: CLOSED},
    (SERVER, MUST_CLOSE): {ConnectionClosed: CLOSED},
    (SERVER, CLOSED): {ConnectionClosed: CLOSED},
    (SERVER, SWITCHED_PROTOCOL): {},
    (SERVER, ERROR): {},
}

# body framings (readers and writers)
_CONTENT_LENGTH = 1
_CHUNKED = 2
_HTTP10 = 3
# other readers
_NO_READER = 0
_REQUEST_HEAD = 4
_RESPONSE_HEAD = 5
_NOTHING = 6
# other writers
_NO_WRITER = 0
_WRITE_REQUEST = 4
_WRITE_RESPONSE = 5


def _writeHead(startLine: bytes, h: Headers) -> bytes:
    """A head: its start line, field lines (C{Host} first, as h11), a blank line."""
    raw = h._raw
    if not raw:
        return startLine + b"\r\n\r\n"
    if h._hosts and (h._hosts > 1 or h._names[0] != b"host"):
        # RFC 9110 section 7.2: a user agent SHOULD send Host first
        names = h._names
        order = [i for i, n in enumerate(names) if n == b"host"]
        order += [i for i, n in enumerate(names) if n != b"host"]
        raw = [raw[i] for i in order]
    return b"%b\r\n%b\r\n\r\n" % (startLine, b"\r\n".join([n + b": " + v for n, v in raw]))


# -- the connection -----------------------------------------------------------------


class Connection:
    """
    One HTTP/1.1 connection, as a client (L{CLIENT}) or a server
    (L{SERVER}): bytes in with L{receive_data}, events out with
    L{next_event}; events in with L{send}, bytes out.

    The state machine is h11's, written out: each side's state, the
    proposals to switch protocols the client made (C{CONNECT}, C{Upgrade}),
    whether the connection is kept alive, and the method of the request in
    flight (a response to C{HEAD} has no body); then how the peer's next
    bytes are read (L{_reader}) and how our next event is written
    (L{_writer}), each changed when the side's state does, as in h11.

    @ivar their_http_version: the HTTP version of the peer's last head.
    """

    __slots__ = (
        "our_role",
        "their_role",
        "their_http_version",
        "client_is_waiting_for_100_continue",
        "_weAreClient",
        "_max",
        "_client",
        "_server",
        "_keepAlive",
        "_pendingUpgrade",
        "_pendingConnect",
        "_requestMethod",
        "_buf",
        "_pos",
        "_closed",
        "_lineScan",
        "_headScan",
        "_reader",
        "_readLeft",
        "_readTotal",
        "_readDiscard",
        "_readTrailer",
        "_writer",
        "_writeLeft",
    )

    def __init__(self, our_role: Sentinel, max_incomplete_event_size: int = 16 * 1024) -> None:
        if our_role is not CLIENT and our_role is not SERVER:
            raise ValueError(f"expected CLIENT or SERVER, not {our_role!r}")
        self.our_role = our_role
        self._weAreClient = our_role is CLIENT
        self.their_role = SERVER if self._weAreClient else CLIENT
        self.their_http_version: bytes | None = None
        self.client_is_waiting_for_100_continue = False
        self._max = max_incomplete_event_size
        self._client = IDLE
        self._server = IDLE
        self._keepAlive = True
        self._pendingUpgrade = False
        self._pendingConnect = False
        self._requestMethod: bytes | None = None
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._closed = False
        self._lineScan = 0
        self._headScan = 0
        self._reader = _RESPONSE_HEAD if self._weAreClient else _REQUEST_HEAD
        self._readLeft = 0
        self._readTotal = 0
        self._readDiscard = b""
        self._readTrailer = False
        self._writer = _WRITE_REQUEST if self._weAreClient else _WRITE_RESPONSE
        self._writeLeft = 0

    # -- states -----------------------------------------------------------------------

    @property
    def states(self) -> dict[Sentinel, Sentinel]:
        """C{{CLIENT: <client state>, SERVER: <server state>}}."""
        return {CLIENT: self._client, SERVER: self._server}

    @property
    def our_state(self) -> Sentinel:
        return self._client if self._weAreClient else self._server

    @property
    def their_state(self) -> Sentinel:
        return self._server if self._weAreClient else self._client

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self.their_role is CLIENT and self.client_is_waiting_for_100_continue

    def _settle(self) -> None:
        """h11's state-triggered transitions, to a fixed point."""
        c, s = self._client, self._server
        while True:
            c0, s0 = c, s
            if self._pendingUpgrade or self._pendingConnect:
                if c is DONE:
                    c = MIGHT_SWITCH_PROTOCOL
            elif c is MIGHT_SWITCH_PROTOCOL:
                c = DONE
            if not self._keepAlive:
                if c is DONE:
                    c = MUST_CLOSE
                if s is DONE:
                    s = MUST_CLOSE
            if c is MIGHT_SWITCH_PROTOCOL and s is SWITCHED_PROTOCOL:
                c = SWITCHED_PROTOCOL
            elif c is CLOSED and (s is DONE or s is IDLE):
                s = MUST_CLOSE
            elif c is ERROR and s is DONE:
                s = MUST_CLOSE
            elif (c is DONE and (s is CLOSED or s is ERROR)) or (c is IDLE and s is CLOSED):
                c = MUST_CLOSE
            if c is c0 and s is s0:
                break
        self._client, self._server = c, s

    def _fire(self, role: Sentinel, key: _EventKey, name: str) -> None:
        """h11's event-triggered transition of C{role}, or L{LocalProtocolError}."""
        state = self._client if role is CLIENT else self._server
        new = _TRANSITIONS[role, state].get(key)
        if new is None:
            raise LocalProtocolError(
                f"can't handle event type {name} when role={role!r} and state={state!r}"
            )
        if role is CLIENT:
            self._client = new
        else:
            self._server = new

    def _processEvent(self, role: Sentinel, event: Event) -> None:
        """Update the states for an event sent (by us) or received (from them)."""
        kind = type(event)
        oldClient, oldServer = self._client, self._server
        request: Request
        if kind is Data:
            # SEND_BODY to SEND_BODY: nothing else changes
            if (oldClient if role is CLIENT else oldServer) is not SEND_BODY:
                self._fire(role, kind, "Data")
            if role is CLIENT:
                self.client_is_waiting_for_100_continue = False
            return
        if kind is EndOfMessage:
            if role is CLIENT:
                if oldClient is not SEND_BODY:
                    self._fire(role, kind, "EndOfMessage")
                self._client = DONE
                self.client_is_waiting_for_100_continue = False
            else:
                if oldServer is not SEND_BODY:
                    self._fire(role, kind, "EndOfMessage")
                self._server = DONE
            self._settle()
            self._stateChanged(oldClient, oldServer, event)
            return
        if kind is Request and role is CLIENT and oldClient is IDLE and oldServer is IDLE:
            # the usual request: IDLE to SEND_BODY and SEND_RESPONSE, which no
            # state-triggered transition starts from (no need to settle)
            request = event  # type: ignore[assignment]
            h = request.headers
            if request.method == b"CONNECT":
                self._pendingConnect = True
            if h._flags & _UPGRADE_FLAG:
                self._pendingUpgrade = True
            self._client = SEND_BODY
            self._server = SEND_RESPONSE
            self._requestMethod = request.method
            version = request.http_version
            if h._flags & _CLOSE_FLAG or version < b"1.1":
                self._keepAlive = False
            if h._flags & _EXPECT_FLAG and version >= b"1.1":
                self.client_is_waiting_for_100_continue = True
            if self._weAreClient:
                self._writer, self._writeLeft = self._framing(request)
                self._reader = _RESPONSE_HEAD
            else:
                self.their_http_version = version
                self._reader, self._readLeft = self._framing(request)
                self._readTotal = self._readLeft
                self._readDiscard = b""
                self._readTrailer = False
                self._writer = _WRITE_RESPONSE
            return
        switch: Sentinel | None = None
        if kind is Request:
            if role is CLIENT:
                request = event  # type: ignore[assignment]
                if request.method == b"CONNECT":
                    self._pendingConnect = True
                if request.headers._flags & _UPGRADE_FLAG:
                    self._pendingUpgrade = True
                if self._pendingConnect or self._pendingUpgrade:
                    self._settle()
        elif role is SERVER:
            if kind is InformationalResponse:
                if event.status_code == 101:  # type: ignore[attr-defined]
                    switch = _SWITCH_UPGRADE
                    if not self._pendingUpgrade:
                        raise LocalProtocolError(
                            "Received server _SWITCH_UPGRADE event without a pending proposal"
                        )
            elif kind is Response:
                if self._pendingConnect and 200 <= event.status_code < 300:  # type: ignore[attr-defined]
                    switch = _SWITCH_CONNECT
                else:
                    self._pendingConnect = self._pendingUpgrade = False
        self._fire(role, kind if switch is None else (kind, switch), kind.__name__)
        if kind is Request:
            self._fire(SERVER, (Request, CLIENT), "Request")
        self._settle()

        if kind is Request or kind is Response or kind is InformationalResponse:
            head: Request | _ResponseBase = event  # type: ignore[assignment]
            if kind is Request:
                self._requestMethod = head.method  # type: ignore[union-attr]
            if role is self.their_role:
                self.their_http_version = head.http_version
            if kind is not InformationalResponse:
                if head.headers._flags & _CLOSE_FLAG or head.http_version < b"1.1":
                    self._keepAlive = False
                    self._settle()
                if kind is Request:
                    if head.headers._flags & _EXPECT_FLAG and head.http_version >= b"1.1":
                        self.client_is_waiting_for_100_continue = True
                else:
                    self.client_is_waiting_for_100_continue = False
            else:
                self.client_is_waiting_for_100_continue = False
        self._stateChanged(oldClient, oldServer, event)

    def _processError(self, role: Sentinel) -> None:
        oldClient, oldServer = self._client, self._server
        if role is CLIENT:
            self._client = ERROR
        else:
            self._server = ERROR
        self._settle()
        self._stateChanged(oldClient, oldServer, None)

    def _stateChanged(self, oldClient: Sentinel, oldServer: Sentinel, event: Event | None) -> None:
        """A new reader or writer for whichever side's state changed, as in h11."""
        if self._weAreClient:
            ours, theirs = self._client, self._server
            ourChanged, theirChanged = ours is not oldClient, theirs is not oldServer
        else:
            ours, theirs = self._server, self._client
            ourChanged, theirChanged = ours is not oldServer, theirs is not oldClient
        if ourChanged:
            if ours is SEND_BODY:
                self._writer, self._writeLeft = self._framing(event)
            elif ours is IDLE:
                self._writer = _WRITE_REQUEST if self._weAreClient else _WRITE_RESPONSE
            elif ours is SEND_RESPONSE:
                self._writer = _WRITE_RESPONSE
            else:
                self._writer = _NO_WRITER
        if theirChanged:
            if theirs is SEND_BODY:
                self._reader, self._readLeft = self._framing(event)
                self._readTotal = self._readLeft
                self._readDiscard = b""
                self._readTrailer = False
            elif theirs is IDLE or theirs is SEND_RESPONSE:
                self._reader = _RESPONSE_HEAD if self._weAreClient else _REQUEST_HEAD
            elif theirs is DONE or theirs is MUST_CLOSE or theirs is CLOSED:
                self._reader = _NOTHING
            else:
                self._reader = _NO_READER

    def _framing(self, event: Event | None) -> tuple[int, int]:
        """How the body of C{event} (a Request or Response) is delimited: h11's rules."""
        if type(event) is Response:
            status = event.status_code
            method = self._requestMethod
            if (
                status == 204
                or status == 304
                or method == b"HEAD"
                or (method == b"CONNECT" and 200 <= status < 300)
            ):
                return _CONTENT_LENGTH, 0
        elif type(event) is not Request:  # pragma: no cover - by the transitions
            raise LocalProtocolError("a body without a head")
        h: Headers = event.headers
        if h._flags & _CHUNKED_FLAG:
            return _CHUNKED, 0
        if h._length is not None:
            return _CONTENT_LENGTH, h._length
        if type(event) is Request:
            return _CONTENT_LENGTH, 0
        return _HTTP10, 0

    def start_next_cycle(self) -> None:
        """
        Both sides are L{DONE}: back to L{IDLE} for the next request on the
        same connection.  Anything else is a L{LocalProtocolError}.
        """
        if self._client is not DONE or self._server is not DONE:
            raise LocalProtocolError(
                f"not in a reusable state. self.states={{CLIENT: {self._client!r}, "
                f"SERVER: {self._server!r}}}"
            )
        assert self._keepAlive
        assert not (self._pendingUpgrade or self._pendingConnect)
        assert not self.client_is_waiting_for_100_continue
        self._client = self._server = IDLE
        self._requestMethod = None
        if self._weAreClient:
            self._writer, self._reader = _WRITE_REQUEST, _RESPONSE_HEAD
        else:
            self._writer, self._reader = _WRITE_RESPONSE, _REQUEST_HEAD

    # -- receiving ----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """How many bytes are received but not parsed yet (L{trailing_data} without the copy)."""
        return len(self._buf) - self._pos

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """The bytes received but not parsed, and whether the peer closed (EOF)."""
        return bytes(self._buf[self._pos :]), self._closed

    def receive_data(self, data: bytes) -> None:
        """
        Add bytes received; C{b""} says that the peer closed its side.
        Parsing happens in L{next_event}.  A C{bytes} object that arrives
        when nothing is buffered is kept as it is (not copied), so that it
        can become a L{Data} event whole.
        """
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("received close, then received more data?")
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = self._lineScan = self._headScan = 0
            return
        if pos or type(buf) is not bytearray:
            # one copy of what is left, then appends are amortized
            buf = bytearray(memoryview(buf)[pos:]) if pos else bytearray(buf)
            self._lineScan = max(0, self._lineScan - pos)
            self._headScan = max(0, self._headScan - pos)
            self._pos = 0
            self._buf = buf
        buf += data

    def _take(self, count: int) -> bytes | None:
        """At most C{count} buffered bytes (the very object when it is all of them)."""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available <= 0:
            return None
        if count >= available:
            out = buf if pos == 0 and type(buf) is bytes else bytes(buf[pos:])
            self._buf = b""
            self._pos = self._lineScan = self._headScan = 0
            return out
        end = pos + count
        self._pos = self._lineScan = self._headScan = end
        return bytes(buf[pos:end])

    def _head(self, what: str) -> tuple[bytes | bytearray, int, int, int, int] | None:
        """
        Take a complete head from the buffer, as h11 finds one: (the
        buffer, where the head starts, where its start line ends (before the
        CR LF), where its field lines start, where they end), or C{None}.
        """
        buf, pos = self._buf, self._pos
        size = len(buf)
        if pos >= size:
            return None
        first = buf[pos]
        if first == 10 or (first == 13 and pos + 1 < size and buf[pos + 1] == 10):
            # an empty line first: h11 drops it, then refuses
            self._pos = self._lineScan = self._headScan = pos + (1 if first == 10 else 2)
            raise LocalProtocolError(f"no {what} line received")
        blank = _BLANK_LINE_RE.search(buf, self._headScan if self._headScan > pos else pos)
        if blank is None:
            self._headScan = size - 2 if size - 2 > pos else pos
            if first < 0x21:
                # not HTTP (a TLS handshake?): no need to wait for the end
                raise LocalProtocolError("illegal request line")
            return None
        fieldsEnd = blank.start() + 1
        end = blank.end()
        if end >= size:
            self._buf = b""
            self._pos = self._lineScan = self._headScan = 0
        else:
            self._pos = self._lineScan = self._headScan = end
        lineEnd = buf.find(b"\n", pos)
        fieldsStart = lineEnd + 1
        if lineEnd > pos and buf[lineEnd - 1] == 13:
            lineEnd -= 1
        return buf, pos, lineEnd, fieldsStart, fieldsEnd

    def _readRequest(self) -> Request | None:
        found = self._head("request")
        if found is None:
            return None
        buf, pos, lineEnd, fieldsStart, fieldsEnd = found
        line = _REQUEST_LINE_RE.fullmatch(buf, pos, lineEnd)
        if line is None:
            raise LocalProtocolError(f"illegal request line: {_shown(buf[pos:lineEnd])}")
        method, target, version = line.groups()
        if version[0] != 49:  # b"1"
            raise LocalProtocolError(
                f"unsupported HTTP version {version.decode()}", error_status_hint=505
            )
        headers = _fields(buf, fieldsStart, fieldsEnd)
        if headers._hosts != 1:
            if headers._hosts > 1:
                raise LocalProtocolError("Found multiple Host: headers")
            if version != b"1.0":
                raise LocalProtocolError("Missing mandatory Host: header")
        return _new(Request, (method, headers, target, version))

    def _readResponse(self) -> _ResponseBase | None:
        found = self._head("response")
        if found is None:
            return None
        buf, pos, lineEnd, fieldsStart, fieldsEnd = found
        line = _STATUS_LINE_RE.fullmatch(buf, pos, lineEnd)
        if line is None:
            raise LocalProtocolError(f"illegal status line: {_shown(buf[pos:lineEnd])}")
        version, status, reason = line.groups()
        if version[0] != 49:
            raise LocalProtocolError(f"unsupported HTTP version {version.decode()}")
        headers = _fields(buf, fieldsStart, fieldsEnd)
        code = int(status)
        if code >= 200:
            return _new(Response, (headers, version, reason or b"", code))
        if code < 100:
            raise LocalProtocolError(
                f"InformationalResponse status_code should be in range [100, 200), not {code}"
            )
        return _new(InformationalResponse, (headers, version, reason or b"", code))

    def _readTrailers(self) -> EndOfMessage | None:
        buf, pos = self._buf, self._pos
        size = len(buf)
        if pos >= size:
            return None
        first = buf[pos]
        if first == 10 or (first == 13 and pos + 1 < size and buf[pos + 1] == 10):
            self._pos = self._lineScan = self._headScan = pos + (1 if first == 10 else 2)
            return _END
        blank = _BLANK_LINE_RE.search(buf, self._headScan if self._headScan > pos else pos)
        if blank is None:
            self._headScan = size - 2 if size - 2 > pos else pos
            return None
        end = blank.end()
        self._pos = self._lineScan = self._headScan = end
        return _new(EndOfMessage, (_fields(buf, pos, blank.start() + 1),))

    def _readChunked(self) -> Data | EndOfMessage | None:
        """h11's ChunkedReader: the same events for the same bytes."""
        if self._readTrailer:
            return self._readTrailers()
        discard = self._readDiscard
        if discard:
            data = self._take(len(discard))
            if data is None:
                return None
            if data != discard[: len(data)]:
                raise LocalProtocolError(
                    f"malformed chunk footer: {data!r} (expected {discard!r})"
                )
            self._readDiscard = discard = discard[len(data) :]
            if discard:
                return None
        if self._readLeft == 0:
            buf, pos = self._buf, self._pos
            lineEnd = buf.find(b"\r\n", max(pos, self._lineScan - 1))
            if lineEnd < 0:
                self._lineScan = len(buf)
                return None
            header = _CHUNK_HEADER_RE.fullmatch(buf, pos, lineEnd + 2)
            if header is None:
                raise LocalProtocolError(f"illegal chunk header: {_shown(buf[pos : lineEnd + 2])}")
            self._pos = self._lineScan = self._headScan = lineEnd + 2
            self._readLeft = int(header.group(1), 16)
            if self._readLeft == 0:
                self._readTrailer = True
                return self._readTrailers()
            start = True
        else:
            start = False
        data = self._take(self._readLeft)
        if data is None:
            return None
        self._readLeft -= len(data)
        if self._readLeft == 0:
            self._readDiscard = b"\r\n"
            return _new(Data, (data, start, True))
        return _new(Data, (data, start, False))

    def next_event(self) -> Event | Sentinel:
        """
        The next event received: a L{Request}, L{InformationalResponse},
        L{Response}, L{Data}, L{EndOfMessage} or L{ConnectionClosed}; or
        L{NEED_DATA}, or L{PAUSED} (after a message, until
        L{start_next_cycle}; after a protocol switch, for good).

        @raise RemoteProtocolError: the peer broke the protocol (their
            state is L{ERROR} from then on).
        """
        theirs = self._server if self._weAreClient else self._client
        if theirs is ERROR:
            raise RemoteProtocolError("Can't receive data when peer state is ERROR")
        try:
            event: Event | None
            reader = self._reader
            if reader == _CONTENT_LENGTH:
                # the hot path: a body with a length
                left = self._readLeft
                if left == 0:
                    event = _END
                else:
                    data = self._take(left)
                    if data is not None:
                        # SEND_BODY to SEND_BODY: no state changes
                        self._readLeft = left - len(data)
                        if not self._weAreClient:
                            self.client_is_waiting_for_100_continue = False
                        return _new(Data, (data, False, False))
                    if self._closed:
                        raise RemoteProtocolError(
                            "peer closed connection without sending complete message body "
                            f"(received {self._readTotal - left} bytes, "
                            f"expected {self._readTotal})"
                        )
                    event = None
            elif theirs is DONE and self._pos < len(self._buf):
                return PAUSED
            elif theirs is MIGHT_SWITCH_PROTOCOL or theirs is SWITCHED_PROTOCOL:
                return PAUSED
            elif reader == _REQUEST_HEAD:
                event = self._readRequest()
            elif reader == _RESPONSE_HEAD:
                event = self._readResponse()
            elif reader == _CHUNKED:
                event = self._readChunked()
                if event is None and self._closed and self._pos >= len(self._buf):
                    raise RemoteProtocolError(
                        "peer closed connection without sending complete message body "
                        "(incomplete chunked read)"
                    )
            elif reader == _HTTP10:
                data = self._take(1 << 62)
                if data is not None:
                    return _new(Data, (data, False, False))
                event = _END if self._closed else None
            elif reader == _NOTHING:
                if self._pos < len(self._buf):
                    raise LocalProtocolError("Got data when expecting EOF")
                event = None
            else:  # pragma: no cover - unreachable (ERROR is checked before)
                raise LocalProtocolError("no reader in this state")
            if event is None:
                if self._pos >= len(self._buf):
                    if self._closed:
                        event = ConnectionClosed()
                    else:
                        return NEED_DATA
                else:
                    if len(self._buf) - self._pos > self._max:
                        raise RemoteProtocolError("Receive buffer too long", error_status_hint=431)
                    if self._closed:
                        raise RemoteProtocolError("peer unexpectedly closed connection")
                    return NEED_DATA
            self._processEvent(self.their_role, event)
            return event
        except BaseException as e:
            self._processError(self.their_role)
            if isinstance(e, LocalProtocolError):
                e.__class__ = RemoteProtocolError  # type: ignore[assignment]
            raise

    # -- sending ----------------------------------------------------------------------

    @overload
    def send(self, event: ConnectionClosed) -> None: ...

    @overload
    def send(
        self, event: Request | InformationalResponse | Response | Data | EndOfMessage
    ) -> bytes: ...

    @overload
    def send(self, event: Event) -> bytes | None: ...

    def send(self, event: Event) -> bytes | None:
        """
        The bytes that say C{event} to the peer (C{None} for
        L{ConnectionClosed}).

        @raise LocalProtocolError: the event cannot be sent now (our state
            is L{ERROR} from then on).
        """
        if (self._client if self._weAreClient else self._server) is ERROR:
            raise LocalProtocolError("Can't send data when our state is ERROR")
        try:
            kind = type(event)
            writer, left = self._writer, self._writeLeft
            if kind is Data:
                self._processEvent(self.our_role, event)
                data: bytes = event.data  # type: ignore[attr-defined]
                if type(data) is not bytes:
                    data = bytes(data)
                if writer == _CONTENT_LENGTH:
                    left -= len(data)
                    if left < 0:
                        raise LocalProtocolError("Too much data for declared Content-Length")
                    self._writeLeft = left
                    return data
                if writer == _CHUNKED:
                    if not data:
                        return b""
                    return b"%x\r\n%b\r\n" % (len(data), data)
                return data  # _HTTP10
            if kind is EndOfMessage:
                self._processEvent(self.our_role, event)
                trailers: Headers = event.headers  # type: ignore[attr-defined]
                if writer == _CONTENT_LENGTH:
                    if left != 0:
                        raise LocalProtocolError("Too little data for declared Content-Length")
                    if trailers:
                        raise LocalProtocolError("Content-Length and trailers don't mix")
                    return b""
                if writer == _CHUNKED:
                    return _writeHead(b"0", trailers)
                if trailers:  # _HTTP10
                    raise LocalProtocolError("can't send trailers to HTTP/1.0 client")
                return b""
            if kind is Response:
                event = self._cleanUpResponse(event)  # type: ignore[arg-type]
            self._processEvent(self.our_role, event)
            if kind is Request:
                request: Request = event  # type: ignore[assignment]
                if request.http_version != b"1.1":
                    raise LocalProtocolError("I only send HTTP/1.1")
                return _writeHead(
                    request.method + b" " + request.target + b" HTTP/1.1", request.headers
                )
            if kind is Response or kind is InformationalResponse:
                response: _ResponseBase = event  # type: ignore[assignment]
                if response.http_version != b"1.1":
                    raise LocalProtocolError("I only send HTTP/1.1")
                return _writeHead(
                    b"HTTP/1.1 %d %b" % (response.status_code, response.reason),
                    response.headers,
                )
            return None  # ConnectionClosed
        except BaseException:
            self._processError(self.our_role)
            raise

    def send_failed(self) -> None:
        """What we were given could not be sent: our state becomes L{ERROR}."""
        self._processError(self.our_role)

    def _cleanUpResponse(self, response: Response) -> Response:
        """
        h11's framing of a response we send: without a length, chunked to
        an HTTP/1.1 peer, or delimited by closing the connection to an older
        one; C{Connection: close} added when the connection will not be
        kept.  Fields changed go to the end, names title-cased, as in h11.
        """
        h = response.headers
        method = self._requestMethod
        status = response.status_code
        needClose = False
        raw = h._raw
        names: list[bytes] | None = None
        if not (
            status == 204
            or status == 304
            or (method == b"CONNECT" and 200 <= status < 300)
            or h._length is not None
        ):
            # chunked or delimited by the end of the connection
            added: list[_Pair] = []
            version = self.their_http_version
            if version is None or version < b"1.1":
                if method != b"HEAD":
                    needClose = True
            else:
                added.append((b"Transfer-Encoding", b"chunked"))
            names = h._names
            raw, names = _withFields(raw, names, {b"content-length", b"transfer-encoding"}, added)
        if not self._keepAlive or needClose:
            if names is None:
                names = h._names
            options: set[bytes] = set()
            for name, (_, value) in zip(names, raw, strict=True):
                if name == b"connection":
                    options.update(_commaValues(value))
            options.discard(b"keep-alive")
            options.add(b"close")
            raw, names = _withFields(
                raw, names, {b"connection"}, [(b"Connection", v) for v in sorted(options)]
            )
        if names is None:
            return response
        return _new(
            Response,
            (_headers(raw, names), response.http_version, response.reason, status),
        )


def _fields(buf: bytes | bytearray, start: int, end: int) -> Headers:
    """The field lines of C{buf} from C{start} (a line start) to C{end} (after an LF)."""
    if start == end:
        return _EMPTY_HEADERS
    block = bytes(buf[start:end])
    found = _FIELD_LINE_RE.findall(block)
    if (
        len(found) != block.count(b"\n")
        or block.count(b"\r") != block.count(b"\r\n")
        or block.translate(None, _FIELD_BYTES)
    ):
        _badFields(block)
    return _headers(found, [name.lower() for name, _ in found])


def _withFields(
    raw: list[_Pair], names: list[bytes], drop: set[bytes], added: list[_Pair]
) -> tuple[list[_Pair], list[bytes]]:
    """The fields without those named in C{drop}, then C{added} (title-case names)."""
    keep = [i for i, name in enumerate(names) if name not in drop]
    newRaw = [raw[i] for i in keep] + added
    newNames = [names[i] for i in keep] + [name.lower() for name, _ in added]
    return newRaw, newNames


def _badFields(block: bytes) -> None:
    """Say what is wrong with field lines that did not all match."""
    lines = block.split(b"\n")
    for i, line in enumerate(lines[:-1]):
        if line[:1] in (b" ", b"\t"):
            if i == 0:
                raise LocalProtocolError("continuation line at start of headers")
            raise LocalProtocolError("obsolete line folding in headers is not accepted")
        if line.endswith(b"\r"):
            line = line[:-1]
        if _FIELD_LINE_ALONE_RE.fullmatch(line) is None:
            raise LocalProtocolError(f"illegal header line: {_shown(line)}")
    raise LocalProtocolError("illegal header lines")  # pragma: no cover
