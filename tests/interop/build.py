"""
Build the real components the interop tests run against, once per version.

Each component is a small Go module of its own under C{tests/interop/<name>/}
(their C{k8s.io} requirements differ, so they cannot share one): a
C{go.mod}/C{go.sum} that pins it, a C{build.txt} listing, one per line,
the packages to build (C{k8s.io/kubernetes/cmd/kube-apiserver}), and
optionally an C{ldflags.txt} whose lines are passed as C{-ldflags} (the
version stamps upstream's own build sets: without them C{kubectl version}
cannot parse its own version) and a C{tags.txt} whose lines are build tags.  The
binaries land in a cache outside the checkout, keyed by a hash of the
module's files and the Go version, so a warm run builds nothing and a
changed pin builds anew:

    ${TWISTED_TUNNEL_INTEROP_CACHE:-~/.cache/twisted-tunnel/interop}/<name>-<key>/bin/

Nothing the project ships depends on these: they are test fixtures, built
from their registries (the Go module proxy) as CI would build them.

The functions take the folder that holds the components (C{here}) and the
cache they land in (C{root}); their defaults are this folder and the
interop cache, so that C{bench/peers/build.py} builds the benchmark's peers
(frp, chisel, Konnectivity) the same way, from its own folder into a cache
of its own.

    usage: python tests/interop/build.py [NAME ...]     (all components by default)
           prints NAME=/path/to/bin for each, and the time each build took
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: A build is retried from scratch if its directory has no such marker.
DONE = ".built"


def cacheRoot(kind: str = "interop") -> Path:
    """
    Where the builds of C{kind} land: C{$TWISTED_TUNNEL_<KIND>_CACHE}, else
    C{twisted-tunnel/<kind>} in the user's cache directory.
    """
    configured = os.environ.get(f"TWISTED_TUNNEL_{kind.upper()}_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "twisted-tunnel" / kind


def components(here: Path = HERE) -> list[str]:
    """Every folder in C{here} that holds a Go module and a build list."""
    return sorted(
        p.name for p in here.iterdir() if (p / "go.mod").exists() and (p / "build.txt").exists()
    )


def goVersion() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()


def key(name: str, here: Path = HERE) -> str:
    """What the build depends on: the module's own files, and the Go version."""
    digest = hashlib.sha256(goVersion().encode())
    folder = here / name
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".mod", ".sum", ".go", ".txt"}:
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def cached(name: str, here: Path = HERE, root: Path | None = None) -> Path | None:
    """The bin directory of C{name}'s binaries if they are built for its current pin."""
    target = (root or cacheRoot()) / f"{name}-{key(name, here)}"
    return target / "bin" if (target / DONE).exists() else None


def build(name: str, here: Path = HERE, root: Path | None = None) -> tuple[Path, float]:
    """
    The bin directory of C{name}'s binaries, built if not cached; and how
    long the build took (0 when cached).

    @param here: the folder that holds the component's folder C{name}.
    @param root: the cache (by default L{cacheRoot}).
    """
    root = root or cacheRoot()
    root.mkdir(parents=True, exist_ok=True)
    # One build of a component at a time on this machine: a second make (a CI run beside a
    # developer's) waits here, then finds the first one's binaries, instead of building into
    # the same folder at the same time.
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(name, here, root)


def _build(name: str, here: Path, root: Path) -> tuple[Path, float]:
    folder = here / name
    target = root / f"{name}-{key(name, here)}"
    if (target / DONE).exists():
        return target / "bin", 0.0
    shutil.rmtree(target, ignore_errors=True)
    (target / "bin").mkdir(parents=True)
    packages = [
        line.strip()
        for line in (folder / "build.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    flags = []
    ldflags = folder / "ldflags.txt"
    if ldflags.exists():
        lines = [line.strip() for line in ldflags.read_text().splitlines()]
        flags = ["-ldflags", " ".join(line for line in lines if line and not line.startswith("#"))]
    tags = folder / "tags.txt"
    if tags.exists():
        lines = [line.strip() for line in tags.read_text().splitlines()]
        flags += ["-tags", ",".join(line for line in lines if line and not line.startswith("#"))]
    started = time.monotonic()
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false")
    subprocess.run(
        ["go", "build", "-trimpath", *flags, "-o", str(target / "bin") + "/", *packages],
        cwd=folder,
        env=env,
        check=True,
    )
    (target / DONE).write_text(f"{goVersion()}\n")
    for stale in root.glob(f"{name}-*"):
        if stale != target and stale.name[len(name) + 1 :].isalnum():
            shutil.rmtree(stale, ignore_errors=True)  # an older pin's binaries
    return target / "bin", time.monotonic() - started


def main(argv: list[str]) -> int:
    names = argv or components()
    for name in names:
        try:
            binaries, seconds = build(name)
        except subprocess.CalledProcessError as e:
            print(f"{name}: build failed ({e})", file=sys.stderr)
            return 1
        how = f"built in {seconds:.0f} s" if seconds else "cached"
        print(f"{name}={binaries}  # {how}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
