# -*- test-case-name: tests.tap.test_tap -*-
"""
Tests for the daemons' command lines, L{twisted_tunnel.tap.server} and
L{twisted_tunnel.tap.agent}, in the style of Twisted's own tap tests:
C{Options().parseOptions([...])}, then C{makeService(options)}, with
certificate files written by L{tests.pki}.  No service is started: nothing
listens and nothing dials.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import subprocess
import sys
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application, IServiceMaker, MultiService
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    capturedLogs,
    formatEvent,
)
from twisted.plugin import getPlugins
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.pki import CredentialPaths, TestPKI, temporaryDirectory
from twisted_tunnel._version import versionLine
from twisted_tunnel.agent import TunnelAgent
from twisted_tunnel.doors.connect import ConnectDoorFactory
from twisted_tunnel.doors.forward import ForwardFactory
from twisted_tunnel.doors.limits import _LimitedFactory
from twisted_tunnel.host.iptables import IptablesManager, checkAvailable
from twisted_tunnel.server import TunnelServer
from twisted_tunnel.tap import agent as tapagent
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tap._common import DaemonService, daemonLogObserver
from twisted_tunnel.tls import Credentials
from twisted_tunnel.tls.rotation import CredentialsWatcher

pki = TestPKI()


class FatalTestCase(SynchronousTestCase):
    """A test case that can check for a fatal configuration error."""

    def assertFatal(self, program: str, f: Any, *args: Any) -> str:
        """
        Call C{f(*args)}: it must raise C{SystemExit(2)} and write exactly one
        line, starting with C{program}, on stderr.

        @return: that line, without its newline.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            f(*args)
        self.assertEqual(caught.exception.code, 2)
        written = stderr.getvalue()
        self.assertTrue(written.endswith("\n"), written)
        self.assertEqual(written.count("\n"), 1, written)
        self.assertTrue(written.startswith(f"{program}: "), written)
        self.assertNotIn("Traceback", written)
        return written[:-1]


# -- the server ------------------------------------------------------------------


class ServerOptionsTests(SynchronousTestCase):
    """C{twistd edge-tunnel-server} options, parsed only."""

    credentials = ["--ca", "ca.pem", "--cert", "server.pem", "--key", "server-key.pem"]

    def parse(self, *args: str) -> tapserver.Options:
        options = tapserver.Options()
        options.parseOptions([*self.credentials, *args])
        return options

    def assertUsageError(self, args: list[str], *words: str) -> None:
        options = tapserver.Options()
        with self.assertRaises(UsageError, msg=args) as caught:
            options.parseOptions(args)
        for word in words:
            self.assertIn(word, str(caught.exception), args)

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["tunnel-endpoint"], "tcp:10262")
        self.assertEqual(options["connect-endpoint"], "tcp:10261:interface=127.0.0.1")
        self.assertIsNone(options["connect-ca"])
        self.assertIsNone(options["server-id"])
        self.assertEqual(options["server-count"], 1)
        self.assertEqual(options["forward"], [])
        self.assertEqual((options["ca"], options["cert"]), ("ca.pem", "server.pem"))
        self.assertEqual(options.settings().window, 1024 * 1024)
        self.assertEqual(options.keepalive().interval, 10.0)

    def test_credentialsRequired(self) -> None:
        for missing in ["--ca", "--cert", "--key"]:
            i = self.credentials.index(missing)
            args = self.credentials[:i] + self.credentials[i + 2 :]
            self.assertUsageError(args, missing, "required")

    def test_forward(self) -> None:
        options = self.parse(
            "--forward",
            "edge-1:9100=tcp:19100:interface=127.0.0.1",
            "--forward",
            "[fd00::1]:80=unix:/run/x.sock",
        )
        self.assertEqual(
            options["forward"],
            [
                ("edge-1", 9100, "tcp:19100:interface=127.0.0.1"),
                ("fd00::1", 80, "unix:/run/x.sock"),
            ],
        )

    def test_badForward(self) -> None:
        for spec in ["edge-1:9100", "edge-1=tcp:1", "edge-1:0=tcp:1", "edge-1:x=tcp:1", "e:1="]:
            self.assertUsageError([*self.credentials, "--forward", spec], repr(spec))

    def test_numbers(self) -> None:
        options = self.parse(
            "--server-count",
            "3",
            "--open-timeout",
            "2.5",
            "--keepalive-interval",
            "4",
            "--keepalive-misses",
            "2",
            "--stream-window",
            "65536",
            "--max-streams",
            "10",
        )
        self.assertEqual(options["server-count"], 3)
        self.assertEqual(options["open-timeout"], 2.5)
        self.assertEqual(options.keepalive().deadline, 8.0)
        self.assertEqual(options.settings().window, 65536)
        self.assertEqual(options.settings().maxStreams, 10)

    def test_badNumbers(self) -> None:
        for option, value in [
            ("--server-count", "0"),
            ("--server-count", "-2"),
            ("--server-count", "two"),
            ("--open-timeout", "0"),
            ("--open-timeout", "nan"),
            ("--keepalive-interval", "-1"),
            ("--keepalive-misses", "0"),
            ("--max-streams", "0"),
            ("--stream-window", "x"),
        ]:
            self.assertUsageError([*self.credentials, option, value])

    def test_smallStreamWindow(self) -> None:
        self.assertUsageError([*self.credentials, "--stream-window", "65535"], "--stream-window")

    def test_hugeWindowAndStreams(self) -> None:
        self.parse("--stream-window", str(2**31 - 1), "--max-streams", str(2**31 - 1))
        self.assertUsageError([*self.credentials, "--stream-window", str(2**31)])
        self.assertUsageError([*self.credentials, "--max-streams", str(2**31)])


