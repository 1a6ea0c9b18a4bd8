# -*- test-case-name: tests.wire.test_wire -*-
"""
The tunnel's wire format, sans-IO: bytes in, frames out; frames in, bytes out.

Nothing here knows about sockets, TLS or the reactor, so the codec can be
fed a byte at a time, fuzzed, and reasoned about on its own.  The protocol
it implements is written down in C{docs/protocol.md}; keep the two in step.

Every frame is a 10-byte header followed by a payload::

    +----------------+--------+--------+----------------+--------------//---+
    | length (u32)   | type   | flags  | stream id (u32)| payload (length)  |
    +----------------+--------+--------+----------------+--------------//---+

All integers are big-endian.  Anything that does not parse raises
L{ProtocolError} and nothing else: the connection that sent it is ended,
with the error's code and text in a GOAWAY and in the log.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from enum import IntEnum
from typing import Any, ClassVar

from attrs import field, frozen

#: The protocol versions this implementation speaks, oldest first.  Version
#: 2 adds early opens (DATA and EOF right behind OPEN, before OPEN_OK) and
#: CLOSE's FINAL flag; C{docs/protocol.md} says what each version means.
SUPPORTED_VERSIONS = (1, 2)

#: The lowest version with early opens and CLOSE FINAL.
EARLY_OPEN_VERSION = 2

HEADER = struct.Struct("!IBBI")
HEADER_SIZE = HEADER.size

#: Payload limit before the peer's HELLO says otherwise, and the limit on
#: HELLO itself: every control frame fits in it.
DEFAULT_MAX_FRAME = 64 * 1024

#: No peer may announce, and no frame may carry, more than this.
ABSOLUTE_MAX_FRAME = 16 * 1024 * 1024 - 1

#: Stream ids are 31 bits so that they stay positive in every language.
MAX_STREAM_ID = 2**31 - 1

#: Texts in OPEN_FAIL, RESET and GOAWAY are for humans and logs: keep them short.
MAX_REASON_TEXT = 1024

MAX_HOST_LENGTH = 255

#: CLOSE's flag (version 2): the sender had received the peer's EOF, so the
#: stream is over both ways; the receiver forgets it without answering.
CLOSE_FINAL = 0x01

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_VERSIONS = struct.Struct("!HH")


class FrameType(IntEnum):
    HELLO = 0x0
    OPEN = 0x1
    OPEN_OK = 0x2
    OPEN_FAIL = 0x3
    DATA = 0x4
    WINDOW = 0x5
    EOF = 0x6
    CLOSE = 0x7
    RESET = 0x8
    PING = 0x9
    PONG = 0xA
    GOAWAY = 0xB


class ErrorCode(IntEnum):
    """
    Why a connection (GOAWAY) or a stream (RESET) ended.
    """

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FLOW_CONTROL_ERROR = 2
    FRAME_TOO_LARGE = 3
    UNSUPPORTED_VERSION = 4
    UNAUTHORIZED = 5
    INTERNAL_ERROR = 6
    KEEPALIVE_TIMEOUT = 7
    REPLACED = 8
    SHUTTING_DOWN = 9
    CANCEL = 10
    TOO_MANY_STREAMS = 11
    DUPLICATE = 12
    #: two server processes announce one server id (a misconfiguration):
    #: the agent keeps the tunnel it held and closes the newer one with this
    DUPLICATE_SERVER_ID = 13

    @classmethod
    def named(cls, value: int) -> str:
        """
        A name for any code, including ones a newer peer may send.
        """
        try:
            return cls(value).name.lower()
        except ValueError:
            return f"code-{value}"


class OpenFailReason(IntEnum):
    """
    Why the far side could not open a stream (carried in OPEN_FAIL).
    """

    NOT_ALLOWED = 1
    REFUSED = 2
    TIMEOUT = 3
    UNREACHABLE = 4
    GOING_AWAY = 5
    TOO_MANY_STREAMS = 6
    BAD_REQUEST = 7
    INTERNAL = 8

    @classmethod
    def named(cls, value: int) -> str:
        try:
            return cls(value).name.lower().replace("_", " ")
        except ValueError:
            return f"reason-{value}"


class ProtocolError(Exception):
    """
    The peer broke the protocol.  The one exception this module raises.

    @ivar code: the L{ErrorCode} to send in the GOAWAY that ends the connection.
    """

    def __init__(self, text: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# -- frames ------------------------------------------------------------------


class Frame:
    """
    Base for every frame record.  C{TYPE} is the wire type; C{streamId} is 0
    for frames about the whole connection.
    """

    TYPE: ClassVar[FrameType]
    streamId: int

    def payload(self) -> bytes:
        return b""

    def flags(self) -> int:
        """The header's flags byte: 0 but for a CLOSE FINAL."""
        return 0

    def encode(self) -> bytes:
        body = self.payload()
        return HEADER.pack(len(body), self.TYPE, self.flags(), self.streamId) + body


