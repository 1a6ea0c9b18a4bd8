# -*- test-case-name: tests.kube.test_events -*-
"""
L{EventPoster}: the Event it builds (what C{kubectl describe} matches on),
at most one post per key, and a post that fails logged and never raised.
Posting to the real kube-apiserver, and C{kubectl describe}:
L{tests.system.test_kube}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from tests.kube import unreachableKubeconfig
from twisted_tunnel.kube.client import KubeAccess, KubeClient
from twisted_tunnel.kube.events import MAX_MESSAGE, EventPoster, InvolvedObject

INVOLVED = InvolvedObject(
    kind="ConfigMap",
    apiVersion="v1",
    namespace="kube-system",
    name="edge-tunnel-server-cfg",
    uid="0b0e-uid",
    resourceVersion="42",
)


class EventPosterTests(TestCase):
    def poster(self) -> EventPoster:
        """A poster whose API is a loopback port nothing listens on."""
        path, _ = unreachableKubeconfig(self)
        client = KubeClient(KubeAccess(kubeconfig=path, timeout=5.0), reactor)
        self.addCleanup(client.stop)
        return EventPoster(client, "edge-tunnel-server", "replica-1")

    def test_event(self) -> None:
        """
        A core/v1 Event on the object (kind, namespace, name, uid,
        resourceVersion), from the component, its message bounded.
        """
        event = self.poster()._build(INVOLVED, "Warning", "ConfigRefused", "x" * 5000)
        involved = event.involvedObject  # type: ignore[attr-defined]
        self.assertEqual(
            (involved.kind, involved.namespace, involved.name, involved.uid),
            ("ConfigMap", "kube-system", "edge-tunnel-server-cfg", "0b0e-uid"),
        )
        self.assertEqual(involved.resourceVersion, "42")
        self.assertEqual(event.type, "Warning")  # type: ignore[attr-defined]
        self.assertEqual(event.reason, "ConfigRefused")  # type: ignore[attr-defined]
        self.assertEqual(len(event.message), MAX_MESSAGE)  # type: ignore[attr-defined]
        self.assertEqual(event.source.component, "edge-tunnel-server")  # type: ignore[attr-defined]
        self.assertEqual(event.metadata.generateName, "edge-tunnel-server-cfg.")  # type: ignore[attr-defined]
        self.assertEqual(event.metadata.namespace, "kube-system")  # type: ignore[attr-defined]

    async def test_failureLoggedOnceNeverRaised(self) -> None:
        """
        A post that fails (the API does not answer) fires C{False} with one
        warning; the same key is not posted again; another key is.
        """
        poster = self.poster()
        with capturedLogs() as events:
            first = await poster.post(INVOLVED, "Warning", "ConfigRefused", "m", key=("u", "42"))
            again = await poster.post(INVOLVED, "Warning", "ConfigRefused", "m", key=("u", "42"))
            other = await poster.post(INVOLVED, "Warning", "ConfigRefused", "m", key=("u", "43"))
        self.assertEqual((first, again, other), (False, False, False))
        self.assertEqual((poster.posted, poster.failed), (0, 2))
        lines = [formatEvent(e) for e in events if "could not post" in formatEvent(e)]
        self.assertEqual(len(lines), 2)
        self.assertTrue(
            lines[0].startswith(
                "could not post the ConfigRefused event on ConfigMap "
                "kube-system/edge-tunnel-server-cfg: ConnectError"
            ),
            lines[0],
        )
