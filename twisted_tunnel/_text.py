# -*- test-case-name: tests.doors.test_security_http -*-
"""
Text from a client or a peer, made safe to log or to answer with.

A C{Host} header may carry any control byte but NUL, CR and LF (h1 lets
them pass, as h11 does: some cookies hold C{\\x01}); an agent's refusal
text, a CONNECT target, a certificate's name are whatever their sender
chose.  Written raw to a log, C{ESC [ 2 J} clears the operator's terminal,
and C{ESC ] 52} writes to their clipboard; a C{U+202E} reorders what they
read.  Everything of that kind goes through L{printable} before it reaches
a log line or an error body: one helper, so that the escaping is the same
everywhere and a reader learns it once.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["printable"]

#: Bytes shown as they are: printable ASCII but the backslash (escaped so
#: that an escape in the output is always ours, never the sender's).
_UNSAFE_BYTES: Final = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")


def _escapeByte(match: re.Match[bytes]) -> bytes:
    byte = match.group()
    return b"\\\\" if byte == b"\\" else b"\\x%02x" % byte[0]


def _escapeChar(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: bytes | str | None, limit: int = 200) -> str:
    """
    C{value} as one line of printable text, at most about C{limit}
    characters long.

    Bytes keep their printable ASCII; every other byte becomes C{\\xNN}.
    Text keeps its printable characters (accented letters too); control
    characters (C0 and C1, so C{ESC} and C{CSI}), line and paragraph
    separators, format characters (bidirectional overrides) and unpaired
    surrogates become C{\\xNN}, C{\\uNNNN} or C{\\UNNNNNNNN}.  A backslash
    becomes two, so an escape is never the sender's.  Longer than C{limit},
    it is cut and ends with C{...}: a log line stays short whatever a
    client sends.  C{None} is C{"-"}.

    Cheap when there is nothing to escape (one regular expression search,
    or C{str.isprintable}): it is called for log lines and refusals, never
    per byte of a body.
    """
    if value is None:
        return "-"
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value[: limit * 4 + 4])
        cut = len(value) > len(raw)
        if _UNSAFE_BYTES.search(raw) is not None:
            raw = _UNSAFE_BYTES.sub(_escapeByte, raw)
        text = raw.decode("ascii")
    else:
        cut = len(value) > limit * 4 + 4
        text = value[: limit * 4 + 4] if cut else value
        if not (text.isprintable() and "\\" not in text):
            text = "".join(map(_escapeChar, text))
    if cut or len(text) > limit:
        keep = max(0, limit - 3)
        head = text[:keep]
        # never end on half an escape
        slash = head.rfind("\\", max(0, keep - 10))
        if slash >= 0 and slash + 1 < len(text) and not _whole(text, slash, keep):
            head = head[:slash]
        return head + "..."
    return text


def _whole(text: str, start: int, end: int) -> bool:
    """Does the escape (or escaped backslash) at C{text[start]} end before C{end}?"""
    kind = text[start + 1] if start + 1 < len(text) else ""
    size = {"\\": 2, "x": 4, "u": 6, "U": 10}.get(kind, 1)
    return start + size <= end
