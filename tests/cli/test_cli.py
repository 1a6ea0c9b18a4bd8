"""
Tests for L{twisted_tunnel.cli}: the C{edge-tunnel certs} commands, run in a temporary directory.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import temporaryDirectory
from twisted_tunnel import cli
from twisted_tunnel._version import __version__, versionLine
from twisted_tunnel.tls import identityOfCertificate, loadCredentials
from twisted_tunnel.tls.certs import readPair


class CLITestCase(SynchronousTestCase):
    """Run L{cli.main} into a fresh PKI directory and capture what it prints."""

    def setUp(self) -> None:
        # Not made yet: the commands make it.
        self.directory = os.path.join(temporaryDirectory(self), "pki")

    def runCommand(self, *argv: str) -> tuple[int, str, str]:
        """Run C{edge-tunnel <argv> --dir <directory>}; return status, stdout, stderr."""
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main([*argv, "--dir", self.directory], stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def succeed(self, *argv: str) -> list[str]:
        """Run a command that must succeed; return the lines it printed."""
        status, out, err = self.runCommand(*argv)
        self.assertEqual((status, err), (0, ""))
        return out.splitlines()

    def refuse(self, *argv: str) -> str:
        """Run a command that must fail with one line on stderr; return it."""
        status, out, err = self.runCommand(*argv)
        self.assertEqual(status, 2)
        self.assertEqual(out, "")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith("edge-tunnel: error: "), lines[0])
        self.assertNotIn("Traceback", err)
        return lines[0]

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def mode(self, name: str) -> int:
        return stat.S_IMODE(os.stat(self.path(name)).st_mode)

    def certificate(self, name: str) -> x509.Certificate:
        with open(self.path(name), "rb") as f:
            return x509.load_pem_x509_certificate(f.read())


class InitTests(CLITestCase):
    """C{edge-tunnel certs init} makes the CA, once."""

    def test_init(self) -> None:
        lines = self.succeed("certs", "init")
        self.assertEqual(
            lines, [f"wrote {self.path('ca.pem')}", f"wrote {self.path('ca-key.pem')}"]
        )
        self.assertEqual(self.mode("ca-key.pem"), 0o600)
        self.assertEqual(self.mode("ca.pem"), 0o644)
        ca = readPair(self.path("ca.pem"), self.path("ca-key.pem"))
        self.assertTrue(ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints))

    def test_refusesToOverwrite(self) -> None:
        self.succeed("certs", "init")
        with open(self.path("ca.pem"), "rb") as f:
            before = f.read()
        line = self.refuse("certs", "init")
        self.assertIn(self.path("ca.pem"), line)
        self.assertIn("--force", line)
        with open(self.path("ca.pem"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_force(self) -> None:
        self.succeed("certs", "init")
        with open(self.path("ca.pem"), "rb") as f:
            before = f.read()
        self.succeed("certs", "init", "--force")
        with open(self.path("ca.pem"), "rb") as f:
            self.assertNotEqual(f.read(), before)


class IssueTests(CLITestCase):
    """C{edge-tunnel certs server|agent|client} sign with the directory's CA."""

    def setUp(self) -> None:
        super().setUp()
        self.succeed("certs", "init")

    def test_serverDefaults(self) -> None:
        lines = self.succeed("certs", "server")
        self.assertEqual(
            lines, [f"wrote {self.path('server.pem')}", f"wrote {self.path('server-key.pem')}"]
        )
        self.assertEqual(self.mode("server-key.pem"), 0o600)
        self.assertEqual(self.mode("server.pem"), 0o644)
        identity = identityOfCertificate(self.certificate("server.pem"))
        self.assertEqual(identity.dnsNames, ("localhost",))
        self.assertEqual(identity.ipAddresses, ("127.0.0.1",))

    def test_serverNames(self) -> None:
        self.succeed(
            "certs",
            "server",
            "--name",
            "tunnel.example.com",
            "--name",
            "t2",
            "--ip",
            "2001:db8::1",
        )
        identity = identityOfCertificate(self.certificate("server.pem"))
        self.assertEqual(identity.dnsNames, ("tunnel.example.com", "t2"))
        self.assertEqual(identity.ipAddresses, ("2001:db8::1",))
        self.assertEqual(identity.commonName, "tunnel.example.com")

    def test_agent(self) -> None:
        lines = self.succeed("certs", "agent", "edge-1", "--ip", "192.0.2.5")
        self.assertEqual(
            lines,
            [
                f"wrote {self.path('agent-edge-1.pem')}",
                f"wrote {self.path('agent-edge-1-key.pem')}",
            ],
        )
        self.assertEqual(self.mode("agent-edge-1-key.pem"), 0o600)
        identity = identityOfCertificate(self.certificate("agent-edge-1.pem"))
        self.assertEqual(identity.nodeName(), "edge-1")
        self.assertEqual(identity.ipAddresses, ("192.0.2.5",))

    def test_client(self) -> None:
        lines = self.succeed("certs", "client", "kube-apiserver")
        self.assertEqual(len(lines), 2)
        self.assertEqual(self.mode("client-kube-apiserver-key.pem"), 0o600)
        identity = identityOfCertificate(self.certificate("client-kube-apiserver.pem"))
        self.assertEqual(identity.commonName, "kube-apiserver")
        self.assertFalse(identity.isNodeCertificate())

    def test_loadable(self) -> None:
        """What the command writes is what the daemons load."""
        self.succeed("certs", "server")
        self.succeed("certs", "agent", "edge-1")
        server = loadCredentials(
            self.path("ca.pem"), self.path("server.pem"), self.path("server-key.pem")
        )
        agent = loadCredentials(
            self.path("ca.pem"), self.path("agent-edge-1.pem"), self.path("agent-edge-1-key.pem")
        )
        self.assertEqual(agent.identity().nodeName(), "edge-1")
        self.assertEqual(server.identity().dnsNames, ("localhost",))

    def test_badNodeName(self) -> None:
        line = self.refuse("certs", "agent", "Edge_1")
        self.assertIn("'Edge_1'", line)
        self.assertIn("node name", line)
        self.assertFalse(os.path.exists(self.path("agent-Edge_1.pem")))

    def test_badIP(self) -> None:
        line = self.refuse("certs", "agent", "edge-1", "--ip", "10.0.0.300")
        self.assertIn("10.0.0.300", line)
        line = self.refuse("certs", "server", "--ip", "nope")
        self.assertIn("nope", line)

    def test_badClientName(self) -> None:
        line = self.refuse("certs", "client", "../evil")
        self.assertIn("'../evil'", line)

    def test_neverValid(self) -> None:
        line = self.refuse("certs", "server", "--days", "0")
        self.assertIn("at least 1 day", line)


