"""
A ready-made PKI for tests: certificate authorities, server, agent and client certificates.

Minting keys and signing certificates is the slow part of a TLS test, so
everything here is minted once per process, lazily, and cached at module
level; every L{TestPKI} instance shares the cache.  Tests must treat the
returned objects as read-only (they are frozen records anyway).

Typical uses::

    pki = TestPKI()

    # In memory, no files:
    serverCreds = pki.credentials(pki.server)
    agentCreds = pki.credentials(pki.agent("edge-1"))

    # On disk, for code that loads files (daemons, the CLI):
    paths = pki.paths(pki.agent("edge-1"), temporaryDirectory(self))
    loadCredentials(paths.ca, paths.cert, paths.key)
    options = ["--ca", paths.ca, "--cert", paths.cert, "--key", paths.key]
    # ... which is also paths.options()

    # A whole directory like the one `edge-tunnel certs` makes:
    layout = pki.writeTo(temporaryDirectory(self))

What there is:
    - L{TestPKI.ca}: the tunnel's CA, which signs everything below unless
      said otherwise;
    - L{TestPKI.server}: the server, for C{localhost}, C{127.0.0.1} and C{::1};
    - L{TestPKI.agent}: an agent for any node (and IP addresses);
      C{agent("other")} is the certificate of another node
      (C{CN=system:node:other}), for "claims another node" tests;
    - L{TestPKI.client}: a client of the CONNECT front door;
    - L{TestPKI.otherCA}, L{TestPKI.foreignAgent} and L{TestPKI.foreignServer}:
      an unrelated CA, and agent and server certificates it signed, for
      "wrong CA" tests;
    - L{TestPKI.serverFor}: a server certificate for other names, e.g. one
      that does not carry the name an agent dials;
    - L{TestPKI.expiredAgent}, L{TestPKI.expiredServer}: certificates whose
      validity ended yesterday;
    - L{TestPKI.leaf}: a clientAuth certificate with any subject and
      subjectAltNames, for hostile-agent tests (C{CN=system:node:EDGE-K},
      a Kelvin sign, C{CN=edge-1-ops} with C{DNS:edge-1}, no
      C{O=system:nodes}); L{TestPKI.shortLivedAgent} expires soon.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import shutil
import tempfile
import unittest
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twisted_tunnel.tls import Credentials, loadCredentials, makeCredentials
from twisted_tunnel.tls.certs import (
    NODE_ORGANIZATION,
    Issued,
    _mintLeaf,
    mintAgent,
    mintCA,
    mintClient,
    mintServer,
    writePair,
)

__all__ = [
    "SERVER_NAMES",
    "CredentialPaths",
    "KubeletCertificateStore",
    "PKILayout",
    "PairPaths",
    "TestPKI",
    "temporaryDirectory",
]

SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
"""The names in L{TestPKI.server}: what a test on loopback may dial."""


def temporaryDirectory(testCase: unittest.TestCase) -> str:
    """
    Make an empty directory, removed when C{testCase} ends.

    Unlike trial's C{mktemp}, which puts directories under the current
    directory when run by pytest, this uses the system's temporary directory.
    """
    directory = tempfile.mkdtemp(prefix="twisted-tunnel-test-")
    testCase.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


@frozen
class PairPaths:
    """Where a certificate and its key were written."""

    cert: str
    key: str


@frozen
class CredentialPaths:
    """
    The three files a daemon loads: the CA bundle, its certificate and its key.

    Pass them to L{loadCredentials}, or as command line options with
    L{options}.
    """

    ca: str
    cert: str
    key: str

    def options(
        self, caOption: str = "--ca", certOption: str = "--cert", keyOption: str = "--key"
    ) -> list[str]:
        """The paths as command line options, e.g. for C{Options.parseOptions}."""
        return [caOption, self.ca, certOption, self.cert, keyOption, self.key]

    def load(self) -> Credentials:
        """Load the files with L{loadCredentials}, as a daemon would."""
        return loadCredentials(self.ca, self.cert, self.key)


@frozen
class PKILayout:
    """
    A directory as C{edge-tunnel certs} lays it out, written by L{TestPKI.writeTo}.

    @ivar directory: The directory.
    @ivar ca: C{ca.pem} and C{ca-key.pem}.
    @ivar server: C{server.pem} and C{server-key.pem}.
    @ivar agent: C{agent-<node>.pem} and C{agent-<node>-key.pem}.
    @ivar client: C{client-<name>.pem} and C{client-<name>-key.pem}.
    """

    directory: str
    ca: PairPaths
    server: PairPaths
    agent: PairPaths
    client: PairPaths

    def serverPaths(self) -> CredentialPaths:
        """The server's C{--ca}, C{--cert} and C{--key}."""
        return CredentialPaths(ca=self.ca.cert, cert=self.server.cert, key=self.server.key)

    def agentPaths(self) -> CredentialPaths:
        """The agent's C{--ca}, C{--cert} and C{--key}."""
        return CredentialPaths(ca=self.ca.cert, cert=self.agent.cert, key=self.agent.key)

    def clientPaths(self) -> CredentialPaths:
        """The CONNECT client's C{--ca}, C{--cert} and C{--key}."""
        return CredentialPaths(ca=self.ca.cert, cert=self.client.cert, key=self.client.key)


