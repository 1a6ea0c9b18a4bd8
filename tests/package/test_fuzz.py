# -*- test-case-name: tests.package.test_fuzz -*-
"""
Fuzzing every parser that a peer or a client can reach, for crashes and
for unbounded work or memory, not only for round trips:

 - B{wire}: the frame decoder, fed arbitrary and mutated bytes whole, a
   byte at a time and in random chunks;
 - B{hello}: a HELLO's info as the server's and the agent's tunnels take
   it (L{twisted_tunnel.mux.Settings.fromInfo}, the server's admission, the
   agent's reconnector): arbitrary JSON, wrong types, huge and nested
   values;
 - B{http}: the HTTP/1 codec (L{twisted_tunnel.http.h1}, also against h11), the
   proxy engine (L{twisted_tunnel.http.engine}) and the CONNECT door
   (L{twisted_tunnel.doors.connect}), with arbitrary bytes and header bombs;
 - B{config}: the ConfigMap's data, manifests and volume directories
   (L{twisted_tunnel.forwarding.config}).

Each property says what must hold for I{any} input: the parser's own error
and nothing else, a bounded answer, bounded buffering (counted in bytes,
not timed, so that the tests stay deterministic).  Time is measured only
by the long campaign, C{bench/fuzz.py} (C{make fuzz}), which runs these
same properties with random seeds and larger inputs for as long as it is
given: it sets C{TWISTED_TUNNEL_FUZZ=long} before importing this module.
Under C{make test} each property runs a fixed, derandomized set of
examples: a few seconds in all.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.agent.test_agent import FakeEndpoint, RecordingPolicy
from tests.http import test_h1
from tests.wire.test_wire import frameStrategy
from twisted_tunnel import wire
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.doors.connect import BadTarget, ConnectDoorFactory, ConnectTarget, parseTarget
from twisted_tunnel.forwarding import config
from twisted_tunnel.http import h1
from twisted_tunnel.http.engine import HTTPProxyFactory, Limits, Route, RouteRefused
from twisted_tunnel.mux import Tunnel
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tls import PeerIdentity
from twisted_tunnel.wire import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAX_REASON_TEXT,
    ErrorCode,
    FrameDecoder,
    GoAway,
    Hello,
    ProtocolError,
)

#: C{long}: the campaign of bench/fuzz.py (random, larger inputs).
FUZZ_ENVIRONMENT = "TWISTED_TUNNEL_FUZZ"
LONG = os.environ.get(FUZZ_ENVIRONMENT) == "long"
#: How many examples the campaign runs per call of a property; it calls
#: each again, with a new seed, until its time is up.
LONG_EXAMPLES = 500
#: How much larger the campaign's inputs are.
SCALE = 8 if LONG else 1


def fuzzing(examples: int) -> settings:
    """
    The settings of one property: C{examples} derandomized examples under
    C{make test}; under the campaign, random ones, L{LONG_EXAMPLES} a call.
    No deadline: work is bounded by counting, and CI machines are noisy.
    """
    if LONG:
        return settings(
            max_examples=LONG_EXAMPLES,
            derandomize=False,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """C{data} cut at C{points} (any order, repeats and empty pieces allowed)."""
    marks = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False)]


def reads(data: bytes, points: Iterable[int]) -> list[bytes]:
    """
    C{data} cut at C{points} as a codec with h11's API takes it: non-empty
    pieces, then C{b""} for the end of the input (an empty piece in the
    middle would be an end followed by more data, which such a codec
    refuses as a caller's error).
    """
    return [*(piece for piece in cut(data, points) if piece), b""]


splits = st.lists(st.integers(0, 1 << 20), max_size=12)


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """
    C{valid} with a few bytes flipped, inserted, deleted, repeated or
    swapped for one of the bytes parsers care most about.
    """
    data = bytearray(valid)
    interesting = b'\x00\x01\x7f\x80\xff\r\n \t:;,=[]{}"\\-+.0e'
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "special"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "repeat":
            piece = bytes(data[at : at + draw(st.integers(1, 16))])
            data[at:at] = piece * draw(st.integers(1, 64 * SCALE))
        elif kind == "special" and at < len(data):
            data[at] = draw(st.sampled_from(interesting))
    return bytes(data)


def problems(events: Iterable[dict[str, Any]]) -> list[str]:
    """Log events that say something went wrong in our code: a traceback or an error."""
    return [
        formatEvent(e)[:300]
        for e in events
        if e.get("log_failure") is not None
        or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


# -- wire -------------------------------------------------------------------------------


def hello(payload: bytes) -> bytes:
    """A HELLO frame (versions 1..1) around C{payload}, its info, valid or not."""
    body = b"\x00\x01\x00\x01" + payload
    return struct.pack("!IBBI", len(body), 0, 0, 0) + body


#: JSON-ish text: the grammar's pieces and their near misses (numbers out of
#: range, escapes of half a surrogate pair, constants JSON does not have).
jsonPieces = st.sampled_from(
    [
        "{", "}", "[", "]", ",", ":", '"', '"a"', '"node"', '"window"', "0", "-0", "1",
        "1e999", "-1e999", "1.5", "2e308", "1E-400", "18446744073709551616", "9" * 40,
        "true", "false", "null", "NaN", "Infinity", "-Infinity", " ", "\n", '"\\ud800"',
        '"\\udc00"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\"', '"\\x"', "\\u", "\u00e9", "\ufeff",
    ]
)  # fmt: skip


@st.composite
def jsonish(draw: st.DrawFn) -> bytes:
    """An object's text, mostly: JSON built piece by piece, often malformed."""
    text = "".join(draw(st.lists(jsonPieces, max_size=40 * SCALE)))
    if draw(st.booleans()):
        text = "{" + text + "}"
    depth = draw(st.sampled_from([0, 0, 0, 10, 500, 980, 2000]))
    if depth:
        text = '{"a":' + "[" * depth + text + "]" * depth + "}"
    return text.encode("utf-8", "surrogatepass")


def assertWellFormed(frame: wire.Frame) -> None:
    """What the decoder gives is a frame that encodes back to itself."""
    assert wire.decodeAll(frame.encode()) == [frame], frame


class WireFuzzTests(SynchronousTestCase):
    """The frame decoder, whatever a peer sends."""

    def feedAll(self, chunks: Sequence[bytes], maxFrame: int) -> tuple[list[Any], Any]:
        """
        Feed C{chunks}, checking after each that what is buffered is part
        of one frame that may still be valid; the frames, and the error.
        """
        decoder = FrameDecoder(maxFrame)
        frames: list[Any] = []
        try:
            for chunk in chunks:
                for frame in decoder.feed(chunk):
                    assertWellFormed(frame)
                    frames.append(frame)
                # never more than one frame's worth waits: a header that
                # announces too much is refused before its payload comes
                self.assertLess(decoder.buffered, HEADER_SIZE + maxFrame)
        except ProtocolError as e:
            self.assertIsInstance(e.code, ErrorCode)
            self.assertLessEqual(len(e.text), 200)
            again = self.assertRaises(ProtocolError, lambda: list(decoder.feed(b"x")))
            self.assertIs(again, e)
            return frames, (e.code, e.text)
        return frames, None

    def assertSameAnyHowCut(self, data: bytes, points: Sequence[int], maxFrame: int) -> None:
        """Whole, cut anywhere, or a byte at a time: the same frames, the same error."""
        whole = self.feedAll([data], maxFrame)
        self.assertEqual(self.feedAll(cut(data, points), maxFrame), whole)
        if len(data) <= 4096 * SCALE:
            bytewise = [data[i : i + 1] for i in range(len(data))]
            self.assertEqual(self.feedAll(bytewise, maxFrame), whole)

    @fuzzing(150)
    @given(
        data=st.binary(max_size=600 * SCALE),
        points=splits,
        maxFrame=st.sampled_from([16, 1024, DEFAULT_MAX_FRAME, wire.ABSOLUTE_MAX_FRAME]),
    )
    def test_arbitraryBytes(self, data: bytes, points: list[int], maxFrame: int) -> None:
        self.assertSameAnyHowCut(data, points, maxFrame)

    @fuzzing(150)
    @given(
        data=st.lists(frameStrategy, max_size=8).map(lambda fs: b"".join(f.encode() for f in fs))
        .flatmap(mutated),
        points=splits,
        maxFrame=st.sampled_from([64, DEFAULT_MAX_FRAME]),
    )  # fmt: skip
    def test_mutatedFrames(self, data: bytes, points: list[int], maxFrame: int) -> None:
        """Valid frames with a few bytes changed reach deep into the payload parsers."""
        self.assertSameAnyHowCut(data, points, maxFrame)

    @fuzzing(150)
    @given(payload=jsonish() | st.binary(max_size=200), points=splits)
    def test_helloPayloads(self, payload: bytes, points: list[int]) -> None:
        """
        Whatever HELLO info decodes is a JSON object that encodes again
        (finite numbers, no half surrogate pairs); the rest is refused.
        """
        frames, error = self.feedAll(cut(hello(payload), points), DEFAULT_MAX_FRAME)
        if error is None:
            [decoded] = frames
            self.assertIsInstance(decoded.info, dict)
            json.dumps(decoded.info, allow_nan=False, ensure_ascii=False).encode("utf-8")

    def test_largestFrameByteAtATime(self) -> None:
        """
        The largest frame fed a byte at a time is one frame, buffered up
        to its last byte and no further: each byte costs the same.
        """
        frame = wire.Data(1, b"x" * DEFAULT_MAX_FRAME).encode()
        decoder = FrameDecoder()
        for i in range(len(frame) - 1):
            self.assertEqual(list(decoder.feed(frame[i : i + 1])), [])
        self.assertEqual(decoder.buffered, len(frame) - 1)
        self.assertEqual(list(decoder.feed(frame[-1:])), [wire.Data(1, b"x" * DEFAULT_MAX_FRAME)])
        self.assertEqual(decoder.buffered, 0)


# -- hello ------------------------------------------------------------------------------

NODE = "edge-1"
#: Keys a HELLO's info has, or had, or that a peer might try.
HELLO_KEYS = [
    "node", "ips", "servers", "window", "max_frame", "max_streams", "software",
    "server_id", "server_count",
]  # fmt: skip

huge = st.integers(1000, 20_000 * SCALE).map(lambda n: "x" * n)
jsonValues = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 65535, 65536, 16384, 16383, 2**24, 64, 65])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from([NODE, "EDGE-1", "edge-2", "10.0.0.7", "::1", "fd00::7", "127.0.0.3", ""])
    | huge,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)  # fmt: skip


