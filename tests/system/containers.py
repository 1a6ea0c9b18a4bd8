"""
Daemons run from the container image (C{Containerfile}, built by C{make
image}) in the test worlds: a C{podman run --network ns:/run/netns/<name>}
of the image for each daemon, on the host, with the world's folder
bind-mounted read-only, as docs/image.md says each role may run.

L{ContainerDaemons} turns a world (L{tests.system.e2e_world.World}, or the
interop world of the real Kubernetes components) into one whose server and
agents run from the image: L{tests.system.test_image} uses the first, and
C{tests/interop/smoke.py --image} the second, so that C{kubectl logs}
reaches a pod through daemons run from the image.

Each container is named after this process and removed by name
(C{podman rm}) when its scope ends, before the namespaces are deleted; no
image is ever removed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import Namespace, requireNetns
from tests.realnet import META_ENDPOINT, loadScript
from tests.system.e2e_world import Edge, Process

#: What a world of containers runs besides C{ip}: the e2e world's, and podman.
COMMANDS = ("podman", "iptables", "haproxy", "curl", "ss")

#: The user the image runs as, and the one the server with C{--iptables} needs.
NONROOT = 65532
ROOT = 0

#: How long one C{podman} command (not a daemon) may take.
PODMAN_TIMEOUT = 60.0

#: image/build.py: the image's name, and the options podman needs here.
build = loadScript("image/build.py")


def requireImage(scope: SynchronousTestCase) -> str:
    """
    The image's name; the test skips (fails under C{CI=true}) without
    podman, namespaces, the e2e world's commands, or the image.
    """
    requireNetns(scope, *COMMANDS)
    image: str = build.imageName()
    if not build.imageExists(image):
        reason = f"{image} is not built: run make image"
        if os.environ.get("CI") == "true":
            scope.fail(f"CI=true, so this test must run, but {reason}")
        scope.skipTest(reason)
    return image


def removeContainer(name: str) -> None:
    """Remove the container C{name} (ours), killed at once if it still runs."""
    subprocess.run(
        ["podman", "rm", "--force", "--ignore", "--time", "0", name],
        capture_output=True,
        timeout=PODMAN_TIMEOUT,
        check=False,
    )


class ContainerDaemons:
    """
    A world (mixed in before its class) whose server and agents run from
    the image.

    @ivar image: The image.
    @ivar serverUser: The uid the server runs as (L{NONROOT}, or L{ROOT}
        with C{--iptables}); its files are given to it.
    @ivar serverCapabilities: What the server gets (C{--cap-add}); the
        agent gets none.
    @ivar containers: The container of each daemon, by its process's name.
    """

    # what the world it is mixed into has
    scope: Any
    directory: str
    cloud: Namespace
    edges: list[Edge]
    serverCert: str
    serverKey: str
    proxyClientCert: str
    proxyClientKey: str

    def __init__(
        self,
        scope: Any,
        image: str,
        *,
        serverUser: int = NONROOT,
        serverCapabilities: Sequence[str] = (),
        **world: Any,
    ) -> None:
        super().__init__(scope, **world)  # type: ignore[call-arg]
        self.image = image
        self.serverUser = serverUser
        self.serverCapabilities = list(serverCapabilities)
        self.containers: dict[str, str] = {}

    def startServers(self) -> None:
        """Give each container's user its files (keys are 0600), then start."""
        os.chmod(self.directory, 0o711)
        for path in (self.serverCert, self.serverKey, self.proxyClientCert, self.proxyClientKey):
            os.chown(path, self.serverUser, self.serverUser)
        for edge in self.edges:
            for path in edge.agentCredentials[1:]:
                os.chown(path, NONROOT, NONROOT)
        super().startServers()  # type: ignore[misc]

    def daemonNamespace(self, namespace: Namespace) -> Namespace | None:
        return None  # podman runs on the host and puts the container in the namespace

    def containerCommand(
        self,
        name: str,
        namespace: Namespace,
        user: int,
        capabilities: Sequence[str],
        arguments: Sequence[str],
    ) -> list[str]:
        """
        C{podman run} of the image, the container for the process C{name},
        in C{namespace} as C{user}, with only C{capabilities}, a read-only
        root and the world's folder read-only; the container is removed
        when the test ends.  Its output goes straight to the process's log
        (C{passthrough}: podman keeps no log of its own).
        """
        container = f"tt-image-{os.getpid()}-{len(self.containers)}-{name}"
        self.containers[name] = container
        self.scope.addCleanup(removeContainer, container)
        return [
            "podman", "run", "--rm", "--pull=never", "--name", container,
            *build.runtimeOptions(),
            "--network", f"ns:/run/netns/{namespace.name}",
            "--user", f"{user}:{user}",
            "--cap-drop", "all", *(f"--cap-add={c}" for c in capabilities),
            "--security-opt", "no-new-privileges",
            "--read-only", "--read-only-tmpfs=false",
            "--volume", f"{self.directory}:{self.directory}:ro",
            "--log-driver", "passthrough",
            self.image, *arguments,
        ]  # fmt: skip

    def serverCommand(self, options: Sequence[str]) -> list[str]:
        return self.containerCommand(
            "server",
            self.cloud,
            self.serverUser,
            self.serverCapabilities,
            ["edge-tunnel-server", *options, META_ENDPOINT],
        )

    def agentCommand(self, edge: Edge, options: Sequence[str]) -> list[str]:
        return self.containerCommand(
            f"agent-{edge.name}",
            edge.namespace,
            NONROOT,
            [],
            ["edge-tunnel-agent", *options, META_ENDPOINT],
        )

    def status(self, process: Process) -> dict[str, str]:
        """C{/proc/<pid>/status} of C{process}'s container's first process (twistd)."""
        container = self.containers[process.name]
        pid = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.Pid}}", container],
            capture_output=True,
            text=True,
            timeout=PODMAN_TIMEOUT,
            check=True,
        ).stdout.strip()
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines())
        with open(f"/proc/{pid}/mountinfo") as f:
            # mount ID, parent ID, major:minor, root, mount point, options...
            roots = [line.split() for line in f if line.split()[4] == "/"]
        status = {key: value.strip() for key, value in fields.items()}
        status["root options"] = roots[-1][5] if roots else ""
        return status
