# -*- test-case-name: tests.forwarding.test_config -*-
"""
The C{edge-tunnel-server-cfg} ConfigMap: which edge node ports the server's
proxy listeners forward, and how.

The ConfigMap is the one thing kube-apiserver, metrics-server and Prometheus
operators touch to open a port, so its keys and value formats are exactly the
ones ACK Edge documents (C{http-proxy-ports: "9052, 8080"},
C{dnat-ports-pair: "9051=10264"}, ...), plus our C{tcp-proxy-ports}.  Where
yurt-tunnel logs and skips a bad value, or drops a bad DNAT pair silently, we
refuse the whole configuration with one line that names the key and the
value: a half-applied ConfigMap is worse than an unchanged one.

Three layers, so each can be tested and reused alone:

  - L{parseConfigData}: the ConfigMap's C{data} (key to string) in, a
    L{ProxyConfig} or a L{ConfigError} out.  No I/O.
  - L{loadConfig}: reads a kubectl-style manifest file, or a directory laid
    out the way kubelet mounts a ConfigMap volume.  Blocking (the files are
    small): call it from C{makeService}, never per connection.
  - L{ConfigWatcher}: polls the same path on an injected clock and hands
    every valid change to a callback, so the server applies it live; an
    invalid change is refused and the last good configuration stays active.
"""

from __future__ import annotations

import difflib
import enum
import errno
import hashlib
import os
import re
import reprlib
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml
from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import TunnelError
from ..files import FileRefused, Poller, readFile

HTTP_PROXY_PORTS = "http-proxy-ports"
HTTPS_PROXY_PORTS = "https-proxy-ports"
LOCALHOST_PROXY_PORTS = "localhost-proxy-ports"
DNAT_PORTS_PAIR = "dnat-ports-pair"
TCP_PROXY_PORTS = "tcp-proxy-ports"
POLICY_PORTS = "policy-ports"

#: Every data key we accept, in the order they are checked (so that, of
#: several problems, the same one is always reported).
KNOWN_KEYS = (
    HTTP_PROXY_PORTS,
    HTTPS_PROXY_PORTS,
    LOCALHOST_PROXY_PORTS,
    DNAT_PORTS_PAIR,
    TCP_PROXY_PORTS,
    POLICY_PORTS,
)

#: The kubelet's port: always forwarded, always HTTPS.
KUBELET_PORT = 10250
#: The kubelet's read-only port: always forwarded, always plain HTTP.
KUBELET_READ_ONLY_PORT = 10255
#: C{localhost-proxy-ports} when the key is absent (ACK Edge's default).
DEFAULT_LOCALHOST_PORTS = frozenset({10250, 10255, 10266, 10267})
#: The HTTP proxy listener's port: the only valid right side of a DNAT pair.
DEFAULT_HTTP_LISTENER_PORT = 10264
#: Kubernetes refuses ConfigMaps larger than this; so do we, before parsing.
MAX_CONFIG_BYTES = 1024 * 1024
#: Entries in a ConfigMap-volume directory (C{..} entries aside) past which
#: it is refused unread: a ConfigMap here has six keys at most.
MAX_CONFIG_FILES = 64
#: Comma-separated entries under one key past which the value is refused
#: (real ones list a handful of ports): bounds the work a value makes.
MAX_ENTRIES_PER_KEY = 1024
#: YAML nodes (scalars, lists, mappings) in a manifest past which it is
#: refused while composing, before anything is built: a ConfigMap manifest,
#: even C{kubectl get -o yaml}'s with its C{managedFields}, has a few hundred.
MAX_YAML_NODES = 10_000
#: How deeply YAML collections may nest (a manifest needs 5 or 6 levels).
MAX_YAML_DEPTH = 32
#: The most of a value kept in L{ConfigError.value} (a structured log
#: field); the message itself shows at most 120 characters of it.
MAX_VALUE_FIELD = 4096
#: The most of a refusal's reason kept: one log line stays one short line.
MAX_REASON = 600


class Listener(enum.StrEnum):
    """
    The proxy listeners, one per way a forwarded port is carried: each
    serves the ports the ConfigMap gives its protocol (C{https-proxy-ports},
    C{http-proxy-ports} and C{dnat-ports}, C{tcp-proxy-ports}), and no
    other.  A string enum: C{Listener.HTTPS == "https"}, so policies that
    compare C{ForwardingRequest.listener} with a string keep working.
    """

    HTTPS = "https"
    HTTP = "http"
    TCP = "tcp"


class ConfigError(TunnelError):
    """
    The configuration is refused as a whole.

    C{str()} is one line that names the key, the value and why, ready for an
    operator's log; the same parts are kept as attributes for structured log
    fields.

    @ivar key: the data key at fault (or a manifest field such as C{kind}),
        or C{None} when the problem is the document or path as a whole.
    @ivar value: the offending value as text, or C{None}.
    @ivar reason: why it is refused.
    @ivar path: the file or directory it was read from, when known.
    """

    def __init__(
        self, key: str | None, value: str | None, reason: str, *, path: str | None = None
    ) -> None:
        # Every part is bounded: a value may be a mebibyte long, and a key
        # too (a file name, a YAML key), and this ends up in log lines.
        self.key = None if key is None else _clip(key, MAX_VALUE_FIELD)
        self.value = None if value is None else _clip(value, MAX_VALUE_FIELD)
        self.reason = _clip(_oneLine(reason), MAX_REASON)
        self.path = path
        parts = [] if path is None else [path]
        if key is not None:
            shownKey = _quote(key, 80)
            parts.append(
                f"key {shownKey}" if value is None else f"key {shownKey}, value {_quote(value)}"
            )
        parts.append(self.reason)
        super().__init__(": ".join(parts))

    def withPath(self, path: str) -> ConfigError:
        """The same refusal, saying which file or directory it came from."""
        return type(self)(self.key, self.value, self.reason, path=path)


