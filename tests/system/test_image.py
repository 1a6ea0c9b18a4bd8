# -*- test-case-name: tests.system.test_image -*-
"""
The container image (C{Containerfile}, built by C{make image}) run in the
end-to-end world (L{tests.system.e2e_world}): the server in the cloud
namespace and the agent in the edge's, each a C{podman run --network
ns:/run/netns/<namespace>} of the image with the world's certificates
bind-mounted read-only, and plain curl in the cloud as in
L{tests.system.test_e2e}.

Every container runs as docs/image.md says it may: a read-only root
filesystem with no tmpfs on it, no new privileges, every capability
dropped, user 65532; only the server with C{--iptables} is root, with
C{NET_ADMIN} alone.  The tests read what each container's first process
really runs with (C{/proc/<pid>/status}, C{/proc/<pid>/mountinfo}) rather
than trusting podman's flags.

The image is built by C{make image} (a prerequisite of C{make test}), not
here: without it these tests skip, and fail under C{CI=true}, as without
podman.  Each container is named after this process and removed by name
(C{podman rm}) when its test ends, before the namespaces are deleted; no
image is removed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import requireNetns
from tests.system.containers import (
    NONROOT,
    PODMAN_TIMEOUT,
    ROOT,
    ContainerDaemons,
    requireImage,
)
from tests.system.e2e_world import (
    CLOUD_ADDRESS,
    HTTP_LISTENER_PORT,
    HTTPS_LISTENER_PORT,
    CurlResult,
    Process,
    Scope,
    World,
)

#: C{CAP_NET_ADMIN}'s bit in C{/proc/<pid>/status}'s capability masks.
CAP_NET_ADMIN = 1 << 12


class ImageWorld(ContainerDaemons, World):
    """The e2e world with one edge, its server and agent run from the image."""

    def __init__(
        self,
        scope: Scope,
        image: str,
        *,
        serverUser: int = NONROOT,
        serverCapabilities: Sequence[str] = (),
        serverArguments: Sequence[str] = (),
    ) -> None:
        super().__init__(
            scope,
            image,
            serverUser=serverUser,
            serverCapabilities=serverCapabilities,
            edges=1,
            serverArguments=serverArguments,
        )


class ImageTestsMixin:
    """What both classes check of a daemon running from the image."""

    world: ImageWorld

    def assertConfined(self, process: Process, uid: int, capabilities: int) -> None:
        """
        C{process}'s twistd runs as C{uid}, with exactly C{capabilities}
        (effective, permitted, bounding), no new privileges, on a read-only
        root; and twistd wrote no plugin cache (the image has it).
        """
        status = self.world.status(process)
        test: SynchronousTestCase = self  # type: ignore[assignment]
        message = f"{status}\n{process.log()}"
        test.assertEqual(status["Uid"].split(), [str(uid)] * 4, message)
        test.assertEqual(status["Gid"].split(), [str(uid)] * 4, message)
        for mask in ("CapEff", "CapPrm", "CapBnd"):
            test.assertEqual(int(status[mask], 16), capabilities, f"{mask}: {message}")
        test.assertEqual(status["NoNewPrivs"], "1", message)
        test.assertIn("ro", status["root options"].split(","), message)
        test.assertNotIn("Unable to write", process.log())


class ImageProxyListenersTests(ImageTestsMixin, SynchronousTestCase):
    """
    The server without iptables, non-root with no capability at all: the
    proxy listeners carry requests to the edge's kubelet stand-in.
    """

    def setUp(self) -> None:
        image = requireImage(self)
        self.world = ImageWorld(self, image, serverArguments=["--no-iptables"])
        self.world.build()
        self.edge = self.world.edges[0]

    def assertAnswer(self, result: CurlResult, port: int) -> None:
        message = f"{result.describe()}\n{self.world.logs()}"
        self.assertEqual((result.exitCode, result.status), (0, 200), message)
        self.assertEqual(result.body, f"{self.edge.name}\n".encode(), message)
        self.assertEqual(result.headers["x-served-on"], f"127.0.0.1:{port}", message)

    def test_throughTheListeners(self) -> None:
        """
        C{http://<node-ip>:10255} through the HTTP listener, and
        C{https://<node-ip>:10250} through the HTTPS listener (which
        presents the proxy client certificate the kubelet requires), are
        answered by the edge's kubelet stand-in through the tunnel.
        """
        edge = self.edge
        plain = self.world.curl(
            "-H",
            f"Host: {edge.nodeIP}:10255",
            f"http://{CLOUD_ADDRESS}:{HTTP_LISTENER_PORT}/healthz",
        )
        self.assertAnswer(plain, 10255)
        secure = self.world.curl(
            "-k",
            "--connect-to",
            f"{edge.nodeIP}:10250:{CLOUD_ADDRESS}:{HTTPS_LISTENER_PORT}",
            f"https://{edge.nodeIP}:10250/pods",
        )
        self.assertAnswer(secure, 10250)
        self.assertEqual(secure.headers["x-client-cn"], "kube-apiserver-kubelet-client")

    def test_confined(self) -> None:
        """
        Both daemons run as user 65532 with no capability, no new
        privileges and a read-only root.
        """
        assert self.world.server is not None
        self.assertConfined(self.world.server, NONROOT, 0)
        self.assertConfined(self.world.agents[self.edge.name], NONROOT, 0)


class ImageIptablesTests(ImageTestsMixin, SynchronousTestCase):
    """
    The server with C{--iptables}, as root with C{NET_ADMIN} alone (what
    docs/image.md names): its DNAT rules bring curl's connections to the
    edge's own address to its listeners.
    """

    def setUp(self) -> None:
        self.image = requireImage(self)
        requireNetns(self, "iptables-save")
        self.world = ImageWorld(
            self,
            self.image,
            serverUser=ROOT,
            serverCapabilities=["NET_ADMIN"],
            serverArguments=["--iptables"],
        )
        self.world.build()
        self.edge = self.world.edges[0]
        nodeIP = self.edge.nodeIP
        self.world.waitForNat(
            lambda saved: re.search(rf"-d {re.escape(nodeIP)}/32 .* -j DNAT", saved) is not None,
            f"a DNAT rule for {nodeIP}",
        )

    def test_byDNAT(self) -> None:
        """
        C{curl http://<node-ip>:10255} and C{curl -k
        https://<node-ip>:10250} from the cloud, no proxy: DNATed by the
        server's rules and answered by the edge's kubelet stand-in.
        """
        for url in (f"http://{self.edge.nodeIP}:10255/", f"https://{self.edge.nodeIP}:10250/pods"):
            result = self.world.curl("-k", url)
            message = f"{result.describe()}\n{self.world.logs()}\n{self.world.nat()}"
            self.assertEqual((result.exitCode, result.status), (0, 200), message)
            self.assertEqual(result.body, f"{self.edge.name}\n".encode(), message)

    def test_confined(self) -> None:
        """
        The server is root with only C{NET_ADMIN} (no C{NET_RAW}: the
        image's iptables is the nft one), the agent user 65532 with none.
        """
        assert self.world.server is not None
        self.assertConfined(self.world.server, ROOT, CAP_NET_ADMIN)
        self.assertConfined(self.world.agents[self.edge.name], NONROOT, 0)

    def test_withoutNetAdmin(self) -> None:
        """
        Without C{NET_ADMIN}, root as it is, the server refuses C{--iptables}
        in one line, and exits: the capability is needed, not only enough.
        """
        command = self.world.containerCommand(
            "refused",
            self.world.cloud,
            ROOT,
            [],
            ["edge-tunnel-server", "--iptables", "--tunnel-endpoint", "tcp:10300",
             *self.world.agentIdentity(self.edge)[:2],
             "--cert", self.world.serverCert, "--key", self.world.serverKey],
        )  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=PODMAN_TIMEOUT, check=False
        )
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertRegex(output, r"--iptables: iptables-save -t nat failed .*CAP_NET_ADMIN")
