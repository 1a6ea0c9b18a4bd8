# -*- test-case-name: tests.kube.test_configmap -*-
"""
L{ConfigMapListener}: each version of the ConfigMap, as the watch delivers
it (lightkube's typed C{ConfigMap}), goes to the same L{ConfigIntake} the
file watcher feeds, with the same refusal line; a deletion keeps the last
good configuration.  The Events and the real watch: L{tests.system.test_kube}.
"""

from __future__ import annotations

from typing import Any

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_tunnel.forwarding.config import (
    ConfigIntake,
    ConfigWatcher,
    ProxyConfig,
    parseConfigData,
)
from twisted_tunnel.kube.configmap import ConfigMapListener, fingerprint, origin
from twisted_tunnel.kube.watch import IWatchListener

NAMESPACE, NAME = "kube-system", "edge-tunnel-server-cfg"


def configMap(data: dict[str, str] | None, version: str = "1", **extra: Any) -> ConfigMap:
    return ConfigMap(
        metadata=ObjectMeta(name=NAME, namespace=NAMESPACE, uid="u-1", resourceVersion=version),
        data=data,
        **extra,
    )


class ListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.applied: list[ProxyConfig] = []
        self.intake = ConfigIntake(
            origin(NAMESPACE, NAME), self.clock, parseConfigData({}), self.applied.append
        )
        self.listener = ConfigMapListener(self.intake, NAMESPACE, NAME, None)

    def test_interface(self) -> None:
        verifyObject(IWatchListener, self.listener)

    def test_applies(self) -> None:
        """Listed, then modified: each valid version applies; an unchanged one is not parsed."""
        with capturedLogs() as events:
            self.listener.listed([configMap({"http-proxy-ports": "9100"})], "1")
            self.listener.changed("MODIFIED", configMap({"http-proxy-ports": "9100"}, "2"))
            self.listener.changed("MODIFIED", configMap({"http-proxy-ports": "9100, 9101"}, "3"))
        self.assertEqual([c.httpPorts for c in self.applied], [{9100, 10255}, {9100, 9101, 10255}])
        lines = [formatEvent(e) for e in events if "reloaded" in formatEvent(e)]
        self.assertEqual(
            lines[0],
            "config reloaded from configmap kube-system/edge-tunnel-server-cfg: "
            "http ports 10255 → 9100, 10255",
        )
        self.assertEqual(self.intake.reloads, 2)

    def test_refusedAsForTheFile(self) -> None:
        """
        An invalid version: the last good configuration stays, the intake is
        stale, and the one log line is the file watcher's, with the
        ConfigMap's origin where the file's path would be.
        """
        self.listener.listed([configMap({"http-proxy-ports": "9100"})], "1")
        with capturedLogs() as events:
            self.listener.changed("MODIFIED", configMap({"http-proxy-ports": "9100, 70000"}, "2"))
            self.listener.changed(
                "MODIFIED", configMap({"http-proxy-ports": "9100, 70000"}, "3", binaryData=None)
            )
        self.assertEqual(len(self.applied), 1)
        self.assertTrue(self.intake.stale)
        (line,) = [formatEvent(e) for e in events]
        self.assertEqual(
            line,
            "config refused, the last good one stays active: configmap "
            "kube-system/edge-tunnel-server-cfg: key 'http-proxy-ports', value '9100, 70000': "
            "70000 is outside 1-65535",
        )
        (event,) = events
        self.assertEqual((event["key"], event["value"]), ("http-proxy-ports", "9100, 70000"))

    def test_sameRefusalAsTheFileWatcher(self) -> None:
        """The file watcher and this listener refuse the same data with the same reason."""
        data = {"http-proxy-ports": "9100", "https-proxy-ports": "9100"}
        self.listener.changed("MODIFIED", configMap(data))
        fileWatcher = ConfigWatcher("/nonexistent", self.clock, parseConfigData({}), print)
        refusal = fileWatcher.offer(fingerprint(data, None), lambda: data)
        assert refusal is not None and self.intake.staleReason is not None
        self.assertEqual(
            self.intake.staleReason.partition(": ")[2], str(refusal).partition(": ")[2]
        )

    def test_binaryDataRefused(self) -> None:
        """binaryData is refused as in a manifest file."""
        self.listener.changed("ADDED", configMap({}, binaryData={"x": "AAAA"}))
        self.assertIn("binaryData", self.intake.staleReason or "")

    def test_deletedKeepsTheLastGood(self) -> None:
        """A deletion keeps the configuration in force, said once; created again, it applies."""
        self.listener.listed([configMap({"http-proxy-ports": "9100"})], "1")
        with capturedLogs() as events:
            self.listener.changed("DELETED", configMap({"http-proxy-ports": "9100"}, "2"))
            self.listener.listed([], "3")
        (line,) = [formatEvent(e) for e in events]
        self.assertEqual(
            line,
            "configmap kube-system/edge-tunnel-server-cfg was deleted: the last good "
            "configuration stays in force (http 9100, 10255; https 10250; localhost 10250, "
            "10255, 10266, 10267; dnat none; tcp none)",
        )
        self.assertEqual(self.intake.current.httpPorts, {9100, 10255})
        self.assertFalse(self.intake.stale)
        self.listener.changed("ADDED", configMap({"http-proxy-ports": "9100"}, "4"))
        self.listener.changed("MODIFIED", configMap({"http-proxy-ports": "9102"}, "5"))
        self.assertEqual(self.intake.current.httpPorts, {9102, 10255})

    def test_oversized(self) -> None:
        """
        An object over the bound is refused (stale, last good kept); an
        oversized deletion is a deletion.
        """
        self.listener.listed([configMap({"http-proxy-ports": "9100"})], "1")
        self.listener.refused("MODIFIED", NAME, 5_000_000)
        self.assertTrue(self.intake.stale)
        self.assertIn("5000000 bytes", self.intake.staleReason or "")
        self.assertEqual(self.intake.current.httpPorts, {9100, 10255})
        self.listener.refused("DELETED", NAME, 5_000_000)
        self.assertIs(self.listener.present, False)

    def test_otherNamesIgnored(self) -> None:
        """Only the named ConfigMap counts (the field selector already says so)."""
        other = ConfigMap(metadata=ObjectMeta(name="other", namespace=NAMESPACE), data={"x": "y"})
        self.listener.changed("MODIFIED", other)
        self.listener.listed([other], "1")
        self.assertEqual(self.applied, [])
        self.assertIs(self.listener.present, False)
