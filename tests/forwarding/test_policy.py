"""
Forwarding policies: the built-ins, how answers of every shape are
normalised, and how custom policies are found (by import path and as
Twisted plugins), including the example in C{examples/metrics_only.py}.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from tests.pki import temporaryDirectory
from twisted_tunnel.forwarding.config import Listener
from twisted_tunnel.forwarding.policy import (
    BUILTIN_POLICIES,
    Carrier,
    ForwardingDecision,
    ForwardingRefused,
    ForwardingRequest,
    HTTPPolicy,
    HTTPSPolicy,
    IForwardingPolicy,
    LocalhostPolicy,
    PolicyError,
    TCPPolicy,
    decide,
    decidesPerConnection,
    findPolicy,
    loadPolicy,
    pluginPolicies,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


def request(**kw: Any) -> ForwardingRequest:
    fields: dict[str, Any] = {
        "node": "edge-1",
        "nodeIPs": ("10.0.0.5", "10.0.0.6"),
        "address": "edge-1",
        "port": 10250,
        "listener": "https",
    }
    fields.update(kw)
    return ForwardingRequest(**fields)


class _Answers:
    """A policy whose answer takes whatever shape the test gives it."""

    name = "answers"

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def decide(self, request: ForwardingRequest) -> Any:
        return self.answer


class BuiltinTests(SynchronousTestCase):
    def test_provideTheInterface(self) -> None:
        for policy in [*BUILTIN_POLICIES.values(), LocalhostPolicy(HTTPPolicy())]:
            self.assertTrue(verifyObject(IForwardingPolicy, policy))

    def test_carriers(self) -> None:
        for policy, carrier in [
            (HTTPPolicy(), Carrier.HTTP),
            (HTTPSPolicy(), Carrier.HTTPS),
            (TCPPolicy(), Carrier.RAW),
        ]:
            decision = self.successResultOf(decide(policy, request()))
            self.assertEqual(decision, ForwardingDecision("10.0.0.5", 10250, carrier))

    def test_hostIsTheIPAskedFor(self) -> None:
        """A client that asked for one of the node's IPs gets that IP dialed."""
        decision = self.successResultOf(decide(HTTPPolicy(), request(address="10.0.0.6")))
        self.assertEqual(decision.host, "10.0.0.6")

    def test_nodeWithoutIPsGoesToLoopback(self) -> None:
        decision = self.successResultOf(decide(HTTPPolicy(), request(nodeIPs=())))
        self.assertEqual(decision.host, "127.0.0.1")

    def test_localhostComposes(self) -> None:
        """
        10250 is https *and* localhost by default: TLS again, to the node's
        loopback, and a request routed on its own carries a loopback C{Host}.
        """
        policy = LocalhostPolicy(HTTPSPolicy())
        self.assertEqual(policy.name, "localhost+https")
        decision = self.successResultOf(decide(policy, request(method=b"GET", target=b"/")))
        self.assertEqual(
            decision, ForwardingDecision("127.0.0.1", 10250, Carrier.HTTPS, b"127.0.0.1:10250")
        )

    def test_localhostForAWholeConnection(self) -> None:
        """
        Decided for a whole connection (no method: it will be relayed as
        bytes), the localhost policy asks for no C{Host} rewrite, and it
        decides per connection as its inner policy does.
        """
        policy = LocalhostPolicy(HTTPSPolicy())
        decision = self.successResultOf(decide(policy, request()))
        self.assertEqual(decision, ForwardingDecision("127.0.0.1", 10250, Carrier.HTTPS))
        self.assertTrue(decidesPerConnection(policy))
        self.assertFalse(decidesPerConnection(LocalhostPolicy(_Answers(decision))))  # type: ignore[arg-type]

    def test_builtinsDecidePerConnection(self) -> None:
        """The built-ins promise it; a policy that says nothing decides per request."""
        for policy in BUILTIN_POLICIES.values():
            self.assertTrue(decidesPerConnection(policy), policy.name)
        self.assertFalse(decidesPerConnection(_Answers(None)))  # type: ignore[arg-type]

    def test_localhostRawHasNoHostHeader(self) -> None:
        decision = self.successResultOf(decide(LocalhostPolicy(TCPPolicy()), request(port=9000)))
        self.assertEqual(decision, ForwardingDecision("127.0.0.1", 9000, Carrier.RAW))


class DecideTests(SynchronousTestCase):
    """Plain values, Deferreds and coroutines all become a Deferred decision."""

    decision = ForwardingDecision("10.0.0.5", 9100, Carrier.HTTP)

    def test_plainValue(self) -> None:
        self.assertEqual(
            self.successResultOf(decide(_Answers(self.decision), request())), self.decision
        )

    def test_deferred(self) -> None:
        pending: Deferred[ForwardingDecision] = Deferred()
        result = decide(_Answers(pending), request())
        self.assertNoResult(result)
        pending.callback(self.decision)
        self.assertEqual(self.successResultOf(result), self.decision)

    def test_coroutine(self) -> None:
        decision = self.decision

        class Async:
            name = "async"

            async def decide(self, request: ForwardingRequest) -> ForwardingDecision:
                return await succeed(decision)

        self.assertEqual(self.successResultOf(decide(Async(), request())), decision)  # type: ignore[arg-type]

    def test_refusal(self) -> None:
        class No:
            name = "no"

            def decide(self, request: ForwardingRequest) -> ForwardingDecision:
                raise ForwardingRefused(403, "not today")

        failure = self.failureResultOf(decide(No(), request()), ForwardingRefused)  # type: ignore[arg-type]
        self.assertEqual((failure.value.status, failure.value.reason), (403, "not today"))

    def test_notADecision(self) -> None:
        """A policy that answers something else is a bug, reported as one."""
        failure = self.failureResultOf(decide(_Answers("10.0.0.5"), request()), TypeError)  # type: ignore[arg-type]
        self.assertIn("'answers' returned '10.0.0.5'", str(failure.value))


