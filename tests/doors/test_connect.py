# -*- test-case-name: tests.doors.test_connect -*-
"""
Tests for L{twisted_tunnel.doors.connect}: the HTTP CONNECT front door, end to
end over real loopback sockets (a tunnel server, a real agent, an edge
service, the door, and raw TCP clients or curl), plus the target parser.

Everything listens on 127.0.0.1 port 0, and no traffic leaves loopback.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from typing import Any, cast

from attrs import define
from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocolFactory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface.verify import verifyObject

from tests.realnet import plainTunnel, waitUntil
from tests.services import Echo, QuietFactory, RecordingClient, connectRecordingClient, listen
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.doors.connect import (
    ESTABLISHED,
    BadTarget,
    ConnectDoorFactory,
    ConnectProtocol,
    ConnectTarget,
    DirectNetworks,
    directNetwork,
    errorResponse,
    parseTarget,
)
from twisted_tunnel.mux import Tunnel
from twisted_tunnel.server import TunnelServer

reactor: Any = _reactor

NODE = "edge-1"


# -- edge services -------------------------------------------------------------


class Banner(Echo):
    """A server that speaks first, like SSH or SMTP."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"BANNER from edge-1\n")


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"hello from edge-1\n"


@define
class World:
    """One server, one connected agent for node C{edge-1}, edge services, the door."""

    server: TunnelServer
    agent: TunnelAgent
    serverTunnel: Tunnel
    agentTunnel: Tunnel
    door: int
    echo: int
    banner: int
    http: int
    events: list[dict[str, Any]]

    def refusals(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "refused" in e.get("log_format", "")]


