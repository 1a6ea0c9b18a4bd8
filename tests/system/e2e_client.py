"""
An HTTP Upgrade client for the end-to-end suite (L{tests.system.test_e2e}): what
C{kubectl exec} does to the kubelet, reduced to its bones, run inside the
cloud namespace as its own process (curl cannot drive an upgraded
connection)::

    python -m tests.system.e2e_client --connect 10.200.0.1:10263 --tls \\
        --cert apiserver.pem --key apiserver-key.pem \\
        --host 172.30.1.10:10250 --path /exec/default/pod/c

It connects to C{--connect} (over TLS with C{--tls}, not verifying the
server: like C{curl -k}; presenting C{--cert} if given, as the HTTPS proxy
listener requires), sends C{GET <path>} with C{Host: <host>},
C{Connection: Upgrade} and C{Upgrade: tt-echo}, reads the response head,
and, on C{101}, makes C{ROUND_TRIPS} round trips of growing messages
through the upgraded connection, each one waiting for its whole echo.  It
prints one JSON object: the status, the response headers, and the round
trips that came back intact.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
from typing import Any

#: The messages sent through the upgraded connection, one round trip each.
MESSAGES = [b"ping %d " % n + b"x" * (16**n) for n in range(5)]

TIMEOUT = 10.0


def readHead(connection: socket.socket) -> tuple[bytes, bytes]:
    """The response head (up to the blank line), and whatever came after it."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = connection.recv(65536)
        if not data:
            raise SystemExit(f"connection closed before the response head: {received!r}")
        received += data
    head, _, rest = received.partition(b"\r\n\r\n")
    return head, rest


def readExactly(connection: socket.socket, size: int, already: bytes) -> tuple[bytes, bytes]:
    """C{size} bytes (C{already} first), and whatever came after them."""
    received = already
    while len(received) < size:
        data = connection.recv(65536)
        if not data:
            break
        received += data
    return received[:size], received[size:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="ADDRESS:PORT to connect to")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--cert", help="client certificate to present over TLS")
    parser.add_argument("--key", help="its key")
    parser.add_argument("--host", required=True, help="the Host header")
    parser.add_argument("--path", default="/exec/default/pod/container")
    options = parser.parse_args(argv)
    address, _, port = options.connect.rpartition(":")
    connection = socket.create_connection((address, int(port)), timeout=TIMEOUT)
    if options.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if options.cert:
            context.load_cert_chain(options.cert, options.key)
        connection = context.wrap_socket(connection)
    connection.sendall(
        f"GET {options.path} HTTP/1.1\r\nHost: {options.host}\r\n"
        "Connection: Upgrade\r\nUpgrade: tt-echo\r\n\r\n".encode()
    )
    head, rest = readHead(connection)
    statusLine, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for field in fields:
        name, _, value = field.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(statusLine.split()[1])
    echoed: list[int] = []
    result: dict[str, Any] = {"status": status, "headers": headers, "echoed": echoed}
    if status == 101:
        for message in MESSAGES:
            connection.sendall(message)
            echo, rest = readExactly(connection, len(message), rest)
            if echo != message:
                result["mismatch"] = {"sent": len(message), "received": len(echo)}
                break
            echoed.append(len(message))
    connection.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