class NoCATests(CLITestCase):
    """Without a CA in the directory, issuing is one clear line and status 2."""

    def test_noCA(self) -> None:
        for argv in [("certs", "server"), ("certs", "agent", "edge-1"), ("certs", "client", "c")]:
            line = self.refuse(*argv)
            self.assertIn(self.path("ca.pem"), line)
            self.assertIn("certs init", line)

    def test_unreadableCA(self) -> None:
        """A CA file that holds no certificate is also one line."""
        os.makedirs(self.directory)
        for name in ("ca.pem", "ca-key.pem"):
            with open(self.path(name), "w") as f:
                f.write("garbage\n")
        line = self.refuse("certs", "server")
        self.assertIn(self.path("ca.pem"), line)

    def test_unwritableDirectory(self) -> None:
        """A directory that cannot be made (a file is in the way) is one line too."""
        with open(self.directory, "w") as f:
            f.write("in the way\n")
        line = self.refuse("certs", "init")
        self.assertIn(self.directory, line)


class UsageTests(SynchronousTestCase):
    """Usage: help, and a command group without a subcommand."""

    def main(self, *argv: str) -> tuple[int, str, str]:
        stdout, stderr = io.StringIO(), io.StringIO()
        status = cli.main(list(argv), stdout=stdout, stderr=stderr)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_help(self) -> None:
        status, out, err = self.main("--help")
        self.assertEqual(status, 0)
        self.assertIn("certs", out)

    def test_version(self) -> None:
        """C{edge-tunnel --version}: this program's version on one line, first."""
        status, out, err = self.main("--version")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, versionLine("edge-tunnel") + "\n")
        self.assertTrue(out.startswith(f"edge-tunnel {__version__} (twisted-tunnel; Twisted "))

    def test_noCommand(self) -> None:
        status, out, err = self.main()
        self.assertEqual(status, 2)
        self.assertIn("certs", err)

    def test_certsWithoutKind(self) -> None:
        status, out, err = self.main("certs")
        self.assertEqual(status, 2)
        self.assertIn("agent", err)

    def test_unknownOption(self) -> None:
        status, out, err = self.main("certs", "init", "--bogus")
        self.assertEqual(status, 2)
        self.assertIn("--bogus", err)

    def test_registry(self) -> None:
        """Subcommands register themselves; registering a name twice is a mistake."""
        with self.assertRaises(ValueError):
            cli.command("certs")(lambda subparsers: None)

    def test_pythonDashM(self) -> None:
        """C{python -m twisted_tunnel.cli} runs the command."""
        # the folder that holds the package (cli is the package twisted_tunnel/cli/)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__))))
        result = subprocess.run(
            [sys.executable, "-m", "twisted_tunnel.cli", "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": root},
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("certs", result.stdout)
