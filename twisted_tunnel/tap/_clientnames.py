# -*- test-case-name: tests.tap.test_security_exposure -*-
"""
The server's allowlists of client names (C{--proxy-serving-client-name},
C{--connect-client-name}; L{twisted_tunnel.tls.clientnames}): parsing,
checking, and what is said at start-up, kept out of L{server<twisted_tunnel.tap.server>}'s
wiring.

Not given, the doors keep admitting any certificate of their CA that is not
a node's (compatibility), and the start-up log says why that is a risk and
which option closes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python import usage

from ..tls import Credentials
from ..tls.clientnames import ClientNames, clientName
from ..tls.failures import recordingVerify
from ._common import fatal

__all__ = [
    "CONNECT_CLIENT_NAME",
    "PROXY_SERVING_CLIENT_NAME",
    "addClientName",
    "checkClientNames",
    "doorClientNames",
    "listenerClientNames",
    "restricted",
]

_log = Logger()

PROXY_SERVING_CLIENT_NAME = "proxy-serving-client-name"
CONNECT_CLIENT_NAME = "connect-client-name"


def addClientName(options: Any, option: str, text: str) -> None:
    """One more name for C{--option} (repeatable), or a one-line usage error."""
    try:
        options.setdefault(option, []).append(clientName(text))
    except ValueError as e:
        raise usage.UsageError(f"--{option}: {e}") from None


def checkClientNames(options: Any) -> None:
    """Names for a listener that is turned off say nothing: refuse them (postOptions)."""
    if options[PROXY_SERVING_CLIENT_NAME] and options["https-proxy-endpoint"] == "none":
        raise usage.UsageError(
            "--proxy-serving-client-name names the HTTPS proxy listener's clients, which "
            "--https-proxy-endpoint none turns off"
        )
    if options[CONNECT_CLIENT_NAME] and options["connect-endpoint"] == "none":
        raise usage.UsageError(
            "--connect-client-name names the CONNECT door's clients, which "
            "--connect-endpoint none turns off"
        )


#: Said at start-up when the HTTPS proxy listener has no names.
_LISTENER_RISK = (
    "the HTTPS proxy listener admits every client certificate signed by {ca} "
    "(--proxy-serving-client-ca) that is not a node's, and lends each the proxy client "
    "certificate, kube-apiserver's kubelet client identity: on kubeadm that CA is the "
    "cluster CA, which also signs users' and CSR-approved certificates. Name the clients "
    "with --proxy-serving-client-name (kube-apiserver's --kubelet-client-certificate CN, "
    "kube-apiserver-kubelet-client on kubeadm; metrics-server's)."
)

#: Said at start-up when the CONNECT door over TLS has no names.
_DOOR_RISK = (
    "the CONNECT door admits every client certificate signed by {ca} (--connect-ca) that is "
    "not a node's, and takes each to any node (and any --connect-direct network). Name its "
    "clients with --connect-client-name (the CN of the client certificate kube-apiserver's "
    "EgressSelectorConfiguration presents)."
)


def listenerClientNames(options: Any, clock: IReactorTime) -> ClientNames | None:
    """
    The HTTPS proxy listener's names, or C{None} (any client of its CA but
    nodes), said at start-up either way.
    """
    ca = options["proxy-serving-client-ca"] or options["ca"]
    return _admitting(
        PROXY_SERVING_CLIENT_NAME, "HTTPS proxy listener", options, clock, ca, _LISTENER_RISK
    )


def doorClientNames(
    program: str, options: Any, clock: IReactorTime, local: bool
) -> ClientNames | None:
    """
    The CONNECT door's names, or C{None}: for a door on loopback or a UNIX
    socket (no TLS, no certificates: names would check nothing, so they stop
    the program), and for one over TLS without names (warned about).
    """
    if local:
        if options[CONNECT_CLIENT_NAME]:
            fatal(
                program,
                f"--connect-client-name: the CONNECT door {options['connect-endpoint']} is "
                "local (loopback or a UNIX socket), which serves without TLS: there is no "
                "client certificate to check",
            )
        return None
    ca = options["connect-ca"] or options["ca"]
    return _admitting(CONNECT_CLIENT_NAME, "CONNECT door", options, clock, ca, _DOOR_RISK)


def _admitting(
    option: str, door: str, options: Any, clock: IReactorTime, ca: str, risk: str
) -> ClientNames | None:
    """C{--option}'s names for C{door}, said at start-up; without any, C{risk} is warned of."""
    names = options[option]
    if not names:
        _log.warn(risk, ca=ca)
        return None
    admitted = ClientNames(f"--{option}", door, names, clock)
    _log.info(
        "{door}: admits only the clients named {names} (--{option}), with certificates from {ca}",
        door=door,
        names=admitted.describe(),
        option=option,
        ca=ca,
    )
    return admitted


def restricted(
    build: Callable[[Credentials], CertificateOptions], names: ClientNames | None
) -> Callable[[Credentials], CertificateOptions]:
    """
    C{build}, whose options admit only C{names} (each rotation's too).  The
    verify callback C{build} set is replaced (OpenSSL has one per context),
    so its job is kept as the inner verdict: OpenSSL's own, with a refusal
    recorded for the log line (L{recordingVerify}).
    """
    if names is None:
        return build

    def restrictedBuild(credentials: Credentials) -> CertificateOptions:
        options = build(credentials)
        names.restrict(options.getContext(), recordingVerify)
        return options

    return restrictedBuild
