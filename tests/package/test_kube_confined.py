"""
The library's core stays free of Kubernetes: only C{twisted_tunnel/kube/}
imports lightkube, only it and the daemons (C{twisted_tunnel/tap/})
import C{twisted_tunnel.kube}, and the daemons only inside functions, once
an option asked for the API; so a program that imports the library, or
runs a daemon without those options, needs neither.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.package.test_layers import PACKAGE, modules

#: Third-party packages that only twisted_tunnel.kube may import.
KUBE_PACKAGES = ("lightkube", "httpx2", "msgspec")


def _imported(tree: ast.AST) -> list[tuple[ast.AST, str, int]]:
    """Every import in C{tree}: the node, the module it names, its level."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.append((node, node.module or "", node.level))
        elif isinstance(node, ast.Import):
            found += [(node, alias.name, 0) for alias in node.names]
    return found


def _absolute(module: str, name: str, level: int, isPackage: bool) -> str:
    if not level:
        return name
    parts = module.split(".") if isPackage else module.split(".")[:-1]
    base = parts[: len(parts) - level + 1]
    return ".".join(base + ([name] if name else []))


def violations() -> list[str]:
    wrong = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        folder = module.split(".")[1] if "." in module else ""
        topLevel = {id(node) for node in tree.body}
        for node, name, level in _imported(tree):
            target = _absolute(module, name, level, path.name == "__init__.py")
            kubeLibrary = target.split(".")[0] in KUBE_PACKAGES
            kubePackage = target == "twisted_tunnel.kube" or target.startswith(
                "twisted_tunnel.kube."
            )
            if not (kubeLibrary or kubePackage) or folder == "kube":
                continue
            if kubeLibrary:
                wrong.append(f"{module} imports {target}")
            elif folder != "tap":
                wrong.append(f"{module} imports {target}")
            elif id(node) in topLevel:
                wrong.append(f"{module} imports {target} at module level")
    return wrong


class KubeConfinementTests(SynchronousTestCase):
    def test_onlyKubeAndTheDaemons(self) -> None:
        """
        No module outside C{kube/} imports lightkube (or its transport), no
        module outside C{kube/} and C{tap/} imports C{twisted_tunnel.kube},
        and C{tap/} does so only inside functions.
        """
        self.assertTrue((PACKAGE / "kube" / "watch.py").exists())
        self.assertEqual(violations(), [])

    def test_catchesAViolation(self) -> None:
        """The check can fail: an upward import from the core is found."""
        source = "from ..kube.watch import Watch\nimport lightkube\n"
        tree = ast.parse(source)
        targets = [
            _absolute("twisted_tunnel.forwarding.config", name, level, False)
            for _, name, level in _imported(tree)
        ]
        self.assertEqual(targets, ["twisted_tunnel.kube.watch", "lightkube"])

    def test_daemonsImportNoKubernetes(self) -> None:
        """
        Importing the library and both daemons' modules, and parsing the
        server's options, loads no lightkube (checked in a fresh Python).
        """
        code = (
            "import sys, twisted_tunnel, twisted_tunnel.tap.server, twisted_tunnel.tap.agent\n"
            "from twisted_tunnel.tap.server import Options\n"
            "Options().parseOptions(['--ca', 'a', '--cert', 'b', '--key', 'c'])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{KUBE_PACKAGES!r} or m.startswith('twisted_tunnel.kube'))\n"
            "print(loaded)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        self.assertEqual(done.stdout.strip(), "[]", done.stderr)
