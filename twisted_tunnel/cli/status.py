# -*- test-case-name: tests.cli.test_status -*-
"""
C{edge-tunnel status}: a server's agents and totals at a glance, from its
meta listener (C{/agents} and C{/readyz}, see L{twisted_tunnel.meta})::

    $ edge-tunnel status --server http://10.0.0.5:10265
    server 4f1c2a9e07b1, one of 2 replica(s): ready: ok: 2 agent(s) connected

    NODE     IPS           CONNECTED  STREAMS  TO NODE   FROM NODE  PEER
    edge-1   172.30.1.10   3h12m      4        1.2 MiB   88.0 MiB   10.199.0.1:51512
    edge-2   172.30.2.10   5m03s      0        512 B     2.0 KiB    10.199.0.1:40022

    2 agents, 4 streams open, 1.2 MiB to nodes, 88.0 MiB from nodes

C{--json} prints the same as one JSON document, for scripts.  A command
line tool, not the reactor: plain blocking C{urllib} is the right tool.
"""

from __future__ import annotations

import argparse
import datetime
import json
import urllib.error
import urllib.request
from typing import Any

from ._command import EXIT_ERROR, EXIT_OK, CommandError, Output, SubParsers, command

DEFAULT_SERVER = "http://127.0.0.1:10265"

#: Seconds to wait for the server's answer.
TIMEOUT = 10.0


def serverURL(given: str) -> str:
    """
    C{--server} as a URL: C{http://} is assumed when no scheme is given
    (C{127.0.0.1:10265}, C{edge-tunnel-server.kube-system:10265}), as the
    meta listener speaks plain HTTP.

    @raise CommandError: a scheme other than http or https.
    """
    scheme, found, _ = given.partition("://")
    if not found:
        return f"http://{given}"
    if scheme not in ("http", "https"):
        raise CommandError(
            f"--server {given[:100]!r}: the meta listener's URL is http://HOST:PORT "
            "(its default port is 10265)"
        )
    return given


def fetch(base: str, path: str) -> tuple[int, bytes]:
    """GET C{base + path}: the status and body, whatever the status."""
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CommandError(f"cannot reach {url}: {reason}") from None


def readStatus(base: str) -> dict[str, Any]:
    """The server's C{/agents} document, with its readiness added."""
    code, body = fetch(base, "/agents")
    if code != 200:
        raise CommandError(
            f"{base}/agents answered HTTP {code}{_said(body)}: is this a server's meta "
            "listener (--meta-endpoint, port 10265 by default)?"
        )
    try:
        document: dict[str, Any] = json.loads(body)
    except ValueError:
        raise CommandError(
            f"{base}/agents is not JSON: is this a server's meta listener?"
        ) from None
    readyCode, readyBody = fetch(base, "/readyz")
    document["ready"] = readyCode == 200
    document["readiness"] = readyBody.decode("utf-8", "replace").strip()
    return document


def _said(body: bytes) -> str:
    """
    What an error answer said, when it is one short line of text (a
    server's own refusal); nothing for a page of HTML or anything long.
    """
    text = body.decode("utf-8", "replace").strip()
    if not text or "\n" in text or "<" in text or len(text) > 120:
        return ""
    return f" ({text})"


def size(count: int) -> str:
    """C{count} bytes, readably (B, KiB, MiB, GiB, TiB)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def age(since: str, now: datetime.datetime) -> str:
    """How long ago C{since} (ISO 8601) was: C{42s}, C{5m03s}, C{3h12m}, C{2d04h}."""
    seconds = int(max((now - datetime.datetime.fromisoformat(since)).total_seconds(), 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def table(rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def render(document: dict[str, Any], now: datetime.datetime) -> list[str]:
    """The lines C{edge-tunnel status} prints for C{document}."""
    agents = document["agents"]
    state = "ready" if document["ready"] else "NOT READY"
    lines = [
        f"server {document['server_id']}, one of {document['server_count']} replica(s): "
        f"{state}: {document['readiness']}",
        "",
    ]
    if agents:
        rows = [["NODE", "IPS", "CONNECTED", "STREAMS", "TO NODE", "FROM NODE", "PEER"]]
        rows += [
            [
                agent["node"],
                ",".join(agent["ips"]) or "-",
                age(agent["connected_since"], now),
                str(agent["streams_open"]),
                size(agent["bytes_to_node"]),
                size(agent["bytes_from_node"]),
                agent["peer"],
            ]
            for agent in agents
        ]
        lines += table(rows) + [""]
    streams = sum(agent["streams_open"] for agent in agents)
    toNodes = sum(agent["bytes_to_node"] for agent in agents)
    fromNodes = sum(agent["bytes_from_node"] for agent in agents)
    lines.append(
        f"{len(agents)} agent{'' if len(agents) == 1 else 's'}, {streams} stream"
        f"{'' if streams == 1 else 's'} open, {size(toNodes)} to nodes, "
        f"{size(fromNodes)} from nodes"
    )
    return lines


def _status(options: argparse.Namespace, output: Output) -> int:
    document = readStatus(serverURL(options.server))
    if options.json:
        output.say(json.dumps(document, indent=2, sort_keys=True))
    else:
        for line in render(document, datetime.datetime.now(datetime.UTC)):
            output.say(line)
    return EXIT_OK if document["ready"] else EXIT_ERROR


@command("status")
def _addStatus(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show a server's agents and totals",
        description="Ask a server's meta listener for its agents and print them with totals. "
        "Exits 2 when the server is not ready.",
    )
    parser.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        metavar="URL",
        help=f"the server's meta listener, http://HOST:PORT (default: {DEFAULT_SERVER}; "
        "http:// is assumed without a scheme)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=_status)
