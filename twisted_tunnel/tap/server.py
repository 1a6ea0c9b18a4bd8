# -*- test-case-name: tests.tap.test_tap -*-
"""
C{twistd edge-tunnel-server}: the cloud side.

It listens for agents on C{--tunnel-endpoint} (mutual TLS), serves the
HTTP CONNECT front door on C{--connect-endpoint} and any static
C{--forward} listeners.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from attrs import frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from ..doors.connect import (
    ConnectDoorFactory,
    DirectNetworks,
    directNetwork,
    refuseAgentCertificates,
)
from ..doors.forward import ForwardFactory, parseForward
from ..doors.limits import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    ClientLimiter,
    ClientLimits,
    MiB,
    frontDoorLabel,
)
from ..doors.proxy import ProxyListenerFactory, ProxyRouter, RawProxyFactory
from ..errors import CredentialsError
from ..forwarding.config import (
    DEFAULT_HTTP_LISTENER_PORT,
    ConfigError,
    ConfigWatcher,
    Listener,
    loadConfig,
    parseConfigData,
)
from ..forwarding.policy import (
    IForwardingPolicy,
    PolicyError,
    findPolicy,
    knownPolicies,
    loadPolicy,
    parsePolicyOption,
    pluginPolicies,
)
from ..forwarding.table import ForwardingTable
from ..host.hostsfile import HostsFile
from ..host.iptables import (
    IptablesManager,
    checkAvailable,
    listenerAddress,
    preroutingInterface,
    preroutingSource,
)
from ..meta import JSONResource, agentsDocument
from ..net._twisted import listeningPort, raiseListenErrors
from ..net.addresses import parseIP
from ..net.eager import EagerTCPReactor
from ..net.relay import DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_IDLE_TIMEOUT, RelayTimeouts
from ..server import (
    DEFAULT_OPEN_TIMEOUT,
    CertificateAddressProof,
    INodeAddressProof,
    TrustAnnouncedAddresses,
    TunnelServer,
)
from ..server.directory import DirectoryAddressProof, NodeDirectory
from ..server.routes import DEFAULT_KEEP_GONE
from ..tls import (
    MAX_SERVING_SESSION_LIFETIME,
    Credentials,
    loadCredentials,
    proxyServingOptions,
    serverOptions,
)
from ..tls.minting import (
    DEFAULT_LIFETIME,
    DEFAULT_MAX_ENTRIES,
    MAX_LIFETIME,
    MIN_LIFETIME,
    ServingAuthority,
    ServingCertificates,
    loadServingAuthority,
)
from ..tls.rotation import (
    CredentialsWatcher,
    RotatingClientOptions,
    RotatingServerOptions,
)
from ..tls.serving import NodeServingOptions
from ._clientnames import (
    CONNECT_CLIENT_NAME,
    PROXY_SERVING_CLIENT_NAME,
    addClientName,
    checkClientNames,
    doorClientNames,
    listenerClientNames,
    restricted,
)
from ._common import (
    DaemonService,
    TunnelOptions,
    fatal,
    nonNegativeFloat,
    positiveFloat,
    positiveInt,
)
from ._kubeapi import (
    DEFAULT_EDGE_SELECTOR,
    OPENYURT_EDGE_SELECTOR,
    KubeAPIOptions,
    checkEdgeNodeSelector,
    configMapIntake,
    keepingSigner,
    parseConfigMapName,
    signAgentRequests,
    watchNodes,
)

PROGRAM = "edge-tunnel-server"

#: Default of --drain-timeout: below Kubernetes' default grace period of 30 s.
DEFAULT_DRAIN_TIMEOUT = 20.0
_log = Logger(namespace="twisted_tunnel.tap.server")


def sessionLifetime(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SERVING_SESSION_LIFETIME:
        raise ValueError(f"{text} is not between 0 and {MAX_SERVING_SESSION_LIFETIME}")
    return value


sessionLifetime.coerceDoc = (  # type: ignore[attr-defined]
    f"Seconds, 0 to {MAX_SERVING_SESSION_LIFETIME}."
)


class Options(TunnelOptions, KubeAPIOptions):
    program = PROGRAM
    optFlags = [
        [
            "iptables",
            None,
            "DNAT connected nodes' ports to the proxy listeners; fail if not possible.",
        ],
        ["no-iptables", None, "Do not touch iptables (default: on when this process may)."],
        [
            "iptables-prerouting",
            None,
            "Also DNAT traffic routed through this host (PREROUTING), not only traffic born "
            "on it (OUTPUT); only from the sources and interfaces named by "
            "--iptables-prerouting-source and --iptables-prerouting-interface (one is "
            "required), and the proxy listeners must bind an address routed traffic reaches.",
        ],
        [
            "metrics-per-node",
            None,
            "Also label metrics by node (one series per node and metric: mind a large fleet).",
        ],
        [
            "trust-announced-ips",
            None,
            "INSECURE: route every IP an agent announces, also those its certificate does not "
            "carry as IP subjectAltNames (kubelet certificates carry none). Any holder of any "
            "node certificate can then take over another node's IPs, or a cloud address; "
            "loopback and link-local addresses are still never routed. Default: only IPs "
            "the certificate (or, with --watch-nodes, the agent's Node) proves route; other "
            "nodes are reached by name.",
        ],
        [
            "watch-nodes",
            None,
            "Watch the cluster's Nodes (--kubeconfig or --in-cluster; RBAC: list and watch "
            "nodes): an IP an agent announces also routes when its Node lists it and no other "
            "Node does, and the edge nodes (--edge-node-selector) are routed whether or not "
            "their agent is connected; a Node deleted loses its routes.",
        ],
    ]

    synopsis = (
        "[options] --ca CA.pem --cert SERVER.pem --key SERVER-KEY.pem\n"
        "Accept edge agents over mutual TLS and carry streams to their nodes."
    )
    optParameters = [
        ["tunnel-endpoint", None, "tcp:10262", "Where agents connect (Twisted endpoint)."],
        [
            "connect-endpoint",
            None,
            "tcp:10261:interface=127.0.0.1",
            "HTTP CONNECT front door (Twisted endpoint). Plain on unix sockets and loopback; "
            "anywhere else it requires client certificates signed by --connect-ca, and "
            "refuses agents' (system:node:*) certificates. 'none': no CONNECT door.",
        ],
        ["connect-ca", None, None, "CA for CONNECT clients' certificates (default: --ca)."],
        [
            "agent-ca",
            None,
            None,
            "CA bundle whose certificates agents must present (default: --ca): e.g. the "
            "cluster's client CA, for agents that prove their node with the kubelet's own "
            "certificate (agent --kubelet-client-cert); it may hold several CAs, the tunnel's "
            "and the cluster's while migrating. Only node certificates (CN=system:node:<node>, "
            "O=system:nodes, for the node their HELLO names) become agents; nothing else "
            "trusts it.",
        ],
        [
            "https-proxy-endpoint",
            None,
            "tcp:10263:interface=127.0.0.1",
            "HTTPS proxy listener: the DNAT target for 10250 and https-proxy-ports "
            "(Twisted endpoint, or 'none').  Loopback by default: the OUTPUT DNAT needs "
            "nothing more.  Bound elsewhere (e.g. tcp:10263:interface=0.0.0.0), whoever "
            "reaches it with a certificate from --proxy-serving-client-ca reaches every "
            "node's kubelet as kube-apiserver does.",
        ],
        [
            "http-proxy-endpoint",
            None,
            "tcp:10264:interface=127.0.0.1",
            "HTTP proxy listener: the DNAT target for 10255, http-proxy-ports and "
            "dnat-ports-pair (Twisted endpoint, or 'none').  Loopback by default.  Bound "
            "elsewhere (e.g. tcp:10264:interface=0.0.0.0), anyone who reaches it reaches "
            "those ports of every connected node, with no certificate at all.",
        ],
        [
            "tcp-proxy-endpoint",
            None,
            "tcp:10268:interface=127.0.0.1",
            "Raw TCP proxy listener, routed by original destination: the DNAT target for "
            "tcp-proxy-ports (Twisted endpoint, or 'none').  Loopback by default.  Bound "
            "elsewhere, anyone who reaches it reaches those ports of every connected node.",
        ],
        [
            "proxy-serving-cert",
            None,
            None,
            "Certificate the HTTPS proxy listener presents (default: --cert).",
        ],
        ["proxy-serving-key", None, None, "Its key (default: --key)."],
        [
            "proxy-serving-client-ca",
            None,
            None,
            "CA whose certificates clients of the HTTPS proxy listener must present (always "
            "required; agents' system:node:* certificates are refused). Default: --ca. In "
            "production: the CA of kube-apiserver's --kubelet-client-certificate.",
        ],
        [
            "proxy-serving-session-lifetime",
            None,
            0,
            "Seconds a client of the HTTPS proxy listener may resume its TLS session (from "
            "tickets, nothing kept here; none survives a rotation of the listener's files). "
            f"0, the default, resumes none; at most {MAX_SERVING_SESSION_LIFETIME}. A resumed "
            "handshake checks no certificate, and kube-apiserver never resumes: see "
            "docs/security.md.",
            sessionLifetime,
        ],
        [
            "agent-signer-ca-cert",
            None,
            None,
            "CA certificate with which this server approves and signs agents' certificate "
            "requests through the Kubernetes CSR API (signerName twisted-tunnel.io/agent; "
            "needs --kubeconfig or --in-cluster): only a request whose requester is node N "
            "(system:node:N, in system:nodes) for CN=system:node:N, O=system:nodes, client "
            "auth, is approved; the rest are denied with the reason. --agent-ca must hold it.",
        ],
        [
            "agent-signer-ca-key",
            None,
            None,
            "The private key of --agent-signer-ca-cert (mode 0600: whoever reads it can "
            "impersonate every agent).",
        ],
        [
            "proxy-serving-ca-cert",
            None,
            None,
            "CA certificate (kube-apiserver's --kubelet-certificate-authority) with which the "
            "HTTPS proxy listener mints, per connection, a short-lived serving certificate "
            "for the node the client dialled (its IP, or its name by SNI), as a kubelet's "
            "own; only for nodes this server knows. Other destinations get "
            "--proxy-serving-cert if it is given, else the handshake fails.",
        ],
        [
            "proxy-serving-ca-key",
            None,
            None,
            "Its key (mode 600: refused if others may read it; it can sign for every kubelet).",
        ],
        [
            "proxy-serving-cert-lifetime",
            None,
            DEFAULT_LIFETIME,
            f"Seconds each minted serving certificate is valid ({MIN_LIFETIME:.0f} to "
            f"{MAX_LIFETIME:.0f}); renewed once two thirds of it are gone.",
            positiveFloat,
        ],
        [
            "proxy-serving-cert-cache",
            None,
            DEFAULT_MAX_ENTRIES,
            "How many minted serving certificates are kept (some 7 KiB each); at least the "
            "number of edge nodes, or their certificates are minted again and again.",
            positiveInt,
        ],
        [
            "proxy-client-cert",
            None,
            None,
            "Client certificate presented to nodes by the https policy (the identity the "
            "kubelet authorizes). Without it, https ports answer 502.",
        ],
        ["proxy-client-key", None, None, "Its key."],
        [
            "proxy-client-ca",
            None,
            None,
            "CA to verify nodes' serving certificates with (default: not verified, like "
            "kube-apiserver without --kubelet-certificate-authority).",
        ],
        [
            "config",
            None,
            None,
            "The edge-tunnel-server-cfg ConfigMap: a manifest file, or the directory it is "
            "mounted as. Reloaded live.",
        ],
        ["config-interval", None, 2.0, "Seconds between checks of --config.", positiveFloat],
        [
            "edge-node-selector",
            None,
            DEFAULT_EDGE_SELECTOR,
            "With --watch-nodes: the label selector of the edge nodes (k=v, k!=v, k, !k, "
            f"comma-separated). Default ACK Edge's; OpenYurt's is {OPENYURT_EDGE_SELECTOR}.",
        ],
        [
            "config-configmap",
            None,
            None,
            "NAMESPACE/NAME: read the edge-tunnel-server-cfg ConfigMap from the Kubernetes API "
            "(--kubeconfig or --in-cluster) instead of --config, and watch it: changes apply "
            "within a second or so; a refused one is also posted as a Warning Event on it.",
        ],
        [
            "iptables-interval",
            None,
            60.0,
            "Seconds between full iptables resyncs (changes apply at once).",
            positiveFloat,
        ],
        [
            "keep-gone-nodes",
            None,
            DEFAULT_KEEP_GONE,
            "Seconds a node stays routed here (iptables rules, --hosts-file) after its agent "
            "left, so its clients get an immediate answer naming it instead of being sent past "
            "the tunnel; 0 to unroute at once.",
            nonNegativeFloat,
        ],
        [
            "hosts-file",
            None,
            None,
            "Keep this hosts-format file ('<hosts-address> <node-name>' per routed node: "
            "connected, or gone less than --keep-gone-nodes ago) for CoreDNS's hosts plugin.",
        ],
        [
            "hosts-address",
            None,
            None,
            "The address node names resolve to in --hosts-file: where clients reach this "
            "server's proxy listeners (e.g. its Service IP).",
        ],
        [
            "meta-endpoint",
            None,
            "tcp:10265:interface=127.0.0.1",
            "Where to serve /healthz, /readyz, /metrics and /agents (Twisted endpoint, or "
            "'none'); unauthenticated, and /agents lists every node, its IPs and address. "
            "Loopback by default; in a pod, its IP (tcp:10265:interface=$(POD_IP)).",
        ],
        ["server-id", None, None, "This replica's id (default: random)."],
        [
            "server-count",
            None,
            1,
            "How many server replicas run behind the agents' address; agents hold a tunnel "
            "to each.",
            positiveInt,
        ],
        [
            "open-timeout",
            None,
            DEFAULT_OPEN_TIMEOUT,
            "Seconds an agent has to answer a stream open.",
            positiveFloat,
        ],
        [
            "relay-idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a relayed connection (CONNECT door, --forward, raw TCP listener, an "
            "upgraded HTTP connection such as exec or port-forward) may move no byte either "
            "way before it is closed; the default is the kubelet's streaming idle timeout. "
            "0: never.",
            nonNegativeFloat,
        ],
        [
            "relay-half-close-timeout",
            None,
            DEFAULT_HALF_CLOSED_TIMEOUT,
            "Seconds a relayed connection may move no byte once either side has sent its "
            "EOF, closed or reset (seen even while it is paused) before it is closed. 0: never.",
            nonNegativeFloat,
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "On SIGTERM: seconds to let streams in flight finish (agents are told to open new "
            "ones elsewhere at once) before closing what is left. Keep it below the pod's "
            "terminationGracePeriodSeconds. 0: close at once.",
            nonNegativeFloat,
        ],
        [
            "client-max-connections",
            None,
            DEFAULT_MAX_CONNECTIONS,
            "Connections at once at each front door (proxy listeners, CONNECT door, "
            "--forward); more are closed at accept. Keep it below the open-file limit.",
            positiveInt,
        ],
        [
            "client-max-connections-per-address",
            None,
            DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            "Connections at once from one client IP at each front door.",
            positiveInt,
        ],
        [
            "client-max-buffered-mib",
            None,
            DEFAULT_MAX_BUFFERED_BYTES // MiB,
            "MiB held in memory at each front door for clients that stopped reading; past "
            "it, the client stalled the longest is closed.",
            positiveInt,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["forward"] = []
        self["iptables-prerouting-source"] = []
        self["connect-direct"] = []
        self[CONNECT_CLIENT_NAME] = []
        self[PROXY_SERVING_CLIENT_NAME] = []
        self["iptables-prerouting-interface"] = []
        self["policy"] = {}

    def postOptions(self) -> None:
        super().postOptions()
        self.checkKubeOptions()
        if self["config-configmap"]:
            if self["config"]:
                raise usage.UsageError("--config and --config-configmap are two sources: give one")
            if not (self["kubeconfig"] or self["in-cluster"]):
                raise usage.UsageError("--config-configmap needs --kubeconfig or --in-cluster")
            parseConfigMapName(self["config-configmap"])
        if self["watch-nodes"]:
            if not (self["kubeconfig"] or self["in-cluster"]):
                raise usage.UsageError("--watch-nodes needs --kubeconfig or --in-cluster")
            checkEdgeNodeSelector(self["edge-node-selector"])
        if bool(self["proxy-client-cert"]) != bool(self["proxy-client-key"]):
            raise usage.UsageError("--proxy-client-cert and --proxy-client-key go together")
        if bool(self["proxy-serving-cert"]) != bool(self["proxy-serving-key"]):
            raise usage.UsageError("--proxy-serving-cert and --proxy-serving-key go together")
        if bool(self["agent-signer-ca-cert"]) != bool(self["agent-signer-ca-key"]):
            raise usage.UsageError("--agent-signer-ca-cert and --agent-signer-ca-key go together")
        if self["agent-signer-ca-cert"] and not (self["kubeconfig"] or self["in-cluster"]):
            raise usage.UsageError("--agent-signer-ca-cert needs --kubeconfig or --in-cluster")
        if bool(self["proxy-serving-ca-cert"]) != bool(self["proxy-serving-ca-key"]):
            raise usage.UsageError(
                "--proxy-serving-ca-cert and --proxy-serving-ca-key go together"
            )
        if self["proxy-serving-ca-cert"] and self["https-proxy-endpoint"] == "none":
            raise usage.UsageError(
                "--proxy-serving-ca-cert mints for the HTTPS proxy listener, which "
                "--https-proxy-endpoint none turns off"
            )
        if not MIN_LIFETIME <= self["proxy-serving-cert-lifetime"] <= MAX_LIFETIME:
            raise usage.UsageError(
                f"--proxy-serving-cert-lifetime {self['proxy-serving-cert-lifetime']:g}: "
                f"from {MIN_LIFETIME:.0f} to {MAX_LIFETIME:.0f} seconds"
            )
        checkClientNames(self)
        if self["iptables"] and self["no-iptables"]:
            raise usage.UsageError("--iptables and --no-iptables contradict each other")
        scoped = self["iptables-prerouting-source"] or self["iptables-prerouting-interface"]
        if self["iptables-prerouting"] and not scoped:
            raise usage.UsageError(
                "--iptables-prerouting needs --iptables-prerouting-source or "
                "--iptables-prerouting-interface: who may reach the listeners through it "
                "(--iptables-prerouting-source 0.0.0.0/0 for everyone)"
            )
        if scoped and not self["iptables-prerouting"]:
            raise usage.UsageError(
                "--iptables-prerouting-source and --iptables-prerouting-interface need "
                "--iptables-prerouting"
            )
        if self["hosts-file"] and not self["hosts-address"]:
            raise usage.UsageError(
                "--hosts-file needs --hosts-address (the address to resolve to)"
            )
        if self["hosts-address"]:
            try:
                ipaddress.ip_address(self["hosts-address"])
            except ValueError:
                raise usage.UsageError(
                    f"--hosts-address {self['hosts-address']!r} is not an IP address"
                ) from None

    def opt_connect_direct(self, cidr: str) -> None:
        """
        CIDR: CONNECT targets in this network that no agent holds (cloud nodes,
        aggregated API servers such as metrics-server) are dialled by this
        server itself, as an egress selector for the whole cluster needs
        (repeatable; never loopback or link-local)
        """
        try:
            self["connect-direct"].append(directNetwork(cidr))
        except ValueError as e:
            raise usage.UsageError(f"--connect-direct: {e}") from None

    def opt_connect_client_name(self, name: str) -> None:
        """
        NAME: the CONNECT door over TLS admits only client certificates whose
        subject CN, or one of whose DNS subjectAltNames, is exactly NAME
        (repeatable; e.g. the CN of kube-apiserver's egress client certificate).
        Default: any certificate from --connect-ca but nodes' (warned about)
        """
        addClientName(self, CONNECT_CLIENT_NAME, name)

    def opt_proxy_serving_client_name(self, name: str) -> None:
        """
        NAME: the HTTPS proxy listener admits only client certificates whose
        subject CN, or one of whose DNS subjectAltNames, is exactly NAME
        (repeatable; e.g. kube-apiserver-kubelet-client, metrics-server).
        Default: any certificate from --proxy-serving-client-ca but nodes'
        (warned about)
        """
        addClientName(self, PROXY_SERVING_CLIENT_NAME, name)

    def opt_iptables_prerouting_source(self, cidr: str) -> None:
        """
        CIDR: with --iptables-prerouting, DNAT routed traffic only from this IPv4
        source network (repeatable; 0.0.0.0/0: from anywhere)
        """
        try:
            self["iptables-prerouting-source"].append(preroutingSource(cidr))
        except ValueError as e:
            raise usage.UsageError(f"--iptables-prerouting-source: {e}") from None

    def opt_iptables_prerouting_interface(self, name: str) -> None:
        """
        IFACE: with --iptables-prerouting, DNAT routed traffic only arriving on
        this interface (repeatable; a trailing + matches a prefix, as in iptables)
        """
        try:
            self["iptables-prerouting-interface"].append(preroutingInterface(name))
        except ValueError as e:
            raise usage.UsageError(f"--iptables-prerouting-interface: {e}") from None

    def opt_policy(self, spec: str) -> None:
        """
        NAME=package.module:attribute: a custom forwarding policy the ConfigMap's
        policy-ports may bind by NAME (repeatable; loaded once, at start-up). The
        ConfigMap only names policies: built-ins, plugins, and these.
        """
        try:
            name, target = parsePolicyOption(spec)
        except PolicyError as e:
            raise usage.UsageError(str(e)) from None
        if name in self["policy"]:
            raise usage.UsageError(f"--policy {spec!r}: {name!r} is already named")
        self["policy"][name] = target

    def opt_forward(self, spec: str) -> None:
        """
        NODE:PORT=ENDPOINT: carry every connection to ENDPOINT to PORT on
        NODE (repeatable), e.g. edge-1:9100=tcp:19100:interface=127.0.0.1
        """
        try:
            self["forward"].append(parseForward(spec))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


#: The listen backlog our TCP listeners ask for unless told otherwise.
LISTEN_BACKLOG = 1024


def withListenBacklog(description: str) -> str:
    """
    C{description} with a listen backlog of L{LISTEN_BACKLOG}, if it is a
    TCP endpoint that names none.

    Twisted's default of 50 overflows under a burst of connections: 2,000
    C{kubectl exec} sessions opened at once through the CONNECT door (the
    kernel drops the excess, and clients retry after 1 and 3 s), or
    thousands of agents coming back after a restart.  The kernel caps it at
    C{net.core.somaxconn}.
    """
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


#: The mode of the UNIX sockets we listen on unless the endpoint names one
#: (Twisted's default is 0666: any local user could use the door).
UNIX_SOCKET_MODE = "600"

_UNESCAPED_COLON = re.compile(r"(?<!\\):")


def withPrivateSocketMode(description: str) -> str:
    """
    C{description} with C{mode=600} if it is a UNIX endpoint that names no
    mode: a UNIX listener (the CONNECT door, a forward listener) serves
    without client certificates, so only this process's user may connect,
    unless the operator opens it up (C{unix:PATH:mode=660}).
    """
    kind, _, rest = description.partition(":")
    if kind.strip().lower() != "unix":
        return description
    if any(part.startswith("mode=") for part in _UNESCAPED_COLON.split(rest)):
        return description
    return f"{description}:mode={UNIX_SOCKET_MODE}"


def connectDoorIsLocal(endpoint: IStreamServerEndpoint) -> bool:
    """
    Is a CONNECT endpoint reachable only from this host (a unix socket or a
    loopback interface)?  Only then may it run without client certificates.

    It asks the endpoint that C{serverFromString} built, not the string:
    Twisted's own parsing (escaped colons, repeated or positional
    arguments) decides where it listens, so it must decide here too.
    """
    if isinstance(endpoint, UNIXServerEndpoint):
        return True
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return False
    return isLoopback(getattr(endpoint, "_interface", ""))


def isLoopback(interface: str) -> bool:
    """Is C{interface} (a TCP endpoint's) a loopback address, reachable only from this host?"""
    if interface == "localhost":
        return True
    address = parseIP(interface)
    return address is not None and address.is_loopback


def _connectDoorFactory(
    options: Options,
    server: TunnelServer,
    door: ConnectDoorFactory,
    local: bool,
    top: MultiService,
) -> IProtocolFactory:
    names = doorClientNames(PROGRAM, options, server.clock, local)
    if local:
        return door
    files = _files(options, "connect-ca", "cert", "key")
    # serverOptions looked up here, in this module, so that tests can watch what it is given
    credentials = _credentials(files)
    tls = RotatingServerOptions(credentials, restricted(serverOptions, names))
    _rotate(options, top, "tls:--connect-endpoint", files, tls.update, loaded=credentials)
    factory: IProtocolFactory = TLSMemoryBIOFactory(tls, False, door)
    return factory


def _directNetworks(options: Options, reactor: Any) -> DirectNetworks | None:
    """C{--connect-direct}: what the CONNECT door dials itself, with the open timeout."""
    networks = tuple(options["connect-direct"])
    if not networks:
        return None
    timeout = options["open-timeout"]

    def endpoint(host: str, port: int) -> IStreamClientEndpoint:
        if ":" in host:
            return TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)

    _log.info(
        "CONNECT door: dials {networks} itself when no agent holds the address",
        networks=", ".join(str(n) for n in networks),
    )
    return DirectNetworks(networks, endpoint)


