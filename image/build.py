"""
Build the container image (C{Containerfile}) with no registry at all.

No registry is reachable from CI, so the base image is made here: Debian's
C{debootstrap --variant=minbase} of bookworm from the mirror this machine's
apt uses, imported into podman as C{localhost/debian-bookworm-minbase:<key>}.
The key is a hash of what debootstrap is given (suite, variant,
architecture, mirror, debootstrap's version), so a warm run finds the
image, or the root filesystem's tarball in the cache outside the checkout,
and runs debootstrap no more:

    ${TWISTED_TUNNEL_IMAGE_CACHE:-~/.cache/twisted-tunnel/image}/debian-bookworm-minbase-<key>.tar

Then C{podman build} makes C{localhost/twisted-tunnel:<version>} (the
version of C{twisted_tunnel/_version.py}) with the host's network (apt and
PyPI) and its CA bundle mounted for pip, in case the way out re-signs TLS;
podman's layer cache makes a warm build a matter of seconds.

Here, not under C{tests/}: it is how the image the project ships is built,
and the system test (C{tests/system/test_image.py}) runs what it made.
Standard library only: C{make image} runs it with the system's python3,
as root (debootstrap, rootful podman).

    usage: python3 image/build.py [--print-name]
           prints the image's name, and how long each step took
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The image's repository; its tag is the package's version.
IMAGE = "localhost/twisted-tunnel"

#: What the base is debootstrapped from.
SUITE = "bookworm"
VARIANT = "minbase"
BASE = f"localhost/debian-{SUITE}-{VARIANT}"

#: Where the mirror is read from, and the one used when none is found there.
SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: The CA bundle pip in the builder stage trusts (mounted read-only, not kept).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def version(root: Path = ROOT) -> str:
    """The package's version, from C{twisted_tunnel/_version.py} (not imported: no venv here)."""
    text = (root / "twisted_tunnel" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise ValueError("twisted_tunnel/_version.py: no __version__ line")
    return match.group(1)


def imageName(root: Path = ROOT) -> str:
    """C{localhost/twisted-tunnel:<version>}: what C{make image} builds."""
    return f"{IMAGE}:{version(root)}"


def _sourceFiles(paths: Iterable[str]) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in {".list", ".sources"})
        elif path.is_file():
            found.append(path)
    return found


def mirrors(texts: Iterable[tuple[str, str]], suite: str = SUITE) -> dict[str, str]:
    """
    The Debian archive and its security archive that apt's sources name
    for C{suite}: C{{"debian": URI, "security": URI}}, either missing if
    none is named.

    @param texts: (file name, its text): one-line C{deb URI SUITE ...}
        lines (C{.list}) or deb822 stanzas (C{.sources}).
    """
    found: dict[str, str] = {}

    def note(uri: str, suites: Sequence[str]) -> None:
        uri = uri.rstrip("/")
        if suite in suites:
            found.setdefault("debian", uri)
        if f"{suite}-security" in suites:
            found.setdefault("security", uri)

    for name, text in texts:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    key, colon, value = line.partition(":")
                    if colon and not line.startswith(("#", " ", "\t")):
                        fields[key.strip().lower()] = value.strip()
                if fields.get("types", "deb").split()[:1] == ["deb"] and "uris" in fields:
                    for uri in fields["uris"].split():
                        note(uri, fields.get("suites", "").split())
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    note(words[1], words[2:3])
    return found


def hostMirrors() -> dict[str, str]:
    """L{mirrors} of this machine's apt sources, the debian one defaulted."""
    texts = [(str(p), p.read_text(errors="replace")) for p in _sourceFiles(SOURCES)]
    found = mirrors(texts)
    found.setdefault("debian", DEFAULT_MIRROR)
    found.setdefault("security", DEFAULT_MIRROR + "-security")
    return found


#: What no image needs: documentation (but the licences), manuals, translations,
#: apt's downloads and caches (globs under the root, whose files L{trim} removes).
TRIM = (
    "usr/share/doc/*/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/debconf/*-old",
    "var/lib/apt/lists/*_*",
    "var/log/*.log",
)

#: Kept by L{trim}: each package's licence.
KEEP = "copyright"

#: dpkg's settings in the base, so that packages installed on it stay as lean.
DPKG_EXCLUDES = (
    "".join(f"path-exclude=/{pattern}\n" for pattern in TRIM if pattern.startswith("usr/"))
    + f"path-include=/usr/share/doc/*/{KEEP}\n"
)


def trim(rootfs: Path) -> None:
    """Remove L{TRIM}'s files from C{rootfs}, and have dpkg install none of them later."""
    for pattern in TRIM:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != KEEP:
                path.unlink()
    (rootfs / "etc/dpkg/dpkg.cfg.d/90twisted-tunnel-excludes").write_text(DPKG_EXCLUDES)


