# -*- test-case-name: tests.cli.test_cli -*-
"""
The C{edge-tunnel} command: operator tools that are not daemons.

The daemons themselves run under C{twistd} (C{twistd edge-tunnel-server},
C{twistd edge-tunnel-agent}); this command is for everything around them.
C{edge-tunnel status} shows a server's agents (L{twisted_tunnel.cli.status}), and
C{edge-tunnel certs} bootstraps the tunnel's private PKI in a directory
(C{./pki} by default)::

    edge-tunnel certs init                       # ca.pem, ca-key.pem
    edge-tunnel certs server --name tunnel.example.com --ip 203.0.113.10
    edge-tunnel certs agent edge-1 --ip 192.168.1.20
    edge-tunnel certs client kube-apiserver

Each subcommand registers itself with L{command}, so that more can be
added by defining a function, without touching L{main}.

Expected failures (no CA in the directory, a bad node name, an unwritable
file) are one line on standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from typing import TextIO

from twisted_tunnel._version import versionLine
from twisted_tunnel.errors import TunnelError

from ._command import EXIT_ERROR, PROGRAM, CommandError, Output, Runner, command, registered

__all__ = ["CommandError", "Output", "buildParser", "command", "main"]


class _Version(argparse.Action):
    """C{--version}, on one line (argparse's own action wraps it to the terminal)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(versionLine(PROGRAM))
        parser.exit()


def buildParser() -> argparse.ArgumentParser:
    """Build the C{edge-tunnel} argument parser, with every registered subcommand."""
    from . import certs, config, status  # noqa: F401  (their subcommands register themselves)

    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Tools for twisted-tunnel edge tunnels."
    )
    parser.add_argument(
        "--version", action=_Version, help="print the version and what it runs on, and exit"
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for _, adder in sorted(registered().items()):
        adder(subparsers)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run C{edge-tunnel} with the arguments C{argv} (by default, the command line's).

    @return: The exit status: 0 on success, 2 on an expected error (one line
        on C{stderr}) or a usage error.
    """
    output = Output(stdout=stdout or sys.stdout, stderr=stderr or sys.stderr)
    parser = buildParser()
    try:
        # argparse prints help to sys.stdout and usage errors to sys.stderr.
        with redirect_stdout(output.stdout), redirect_stderr(output.stderr):
            options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    run: Runner | None = getattr(options, "run", None)
    if run is None:
        # A command group (e.g. bare "edge-tunnel certs") without a subcommand.
        usage: argparse.ArgumentParser = getattr(options, "usageParser", parser)
        usage.print_help(output.stderr)
        return EXIT_ERROR
    try:
        return run(options, output)
    except (CommandError, TunnelError, ValueError) as e:
        _error(output, str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        _error(output, f"{where}{e.strerror or e}")
    return EXIT_ERROR


def _error(output: Output, message: str) -> None:
    """Print an expected error as one line."""
    line = " ".join(message.split())
    print(f"{PROGRAM}: error: {line}", file=output.stderr)


# edge-tunnel certs
