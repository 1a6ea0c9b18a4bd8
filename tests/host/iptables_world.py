# -*- test-case-name: tests.host.test_iptables -*-
"""
The two ends of a DNATed connection, for L{tests.host.test_iptables} to run
inside network namespaces (plain blocking sockets: each is a short-lived
process of its own, with nothing else to do)::

    python -m tests.host.iptables_world serve HOST PORT COUNT
    python -m tests.host.iptables_world connect HOST PORT

C{serve} listens on C{HOST:PORT}, prints C{listening} on a line of its own,
then answers C{COUNT} connections, each with one JSON line: the connection's
C{SO_ORIGINAL_DST} (C{[ip, port]}, or L{None} when it was not DNATed) and
the listener's own address; then it exits.  C{connect} dials C{HOST:PORT}
and prints one JSON line: C{{"received": <the line>}} or C{{"error": <the
exception's class>}} (C{ConnectionRefusedError} when a test's REJECT rule
answered instead of a listener).

Both give up after L{TIMEOUT} seconds, so a broken rule fails a test
instead of hanging it.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

from twisted_tunnel.net.origdst import SO_ORIGINAL_DST

#: How long any one step may take.
TIMEOUT = 5.0

_SOL_IP = 0


def originalDestination(connection: socket.socket) -> list[object] | None:
    """C{SO_ORIGINAL_DST} of an accepted IPv4 connection, or L{None}."""
    try:
        raw = connection.getsockopt(_SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    (port,) = struct.unpack("!H", raw[2:4])
    return [socket.inet_ntoa(raw[4:8]), port]


def serve(host: str, port: int, count: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    listener.settimeout(TIMEOUT)
    print("listening", flush=True)
    for _ in range(count):
        connection, _peer = listener.accept()
        with connection:
            own = connection.getsockname()
            report = {"originalDestination": originalDestination(connection), "local": own}
            connection.sendall(json.dumps(report).encode() + b"\n")


def connect(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as connection:
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
        result: dict[str, object] = {"received": json.loads(data) if data else None}
    except OSError as e:
        result = {"error": type(e).__name__}
    print(json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    mode, host, port, *rest = argv
    if mode == "serve":
        serve(host, int(port), int(rest[0]))
    elif mode == "connect":
        connect(host, int(port))
    else:
        raise SystemExit(f"unknown mode {mode!r}: serve or connect")


if __name__ == "__main__":
    main(sys.argv[1:])
