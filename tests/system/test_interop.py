# -*- test-case-name: tests.system.test_interop -*-
"""
The real Kubernetes components through the tunnel (issue 13), as part of
the suite: C{tests/interop/smoke.py} brings up the interop world (network
namespaces: etcd, kube-apiserver v1.37.2 and the server in the cloud,
HAProxy as the load balancer, two edges with the agent, a real kubelet API
and node-exporter) and checks, with the real kubectl, what users ask first.

It runs as a child process of its own: it starts some twenty processes,
network namespaces and iptables rules, and tears all of it down whatever
happens, which a child does more surely than a test case's cleanups in a
process that goes on running other tests.

The Go components are built by C{make test} before the suite starts
(C{make interop-build}, cached outside the checkout); a test that found
them missing would take longer to build them than a test may run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.interop.build import cached
from tests.interop.smoke import ITEMS as NAMES
from tests.netns import requireNetns
from tests.system.containers import requireImage

HERE = Path(__file__).resolve().parent
SMOKE = HERE.parent / "interop" / "smoke.py"
REPO_ROOT = HERE.parents[1]

#: The components the world runs, each built by tests/interop/build.py.
COMPONENTS = ("etcd", "kube", "kubelet", "metrics-server")
#: What the child may take: bring-up is some 5 s, items 1-9 some 25 s, item 10 some 40 s.
TIMEOUT = 240.0
#: The items of issue 13, all of them, in each mode; and issue 17's client
#: name allowlists (13).
ITEMS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "13")


def _missingBuilds() -> list[str]:
    return [name for name in COMPONENTS if cached(name) is None]


class _ModeTests:
    """
    Every item of issue 13 in one of the world's modes, in a world of its
    own.  A mixin, not a test case: each mode's class runs it once (as a
    test case itself, it ran mode A a second time).
    """

    mode: str
    #: the HTTPS proxy listener's certificate (C{SERVING} in world.py)
    serving = "static"
    items: tuple[str, ...] = ITEMS
    #: also a kubelet in the cloud, with no agent (issue 17)
    cloudNode = False
    #: the server and agents from the container image (tests/system/containers.py)
    image = False

    def test_kubectl(self) -> None:
        """
        Nodes Ready; logs and logs -f; exec with stdin, exit codes, a TTY
        and 20 MiB; attach; port-forward, several connections, 20 MiB each
        way; cp both ways; kubectl top; the node proxy's metrics and
        stats/summary; Prometheus; failures (no agent, an agent restarted
        under open streams, recovery): all through the tunnel, byte-exact
        where bytes are carried.
        """
        requireNetns(self, "iptables", "haproxy", "prometheus", "prometheus-node-exporter", "tar")
        missing = _missingBuilds()
        if missing:
            reason = f"not built: {', '.join(missing)} (run make interop-build)"
            if os.environ.get("CI") == "true":
                self.fail(f"CI=true, so this test must run, but {reason}")
            self.skipTest(reason)
        # Every process's whole log is kept here, and left behind (named in
        # the failure) when the world fails: the report quotes only the
        # end of each, and a flake is diagnosed from the whole.
        logs = tempfile.mkdtemp(prefix=f"twisted-tunnel-interop-logs-{self.mode}-{self.serving}-")
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    str(SMOKE),
                    "--keep-going",
                    f"--mode={self.mode}",
                    f"--serving={self.serving}",
                    *(["--cloud-node"] if self.cloudNode else []),
                    *(["--image"] if self.image else []),
                    *self.items,
                ],  # fmt: skip
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
                env=dict(os.environ, INTEROP_KEEP_LOGS=logs),
            )
        except subprocess.TimeoutExpired as e:
            output = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode()
            self.fail(f"the interop world did not finish in {TIMEOUT:g} s:\n{output[-6000:]}")
        report = done.stdout + done.stderr + f"\nthe processes' whole logs: {logs}"
        for item in self.items:
            verdict = f"item {item} ({NAMES[item]}): "
            lines = [line for line in report.splitlines() if line.startswith(verdict)]
            self.assertEqual(len(lines), 1, f"item {item} did not run:\n{report[-6000:]}")
            self.assertIn("): PASS in ", lines[0], f"\n{report[-8000:]}")
        self.assertEqual(done.returncode, 0, report[-8000:])
        shutil.rmtree(logs, ignore_errors=True)


class TransparentModeTests(_ModeTests, SynchronousTestCase):
    """
    Mode A, the seed's way: kube-apiserver dials C{<InternalIP>:10250}; the
    server's iptables rules bring it to the HTTPS proxy listener, which ends
    TLS and makes it again with the proxy client certificate the kubelets
    trust.
    """

    mode = "A"


class EgressSelectorTCPTests(_ModeTests, SynchronousTestCase):
    """
    Mode B over TCP: kube-apiserver's EgressSelectorConfiguration sends its
    cluster egress (kubelets, and the aggregator's metrics-server) to the
    CONNECT door with mutual TLS; TLS to the kubelet runs end to end.
    metrics-server and Prometheus still take the DNAT path.

    With a cloud node (issue 17, item 12): Node C{cloud-1}, a kubelet in
    the cloud namespace with no agent, is reached through the door, which
    dials it itself (C{--connect-direct}); the door refuses what is in no
    listed network.
    """

    mode = "B-tcp"
    cloudNode = True
    items = (*ITEMS, "12")


class EgressSelectorUnixTests(_ModeTests, SynchronousTestCase):
    """Mode B over a UNIX socket: the same, to the door on a socket."""

    mode = "B-unix"


class DNSModeTests(_ModeTests, SynchronousTestCase):
    """
    DNS mode (issue 17): kube-apiserver with
    C{--kubelet-preferred-address-types=Hostname} resolves node names through
    its host's C{/etc/hosts}, which is the server's C{--hosts-file}; the
    names lead to the HTTPS proxy listener on the kubelet port, which routes
    by the C{Host} header.  Logs, exec and the client names work; item 14
    shows kube-apiserver connected by name, not by node IP.
    """

    mode = "DNS"
    items = ("1", "2", "3", "13", "14")


class ImageTests(_ModeTests, SynchronousTestCase):
    """
    Issue 17: mode A with the server and the agents run from the container
    image (C{make image}) by podman, as docs/image.md says each may run (the
    server root with C{NET_ADMIN} alone, the agents user 65532 with no
    capability, read-only roots): C{kubectl get nodes}, C{logs} and C{exec}
    through them, from the real kube-apiserver.
    """

    mode = "A"
    image = True
    items = ("1", "2", "3")

    def setUp(self) -> None:
        requireImage(self)


class MintedServingTests(_ModeTests, SynchronousTestCase):
    """
    Issue 16, item 3: kube-apiserver keeps C{--kubelet-certificate-authority}
    on, naming the CA the server mints per-node serving certificates with
    (C{--proxy-serving-ca-cert}; no static certificate of every node IP):
    the listener presents each node's own, and logs and exec work.
    """

    mode = "A"
    serving = "minted"
    items = ("1", "2", "3", "11")


class UntrustedServingTests(_ModeTests, SynchronousTestCase):
    """
    The same, but kube-apiserver trusts another CA than the minting one:
    logs and exec fail with C{x509: certificate signed by unknown
    authority}, as against a real kubelet whose CA it does not trust.
    """

    mode = "A"
    serving = "untrusted"
    items = ("1", "11")
