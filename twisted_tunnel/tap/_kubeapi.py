# -*- test-case-name: tests.kube.test_tap -*-
"""
The daemons' options to reach the Kubernetes API (C{--kubeconfig},
C{--in-cluster}), the server's C{--config-configmap}, C{--watch-nodes} and
C{--agent-signer-ca-cert}, the agent's C{--bootstrap-kubeconfig}, and the
wiring that uses them.

C{twisted_tunnel.kube} (and so lightkube, the C{kubernetes} extra) is
imported only here, and only inside functions, once an option asked for
the API: a daemon run without them needs neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from ..forwarding.config import ConfigError, ConfigIntake, ProxyConfig, parseConfigData
from ._common import fatal

if TYPE_CHECKING:
    from ..kube.client import KubeAccess, KubeClient
    from ..server.directory import NodeDirectory


def logFor(program: str) -> Logger:
    """
    The logger of the daemon C{program} (C{edge-tunnel-agent} or
    C{edge-tunnel-server}): the lines this module writes for a daemon are
    that daemon's, under its own namespace, as the rest of its lines are,
    whichever of the two calls.
    """
    role = "agent" if program.endswith("agent") else "server"
    return Logger(namespace=f"twisted_tunnel.tap.{role}")


#: What a namespace or a ConfigMap name may be (DNS-1123 subdomain).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

#: ACK Edge's label on its edge nodes: the default C{--edge-node-selector}.
DEFAULT_EDGE_SELECTOR = "alibabacloud.com/is-edge-worker=true"
#: OpenYurt's label on its edge nodes, the documented other choice.
OPENYURT_EDGE_SELECTOR = "openyurt.io/is-edge-worker=true"

#: The name of the service that holds the daemon's one client of the API.
CLIENT_SERVICE = "kubernetes API client"

#: The line a daemon stops with when the extra is missing.
MISSING_EXTRA = (
    "{option} needs the Kubernetes client: pip install 'twisted-tunnel[kubernetes]' "
    "(lightkube; {error})"
)


class KubeAPIOptions(usage.Options):
    """C{--kubeconfig}, C{--in-cluster}: how a daemon reaches kube-apiserver, if it does."""

    #: The daemon's name, for the line it stops with.
    program = "edge-tunnel"

    optFlags: list[Any] = [
        [
            "in-cluster",
            None,
            "Reach the Kubernetes API with the pod's service account "
            "(KUBERNETES_SERVICE_HOST, /var/run/secrets/kubernetes.io/serviceaccount).",
        ],
    ]
    optParameters: list[Any] = [
        [
            "kubeconfig",
            None,
            None,
            "Reach the Kubernetes API with this kubeconfig file (its current context).",
        ],
    ]

    def checkKubeOptions(self) -> None:
        """For C{postOptions}: the two ways are one or the other."""
        if self["kubeconfig"] and self["in-cluster"]:
            raise usage.UsageError("--kubeconfig and --in-cluster are two ways: give one")

    def kubeAccess(self) -> KubeAccess | None:
        """How to reach the API, or C{None} if no option asked for it."""
        if not (self["kubeconfig"] or self["in-cluster"]):
            return None
        importKube(self.program, "--kubeconfig" if self["kubeconfig"] else "--in-cluster")
        from ..kube.client import KubeAccess

        return KubeAccess(kubeconfig=self["kubeconfig"] or None)


def parseConfigMapName(text: str) -> tuple[str, str]:
    """
    C{NAMESPACE/NAME}, each a DNS-1123 name, as C{(namespace, name)}.

    @raise usage.UsageError: it is not.
    """
    namespace, slash, name = text.partition("/")
    if not slash or not _NAME.fullmatch(namespace) or not _NAME.fullmatch(name):
        raise usage.UsageError(
            f"--config-configmap {text[:100]!r}: expected NAMESPACE/NAME, e.g. "
            "kube-system/edge-tunnel-server-cfg"
        )
    return namespace, name


def importKube(program: str, option: str) -> Any:
    """
    C{twisted_tunnel.kube}, imported now; or stop with one line naming the
    extra to install.
    """
    try:
        import twisted_tunnel.kube.client
        import twisted_tunnel.kube.configmap
        import twisted_tunnel.kube.events
        import twisted_tunnel.kube.nodes
        import twisted_tunnel.kube.watch  # noqa: F401
    except ImportError as e:
        fatal(program, MISSING_EXTRA.format(option=option, error=e))
    return twisted_tunnel.kube


def kubeClient(program: str, access: KubeAccess, reactor: Any) -> KubeClient:
    """A client for C{access}, or stop with one line saying why not."""
    from ..kube.client import KubeAccessError, KubeClient

    try:
        return KubeClient(access, reactor)
    except KubeAccessError as e:
        fatal(program, str(e))


def sharedClient(
    program: str, access: KubeAccess, reactor: Any, top: MultiService, *, register: bool = True
) -> KubeClient:
    """
    The daemon's one client of the API, whatever uses it (the ConfigMap, the
    Nodes): made on first use.  Registered (now, or later with
    L{registerClient}) as a service of C{top} added before the watches that
    use it, so that it is stopped after them (a C{MultiService} stops its
    children last first).
    """
    try:
        service = top.getServiceNamed(CLIENT_SERVICE)
    except KeyError:
        client = kubeClient(program, access, reactor)
        if register:
            registerClient(top, client)
        return client
    assert isinstance(service, _ClientService)
    return service.client


def registerClient(top: MultiService, client: KubeClient) -> None:
    """Make C{client} the daemon's one client of the API, unless it is already."""
    try:
        top.getServiceNamed(CLIENT_SERVICE)
    except KeyError:
        service = _ClientService(client)
        service.setName(CLIENT_SERVICE)
        service.setServiceParent(top)


