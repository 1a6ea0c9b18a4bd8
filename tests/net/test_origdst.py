"""
Tests for L{twisted_tunnel.net.origdst}: the original destination of DNATed connections.

Three layers:
    - unit tests on fake sockets (parsing C{sockaddr_in}/C{sockaddr_in6},
      errors, the way through a TLS wrapper), which run anywhere;
    - real connections on loopback, not DNATed, which must report nothing;
    - real DNAT in network namespaces (L{tests.netns}): iptables rules in
      the namespace's C{nat} table send C{10.123.0.7:<port>} to a listener,
      whose protocol reports what L{originalDestination} says.  Those need
      root and skip otherwise.

In a namespace, this module is also the program that listens and connects
(C{python -m tests.net.test_origdst <mode> <scenario>}, see L{main}), so that
the connections are made inside the namespace by a real Twisted reactor.
Each connection's server side answers with one JSON line: what
L{originalDestination} said, what the kernel said (the raw
C{SO_ORIGINAL_DST}, or its errno), and the listener's own address.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
)
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.netns import Namespace, NetnsCommandError, link, pollUntil, requireNetns
from tests.pki import TestPKI
from tests.realnet import daemonEnvironment, waitUntil
from twisted_tunnel.net import origdst
from twisted_tunnel.net.origdst import originalDestination

pki = TestPKI()

#: The edge node address that clients dial, and that iptables DNATs.
NODE_IP = "10.123.0.7"
NODE_IP6 = "fd00:123::7"

#: How long a scenario program may take, start to end.
SCENARIO_TIMEOUT = 20.0


def serverTLSOptions() -> CertificateOptions:
    """TLS for a listener: the test server certificate (localhost, 127.0.0.1, ::1)."""
    # cryptography objects, as twisted_tunnel.tls passes them: pyOpenSSL
    # deprecates its own X509 and PKey here.
    certificate: Any = pki.server.certificate
    privateKey: Any = pki.server.key
    return CertificateOptions(certificate=certificate, privateKey=privateKey)


def clientTLSOptions() -> Any:
    """TLS for a client: trust the test CA, expect the name C{localhost}."""
    return optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.ca.certificatePEM()))


# Unit tests, on fake sockets.


def sockaddrIn(host: str, port: int) -> bytes:
    """A C{struct sockaddr_in} as Linux returns it."""
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host)


def sockaddrIn6(host: str, port: int, scope: int = 0) -> bytes:
    """A C{struct sockaddr_in6} as Linux returns it (28 bytes)."""
    return (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", port, 0)
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", scope)
    )


class FakeSocket(socket.socket):
    """
    A real (unconnected) socket object whose C{getsockopt} and
    C{getsockname} say what the test wants, and record how they were asked.
    """

    def __init__(
        self, family: int, local: tuple[Any, ...], original: bytes | OSError | None
    ) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.local = local
        self.original = original
        self.asked: list[tuple[int, int, int]] = []

    def getsockname(self) -> Any:
        return self.local

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        self.asked.append((level, option, buflen))
        if isinstance(self.original, OSError):
            raise self.original
        if self.original is None:
            raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))
        return self.original[:buflen]


class FakeTCPTransport(StringTransport):
    """A TCP transport whose handle is a L{FakeSocket}."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class NoSocketTransport(StringTransport):
    """A transport whose C{getHandle} fails, as a tunnel stream's might."""

    def getHandle(self) -> Any:
        raise NotImplementedError("no socket here")


