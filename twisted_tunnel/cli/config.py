# -*- test-case-name: tests.cli.test_config -*-
"""
C{edge-tunnel config check}: would the server take this ConfigMap?

Mainly for a move from yurt-tunnel or ACK Edge's tunnel (docs/migration.md):
their ConfigMap keys are ours, but where they log and skip a bad value (or
drop a bad C{dnat-ports-pair} without a word) the server refuses the whole
configuration.  Checking the ConfigMap that is in the cluster today, before
the switch, shows what the server will forward or the one line it would
refuse it with::

    $ kubectl -n kube-system get configmap yurt-tunnel-server-cfg -o yaml \\
        | edge-tunnel config check -
    -: http 9051, 10255; https 8080, 9052, 10250; localhost 8080, 10250, 10255, 10266, 10267;
       dnat none; tcp none

The same checks and bounds as the server's (L{loadConfig}, L{parseManifest}):
a manifest file, a ConfigMap-volume directory or standard input.  Policies
named in C{policy-ports} are looked up among the built-in ones and the
installed plugins, as the server does without C{--policy}.
"""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO

from ..forwarding.config import (
    DEFAULT_HTTP_LISTENER_PORT,
    MAX_CONFIG_BYTES,
    ConfigError,
    ProxyConfig,
    loadConfig,
    parseManifest,
)
from ..forwarding.policy import findPolicy
from ._command import EXIT_OK, Output, SubParsers, command

STDIN = "-"


def checkConfig(
    source: str,
    httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
    stdin: BinaryIO | None = None,
) -> ProxyConfig:
    """
    The configuration C{source} holds: a path (manifest or volume
    directory), or C{-} for a manifest on standard input (read up to one
    byte past L{MAX_CONFIG_BYTES}, so a larger one is refused, not read
    whole).

    @param stdin: where C{-} is read from (standard input by default).
    @raise ConfigError: what the server would refuse it with.
    """
    if source != STDIN:
        return loadConfig(source, httpListenerPort=httpListenerPort, resolvePolicy=findPolicy)
    content = (stdin or sys.stdin.buffer).read(MAX_CONFIG_BYTES + 1)
    try:
        return parseManifest(content, httpListenerPort=httpListenerPort, resolvePolicy=findPolicy)
    except ConfigError as e:
        raise e.withPath("<stdin>") from None


def _check(options: argparse.Namespace, output: Output) -> int:
    # a refusal (ConfigError) is printed by main() as one line, exit status 2
    config = checkConfig(options.source, options.http_listener_port)
    output.say(f"{options.source}: {config.describe()}")
    return EXIT_OK


@command("config")
def _addConfig(subparsers: SubParsers) -> None:
    """C{edge-tunnel config}: the edge-tunnel-server-cfg ConfigMap."""
    config = subparsers.add_parser(
        "config",
        help="check an edge-tunnel-server-cfg ConfigMap",
        description="Tools for the kube-system/edge-tunnel-server-cfg ConfigMap.",
    )
    config.set_defaults(usageParser=config)
    actions = config.add_subparsers(title="actions", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="say what the server would forward, or why it would refuse the ConfigMap",
        description="Check a ConfigMap as the server would: print the ports it forwards, or "
        "the one line it would refuse it with (exit status 2). Takes what yurt-tunnel's and "
        "ACK Edge's tunnels take, where the value is valid.",
    )
    check.add_argument(
        "source",
        metavar="SOURCE",
        help="a ConfigMap manifest (kubectl get configmap NAME -o yaml), a directory as the "
        "kubelet mounts a ConfigMap volume, or - for a manifest on standard input",
    )
    check.add_argument(
        "--http-listener-port",
        type=int,
        default=DEFAULT_HTTP_LISTENER_PORT,
        metavar="PORT",
        help="the HTTP proxy listener's port, the only valid right side of a dnat-ports-pair "
        f"(default: {DEFAULT_HTTP_LISTENER_PORT})",
    )
    check.set_defaults(run=_check)