def checkEdgeNodeSelector(text: str) -> None:
    """
    C{--edge-node-selector}, checked as the Node watch will read it.

    @raise usage.UsageError: it is not a selector taken here.
    """
    from ..kube.labels import LabelSelector, SelectorError

    try:
        LabelSelector.parse(text)
    except SelectorError as e:
        raise usage.UsageError(f"--edge-node-selector {text[:100]!r}: {e}") from None


def watchNodes(
    program: str, options: Any, reactor: Any, top: MultiService, directory: NodeDirectory
) -> None:
    """
    C{--watch-nodes}: keep C{directory} to the cluster's Nodes (every Node
    claims its addresses; those C{--edge-node-selector} matches are the edge
    nodes), as a service of C{top}.  Nothing is read before the reactor
    runs: until the first list arrives, agents' IPs are proven by their
    certificates alone, and proven again once it has.
    """
    access = options.kubeAccess()
    if access is None:
        raise usage.UsageError("--watch-nodes needs --kubeconfig or --in-cluster")
    importKube(program, "--watch-nodes")
    from ..kube.labels import LabelSelector
    from ..kube.nodes import nodeWatch

    selector = LabelSelector.parse(options["edge-node-selector"])
    watch = nodeWatch(reactor, sharedClient(program, access, reactor, top), directory, selector)
    watch.setName("--watch-nodes")
    watch.setServiceParent(top)
    logFor(program).info(
        "--watch-nodes: IPs listed on an agent's Node prove its IPs; edge nodes are those "
        "matching {selector!r}",
        selector=selector.text,
    )