class UnitTests(SynchronousTestCase):
    """L{originalDestination} on fake sockets and transports."""

    def fakeSocket(
        self, family: int, local: tuple[Any, ...], original: bytes | OSError | None
    ) -> FakeSocket:
        if family == socket.AF_INET6 and not socket.has_ipv6:
            raise self.skipTest("no IPv6 sockets here")
        sock = FakeSocket(family, local, original)
        self.addCleanup(sock.close)
        return sock

    def test_stringTransport(self) -> None:
        """A transport with no socket at all has no original destination."""
        self.assertIsNone(originalDestination(StringTransport()))

    def test_notATransport(self) -> None:
        """Whatever is passed, the answer is C{None}, not an exception."""
        self.assertIsNone(originalDestination(None))
        self.assertIsNone(originalDestination(object()))
        self.assertIsNone(originalDestination(NoSocketTransport()))

    def test_dnatedIPv4(self) -> None:
        """The kernel's C{sockaddr_in}, when it is not our own address, is the answer."""
        sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10264), sockaddrIn(NODE_IP, 10255))
        self.assertEqual(originalDestination(FakeTCPTransport(sock)), (NODE_IP, 10255))
        self.assertEqual(sock.asked, [(socket.IPPROTO_IP, 80, 16)])

    def test_notDnatedIPv4(self) -> None:
        """
        A tracked connection that was not NATed has our own address as its
        original destination: that is no answer.
        """
        sock = self.fakeSocket(
            socket.AF_INET, ("127.0.0.1", 10264), sockaddrIn("127.0.0.1", 10264)
        )
        self.assertIsNone(originalDestination(FakeTCPTransport(sock)))

    def test_samePortOtherAddress(self) -> None:
        """Only the same address I{and} port is "not DNATed"."""
        sock = self.fakeSocket(
            socket.AF_INET, ("10.123.0.1", 10264), sockaddrIn("10.123.0.2", 10264)
        )
        self.assertEqual(originalDestination(FakeTCPTransport(sock)), ("10.123.0.2", 10264))

    def test_errors(self) -> None:
        """No conntrack entry, no such option, a closed socket: C{None}."""
        for code in (errno.ENOENT, errno.ENOPROTOOPT, errno.EBADF, errno.EINVAL):
            sock = self.fakeSocket(
                socket.AF_INET, ("127.0.0.1", 10264), OSError(code, os.strerror(code))
            )
            self.assertIsNone(originalDestination(FakeTCPTransport(sock)), errno.errorcode[code])

    def test_garbage(self) -> None:
        """An answer that is not a C{sockaddr_in} is no answer."""
        for raw in (b"", b"\x00" * 4, sockaddrIn6(NODE_IP6, 10255)[:16]):
            sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10264), raw)
            self.assertIsNone(originalDestination(FakeTCPTransport(sock)), repr(raw))

    def test_dnatedIPv6(self) -> None:
        """For IPv6, C{IP6T_SO_ORIGINAL_DST} on C{SOL_IPV6} gives a C{sockaddr_in6}."""
        sock = self.fakeSocket(socket.AF_INET6, ("::1", 10266, 0, 0), sockaddrIn6(NODE_IP6, 10255))
        self.assertEqual(originalDestination(FakeTCPTransport(sock)), (NODE_IP6, 10255))
        self.assertEqual(sock.asked, [(socket.IPPROTO_IPV6, 80, 28)])

    def test_notDnatedIPv6WithScope(self) -> None:
        """Our own link-local address (C{getsockname} adds C{%scope}) is still ours."""
        sock = self.fakeSocket(
            socket.AF_INET6, ("fe80::1%lo", 10266, 0, 1), sockaddrIn6("fe80::1", 10266, 1)
        )
        self.assertIsNone(originalDestination(FakeTCPTransport(sock)))

    def test_ipv4OnDualStackSocket(self) -> None:
        """
        An IPv4 connection accepted by an IPv6 socket has an IPv4 conntrack
        entry: asked on C{SOL_IP}, answered in the IPv4 form.
        """
        sock = self.fakeSocket(
            socket.AF_INET6, ("::ffff:127.0.0.1", 10266, 0, 0), sockaddrIn(NODE_IP, 10255)
        )
        self.assertEqual(originalDestination(FakeTCPTransport(sock)), (NODE_IP, 10255))
        self.assertEqual(sock.asked, [(socket.IPPROTO_IP, 80, 16)])
        ours = self.fakeSocket(
            socket.AF_INET6, ("::ffff:127.0.0.1", 10266, 0, 0), sockaddrIn("127.0.0.1", 10266)
        )
        self.assertIsNone(originalDestination(FakeTCPTransport(ours)))

    def test_throughTLS(self) -> None:
        """
        A TLS transport's own handle is its C{OpenSSL} connection: the
        socket is found on the transport it wraps, before the handshake too.
        """
        sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10263), sockaddrIn(NODE_IP, 10250))
        wrapped = Factory.forProtocol(Protocol)
        tls = TLSMemoryBIOFactory(serverTLSOptions(), False, wrapped).buildProtocol(None)
        assert tls is not None
        tls.makeConnection(FakeTCPTransport(sock))
        self.addCleanup(tls.connectionLost, Failure(ConnectionDone()))
        self.assertEqual(originalDestination(tls), (NODE_IP, 10250))

    def test_throughWrappers(self) -> None:
        """Any L{ProtocolWrapper} is looked through, several deep."""
        sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10263), sockaddrIn(NODE_IP, 10250))
        outer = WrappingFactory(WrappingFactory(Factory.forProtocol(Protocol))).buildProtocol(None)
        assert isinstance(outer, ProtocolWrapper)
        outer.makeConnection(FakeTCPTransport(sock))
        middle: Any = outer.wrappedProtocol
        inner = middle.transport
        self.assertIsInstance(inner, ProtocolWrapper)
        self.assertEqual(originalDestination(inner), (NODE_IP, 10250))

    def test_notThroughOtherObjects(self) -> None:
        """
        Something that is not a wrapper but holds a TCP transport (a stream
        in a tunnel holds the tunnel's) is not that connection: C{None}.
        """
        sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10263), sockaddrIn(NODE_IP, 10250))
        stream = NoSocketTransport()
        stream.transport = FakeTCPTransport(sock)  # type: ignore[attr-defined]
        self.assertIsNone(originalDestination(stream))

    def test_notLinux(self) -> None:
        """Elsewhere, option 80 means something else: not even asked."""
        sock = self.fakeSocket(socket.AF_INET, ("127.0.0.1", 10264), sockaddrIn(NODE_IP, 10255))
        self.patch(origdst, "_isLinux", False)
        self.assertIsNone(originalDestination(FakeTCPTransport(sock)))
        self.assertEqual(sock.asked, [])


