"""
The test tiers: C{pytest -m "not system"} runs the fast tier (in-memory
transports, C{Clock}, loopback sockets in this process); the system tier
starts real processes (the daemons under twistd, nginx, HAProxy, curl,
kube-apiserver, a child Python...), network namespaces or iptables.
C{make test} runs both.

The folders of C{tests/} follow the library's layers (C{tests/mux/} tests
C{twisted_tunnel/mux/}...); C{tests/package/} tests the package as a whole,
and everything under C{tests/system/} is a system test.  A few system tests
belong with their layer instead (the iptables rules applied in a namespace
sit next to the rules' text): L{SYSTEM_CLASSES} names them, by class.
"""

from __future__ import annotations

import pytest

#: The folder whose every test is a system test.
SYSTEM_PACKAGE = "tests.system"

#: Classes of other modules that are system tests, by module.
SYSTEM_CLASSES = {
    "tests.host.test_iptables": frozenset(
        {"LifecycleTests", "LegacyLifecycleTests", "DNATTests", "CheckAvailableTests"}
    ),
    "tests.tap.test_security_exposure": frozenset(
        {"FreshServerExposureTests", "PreroutingScopeTests"}
    ),
    "tests.package.test_public_api": frozenset({"DocsTests"}),
}


def isSystem(module: str, owner: str) -> bool:
    """Whether the test class C{owner} of the module named C{module} is a system test."""
    return module.startswith(SYSTEM_PACKAGE + ".") or owner in SYSTEM_CLASSES.get(module, ())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "system: starts real processes, namespaces or iptables (the slow tier)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module else ""
        owner = item.cls.__name__ if item.cls is not None else ""
        if isSystem(module, owner):
            item.add_marker(pytest.mark.system)
