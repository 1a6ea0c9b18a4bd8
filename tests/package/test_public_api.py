# -*- test-case-name: tests.package.test_public_api -*-
"""
The public API (C{twisted_tunnel/__init__.py}): every name is there,
documented and loaded lazily; the snippets that document it run; and the
API documentation builds (pydoctor, with the settings in C{tox.ini}).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import twisted_tunnel
from tests.pki import TestPKI, temporaryDirectory

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INIT = os.path.join(REPO_ROOT, "twisted_tunnel", "__init__.py")

PUBLIC = [name for name in twisted_tunnel.__all__ if name != "__version__"]


def run(code: str) -> subprocess.CompletedProcess[str]:
    """Run C{code} in a fresh interpreter, so that nothing is imported yet."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def typeCheckingImports() -> dict[str, str]:
    """Name to module, as the C{if TYPE_CHECKING:} block of C{__init__.py} imports them."""
    with open(INIT) as f:
        tree = ast.parse(f.read())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                assert statement.level == 1, ast.unparse(statement)  # from .module import
                for alias in statement.names:
                    found[alias.asname or alias.name] = statement.module or ""
    return found


def literalBlocks(docstring: str) -> list[str]:
    """The code blocks of an epytext docstring: the indented lines after a C{::}."""
    blocks = []
    lines = inspect.cleandoc(docstring).splitlines()
    for i, line in enumerate(lines):
        if line.endswith("::"):
            block = []
            for following in lines[i + 1 :]:
                if following and not following.startswith(" "):
                    break
                block.append(following)
            blocks.append(textwrap.dedent("\n".join(block)).strip())
    return blocks


class NamesTests(SynchronousTestCase):
    """Each public name is importable, documented, and where the table says."""

    def test_everyNameImports(self) -> None:
        for name in twisted_tunnel.__all__:
            value = getattr(twisted_tunnel, name)
            self.assertIsNotNone(value, name)
        namespace: dict[str, Any] = {}
        exec("from twisted_tunnel import *", namespace)
        self.assertTrue(set(twisted_tunnel.__all__) <= set(namespace))

    def test_everyNameDocumented(self) -> None:
        """A docstring of its own, not one inherited from a base class or C{object}."""
        for name in PUBLIC:
            value = getattr(twisted_tunnel, name)
            doc = value.__dict__.get("__doc__") if isinstance(value, type) else value.__doc__
            self.assertTrue(doc and doc.strip(), f"twisted_tunnel.{name} has no docstring")

    def test_sourcesAgree(self) -> None:
        """
        The lazy table, the C{TYPE_CHECKING} imports (what mypy and pydoctor
        read) and C{__all__} name the same things, from the same modules.
        """
        sources = twisted_tunnel._SOURCES
        self.assertEqual(sorted(sources), sorted(PUBLIC))
        self.assertEqual(typeCheckingImports(), sources)
        for name, module in sources.items():
            value = getattr(importlib.import_module(f"twisted_tunnel.{module}"), name)
            self.assertIs(getattr(twisted_tunnel, name), value)

    def test_unknownName(self) -> None:
        with self.assertRaises(AttributeError) as caught:
            twisted_tunnel.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
        self.assertIn("NoSuchThing", str(caught.exception))
        self.assertFalse(hasattr(twisted_tunnel, "noSuchThing"))

    def test_dir(self) -> None:
        self.assertTrue(set(twisted_tunnel.__all__) <= set(dir(twisted_tunnel)))

    def test_frontPageNamesEveryName(self) -> None:
        """The package docstring (the API docs' front page) links every public name."""
        doc = twisted_tunnel.__doc__ or ""
        for name in PUBLIC:
            self.assertIn(f"L{{{name}}}", doc)


