"""
A smoke test of C{bench/peers/smoke.py}: each benchmark peer that is built
(C{make peers}, cached outside the checkout) is started on loopback, its
server and its client, and 1 MiB echoes through it byte-exact.  It asserts
that the bytes came back, never how fast.

A peer that is not built is skipped, not built here: a cold build takes
from half a minute (chisel) to two (rathole), longer than a test may run,
and the benchmark's peers are not part of C{make test}.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE = REPO_ROOT / "bench" / "peers" / "smoke.py"
#: A run starts two processes and waits at most 30 s for them, 60 s for the transfer.
TIMEOUT = 120.0


def _loadBuild() -> Any:
    """bench/peers/ is not a package: load its build.py by its path."""
    path = SMOKE.parent / "build.py"
    spec = importlib.util.spec_from_file_location("bench_peers_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PeerSmokeTests(SynchronousTestCase):
    def _smoke(self, variant: str, peer: str) -> None:
        try:
            bins = _loadBuild().cached(peer)
        except FileNotFoundError as e:  # no go, rustc or cargo on this machine
            self.skipTest(f"{peer}: {e}")
        if bins is None:
            self.skipTest(f"{peer} is not built (make peers PEERS={peer})")
        done = subprocess.run(
            [sys.executable, str(SMOKE), variant],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        self.assertEqual(done.returncode, 0, f"{done.stdout}\n{done.stderr}")
        self.assertIn(f"| {variant} | ok |", done.stdout)

    def test_frp(self) -> None:
        self._smoke("frp", "frp")

    def test_chisel(self) -> None:
        self._smoke("chisel", "chisel")

    def test_rathole(self) -> None:
        self._smoke("rathole", "rathole")

    def test_konnectivity(self) -> None:
        self._smoke("konnectivity", "konnectivity")

    def test_konnectivityMTLS(self) -> None:
        self._smoke("konnectivity-mtls", "konnectivity")


class BuildListTests(SynchronousTestCase):
    def test_pinsAndRefusals(self) -> None:
        """
        What the benchmark's report says of the peers: each pin as its
        go.mod or cargo.txt gives it, and for a refused peer the refusal
        (without asking the registry), so that it is never tried again.
        """
        build = _loadBuild()
        self.assertEqual(
            {name: build.version(name) for name in ("frp", "chisel", "rathole")},
            {"frp": "v0.68.1", "chisel": "v1.12.1", "rathole": "0.5.0"},
        )
        why = build.refused("konnectivity")
        self.assertIn("403", why)
        self.assertEqual(build.failure("konnectivity"), why)
        self.assertIsNone(build.cached("konnectivity"))
        self.assertIsNone(build.refused("frp"))
        self.assertIn("loadgen", build.buildable())
        with self.assertRaises(build.Refused):
            build.build("openyurt")
