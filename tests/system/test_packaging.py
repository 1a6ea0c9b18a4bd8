# -*- test-case-name: tests.system.test_packaging -*-
"""
Tests for how twisted-tunnel is packaged: the C{twistd} plugins.

The tap modules themselves (L{twisted_tunnel.tap.server},
L{twisted_tunnel.tap.agent}) are tested elsewhere; these tests never call
C{makeService}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import import_module

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.trial.unittest import SynchronousTestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPECTED = {
    # plugin module: (tapname, tap module)
    "twisted.plugins.edge_tunnel_server": ("edge-tunnel-server", "twisted_tunnel.tap.server"),
    "twisted.plugins.edge_tunnel_agent": ("edge-tunnel-agent", "twisted_tunnel.tap.agent"),
}


class PluginModuleTests(SynchronousTestCase):
    """
    Each plugin module exposes one L{IServiceMaker} for its tap module.
    """

    def test_pluginModulesProvideServiceMakers(self) -> None:
        for moduleName, (tapname, tapModule) in EXPECTED.items():
            module = import_module(moduleName)
            makers = [value for value in vars(module).values() if IServiceMaker.providedBy(value)]
            self.assertEqual(len(makers), 1, moduleName)
            maker = makers[0]
            # Not verifyObject: ServiceMaker's options and makeService are
            # properties that import the tap module, which is the point of
            # keeping the plugin inert.
            self.assertTrue(IPlugin.providedBy(maker))
            self.assertEqual(maker.tapname, tapname)
            self.assertEqual(maker.module, tapModule)  # type: ignore[attr-defined]
            self.assertTrue(maker.description)

    def test_getPluginsFindsBothTaps(self) -> None:
        tapnames = {maker.tapname for maker in getPlugins(IServiceMaker)}
        self.assertTrue(
            {"edge-tunnel-server", "edge-tunnel-agent"} <= tapnames,
            sorted(tapnames),
        )

    def test_twistedPluginsStillWork(self) -> None:
        """
        Our plugin directory extends C{twisted.plugins}; it does not shadow
        Twisted's own plugins.
        """
        tapnames = {maker.tapname for maker in getPlugins(IServiceMaker)}
        self.assertIn("web", tapnames)

    def test_noPackageInitShadowsTwisted(self) -> None:
        """
        The repository must never hold C{twisted/__init__.py} or
        C{twisted/plugins/__init__.py}: installed, either would replace
        Twisted's own.
        """
        for relative in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
            self.assertFalse(os.path.exists(os.path.join(REPO_ROOT, relative)), relative)

    def test_importDoesNotInstallReactor(self) -> None:
        """
        Importing the plugin modules must not import the global reactor
        (that would break C{twistd -r}).
        """
        code = (
            "import sys\n"
            "import twisted.plugins.edge_tunnel_server\n"
            "import twisted.plugins.edge_tunnel_agent\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor imported'\n"
            "assert 'twisted_tunnel.tap.server' not in sys.modules, 'tap imported eagerly'\n"
            "assert 'twisted_tunnel.tap.agent' not in sys.modules, 'tap imported eagerly'\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
