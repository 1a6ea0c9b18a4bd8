# -*- test-case-name: tests.forwarding.test_policy -*-
"""
Forwarding policies: for a connection that arrived at a proxy listener and
the node port it is for, what the agent should dial and how to carry it.

The ConfigMap decides which policy a port gets (C{https-proxy-ports} →
L{HTTPSPolicy}, C{http-proxy-ports} and C{dnat-ports-pair} → L{HTTPPolicy},
C{tcp-proxy-ports} → L{TCPPolicy}); C{localhost-proxy-ports} wraps that
choice in L{LocalhostPolicy}, which sends the agent to the node's loopback
instead of its IP.  Other tools add their own policies, either as Twisted
plugins (an C{IPlugin} that also provides L{IForwardingPolicy}, in a
C{twisted/plugins/} module of any installed package) or named by the
operator on the server's command line (C{--policy
NAME=package.module:attribute}, loaded once with L{loadPolicy}); see
C{docs/policies.md}.

The ConfigMap only I{names} policies (L{findPolicy}): whoever may edit it
must not choose code for the server to import and run.  An import path
there used to be loaded, so C{9100=os:abort} killed the server.

A policy only decides.  Carrying the bytes is the proxy listener's job,
told by the decision's L{Carrier}.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Coroutine, Mapping
from enum import Enum
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress
from zope.interface import Attribute, Interface, implementer
from zope.interface.verify import verifyObject

from .config import Listener


class Carrier(Enum):
    """How the proxy listener carries a decided connection."""

    #: HTTP parsed on both sides, plain towards the node.
    HTTP = "http"
    #: HTTP parsed on both sides, TLS made again towards the node with the
    #: proxy client certificate (the identity the kubelet sees).
    HTTPS = "https"
    #: Bytes relayed as they are.
    RAW = "tcp"


@frozen
class ForwardingRequest:
    """
    What a policy gets to decide on.

    @ivar node: the node's name (as registered by its agent).
    @ivar nodeIPs: the IPs its agent announced.
    @ivar address: the node name or IP the client asked for.
    @ivar port: the node port the client asked for.
    @ivar listener: which listener it arrived at (a L{Listener}: it equals
        C{"http"}, C{"https"} or C{"tcp"}).
    @ivar method: the HTTP method of the request to decide for; C{None} when
        deciding for a whole connection (at the raw TCP listener, and for a
        DNATed connection that an HTTP listener relays as bytes: see
        C{perConnection} in L{IForwardingPolicy}).
    @ivar target: the HTTP request target (path and query), with C{method}.
    @ivar headers: the HTTP request headers, with C{method}.
    @ivar peer: the client's address.
    """

    node: str
    nodeIPs: tuple[str, ...]
    address: str
    port: int
    listener: Listener
    method: bytes | None = None
    target: bytes | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    peer: IAddress | None = None

    def defaultHost(self) -> str:
        """The IP the client asked for if it is the node's, else the node's first IP."""
        if self.address in self.nodeIPs:
            return self.address
        return self.nodeIPs[0] if self.nodeIPs else "127.0.0.1"


@frozen
class ForwardingDecision:
    """
    What to dial on the edge and how to carry it.

    @ivar host: what the agent dials (it still applies its own allowlist).
    @ivar port: the port it dials.
    @ivar carrier: how the listener carries the bytes.
    @ivar hostHeader: the C{Host} to send upstream for HTTP carriers
        (C{None}: the client's).
    """

    host: str
    port: int
    carrier: Carrier
    hostHeader: bytes | None = None


class ForwardingRefused(Exception):
    """
    A policy's way to say no: the listener answers C{status} (HTTP) or
    closes the connection (raw), and logs C{reason}.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class IForwardingPolicy(Interface):
    """
    Decides, for one connection (or one HTTP request) at a proxy listener,
    what the agent dials and how the bytes are carried.

    A policy may also have a true C{perConnection} attribute (it is
    optional, read with L{decidesPerConnection}): it promises that its
    decision depends on the connection only (node, address, port,
    listener, peer), never on a request's method, target or headers.  The
    proxy listeners then route a DNATed connection once, when its first
    bytes arrive, and relay it as bytes with no HTTP parsed, which is
    several times cheaper; C{decide} is called with C{method}, C{target}
    and C{headers} left empty.  Without it, C{decide} is asked for every
    HTTP request.
    """

    name = Attribute("The name the configuration binds ports to, e.g. C{'metrics-only'}.")

    def decide(
        request: ForwardingRequest,
    ) -> (
        ForwardingDecision | Deferred[ForwardingDecision] | Coroutine[Any, Any, ForwardingDecision]
    ):
        """
        Where C{request}'s bytes go and how: the host and port the agent
        dials on the node, the carrier (raw TCP, HTTP, or TLS made again
        with the proxy client certificate) and, for HTTP, the C{Host} sent
        upstream.  Refuse by raising (or failing with) L{ForwardingRefused},
        whose status the client gets.

        Called on the reactor thread for every connection (per-connection
        policies) or every HTTP request (the others), so keep it cheap and
        never block: a decision that needs I/O returns a C{Deferred} or a
        coroutine.

        @param request: the node, the address and port the client dialled,
            the listener, the peer, and for per-request policies the
            request's method, target and headers.
        @return: a L{ForwardingDecision}, or a C{Deferred} or a coroutine
            that gives one.
        @raise ForwardingRefused: to say no.
        """


@implementer(IForwardingPolicy)
@frozen
class HTTPPolicy:
    """Plain HTTP to the node's IP (C{http-proxy-ports}, 10255, dnat pairs)."""

    name = "http"
    perConnection = True

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        return ForwardingDecision(request.defaultHost(), request.port, Carrier.HTTP)


@implementer(IForwardingPolicy)
@frozen
class HTTPSPolicy:
    """
    TLS ended at the listener and made again towards the node with the
    proxy client certificate (C{https-proxy-ports}, 10250).
    """

    name = "https"
    perConnection = True

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        return ForwardingDecision(request.defaultHost(), request.port, Carrier.HTTPS)


@implementer(IForwardingPolicy)
@frozen
class TCPPolicy:
    """Raw TCP to the node's IP, routed by original destination (C{tcp-proxy-ports})."""

    name = "tcp"
    perConnection = True

    def decide(self, request: ForwardingRequest) -> ForwardingDecision:
        return ForwardingDecision(request.defaultHost(), request.port, Carrier.RAW)


@implementer(IForwardingPolicy)
@frozen
class LocalhostPolicy:
    """
    For C{localhost-proxy-ports}: whatever C{inner} decides, the agent
    dials the node's loopback instead of its IP.

    The HTTP requests that a listener parses (those routed by C{Host})
    carry C{Host: 127.0.0.1:<port>}, as a service that listens on loopback
    only may expect (yurt-tunnel rewrites it too).  A DNATed connection
    decided as a whole (C{request.method} is C{None}) is relayed as bytes
    and keeps the C{Host} its client sent, as iptables DNAT to a loopback
    port would: that is what lets the default ports (10250 and 10255 are
    localhost ports) take the fast path.
    """

    inner: IForwardingPolicy

    @property
    def name(self) -> str:
        return f"localhost+{self.inner.name}"

    @property
    def perConnection(self) -> bool:
        """As C{inner}: the move to loopback does not depend on any request."""
        return decidesPerConnection(self.inner)

    def decide(
        self, request: ForwardingRequest
    ) -> ForwardingDecision | Deferred[ForwardingDecision]:
        def toLoopback(decision: ForwardingDecision) -> ForwardingDecision:
            hostHeader = None
            if decision.carrier is not Carrier.RAW and request.method is not None:
                hostHeader = f"127.0.0.1:{decision.port}".encode()
            return evolve(decision, host="127.0.0.1", hostHeader=hostHeader)

        decision = decideNow(self.inner, request)
        if isinstance(decision, Deferred):
            return decision.addCallback(toLoopback)
        return toLoopback(decision)


def decidesPerConnection(policy: IForwardingPolicy) -> bool:
    """Whether C{policy} promises to decide once per connection (see L{IForwardingPolicy})."""
    return getattr(policy, "perConnection", False) is True


def decide(policy: IForwardingPolicy, request: ForwardingRequest) -> Deferred[ForwardingDecision]:
    """
    Ask C{policy}, whatever shape its answer takes (a value, a Deferred or
    a coroutine), and check that the answer is a decision.
    """
    result: Deferred[ForwardingDecision] = maybeDeferred(decideNow, policy, request)  # type: ignore[call-overload]
    return result


def decideNow(
    policy: IForwardingPolicy, request: ForwardingRequest
) -> ForwardingDecision | Deferred[ForwardingDecision]:
    """
    Like L{decide}, but a policy that answers at once (every built-in one
    does) gets its checked decision back at once, not in a C{Deferred}: the
    HTTP proxy asks once per request, and a chain of Deferreds was a tenth
    of its CPU per request.  Whatever the policy raises, this raises.
    """
    result = policy.decide(request)
    if isinstance(result, Deferred):
        return result.addCallback(_checkedDecision, policy)
    if inspect.isawaitable(result):
        coroutine: Any = result
        return Deferred.fromCoroutine(coroutine).addCallback(_checkedDecision, policy)
    return _checkedDecision(result, policy)


def _checkedDecision(decision: object, policy: IForwardingPolicy) -> ForwardingDecision:
    if not isinstance(decision, ForwardingDecision):
        raise TypeError(f"policy {policy.name!r} returned {decision!r}, not a ForwardingDecision")
    return decision


BUILTIN_POLICIES: Mapping[str, IForwardingPolicy] = {
    policy.name: policy for policy in (HTTPPolicy(), HTTPSPolicy(), TCPPolicy())
}


class PolicyError(ValueError):
    """A policy cannot be found or is not a policy; the message says which and why."""


#: What a name given with C{--policy NAME=...} may look like: no C{:} or
#: C{.}, so that no name can ever be mistaken for an import path.
_POLICY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")

#: Known names listed in a refusal at most (the rest are counted).
_NAMES_SHOWN = 20


def loadPolicy(spec: str) -> IForwardingPolicy:
    """
    Load a policy given as C{package.module:attribute}.  The attribute may
    be a policy or a callable without arguments that makes one.

    This imports and runs code: call it only for what the operator wrote
    (C{--policy} on the command line, or a program's own code), once at
    start-up, never for what a ConfigMap says.

    @raise PolicyError: naming the spec and what is wrong with it, whatever
        importing the module or calling the factory raised (C{SystemExit}
        included: a factory that calls C{sys.exit} is a broken policy).
    """
    moduleName, colon, attribute = spec.partition(":")
    if not colon or not moduleName or not attribute:
        raise PolicyError(f"policy {spec!r}: expected package.module:attribute")
    try:
        module = importlib.import_module(moduleName)
    except ImportError as e:
        raise PolicyError(f"policy {spec!r}: cannot import {moduleName}: {e}") from None
    except (Exception, SystemExit) as e:
        raise PolicyError(
            f"policy {spec!r}: importing {moduleName} failed: {_describe(e)}"
        ) from None
    try:
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part)
    except AttributeError:
        raise PolicyError(f"policy {spec!r}: {moduleName} has no {attribute}") from None
    if not IForwardingPolicy.providedBy(found) and callable(found):
        try:
            found = found()
        except (Exception, SystemExit) as e:
            raise PolicyError(
                f"policy {spec!r}: calling {attribute} failed: {_describe(e)}"
            ) from None
    return _checked(found, spec)


