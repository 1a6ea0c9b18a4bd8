"""
What an operator sees of running daemons: the meta listeners (C{/healthz},
C{/readyz}, C{/metrics}, C{/agents}), C{edge-tunnel status}, and JSON logs.

Real processes (L{tests.system.test_daemons.TunnelProcessesTestCase}: a server
and an agent with six streams flowing through them); the metrics text is
parsed with prometheus_client's own parser, never grepped.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue

from tests.metrics.test_metrics import Samples, parseSamples
from tests.realnet import Daemon, daemonEnvironment, waitUntil
from tests.system.test_daemons import ConnectReceiver, TunnelProcessesTestCase
from twisted_tunnel import __version__


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of the sample C{name} with exactly C{labels}."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        known = sorted(f"{n}{dict(ls)}" for n, ls in samples if n == name)
        raise AssertionError(f"no sample {name}{labels}; there are {known}")
    return samples[key]


async def get(port: int, path: str) -> tuple[int, str]:
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    body = await response.text("utf-8")
    return response.code, body


async def metrics(port: int) -> Samples:
    code, text = await get(port, "/metrics")
    assert code == 200, (code, text)
    return parseSamples(text)


async def metaPort(daemon: Daemon) -> int:
    return int((await daemon.waitForLine(rb"MetaSite starting on (\d+)")).group(1))


class MetaListenerTests(TunnelProcessesTestCase):
    async def test_probesMetricsAgentsAndStatus(self) -> None:
        """
        With three forward and three CONNECT streams flowing, and one
        CONNECT to a node that has no agent: both daemons are healthy and
        ready, their metrics count exactly that, C{/agents} lists the agent,
        and C{edge-tunnel status} prints it.
        """
        edge, server, agent, clients = await self.startTunnel()
        serverMeta, agentMeta = await metaPort(server), await metaPort(agent)
        stray = ConnectReceiver("edge-9:10250")
        await connectProtocol(UNIXClientEndpoint(reactor, self.connectSocket), stray)
        await waitUntil(lambda: stray.lostAt is not None, 10.0, "the stray CONNECT to end")

        for port, ready in [
            (serverMeta, "ok: 1 agent(s) connected"),
            (agentMeta, "ok: holding tunnels to 1 of 1 servers"),
        ]:
            self.assertEqual(await get(port, "/healthz"), (200, "ok\n"))
            self.assertEqual(await get(port, "/readyz"), (200, ready + "\n"))

        s = await metrics(serverMeta)
        self.assertEqual(sample(s, "edge_tunnel_server_agents_connected"), 1)
        for policy in ("forward", "connect"):
            self.assertEqual(sample(s, "edge_tunnel_server_streams_open", policy=policy), 3)
            self.assertEqual(
                sample(s, "edge_tunnel_server_streams_opened_total", policy=policy), 3
            )
            self.assertEqual(
                sample(s, "edge_tunnel_server_stream_open_seconds_count", policy=policy), 3
            )
            fromNode = sample(
                s, "edge_tunnel_server_stream_bytes_total", policy=policy, direction="from_node"
            )
            self.assertGreaterEqual(fromNode, 3 * 8 * 1024)
        self.assertEqual(
            sample(s, "edge_tunnel_server_stream_open_failures_total", reason="unknown_node"), 1
        )
        self.assertEqual(sample(s, "edge_tunnel_server_draining"), 0)

        a = await metrics(agentMeta)
        (serverId,) = [dict(labels)["server_id"] for n, labels in a if n.endswith("tunnel_up")]
        self.assertEqual(sample(a, "edge_tunnel_agent_tunnel_up", server_id=serverId), 1)
        self.assertEqual(sample(a, "edge_tunnel_agent_servers_wanted"), 1)
        self.assertEqual(sample(a, "edge_tunnel_agent_streams_open"), 6)
        self.assertEqual(sample(a, "edge_tunnel_agent_dials_total", result="ok"), 6)
        self.assertEqual(sample(a, "edge_tunnel_agent_connects_total", result="ok"), 1)
        self.assertGreaterEqual(
            sample(a, "edge_tunnel_agent_stream_bytes_total", direction="from_node"),
            6 * 8 * 1024,
        )
        info = {"server_id": serverId, "server_count": "1", "version": __version__}
        self.assertEqual(sample(s, "edge_tunnel_server_info", **info), 1)

        code, body = await get(serverMeta, "/agents")
        self.assertEqual(code, 200)
        document = json.loads(body)
        self.assertEqual(document["server_id"], serverId)
        (record,) = document["agents"]
        self.assertEqual((record["node"], record["streams_open"]), ("edge-1", 6))
        self.assertGreater(record["bytes_from_node"], 0)

        out, err, code = await self.status("--server", f"http://127.0.0.1:{serverMeta}")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertIn(f"server {serverId}, one of 1 replica(s): ready", lines[0])
        (row,) = [line for line in lines if line.startswith("edge-1 ")]
        self.assertEqual(row.split()[3], "6")  # STREAMS
        self.assertRegex(lines[-1], r"^1 agent, 6 streams open, .* to nodes, .* from nodes$")
        out, err, code = await self.status("--server", f"http://127.0.0.1:{serverMeta}", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["agents"][0]["node"], "edge-1")

    async def status(self, *arguments: str) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "twisted_tunnel.cli", "status", *arguments],
            env=daemonEnvironment(),
        )
        return out.decode(), err.decode(), code

    async def test_drainingServer(self) -> None:
        """
        SIGTERM to the server: while it drains its meta listener still
        answers, healthy but not ready ("draining"); once it is gone, the
        agent is not ready either, and C{edge-tunnel status} says it cannot
        reach the server.
        """
        edge, server, agent, clients = await self.startTunnel("--drain-timeout", "6")
        serverMeta, agentMeta = await metaPort(server), await metaPort(agent)
        server.kill(signal.SIGTERM)
        await server.waitForLine(rb"draining 1 agent", 5.0)
        self.assertEqual(await get(serverMeta, "/healthz"), (200, "ok\n"))
        self.assertEqual(await get(serverMeta, "/readyz"), (503, "draining: shutting down\n"))
        self.assertEqual(sample(await metrics(serverMeta), "edge_tunnel_server_draining"), 1)
        await waitUntil(lambda: not server.running, 15.0, "the server to exit")
        code, body = await get(agentMeta, "/readyz")
        self.assertEqual((code, body), (503, "holding tunnels to 0 of 1 servers\n"))
        out, err, code = await self.status("--server", f"http://127.0.0.1:{serverMeta}")
        self.assertEqual(code, 2)
        self.assertIn("cannot reach", err)
        self.assertEqual(err.count("\n"), 1, err)


class LogLevelTests(TunnelProcessesTestCase):
    async def healthCheck(self, server: Daemon) -> None:
        """
        A TCP connection to the agent port that closes without a word (a
        load balancer's health check: a debug line), until it is counted.
        """
        tunnelPort = int((await server.waitForLine(rb"\(TLS\) starting on (\d+)")).group(1))
        probe = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", tunnelPort), probe)
        assert probe.transport is not None
        probe.transport.loseConnection()
        serverMeta = await metaPort(server)

        async def counted() -> float:
            samples = await metrics(serverMeta)
            name = "edge_tunnel_server_tls_handshake_failures_total"
            return sample(samples, name, reason="connection_closed")

        deadline = reactor.seconds() + 10
        while await counted() < 1:
            self.assertLess(reactor.seconds(), deadline, "the health check was never counted")

    async def test_debugOnlyWhenAskedFor(self) -> None:
        """
        C{--log-level debug} writes debug lines (a health check's); by
        default (info) the same health check writes none, on either daemon.
        """
        debug = b"#debug]"
        _, server, agent, _ = await self.startTunnel("--log-level", "debug")
        await self.healthCheck(server)
        await server.waitForLine(rb"#debug\] refused agent connection from")
        _, server, agent, _ = await self.startTunnel()
        await self.healthCheck(server)
        for daemon in (server, agent):
            self.assertEqual([line for line in daemon.lines if debug in line], [], daemon.name)
            self.assertTrue(any(b"#info]" in line for line in daemon.lines), daemon.name)


class JSONLogTests(TunnelProcessesTestCase):
    async def test_jsonLines(self) -> None:
        """
        C{--log-format json}: every line the agent prints is one JSON object
        with the event's structured fields and its text.
        """
        edge, server, agent, clients = await self.startTunnel(
            "--log-format", "json", agentOptions=["--log-format", "json"]
        )
        for daemon in (server, agent):
            events: list[dict[str, Any]] = [json.loads(line) for line in daemon.lines]
            self.assertTrue(events, daemon.name)
            for event in events:
                self.assertIn(event["log_level"], ("debug", "info", "warn", "error", "critical"))
                self.assertIsInstance(event["log_time"], float)
                self.assertIn("text", event)
        (up,) = [e for e in map(json.loads, agent.lines) if "tunnel up to" in e["text"]]
        self.assertEqual((up["held"], up["wanted"]), (1, 1))
        (connected,) = [
            e for e in map(json.loads, server.lines) if "agent edge-1 connected" in e["text"]
        ]
        self.assertEqual(connected["node"], "edge-1")