def _yesterday() -> tuple[datetime.datetime, datetime.datetime]:
    """A validity period that ended a day ago."""
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)


# The process-wide cache: each function mints once per distinct argument.


@functools.cache
def _ca() -> Issued:
    return mintCA("edge-tunnel test CA")


@functools.cache
def _otherCA() -> Issued:
    return mintCA("unrelated test CA")


@functools.cache
def _server(names: tuple[str, ...]) -> Issued:
    return mintServer(_ca(), names)


@functools.cache
def _agent(node: str, ips: tuple[str, ...]) -> Issued:
    return mintAgent(_ca(), node, ips)


@functools.cache
def _client(name: str) -> Issued:
    return mintClient(_ca(), name)


@functools.cache
def _foreignAgent(node: str) -> Issued:
    return mintAgent(_otherCA(), node)


@functools.cache
def _foreignServer() -> Issued:
    return mintServer(_otherCA(), SERVER_NAMES)


@functools.cache
def _expiredAgent(node: str) -> Issued:
    notBefore, notAfter = _yesterday()
    return mintAgent(_ca(), node, notBefore=notBefore, notAfter=notAfter)


@functools.cache
def _expiredServer() -> Issued:
    notBefore, notAfter = _yesterday()
    return mintServer(_ca(), SERVER_NAMES, notBefore=notBefore, notAfter=notAfter)


@functools.cache
def _clusterCA() -> Issued:
    return mintCA("test cluster CA")


def _clusterLeaf(
    subject: x509.Name,
    usages: tuple[x509.ObjectIdentifier, ...],
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> Issued:
    return _mintLeaf(_clusterCA(), subject, [], list(usages), 365, notBefore, notAfter)


def _subject(commonName: str, organizations: tuple[str, ...]) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        + [x509.NameAttribute(NameOID.COMMON_NAME, commonName)]
    )


@functools.cache
def _kubeletClient(node: str) -> Issued:
    return _clusterLeaf(
        _subject(f"system:node:{node}", (NODE_ORGANIZATION,)), (ExtendedKeyUsageOID.CLIENT_AUTH,)
    )


@functools.cache
def _clusterClient(commonName: str, organizations: tuple[str, ...]) -> Issued:
    return _clusterLeaf(_subject(commonName, organizations), (ExtendedKeyUsageOID.CLIENT_AUTH,))


@functools.cache
def _kubeletServing(node: str) -> Issued:
    return _clusterLeaf(
        _subject(f"system:node:{node}", (NODE_ORGANIZATION,)), (ExtendedKeyUsageOID.SERVER_AUTH,)
    )


@functools.cache
def _leaf(
    commonName: str,
    organizations: tuple[str, ...],
    dnsNames: tuple[str, ...],
    ips: tuple[str, ...],
    notAfter: datetime.datetime | None,
) -> Issued:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        + [x509.NameAttribute(NameOID.COMMON_NAME, commonName)]
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dnsNames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    notBefore = None
    if notAfter is not None:
        notBefore = min(notAfter, datetime.datetime.now(datetime.UTC)) - datetime.timedelta(days=1)
    return _mintLeaf(
        _ca(), subject, sans, [ExtendedKeyUsageOID.CLIENT_AUTH], 30, notBefore, notAfter
    )