def _describe(exception: BaseException) -> str:
    text = " ".join(str(exception).split())
    name = type(exception).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{name}: {text}" if text else name


def _checked(candidate: object, where: str) -> IForwardingPolicy:
    if not IForwardingPolicy.providedBy(candidate):
        raise PolicyError(f"policy {where!r}: {candidate!r} does not provide IForwardingPolicy")
    try:
        verifyObject(IForwardingPolicy, candidate)
    except Exception as e:
        raise PolicyError(f"policy {where!r}: {e}") from None
    return candidate


def pluginPolicies(package: Any = None) -> dict[str, IForwardingPolicy]:
    """
    The policies installed as Twisted plugins, by name.  (Plugins are found
    by scanning C{twisted.plugins}, or C{package}; call this once, at
    startup, not per request or per configuration.)
    """
    from twisted.plugin import getPlugins

    found: dict[str, IForwardingPolicy] = {}
    for plugin in getPlugins(IForwardingPolicy, package):
        policy = _checked(plugin, repr(plugin))
        found[policy.name] = policy
    return found


def parsePolicyOption(text: str) -> tuple[str, str]:
    """
    The C{NAME} and C{package.module:attribute} of a C{--policy
    NAME=package.module:attribute} option, checked but not loaded.

    @raise PolicyError: one line saying what is wrong: not C{NAME=SPEC}, a
        name with other than letters, digits, C{-} and C{_} (at most 63),
        a built-in policy's name, or a spec that is not an import path.
    """
    name, equals, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not equals or not name or not spec:
        raise PolicyError(
            f"--policy {text!r}: expected NAME=package.module:attribute, "
            "e.g. metrics-only=metrics_only:policy"
        )
    if _POLICY_NAME.fullmatch(name) is None:
        raise PolicyError(
            f"--policy {text!r}: the name {name!r} may hold only letters, digits, '-' and '_' "
            "(at most 63), so that it cannot look like an import path"
        )
    if name in BUILTIN_POLICIES:
        raise PolicyError(f"--policy {text!r}: {name!r} is a built-in policy's name")
    moduleName, colon, attribute = spec.partition(":")
    if not colon or not moduleName or not attribute:
        raise PolicyError(f"--policy {text!r}: expected package.module:attribute after '='")
    return name, spec