class _ServerService(DaemonService):
    """
    The listeners; on stop, the listeners close first (no new agents, no
    new clients), then every agent is told to drain (GOAWAY: no new
    streams here) and the streams in flight get C{drainTimeout} seconds to
    finish before the rest are closed.  twistd waits for all of it.  The
    meta listener answers until the end (see L{DaemonService}).
    """

    def __init__(
        self, server: TunnelServer, drainTimeout: float, logFormat: str, logLevel: str = "info"
    ) -> None:
        super().__init__(PROGRAM, logFormat, logLevel)
        self.tunnelServer = server
        self.drainTimeout = drainTimeout
        self.checks += [self._listenersUp, self._notDraining]

    def stopChildren(self) -> Deferred[None]:
        stopped = super().stopChildren()
        drained = self.tunnelServer.drainWithin(self.drainTimeout)
        return gatherResults([stopped, drained]).addCallback(lambda _: None)

    def _listenersUp(self) -> str | None:
        if self.tunnelServer.draining:
            return None  # closed on purpose: _notDraining says why
        down = [
            str(service.name)
            for service in self
            if isinstance(service, StreamServerEndpointService) and not service.running
        ]
        return f"listeners not up: {', '.join(down)}" if down else None

    def _notDraining(self) -> str | None:
        return "draining: shutting down" if self.tunnelServer.draining else None

    def summary(self) -> str:
        agents = len(self.tunnelServer.registry)
        return f"{agents} agent(s) connected" if agents else "no agent connected yet"


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    # the agent port: its own CA bundle if given (--agent-ca), else --ca
    agentFiles = _files(options, "agent-ca", "cert", "key")
    # filled by the Node watch (--watch-nodes), started below once there is a top service
    directory = NodeDirectory() if options["watch-nodes"] else None
    agentCredentials = _credentials(agentFiles)
    server = TunnelServer(
        reactor,
        agentCredentials,
        serverId=options["server-id"],
        serverCount=options["server-count"],
        settings=options.settings(),
        keepalive=options.keepalive(),
        openTimeout=options["open-timeout"],
        metricsPerNode=options["metrics-per-node"],
        addressProof=_addressProof(options, directory),
        directory=directory,
        relayTimeouts=RelayTimeouts(
            idle=options["relay-idle-timeout"], halfClosed=options["relay-half-close-timeout"]
        ),
        keepGone=options["keep-gone-nodes"],
    )
    top = _ServerService(
        server, options["drain-timeout"], options["log-format"], options["log-level"]
    )
    if directory is not None:
        watchNodes(PROGRAM, options, reactor, top, directory)
    if options["agent-signer-ca-cert"]:
        approver, loadSigner = signAgentRequests(
            PROGRAM,
            options,
            reactor,
            top,
            lambda: server.credentials and server.credentials.authority,
        )
        # and a rotation of --agent-ca that drops the signer's CA is refused
        agentFiles = _Files(agentFiles.paths, keepingSigner(options, approver, agentFiles.load))
        # the signer's files are watched as every other certificate's: a
        # rotation signs with the new CA at once; one that does not load, or
        # is not in --agent-ca, is refused with one line and the CA kept
        signer = options["agent-signer-ca-cert"]
        _rotate(
            options,
            top,
            "tls:--agent-signer-ca-cert",
            _Files((signer, signer, options["agent-signer-ca-key"]), loadSigner),
            lambda c: approver.replaceAuthority(ServingAuthority.fromCredentials(c)),
        )
    # every listener's connections send small writes at once (see eager.py)
    tcpReactor = EagerTCPReactor(reactor)

    def endpoint(description: str, name: str) -> IStreamServerEndpoint:
        try:
            built: IStreamServerEndpoint = serverFromString(
                tcpReactor, withPrivateSocketMode(withListenBacklog(description))
            )
        except Exception as e:  # any failure to parse is a configuration error
            fatal(PROGRAM, f"{name} {description!r}: {e or type(e).__name__}")
        return built

    clientLimits = ClientLimits(
        maxConnections=options["client-max-connections"],
        maxConnectionsPerAddress=options["client-max-connections-per-address"],
        maxBufferedBytes=options["client-max-buffered-mib"] * MiB,
    )

    def listen(description: str, factory: Any, name: str) -> None:
        if name != "--tunnel-endpoint":
            # every front door, one way (the agents' port has caps of its own)
            limiter = ClientLimiter(frontDoorLabel(name), reactor, clientLimits)
            server.metrics.watchClientLimiter(limiter)
            factory = limiter.wrap(factory)
        service = StreamServerEndpointService(endpoint(description, name), factory)
        raiseListenErrors(service)  # a port in use stops startup, loudly
        service.setName(name)
        service.setServiceParent(top)

    if options["meta-endpoint"] != "none":
        top.serveMeta(
            endpoint(options["meta-endpoint"], "--meta-endpoint"),
            reactor,
            server.metrics.registry,
            top.summary,
            {b"agents": JSONResource(lambda: agentsDocument(server))},
        )
    listen(options["tunnel-endpoint"], server.tunnelFactory(), "--tunnel-endpoint")
    if options["connect-endpoint"] != "none":
        local = connectDoorIsLocal(endpoint(options["connect-endpoint"], "--connect-endpoint"))
        door = ConnectDoorFactory(
            server,
            authorize=None if local else refuseAgentCertificates,
            direct=_directNetworks(options, tcpReactor),
        )
        listen(
            options["connect-endpoint"],
            _connectDoorFactory(options, server, door, local, top),
            "--connect-endpoint",
        )
    for node, port, description in options["forward"]:
        listen(description, ForwardFactory(server, node, port), f"--forward {node}:{port}")
    table, iptables = _proxyListeners(options, server, top, endpoint, listen)
    if options["hosts-file"]:
        hosts = HostsFile(options["hosts-file"], options["hosts-address"], server.routes, reactor)
        hosts.setName("--hosts-file")
        hosts.setServiceParent(top)
    # the agent port's certificate follows its files (Secret volumes, cert-manager)
    _rotate(
        options, top, "tls:--cert", agentFiles, server.updateCredentials, loaded=agentCredentials
    )
    _sayWhatRuns(options, server, table, iptables)
    return top


