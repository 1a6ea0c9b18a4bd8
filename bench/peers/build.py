"""
Build the benchmark's peers (issue 15) from their registries, once per pin.

The Go peers (frp, chisel, Konnectivity, OpenYurt's yurt-tunnel) are built
exactly as the interop suite builds the real Kubernetes components, by
C{tests/interop/build.py}: each is a small Go module of our own under
C{bench/peers/<name>/} (a C{go.mod}/C{go.sum} that pins it and a C{build.txt}
listing the packages to build, optionally an C{ldflags.txt}), built with
C{CGO_ENABLED=0 go build -trimpath} into a cache outside the checkout keyed
by a hash of the module's files and the Go version.

The Rust peer (rathole) comes from crates.io: its folder has a C{cargo.txt}
whose one line is C{CRATE VERSION [cargo install options]}, and it is
installed with C{cargo install --locked --root <cache>/<name>-<key>}, the key
being a hash of that file and of the versions of rustc and cargo.

    ${TWISTED_TUNNEL_PEERS_CACHE:-~/.cache/twisted-tunnel/peers}/<name>-<key>/bin/

    usage: python3 bench/peers/build.py [--keep-going] [NAME ...]   (every peer by default)
           prints NAME=/path/to/bin for each, and the time each build took; tries every
           peer, then exits 1 if one failed (0 with --keep-going: the benchmark runs the
           peers that built, and says which did not)

Run it with C{nice -n 19} on a shared machine (C{make peers} does).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.interop import build as gobuild  # noqa: E402

DONE = gobuild.DONE


def cacheRoot() -> Path:
    """C{$TWISTED_TUNNEL_PEERS_CACHE}, else C{twisted-tunnel/peers} in the user's cache."""
    return gobuild.cacheRoot("peers")


def goPeers() -> list[str]:
    return gobuild.components(HERE)


def cargoPeers() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / "cargo.txt").exists())


def peers() -> list[str]:
    return sorted(goPeers() + cargoPeers())


def cargoSpec(name: str) -> tuple[list[str], list[tuple[str, str]]]:
    """
    C{cargo.txt}: its first line, the crate, its version, then options for
    C{cargo install}; then any C{update CRATE VERSION} lines, each a
    dependency that the crate's own C{Cargo.lock} pins at a version today's
    rustc no longer compiles, moved to C{VERSION} (C{cargo update --precise})
    before the C{--locked} install.
    """
    lines = [
        shlex.split(line)
        for line in (HERE / name / "cargo.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines or lines[0][0] == "update" or len(lines[0]) < 2:
        raise ValueError(f"{name}/cargo.txt names no crate and version on its first line")
    updates = []
    for words in lines[1:]:
        if len(words) != 3 or words[0] != "update":
            raise ValueError(f"{name}/cargo.txt: expected 'update CRATE VERSION', got {words}")
        updates.append((words[1], words[2]))
    return lines[0], updates


def crateSource(crate: str, version: str, scratch: Path) -> Path:
    """
    The published source of C{crate} C{version}, fetched by cargo from
    crates.io (into cargo's own registry cache) through a throwaway package
    that depends on it; returns the folder that holds its C{Cargo.toml}.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "src").mkdir(exist_ok=True)
    (scratch / "src" / "lib.rs").write_text("")
    (scratch / "Cargo.toml").write_text(
        '[package]\nname = "fetch-crate"\nversion = "0.0.0"\nedition = "2021"\n\n'
        f'[dependencies]\n{crate} = {{ version = "={version}", default-features = false }}\n'
    )
    out = subprocess.run(
        [
            "cargo",
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            str(scratch / "Cargo.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for package in json.loads(out)["packages"]:
        if package["name"] == crate and package["version"] == version:
            return Path(package["manifest_path"]).parent
    raise ValueError(f"cargo metadata did not list {crate} {version}")


def _versions() -> str:
    out = []
    for tool in ("rustc", "cargo"):
        out.append(
            subprocess.run(
                [tool, "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    return "\n".join(out)


def cargoKey(name: str) -> str:
    digest = hashlib.sha256(_versions().encode())
    digest.update((HERE / name / "cargo.txt").read_bytes())
    return digest.hexdigest()[:16]


def cargoBuild(name: str, root: Path) -> tuple[Path, float]:
    target = root / f"{name}-{cargoKey(name)}"
    if (target / DONE).exists():
        return target / "bin", 0.0
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    (crate, version, *options), updates = cargoSpec(name)
    started = time.monotonic()
    if not updates:
        what = [crate, "--version", version]
    else:
        # The published source with its own Cargo.lock, but for the updates.
        source = target / "src"
        shutil.copytree(crateSource(crate, version, target / "fetch"), source)
        for path in [source, *source.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        for dependency, precise in updates:
            subprocess.run(
                ["cargo", "update", "--manifest-path", str(source / "Cargo.toml")]
                + ["-p", dependency, "--precise", precise],
                check=True,
            )
        what = ["--path", str(source)]
    subprocess.run(
        ["cargo", "install", "--locked", "--root", str(target), *options, *what], check=True
    )
    for scratch in ("src", "fetch"):
        shutil.rmtree(target / scratch, ignore_errors=True)
    (target / DONE).write_text(_versions() + "\n")
    for stale in root.glob(f"{name}-*"):
        if stale != target and stale.name[len(name) + 1 :].isalnum():
            shutil.rmtree(stale, ignore_errors=True)
    return target / "bin", time.monotonic() - started


def build(name: str, root: Path | None = None) -> tuple[Path, float]:
    """The bin directory of peer C{name}, built if not cached; and the build's seconds."""
    root = root or cacheRoot()
    try:
        if (HERE / name / "cargo.txt").exists():
            return cargoBuild(name, root)
        return gobuild.build(name, HERE, root)
    except subprocess.CalledProcessError:
        for unfinished in root.glob(f"{name}-*"):
            if not (unfinished / DONE).exists():
                shutil.rmtree(unfinished, ignore_errors=True)  # nothing usable in it
        raise


def cached(name: str, root: Path | None = None) -> Path | None:
    """The bin directory of peer C{name} if it is built for its current pin."""
    root = root or cacheRoot()
    if (HERE / name / "cargo.txt").exists():
        target = root / f"{name}-{cargoKey(name)}"
        return target / "bin" if (target / DONE).exists() else None
    return gobuild.cached(name, HERE, root)


def main(argv: list[str]) -> int:
    keepGoing = "--keep-going" in argv
    names = [arg for arg in argv if arg != "--keep-going"] or peers()
    unknown = [name for name in names if name not in peers()]
    if unknown:
        print(
            f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(peers())}", file=sys.stderr
        )
        return 2
    failed = []
    for name in names:
        try:
            binaries, seconds = build(name)
        except subprocess.CalledProcessError as e:
            print(f"{name}: build failed ({e})", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        how = f"built in {seconds:.0f} s" if seconds else "cached"
        print(f"{name}={binaries}  # {how}", flush=True)
    if failed:
        print(f"not built: {', '.join(failed)} (errors above)", file=sys.stderr, flush=True)
    return 1 if failed and not keepGoing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