class LogLevelTests(SynchronousTestCase):
    """C{--log-level}: info by default, debug only when asked for."""

    def written(self, logFormat: str, level: str) -> str:
        out = io.StringIO()
        log = Logger(observer=daemonLogObserver(logFormat, level, out), namespace="t")
        log.debug("per stream {n}", n=1)
        log.info("agent {n} connected", n=2)
        log.warn("refused {n}", n=3)
        return out.getvalue()

    def test_infoByDefault(self) -> None:
        self.assertEqual(ServerOptionsTests().parse()["log-level"], "info")
        agent = AgentOptionsTests()
        self.assertEqual(agent.parse("--server", "s:1")["log-level"], "info")
        debug = agent.parse("--server", "s:1", "--log-level", "debug")
        self.assertEqual(debug["log-level"], "debug")
        written = self.written("text", "info")
        self.assertNotIn("per stream", written)
        self.assertIn("[t#info] agent 2 connected", written)
        self.assertIn("[t#warn] refused 3", written)

    def test_chosen(self) -> None:
        self.assertIn("per stream 1", self.written("text", "debug"))
        self.assertEqual(self.written("text", "warn").count("\n"), 1)
        lines = self.written("json", "info").splitlines()
        self.assertEqual(
            [json.loads(line)["text"] for line in lines], ["agent 2 connected", "refused 3"]
        )

    def test_refused(self) -> None:
        ServerOptionsTests().assertUsageError(
            [*ServerOptionsTests.credentials, "--log-level", "verbose"],
            "'verbose' is not one of debug, info, warn, error",
        )

    def test_theApplicationsObserver(self) -> None:
        """Both daemons give twistd their observer (twistd's own writes every level)."""
        application = Application("edge-tunnel")
        DaemonService("edge-tunnel-agent", "text", "warn").setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, FilteringLogObserver)


class ConnectDoorIsLocalTests(SynchronousTestCase):
    """Which CONNECT endpoints may run without client certificates."""

    def test_local(self) -> None:
        for description in [
            "unix:/run/edge-tunnel/connect.sock",
            "unix:/tmp/x.sock:mode=600",
            "tcp:10261:interface=127.0.0.1",
            "tcp:port=10261:interface=127.0.0.1",
            "tcp:10261:interface=127.0.0.2",
            "tcp:10261:interface=localhost",
            "tcp:10261:127.0.0.1",
        ]:
            self.assertTrue(isLocal(description), description)

    def test_notLocal(self) -> None:
        for description in [
            "tcp:10261",
            "tcp:port=10261",
            "tcp:10261:interface=0.0.0.0",
            "tcp:10261:interface=192.0.2.1",
            "tcp:10261:interface=10.0.0.1",
            "tcp:10261:interface=example.com",
            "tcp6:10261",
            r"tcp6:10261:interface=\:\:",
            "ssl:10261:interface=127.0.0.1",
            "systemd:domain=INET:index=0",
        ]:
            self.assertFalse(isLocal(description), description)

    def test_ipv6Loopback(self) -> None:
        self.assertTrue(isLocal(r"tcp6:10261:interface=\:\:1"))

    def test_lastInterfaceWins(self) -> None:
        self.assertFalse(isLocal("tcp:10261:interface=127.0.0.1:interface=0.0.0.0"))


def isLocal(description: str) -> bool:
    """What C{connectDoorIsLocal} says of the endpoint Twisted builds from C{description}."""
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except Exception:  # makeService stops with one line for these
        return False
    return tapserver.connectDoorIsLocal(endpoint)


