"""
image/build.py's choices, in this process: where the base comes from, when
it is made again, what is trimmed from it, and how podman is run.
C{tests/system/test_image.py} runs the image it builds.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.realnet import loadScript
from twisted_tunnel._version import __version__

build = loadScript("image/build.py")

#: This machine's kind of sources: deb822, with a snapshot comment.
DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


class MirrorTests(SynchronousTestCase):
    """debootstrap uses the mirror apt uses here."""

    def assertMirrors(self, name: str, text: str, host: str) -> None:
        """C{text}, in a file called C{name}, names C{host}'s archive and security archive."""
        self.assertEqual(
            build.mirrors([(name, text)]),
            {"debian": f"http://{host}/debian", "security": f"http://{host}/debian-security"},
        )

    def test_deb822(self) -> None:
        self.assertMirrors("debian.sources", DEB822, "deb.debian.org")

    def test_oneLineFormat(self) -> None:
        """C{deb [options] URI SUITE ...}; other suites, deb-src and comments are not taken."""
        text = (
            "# deb http://wrong.example/debian bookworm main\n"
            "deb-src http://wrong.example/debian bookworm main\n"
            "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
            "deb http://mirror.example/debian-security bookworm-security main\n"
        )
        self.assertMirrors("sources.list", text, "mirror.example")

    def test_firstWins(self) -> None:
        found = build.mirrors(
            [("a.list", "deb http://a.example/debian bookworm main\n"), ("b.sources", DEB822)]
        )
        self.assertEqual(found["debian"], "http://a.example/debian")
        self.assertEqual(found["security"], "http://deb.debian.org/debian-security")

    def test_otherSuite(self) -> None:
        self.assertEqual(build.mirrors([("t.list", "deb http://a/debian trixie main\n")]), {})


class BaseKeyTests(SynchronousTestCase):
    """The base's tag changes with what debootstrap is given, and only with it."""

    def test_stable(self) -> None:
        self.assertEqual(
            build.baseKey("http://m/debian", "amd64", "1.0"),
            build.baseKey("http://m/debian", "amd64", "1.0"),
        )

    def test_inputs(self) -> None:
        keys = {
            build.baseKey("http://m/debian", "amd64", "1.0"),
            build.baseKey("http://n/debian", "amd64", "1.0"),
            build.baseKey("http://m/debian", "arm64", "1.0"),
            build.baseKey("http://m/debian", "amd64", "1.1"),
        }
        self.assertEqual(len(keys), 4)
        for key in keys:
            self.assertRegex(key, r"^[0-9a-f]{16}$")


class TrimTests(SynchronousTestCase):
    def test_trim(self) -> None:
        """
        Documentation, manuals, translations and apt's caches go; each
        package's licence stays, and dpkg is told to install none of them.
        """
        scratch = tempfile.TemporaryDirectory(prefix="twisted-tunnel-trim-")
        self.addCleanup(scratch.cleanup)
        root = Path(scratch.name)
        files = {
            "usr/share/doc/libc6/copyright": True,
            "usr/share/doc/libc6/changelog.Debian.gz": False,
            "usr/share/doc/libc6/examples/x": False,
            "usr/share/man/man1/ls.1.gz": False,
            "usr/share/locale/de/LC_MESSAGES/apt.mo": False,
            "var/cache/apt/pkgcache.bin": False,
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": False,
            "var/lib/apt/lists/lock": True,
            "usr/bin/python3": True,
            "etc/dpkg/dpkg.cfg.d/excludes": True,
        }
        for name in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(name)
        build.trim(root)
        self.assertEqual({name: (root / name).exists() for name in files}, files)
        excludes = (root / "etc/dpkg/dpkg.cfg.d/90twisted-tunnel-excludes").read_text()
        self.assertIn("path-exclude=/usr/share/locale/*\n", excludes)
        self.assertTrue(excludes.endswith("path-include=/usr/share/doc/*/copyright\n"))


class CommandTests(SynchronousTestCase):
    def test_imageName(self) -> None:
        """Tagged with the package's version (the chart's C{twisted-tunnel:<version>})."""
        self.assertEqual(build.imageName(), f"localhost/twisted-tunnel:{__version__}")

    def test_buildCommand(self) -> None:
        """No registry is asked; the version and the mirrors go in as build arguments."""
        command = build.buildCommand(
            "localhost/base:k", {"debian": "http://m/debian", "security": "http://m/sec"}
        )
        self.assertEqual(command[:4], ["podman", "build", "--pull=never", "--network=host"])
        for argument in (
            "BASE=localhost/base:k",
            f"VERSION={__version__}",
            "DEBIAN_MIRROR=http://m/debian",
            "DEBIAN_SECURITY_MIRROR=http://m/sec",
        ):
            self.assertIn(argument, command)
        self.assertEqual(command[command.index("--tag") + 1], build.imageName())
        self.assertEqual(command[-1], str(build.ROOT))

    def test_runtimeOptions(self) -> None:
        """runc, and limits no higher than this process's own (or podman's, for processes)."""
        options = build.runtimeOptions()
        self.assertEqual(options[0], "--runtime=runc")
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.assertIn(f"--ulimit=nofile={files}:{files}", options)
        processes = int(options[2].rpartition(":")[2])
        self.assertLessEqual(processes, build.MAX_PROCESSES)
