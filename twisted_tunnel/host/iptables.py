# -*- test-case-name: tests.host.test_iptables -*-
"""
Transparent interception on the server's host: iptables DNAT of every
connected edge node's forwarded ports to the proxy listeners.

kube-apiserver and metrics-server dial C{<edge-node-ip>:10250} as they would
any node.  Edge node addresses are private, so without help that fails; with
the rules kept here, the C{nat} table rewrites the destination of those
connections to the right proxy listener, which reads the original
destination back (L{twisted_tunnel.net.origdst}) and carries the connection
through the node's tunnel.  No client is configured for it.

Two layers, so that the rules can be checked without root:

  - B{Rendering} (pure, no I/O): L{renderRules} turns the connected node IPs,
    the L{ProxyConfig} and the listeners' addresses into a L{Ruleset};
    L{parseNat} reads what C{iptables-save -t nat} prints into a
    L{NatState}; L{restoreText} and L{cleanupText} write the text of one
    C{iptables-restore --noflush} run that moves the table from one to the
    other.  Only chains named C{EDGE-TUNNEL} or C{EDGE-TUNNEL-*} (the
    prefix is a parameter), and the rules elsewhere that jump to them, are
    ever changed: everything else in the table is left as it is.
  - B{The manager} (L{IptablesManager}, a Twisted service): follows the
    L{AgentRegistry} and configuration changes, coalesces bursts into one
    sync, runs the commands as child processes of the reactor (never
    blocking it), resyncs periodically, and removes its chains on stop.

The chains (see C{docs/iptables.md} for a full example)::

    -A OUTPUT -j EDGE-TUNNEL
    -A PREROUTING -j EDGE-TUNNEL-FROM            (optionally, restricted:)
    -A EDGE-TUNNEL-FROM -s 10.20.0.0/16 -i eth1 -j EDGE-TUNNEL
    -A EDGE-TUNNEL -m addrtype --dst-type LOCAL -j RETURN
    -A EDGE-TUNNEL -p tcp -m tcp --dport 10250 -j EDGE-TUNNEL-HTTPS
    -A EDGE-TUNNEL -p tcp -m tcp --dport 10255 -j EDGE-TUNNEL-HTTP
    -A EDGE-TUNNEL-HTTPS -d 10.0.0.7/32 -p tcp -j DNAT --to-destination 127.0.0.1:10263
    -A EDGE-TUNNEL-HTTP -d 10.0.0.7/32 -p tcp -j DNAT --to-destination 127.0.0.1:10264

The top chain dispatches by port, one rule per forwarded port, to one chain
per listener, which holds one rule per connected node IP (a connection to
an address of the server's own host is never DNATed: L{LOCAL_RETURN}): ports + nodes x
listeners rules rather than ports x nodes, and a new connection to a port we
do not forward leaves after a handful of rules however many nodes there are.
(The C{nat} table only sees the first packet of each connection.)

Routed traffic (PREROUTING) is only ever DNATed from the sources and
interfaces the operator names: C{EDGE-TUNNEL-FROM} holds one jump per named
source network and interface, and anything else returns to PREROUTING
untouched.  A host that merely routes node IPs through the server (any
neighbour in the cloud network) must not reach the proxy listeners.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    TimeoutError,
    fail,
    gatherResults,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import TunnelError
from ..forwarding.config import Listener, ProxyConfig
from ..net.addresses import parseIP

if TYPE_CHECKING:
    from ..server.routes import NodeRoutes

__all__ = [
    "DEFAULT_CHAIN",
    "HOOKS",
    "IptablesError",
    "IptablesManager",
    "LISTENER_KINDS",
    "LOCAL_RETURN",
    "ListenerAddress",
    "NatState",
    "Ruleset",
    "checkAvailable",
    "cleanupText",
    "listenerAddress",
    "listenerPorts",
    "parseNat",
    "preroutingInterface",
    "preroutingSource",
    "renderRules",
    "restoreText",
]

#: Our top chain's name, and the prefix of every other chain of ours.
DEFAULT_CHAIN = "EDGE-TUNNEL"

#: The listener kinds, in the order their chains are written.
LISTENER_KINDS = tuple(Listener)

#: The built-in chains we hook; a jump to our chains from any other chain
#: is left alone while syncing (removed only on stop, to delete the chains).
HOOKS = ("PREROUTING", "OUTPUT")

#: The first rule of our top chain: a connection to an address of this
#: host (of its network namespace) is never DNATed.  When an agent runs
#: where the server does (one host, one netns: a node that is also the
#: server's), its node IP is local, and its own dial to the node's kubelet
#: (node IP:10250) would be DNATed back into the server, which would send it
#: to the agent again: one request became a thousand streams, until the
#: agent's stream limit refused them.  A local address needs no tunnel: its
#: clients reach it directly, as they would without us.
LOCAL_RETURN = "-m addrtype --dst-type LOCAL -j RETURN"

#: iptables refuses longer chain names (XT_EXTENSION_MAXNAMELEN - 1).
_MAX_CHAIN_NAME = 28

#: How long C{iptables-restore} waits for the xtables lock (legacy
#: backend): another program's restore is usually quick.
_LOCK_WAIT_SECONDS = 5

#: How many C{conntrack -D} run at once: thousands of nodes leaving (a
#: server stopping) must not fork thousands of processes at a time.
_CONNTRACK_CONCURRENCY = 8

#: Addresses that mean "every interface" for a listener.
_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::", "*"})

#: Finds a command on C{PATH} (a seam for tests: replaced by a fake there).
_which: Callable[[str], str | None] = shutil.which

ListenerAddress = tuple[str, int]
"""A listener's bound address: C{(host, port)}; host C{"0.0.0.0"} is all."""


