# -*- test-case-name: tests.tap.test_security_exposure -*-
"""
Security regressions of what the server exposes, and to whom (issue 12,
findings 3, 8, 13 and 22, and the issue's "done when": a fresh
C{twistd edge-tunnel-server} with only C{--ca --cert --key} exposes
nothing that lends an identity or reaches a node without a client
certificate).

Each class pins one finding; its docstring starts with the finding's number
and the threat.  The HTTPS listener is tested over real TLS on 127.0.0.1
(port 0), as the daemon wires it (C{makeService}); the meta listener in
memory with a C{Clock}; the fresh daemon as a real process in a network
namespace of its own, where its default ports are free and its iptables
rules touch nothing else.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
from typing import Any

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.doors.test_proxy_tls import Ask
from tests.netns import Namespace, pollUntil, requireNetns
from tests.pki import PairPaths, TestPKI, temporaryDirectory
from tests.realnet import REPO_ROOT, daemonEnvironment
from twisted_tunnel.forwarding.config import ProxyConfig
from twisted_tunnel.host.iptables import renderRules
from twisted_tunnel.meta import Heartbeat, metaSite
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient

reactor: Any = _reactor
pki = TestPKI()
_DONE = Failure(ConnectionDone())

#: The daemon's listeners with their default ports (C{twistd edge-tunnel-server --help}).
DEFAULT_PORTS = {
    10261: "--connect-endpoint",
    10262: "--tunnel-endpoint",
    10263: "--https-proxy-endpoint",
    10264: "--http-proxy-endpoint",
    10265: "--meta-endpoint",
    10268: "--tcp-proxy-endpoint",
}
TUNNEL_PORT = 10262
HTTPS_PORT = 10263


def boundInterface(description: str) -> str:
    """The address a server endpoint description listens on ("" for every interface)."""
    endpoint = serverFromString(MemoryReactor(), description)
    assert isinstance(endpoint, TCP4ServerEndpoint), description
    return str(endpoint._interface)


def isLoopback(address: str) -> bool:
    """Is C{address} reachable only from this host (127/8, ::1, ::ffff:127.x)?"""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


# -- finding 3 ---------------------------------------------------------------------------


async def startHTTPSListener(
    case: TestCase, credentials: list[str], *arguments: str
) -> tuple[int, MultiService]:
    """
    Build the server as C{twistd edge-tunnel-server} does, with
    C{credentials} (C{--ca}, C{--cert}, C{--key}), only the HTTPS listener
    (127.0.0.1, port 0) and C{arguments}; start that listener alone, until
    C{case} ends.

    @return: its port, and the daemon's service.
    """
    options = tapserver.Options()
    options.parseOptions(
        [
            *credentials,
            "--tunnel-endpoint=tcp:0:interface=127.0.0.1",
            "--connect-endpoint=none",
            "--https-proxy-endpoint=tcp:0:interface=127.0.0.1",
            "--http-proxy-endpoint=none",
            "--tcp-proxy-endpoint=none",
            "--meta-endpoint=none",
            "--no-iptables",
            *arguments,
        ]
    )
    top = tapserver.makeService(options)
    assert isinstance(top, MultiService)
    listener = top.getServiceNamed("--https-proxy-endpoint")
    assert isinstance(listener, StreamServerEndpointService)
    listener.privilegedStartService()
    listener.startService()
    case.addCleanup(listener.stopService)
    waiting = listener._waitingForPort
    assert waiting is not None
    port: IListeningPort = await waiting
    return int(port.getHost().port), top  # type: ignore[attr-defined]


def resumptions(
    port: int, trust: str, client: PairPaths, serverName: str | None = None
) -> list[bool]:
    """
    Two connections to the HTTPS proxy listener on C{port} from a client
    that caches sessions (Python's C{ssl}, as curl and other non-Go clients
    do), presenting C{client}, trusting C{trust} (a CA file) and sending
    C{serverName} as SNI, the second offering the first's session: whether
    each was resumed.  Blocking: run it in a thread.
    """
    context = ssl.create_default_context(cafile=trust)
    context.check_hostname = False
    context.load_cert_chain(client.cert, client.key)
    session, resumed = None, []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, session=session, server_hostname=serverName) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: edge-1:10250\r\n\r\n")
                while tls.recv(65536):
                    pass
                resumed.append(tls.session_reused)
                session = tls.session
    return resumed


class _HTTPSListenerCase(TestCase):
    """The daemon's HTTPS proxy listener on 127.0.0.1, and clients of it over real TLS."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory, stem="server")
        self.kubeletCA = mintCA("kubelet client CA")
        self.kubeletCAPath = pki.writePair(self.kubeletCA, self.directory, "kubelet-ca").cert
        self.serverTrust = trustRootFromCertificates(pki.credentials(pki.server).authority)

    async def startListener(self, *arguments: str) -> int:
        """
        Build the server as C{twistd edge-tunnel-server} does, with only the
        HTTPS listener (127.0.0.1, port 0) and C{arguments}; start that
        listener alone; its port.
        """
        port, _ = await startHTTPSListener(self, self.paths.options(), *arguments)
        return port

    async def ask(self, port: int, client: Any) -> Ask:
        """One request over TLS as C{client} (a PrivateCertificate, or None: no certificate)."""
        tls = optionsForClientTLS(
            "127.0.0.1", trustRoot=self.serverTrust, clientCertificate=client
        )
        asker = Ask()
        endpoint = wrapClientTLS(tls, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, asker)
        await asker.done
        return asker

    def assertRefusedInHandshake(self, asker: Ask) -> None:
        """Not one byte of HTTP: the TLS handshake refused the client."""
        self.assertEqual(asker.received, b"")
        assert asker.reason is not None
        self.assertTrue(asker.reason.check(SSL.Error), asker.reason)
        self.flushLoggedErrors(SSL.Error)

    def assertServed(self, asker: Ask) -> None:
        """An HTTP answer (502: no agent is connected to this server)."""
        self.assertTrue(asker.received.startswith(b"HTTP/1.1 502 "), asker.received)

    def privateCertificate(self, issued: Any) -> Any:
        return pki.credentials(issued).certificate


