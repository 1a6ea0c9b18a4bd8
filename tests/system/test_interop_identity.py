# -*- test-case-name: tests.system.test_interop_identity -*-
"""
Issue 16, item 1, in the real Kubernetes world: agents that prove their
node with the kubelet's own client certificate, a server that trusts the
cluster CA for agents, the kubelet's rotation followed, and the refusals
(C{tests/interop/identity.py}, run as a child process for the same reasons
as C{tests/system/test_interop.py}).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.build import cached
from tests.interop.identity import CHECKS, NEEDED
from tests.netns import requireNetns

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "interop" / "identity.py"
REPO_ROOT = HERE.parents[1]
#: Bring-up some 10 s, each rotation up to the agents' 10 s reload interval.
TIMEOUT = 240.0


class KubeletCertificateTests(SynchronousTestCase):
    def test_kubeletCertificate(self) -> None:
        """
        Agents connect with the kubelets' certificates from processes with
        no capability, and kube-apiserver reaches the nodes through them;
        a rotation is taken while the tunnel up is kept; cut, the agent
        comes back with the rotated certificate; a rotation to another
        node's is refused; the daemon refuses at start-up another node's
        certificate, the admin's, an expired one, and a key it cannot read;
        and the server, through the load balancer, refuses a hostile agent
        with the admin's certificate or another node's (at HELLO) and an
        expired node certificate (in the handshake).
        """
        requireNetns(self, "iptables", "haproxy", "setpriv", "curl")
        missing = [name for name in NEEDED if cached(name) is None]
        if missing:
            reason = f"not built: {', '.join(missing)} (run make interop-build)"
            if os.environ.get("CI") == "true":
                self.fail(f"CI=true, so this test must run, but {reason}")
            self.skipTest(reason)
        try:
            done = subprocess.run(
                [sys.executable, str(SCRIPT), "--keep-going"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode()
            self.fail(f"the interop world did not finish in {TIMEOUT:g} s:\n{output[-6000:]}")
        report = done.stdout + done.stderr
        for item, name in CHECKS.items():
            verdict = f"check {item} ({name}): "
            lines = [line for line in report.splitlines() if line.startswith(verdict)]
            self.assertEqual(len(lines), 1, f"check {item} did not run:\n{report[-6000:]}")
            self.assertIn("): PASS in ", lines[0], f"\n{report[-8000:]}")
        self.assertEqual(done.returncode, 0, report[-8000:])