class IptablesError(TunnelError):
    """A command failed; C{str()} is one line with its stderr."""


def _oneLine(text: bytes | str, limit: int = 400) -> str:
    """Command output as one short line: lines joined with C{" | "}."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[:limit] + "..."


def _isOurs(name: str, chain: str) -> bool:
    return name == chain or name.startswith(chain + "-")


def _kindChain(chain: str, kind: str) -> str:
    return f"{chain}-{kind.upper()}"


def _fromChain(chain: str) -> str:
    """The chain PREROUTING jumps to: who routed traffic may come from (no longer than -HTTPS)."""
    return f"{chain}-FROM"


#: A network interface name as Linux allows it (IFNAMSIZ - 1 characters, no
#: slash or whitespace), optionally ending with iptables' C{+} wildcard.
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}\+?|\+", re.ASCII)


def preroutingSource(text: str) -> str:
    """
    An IPv4 source network for C{--iptables-prerouting-source}, as
    C{iptables-save} prints it (C{10.0.0.0/8}, C{192.0.2.7/32}).

    @raise ValueError: not an IPv4 network (host bits are allowed and
        dropped: C{10.1.2.3/8} is C{10.0.0.0/8}).
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 network (CIDR)") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{text!r} is not an IPv4 network: the rules are IPv4 only")
    return str(network) if network.prefixlen else "0.0.0.0/0"


def preroutingInterface(name: str) -> str:
    """
    An interface name for C{--iptables-prerouting-interface}.

    @raise ValueError: not a name Linux or iptables accepts (at most 15
        characters, no whitespace or C{/}; C{eth+} matches a prefix).
    """
    if _INTERFACE.fullmatch(name) is None or name in (".", ".."):
        raise ValueError(f"{name!r} is not a network interface name")
    return name


