"""
bench/bench.py's choice of what each row measures: `make bench` must run
with the HTTPS proxy listener requiring client certificates (issue 12).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import REPO_ROOT


def _loadBench() -> Any:
    """bench/ is not a package: load bench/bench.py by its path (with bench/ importable)."""
    directory = str(Path(REPO_ROOT) / "bench")
    if directory not in sys.path:
        sys.path.insert(0, directory)
    path = Path(directory) / "bench.py"
    spec = importlib.util.spec_from_file_location("bench_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _loadBench()


class MeasuresTests(SynchronousTestCase):
    def row(self, certificate: tuple[str, str] | None, iperf: int | None = 5201) -> Any:
        return bench.Row(
            http=bench.Target("http", 1),
            https=bench.Target("https", 2, None, certificate),
            iperfPort=iperf,
            watch=[],
            cpuRoots=[],
        )

    def test_clientCertificateNeedsLoadgen(self) -> None:
        """
        A row whose HTTPS target needs a client certificate runs the TLS
        workloads with bench/loadgen (which presents one), and sits them
        out, only them, when loadgen is not built.
        """
        withCert = self.row(("c.pem", "k.pem"))
        plain = self.row(None)

        def notBuilt() -> str:
            raise bench.NotRun("bench/loadgen not built: test")

        for built in (True, False):
            self.patch(bench, "loadgenBinary", (lambda: "/loadgen") if built else notBuilt)
            for workload in bench.WORKLOADS:
                self.assertTrue(bench.measures(plain, workload), workload)
                expected = built or workload not in bench.TLS_WORKLOADS
                self.assertEqual(bench.measures(withCert, workload), expected, (built, workload))
        self.assertFalse(bench.measures(self.row(None, iperf=None), "bulk"))


class CPUPerRequestTests(SynchronousTestCase):
    def test_sharesOverRates(self) -> None:
        """
        CPU per request is the median CPU share over the median rate: 50% of a
        core at 10,000 req/s is 50 µs a request; workloads with no CPU
        measured, or no rate, show "-".
        """
        results = bench.Results()
        for share, rate in ((40.0, 9_000.0), (50.0, 10_000.0), (60.0, 11_000.0)):
            results.add("ours", "ka64", rate)
            results.cpu.setdefault("ours", {}).setdefault("ka64", []).append(share)
        results.add("ours", "ka1", 2_000.0)  # no CPU measured for it
        self.assertAlmostEqual(bench.cpuPerRequest(results, "ours", "ka64"), 50.0)
        self.assertIsNone(bench.cpuPerRequest(results, "ours", "ka1"))
        self.assertIsNone(bench.cpuPerRequest(results, "ours", "newc"))
        table = bench.cpuPerRequestTable(results, ["ours"])
        self.assertIn("| keep-alive c=1 | keep-alive c=64 |", table)
        self.assertIn(f"| {bench.LABELS['ours']} | - | 50 | - |", table)
        self.assertEqual(bench.cpuPerRequestTable(bench.Results(), ["ours"]), "")


class LoadgenRowTests(SynchronousTestCase):
    def test_doorRowsTakeTheLoadgenWorkloads(self) -> None:
        """A row measured with bench/loadgen runs its workloads only: no bulk, no HTTPS."""
        door = bench.Row(None, None, None, [], [], door=bench.Door("loadgen", "127.0.0.1:1"))
        measured = {w for w in bench.WORKLOADS if bench.measures(door, w)}
        self.assertEqual(measured, {"ka1", "ka64", "newc", "big", "open"})


class MissingRowTests(SynchronousTestCase):
    def test_notRunRowsSayWhy(self) -> None:
        """
        A tunnel that was not run keeps its row, with the reason; ratio rows
        that need it are empty and say which side was not run; the others
        are computed.
        """
        results = bench.Results()
        for path, rate in (("ssh", 4_000.0), ("frp", 3_000.0), ("door", 2_000.0)):
            results.add(path, "ka1", rate)
        missing = {"konn": "not built: refused by the module proxy"}
        table = bench.table(results, ["ssh", "frp", "door", "konn"], missing)
        self.assertIn(f"| {bench.LABELS['konn']}: not built: refused by the module proxy |", table)
        self.assertIn(f"| {bench.LABELS['frp']} / {bench.LABELS['ssh']} | - | 0.75x |", table)
        self.assertIn("(Konnectivity not run) | - | - |", table)
