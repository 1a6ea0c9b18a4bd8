"""
Certificate rotation without downtime.

Kubernetes Secret volumes and cert-manager rotate certificates by replacing
the files under a running process.  L{CredentialsWatcher} notices (by the
files' contents, checked every few seconds), loads and checks the new set
with L{loadCredentials}, and hands it over; a set that does not load
(garbage, a key that does not match its certificate, an expired
certificate, a half-written rotation) is refused with one log line naming
the file, and the credentials in use stay in use.  L{RotatingServerOptions}
is what a TLS listener holds so that each new handshake uses the newest
credentials while established connections keep theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from ..errors import CredentialsError
from ..files import Poller, filesDigest
from . import Credentials, loadCredentials, proxyClientOptions, serverOptions

#: How often the files are checked by default, in seconds.
DEFAULT_RELOAD_INTERVAL = 10.0


@implementer(IOpenSSLContextFactory)
class RotatingServerOptions:
    """
    TLS server options whose credentials can be replaced: every new
    connection asks for the context (old-style context factory), so it gets
    the newest; connections already up keep the context they started with.

    @param build: makes the options from credentials (L{serverOptions} for
        the agent port; the proxy listener passes its own).
    """

    def __init__(
        self,
        credentials: Credentials,
        build: Callable[[Credentials], CertificateOptions] = serverOptions,
    ) -> None:
        self._build = build
        self._options = build(credentials)

    def update(self, credentials: Credentials) -> None:
        self._options = self._build(credentials)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()


class RotatingClientOptions:
    """
    The https policy's TLS towards kubelets (L{proxyClientOptions}: a
    connection creator per dialed address), rebuilt when its credentials
    are replaced.

    The sessions kept for resumption go with the credentials they were
    made with: a session resumed skips the check of the kubelet's
    certificate against C{--proxy-client-ca}, and the kubelet sees again
    the client certificate of the session, not the new one.  So a
    rotation of any of the three files retires the old cache at once,
    also for connections still being set up with the old credentials.
    """

    def __init__(self, credentials: Credentials, *, verify: bool) -> None:
        self._verify = verify
        self._creator = proxyClientOptions(credentials, verify=verify)

    def update(self, credentials: Credentials) -> None:
        old, self._creator = self._creator, proxyClientOptions(credentials, verify=self._verify)
        old.retire()

    def __call__(self, host: str) -> Any:
        return self._creator(host)


class CredentialsWatcher(Poller):
    """
    Re-read a set of credential files when their contents change.

    @param load: loads and checks the files (L{loadCredentials} with the
        daemon's paths); raises L{CredentialsError} to refuse them.
    @param paths: the files to watch (CA bundle, certificate, key).
    @param onChange: called with the new credentials once they loaded.
    @param loaded: the credentials in use, if loaded from these files (their
        L{Credentials.filesDigest} is what a change is measured against);
        without them, the files as they are now.
    """

    log = Logger()

    def __init__(
        self,
        load: Callable[[], Credentials],
        paths: Sequence[str],
        onChange: Callable[[Credentials], object],
        clock: IReactorTime,
        *,
        interval: float = DEFAULT_RELOAD_INTERVAL,
        loaded: Credentials | None = None,
    ) -> None:
        self.load = load
        self.paths = tuple(dict.fromkeys(paths))
        self.onChange = onChange
        self.clock = clock
        self.interval = interval
        # the files as they were when the credentials in use were read: a
        # rotation between that and now (while makeService went on, or
        # before startService) is a change, seen at the first poll
        digest = loaded.filesDigest if loaded is not None else None
        self._fingerprint = digest if digest is not None else self._read()

    def watched(self) -> str:
        return "the certificate files"

    def poll(self) -> bool:
        """
        Check the files once, now; load them if they changed.

        A refused set is not tried again until the files change again, so
        a bad rotation costs one log line, not one per poll.

        @return: whether new credentials were taken into use.
        """
        fingerprint = self._read()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            credentials = self.load()
        except CredentialsError as e:
            self.log.error(
                "certificate rotation refused, keeping the certificates in use: {reason}",
                reason=str(e),
            )
            return False
        self.onChange(credentials)
        identity = credentials.identity()
        self.log.info(
            "certificates reloaded: {identity}, {certificate}",
            identity=identity.describe(),
            certificate=identity.certificate(),
        )
        return True

    def _read(self) -> bytes:
        """
        A digest of the files' contents (L{filesDigest}).

        Read on the reactor thread every C{interval}: L{readFile} refuses a
        FIFO swapped in under C{..data} at once instead of blocking the
        reactor (C{/healthz} and the proxy froze), and never reads
        C{/dev/zero} or a huge file past 1 MiB.
        """
        return filesDigest(self.paths)


def watchCredentials(
    credentials: Credentials,
    onChange: Callable[[Credentials], object],
    clock: IReactorTime,
    interval: float = DEFAULT_RELOAD_INTERVAL,
    load: Callable[[], Credentials] | None = None,
) -> CredentialsWatcher | None:
    """
    A watcher for the files C{credentials} were loaded from (C{None} if
    they were not loaded from files, or C{interval} is 0).

    @param load: loads and checks them again (L{CredentialsWatcher}); by
        default L{loadCredentials} with those paths.  One file may be both
        the certificate and the key (the kubelet's): it is watched once.
    """
    paths = (credentials.caPath, credentials.certPath, credentials.keyPath)
    if interval <= 0 or not all(paths):
        return None
    caPath, certPath, keyPath = paths
    return CredentialsWatcher(
        load or (lambda: loadCredentials(caPath, certPath, keyPath)),
        paths,
        onChange,
        clock,
        interval=interval,
        loaded=credentials,
    )