class HTTPSProxyListenerTests(_HTTPSListenerCase):
    """
    Finding 3: the HTTPS proxy listener lent the proxy client certificate
    (kube-apiserver's identity towards every kubelet) to anyone who reached
    it: it bound every interface and asked for no client certificate, and
    even with C{--proxy-serving-client-ca} an agent's certificate from the
    same CA got in.  Now it binds loopback by default and, over a real TLS
    handshake, serves only clients with a certificate from its client CA
    (C{--ca} unless C{--proxy-serving-client-ca}) that is not a node's.
    """

    def test_defaultsBindLoopback(self) -> None:
        """
        By default the HTTPS listener, and the HTTP and TCP ones that reach
        nodes with no certificate at all, bind 127.0.0.1: the DNAT in
        OUTPUT needs nothing more.
        """
        options = tapserver.Options()
        options.parseOptions(self.paths.options())
        for kind in ("https", "http", "tcp"):
            description = options[f"{kind}-proxy-endpoint"]
            self.assertEqual(boundInterface(description), "127.0.0.1", description)

    async def test_noCertificate(self) -> None:
        """Without a client certificate the handshake fails, with only C{--ca} given."""
        port = await self.startListener()
        asker = await self.ask(port, None)
        self.assertRefusedInHandshake(asker)
        assert asker.reason is not None
        self.assertIn("certificate required", asker.reason.getErrorMessage())

    async def test_defaultClientCA(self) -> None:
        """
        Without C{--proxy-serving-client-ca}, a client certificate from
        C{--ca} is served, and an agent's (C{system:node:*}, same CA) is not.
        """
        port = await self.startListener()
        self.assertServed(await self.ask(port, pki.credentials(pki.client()).certificate))
        agent = pki.credentials(pki.agent("edge-1")).certificate
        self.assertRefusedInHandshake(await self.ask(port, agent))

    async def test_configuredClientCA(self) -> None:
        """
        With C{--proxy-serving-client-ca}: a certificate from that CA is
        served; one from another CA (the tunnel's own C{--ca}, or an
        unrelated one) is refused; an agent's certificate minted by that
        very CA (the CA kubelets and kube-apiserver share in Kubernetes) is
        refused.
        """
        port = await self.startListener("--proxy-serving-client-ca", self.kubeletCAPath)
        apiserver = mintClient(self.kubeletCA, "kube-apiserver")
        self.assertServed(await self.ask(port, self.privateCertificate(apiserver)))
        for other in (pki.client(), mintClient(mintCA("another CA"), "kube-apiserver")):
            self.assertRefusedInHandshake(await self.ask(port, self.privateCertificate(other)))
        agent = mintAgent(self.kubeletCA, "edge-2")
        self.assertRefusedInHandshake(await self.ask(port, self.privateCertificate(agent)))

    def resumptions(self, port: int) -> Deferred[list[bool]]:
        client = pki.writePair(pki.client(), self.directory, "client")
        return deferToThread(resumptions, port, self.paths.ca, client)

    async def test_noResumptionByDefault(self) -> None:
        """By default a client that offers its session gets a full handshake."""
        port = await self.startListener()
        self.assertEqual(await self.resumptions(port), [False, False])

    async def test_sessionLifetime(self) -> None:
        """With C{--proxy-serving-session-lifetime} the daemon's listener resumes."""
        port = await self.startListener("--proxy-serving-session-lifetime=300")
        self.assertEqual(await self.resumptions(port), [False, True])