# Real sockets: on loopback, nothing is DNATed.


class Recorder(Protocol):
    """Records what L{originalDestination} says once connected."""

    answer: tuple[str, int] | None | str = "not asked"

    def connectionMade(self) -> None:
        self.answer = originalDestination(self.transport)
        factory: Any = self.factory
        factory.made.append(self)


class RecorderFactory(ServerFactory):
    protocol = Recorder

    def __init__(self) -> None:
        self.made: list[Recorder] = []


class LoopbackTests(TestCase):
    """Connections on loopback, plain and TLS, are not DNATed: C{None}."""

    async def connection(self, tls: bool) -> Recorder:
        from twisted.internet import reactor as _reactor

        reactor: Any = _reactor
        serverFactory = RecorderFactory()
        listened: Any = serverFactory
        if tls:
            listened = TLSMemoryBIOFactory(serverTLSOptions(), False, serverFactory)
        port = reactor.listenTCP(0, listened, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        if tls:
            endpoint = wrapClientTLS(clientTLSOptions(), endpoint)
        client = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(client.transport.abortConnection)
        await waitUntil(lambda: bool(serverFactory.made), 10, "the connection")
        server = serverFactory.made[0]
        transport: Any = server.transport
        self.addCleanup(transport.abortConnection)
        return server

    async def test_plain(self) -> None:
        server = await self.connection(tls=False)
        self.assertIsNone(server.answer)

    async def test_tls(self) -> None:
        server = await self.connection(tls=True)
        self.assertIsNone(server.answer)


# Real DNAT, in network namespaces.  First, the program that runs inside.


def kernelSays(transport: Any) -> Any:
    """
    The raw C{SO_ORIGINAL_DST} of a connection, read here independently of
    the code under test: C{[ip, port]}, or the errno's name.
    """
    sock = transport.getHandle()
    if not isinstance(sock, socket.socket):
        sock = transport.transport.getHandle()
    local = sock.getsockname()[0]
    try:
        if sock.family == socket.AF_INET6 and not local.startswith("::ffff:"):
            raw = sock.getsockopt(socket.IPPROTO_IPV6, 80, 28)
            return [socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")]
        raw = sock.getsockopt(socket.IPPROTO_IP, 80, 16)
        return [socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")]
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))


@implementer(IHandshakeListener)
class Reporter(Protocol):
    """A listener's protocol: tells the client what it saw, in one JSON line."""

    tls = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        host = transport.getHost()
        self.report: dict[str, Any] = {
            "originalDestination": originalDestination(self.transport),
            "kernel": kernelSays(self.transport),
            "host": [host.host, host.port],
            "tlsTransport": isinstance(self.transport, TLSMemoryBIOProtocol),
        }
        if not self.tls:
            self.send()

    def handshakeCompleted(self) -> None:
        self.report["afterHandshake"] = originalDestination(self.transport)
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(self.report).encode() + b"\n")
        self.transport.loseConnection()


class TLSReporter(Reporter):
    tls = True