@frozen
class Hello(Frame):
    """
    The first frame each side sends.  The agent offers a range of versions;
    the server answers with the one it chose (C{minVersion == maxVersion}).
    C{info} holds the sender's settings and identity claims as a JSON object.
    """

    TYPE = FrameType.HELLO
    minVersion: int
    maxVersion: int
    info: dict[str, Any] = field(factory=dict)
    streamId: int = 0

    def payload(self) -> bytes:
        body = json.dumps(
            self.info, separators=(",", ":"), sort_keys=True, allow_nan=False
        ).encode()
        return _VERSIONS.pack(self.minVersion, self.maxVersion) + body


@frozen
class Open(Frame):
    """Ask the peer to connect stream C{streamId} to C{host}:C{port}."""

    TYPE = FrameType.OPEN
    streamId: int
    host: str
    port: int

    def payload(self) -> bytes:
        return _U16.pack(self.port) + self.host.encode("utf-8")


@frozen
class OpenOk(Frame):
    TYPE = FrameType.OPEN_OK
    streamId: int


@frozen
class OpenFail(Frame):
    TYPE = FrameType.OPEN_FAIL
    streamId: int
    reason: int
    text: str = ""

    def payload(self) -> bytes:
        return _U16.pack(self.reason) + _clip(self.text)


@frozen
class Data(Frame):
    TYPE = FrameType.DATA
    streamId: int
    data: bytes

    def payload(self) -> bytes:
        return self.data


@frozen
class Window(Frame):
    """Grant the peer C{increment} more bytes of DATA on C{streamId}."""

    TYPE = FrameType.WINDOW
    streamId: int
    increment: int

    def payload(self) -> bytes:
        return _U32.pack(self.increment)


@frozen
class Eof(Frame):
    """The sender will send no more DATA on this stream (half-close)."""

    TYPE = FrameType.EOF
    streamId: int


@frozen
class Close(Frame):
    """
    The sender is done with this stream in both directions; data it sent
    before stays valid.  Each side sends one CLOSE or RESET per stream.

    @ivar final: (version 2) the sender had received the peer's EOF before
        it sent this, so nothing more is due either way: the receiver
        forgets the stream without answering, which saves a frame per
        stream.  Carried in the flags byte (L{CLOSE_FINAL}).
    """

    TYPE = FrameType.CLOSE
    streamId: int
    final: bool = False

    def flags(self) -> int:
        return CLOSE_FINAL if self.final else 0


@frozen
class Reset(Frame):
    """Abort the stream: undelivered data in either direction is dropped."""

    TYPE = FrameType.RESET
    streamId: int
    code: int
    text: str = ""

    def payload(self) -> bytes:
        return _U16.pack(self.code) + _clip(self.text)


@frozen
class Ping(Frame):
    TYPE = FrameType.PING
    opaque: bytes
    streamId: int = 0

    def payload(self) -> bytes:
        return self.opaque


@frozen
class Pong(Frame):
    TYPE = FrameType.PONG
    opaque: bytes
    streamId: int = 0

    def payload(self) -> bytes:
        return self.opaque


@frozen
class GoAway(Frame):
    """
    The sender accepts no new streams; with a non-zero code it is also
    closing the connection now, and says why.
    """

    TYPE = FrameType.GOAWAY
    code: int
    text: str = ""
    streamId: int = 0

    def payload(self) -> bytes:
        return _U16.pack(self.code) + _clip(self.text)


