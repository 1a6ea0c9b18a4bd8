"""
A child for L{tests.system.test_kube}: the watch bridge
(L{twisted_tunnel.kube.watch.Watch}) on a real reactor, watching Nodes by
label selector, as "node IPs from the API" will; each delivery is printed
as one JSON line.  C{stop} on stdin stops the watch (blocked on its
socket) and prints how long the stop took.

    usage: kube_probe.py KUBECONFIG LABEL_SELECTOR MAX_OBJECT_BYTES [WATCH_TIMEOUT]

C{KUBECONFIG} may be C{in-cluster:DIRECTORY}: the service account in that
directory, and C{KUBERNETES_SERVICE_HOST} and C{_PORT}, as in a pod.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from lightkube.core import decoders
from lightkube.resources.core_v1 import Node
from twisted.internet import reactor, stdio
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from twisted_tunnel.kube.client import KubeAccess, KubeClient
from twisted_tunnel.kube.watch import APISource, IWatchListener, Watch, WatchBounds, WatchTarget


def say(**fields: Any) -> None:
    # where each delivery runs: the reactor's thread (the main one here)
    fields["inReactor"] = threading.current_thread() is threading.main_thread()
    print(json.dumps(fields), flush=True)


def addresses(node: Any) -> list[str]:
    status = node.status
    return [a.address for a in (status.addresses or [])] if status else []


@implementer(IWatchListener)
class Printer:
    def listed(self, objects: Any, resourceVersion: str) -> None:
        say(event="listed", nodes={n.metadata.name: addresses(n) for n in objects})

    def changed(self, eventType: str, obj: Any) -> None:
        say(event="changed", type=eventType, name=obj.metadata.name, addresses=addresses(obj))

    def refused(self, eventType: str, name: str | None, size: int) -> None:
        say(event="refused", where=eventType, name=name, size=size)

    def broken(self, reason: str, retryIn: float) -> None:
        say(event="broken", reason=reason, retryIn=retryIn)


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"stop":
            started = time.monotonic()
            stopping = self.watch.stopService()
            assert stopping is not None

            def stopped(_: object) -> None:
                say(event="stopped", seconds=time.monotonic() - started)
                reactor.stop()  # type: ignore[attr-defined]

            stopping.addCallback(stopped)


def main(
    kubeconfig: str,
    selector: str,
    maxObjectBytes: str,
    watchTimeout: str = "60",
) -> None:
    kind, _, directory = kubeconfig.partition(":")
    if kind == "in-cluster":
        access = KubeAccess(serviceAccountDir=directory)
    else:
        access = KubeAccess(kubeconfig=kubeconfig)
    client = KubeClient(access, reactor)
    say(event="client", server=client.server)
    watch = Watch(
        reactor,
        APISource(client, WatchTarget(Node, labelSelector=selector)),
        Printer(),
        lambda raw: decoders.decode_object(raw, Node),
        bounds=WatchBounds(
            maxObjectBytes=int(maxObjectBytes),
            watchTimeout=(int(watchTimeout), int(watchTimeout)),
        ),
    )
    stdio.StandardIO(Commands(watch))
    reactor.callWhenRunning(watch.startService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    client.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