#: The listeners the start-up line names, by option.
_LISTENERS = (
    ("tunnel-endpoint", "agents"),
    ("https-proxy-endpoint", "HTTPS proxy listener"),
    ("http-proxy-endpoint", "HTTP proxy listener"),
    ("tcp-proxy-endpoint", "TCP proxy listener"),
    ("connect-endpoint", "CONNECT door"),
    ("meta-endpoint", "meta listener"),
)


def _sayWhatRuns(
    options: Options, server: TunnelServer, table: ForwardingTable, iptables: bool
) -> None:
    """
    One line at start-up with what is in force: the listeners, where the
    configuration comes from and what it forwards, whether iptables is
    kept and Nodes are watched; so a log shows how the server was run.
    """
    from .._version import __version__

    listeners = [
        f"{name} {options[option]}" for option, name in _LISTENERS if options[option] != "none"
    ]
    if options["config-configmap"]:
        source = f"--config-configmap {options['config-configmap']}"
    elif options["config"]:
        source = f"--config {options['config']}"
    else:
        source = "the defaults (no --config)"
    _log.info(
        "{program} {version}: server id {serverId}, one of {serverCount} replica(s); "
        "{listeners}; forwarding from {source}: {config}; iptables {iptables}; "
        "Nodes {nodes}",
        program=PROGRAM,
        version=__version__,
        serverId=server.serverId,
        serverCount=server.serverCount,
        listeners=", ".join(listeners),
        source=source,
        config=table.current().describe(),
        iptables="kept" if iptables else "left alone",
        nodes="watched" if server.directory is not None else "not watched",
    )