class ListenBacklogTests(SynchronousTestCase):
    def test_addedToTCP(self) -> None:
        self.assertEqual(
            tapserver.withListenBacklog("tcp:10261:interface=127.0.0.1"),
            "tcp:10261:interface=127.0.0.1:backlog=1024",
        )
        self.assertEqual(tapserver.withListenBacklog("tcp6:10262"), "tcp6:10262:backlog=1024")

    def test_operatorsChoiceKept(self) -> None:
        for description in ("tcp:10261:backlog=10", "unix:/run/edge.sock", "ssl:443"):
            self.assertEqual(tapserver.withListenBacklog(description), description)

    def test_theKernelGetsIt(self) -> None:
        """
        A listener built from a plain C{tcp:} description really listens
        with the larger backlog (C{ss} shows it as the Send-Q of a
        listening socket).
        """
        from twisted.internet import reactor

        endpoint = serverFromString(
            reactor, tapserver.withListenBacklog("tcp:0:interface=127.0.0.1")
        )
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        shown = subprocess.run(
            ["ss", "-Hltn", f"sport = :{number}"], capture_output=True, text=True, check=True
        ).stdout.split()
        self.assertEqual(shown[2], str(min(1024, somaxconn())), shown)


def somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


class ServerMakeServiceTests(FatalTestCase):
    """C{makeService} with real certificate files; the service is never started."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory)

    def options(self, *args: str, paths: CredentialPaths | None = None) -> tapserver.Options:
        options = tapserver.Options()
        options.parseOptions([*(paths or self.paths).options(), *args])
        return options

    def make(self, *args: str) -> MultiService:
        service = tapserver.makeService(self.options(*args))
        self.assertIsInstance(service, MultiService)
        assert isinstance(service, MultiService)
        self.assertFalse(service.running)
        return service

    def listener(self, service: MultiService, name: str) -> StreamServerEndpointService:
        child = service.getServiceNamed(name)
        self.assertIsInstance(child, StreamServerEndpointService)
        assert isinstance(child, StreamServerEndpointService)
        self.assertFalse(child.running)
        return child

    def frontDoor(self, listener: StreamServerEndpointService) -> Any:
        """
        The factory of a front door (CONNECT door, C{--forward}, proxy
        listeners), which every one serves behind its client limiter.
        """
        factory = listener.factory
        self.assertIsInstance(factory, _LimitedFactory)
        return factory.wrappedFactory

    def spyOnDoorTLS(self) -> list[Credentials]:
        """Record the credentials the CONNECT door's TLS options are made from."""
        made: list[Credentials] = []
        real = tapserver.serverOptions

        def spy(creds: Credentials) -> Any:
            made.append(creds)
            return real(creds)

        self.patch(tapserver, "serverOptions", spy)
        return made

    def test_proxyListenersCanBeTurnedOff(self) -> None:
        service = self.make(
            "--https-proxy-endpoint=none",
            "--http-proxy-endpoint=none",
            "--tcp-proxy-endpoint=none",
            "--no-iptables",
        )
        self.assertEqual(
            [child.name for child in service],
            ["--tunnel-endpoint", "--connect-endpoint", "tls:--cert"],
        )

    def test_certificateRotation(self) -> None:
        """
        The server watches its --ca, --cert and --key files every 10 s by
        default; --tls-reload-interval 0 turns that off.
        """
        service = self.make("--no-iptables")
        watcher = service.getServiceNamed("tls:--cert")
        assert isinstance(watcher, CredentialsWatcher)
        self.assertEqual(watcher.interval, 10.0)
        self.assertEqual(watcher.paths, (self.paths.ca, self.paths.cert, self.paths.key))
        off = self.make("--no-iptables", "--tls-reload-interval", "0")
        self.assertEqual([c for c in off if (c.name or "").startswith("tls:")], [])

    def test_proxyListenerDefaults(self) -> None:
        """
        The yurt-tunnel ports: 10263 for HTTPS, 10264 for HTTP; ours for raw
        TCP; all on loopback (the OUTPUT DNAT needs nothing more), as is the
        meta listener.
        """
        options = self.options()
        self.assertEqual(
            (
                options["https-proxy-endpoint"],
                options["http-proxy-endpoint"],
                options["tcp-proxy-endpoint"],
                options["meta-endpoint"],
            ),
            (
                "tcp:10263:interface=127.0.0.1",
                "tcp:10264:interface=127.0.0.1",
                "tcp:10268:interface=127.0.0.1",
                "tcp:10265:interface=127.0.0.1",
            ),
        )

    def test_configWatcher(self) -> None:
        """With --config, the configuration is loaded now and watched from then on."""
        path = os.path.join(self.directory, "cfg.yaml")
        with open(path, "w") as f:
            f.write("apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: '9051'\n")
        service = self.make("--config", path)
        self.assertIn("--config", [child.name for child in service])

    def test_badConfigStopsStartup(self) -> None:
        path = os.path.join(self.directory, "cfg.yaml")
        with open(path, "w") as f:
            f.write("apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: '70000'\n")
        line = self.assertFatal("edge-tunnel-server", self.make, "--config", path)
        self.assertIn("--config", line)
        self.assertIn("70000", line)

    def test_unknownPolicyStopsStartup(self) -> None:
        """A policy-ports binding to a policy that does not exist stops startup, naming it."""
        path = os.path.join(self.directory, "cfg.yaml")
        with open(path, "w") as f:
            f.write(
                "apiVersion: v1\nkind: ConfigMap\ndata:\n"
                "  http-proxy-ports: '9051'\n  policy-ports: '9051=nosuch'\n"
            )
        line = self.assertFatal("edge-tunnel-server", self.make, "--config", path)
        self.assertIn("no policy named 'nosuch'", line)

    def test_iptablesRequired(self) -> None:
        """
        --iptables makes the manager part of the service (it starts with
        it), or stops startup with one line when iptables cannot be used.
        """
        reason = checkAvailable()
        if reason is None:
            service = self.make("--iptables")
            manager = service.getServiceNamed("--iptables")
            self.assertIsInstance(manager, IptablesManager)
            self.assertFalse(manager.running)
        else:
            line = self.assertFatal("edge-tunnel-server", self.make, "--iptables")
            self.assertIn(reason, line)

    def test_iptablesFlagsContradict(self) -> None:
        with self.assertRaises(UsageError):
            self.options("--iptables", "--no-iptables")

    def test_servingClientCA(self) -> None:
        """--proxy-serving-client-ca is loaded at startup; a missing file stops it."""
        service = self.make("--proxy-serving-client-ca", self.paths.ca, "--no-iptables")
        self.assertIn("--https-proxy-endpoint", [child.name for child in service])
        missing = os.path.join(self.directory, "nope.pem")
        line = self.assertFatal(
            "edge-tunnel-server", self.make, "--proxy-serving-client-ca", missing, "--no-iptables"
        )
        self.assertIn("--proxy-serving-client-ca", line)

    def test_hostsFile(self) -> None:
        path = os.path.join(self.directory, "hosts")
        service = self.make("--hosts-file", path, "--hosts-address", "10.96.0.50")
        hosts = service.getServiceNamed("--hosts-file")
        self.assertEqual((hosts.path, hosts.address), (path, "10.96.0.50"))

    def test_connectDirect(self) -> None:
        """
        --connect-direct (repeatable) reaches the CONNECT door with the open
        timeout; a network the server must never dial stops the parse.
        """
        service = self.make(
            "--connect-direct", "10.200.0.0/24", "--connect-direct", "fd00::/64",
            "--open-timeout", "3", "--no-iptables",
        )  # fmt: skip
        door = self.frontDoor(self.listener(service, "--connect-endpoint"))
        self.assertEqual([str(n) for n in door.direct.networks], ["10.200.0.0/24", "fd00::/64"])
        endpoint = door.direct.endpoint("10.200.0.3", 4443)
        self.assertEqual(
            (endpoint._host, endpoint._port, endpoint._timeout), ("10.200.0.3", 4443, 3)
        )
        self.assertIsNone(
            self.frontDoor(self.listener(self.make("--no-iptables"), "--connect-endpoint")).direct
        )
        with self.assertRaises(UsageError) as caught:
            self.options("--connect-direct", "169.254.0.0/16")
        self.assertIn(
            "--connect-direct: 169.254.0.0/16 overlaps 169.254.0.0/16", str(caught.exception)
        )

    def test_hostsFileNeedsAnAddress(self) -> None:
        for args, words in [
            (["--hosts-file", "/tmp/h"], "needs --hosts-address"),
            (["--hosts-file", "/tmp/h", "--hosts-address", "tunnel"], "is not an IP address"),
        ]:
            with self.assertRaises(UsageError) as caught:
                self.options(*args)
            self.assertIn(words, str(caught.exception))

    def test_proxyClientPairs(self) -> None:
        for args in (["--proxy-client-cert", "x.pem"], ["--proxy-serving-key", "k.pem"]):
            with self.assertRaises(UsageError) as caught:
                self.options(*args)
            self.assertIn("go together", str(caught.exception))

    def test_listeners(self) -> None:
        service = self.make(
            "--server-id",
            "srv-a",
            "--server-count",
            "2",
            "--forward",
            "edge-1:9100=tcp:19100:interface=127.0.0.1",
            "--forward",
            "edge-2:22=unix:/run/ssh-edge-2.sock",
            "--no-iptables",
        )
        names = [child.name for child in service]
        self.assertEqual(
            names,
            [
                "--tunnel-endpoint",
                "--connect-endpoint",
                "--forward edge-1:9100",
                "--forward edge-2:22",
                "tls:--proxy-serving-cert",
                "--https-proxy-endpoint",
                "--http-proxy-endpoint",
                "--tcp-proxy-endpoint",
                "tls:--cert",
            ],
        )
        server = service.tunnelServer
        self.assertIsInstance(server, TunnelServer)
        self.assertEqual((server.serverId, server.serverCount), ("srv-a", 2))
        self.assertIsNotNone(server.credentials)

        tunnel = self.listener(service, "--tunnel-endpoint")
        self.assertIsInstance(tunnel.endpoint, TCP4ServerEndpoint)
        self.assertIsInstance(tunnel.factory, TLSMemoryBIOFactory)

        door = self.listener(service, "--connect-endpoint")
        self.assertIsInstance(door.endpoint, TCP4ServerEndpoint)
        self.assertIsInstance(self.frontDoor(door), ConnectDoorFactory)
        self.assertIs(self.frontDoor(door).server, server)

        forward = self.listener(service, "--forward edge-1:9100")
        self.assertIsInstance(forward.endpoint, TCP4ServerEndpoint)
        forwarding = self.frontDoor(forward)
        self.assertIsInstance(forwarding, ForwardFactory)
        self.assertEqual((forwarding.node, forwarding.port), ("edge-1", 9100))
        self.assertIs(forwarding.server, server)
        self.assertIsInstance(
            self.listener(service, "--forward edge-2:22").endpoint, UNIXServerEndpoint
        )

    def test_localDoorIsPlain(self) -> None:
        made = self.spyOnDoorTLS()
        for description in ["unix:/run/connect.sock", "tcp:0:interface=127.0.0.1"]:
            service = self.make("--connect-endpoint", description)
            door = self.listener(service, "--connect-endpoint")
            self.assertIsInstance(self.frontDoor(door), ConnectDoorFactory, description)
        self.assertEqual(made, [])

    def test_noDoor(self) -> None:
        """C{--connect-endpoint none}: no CONNECT door at all."""
        service = self.make("--connect-endpoint", "none")
        self.assertNotIn("--connect-endpoint", [s.name for s in service])

    def test_exposedDoorRequiresCertificates(self) -> None:
        """
        A CONNECT door on a non-loopback address is wrapped in TLS that
        trusts the tunnel's CA (C{--ca}).
        """
        made = self.spyOnDoorTLS()
        service = self.make("--connect-endpoint", "tcp:0")
        door = self.listener(service, "--connect-endpoint")
        self.assertIsInstance(self.frontDoor(door), TLSMemoryBIOFactory)
        self.assertIsInstance(self.frontDoor(door).wrappedFactory, ConnectDoorFactory)
        (creds,) = made
        self.assertEqual(
            [a.original.to_cryptography() for a in creds.authority], [pki.ca.certificate]
        )

    def test_connectCA(self) -> None:
        """C{--connect-ca}: the exposed door trusts that CA, not C{--ca}."""
        made = self.spyOnDoorTLS()
        other = pki.paths(pki.otherCA, self.directory, stem="other-ca")
        service = self.make("--connect-endpoint", "tcp6:0", "--connect-ca", other.cert)
        door = self.listener(service, "--connect-endpoint")
        self.assertIsInstance(door.endpoint, TCP6ServerEndpoint)
        self.assertIsInstance(self.frontDoor(door), TLSMemoryBIOFactory)
        (creds,) = made
        self.assertEqual(
            [a.original.to_cryptography() for a in creds.authority], [pki.otherCA.certificate]
        )
        # the door still presents the server's own certificate
        self.assertEqual(creds.certificate.original.to_cryptography(), pki.server.certificate)
        # and follows those files when they are rotated
        watcher = service.getServiceNamed("tls:--connect-endpoint")
        assert isinstance(watcher, CredentialsWatcher)
        self.assertEqual(watcher.paths, (other.cert, self.paths.cert, self.paths.key))

    def test_missingConnectCA(self) -> None:
        options = self.options(
            "--connect-endpoint", "tcp:0", "--connect-ca", "/nonexistent/connect-ca.pem"
        )
        line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
        self.assertIn("--connect-ca /nonexistent/connect-ca.pem", line)

    def test_missingCertificate(self) -> None:
        for option in ["--ca", "--cert", "--key"]:
            args = self.paths.options()
            path = f"{self.directory}/missing-{option[2:]}.pem"
            args[args.index(option) + 1] = path
            options = tapserver.Options()
            options.parseOptions(args)
            line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
            self.assertIn(f"{option} {path}", line)

    def test_garbageCertificate(self) -> None:
        garbage = f"{self.directory}/garbage.pem"
        with open(garbage, "w") as f:
            f.write("this is not a certificate\n")
        for option in ["--ca", "--cert", "--key"]:
            args = self.paths.options()
            args[args.index(option) + 1] = garbage
            options = tapserver.Options()
            options.parseOptions(args)
            line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
            self.assertIn(f"{option} {garbage}", line)

    def test_wrongKey(self) -> None:
        """A key that belongs to another certificate, named with both files."""
        other = pki.paths(pki.agent("edge-1"), self.directory)
        paths = CredentialPaths(ca=self.paths.ca, cert=self.paths.cert, key=other.key)
        options = self.options(paths=paths)
        line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
        self.assertIn(f"--key {other.key}", line)

    def test_badEndpoint(self) -> None:
        for args, named in [
            (["--tunnel-endpoint", "bogus:10262"], "--tunnel-endpoint 'bogus:10262'"),
            (["--tunnel-endpoint", "tcp:port"], "--tunnel-endpoint 'tcp:port'"),
            (["--connect-endpoint", "tcp:1:nosuch=1"], "--connect-endpoint 'tcp:1:nosuch=1'"),
            (["--forward", "edge-1:9100=tcp:x"], "--forward edge-1:9100 'tcp:x'"),
        ]:
            options = self.options(*args)
            line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
            self.assertIn(named, line)

    def test_endpointWithMissingFile(self) -> None:
        options = self.options("--tunnel-endpoint", "ssl:0:privateKey=/nonexistent/key.pem")
        line = self.assertFatal("edge-tunnel-server", tapserver.makeService, options)
        self.assertIn("--tunnel-endpoint", line)


