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

    def test_tlsNeedsNoClientCertificate(self) -> None:
        """A row whose HTTPS target needs a client certificate sits out the TLS workloads only."""
        withCert = self.row(("c.pem", "k.pem"))
        plain = self.row(None)
        for workload in bench.WORKLOADS:
            self.assertTrue(bench.measures(plain, workload), workload)
            expected = workload not in bench.TLS_WORKLOADS
            self.assertEqual(bench.measures(withCert, workload), expected, workload)
        self.assertFalse(bench.measures(self.row(None, iperf=None), "bulk"))