def _addressProof(options: Options, directory: NodeDirectory | None) -> INodeAddressProof:
    """
    What proves agents' IPs: their certificates, and with C{--watch-nodes}
    their Nodes too; and with C{--trust-announced-ips}, said loudly once at
    start-up (and again per agent whose IPs are taken on its word, by
    L{TrustAnnouncedAddresses}), their word: it reopens finding 1 of issue 12.
    """
    proof: INodeAddressProof = (
        CertificateAddressProof() if directory is None else DirectoryAddressProof(directory)
    )
    if not options["trust-announced-ips"]:
        return proof
    _log.warn(
        "--trust-announced-ips: routing the IPs agents announce without proof; any holder "
        "of a node certificate signed by --ca may take over another node's IPs or a cloud "
        "address. Give agents certificates with IP subjectAltNames (or use --watch-nodes) "
        "and drop this option."
    )
    return TrustAnnouncedAddresses(proof)


def _credentials(files: _Files) -> Credentials:
    """Load a set of certificate files, or stop the program with one line saying why."""
    try:
        return files.load()
    except CredentialsError as e:
        fatal(PROGRAM, str(e))


@frozen
class _Files:
    """A set of certificate files: which they are, and how to (re)load them."""

    paths: tuple[str, str, str]
    load: Callable[[], Credentials]


