# -*- test-case-name: tests.kube.test_configmap -*-
"""
The C{edge-tunnel-server-cfg} ConfigMap read through the API instead of a
mounted volume: a change applies as soon as kube-apiserver sends it (the
kubelet refreshes a volume a minute or more later), and a refused change
is also told as a Kubernetes Event on the ConfigMap, which
C{kubectl describe configmap} shows.

Each version is offered to the same L{ConfigIntake} the file watcher
feeds: the same checks, the same apply, the same one-line refusal, the last
good configuration kept.  What differs is only where the versions come
from (one L{Watch} of one named ConfigMap, by C{fieldSelector
metadata.name}, which RBAC's C{resourceNames} can narrow to that object)
and what a deletion means: a ConfigMap deleted from the API leaves the last
good configuration in force, said once in the log (a volume's files stay
as they were when their ConfigMap goes, too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ..forwarding.config import MAX_CONFIG_BYTES, ConfigError, ConfigIntake
from .client import KubeAccessError, KubeClient, describeApiError
from .events import EventPoster, InvolvedObject
from .watch import APISource, IWatchListener, Watch, WatchBounds, WatchTarget

#: The reason of the Event a refused version gets.
REFUSED_REASON = "ConfigRefused"

#: A ConfigMap's JSON may hold up to 1 MiB of data, with some metadata
#: (kubectl's last-applied annotation doubles it): past this it is refused
#: unread, as a file over 1 MiB is.
MAX_CONFIGMAP_OBJECT_BYTES = 3 * MAX_CONFIG_BYTES


def configMapTarget(namespace: str, name: str) -> WatchTarget:
    """The one ConfigMap C{namespace/name}, as a watch target."""
    from lightkube.resources.core_v1 import ConfigMap

    return WatchTarget(ConfigMap, namespace=namespace, fieldSelector=f"metadata.name={name}")


def origin(namespace: str, name: str) -> str:
    """How refusals and log lines name it: C{configmap kube-system/edge-tunnel-server-cfg}."""
    return f"configmap {namespace}/{name}"


def fingerprint(data: Mapping[str, str], binaryData: Mapping[str, str] | None) -> bytes:
    """A hash of a ConfigMap's content (keys and values), to skip unchanged versions."""
    digest = hashlib.sha256(b"configmap\0")
    for part, values in ((b"data", data), (b"binaryData", binaryData or {})):
        digest.update(part)
        for key in sorted(values):
            for item in (key, values[key]):
                encoded = str(item).encode("utf-8", "surrogateescape")
                digest.update(len(encoded).to_bytes(8, "big") + encoded)
    return digest.digest()


@implementer(IWatchListener)
class ConfigMapListener:
    """
    Offers each version of one ConfigMap to a L{ConfigIntake}, and posts a
    Warning Event on the ConfigMap for each version refused (once per
    refusal and C{resourceVersion}).

    @ivar present: whether the ConfigMap exists, as last heard.
    """

    log = Logger()

    def __init__(
        self, intake: ConfigIntake, namespace: str, name: str, events: EventPoster | None
    ) -> None:
        self.intake = intake
        self.namespace = namespace
        self.name = name
        self.events = events
        self.present: bool | None = None

    def listed(self, objects: Any, resourceVersion: str) -> None:
        mine = [each for each in objects if each.metadata.name == self.name]
        if mine:
            self._offer(mine[0])
        else:
            self._gone("does not exist")

    def changed(self, eventType: str, obj: Any) -> None:
        if obj.metadata.name != self.name:
            return
        if eventType == "DELETED":
            self._gone("was deleted")
        else:
            self._offer(obj)

    def refused(self, eventType: str, name: str | None, size: int) -> None:
        if eventType == "DELETED":
            self._gone("was deleted")
            return
        self.present = True
        self.intake.forget()
        self.intake.refuse(
            ConfigError(
                None,
                None,
                f"the ConfigMap object is {size} bytes, over the {MAX_CONFIGMAP_OBJECT_BYTES} "
                "read from the API",
            )
        )

    def broken(self, reason: str, retryIn: float) -> None:
        pass  # the watch logs it; the configuration in force stays

    def _gone(self, why: str) -> None:
        if self.present is False:
            return
        self.present = False
        # parse it again when it comes back, even unchanged
        self.intake.forget()
        self.log.warn(
            "{origin} {why}: the last good configuration stays in force ({config})",
            origin=origin(self.namespace, self.name),
            why=why,
            config=self.intake.current.describe(),
        )

    def _offer(self, obj: Any) -> None:
        self.present = True
        meta = obj.metadata
        refusal = self.intake.offer(
            fingerprint(dict(obj.data or {}), obj.binaryData), lambda: configData(obj)
        )
        if refusal is None or self.events is None or not meta.uid:
            return
        self.events.post(
            InvolvedObject(
                kind="ConfigMap",
                apiVersion="v1",
                namespace=self.namespace,
                name=self.name,
                uid=meta.uid,
                resourceVersion=meta.resourceVersion,
            ),
            "Warning",
            REFUSED_REASON,
            f"refused, the last good configuration stays in force: {_keyValue(refusal)}",
            key=(meta.uid, meta.resourceVersion, str(refusal)),
        )


def _keyValue(refusal: ConfigError) -> str:
    """The refusal without its origin: C{key 'k', value 'v': why}."""
    text = str(refusal)
    prefix = f"{refusal.path}: " if refusal.path else ""
    return text[len(prefix) :] if text.startswith(prefix) else text


def configData(obj: Any) -> Mapping[str, str]:
    """
    A ConfigMap object's C{data}, as the intake takes it.

    @raise ConfigError: it has C{binaryData} (refused, as in a manifest file).
    """
    if obj.binaryData:
        raise ConfigError("binaryData", None, "not supported: every key is text, under data")
    return dict(obj.data or {})


def readConfigMap(client: KubeClient, namespace: str, name: str) -> Any:
    """
    The ConfigMap C{namespace/name} as it is now, or C{None} if there is
    none.  Blocking: for start-up, before the reactor runs.

    @raise KubeAccessError: the API refused (other than 404), or could not
        be reached; one line naming the API and why.
    """
    from lightkube import ApiError
    from lightkube.resources.core_v1 import ConfigMap

    try:
        return client.client.get(ConfigMap, name, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise KubeAccessError(
            f"the API at {client.server} refused: {describeApiError(e)}"
        ) from None
    except Exception as e:
        raise KubeAccessError(
            f"cannot reach the API at {client.server}: {describeApiError(e)}"
        ) from None


def configMapWatch(
    reactor: Any,
    client: KubeClient,
    intake: ConfigIntake,
    namespace: str,
    name: str,
    events: EventPoster | None,
) -> Watch:
    """The service that watches C{namespace/name} and feeds C{intake}."""
    from lightkube.core import decoders
    from lightkube.resources.core_v1 import ConfigMap

    def decode(raw: bytes) -> Any:
        return decoders.decode_object(raw, ConfigMap)

    return Watch(
        reactor,
        APISource(client, configMapTarget(namespace, name)),
        ConfigMapListener(intake, namespace, name, events),
        decode,
        bounds=WatchBounds(maxObjectBytes=MAX_CONFIGMAP_OBJECT_BYTES, pageSize=1, maxPending=8),
    )