class _Vanished(ConfigError):
    """
    The path, or a file under it, is not there right now.

    Kept apart from other refusals because it is usually transient: an
    editor's rename, or kubelet between swapping C{..data} and removing the
    old directory.  The watcher retries it instead of refusing.
    """


def _oneLine(text: str) -> str:
    """Line breaks (from YAML's messages) made spaces; quoted values left alone."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def _quote(text: str, limit: int = 120) -> str:
    """C{repr} of C{text}, shortened: a log line stays one short line."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _clip(text: str, limit: int) -> str:
    """C{text}, cut to C{limit} characters (marked with C{...}) if longer."""
    return text if len(text) <= limit else text[:limit] + "..."


#: Renders any YAML value in a bounded number of characters, however large
#: or nested (C{str()} of a nested list renders every element).
_shortRepr = reprlib.Repr()
_shortRepr.maxlevel, _shortRepr.maxstring, _shortRepr.maxother = 2, 40, 40


def _render(value: object) -> str:
    """Any value as text for a refusal: strings as they are, the rest bounded."""
    if isinstance(value, str):
        return _clip(value, MAX_VALUE_FIELD)
    return _clip(_shortRepr.repr(value), 200)


def _withHTTP(ports: Iterable[int]) -> frozenset[int]:
    return frozenset(ports) | {KUBELET_READ_ONLY_PORT}


def _withHTTPS(ports: Iterable[int]) -> frozenset[int]:
    return frozenset(ports) | {KUBELET_PORT}


def _portSet(ports: Iterable[int]) -> frozenset[int]:
    return frozenset(ports)


def _formatPorts(ports: frozenset[int]) -> str:
    return ", ".join(str(port) for port in sorted(ports)) or "none"


def _sortedPairs(pairs: Iterable[tuple[int, str]]) -> tuple[tuple[int, str], ...]:
    return tuple(sorted(pairs))


def _formatPolicies(pairs: tuple[tuple[int, str], ...]) -> str:
    return ", ".join(f"{port}={name}" for port, name in pairs) or "none"


@frozen
class ProxyConfig:
    """
    Which node ports the proxy listeners forward, and how.

    The fixed rules hold for every instance, however it was built: 10250 is
    always in C{httpsPorts} and 10255 always in C{httpPorts}, so the
    kubelet stays reachable whatever the ConfigMap says.  C{ProxyConfig()} is
    the configuration of an empty (or absent) ConfigMap.

    @ivar httpPorts: carried as plain HTTP (C{http-proxy-ports}, plus 10255).
    @ivar httpsPorts: TLS terminated and made again towards the node with the
        proxy client certificate (C{https-proxy-ports}, plus 10250).
    @ivar localhostPorts: dialled on the edge node's loopback instead of its
        IP (C{localhost-proxy-ports}); composes with the other sets.
    @ivar dnatPorts: the left sides of C{dnat-ports-pair}: carried as plain
        HTTP through the HTTP listener, like C{httpPorts}.
    @ivar tcpPorts: raw TCP by original destination (C{tcp-proxy-ports}, our
        extension).
    @ivar policyPorts: ports bound to a custom forwarding policy, by name
        (C{policy-ports: "9100=metrics-only"}, our extension), sorted by
        port.  Only a name: what it names is up to the operator (a plugin,
        or C{--policy NAME=module:attribute}), never the ConfigMap.
    """

    httpPorts: frozenset[int] = field(default=frozenset(), converter=_withHTTP)
    httpsPorts: frozenset[int] = field(default=frozenset(), converter=_withHTTPS)
    localhostPorts: frozenset[int] = field(default=DEFAULT_LOCALHOST_PORTS, converter=_portSet)
    dnatPorts: frozenset[int] = field(default=frozenset(), converter=_portSet)
    tcpPorts: frozenset[int] = field(default=frozenset(), converter=_portSet)
    policyPorts: tuple[tuple[int, str], ...] = field(default=(), converter=_sortedPairs)

    def __attrs_post_init__(self) -> None:
        # parseConfigData reports these with the key and value at fault; this
        # only catches a ProxyConfig built by hand with contradictory sets.
        for name in ("httpPorts", "httpsPorts", "localhostPorts", "dnatPorts", "tcpPorts"):
            for port in getattr(self, name):
                if not 1 <= port <= 65535:
                    raise ValueError(f"{name}: {port} is outside 1-65535")
        plainHTTP = self.httpPorts | self.dnatPorts
        for first, second in [
            (self.httpsPorts, plainHTTP),
            (self.tcpPorts, plainHTTP | self.httpsPorts),
        ]:
            both = first & second
            if both:
                raise ValueError(f"ports {_formatPorts(both)} have two protocols")

    def protocolFor(self, port: int) -> Listener | None:
        """
        How a connection for C{port} on a node is carried (which listener
        serves it), or C{None} when the proxy listeners must refuse it (the
        port is not configured).
        """
        if port in self.httpsPorts:
            return Listener.HTTPS
        if port in self.httpPorts or port in self.dnatPorts:
            return Listener.HTTP
        if port in self.tcpPorts:
            return Listener.TCP
        return None

    def policyName(self, port: int) -> str | None:
        """The custom policy bound to C{port}, if any (else the built-in one applies)."""
        for bound, name in self.policyPorts:
            if bound == port:
                return name
        return None

    def isLocalhost(self, port: int) -> bool:
        """Whether the agent dials the node's loopback rather than its IP."""
        return port in self.localhostPorts

    def forwardedPorts(self) -> frozenset[int]:
        """Every port the proxy listeners forward; any other is refused."""
        return self.httpPorts | self.httpsPorts | self.dnatPorts | self.tcpPorts

    def describe(self) -> str:
        """One line for logs, every set in full (fixed ports included)."""
        described = [f"{label} {_formatPorts(ports)}" for label, ports in self._labelled()]
        if self.policyPorts:
            described.append(f"policies {_formatPolicies(self.policyPorts)}")
        return "; ".join(described)

    def changesFrom(self, old: ProxyConfig) -> str:
        """
        One line saying what differs from C{old}, e.g.
        C{"http ports 9051, 10255 → 9051, 9100, 10255"}; empty if nothing.
        """
        changes = [
            f"{label} ports {_formatPorts(before)} → {_formatPorts(after)}"
            for (label, after), (_, before) in zip(self._labelled(), old._labelled(), strict=True)
            if after != before
        ]
        if self.policyPorts != old.policyPorts:
            before, after = _formatPolicies(old.policyPorts), _formatPolicies(self.policyPorts)
            changes.append(f"policies {before} → {after}")
        return "; ".join(changes)

    def _labelled(self) -> list[tuple[str, frozenset[int]]]:
        return [
            ("http", self.httpPorts),
            ("https", self.httpsPorts),
            ("localhost", self.localhostPorts),
            ("dnat", self.dnatPorts),
            ("tcp", self.tcpPorts),
        ]