def _files(options: Options, ca: str | None, cert: str, key: str) -> _Files:
    """The files named by these options, each falling back to --ca, --cert, --key."""
    caPath = options[ca] if ca and options[ca] else options["ca"]
    certPath = options[cert] or options["cert"]
    keyPath = options[key] or options["key"]

    def load() -> Credentials:
        return loadCredentials(
            caPath,
            certPath,
            keyPath,
            caOption=f"--{ca}" if ca and options[ca] else "--ca",
            certOption=f"--{cert}" if options[cert] else "--cert",
            keyOption=f"--{key}" if options[key] else "--key",
        )

    return _Files((caPath, certPath, keyPath), load)


def _rotate(
    options: Options,
    top: MultiService,
    name: str,
    files: _Files,
    onChange: Callable[[Credentials], object],
    *,
    loaded: Credentials | None = None,
) -> None:
    """
    Reload C{files} when they change (unless --tls-reload-interval is 0):
    changed since C{loaded}, the credentials in use, were read from them
    (a rotation while the rest of C{makeService} ran is seen), else since
    now.
    """
    from twisted.internet import reactor

    interval = options["tls-reload-interval"]
    if interval <= 0:
        return
    watcher = CredentialsWatcher(
        files.load, files.paths, onChange, reactor, interval=interval, loaded=loaded
    )
    watcher.setName(name)
    watcher.setServiceParent(top)


