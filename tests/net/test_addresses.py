"""L{twisted_tunnel.net.addresses}: the one IP parser and the one host:port parser."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.doors.forward import parseForward
from twisted_tunnel.net.addresses import HostPortError, normalIP, parseIP, splitHostPort


class IPTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parseIP("10.0.0.7"), ipaddress.ip_address("10.0.0.7"))
        self.assertEqual(parseIP("[fd00:0::7]"), ipaddress.ip_address("fd00::7"))
        self.assertIsNone(parseIP("edge-1"))
        self.assertEqual(normalIP("fd00:0:0::7"), "fd00::7")
        self.assertIsNone(normalIP("10.0.0"))


class HostPortTests(SynchronousTestCase):
    def test_forms(self) -> None:
        for text, expected in [
            ("edge-1:10250", ("edge-1", 10250)),
            ("10.0.0.7:1", ("10.0.0.7", 1)),
            ("[fd00::7]:65535", ("fd00::7", 65535)),
        ]:
            self.assertEqual(splitHostPort(text), expected, text)

    def test_problems(self) -> None:
        """Each refusal says which part is wrong, so each caller can word it."""
        for text, problem, port in [
            ("edge-1", "form", ""),
            (":80", "form", ""),
            ("[]:80", "form", ""),
            ("[::1", "form", ""),
            ("[::1]", "form", ""),
            ("::1:80", "ipv6", ""),
            ("edge-1:0", "port", "0"),
            ("edge-1:65536", "port", "65536"),
            ("edge-1:+80", "port", "+80"),
            ("edge-1:000080", "port", "000080"),
            ("edge-1:٨٠", "port", "٨٠"),  # digits, but not ASCII ones
        ]:
            with self.assertRaises(HostPortError, msg=text) as caught:
                splitHostPort(text)
            self.assertEqual((caught.exception.problem, caught.exception.port), (problem, port))

    def test_forwardNeedsBrackets(self) -> None:
        """
        --forward took C{fd00::1:80} as node C{fd00::1}; like every other
        door, it asks for brackets now.
        """
        with self.assertRaises(ValueError) as caught:
            parseForward("fd00::1:80=tcp:19100")
        self.assertIn("[ADDRESS]:PORT", str(caught.exception))