class DoorTestCase(TestCase):
    """The door over real sockets, with a real tunnel and agent behind it: the helpers."""

    timeout = 30

    def closedPort(self) -> int:
        """A loopback port nobody listens on (any more)."""
        port = reactor.listenTCP(0, QuietFactory(Echo), interface="127.0.0.1")
        number = int(port.getHost().port)
        port.stopListening()
        return number

    def hangingPort(self) -> int:
        """
        A loopback port whose accept queue is full: Linux drops further SYNs,
        so a connection attempt neither succeeds nor fails until it gives up.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        number = int(listener.getsockname()[1])
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", number))
        return number

    async def world(
        self,
        openTimeout: float = 10.0,
        requestTimeout: float = 30.0,
        direct: DirectNetworks | None = None,
    ) -> World:
        server, agent, agentTunnel = await plainTunnel(self, NODE, openTimeout=openTimeout)
        record = server.registry.lookup(NODE)
        assert record is not None
        site = Site(Hello())
        site.noisy = False
        events: list[dict[str, Any]] = []
        door = ConnectDoorFactory(
            server,
            Logger(observer=cast(ILogObserver, events.append)),
            requestTimeout=requestTimeout,
            direct=direct,
        )
        return World(
            server=server,
            agent=agent,
            serverTunnel=record.tunnel,
            agentTunnel=agentTunnel,
            door=listen(self, door),
            echo=listen(self, QuietFactory(Echo)),
            banner=listen(self, QuietFactory(Banner)),
            http=listen(self, site),
            events=events,
        )

    async def client(self, world: World, send: bytes = b"") -> RecordingClient:
        client = await connectRecordingClient(self, world.door)
        if send:
            assert client.transport is not None
            client.transport.write(send)
        return client

    async def refused(self, world: World, request: bytes) -> bytes:
        """Send C{request}; return the whole answer, which must end the connection."""
        client = await self.client(world, request)
        await client.lost
        self.assertTrue(client.eof, "the door reset the connection instead of closing it")
        return client.received

    def assertRefusal(self, world: World, status: int, **fields: Any) -> dict[str, Any]:
        """Exactly one log line for the refusal, with its fields, and no traceback."""
        refusals = world.refusals()
        self.assertEqual(len(refusals), 1, [formatEvent(e) for e in world.events])
        (event,) = refusals
        self.assertEqual(event["status"], status)
        for name, value in fields.items():
            self.assertEqual(event[name], value, name)
        self.assertTrue(event["peer"].startswith("127.0.0.1:"))
        self.assertFalse([e for e in world.events if "log_failure" in e])
        return event

    @staticmethod
    def connectTo(target: str, extra: bytes = b"") -> bytes:
        return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra


class ConnectDoorTests(DoorTestCase):
    """The door over real sockets, with a real tunnel and agent behind it."""

    # -- established -----------------------------------------------------------

    async def test_relayByName(self) -> None:
        """CONNECT to a node by name: 200, then bytes both ways."""
        world = await self.world()
        client = await self.client(world, self.connectTo(f"{NODE}:{world.echo}"))
        await waitUntil(lambda: client.received == ESTABLISHED, 10.0, "the 200")
        assert client.transport is not None
        client.transport.write(b"ping")
        await waitUntil(lambda: client.received == ESTABLISHED + b"ping", 10.0, "the echo")
        self.assertEqual(world.refusals(), [])

    async def test_relayByIP(self) -> None:
        """CONNECT to one of the node's IPs reaches the same node."""
        world = await self.world()
        client = await self.client(world, self.connectTo(f"127.0.0.1:{world.echo}"))
        await waitUntil(lambda: client.received == ESTABLISHED, 10.0, "the 200")
        self.assertEqual(world.serverTunnel.streamCount, 1)
        assert client.transport is not None
        client.transport.write(b"pong")
        await waitUntil(lambda: client.received == ESTABLISHED + b"pong", 10.0, "the echo")

    async def test_pipelinedBytesForwardedFirst(self) -> None:
        """Bytes sent right after the head (one segment) reach the edge first, in order."""
        world = await self.world()
        client = await self.client(world, self.connectTo(f"{NODE}:{world.echo}", b"early-"))
        assert client.transport is not None
        client.transport.write(b"later")
        await waitUntil(lambda: client.received == ESTABLISHED + b"early-later", 10.0, "the echo")

    async def test_muchSentAhead(self) -> None:
        """
        More sent ahead than the door holds while opening (it stops reading
        then): all of it still arrives, in order, after the 200.
        """
        world = await self.world()
        ahead = bytes(range(256)) * 1024
        client = await self.client(world, self.connectTo(f"{NODE}:{world.echo}", ahead))
        expected = ESTABLISHED + ahead
        await waitUntil(lambda: len(client.received) >= len(expected), 10.0, "the echo")
        self.assertEqual(client.received, expected)

    async def test_answerBeforeEdgeBytes(self) -> None:
        """A server that speaks first cannot overtake the 200."""
        world = await self.world()
        client = await self.client(world, self.connectTo(f"{NODE}:{world.banner}"))
        expected = ESTABLISHED + b"BANNER from edge-1\n"
        await waitUntil(lambda: len(client.received) >= len(expected), 10.0, "the banner")
        self.assertEqual(client.received, expected)

    async def test_bulkAndHalfClose(self) -> None:
        """A megabyte each way, then the client's EOF travels to the edge and back."""
        world = await self.world()
        client = await self.client(world, self.connectTo(f"{NODE}:{world.echo}"))
        await waitUntil(lambda: client.received == ESTABLISHED, 10.0, "the 200")
        payload = bytes(range(256)) * 4096
        assert client.transport is not None
        client.transport.write(payload)
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        await client.lost
        self.assertEqual(client.received, ESTABLISHED + payload)
        await waitUntil(lambda: world.serverTunnel.streamCount == 0, 10.0, "the stream to end")

    async def test_curlByName(self) -> None:
        """C{curl -p -x} through the door to an HTTP service on the edge, by node name."""
        world = await self.world()
        out, err, code = await self.curl(world, f"http://{NODE}:{world.http}/")
        self.assertEqual((code, out), (0, b"hello from edge-1\n"), err)

    async def test_curlByIP(self) -> None:
        world = await self.world()
        out, err, code = await self.curl(world, f"http://127.0.0.1:{world.http}/")
        self.assertEqual((code, out), (0, b"hello from edge-1\n"), err)

    async def test_curlUnknownNode(self) -> None:
        """curl reports the 503 (exit status 56: CONNECT failed)."""
        world = await self.world()
        out, err, code = await self.curl(world, f"http://edge-9:{world.http}/")
        self.assertEqual(code, 56, err)
        self.assertIn(b"503", err)

    async def curl(self, world: World, url: str) -> tuple[bytes, bytes, int]:
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        args = ["-q", "-sS", "--max-time", "10", "-p", "-x", f"http://127.0.0.1:{world.door}", url]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        result: tuple[bytes, bytes, int] = await getProcessOutputAndValue(
            curl, args, env=env, reactor=reactor
        )
        return result

    # -- refused by the tunnel -----------------------------------------------

    async def test_unknownNode(self) -> None:
        """No agent for the node: 503 at once, the reason in the body."""
        world = await self.world()
        answer = await self.refused(world, self.connectTo("edge-9:10250"))
        self.assertTrue(
            answer.startswith(
                b"HTTP/1.1 503 Service Unavailable: no agent connected for node 'edge-9'\r\n"
            ),
            answer,
        )
        self.assertIn(b"Content-Type: text/plain", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\nno agent connected for node 'edge-9'\n"))
        self.assertRefusal(world, 503, node="edge-9", port=10250, target="edge-9:10250")

    async def test_unknownNodeIPv6(self) -> None:
        """A bracketed IPv6 target is parsed and looked up (and here not found)."""
        world = await self.world()
        answer = await self.refused(world, self.connectTo("[FD00:0::1]:443"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)
        self.assertRefusal(world, 503, node="fd00::1", port=443, target="[fd00::1]:443")

    async def test_portClosedOnEdge(self) -> None:
        """The agent's dial is refused: 502 with the agent's reason."""
        world = await self.world()
        port = self.closedPort()
        answer = await self.refused(world, self.connectTo(f"{NODE}:{port}"))
        refused = f"connection to 127.0.0.1:{port} refused"
        self.assertTrue(
            answer.startswith(f"HTTP/1.1 502 Bad Gateway: {refused}\r\n".encode()), answer
        )
        self.assertIn(refused.encode(), answer)
        event = self.assertRefusal(world, 502, node=NODE, port=port)
        self.assertEqual(event["openFail"], "refused")
        self.assertIs(world.server.registry.lookup(NODE).tunnel, world.serverTunnel)  # type: ignore[union-attr]

    async def test_openTimeout(self) -> None:
        """The agent does not answer in time: 504, and the tunnel survives."""
        world = await self.world(openTimeout=0.5)
        port = self.hangingPort()
        answer = await self.refused(world, self.connectTo(f"{NODE}:{port}"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 504 Gateway Timeout: node edge-1 "), answer)
        self.assertIn(b"did not answer", answer)
        self.assertRefusal(world, 504, node=NODE, port=port)
        await waitUntil(
            lambda: world.agentTunnel.streamCount == 0, 10.0, "the agent to drop the dial"
        )
        await self.assertTunnelStillWorks(world)

    async def assertTunnelStillWorks(self, world: World) -> None:
        """
        The tunnel outlived an abandoned open: a new CONNECT goes through it
        (and, coming after them, proves the frames of the old one were fine).
        """
        client = await self.client(world, self.connectTo(f"{NODE}:{world.echo}", b"again"))
        await waitUntil(
            lambda: client.received == ESTABLISHED + b"again", 10.0, "a CONNECT after it"
        )
        record = world.server.registry.lookup(NODE)
        self.assertIs(record and record.tunnel, world.serverTunnel)
        self.assertTrue(world.agentTunnel.established)

    async def test_tunnelLostWhileOpening(self) -> None:
        """The agent goes away while the stream opens: 503."""
        world = await self.world(openTimeout=20.0)
        port = self.hangingPort()
        client = await self.client(world, self.connectTo(f"{NODE}:{port}"))
        await waitUntil(
            lambda: world.agentTunnel.streamCount == 1, 10.0, "the agent to start dialing"
        )
        await world.agent.stopService()
        await client.lost
        self.assertTrue(client.eof)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 503 "), client.received)
        self.assertIn(b"lost", client.received)
        self.assertRefusal(world, 503, node=NODE, port=port)

    async def test_clientLeavesWhileOpening(self) -> None:
        """A client that closes while its stream opens cancels the open on both sides."""
        await self._leaveWhileOpening(abort=False)

    async def test_clientResetsWhileOpening(self) -> None:
        await self._leaveWhileOpening(abort=True)

    async def _leaveWhileOpening(self, abort: bool) -> None:
        world = await self.world(openTimeout=20.0)
        port = self.hangingPort()
        client = await self.client(world, self.connectTo(f"{NODE}:{port}"))
        await waitUntil(
            lambda: world.agentTunnel.streamCount == 1, 10.0, "the agent to start dialing"
        )
        assert client.transport is not None
        if abort:
            client.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            client.transport.loseConnection()
        await client.lost
        await waitUntil(
            lambda: world.serverTunnel.streamCount == 0, 10.0, "the server to drop the open"
        )
        await waitUntil(
            lambda: world.agentTunnel.streamCount == 0, 10.0, "the agent to drop the dial"
        )
        self.assertEqual(client.received, b"")
        self.assertEqual(world.refusals(), [])
        abandoned = [e for e in world.events if "abandoned" in e["log_format"]]
        self.assertEqual(len(abandoned), 1, [formatEvent(e) for e in world.events])
        await self.assertTunnelStillWorks(world)

    # -- refused by the door ---------------------------------------------------

    async def test_notConnect(self) -> None:
        """Any other method: 405 with C{Allow: CONNECT}."""
        world = await self.world()
        request = f"GET http://{NODE}:{world.http}/ HTTP/1.1\r\nHost: {NODE}\r\n\r\n"
        answer = await self.refused(world, request.encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n"), answer)
        self.assertIn(b"\r\nAllow: CONNECT\r\n", answer)
        self.assertRefusal(world, 405, method="GET", node=None)

    async def test_badTargets(self) -> None:
        """Targets that are not C{<node>:<port>}: 400, one log line each."""
        world = await self.world()
        targets = [
            "edge-1",
            "edge-1:0",
            "edge-1:65536",
            "edge-1:http",
            "edge-1:+80",
            "::1:80",
            "[::1:80",
            "[not-v6]:80",
            "bad_name!:80",
            "/path",
            ":80",
        ]
        for target in targets:
            answer = await self.refused(world, self.connectTo(target))
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (target, answer))
            self.assertIn(b"bad target", answer)
        statuses = [e["status"] for e in world.refusals()]
        self.assertEqual(statuses, [400] * len(targets))

    async def test_malformedRequest(self) -> None:
        """What h11 rejects (here: HTTP/1.1 without Host) is a 400 too."""
        world = await self.world()
        answer = await self.refused(world, f"CONNECT {NODE}:80 HTTP/1.1\r\n\r\n".encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertRefusal(world, 400)

    async def test_connectWithBody(self) -> None:
        world = await self.world()
        request = f"CONNECT {NODE}:80 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
        answer = await self.refused(world, request.encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertIn(b"has no body", answer)

    async def test_headTooLarge(self) -> None:
        """A complete head over 16 KiB: 431."""
        world = await self.world()
        big = b"X-Padding: " + b"a" * (16 * 1024) + b"\r\n"
        request = f"CONNECT {NODE}:{world.echo} HTTP/1.1\r\nHost: x\r\n".encode() + big + b"\r\n"
        answer = await self.refused(world, request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        self.assertRefusal(world, 431)
        self.assertEqual(world.serverTunnel.streamCount, 0)

    async def test_headTooLargeIncomplete(self) -> None:
        """A head still growing past 16 KiB: 431 without waiting for its end."""
        world = await self.world()
        request = f"CONNECT {NODE}:80 HTTP/1.1\r\nX-Padding: ".encode() + b"a" * 40000
        answer = await self.refused(world, request)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        self.assertRefusal(world, 431)

    async def test_silentClient(self) -> None:
        """A client that sends nothing is closed after the request timeout."""
        world = await self.world(requestTimeout=0.2)
        client = await self.client(world)
        await client.lost
        self.assertEqual(client.received, b"")

    async def test_slowClient(self) -> None:
        """The timeout covers the whole head, not just silence at the start."""
        world = await self.world(requestTimeout=0.2)
        client = await self.client(world, b"CONNECT edge-1:80 HTTP/1.1\r\n")
        await client.lost
        self.assertEqual(client.received, b"")
        self.assertEqual(world.refusals(), [])


class DirectTests(DoorTestCase):
    """
    C{--connect-direct}: cloud addresses no agent carries, which an egress
    selector sends to the door too (kube-apiserver's aggregator reaching
    metrics-server), dialled by the server itself.
    """

    def direct(self, *networks: str) -> DirectNetworks:
        return DirectNetworks(
            tuple(ipaddress.ip_network(n) for n in networks),
            lambda host, port: TCP4ClientEndpoint(reactor, host, port, timeout=2),
        )

    async def test_dialledDirectly(self) -> None:
        """An address in a direct network that no agent holds: dialled, then relayed."""
        world = await self.world(direct=self.direct("127.0.0.0/29"))
        echo = listen(self, QuietFactory(Echo), "127.0.0.3")
        client = await self.client(world, self.connectTo(f"127.0.0.3:{echo}", b"early"))
        await waitUntil(lambda: client.received == ESTABLISHED + b"early", 10.0, "the echo")
        self.assertEqual(world.refusals(), [])
        self.assertEqual(world.serverTunnel.streamCount, 0)

    async def test_agentFirst(self) -> None:
        """An address an agent holds goes through its tunnel, direct network or not."""
        world = await self.world(direct=self.direct("127.0.0.0/29"))
        client = await self.client(world, self.connectTo(f"127.0.0.1:{world.banner}"))
        await waitUntil(lambda: len(client.received) > len(ESTABLISHED), 10.0, "the banner")
        self.assertEqual(world.serverTunnel.streamCount, 1)

    async def test_refusedDirectly(self) -> None:
        """A direct dial refused: 502, saying so in words, not in errno."""
        world = await self.world(direct=self.direct("127.0.0.0/29"))
        port = self.closedPort()
        answer = await self.refused(world, self.connectTo(f"127.0.0.3:{port}"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 Bad Gateway: dialling "), answer)
        self.assertTrue(
            answer.endswith(
                f"dialling 127.0.0.3:{port} directly failed: connection refused\n".encode()
            ),
            answer,
        )
        self.assertRefusal(world, 502, node="127.0.0.3", port=port)

    async def test_outsideTheNetworks(self) -> None:
        """An address outside the direct networks, without agent: 503, as ever."""
        world = await self.world(direct=self.direct("127.0.0.0/30"))
        answer = await self.refused(world, self.connectTo("127.0.0.9:80"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)

    async def test_namesAreNeverDialled(self) -> None:
        """Only IP literals are dialled directly: a name goes to the registry (503)."""
        world = await self.world(direct=self.direct("127.0.0.0/8"))
        answer = await self.refused(world, self.connectTo("localhost:80"))
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "), answer)


class DirectNetworkTests(SynchronousTestCase):
    def test_parsed(self) -> None:
        self.assertEqual(directNetwork(" 10.200.0.7/24"), ipaddress.ip_network("10.200.0.0/24"))
        self.assertEqual(directNetwork("fd00::/64"), ipaddress.ip_network("fd00::/64"))

    def test_neverLoopbackLinkLocalOrUnspecified(self) -> None:
        """What the server must never dial for a client cannot be named."""
        for text, overlaps in [
            ("127.0.0.1/32", "127.0.0.0/8"),
            ("169.254.169.254/32", "169.254.0.0/16"),
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("::/0", "::/128"),
            ("fe80::1/128", "fe80::/10"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                directNetwork(text)
            self.assertIn(f"overlaps {overlaps}", str(caught.exception))

    def test_notANetwork(self) -> None:
        with self.assertRaises(ValueError) as caught:
            directNetwork("cloud")
        self.assertEqual(str(caught.exception), "'cloud' is not an IP network (e.g. 10.0.0.0/16)")


class ParseTargetTests(SynchronousTestCase):
    """L{parseTarget}: authority-form targets only."""

    def test_forms(self) -> None:
        self.assertEqual(parseTarget(b"edge-1:10250"), ConnectTarget("edge-1", 10250))
        self.assertEqual(parseTarget(b"Edge-1.example:1"), ConnectTarget("Edge-1.example", 1))
        self.assertEqual(parseTarget(b"10.0.0.7:65535"), ConnectTarget("10.0.0.7", 65535))
        self.assertEqual(parseTarget(b"[fd00:0::7]:443"), ConnectTarget("fd00::7", 443))
        self.assertEqual(str(ConnectTarget("fd00::7", 443)), "[fd00::7]:443")
        self.assertEqual(str(ConnectTarget("edge-1", 80)), "edge-1:80")

    def test_bad(self) -> None:
        for raw in [
            b"",
            b"edge-1",
            b"edge-1:",
            b"edge-1:0",
            b"edge-1:123456",
            b"edge-1:\xd9\xa1",
            b"-edge:80",
            b"edge-:80",
            b"a" * 300 + b":80",
            b"fd00::7:80",
            b"[fd00::7]",
            b"[fd00::7]80",
            b"[10.0.0.1]:80",
            b"http://edge-1:80",
            b"\xff:80",
        ]:
            self.assertRaises(BadTarget, parseTarget, raw)


class ErrorResponseTests(SynchronousTestCase):
    def test_response(self) -> None:
        self.assertEqual(
            errorResponse(405, "no", [("Allow", "CONNECT")]),
            b"HTTP/1.1 405 Method Not Allowed\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 3\r\n"
            b"Connection: close\r\n"
            b"Allow: CONNECT\r\n"
            b"\r\n"
            b"no\n",
        )

    def test_reasonInStatusLine(self) -> None:
        """
        The reason in the status line is one line of printable ASCII, cut
        short: what a client sent cannot reach a terminal or split the head.
        """
        answer = errorResponse(
            503, "node 'edg\u00e9\x1b[31m'\r\nX: y" + "z" * 400, reasonInStatusLine=True
        )
        line, rest = answer.split(b"\r\n", 1)
        self.assertTrue(
            line.startswith(
                b"HTTP/1.1 503 Service Unavailable: node 'edg\\xe9\\x1b[31m'\\x0d\\x0aX: yzz"
            ),
            line,
        )
        self.assertTrue(line.endswith(b"..."), line)
        self.assertLess(len(line), 400)
        self.assertTrue(all(32 <= byte < 127 for byte in line), line)
        self.assertTrue(rest.startswith(b"Content-Type: text/plain"), rest)


class InterfaceTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        server = TunnelServer(reactor, None)
        door = ConnectDoorFactory(server)
        self.assertTrue(verifyObject(IProtocolFactory, door))
        protocol = door.buildProtocol(None)
        self.assertIsInstance(protocol, ConnectProtocol)
        self.assertTrue(verifyObject(IHalfCloseableProtocol, protocol))
        self.assertFalse(door.noisy)
