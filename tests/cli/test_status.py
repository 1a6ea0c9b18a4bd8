"""
Tests for L{twisted_tunnel.cli.status}: how C{edge-tunnel status} renders a server's
document.
"""

from __future__ import annotations

import datetime

from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.cli.status import age, render, size

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
