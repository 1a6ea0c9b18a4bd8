"""
The https policy's session resumption against TLS servers that are not
ours, over loopback sockets: OpenSSL's C{s_server} (TLS 1.3 and 1.2) and
Python's C{ssl} module.  (Go's, the kubelet's, is measured by
C{bench/tls_handshakes.py} against the interop suite's kubelet.)

Whether a connection was resumed is read from OpenSSL
(C{SSL_session_reused}), so these fail if resumption does not happen.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
from typing import Any

from OpenSSL._util import lib as _lib
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.pki import temporaryDirectory
from tests.realnet import STARTUP_TIMEOUT, waitUntil
from tests.tls.test_upstream import clientCredentials, kubeletCA
from twisted_tunnel.tls import proxyClientOptions
from twisted_tunnel.tls.certs import mintServer, writePair

DEADLINE = 10.0


class Get(Protocol):
    """Asks for C{/}, reads the answer to its end, and tells whether its session was resumed."""

    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bool] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        assert self.transport is not None
        handle: Any = self.transport.getHandle()  # type: ignore[attr-defined]
        self.done.callback(bool(_lib.SSL_session_reused(handle._ssl)))


class SServer(ProcessProtocol):
    """C{openssl s_server}, and the port it says it accepts on."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def port(self) -> int | None:
        for line in self.output.splitlines():
            if line.startswith(b"ACCEPT "):
                return int(line.rsplit(b":", 1)[1])
        return None

    def processEnded(self, reason: Failure) -> None:
        reason.trap(ProcessDone, ProcessTerminated)
        self.ended.callback(None)


class ServerTestCase(TestCase):
    """A kubelet's certificates in a directory, and the https policy's TLS client."""

    timeout = 30

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.cert = os.path.join(self.directory, "kubelet.pem")
        self.key = os.path.join(self.directory, "kubelet-key.pem")
        self.clientCA = os.path.join(self.directory, "client-ca.pem")
        writePair(mintServer(kubeletCA, ["127.0.0.1"]), self.cert, self.key)
        writePair(kubeletCA, self.clientCA, os.path.join(self.directory, "ca-key.pem"))
        self.upstream = proxyClientOptions(clientCredentials(), verify=True)

    async def get(self, port: int) -> bool:
        """One connection: C{GET /}; was it resumed?"""
        creator = self.upstream("127.0.0.1").forDestination("edge-1", "127.0.0.1", port)
        client = Get()
        endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        await connectProtocol(endpoint, client)
        resumed = await client.done.addTimeout(DEADLINE, reactor)
        self.assertIn(b"200", client.received.split(b"\r\n", 1)[0])
        return resumed


class OpenSSLServerTests(ServerTestCase):
    """
    OpenSSL's C{s_server}, a process of its own: system tests by the rule
    of C{tests/conftest.py}, to be named in its C{SYSTEM_TESTS}.
    """

    async def sServer(self, version: str) -> int:
        openssl = shutil.which("openssl")
        if openssl is None:
            self.skipTest("no openssl command")
        server = SServer()
        command = [
            openssl, "s_server", "-accept", "127.0.0.1:0", "-cert", self.cert, "-key", self.key,
            "-CAfile", self.clientCA, "-Verify", "1", "-www", version,
        ]  # fmt: skip
        process: Any = reactor.spawnProcess(server, openssl, command, env={})

        async def stop() -> None:
            if process.pid is not None:
                process.signalProcess("TERM")
            await server.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        await waitUntil(lambda: server.port() is not None, STARTUP_TIMEOUT, "openssl s_server")
        port = server.port()
        assert port is not None
        return port

    async def test_opensslTLS13(self) -> None:
        port = await self.sServer("-tls1_3")
        self.assertEqual([await self.get(port) for _ in range(3)], [False, True, True])

    async def test_opensslTLS12(self) -> None:
        port = await self.sServer("-tls1_2")
        self.assertEqual([await self.get(port) for _ in range(3)], [False, True, True])


class PythonServerTests(ServerTestCase):
    async def test_pythonSSL(self) -> None:
        """
        Python's C{ssl} server, in a thread of its own: it resumes only
        sessions of connections it closed cleanly (C{unwrap}), as OpenSSL
        drops a session whose connection was cut short.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        context.load_verify_locations(self.clientCA)
        context.verify_mode = ssl.CERT_REQUIRED
        listening = socket.create_server(("127.0.0.1", 0))
        listening.settimeout(DEADLINE)
        port = listening.getsockname()[1]
        seen: list[bool] = []

        def serve() -> None:
            for _ in range(3):
                accepted, _ = listening.accept()
                with context.wrap_socket(accepted, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                    seen.append(tls.session_reused)
                    tls.unwrap()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(listening.close)
        got = [await self.get(port) for _ in range(3)]
        await waitUntil(lambda: not thread.is_alive(), DEADLINE, "the server thread")
        self.assertEqual((got, seen), ([False, True, True], [False, True, True]))
