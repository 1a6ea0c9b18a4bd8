"""
What the benchmark scripts share: starting the daemons with twistd, and
keeping track of every process a script started so that it stops exactly
those, by PID.

C{bench/} is not a package: each script puts this directory on
C{sys.path} and imports this module by name, however it was loaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: What the C{twistd} script does: C{python -m twisted.scripts.twistd} does
#: nothing at all (that module has no C{__main__} block).
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"
)

#: Seconds a process may take to exit after SIGTERM before it gets SIGKILL.
STOP_GRACE = 5.0


class BenchError(Exception):
    """A workload or a setup step failed; the message says what and where."""


def twistd(*args: str) -> list[str]:
    """
    The command line of a daemon in the foreground, with no pid file, and
    its meta listener on a free loopback port unless C{args} choose one
    (the default ports would clash between daemons started side by side).
    """
    meta = [] if any(a.startswith("--meta-endpoint") for a in args) else [META_ENDPOINT]
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *args, *meta]


#: Where benchmark daemons serve /healthz, /readyz and /metrics.
META_ENDPOINT = "--meta-endpoint=tcp:0:interface=127.0.0.1"


def daemonEnv() -> dict[str, str]:
    """The repository root on PYTHONPATH, so that twistd finds the plugins in <repo>/twisted."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    logPath: Path


@dataclass
class Processes:
    """
    Every process a script started, so that it stops exactly those.

    @ivar work: where their logs go (C{<name>.log}) and their working directory.
    @ivar say: how to tell the operator about a process that had to be killed.
    """

    work: Path
    say: Callable[[str], None] = _stderr
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Started:
        logPath = self.work / f"{name}.log"
        with open(logPath, "wb") as logFile:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=logFile,
                stderr=subprocess.STDOUT,
                cwd=self.work,
                env=env,
                # Our own session: a Ctrl-C on the terminal reaches only the
                # script, which then stops everything in its finally.
                start_new_session=True,
            )
        entry = Started(name, process, logPath)
        self.started.append(entry)
        return entry

    def get(self, name: str) -> Started:
        for entry in self.started:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def checkAlive(self, names: Sequence[str] | None = None) -> None:
        """
        Raise L{BenchError} if one of C{names} (by default, any process
        started) has exited.
        """
        entries = self.started if names is None else [self.get(name) for name in names]
        for entry in entries:
            code = entry.process.poll()
            if code is not None:
                raise BenchError(
                    f"{entry.name} (pid {entry.process.pid}) exited with status {code}"
                )

    def stopAll(self) -> None:
        """SIGTERM each process we started (newest first), wait, then SIGKILL what is left."""
        for entry in reversed(self.started):
            if entry.process.poll() is None:
                try:
                    entry.process.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for entry in reversed(self.started):
            try:
                entry.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{entry.name} (pid {entry.process.pid}) ignored SIGTERM; killing it")
                entry.process.kill()
                entry.process.wait()
