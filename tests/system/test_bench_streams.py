"""
A smoke test of C{bench/streams.py}, the many-streams benchmark: its pieces,
small, against real processes (a server, two agents, the edge service), so
that the tool keeps working as the library changes.  It asserts that every
byte arrived and nothing failed, never how fast: timings belong to the
benchmark's report, not to a test on a shared machine.

Also, without processes: the check of each stream does catch wrong bytes,
extra bytes and an early end, so that a clean report means something.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import REPO_ROOT


def _loadStreams() -> Any:
    """bench/ is not a package: load bench/streams.py by its path."""
    path = Path(REPO_ROOT) / "bench" / "streams.py"
    spec = importlib.util.spec_from_file_location("bench_streams", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


streams = _loadStreams()


class LeanDriverTests(SynchronousTestCase):
    """
    The driver times every stream, so it carries nothing it does not use:
    minting the PKI (C{twisted_tunnel.tls.certs}, which imports Twisted and
    pyOpenSSL) happens in a child process.  With those imported, a full
    garbage collection of the driver's doubled heap fell in every burst,
    and the open p50 of 500 streams was ~25 ms slower (see mintPKI).
    """

    def test_mintPKIImportsNothingHere(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        code = (
            "import importlib.util, sys\n"
            "from pathlib import Path\n"
            "spec = importlib.util.spec_from_file_location('bench_streams', sys.argv[1])\n"
            "streams = importlib.util.module_from_spec(spec)\n"
            "sys.modules[spec.name] = streams\n"
            "spec.loader.exec_module(streams)\n"
            "streams.mintPKI(Path(sys.argv[2]) / 'pki', [streams.Node('edge-01', '127.0.0.11')])\n"
            "heavy = ('twisted', 'twisted_tunnel', 'OpenSSL', 'service_identity')\n"
            "print(sorted(name for name in sys.modules if name.split('.')[0] in heavy))\n"
        )
        path = Path(REPO_ROOT) / "bench" / "streams.py"
        done = subprocess.run(
            [sys.executable, "-c", code, str(path), directory.name],
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(done.stdout.strip(), "[]")
        pki = Path(directory.name) / "pki"
        for name in ("ca.pem", "server.pem", "server-key.pem", "edge-01.pem", "edge-01-key.pem"):
            self.assertTrue((pki / name).exists(), name)


class SmallRunTests(SynchronousTestCase):
    """Both phases, small, through real twistd processes."""

    def test_smallRun(self) -> None:
        """
        40 streams of 256 KiB over 2 agents all arrive byte-exact, and the
        stalled-reader phase runs with its flood held (it stalls) and no
        echo stream failing.
        """
        size = 256 * 1024
        config = streams.Config(
            streams=40,
            agents=2,
            bytes=size,
            pingers=10,
            stallSeconds=2.0,
            stallRounds=1,
            deadline=60.0,
        )
        results, world = streams.run(config)
        report = streams.report(results, world, [])
        self.assertEqual(results.errors, 0, report)  # the report says which, and where

        many = results.streams
        self.assertEqual(many.errors.counts, {})
        self.assertEqual((many.ok, many.verifiedBytes), (40, 40 * size))
        self.assertEqual(len(many.completion), 40)
        # (not how many were open at once: a quick stream may end before the last one opens)

        stall = results.stall
        self.assertEqual(stall.errors.counts, {})
        (round,) = stall.rounds
        self.assertTrue(round.baseline and round.stalled)
        self.assertGreater(round.held.sent, 0)
        self.assertEqual(results.edgeErrors, {})
        self.assertIn("Errors in total: 0", report)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True


class CheckTests(SynchronousTestCase):
    """L{Fetch} compares every chunk with the pool and names what went wrong."""

    def deliver(self, *chunks: bytes, eof: bool = True, count: int = 1000) -> Any:
        async def go() -> Any:
            pool = streams.poolBytes(count + 100)
            world = streams.World(None, [], connectPort=0, tunnelPort=0, pool=pool, window=1 << 20)
            node = streams.Node("edge-01", "127.0.0.11", 1234)
            fetch = streams.Fetch(world, node, 10, count, 1e12, 0.0)
            transport = FakeTransport()
            fetch.connection_made(transport)
            fetch.data_received(b"HTTP/1.1 200 Connection established\r\n\r\n")
            for chunk in chunks:
                fetch.data_received(chunk(pool) if callable(chunk) else chunk)
            if eof:
                fetch.eof_received()
            else:
                fetch.connection_lost(None)
            self.assertEqual(transport.written[-1], streams.REQUEST.pack(b"S", 10, count))
            return fetch.outcome

        return asyncio.run(go())

    def test_exact(self) -> None:
        outcome = self.deliver(lambda pool: pool[10:500], lambda pool: pool[500:1010])
        self.assertEqual((outcome.kind, outcome.received), ("", 1000))

    def test_wrongByte(self) -> None:
        def corrupt(pool: bytes) -> bytes:
            chunk = bytearray(pool[500:1010])
            chunk[123] ^= 1
            return bytes(chunk)

        outcome = self.deliver(lambda pool: pool[10:500], corrupt)
        self.assertEqual(outcome.kind, "wrong bytes")
        self.assertIn("first wrong byte at 613 of 1000", outcome.detail)

    def test_wrongStream(self) -> None:
        """Another stream's bytes (another offset into the pool) do not pass."""
        outcome = self.deliver(lambda pool: pool[11:1011])
        self.assertEqual(outcome.kind, "wrong bytes")

    def test_tooMany(self) -> None:
        outcome = self.deliver(lambda pool: pool[10:1010] + b"x")
        self.assertEqual(outcome.kind, "more bytes than asked for")

    def test_early(self) -> None:
        self.assertEqual(self.deliver(lambda pool: pool[10:900]).kind, "EOF early")
        outcome = self.deliver(lambda pool: pool[10:900], eof=False)
        self.assertEqual(outcome.kind, "closed early")

    def test_refused(self) -> None:
        async def go() -> Any:
            world = streams.World(None, [], connectPort=0, tunnelPort=0, pool=b"", window=1 << 20)
            fetch = streams.Fetch(world, streams.Node("edge-01", "127.0.0.11", 1), 0, 1, 1e12, 0)
            fetch.connection_made(FakeTransport())
            fetch.data_received(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno agent")
            return fetch.outcome

        self.assertEqual(asyncio.run(go()).kind, "CONNECT 503")


class ComplaintsTests(SynchronousTestCase):
    """The daemons' warnings and failed streams count as errors; start-up does not."""

    def test_complaints(self) -> None:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        work = Path(directory.name)
        log = work / "edge-tunnel-server.log"
        log.write_text(
            "[twisted_tunnel.doors.connect#info] CONNECT edge-01:1 refused: 503 (start-up)\n"
        )
        procs = streams.Daemons(work)
        # Started comes from bench/_procs.py, which loading streams.py imported
        procs.started.append(sys.modules["_procs"].Started("edge-tunnel-server", None, log))
        since = procs.logSizes()
        with open(log, "a") as f:
            f.write("[twisted_tunnel.server._ServerSide#info] agent edge-01 connected\n")
            f.write("[twisted_tunnel.mux.tunnel.Tunnel#warn] closing tunnel: protocol error\n")
            f.write("[twisted_tunnel.doors.connect#info] CONNECT edge-01:1 refused: 504 late\n")
        found = procs.complaints(since)
        self.assertEqual(found.counts, {"edge-tunnel-server logged": 2})
        self.assertIn("protocol error", found.examples["edge-tunnel-server logged"][0])