class Reader(Protocol):
    """A client: everything the server sends, until it closes."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.done.callback(self.received)


def listen(reactor: Any, listeners: Sequence[dict[str, Any]]) -> None:
    """Listen as C{listeners} say: C{{"interface", "port", "tls"}} each."""
    for spec in listeners:
        factory: Any = ServerFactory.forProtocol(TLSReporter if spec["tls"] else Reporter)
        if spec["tls"]:
            factory = TLSMemoryBIOFactory(serverTLSOptions(), False, factory)
        reactor.listenTCP(spec["port"], factory, interface=spec["interface"])


async def connectAll(reactor: Any, connections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    Make C{connections} (C{{"case", "host", "port", "tls"}} each), all at
    once, and return what each server side reported, by case.
    """

    async def one(spec: dict[str, Any]) -> tuple[str, Any]:
        endpointType = TCP6ClientEndpoint if ":" in spec["host"] else TCP4ClientEndpoint
        endpoint: Any = endpointType(reactor, spec["host"], spec["port"], timeout=5)
        if spec["tls"]:
            endpoint = wrapClientTLS(clientTLSOptions(), endpoint)
        try:
            client = await endpoint.connect(Factory.forProtocol(Reader))
            received = await client.done
            return spec["case"], json.loads(received)
        except Exception as e:
            return spec["case"], {"error": repr(e)}

    results = await gatherResults([Deferred.fromCoroutine(one(spec)) for spec in connections])
    return dict(results)


def main(argv: Sequence[str]) -> None:
    """
    C{python -m tests.net.test_origdst <mode> <scenario JSON>}, run in a namespace.

    The scenario is C{{"listeners": [...], "connections": [...]}} (see
    L{listen} and L{connectAll}).  Modes:
        - C{both}: listen, make the connections, print the reports as one
          JSON object, exit;
        - C{serve}: listen, print C{{"listening": true}}, serve until killed;
        - C{connect}: make the connections, print the reports, exit.
    """
    from twisted.internet.task import react

    mode, scenario = argv[0], json.loads(argv[1])

    def timedOut() -> None:
        print(f"gave up after {SCENARIO_TIMEOUT:g}s", file=sys.stderr, flush=True)
        os._exit(3)

    async def run(reactor: Any) -> None:
        reactor.callLater(SCENARIO_TIMEOUT, timedOut)
        if mode in ("both", "serve"):
            listen(reactor, scenario["listeners"])
        if mode == "serve":
            print(json.dumps({"listening": True}), flush=True)
            await Deferred()  # Until killed.
        results = await connectAll(reactor, scenario["connections"])
        print(json.dumps(results), flush=True)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


# The tests that run it.


