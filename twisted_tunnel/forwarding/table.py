# -*- test-case-name: tests.forwarding.test_table -*-
"""
The forwarding in force: a configuration and the policies it binds,
replaced as a whole, and the one question routing asks of it.

A L{ProxyConfig} names policies (C{policy-ports: "9100=metrics-only"}); a
L{ForwardingTable} holds it together with those policies, resolved, so
that a reload that names an unknown policy changes nothing, and answers
L{ForwardingTable.lookup}: for a port asked for at a listener, the policy
that decides, or why the listener must refuse.  The server daemon keeps
one (replaced by its L{ConfigWatcher}); a program that embeds the proxy
listeners makes its own (see C{examples/custom_policy.py}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .config import Listener, ProxyConfig, parseConfigData
from .policy import (
    BUILTIN_POLICIES,
    ForwardingRefused,
    IForwardingPolicy,
    LocalhostPolicy,
    findPolicy,
)

__all__ = ["ForwardingTable", "NotForwarded"]


class NotForwarded(ForwardingRefused):
    """The port is not forwarded, or not from this listener: C{403}, always."""

    def __init__(self, reason: str) -> None:
        super().__init__(403, reason)


class ForwardingTable:
    """
    A configuration in force and its policies (see the module docstring).

    @ivar resolve: finds a policy by the name a configuration gives it.
    """

    def __init__(
        self,
        config: ProxyConfig | None = None,
        *,
        known: Mapping[str, IForwardingPolicy] | None = None,
        resolve: Callable[[str], IForwardingPolicy] | None = None,
    ) -> None:
        """
        @param config: the configuration to start with (none forwarded: the
            defaults of an empty ConfigMap).
        @param known: the policies a configuration may name besides the
            built-ins (L{knownPolicies}); ignored with C{resolve}.
        @param resolve: how to find a policy by name (default: L{findPolicy}
            over C{known}).
        @raise PolicyError: C{config} names a policy that cannot be found.
        """
        self.resolve = resolve or (lambda name: findPolicy(name, dict(known or {})))
        self._observers: list[Callable[[], object]] = []
        self._config = ProxyConfig()
        self._policies: dict[int, IForwardingPolicy] = {}
        self.replace(config if config is not None else parseConfigData({}))

    def current(self) -> ProxyConfig:
        """The configuration in force."""
        return self._config

    def custom(self) -> Mapping[int, IForwardingPolicy]:
        """The ports bound to a policy of their own, and those policies."""
        return self._policies

    def replace(self, config: ProxyConfig) -> None:
        """
        Put C{config} in force, then tell the observers.  Its policies are
        resolved first, so that a failure leaves the table as it was (a
        L{ConfigWatcher} then keeps the old configuration too).

        @raise PolicyError: C{config} names a policy that cannot be found.
        """
        policies = {port: self.resolve(name) for port, name in config.policyPorts}
        self._policies, self._config = policies, config
        for observer in list(self._observers):
            observer()

    def subscribe(self, observer: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{observer} (without arguments) after every L{replace}.

        @return: a function that unsubscribes it.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def lookup(self, port: int, listener: Listener) -> IForwardingPolicy:
        """
        The policy that decides a connection for C{port} at C{listener}:
        the port's own, else the listener's built-in one (named like it),
        wrapped to dial the node's loopback for C{localhost-proxy-ports}.

        @raise NotForwarded: the port is not forwarded, or is forwarded by
            another listener (an HTTPS port never from the plain one, so
            the proxy client certificate is never lent to plaintext).
        """
        config = self.current()
        protocol = config.protocolFor(port)
        if protocol is None:
            raise NotForwarded(
                f"port {port} is not forwarded: add it to http-proxy-ports, https-proxy-ports "
                "or tcp-proxy-ports of the edge-tunnel-server-cfg ConfigMap, which the server "
                "reads with --config or --config-configmap"
            )
        if protocol is not listener:
            raise NotForwarded(
                f"port {port} is forwarded as {protocol}, not from the {listener} listener"
            )
        policy = self.custom().get(port) or BUILTIN_POLICIES[protocol]
        if config.isLocalhost(port):
            policy = LocalhostPolicy(policy)
        return policy

    @classmethod
    def following(
        cls,
        config: Callable[[], ProxyConfig],
        custom: Callable[[], Mapping[int, IForwardingPolicy]] = dict,
    ) -> ForwardingTable:
        """
        A table that reads a configuration kept elsewhere, at every lookup:
        for a program (or a test) that swaps the configuration itself.
        """
        return _Following(config, custom)


class _Following(ForwardingTable):
    def __init__(
        self,
        config: Callable[[], ProxyConfig],
        custom: Callable[[], Mapping[int, IForwardingPolicy]],
    ) -> None:
        self._read, self._readCustom = config, custom
        self._observers = []
        self.resolve = lambda name: findPolicy(name, {})

    def current(self) -> ProxyConfig:
        return self._read()

    def custom(self) -> Mapping[int, IForwardingPolicy]:
        return self._readCustom()

    def replace(self, config: ProxyConfig) -> None:
        raise TypeError("this table follows a configuration kept elsewhere: change it there")
