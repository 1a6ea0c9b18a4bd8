# -*- test-case-name: tests.kube.test_client -*-
"""
Reaching kube-apiserver: a lightkube client built from a kubeconfig file or
from the pod's own service account, with timeouts on everything.

lightkube's synchronous client (see C{docs/kubernetes.md} for why it, and
why synchronous): every call here blocks, so it runs in a thread, never on
the reactor (L{KubeClient.callInThread}, and the watches' own threads in
L{twisted_tunnel.kube.watch}).  This module is the one place that touches
lightkube's lower layer (C{GenericSyncClient}: request building, the
httpx2 transport with the kubeconfig's TLS and credentials, the decoders),
which the watches need to read a response's bytes themselves, with a bound.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx2
from attrs import frozen
from lightkube import ApiError
from lightkube import Client as LightkubeClient
from lightkube import ConfigError as LightkubeConfigError
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core import decoders
from lightkube.core.generic_client import GenericSyncClient
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..errors import TunnelError

#: Where a pod's service account token, CA and namespace are mounted.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

#: Seconds to connect, and to wait for any answer of a request that is not
#: a watch: kube-apiserver answers a get or a create in milliseconds, so
#: ten seconds means it is not answering.
DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


class KubeAccessError(TunnelError):
    """
    The API cannot be reached as configured, or refused a request: one
    line saying which credentials or which request, and why.
    """


@frozen
class KubeAccess:
    """
    How to reach kube-apiserver: a kubeconfig file, or the pod's service
    account (C{KUBERNETES_SERVICE_HOST}, C{KUBERNETES_SERVICE_PORT}, and the
    token and CA in L{serviceAccountDir}).

    @ivar kubeconfig: a kubeconfig file (its current context), or C{None}
        for in-cluster credentials.
    @ivar serviceAccountDir: where the service account is mounted.
    @ivar timeout: seconds to connect, and to wait for an answer (watches
        wait longer: see L{twisted_tunnel.kube.watch}).
    """

    kubeconfig: str | None = None
    serviceAccountDir: str = SERVICE_ACCOUNT_DIR
    timeout: float = DEFAULT_TIMEOUT

    def describe(self) -> str:
        """Which credentials, for error lines: C{"--kubeconfig PATH"} or C{"--in-cluster"}."""
        return f"--kubeconfig {self.kubeconfig}" if self.kubeconfig else "--in-cluster"


def loadKubeConfig(access: KubeAccess) -> KubeConfig:
    """
    The configuration L{access} names, read now (blocking: small files).

    @raise KubeAccessError: the file, the service account or its
        environment is missing or unreadable.
    """
    try:
        if access.kubeconfig is not None:
            return KubeConfig.from_file(access.kubeconfig)
        missing = [
            name
            for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
            if not os.environ.get(name)
        ]
        if missing:
            raise KubeAccessError(
                f"{access.describe()}: {' and '.join(missing)} not set (not in a pod?)"
            )
        for name in ("token", "ca.crt"):
            path = os.path.join(access.serviceAccountDir, name)
            if not os.path.isfile(path):
                raise KubeAccessError(f"{access.describe()}: no service account {name} at {path}")
        return KubeConfig.from_service_account(access.serviceAccountDir)
    except KubeAccessError:
        raise
    except (LightkubeConfigError, OSError, ValueError, KeyError, TypeError) as e:
        raise KubeAccessError(f"{access.describe()}: {_describe(e)}") from None
    except Exception as e:  # a kubeconfig that is not YAML, or not a kubeconfig
        raise KubeAccessError(
            f"{access.describe()}: not a usable kubeconfig: {_describe(e)}"
        ) from None


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class KubeClient:
    """
    One connection pool to kube-apiserver, and a small thread pool of its
    own for one-shot calls (gets, Event posts), so that a slow API never
    takes the threads the reactor lends to name resolution.

    Watches use L{openStream} from their own threads.

    @ivar server: the API's URL, for log lines.
    @ivar access: how it was reached.
    """

    def __init__(self, access: KubeAccess, reactor: Any, *, maxThreads: int = 2) -> None:
        config = loadKubeConfig(access)
        self.access = access
        timeout = httpx2.Timeout(access.timeout)
        try:
            self.client = LightkubeClient(config, timeout=timeout, trust_env=False)
            # the lower layer, for streams read with a bound (see openStream)
            self.generic = GenericSyncClient(
                ConnectionParams(timeout=timeout, trust_env=False), config
            )
        except (OSError, ValueError, LightkubeConfigError) as e:
            raise KubeAccessError(f"{access.describe()}: {_describe(e)}") from None
        self.server = str(self.client.config.cluster.server)
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=maxThreads, name="kube-api")
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.pool.start()

    def stop(self) -> None:
        """Stop the thread pool (calls in flight finish) and close the connections."""
        if self._started:
            self._started = False
            self.pool.stop()
        self.client.close()
        self.generic.close()

    def callInThread(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run a blocking call in this client's threads; its result, in the reactor thread."""
        self.start()
        return deferToThreadPool(self.reactor, self.pool, function, *args, **kwargs)

    def openStream(
        self,
        resource: type,
        *,
        namespace: str | None,
        params: Mapping[str, str | None],
        watch: bool,
        readTimeout: float | None = None,
    ) -> httpx2.Response:
        """
        Send a list (or, with C{watch}, a watch) of C{resource} and return the
        response unread, its body streamed, so the caller reads it with a
        bound.  Blocking.

        @raise ApiError: the API answered with an error status (the body is
            read for it: a Status is small, and read with the same bound).
        @raise httpx2.HTTPError: the request failed.
        """
        request = self.generic.prepare_request(
            "list", res=resource, namespace=namespace, watch=watch, params=dict(params)
        )
        built = self.generic.build_adapter_request(request)
        # no gzip: the bytes read are the bytes bounded (kube-apiserver
        # compresses lists over 128 KiB for a client that accepts it)
        built.headers["Accept-Encoding"] = "identity"
        if readTimeout is not None:
            built.extensions["timeout"] = httpx2.Timeout(
                self.access.timeout, read=readTimeout
            ).as_dict()
        response: httpx2.Response = self.generic.send(built, stream=True)
        if response.status_code >= 400:
            try:
                body = b"".join(_bounded(response.iter_raw(), 64 * 1024))
            finally:
                response.close()
            raise apiError(response, body)
        return response