def _proxyListeners(
    options: Options,
    server: TunnelServer,
    top: _ServerService,
    endpoint: Callable[[str, str], IStreamServerEndpoint],
    listen: Callable[[str, Any, str], None],
) -> tuple[ForwardingTable, bool]:
    """
    The proxy listeners, their routers, and the configuration they share
    (reloaded live: each new route uses the configuration in force).

    @return: that configuration, and whether iptables rules are kept.
    """
    from twisted.internet import reactor

    httpDescription = options["http-proxy-endpoint"]
    httpPort = DEFAULT_HTTP_LISTENER_PORT
    if httpDescription != "none":
        httpPort = listeningPort(endpoint(httpDescription, "--http-proxy-endpoint")) or httpPort
    path = options["config"]
    known = _knownPolicies(options)

    def resolve(name: str) -> IForwardingPolicy:
        # a lookup only: the ConfigMap names policies, it never loads one
        return findPolicy(name, known)

    table: ForwardingTable
    if options["config-configmap"]:
        # from the API (tap/_kubeapi.py), into the same intake as --config's
        initial, intake = configMapIntake(
            PROGRAM, options, reactor, top, lambda new: table.replace(new), httpPort, resolve
        )
        server.metrics.watchConfig(intake)
        top.checks.append(lambda: f"config stale: {intake.staleReason}" if intake.stale else None)
    else:
        try:
            initial = (
                loadConfig(path, httpListenerPort=httpPort, resolvePolicy=resolve)
                if path
                else parseConfigData({})
            )
        except ConfigError as e:
            fatal(PROGRAM, f"--config {e}")
    table = ForwardingTable(initial, resolve=resolve)
    if path:
        watcher = ConfigWatcher(
            path,
            reactor,
            initial,
            table.replace,
            interval=options["config-interval"],
            httpListenerPort=httpPort,
            resolvePolicy=resolve,
        )
        watcher.setName("--config")
        watcher.setServiceParent(top)
        server.metrics.watchConfig(watcher)
        top.checks.append(
            lambda: f"config stale: {watcher.staleReason}" if watcher.stale else None
        )
    upstreamTLS = None
    if options["proxy-client-cert"]:
        clientFiles = _files(options, "proxy-client-ca", "proxy-client-cert", "proxy-client-key")
        clientCredentials = _credentials(clientFiles)
        upstreamTLS = RotatingClientOptions(
            clientCredentials, verify=bool(options["proxy-client-ca"])
        )
        _rotate(
            options,
            top,
            "tls:--proxy-client-cert",
            clientFiles,
            upstreamTLS.update,
            loaded=clientCredentials,
        )
    elif options["https-proxy-endpoint"] != "none":
        _log.warn(
            "the HTTPS proxy listener runs without --proxy-client-cert/--proxy-client-key: "
            "every request to an https port (10250, the kubelet's API, among them) will be "
            "answered 502, as there is no identity to present to the kubelet. Give it "
            "kube-apiserver's --kubelet-client-certificate and key, or set "
            "--https-proxy-endpoint=none."
        )

    def router(kind: Listener) -> ProxyRouter:
        return ProxyRouter(server, kind, table, upstreamTLS=upstreamTLS)

    if options["https-proxy-endpoint"] != "none":
        servingFiles = _files(
            options, "proxy-serving-client-ca", "proxy-serving-cert", "proxy-serving-key"
        )
        # clients always need a certificate: --proxy-serving-client-ca, else --ca
        servingCredentials = _credentials(servingFiles)
        tls = _servingOptions(options, server, top, servingCredentials)
        _rotate(
            options,
            top,
            "tls:--proxy-serving-cert",
            servingFiles,
            tls.update,
            loaded=servingCredentials,
        )
        listen(
            options["https-proxy-endpoint"],
            TLSMemoryBIOFactory(tls, False, ProxyListenerFactory(router(Listener.HTTPS), reactor)),
            "--https-proxy-endpoint",
        )
    if httpDescription != "none":
        listen(
            httpDescription,
            ProxyListenerFactory(router(Listener.HTTP), reactor),
            "--http-proxy-endpoint",
        )
    if options["tcp-proxy-endpoint"] != "none":
        listen(
            options["tcp-proxy-endpoint"],
            RawProxyFactory(router(Listener.TCP)),
            "--tcp-proxy-endpoint",
        )
    manager = _iptablesManager(options, server, table, endpoint)
    if manager is not None:
        manager.setName("--iptables")
        manager.setServiceParent(top)
        server.metrics.watchIptables(manager)
        table.subscribe(manager.configChanged)
    return table, manager is not None


