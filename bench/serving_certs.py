"""
Per-node serving certificates (issue 16, item 3): what minting costs, what
the cache holds at 10,000 nodes, and what choosing the certificate adds to
each connection.

    .venv/bin/python bench/serving_certs.py [--nodes 10000] [--mints 3000]
        [--handshakes 1000]

Measured, in this process and in one child per memory figure:

  mint          certificates minted per second on one core (the CPU time of
                this process), with one key for many (what the server does:
                a key per generation) and with a fresh P-256 key each (the
                alternative);
  memory        the resident memory a L{ServingCertificates} of C{--nodes}
                nodes adds (RSS before and after, in a fresh child process:
                the certificates and keys are OpenSSL's, which tracemalloc
                does not see; it is reported too, for the Python side), and
                what the certificates take with a key each (the
                alternative);
  hit           the per-connection CPU cost of the choice on a cache hit: the
                node looked up in a registry of C{--nodes} nodes (the
                server's L{RoutedNodes}), the cached certificate found and
                set on a new C{SSL.Connection}, against making the
                connection alone;
  handshake     whole TLS 1.3 handshakes in memory (client certificate
                required, as at the listener), the server's CPU per
                handshake: a static certificate, and a minted one chosen by
                SNI from C{--nodes} cached ones, one of each in turn.

Bounded: at most C{--mints} mints, C{--handshakes} handshakes, one child
at a time, no network at all.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from OpenSSL import SSL  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from twisted_tunnel.server import AgentRecord, AgentRegistry  # noqa: E402
from twisted_tunnel.server.routes import RoutedNodes  # noqa: E402
from twisted_tunnel.tls import makeCredentials  # noqa: E402
from twisted_tunnel.tls.certs import mintCA, mintClient, mintServer  # noqa: E402
from twisted_tunnel.tls.minting import (  # noqa: E402
    ServingAuthority,
    ServingCertificates,
    mintServingCertificate,
)
from twisted_tunnel.tls.serving import NodeServingOptions  # noqa: E402


def cpu() -> float:
    return time.process_time()


def nodeIP(index: int) -> str:
    return f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"


def authority() -> ServingAuthority:
    ca = mintCA("bench serving CA")
    return ServingAuthority(ca.certificate, ca.key)


def mintRate(count: int, shared: bool) -> float:
    """Mints per CPU second, each with its own key or one key for all."""
    ca = authority()
    now = time.time()
    key = ec.generate_private_key(ec.SECP256R1())
    started = cpu()
    for index in range(count):
        leaf = key if shared else ec.generate_private_key(ec.SECP256R1())
        mintServingCertificate(ca, f"node-{index}", (nodeIP(index),), leaf, now - 300, now + 14400)
    return count / (cpu() - started)


def rss() -> int:
    """This process's resident set, in bytes (from /proc: what it holds now, not its peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memoryChild(nodes: int, what: str) -> dict[str, float]:
    """In this (child) process: the RSS and traced bytes C{nodes} entries of C{what} add."""
    ca = authority()
    clock = Clock()
    clock.advance(time.time())
    certificates = ServingCertificates(ca, clock, rate=1e9, burst=1e9, maxEntries=nodes)
    records = [_Node(f"node-{i}", (nodeIP(i),)) for i in range(nodes)]
    kept: list[Any] = []
    if what == "keyPerNode":
        # the alternative: a certificate and a key of its own per node
        from OpenSSL.crypto import X509, PKey

        now = time.time()

        def make(n: _Node) -> Any:
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = mintServingCertificate(ca, n.node, n.ips, key, now - 300, now + 14400)
            return X509.from_cryptography(certificate), PKey.from_cryptography_key(key)
    else:

        def make(n: _Node) -> Any:
            return certificates.certificateFor(n)

    gc.collect()
    tracemalloc.start()
    before = rss()
    for record in records:
        kept.append(make(record))
    gc.collect()
    after = rss()
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(k is not None for k in kept)
    if what == "cache":
        assert len(certificates) == nodes
    return {"rss": after - before, "traced": traced}


class _Node:
    __slots__ = ("node", "ips")

    def __init__(self, node: str, ips: tuple[str, ...]) -> None:
        self.node = node
        self.ips = ips


