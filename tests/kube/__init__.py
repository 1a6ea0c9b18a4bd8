"""
Tests of C{twisted_tunnel.kube}: the client, the watch bridge, Events, the
ConfigMap through the API, and the daemons' options for it.
"""

from __future__ import annotations

import json
import os
import socket

from twisted.trial import unittest

from tests.pki import temporaryDirectory


def unreachableKubeconfig(testCase: unittest.SynchronousTestCase) -> tuple[str, int]:
    """
    A kubeconfig whose API is a loopback port nothing listens on (a request
    fails at once with a refused connection), and that port.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = os.path.join(temporaryDirectory(testCase), "kubeconfig")
    cluster = {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}
    with open(path, "w") as f:
        json.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            },
            f,
        )
    return path, port