# -- issue 17: allowlists of client names ------------------------------------------------


class ClientNameTests(_HTTPSListenerCase):
    """
    Issue 17: the HTTPS proxy listener lends kube-apiserver's kubelet client
    identity to any certificate of C{--proxy-serving-client-ca} but nodes';
    on kubeadm that is the cluster CA, which signs every user's certificate
    too.  The CONNECT door over TLS admits any of C{--connect-ca}'s.  With
    C{--proxy-serving-client-name} and C{--connect-client-name} only the
    named clients get in, refused in the TLS handshake; without them, the
    daemon says so at start-up.
    """

    async def test_listenerAdmitsOnlyNamed(self) -> None:
        """
        kube-apiserver's and metrics-server's certificates from the kubelet
        client CA are served; a user's from that same CA is refused in the
        handshake, and the log names its subject and issuer.
        """
        with capturedLogs() as events:
            port = await self.startListener(
                "--proxy-serving-client-ca", self.kubeletCAPath,
                "--proxy-serving-client-name", "kube-apiserver-kubelet-client",
                "--proxy-serving-client-name", "metrics-server",
            )  # fmt: skip
        self.assertEqual(said(events, LogLevel.warn, "--proxy-serving-client-name"), [])
        [started] = said(events, LogLevel.info, "admits only the clients named")
        self.assertIn("kube-apiserver-kubelet-client, metrics-server", started)
        for name in ("kube-apiserver-kubelet-client", "metrics-server"):
            client = self.privateCertificate(mintClient(self.kubeletCA, name))
            self.assertServed(await self.ask(port, client))
        alice = self.privateCertificate(mintClient(self.kubeletCA, "alice"))
        with capturedLogs() as events:
            self.assertRefusedInHandshake(await self.ask(port, alice))
        [refused] = said(events, LogLevel.warn, "refused the TLS client")
        self.assertIn("CN=alice is not named by --proxy-serving-client-name", refused)
        self.assertIn("issuer CN=kubelet client CA", refused)

    async def test_listenerWarnsWithoutNames(self) -> None:
        """Without names: today's behaviour, and a warning naming the risk and the option."""
        with capturedLogs() as events:
            port = await self.startListener("--proxy-serving-client-ca", self.kubeletCAPath)
        [warning] = said(events, LogLevel.warn, "--proxy-serving-client-name")
        self.assertIn("admits every client certificate signed by", warning)
        self.assertIn("users'", warning)
        alice = self.privateCertificate(mintClient(self.kubeletCA, "alice"))
        self.assertServed(await self.ask(port, alice))

    def doorOptions(self, *arguments: str) -> list[Any]:
        """
        Build the daemon with a CONNECT door on a non-loopback endpoint (not
        listening) and C{arguments}: the TLS options its door was given.
        """
        made: list[Any] = []
        real = tapserver.serverOptions

        def spy(creds: Any) -> Any:
            made.append(real(creds))
            return made[-1]

        self.patch(tapserver, "serverOptions", spy)
        options = tapserver.Options()
        options.parseOptions(
            [*self.paths.options(), "--connect-endpoint=tcp:0", "--no-iptables", *arguments]
        )
        tapserver.makeService(options)
        return made

    def test_doorAdmitsOnlyNamed(self) -> None:
        """
        C{--connect-client-name}: kube-apiserver's certificate from
        C{--connect-ca} completes the handshake (in memory, on the door's own
        TLS options); another client's from that CA does not.
        """
        from tests.tls.test_tls import connect
        from twisted_tunnel.tls import agentOptions

        def client(name: str) -> Any:
            # its certificate from the kubelet CA; it checks the door's with the tunnel CA
            return agentOptions(pki.credentials(mintClient(self.kubeletCA, name)), "localhost")

        with capturedLogs() as events:
            [door] = self.doorOptions(
                "--connect-ca", self.kubeletCAPath, "--connect-client-name", "kube-apiserver"
            )
        self.assertEqual(said(events, LogLevel.warn, "--connect-client-name"), [])
        self.assertEqual(connect(door, client("kube-apiserver")).server.app.handshakes, 1)
        with capturedLogs() as events:
            refused = connect(door, client("bob"))
        self.assertEqual(refused.server.app.handshakes, 0)
        [line] = said(events, LogLevel.warn, "CONNECT door: refused the TLS client")
        self.assertIn("CN=bob is not named by --connect-client-name", line)

    def test_doorNamesKeepFailureRecords(self) -> None:
        """
        With names, the door's verify callback is the names' check around
        OpenSSL's verdict, and a certificate OpenSSL refuses (another CA's)
        is still recorded for the line that says why (issue 17's TLS
        failures), not only refused.
        """
        from tests.tls.test_tls import connect
        from twisted_tunnel.tls import agentOptions
        from twisted_tunnel.tls.failures import recordedFailure

        [door] = self.doorOptions(
            "--connect-ca", self.kubeletCAPath, "--connect-client-name", "kube-apiserver"
        )
        stranger = mintClient(mintCA("another CA"), "kube-apiserver")
        refused = connect(door, agentOptions(pki.credentials(stranger), "localhost"))
        self.assertEqual(refused.server.app.handshakes, 0)
        failure = recordedFailure(refused.server.app.tlsConnection)
        self.assertIsNotNone(failure)
        assert failure is not None
        self.assertIn("another CA", failure.issuer)

    def test_doorWarnsWithoutNames(self) -> None:
        with capturedLogs() as events:
            self.doorOptions()
        [warning] = said(events, LogLevel.warn, "--connect-client-name")
        self.assertIn("the CONNECT door admits every client certificate", warning)

    def test_namesMustCheckSomething(self) -> None:
        """
        Names for a listener that is off, a node's name, a wildcard: usage
        errors; names for a door without TLS (loopback): one fatal line.
        """
        for arguments, words in [
            (["--connect-endpoint=none", "--connect-client-name=a"], "--connect-endpoint none"),
            (["--https-proxy-endpoint=none", "--proxy-serving-client-name=a"], "turns off"),
            (["--proxy-serving-client-name=system:node:edge-1"], "a node's name"),
            (["--connect-client-name=*"], "no wildcards"),
        ]:
            with self.assertRaises(UsageError) as caught:
                tapserver.Options().parseOptions([*self.paths.options(), *arguments])
            self.assertIn(words, str(caught.exception))
        options = tapserver.Options()
        options.parseOptions([*self.paths.options(), "--connect-client-name=kube-apiserver"])
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit):
            tapserver.makeService(options)
        self.assertIn("is local (loopback or a UNIX socket)", stderr.getvalue())