_DIGITS = re.compile(r"[0-9]{1,5}")


def _port(key: str, value: str, item: str) -> int:
    if item.isascii() and item.isdigit() and len(item) > 5:
        raise ConfigError(key, value, f"{_quote(item, 20)} is outside 1-65535")
    if _DIGITS.fullmatch(item) is None:
        raise ConfigError(key, value, f"{_quote(item, 20)} is not a port number")
    port = int(item)
    if not 1 <= port <= 65535:
        raise ConfigError(key, value, f"{port} is outside 1-65535")
    return port


def _items(key: str, value: str) -> list[str]:
    """Comma-separated items, spaces optional; an empty value is no items."""
    if not value.strip():
        return []
    if value.count(",") >= MAX_ENTRIES_PER_KEY:
        raise ConfigError(key, value, f"more than {MAX_ENTRIES_PER_KEY} entries")
    items = [item.strip() for item in value.split(",")]
    if "" in items:
        raise ConfigError(key, value, "an empty entry between commas")
    return items


def _ports(key: str, value: str) -> frozenset[int]:
    return frozenset(_port(key, value, item) for item in _items(key, value))


def _dnatPairs(value: str, httpListenerPort: int) -> dict[int, str]:
    """Left side of each C{P=Q} pair, mapped to the pair's text."""
    pairs: dict[int, str] = {}
    for pair in _items(DNAT_PORTS_PAIR, value):
        left, equals, right = pair.partition("=")
        if not equals or "=" in right:
            raise ConfigError(DNAT_PORTS_PAIR, value, f"pair {_quote(pair, 40)} is not P=Q")
        try:
            port = _port(DNAT_PORTS_PAIR, value, left.strip())
            listener = _port(DNAT_PORTS_PAIR, value, right.strip())
        except ConfigError as e:
            raise ConfigError(
                DNAT_PORTS_PAIR, value, f"pair {_quote(pair, 40)}: {e.reason}"
            ) from None
        if listener != httpListenerPort:
            raise ConfigError(
                DNAT_PORTS_PAIR,
                value,
                f"pair {_quote(pair, 40)}: the right side must be the HTTP proxy listener's port "
                f"{httpListenerPort}, not {listener}",
            )
        pairs[port] = pair
    return pairs


def _unknownKey(key: str, value: str) -> ConfigError:
    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1) if len(key) <= 64 else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(key, value, f"unknown key{hint}; the keys are {', '.join(KNOWN_KEYS)}")