def _preroutingRules(
    chain: str, sources: Iterable[str], interfaces: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    """
    The rules of C{<chain>-FROM}: a jump to C{chain} for each named source
    network and arriving interface (each pair, when both are named), as
    C{iptables-save} prints them.

    @raise ValueError: neither sources nor interfaces are named: routed
        traffic from anywhere would reach the listeners, which must be
        asked for explicitly (source C{0.0.0.0/0}).
    """
    nets = sorted(
        {ipaddress.IPv4Network(preroutingSource(s)) for s in sources},
        key=lambda n: (int(n.network_address), n.prefixlen),
    )
    names = sorted({preroutingInterface(i) for i in interfaces})
    if not nets and not names:
        raise ValueError(
            "PREROUTING needs the sources or interfaces routed traffic may come from "
            "(source 0.0.0.0/0 for everyone)"
        )
    # iptables prints no -s for 0.0.0.0/0: it matches everything
    matchSource = (
        [""] if any(n.prefixlen == 0 for n in nets) or not nets else [f"-s {n} " for n in nets]
    )
    matchInterface = [f"-i {name} " for name in names] or [""]
    target = f"-j {chain}"
    return tuple(
        (_fromChain(chain), f"{s}{i}{target}") for s in matchSource for i in matchInterface
    )


def _checkChain(chain: str) -> None:
    longest = _kindChain(chain, "https")
    if not chain or len(longest) > _MAX_CHAIN_NAME or any(c.isspace() for c in chain):
        raise ValueError(
            f"chain name {chain!r}: its sub-chains ({longest}) must be at most "
            f"{_MAX_CHAIN_NAME} characters, without spaces"
        )


# Rendering: pure functions.


def listenerPorts(config: ProxyConfig) -> dict[str, frozenset[int]]:
    """
    Which node ports each listener receives: 10250 and C{https-proxy-ports}
    the HTTPS one; 10255, C{http-proxy-ports} and the left sides of
    C{dnat-ports-pair} the HTTP one; C{tcp-proxy-ports} the raw TCP one.
    """
    return {
        "https": config.httpsPorts,
        "http": config.httpPorts | config.dnatPorts,
        "tcp": config.tcpPorts,
    }


def listenerAddress(endpoint: object) -> ListenerAddress | None:
    """
    The address a server endpoint built by C{serverFromString} listens on,
    for the manager's C{listeners}: C{("0.0.0.0", 10264)} for C{tcp:10264},
    C{("127.0.0.1", 10264)} for C{tcp:10264:interface=127.0.0.1}; C{None}
    for anything but TCP (a UNIX socket cannot be a DNAT target).

    It reads the endpoint's private C{_interface} and C{_port}, as
    C{connectDoorIsLocal} does: Twisted's own parsing decides where the
    listener binds, so it must decide here too.
    """
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", None)
    if not isinstance(port, int) or not isinstance(interface, str):
        return None
    return (interface or "0.0.0.0", port)


def _dnatTarget(
    kind: str, address: ListenerAddress, prerouting: bool
) -> tuple[str | None, list[str]]:
    """
    The target part of a node rule for a listener (C{-j DNAT ...}), or
    C{None} when no IPv4 rule can reach that listener; and notes for the log.

    A listener on every interface is DNATed to C{127.0.0.1}: C{0.0.0.0} is
    not an address one can send to, and the loopback address is the one
    address such a listener always accepts, whatever interfaces the host has
    or gains (routing a packet born on this host to 127.0.0.1 is always
    allowed).  From PREROUTING that would be a "martian" destination
    (dropped unless C{route_localnet} is set, which exposes every
    loopback-only service to the neighbours), so with PREROUTING hooked the
    target is C{REDIRECT} instead: the kernel DNATs to C{127.0.0.1} for
    packets born here and to the address of the incoming interface for
    routed ones, both of which a listener on every interface accepts.
    """
    host, port = address
    host = host.strip("[]")
    notes: list[str] = []
    if not 1 <= port <= 65535:
        return None, [f"{kind} listener port {port} cannot be a DNAT target: no {kind} rules"]
    if host in _ALL_INTERFACES:
        if prerouting:
            return f"-j REDIRECT --to-ports {port}", notes
        return f"-j DNAT --to-destination 127.0.0.1:{port}", notes
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None, [f"{kind} listener address {host!r} is not an IP address: no {kind} rules"]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return None, [
                f"{kind} listener on IPv6 address {ip} cannot be reached by IPv4 DNAT: "
                f"no {kind} rules"
            ]
        ip = ip.ipv4_mapped
    if prerouting and ip.is_loopback:
        notes.append(
            f"PREROUTING traffic DNATed to the {kind} listener on loopback {ip} is dropped "
            f"unless net.ipv4.conf.<interface>.route_localnet=1"
        )
    return f"-j DNAT --to-destination {ip}:{port}", notes


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@functools.lru_cache(maxsize=1 << 16)
def _nodeIPv4(text: str) -> tuple[ipaddress.IPv4Address | None, str | None]:
    """
    A node IP we may DNAT, or a note saying why not.

    Cached: parsing addresses is most of the rendering's time, and the same
    node IPs come back at every sync.
    """
    ip = parseIP(text)
    if ip is None:
        return None, f"node IP {text!r} is not an IP address: not DNATed"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return None, f"IPv6 node IP {ip} not DNATed: only IPv4 is"
        ip = ip.ipv4_mapped
    # An agent announcing one of these would capture the server host's own
    # traffic (its loopback services, the metadata service...), not reach
    # an edge node: never DNAT them.
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return None, f"node IP {ip} not DNATed: a loopback, link-local or special address"
    if ip.is_reserved or ip == _BROADCAST:
        return None, f"node IP {ip} not DNATed: a reserved address"
    return ip, None


@frozen
class Ruleset:
    """
    The rules we want in the C{nat} table, as C{iptables-save} prints them.

    @ivar chain: our top chain.
    @ivar hooks: the built-in chains that jump to it.
    @ivar chains: every chain of ours, the top one first.
    @ivar rules: C{(chain, rule)} with the rule as after C{-A <chain> }.
    @ivar targets: C{(node IP, port, listener kind)} for every DNATed
        destination: the desired state the rules express.
    @ivar nodes: the node IPs that have rules, in address order.
    @ivar notes: why some node IPs or listeners have no rules, one line each.
    """

    chain: str
    hooks: tuple[str, ...]
    chains: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]
    targets: frozenset[tuple[str, int, str]]
    nodes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ruleCount(self) -> int:
        """Rules in our chains (the jumps from the hooks are not counted)."""
        return len(self.rules)

    def hookJump(self, hook: str) -> str:
        """
        The jump from C{hook} to our chains: OUTPUT to the top chain;
        PREROUTING to C{<chain>-FROM}, which lets in only the named sources.
        """
        return _hookJump(_fromChain(self.chain) if hook == "PREROUTING" else self.chain)

    def destinations(self) -> frozenset[tuple[str, int]]:
        """C{(node IP, port)} for every DNATed destination."""
        return frozenset((ip, port) for ip, port, _ in self.targets)

    def chainRules(self) -> dict[str, tuple[str, ...]]:
        """Our rules by chain, every chain of ours present."""
        byChain: dict[str, list[str]] = {name: [] for name in self.chains}
        for name, rule in self.rules:
            byChain[name].append(rule)
        return {name: tuple(rules) for name, rules in byChain.items()}


