"""
The meta listener's C{/metrics}: rendered in the reactor's thread, in the
format asked for, and importing the module installs no reactor.
"""

from __future__ import annotations

import subprocess
import sys

from prometheus_client import CollectorRegistry, Counter
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tests.realnet import REPO_ROOT
from twisted_tunnel.meta import Metrics


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.registry = CollectorRegistry()
        Counter("edge_tunnel_test", "A test counter.", registry=self.registry).inc(3)

    def get(self, accept: str | None) -> DummyRequest:
        request = DummyRequest([b""])
        if accept is not None:
            request.requestHeaders.setRawHeaders(b"accept", [accept.encode()])
        body = Metrics(self.registry).render_GET(request)
        self.assertIsInstance(body, bytes)  # at once, in this thread: no thread pool
        request.write(body)
        return request

    def test_prometheusText(self) -> None:
        request = self.get(None)
        self.assertIn(b"edge_tunnel_test_total 3.0\n", b"".join(request.written))
        (contentType,) = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(contentType.startswith(b"text/plain; version=0.0.4"), contentType)

    def test_openMetrics(self) -> None:
        request = self.get("application/openmetrics-text; version=1.0.0")
        body = b"".join(request.written)
        self.assertTrue(body.endswith(b"# EOF\n"), body)
        (contentType,) = request.responseHeaders.getRawHeaders(b"content-type")
        self.assertTrue(contentType.startswith(b"application/openmetrics-text"), contentType)

    def test_noGlobalReactor(self) -> None:
        """Importing the meta listener (and the daemons' wiring) installs no reactor."""
        probe = (
            "import sys\n"
            "import twisted_tunnel.meta, twisted_tunnel.tap.server, twisted_tunnel.tap.agent\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        self.assertEqual(done.stdout.strip(), "False", done.stderr)