def said(events: list[dict[str, Any]], level: LogLevel, part: str) -> list[str]:
    """The text of the lines logged at C{level} in C{events} that contain C{part}."""
    texts = [formatEvent(e) for e in events if e.get("log_level") == level]
    return [text for text in texts if part in text]


# -- finding 8 ---------------------------------------------------------------------------


PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class MetaListenerTests(SynchronousTestCase):
    """
    Finding 8: the server's meta listener (unauthenticated; C{/agents} lists
    every node, its IPs and address) bound every interface, and
    twisted.web's idle timer, reset by every byte, let a slowloris client
    hold a connection forever.  Now it binds loopback by default, a client
    has a deadline for a whole request, and a request may not be larger
    than the meta listener ever needs.
    """

    def connect(self) -> tuple[Clock, Protocol, StringTransport]:
        """A meta listener's connection on a Clock, over an in-memory transport."""
        clock = Clock()
        site = metaSite(Heartbeat(clock), CollectorRegistry(), [], lambda: "fine")
        protocol = site.buildProtocol(PEER)
        assert protocol is not None
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return clock, protocol, transport

    def test_defaultLoopback(self) -> None:
        """The server's meta listener binds 127.0.0.1 unless told otherwise."""
        options = tapserver.Options()
        options.parseOptions(pki.paths(pki.server, temporaryDirectory(self)).options())
        self.assertEqual(boundInterface(options["meta-endpoint"]), "127.0.0.1")

    def test_probeAnswered(self) -> None:
        """A probe, sent at once as probes are, is answered."""
        _, protocol, transport = self.connect()
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: pod\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertFalse(transport.disconnecting)

    def test_slowloris(self) -> None:
        """
        A byte every 3 seconds keeps an idle timer from ever firing; the
        deadline for a whole request (10 s, from the connection) cuts the
        client anyway, unanswered.
        """
        clock, protocol, transport = self.connect()
        request = b"GET /agents HTTP/1.1\r\nHost: pod\r\n\r\n"
        for byte in request[:4]:  # at 0, 3, 6 and 9 seconds
            self.assertFalse(transport.disconnecting, clock.seconds())
            protocol.dataReceived(bytes([byte]))
            clock.advance(3)
        self.assertEqual(clock.seconds(), 12)
        self.assertTrue(transport.disconnecting, "still connected past the deadline")
        self.assertEqual(transport.value(), b"")

    def test_slowlorisCutAtTheDeadline(self) -> None:
        """Not before the deadline: a client has its 10 seconds, and not one more."""
        clock, protocol, transport = self.connect()
        protocol.dataReceived(b"G")
        clock.advance(9.9)
        protocol.dataReceived(b"E")
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_oversizedRequest(self) -> None:
        """
        A request larger than 64 KiB (a body: the meta listener answers
        only GETs) is aborted as it arrives, before it is read whole.
        """
        _, protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /healthz HTTP/1.1\r\nHost: pod\r\nContent-Length: 1048576\r\n\r\n"
        )
        sent = 0
        while not transport.disconnecting and sent < 1048576:
            protocol.dataReceived(b"x" * 4096)
            sent += 4096
        self.assertTrue(transport.disconnecting, "a 1 MiB request was read")
        self.assertLessEqual(sent, 64 * 1024 + 4096)
        self.assertEqual(transport.value(), b"")