def parseConfigData(
    data: Mapping[str, str],
    *,
    httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
    resolvePolicy: Callable[[str], object] | None = None,
) -> ProxyConfig:
    """
    Check and interpret a ConfigMap's C{data}.

    @param data: key to value, both text, as in the ConfigMap.
    @param httpListenerPort: the HTTP proxy listener's port, the only valid
        right side of a C{dnat-ports-pair}.
    @raise ConfigError: for the first problem found, so nothing is partially
        applied: a port that is not a number in 1-65535, an empty entry
        between commas, an unknown key, the same port under two protocols
        (http and https, or tcp and any HTTP key), 10250 as anything but
        HTTPS or 10255 as anything but HTTP, or a DNAT pair that is not
        C{P=Q} or whose C{Q} is not C{httpListenerPort}; a C{policy-ports}
        entry that is not C{PORT=POLICY}, binds a port no other key
        forwards, or names a policy C{resolvePolicy} cannot find.
    @param resolvePolicy: finds a policy by name among those the operator
        installed or named, raising when there is none; so a configuration
        naming a missing policy is refused like any other bad value.  It
        must only look names up (see L{twisted_tunnel.forwarding.policy.findPolicy}):
        whoever may edit the ConfigMap must not choose code to run.
    """
    if not 1 <= httpListenerPort <= 65535:
        raise ValueError(f"httpListenerPort {httpListenerPort} is outside 1-65535")
    for key in sorted(data):
        value = data[key]
        if not isinstance(value, str):
            raise ConfigError(_render(key), _render(value), "the value must be a string")
        if key not in KNOWN_KEYS:
            raise _unknownKey(key, value)

    def listed(key: str) -> frozenset[int]:
        return _ports(key, data.get(key, ""))

    http = listed(HTTP_PROXY_PORTS)
    https = listed(HTTPS_PROXY_PORTS)
    localhost = (
        listed(LOCALHOST_PROXY_PORTS) if LOCALHOST_PROXY_PORTS in data else DEFAULT_LOCALHOST_PORTS
    )
    dnat = _dnatPairs(data.get(DNAT_PORTS_PAIR, ""), httpListenerPort)
    tcp = listed(TCP_PROXY_PORTS)

    always = {KUBELET_PORT: "HTTPS", KUBELET_READ_ONLY_PORT: "HTTP"}
    for key, ports, protocol in [
        (HTTP_PROXY_PORTS, http, "HTTP"),
        (HTTPS_PROXY_PORTS, https, "HTTPS"),
        (TCP_PROXY_PORTS, tcp, "TCP"),
    ]:
        for port, fixed in always.items():
            if port in ports and fixed != protocol:
                raise ConfigError(
                    key, data[key], f"port {port} is always {fixed}, it cannot be {protocol}"
                )
    for port, pair in dnat.items():
        if port == KUBELET_PORT:
            raise ConfigError(
                DNAT_PORTS_PAIR,
                data[DNAT_PORTS_PAIR],
                f"pair {_quote(pair, 40)}: port {port} is always HTTPS, "
                "it cannot be DNATed as HTTP",
            )

    both = http & https
    if both:
        raise ConfigError(
            HTTPS_PROXY_PORTS,
            data[HTTPS_PROXY_PORTS],
            f"port {min(both)} is also under {HTTP_PROXY_PORTS}; a port is HTTP or HTTPS, "
            "not both",
        )
    for port, pair in sorted(dnat.items()):
        if port in https:
            raise ConfigError(
                DNAT_PORTS_PAIR,
                data[DNAT_PORTS_PAIR],
                f"pair {_quote(pair, 40)} carries port {port} as HTTP, but it is also under "
                f"{HTTPS_PROXY_PORTS}",
            )
    for port in sorted(tcp):
        for key, ports in [
            (HTTP_PROXY_PORTS, http),
            (HTTPS_PROXY_PORTS, https),
            (DNAT_PORTS_PAIR, frozenset(dnat)),
        ]:
            if port in ports:
                raise ConfigError(
                    TCP_PROXY_PORTS,
                    data[TCP_PROXY_PORTS],
                    f"port {port} is also under {key}; a port has one protocol",
                )
    forwarded = http | https | frozenset(dnat) | tcp
    policies = _policyPairs(data.get(POLICY_PORTS, ""), forwarded, resolvePolicy)
    return ProxyConfig(
        httpPorts=http,
        httpsPorts=https,
        localhostPorts=localhost,
        dnatPorts=frozenset(dnat),
        tcpPorts=tcp,
        policyPorts=policies,
    )


def _policyPairs(
    value: str, forwarded: frozenset[int], resolvePolicy: Callable[[str], object] | None
) -> tuple[tuple[int, str], ...]:
    """
    C{policy-ports}: C{PORT=POLICY} entries, each port forwarded by another
    key (which decides the listener that serves it) and bound once.
    """
    pairs: dict[int, str] = {}
    for item in _items(POLICY_PORTS, value):
        left, equals, name = item.partition("=")
        name = name.strip()
        entry = _quote(item, 60)
        if not equals or not name:
            raise ConfigError(POLICY_PORTS, value, f"entry {entry} is not PORT=POLICY")
        port = _port(POLICY_PORTS, value, left.strip())
        if port not in forwarded:
            raise ConfigError(
                POLICY_PORTS,
                value,
                f"entry {entry}: port {port} is not forwarded; list it under "
                f"{HTTP_PROXY_PORTS}, {HTTPS_PROXY_PORTS} or {TCP_PROXY_PORTS} too",
            )
        if port in pairs:
            raise ConfigError(POLICY_PORTS, value, f"port {port} is bound twice")
        if resolvePolicy is not None:
            # A lookup among the policies the operator installed or named
            # (see policy.findPolicy): the ConfigMap only names them, it
            # never makes the server import or call anything.
            try:
                resolvePolicy(name)
            except Exception as e:
                raise ConfigError(POLICY_PORTS, value, f"entry {entry}: {e}") from None
        pairs[port] = name
    return tuple(sorted(pairs.items()))