# -- the agent ---------------------------------------------------------------------


class AgentOptionsTests(SynchronousTestCase):
    """C{twistd edge-tunnel-agent} options, parsed only."""

    credentials = ["--ca", "ca.pem", "--cert", "agent.pem", "--key", "agent-key.pem"]

    def parse(self, *args: str) -> tapagent.Options:
        options = tapagent.Options()
        options.parseOptions([*self.credentials, *args])
        return options

    def assertUsageError(self, args: list[str], *words: str) -> None:
        options = tapagent.Options()
        with self.assertRaises(UsageError, msg=args) as caught:
            options.parseOptions([*self.credentials, *args])
        for word in words:
            self.assertIn(word, str(caught.exception), args)

    def test_serverRequired(self) -> None:
        self.assertUsageError([], "--server")

    def test_defaults(self) -> None:
        options = self.parse("--server", "tunnel.example.com:10262")
        self.assertEqual(options["server-address"], ("tunnel.example.com", 10262))
        self.assertIsNone(options["node-name"])
        self.assertIsNone(options["server-name"])
        self.assertEqual(options["node-ip"], [])
        self.assertEqual(options["allow"], [])
        self.assertEqual(options["dial-timeout"], 5.0)
        self.assertEqual(options["max-backoff"], 30.0)

    def test_server(self) -> None:
        for text, expected in [
            ("tunnel.example.com:10262", ("tunnel.example.com", 10262)),
            ("192.0.2.1:1", ("192.0.2.1", 1)),
            ("[fd00::1]:443", ("fd00::1", 443)),
            ("[::1]:65535", ("::1", 65535)),
        ]:
            self.assertEqual(self.parse("--server", text)["server-address"], expected, text)
            self.assertEqual(tapagent.parseServer(text), expected)

    def test_badServer(self) -> None:
        for text in [
            "tunnel.example.com",
            "tunnel.example.com:",
            ":10262",
            "[]:10262",
            "tunnel:0",
            "tunnel:65536",
            "tunnel:port",
            "tunnel:-1",
            "[::1]",
        ]:
            self.assertUsageError(["--server", text], "--server", repr(text))

    def test_unbracketedIPv6Server(self) -> None:
        self.assertUsageError(["--server", "::1"], "--server", repr("::1"))

    def test_nonAsciiPort(self) -> None:
        self.assertUsageError(["--server", "tunnel:\u00b2"], "--server")

    def test_nodeIPs(self) -> None:
        options = self.parse(
            "--server", "t:1", "--node-ip", "192.0.2.10", "--node-ip", "FD00:0::10"
        )
        self.assertEqual(options["node-ip"], ["192.0.2.10", "fd00::10"])

    def test_nodeIPsCommaSeparated(self) -> None:
        """As the downward API's status.hostIPs gives a dual-stack node's addresses."""
        options = self.parse("--server", "t:1", "--node-ip", "192.0.2.10,FD00:0::10")
        self.assertEqual(options["node-ip"], ["192.0.2.10", "fd00::10"])

    def test_badNodeIP(self) -> None:
        for bad in ["edge-1", "192.0.2.256", "10.0.0.0/8", ""]:
            self.assertUsageError(["--server", "t:1", "--node-ip", bad], "--node-ip", repr(bad))
        self.assertUsageError(
            ["--server", "t:1", "--node-ip", "192.0.2.10,edge-1"], "--node-ip", "'edge-1'"
        )

    def test_allow(self) -> None:
        options = self.parse(
            "--server",
            "t:1",
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "192.0.2.7/24",
            "--allow",
            "fd00:1::/64",
            "--allow",
            "203.0.113.5",
        )
        self.assertEqual(
            options["allow"], ["10.0.0.0/8", "192.0.2.7/24", "fd00:1::/64", "203.0.113.5"]
        )

    def test_badAllow(self) -> None:
        for bad in ["10.0.0.0/33", "everything", "fd00::/129", ""]:
            self.assertUsageError(["--server", "t:1", "--allow", bad], "--allow", repr(bad))

    def test_badNumbers(self) -> None:
        for option, value in [
            ("--dial-timeout", "0"),
            ("--max-backoff", "-1"),
            ("--stream-window", "1024"),
            ("--drain-timeout", "-1"),
        ]:
            self.assertUsageError(["--server", "t:1", option, value])


