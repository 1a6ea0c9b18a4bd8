"""
A smoke test of C{bench/dnat.py}, the benchmark of the path kube-apiserver
takes (connections DNATed to the HTTP proxy listener, in network
namespaces): it runs its C{check} workload, which needs only curl, through
the direct path and through twisted-tunnel, so that the tool keeps working
as the library changes.  It asserts that the bytes came back right, never
how fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import requireNetns
from tests.realnet import REPO_ROOT

DNAT = Path(REPO_ROOT) / "bench" / "dnat.py"


class DNATBenchSmokeTests(SynchronousTestCase):
    def setUp(self) -> None:
        requireNetns(self, "iptables", "iptables-save", "nginx", "curl")

    def test_check(self) -> None:
        """Direct and through the tunnel, C{/} and the 10 MiB C{/big} arrive intact."""
        done = subprocess.run(
            [sys.executable, str(DNAT), "--rounds", "1", "--workload", "check", "--no-ssh"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.assertEqual(done.returncode, 0, f"{done.stdout}\n{done.stderr}")
        rows = {
            line.split("|")[1].strip(): line.split("|")[2].strip()
            # the results table: the first one printed (the CPU table follows)
            for line in done.stdout.split("Every value", 1)[0].splitlines()
            if line.startswith("| ") and not line.startswith("| row")
        }
        self.assertEqual(rows, {"direct": "1.0", "ours": "1.0"}, done.stdout)
