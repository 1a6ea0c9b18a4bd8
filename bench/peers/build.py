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


#: Go modules of our own that the benchmark builds with the same machinery
#: (name -> the folder that holds the module's folder): the CONNECT load generator.
TOOLS = {"loadgen": REPO / "bench"}

#: A peer whose folder holds this file is not built: its text says why (the
#: registry's refusal, as it was answered), so that `make peers` does not ask
#: the registry again on every run.  Delete the file to try once more.
REFUSED = "refused.txt"


def goPeers() -> list[str]:
    return gobuild.components(HERE)


def cargoPeers() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / "cargo.txt").exists())


def refusedPeers() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / REFUSED).exists())


def peers() -> list[str]:
    return sorted(set(goPeers() + cargoPeers() + refusedPeers()))


def buildable() -> list[str]:
    """What C{make peers} builds: every peer, and the tools of L{TOOLS}."""
    return peers() + sorted(TOOLS)


def version(name: str) -> str:
    """
    The pinned version of peer C{name}: of the module its C{build.txt}'s
    first package belongs to (as C{go.mod} requires it), or the crate's
    version in C{cargo.txt}; "?" if neither says.
    """
    folder = HERE / name
    if (folder / "cargo.txt").exists():
        (crate, pinned, *_), _ = cargoSpec(name)
        return pinned
    if not (folder / "build.txt").exists() or not (folder / "go.mod").exists():
        return "?"
    packages = [
        line.strip()
        for line in (folder / "build.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    best = ("", "?")
    for line in (folder / "go.mod").read_text().splitlines():
        words = line.replace("require", "").split()
        if len(words) >= 2 and words[1].startswith("v") and packages:
            module = words[0]
            if packages[0].startswith(module) and len(module) > len(best[0]):
                best = (module, words[1])
    return best[1]


class Refused(Exception):
    """The peer is known not to build here (its C{refused.txt} says why)."""


def refused(name: str) -> str | None:
    """Why C{name} is not built, from its C{refused.txt} (comment lines left out)."""
    path = HERE / name / REFUSED
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return " ".join(" ".join(lines).split())


def failure(name: str, root: Path | None = None) -> str | None:
    """
    Why C{name} is not built, if it is not: its C{refused.txt}, or the last
    lines of the error of its last failed build (kept by L{main} in the
    cache as C{<name>.failed}), or that it was never built.
    """
    why = refused(name)
    if why:
        return why
    if cached(name, root) is not None:
        return None
    failed = (root or cacheRoot()) / f"{name}.failed"
    if failed.exists():
        return " / ".join(failed.read_text().split("\n")).strip(" /")
    return "never built (make peers)"


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
    why = refused(name)
    if why:
        raise Refused(why)
    if name in TOOLS:
        return gobuild.build(name, TOOLS[name], root)
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
    if refused(name):
        return None
    if name in TOOLS:
        return gobuild.cached(name, TOOLS[name], root)
    if (HERE / name / "cargo.txt").exists():
        target = root / f"{name}-{cargoKey(name)}"
        return target / "bin" if (target / DONE).exists() else None
    return gobuild.cached(name, HERE, root)


def buildOne(name: str) -> int:
    """Build C{name} in this process: C{main} runs each build as a child of its own."""
    try:
        binaries, seconds = build(name)
    except Refused as e:
        print(f"{name}: not built: {e}", file=sys.stderr, flush=True)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"{name}: build failed ({e})", file=sys.stderr, flush=True)
        return 1
    how = f"built in {seconds:.0f} s" if seconds else "cached"
    print(f"{name}={binaries}  # {how}", flush=True)
    return 0


def _errorLines(output: str) -> str:
    """The lines of a failed build's output that say what went wrong (the last few)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or line.startswith("go: ")]
    return "\n".join((errors or lines)[-4:])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"] and len(argv) == 2:
        return buildOne(argv[1])
    keepGoing = "--keep-going" in argv
    names = [arg for arg in argv if arg != "--keep-going"] or buildable()
    unknown = [name for name in names if name not in buildable()]
    if unknown:
        print(
            f"unknown peer(s): {', '.join(unknown)}; known: {', '.join(buildable())}",
            file=sys.stderr,
        )
        return 2
    failed = []
    root = cacheRoot()
    for name in names:
        # A child per build, its standard error passed through and kept, so
        # that a failure's reason is there for the benchmark to show.
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--one", name],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stderr is not None
        output = []
        for line in child.stderr:
            sys.stderr.write(line)
            output.append(line)
        root.mkdir(parents=True, exist_ok=True)
        if child.wait():
            failed.append(name)
            (root / f"{name}.failed").write_text(_errorLines("".join(output)) + "\n")
        else:
            (root / f"{name}.failed").unlink(missing_ok=True)
    if failed:
        print(f"not built: {', '.join(failed)} (errors above)", file=sys.stderr, flush=True)
    return 1 if failed and not keepGoing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