def memory(nodes: int, what: str) -> dict[str, float]:
    """L{memoryChild} in a fresh child process (so nothing of ours is in its heap)."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, "--nodes", str(nodes)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def hitCost(nodes: int, rounds: int) -> tuple[float, float, float]:
    """
    Per-connection microseconds on a cache hit: the lookup and the choice
    (L{NodeServingOptions.certificateFor}, C{presentOn} a new connection),
    a new connection alone, and the lookup alone.
    """
    clock = Clock()
    clock.advance(time.time())
    registry = AgentRegistry()
    for index in range(nodes):
        registry.register(
            AgentRecord(f"node-{index}", (nodeIP(index),), object(), None, 0.0, "")  # type: ignore[arg-type]
        )
    routes = RoutedNodes(clock, registry)
    options = _options(clock, routes.lookup)
    addresses = [nodeIP(index) for index in range(nodes)]
    for address in addresses:  # fill the cache
        assert options.certificateFor(address) is not None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    count = min(rounds, nodes)

    started = cpu()
    for address in addresses[:count]:
        options.certificateFor(address)
    lookup = (cpu() - started) / count

    started = cpu()
    for _ in range(count):
        SSL.Connection(context, None)
    alone = (cpu() - started) / count

    started = cpu()
    for address in addresses[:count]:
        chosen = options.certificateFor(address)
        assert chosen is not None
        chosen.presentOn(SSL.Connection(context, None))
    both = (cpu() - started) / count
    return both * 1e6, alone * 1e6, lookup * 1e6


def _options(clock: Clock, nodes: Callable[[str], Any]) -> NodeServingOptions:
    clientCA = mintCA("bench client CA")
    server = mintServer(clientCA, ["localhost"])
    certificates = ServingCertificates(authority(), clock, rate=1e9, burst=1e9)
    credentials = makeCredentials([clientCA.certificate], server.certificate, server.key)
    options = NodeServingOptions(credentials, certificates, nodes, clock, fallback=False)
    options.clientCA = clientCA  # type: ignore[attr-defined]
    return options


def handshakes(nodes: int, count: int) -> tuple[float, float]:
    """Server CPU microseconds per in-memory TLS handshake: static, then minted (SNI, cached)."""
    from twisted_tunnel.tls import proxyServingOptions

    clock = Clock()
    clock.advance(time.time())
    known = {f"node-{i}": _Node(f"node-{i}", (nodeIP(i),)) for i in range(nodes)}
    options = _options(clock, known.get)
    clientCA = options.clientCA  # type: ignore[attr-defined]
    for name in known:
        options.certificateFor(name)
    server = mintServer(clientCA, ["localhost"])
    static = proxyServingOptions(
        makeCredentials([clientCA.certificate], server.certificate, server.key)
    ).getContext()
    client = mintClient(clientCA, "kube-apiserver")
    clientContext = SSL.Context(SSL.TLS_CLIENT_METHOD)
    clientContext.use_certificate(client.certificate)
    clientContext.use_privatekey(client.key)
    clientContext.set_verify(SSL.VERIFY_NONE)
    names = list(known)

    def once(index: int, makeServer: Callable[[], SSL.Connection]) -> float:
        """One handshake; the server side's CPU seconds."""
        c = SSL.Connection(clientContext, None)
        c.set_tlsext_host_name(names[index % len(names)].encode())
        c.set_connect_state()
        started = cpu()
        s = makeServer()
        s.set_accept_state()
        spent = cpu() - started
        clientDone = serverDone = False
        for _ in range(10):
            clientDone = _step(c) or clientDone
            _move(c, s)
            started = cpu()
            serverDone = _step(s) or serverDone
            _move(s, c)
            spent += cpu() - started
            if clientDone and serverDone:
                return spent
        raise RuntimeError("no handshake")

    # interleaved, so that the machine's other load weighs on both alike
    staticCost = mintedCost = 0.0
    for index in range(count):
        staticCost += once(index, lambda: SSL.Connection(static, None))
        mintedCost += once(index, lambda: options.serverConnectionForTLS(None))
    return staticCost / count * 1e6, mintedCost / count * 1e6


def _step(connection: SSL.Connection) -> bool:
    """One turn of the handshake: whether it is complete."""
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _move(source: SSL.Connection, destination: SSL.Connection) -> None:
    """What C{source} wrote, to C{destination}."""
    try:
        data = source.bio_read(1 << 20)
    except SSL.WantReadError:
        return
    destination.bio_write(data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--mints", type=int, default=3000)
    parser.add_argument("--handshakes", type=int, default=1000)
    parser.add_argument("--child", choices=("cache", "keyPerNode"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(memoryChild(args.nodes, args.child)))
        return 0
    load = os.getloadavg()[0]
    perKey = mintRate(args.mints, shared=False)
    shared = mintRate(args.mints, shared=True)
    cache = memory(args.nodes, "cache")
    alone = memory(args.nodes, "keyPerNode")
    hit, connection, lookup = hitCost(args.nodes, args.handshakes * 10)
    staticCost, mintedCost = handshakes(args.nodes, args.handshakes)
    n = args.nodes
    rows = [
        ("mint, one P-256 key per generation (the server)", f"{shared:,.0f} certificates/s"),
        ("mint, a fresh P-256 key each", f"{perKey:,.0f} certificates/s"),
        (
            f"cache of {n:,} nodes (the server): RSS added (of which Python objects)",
            f"{cache['rss'] / 2**20:.1f} MiB = {cache['rss'] / n / 1024:.2f} KiB/node "
            f"({cache['traced'] / 2**20:.1f} MiB)",
        ),
        (
            f"{n:,} certificates with a key each",
            f"{alone['rss'] / 2**20:.1f} MiB = {alone['rss'] / n / 1024:.2f} KiB/node",
        ),
        (
            f"cache hit: lookup among {n:,} routed nodes + set on a new connection",
            f"{hit:.1f} us (the new connection alone: {connection:.1f} us; "
            f"the lookup alone: {lookup:.1f} us)",
        ),
        ("TLS 1.3 handshake, server CPU, static certificate", f"{staticCost:.0f} us"),
        ("TLS 1.3 handshake, server CPU, minted (SNI, cached)", f"{mintedCost:.0f} us"),
    ]
    print(
        f"serving certificates, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}Z, "
        f"load {load:.2f} -> {os.getloadavg()[0]:.2f}, max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB\n"
    )
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