class ImportCostTests(SynchronousTestCase):
    """Importing the package imports nothing else; the codec stays light."""

    def test_wireAlone(self) -> None:
        """
        C{twisted_tunnel.wire} (the sans-IO codec) pulls in no other module
        of the package (but the package face's C{_version}, a constant),
        no TLS, and no reactor.
        """
        done = run(
            "import sys, twisted_tunnel.wire\n"
            "print(sorted(m for m in sys.modules if m.startswith('twisted_tunnel')))\n"
            "print(sorted(m for m in ('OpenSSL', 'cryptography', 'twisted.internet.reactor') "
            "if m in sys.modules))\n"
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            done.stdout.splitlines(),
            ["['twisted_tunnel', 'twisted_tunnel._version', 'twisted_tunnel.wire']", "[]"],
        )

    def test_everyNameWithoutReactor(self) -> None:
        """Using every public name does not import (so install) the global reactor."""
        done = run(
            "import sys, twisted_tunnel\n"
            "for name in twisted_tunnel.__all__: getattr(twisted_tunnel, name)\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        self.assertEqual((done.returncode, done.stdout.strip()), (0, "False"), done.stderr)

    def test_submodulesImportVersion(self) -> None:
        """The modules that send C{__version__} (from C{_version}) import first, alone."""
        for module in ("agent", "server", "metrics"):
            done = run(f"import twisted_tunnel.{module}")
            self.assertEqual(done.returncode, 0, done.stderr)


class SnippetTests(SynchronousTestCase):
    """The code in the README's library section and on the API's front page."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pki = TestPKI()

    def readmeSnippet(self) -> str:
        with open(os.path.join(REPO_ROOT, "README.md")) as f:
            readme = f.read()
        section = readme.split("## The library", 1)[1]
        match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
        assert match is not None, "no python block in the README's library section"
        return match.group(1)

    def test_readme(self) -> None:
        namespace: dict[str, Any] = {
            "reactor": self.reactor,
            "credentials": self.pki.credentials(self.pki.server),
        }
        exec(self.readmeSnippet(), namespace)
        self.assertTrue(IStreamClientEndpoint.providedBy(namespace["endpoint"]))

    def test_frontPageCompiles(self) -> None:
        blocks = literalBlocks(twisted_tunnel.__doc__ or "")
        self.assertEqual(len(blocks), 4)
        for block in blocks:
            compile(block, "<twisted_tunnel docstring>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

    def test_frontPageServerAndPolicy(self) -> None:
        """
        The server snippet loads its files and listens; the policy snippet
        binds C{examples/metrics_only.py} to a port and listens with it.
        """
        serverBlock, _, _, policyBlock = literalBlocks(twisted_tunnel.__doc__ or "")
        directory = temporaryDirectory(self)
        self.pki.writeTo(directory)
        sys.path.insert(0, os.path.join(REPO_ROOT, "examples"))
        self.addCleanup(sys.path.remove, os.path.join(REPO_ROOT, "examples"))
        self.addCleanup(sys.modules.pop, "metrics_only", None)
        namespace: dict[str, Any] = {"reactor": self.reactor}
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        exec(serverBlock, namespace)
        exec("from twisted_tunnel import *\n" + policyBlock, namespace)
        self.assertEqual([port for port, *_ in self.reactor.tcpServers], [10262, 10264])
        self.assertEqual(namespace["table"].custom()[9100].name, "metrics-only")
        self.assertIs(namespace["router"].table, namespace["table"])


class DocsTests(SynchronousTestCase):
    """C{tox -e docs} and C{make docs}: pydoctor, configured in C{tox.ini}."""

    def test_sameCommand(self) -> None:
        with open(os.path.join(REPO_ROOT, "tox.ini")) as f:
            tox = f.read()
        with open(os.path.join(REPO_ROOT, "Makefile")) as f:
            makefile = f.read()
        self.assertIn("pydoctor --config=tox.ini", tox.split("[testenv:docs]", 1)[1])
        self.assertIn("pydoctor --config=tox.ini", makefile.split("\ndocs:", 1)[1])

    def test_pydoctor(self) -> None:
        """
        The API docs build, and the front page has no warning: every name
        it links resolves.  (Other modules still have warnings, so the
        build does not fail on warnings yet.)
        """
        try:
            importlib.import_module("pydoctor")
        except ImportError:
            raise SkipTest("pydoctor is not installed (it is in the dev extra)") from None
        output = tempfile.mkdtemp(prefix="apidocs-")
        self.addCleanup(shutil.rmtree, output, True)
        done = subprocess.run(
            [sys.executable, "-m", "pydoctor", "--config=tox.ini", f"--html-output={output}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        output_ = done.stdout + done.stderr
        warnings = [line for line in output_.splitlines() if line.startswith(INIT + ":")]
        self.assertEqual(warnings, [])
        with open(os.path.join(output, "twisted_tunnel.html")) as f:
            front = f.read()
        self.assertIn("Register a forwarding policy", front)