def baseKey(mirror: str, architecture: str, debootstrapVersion: str) -> str:
    """The base image's tag: a hash of everything debootstrap is given, and of L{trim}'s lists."""
    inputs = "\n".join(
        [SUITE, VARIANT, architecture, mirror, debootstrapVersion, *TRIM, DPKG_EXCLUDES]
    )
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def cacheRoot() -> Path:
    """C{$TWISTED_TUNNEL_IMAGE_CACHE}, else C{twisted-tunnel/image} in the user's cache."""
    configured = os.environ.get("TWISTED_TUNNEL_IMAGE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "twisted-tunnel" / "image"


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def imageID(name: str) -> str | None:
    """The ID of the image C{name}, or C{None} if there is none."""
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def imageExists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def _unmountUnder(folder: Path) -> None:
    """
    Unmount what a debootstrap that failed half way left mounted in
    C{folder} (its C{proc}, C{sys}), so that removing it stays inside it.
    """
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in reversed(points):
        if point.startswith(f"{folder}/"):
            subprocess.run(["umount", "--lazy", point], check=False)


def ensureBase(mirror: str, cache: Path | None = None) -> tuple[str, str]:
    """
    The base image's name, made if podman lacks it: imported from the
    cached tarball, which is debootstrapped first only if it is missing.

    @return: The name, and what was done (C{"present"}, C{"imported"},
        C{"debootstrapped"}).
    """
    architecture = _output("dpkg", "--print-architecture")
    debootstrapVersion = _output("dpkg-query", "-W", "-f=${Version}", "debootstrap")
    name = f"{BASE}:{baseKey(mirror, architecture, debootstrapVersion)}"
    if imageExists(name):
        return name, "present"
    cache = cache or cacheRoot()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{name.rpartition('/')[2].replace(':', '-')}.tar"
    done = "imported"
    if not tarball.exists():
        done = "debootstrapped"
        scratch = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
        try:
            subprocess.run(
                ["debootstrap", f"--variant={VARIANT}", f"--arch={architecture}", SUITE,
                 str(scratch / "rootfs"), mirror],
                check=True,
            )  # fmt: skip
            rootfs = scratch / "rootfs"
            trim(rootfs)
            partial = scratch / "rootfs.tar"
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
                check=True,
            )
            os.replace(partial, tarball)
            for stale in cache.glob(f"{BASE.rpartition('/')[2]}-*.tar"):
                if stale != tarball:
                    stale.unlink()  # an older recipe's
        finally:
            _unmountUnder(scratch)
            shutil.rmtree(scratch, ignore_errors=True)
    with tarball.open("rb") as f:
        subprocess.run(["podman", "import", "--quiet", "-", name], stdin=f, check=True)
    return name, done


def source(root: Path = ROOT) -> str:
    """The URL of git's C{origin} remote, or C{""} (a checkout without one)."""
    result = subprocess.run(
        ["git", "-C", str(root), "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


#: The most processes a container may have: podman's own limit (above it, setrlimit needs
#: CAP_SYS_RESOURCE).
MAX_PROCESSES = 32768


def runtimeOptions() -> list[str]:
    """
    What C{podman build} and C{podman run} need to start a container on a
    host like CI's: runc, since crun refuses a cgroup v1 host whose cgroup
    v2 hierarchy holds a controller too ("hybrid mode"); and limits this
    process has, since podman's defaults (a million open files) need
    C{CAP_SYS_RESOURCE}, which a sandbox may not grant even to root.
    """
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if files == resource.RLIM_INFINITY:
        files = 1 << 20
    if processes == resource.RLIM_INFINITY or processes > MAX_PROCESSES:
        processes = MAX_PROCESSES
    return [
        "--runtime=runc",
        f"--ulimit=nofile={files}:{files}",
        f"--ulimit=nproc={processes}:{processes}",
    ]


def buildCommand(base: str, mirrors: dict[str, str], root: Path = ROOT) -> list[str]:
    """The C{podman build} command line for L{imageName} on C{base}."""
    command = [
        "podman", "build", "--pull=never", "--network=host", *runtimeOptions(),
        "--file", str(root / "Containerfile"),
        "--build-arg", f"BASE={base}",
        "--build-arg", f"VERSION={version(root)}",
        "--build-arg", f"DEBIAN_MIRROR={mirrors['debian']}",
        "--build-arg", f"DEBIAN_SECURITY_MIRROR={mirrors['security']}",
        "--tag", imageName(root),
    ]  # fmt: skip
    origin = source(root)
    if origin:
        command += ["--label", f"org.opencontainers.image.source={origin}"]
    if os.path.isfile(CA_BUNDLE):
        command += ["--volume", f"{CA_BUNDLE}:/run/host-ca.crt:ro"]
    return [*command, str(root)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument(
        "--print-name", action="store_true", help="print the image's name and build nothing"
    )
    arguments = parser.parse_args(argv)
    if arguments.print_name:
        print(imageName())
        return 0
    missing = [p for p in ("podman", "runc", "debootstrap") if shutil.which(p) is None]
    reason = f"{', '.join(missing)} not found" if missing else None
    if os.geteuid() != 0:
        reason = "not root (debootstrap and rootful podman need it)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            print(f"image/build.py: CI=true, so the image must be built, but {reason}",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"image/build.py: not built: {reason} (tests/system/test_image.py will skip)")
        return 0
    found = hostMirrors()
    started = time.monotonic()
    try:
        base, done = ensureBase(found["debian"])
    except subprocess.CalledProcessError as e:
        print(f"image/build.py: the base image: {e}", file=sys.stderr)
        return 1
    print(f"base {base}: {done} in {time.monotonic() - started:.0f} s", flush=True)
    started = time.monotonic()
    previous = imageID(imageName())
    try:
        subprocess.run(buildCommand(base, found), check=True)
    except subprocess.CalledProcessError as e:
        print(f"image/build.py: podman build: {e}", file=sys.stderr)
        return 1
    if previous and previous != imageID(imageName()):
        # the image this tag named before, which this script built: not left behind untagged
        # (kept if a container still uses it)
        subprocess.run(["podman", "rmi", previous], capture_output=True, check=False)
    size = _output("podman", "image", "inspect", "--format", "{{.Size}}", imageName())
    print(
        f"{imageName()}: built in {time.monotonic() - started:.0f} s, {int(size) / 1e6:.1f} MB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