def _servingOptions(
    options: Options, server: TunnelServer, top: MultiService, credentials: Credentials
) -> RotatingServerOptions | NodeServingOptions:
    """
    The HTTPS proxy listener's TLS: the static C{--proxy-serving-cert}, or,
    with C{--proxy-serving-ca-cert}, a certificate minted per node for the
    nodes the server routes (connected, or gone less than
    C{--keep-gone-nodes} ago).  The CA's files are watched as the others
    are: a rotation mints with the new CA at once.
    """
    from twisted.internet import reactor

    build = partial(
        proxyServingOptions,
        sessionLifetime=options["proxy-serving-session-lifetime"],
        clientNames=listenerClientNames(options, reactor),
    )
    if not options["proxy-serving-ca-cert"]:
        return RotatingServerOptions(credentials, build)
    caCert, caKey = options["proxy-serving-ca-cert"], options["proxy-serving-ca-key"]
    caFiles = _Files(
        (caCert, caCert, caKey),
        lambda: loadServingAuthority(caCert, caKey).credentials(),
    )
    authority = ServingAuthority.fromCredentials(_credentials(caFiles))
    fallback = bool(options["proxy-serving-cert"])
    _log.info(
        "HTTPS proxy listener: minting serving certificates ({lifetime:.0f} s each) with "
        "CA {ca}; a client going to no known node gets {other}",
        lifetime=options["proxy-serving-cert-lifetime"],
        ca=authority.describe(),
        other="--proxy-serving-cert" if fallback else "no certificate (handshake refused)",
    )
    certificates = ServingCertificates(
        authority,
        reactor,
        lifetime=options["proxy-serving-cert-lifetime"],
        maxEntries=options["proxy-serving-cert-cache"],
    )
    serving = NodeServingOptions(
        credentials, certificates, server.routes.lookup, reactor, fallback=fallback, build=build
    )
    server.metrics.watchServingCertificates(serving)
    _rotate(
        options,
        top,
        "tls:--proxy-serving-ca-cert",
        caFiles,
        lambda c: certificates.replaceAuthority(ServingAuthority.fromCredentials(c)),
    )
    return serving


