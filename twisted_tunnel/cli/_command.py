"""
The plumbing every C{edge-tunnel} subcommand shares: how it registers
(L{command}), how it reports (L{Output}, L{CommandError}), and the exit
statuses.  A module of its own so that the subcommands' modules
(L{twisted_tunnel.cli.certs}, L{twisted_tunnel.cli.status}) and the main
one (L{twisted_tunnel.cli}) import it, and not each other.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from attrs import frozen

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "PROGRAM",
    "Adder",
    "CommandError",
    "Output",
    "Runner",
    "SubParsers",
    "command",
    "registered",
]

PROGRAM = "edge-tunnel"
EXIT_OK = 0
EXIT_ERROR = 2


class CommandError(Exception):
    """
    A subcommand cannot do what it was asked, for a reason the operator can fix.

    L{main} prints the message as one line on standard error and exits with
    status 2.
    """


@frozen
class Output:
    """Where a subcommand writes: results to C{stdout}, problems to C{stderr}."""

    stdout: TextIO
    stderr: TextIO

    def say(self, line: str) -> None:
        """Report one result line."""
        print(line, file=self.stdout)


Runner = Callable[[argparse.Namespace, Output], int]
"""What a (leaf) subcommand does: given the parsed options, return an exit status."""

Adder = Callable[[SubParsers], None]
"""Adds one top-level subcommand (with its options and C{run=}) to the main parser."""

_COMMANDS: dict[str, Adder] = {}


def command(name: str) -> Callable[[Adder], Adder]:
    """
    Register a top-level subcommand.

    The decorated function receives the main parser's subparsers and adds
    its own parser to it, setting the default C{run} to a L{Runner}.
    """

    def register(adder: Adder) -> Adder:
        if name in _COMMANDS:
            raise ValueError(f"subcommand {name!r} is already registered")
        _COMMANDS[name] = adder
        return adder

    return register


def registered() -> dict[str, Adder]:
    """The subcommands registered so far, by name."""
    return dict(_COMMANDS)
