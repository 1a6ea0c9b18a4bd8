"""
Tests for the raw TCP proxy listener (L{twisted_tunnel.doors.proxy.RawProxyFactory}),
on real sockets.

Raw TCP has no C{Host} header: the listener routes a connection by its
original destination, which only iptables DNAT gives it.  So:

    - on the host's loopback, in this process: a connection straight to the
      listener (not DNATed) is closed by the server, with one log line
      saying why, and nothing goes through the tunnel;
    - in a network namespace (L{tests.netns}; root only, skipped otherwise
      unless C{CI=true}): the whole world (tunnel server, agent for
      C{edge-1} with node IP C{10.123.0.7}, echo service, raw listener) runs
      in one process inside the namespace (L{tests.system.rawproxy_world}), and
      iptables DNAT in the namespace's C{OUTPUT} chain brings
      C{10.123.0.7:<port>} to the listener.  A forwarded port is echoed
      through the tunnel; a port that is not forwarded, and a connection
      that was not DNATed, are closed, each with one log line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.netns import Namespace, requireNetns
from tests.realnet import daemonEnvironment, plainTunnel, waitUntil
from tests.services import connectRecordingClient, listen
from tests.system.rawproxy_world import NODE, REFUSAL_FORMAT, SCENARIO_TIMEOUT
from twisted_tunnel.doors.proxy import ProxyRouter, RawProxyFactory
from twisted_tunnel.forwarding.config import parseConfigData

#: The edge node's IP, on an interface in the namespace.
NODE_IP = "10.123.0.7"

#: Ports inside a fresh namespace are all free, so they are fixed: the echo
#: service (forwarded as raw TCP, dialled on the node's loopback), the raw
#: listener (the server daemon's default), a port no key forwards.
ECHO_PORT = 9100
LISTENER_PORT = 10268
UNFORWARDED_PORT = 9200

NOT_DNATED = "this connection was not DNATed"


def refusals(events: Any) -> list[dict[str, Any]]:
    """The raw listener's refusal log events among C{events}."""
    return [event for event in events if event.get("log_format") == REFUSAL_FORMAT]


class LoopbackTests(TestCase):
    """The raw listener on the host's loopback, where nothing is DNATed."""

    async def test_notDNATedIsClosed(self) -> None:
        """
        A connection made straight to the listener has no original
        destination to route by: the server closes it (the client sends
        nothing, so the close is the server's own doing), logs one line
        saying it was not DNATed, and opens no stream.
        """
        server, _, _ = await plainTunnel(self, NODE)
        record = server.registry.lookup(NODE)
        assert record is not None
        opens: list[tuple[str, int]] = []
        openStream = record.tunnel.openStream

        def recordingOpenStream(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            opens.append((host, port))
            return openStream(host, port, *args, **kwargs)

        self.patch(record.tunnel, "openStream", recordingOpenStream)
        config = parseConfigData({"tcp-proxy-ports": str(ECHO_PORT)})
        port = listen(self, RawProxyFactory(ProxyRouter(server, "tcp", lambda: config)))
        with capturedLogs() as events:
            client = await connectRecordingClient(self, port)
            await waitUntil(lambda: client.closed, 10, "the server to close the connection")
        self.assertTrue(client.eof, "the server closed the connection (EOF first)")
        self.assertEqual(client.received, b"")
        lines = [formatEvent(event) for event in refusals(events)]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(NOT_DNATED, lines[0])
        event = refusals(events)[0]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["listener"], "tcp")
        self.assertEqual(opens, [])
        self.assertEqual(record.tunnel.streamCount, 0)


def scenario(connections: list[dict[str, Any]]) -> dict[str, Any]:
    """What L{tests.system.rawproxy_world} builds, and which clients it connects."""
    return {
        "nodeIP": NODE_IP,
        "echoPort": ECHO_PORT,
        "listenerPort": LISTENER_PORT,
        "config": {
            "tcp-proxy-ports": str(ECHO_PORT),
            "localhost-proxy-ports": str(ECHO_PORT),
        },
        "connections": connections,
    }


