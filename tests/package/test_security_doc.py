# -*- test-case-name: tests.package.test_security_doc -*-
"""
docs/security.md is the threat model: every "cannot" it claims names the
test that proves it.  This checks that each named test exists, so the
document cannot drift from the suite (a renamed or deleted test fails
here, not silently in the reader's trust).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"

#: C{tests/layer/test_x.py::Class} or C{tests/layer/test_x.py::Class::test_name}
_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:::(\w+))?`")


@cache
def _definitions(path: str) -> dict[str, set[str]]:
    """The classes of a test module, each with the names of its methods."""
    tree = ast.parse((ROOT / path).read_text(), path)
    return {
        node.name: {
            item.name
            for item in node.body
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }


def _claimRows(text: str) -> list[str]:
    """The rows of the tables under "What each actor can and cannot do"."""
    section = text.split("## What each actor can and cannot do", 1)[1].split("\n## ", 1)[0]
    return [
        line
        for line in section.splitlines()
        if line.startswith("|") and not set(line) <= set("|-: ") and "proved by" not in line
    ]


class SecurityDocTests(SynchronousTestCase):
    def test_referencesExist(self) -> None:
        """Every test the threat model names is a test in the suite."""
        text = DOC.read_text()
        references = _REFERENCE.findall(text)
        self.assertGreater(len(references), 40)
        missing = []
        for path, cls, method in references:
            if not (ROOT / path).exists():
                missing.append(f"{path} (no such file)")
                continue
            classes = _definitions(path)
            if cls not in classes:
                missing.append(f"{path}::{cls}")
            elif method and method not in classes[cls]:
                missing.append(f"{path}::{cls}::{method}")
        self.assertEqual(missing, [])

    def test_everyClaimHasATest(self) -> None:
        """Every row of the claims tables names at least one test."""
        rows = _claimRows(DOC.read_text())
        self.assertGreater(len(rows), 20)
        untested = [row for row in rows if not _REFERENCE.search(row)]
        self.assertEqual(untested, [])

    def test_everyFindingIsListed(self) -> None:
        """Issue 12's twenty-two findings each have a line in the findings table."""
        text = DOC.read_text()
        section = text.split("## Findings fixed", 1)[1].split("\n## ", 1)[0]
        numbers = {int(n) for n in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
        self.assertEqual(numbers, set(range(1, 23)))

    def test_linkedFromTheReadme(self) -> None:
        self.assertIn("docs/security.md", (ROOT / "README.md").read_text())