# -- finding 13 --------------------------------------------------------------------------


class PrivateUnixSocketTests(TestCase):
    """
    Finding 13: C{--connect-endpoint unix:PATH} made a 0666 socket: any
    local user could use the CONNECT door, which asks UNIX clients for no
    certificate.  Now UNIX listeners are 0600 unless the endpoint names a
    mode.
    """

    async def listenOn(self, name: str, option: str) -> str:
        """
        Start the daemon's listener C{name}, made from C{option} (with
        C{{directory}} a fresh directory), really listening; its path.
        """
        directory = temporaryDirectory(self)
        options = tapserver.Options()
        options.parseOptions(
            [
                *pki.paths(pki.server, directory, stem="server").options(),
                "--tunnel-endpoint=tcp:0:interface=127.0.0.1",
                "--connect-endpoint=none",
                "--https-proxy-endpoint=none",
                "--http-proxy-endpoint=none",
                "--tcp-proxy-endpoint=none",
                "--meta-endpoint=none",
                "--no-iptables",
                option.format(directory=directory),
            ]
        )
        top = tapserver.makeService(options)
        assert isinstance(top, MultiService)
        listener = top.getServiceNamed(name)
        assert isinstance(listener, StreamServerEndpointService)
        listener.privilegedStartService()
        listener.startService()
        self.addCleanup(listener.stopService)
        waiting = listener._waitingForPort
        assert waiting is not None
        port: IListeningPort = await waiting
        return os.fsdecode(port.getHost().name)  # type: ignore[attr-defined]

    def assertMode(self, path: str, mode: int) -> None:
        status = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(status.st_mode), path)
        self.assertEqual(oct(stat.S_IMODE(status.st_mode)), oct(mode))

    async def test_private(self) -> None:
        """Without a mode, the socket is the daemon user's only: 0600."""
        door = "--connect-endpoint=unix:{directory}/connect.sock"
        self.assertMode(await self.listenOn("--connect-endpoint", door), 0o600)

    async def test_privateForward(self) -> None:
        """So is a C{--forward} listener's, which asks for no certificate either."""
        forward = "--forward=edge-1:22=unix:{directory}/ssh-edge-1.sock"
        self.assertMode(await self.listenOn("--forward edge-1:22", forward), 0o600)

    async def test_operatorsMode(self) -> None:
        """A mode in the endpoint is the operator's choice, and kept."""
        door = "--connect-endpoint=unix:{directory}/connect.sock:mode=660"
        self.assertMode(await self.listenOn("--connect-endpoint", door), 0o660)