def signAgentRequests(
    program: str,
    options: Any,
    reactor: Any,
    top: MultiService,
    agentAuthority: Callable[[], Any],
) -> tuple[Any, Callable[[], Any]]:
    """
    C{--agent-signer-ca-cert}: approve and sign the agents' CSRs of the
    tunnel's signer (L{twisted_tunnel.kube.csr}), as a service of C{top}.
    The CA is checked as the serving CA is (a CA, valid now, its key
    matching and readable by this user alone), and must be in the bundle
    agents are checked against (C{--agent-ca}, else C{--ca}): otherwise
    every certificate it signs would be refused.

    @param agentAuthority: the bundle agents are checked against now (it
        rotates too): asked again at each load of the signer's files.
    @return: the approver, and the function that loads and checks the CA's
        files again (as credentials), for the caller to watch them.
    """
    access = options.kubeAccess()
    if access is None:
        raise usage.UsageError("--agent-signer-ca-cert needs --kubeconfig or --in-cluster")
    importKube(program, "--agent-signer-ca-cert")

    from ..errors import CredentialsError
    from ..kube.csr import SIGNER_NAME, CSRApprover, csrWatch
    from ..tls.minting import loadServingAuthority

    def load() -> Any:
        authority = loadServingAuthority(
            options["agent-signer-ca-cert"],
            options["agent-signer-ca-key"],
            certOption="--agent-signer-ca-cert",
            keyOption="--agent-signer-ca-key",
        )
        if not _holds(agentAuthority(), authority):
            raise CredentialsError(
                f"--agent-signer-ca-cert {options['agent-signer-ca-cert']}: "
                f"{authority.describe()} is not in the CA bundle agents are checked against "
                "(--agent-ca, else --ca): the certificates it signs would be refused; add it"
            )
        return authority

    try:
        authority = load()
    except CredentialsError as e:
        fatal(program, str(e))
    client = sharedClient(program, access, reactor, top)
    approver = CSRApprover(client, authority)
    watch = csrWatch(reactor, client, approver)
    watch.setName("--agent-signer-ca-cert")
    watch.setServiceParent(top)
    logFor(program).info(
        "signing agents' certificate requests ({signer}) with {ca}",
        signer=SIGNER_NAME,
        ca=authority.describe(),
    )
    return approver, lambda: load().credentials()


def _holds(bundle: Any, authority: Any) -> bool:
    """Whether the CA bundle C{bundle} (pyOpenSSL certificates) holds C{authority}'s CA."""
    from cryptography.hazmat.primitives.serialization import Encoding

    wanted = authority.certificate.public_bytes(Encoding.DER)
    return any(
        each.original.to_cryptography().public_bytes(Encoding.DER) == wanted
        for each in bundle or ()
    )


def keepingSigner(options: Any, approver: Any, load: Callable[[], Any]) -> Callable[[], Any]:
    """
    C{load} (the agents' CA bundle and the agent port's certificate, loaded
    again for a rotation), refusing a bundle that no longer holds the CA
    the server signs agents' certificates with (C{approver}'s, as rotated):
    every agent it signed would be refused at its next connection.  The
    rotation is refused with one line, and the bundle in force kept.
    """
    from ..errors import CredentialsError

    def checked() -> Any:
        credentials = load()
        if not _holds(credentials.authority, approver.authority):
            bundle = options["agent-ca"] or options["ca"]
            option = "--agent-ca" if options["agent-ca"] else "--ca"
            raise CredentialsError(
                f"{option} {bundle}: the new bundle lacks {approver.authority.describe()}, "
                "the CA agents' certificates are signed with (--agent-signer-ca-cert): "
                "every agent it signed would be refused; keep it in the bundle"
            )
        return credentials

    return checked