def renderRules(
    nodeIPs: Iterable[str],
    config: ProxyConfig,
    listeners: Mapping[str, ListenerAddress | None],
    *,
    prerouting: bool = False,
    preroutingSources: Iterable[str] = (),
    preroutingInterfaces: Iterable[str] = (),
    chain: str = DEFAULT_CHAIN,
) -> Ruleset:
    """
    The rules that DNAT every forwarded port of C{nodeIPs} to its listener.

    @param nodeIPs: the node IPs of the connected agents, and only those: a
        node whose agent is not connected has no rule, so its traffic fails
        as it would without the tunnel instead of going to a listener that
        can only refuse it.  IPv6 addresses are skipped (with a note).
    @param listeners: C{{kind: (host, port)}} for C{"https"}, C{"http"},
        C{"tcp"}; a kind that is absent or C{None} (C{--...-endpoint none})
        gets no chain and no rules.
    @param prerouting: whether C{PREROUTING} is hooked too, which changes
        the target for listeners on every interface (see L{_dnatTarget}).
    @param preroutingSources: with C{prerouting}, the IPv4 source networks
        routed traffic is DNATed from (L{preroutingSource}).
    @param preroutingInterfaces: with C{prerouting}, the interfaces routed
        traffic is DNATed from when arriving on them (with sources too:
        from those sources arriving on those interfaces).
    @raise ValueError: C{prerouting} without sources or interfaces, or one
        that is not valid.
    """
    _checkChain(chain)
    fromRules = (
        _preroutingRules(chain, preroutingSources, preroutingInterfaces) if prerouting else ()
    )
    unknown = set(listeners) - set(LISTENER_KINDS)
    if unknown:
        raise ValueError(f"unknown listener kinds {sorted(unknown)}: {LISTENER_KINDS}")
    notes: list[str] = []
    ips: set[ipaddress.IPv4Address] = set()
    for text in nodeIPs:
        ip, note = _nodeIPv4(text)
        if ip is not None:
            ips.add(ip)
        elif note is not None:
            notes.append(note)
    nodes = [str(ip) for ip in sorted(ips, key=int)]
    portsOf = listenerPorts(config)
    chains = [chain]
    dispatch: list[tuple[int, str]] = []
    nodeRules: list[tuple[str, str]] = []
    targets: set[tuple[str, int, str]] = set()
    for kind in LISTENER_KINDS:
        ports = portsOf[kind]
        address = listeners.get(kind)
        if not ports:
            continue
        if address is None:
            continue
        target, targetNotes = _dnatTarget(kind, address, prerouting)
        notes.extend(targetNotes)
        if target is None:
            continue
        sub = _kindChain(chain, kind)
        chains.append(sub)
        dispatch.extend((port, sub) for port in ports)
        nodeRules.extend((sub, f"-d {ip}/32 -p tcp {target}") for ip in nodes)
        targets.update((ip, port, kind) for ip in nodes for port in ports)
    rules = [(chain, f"-p tcp -m tcp --dport {port} -j {sub}") for port, sub in sorted(dispatch)]
    if rules:
        # first: never a connection to an address of this host (see LOCAL_RETURN)
        rules.insert(0, (chain, LOCAL_RETURN))
    if prerouting:
        chains.append(_fromChain(chain))
    return Ruleset(
        chain=chain,
        hooks=HOOKS if prerouting else ("OUTPUT",),
        chains=tuple(chains),
        rules=tuple(rules + nodeRules) + fromRules,
        targets=frozenset(targets),
        nodes=tuple(nodes),
        notes=tuple(notes),
    )