class AgentMakeServiceTests(FatalTestCase):
    """C{makeService} with a real agent certificate; the service is never started."""

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.agent("edge-1", ["192.0.2.10", "fd00::10"]), self.directory)

    def options(self, *args: str, paths: CredentialPaths | None = None) -> tapagent.Options:
        options = tapagent.Options()
        options.parseOptions([*(paths or self.paths).options(), "--server", "[::1]:10262", *args])
        return options

    def make(self, *args: str) -> TunnelAgent:
        top = tapagent.makeService(self.options(*args))
        assert isinstance(top, MultiService)
        agent = top.getServiceNamed("agent")
        self.assertIsInstance(agent, TunnelAgent)
        assert isinstance(agent, TunnelAgent)
        self.assertFalse(agent.running)
        self.assertIsNone(agent.tunnel)
        return agent

    def test_fromCertificate(self) -> None:
        """Node name from the certificate's CN, node IPs from its IP subjectAltNames."""
        agent = self.make()
        self.assertEqual(agent.nodeName, "edge-1")
        self.assertEqual(agent.nodeIPs, ("192.0.2.10", "fd00::10"))
        self.assertEqual(agent.server, ("::1", 10262))
        self.assertEqual(agent.serverName, "::1")
        self.assertIsNotNone(agent.credentials)
        self.assertEqual(agent.drainTimeout, tapagent.DEFAULT_DRAIN_TIMEOUT)

    def test_explicit(self) -> None:
        agent = self.make(
            "--node-name",
            "edge-1",
            "--node-ip",
            "192.0.2.10",
            "--server-name",
            "tunnel.example.com",
            "--allow",
            "10.0.0.0/8",
            "--dial-timeout",
            "2.5",
            "--max-backoff",
            "7",
            "--stream-window",
            "131072",
            "--drain-timeout",
            "3",
            "--connect-timeout",
            "4",
        )
        self.assertEqual(agent.nodeIPs, ("192.0.2.10",))
        self.assertEqual(agent.drainTimeout, 3.0)
        self.assertEqual(agent.connectTimeout, 4.0)
        self.assertEqual(agent.serverName, "tunnel.example.com")
        self.assertEqual(agent.dialTimeout, 2.5)
        self.assertEqual(agent.settings.window, 131072)
        self.assertTrue(agent.allowlist.permits(ipaddress.ip_address("10.9.8.7")))
        self.assertLessEqual(agent.retryPolicy(100), 7.0)
        self.assertGreaterEqual(agent.retryPolicy(100), 3.5)

    def test_nodeNameNotInCertificate(self) -> None:
        options = self.options("--node-name", "edge-2")
        line = self.assertFatal("edge-tunnel-agent", tapagent.makeService, options)
        self.assertIn("--node-name 'edge-2'", line)
        self.assertIn(self.paths.cert, line)

    def test_certificateNamesNoNode(self) -> None:
        """A client certificate (no C{system:node:} CN) and no C{--node-name}."""
        paths = pki.paths(pki.client("kube-apiserver"), self.directory)
        options = self.options(paths=paths)
        line = self.assertFatal("edge-tunnel-agent", tapagent.makeService, options)
        self.assertIn(f"--cert {paths.cert}", line)
        self.assertIn("--node-name", line)

    def test_missingKey(self) -> None:
        paths = CredentialPaths(
            ca=self.paths.ca, cert=self.paths.cert, key=f"{self.directory}/nope-key.pem"
        )
        line = self.assertFatal(
            "edge-tunnel-agent", tapagent.makeService, self.options(paths=paths)
        )
        self.assertIn(f"--key {paths.key}", line)