# -- finding 22 --------------------------------------------------------------------------


class PreroutingScopeTests(SynchronousTestCase):
    """
    Finding 22: the PREROUTING rules carried no source or interface
    restriction, so any host that routes node IPs through the server
    reached the proxy listeners.  Now C{--iptables-prerouting} needs the
    sources or interfaces routed traffic may come from, and PREROUTING
    reaches our chains only through rules that match them.
    """

    def options(self, *arguments: str) -> tapserver.Options:
        options = tapserver.Options()
        options.parseOptions(
            [*pki.paths(pki.server, temporaryDirectory(self)).options(), *arguments]
        )
        return options

    def test_unscopedPreroutingRefused(self) -> None:
        """C{--iptables-prerouting} alone is a usage error that says what is missing."""
        with self.assertRaises(UsageError) as caught:
            self.options("--iptables-prerouting")
        self.assertIn("--iptables-prerouting-source", str(caught.exception))

    def test_scopeOptions(self) -> None:
        """The scope options are taken (repeatable), checked, and need the hook."""
        options = self.options(
            "--iptables-prerouting",
            "--iptables-prerouting-source=10.20.1.7/16",
            "--iptables-prerouting-source=192.0.2.7",
            "--iptables-prerouting-interface=eth1",
        )
        self.assertEqual(options["iptables-prerouting-source"], ["10.20.0.0/16", "192.0.2.7/32"])
        self.assertEqual(options["iptables-prerouting-interface"], ["eth1"])
        for wrong in (
            ["--iptables-prerouting", "--iptables-prerouting-source=not-a-network"],
            ["--iptables-prerouting", "--iptables-prerouting-interface=eth 1"],
            ["--iptables-prerouting-source=10.0.0.0/8"],
        ):
            self.assertRaises(UsageError, self.options, *wrong)

    def render(self, **scope: Any) -> Any:
        return renderRules(
            ["10.0.0.7"],
            ProxyConfig(),
            {"https": ("0.0.0.0", 10263), "http": ("0.0.0.0", 10264), "tcp": None},
            prerouting=True,
            **scope,
        )

    def fromRules(self, ruleset: Any) -> list[str]:
        """The rules PREROUTING's traffic must pass, as C{iptables-save} prints them."""
        return [f"-A {chain} {rule}" for chain, rule in ruleset.rules if chain.endswith("-FROM")]

    def test_rulesCarrySourceAndInterface(self) -> None:
        """
        PREROUTING jumps to C{EDGE-TUNNEL-FROM}, never straight to the DNAT
        chains; that chain jumps on only for the named sources arriving on
        the named interfaces (C{-s}, C{-i}); OUTPUT is unchanged.
        """
        ruleset = self.render(
            preroutingSources=["10.20.0.0/16", "192.0.2.7/32"], preroutingInterfaces=["eth1"]
        )
        self.assertEqual(ruleset.hookJump("PREROUTING"), "-j EDGE-TUNNEL-FROM")
        self.assertEqual(ruleset.hookJump("OUTPUT"), "-j EDGE-TUNNEL")
        self.assertEqual(
            self.fromRules(ruleset),
            [
                "-A EDGE-TUNNEL-FROM -s 10.20.0.0/16 -i eth1 -j EDGE-TUNNEL",
                "-A EDGE-TUNNEL-FROM -s 192.0.2.7/32 -i eth1 -j EDGE-TUNNEL",
            ],
        )
        self.assertEqual(
            self.fromRules(self.render(preroutingInterfaces=["eth1"])),
            ["-A EDGE-TUNNEL-FROM -i eth1 -j EDGE-TUNNEL"],
        )
        self.assertEqual(
            self.fromRules(self.render(preroutingSources=["10.20.0.0/16"])),
            ["-A EDGE-TUNNEL-FROM -s 10.20.0.0/16 -j EDGE-TUNNEL"],
        )

    def test_unscopedRulesRefused(self) -> None:
        """The library refuses to render an unrestricted PREROUTING hook too."""
        self.assertRaises(ValueError, self.render)


