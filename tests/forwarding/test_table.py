"""
L{ForwardingTable}: a configuration and its policies in force together,
and the one lookup routing makes.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_tunnel.forwarding.config import Listener, parseConfigData
from twisted_tunnel.forwarding.policy import (
    BUILTIN_POLICIES,
    ForwardingDecision,
    IForwardingPolicy,
    LocalhostPolicy,
    PolicyError,
)
from twisted_tunnel.forwarding.table import ForwardingTable, NotForwarded


@implementer(IForwardingPolicy)
class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def decide(self, request: Any) -> ForwardingDecision:
        raise NotImplementedError


def config(**data: str) -> Any:
    return parseConfigData({key.replace("_", "-"): value for key, value in data.items()})


class LookupTests(SynchronousTestCase):
    def test_notForwarded(self) -> None:
        table = ForwardingTable(config(http_proxy_ports="9100"))
        with self.assertRaises(NotForwarded) as caught:
            table.lookup(22, Listener.HTTP)
        self.assertEqual(caught.exception.status, 403)
        self.assertIn("port 22 is not forwarded", caught.exception.reason)

    def test_wrongListener(self) -> None:
        """An HTTPS port is never served by the plain listener (nor the reverse)."""
        table = ForwardingTable(config(http_proxy_ports="9100"))
        for port, listener in [(10250, Listener.HTTP), (9100, Listener.HTTPS)]:
            with self.assertRaises(NotForwarded, msg=(port, listener)) as caught:
                table.lookup(port, listener)
            self.assertIn("not from the", caught.exception.reason)

    def test_builtinAndLocalhost(self) -> None:
        """
        A port without a policy of its own gets its listener's built-in
        one; a localhost port gets it wrapped to dial the node's loopback.
        """
        table = ForwardingTable(config(http_proxy_ports="9100"))
        self.assertIs(table.lookup(9100, Listener.HTTP), BUILTIN_POLICIES["http"])
        wrapped = table.lookup(10250, Listener.HTTPS)  # a default localhost port
        self.assertIsInstance(wrapped, LocalhostPolicy)

    def test_custom(self) -> None:
        metricsOnly = Named("metrics-only")
        table = ForwardingTable(
            config(http_proxy_ports="9100", policy_ports="9100=metrics-only"),
            known={"metrics-only": metricsOnly},
        )
        self.assertIs(table.lookup(9100, Listener.HTTP), metricsOnly)
        self.assertEqual(dict(table.custom()), {9100: metricsOnly})


class ReplaceTests(SynchronousTestCase):
    def test_replaceTellsObservers(self) -> None:
        table = ForwardingTable()
        told: list[int] = []
        unsubscribe = table.subscribe(lambda: told.append(len(told)))
        table.replace(config(http_proxy_ports="9100"))
        self.assertEqual(told, [0])
        self.assertIs(table.lookup(9100, Listener.HTTP), BUILTIN_POLICIES["http"])
        unsubscribe()
        table.replace(config())
        self.assertEqual(told, [0])

    def test_unknownPolicyChangesNothing(self) -> None:
        """A configuration naming an unknown policy leaves the table as it was."""
        first = config(http_proxy_ports="9100")
        table = ForwardingTable(first)
        told: list[None] = []
        table.subscribe(lambda: told.append(None))
        with self.assertRaises(PolicyError):
            table.replace(config(http_proxy_ports="9200", policy_ports="9200=nope"))
        self.assertIs(table.current(), first)
        self.assertEqual((dict(table.custom()), told), ({}, []))

    def test_following(self) -> None:
        """A table following a configuration kept elsewhere reads it at every lookup."""
        held = {"config": config(http_proxy_ports="9100")}
        table = ForwardingTable.following(lambda: held["config"])
        self.assertIs(table.lookup(9100, Listener.HTTP), BUILTIN_POLICIES["http"])
        held["config"] = config(http_proxy_ports="9200")
        with self.assertRaises(NotForwarded):
            table.lookup(9100, Listener.HTTP)
        with self.assertRaises(TypeError):
            table.replace(config())