class TestPKI:
    """
    The shared test PKI (see the module docstring).

    Instances are cheap: all of them share one process-wide cache.
    """

    __test__ = False  # Not a test case, despite the name: pytest, don't collect it.

    @property
    def ca(self) -> Issued:
        """The tunnel's CA: it signs every certificate here but the foreign ones."""
        return _ca()

    @property
    def otherCA(self) -> Issued:
        """A CA unrelated to L{ca}: nothing the tunnel trusts."""
        return _otherCA()

    @property
    def server(self) -> Issued:
        """The server, for every name in L{SERVER_NAMES}."""
        return _server(SERVER_NAMES)

    def serverFor(self, *names: str) -> Issued:
        """A server certificate, signed by L{ca}, for C{names} only."""
        return _server(tuple(names))

    def agent(self, node: str = "edge-1", ips: Sequence[str] = ()) -> Issued:
        """
        The agent certificate for C{node} (C{CN=system:node:<node>,
        O=system:nodes}), signed by L{ca}; it carries C{ips} as IP
        subjectAltNames, none by default (as kubelet certificates do).
        """
        return _agent(node, tuple(ips))

    def client(self, name: str = "kube-apiserver") -> Issued:
        """A CONNECT client's certificate (C{CN=<name>}), signed by L{ca}."""
        return _client(name)

    def foreignAgent(self, node: str = "edge-1") -> Issued:
        """A well-formed agent certificate for C{node}, but signed by L{otherCA}."""
        return _foreignAgent(node)

    def foreignServer(self) -> Issued:
        """A server certificate for L{SERVER_NAMES}, but signed by L{otherCA}."""
        return _foreignServer()

    def expiredAgent(self, node: str = "edge-1") -> Issued:
        """An agent certificate for C{node}, signed by L{ca}, that expired yesterday."""
        return _expiredAgent(node)

    def expiredServer(self) -> Issued:
        """The server certificate for L{SERVER_NAMES}, expired yesterday."""
        return _expiredServer()

    @property
    def clusterCA(self) -> Issued:
        """
        A Kubernetes cluster's client CA (kube-apiserver's C{--client-ca-file}),
        unrelated to L{ca}: it signs the kubelets' client certificates, and
        admins', controllers' and kube-apiserver's own.
        """
        return _clusterCA()

    def kubeletClient(
        self,
        node: str = "edge-1",
        *,
        notBefore: datetime.datetime | None = None,
        notAfter: datetime.datetime | None = None,
    ) -> Issued:
        """
        A kubelet's client certificate from L{clusterCA}, as the cluster's
        signer issues it: C{CN=system:node:<node>, O=system:nodes}, clientAuth,
        no subjectAltName.  Cached unless a validity is given (one per call).
        """
        if notBefore is None and notAfter is None:
            return _kubeletClient(node)
        return _clusterLeaf(
            _subject(f"system:node:{node}", (NODE_ORGANIZATION,)),
            (ExtendedKeyUsageOID.CLIENT_AUTH,),
            notBefore,
            notAfter,
        )

    def clusterClient(self, commonName: str, *organizations: str) -> Issued:
        """
        Another client identity from L{clusterCA}: C{clusterClient("admin",
        "system:masters")}, C{clusterClient("kube-apiserver-kubelet-client")}...
        """
        return _clusterClient(commonName, tuple(organizations))

    def kubeletServing(self, node: str = "edge-1") -> Issued:
        """
        A kubelet serving certificate from L{clusterCA} (as the
        C{kubernetes.io/kubelet-serving} signer issues it when the kubelet
        bootstraps one): the node's subject, but serverAuth only.
        """
        return _kubeletServing(node)

    def leaf(
        self,
        commonName: str,
        *,
        organizations: Sequence[str] = (NODE_ORGANIZATION,),
        dnsNames: Sequence[str] = (),
        ips: Sequence[str] = (),
        notAfter: datetime.datetime | None = None,
    ) -> Issued:
        """
        A clientAuth certificate signed by L{ca} with exactly this subject
        (C{O=<organizations>, CN=<commonName>}) and these subjectAltNames,
        whatever they say: what no C{edge-tunnel certs} command mints, for
        tests of what the server does with it (C{CN=system:node:EDGE-K},
        C{CN=edge-1-ops} with C{DNS:edge-1}, no C{O=system:nodes}).

        @param notAfter: when it expires (it became valid a day before, or
            a day before now if that is earlier); 30 days from now by default.
        """
        return _leaf(commonName, tuple(organizations), tuple(dnsNames), tuple(ips), notAfter)

    def shortLivedAgent(self, node: str, notAfter: datetime.datetime) -> Issued:
        """
        A well-formed agent certificate for C{node}, signed by L{ca}, that
        expires at C{notAfter} (a test makes one per use: not cached).
        """
        now = datetime.datetime.now(datetime.UTC)
        return mintAgent(
            _ca(),
            node,
            notBefore=min(now, notAfter) - datetime.timedelta(days=1),
            notAfter=notAfter,
        )

    def credentials(self, issued: Issued, *, ca: Issued | None = None) -> Credentials:
        """
        In-memory L{Credentials} presenting C{issued} and trusting C{ca}.

        No file and no check is involved (an expired certificate is fine
        here: that is the point of some tests).

        @param ca: The authority to trust; L{ca} by default.
        """
        authority = (ca or self.ca).certificate
        return makeCredentials([authority], issued.certificate, issued.key)

    def writePair(self, issued: Issued, directory: str, stem: str) -> PairPaths:
        """
        Write C{issued} as C{<stem>.pem} and C{<stem>-key.pem} in C{directory}.

        C{directory} is created if needed.
        """
        os.makedirs(directory, exist_ok=True)
        paths = PairPaths(
            cert=os.path.join(directory, f"{stem}.pem"),
            key=os.path.join(directory, f"{stem}-key.pem"),
        )
        writePair(issued, paths.cert, paths.key)
        return paths

    def paths(
        self,
        issued: Issued,
        directory: str,
        *,
        ca: Issued | None = None,
        stem: str | None = None,
    ) -> CredentialPaths:
        """
        Write C{issued}, and the CA certificate to trust, as files in C{directory}.

        @param ca: The authority whose certificate goes in the CA file;
            L{ca} by default.
        @param stem: The file name stem for C{issued}; by default derived
            from its serial number, so several certificates can share a
            directory.
        @return: The paths, ready for L{loadCredentials} or a daemon's options.
        """
        authority = ca or self.ca
        os.makedirs(directory, exist_ok=True)
        caPath = os.path.join(directory, f"ca-{authority.certificate.serial_number:x}.pem")
        with open(caPath, "wb") as f:
            f.write(authority.certificatePEM())
        pair = self.writePair(
            issued, directory, stem or f"cert-{issued.certificate.serial_number:x}"
        )
        return CredentialPaths(ca=caPath, cert=pair.cert, key=pair.key)

    def writeTo(
        self, directory: str, *, node: str = "edge-1", client: str = "kube-apiserver"
    ) -> PKILayout:
        """
        Write a whole PKI directory, named as C{edge-tunnel certs} names its files.

        @param node: The node of the agent certificate written.
        @param client: The name of the client certificate written.
        """
        return PKILayout(
            directory=directory,
            ca=self.writePair(self.ca, directory, "ca"),
            server=self.writePair(self.server, directory, "server"),
            agent=self.writePair(self.agent(node), directory, f"agent-{node}"),
            client=self.writePair(self.client(client), directory, f"client-{client}"),
        )


