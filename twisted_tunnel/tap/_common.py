"""
Options both daemons share, and how they report a fatal configuration error.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from twisted.python import usage

from ..errors import CredentialsError
from ..mux import Keepalive, Settings
from ..rotation import DEFAULT_RELOAD_INTERVAL
from ..tls import Credentials, loadCredentials

#: What the protocol can carry in a HELLO setting (see docs/protocol.md).
MAX_SETTING = 2**31 - 1


def positiveFloat(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text} is not a positive number")
    return value


def nonNegativeFloat(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"{text} is not a number of at least 0")
    return value


def positiveInt(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text} is not a positive integer")
    return value


positiveFloat.coerceDoc = "Must be a positive number."  # type: ignore[attr-defined]
positiveInt.coerceDoc = "Must be a positive integer."  # type: ignore[attr-defined]
nonNegativeFloat.coerceDoc = "Must be a number of at least 0."  # type: ignore[attr-defined]


class TunnelOptions(usage.Options):
    """Credentials, keepalive and flow-control options of both daemons."""

    optParameters = [
        ["ca", None, None, "PEM file of the CA that signs the other side's certificates."],
        ["cert", None, None, "PEM file of this side's certificate."],
        ["key", None, None, "PEM file of this side's private key."],
        ["keepalive-interval", None, 10.0, "Seconds of silence before a PING.", positiveFloat],
        [
            "keepalive-misses",
            None,
            3,
            "Silent intervals after which the peer is declared dead.",
            positiveInt,
        ],
        [
            "stream-window",
            None,
            Settings().window,
            "Receive window per stream, in bytes (bounds memory per stream).",
            positiveInt,
        ],
        [
            "max-streams",
            None,
            Settings().maxStreams,
            "Streams the peer may have open at once on one tunnel.",
            positiveInt,
        ],
        [
            "tls-reload-interval",
            None,
            DEFAULT_RELOAD_INTERVAL,
            "Seconds between checks of the --ca, --cert and --key files for a rotation "
            "(new handshakes use the new files; a broken set is refused and logged). 0: never.",
            nonNegativeFloat,
        ],
    ]

    def postOptions(self) -> None:
        for name in ("ca", "cert", "key"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")
        if not 64 * 1024 <= self["stream-window"] <= MAX_SETTING:
            raise usage.UsageError(f"--stream-window must be between 65536 and {MAX_SETTING}")
        if self["max-streams"] > MAX_SETTING:
            raise usage.UsageError(f"--max-streams must be at most {MAX_SETTING}")

    def settings(self) -> Settings:
        return Settings(window=self["stream-window"], maxStreams=self["max-streams"])

    def keepalive(self) -> Keepalive:
        return Keepalive(interval=self["keepalive-interval"], misses=self["keepalive-misses"])

    def credentials(self, program: str) -> Credentials:
        """Load the certificate files, or stop the program with one line saying why."""
        try:
            return loadCredentials(self["ca"], self["cert"], self["key"])
        except CredentialsError as e:
            fatal(program, str(e))


def fatal(program: str, message: str) -> NoReturn:
    """
    Stop at startup with one line on stderr and a non-zero exit status: a
    configuration error is not a crash, and a traceback would hide the line
    that matters.
    """
    sys.stderr.write(f"{program}: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)