def _clip(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_REASON_TEXT:
        return raw
    return raw[:MAX_REASON_TEXT].decode("utf-8", "ignore").encode("utf-8")


def dataHeader(streamId: int, length: int) -> bytes:
    """
    The header of a DATA frame, for the hot path: the caller writes it and
    the payload with C{writeSequence}, so the payload is never copied.
    """
    return HEADER.pack(length, FrameType.DATA, 0, streamId)


# -- decoding ----------------------------------------------------------------


def _text(raw: bytes | memoryview, what: str) -> str:
    if len(raw) > MAX_REASON_TEXT:
        raise ProtocolError(f"{what} text longer than {MAX_REASON_TEXT} bytes")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} text is not UTF-8") from None


def _exact(payload: bytes, size: int, kind: FrameType) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{kind.name} payload must be {size} bytes, got {len(payload)}")


def _noConstants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finiteFloat(text: str) -> float:
    """
    A JSON number with a fraction or an exponent, refused when it does not
    fit in a double: C{1e999} would become C{inf}, which no JSON encoder
    writes back (L{Hello.encode} would raise), and which no setting means.
    """
    value = float(text)
    if math.isinf(value):
        raise ValueError("a number out of range")
    return value


def _parseHello(streamId: int, payload: bytes, flags: int) -> Frame:
    if len(payload) < _VERSIONS.size:
        raise ProtocolError("HELLO payload too short")
    low, high = _VERSIONS.unpack_from(payload)
    if low > high:
        raise ProtocolError(f"HELLO offers an empty version range {low}..{high}")
    try:
        text = payload[_VERSIONS.size :].decode("utf-8")
        info = (
            json.loads(text, parse_constant=_noConstants, parse_float=_finiteFloat) if text else {}
        )
        if "\\u" in text:
            # An escape may spell half a surrogate pair ("\ud800"), which
            # json takes but no UTF-8 encoder writes: such a string would
            # fail wherever it is logged or written.  Only escapes can make
            # one (the UTF-8 decoder refuses encoded surrogates), so only a
            # text with escapes pays for this check.
            json.dumps(info, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError):
        raise ProtocolError("HELLO info is not a UTF-8 JSON object") from None
    if not isinstance(info, dict):
        raise ProtocolError("HELLO info is not a JSON object")
    return Hello(low, high, info)


def _parseOpen(streamId: int, payload: bytes, flags: int) -> Frame:
    if len(payload) < 3:
        raise ProtocolError("OPEN payload too short")
    (port,) = _U16.unpack_from(payload)
    raw = payload[2:]
    if len(raw) > MAX_HOST_LENGTH:
        raise ProtocolError(f"OPEN host longer than {MAX_HOST_LENGTH} bytes")
    try:
        host = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("OPEN host is not ASCII") from None
    if port == 0:
        raise ProtocolError("OPEN for port 0")
    return Open(streamId, host, port)


def _parseOpenOk(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 0, FrameType.OPEN_OK)
    return OpenOk(streamId)


def _parseOpenFail(streamId: int, payload: bytes, flags: int) -> Frame:
    if len(payload) < 2:
        raise ProtocolError("OPEN_FAIL payload too short")
    (reason,) = _U16.unpack_from(payload)
    return OpenFail(streamId, reason, _text(payload[2:], "OPEN_FAIL"))


def _parseData(streamId: int, payload: bytes, flags: int) -> Frame:
    return Data(streamId, payload)


def _parseWindow(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 4, FrameType.WINDOW)
    (increment,) = _U32.unpack(payload)
    if increment == 0:
        raise ProtocolError("WINDOW with a zero increment")
    return Window(streamId, increment)


def _parseEof(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 0, FrameType.EOF)
    return Eof(streamId)


def _parseClose(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 0, FrameType.CLOSE)
    return Close(streamId, bool(flags & CLOSE_FINAL))


def _parseReset(streamId: int, payload: bytes, flags: int) -> Frame:
    if len(payload) < 2:
        raise ProtocolError("RESET payload too short")
    (code,) = _U16.unpack_from(payload)
    return Reset(streamId, code, _text(payload[2:], "RESET"))


