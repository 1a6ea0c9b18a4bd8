# -*- test-case-name: tests.kube.test_events -*-
"""
Kubernetes Events from the daemons: what C{kubectl describe} shows under
an object (a refused ConfigMap, say), posted off the reactor, at most once
per distinct reason, and never fatal.

An Event is a convenience for the operator, beside the log line that is
the record: a post that fails (no RBAC, the API down) is logged once and
dropped, and nothing waits for it.  Each one is posted at most once per
key (the caller's: e.g. the refusal and the object's C{resourceVersion}),
so a watch that relists, or a flapping object, cannot flood the API.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Hashable

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .client import KubeClient, describeApiError

#: Characters of an Event's message kept (kube-apiserver refuses more than
#: 1 KiB in events.k8s.io; the same bound here for core/v1).
MAX_MESSAGE = 1000
#: Keys remembered, oldest forgotten first: bounds memory, whatever the
#: caller's keys.
REMEMBERED_KEYS = 256


@frozen
class InvolvedObject:
    """
    The object an Event is about, as C{kubectl describe} finds its events
    (by kind, namespace, name and uid).
    """

    kind: str
    apiVersion: str
    namespace: str
    name: str
    uid: str
    resourceVersion: str | None = None


class EventPoster:
    """
    Posts C{core/v1} Events through a L{KubeClient}'s threads.

    @ivar posted: Events posted (for tests and metrics).
    @ivar failed: posts that failed.
    """

    log = Logger()

    def __init__(self, client: KubeClient, component: str, instance: str) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        self.posted = 0
        self.failed = 0
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def post(
        self,
        involved: InvolvedObject,
        eventType: str,
        reason: str,
        message: str,
        key: Hashable,
    ) -> Deferred[bool]:
        """
        Post an Event about C{involved}, unless one was posted for C{key}.

        @return: fires with C{True} once posted, C{False} if skipped or if it
            failed (logged); it never fails.
        """
        if key in self._seen:
            self._seen.move_to_end(key)
            return succeed(False)
        self._seen[key] = None
        while len(self._seen) > REMEMBERED_KEYS:
            self._seen.popitem(last=False)
        event = self._build(involved, eventType, reason, message)
        posting = self.client.callInThread(self.client.client.create, event)
        # the structured fields of both outcomes' log lines
        fields = dict(
            reason=reason, kind=involved.kind, namespace=involved.namespace, name=involved.name
        )

        def done(_: object) -> bool:
            self.posted += 1
            self.log.debug("event {reason} posted on {kind} {namespace}/{name}", **fields)
            return True

        def failed(failure: Failure) -> bool:
            self.failed += 1
            self.log.warn(
                "could not post the {reason} event on {kind} {namespace}/{name}: {error}",
                error=describeApiError(failure.value),
                **fields,
            )
            return False

        return posting.addCallbacks(done, failed)

    def _build(
        self, involved: InvolvedObject, eventType: str, reason: str, message: str
    ) -> object:
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        return Event(
            metadata=ObjectMeta(generateName=f"{involved.name}.", namespace=involved.namespace),
            involvedObject=ObjectReference(
                kind=involved.kind,
                apiVersion=involved.apiVersion,
                namespace=involved.namespace,
                name=involved.name,
                uid=involved.uid,
                resourceVersion=involved.resourceVersion,
            ),
            type=eventType,
            reason=reason,
            message=message,
            source=EventSource(component=self.component),
            reportingComponent=self.component,
            reportingInstance=self.instance,
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
