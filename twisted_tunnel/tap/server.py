# -*- test-case-name: tests.test_tap -*-
"""
C{twistd edge-tunnel-server}: the cloud side.

It listens for agents on C{--tunnel-endpoint} (mutual TLS), serves the
HTTP CONNECT front door on C{--connect-endpoint} and any static
C{--forward} listeners.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from ..connect import ConnectDoorFactory, refuseAgentCertificates
from ..errors import CredentialsError
from ..forward import ForwardFactory, parseForward
from ..server import DEFAULT_OPEN_TIMEOUT, TunnelServer
from ..tls import loadCredentials, serverOptions
from ._common import TunnelOptions, fatal, positiveFloat, positiveInt

PROGRAM = "edge-tunnel-server"


class Options(TunnelOptions):
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
            "refuses agents' (system:node:*) certificates.",
        ],
        ["connect-ca", None, None, "CA for CONNECT clients' certificates (default: --ca)."],
        ["server-id", None, None, "This replica's id (default: random)."],
        ["server-count", None, 1, "How many server replicas run.", positiveInt],
        [
            "open-timeout",
            None,
            DEFAULT_OPEN_TIMEOUT,
            "Seconds an agent has to answer a stream open.",
            positiveFloat,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["forward"] = []

    def opt_forward(self, spec: str) -> None:
        """
        NODE:PORT=ENDPOINT: carry every connection to ENDPOINT to PORT on
        NODE (repeatable), e.g. edge-1:9100=tcp:19100:interface=127.0.0.1
        """
        try:
            self["forward"].append(parseForward(spec))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


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
    interface = getattr(endpoint, "_interface", "")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False


def _connectDoorFactory(
    options: Options, server: TunnelServer, door: ConnectDoorFactory, local: bool
) -> IProtocolFactory:
    if local:
        return door
    assert server.credentials is not None
    creds = server.credentials
    if options["connect-ca"]:
        try:
            authority = loadCredentials(
                options["connect-ca"], options["cert"], options["key"], caOption="--connect-ca"
            )
        except CredentialsError as e:
            fatal(PROGRAM, str(e))
        creds = authority
    factory: IProtocolFactory = TLSMemoryBIOFactory(serverOptions(creds), False, door)
    return factory


class _ServerService(MultiService):
    """The listeners, and on stop a GOAWAY to every agent before the exit."""

    def __init__(self, server: TunnelServer) -> None:
        super().__init__()
        self.tunnelServer = server

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()
        self.tunnelServer.closeAll()
        return stopped


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    credentials = options.credentials(PROGRAM)
    server = TunnelServer(
        reactor,
        credentials,
        serverId=options["server-id"],
        serverCount=options["server-count"],
        settings=options.settings(),
        keepalive=options.keepalive(),
        openTimeout=options["open-timeout"],
    )
    top = _ServerService(server)

    def endpoint(description: str, name: str) -> IStreamServerEndpoint:
        try:
            built: IStreamServerEndpoint = serverFromString(reactor, description)
        except Exception as e:  # any failure to parse is a configuration error
            fatal(PROGRAM, f"{name} {description!r}: {e or type(e).__name__}")
        return built

    def listen(description: str, factory: Any, name: str) -> None:
        service = StreamServerEndpointService(endpoint(description, name), factory)
        service._raiseSynchronously = True  # a port in use stops startup, loudly
        service.setName(name)
        service.setServiceParent(top)

    listen(options["tunnel-endpoint"], server.tunnelFactory(), "--tunnel-endpoint")
    local = connectDoorIsLocal(endpoint(options["connect-endpoint"], "--connect-endpoint"))
    door = ConnectDoorFactory(server, authorize=None if local else refuseAgentCertificates)
    listen(
        options["connect-endpoint"],
        _connectDoorFactory(options, server, door, local),
        "--connect-endpoint",
    )
    for node, port, description in options["forward"]:
        listen(description, ForwardFactory(server, node, port), f"--forward {node}:{port}")
    return top