class KubeletCertificateStore:
    """
    A kubelet's C{pki} directory as its client certificate manager keeps it
    (C{k8s.io/client-go} v0.37.2, C{util/certificate/certificate_store.go},
    C{fileStore.Update}): each certificate, with its intermediates and then
    its key (SEC1, C{EC PRIVATE KEY}, as the kubelet makes it), in
    C{kubelet-client-<timestamp>.pem}, mode 0600; C{kubelet-client-current.pem}
    a symlink to the newest, by absolute path, repointed as client-go does:
    a C{kubelet-client-updated.pem} symlink is made, C{-current} removed,
    and the new link renamed over it (so there is an instant without one).
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self.directory = os.path.abspath(directory)
        self.current = os.path.join(self.directory, "kubelet-client-current.pem")
        self._updated = os.path.join(self.directory, "kubelet-client-updated.pem")
        self._written = 0

    @staticmethod
    def pem(issued: Issued, intermediates: Sequence[x509.Certificate] = ()) -> bytes:
        """What the kubelet writes for C{issued}: certificates, then the key."""
        key = issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        certificates = [issued.certificate, *intermediates]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates) + key

    def write(self, data: bytes) -> str:
        """Write a new C{kubelet-client-<timestamp>.pem} (not yet current); its path."""
        self._written += 1
        stamp = f"2026-12-07-00-00-{self._written:02d}"
        path = os.path.join(self.directory, f"kubelet-client-{stamp}.pem")
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def unlinkCurrent(self, path: str) -> None:
        """The first half of repointing at C{path}: C{-updated} made, C{-current} removed."""
        if os.path.lexists(self._updated):
            os.remove(self._updated)
        os.symlink(path, self._updated)
        if os.path.lexists(self.current):
            os.remove(self.current)

    def linkCurrent(self) -> None:
        """The second half: C{-updated} renamed over C{-current}."""
        os.rename(self._updated, self.current)

    def update(self, issued: Issued) -> str:
        """Rotate to C{issued}, as the kubelet does; the path of the new file."""
        path = self.write(self.pem(issued))
        self.unlinkCurrent(path)
        self.linkCurrent()
        return path