def bootstrapCertificate(program: str, options: Any, reactor: Any) -> tuple[str, Any, Any]:
    """
    The agent's C{--bootstrap-kubeconfig}: its certificate from C{--cert-dir}
    if one there is still valid for C{--node-name}, else asked for now
    through the CSR API (L{twisted_tunnel.kube.bootstrap}).

    That first request blocks C{makeService}, bounded by
    C{--bootstrap-timeout}: the reactor is not running yet, and an agent
    without a certificate has nothing to do.  Renewals run in the API
    client's threads.

    @return: the certificate file, the API client, and the renewal service
        (to be started with the agent).
    """
    importKube(program, "--bootstrap-kubeconfig")
    import os

    from ..errors import CredentialsError
    from ..kube.bootstrap import CERT_FILE, CertificateRenewer, CSRRefused, obtainCertificate
    from ..kube.client import KubeAccess
    from ..tls.kubelet import loadNodeCredentials

    log = logFor(program)
    node = options["node-name"]
    path = os.path.join(options["cert-dir"], CERT_FILE)
    client = kubeClient(program, KubeAccess(kubeconfig=options["bootstrap-kubeconfig"]), reactor)
    try:
        credentials = loadNodeCredentials(options["ca"], path, node, option="--cert-dir")
    except CredentialsError as e:
        log.info(
            "no usable certificate in --cert-dir ({why}): asking for one through the CSR API",
            why=str(e),
        )
        try:
            certificate = obtainCertificate(
                client.client, node, path, wait=options["bootstrap-timeout"]
            )
        except CSRRefused as refused:
            fatal(program, f"--bootstrap-kubeconfig: {refused}")
        except Exception as failed:  # the API's errors, in one line
            from ..kube.client import describeApiError

            fatal(program, f"--bootstrap-kubeconfig: {describeApiError(failed)}")
        log.info(
            "node {node}'s certificate issued, until {end}",
            node=node,
            end=certificate.not_valid_after_utc.isoformat(),
        )
    else:
        certificate = credentials.certificate.original.to_cryptography()
    renewer = CertificateRenewer(reactor, client, node, path, certificate)
    renewer.setName("--bootstrap-kubeconfig renewal")
    return path, client, renewer


def configMapIntake(
    program: str,
    options: Any,
    reactor: Any,
    top: MultiService,
    onChange: Any,
    httpListenerPort: int,
    resolvePolicy: Any,
) -> tuple[ProxyConfig, ConfigIntake]:
    """
    C{--config-configmap}: read the ConfigMap once now (blocking, before
    the reactor runs, as C{--config} reads its file), stop with one line if
    it is refused or cannot be read, then watch it: the watch, its client
    and its Event poster become services of C{top}.

    @return: the initial configuration, and the intake every later version
        goes to (for metrics and readiness, like a L{ConfigWatcher}).
    """
    access = options.kubeAccess()
    if access is None:
        raise usage.UsageError("--config-configmap needs --kubeconfig or --in-cluster")
    namespace, name = parseConfigMapName(options["config-configmap"])
    importKube(program, "--config-configmap")
    from ..kube.configmap import configMapWatch, origin
    from ..kube.events import EventPoster

    # registered only once the first read went well: a daemon that stops
    # here leaves nothing half-made behind
    client = sharedClient(program, access, reactor, top, register=False)
    where = f"--config-configmap {namespace}/{name}"
    initial = _readOnce(program, client, namespace, name, where, httpListenerPort, resolvePolicy)
    intake = ConfigIntake(
        origin(namespace, name),
        reactor,
        initial,
        onChange,
        httpListenerPort=httpListenerPort,
        resolvePolicy=resolvePolicy,
    )
    registerClient(top, client)
    events = EventPoster(client, program, options["server-id"] or program)
    watch = configMapWatch(reactor, client, intake, namespace, name, events)
    watch.setName("--config-configmap")
    watch.setServiceParent(top)
    return initial, intake


def _readOnce(
    program: str,
    client: KubeClient,
    namespace: str,
    name: str,
    where: str,
    httpListenerPort: int,
    resolvePolicy: Any,
) -> ProxyConfig:
    """The ConfigMap now, checked as C{--config}'s file is; or stop with one line."""
    from ..kube.client import KubeAccessError
    from ..kube.configmap import configData, readConfigMap

    try:
        found = readConfigMap(client, namespace, name)
    except KubeAccessError as e:
        fatal(program, f"{where}: {e}")
    if found is None:
        logFor(program).warn(
            "{where}: not found at {server}; the defaults apply until it is created",
            where=where,
            server=client.server,
        )
        return parseConfigData({})
    try:
        return parseConfigData(
            configData(found), httpListenerPort=httpListenerPort, resolvePolicy=resolvePolicy
        )
    except ConfigError as e:
        fatal(program, f"{where}: {e}")


class _ClientService(MultiService):
    """Stops a L{KubeClient} (its threads, its connections) when the daemon stops."""

    def __init__(self, client: KubeClient) -> None:
        super().__init__()
        self.client = client

    def stopService(self) -> None:
        super().stopService()
        self.client.stop()
