"""
The benchmark's CONNECT load generator, C{bench/loadgen}, against the real
CONNECT door: a real C{edge-tunnel-server} and C{edge-tunnel-agent} (twistd
processes), an HTTP origin on the node's address 127.0.0.2, and the
loadgen binary built from C{bench/loadgen} by C{bench/peers/build.py} (a
build of the standard library only: seconds when Go's cache is warm).

What must hold is that its counts are right: so many requests, all 200, so
many bytes, one tunnel per worker with keep-alive and one per request
without; and that it counts failures as failures (a refused CONNECT, a body
of the wrong length, a TLS door without a client certificate).  Never how
fast.  Two servers: one with the door on 127.0.0.1, where it is plain, and
one on C{::ffff:127.0.0.1} (the same loopback address as IPv4-mapped IPv6),
where the server serves it over mutual TLS, as beyond loopback.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from _procs import Processes, daemonEnv, freePort, twistd  # noqa: E402  (bench/_procs.py)

NODE = "edge-1"
NODE_IP = "127.0.0.2"
SMALL = b"hello from the node\n"
BIG = bytes(range(256)) * 4096  # 1 MiB


def _loadBuild() -> Any:
    """bench/peers/ is not a package: load its build.py by its path."""
    spec = importlib.util.spec_from_file_location(
        "bench_peers_build_loadgen", REPO / "bench" / "peers" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Origin(BaseHTTPRequestHandler):
    """The node's HTTP service: C{/} a short body, C{/big} 1 MiB, keep-alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        body = BIG if self.path == "/big" else SMALL
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class LoadgenAgainstConnectDoorTests(SynchronousTestCase):
    work: ClassVar[Path]
    procs: ClassVar[Processes]
    origin: ClassVar[ThreadingHTTPServer]
    loadgen: ClassVar[str]
    plainDoor: ClassVar[int]
    tlsDoor: ClassVar[int]
    target: ClassVar[str]

    @classmethod
    def setUpClass(cls) -> None:
        if shutil.which("go") is None:
            raise SkipTest("no Go toolchain to build bench/loadgen")
        bins, _ = _loadBuild().build("loadgen")
        cls.loadgen = str(bins / "loadgen")
        cls.work = Path(tempfile.mkdtemp(prefix="test-bench-loadgen-"))
        cls.procs = Processes(cls.work, say=lambda message: None)
        cls.origin = ThreadingHTTPServer((NODE_IP, 0), Origin)
        cls.origin.daemon_threads = True
        threading.Thread(target=cls.origin.serve_forever, daemon=True).start()
        cls.target = f"{NODE_IP}:{cls.origin.server_address[1]}"
        try:
            pki = cls.mintPKI()
            cls.plainDoor = cls.startPair("plain", pki, "tcp:{port}:interface=127.0.0.1")
            cls.tlsDoor = cls.startPair("tls", pki, "tcp6:{port}:interface=\\:\\:ffff\\:127.0.0.1")
            cls.waitReady()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.procs.stopAll()
        cls.origin.shutdown()
        cls.origin.server_close()
        shutil.rmtree(cls.work, ignore_errors=True)

    @classmethod
    def mintPKI(cls) -> Path:
        from twisted_tunnel.tls.certs import mintAgent, mintCA, mintClient, mintServer, writePair

        pki = cls.work / "pki"
        pki.mkdir()
        ca = mintCA()
        writePair(ca, pki / "ca.pem", pki / "ca-key.pem")
        writePair(mintServer(ca, ["127.0.0.1"]), pki / "server.pem", pki / "server-key.pem")
        writePair(mintAgent(ca, NODE, [NODE_IP]), pki / "agent.pem", pki / "agent-key.pem")
        writePair(mintClient(ca, "bench-client"), pki / "client.pem", pki / "client-key.pem")
        return pki

    @classmethod
    def startPair(cls, name: str, pki: Path, door: str) -> int:
        """A server with its CONNECT door at C{door} and an agent for the node; the door port."""
        tunnel, port = freePort(), freePort()
        credentials = [f"--ca={pki}/ca.pem"]
        env = daemonEnv()
        cls.procs.start(
            f"server-{name}",
            twistd(
                "edge-tunnel-server",
                f"--tunnel-endpoint=tcp:{tunnel}:interface=127.0.0.1",
                f"--connect-endpoint={door.format(port=port)}",
                *credentials,
                f"--cert={pki}/server.pem",
                f"--key={pki}/server-key.pem",
                "--http-proxy-endpoint=none",
                "--https-proxy-endpoint=none",
                "--tcp-proxy-endpoint=none",
                "--no-iptables",
            ),
            env=env,
        )
        cls.procs.start(
            f"agent-{name}",
            twistd(
                "edge-tunnel-agent",
                f"--server=127.0.0.1:{tunnel}",
                *credentials,
                f"--cert={pki}/agent.pem",
                f"--key={pki}/agent-key.pem",
                f"--node-ip={NODE_IP}",
            ),
            env=env,
        )
        return port

    @classmethod
    def waitReady(cls) -> None:
        """Until one request goes through each door (the agents have connected): 60 s at most."""
        deadline = time.monotonic() + 60
        for door in (cls.plainDoor, cls.tlsDoor):
            while True:
                cls.procs.checkAlive()
                report = run(cls, door, "-n", "1", "-d", "2s", tls=door == cls.tlsDoor)
                if report["ok"] == 1:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"door {door} not ready: {report}")
                time.sleep(0.3)

    def through(self, *args: str, door: int | None = None, tls: bool = False) -> dict[str, Any]:
        return run(self, self.plainDoor if door is None else door, *args, tls=tls)

    def test_keepAlive(self) -> None:
        """200 requests on 4 tunnels: 200 answers, all 200, every byte, 4 CONNECTs."""
        report = self.through(
            "-c", "4", "-n", "200", "-d", "60s", "-expect-bytes", str(len(SMALL))
        )
        self.assertEqual(
            (report["ok"], report["responses"], report["errors"], report["statuses"]),
            (200, 200, 0, {"200": 200}),
        )
        self.assertEqual(report["bytes"], 200 * len(SMALL))
        self.assertEqual(report["connects"], 4)
        self.assertGreater(report["requestsPerSecond"], 0)
        self.assertGreater(report["latencyP99Ms"], 0)
        self.assertGreaterEqual(report["latencyP99Ms"], report["latencyP50Ms"])

    def test_newConnectEach(self) -> None:
        """A new connection and CONNECT per request: as many tunnels as requests."""
        report = self.through("-mode", "new", "-c", "5", "-n", "50", "-d", "60s")
        self.assertEqual((report["ok"], report["errors"], report["connects"]), (50, 0, 50))
        self.assertEqual(report["bytes"], 50 * len(SMALL))

    def test_bigBodies(self) -> None:
        """Six 1 MiB bodies on two tunnels: 6 MiB counted, nothing lost."""
        report = self.through("-c", "2", "-n", "6", "-d", "60s", "-path", "/big")
        self.assertEqual((report["ok"], report["errors"]), (6, 0))
        self.assertEqual(report["bytes"], 6 * len(BIG))
        self.assertAlmostEqual(
            report["bytesPerSecond"], report["bytes"] / report["seconds"], delta=1.0
        )

    def test_wrongLength(self) -> None:
        """A body of another length than -expect-bytes is an error, not a success."""
        report = self.through("-n", "5", "-d", "60s", "-expect-bytes", str(len(SMALL) + 1))
        self.assertEqual((report["ok"], report["responses"], report["errors"]), (0, 5, 5))
        self.assertIn("not", report["errorSamples"][0])

    def test_refusedConnect(self) -> None:
        """A CONNECT to a port where the node has nothing is counted as failed, every time."""
        report = run(self, self.plainDoor, "-n", "5", "-d", "60s", connect=f"{NODE_IP}:1")
        self.assertEqual((report["ok"], report["responses"], report["errors"]), (0, 0, 5))
        self.assertIn("CONNECT", report["errorSamples"][0])

    def test_mutualTLS(self) -> None:
        """Through the door served over mutual TLS, with the client certificate: all 200."""
        report = self.through("-c", "2", "-n", "40", "-d", "60s", door=self.tlsDoor, tls=True)
        self.assertEqual((report["ok"], report["errors"], report["connects"]), (40, 0, 2))
        self.assertEqual(report["bytes"], 40 * len(SMALL))

    def test_mutualTLSWithoutCertificate(self) -> None:
        """The TLS door refuses a client without a certificate: no request succeeds."""
        pki = self.work / "pki"
        argv = [self.loadgen, "-addr", f"127.0.0.1:{self.tlsDoor}", "-connect", self.target]
        argv += ["-tls", "-ca", f"{pki}/ca.pem", "-n", "3", "-d", "30s"]
        report = json.loads(subprocess.run(argv, capture_output=True, timeout=60).stdout)
        self.assertEqual((report["ok"], report["errors"]), (0, 3))


def run(
    case: Any, door: int, *args: str, tls: bool = False, connect: str | None = None
) -> dict[str, Any]:
    """Run loadgen through C{door} to the origin and return its JSON report."""
    argv = [case.loadgen, "-addr", f"127.0.0.1:{door}", "-connect", connect or case.target]
    if tls:
        pki = case.work / "pki"
        argv += ["-tls", "-ca", f"{pki}/ca.pem", "-cert", f"{pki}/client.pem"]
        argv += ["-key", f"{pki}/client-key.pem", "-server-name", "127.0.0.1"]
    done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=90, check=False)
    if done.returncode:
        raise AssertionError(f"loadgen exited {done.returncode}: {done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report
