"""
A smoke test of C{bench/tls_handshakes.py}, the TLS handshake benchmark of
the HTTPS path: one short round of each leg against nginx as the kubelet,
so that the tool keeps working as the library changes.  It asserts that
every leg measured something and that the resuming client did resume,
never how fast.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import REPO_ROOT

BENCH = Path(REPO_ROOT) / "bench" / "tls_handshakes.py"


class TLSHandshakeBenchSmokeTests(SynchronousTestCase):
    def test_oneRound(self) -> None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            self.skipTest("nginx is not installed")
        done = subprocess.run(
            [sys.executable, str(BENCH), "--rounds", "1", "--seconds", "1", "--count", "50",
             "--nginx"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )  # fmt: skip
        self.assertEqual(done.returncode, 0, f"{done.stdout}\n{done.stderr}")
        resumed = {
            cells[1]: cells[4]
            for line in done.stdout.splitlines()
            if line.startswith("| ") and len(cells := [c.strip() for c in line.split("|")]) > 5
        }
        routed = resumed["upstream this as routed c=1"]
        self.assertGreater(int(routed.split("/")[0]), 0, done.stdout)
        # the listener resumes nothing by default (docs/security.md), and does
        # with --proxy-serving-session-lifetime, alone and on the whole path
        shipped = resumed["listener this by default, client offers its session c=1"]
        self.assertTrue(shipped.startswith("0/"), done.stdout)
        for row in (
            "listener this sessions on, client offers its session c=1",
            "path this: new connection per request c=1, --proxy-serving-session-lifetime=300, "
            "the client resuming",
        ):
            self.assertGreater(int(resumed[row].split("/")[0]), 0, done.stdout)
