"""
Options both daemons share, and how they report a fatal configuration error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.resource import Resource
from zope.interface import implementer

from ..errors import CredentialsError
from ..meta import Check, Heartbeat, metaSite
from ..mux import Keepalive, Settings
from ..net._twisted import raiseListenErrors
from ..tls import Credentials, loadCredentials
from ..tls.rotation import DEFAULT_RELOAD_INTERVAL

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


def logFormat(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"{text!r} is not text or json")
    return text


#: The levels C{--log-level} takes, least severe first.
LOG_LEVELS = ("debug", "info", "warn", "error")


def logLevel(text: str) -> str:
    if text not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text


logFormat.coerceDoc = "One of: text, json."  # type: ignore[attr-defined]
logLevel.coerceDoc = "One of: debug, info, warn, error."  # type: ignore[attr-defined]
positiveFloat.coerceDoc = "Must be a positive number."  # type: ignore[attr-defined]
positiveInt.coerceDoc = "Must be a positive integer."  # type: ignore[attr-defined]
nonNegativeFloat.coerceDoc = "Must be a number of at least 0."  # type: ignore[attr-defined]


class TunnelOptions(usage.Options):
    """Credentials, keepalive and flow-control options of both daemons."""

    #: The daemon's name, for C{--version} and the lines it stops with.
    program = "edge-tunnel"

    def opt_version(self) -> NoReturn:
        """Print this program's version and what it runs on, and exit."""
        from .._version import versionLine

        print(versionLine(self.program))
        sys.exit(0)

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
        [
            "log-format",
            None,
            "text",
            "text: lines for people; json: one JSON object per line on stdout, with every "
            "structured field (node, peer, stream, policy, reason...).",
            logFormat,
        ],
        [
            "log-level",
            None,
            "info",
            "The least severe lines written. debug adds a line for many a connection, stream "
            "and re-read file: for a while, not for production.",
            logLevel,
        ],
    ]

    def requiredFiles(self) -> tuple[str, ...]:
        """The options that must name a file (the agent may take its own from the kubelet)."""
        return ("ca", "cert", "key")

    def missingOptions(self) -> list[str]:
        """The required options not given, all of them, to be named in one line."""
        return [f"--{name}" for name in self.requiredFiles() if not self[name]]

    def checkRequired(self) -> None:
        """
        @raise usage.UsageError: naming every required option not given, at
            once (not one per run).
        """
        missing = self.missingOptions()
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise usage.UsageError(f"{', '.join(missing)} {verb} required")

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self.failed = True
            raise

    #: Whether parsing failed: twistd then prints L{getUsage} above the error.
    failed = False

    def __init__(self) -> None:
        super().__init__()
        # the help of an opt_ method is its docstring, whose line breaks and
        # indentation would show as runs of spaces in --help
        self.docs = {name: doc and " ".join(doc.split()) for name, doc in self.docs.items()}

    def getUsage(self, width: int | None = None) -> str:
        """
        The whole help, except after a usage error: twistd prints the usage
        above the error, and a few hundred lines of options would push the
        one line that says what is wrong off the screen.
        """
        if self.failed:
            return f"twistd {self.program} --help lists every option."
        return str(super().getUsage(width))

    def postOptions(self) -> None:
        self.checkRequired()
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


def fatal(program: str, message: str, out: IO[str] | None = None) -> NoReturn:
    """
    Stop at startup with one line on stderr and a non-zero exit status: a
    configuration error is not a crash, and a traceback would hide the line
    that matters.

    @param out: where to write, if not C{sys.stderr} (once twistd has
        begun logging, C{sys.stderr} leads into the log).
    """
    out = out or sys.stderr
    out.write(f"{program}: {message}\n")
    out.flush()
    raise SystemExit(2)


class DaemonService(MultiService):
    """
    A daemon's top service: its children, plus the meta listener, which
    starts before them and stops after them (after a drain), so that
    probes and scrapes are answered for as long as the process lives.

    It also sets the application's log observer (twistd asks the
    application for one after building it): lines of C{--log-level} and
    more severe, on standard output, as text or JSON (C{--log-format}).
    twistd's own observer would write every level, debug included: a busy
    server's log was mostly lines per connection.
    """

    def __init__(self, program: str, logFormat: str = "text", logLevel: str = "info") -> None:
        super().__init__()
        self.program = program
        self.logFormat = logFormat
        self.logLevel = logLevel
        self.meta: IService | None = None
        self.heartbeat: Heartbeat | None = None
        self.checks: list[Check] = []

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(
                ILogObserver, daemonLogObserver(self.logFormat, self.logLevel, sys.stdout)
            )
        super().setServiceParent(parent)

    def serveMeta(
        self,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
        registry: Any,
        summary: Callable[[], str],
        extra: dict[bytes, Resource] | None = None,
    ) -> None:
        """Serve the meta listener (L{twisted_tunnel.meta}) on C{endpoint}."""
        self.heartbeat = Heartbeat(clock)
        site = metaSite(self.heartbeat, registry, self.checks, summary, extra)
        service = StreamServerEndpointService(endpoint, site)
        raiseListenErrors(service)  # a port in use stops startup, loudly
        service.setName("--meta-endpoint")
        self.meta = service

    def _everyService(self) -> list[IService]:
        return [*([self.meta] if self.meta is not None else []), *self]

    def privilegedStartService(self) -> None:
        # where twistd listens: a port in use is one line, not a traceback
        for service in self._everyService():
            try:
                service.privilegedStartService()
            except CannotListenError as e:
                where = f"{e.interface or '*'}:{e.port}"
                fatal(
                    self.program,
                    f"{service.name} {where}: cannot listen: {e.socketError}",
                    sys.__stderr__,
                )

    def startService(self) -> None:
        Service.startService(self)
        for service in self._everyService():
            service.startService()
        if self.heartbeat is not None:
            self.heartbeat.start()

    def stopChildren(self) -> Deferred[None]:
        """Stop the children (override to drain as well)."""
        stopped: Deferred[None] = super().stopService()
        return stopped

    def stopService(self) -> Deferred[None]:
        stopping = maybeDeferred(self.stopChildren)

        def stopMeta(result: object) -> object:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            if self.meta is None:
                return result
            return maybeDeferred(self.meta.stopService).addCallback(lambda _: result)

        return stopping.addBoth(stopMeta)


def daemonLogObserver(logFormat: str, logLevel: str, out: IO[str]) -> ILogObserver:
    """
    A daemon's log observer: C{logLevel} and more severe events, written to
    C{out} as text lines (as twistd's own) or JSON lines (L{JSONLines}).
    """
    written: ILogObserver = JSONLines(out) if logFormat == "json" else textFileLogObserver(out)
    least = LogLevel.levelWithName(logLevel)
    return FilteringLogObserver(written, [LogLevelFilterPredicate(defaultLogLevel=least)])


@implementer(ILogObserver)
class JSONLines:
    """
    One JSON object per line: twisted.logger's own serialization (every
    structured field, the format, the time), the level as a plain name,
    and the formatted C{text}, so that a log pipeline need not know
    Twisted's format syntax.  The logger and source objects are left out:
    they are Python objects, not data.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        flat = {k: v for k, v in event.items() if k not in ("log_logger", "log_source")}
        level = event.get("log_level")
        if level is not None:
            flat["log_level"] = level.name  # a plain "info", not a serialized constant
        flat["text"] = formatEvent(event)
        line = eventAsJSON(flat)
        self.out.write(line + "\n")
        self.out.flush()