# -- the "done when" -------------------------------------------------------------

#: A TLS client run inside the namespace: connects to argv[1]:argv[2]
#: (presenting the certificate argv[3] with key argv[4], if given), sends a
#: request, and prints what happened as JSON: refused by TLS (and why),
#: answered (the first line), or closed.
PROBE = r"""
import json, socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
if len(sys.argv) > 3:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
result = {}
try:
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"GET /pods HTTP/1.1\r\nHost: edge-1:10250\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    result = {"answered": data.split(b"\r\n", 1)[0].decode("latin-1")}
except ssl.SSLError as e:
    result = {"refused": e.reason or str(e)}
except OSError as e:
    result = {"error": repr(e)}
print(json.dumps(result))
"""


def listeningSockets(pid: int) -> list[tuple[str, int]]:
    """
    The TCP sockets process C{pid} listens on, as (address, port): its
    socket inodes (C{/proc/<pid>/fd}) matched against its network
    namespace's C{/proc/<pid>/net/tcp} and C{tcp6} in state LISTEN.
    """
    inodes = set()
    fds = f"/proc/{pid}/fd"
    for name in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, name))
        except OSError:
            continue  # closed meanwhile
        found = re.fullmatch(r"socket:\[(\d+)\]", target)
        if found:
            inodes.add(found.group(1))
    listening = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:
                    continue
                hexAddress, hexPort = local.split(":")
                raw = bytes.fromhex(hexAddress)
                # the kernel prints each 32-bit word in host (little-endian) order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                listening.append((str(ipaddress.ip_address(packed)), int(hexPort, 16)))
    return sorted(listening)