def _parsePing(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 8, FrameType.PING)
    return Ping(payload)


def _parsePong(streamId: int, payload: bytes, flags: int) -> Frame:
    _exact(payload, 8, FrameType.PONG)
    return Pong(payload)


def _parseGoAway(streamId: int, payload: bytes, flags: int) -> Frame:
    if len(payload) < 2:
        raise ProtocolError("GOAWAY payload too short")
    (code,) = _U16.unpack_from(payload)
    return GoAway(code, _text(payload[2:], "GOAWAY"))


_CONNECTION_FRAMES = frozenset({FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GOAWAY})

_PARSERS = {
    FrameType.HELLO: _parseHello,
    FrameType.OPEN: _parseOpen,
    FrameType.OPEN_OK: _parseOpenOk,
    FrameType.OPEN_FAIL: _parseOpenFail,
    FrameType.DATA: _parseData,
    FrameType.WINDOW: _parseWindow,
    FrameType.EOF: _parseEof,
    FrameType.CLOSE: _parseClose,
    FrameType.RESET: _parseReset,
    FrameType.PING: _parsePing,
    FrameType.PONG: _parsePong,
    FrameType.GOAWAY: _parseGoAway,
}


class FrameDecoder:
    """
    Turns a byte stream into frames, however the bytes are split.

    After a L{ProtocolError} the decoder is poisoned: the connection is
    over, and feeding it more raises the same error again.

    @ivar maxFrame: the largest payload accepted; raised once our HELLO has
        announced a larger limit.
    """

    __slots__ = ("_buffer", "_offset", "_error", "maxFrame")

    def __init__(self, maxFrame: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._error: ProtocolError | None = None
        self.maxFrame = maxFrame

    def feed(self, data: bytes) -> Iterator[Frame]:
        """
        Add C{data}, and return an iterator over every frame now complete.

        The bytes are taken at once; the frames are parsed lazily, one per
        step, so that a handler that ends the connection stops the parsing
        of what follows, and a bad frame is reported only after the good
        frames before it have been handled.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        buffer = self._buffer
        try:
            while True:
                if self._error is not None:
                    raise self._error
                available = len(buffer) - self._offset
                if available < HEADER_SIZE:
                    break
                length, kind, flags, streamId = HEADER.unpack_from(buffer, self._offset)
                if length > self.maxFrame:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self.maxFrame}",
                        ErrorCode.FRAME_TOO_LARGE,
                    )
                if available < HEADER_SIZE + length:
                    break
                start = self._offset + HEADER_SIZE
                # one copy, straight out of the buffer (slicing the bytearray
                # first would copy twice); the view must be gone before the
                # next feed() grows the buffer
                with memoryview(buffer) as view:
                    payload = bytes(view[start : start + length])
                self._offset = start + length
                yield self._parse(kind, streamId, payload, flags)
        except ProtocolError as e:
            self._error = e
            raise
        finally:
            self._compact()

    def _compact(self) -> None:
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif self._offset > 65536 and self._offset * 2 > len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) - self._offset

    @staticmethod
    def _parse(kind: int, streamId: int, payload: bytes, flags: int) -> Frame:
        try:
            frameType = FrameType(kind)
        except ValueError:
            raise ProtocolError(f"unknown frame type 0x{kind:02x}") from None
        if streamId > MAX_STREAM_ID:
            raise ProtocolError(f"stream id {streamId} out of range")
        if frameType in _CONNECTION_FRAMES:
            if streamId != 0:
                raise ProtocolError(f"{frameType.name} on stream {streamId}, must be 0")
        elif streamId == 0:
            raise ProtocolError(f"{frameType.name} on stream 0")
        return _PARSERS[frameType](streamId, payload, flags)


def decodeAll(data: bytes, maxFrame: int = ABSOLUTE_MAX_FRAME) -> list[Frame]:
    """
    Decode a complete byte string into frames (for tests and tools).

    @raise ProtocolError: if C{data} is not a whole number of valid frames.
    """
    decoder = FrameDecoder(maxFrame)
    frames = list(decoder.feed(data))
    if decoder.buffered:
        raise ProtocolError(f"{decoder.buffered} trailing bytes")
    return frames
