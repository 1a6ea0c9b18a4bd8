# -*- test-case-name: tests.tap.test_tap -*-
"""
C{twistd edge-tunnel-agent}: the edge side.

It dials C{--server} (the load balancer in front of the servers) until it
holds a tunnel to every server replica, proves its node identity with its
certificate, and dials targets for the servers within its allowlist.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from ..agent import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DIAL_TIMEOUT,
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_SERVERS,
    DEFAULT_MAX_STREAMS_TOTAL,
    TunnelAgent,
)
from ..errors import CredentialsError
from ..mux import MAX_SERVERS, StreamBudget
from ..net.addresses import HostPortError, splitHostPort
from ..net.relay import DEFAULT_HALF_CLOSED_TIMEOUT, DEFAULT_IDLE_TIMEOUT, RelayTimeouts
from ..tls import Credentials
from ..tls.kubelet import KUBELET_CLIENT_CERT, keepingNode, loadNodeCredentials
from ._common import (
    DaemonService,
    TunnelOptions,
    fatal,
    nonNegativeFloat,
    positiveFloat,
    positiveInt,
)

MiB = 1024 * 1024

PROGRAM = "edge-tunnel-agent"

_log = Logger()

#: Default of --drain-timeout: long enough for a scrape or an API call in
#: flight, short enough that a restarting agent is soon replaced.
DEFAULT_DRAIN_TIMEOUT = 10.0


def _maxServers(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_SERVERS:
        raise ValueError(f"{text} is not in 1..{MAX_SERVERS}")
    return value


def parseServer(text: str) -> tuple[str, int]:
    """
    Parse C{HOST:PORT} (C{[v6]:PORT} for IPv6 literals).

    @raise usage.UsageError: naming the bad value.
    """
    try:
        return splitHostPort(text)
    except HostPortError:
        raise usage.UsageError(
            f"--server {text!r}: expected HOST:PORT ([ADDRESS]:PORT for IPv6)"
        ) from None


class Options(TunnelOptions):
    program = PROGRAM

    def missingOptions(self) -> list[str]:
        server = [] if self["server"] else ["--server HOST:PORT"]
        return server + super().missingOptions()

    synopsis = (
        "--server HOST:PORT [options] --ca CA.pem --cert AGENT.pem --key AGENT-KEY.pem\n"
        "   or: --server HOST:PORT [options] --ca CA.pem "
        f"--kubelet-client-cert {KUBELET_CLIENT_CERT}\n"
        "Hold a tunnel to the edge-tunnel server and dial this node's ports for it."
    )
    optParameters = [
        ["server", None, None, "HOST:PORT of the server (or its load balancer). Required."],
        [
            "kubelet-client-cert",
            None,
            None,
            "Prove this node with the kubelet's own client certificate instead of --cert and "
            f"--key: the PEM file holding both ({KUBELET_CLIENT_CERT}), "
            "CN=system:node:<node>, O=system:nodes, from the cluster's client CA (the server's "
            "--agent-ca). Followed when the kubelet rotates it (--tls-reload-interval).",
        ],
        [
            "bootstrap-kubeconfig",
            None,
            None,
            "Get this node's tunnel certificate through the Kubernetes CSR API instead of "
            "--cert and --key: a kubeconfig with the node's own credentials (the requester "
            "must be system:node:<node>, in system:nodes: the kubelet's kubeconfig, not a "
            "bootstrap token's). The key is made here and kept in --cert-dir; the server "
            "(--agent-signer-ca-cert) signs it; renewed at two thirds of its life. Needs "
            "--node-name.",
        ],
        [
            "cert-dir",
            None,
            "/var/lib/edge-tunnel/pki",
            "With --bootstrap-kubeconfig: where the certificate and its key are kept (one "
            "0600 file); a still valid one there is used without asking the API.",
        ],
        [
            "bootstrap-timeout",
            None,
            300.0,
            "With --bootstrap-kubeconfig: seconds to wait for a request to be signed.",
            positiveFloat,
        ],
        ["node-name", None, None, "This node's name (default: from the certificate)."],
        [
            "server-name",
            None,
            None,
            "Name or IP to verify on the server's certificate (default: the host of --server).",
        ],
        [
            "dial-timeout",
            None,
            DEFAULT_DIAL_TIMEOUT,
            "Seconds to wait for a target to accept a connection.",
            positiveFloat,
        ],
        ["max-backoff", None, 30.0, "Longest wait between reconnect attempts.", positiveFloat],
        [
            "max-servers",
            None,
            DEFAULT_MAX_SERVERS,
            "Hold tunnels to at most this many server replicas, whatever the servers "
            f"announce (their --server-count; 1..{MAX_SERVERS}).",
            _maxServers,
        ],
        [
            "connect-timeout",
            None,
            DEFAULT_CONNECT_TIMEOUT,
            "Seconds to wait for the TCP connection to --server (a silent path is given up "
            "on after this, and dialed again with backoff).",
            positiveFloat,
        ],
        [
            "max-streams-total",
            None,
            DEFAULT_MAX_STREAMS_TOTAL,
            "Streams open at once across the tunnels to all server replicas (--max-streams "
            "bounds each tunnel); also bounded by the open-file limit (ulimit -n) less a "
            "margin. More are refused (OPEN_FAIL TOO_MANY_STREAMS).",
            positiveInt,
        ],
        [
            "max-buffered-mib",
            None,
            DEFAULT_MAX_BUFFER // MiB,
            "MiB that streams may make the agent hold across all its tunnels: each stream "
            "reserves its --stream-window, so this allows max-buffered-mib / stream-window "
            "streams at most.",
            positiveInt,
        ],
        [
            "relay-idle-timeout",
            None,
            DEFAULT_IDLE_TIMEOUT,
            "Seconds a stream relayed to its target may move no byte either way before it "
            "is closed; the default is the kubelet's streaming idle timeout. 0: never.",
            nonNegativeFloat,
        ],
        [
            "relay-half-close-timeout",
            None,
            DEFAULT_HALF_CLOSED_TIMEOUT,
            "Seconds a relayed stream may move no byte once either side has sent its EOF, "
            "closed or reset (seen even while it is paused) before it is closed. 0: never.",
            nonNegativeFloat,
        ],
        [
            "meta-endpoint",
            None,
            "tcp:10266:interface=127.0.0.1",
            "Where to serve /healthz, /readyz and /metrics (Twisted endpoint, or 'none').",
        ],
        [
            "drain-timeout",
            None,
            DEFAULT_DRAIN_TIMEOUT,
            "On SIGTERM: seconds to let streams in flight finish (the servers route new ones "
            "elsewhere at once) before closing what is left. While it lasts, new requests for "
            "this node fail ('no agent connected') until the next agent is up: keep it short. "
            "0: close at once.",
            nonNegativeFloat,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["node-ip"] = []
        self["allow"] = []

    def opt_node_ip(self, ips: str) -> None:
        """
        This node's IP (repeatable, or comma-separated as the downward API's
        status.hostIPs gives them for a dual-stack node; default: the IP
        addresses in the certificate).
        """
        for ip in ips.split(","):
            try:
                self["node-ip"].append(str(ipaddress.ip_address(ip.strip())))
            except ValueError:
                raise usage.UsageError(f"--node-ip {ip!r} is not an IP address") from None

    def opt_allow(self, network: str) -> None:
        """
        Also allow dialing this IP or network (CIDR, repeatable). By default
        only the node's own IPs and loopback may be dialed.
        """
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise usage.UsageError(f"--allow {network!r} is not an IP network") from None
        self["allow"].append(network)

    def requiredFiles(self) -> tuple[str, ...]:
        if self["kubelet-client-cert"] or self["bootstrap-kubeconfig"]:
            return ("ca",)
        return super().requiredFiles()

    def postOptions(self) -> None:
        if self["bootstrap-kubeconfig"]:
            for name in ("cert", "key", "kubelet-client-cert"):
                if self[name]:
                    raise usage.UsageError(
                        f"--{name} and --bootstrap-kubeconfig exclude each other: the "
                        "certificate comes from the CSR API"
                    )
            if not self["node-name"]:
                raise usage.UsageError("--bootstrap-kubeconfig needs --node-name")
        if self["kubelet-client-cert"]:
            for name in ("cert", "key"):
                if self[name]:
                    raise usage.UsageError(
                        f"--{name} and --kubelet-client-cert exclude each other: the kubelet's "
                        "file holds both the certificate and its key"
                    )
        self.checkRequired()
        self["server-address"] = parseServer(self["server"])
        super().postOptions()
        if self["max-buffered-mib"] * MiB < self["stream-window"]:
            raise usage.UsageError(
                "--max-buffered-mib must hold at least one --stream-window "
                f"({self['stream-window']} bytes)"
            )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from ..agent import backoffPolicy
    from ..net.eager import EagerTCPReactor

    reload: Callable[[], Credentials] | None = None
    bootstrapped: tuple[Any, Any] | None = None
    if options["bootstrap-kubeconfig"]:
        from ._kubeapi import bootstrapCertificate

        pemPath, *services = bootstrapCertificate(PROGRAM, options, reactor)
        bootstrapped = (services[0], services[1])
        reload = keepingNode(
            partial(loadNodeCredentials, options["ca"], pemPath, options["node-name"]),
            options["node-name"],
        )
        try:
            credentials = reload()
        except CredentialsError as e:
            fatal(PROGRAM, str(e))
    elif options["kubelet-client-cert"]:
        pemPath = options["kubelet-client-cert"]
        reload = partial(loadNodeCredentials, options["ca"], pemPath, options["node-name"])
        try:
            credentials = reload()
        except CredentialsError as e:
            fatal(PROGRAM, str(e))
    else:
        credentials = options.credentials(PROGRAM)
    identity = credentials.identity()
    nodeName = options["node-name"] or identity.nodeName()
    if not nodeName:
        fatal(
            PROGRAM,
            f"--cert {options['cert']}: the certificate ({identity.describe()}) names no node "
            "(CN system:node:<name>); give --node-name",
        )
    if not identity.carriesNode(nodeName):
        fatal(
            PROGRAM,
            f"--node-name {nodeName!r}: the certificate {options['cert']} ({identity.describe()}) "
            "does not carry that name; the server would refuse it",
        )
    if options["kubelet-client-cert"]:
        _log.info(
            "proving node {node} with the kubelet's client certificate {path} ({certificate})",
            node=nodeName,
            path=pemPath,
            certificate=identity.certificate(),
        )
    nodeIPs = options["node-ip"] or list(identity.ipAddresses)
    agent = TunnelAgent(
        # its tunnel and the connections it dials send small writes at once
        EagerTCPReactor(reactor),
        credentials,
        options["server-address"],
        nodeName,
        nodeIPs,
        serverName=options["server-name"],
        allow=options["allow"],
        settings=options.settings(),
        keepalive=options.keepalive(),
        reloadInterval=options["tls-reload-interval"],
        dialTimeout=options["dial-timeout"],
        retryPolicy=backoffPolicy(maxDelay=options["max-backoff"]),
        drainTimeout=options["drain-timeout"],
        connectTimeout=options["connect-timeout"],
        maxServers=options["max-servers"],
        relayTimeouts=RelayTimeouts(
            idle=options["relay-idle-timeout"], halfClosed=options["relay-half-close-timeout"]
        ),
        budget=StreamBudget.forProcess(
            reactor,
            maxStreams=options["max-streams-total"],
            maxBufferBytes=options["max-buffered-mib"] * MiB,
        ),
        reload=reload,
    )
    agent.setName("agent")
    top = DaemonService(PROGRAM, options["log-format"], options["log-level"])
    if bootstrapped is not None:
        from ._kubeapi import registerClient

        registerClient(top, bootstrapped[0])
        bootstrapped[1].setServiceParent(top)
    agent.setServiceParent(top)
    if options["meta-endpoint"] != "none":
        try:
            meta = serverFromString(reactor, options["meta-endpoint"])
        except Exception as e:  # any failure to parse is a configuration error
            fatal(PROGRAM, f"--meta-endpoint {options['meta-endpoint']!r}: {e}")
        top.checks.append(lambda: _allServersHeld(agent))
        top.serveMeta(meta, reactor, agent.metrics.registry, lambda: _held(agent))
    return top


def _held(agent: TunnelAgent) -> str:
    return f"holding tunnels to {len(agent.servers())} of {agent.serversWanted()} servers"


def _allServersHeld(agent: TunnelAgent) -> str | None:
    """Ready once the agent holds a tunnel to every server it knows of."""
    if agent.servers() and len(agent.servers()) >= agent.serversWanted():
        return None
    return _held(agent)
