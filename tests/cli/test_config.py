"""
Tests for L{twisted_tunnel.cli.config}: C{edge-tunnel config check} says what
the server would forward, or refuses a ConfigMap as the server would, for
the ConfigMaps yurt-tunnel and ACK Edge's tunnel take.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.forwarding.test_config import SEED_1_20
from twisted_tunnel.cli import main
from twisted_tunnel.cli.config import checkConfig
from twisted_tunnel.forwarding.config import MAX_CONFIG_BYTES, ConfigError

#: The product page's 1.20 example, as `kubectl get -o yaml` would print it.
ACK_120 = SEED_1_20.encode("utf-8")

#: OpenYurt's own manifest ships this ConfigMap with one empty key.
YURT_EMPTY = b"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: yurt-tunnel-server-cfg
  namespace: kube-system
data:
  dnat-ports-pair: ""
"""

#: A pair yurt-tunnel drops without a word; the server refuses it.
YURT_BAD_PAIR = YURT_EMPTY.replace(b'""', b'"9051=10263"')


class CheckConfigTests(SynchronousTestCase):
    def edgeTunnel(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        """Run C{edge-tunnel ARGV} with C{stdin} as its standard input."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def _file(self, content: bytes) -> str:
        fd, path = tempfile.mkstemp(suffix=".yaml")
        os.write(fd, content)
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_productPage(self) -> None:
        """The product page's ConfigMap is taken, and what it forwards is printed."""
        path = self._file(ACK_120)
        code, out, err = self.edgeTunnel("config", "check", path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out,
            f"{path}: http 9051, 10255; https 8080, 9052, 10250; "
            "localhost 8080, 10250, 10255, 10266, 10267; dnat none; tcp none\n",
        )

    def test_stdin(self) -> None:
        """C{-} reads a manifest from standard input, as piped from kubectl."""
        code, out, err = self.edgeTunnel("config", "check", "-", stdin=YURT_EMPTY)
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("-: http 10255; https 10250"), out)

    def test_refusedPair(self) -> None:
        """
        A pair yurt-tunnel would drop silently is refused with the server's
        own line, and exit status 2.
        """
        code, out, err = self.edgeTunnel("config", "check", "-", stdin=YURT_BAD_PAIR)
        self.assertEqual((code, out), (2, ""))
        self.assertEqual(
            err,
            "edge-tunnel: error: <stdin>: key 'dnat-ports-pair', value '9051=10263': pair "
            "'9051=10263': the right side must be the HTTP proxy listener's port 10264, "
            "not 10263\n",
        )

    def test_listenerPort(self) -> None:
        """C{--http-listener-port} moves the valid right side of a pair."""
        path = self._file(YURT_BAD_PAIR)
        code, out, _ = self.edgeTunnel("config", "check", "--http-listener-port", "10263", path)
        self.assertEqual(code, 0)
        self.assertIn(
            "http 10255; https 10250; localhost 10250, 10255, 10266, 10267; dnat 9051", out
        )

    def test_tooLarge(self) -> None:
        """Standard input is read one byte past the bound, then refused, not read whole."""
        stream = io.BytesIO(b"#" * (MAX_CONFIG_BYTES * 3))
        with self.assertRaises(ConfigError) as raised:
            checkConfig("-", stdin=stream)
        self.assertIn("larger than a ConfigMap can be", str(raised.exception))
        self.assertEqual(stream.tell(), MAX_CONFIG_BYTES + 1)

    def test_missingFile(self) -> None:
        code, _, err = self.edgeTunnel("config", "check", "/nonexistent/cfg.yaml")
        self.assertEqual(code, 2)
        self.assertIn("/nonexistent/cfg.yaml", err)
        self.assertEqual(err.count("\n"), 1)

    def test_bareGroup(self) -> None:
        """C{edge-tunnel config} alone prints its usage, exit status 2."""
        code, _, err = self.edgeTunnel("config")
        self.assertEqual(code, 2)
        self.assertIn("check", err)
