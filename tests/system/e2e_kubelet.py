"""
A kubelet stand-in for the end-to-end suite (L{tests.system.test_e2e}), run inside
an edge namespace as its own process::

    python -m tests.system.e2e_kubelet --node edge-1 --node-ip 172.30.1.10 \\
        --cert kubelet.pem --key kubelet-key.pem --client-ca kubelet-ca.pem

It listens where a node's services do:

    - C{0.0.0.0:10250}: HTTPS, like the kubelet, requiring a client
      certificate signed by C{--client-ca} (the identity kube-apiserver
      presents with C{--kubelet-client-certificate});
    - C{0.0.0.0:10255}: plain HTTP, the kubelet's read-only port;
    - C{127.0.0.1:10267}: plain HTTP on the node's loopback only (what
      C{localhost-proxy-ports} is for);
    - C{<node-ip>:9051}: plain HTTP on the node address only (an extra port
      that C{http-proxy-ports} opens).

Every answer names the node in its body and in C{X-Node}, and says where it
was served (C{X-Served-On: <local address>:<port>}), the C{Host} it was
asked for (C{X-Host}) and, over TLS, who the client was (C{X-Client-CN}).  Paths:

    - C{/healthz}, C{/pods}, anything else: the node name and a newline;
    - C{/containerLogs/...?follow=true}: C{LOG_LINES} lines (C{lines=N}:
      N), chunked, one every C{LOG_INTERVAL} seconds (like C{kubectl logs
      -f}); without C{follow}, all of them at once;
    - C{/big}: L{bigBody}, C{BIG_SIZE} deterministic bytes (C{size=N}: the
      first N of them, which are C{bigBody(N)});
    - any request with C{Connection: Upgrade} and C{Upgrade}: C{101}, then
      every byte received is echoed until the client's EOF.

It prints C{ready} on stdout once every port listens.  It is a test
program: threads, blocking sockets and the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import ssl
import sys
import threading
import time
import urllib.parse
from typing import Any

#: The size of C{/big}.
BIG_SIZE = 10 * 1024 * 1024

#: C{/containerLogs} with C{follow=true}: how many lines, how far apart.
LOG_LINES = 20
LOG_INTERVAL = 0.1

#: The ports, as the suite configures them.
KUBELET_PORT = 10250
READONLY_PORT = 10255
LOCALHOST_PORT = 10267
EXTRA_PORT = 9051


def bigBody(size: int = BIG_SIZE) -> bytes:
    """
    C{size} bytes that anyone can compute again: SHA-256 in counter mode
    (no run of them repeats, so a dropped or doubled chunk changes the digest).
    """
    blocks = []
    for counter in range((size + 31) // 32):
        blocks.append(hashlib.sha256(counter.to_bytes(8, "big")).digest())
    return b"".join(blocks)[:size]


def logLine(number: int) -> bytes:
    """Line C{number} of C{/containerLogs}."""
    return f"log line {number}\n".encode()


class StandInHandler(http.server.BaseHTTPRequestHandler):
    """One connection to the stand-in (HTTP/1.1, keep-alive)."""

    protocol_version = "HTTP/1.1"
    server: StandInServer

    def log_message(self, format: str, *args: Any) -> None:
        sys.stdout.write(f"{self.server.node} {self.server.port}: {format % args}\n")
        sys.stdout.flush()

    def _commonHeaders(self) -> None:
        local = self.connection.getsockname()
        self.send_header("X-Node", self.server.node)
        self.send_header("X-Served-On", f"{local[0]}:{local[1]}")
        self.send_header("X-Host", self.headers.get("Host", "-"))
        if isinstance(self.connection, ssl.SSLSocket):
            peer: Any = self.connection.getpeercert() or {}
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        self.send_header("X-Client-CN", value)

    def _answer(self, body: bytes, status: int = 200) -> None:
        self.send_response(status)
        self._commonHeaders()
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        connection = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        if "upgrade" in connection and self.headers.get("Upgrade"):
            self._echo()
        elif url.path.startswith("/containerLogs/"):
            lines = int(query.get("lines", [str(LOG_LINES)])[0])
            self._logs(follow=query.get("follow") == ["true"], lines=lines)
        elif url.path == "/big":
            self._answer(self.server.big[: int(query.get("size", [str(BIG_SIZE)])[0])])
        else:
            self._answer(f"{self.server.node}\n".encode())

    def _logs(self, follow: bool, lines: int = LOG_LINES) -> None:
        if not follow:
            self._answer(b"".join(logLine(n) for n in range(lines)))
            return
        self.send_response(200)
        self._commonHeaders()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n in range(lines):
            if n:
                time.sleep(LOG_INTERVAL)
            line = logLine(n)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _echo(self) -> None:
        """Switch protocols, then echo raw bytes until the client's EOF."""
        self.send_response(101)
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", self.headers["Upgrade"])
        self._commonHeaders()
        self.end_headers()
        self.wfile.flush()
        while data := self.rfile.read1(65536):
            self.wfile.write(data)
            self.wfile.flush()
        self.close_connection = True


class StandInServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        node: str,
        big: bytes,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(address, StandInHandler)
        self.node = node
        self.big = big
        self.port = address[1]
        if tls is not None:
            # The handshake runs in the connection's thread, on first read,
            # so a slow client never holds up accept().
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        sys.stdout.write(f"{self.node} {self.port}: {client_address}: {error!r}\n")
        sys.stdout.flush()


def kubeletTLS(cert: str, key: str, clientCA: str) -> ssl.SSLContext:
    """Serve C{cert}; require a client certificate signed by C{clientCA}."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(clientCA)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--node-ip", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    options = parser.parse_args(argv)
    big = bigBody()
    tls = kubeletTLS(options.cert, options.key, options.client_ca)
    servers = [
        StandInServer(("0.0.0.0", KUBELET_PORT), options.node, big, tls),
        StandInServer(("0.0.0.0", READONLY_PORT), options.node, big),
        StandInServer(("127.0.0.1", LOCALHOST_PORT), options.node, big),
        StandInServer((options.node_ip, EXTRA_PORT), options.node, big),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    threading.Event().wait()


if __name__ == "__main__":
    main()