@frozen
class _Source:
    """
    What one read of the path found, before any parsing.

    The watcher compares C{fingerprint}s to decide whether to parse at all,
    and then parses these very bytes: no second read that could see a
    different version.
    """

    fingerprint: bytes
    manifest: bytes | None
    files: Mapping[str, bytes]

    def data(self) -> dict[str, str]:
        if self.manifest is not None:
            return _manifestData(self.manifest)
        data = {}
        for key, content in self.files.items():
            try:
                data[key] = content.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(key, None, f"the file is not UTF-8 text ({e.reason})") from None
        return data


def _readBounded(path: str, key: str | None) -> bytes:
    """
    One file's bytes, read with L{readFile}: only a regular file (a FIFO or
    a device swapped in under C{..data} is refused at once, never waited
    on), and at most L{MAX_CONFIG_BYTES} of it.
    """
    try:
        return readFile(path, MAX_CONFIG_BYTES)
    except FileRefused as e:
        if e.errno == errno.EFBIG:
            raise ConfigError(key, None, "larger than a ConfigMap can be (1 MiB)") from None
        raise ConfigError(key, None, e.strerror or str(e)) from None


def _volumeEntries(root: str) -> list[str]:
    """
    The key files' names in a ConfigMap-volume directory, sorted, kubelet's
    C{..} entries left out; refused past L{MAX_CONFIG_FILES} without
    listing the rest.
    """
    names: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".."):
                continue
            names.append(entry.name)
            if len(names) > MAX_CONFIG_FILES:
                raise ConfigError(
                    None,
                    None,
                    f"more than {MAX_CONFIG_FILES} files; a ConfigMap volume holds one file "
                    f"per key, and there are {len(KNOWN_KEYS)} keys",
                )
    return sorted(names)


def _readSource(path: str) -> _Source:
    """
    Read C{path} (file or ConfigMap-volume directory) without parsing it.

    @raise _Vanished: something was missing, possibly only for a moment.
    @raise ConfigError: anything else that stops the read.
    """
    try:
        if not stat.S_ISDIR(os.stat(path).st_mode):
            content = _readBounded(path, None)
            return _Source(
                fingerprint=hashlib.sha256(b"file\0" + content).digest(),
                manifest=content,
                files={},
            )
        # kubelet's layout: keys are symlinks to ..data/<key>, and ..data is a
        # symlink to a ..<timestamp> directory that kubelet replaces with one
        # rename.  Resolving ..data once and reading that directory sees one
        # version of the ConfigMap, never a mix of two.
        dataLink = os.path.join(path, "..data")
        root = os.path.realpath(dataLink) if os.path.lexists(dataLink) else path
        files: dict[str, bytes] = {}
        digest = hashlib.sha256(b"directory\0")
        total = 0
        for name in _volumeEntries(root):
            entry = os.path.join(root, name)
            if stat.S_ISDIR(os.stat(entry).st_mode):
                raise ConfigError(
                    name, None, "is a directory; a ConfigMap volume holds one file per key"
                )
            content = _readBounded(entry, name)
            total += len(content)
            if total > MAX_CONFIG_BYTES:
                raise ConfigError(None, None, "larger than a ConfigMap can be (1 MiB)")
            files[name] = content
            for part in (name.encode("utf-8", "surrogateescape"), content):
                digest.update(len(part).to_bytes(8, "big") + part)
        return _Source(fingerprint=digest.digest(), manifest=None, files=files)
    except FileNotFoundError as e:
        raise _Vanished(None, None, _osReason(path, e)) from None
    except OSError as e:
        raise ConfigError(None, None, f"cannot read: {_osReason(path, e)}") from None


def _osReason(path: str, error: OSError) -> str:
    """C{strerror}, naming the file when it is not C{path} itself."""
    reason = error.strerror or str(error)
    if error.filename is None or os.fspath(error.filename) == path:
        return reason
    return f"{os.fspath(error.filename)}: {reason}"


class _Refused(yaml.MarkedYAMLError):
    """YAML that parses, but that a ConfigMap manifest has no business holding."""


#: libyaml's loader when PyYAML has it (its wheels do): some hundred times
#: faster than the pure-Python one, which takes a second per mebibyte of
#: YAML on the reactor thread.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _checkEvents(content: bytes) -> None:
    """
    Walk the manifest's YAML events, before any node or value is built, and
    refuse what a ConfigMap has no business holding.

    An anchor (C{&name}) or an alias (C{*name}) is refused where the parser
    first meets it: a ConfigMap has no use for them, and they are what
    makes a "billion laughs" bomb, where a few hundred bytes of nested
    aliases stand for hundreds of millions of values (a 366-byte one made
    C{str()} of the value build gigabytes on the reactor thread, until the
    kernel killed the server).  Refusing them outright, rather than capping
    an expansion, means nothing downstream (construction, comparison,
    rendering) ever sees a value larger than the file.  Values are counted
    (L{MAX_YAML_NODES}) and nesting capped (L{MAX_YAML_DEPTH}: composing
    recurses), which bounds the work a mebibyte of YAML can make.

    @raise _Refused: for the first such event, with its position.
    @raise yaml.YAMLError: if the YAML does not parse.
    """
    parser = _Loader(content)
    nodes = depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                problem = "anchors (&) and aliases (*) are not accepted in a ConfigMap"
            elif isinstance(event, yaml.NodeEvent):
                nodes += 1
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                if nodes > MAX_YAML_NODES:
                    problem = f"more than {MAX_YAML_NODES} values"
                elif depth > MAX_YAML_DEPTH:
                    problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
                else:
                    continue
            else:
                if isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
                continue
            raise _Refused(None, None, problem, event.start_mark)
    finally:
        parser.dispose()


