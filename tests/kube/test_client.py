# -*- test-case-name: tests.kube.test_client -*-
"""
Building a L{KubeClient}: from a kubeconfig, or from a pod's service account
(the token, the CA and the namespace in a directory, the API's address in
C{KUBERNETES_SERVICE_HOST} and C{_PORT}); what is missing is said in one
line.  Requests against the real kube-apiserver: L{tests.system.test_kube}.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI, temporaryDirectory
from twisted_tunnel.kube.client import KubeAccess, KubeAccessError, KubeClient, describeApiError


class InClusterTests(SynchronousTestCase):
    def serviceAccount(self, files: tuple[str, ...] = ("token", "ca.crt", "namespace")) -> str:
        directory = temporaryDirectory(self)
        contents = {
            "token": "eyJhbGciOi.the-token",
            "ca.crt": TestPKI().ca.certificatePEM().decode(),
            "namespace": "kube-system",
        }
        for name in files:
            with open(os.path.join(directory, name), "w") as f:
                f.write(contents[name])
        return directory

    def environment(self, **variables: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
        environ.update(variables)
        self.patch(os, "environ", environ)

    def client(self, directory: str) -> KubeClient:
        client = KubeClient(KubeAccess(serviceAccountDir=directory), Clock())
        self.addCleanup(client.stop)
        return client

    def test_serviceAccount(self) -> None:
        """The API's address from the environment; the token and CA from the directory."""
        self.environment(KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
        client = self.client(self.serviceAccount())
        self.assertEqual(client.server, "https://10.96.0.1:443")
        self.assertEqual(client.client.namespace, "kube-system")
        self.assertEqual(client.access.describe(), "--in-cluster")

    def test_ipv6(self) -> None:
        self.environment(KUBERNETES_SERVICE_HOST="fd00::1", KUBERNETES_SERVICE_PORT="6443")
        self.assertEqual(self.client(self.serviceAccount()).server, "https://[fd00::1]:6443")

    def test_notInAPod(self) -> None:
        """Without the environment: one line naming what is missing."""
        self.environment()
        error = self.assertRaises(KubeAccessError, self.client, self.serviceAccount())
        self.assertEqual(
            str(error),
            "--in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set "
            "(not in a pod?)",
        )

    def test_missingFiles(self) -> None:
        """No token, or no CA: one line naming the file."""
        self.environment(KUBERNETES_SERVICE_HOST="10.96.0.1", KUBERNETES_SERVICE_PORT="443")
        for files, missing in [
            (("ca.crt", "namespace"), "token"),
            (("token", "namespace"), "ca.crt"),
        ]:
            directory = self.serviceAccount(files)
            error = self.assertRaises(KubeAccessError, self.client, directory)
            self.assertTrue(str(error).startswith("--in-cluster: "), str(error))
            self.assertIn(missing, str(error))
            self.assertNotIn("\n", str(error))

    def test_describeApiError(self) -> None:
        from lightkube import ApiError
        from lightkube.models.meta_v1 import Status

        error = ApiError(status=Status(code=403, reason="Forbidden", message="no"))
        self.assertEqual(describeApiError(error), "403 Forbidden: no")
        self.assertEqual(describeApiError(OSError("refused")), "OSError: refused")
        self.assertEqual(describeApiError(None), "unknown error")
