# -*- test-case-name: tests.wire.test_wire -*-
"""
Tests for L{twisted_tunnel.wire}, the sans-IO frame codec.

Expected bytes are written out by hand from the frame layout in
C{docs/protocol.md}, not computed with the codec's own C{struct}s, so that
the tests pin the wire format rather than the implementation.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.wire import (
    ABSOLUTE_MAX_FRAME,
    CLOSE_FINAL,
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAX_HOST_LENGTH,
    MAX_REASON_TEXT,
    MAX_STREAM_ID,
    Close,
    Data,
    Eof,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    GoAway,
    Hello,
    Open,
    OpenFail,
    OpenFailReason,
    OpenOk,
    Ping,
    Pong,
    ProtocolError,
    Reset,
    Window,
    dataHeader,
    decodeAll,
)

PROTOCOL_DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

_propertySettings = settings(max_examples=200, deadline=None)


def _raw(kind: int, streamId: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """
    A frame built field by field, valid or not: the header's length is the
    payload's.
    """
    return struct.pack("!IBBI", len(payload), kind, flags, streamId) + payload


def _split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """
    C{data} cut at the given offsets (in any order, repeats allowed, so that
    empty chunks are fed too).
    """
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def _feedAll(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Frame]:
    frames: list[Frame] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    return frames


def _collect(decoder: FrameDecoder, chunks: Iterable[bytes], into: list[Frame]) -> None:
    """
    Like L{_feedAll}, but keeps what was decoded when an error is raised.
    """
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            into.append(frame)


def _byteAtATime(data: bytes, maxFrame: int = DEFAULT_MAX_FRAME) -> list[Frame]:
    return _feedAll(FrameDecoder(maxFrame), (data[i : i + 1] for i in range(len(data))))


#: One of every frame type, for the chunking tests.
SESSION: list[Frame] = [
    Hello(1, 1, {"node": "edge-1", "window": 1 << 20}),
    Open(1, "127.0.0.1", 10250),
    OpenOk(1),
    Data(1, b"GET / HTTP/1.1\r\n\r\n"),
    Window(1, 18),
    Eof(1),
    Close(1),
    Close(1, final=True),
    Open(3, "localhost", 22),
    OpenFail(3, OpenFailReason.REFUSED, "connection refused"),
    Open(5, "db", 5432),
    OpenOk(5),
    Reset(5, ErrorCode.CANCEL, "caller went away \N{SNOWMAN}"),
    Ping(b"\x00\x01\x02\x03\x04\x05\x06\x07"),
    Pong(b"\x00\x01\x02\x03\x04\x05\x06\x07"),
    Data(MAX_STREAM_ID, b""),
    GoAway(ErrorCode.SHUTTING_DOWN, "restarting"),
]


class EncodingTests(SynchronousTestCase):
    """
    Each frame type encodes to the bytes the layout says, and those bytes
    decode back to an equal frame.
    """

    def assertWire(self, frame: Frame, wire: bytes) -> None:
        self.assertEqual(frame.encode(), wire)
        self.assertEqual(decodeAll(wire), [frame])
        self.assertEqual(_byteAtATime(wire), [frame])

    def test_hello(self) -> None:
        self.assertWire(
            Hello(1, 2, {"node": "n1"}),
            b'\x00\x00\x00\x11\x00\x00\x00\x00\x00\x00\x00\x01\x00\x02{"node":"n1"}',
        )

    def test_helloEmptyInfo(self) -> None:
        self.assertWire(Hello(1, 1), b"\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01{}")

    def test_helloWithoutInfo(self) -> None:
        """
        A HELLO payload of just the two versions means an empty C{info}.
        """
        self.assertEqual(
            decodeAll(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x01\x00\x03"),
            [Hello(1, 3, {})],
        )

    def test_helloInfoAnyLayout(self) -> None:
        """
        Whitespace and key order in C{info} are free: peers need not encode
        JSON the way this codec does.
        """
        body = b'\x00\x01\x00\x01 { "b" : [1, 2.5, null, true],\n "a" : "\\u00e9" } '
        self.assertEqual(
            decodeAll(_raw(0x00, 0, body)),
            [Hello(1, 1, {"a": "\N{LATIN SMALL LETTER E WITH ACUTE}", "b": [1, 2.5, None, True]})],
        )

    def test_open(self) -> None:
        self.assertWire(
            Open(3, "10.0.0.1", 10250),
            b"\x00\x00\x00\x0a\x01\x00\x00\x00\x00\x03\x28\x0a10.0.0.1",
        )

    def test_openLongestHost(self) -> None:
        host = "h" * MAX_HOST_LENGTH
        self.assertWire(
            Open(5, host, 65535),
            b"\x00\x00\x01\x01\x01\x00\x00\x00\x00\x05\xff\xff" + b"h" * 255,
        )

    def test_openOk(self) -> None:
        self.assertWire(OpenOk(3), b"\x00\x00\x00\x00\x02\x00\x00\x00\x00\x03")

    def test_openFail(self) -> None:
        self.assertWire(
            OpenFail(3, OpenFailReason.REFUSED, "no"),
            b"\x00\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x02no",
        )

    def test_openFailUnicodeText(self) -> None:
        self.assertWire(
            OpenFail(4, OpenFailReason.INTERNAL, "\N{LATIN SMALL LETTER E WITH ACUTE}"),
            b"\x00\x00\x00\x04\x03\x00\x00\x00\x00\x04\x00\x08\xc3\xa9",
        )

    def test_openFailUnknownReason(self) -> None:
        """
        Reasons from a newer peer decode as plain integers.
        """
        self.assertWire(OpenFail(3, 0xBEEF), b"\x00\x00\x00\x02\x03\x00\x00\x00\x00\x03\xbe\xef")

    def test_data(self) -> None:
        self.assertWire(Data(7, b"abc"), b"\x00\x00\x00\x03\x04\x00\x00\x00\x00\x07abc")

    def test_dataEmptyOnLargestStream(self) -> None:
        self.assertWire(Data(MAX_STREAM_ID, b""), b"\x00\x00\x00\x00\x04\x00\x7f\xff\xff\xff")

    def test_window(self) -> None:
        self.assertWire(
            Window(7, 65536), b"\x00\x00\x00\x04\x05\x00\x00\x00\x00\x07\x00\x01\x00\x00"
        )

    def test_windowLargest(self) -> None:
        self.assertWire(
            Window(8, 2**32 - 1), b"\x00\x00\x00\x04\x05\x00\x00\x00\x00\x08\xff\xff\xff\xff"
        )

    def test_eof(self) -> None:
        self.assertWire(Eof(7), b"\x00\x00\x00\x00\x06\x00\x00\x00\x00\x07")

    def test_close(self) -> None:
        self.assertWire(Close(7), b"\x00\x00\x00\x00\x07\x00\x00\x00\x00\x07")

    def test_closeFinal(self) -> None:
        """CLOSE FINAL (version 2) is bit 0 of the flags byte."""
        self.assertWire(Close(7, final=True), b"\x00\x00\x00\x00\x07\x01\x00\x00\x00\x07")
        self.assertEqual(CLOSE_FINAL, 0x01)

    def test_reset(self) -> None:
        self.assertWire(
            Reset(7, ErrorCode.CANCEL, "bye"),
            b"\x00\x00\x00\x05\x08\x00\x00\x00\x00\x07\x00\x0abye",
        )

    def test_ping(self) -> None:
        self.assertWire(
            Ping(b"\x01\x02\x03\x04\x05\x06\x07\x08"),
            b"\x00\x00\x00\x08\x09\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08",
        )

    def test_pong(self) -> None:
        self.assertWire(
            Pong(b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"),
            b"\x00\x00\x00\x08\x0a\x00\x00\x00\x00\x00\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
        )

    def test_goAway(self) -> None:
        self.assertWire(
            GoAway(ErrorCode.REPLACED, "new conn"),
            b"\x00\x00\x00\x0a\x0b\x00\x00\x00\x00\x00\x00\x08new conn",
        )

    def test_goAwayNoText(self) -> None:
        self.assertWire(
            GoAway(ErrorCode.NO_ERROR), b"\x00\x00\x00\x02\x0b\x00\x00\x00\x00\x00\x00\x00"
        )

    def test_everyTypeCovered(self) -> None:
        """
        The chunking tests' session holds every frame type, and the type
        numbers are the documented ones.
        """
        self.assertEqual({f.TYPE for f in SESSION}, set(FrameType))
        self.assertEqual([int(t) for t in FrameType], list(range(12)))

    def test_flagsIgnored(self) -> None:
        """
        The flags byte is reserved but for CLOSE's FINAL bit: senders write
        0, receivers ignore the rest of it.
        """
        for frame in SESSION:
            if frame != Close(1, final=True):
                self.assertEqual(frame.encode()[5], 0, frame)
        self.assertEqual(decodeAll(_raw(0x04, 1, b"x", flags=0xFF)), [Data(1, b"x")])
        self.assertEqual(decodeAll(_raw(0x09, 0, b"12345678", flags=0x80)), [Ping(b"12345678")])
        self.assertEqual(decodeAll(_raw(0x07, 1, flags=0xFE)), [Close(1)])
        self.assertEqual(decodeAll(_raw(0x07, 1, flags=0xFF)), [Close(1, final=True)])
        self.assertEqual(decodeAll(_raw(0x06, 1, flags=0x01)), [Eof(1)])

    def test_dataHeader(self) -> None:
        self.assertEqual(dataHeader(7, 3), b"\x00\x00\x00\x03\x04\x00\x00\x00\x00\x07")
        self.assertEqual(dataHeader(9, 5) + b"hello", Data(9, b"hello").encode())
        self.assertEqual(len(dataHeader(1, 0)), HEADER_SIZE)


class ReasonTextTests(SynchronousTestCase):
    """
    Texts longer than L{MAX_REASON_TEXT} bytes are clipped on encode, on a
    character boundary, so the frame stays valid.
    """

    def assertClipped(self, frame: Frame, expectedText: str) -> None:
        wire = frame.encode()
        textBytes = wire[HEADER_SIZE + 2 :]
        self.assertLessEqual(len(textBytes), MAX_REASON_TEXT)
        self.assertEqual(textBytes, expectedText.encode("utf-8"))
        [decoded] = decodeAll(wire)
        self.assertEqual(decoded.text, expectedText)  # type: ignore[attr-defined]

    def test_exactLimitKept(self) -> None:
        text = "x" * MAX_REASON_TEXT
        self.assertClipped(GoAway(ErrorCode.PROTOCOL_ERROR, text), text)

    def test_asciiClipped(self) -> None:
        self.assertClipped(Reset(1, ErrorCode.CANCEL, "y" * 5000), "y" * 1024)

    def test_twoByteCharacters(self) -> None:
        e = "\N{LATIN SMALL LETTER E WITH ACUTE}"
        # 1200 bytes; 1024 is a character boundary.
        self.assertClipped(OpenFail(1, OpenFailReason.REFUSED, e * 600), e * 512)
        # 1201 bytes; byte 1024 falls inside a character, which is dropped.
        self.assertClipped(Reset(1, ErrorCode.CANCEL, "a" + e * 600), "a" + e * 511)

    def test_threeByteCharacters(self) -> None:
        euro = "\N{EURO SIGN}"
        self.assertClipped(GoAway(ErrorCode.INTERNAL_ERROR, euro * 400), euro * 341)

    def test_fourByteCharacters(self) -> None:
        face = "\N{GRINNING FACE}"
        for prefix in ("", "a", "ab", "abc"):
            kept = (MAX_REASON_TEXT - len(prefix)) // 4
            self.assertClipped(
                OpenFail(2, OpenFailReason.TIMEOUT, prefix + face * 300), prefix + face * kept
            )
            self.assertClipped(
                Reset(2, ErrorCode.CANCEL, prefix + face * 300), prefix + face * kept
            )
            self.assertClipped(
                GoAway(ErrorCode.NO_ERROR, prefix + face * 300), prefix + face * kept
            )


class MalformedFrameTests(SynchronousTestCase):
    """
    Every rule of the codec, broken once: each gives L{ProtocolError} with
    the right code, whether the bytes come in one chunk or one at a time.
    """

    def assertRejected(
        self,
        wire: bytes,
        code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
        maxFrame: int = DEFAULT_MAX_FRAME,
    ) -> ProtocolError:
        error = self.assertRaises(ProtocolError, list, FrameDecoder(maxFrame).feed(wire))
        self.assertEqual(error.code, code)
        self.assertEqual(error.text, str(error))
        self.assertTrue(error.text)
        error = self.assertRaises(ProtocolError, _byteAtATime, wire, maxFrame)
        self.assertEqual(error.code, code)
        return error

    def test_frameTooLarge(self) -> None:
        header = struct.pack("!IBBI", DEFAULT_MAX_FRAME + 1, 0x04, 0, 1)
        self.assertRejected(header, ErrorCode.FRAME_TOO_LARGE)

    def test_frameTooLargeOnHeaderAlone(self) -> None:
        """
        An oversized frame is refused as soon as its header is complete,
        before (and without buffering) its payload.
        """
        decoder = FrameDecoder(100)
        header = struct.pack("!IBBI", 101, 0x04, 0, 1)
        self.assertEqual(list(decoder.feed(header[:-1])), [])
        error = self.assertRaises(ProtocolError, list, decoder.feed(header[-1:]))
        self.assertEqual(error.code, ErrorCode.FRAME_TOO_LARGE)

    def test_frameAtLimit(self) -> None:
        """
        A payload of exactly C{maxFrame} bytes is allowed.
        """
        decoder = FrameDecoder(100)
        self.assertEqual(list(decoder.feed(_raw(0x04, 1, b"z" * 100))), [Data(1, b"z" * 100)])
        self.assertEqual(
            decodeAll(_raw(0x04, 1, b"z" * DEFAULT_MAX_FRAME), DEFAULT_MAX_FRAME),
            [Data(1, b"z" * DEFAULT_MAX_FRAME)],
        )

    def test_frameTooLargeAnyType(self) -> None:
        """
        The size check comes first, whatever the type or stream.
        """
        for kind, streamId in [(0x00, 0), (0x0B, 0), (0x0C, 0), (0xFF, 2**32 - 1)]:
            self.assertRejected(
                struct.pack("!IBBI", 2**32 - 1, kind, 0, streamId), ErrorCode.FRAME_TOO_LARGE
            )

    def test_frameTooLargeForAbsoluteLimit(self) -> None:
        self.assertRejected(
            struct.pack("!IBBI", ABSOLUTE_MAX_FRAME + 1, 0x04, 0, 1),
            ErrorCode.FRAME_TOO_LARGE,
            maxFrame=ABSOLUTE_MAX_FRAME,
        )

    def test_unknownType(self) -> None:
        for kind in (0x0C, 0x0F, 0x80, 0xFF):
            self.assertRejected(_raw(kind, 1, b""))
            self.assertRejected(_raw(kind, 0, b"payload"))

    def test_connectionFrameOnStream(self) -> None:
        self.assertRejected(_raw(0x00, 1, b"\x00\x01\x00\x01{}"))
        self.assertRejected(_raw(0x09, 2, b"12345678"))
        self.assertRejected(_raw(0x0A, 3, b"12345678"))
        self.assertRejected(_raw(0x0B, MAX_STREAM_ID, b"\x00\x00"))

    def test_streamFrameOnStreamZero(self) -> None:
        self.assertRejected(_raw(0x01, 0, b"\x00\x50example.com"))
        self.assertRejected(_raw(0x02, 0))
        self.assertRejected(_raw(0x03, 0, b"\x00\x01"))
        self.assertRejected(_raw(0x04, 0, b"data"))
        self.assertRejected(_raw(0x05, 0, b"\x00\x00\x00\x01"))
        self.assertRejected(_raw(0x06, 0))
        self.assertRejected(_raw(0x07, 0))
        self.assertRejected(_raw(0x08, 0, b"\x00\x00"))

    def test_streamIdOutOfRange(self) -> None:
        for streamId in (MAX_STREAM_ID + 1, 2**32 - 1):
            self.assertRejected(_raw(0x04, streamId, b"x"))
            self.assertRejected(_raw(0x07, streamId))
            self.assertRejected(_raw(0x09, streamId, b"12345678"))

    def test_fixedSizePayloads(self) -> None:
        self.assertRejected(_raw(0x02, 1, b"\x00"))
        self.assertRejected(_raw(0x05, 1, b"\x00\x00\x01"))
        self.assertRejected(_raw(0x05, 1, b"\x00\x00\x00\x01\x00"))
        self.assertRejected(_raw(0x05, 1, b""))
        self.assertRejected(_raw(0x06, 1, b"\x00"))
        self.assertRejected(_raw(0x07, 1, b"\x00"))
        for kind in (0x09, 0x0A):
            self.assertRejected(_raw(kind, 0, b""))
            self.assertRejected(_raw(kind, 0, b"1234567"))
            self.assertRejected(_raw(kind, 0, b"123456789"))

    def test_shortPayloads(self) -> None:
        self.assertRejected(_raw(0x00, 0, b""))
        self.assertRejected(_raw(0x00, 0, b"\x00\x01\x00"))
        self.assertRejected(_raw(0x01, 1, b""))
        self.assertRejected(_raw(0x01, 1, b"\x00\x50"))  # a port but no host
        for kind, streamId in [(0x03, 1), (0x08, 1), (0x0B, 0)]:
            self.assertRejected(_raw(kind, streamId, b""))
            self.assertRejected(_raw(kind, streamId, b"\x00"))

    def test_zeroWindow(self) -> None:
        self.assertRejected(_raw(0x05, 1, b"\x00\x00\x00\x00"))

    def test_openPortZero(self) -> None:
        self.assertRejected(_raw(0x01, 1, b"\x00\x00localhost"))

    def test_openHostNotAscii(self) -> None:
        self.assertRejected(_raw(0x01, 1, b"\x00\x50h\xc3\xa9.example"))
        self.assertRejected(_raw(0x01, 1, b"\x00\x50\xff"))

    def test_openHostTooLong(self) -> None:
        self.assertRejected(_raw(0x01, 1, b"\x00\x50" + b"h" * (MAX_HOST_LENGTH + 1)))

    def test_textsNotUtf8(self) -> None:
        for bad in (b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"):
            self.assertRejected(_raw(0x03, 1, b"\x00\x02" + bad))
            self.assertRejected(_raw(0x08, 1, b"\x00\x0a" + bad))
            self.assertRejected(_raw(0x0B, 0, b"\x00\x01" + bad))

    def test_textsTooLong(self) -> None:
        text = b"t" * (MAX_REASON_TEXT + 1)
        self.assertRejected(_raw(0x03, 1, b"\x00\x02" + text))
        self.assertRejected(_raw(0x08, 1, b"\x00\x0a" + text))
        self.assertRejected(_raw(0x0B, 0, b"\x00\x01" + text))
        # The limit itself is fine.
        self.assertEqual(
            decodeAll(_raw(0x0B, 0, b"\x00\x01" + text[:-1])),
            [GoAway(1, "t" * MAX_REASON_TEXT)],
        )

    def test_helloBadJson(self) -> None:
        for info in (b"{", b'{"a":}', b"{'a': 1}", b" ", b"\xef\xbb\xbf{}", b"{}}"):
            self.assertRejected(_raw(0x00, 0, b"\x00\x01\x00\x01" + info))

    def test_helloInfoNotUtf8(self) -> None:
        self.assertRejected(_raw(0x00, 0, b'\x00\x01\x00\x01{"a":"\xff"}'))

    def test_helloInfoNotAnObject(self) -> None:
        for info in (b"[]", b"1", b'"node"', b"null", b"true", b'[{"node":"n"}]'):
            self.assertRejected(_raw(0x00, 0, b"\x00\x01\x00\x01" + info))

    def test_helloEmptyVersionRange(self) -> None:
        self.assertRejected(_raw(0x00, 0, b"\x00\x02\x00\x01{}"))
        self.assertRejected(_raw(0x00, 0, b"\xff\xff\x00\x00"))

    # A deeply nested HELLO made json.loads raise RecursionError, not ProtocolError.
    def test_helloDeeplyNestedInfo(self) -> None:
        for info in (b'{"a":' + b"[" * 5000, b'{"a":' * 5000):
            decoder = FrameDecoder()
            # Not assertRaises: it would turn the RecursionError into a FailTest.
            try:
                list(decoder.feed(_raw(0x00, 0, b"\x00\x01\x00\x01" + info)))
            except ProtocolError as e:
                self.assertEqual(e.code, ErrorCode.PROTOCOL_ERROR)
            else:
                self.fail("deeply nested HELLO info accepted")
            self.assertRaises(ProtocolError, lambda d=decoder: list(d.feed(b"")))

    # Found by tests/package/test_fuzz.py: both decoded into a Hello whose encode()
    # raised ValueError (and whose text no UTF-8 log writer can write).
    def test_helloNumberOutOfRange(self) -> None:
        """
        A number too large for a double would become infinity, which is
        not JSON: refused.  The largest double is taken.
        """
        for number in (b"1e999", b"-1e999", b"1.5e400", b"-2e308"):
            self.assertRejected(_raw(0x00, 0, b'\x00\x01\x00\x01{"window":' + number + b"}"))
        [hello] = decodeAll(_raw(0x00, 0, b'\x00\x01\x00\x01{"a":1.7976931348623157e308}'))
        self.assertEqual(hello, Hello(1, 1, {"a": 1.7976931348623157e308}))
        self.assertEqual(decodeAll(hello.encode()), [hello])

    def test_helloLoneSurrogate(self) -> None:
        """
        A string escape that spells half a surrogate pair is refused; a
        whole pair is the character it spells.
        """
        for text in (b'"\\ud800"', b'"\\uDFFF x"', b'"a\\udc00\\ud800"', b'["\\ud83d"]'):
            self.assertRejected(_raw(0x00, 0, b'\x00\x01\x00\x01{"node":' + text + b"}"))
        [hello] = decodeAll(_raw(0x00, 0, b'\x00\x01\x00\x01{"node":"\\ud83d\\ude00\\u00e9"}'))
        self.assertEqual(
            hello, Hello(1, 1, {"node": "\N{GRINNING FACE}\N{LATIN SMALL LETTER E WITH ACUTE}"})
        )

    def test_trailingBytes(self) -> None:
        self.assertRaises(ProtocolError, decodeAll, Eof(1).encode() + b"\x00\x00")


class DecoderTests(SynchronousTestCase):
    """
    L{FrameDecoder} yields the same frames however the bytes are split,
    parses lazily, and stays poisoned after an error.
    """

    def test_byteAtATime(self) -> None:
        wire = b"".join(f.encode() for f in SESSION)
        self.assertEqual(list(FrameDecoder().feed(wire)), SESSION)
        self.assertEqual(_byteAtATime(wire), SESSION)

    def test_randomSplits(self) -> None:
        wire = b"".join(f.encode() for f in SESSION)
        rng = random.Random(20241026)
        for _ in range(200):
            cuts = [rng.randrange(len(wire) + 1) for _ in range(rng.randrange(1, 30))]
            decoder = FrameDecoder()
            self.assertEqual(_feedAll(decoder, _split(wire, cuts)), SESSION)
            self.assertEqual(decoder.buffered, 0)

    def test_buffered(self) -> None:
        decoder = FrameDecoder()
        wire = Data(1, b"abcdef").encode()
        self.assertEqual(list(decoder.feed(wire[:4])), [])
        self.assertEqual(decoder.buffered, 4)
        self.assertEqual(list(decoder.feed(wire[4:-1])), [])
        self.assertEqual(decoder.buffered, len(wire) - 1)
        self.assertEqual(list(decoder.feed(wire[-1:])), [Data(1, b"abcdef")])
        self.assertEqual(decoder.buffered, 0)

    def test_poisoned(self) -> None:
        """
        After a L{ProtocolError}, every later C{feed}, even of valid bytes or
        of nothing, raises the same error.
        """
        decoder = FrameDecoder()
        first = self.assertRaises(ProtocolError, list, decoder.feed(_raw(0x0C, 1)))
        for more in (b"", Eof(1).encode(), b"\x00"):
            again = self.assertRaises(ProtocolError, lambda m=more: list(decoder.feed(m)))
            self.assertIs(again, first)
            self.assertEqual(again.code, ErrorCode.PROTOCOL_ERROR)

    def test_poisonedByFrameTooLarge(self) -> None:
        decoder = FrameDecoder(10)
        first = self.assertRaises(ProtocolError, list, decoder.feed(_raw(0x04, 1, b"x" * 11)))
        again = self.assertRaises(ProtocolError, lambda: list(decoder.feed(Eof(1).encode())))
        self.assertIs(again, first)
        self.assertEqual(again.code, ErrorCode.FRAME_TOO_LARGE)

    def test_goodFramesBeforeError(self) -> None:
        """
        Frames before a bad one are yielded before the error is raised.
        """
        good = [OpenOk(1), Data(1, b"hi"), Ping(b"\x00" * 8)]
        wire = b"".join(f.encode() for f in good) + _raw(0x05, 1, b"\x00\x00\x00\x00")
        wire += Eof(1).encode()
        for chunks in ([wire], [wire[i : i + 1] for i in range(len(wire))]):
            seen: list[Frame] = []
            self.assertRaises(ProtocolError, _collect, FrameDecoder(), chunks, seen)
            self.assertEqual(seen, good)

    def test_goodFramesBeforeOversizedHeader(self) -> None:
        decoder = FrameDecoder(16)
        wire = Eof(1).encode() + struct.pack("!IBBI", 17, 0x04, 0, 1)
        frames = decoder.feed(wire)
        self.assertEqual(next(frames), Eof(1))
        error = self.assertRaises(ProtocolError, next, frames)
        self.assertEqual(error.code, ErrorCode.FRAME_TOO_LARGE)

    def test_lazy(self) -> None:
        """
        C{feed} takes the bytes at once but parses nothing until iterated:
        a bad frame is not reported by C{feed} itself.
        """
        decoder = FrameDecoder()
        frames = decoder.feed(Eof(1).encode() + _raw(0x0C, 1))
        self.assertEqual(decoder.buffered, 2 * HEADER_SIZE)
        self.assertEqual(next(frames), Eof(1))
        self.assertRaises(ProtocolError, next, frames)

    def test_stopIterating(self) -> None:
        """
        A handler that stops iterating (say, because it is closing the
        connection) leaves the rest buffered, unparsed; the next C{feed},
        even of no bytes, goes on from there.
        """
        wire = b"".join(f.encode() for f in SESSION)
        decoder = FrameDecoder()
        for frame in decoder.feed(wire):
            self.assertEqual(frame, SESSION[0])
            break
        self.assertEqual(decoder.buffered, len(wire) - len(SESSION[0].encode()))
        rest: list[Frame] = []
        for frame in decoder.feed(b""):
            rest.append(frame)
            if len(rest) == 3:
                break
        self.assertEqual(rest, SESSION[1:4])
        self.assertEqual(list(decoder.feed(b"")), SESSION[4:])
        self.assertEqual(decoder.buffered, 0)

    def test_stopIteratingBeforeBadFrame(self) -> None:
        """
        A bad frame that was never reached is not reported until the
        handler asks for it.
        """
        decoder = FrameDecoder()
        for _ in decoder.feed(Eof(1).encode() + _raw(0x0C, 1)):
            break
        self.assertEqual(decoder.buffered, HEADER_SIZE)
        self.assertRaises(ProtocolError, lambda: list(decoder.feed(b"")))

    def test_stopIteratingWithLargeBuffer(self) -> None:
        """
        One frame at a time out of a buffer well past the compaction
        threshold, with more bytes arriving meanwhile.
        """
        frames = [Data(2 * i + 1, bytes([i]) * 4000) for i in range(60)]
        wire = b"".join(f.encode() for f in frames)
        decoder = FrameDecoder()
        seen: list[Frame] = []
        pending = [wire[:100_000], wire[100_000:]]
        while len(seen) < len(frames):
            # The rest arrives when the first chunk's frames are nearly used up.
            chunk = pending.pop(0) if pending and decoder.buffered < 10_000 else b""
            for frame in decoder.feed(chunk):
                seen.append(frame)
                break
        self.assertEqual(seen, frames)
        self.assertEqual(decoder.buffered, 0)

    def test_raiseMaxFrame(self) -> None:
        """
        A raised C{maxFrame} applies to frames still buffered, so a peer may
        send large frames right after the HELLO that allows them.
        """
        decoder = FrameDecoder(16)
        big = Data(1, b"b" * 100)
        frames = decoder.feed(Hello(1, 1).encode() + big.encode())
        self.assertEqual(next(frames), Hello(1, 1))
        decoder.maxFrame = 1000
        self.assertEqual(list(frames), [big])

    # An iterator taken before a re-entrant feed hit a bad frame must stop too.
    def test_poisonedDuringIteration(self) -> None:
        decoder = FrameDecoder()
        outer = decoder.feed(Eof(1).encode() + Eof(3).encode())
        self.assertEqual(next(outer), Eof(1))
        self.assertRaises(ProtocolError, list, decoder.feed(_raw(0x0C, 1) + Eof(5).encode()))
        self.assertRaises(ProtocolError, list, outer)


class CodeNameTests(SynchronousTestCase):
    def test_errorCodeNamed(self) -> None:
        self.assertEqual(ErrorCode.named(8), "replaced")
        self.assertEqual(ErrorCode.named(ErrorCode.TOO_MANY_STREAMS), "too_many_streams")
        self.assertEqual(ErrorCode.named(999), "code-999")

    def test_openFailReasonNamed(self) -> None:
        self.assertEqual(OpenFailReason.named(6), "too many streams")
        self.assertEqual(OpenFailReason.named(0), "reason-0")
        self.assertEqual(OpenFailReason.named(65535), "reason-65535")


# -- properties --------------------------------------------------------------

_streamIds = st.integers(1, MAX_STREAM_ID)
_u16 = st.integers(0, 0xFFFF)
# At most 4 bytes a character, so at most MAX_REASON_TEXT bytes: no clipping.
_texts = st.text(max_size=MAX_REASON_TEXT // 4)
_hosts = st.text(st.characters(codec="ascii"), min_size=1, max_size=MAX_HOST_LENGTH)
_jsonValues = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _hellos(draw: st.DrawFn) -> Hello:
    low, high = sorted((draw(_u16), draw(_u16)))
    return Hello(low, high, draw(st.dictionaries(st.text(max_size=12), _jsonValues, max_size=6)))


_frames = st.one_of(
    _hellos(),
    st.builds(Open, _streamIds, _hosts, st.integers(1, 0xFFFF)),
    st.builds(OpenOk, _streamIds),
    st.builds(OpenFail, _streamIds, _u16, _texts),
    st.builds(Data, _streamIds, st.binary(max_size=600)),
    st.builds(Window, _streamIds, st.integers(1, 2**32 - 1)),
    st.builds(Eof, _streamIds),
    st.builds(Close, _streamIds, st.booleans()),
    st.builds(Reset, _streamIds, _u16, _texts),
    st.builds(Ping, st.binary(min_size=8, max_size=8)),
    st.builds(Pong, st.binary(min_size=8, max_size=8)),
    st.builds(GoAway, _u16, _texts),
)

#: Any valid frame (tests/package/test_fuzz.py mutates them).
frameStrategy = _frames


@st.composite
def _frameShaped(draw: st.DrawFn) -> bytes:
    """
    Bytes that look like a frame closely enough to reach the payload
    parsers: a small length, any type, a stream id near the edges, and
    a payload that often starts like a real one.
    """
    kind = draw(st.integers(0, 0x0F))
    streamId = draw(st.sampled_from([0, 1, 2, 3, MAX_STREAM_ID, MAX_STREAM_ID + 1, 2**32 - 1]))
    prefix = draw(st.sampled_from([b"", b"\x00\x01\x00\x01", b"\x00\x01", b"\x00\x50"]))
    body = draw(
        st.binary(max_size=40)
        | st.text(alphabet='{}[]":,0123456789.eE-+ tfnrulasx\\', max_size=40).map(str.encode)
    )
    payload = prefix + body
    length = draw(st.just(len(payload)) | st.integers(0, 80))
    flags = draw(st.integers(0, 255))
    return struct.pack("!IBBI", length, kind, flags, streamId) + payload


def _cuts(draw: st.DrawFn, size: int) -> list[int]:
    return draw(st.lists(st.integers(0, size), max_size=25))


class PropertyTests(SynchronousTestCase):
    @_propertySettings
    @given(frames=st.lists(_frames, max_size=20), data=st.data())
    def test_roundTrip(self, frames: list[Frame], data: st.DataObject) -> None:
        """
        Any valid frames, encoded and concatenated, decode to themselves
        however the bytes are split, and encoding is canonical.
        """
        wire = b"".join(f.encode() for f in frames)
        decoder = FrameDecoder()
        decoded = _feedAll(decoder, _split(wire, _cuts(data.draw, len(wire))))
        self.assertEqual(decoded, frames)
        self.assertEqual(decoder.buffered, 0)
        self.assertEqual(b"".join(f.encode() for f in decoded), wire)

    def _feedArbitrary(self, chunks: Sequence[bytes], maxFrame: int) -> None:
        decoder = FrameDecoder(maxFrame)
        try:
            for chunk in chunks:
                for frame in decoder.feed(chunk):
                    # Whatever decodes is a well-formed frame.
                    self.assertEqual(decodeAll(frame.encode()), [frame])
        except ProtocolError as e:
            self.assertIsInstance(e.code, ErrorCode)
            again = self.assertRaises(ProtocolError, lambda: list(decoder.feed(b"")))
            self.assertIs(again, e)

    @_propertySettings
    @given(
        blob=st.binary(max_size=400),
        maxFrame=st.sampled_from([16, 1024, DEFAULT_MAX_FRAME, ABSOLUTE_MAX_FRAME]),
        data=st.data(),
    )
    def test_arbitraryBytes(self, blob: bytes, maxFrame: int, data: st.DataObject) -> None:
        """
        Arbitrary bytes in arbitrary chunks raise nothing but
        L{ProtocolError}.
        """
        self._feedArbitrary(_split(blob, _cuts(data.draw, len(blob))), maxFrame)

    @_propertySettings
    @given(
        pieces=st.lists(_frameShaped() | _frames.map(lambda f: f.encode()), max_size=12),
        data=st.data(),
    )
    def test_frameShapedBytes(self, pieces: list[bytes], data: st.DataObject) -> None:
        """
        The same, for bytes shaped like frames, which get past the header
        checks to the payload parsers.
        """
        blob = b"".join(pieces)
        self._feedArbitrary(_split(blob, _cuts(data.draw, len(blob))), DEFAULT_MAX_FRAME)

    @_propertySettings
    @given(frame=_frames, flags=st.integers(0, 255))
    def test_flags(self, frame: Frame, flags: int) -> None:
        """
        Whatever the flags byte holds, a frame decodes to itself but for
        CLOSE's FINAL bit (bit 0), which is all a receiver reads of it.
        """
        encoded = bytearray(frame.encode())
        encoded[5] = flags
        [decoded] = decodeAll(bytes(encoded))
        if isinstance(frame, Close):
            self.assertEqual(decoded, Close(frame.streamId, bool(flags & CLOSE_FINAL)))
        else:
            self.assertEqual(decoded, frame)

    @_propertySettings
    @given(streamId=_streamIds, payload=st.binary(max_size=2000))
    def test_dataHeader(self, streamId: int, payload: bytes) -> None:
        self.assertEqual(
            decodeAll(dataHeader(streamId, len(payload)) + payload), [Data(streamId, payload)]
        )

    @_propertySettings
    @given(text=st.text(max_size=1500))
    def test_clipping(self, text: str) -> None:
        """
        Encoded texts are the longest prefix of whole characters that fits.
        """
        [decoded] = decodeAll(GoAway(0, text).encode())
        clipped: str = decoded.text  # type: ignore[attr-defined]
        self.assertTrue(text.startswith(clipped))
        size = len(clipped.encode("utf-8"))
        self.assertLessEqual(size, MAX_REASON_TEXT)
        if clipped != text:
            self.assertGreater(size + len(text[len(clipped)].encode("utf-8")), MAX_REASON_TEXT)


# -- the protocol document ---------------------------------------------------

#: The example session in docs/protocol.md, frame by frame.
EXAMPLE_SESSION: list[tuple[str, Frame]] = [
    (
        "agent",
        Hello(
            1,
            1,
            {
                "node": "edge-1",
                "ips": ["10.0.0.7"],
                "window": 1048576,
                "max_frame": 65536,
                "max_streams": 1024,
                "software": "twisted-tunnel/0.1.0",
            },
        ),
    ),
    (
        "server",
        Hello(
            1,
            1,
            {
                "server_id": "srv-a",
                "server_count": 1,
                "window": 1048576,
                "max_frame": 65536,
                "max_streams": 1024,
            },
        ),
    ),
    ("server", Open(2, "127.0.0.1", 10250)),
    ("agent", OpenOk(2)),
    ("server", Data(2, b"hello")),
    ("agent", Window(2, 5)),
    ("server", Eof(2)),
    ("agent", Close(2)),
    ("server", Close(2)),
]

#: The frames of C{docs/protocol.md}'s version 2 example: an early open.
EXAMPLE_SESSION_V2: list[tuple[str, Frame]] = [
    (
        "agent",
        Hello(
            1,
            2,
            {
                "node": "edge-1",
                "ips": ["10.0.0.7"],
                "window": 1048576,
                "max_frame": 65536,
                "max_streams": 1024,
                "software": "twisted-tunnel/0.2.0",
            },
        ),
    ),
    (
        "server",
        Hello(
            2,
            2,
            {
                "server_id": "srv-a",
                "server_count": 1,
                "window": 1048576,
                "max_frame": 65536,
                "max_streams": 1024,
            },
        ),
    ),
    ("server", Open(2, "127.0.0.1", 10250)),
    ("server", Data(2, b"hello")),
    ("server", Eof(2)),
    ("agent", OpenOk(2)),
    ("agent", Data(2, b"hi")),
    ("agent", Close(2, final=True)),
]


def _docSections() -> dict[str, str]:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
    return sections


def _tableRows(section: str) -> dict[int, str]:
    rows = re.findall(r"^\|\s*(0x[0-9A-Fa-f]+|\d+)\s*\|\s*`?([A-Z_]+)`?\s*\|", section, re.M)
    return {int(number, 0): name for number, name in rows}


class ProtocolDocumentTests(SynchronousTestCase):
    """
    C{docs/protocol.md} and the codec agree.
    """

    def setUp(self) -> None:
        if not PROTOCOL_DOC.exists():
            self.skipTest(f"{PROTOCOL_DOC} is not in this tree")
        self.sections = _docSections()

    def test_exampleSession(self) -> None:
        """
        The hex of the example session is this codec's encoding of the
        frames it describes, one commented block per frame.
        """
        self.checkExample("Example session", EXAMPLE_SESSION)

    def test_exampleSessionVersion2(self) -> None:
        self.checkExample("Example session, version 2", EXAMPLE_SESSION_V2)

    def checkExample(self, title: str, expectedFrames: list[tuple[str, Frame]]) -> None:
        block = re.search(r"```text\n(.*?)```", self.sections[title], re.S)
        assert block is not None
        frames: list[tuple[str, bytes]] = []
        for line in block.group(1).splitlines():
            if line.startswith("#"):
                frames.append((line.split()[1], b""))
            elif line.strip():
                sender, wire = frames[-1]
                frames[-1] = (sender, wire + bytes.fromhex(line))
        self.assertEqual(len(frames), len(expectedFrames))
        for (sender, wire), (expectedSender, expected) in zip(frames, expectedFrames, strict=True):
            self.assertEqual(sender, expectedSender)
            self.assertEqual(decodeAll(wire, DEFAULT_MAX_FRAME), [expected])
            self.assertEqual(wire, expected.encode())

    def test_frameTypes(self) -> None:
        self.assertEqual(
            _tableRows(self.sections["Frame types"]), {t.value: t.name for t in FrameType}
        )

    def test_errorCodes(self) -> None:
        self.assertEqual(
            _tableRows(self.sections["Error codes"]), {c.value: c.name for c in ErrorCode}
        )

    def test_openFailReasons(self) -> None:
        self.assertEqual(
            _tableRows(self.sections["Open-failure reasons"]),
            {r.value: r.name for r in OpenFailReason},
        )

    def test_limits(self) -> None:
        limits = self.sections["Limits"]
        for number in (DEFAULT_MAX_FRAME, ABSOLUTE_MAX_FRAME, MAX_STREAM_ID):
            self.assertIn(f"{number}", limits)
        self.assertIn(f"{MAX_REASON_TEXT} bytes", limits)
        self.assertIn(f"{MAX_HOST_LENGTH} bytes", limits)
