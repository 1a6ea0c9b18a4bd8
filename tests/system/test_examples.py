# -*- test-case-name: tests.system.test_examples -*-
"""
The programs in C{examples/} run, as a reader would run them, and do what
they say.

Each runs as a real subprocess (C{python examples/<name>.py}) with a
deadline; everything it starts is on loopback and stops with it.  A
failure shows the program's whole output and its log (stderr).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "examples")

#: Each example takes about a second; this is for a loaded machine.
DEADLINE = 60.0


class ExampleTests(SynchronousTestCase):
    def runExample(self, name: str) -> str:
        """Run C{examples/<name>}, require exit status 0; return its stdout."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            done = subprocess.run(
                [sys.executable, os.path.join(EXAMPLES, name)],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=DEADLINE,
                check=False,
            )
        except subprocess.TimeoutExpired as e:  # subprocess.run killed it
            self.fail(f"{name} still running after {DEADLINE:g}s:\n{e.stdout}\n{e.stderr}")
        self.assertEqual(
            done.returncode, 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def assertPrinted(self, pattern: str, output: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        self.assertIsNotNone(match, f"no line matching {pattern!r} in:\n{output}")
        assert match is not None
        return match

    def test_treqGet(self) -> None:
        """
        treq GETs the kubelet's C{/healthz} over HTTPS through the tunnel, and
        a node without an agent fails with L{NodeNotConnected}.
        """
        output = self.runExample("treq_get.py")
        self.assertPrinted(r"^GET https://edge-1:\d+/healthz -> 200 ok$", output)
        self.assertPrinted(r"^GET https://edge-9:10250/healthz -> NodeNotConnected: ", output)

    def test_customPolicy(self) -> None:
        """
        The C{metrics-only} policy is found by import path, decides, and an
        HTTP proxy listener applies it: C{GET /metrics} reaches the node,
        C{GET /} and C{POST /metrics} are refused with C{403}.
        """
        output = self.runExample("custom_policy.py")
        self.assertPrinted(r"^metrics_only:policy is policy 'metrics-only'$", output)
        self.assertPrinted(
            r"^decide GET /metrics\?x=1: ForwardingDecision\(host='127.0.0.1'", output
        )
        self.assertPrinted(r"^decide POST /metrics: refused 403$", output)
        self.assertPrinted(r"^GET /metrics at edge-1:\d+ -> 200 node_load1 0.42$", output)
        self.assertPrinted(r"^GET / at edge-1:\d+ -> 403 only GET /metrics may reach", output)
        self.assertPrinted(r"^POST /metrics at edge-1:\d+ -> 403 only GET /metrics", output)

    def test_asyncioAgent(self) -> None:
        """
        Under the asyncio reactor, the agent connects, a stream reaches the
        asyncio service through the tunnel, and asyncio work ran alongside.
        """
        output = self.runExample("asyncio_agent.py")
        self.assertPrinted(r"^one loop: AsyncioSelectorReactor on \w+EventLoop$", output)
        self.assertPrinted(r"^agent for edge-1 connected to server \w+$", output)
        self.assertPrinted(
            r"^stream to edge-1:\d+ answered: asyncio on edge-1 got: hello through the tunnel$",
            output,
        )
        ticks = self.assertPrinted(r"^the asyncio ticker ran alongside: (\d+) ticks$", output)
        self.assertGreater(int(ticks.group(1)), 0)
