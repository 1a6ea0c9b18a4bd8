"""
The import rule of C{docs/architecture.md}: the folders of C{twisted_tunnel}
are layers, a module imports only from its own folder and from the layers
below it, and nothing imports in a loop.

Read from the source (C{ast}), not by importing: every import counts, at
module level or inside a function, except those under C{TYPE_CHECKING},
which exist for annotations only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[2] / "twisted_tunnel"

#: The layers, lowest first: a layer is a folder (or a top-level module);
#: names on one line are one layer, whose members must not import each
#: other (the server and the agent are peers).
LAYERS: list[tuple[str, ...]] = [
    # the leaves: the codec, errors, and small helpers; they import only each other
    ("wire", "errors", "files", "_version", "_text", "_logthrottle"),
    ("net",),
    ("http",),
    ("mux",),
    ("tls",),
    ("metrics",),
    ("server", "agent"),
    ("forwarding",),
    ("doors",),
    ("host",),
    # the Kubernetes API (lightkube): only the daemons use it (see KubeConfinementTests)
    ("kube",),
    ("meta",),
    ("cli",),
    ("tap",),
]

#: The leaves are one folder for the rule: they may import each other.
LEAVES = LAYERS[0]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their C{__init__})."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _typeCheckingNodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    return skipped


def imports(
    name: str, source: str, known: dict[str, Path], isPackage: bool = False
) -> Iterator[str]:
    """The package's modules that C{name} (of C{source}) imports, outside C{TYPE_CHECKING}."""
    tree = ast.parse(source, name)
    skipped = _typeCheckingNodes(tree)
    package = name.split(".") if isPackage else name.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("twisted_tunnel"):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in known else target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("twisted_tunnel"):
                    yield alias.name


def layerOf(module: str) -> tuple[int, str] | None:
    """The rank of C{module}'s layer and its folder, or C{None} for the package face."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    folder = parts[1]
    for rank, members in enumerate(LAYERS):
        if folder in members:
            return rank, ("(leaves)" if members is LEAVES else folder)
    raise LookupError(module)


@cache
def graph() -> dict[str, frozenset[str]]:
    """Each module's imports of the package, parsed once for all the tests here."""
    known = modules()
    return {
        name: frozenset(
            target
            for target in imports(name, path.read_text(), known, path.name == "__init__.py")
            if target != name
        )
        for name, path in known.items()
    }


class ImportRuleTests(SynchronousTestCase):
    def test_everyModuleHasALayer(self) -> None:
        """A new folder or top-level module must be placed in L{LAYERS} (and the docs)."""
        unplaced = []
        for module in modules():
            try:
                layerOf(module)
            except LookupError:
                unplaced.append(module)
        self.assertEqual(unplaced, [])

    def test_downwardOnly(self) -> None:
        """No module imports from a layer above its own, or from a peer folder of its layer."""
        wrong = []
        for module, targets in sorted(graph().items()):
            mine = layerOf(module)
            if mine is None:
                continue  # the public face sits above everything
            for target in sorted(targets):
                theirs = layerOf(target)
                if theirs is None:
                    wrong.append(f"{module} imports the package face ({target})")
                elif theirs[1] != mine[1] and theirs[0] >= mine[0]:
                    wrong.append(f"{module} ({mine[1]}) imports {target} ({theirs[1]})")
        self.assertEqual(wrong, [])

    def test_noLoops(self) -> None:
        """No module reaches itself through its imports."""
        edges = graph()
        loops = []
        state: dict[str, int] = {}  # 1: on the path, 2: done

        def visit(module: str, path: list[str]) -> None:
            state[module] = 1
            for target in sorted(edges.get(module, ())):
                if state.get(target) == 1:
                    loops.append(" -> ".join([*path[path.index(target) :], target]))
                elif target not in state:
                    visit(target, [*path, target])
            state[module] = 2

        for module in sorted(edges):
            if module not in state:
                visit(module, [module])
        self.assertEqual(loops, [])

    def test_ruleCatchesAViolation(self) -> None:
        """The rule itself: an upward import is found, a C{TYPE_CHECKING} one is not."""
        source = (
            "from ..mux import Stream\n"
            "from .sockets import noDelay\n"
            "if TYPE_CHECKING:\n"
            "    from ..server import TunnelServer\n"
            "def later():\n"
            "    from twisted_tunnel.doors import connect\n"
        )
        found = sorted(imports("twisted_tunnel.net.relay", source, modules()))
        self.assertEqual(
            found,
            ["twisted_tunnel.doors.connect", "twisted_tunnel.mux", "twisted_tunnel.net.sockets"],
        )
        relay, mux = layerOf("twisted_tunnel.net.relay"), layerOf("twisted_tunnel.mux")
        assert relay is not None and mux is not None
        self.assertLess(relay[0], mux[0])
        self.assertEqual(layerOf("twisted_tunnel.wire"), (0, "(leaves)"))
        self.assertEqual(layerOf("twisted_tunnel.server.routes"), (6, "server"))
        self.assertEqual(layerOf("twisted_tunnel.agent"), (6, "agent"))