def _knownPolicies(options: Options) -> dict[str, IForwardingPolicy]:
    """
    Every policy the ConfigMap may name, found once, at start-up: the
    built-ins, the installed plugins, and the operator's C{--policy} ones
    (loaded here; one that does not load stops the program with one line).
    """
    try:
        plugins = pluginPolicies()
    except PolicyError as e:
        fatal(PROGRAM, f"policy plugins: {e}")
    named: dict[str, IForwardingPolicy] = {}
    for name, spec in options["policy"].items():
        try:
            named[name] = loadPolicy(spec)
        except PolicyError as e:
            fatal(PROGRAM, f"--policy {name}={spec}: {e}")
        if name in plugins:
            _log.warn(
                "--policy {name}={spec} takes the name of an installed plugin policy",
                name=name,
                spec=spec,
            )
    return knownPolicies(plugins, named)


def _iptablesManager(
    options: Options,
    server: TunnelServer,
    table: ForwardingTable,
    endpoint: Callable[[str, str], IStreamServerEndpoint],
) -> IptablesManager | None:
    """
    The iptables manager, unless turned off: required with C{--iptables},
    on by default when this process may change iptables, and otherwise
    off with one line saying why.
    """
    from twisted.internet import reactor

    if options["no-iptables"]:
        return None
    reason = checkAvailable()
    if reason is not None:
        if options["iptables"]:
            fatal(PROGRAM, f"--iptables: {reason}")
        _log.warn(
            "iptables interception is off: {reason} (run with CAP_NET_ADMIN, or pass "
            "--no-iptables to say so)",
            reason=reason,
        )
        return None
    listeners = {
        kind: listenerAddress(
            endpoint(options[f"{kind}-proxy-endpoint"], f"--{kind}-proxy-endpoint")
        )
        if options[f"{kind}-proxy-endpoint"] != "none"
        else None
        for kind in ("https", "http", "tcp")
    }
    if options["iptables-prerouting"]:
        for kind, address in listeners.items():
            if address is not None and isLoopback(address[0]):
                fatal(
                    PROGRAM,
                    f"--iptables-prerouting: the {kind} proxy listener is on loopback "
                    f"({address[0]}), which routed traffic cannot reach; bind it where "
                    f"that traffic arrives (--{kind}-proxy-endpoint "
                    f"tcp:{address[1]}:interface=ADDRESS, which exposes it on that address), "
                    "or drop --iptables-prerouting",
                )
    return IptablesManager(
        reactor,
        listeners,
        table.current,
        server.routes,
        prerouting=options["iptables-prerouting"],
        preroutingSources=options["iptables-prerouting-source"],
        preroutingInterfaces=options["iptables-prerouting-interface"],
        interval=options["iptables-interval"],
    )
