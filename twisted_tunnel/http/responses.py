"""
The one HTTP response the front doors write by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from .._text import printable

#: The longest reason an error body carries (about a line and a half).
MAX_REASON = 1000

#: The most of a reason that goes into a status line (C{reasonInStatusLine}).
MAX_PHRASE = 300


def errorResponse(
    status: int,
    text: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    withBody: bool = True,
    reasonInStatusLine: bool = False,
) -> bytes:
    """
    A complete error response that ends the connection, its reason as a
    plain text body (curl and Go's proxy dialer show the status line; a
    human with C{nc} reads the body).  Written by hand, not by h11: it must
    work whatever state a parser is in (a malformed request leaves h11
    unable to answer).  C{withBody=False} for the answer to a C{HEAD}.
    C{reasonInStatusLine} adds C{text} (ASCII, at most L{MAX_PHRASE}
    characters) to the status line, for clients that show only that line:
    C{503 Service Unavailable: no agent connected for node 'edge-1'}.

    C{text} often quotes what a client or an agent sent (a C{Host}, a
    target, an agent's refusal): it goes through L{printable}, so that no
    control character reaches the terminal of whoever reads the answer.
    """
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if reasonInStatusLine:
        said = printable(text, MAX_PHRASE).encode("ascii", "backslashreplace").decode("ascii")
        phrase = f"{phrase}: {said}"
    body = (printable(text, MAX_REASON) + "\n").encode("utf-8", "replace")
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if withBody else head
