"""
Exceptions that cross layer boundaries, and what a failed stream open
means (L{openFailure}), read in one place for every front door and the
metrics.

Each one carries enough to produce the single, readable line an operator
sees: no tracebacks for conditions we expect (unknown node, refused dial,
bad certificate file).
"""

from __future__ import annotations

import enum

from attrs import frozen

from .wire import OpenFailReason


class TunnelError(Exception):
    """Base class for every error raised on purpose by twisted_tunnel."""


class NodeNotConnected(TunnelError):
    """
    No agent for this node (name or IP) holds a tunnel to this server.

    The CONNECT door answers it with C{503}; the proxy listeners with
    C{502}, whose reason kube-apiserver passes on to kubectl (see
    L{twisted_tunnel.doors.refusals}).
    """

    def __init__(self, node: str) -> None:
        super().__init__(f"no agent connected for node {node!r}")
        self.node = node


class StreamOpenFailed(TunnelError):
    """
    The agent answered an open request with OPEN_FAIL.

    Front doors answer it with C{502} and the agent's reason.
    """

    def __init__(self, reason: int, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


class StreamOpenTimeout(TunnelError):
    """
    The agent did not answer an open request in time.

    Front doors answer it with C{504}.
    """


class TunnelClosed(TunnelError):
    """The tunnel that carried (or was to carry) the stream went away."""


class CredentialsError(TunnelError):
    """
    A certificate, key or CA file cannot be used.

    The message names the file (and the option it came from) and says why,
    so that a daemon can print it as one line and exit non-zero.
    """


class OpenFailureKind(enum.Enum):
    """Why a stream could not be opened, as a front door tells its client."""

    #: No agent holds a tunnel for the node, or its tunnel went away.
    NO_AGENT = "no agent"
    #: The agent answered OPEN_FAIL: it could not (or may not) dial.
    AGENT_REFUSED = "agent refused"
    #: The agent did not answer the open in time.
    NO_ANSWER = "no answer"


@frozen
class OpenFailure:
    """
    A failed stream open, read once for every front door and the metrics.

    @ivar kind: what the client is told, in kind (each door picks its status).
    @ivar label: the C{reason} label of
        C{edge_tunnel_server_stream_open_failures}: C{unknown_node},
        C{tunnel_closed}, C{open_timeout}, or the agent's OPEN_FAIL reason
        (C{refused}, C{timeout}, C{unreachable}, C{not_allowed},
        C{too_many_streams}, C{going_away}, C{internal}, C{other}).
    @ivar reason: one line for the client and the log.
    """

    kind: OpenFailureKind
    label: str
    reason: str


def openFailure(error: BaseException | None) -> OpenFailure | None:
    """What C{error} means for a stream open, or C{None} if it is not a tunnel's failure."""
    if isinstance(error, NodeNotConnected):
        return OpenFailure(OpenFailureKind.NO_AGENT, "unknown_node", str(error))
    if isinstance(error, TunnelClosed):
        return OpenFailure(OpenFailureKind.NO_AGENT, "tunnel_closed", str(error))
    if isinstance(error, StreamOpenTimeout):
        reason = str(error) or "the agent did not answer in time"
        return OpenFailure(OpenFailureKind.NO_ANSWER, "open_timeout", reason)
    if isinstance(error, StreamOpenFailed):
        try:
            label = OpenFailReason(error.reason).name.lower()
        except ValueError:
            label = "other"
        return OpenFailure(OpenFailureKind.AGENT_REFUSED, label, error.text)
    return None