@frozen
class NatState:
    """
    What C{iptables-save -t nat} shows of ours.

    @ivar chain: our top chain (the prefix of our chain names).
    @ivar chains: every chain of ours that exists.
    @ivar rules: our rules by chain, as after C{-A <chain> }.
    @ivar jumps: C{(chain, rule)} for every rule in a chain that is not ours
        whose target (C{-j} or C{-g}) is one of ours.
    """

    chain: str
    chains: frozenset[str] = frozenset()
    rules: Mapping[str, tuple[str, ...]] = field(factory=dict)
    jumps: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing of ours is in the table."""
        return not self.chains and not self.jumps

    def destinations(self) -> frozenset[tuple[str, int]]:
        """
        C{(node IP, port)} that our current rules DNAT, read back from rules
        in the shape L{renderRules} writes (dispatch by C{--dport} in the top
        chain, C{-d <ip>/32} in the chain it jumps to); anything else is
        ignored.  This is what conntrack is flushed for when rules go, and it
        works for the leftovers of a previous run too.
        """
        portsByChain: dict[str, set[int]] = {}
        for rule in self.rules.get(self.chain, ()):
            tokens = _tokens(rule)
            port = _option(tokens, "--dport")
            target = _target(tokens)
            if port is None or not port.isdigit() or target is None:
                continue
            portsByChain.setdefault(target, set()).add(int(port))
        pairs: set[tuple[str, int]] = set()
        for sub, ports in portsByChain.items():
            for rule in self.rules.get(sub, ()):
                destination = _option(_tokens(rule), "-d")
                if destination is None:
                    continue
                ip = destination.removesuffix("/32")
                pairs.update((ip, port) for port in ports)
        return frozenset(pairs)


def _tokens(rule: str) -> list[str]:
    """
    A rule's words.  C{shlex} only when there are quotes (a comment): it is
    slow, and a sync may read thousands of our own rules.
    """
    if '"' not in rule and "'" not in rule:
        return rule.split()
    try:
        return shlex.split(rule)
    except ValueError:
        return rule.split()


def _option(tokens: list[str], name: str) -> str | None:
    for index, token in enumerate(tokens[:-1]):
        if token == name:
            return tokens[index + 1]
    return None


def _target(tokens: list[str]) -> str | None:
    for name in ("-j", "--jump", "-g", "--goto"):
        value = _option(tokens, name)
        if value is not None:
            return value
    return None


def parseNat(saved: str, chain: str = DEFAULT_CHAIN) -> NatState:
    """
    Our part of the C{nat} table, from what C{iptables-save -t nat} printed.

    Chains are ours when named C{chain} or C{chain-*} exactly
    (C{EDGE-TUNNELS} is not).  Rules are kept as printed, so that a jump can
    be deleted by replaying its line with C{-D}.
    """
    inNat = False
    chains: set[str] = set()
    rules: dict[str, list[str]] = {}
    jumps: list[tuple[str, str]] = []
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            inNat = line == "*nat"
            continue
        if not inNat or not line or line.startswith("#"):
            continue
        if line == "COMMIT":
            inNat = False
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if _isOurs(name, chain):
                chains.add(name)
                rules.setdefault(name, [])
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            _, name, rule = parts
            if _isOurs(name, chain):
                rules.setdefault(name, []).append(rule)
            elif chain in rule:
                # Only a rule that names our chain can jump to it (a host
                # with kube-proxy has tens of thousands of others).
                target = _target(_tokens(rule))
                if target is not None and _isOurs(target, chain):
                    jumps.append((name, rule))
    return NatState(
        chain=chain,
        chains=frozenset(chains),
        rules={name: tuple(lines) for name, lines in rules.items()},
        jumps=tuple(jumps),
    )


def _hookJump(chain: str) -> str:
    return f"-j {chain}"


def restoreText(desired: Ruleset, current: NatState) -> str | None:
    """
    The input of one C{iptables-restore --noflush} that turns C{current}
    into C{desired}, or C{None} when they are the same already.

    C{:<chain> - [0:0]} creates each of our chains, or flushes it if it
    exists, and the C{-A} lines refill it: C{iptables-restore} commits a
    table as one transaction, so no packet ever sees a half-written chain,
    and a failure (a bad rule, the lock) changes nothing at all.  Only our
    chains are declared, and with C{--noflush} no other chain is touched.

    The jump from each hook is inserted (first in the chain, like
    yurt-tunnel's) only when absent, and duplicates are deleted, so there is
    always exactly one; a jump from a hook we no longer use (PREROUTING
    turned off) goes.  Chains of ours that are not wanted any more (a
    listener turned off, leftovers of another version) are flushed and
    deleted, after every rule that jumps to them.
    """
    if desired.chain != current.chain:
        raise ValueError(f"chains differ: {desired.chain} and {current.chain}")
    wanted = desired.chainRules()
    stale = sorted(current.chains - set(wanted))
    staleSet = set(stale)
    kept: set[str] = set()
    deletions: list[str] = []
    for name, rule in current.jumps:
        if name in desired.hooks and rule == desired.hookJump(name) and name not in kept:
            kept.add(name)
        elif name in HOOKS or _target(_tokens(rule)) in staleSet:
            deletions.append(f"-D {name} {rule}")
    insertions = [
        f"-I {hook} {desired.hookJump(hook)}" for hook in desired.hooks if hook not in kept
    ]
    unchanged = (
        not stale
        and not deletions
        and not insertions
        and all(
            name in current.chains and tuple(current.rules.get(name, ())) == rules
            for name, rules in wanted.items()
        )
    )
    if unchanged:
        return None
    lines = ["*nat"]
    lines.extend(f":{name} - [0:0]" for name in desired.chains)
    lines.extend(f"-A {name} {rule}" for name, rule in desired.rules)
    lines.extend(deletions)
    lines.extend(f"-F {name}" for name in stale)
    lines.extend(f"-X {name}" for name in stale)
    lines.extend(insertions)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def cleanupText(current: NatState) -> str | None:
    """
    The input of one C{iptables-restore --noflush} that removes everything
    of ours: every rule that jumps to our chains (wherever it is: a chain
    cannot be deleted while referenced), then our chains, flushed first (a
    chain must be empty to be deleted).  C{None} when there is nothing.
    """
    if current.empty:
        return None
    chains = sorted(current.chains)
    lines = ["*nat"]
    lines.extend(f"-D {name} {rule}" for name, rule in current.jumps)
    lines.extend(f"-F {name}" for name in chains)
    lines.extend(f"-X {name}" for name in chains)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# Running commands.


def _environment() -> dict[str, str]:
    """Ours, in the C locale: stderr is matched ("0 flow entries") and logged."""
    return {**os.environ, "LC_ALL": "C"}


def checkAvailable(
    iptablesSave: str = "iptables-save",
    iptablesRestore: str = "iptables-restore",
    *,
    commandPrefix: Sequence[str] = (),
    timeout: float = 10.0,
) -> str | None:
    """
    Why this process cannot manage iptables, or C{None} if it can.

    It runs C{iptables-save -t nat}, which needs what changing the rules
    needs (root, or C{CAP_NET_ADMIN} in the network namespace) and loads the
    C{nat} table if it must; so the answer does not depend on guessing from
    the user id.  B{Blocking}: for C{makeService}, before the reactor runs,
    so that the daemon can refuse C{--iptables} (or turn it off by default)
    with this one line.
    """
    for command in (iptablesSave, iptablesRestore):
        program = commandPrefix[0] if commandPrefix else command
        if shutil.which(program) is None:
            return f"the {program} command was not found (install iptables)"
    argv = [*commandPrefix, iptablesSave, "-t", "nat"]
    try:
        result = subprocess.run(
            argv, capture_output=True, timeout=timeout, env=_environment(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{' '.join(argv)} failed: {e}"
    if result.returncode != 0:
        reason = _oneLine(result.stderr) or f"status {result.returncode}"
        return f"{' '.join(argv)} failed ({reason}); managing iptables needs root or CAP_NET_ADMIN"
    return None


@frozen
class _Output:
    """How a command ended: C{status} is C{None} when a signal ended it."""

    status: int | None
    out: bytes
    err: bytes


class _Command(ProcessProtocol):
    """
    Feeds a child its stdin, collects its output, and fires C{finished}
    with an L{_Output} when it has ended.  Cancelling C{finished} kills it.
    """

    def __init__(self, stdin: bytes | None) -> None:
        self._stdin = stdin
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.finished: Deferred[_Output] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[_Output]) -> None:
        self.kill()

    def kill(self) -> None:
        """Kill the child now, if it still runs."""
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass  # Already gone.

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        if self.finished.called:
            return  # Cancelled: the Deferred has failed already.
        status = getattr(reason.value, "exitCode", None)
        self.finished.callback(_Output(status, b"".join(self._out), b"".join(self._err)))


# The manager.


class IptablesManager(Service):
    """
    Keeps our C{nat} chains equal to what the connected agents and the
    configuration call for.

    A sync reads the table (C{iptables-save -t nat}), renders the rules
    (L{renderRules}), and applies the difference with one
    C{iptables-restore --noflush} (L{restoreText}), nothing when there is no
    difference.  Syncs are requested by the registry (an agent came or went),
    by L{configChanged}, and every C{interval} seconds (which also repairs
    rules someone else removed); a burst of requests becomes one sync after
    C{delay} seconds, at most one sync runs at a time, and a request during
    a sync makes one more sync after it.  A failed sync is logged (one
    warning with the command's stderr), counted, and retried at the next one;
    C{iptables-restore} being atomic, the previous rules stay in force.

    The first sync after start is also the cleanup of a previous run that
    crashed: the table is read, not assumed, so leftover chains, rules and
    jumps are replaced or deleted in the same transaction.  On stop
    (L{stopService}), one restore removes the jumps and our chains.

    When a rule goes (a gone node's time is up, a port is unconfigured),
    C{conntrack -D} deletes the conntrack entries of that destination, so
    that a connection already tracked as DNATed does not keep going to the
    listener.

    @ivar lastSyncDuration: seconds the last successful sync took, or
        C{None} before the first.
    @ivar syncSeconds: seconds all successful syncs took, together.
    @ivar syncErrors: how many syncs (and stop cleanups) have failed.
    @ivar ruleCount: rules in our chains after the last successful sync.
    @ivar syncCount: how many syncs have ended, successful or not.
    @ivar restoreCount: how many C{iptables-restore} runs succeeded (a sync
        with nothing to change runs none).
    @ivar conntrackErrors: how many C{conntrack -D} failed (other than for
        finding nothing to delete).
    @ivar lastError: the last failure's line, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        listeners: Mapping[str, ListenerAddress | None],
        config: Callable[[], ProxyConfig],
        registry: NodeRoutes,
        *,
        prerouting: bool = False,
        preroutingSources: Sequence[str] = (),
        preroutingInterfaces: Sequence[str] = (),
        interval: float = 60.0,
        delay: float = 0.1,
        iptablesRestore: str = "iptables-restore",
        iptablesSave: str = "iptables-save",
        conntrack: str | None = "conntrack",
        commandPrefix: Sequence[str] = (),
        chain: str = DEFAULT_CHAIN,
        commandTimeout: float = 30.0,
        stopTimeout: float = 10.0,
    ) -> None:
        """
        @param reactor: a clock that can spawn processes (C{IReactorProcess}).
        @param listeners: C{{"https"|"http"|"tcp": (host, port) or None}};
            see L{listenerAddress} and L{renderRules}.
        @param config: the configuration in force, asked at each sync.
        @param registry: the routed nodes (the server's L{RoutedNodes}:
            connected, and recently gone); their IPs get rules.
        @param prerouting: hook PREROUTING as well as OUTPUT, for traffic
            routed through this host (other hosts, local containers).
        @param preroutingSources: with C{prerouting}, the IPv4 networks
            routed traffic may come from; see L{renderRules}.
        @param preroutingInterfaces: with C{prerouting}, the interfaces it
            may arrive on.  One of the two is required with C{prerouting}.
        @param interval: seconds between periodic syncs.
        @param delay: seconds a sync waits after being requested, so that a
            burst of changes (agents reconnecting) becomes one sync.
        @param commandPrefix: put before every command, e.g. C{["ip",
            "netns", "exec", "ns1"]} to manage another network namespace.
        @param conntrack: the conntrack command, or C{None} not to flush.
        @param commandTimeout: a command still running after this is killed
            (and the sync counted as failed).
        @param stopTimeout: L{stopService} gives up on the cleanup after this.
        """
        _checkChain(chain)
        unknown = set(listeners) - set(LISTENER_KINDS)
        if unknown:
            raise ValueError(f"unknown listener kinds {sorted(unknown)}: {LISTENER_KINDS}")
        if prerouting:  # refused now, not at the first sync
            _preroutingRules(chain, preroutingSources, preroutingInterfaces)
        self._clock = reactor
        self._spawner = IReactorProcess(reactor)
        self.listeners = dict(listeners)
        self.config = config
        self.registry = registry
        self.prerouting = prerouting
        self.preroutingSources = tuple(preroutingSources)
        self.preroutingInterfaces = tuple(preroutingInterfaces)
        self.interval = interval
        self.delay = delay
        self.iptablesRestore = iptablesRestore
        self.iptablesSave = iptablesSave
        self.conntrack = conntrack
        self.commandPrefix = tuple(commandPrefix)
        self.chain = chain
        self.commandTimeout = commandTimeout
        self.stopTimeout = stopTimeout

        self.lastSyncDuration: float | None = None
        self.syncSeconds = 0.0
        self.syncErrors = 0
        self.ruleCount = 0
        self.syncCount = 0
        self.restoreCount = 0
        self.conntrackErrors = 0
        self.lastError: str | None = None

        self._unsubscribe: Callable[[], None] | None = None
        self._scheduled: IDelayedCall | None = None
        self._periodic: IDelayedCall | None = None
        self._syncing = False
        self._again = False
        self._firstSync = True
        self._waiters: list[Deferred[bool]] = []
        self._idleWaiters: list[Deferred[None]] = []
        self._commands: set[_Command] = set()
        self._notes: frozenset[str] = frozenset()
        self._conntrackMissing = False

    # Service.

    def startService(self) -> None:
        """Follow the registry, and sync (which clears a crashed run's leftovers)."""
        super().startService()
        self._firstSync = True
        self._unsubscribe = self.registry.subscribe(self.requestSync)
        hooks = "OUTPUT"
        if self.prerouting:
            scope = [*self.preroutingSources, *(f"on {i}" for i in self.preroutingInterfaces)]
            hooks = f"OUTPUT and PREROUTING (from {', '.join(scope)})"
        self.log.info(
            "iptables: DNAT of connected nodes' ports to the proxy listeners in nat chain "
            "{chain}, hooked from {hooks}",
            chain=self.chain,
            hooks=hooks,
        )
        self.requestSync()

    def stopService(self) -> Deferred[None]:
        """
        Stop syncing; remove our jumps and chains with one restore, and flush
        conntrack for the rules removed.

        @return: fires when done, or after C{stopTimeout} seconds (whatever
            is still running is then killed, and the next start removes what
            is left); never fails, so the daemon's shutdown goes on.
        """
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for call in (self._scheduled, self._periodic):
            if call is not None and call.active():
                call.cancel()
        self._scheduled = self._periodic = None
        self._again = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(False)

        stopping: Deferred[None] = Deferred.fromCoroutine(self._removeAll())
        stopping.addTimeout(self.stopTimeout, self._clock)

        def gaveUp(failure: Failure) -> None:
            for command in list(self._commands):
                command.kill()
            self.syncErrors += 1
            if failure.check(TimeoutError, CancelledError):
                self.lastError = f"cleanup did not finish within {self.stopTimeout:g}s"
            else:
                self.lastError = failure.getErrorMessage()
                self.log.failure("iptables cleanup failed", failure)
            self.log.warn(
                "iptables: {error}; chains of ours may be left (the next start removes them)",
                error=self.lastError,
            )

        stopping.addErrback(gaveUp)
        return stopping

    # Requests.

    def configChanged(self) -> None:
        """The configuration changed: sync soon (the daemon calls this)."""
        self.requestSync()

    def requestSync(self) -> None:
        """Sync soon: after C{delay}, or after the sync in progress."""
        if not self.running:
            return
        if self._syncing:
            self._again = True
        elif self._scheduled is None:
            self._scheduled = self._clock.callLater(self.delay, self._startSync)

    def sync(self) -> Deferred[bool]:
        """
        Request a sync.

        @return: fires with whether it succeeded, once a sync that started
            after this call has ended (C{False} if the service stops first).
        """
        waiter: Deferred[bool] = Deferred()
        if not self.running:
            waiter.callback(False)
            return waiter
        self._waiters.append(waiter)
        self.requestSync()
        return waiter

    def _startSync(self) -> None:
        self._scheduled = None
        if self._periodic is not None and self._periodic.active():
            self._periodic.cancel()
        self._periodic = None
        self._syncing = True
        waiters, self._waiters = self._waiters, []
        syncing = Deferred.fromCoroutine(self._sync())

        def done(result: bool | Failure) -> None:
            self._syncing = False
            self.syncCount += 1
            if isinstance(result, Failure):
                self.log.failure("iptables sync failed", result)
            succeeded = result is True
            for waiter in waiters:
                waiter.callback(succeeded)
            idle, self._idleWaiters = self._idleWaiters, []
            for idleWaiter in idle:
                if not idleWaiter.called:
                    idleWaiter.callback(None)
            if not self.running:
                return
            if self._again:
                self._again = False
                self.requestSync()
            else:
                self._periodic = self._clock.callLater(self.interval, self.requestSync)

        syncing.addBoth(done)

    # The work.

    async def _sync(self) -> bool:
        """One sync; never fails (a failure is logged, counted, and C{False})."""
        started = self._clock.seconds()
        try:
            desired = renderRules(
                [ip for record in self.registry for ip in record.ips],
                self.config(),
                self.listeners,
                prerouting=self.prerouting,
                preroutingSources=self.preroutingSources,
                preroutingInterfaces=self.preroutingInterfaces,
                chain=self.chain,
            )
            self._logNotes(desired.notes)
            current = await self._readNat()
            if self._firstSync and not current.empty:
                self.log.info(
                    "iptables: replacing leftovers of a previous run: chains {chains}, "
                    "{jumps} jumps",
                    chains=", ".join(sorted(current.chains)) or "none",
                    jumps=len(current.jumps),
                )
            text = restoreText(desired, current)
            if text is not None:
                await self._restore(text)
            self._firstSync = False
            self.ruleCount = desired.ruleCount
            # Unchanged rules DNAT the same destinations: nothing removed.
            removed = (
                frozenset() if text is None else current.destinations() - desired.destinations()
            )
            await self._flushConntrack(removed)
        except (IptablesError, TimeoutError) as e:
            self._failed(str(e) or "a command timed out")
            return False
        except Exception:
            self.log.failure("iptables sync failed")
            self._failed("unexpected error (see the traceback above)")
            return False
        self.lastSyncDuration = self._clock.seconds() - started
        self.syncSeconds += self.lastSyncDuration
        self.log.debug(
            "iptables sync: {rules} rules for {nodes} node IPs and {ports} ports, "
            "{change}, {removed} destinations removed, in {duration:.3f}s",
            rules=desired.ruleCount,
            nodes=len(desired.nodes),
            ports=len({port for _, port, _ in desired.targets}),
            change="unchanged" if text is None else "applied",
            removed=len(removed),
            duration=self.lastSyncDuration,
        )
        return True

    def _failed(self, error: str) -> None:
        self.syncErrors += 1
        self.lastError = error
        self.log.warn(
            "iptables sync failed (retrying at the next sync; the previous rules stay): {error}",
            error=error,
            errors=self.syncErrors,
        )

    def _logNotes(self, notes: Iterable[str]) -> None:
        """Log each note once while it holds, not at every periodic sync."""
        current = frozenset(notes)
        for note in sorted(current - self._notes):
            self.log.info("iptables: {note}", note=note)
        self._notes = current

    async def _removeAll(self) -> None:
        """Wait for a sync in progress, then remove everything of ours."""
        if self._syncing:
            idle: Deferred[None] = Deferred()
            self._idleWaiters.append(idle)
            await idle
        try:
            current = await self._readNat()
            text = cleanupText(current)
            if text is not None:
                await self._restore(text)
            self.ruleCount = 0
            await self._flushConntrack(current.destinations())
        except IptablesError as e:
            self.syncErrors += 1
            self.lastError = str(e)
            self.log.warn(
                "iptables: removing our chains failed (the next start removes them): {error}",
                error=str(e),
            )
            return
        if text is not None:
            self.log.info(
                "iptables: removed chains {chains} and {jumps} jumps",
                chains=", ".join(sorted(current.chains)) or "none",
                jumps=len(current.jumps),
            )

    async def _readNat(self) -> NatState:
        output = await self._run(self.iptablesSave, ["-t", "nat"])
        if output.status != 0:
            raise IptablesError(
                f"{self.iptablesSave} -t nat failed ({_status(output)}): {_oneLine(output.err)}"
            )
        return parseNat(output.out.decode("utf-8", "replace"), self.chain)

    async def _restore(self, text: str) -> None:
        output = await self._run(
            self.iptablesRestore,
            ["-w", str(_LOCK_WAIT_SECONDS), "--noflush"],
            stdin=text.encode("utf-8"),
        )
        if output.status != 0:
            raise IptablesError(
                f"{self.iptablesRestore} failed ({_status(output)}): {_oneLine(output.err)}"
            )
        self.restoreCount += 1

    async def _flushConntrack(self, destinations: Iterable[tuple[str, int]]) -> None:
        """
        Delete the conntrack entries of C{destinations} (best effort: a
        failure is counted and logged once per batch, never fails the sync).
        """
        pairs = sorted(destinations)
        if not pairs or self.conntrack is None:
            return
        program = self.commandPrefix[0] if self.commandPrefix else self.conntrack
        if _which(program) is None:
            if not self._conntrackMissing:
                self._conntrackMissing = True
                self.log.info(
                    "iptables: {command} not found: conntrack entries of removed rules are "
                    "not flushed (they expire on their own)",
                    command=program,
                )
            return
        self._conntrackMissing = False
        conntrack = self.conntrack
        semaphore = DeferredSemaphore(_CONNTRACK_CONCURRENCY)
        argvs = [["-D", "-p", "tcp", "--orig-dst", ip, "--dport", str(port)] for ip, port in pairs]
        results = await gatherResults(
            [semaphore.run(self._run, conntrack, argv) for argv in argvs]
        )
        failures = [
            output
            for output in results
            if output.status != 0 and not (output.status == 1 and b"0 flow entries" in output.err)
        ]
        if failures:
            self.conntrackErrors += len(failures)
            self.log.warn(
                "iptables: {failed} of {total} conntrack deletions failed: {error}",
                failed=len(failures),
                total=len(pairs),
                error=f"{_status(failures[0])}: {_oneLine(failures[0].err)}",
            )

    def _run(
        self, command: str, arguments: Sequence[str], stdin: bytes | None = None
    ) -> Deferred[_Output]:
        """
        Run C{command} (after the prefix) as a child of the reactor.

        @return: fires with its L{_Output}; fails with L{IptablesError} when
            it cannot be started or runs longer than C{commandTimeout}.
        """
        argv = [*self.commandPrefix, command, *arguments]
        executable = _which(argv[0])
        if executable is None:
            return fail(IptablesError(f"{argv[0]}: command not found"))
        child = _Command(stdin)
        try:
            self._spawner.spawnProcess(child, executable, argv, env=_environment())
        except OSError as e:
            return fail(IptablesError(f"cannot run {argv[0]}: {e.strerror or e}"))
        self._commands.add(child)
        finished = child.finished

        def ended(result: Any) -> Any:
            self._commands.discard(child)
            return result

        def timedOut(failure: Failure) -> Failure:
            failure.trap(TimeoutError)
            raise IptablesError(
                f"{' '.join(argv)} did not finish within {self.commandTimeout:g}s"
            ) from None

        finished.addBoth(ended)
        finished.addTimeout(self.commandTimeout, self._clock)
        finished.addErrback(timedOut)
        return finished


def _status(output: _Output) -> str:
    return "killed" if output.status is None else f"status {output.status}"
