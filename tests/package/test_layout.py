"""
The tests follow the library's layers: C{tests/<layer>/} tests
C{twisted_tunnel/<layer>/}, C{tests/package/} the package as a whole, and
C{tests/system/} the worlds that start real processes.  This keeps the
pointers into that tree honest: the C{test-case-name} headers (what
C{trial} runs for a source file) and the system tests C{conftest.py}
marks by name.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.conftest import SLOW_TESTS, SYSTEM_PACKAGE, SYSTEM_TESTS
from tests.package.test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: C{# -*- test-case-name: tests.a.test_b, tests.c.test_d -*-}
_HEADER = re.compile(r"^# -\*- test-case-name: (.+?) -\*-$")

#: The folders of tests/ that are not a layer of the library.
_OTHER_FOLDERS = {"package", SYSTEM_PACKAGE.rpartition(".")[2], "interop"}


def _moduleExists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _headers() -> dict[Path, list[str]]:
    """The modules each source file's test-case-name header names, by file."""
    found = {}
    for top in (ROOT / "twisted_tunnel", TESTS):
        for path in sorted(top.rglob("*.py")):
            first = path.read_text().split("\n", 1)[0]
            match = _HEADER.match(first)
            if match:
                found[path] = [name.strip() for name in match.group(1).split(",")]
    return found


class TestCaseNameTests(SynchronousTestCase):
    def test_headersNameTestModules(self) -> None:
        """Every test-case-name header names test modules that exist."""
        headers = _headers()
        self.assertGreater(len(headers), 40)
        missing = [
            f"{path.relative_to(ROOT)}: {name}"
            for path, names in headers.items()
            for name in names
            if not (name.startswith("tests.") and _moduleExists(name))
        ]
        self.assertEqual(missing, [])


class FolderTests(SynchronousTestCase):
    def test_noFlatTestModules(self) -> None:
        """No test module sits at the top of tests/: each is in a folder."""
        self.assertEqual(sorted(p.name for p in TESTS.glob("test_*.py")), [])

    def test_foldersAreLayers(self) -> None:
        """Each folder of test modules is a layer of the library, or package/ or system/."""
        layers = {name for layer in LAYERS for name in layer}
        folders = {p.parent.name for p in TESTS.glob("*/test_*.py")}
        self.assertEqual(sorted(folders - layers - _OTHER_FOLDERS), [])

    def test_foldersArePackages(self) -> None:
        """
        Every folder holding test modules is a package, so that two modules
        of one name in two folders are two test modules, not one.
        """
        folders = {p.parent for p in TESTS.rglob("test_*.py")}
        self.assertEqual(sorted(str(f) for f in folders if not (f / "__init__.py").is_file()), [])


@cache
def _definedTests(path: Path) -> frozenset[str]:
    """The test classes, their tests (C{Class.test_x}) and the test functions of a module."""
    defined = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.ClassDef):
            defined.add(node.name)
            defined.update(
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and item.name.startswith("test")
            )
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test"):
                defined.add(node.name)
    return frozenset(defined)


def _missing(table: dict[str, frozenset[str]]) -> list[str]:
    missing = []
    for module, names in table.items():
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        if not path.is_file():
            missing.append(module)
            continue
        missing.extend(f"{module}: {name}" for name in sorted(names - _definedTests(path)))
    return missing


class NamedTestsTests(SynchronousTestCase):
    def test_systemTestsExist(self) -> None:
        """Every class or test conftest.py marks as system by name exists in that module."""
        self.assertEqual(_missing(SYSTEM_TESTS), [])

    def test_slowTestsExist(self) -> None:
        """Every class or test conftest.py marks as slow by name exists in that module."""
        self.assertEqual(_missing(SLOW_TESTS), [])

    def test_notInTheSystemFolder(self) -> None:
        """A module of tests/system/ is all system: naming its tests would say nothing."""
        named = [*SYSTEM_TESTS, *SLOW_TESTS]
        self.assertEqual([m for m in named if m.startswith(SYSTEM_PACKAGE + ".")], [])

    def test_slowIsNotSystem(self) -> None:
        """A test is system or slow, not both: slow is a part of the fast tier."""
        both = [
            f"{module}: {name}"
            for module, names in SLOW_TESTS.items()
            for name in sorted(names & SYSTEM_TESTS.get(module, frozenset()))
        ]
        self.assertEqual(both, [])