class FindingTests(SynchronousTestCase):
    def setUp(self) -> None:
        sys.path.insert(0, EXAMPLES)
        self.addCleanup(sys.path.remove, EXAMPLES)
        self.addCleanup(sys.modules.pop, "metrics_only", None)

    def test_builtinByName(self) -> None:
        self.assertIs(findPolicy("https", plugins={}), BUILTIN_POLICIES["https"])

    def test_everyListenerHasItsBuiltin(self) -> None:
        """Each listener's ports default to the built-in policy named like it."""
        for listener in Listener:
            self.assertEqual(BUILTIN_POLICIES[listener].name, listener.value)
        self.assertEqual(sorted(BUILTIN_POLICIES), sorted(Listener))

    def test_byImportPath(self) -> None:
        """L{loadPolicy} (for C{--policy}, never for the ConfigMap) imports a policy."""
        policy = loadPolicy("metrics_only:policy")
        self.assertEqual(policy.name, "metrics-only")

    def test_importPathIsNotAName(self) -> None:
        """L{findPolicy} only looks names up: an import path is an unknown name."""
        with self.assertRaises(PolicyError) as caught:
            findPolicy("metrics_only:policy", plugins={})
        self.assertIn("no policy named 'metrics_only:policy'", str(caught.exception))
        self.assertIn("--policy NAME=package.module:attribute", str(caught.exception))
        self.assertNotIn("metrics_only", sys.modules)

    def test_factoryByImportPath(self) -> None:
        """An attribute that is a class (or any factory) is called to make the policy."""
        self.assertEqual(loadPolicy("metrics_only:MetricsOnly").name, "metrics-only")

    def test_badSpecs(self) -> None:
        for spec, words in [
            ("metrics_only", "expected package.module:attribute"),
            ("nosuchmodule_xyz:policy", "cannot import nosuchmodule_xyz"),
            ("metrics_only:nothing", "metrics_only has no nothing"),
            ("os:sep", "does not provide IForwardingPolicy"),
            (":policy", "expected package.module:attribute"),
        ]:
            with self.assertRaises(PolicyError) as caught:
                loadPolicy(spec)
            self.assertIn(words, str(caught.exception), spec)

    def test_unknownName(self) -> None:
        with self.assertRaises(PolicyError) as caught:
            findPolicy("metrics_only", plugins={})
        self.assertEqual(
            str(caught.exception), "no policy named 'metrics_only' (known: http, https, tcp)"
        )

    def test_byPluginName(self) -> None:
        """A policy shipped as a Twisted plugin is found by its name."""
        directory = temporaryDirectory(self)
        package = os.path.join(directory, "tt_policy_plugins")
        os.mkdir(package)
        with open(os.path.join(package, "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(package, "metrics.py"), "w") as f:
            f.write("from metrics_only import policy\n")
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, "tt_policy_plugins", None)
        self.addCleanup(sys.modules.pop, "tt_policy_plugins.metrics", None)
        plugins = __import__("tt_policy_plugins")
        self.assertIsInstance(plugins, types.ModuleType)
        found = pluginPolicies(plugins)
        self.assertEqual(list(found), ["metrics-only"])
        self.assertIs(findPolicy("metrics-only", plugins=found), found["metrics-only"])


class MetricsOnlyExampleTests(SynchronousTestCase):
    """The example custom policy in C{examples/metrics_only.py}."""

    def setUp(self) -> None:
        sys.path.insert(0, EXAMPLES)
        self.addCleanup(sys.path.remove, EXAMPLES)
        self.addCleanup(sys.modules.pop, "metrics_only", None)
        self.policy = loadPolicy("metrics_only:policy")

    def test_metricsPass(self) -> None:
        for target in (b"/metrics", b"/metrics?name[]=up"):
            asked = request(port=9100, listener="http", method=b"GET", target=target)
            decision = self.successResultOf(decide(self.policy, asked))
            self.assertEqual(decision, ForwardingDecision("10.0.0.5", 9100, Carrier.HTTP))

    def test_everythingElseRefused(self) -> None:
        for method, target in [(b"POST", b"/metrics"), (b"GET", b"/"), (b"GET", b"/metricsx")]:
            asked = request(port=9100, listener="http", method=method, target=target)
            failure = self.failureResultOf(decide(self.policy, asked), ForwardingRefused)
            self.assertEqual(failure.value.status, 403)
            self.assertIn("only GET /metrics may reach port 9100", failure.value.reason)
