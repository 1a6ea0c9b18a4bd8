"""
Tests for L{twisted_tunnel.http.h1}, the HTTP/1.1 codec that stands in for h11.

Most are differential: the same bytes, cut at the same places, go to an h11
connection and to an h1 one, which must give the same events, states and
errors, and write the same bytes for the same events (hypothesis makes the
messages: chunked and sized bodies, trailers, pipelining, HTTP/1.0, HEAD,
1xx, odd spacing and case).  The rest say what must be refused (each way
of smuggling a request that we know of: both codecs refuse it, or h1 alone
where h11 is lenient on purpose), and what the proxy engine relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_tunnel.http import h1

CODECS = (h11, h1)

# -- comparing what the two codecs do ---------------------------------------------------


def describe(event: Any) -> tuple[Any, ...]:
    """An event of either codec as plain data."""
    name = type(event).__name__
    if name == "Request":
        return (
            name,
            event.method,
            event.target,
            event.http_version,
            list(event.headers),
            event.headers.raw_items(),
        )
    if name in ("Response", "InformationalResponse"):
        return (
            name,
            event.status_code,
            event.reason,
            event.http_version,
            list(event.headers),
            event.headers.raw_items(),
        )
    if name == "Data":
        return (name, bytes(event.data), event.chunk_start, event.chunk_end)
    if name == "EndOfMessage":
        return (name, list(event.headers), event.headers.raw_items())
    if name == "ConnectionClosed":
        return (name,)
    return ("sentinel", repr(event))


def states(conn: Any) -> tuple[str, str]:
    return repr(conn.our_state), repr(conn.their_state)


Respond = Callable[[ModuleType, Any, Any], list[Any]]


def plainResponse(m: ModuleType, conn: Any, request: Any) -> list[Any]:
    """A response without a length: h11 chunks it, or closes after it."""
    return [
        m.Response(status_code=200, headers=[("X-A", "b")], reason=b"OK"),
        m.Data(data=b"hello"),
        m.EndOfMessage(),
    ]


def serve(m: ModuleType, chunks: Sequence[bytes], respond: Respond = plainResponse) -> list[Any]:
    """
    Feed C{chunks} to a server connection of codec C{m}, answering each
    request once it is complete; the log of everything observable.
    """
    conn = m.Connection(m.SERVER, max_incomplete_event_size=4096)
    log: list[Any] = []
    request = None
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except m.RemoteProtocolError as e:
                log.append(("error", e.error_status_hint, states(conn)))
                return log
            log.append((describe(event), states(conn)))
            if event is m.NEED_DATA or event is m.PAUSED:
                break
            if isinstance(event, m.Request):
                request = event
            if isinstance(event, m.EndOfMessage):
                for answer in respond(m, conn, request):
                    try:
                        log.append(("sent", conn.send(answer), states(conn)))
                    except m.LocalProtocolError:
                        log.append(("cannot send", type(answer).__name__, states(conn)))
                        return log
                if conn.our_state is m.DONE and conn.their_state is m.DONE:
                    conn.start_next_cycle()
                    log.append(("cycle", states(conn)))
            if isinstance(event, m.ConnectionClosed):
                log.append(("trailing", conn.trailing_data))
                return log
    log.append(("trailing", conn.trailing_data))
    return log


def fetch(
    m: ModuleType, method: bytes, chunks: Sequence[bytes], requestHeaders: Sequence[Any] = ()
) -> list[Any]:
    """Send a request with a client connection of codec C{m}, then feed it C{chunks}."""
    conn = m.Connection(m.CLIENT, max_incomplete_event_size=4096)
    log: list[Any] = []
    headers = [(b"Host", b"example")] + list(requestHeaders)
    log.append(("sent", conn.send(m.Request(method=method, target=b"/", headers=headers))))
    log.append(("sent", conn.send(m.EndOfMessage()), states(conn)))
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            try:
                event = conn.next_event()
            except m.RemoteProtocolError as e:
                log.append(("error", e.error_status_hint, states(conn)))
                return log
            log.append((describe(event), states(conn)))
            if event is m.NEED_DATA or event is m.PAUSED:
                break
            if isinstance(event, m.ConnectionClosed):
                break
    log.append(("trailing", conn.trailing_data, conn.their_http_version))
    return log


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """C{data} in pieces, cut at C{points} (positions, any order, repeats allowed)."""
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False) if b > a]


def same(run: Callable[[ModuleType], list[Any]]) -> list[Any]:
    """Run with both codecs; their logs must be equal."""
    expected, actual = run(h11), run(h1)
    assert actual == expected
    return actual


# -- strategies ------------------------------------------------------------------------------

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIAL = {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade", b"expect"}

tokens = st.text(TCHARS, min_size=1, max_size=12).map(str.encode)
fieldNames = st.one_of(
    st.sampled_from(
        [b"Accept", b"user-agent", b"X-Request-Id", b"COOKIE", b"Authorization", b"x", b"Date"]
    ),
    tokens,
).filter(lambda n: n.lower() not in SPECIAL)
# a field value: visible ASCII, obs-text and other control bytes (h11
# takes them) with blanks inside, never at the ends
valueBytes = st.sampled_from(
    [bytes([b]) for b in range(0x21, 0x7F)] + [b"\x01", b"\x7f", b"\x80", b"\xff", b"\xe9"]
)
fieldValues = st.lists(
    st.tuples(st.lists(valueBytes, min_size=1, max_size=6), st.sampled_from([b" ", b"\t", b"  "])),
    max_size=4,
).map(lambda words: b"".join(b"".join(w) + s for w, s in words).rstrip(b" \t"))
blanks = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
eols = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def casing(name: bytes) -> st.SearchStrategy[bytes]:
    return st.sampled_from([name, name.upper(), name.title(), name.lower()])


@st.composite
def fieldLines(draw: Any, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """Header lines (random fields and C{extra}, shuffled), with odd spacing."""
    fields = draw(st.lists(st.tuples(fieldNames, fieldValues), max_size=6)) + list(extra)
    fields = draw(st.permutations(fields))
    out = b""
    for name, value in fields:
        if name.lower() in SPECIAL:
            name = draw(casing(name))
        out += name + b":" + draw(blanks) + value + draw(blanks) + draw(eols)
    return out


@st.composite
def bodies(draw: Any) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The framing fields and the framed body: none, sized, or chunked with trailers."""
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=40))
    if kind == "none":
        return [], b""
    if kind == "length":
        return [(b"content-length", b"%d" % len(body))], body
    pieces = cut(body, draw(st.lists(st.integers(0, 40), max_size=4)))
    out = b""
    for piece in pieces:
        size = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(piece)
        ext = draw(st.sampled_from([b"", b";name=value", b"; x", b" "]))
        out += size + ext + b"\r\n" + piece + b"\r\n"
    out += b"0\r\n" + draw(fieldLines()) + b"\r\n"
    return [(b"transfer-encoding", b"chunked")], out