def scenarioCommand(mode: str, scenario: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.net.test_origdst", mode, json.dumps(scenario)]


def runScenario(namespace: Namespace, scenario: dict[str, Any]) -> dict[str, Any]:
    """Listen and connect inside C{namespace}; the reports, by case."""
    result = namespace.run(
        *scenarioCommand("both", scenario), env=daemonEnvironment(), timeout=SCENARIO_TIMEOUT + 5
    )
    reports: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return reports


def readJSONLine(
    process: subprocess.Popen[bytes], accept: Callable[[Any], bool], timeout: float
) -> Any:
    """
    Read C{process}'s output until a JSON line that C{accept}s, or fail
    after C{timeout} seconds (or if it ends first), showing its output.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    buffered = b""

    def failure(what: str) -> AssertionError:
        output = b"\n".join([*seen, buffered]).decode(errors="replace")
        return AssertionError(f"{what}; its output:\n{output}")

    while True:
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            seen.append(line)
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if accept(value):
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failure(f"no such line within {timeout:g}s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise failure(f"the process ended (status {process.wait()})")
            buffered += chunk


def dnat(
    namespace: Namespace, chain: str, fromHost: str, fromPort: int, toHost: str, toPort: int
) -> None:
    """DNAT TCP for C{fromHost:fromPort} to C{toHost:toPort} in C{chain} of the nat table."""
    version = 6 if ":" in fromHost else 4
    to = f"[{toHost}]:{toPort}" if version == 6 else f"{toHost}:{toPort}"
    namespace.iptables(
        "-t", "nat", "-A", chain, "-d", fromHost, "-p", "tcp", "--dport", str(fromPort),
        "-j", "DNAT", "--to-destination", to,
        version=version,
    )  # fmt: skip


def listener(interface: str, port: int, tls: bool = False) -> dict[str, Any]:
    return {"interface": interface, "port": port, "tls": tls}


def connection(case: str, host: str, port: int, tls: bool = False) -> dict[str, Any]:
    return {"case": case, "host": host, "port": port, "tls": tls}


class NamespaceTests(SynchronousTestCase):
    """
    Real DNAT by iptables, inside a namespace of our own.

    The namespace has an interface with C{10.123.0.1/24} (and
    C{fd00:123::1/64}), so that C{10.123.0.7}, an "edge node" that does not
    exist, is routable: the kernel accepts the connect, and the C{nat}
    table's C{OUTPUT} chain rewrites its destination before the first
    packet leaves.  Ports inside a new namespace are all free, hence fixed
    port numbers (those of the proxy listeners: 10263 HTTPS, 10264 HTTP).
    """

    def setUp(self) -> None:
        requireNetns(self, "iptables")
        self.namespace = Namespace.create(self, "tt")
        self.namespace.addDummy("10.123.0.1/24", "fd00:123::1/64")

    def assertDNATed(self, report: dict[str, Any], host: str, port: int) -> None:
        self.assertEqual(report.get("kernel"), [host, port], report)
        self.assertEqual(report.get("originalDestination"), [host, port], report)

    def assertNotDNATed(self, report: dict[str, Any], host: str, port: int) -> None:
        """
        The kernel did answer, with the listener's own address (the
        connection is tracked, since the namespace has a nat table): that
        is the case where comparing with C{getHost()} matters.
        """
        self.assertEqual(report.get("kernel"), [host, port], report)
        self.assertIsNone(report.get("originalDestination", "missing"), report)

    def test_ipv4(self) -> None:
        """
        A connection DNATed to a loopback listener, or to the namespace's
        own address, reports where it was going; a direct one reports C{None}.
        """
        dnat(self.namespace, "OUTPUT", NODE_IP, 10255, "127.0.0.1", 10264)
        dnat(self.namespace, "OUTPUT", "10.123.0.8", 10255, "10.123.0.1", 10264)
        reports = runScenario(
            self.namespace,
            {
                "listeners": [listener("0.0.0.0", 10264)],
                "connections": [
                    connection("toLoopback", NODE_IP, 10255),
                    connection("toOwnAddress", "10.123.0.8", 10255),
                    connection("directLoopback", "127.0.0.1", 10264),
                    connection("directOwnAddress", "10.123.0.1", 10264),
                ],
            },
        )
        self.assertDNATed(reports["toLoopback"], NODE_IP, 10255)
        self.assertEqual(reports["toLoopback"]["host"], ["127.0.0.1", 10264])
        self.assertDNATed(reports["toOwnAddress"], "10.123.0.8", 10255)
        self.assertEqual(reports["toOwnAddress"]["host"], ["10.123.0.1", 10264])
        self.assertNotDNATed(reports["directLoopback"], "127.0.0.1", 10264)
        self.assertNotDNATed(reports["directOwnAddress"], "10.123.0.1", 10264)

    def test_tls(self) -> None:
        """
        Through a TLS transport (L{TLSMemoryBIOFactory}), before and after
        the handshake.
        """
        dnat(self.namespace, "OUTPUT", NODE_IP, 10250, "127.0.0.1", 10263)
        reports = runScenario(
            self.namespace,
            {
                "listeners": [listener("127.0.0.1", 10263, tls=True)],
                "connections": [
                    connection("dnat", NODE_IP, 10250, tls=True),
                    connection("direct", "127.0.0.1", 10263, tls=True),
                ],
            },
        )
        self.assertIs(reports["dnat"].get("tlsTransport"), True, reports)
        self.assertDNATed(reports["dnat"], NODE_IP, 10250)
        self.assertEqual(reports["dnat"]["afterHandshake"], [NODE_IP, 10250])
        self.assertNotDNATed(reports["direct"], "127.0.0.1", 10263)
        self.assertIsNone(reports["direct"]["afterHandshake"])

    def test_ipv6(self) -> None:
        """
        ip6tables DNAT to an IPv6 listener; and IPv4 DNAT to the same
        (dual-stack) listener, which reports the IPv4 form.
        """
        requireNetns(self, "ip6tables")
        dnat(self.namespace, "OUTPUT", NODE_IP6, 10255, "::1", 10266)
        dnat(self.namespace, "OUTPUT", NODE_IP, 10255, "127.0.0.1", 10266)
        reports = runScenario(
            self.namespace,
            {
                "listeners": [listener("::", 10266)],
                "connections": [
                    connection("dnat6", NODE_IP6, 10255),
                    connection("direct6", "::1", 10266),
                    connection("dnat4", NODE_IP, 10255),
                    connection("direct4", "127.0.0.1", 10266),
                ],
            },
        )
        self.assertDNATed(reports["dnat6"], NODE_IP6, 10255)
        self.assertNotDNATed(reports["direct6"], "::1", 10266)
        self.assertDNATed(reports["dnat4"], NODE_IP, 10255)
        self.assertEqual(reports["dnat4"]["host"], ["::ffff:127.0.0.1", 10266])
        self.assertNotDNATed(reports["direct4"], "127.0.0.1", 10266)

    def test_routedThrough(self) -> None:
        """
        Traffic from another host, DNATed in C{PREROUTING} as it arrives
        (the server as a router): still found.  DNAT of arriving packets to
        127.0.0.1 needs C{route_localnet}, or the kernel drops them as
        martians; DNAT in C{OUTPUT} does not.
        """
        client = Namespace.create(self, "tt")
        wire = link(client, self.namespace, "192.168.123.2/24", "192.168.123.1/24")
        client.addRoute("10.123.0.0/24", via=wire.addressB)
        self.namespace.sysctl("net.ipv4.conf.all.route_localnet", "1")
        dnat(self.namespace, "PREROUTING", NODE_IP, 10250, "127.0.0.1", 10263)
        server = self.namespace.spawn(
            scenarioCommand("serve", {"listeners": [listener("127.0.0.1", 10263)]}),
            env=daemonEnvironment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        readJSONLine(server, lambda line: line == {"listening": True}, SCENARIO_TIMEOUT)
        result = client.run(
            *scenarioCommand("connect", {"connections": [connection("routed", NODE_IP, 10250)]}),
            env=daemonEnvironment(),
            timeout=SCENARIO_TIMEOUT + 5,
        )
        report = json.loads(result.stdout.splitlines()[-1])["routed"]
        self.assertDNATed(report, NODE_IP, 10250)


class KitTests(SynchronousTestCase):
    """L{tests.netns} itself: what it makes goes away, processes included."""

    def setUp(self) -> None:
        requireNetns(self)

    def test_deleteKillsAndRemoves(self) -> None:
        a = Namespace.create(self, "tt")
        b = Namespace.create(self, "tt")
        wire = link(a, b, "192.168.124.1/24", "192.168.124.2/24")
        self.assertIn(wire.nameB, b.ip("-brief", "link").stdout)
        sleeper = b.spawn(
            [sys.executable, "-c", "import time; print('{}', flush=True); time.sleep(600)"],
            stdout=subprocess.PIPE,
        )
        readJSONLine(sleeper, lambda line: line == {}, 10)
        self.assertEqual(b.pids(), [sleeper.pid])
        b.delete()
        self.assertIsNotNone(sleeper.poll(), "the process in the namespace was killed")
        self.assertNotIn(b.name, os.listdir("/run/netns"))
        # Its end of the veth pair goes with it, and so does ours, once the
        # kernel has torn the namespace down (asynchronously).
        pollUntil(
            lambda: wire.nameA not in a.ip("-brief", "link").stdout, 10, "the veth pair to go"
        )
        b.delete()  # Idempotent: the cleanup will call it again.

    def test_iptablesRestore(self) -> None:
        """
        Rules loaded with C{iptables-restore --noflush} add to what is there
        (the way the server's iptables manager will sync its own chains).
        """
        requireNetns(self, "iptables", "iptables-restore", "iptables-save")
        namespace = Namespace.create(self, "tt")
        namespace.iptables("-t", "nat", "-N", "THEIRS")
        namespace.iptablesRestore(
            "*nat\n:TT-OURS - [0:0]\n-A OUTPUT -j TT-OURS\n"
            "-A TT-OURS -d 10.123.0.7/32 -p tcp -m tcp --dport 10250 -j DNAT"
            " --to-destination 127.0.0.1:10263\nCOMMIT\n"
        )
        saved = namespace.iptablesSave("nat")
        self.assertIn(":THEIRS", saved)
        self.assertIn("-A OUTPUT -j TT-OURS", saved)
        self.assertIn("--to-destination 127.0.0.1:10263", saved)

    def test_commandErrors(self) -> None:
        """A failing command's error shows its output."""
        namespace = Namespace.create(self, "tt")
        with self.assertRaises(NetnsCommandError) as caught:
            namespace.ip("link", "set", "no-such-interface", "up")
        self.assertIn("no-such-interface", str(caught.exception))


if __name__ == "__main__":
    main(sys.argv[1:])
