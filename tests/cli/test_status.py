"""
Tests for L{twisted_tunnel.cli.status}: how C{edge-tunnel status} renders a server's
document, and what it says when C{--server} is not one.
"""

from __future__ import annotations

import datetime
import http.server
import threading

from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.cli._command import CommandError
from twisted_tunnel.cli.status import _said, age, readStatus, render, serverURL, size

NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)


class RenderTests(SynchronousTestCase):
    def test_size(self) -> None:
        for count, text in [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB")]:
            self.assertEqual(size(count), text)

    def test_age(self) -> None:
        for seconds, text in [(42, "42s"), (303, "5m03s"), (11520, "3h12m"), (187200, "2d04h")]:
            since = (NOW - datetime.timedelta(seconds=seconds)).isoformat()
            self.assertEqual(age(since, NOW), text)

    def test_render(self) -> None:
        document = {
            "server_id": "srv-a",
            "server_count": 2,
            "ready": True,
            "readiness": "ok: 2 agent(s) connected",
            "agents": [
                {
                    "node": "edge-1",
                    "ips": ["172.30.1.10"],
                    "peer": "10.199.0.1:51512",
                    "connected_since": "2026-11-26T11:59:18+00:00",
                    "streams_open": 4,
                    "bytes_to_node": 2048,
                    "bytes_from_node": 5 << 20,
                },
                {
                    "node": "edge-22",
                    "ips": [],
                    "peer": "10.199.0.1:40022",
                    "connected_since": "2026-11-26T12:00:00+00:00",
                    "streams_open": 0,
                    "bytes_to_node": 0,
                    "bytes_from_node": 0,
                },
            ],
        }
        self.assertEqual(
            render(document, NOW),
            [
                "server srv-a, one of 2 replica(s): ready: ok: 2 agent(s) connected",
                "",
                "NODE     IPS          CONNECTED  STREAMS  TO NODE  FROM NODE  PEER",
                "edge-1   172.30.1.10  42s        4        2.0 KiB  5.0 MiB    10.199.0.1:51512",
                "edge-22  -            0s         0        0 B      0 B        10.199.0.1:40022",
                "",
                "2 agents, 4 streams open, 2.0 KiB to nodes, 5.0 MiB from nodes",
            ],
        )

    def test_noAgent(self) -> None:
        document = {
            "server_id": "srv-a",
            "server_count": 1,
            "ready": False,
            "readiness": "config stale: bad",
            "agents": [],
        }
        self.assertEqual(
            render(document, NOW),
            [
                "server srv-a, one of 1 replica(s): NOT READY: config stale: bad",
                "",
                "0 agents, 0 streams open, 0 B to nodes, 0 B from nodes",
            ],
        )


class ServerURLTests(SynchronousTestCase):
    def test_schemeAssumed(self) -> None:
        """Without a scheme, http:// is assumed (it was 'unknown url type')."""
        self.assertEqual(serverURL("127.0.0.1:10265"), "http://127.0.0.1:10265")
        self.assertEqual(serverURL("https://meta:10265"), "https://meta:10265")

    def test_otherSchemeRefused(self) -> None:
        error = self.assertRaises(CommandError, serverURL, "ftp://meta:10265")
        self.assertIn("http://HOST:PORT", str(error))


class _NotFound(http.server.BaseHTTPRequestHandler):
    """Answers what a web server that is no meta listener answers: an HTML 404 page."""

    def do_GET(self) -> None:
        self.send_error(404)

    def log_message(self, *_: object) -> None:
        pass


class WrongServerTests(SynchronousTestCase):
    def test_htmlNotQuoted(self) -> None:
        """
        Pointed at something that is no meta listener, the error says so and
        which status it got, without the page's HTML (it quoted 200 bytes of it).
        """
        server = http.server.HTTPServer(("127.0.0.1", 0), _NotFound)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        error = self.assertRaises(CommandError, readStatus, base)
        self.assertIn(f"{base}/agents answered HTTP 404", str(error))
        self.assertIn("is this a server's meta listener", str(error))
        self.assertNotIn("<", str(error))

    def test_shortTextQuoted(self) -> None:
        """A one-line text answer (a server's own refusal) is quoted."""
        self.assertEqual(_said(b"forbidden\n"), " (forbidden)")
        self.assertEqual(_said(b"<html>\n<body>x</body></html>"), "")
        self.assertEqual(_said(b"x" * 500), "")