@st.composite
def helloInfos(draw: st.DrawFn) -> dict[str, Any]:
    """A HELLO's info: plausible settings and claims, and wrong ones of any kind."""
    info: dict[str, Any] = {}
    if draw(st.booleans()):
        info = {"node": NODE, "ips": ["10.0.0.7"], "window": 1 << 20, "max_frame": 65536}
    keys = draw(st.lists(st.sampled_from(HELLO_KEYS) | st.text(max_size=10), max_size=6))
    for key in keys:
        info[key] = draw(jsonValues)
    return info


def helloBytes(info: dict[str, Any]) -> bytes:
    """The HELLO frame for C{info}, written as any peer could (not through L{Hello})."""
    return hello(json.dumps(info, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def sentFrames(transport: StringTransport) -> list[wire.Frame]:
    return list(FrameDecoder(wire.ABSOLUTE_MAX_FRAME).feed(transport.value()))


class HelloFuzzTests(SynchronousTestCase):
    """Whatever a peer says in its HELLO ends in a tunnel or in a refusal."""

    def assertEstablishedOrRefused(self, tunnel: Tunnel, transport: StringTransport) -> None:
        sent = sentFrames(transport)
        goaways = [f for f in sent if isinstance(f, GoAway)]
        if tunnel.version is None:
            self.assertEqual(len(goaways), 1, sent)
            self.assertNotEqual(goaways[0].code, ErrorCode.NO_ERROR)
            self.assertLessEqual(len(goaways[0].text.encode("utf-8")), MAX_REASON_TEXT)
            self.assertTrue(transport.disconnecting)
        else:
            self.assertEqual(goaways, [])
            self.assertFalse(transport.disconnecting)

    @fuzzing(120)
    @given(
        info=helloInfos(),
        certificateIPs=st.sampled_from([(), ("10.0.0.7",)]),
        byteAtATime=st.booleans(),
    )
    def test_server(
        self, info: dict[str, Any], certificateIPs: tuple[str, ...], byteAtATime: bool
    ) -> None:
        """
        The server takes an agent's HELLO (the settings, the node, its IPs,
        the servers it holds) or refuses it with a GOAWAY: no other outcome,
        nothing raised, no error logged.
        """
        identity = PeerIdentity(
            f"system:node:{NODE}", ipAddresses=certificateIPs, organizations=("system:nodes",)
        )
        server = TunnelServer(Clock(), None, identify=lambda transport: identity)
        tunnel = server.plainTunnelFactory().buildProtocol(IPv4Address("TCP", "10.0.0.7", 1))
        assert isinstance(tunnel, Tunnel)
        transport = StringTransport()
        data = helloBytes(info)
        with capturedLogs() as events:
            tunnel.makeConnection(transport)
            for chunk in [data[i : i + 1] for i in range(len(data))] if byteAtATime else [data]:
                if not transport.disconnecting:
                    tunnel.dataReceived(chunk)
        self.assertEqual(problems(events), [])
        self.assertEstablishedOrRefused(tunnel, transport)
        if tunnel.version is not None:
            self.assertEqual(server.registry.lookup(NODE).tunnel, tunnel)  # type: ignore[union-attr]

    @fuzzing(80)
    @given(infos=st.lists(helloInfos(), min_size=1, max_size=3))
    def test_agent(self, infos: list[dict[str, Any]]) -> None:
        """
        The agent takes each server's HELLO (settings, C{server_id},
        C{server_count}) or refuses it; whatever the servers said, its next
        HELLO is still a valid frame that fits a server's limit, and it
        holds at most as many tunnels as servers answered.
        """
        reactor = MemoryReactorClock()
        endpoint = FakeEndpoint(reactor)
        agent = TunnelAgent(
            reactor, None, ("127.0.0.1", 10262), NODE, ["10.0.0.7"],
            endpoint=endpoint, retryPolicy=RecordingPolicy(),
        )  # fmt: skip
        with capturedLogs() as events:
            agent.startService()
            for info in infos:
                reactor.advance(60)  # whatever the retry delay, the next dial is made
                if not endpoint.attempts or endpoint.attempts[-1][1].called:
                    break
                tunnel, transport = endpoint.answerWithoutHello()
                [ours] = list(FrameDecoder(DEFAULT_MAX_FRAME).feed(transport.value()))
                self.assertIsInstance(ours, Hello)
                transport.clear()
                tunnel.dataReceived(helloBytes({"window": 1 << 20, **info}))
                self.assertEstablishedOrRefused(tunnel, transport)
            self.assertLessEqual(len(agent._reconnector.tunnels), len(infos))
            agent.stopService()
        self.assertEqual(problems(events), [])


# -- http -------------------------------------------------------------------------------

#: Bytes that look like HTTP/1 closely enough to reach deep into a parser.
httpPieces = st.sampled_from(
    [
        b"GET", b"CONNECT", b"POST", b" ", b"  ", b"\t", b"/", b"*", b"http://a:1/", b"HTTP/1.1",
        b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b":", b"Host",
        b"host: a", b"Content-Length", b"content-length: 5", b"Content-Length: 1, 1",
        b"Transfer-Encoding: chunked", b"transfer-encoding: gzip, chunked", b"Connection: close",
        b"Upgrade: websocket", b"Expect: 100-continue", b"0", b"5", b"ffffffffffffffffffff",
        b"1;a=b", b";" + b"x" * 100, b"\x00", b"\x0b", b"\x80", b"\xff", b"a", b"=", b",",
        b"10.0.0.7:10250", b"[::1]:1", b"edge-1:10250",
    ]
)  # fmt: skip


@st.composite
def httpish(draw: st.DrawFn) -> bytes:
    return b"".join(draw(st.lists(httpPieces, max_size=60 * SCALE)))


@st.composite
def headerBombs(draw: st.DrawFn) -> bytes:
    """
    A request whose head or body framing is built to cost: many fields,
    long lines, folded lines, long chunk-size lines and chunk extensions,
    many tiny chunks.
    """
    method = draw(st.sampled_from([b"GET", b"POST", b"CONNECT"]))
    target = draw(st.sampled_from([b"/", b"edge-1:10250", b"/" + b"a" * 20_000]))
    head = method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n"
    line = draw(
        st.sampled_from(
            [b"X: y\r\n", b"X:\r\n", b"a:" + b" " * 200 + b"b\r\n", b" folded\r\n",
             b"\tfolded\r\n", b"X: " + b"y" * 5000 + b"\r\n", b"X-" + b"n" * 300 + b": v\r\n",
             b"Cookie: " + b"\x01" * 100 + b"\r\n", b"bad line\r\n", b"X: a\rb\r\n"]
        )
    )  # fmt: skip
    head += line * draw(st.integers(0, 400 * SCALE))
    body = b""
    if draw(st.booleans()):
        head += b"Transfer-Encoding: chunked\r\n"
        chunk = draw(
            st.sampled_from(
                [b"1\r\nx\r\n", b"1;" + b"e" * 1000 + b"\r\nx\r\n", b"0" * 50 + b"1\r\nx\r\n",
                 b"1" + b" " * 1000 + b"\r\nx\r\n", b"1;a=b;c=\"d\"\r\nx\r\n", b"f" * 30 + b"\r\n"]
            )
        )  # fmt: skip
        body = chunk * draw(st.integers(0, 300 * SCALE)) + b"0\r\n"
        body += b"Trailer: x\r\n" * draw(st.integers(0, 300 * SCALE)) + b"\r\n"
    return head + b"\r\n" + body


def validRequests() -> st.SearchStrategy[bytes]:
    return st.lists(test_h1.requests(), min_size=1, max_size=3).map(b"".join)


requestBytes = st.one_of(
    st.binary(max_size=300 * SCALE),
    httpish(),
    validRequests(),
    validRequests().flatmap(mutated),
    headerBombs(),
)


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """
    Where a fuzzed request is routed: each connection is a bare
    L{StringTransport}, answered by L{answer} with a small response.
    """

    def __init__(self) -> None:
        self.connected: list[tuple[IProtocol, StringTransport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 10250))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connected.append((protocol, transport))
        return succeed(protocol)

    def answer(self) -> None:
        for protocol, transport in self.connected:
            if transport.value() and not transport.disconnecting:
                protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
#: The most an error answer may take: a status line, a few fields, and a
#: reason bounded by the proxy (1000 characters, some escaped).
MAX_ERROR_RESPONSE = 8192


def assertAnswered(case: SynchronousTestCase, output: bytes, closing: bool) -> None:
    """
    What a client got is HTTP/1.1 responses; an error answer is bounded in
    size, and says 4xx or 5xx before the connection is closed.
    """
    if not output:
        return
    statuses = [int(m.group(1)) for m in _STATUS_LINE.finditer(output)]
    case.assertTrue(statuses and output.startswith(b"HTTP/1.1 "), output[:200])
    if statuses[-1] >= 400:
        last = output.rfind(b"HTTP/1.1 %d " % statuses[-1])
        case.assertLessEqual(len(output) - last, MAX_ERROR_RESPONSE)
        case.assertTrue(closing, output[-300:])


class HTTPFuzzTests(SynchronousTestCase):
    """The HTTP/1 parsers a client reaches: h1, the proxy engine, the CONNECT door."""

    @fuzzing(200)
    @given(data=requestBytes, points=splits, maxSize=st.sampled_from([64, 4096, 16384]))
    def test_h1Server(self, data: bytes, points: list[int], maxSize: int) -> None:
        """
        h1, reading requests: its own error and nothing else; while it
        waits for more, never more than C{max_incomplete_event_size} bytes
        held.
        """
        conn = h1.Connection(h1.SERVER, max_incomplete_event_size=maxSize)
        for chunk in reads(data, points):
            conn.receive_data(chunk)
            while True:
                try:
                    event = conn.next_event()
                except h1.RemoteProtocolError as e:
                    self.assertIn(e.error_status_hint, (400, 431, 501, 505))
                    self.assertLessEqual(len(str(e)), 3 * maxSize + 200)
                    return
                if event is h1.NEED_DATA:
                    self.assertLessEqual(len(conn.trailing_data[0]), maxSize)
                    break
                if event is h1.PAUSED or isinstance(event, h1.ConnectionClosed):
                    break
                if isinstance(event, h1.EndOfMessage):
                    conn.send(h1.Response(status_code=200, headers=[(b"Content-Length", b"0")]))
                    if conn.our_state is h1.SWITCHED_PROTOCOL:
                        return  # a 2xx to CONNECT: no longer HTTP
                    conn.send(h1.EndOfMessage())
                    if conn.our_state is h1.DONE and conn.their_state is h1.DONE:
                        conn.start_next_cycle()

    @fuzzing(200)
    @given(data=validRequests().flatmap(mutated) | httpish(), points=splits)
    def test_h1AgainstH11(self, data: bytes, points: list[int]) -> None:
        """
        Against h11, on bytes near valid requests: h1 gives the same events
        and states, or refuses where h11 went on, only for what h1 means to
        be stricter about (see C{tests/http/test_h1.py}); it never takes what
        h11 refuses.
        """
        chunks = reads(data, points)
        ours = test_h1.serve(h1, chunks, test_h1.sizedResponse)
        theirs = test_h1.serve(h11, chunks, test_h1.sizedResponse)
        if ours == theirs:
            return
        self.assertEqual(ours[-1][0], "error", (ours, theirs))
        self.assertEqual(ours[:-1], theirs[: len(ours) - 1], (ours, theirs))
        self.assertTrue(stricter(data), (data, ours, theirs))

    def proxy(self, router: Any, limits: Limits | None = None) -> tuple[Any, StringTransport]:
        factory = HTTPProxyFactory(router, Clock(), limits=limits or Limits())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.1.1", 5555))
        protocol.makeConnection(transport)
        return protocol, transport

    def feedLikeAReactor(
        self, protocol: Any, transport: StringTransport, chunks: list[bytes]
    ) -> int:
        """Feed C{chunks} while the connection reads; how many bytes were taken."""
        taken = 0
        for chunk in chunks:
            if transport.disconnecting or transport.producerState == "paused":
                break
            protocol.dataReceived(chunk)
            taken += len(chunk)
        return taken

    @fuzzing(150)
    @given(data=requestBytes, points=splits, refuse=st.booleans())
    def test_proxy(self, data: bytes, points: list[int], refuse: bool) -> None:
        """
        The proxy engine, routing to a refusal or to an upstream that
        answers: nothing raised, nothing logged as an error, answers that
        are HTTP and bounded, and a 4xx or 5xx only before a close.
        """
        upstream = StringEndpoint()

        def router(head: Any, peer: Any) -> Route:
            if refuse:
                raise RouteRefused(404, "no such node")
            return Route(key="edge-1", endpoint=upstream)

        protocol, transport = self.proxy(router)
        with capturedLogs() as events:
            self.feedLikeAReactor(protocol, transport, cut(data, points))
            upstream.answer()
            if not transport.disconnecting:
                protocol.readConnectionLost()
        self.assertEqual(problems(events), [])
        assertAnswered(self, transport.value(), transport.disconnecting)

    @fuzzing(100)
    @given(data=requestBytes, points=splits, chunkSize=st.sampled_from([1, 7, 1024, 65536]))
    def test_proxyHoldsBoundedBytes(self, data: bytes, points: list[int], chunkSize: int) -> None:
        """
        While a request is being routed (a router that never answers), a
        client that keeps sending is stopped (paused, or answered and
        closed) before it has sent two heads' worth and one read more.
        """
        limits = Limits(maxHeaderBytes=4096)
        protocol, transport = self.proxy(lambda head, peer: Deferred(), limits)
        flood = data + b"x" * (3 * limits.maxHeaderBytes + chunkSize)
        chunks = [flood[i : i + chunkSize] for i in range(0, len(flood), chunkSize)]
        with capturedLogs() as events:
            taken = self.feedLikeAReactor(protocol, transport, chunks)
        self.assertEqual(problems(events), [])
        self.assertLessEqual(taken, 2 * limits.maxHeaderBytes + chunkSize + len(data) // 2 + 1)
        self.assertTrue(transport.disconnecting or transport.producerState == "paused")

    @fuzzing(150)
    @given(data=requestBytes, points=splits)
    def test_connectDoor(self, data: bytes, points: list[int]) -> None:
        """
        The CONNECT door: no agent is connected, so every request ends in a
        bounded 4xx or 5xx and a close, or waits for more of its head.
        """
        server = TunnelServer(Clock(), None)
        door = ConnectDoorFactory(server)
        protocol = door.buildProtocol(None)
        transport = StringTransport()
        with capturedLogs() as events:
            protocol.makeConnection(transport)
            taken = self.feedLikeAReactor(protocol, transport, cut(data, points))
        self.assertEqual(problems(events), [])
        assertAnswered(self, transport.value(), transport.disconnecting)
        if not transport.disconnecting:
            self.assertLessEqual(taken, door.maxHeadSize + max(map(len, cut(data, points))))

    @fuzzing(200)
    @given(raw=st.binary(max_size=100 * SCALE) | httpish() | st.text(max_size=300).map(str.encode))
    def test_connectTarget(self, raw: bytes) -> None:
        """A CONNECT target is a node and a port, or a one-line bounded refusal."""
        try:
            target = parseTarget(raw)
        except BadTarget as e:
            self.assertLessEqual(len(str(e)), 300)
            self.assertNotIn("\n", str(e))
        else:
            self.assertIsInstance(target, ConnectTarget)
            self.assertTrue(1 <= target.port <= 65535)
            self.assertEqual(parseTarget(str(target).encode()), target)


class FoundByFuzzingTests(SynchronousTestCase):
    """
    What the campaign (C{make fuzz}) found, each pinned by its minimal
    example, so that it stays fixed whatever the derandomized examples
    above happen to reach.
    """

    def test_connectDoorEmptyRead(self) -> None:
        """
        An empty read is not the end of the input: the CONNECT door spun the
        reactor for ever on it (h11 took C{b""} for EOF, then answered
        C{ConnectionClosed} on every call).  It is ignored, and the request
        that follows is read as usual.
        """
        door = ConnectDoorFactory(TunnelServer(Clock(), None))
        protocol = door.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"")
        protocol.dataReceived(b"CONNECT edge-1:10250 HTTP/1.1\r\nHost: edge-1:10250\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())

    def test_proxyEmptyRead(self) -> None:
        """
        The proxy engine took an empty read for the client's EOF too, and the
        next read raised C{RuntimeError} out of C{dataReceived}.
        """
        upstream = StringEndpoint()
        protocol, transport = HTTPFuzzTests("test_proxy").proxy(
            lambda head, peer: Route(key="edge-1", endpoint=upstream)
        )
        with capturedLogs() as events:
            protocol.dataReceived(b"GET / HTTP/1.1\r\n")
            protocol.dataReceived(b"")
            protocol.dataReceived(b"Host: edge-1\r\n\r\n")
            upstream.answer()
        self.assertEqual(problems(events), [])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_routingPausesAfterOneRead(self) -> None:
        """
        A read that completes a request head and carries more than a head's
        worth behind it stops reading while the route is found: the engine
        took the next read whole as well.
        """
        limits = Limits(maxHeaderBytes=4096)
        protocol, transport = HTTPFuzzTests("test_proxy").proxy(
            lambda head, peer: Deferred(), limits
        )
        protocol.dataReceived(b"! ! HTTP/1.0\n\n" + b"x" * 65522)
        self.assertEqual(transport.producerState, "paused")

    def test_boundedCodecErrors(self) -> None:
        """h1's errors quoted the whole offending line, however long."""
        conn = h1.Connection(h1.SERVER, max_incomplete_event_size=64)
        conn.receive_data(b"\x00" * 94 + b"\n\n")
        with self.assertRaises(h1.RemoteProtocolError) as raised:
            conn.next_event()
        self.assertLessEqual(len(str(raised.exception)), 3 * 64 + 200)

    def test_boundedTargetErrors(self) -> None:
        """A CONNECT target's refusal quoted the whole node part, however long."""
        with self.assertRaises(BadTarget) as raised:
            parseTarget(b"!" * 4000 + b":10250")
        self.assertLessEqual(len(str(raised.exception)), 300)


def stricter(data: bytes) -> bool:
    """
    Whether C{data} holds something h1 refuses on purpose where h11 is
    lenient (tests/http/test_h1.py's C{STRICTER}).
    """
    lowered = data.lower()
    return bool(
        (b"content-length" in lowered and b"transfer-encoding" in lowered)
        or re.search(rb"\n[ \t]", data)
        or re.search(rb"HTTP/(?!1\.)[0-9]\.[0-9]", data)
        or re.search(rb"HTTP/1\.[2-9]", data)
    )


# -- config -----------------------------------------------------------------------------

#: The longest a ConfigError may be (its path aside): one log line.
MAX_CONFIG_ERROR = 1200

configValues = st.one_of(
    st.text(max_size=40),
    st.lists(
        st.one_of(
            st.integers(-1, 70000).map(str),
            st.sampled_from(["10250", "10255", "9100", "10264", "", " ", "1e3", "0x10", "٣"]),
            st.tuples(st.integers(0, 70000), st.sampled_from([10264, 1, 99999])).map(
                lambda p: f"{p[0]}={p[1]}"
            ),
            st.sampled_from(["9100=metrics-only", "9100=os:abort", "1=x=y", "=", "9100="]),
        ),
        max_size=8,
    ).map(lambda items: ", ".join(items)),
    huge,
)
configData = st.dictionaries(
    st.sampled_from(config.KNOWN_KEYS) | st.text(max_size=20) | huge, configValues, max_size=7
)


def yamlScalar(value: str) -> str:
    return json.dumps(value)


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    """A ConfigMap manifest, or something near one."""
    data = draw(configData)
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: edge-tunnel", "data:"]
    lines += [f"  {yamlScalar(k)}: {yamlScalar(v)}" for k, v in data.items()]
    text = "\n".join(draw(st.permutations(lines))) if draw(st.booleans()) else "\n".join(lines)
    return draw(mutated(text.encode("utf-8", "surrogatepass")))


#: YAML's pieces, for text that is YAML-ish rather than a manifest.
yamlPieces = st.sampled_from(
    [
        "apiVersion: v1\n", "kind: ConfigMap\n", "data:\n", "  ", "- ", "? ", ": ", "&a ", "*a",
        "!!str ", "!!python/object:os.system ", "!!binary ", "{", "}", "[", "]", ",", "'", '"',
        "|\n", ">\n", "---\n", "...\n", "#", "%YAML 1.1\n", "<<: *a\n", "http-proxy-ports: ",
        "9100", "10250", "null", "true", "~", "1e3", "0x1F", "\t", "\n", "\ufeff", "\x00", "\x85",
    ]
)  # fmt: skip


@st.composite
def yamlish(draw: st.DrawFn) -> bytes:
    return "".join(draw(st.lists(yamlPieces, max_size=60 * SCALE))).encode(
        "utf-8", "surrogatepass"
    )


class ConfigFuzzTests(SynchronousTestCase):
    """
    Whatever the ConfigMap holds (whoever may edit it wrote it), it is
    read as a configuration or refused with one bounded L{ConfigError}.
    """

    def assertConfigOrRefusal(self, read: Callable[[], object], path: str = "") -> None:
        try:
            result = read()
        except config.ConfigError as e:
            message = str(e)
            self.assertLessEqual(len(message), MAX_CONFIG_ERROR + len(path), message[:300])
            self.assertNotIn("\n", message)
        else:
            self.assertIsInstance(result, config.ProxyConfig)

    @fuzzing(200)
    @given(data=configData)
    def test_data(self, data: dict[str, str]) -> None:
        self.assertConfigOrRefusal(
            lambda: config.parseConfigData(data, resolvePolicy=refuseUnknownPolicies)
        )

    @fuzzing(150)
    @given(content=manifests() | yamlish() | st.binary(max_size=200))
    def test_manifest(self, content: bytes) -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "config.yaml")
            with open(path, "wb") as f:
                f.write(content)
            self.assertConfigOrRefusal(lambda: config.loadConfig(path), path)

    @fuzzing(60)
    @given(
        files=st.dictionaries(
            st.sampled_from(config.KNOWN_KEYS)
            | st.text(st.characters(exclude_characters="/\x00"), min_size=1, max_size=20).filter(
                lambda name: name not in (".", "..")
            ),
            configValues.map(lambda v: v.encode("utf-8", "surrogatepass"))
            | st.binary(max_size=50),
            max_size=6,
        )
    )
    def test_directory(self, files: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            for name, content in files.items():
                try:
                    with open(os.path.join(directory, name), "wb") as f:
                        f.write(content)
                except (OSError, ValueError):
                    pass  # a name this file system refuses
            self.assertConfigOrRefusal(lambda: config.loadConfig(directory), directory)


def refuseUnknownPolicies(name: str) -> object:
    """A policy look-up that knows one name, as the server's does (no imports)."""
    if name != "metrics-only":
        raise LookupError(f"no policy named {name[:40]!r}")
    return object()
