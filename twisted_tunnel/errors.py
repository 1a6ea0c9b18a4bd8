"""
Exceptions that cross layer boundaries.

Each one carries enough to produce the single, readable line an operator
sees: no tracebacks for conditions we expect (unknown node, refused dial,
bad certificate file).
"""

from __future__ import annotations


class TunnelError(Exception):
    """Base class for every error raised on purpose by twisted_tunnel."""


class NodeNotConnected(TunnelError):
    """
    No agent for this node (name or IP) holds a tunnel to this server.

    The CONNECT door answers it with C{503}; the proxy listeners with
    C{502}, whose reason kube-apiserver passes on to kubectl.
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
