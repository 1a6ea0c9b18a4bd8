"""
Micro-benchmark of the HTTP/1.1 codec the proxy engine runs per request:
h11 against L{twisted_tunnel.http.h1}, same call sequence for both.

Per request, as L{twisted_tunnel.http.engine} does it: the server side parses
a GET with 8 header fields (L{Request}, L{EndOfMessage}, then L{NEED_DATA}),
a L{Request} is built from its raw fields and sent by the client side with
its L{EndOfMessage}; the client side parses a 200 response with
C{Content-Length: 13} and 6 more fields (L{Response}, L{Data},
L{EndOfMessage}); the server side sends a L{Response} built from its raw
fields, the body and the end; both start the next cycle.

Run: C{.venv/bin/python bench/h1bench.py [--requests N] [--rounds R]};
prints microseconds per request (best of the rounds) for each codec, and
the ratio.
"""

from __future__ import annotations

import argparse
import time
from types import ModuleType

import h11

from twisted_tunnel.http import h1

REQUEST = (
    b"GET /api/v1/nodes/edge-1/proxy/metrics?timeout=32s HTTP/1.1\r\n"
    b"Host: 10.0.0.7:10250\r\n"
    b"User-Agent: kube-apiserver/v1.30.2 (linux/amd64) kubernetes/39683505\r\n"
    b"Accept: application/json, */*\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789\r\n"
    b"X-Forwarded-For: 10.96.0.1\r\n"
    b"X-Request-Id: 6f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b\r\n"
    b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 13\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Cache-Control: no-cache, private\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Audit-Id: 0e6b1f3a-8f8e-4d0c-9b4e-2f1c3a5d7e9f\r\n"
    b"\r\n"
    b"Hello, world!"
)


def exchanges(m: ModuleType, n: int) -> tuple[float, bytes, bytes]:
    """Run C{n} request cycles with codec module C{m}: seconds, and the bytes sent."""
    server = m.Connection(m.SERVER, max_incomplete_event_size=16384)
    client = m.Connection(m.CLIENT, max_incomplete_event_size=65536)
    Request, Response, Data, EndOfMessage = m.Request, m.Response, m.Data, m.EndOfMessage
    NEED_DATA = m.NEED_DATA
    upstream = downstream = b""
    start = time.process_time()
    for _ in range(n):
        server.receive_data(REQUEST)
        request = server.next_event()
        end = server.next_event()
        assert server.next_event() is NEED_DATA
        upstream = client.send(
            Request(
                method=request.method, target=request.target, headers=request.headers.raw_items()
            )
        )
        upstream += client.send(EndOfMessage(headers=list(end.headers)))
        client.receive_data(RESPONSE)
        response = client.next_event()
        data = client.next_event()
        client.next_event()
        downstream = server.send(
            Response(
                status_code=response.status_code,
                headers=response.headers.raw_items(),
                reason=response.reason,
            )
        )
        downstream += server.send(Data(data=data.data))
        downstream += server.send(EndOfMessage(headers=[]))
        assert client.our_state is m.DONE and client.their_state is m.DONE
        client.start_next_cycle()
        server.start_next_cycle()
        assert server.next_event() is NEED_DATA
    return time.process_time() - start, upstream, downstream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _, up11, down11 = exchanges(h11, 10)
    _, up1, down1 = exchanges(h1, 10)
    assert (up11, down11) == (up1, down1), "the codecs disagree on the bytes sent"
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, module in (("h11", h11), ("h1", h1)):
            seconds, _, _ = exchanges(module, args.requests)
            perRequest = seconds / args.requests * 1e6
            best[name] = min(best.get(name, perRequest), perRequest)
    for name in ("h11", "h1"):
        print(f"{name:4} {best[name]:8.2f} µs per request")
    print(f"h1 is {best['h11'] / best['h1']:.1f}x faster than h11")


if __name__ == "__main__":
    main()