@st.composite
def requests(draw: Any) -> bytes:
    method = draw(
        st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD"]), tokens)
    )
    target = draw(st.sampled_from([b"/", b"/a/b?c=d&e", b"http://h:1/x", b"*", b"/%20~!$"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    framing, body = draw(bodies())
    extra = list(framing)
    if version == b"1.1" or draw(st.booleans()):
        extra.append((b"host", draw(st.sampled_from([b"example", b"10.0.0.7:10250", b""]))))
    if draw(st.integers(0, 5)) == 0:
        extra.append(
            (b"connection", draw(st.sampled_from([b"close", b"keep-alive", b"x, Close"])))
        )
    if draw(st.integers(0, 8)) == 0:
        extra.append((b"expect", b"100-continue"))
    head = b"%s %s HTTP/%s\r\n" % (method, target, version)
    return head + draw(fieldLines(extra)) + draw(eols) + body


@st.composite
def responses(draw: Any) -> bytes:
    status = draw(st.sampled_from([100, 102, 103, 200, 201, 204, 206, 301, 304, 404, 500, 599]))
    reason = draw(st.sampled_from([b" OK", b" Not Found", b"", b" ", b" a\tb \xff"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    framing, body = draw(bodies())
    extra = list(framing)
    if draw(st.integers(0, 5)) == 0:
        extra.append((b"connection", draw(st.sampled_from([b"close", b"keep-alive"]))))
    head = b"HTTP/%s %d%s\r\n" % (version, status, reason)
    return head + draw(fieldLines(extra)) + draw(eols) + body


splits = st.lists(st.integers(0, 400), max_size=8)
DIFFERENTIAL = settings(max_examples=300, derandomize=True, deadline=None)


# -- differential tests ------------------------------------------------------------------


@DIFFERENTIAL
@given(st.lists(requests(), min_size=1, max_size=3), splits, st.booleans())
def test_requests(messages: list[bytes], points: list[int], eof: bool) -> None:
    """Requests, pipelined, cut anywhere, maybe followed by EOF: the same for both."""
    chunks = cut(b"".join(messages), points) + ([b""] if eof else [])
    same(lambda m: serve(m, chunks))


def sizedResponse(m: ModuleType, conn: Any, request: Any) -> list[Any]:
    """A response with its length, trailers refused: as the engine forwards one."""
    return [
        m.Response(status_code=200, headers=[(b"Content-Length", b"2")]),
        m.Data(data=b"ok"),
        m.EndOfMessage(headers=[]),
    ]


@DIFFERENTIAL
@given(st.lists(requests(), min_size=1, max_size=3), splits)
def test_requestsSizedAnswers(messages: list[bytes], points: list[int]) -> None:
    """Keep-alive cycles with sized answers: the same events and bytes."""
    same(lambda m: serve(m, cut(b"".join(messages), points), sizedResponse))


@DIFFERENTIAL
@given(
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.lists(responses(), min_size=1, max_size=3),
    splits,
    st.booleans(),
)
def test_responses(method: bytes, messages: list[bytes], points: list[int], eof: bool) -> None:
    """Responses (1xx first, maybe), cut anywhere, maybe then EOF: the same for both."""
    chunks = cut(b"".join(messages), points) + ([b""] if eof else [])
    same(lambda m: fetch(m, method, chunks))


sendFields = st.lists(
    st.tuples(
        st.one_of(fieldNames, st.sampled_from([b"Connection", b"connection", b"Host"])),
        fieldValues,
    ),
    max_size=5,
)


@DIFFERENTIAL
@given(
    st.sampled_from([b"1.0", b"1.1"]),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.booleans(),
    sendFields,
    st.sampled_from(["none", "length", "chunked"]),
    st.sampled_from([200, 204, 304, 404]),
    st.lists(st.binary(max_size=10), max_size=3),
    st.lists(st.tuples(fieldNames, fieldValues), max_size=2),
)
def test_sending(
    version: bytes,
    method: bytes,
    close: bool,
    fields: list[tuple[bytes, bytes]],
    framing: str,
    status: int,
    pieces: list[bytes],
    trailers: list[tuple[bytes, bytes]],
) -> None:
    """
    Responses as a server sends them, to HTTP/1.0 and 1.1 clients, after
    GET or HEAD: the same fields added or dropped (chunked, close), the
    same bytes, the same refusals.
    """
    request = b"%s / HTTP/%s\r\nHost: a\r\n%s\r\n" % (
        method,
        version,
        b"Connection: close\r\n" if close else b"",
    )
    body = b"".join(pieces)
    headers = list(fields)
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))

    def respond(m: ModuleType, conn: Any, request: Any) -> list[Any]:
        events = [m.Response(status_code=status, headers=headers)]
        events += [m.Data(data=piece) for piece in pieces]
        return events + [m.EndOfMessage(headers=trailers)]

    same(lambda m: serve(m, [request], respond))


@DIFFERENTIAL
@given(
    st.sampled_from([b"GET", b"POST", b"OPTIONS", b"M-SEARCH"]),
    st.sampled_from([b"/", b"/x?y", b"*", b"http://a/"]),
    sendFields,
    st.sampled_from(["none", "length", "chunked"]),
    st.lists(st.binary(max_size=10), max_size=3),
)
def test_sendingRequests(
    method: bytes,
    target: bytes,
    fields: list[tuple[bytes, bytes]],
    framing: str,
    pieces: list[bytes],
) -> None:
    """Requests as a client sends them: the same bytes (Host first), the same refusals."""
    headers = list(fields)
    body = b"".join(pieces)
    if framing == "length":
        headers.append((b"content-length", b"%d" % len(body)))
    elif framing == "chunked":
        headers.append((b"transfer-encoding", b"Chunked"))
    if not any(name.lower() == b"host" for name, _ in headers):
        headers.append((b"host", b"h"))

    def run(m: ModuleType) -> list[Any]:
        conn = m.Connection(m.CLIENT)
        log: list[Any] = []
        try:
            events = [m.Request(method=method, target=target, headers=headers)]
            events += [m.Data(data=piece) for piece in pieces] + [m.EndOfMessage()]
            for event in events:
                log.append((conn.send(event), states(conn)))
        except m.LocalProtocolError:
            log.append(("refused", states(conn)))
        return log

    same(run)


# -- explicit cases ------------------------------------------------------------------------


def test_examples() -> None:
    """A few hand-written exchanges, as a smoke test of the differential helpers."""
    same(lambda m: serve(m, [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]))
    same(lambda m: serve(m, [b"GET / HTTP/1.0\r\n\r\n", b""]))
    same(
        lambda m: serve(
            m,
            [
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;x=y\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
            ],
        )
    )
    same(lambda m: fetch(m, b"GET", [b"HTTP/1.0 200 OK\r\n\r\nsome body", b"more", b""]))
    same(lambda m: fetch(m, b"HEAD", [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"]))
    same(lambda m: fetch(m, b"GET", [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n"]))


# Each way of making two parsers disagree about a message's end (request
# smuggling), or of slipping bytes into a head, that we know of.  Both codecs
# refuse every one of these.
REFUSED_REQUESTS = {
    "two different lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "a list of different lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n",
    "a signed length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    "a negative length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "a length in hex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello",
    "an empty length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    "a length too long": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1"
    + b"0" * 20
    + b"\r\n\r\n",
    "gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "chunked then gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "gzip then chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "chunked twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "xchunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "chunked with a vertical tab": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: \x0bchunked\r\n\r\n",
    "space before the colon": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
    "tab before the colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-Nothing\r\n\r\n",
    "a space in a name": b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n",
    "a separator in a name": b"GET / HTTP/1.1\r\nHost: a\r\nX(Y): z\r\n\r\n",
    "an empty name": b"GET / HTTP/1.1\r\nHost: a\r\n: z\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "CR in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rContent-Length: 5\r\n\r\nhello",
    "CR at the end of a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n",
    "a form feed in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0cb\r\n\r\n",
    "a field starting with a blank": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "no Host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "a bad method": b"G(ET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "a space in the target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "NUL in the target": b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
    "a lower-case version": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "no version": b"GET /\r\nHost: a\r\n\r\n",
    "CR as a line end": b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    "an empty line first": b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "a TLS handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "a negative chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"-5\r\nhello\r\n0\r\n\r\n",
    "a chunk size in 0x": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x5\r\nhello\r\n0\r\n\r\n",
    "a blank before a chunk size": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
    "a chunk size not hex": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5g\r\nhello\r\n0\r\n\r\n",
    "a chunk size too long": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 20 + b"5\r\nhello\r\n0\r\n\r\n",
    "a chunk size ended by LF": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    "a chunk longer than said": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n",
    "a chunk ended by LF": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
    "a bad trailer": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\nX : y\r\n\r\n",
    "a length in trailers that lies": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n",
    "a head too large": b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * 5000,
    "data after Connection: close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "a request cut short": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello",
}


def refusal(m: ModuleType, data: bytes, pieces: int) -> tuple[Any, ...]:
    """How C{data} (cut in C{pieces}, then EOF) is refused: the last log entry."""
    step = max(1, -(-len(data) // pieces))
    chunks = [data[i : i + step] for i in range(0, len(data), step)] + [b""]
    log = serve(m, chunks, sizedResponse)
    return log[-1]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(REFUSED_REQUESTS))
@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_refused(name: str, pieces: int) -> None:
    """Both codecs refuse each of these, with the same status hint, whole or byte by byte."""
    data = REFUSED_REQUESTS[name]
    expected, actual = refusal(h11, data, pieces), refusal(h1, data, pieces)
    assert expected[0] == "error", expected
    assert actual == expected


def test_headTooLargeHint() -> None:
    """A head that does not fit in max_incomplete_event_size: 431, as in h11."""
    for m in CODECS:
        conn = m.Connection(m.SERVER, max_incomplete_event_size=100)
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 200)
        with pytest.raises(m.RemoteProtocolError) as caught:
            conn.next_event()
        assert caught.value.error_status_hint == 431


# Where h11 is lenient and h1 is not: accepted by h11, refused by h1.
STRICTER = {
    # h11 lets Transfer-Encoding win and keeps the connection; a parser in
    # front of us that let Content-Length win would see another request
    "both lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "both lengths, the other way": b"POST / HTTP/1.1\r\nHost: a\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    # h11 unfolds obsolete line folding; RFC 9112 section 5.2 allows refusing it
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "obs-fold of Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n"
    b" chunked\r\n\r\n0\r\n\r\n",
    # h11 takes any d.d version
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "HTTP/0.9": b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
    # h11 wants Host only with exactly 1.1
    "HTTP/1.2 without Host": b"GET / HTTP/1.2\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(STRICTER))
def test_stricterThanH11(name: str) -> None:
    data = STRICTER[name]
    assert serve(h11, [data])[-1][0] != "error"
    assert refusal(h1, data, 1)[0] == "error"


def test_versionHint() -> None:
    """A request in a version other than 1.x: the hint is 505."""
    conn = h1.Connection(h1.SERVER)
    conn.receive_data(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
    with pytest.raises(h1.RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.error_status_hint == 505


REFUSED_RESPONSES = {
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nab",
    "a bad status": b"HTTP/1.1 2000 OK\r\n\r\n",
    "a short status": b"HTTP/1.1 20 OK\r\n\r\n",
    "a status below 100": b"HTTP/1.1 099 Hm\r\n\r\n",
    "CR in the reason": b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n",
    "NUL in the reason": b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n",
    "a 101 not asked for": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "a bad chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
    "a body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "chunks cut short": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    "a head cut short": b"HTTP/1.1 200 OK\r\nContent-Le",
    "data after the response": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\nextra",
}


@pytest.mark.parametrize("name", sorted(REFUSED_RESPONSES))
def test_refusedResponses(name: str) -> None:
    log = same(lambda m: fetch(m, b"GET", [REFUSED_RESPONSES[name], b""]))
    assert log[-1][0] == "error", log


SEND_REFUSED: dict[str, Callable[[ModuleType], Any]] = {
    "CR LF in a value": lambda m: m.Request(
        method=b"GET", target=b"/", headers=[(b"Host", b"a"), (b"X", b"a\r\nY: b")]
    ),
    "LF in a value": lambda m: m.Request(
        method=b"GET", target=b"/", headers=[(b"Host", b"a"), (b"X", b"a\nY: b")]
    ),
    "NUL in a value": lambda m: m.Response(status_code=200, headers=[(b"X", b"a\x00")]),
    "a blank around a value": lambda m: m.Response(status_code=200, headers=[(b"X", b" a")]),
    "a colon in a name": lambda m: m.Response(status_code=200, headers=[(b"X:Y", b"a")]),
    "an empty name": lambda m: m.Response(status_code=200, headers=[(b"", b"a")]),
    "a space in the target": lambda m: m.Request(
        method=b"GET", target=b"/ HTTP/1.1\r\nX: y", headers=[(b"Host", b"a")]
    ),
    "a space in the method": lambda m: m.Request(
        method=b"G T", target=b"/", headers=[(b"Host", b"a")]
    ),
    "no Host": lambda m: m.Request(method=b"GET", target=b"/", headers=[]),
    "two Hosts": lambda m: m.Request(
        method=b"GET", target=b"/", headers=[(b"Host", b"a"), (b"host", b"b")]
    ),
    "two lengths": lambda m: m.Response(
        status_code=200, headers=[(b"Content-Length", b"1"), (b"Content-Length", b"2")]
    ),
    "gzip": lambda m: m.Response(status_code=200, headers=[(b"Transfer-Encoding", b"gzip")]),
    "a final status below 200": lambda m: m.Response(status_code=199, headers=[]),
    "an informational status of 200": lambda m: m.InformationalResponse(
        status_code=200, headers=[]
    ),
}


@pytest.mark.parametrize("name", sorted(SEND_REFUSED))
def test_sendRefused(name: str) -> None:
    """Events that would put bad bytes on the wire cannot even be made."""
    for m in CODECS:
        with pytest.raises(m.LocalProtocolError):
            SEND_REFUSED[name](m)


def test_reasonValidated() -> None:
    """h1 refuses a reason phrase with CR LF (h11 would write it as it is)."""
    with pytest.raises(h1.LocalProtocolError):
        h1.Response(status_code=200, headers=[], reason=b"OK\r\nX-Injected: 1")
    h11.Response(status_code=200, headers=[], reason=b"OK\r\nX-Injected: 1")


def test_sendBothLengths() -> None:
    """h1 will not write both lengths in a request (h11 writes both)."""
    headers = [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")]
    with pytest.raises(h1.LocalProtocolError):
        h1.Request(method=b"POST", target=b"/", headers=headers)
    h11.Request(method=b"POST", target=b"/", headers=headers)


# -- what the engine relies on ---------------------------------------------------------------


def test_dataIsTheBytesReceived() -> None:
    """A body segment received whole is the very bytes object given (no copy)."""
    conn = h1.Connection(h1.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    assert isinstance(conn.next_event(), h1.Request)
    assert conn.next_event() is h1.NEED_DATA
    segment = b"0123456789"
    conn.receive_data(segment)
    event = conn.next_event()
    assert isinstance(event, h1.Data)
    assert event.data is segment
    assert isinstance(conn.next_event(), h1.EndOfMessage)


def test_sentDataIsTheBytesGiven() -> None:
    """A body sent with a length comes back as the very object given."""
    conn = h1.Connection(h1.CLIENT)
    conn.send(
        h1.Request(
            method=b"PUT", target=b"/", headers=[(b"Host", b"a"), (b"Content-Length", b"3")]
        )
    )
    data = b"abc"
    assert conn.send(h1.Data(data=data)) is data


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_upgrade(m: ModuleType) -> None:
    """
    A 101 to a request with Upgrade: both sides switch, and what either
    sent ahead is left in trailing_data.
    """
    server = m.Connection(m.SERVER)
    server.receive_data(
        b"GET /exec HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nearly"
    )
    request = server.next_event()
    assert isinstance(request, m.Request)
    assert isinstance(server.next_event(), m.EndOfMessage)
    assert server.next_event() is m.PAUSED
    assert server.their_state is m.MIGHT_SWITCH_PROTOCOL
    client = m.Connection(m.CLIENT)
    client.send(m.Request(method=b"GET", target=b"/exec", headers=request.headers.raw_items()))
    client.send(m.EndOfMessage())
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\nlate")
    switch = client.next_event()
    assert isinstance(switch, m.InformationalResponse) and switch.status_code == 101
    assert client.next_event() is m.PAUSED
    assert client.our_state is m.SWITCHED_PROTOCOL
    assert client.trailing_data == (b"late", False)
    out = server.send(
        m.InformationalResponse(status_code=101, headers=switch.headers.raw_items(), reason=b"X")
    )
    assert out == b"HTTP/1.1 101 X\r\nUpgrade: SPDY/3.1\r\n\r\n"
    assert server.our_state is m.SWITCHED_PROTOCOL
    assert server.their_state is m.SWITCHED_PROTOCOL
    assert server.trailing_data == (b"early", False)


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_upgradeRefused(m: ModuleType) -> None:
    """Anything but a 101 to an Upgrade: HTTP goes on."""
    server = m.Connection(m.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
    server.next_event()
    server.next_event()
    assert server.their_state is m.MIGHT_SWITCH_PROTOCOL
    server.send(m.Response(status_code=200, headers=[(b"Content-Length", b"0")]))
    assert server.their_state is m.DONE
    server.send(m.EndOfMessage())
    server.start_next_cycle()
    assert (server.our_state, server.their_state) == (m.IDLE, m.IDLE)


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_switchUnasked(m: ModuleType) -> None:
    """A 101 without an Upgrade asked for cannot be sent."""
    server = m.Connection(m.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    server.next_event()
    with pytest.raises(m.LocalProtocolError):
        server.send(m.InformationalResponse(status_code=101, headers=[(b"Upgrade", b"x")]))


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_connect(m: ModuleType) -> None:
    """A 2xx to CONNECT switches protocols; the bytes after it are trailing_data."""
    client = m.Connection(m.CLIENT)
    client.send(m.Request(method=b"CONNECT", target=b"a:443", headers=[(b"Host", b"a:443")]))
    client.send(m.EndOfMessage())
    client.receive_data(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03")
    assert isinstance(client.next_event(), m.Response)
    assert client.next_event() is m.PAUSED
    assert client.their_state is m.SWITCHED_PROTOCOL
    assert client.trailing_data == (b"\x16\x03", False)


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_keepAliveAndClose(m: ModuleType) -> None:
    """Connection: close, and HTTP/1.0, end in MUST_CLOSE; HTTP/1.1 cycles."""
    for request, reusable in (
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ):
        server = m.Connection(m.SERVER)
        server.receive_data(request)
        server.next_event()
        server.next_event()
        out = server.send(m.Response(status_code=200, headers=[]))
        out += server.send(m.Data(data=b"x"))
        out += server.send(m.EndOfMessage())
        if reusable:
            assert server.our_state is m.DONE and server.their_state is m.DONE
            assert out.endswith(b"1\r\nx\r\n0\r\n\r\n")
        else:
            assert server.our_state is m.MUST_CLOSE and server.their_state is m.MUST_CLOSE
            assert b"Connection: close\r\n" in out


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_pipelinedWaits(m: ModuleType) -> None:
    """A request sent behind another waits (PAUSED) until start_next_cycle."""
    server = m.Connection(m.SERVER)
    server.receive_data(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert server.next_event().target == b"/1"
    assert isinstance(server.next_event(), m.EndOfMessage)
    assert server.next_event() is m.PAUSED
    assert server.trailing_data[0].startswith(b"GET /2")
    server.send(m.Response(status_code=204, headers=[]))
    server.send(m.EndOfMessage())
    server.start_next_cycle()
    assert server.next_event().target == b"/2"


@pytest.mark.parametrize("m", CODECS, ids=["h11", "h1"])
def test_errorsAreFinal(m: ModuleType) -> None:
    """After a protocol error the peer's state is ERROR, and stays so."""
    server = m.Connection(m.SERVER)
    server.receive_data(b"BAD\r\n\r\n")
    with pytest.raises(m.RemoteProtocolError):
        server.next_event()
    assert server.their_state is m.ERROR
    with pytest.raises(m.RemoteProtocolError):
        server.next_event()
    client = m.Connection(m.CLIENT)
    with pytest.raises(m.LocalProtocolError):
        client.send(m.Data(data=b"x"))
    assert client.our_state is m.ERROR
    with pytest.raises(m.LocalProtocolError):
        client.send(m.Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")]))


def test_events() -> None:
    """Events compare by type and fields, cannot be changed, and read like h11's."""
    data = h1.Data(data=b"x")
    assert data == h1.Data(data=b"x") and data != h1.Data(data=b"y")
    assert h1.EndOfMessage() == h1.EndOfMessage(headers=[])
    assert h1.ConnectionClosed() == h1.ConnectionClosed()
    assert h1.Data(data=b"") != h1.EndOfMessage()
    with pytest.raises(AttributeError):
        data.data = b"y"  # type: ignore[misc]
    response = h1.Response(status_code=200, headers=[("X-A", "1")], reason="OK")
    assert response.headers == [(b"x-a", b"1")]
    assert response.headers.raw_items() == [(b"X-A", b"1")]
    assert repr(data) == "Data(data=b'x', chunk_start=False, chunk_end=False)"
    assert repr(h1.DONE) == "DONE"
    assert isinstance(response, h1.Event)
