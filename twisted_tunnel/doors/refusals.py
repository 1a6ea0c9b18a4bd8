# -*- test-case-name: tests.doors.test_refusals -*-
"""
The status each front door answers a failed stream open with: one table
per door, over the one reading of the failure (L{openFailure}).

The doors differ on one point, for their clients' sake: kube-apiserver
shows kubectl the reason of a kubelet's C{502} but not of a C{503} ("the
server is currently unable to handle the request"), so the proxy
listeners, which stand where a kubelet would, answer "no agent" with
C{502}; the CONNECT door, whose refusals kube-apiserver quotes by their
status line, keeps the standard C{503} (and puts the reason in that line).
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from ..errors import OpenFailure, OpenFailureKind, openFailure

__all__ = ["CONNECT_STATUSES", "PROXY_STATUSES", "connectRefusal", "proxyRefusal"]

#: The CONNECT door's statuses.
CONNECT_STATUSES: Mapping[OpenFailureKind, int] = {
    OpenFailureKind.NO_AGENT: HTTPStatus.SERVICE_UNAVAILABLE,
    OpenFailureKind.AGENT_REFUSED: HTTPStatus.BAD_GATEWAY,
    OpenFailureKind.NO_ANSWER: HTTPStatus.GATEWAY_TIMEOUT,
}

#: The proxy listeners' statuses.
PROXY_STATUSES: Mapping[OpenFailureKind, int] = {
    OpenFailureKind.NO_AGENT: HTTPStatus.BAD_GATEWAY,
    OpenFailureKind.AGENT_REFUSED: HTTPStatus.BAD_GATEWAY,
    OpenFailureKind.NO_ANSWER: HTTPStatus.GATEWAY_TIMEOUT,
}


def connectRefusal(error: BaseException | None) -> tuple[int, OpenFailure] | None:
    """The CONNECT door's status for C{error}, and what it means; C{None}: not a tunnel's."""
    failure = openFailure(error)
    return None if failure is None else (CONNECT_STATUSES[failure.kind], failure)


def proxyRefusal(error: BaseException | None) -> tuple[int, str] | None:
    """
    The proxy listeners' status and reason for C{error}, or C{None}: what
    L{twisted_tunnel.http.engine.HTTPProxyFactory} asks its C{explain} for.
    """
    failure = openFailure(error)
    return None if failure is None else (PROXY_STATUSES[failure.kind], failure.reason)