def knownPolicies(
    plugins: Mapping[str, IForwardingPolicy] | None = None,
    named: Mapping[str, IForwardingPolicy] | None = None,
) -> dict[str, IForwardingPolicy]:
    """
    Every policy a configuration may name: the built-ins, then C{plugins}
    (L{pluginPolicies}), then C{named} (the operator's C{--policy} ones,
    which win over a plugin of the same name).  A plugin cannot take a
    built-in's name.
    """
    known: dict[str, IForwardingPolicy] = {}
    known.update(plugins or {})
    known.update(named or {})
    known.update(BUILTIN_POLICIES)
    return known


def findPolicy(
    name: str, plugins: Mapping[str, IForwardingPolicy] | None = None
) -> IForwardingPolicy:
    """
    A policy by name: a built-in one, or one of C{plugins} (by default
    L{pluginPolicies}; the server passes L{knownPolicies}, which also holds
    the operator's C{--policy} ones).

    Only a lookup: this never imports or calls anything a name says, since
    the name comes from the ConfigMap.  C{package.module:attribute} is
    refused like any unknown name, with a hint to name it with C{--policy}.

    @raise PolicyError: when there is no such policy; the message lists the
        known names (the first L{_NAMES_SHOWN}) and quotes at most 64
        characters of C{name}.
    """
    if name in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[name]
    known = plugins if plugins is not None else pluginPolicies()
    if name in known:
        return known[name]
    names = sorted(set(BUILTIN_POLICIES) | set(known))
    listed = ", ".join(names[:_NAMES_SHOWN])
    if len(names) > _NAMES_SHOWN:
        listed += f" and {len(names) - _NAMES_SHOWN} more"
    shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
    hint = ""
    if ":" in name or "." in name:
        hint = (
            "; a configuration names policies, it does not import them: install the policy "
            "as a plugin, or name it on the server's command line with "
            "--policy NAME=package.module:attribute"
        )
    raise PolicyError(f"no policy named {shown} (known: {listed}){hint}")


def refuse(status: int, reason: str) -> ForwardingRefused:
    """Shorthand for policies: C{raise refuse(403, "only GET /metrics")}."""
    return ForwardingRefused(status, reason)


__all__ = [
    "BUILTIN_POLICIES",
    "Carrier",
    "ForwardingDecision",
    "ForwardingRefused",
    "ForwardingRequest",
    "HTTPPolicy",
    "HTTPSPolicy",
    "IForwardingPolicy",
    "LocalhostPolicy",
    "PolicyError",
    "TCPPolicy",
    "decide",
    "decideNow",
    "decidesPerConnection",
    "findPolicy",
    "knownPolicies",
    "loadPolicy",
    "parsePolicyOption",
    "pluginPolicies",
    "refuse",
]