class FreshServerExposureTests(SynchronousTestCase):
    """
    Finding 3, 8 and 22 together, the issue's "done when": a fresh
    C{twistd edge-tunnel-server} with only C{--ca --cert --key} exposes
    nothing that lends an identity or reaches a node without a client
    certificate.  The real daemon, in a network namespace of its own (its
    default ports, its iptables rules there): every socket it listens on is
    on loopback but the agents' tunnel port, which completes no TLS
    handshake without a client certificate; and the HTTPS listener, even
    from loopback, refuses a client without one.
    """

    def setUp(self) -> None:
        requireNetns(self)
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory, stem="server")
        self.namespace = Namespace.create(self, "ttexp")
        # an interface that leads elsewhere: "every interface" is more than loopback
        self.namespace.addDummy("10.77.0.1/24")

    def startServer(self) -> subprocess.Popen[bytes]:
        """Start the daemon with only C{--ca --cert --key}; stopped by PID at cleanup."""
        self.log = os.path.join(self.directory, "server.log")
        with open(self.log, "wb") as log:
            process = self.namespace.spawn(
                [
                    sys.executable,
                    "-c",
                    "from twisted.scripts.twistd import run; run()",
                    "--nodaemon",
                    "--pidfile=",
                    "edge-tunnel-server",
                    *self.paths.options(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=daemonEnvironment(),
                cwd=REPO_ROOT,
            )
        self.addCleanup(self.stop, process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM by PID, and SIGKILL if it is still there 10 seconds later."""
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def probe(self, port: int, *certificate: str) -> dict[str, str]:
        """Run L{PROBE} against 127.0.0.1:C{port} inside the namespace."""
        done = self.namespace.run(
            sys.executable, "-c", PROBE, "127.0.0.1", str(port), *certificate, timeout=30
        )
        result: dict[str, str] = json.loads(done.stdout)
        return result

    def test_onlyCertificatesGetIn(self) -> None:
        process = self.startServer()
        listening: list[tuple[str, int]] = []

        def allListening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the server exited:\n{self.output()}")
            listening[:] = listeningSockets(process.pid)
            return set(DEFAULT_PORTS) <= {port for _, port in listening}

        try:
            pollUntil(allListening, 60.0, "every default listener", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; listening: {listening}\n{self.output()}") from None
        self.assertEqual(sorted({port for _, port in listening}), sorted(DEFAULT_PORTS))
        exposed = [(a, p) for a, p in listening if not isLoopback(a)]
        self.assertEqual(
            [(a, p, DEFAULT_PORTS[p]) for a, p in exposed if p != TUNNEL_PORT],
            [],
            f"listening beyond loopback: {listening}",
        )

        # the one listener beyond loopback: no handshake without a certificate
        tunnel = self.probe(TUNNEL_PORT)
        self.assertIn("CERTIFICATE_REQUIRED", tunnel.get("refused", ""), tunnel)
        # the HTTPS listener, from loopback: no certificate, no identity lent
        https = self.probe(HTTPS_PORT)
        self.assertIn("CERTIFICATE_REQUIRED", https.get("refused", ""), https)
        # nor to an agent's certificate, from the very CA of the clients it serves
        agent = pki.writePair(pki.agent("edge-1"), self.directory, "agent")
        refused = self.probe(HTTPS_PORT, agent.cert, agent.key)
        self.assertIn("refused", refused, refused)
        # while a client certificate of --ca is served (502: no agent connected)
        client = pki.writePair(pki.client(), self.directory, "client")
        served = self.probe(HTTPS_PORT, client.cert, client.key)
        self.assertTrue(served.get("answered", "").startswith("HTTP/1.1 502"), served)
