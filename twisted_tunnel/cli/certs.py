# -*- test-case-name: tests.cli.test_cli -*-
"""
C{edge-tunnel certs}: the tunnel's private PKI in a directory (C{./pki} by
default): the CA, the server's, each agent's and each client's certificate.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence

from twisted_tunnel.tls.certs import (
    Issued,
    mintAgent,
    mintCA,
    mintClient,
    mintServer,
    readPair,
    validateClientName,
    validateNodeName,
    writePair,
)

from ._command import EXIT_OK, PROGRAM, CommandError, Output, SubParsers, command

DEFAULT_PKI_DIRECTORY = "pki"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")


def _pkiDirectoryOption(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        dest="directory",
        default=DEFAULT_PKI_DIRECTORY,
        metavar="DIR",
        help=f"the PKI directory (default: ./{DEFAULT_PKI_DIRECTORY})",
    )


def _daysOption(parser: argparse.ArgumentParser, default: int = 365) -> None:
    parser.add_argument(
        "--days", type=int, default=default, help=f"validity in days (default: {default})"
    )


def _caPaths(directory: str) -> tuple[str, str]:
    return os.path.join(directory, "ca.pem"), os.path.join(directory, "ca-key.pem")


def _loadCA(directory: str) -> Issued:
    """Read the CA of a PKI directory, or explain how to make one."""
    certPath, keyPath = _caPaths(directory)
    missing = [path for path in (certPath, keyPath) if not os.path.exists(path)]
    if missing:
        raise CommandError(
            f"no CA in {directory} ({missing[0]} does not exist); "
            f"run '{PROGRAM} certs init --dir {directory}' first"
        )
    return readPair(certPath, keyPath)


def _write(output: Output, issued: Issued, directory: str, stem: str) -> None:
    """Write C{<stem>.pem} and C{<stem>-key.pem} in C{directory} and report both."""
    os.makedirs(directory, exist_ok=True)
    certPath = os.path.join(directory, f"{stem}.pem")
    keyPath = os.path.join(directory, f"{stem}-key.pem")
    writePair(issued, certPath, keyPath)
    output.say(f"wrote {certPath}")
    output.say(f"wrote {keyPath}")


def _certsInit(options: argparse.Namespace, output: Output) -> int:
    certPath, keyPath = _caPaths(options.directory)
    existing = [path for path in (certPath, keyPath) if os.path.exists(path)]
    if existing and not options.force:
        raise CommandError(
            f"{existing[0]} already exists; replacing the CA invalidates every "
            "certificate it signed (use --force to do it anyway)"
        )
    _write(output, mintCA(options.commonName, days=options.days), options.directory, "ca")
    return EXIT_OK


def _certsServer(options: argparse.Namespace, output: Output) -> int:
    names: list[str] = list(options.names or []) + _ipAddresses(options.ips)
    if not names:
        names = list(DEFAULT_SERVER_NAMES)
    ca = _loadCA(options.directory)
    _write(output, mintServer(ca, names, days=options.days), options.directory, "server")
    return EXIT_OK


def _certsAgent(options: argparse.Namespace, output: Output) -> int:
    node = validateNodeName(options.node)
    ips = _ipAddresses(options.ips)
    ca = _loadCA(options.directory)
    issued = mintAgent(ca, node, ips, days=options.days)
    _write(output, issued, options.directory, f"agent-{node}")
    return EXIT_OK


def _certsClient(options: argparse.Namespace, output: Output) -> int:
    name: str = validateClientName(options.name)
    if "/" in name or name.startswith("."):
        raise CommandError(f"invalid client name {name!r}: it is part of a file name")
    ca = _loadCA(options.directory)
    _write(output, mintClient(ca, name, days=options.days), options.directory, f"client-{name}")
    return EXIT_OK


@command("certs")
def _addCerts(subparsers: SubParsers) -> None:
    """C{edge-tunnel certs}: make the CA and the certificates it signs."""
    certs = subparsers.add_parser(
        "certs",
        help="make the tunnel's CA and certificates",
        description="Make the tunnel's private CA and the certificates it signs.",
    )
    certs.set_defaults(usageParser=certs)
    kinds = certs.add_subparsers(title="certificates", metavar="KIND")

    init = kinds.add_parser(
        "init",
        help="make the CA (DIR/ca.pem, DIR/ca-key.pem)",
        description="Make the tunnel's CA: DIR/ca.pem and DIR/ca-key.pem.",
    )
    _pkiDirectoryOption(init)
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (invalidates its certificates)",
    )
    init.add_argument(
        "--cn",
        dest="commonName",
        default="edge-tunnel CA",
        metavar="NAME",
        help="the CA's common name",
    )
    _daysOption(init, default=3650)
    init.set_defaults(run=_certsInit)

    server = kinds.add_parser(
        "server",
        help="make the server's certificate (DIR/server.pem, DIR/server-key.pem)",
        description=(
            "Make the tunnel server's certificate, for every name and address agents "
            "dial it by (default: localhost and 127.0.0.1)."
        ),
    )
    _pkiDirectoryOption(server)
    server.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="a DNS name (or IP address) of the server; repeat for several",
    )
    server.add_argument(
        "--ip",
        dest="ips",
        action="append",
        metavar="IP",
        help="an IP address of the server; repeat for several",
    )
    _daysOption(server)
    server.set_defaults(run=_certsServer)

    agent = kinds.add_parser(
        "agent",
        help="make an agent's certificate (DIR/agent-NODE.pem, DIR/agent-NODE-key.pem)",
        description=(
            "Make the certificate of the agent on node NODE (CN=system:node:NODE, O=system:nodes)."
        ),
    )
    agent.add_argument("node", metavar="NODE", help="the Kubernetes node name")
    _pkiDirectoryOption(agent)
    agent.add_argument(
        "--ip",
        dest="ips",
        action="append",
        metavar="IP",
        help="an IP address of the node; repeat for several",
    )
    _daysOption(agent)
    agent.set_defaults(run=_certsAgent)

    client = kinds.add_parser(
        "client",
        help=(
            "make a client certificate for the CONNECT door and the HTTPS proxy listener "
            "(DIR/client-NAME.pem, DIR/client-NAME-key.pem)"
        ),
        description=(
            "Make the certificate of a client of the CONNECT door and the HTTPS proxy "
            "listener, e.g. kube-apiserver. A client is never a node: system:node:* names "
            "are refused (use 'certs agent NODE')."
        ),
    )
    client.add_argument("name", metavar="NAME", help="the client's name (common name)")
    _pkiDirectoryOption(client)
    _daysOption(client)
    client.set_defaults(run=_certsClient)


def _ipAddresses(texts: Sequence[str] | None) -> list[str]:
    """Check that every C{--ip} is an IP address literal, and normalize them."""
    addresses = []
    for text in texts or ():
        try:
            addresses.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise CommandError(f"--ip {text}: not an IP address") from None
    return addresses
