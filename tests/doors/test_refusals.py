"""
One reading of a failed stream open (L{openFailure}) for every front door
and the metrics, and each door's status for it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_tunnel.doors.refusals import connectRefusal, proxyRefusal
from twisted_tunnel.errors import (
    NodeNotConnected,
    OpenFailureKind,
    StreamOpenFailed,
    StreamOpenTimeout,
    TunnelClosed,
    openFailure,
)
from twisted_tunnel.wire import OpenFailReason


class OpenFailureTests(SynchronousTestCase):
    def test_kindsAndLabels(self) -> None:
        refused = StreamOpenFailed(OpenFailReason.REFUSED, "connection to 127.0.0.1:1 refused")
        cases = [
            (NodeNotConnected("edge-9"), OpenFailureKind.NO_AGENT, "unknown_node"),
            (TunnelClosed("tunnel to edge-1 lost"), OpenFailureKind.NO_AGENT, "tunnel_closed"),
            (StreamOpenTimeout(), OpenFailureKind.NO_ANSWER, "open_timeout"),
            (refused, OpenFailureKind.AGENT_REFUSED, "refused"),
            (StreamOpenFailed(250, "what"), OpenFailureKind.AGENT_REFUSED, "other"),
        ]
        for error, kind, label in cases:
            failure = openFailure(error)
            assert failure is not None
            self.assertEqual((failure.kind, failure.label), (kind, label), error)
        self.assertEqual(
            openFailure(StreamOpenTimeout()).reason, "the agent did not answer in time"
        )  # type: ignore[union-attr]
        self.assertIsNone(openFailure(ValueError("a bug")))
        self.assertIsNone(openFailure(None))

    def test_doorsDifferOnNoAgentOnly(self) -> None:
        """
        The proxy listeners answer "no agent" with 502 (kube-apiserver shows
        kubectl a 502's reason, not a 503's); the CONNECT door with 503.
        """
        noAgent = NodeNotConnected("edge-9")
        self.assertEqual(proxyRefusal(noAgent), (502, "no agent connected for node 'edge-9'"))
        connect = connectRefusal(noAgent)
        assert connect is not None
        self.assertEqual(connect[0], 503)
        for error, status in [
            (StreamOpenFailed(OpenFailReason.REFUSED, "refused"), 502),
            (StreamOpenTimeout("late"), 504),
        ]:
            self.assertEqual(proxyRefusal(error), (status, str(error)))
            self.assertEqual(connectRefusal(error)[0], status)  # type: ignore[index]
        self.assertIsNone(proxyRefusal(ValueError("a bug")))
        self.assertIsNone(connectRefusal(ValueError("a bug")))