def apiError(response: httpx2.Response, body: bytes) -> ApiError:
    """The C{ApiError} lightkube raises, from an error response's (bounded) body."""
    try:
        status = decoders.decode_status(body)
    except Exception:
        status = None
    if status is None or status.code is None:
        from lightkube.models.meta_v1 import Status

        status = Status(
            code=response.status_code,
            message=f"HTTP {response.status_code}",
            reason=response.reason_phrase,
        )
    return ApiError(request=response.request, status=status)


def _bounded(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """At most C{limit} bytes of C{chunks}."""
    for chunk in chunks:
        yield chunk[:limit]
        limit -= len(chunk)
        if limit <= 0:
            return


def abortResponse(response: httpx2.Response) -> None:
    """
    Make a thread blocked reading C{response} return at once: shut its
    socket down (the documented C{network_stream} extension of httpx2's
    transport, and the socket's C{shutdown}, which wakes a blocked
    C{recv}, where C{close} would not).  Safe from any thread, and more
    than once.
    """
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    import socket

    try:
        # the plain socket's shutdown, even on a TLS socket: it must not
        # touch the TLS state the reading thread is using
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def describeApiError(error: BaseException | None) -> str:
    """One line for a failed API call: the status code and message, or the error."""
    if isinstance(error, ApiError):
        status = error.status
        return f"{status.code} {status.reason or ''}: {status.message or ''}".strip()
    return _describe(error) if error is not None else "unknown error"