def connection(case: str, host: str, port: int, send: str = "") -> dict[str, Any]:
    return {"case": case, "host": host, "port": port, "send": send}


class NamespaceTests(SynchronousTestCase):
    """
    The raw listener behind real iptables DNAT, in a namespace of our own
    with C{10.123.0.7/24} on a dummy interface.

    The rules match C{-d 10.123.0.7} only: the agent dials the echo service
    on the node's loopback (C{localhost-proxy-ports}), which they must not
    catch, or the stream would come back to the listener instead of
    reaching the service.
    """

    def setUp(self) -> None:
        requireNetns(self, "iptables")
        self.namespace = Namespace.create(self, "tt")
        self.namespace.addDummy(f"{NODE_IP}/24")
        for port in (ECHO_PORT, UNFORWARDED_PORT):
            self.namespace.iptables(
                "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", NODE_IP,
                "--dport", str(port),
                "-j", "DNAT", "--to-destination", f"127.0.0.1:{LISTENER_PORT}",
            )  # fmt: skip

    def runWorld(self, connections: list[dict[str, Any]]) -> dict[str, Any]:
        """Run L{tests.system.rawproxy_world} in the namespace; its report."""
        result = self.namespace.run(
            sys.executable,
            "-m",
            "tests.system.rawproxy_world",
            input=json.dumps(scenario(connections)),
            env=daemonEnvironment(),
            timeout=SCENARIO_TIMEOUT + 5,
        )
        report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        self.assertEqual(report["failures"], [], report)
        return report

    def test_echoedThroughTheTunnel(self) -> None:
        """
        A client dials C{10.123.0.7:9100}; DNAT brings it to the raw
        listener, which routes it by its original destination to node
        C{edge-1}, port 9100, dialled on the node's loopback: the echo
        comes back.  The server's tunnel carried exactly that one stream,
        and the agent's own dial was not DNATed.
        """
        payload = "raw bytes, through DNAT and the tunnel\n" * 100
        report = self.runWorld([connection("echo", NODE_IP, ECHO_PORT, payload)])
        echo = report["cases"]["echo"]
        self.assertEqual(echo.get("received"), payload, echo)
        self.assertTrue(echo["eof"], echo)
        self.assertEqual(echo["refusals"], [])
        self.assertEqual(report["opens"], [["127.0.0.1", ECHO_PORT]])
        self.assertEqual(report["streamsOpenAtEnd"], 0)
        [seen] = report["echoConnections"]
        self.assertEqual(seen["host"], ["127.0.0.1", ECHO_PORT])
        self.assertEqual(seen["peer"][0], "127.0.0.1")
        self.assertIsNone(seen["originalDestination"], seen)

    def test_refused(self) -> None:
        """
        A DNATed connection to a port no key forwards is closed with one
        "not forwarded" line; so is one made straight to the listener
        (tracked by conntrack here, but not NATed), with one "not DNATed"
        line.  Neither opens a stream.
        """
        report = self.runWorld(
            [
                connection("unforwarded", NODE_IP, UNFORWARDED_PORT),
                connection("direct", "127.0.0.1", LISTENER_PORT),
            ]
        )
        unforwarded = report["cases"]["unforwarded"]
        self.assertEqual(unforwarded.get("received"), "", unforwarded)
        self.assertTrue(unforwarded["eof"], unforwarded)
        [line] = unforwarded["refusals"]
        self.assertIn(f"port {UNFORWARDED_PORT} is not forwarded", line["text"])
        self.assertEqual(line["where"], f"{NODE_IP}:{UNFORWARDED_PORT}")
        self.assertEqual(line["level"], "info")
        direct = report["cases"]["direct"]
        self.assertEqual(direct.get("received"), "", direct)
        self.assertTrue(direct["eof"], direct)
        [line] = direct["refusals"]
        self.assertIn(NOT_DNATED, line["text"])
        self.assertEqual(report["opens"], [])
        self.assertEqual(report["echoConnections"], [])
