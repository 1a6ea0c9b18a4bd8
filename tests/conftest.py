"""
The test tiers: C{pytest -m "not system"} runs the fast tier (in-memory
transports, C{Clock}, loopback sockets in this process); the system tier
starts real processes (the daemons under twistd, nginx, HAProxy, curl,
kube-apiserver...), network namespaces or iptables.  C{make test} runs both.
"""

from __future__ import annotations

import pytest

#: Modules whose every test is a system test.
SYSTEM_MODULES = frozenset(
    {
        "test_bench_agents",
        "test_bench_streams",
        "test_daemons",
        "test_demo",
        "test_e2e",
        "test_examples",
        "test_ha",
        "test_interop",
        "test_manifests",
        "test_packaging",
        "test_rawproxy",
        "test_storm",
    }
)

#: Classes of other modules that are system tests, by module.
SYSTEM_CLASSES = {
    "test_iptables": frozenset(
        {"LifecycleTests", "LegacyLifecycleTests", "DNATTests", "CheckAvailableTests"}
    ),
    "test_security_exposure": frozenset({"FreshServerExposureTests", "PreroutingScopeTests"}),
    "test_public_api": frozenset({"DocsTests"}),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "system: starts real processes, namespaces or iptables (the slow tier)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        owner = item.cls.__name__ if item.cls is not None else ""
        if module in SYSTEM_MODULES or owner in SYSTEM_CLASSES.get(module, ()):
            item.add_marker(pytest.mark.system)
