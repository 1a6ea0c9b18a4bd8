"""
The test tiers: C{pytest -m "not system"} runs the fast tier (in-memory
transports, C{Clock}, loopback sockets in this process); the system tier
starts real processes (the daemons under twistd, nginx, HAProxy, curl,
kube-apiserver, a child Python...), network namespaces or iptables.
C{make test} runs both.  Within the fast tier, C{slow} marks the tests that
take a second or so in this process (L{SLOW_TESTS}): C{pytest -m "not system
and not slow"} is the loop of a few seconds.

The folders of C{tests/} follow the library's layers (C{tests/mux/} tests
C{twisted_tunnel/mux/}...); C{tests/package/} tests the package as a whole,
and everything under C{tests/system/} is a system test.  A few system tests
belong with their layer instead (the iptables rules applied in a namespace
sit next to the rules' text): L{SYSTEM_TESTS} names them, by class or test.
"""

from __future__ import annotations

import pytest

#: The folder whose every test is a system test.
SYSTEM_PACKAGE = "tests.system"

#: The system tests of other modules, by module: a class (all its tests) or
#: one test, C{Class.test_name}.  Each starts a process (a child Python, C{ss},
#: C{curl}, C{pydoctor}) or makes a network namespace or iptables rules.
SYSTEM_TESTS = {
    "tests.cli.test_cli": frozenset({"UsageTests.test_pythonDashM"}),
    "tests.doors.test_connect": frozenset(
        {
            "ConnectDoorTests.test_curlByName",
            "ConnectDoorTests.test_curlByIP",
            "ConnectDoorTests.test_curlUnknownNode",
        }
    ),
    "tests.forwarding.test_security_config": frozenset(
        {
            "AliasBombTests.test_bombRefusedInAChildWithLittleMemory",
            "UnsafeFileTests.test_devZeroEverywhereInAChild",
        }
    ),
    "tests.host.test_iptables": frozenset(
        {"LifecycleTests", "LegacyLifecycleTests", "DNATTests", "CheckAvailableTests"}
    ),
    "tests.meta.test_meta": frozenset({"MetricsTests.test_noGlobalReactor"}),
    "tests.net.test_origdst": frozenset({"NamespaceTests", "KitTests"}),
    "tests.package.test_kube_confined": frozenset(
        {"KubeConfinementTests.test_daemonsImportNoKubernetes"}
    ),
    "tests.package.test_public_api": frozenset({"ImportCostTests", "DocsTests"}),
    "tests.tap.test_security_exposure": frozenset(
        {"FreshServerExposureTests", "PreroutingScopeTests"}
    ),
    "tests.tap.test_tap": frozenset({"ListenBacklogTests.test_theKernelGetsIt"}),
    # they start openssl s_server
    "tests.tls.test_upstream_servers": frozenset({"OpenSSLServerTests"}),
}


#: Fast-tier tests that take a second or so each, by module, named as in
#: L{SYSTEM_TESTS} (a module-level test by its name): in this process, but
#: hypothesis properties of hundreds of examples, hundreds of MiB through
#: loopback TLS, 20,000 or 200,000 frames, or a pace checked in real time.
#: Each does what it must to prove its point; C{-m "not system and not slow"}
#: leaves them out, for a loop of a few seconds.
SLOW_TESTS = {
    "tests.agent.test_security_agent": frozenset(
        {"RefusedOpenLogFloodTests.test_notAllowedFlood"}
    ),
    "tests.doors.test_connect": frozenset({"ConnectDoorTests.test_openTimeout"}),
    "tests.doors.test_listeners": frozenset({"HTTPTests.test_streaming"}),
    "tests.forwarding.test_config": frozenset({"ParseTests.test_roundTrip"}),
    "tests.http.test_h1": frozenset(
        {
            "test_requests",
            "test_requestsSizedAnswers",
            "test_responses",
            "test_sending",
            "test_sendingRequests",
        }
    ),
    "tests.http.test_httpproxy": frozenset(
        {
            "ForwardingTests.test_streamingLines",
            "ForwardingTests.test_slowClientPausesUpstream",
            "ForwardingTests.test_slowUpstreamPausesClient",
            "RefusalTests.test_idleKeepAliveClosedQuietly",
        }
    ),
    "tests.package.test_fuzz": frozenset(
        {"WireFuzzTests.test_mutatedFrames", "HelloFuzzTests", "HTTPFuzzTests", "ConfigFuzzTests"}
    ),
    "tests.server.test_integration": frozenset({"ManyStreamsTests", "StalledReaderTests"}),
    "tests.server.test_security_streams": frozenset(
        {"OpenFloodTests.test_refusalsToANonReaderAreBounded"}
    ),
    # OpenSSL times sessions out in wall-clock seconds
    "tests.tls.test_upstream": frozenset({"ListenerResumptionTests.test_expired"}),
    "tests.wire.test_wire": frozenset(
        {
            "PropertyTests.test_roundTrip",
            "PropertyTests.test_frameShapedBytes",
            "PropertyTests.test_dataHeader",
        }
    ),
}


def named(table: dict[str, frozenset[str]], module: str, owner: str, name: str) -> bool:
    """Whether C{table} names the test C{name} (of class C{owner}, if any) of C{module}."""
    names = table.get(module, frozenset())
    return owner in names or (f"{owner}.{name}" if owner else name) in names


def isSystem(module: str, owner: str, name: str) -> bool:
    """Whether the test C{name} of class C{owner}, module C{module}, is a system test."""
    return module.startswith(SYSTEM_PACKAGE + ".") or named(SYSTEM_TESTS, module, owner, name)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "system: starts real processes, namespaces or iptables (the system tier)"
    )
    config.addinivalue_line(
        "markers", "slow: in this process, but a second or so (see conftest.SLOW_TESTS)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if item.module else ""
        owner = item.cls.__name__ if item.cls is not None else ""
        name = getattr(item, "originalname", None) or item.name
        if isSystem(module, owner, name):
            item.add_marker(pytest.mark.system)
        elif named(SLOW_TESTS, module, owner, name):
            item.add_marker(pytest.mark.slow)
