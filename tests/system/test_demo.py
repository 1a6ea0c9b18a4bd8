"""
C{make demo} (C{python -m twisted_tunnel.cli.demo}) as a user runs it: three real
processes on loopback with throwaway certificates; it shows a request each
way through the tunnel and C{edge-tunnel status}, then runs until stopped.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import daemonEnvironment

#: How long the demo may take to come up (three processes, certificates).
STARTUP = 60.0


class DemoTests(SynchronousTestCase):
    def test_demo(self) -> None:
        demo = subprocess.Popen(
            [sys.executable, "-m", "twisted_tunnel.cli.demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(daemonEnvironment(), PYTHONUNBUFFERED="1"),
            # unbuffered, so that select() sees every line not yet read: a
            # buffered reader would take several lines in one read and leave
            # select() waiting for more
            bufsize=0,
        )
        self.addCleanup(self.stop, demo)
        assert demo.stdout is not None
        lines: list[str] = []
        selector = selectors.DefaultSelector()
        selector.register(demo.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + STARTUP
        while not any("Running until interrupted" in line for line in lines):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                self.fail("the demo did not come up:\n" + "".join(lines))
            line = demo.stdout.readline().decode("utf-8", "replace")
            if not line:
                self.fail("the demo exited:\n" + "".join(lines))
            lines.append(line)
        output = "".join(lines)
        self.assertEqual(output.count("HTTP 200: hello from the kubelet stand-in on edge-1"), 2)
        self.assertIn("HTTP/1.1 200", output)
        self.assertRegex(output, r"one of 1 replica\(s\): ready: ok: 1 agent\(s\) connected")
        self.assertRegex(output, r"\nedge-1 +127\.0\.0\.1 ")
        (work,) = re.findall(r"certificates and logs in (\S+)", output)
        # the CA's key is never written: a folder left behind could sign for any node
        self.assertTrue(os.path.exists(os.path.join(work, "ca.pem")))
        self.assertFalse(os.path.exists(os.path.join(work, "ca-key.pem")))
        demo.send_signal(signal.SIGTERM)
        self.assertEqual(demo.wait(30), 0)
        # stopped as a user stops it, it leaves nothing behind
        self.assertFalse(os.path.exists(work), os.listdir(work) if os.path.exists(work) else "")

    def stop(self, demo: subprocess.Popen[bytes]) -> None:
        if demo.poll() is None:
            demo.send_signal(signal.SIGTERM)
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(demo.pid, signal.SIGKILL)
                demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()