# -- the plugins --------------------------------------------------------------------


class PluginTests(SynchronousTestCase):
    """Both daemons resolve through Twisted's plugin system to these tap modules."""

    def test_plugins(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        for tapname, module in [
            ("edge-tunnel-server", tapserver),
            ("edge-tunnel-agent", tapagent),
        ]:
            maker = makers[tapname]
            self.assertTrue(verifyObject(IServiceMaker, maker))
            self.assertIs(maker.options, module.Options)
            self.assertIs(maker.makeService, module.makeService)


class VersionTests(SynchronousTestCase):
    """C{twistd edge-tunnel-server --version}: the daemon's own version, not Twisted's."""

    def test_version(self) -> None:
        for module, program in (
            (tapserver, "edge-tunnel-server"),
            (tapagent, "edge-tunnel-agent"),
        ):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            with self.assertRaises(SystemExit) as exited:
                module.Options().parseOptions(["--version"])
            self.assertEqual(exited.exception.code, 0)
            self.assertEqual(out.getvalue(), versionLine(program) + "\n")


class UsageErrorTests(SynchronousTestCase):
    """
    A usage error names every missing option at once, and twistd, which
    prints the daemon's usage above the error, gets one line, not the few
    hundred lines of every option.
    """

    def test_everyMissingOptionAtOnce(self) -> None:
        for options, said in (
            (tapserver.Options(), "--ca, --cert, --key are required"),
            (tapagent.Options(), "--server HOST:PORT, --ca, --cert, --key are required"),
        ):
            error = self.assertRaises(UsageError, options.parseOptions, [])
            self.assertEqual(str(error), said)
            self.assertEqual(
                options.getUsage(), f"twistd {options.program} --help lists every option."
            )

    def test_oneMissing(self) -> None:
        error = self.assertRaises(
            UsageError, tapserver.Options().parseOptions, ["--ca", "c", "--cert", "c"]
        )
        self.assertEqual(str(error), "--key is required")

    def test_helpStillWhole(self) -> None:
        """Without an error, the usage is the whole help."""
        self.assertGreater(len(tapserver.Options().getUsage().splitlines()), 100)

    def test_helpHasNoRunsOfSpaces(self) -> None:
        """
        Every option's help reads as one paragraph: an C{opt_} method's
        docstring brings line breaks and indentation, which showed as runs
        of spaces (C{to PORT on         NODE}).
        """
        for options in (tapserver.Options(), tapagent.Options()):
            for name, doc in options.docs.items():
                self.assertNotIn("  ", doc or "", name)
                self.assertNotIn("\n", doc or "", name)


class ProxyClientWarningTests(SynchronousTestCase):
    """
    An HTTPS proxy listener without C{--proxy-client-cert} can only answer
    502 to every https port: the daemon says so, loudly, at start-up.
    """

    def warnings(self, *arguments: str) -> list[str]:
        paths = pki.paths(pki.server, temporaryDirectory(self))
        options = tapserver.Options()
        options.parseOptions([*paths.options(), "--no-iptables", *arguments])
        with capturedLogs() as events:
            tapserver.makeService(options)
        return [
            formatEvent(e)
            for e in events
            if e.get("log_level") == LogLevel.warn and "--proxy-client-cert" in formatEvent(e)
        ]

    def test_warned(self) -> None:
        (line,) = self.warnings()
        self.assertIn("answered 502", line)
        self.assertIn("--https-proxy-endpoint=none", line)

    def test_notWarned(self) -> None:
        self.assertEqual(self.warnings("--https-proxy-endpoint=none"), [])
        client = pki.paths(pki.client("kube-apiserver"), temporaryDirectory(self), stem="pc")
        self.assertEqual(
            self.warnings("--proxy-client-cert", client.cert, "--proxy-client-key", client.key),
            [],
        )


class StartupLineTests(SynchronousTestCase):
    """One line at start-up says what is in force, so a log shows how the server was run."""

    def test_whatRuns(self) -> None:
        directory = temporaryDirectory(self)
        paths = pki.paths(pki.server, directory)
        config = os.path.join(directory, "cfg.yaml")
        with open(config, "w") as f:
            f.write('apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: "9100"\n')
        options = tapserver.Options()
        options.parseOptions(
            [*paths.options(), "--no-iptables", "--config", config, "--server-id", "s-1"]
        )
        with capturedLogs() as events:
            tapserver.makeService(options)
        (line,) = [formatEvent(e) for e in events if "server id s-1" in formatEvent(e)]
        for said in (
            "edge-tunnel-server 0.1.0",
            "one of 1 replica(s)",
            "agents tcp:10262",
            "HTTPS proxy listener tcp:10263:interface=127.0.0.1",
            f"forwarding from --config {config}: http 9100, 10255",
            "iptables left alone",
            "Nodes not watched",
        ):
            self.assertIn(said, line)