def _yamlProblem(error: Exception) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        context = f"{error.context}, " if error.context else ""
        return f"{context}{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error) or type(error).__name__


def _scalarTexts(node: yaml.Node | None) -> tuple[dict[str, str], str | None]:
    """
    For a mapping node: each scalar value's source text by key, and the first
    key that appears twice (C{yaml.safe_load} silently keeps the last one,
    which would hide an operator's mistake).
    """
    texts: dict[str, str] = {}
    seen: set[str] = set()
    duplicate = None
    if isinstance(node, yaml.MappingNode):
        for keyNode, valueNode in node.value:
            name = _nodeText(keyNode)
            if name in seen and duplicate is None:
                duplicate = name
            seen.add(name)
            if isinstance(valueNode, yaml.ScalarNode):
                texts[name] = valueNode.value
    return texts, duplicate


def _nodeText(node: yaml.Node) -> str:
    """A key node as text: a scalar's source, anything else bounded."""
    if isinstance(node, yaml.ScalarNode):
        return str(node.value)
    return f"a YAML {type(node).__name__.removesuffix('Node').lower()}"


def _valueText(key: str, value: object, source: str | None) -> str:
    """
    A data value as text.  Strings are what kubectl accepts; an unquoted
    number is taken as written (C{http-proxy-ports: 9051}), since an operator
    plainly meant it; anything else is refused.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        what = "null" if value is None else "a YAML boolean"
        raise ConfigError(
            key,
            None if value is None else source,
            f'{what} where a string is expected (write "" for no ports)',
        )
    if isinstance(value, int):
        return source if source is not None else str(value)
    raise ConfigError(
        key,
        source or _render(value),
        f'a YAML {type(value).__name__} where a string such as "9051, 9052" is expected',
    )


def _composeManifest(content: bytes) -> tuple[yaml.Node | None, Any]:
    """
    The manifest's node tree and the values built from it, once
    L{_checkEvents} found it bounded: the tree gives the source text of
    values and catches duplicate keys, the values are what
    C{yaml.safe_load} gives.
    """
    _checkEvents(content)
    loader = _Loader(content)
    try:
        root = loader.get_single_node()
        document = None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()
    return root, document


def _manifestData(content: bytes) -> dict[str, str]:
    """The C{data} of a kubectl-style ConfigMap manifest, as text."""
    try:
        root, document = _composeManifest(content)
    except _Refused as e:
        raise ConfigError(None, None, f"YAML refused: {_yamlProblem(e)}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(None, None, f"YAML does not parse: {_yamlProblem(e)}") from None
    except (ValueError, ArithmeticError, TypeError) as e:
        # What SafeConstructor lets through on odd scalars, e.g. an integer
        # of more than 4300 digits, which int() refuses with advice for
        # programmers after the colon.
        problem = str(e).partition(":")[0] or type(e).__name__
        raise ConfigError(None, None, f"YAML does not parse: {problem}") from None
    if not isinstance(document, dict) or not isinstance(root, yaml.MappingNode):
        what = "empty" if document is None else f"a YAML {type(document).__name__}"
        raise ConfigError(None, None, f"not a ConfigMap manifest: the document is {what}")
    topTexts, duplicate = _scalarTexts(root)
    if duplicate is not None:
        raise ConfigError(duplicate, None, "appears twice in the manifest")
    for name, expected in [("kind", "ConfigMap"), ("apiVersion", "v1")]:
        found = document.get(name)
        if found != expected:
            raise ConfigError(
                name,
                None if found is None else _render(found),
                f"not a ConfigMap manifest ({name}: {expected} expected)",
            )
    if document.get("binaryData"):
        raise ConfigError("binaryData", None, "not supported: every key is text, under data")
    data = document.get("data")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "data", topTexts.get("data"), f"a YAML {type(data).__name__}, not a mapping"
        )
    dataNode = next((v for k, v in root.value if _nodeText(k) == "data"), None)
    texts, duplicate = _scalarTexts(dataNode)
    if duplicate is not None:
        raise ConfigError(duplicate, None, "appears twice under data")
    return {
        _render(key): _valueText(_render(key), value, texts.get(_render(key)))
        for key, value in data.items()
    }


def _parseSource(
    source: _Source, httpListenerPort: int, resolvePolicy: Callable[[str], object] | None
) -> ProxyConfig:
    return parseConfigData(
        source.data(), httpListenerPort=httpListenerPort, resolvePolicy=resolvePolicy
    )


def parseManifest(
    content: bytes,
    *,
    httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
    resolvePolicy: Callable[[str], object] | None = None,
) -> ProxyConfig:
    """
    Check and interpret a kubectl-style ConfigMap manifest given as bytes
    (what C{kubectl get configmap -o yaml} prints), with the same bounds
    and checks as L{loadConfig}: for C{edge-tunnel config check -}, which
    reads it from a pipe.

    @raise ConfigError: for the first problem found.
    """
    if len(content) > MAX_CONFIG_BYTES:
        raise ConfigError(None, None, "larger than a ConfigMap can be (1 MiB)")
    return parseConfigData(
        _manifestData(content), httpListenerPort=httpListenerPort, resolvePolicy=resolvePolicy
    )


def loadConfig(
    path: str,
    *,
    httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
    resolvePolicy: Callable[[str], object] | None = None,
) -> ProxyConfig:
    """
    Load the ConfigMap from C{path}.

    C{path} is either a YAML file holding a kubectl-style ConfigMap manifest
    (what C{kubectl apply -f} takes, or C{kubectl get -o yaml} prints), or a
    directory with one file per key, as kubelet mounts a ConfigMap volume
    (entries whose names start with C{..}, kubelet's bookkeeping, are
    skipped; C{..data} is followed when present).

    Blocking: the files are small, but call this at start-up, not on a hot
    path.

    @raise ConfigError: naming C{path}, and the key and value when there is
        one.
    """
    try:
        return _parseSource(_readSource(path), httpListenerPort, resolvePolicy)
    except ConfigError as e:
        raise e.withPath(path) from None


class ConfigIntake:
    """
    Where every version of the ConfigMap is offered, whatever read it: the
    checks, the apply, the refusal with one line, the rollback.  The file
    watcher (L{ConfigWatcher}) and the API watcher
    (C{twisted_tunnel.kube.configmap}) both feed it, so a change read from
    a mounted volume and one read from kube-apiserver are taken, or
    refused, exactly alike.

    Whatever goes wrong with new content leaves the last good configuration
    in force and the intake L{stale}, with one log line: a refusal (a
    L{ConfigError}), and equally any exception at all while reading or
    applying it (C{SystemExit} included: a C{BaseException} raised by a
    callback must neither stop the server nor vanish into the reactor's
    log).  If C{onChange} fails, it is handed the last good configuration
    back (so a consumer that applied half of the new one returns to the
    old), and the new content is tried again after a growing delay
    (L{retryDelays}), in case what failed was passing.

    @ivar origin: where the versions come from, for log lines and refusals
        (a path, or C{configmap NAMESPACE/NAME}).
    @ivar current: the configuration in force.
    @ivar stale: whether the source holds something other than C{current}
        (refused, missing, or failed to apply), so operators can be told.
    @ivar staleReason: why, one line (the L{ConfigError} text); C{None} when
        not stale.
    @ivar lastLoaded: clock time of the last successful load (construction
        time for the initial configuration).
    @ivar reloads: changed configurations taken into force (for metrics).
    @ivar refusals: configurations refused (for metrics).
    """

    log = Logger()

    #: Seconds before content whose C{onChange} failed is tried again: the
    #: first retry, then doubled at each failure up to the second.
    retryDelays = (10.0, 300.0)

    def __init__(
        self,
        origin: str,
        clock: IReactorTime,
        initial: ProxyConfig,
        onChange: Callable[[ProxyConfig], object],
        *,
        httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
        resolvePolicy: Callable[[str], object] | None = None,
    ) -> None:
        self.origin = origin
        self.resolvePolicy = resolvePolicy
        self.clock = clock
        self.onChange = onChange
        self.httpListenerPort = httpListenerPort
        self.current = initial
        self.stale = False
        self.staleReason: str | None = None
        self.lastLoaded = clock.seconds()
        self.reloads = 0
        self.refusals = 0
        # None: parse whatever is offered next (the initial configuration
        # came from elsewhere, and the source may have changed since).
        self._fingerprint: bytes | None = None
        # content whose onChange failed, how often in a row, and when to retry
        self._failedFingerprint: bytes | None = None
        self._applyFailures = 0
        self._retryAt = 0.0

    def offer(
        self, fingerprint: bytes, data: Callable[[], Mapping[str, str]]
    ) -> ConfigError | None:
        """
        Take one version of the ConfigMap: parse C{data()} (unless this
        C{fingerprint} was parsed last time) and apply it, or refuse it.

        @param fingerprint: identifies the content (a hash of it): the same
            content offered again is not parsed again.
        @param data: the ConfigMap's C{data}, called only if parsed; may
            raise L{ConfigError} itself (a manifest that is not one).
        @return: the refusal, if this offer was refused now (a new
            refusal, logged once); C{None} if taken, unchanged, or the
            same content as before.
        """
        if fingerprint == self._fingerprint:
            return None
        if fingerprint == self._failedFingerprint and self.clock.seconds() < self._retryAt:
            return None
        self._fingerprint = fingerprint
        try:
            new = parseConfigData(
                data(), httpListenerPort=self.httpListenerPort, resolvePolicy=self.resolvePolicy
            )
        except ConfigError as e:
            return self.refuse(e)
        except BaseException as e:
            # A bug (ours, or the policy resolver's): the same bytes would
            # fail the same way, so they are not parsed again.
            self._failed("reading it", e)
            return None
        self._accept(new, fingerprint)
        return None

    def forget(self) -> None:
        """Parse whatever is offered next, even if it is what was offered last."""
        self._fingerprint = None

    def refuse(self, error: ConfigError, failure: BaseException | None = None) -> ConfigError:
        """
        Take note of a refusal: stale, counted, and one log line (a warning;
        with the traceback when C{failure}, an unexpected exception, is why).

        @return: C{error}, naming L{origin}.
        """
        error = error.withPath(self.origin)
        self.refusals += 1
        self.stale = True
        self.staleReason = str(error)
        fields: dict[str, Any] = {
            "error": str(error),
            "path": self.origin,
            "key": error.key,
            "value": error.value,
            "reason": error.reason,
        }
        if failure is None:
            self.log.warn("config refused, the last good one stays active: {error}", **fields)
        else:
            self.log.failure(
                "config refused, the last good one stays active: {error}",
                Failure(failure, type(failure), failure.__traceback__),
                **fields,
            )
        return error

    def _failed(self, doing: str, exception: BaseException) -> None:
        """
        An unexpected exception while reading or applying new content: a
        refusal like any other, logged once per reason; C{KeyboardInterrupt}
        is raised again once noted, so that Ctrl-C still stops a program
        that polls by hand.
        """
        error = ConfigError(None, None, f"{doing} failed: {_describeException(exception)}")
        if self.staleReason == str(error.withPath(self.origin)):
            self.log.debug("config {path}: {error} again", path=self.origin, error=error.reason)
        else:
            self.refuse(error, exception)
        if isinstance(exception, KeyboardInterrupt):
            raise exception

    def _accept(self, new: ProxyConfig, fingerprint: bytes) -> None:
        old, wasStale = self.current, self.stale
        if new == old:
            self.stale, self.staleReason = False, None
            self.lastLoaded = self.clock.seconds()
            self._forgetFailures()
            if wasStale:
                self.log.info(
                    "config {path} is valid again, unchanged: {config}",
                    path=self.origin,
                    config=new.describe(),
                )
            else:
                self.log.debug("config {path} re-read: no effective change", path=self.origin)
            return
        try:
            self.onChange(new)
        except BaseException as e:
            self._rollBack(old)
            # tried again once the delay is over (offer skips it until then)
            self._fingerprint = None
            self._failedFingerprint = fingerprint
            self._applyFailures += 1
            first, most = self.retryDelays
            delay = min(most, first * 2 ** min(self._applyFailures - 1, 16))
            self._retryAt = self.clock.seconds() + delay
            self._failed("applying it", e)
            return
        self.current = new
        self.stale, self.staleReason = False, None
        self.lastLoaded = self.clock.seconds()
        self._forgetFailures()
        self.reloads += 1
        self.log.info(
            "config reloaded from {path}: {changes}",
            path=self.origin,
            changes=new.changesFrom(old),
            config=new.describe(),
        )

    def _forgetFailures(self) -> None:
        self._failedFingerprint, self._applyFailures, self._retryAt = None, 0, 0.0

    def _rollBack(self, old: ProxyConfig) -> None:
        """Hand C{onChange} the configuration in force again, after it failed on a new one."""
        try:
            self.onChange(old)
        except BaseException:
            self.log.failure(
                "config {path}: restoring the last good configuration failed too",
                path=self.origin,
            )


class ConfigWatcher(ConfigIntake, Poller):
    """
    Polls the configuration file or directory and offers each version to
    its L{ConfigIntake}, which applies each valid change live.

    Polling rather than inotify: it works the same for a file, a directory,
    and kubelet's symlink swaps, and costs one small read per interval.  What
    was read is fingerprinted (a hash of the bytes, names included for a
    directory), so a change is seen even within the same second, and an
    unchanged file is not parsed again.

    @ivar path: the file or directory polled (the intake's C{origin}).
    """

    log = Logger()

    #: Consecutive polls that find the path missing before it counts as
    #: gone: one miss is retried, as it may be a rename in progress.
    missingPollsBeforeStale = 2

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        initial: ProxyConfig,
        onChange: Callable[[ProxyConfig], object],
        *,
        interval: float = 2.0,
        httpListenerPort: int = DEFAULT_HTTP_LISTENER_PORT,
        resolvePolicy: Callable[[str], object] | None = None,
    ) -> None:
        super().__init__(
            path,
            clock,
            initial,
            onChange,
            httpListenerPort=httpListenerPort,
            resolvePolicy=resolvePolicy,
        )
        self.path = path
        self.interval = interval
        self._missingPolls = 0

    def watched(self) -> str:
        return f"config {self.path}"

    def poll(self) -> None:
        """
        Check the path once, now, and apply a valid change.

        Called every C{interval} while the service runs; callable directly
        too (on C{SIGHUP}, say).  Raises nothing but C{KeyboardInterrupt}
        (after taking note of it like any other failure).
        """
        try:
            source = _readSource(self.path)
        except _Vanished as e:
            self._missing(e)
            return
        except ConfigError as e:
            self.forget()
            if self.staleReason != str(e.withPath(self.path)):
                self.refuse(e)
            return
        except BaseException as e:
            self.forget()
            self._failed("reading it", e)
            return
        self._missingPolls = 0
        self.offer(source.fingerprint, source.data)

    def _missing(self, error: ConfigError) -> None:
        self._missingPolls += 1
        if self._missingPolls < self.missingPollsBeforeStale:
            self.log.debug(
                "config {path} missing ({reason}); retrying at the next poll",
                path=self.path,
                reason=error.reason,
            )
        elif self._missingPolls == self.missingPollsBeforeStale:
            # Forget the fingerprint, so that the content coming back (even
            # unchanged) is parsed and clears the staleness.
            self.forget()
            self.refuse(error)


def _describeException(exception: BaseException) -> str:
    """C{"SystemExit: 3"}: the type and (bounded) message of an exception, on one line."""
    text = _oneLine(str(exception))
    name = type(exception).__name__
    return f"{name}: {_clip(text, 200)}" if text else name
