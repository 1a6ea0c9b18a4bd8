# -*- test-case-name: tests.test_e2e -*-
"""
The end-to-end suite: the real daemons on a real network of namespaces
(L{tests.e2e_world}): a cloud running C{twistd edge-tunnel-server} and the
clients, a load balancer running HAProxy in TCP mode (the only address the
edges can reach), and two edges behind it, each with a private node
address the cloud has no route to, an C{edge-tunnel-agent} dialing out
through HAProxy, and a kubelet stand-in (L{tests.e2e_kubelet}).

Every request is made from the cloud namespace with plain C{curl} (no
proxy settings), as kube-apiserver and metrics-server make theirs, or, for
an upgraded connection, which curl cannot drive, with L{tests.e2e_client}.
Here they reach the proxy listeners by address and name their target with
C{Host} (or C{--connect-to}, which sets C{Host} as a DNATed client would).

Each test builds its own world (about a second) and tears it down,
processes killed by PID and namespaces deleted, passed or failed.  The
suite needs root, C{ip}, C{iptables}, C{haproxy}, C{curl} and C{ss}: it
skips without them, with the reason, except under C{CI=true}, where it
fails (L{tests.netns.requireNetns}).

Nothing sleeps: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e_client import MESSAGES
from tests.e2e_kubelet import LOG_INTERVAL, LOG_LINES, bigBody, logLine
from tests.e2e_world import (
    CLOUD_ADDRESS,
    HTTP_LISTENER_PORT,
    HTTPS_LISTENER_PORT,
    CurlResult,
    Edge,
    World,
    serverHasOption,
)
from tests.netns import requireNetns

#: What the suite runs besides C{ip}.
COMMANDS = ("iptables", "haproxy", "curl", "ss")

#: A refusal (no agent, port not forwarded) or a refused connection must
#: come within this many seconds: promptly, not after a timeout.
PROMPT = 2.0

#: The subject of the server's C{--proxy-client-cert}, as the kubelet sees it.
PROXY_CLIENT_NAME = "kube-apiserver-kubelet-client"


def viaHTTPListener(edge: Edge, port: int, path: str) -> list[str]:
    """curl arguments for C{http://<node-ip>:<port><path>} at the HTTP listener, by C{Host}."""
    return [
        "-H",
        f"Host: {edge.nodeIP}:{port}",
        f"http://{CLOUD_ADDRESS}:{HTTP_LISTENER_PORT}{path}",
    ]


def viaHTTPSListener(edge: Edge, port: int, path: str) -> list[str]:
    """
    curl arguments for C{https://<node-ip>:<port><path>}, connecting to the
    HTTPS listener instead (so C{Host} names the node), not verifying it.
    """
    return [
        "-k",
        "--connect-to",
        f"{edge.nodeIP}:{port}:{CLOUD_ADDRESS}:{HTTPS_LISTENER_PORT}",
        f"https://{edge.nodeIP}:{port}{path}",
    ]


class ProxyListenersEndToEndTests(SynchronousTestCase):
    """
    From the cloud, through the server's proxy listeners, by C{Host}: the
    listeners as they work without any iptables rule (the server runs with
    C{--no-iptables} where it has that option).
    """

    def setUp(self) -> None:
        requireNetns(self, *COMMANDS)
        arguments = ["--no-iptables"] if serverHasOption("no-iptables") else []
        self.world = World(self, serverArguments=arguments).build()
        self.edges = self.world.edges

    def assertAnswer(
        self, result: CurlResult, status: int, body: bytes | None = None, node: str | None = None
    ) -> None:
        """C{result} is a complete answer with C{status} (and C{body}, from C{node})."""
        message = f"{result.describe()}\n{self.world.logs()}"
        self.assertEqual((result.exitCode, result.status), (0, status), message)
        if body is not None:
            self.assertEqual(result.body, body, message)
        if node is not None:
            self.assertEqual(result.headers.get("x-node"), node, message)

    def test_readOnlyPortByHost(self) -> None:
        """
        C{http://<node-ip>:10255} at the HTTP listener is answered by that
        node, and only by it; the node's name works as well as its IP.  The
        agent dials the node's loopback (10255 is a localhost port by
        default).
        """
        for edge in self.edges:
            result = self.world.curl(*viaHTTPListener(edge, 10255, "/healthz"))
            self.assertAnswer(result, 200, f"{edge.name}\n".encode(), edge.name)
            self.assertEqual(result.headers["x-served-on"], "127.0.0.1:10255")
            byName = self.world.curl(
                "-H", f"Host: {edge.name}:10255", f"http://{CLOUD_ADDRESS}:{HTTP_LISTENER_PORT}/"
            )
            self.assertAnswer(byName, 200, f"{edge.name}\n".encode(), edge.name)

    def test_kubeletPortThroughHTTPSListener(self) -> None:
        """
        C{https://<node-ip>:10250} at the HTTPS listener is answered by that
        node's kubelet, which requires a client certificate from its own CA:
        it sees the server's C{--proxy-client-cert}.
        """
        for edge in self.edges:
            result = self.world.curl(*viaHTTPSListener(edge, 10250, "/pods"))
            self.assertAnswer(result, 200, f"{edge.name}\n".encode(), edge.name)
            self.assertEqual(result.headers["x-client-cn"], PROXY_CLIENT_NAME)
            self.assertEqual(result.headers["x-served-on"], "127.0.0.1:10250")
        # The stand-in does refuse a client without a certificate, so the
        # answers above prove the proxy client certificate was presented.
        edge = self.edges[0]
        withoutCertificate = edge.namespace.run(
            "curl", "-sS", "-k", "--max-time", "5", "https://127.0.0.1:10250/pods", check=False
        )
        self.assertNotEqual(withoutCertificate.returncode, 0, withoutCertificate)

    def test_kubeletPortOnlyFromHTTPSListener(self) -> None:
        """
        10250 asked of the plaintext HTTP listener is refused (403): it
        never lends out the client certificate the kubelet trusts.
        """
        result = self.world.curl(*viaHTTPListener(self.edges[0], 10250, "/pods"))
        self.assertAnswer(result, 403)
        self.assertLess(result.elapsed, PROMPT)

    def test_localhostPort(self) -> None:
        """
        10267, forwarded by C{http-proxy-ports} and a localhost port by
        default, reaches the service that listens on the node's loopback
        only (nothing listens on the node's address there).
        """
        for edge in self.edges:
            result = self.world.curl(*viaHTTPListener(edge, 10267, "/"))
            self.assertAnswer(result, 200, f"{edge.name}\n".encode(), edge.name)
            self.assertEqual(result.headers["x-served-on"], "127.0.0.1:10267")
            onNodeAddress = edge.namespace.run(
                "curl", "-sS", "--max-time", "5", f"http://{edge.nodeIP}:10267/", check=False
            )
            self.assertEqual(onNodeAddress.returncode, 7, onNodeAddress)  # refused

    def test_extraPortAfterLiveConfigChange(self) -> None:
        """
        Port 9051 is refused (403) until the ConfigMap lists it under
        C{http-proxy-ports}; once the server has reloaded it, with no
        restart, 9051 is answered on the node's address; and refused again
        once the ConfigMap no longer lists it.
        """
        edge = self.edges[1]
        before = self.world.curl(*viaHTTPListener(edge, 9051, "/metrics"))
        self.assertAnswer(before, 403)
        self.world.applyConfig({"http-proxy-ports": "9051, 10267"})
        after = self.world.curl(*viaHTTPListener(edge, 9051, "/metrics"))
        self.assertAnswer(after, 200, f"{edge.name}\n".encode(), edge.name)
        self.assertEqual(after.headers["x-served-on"], f"{edge.nodeIP}:9051")
        self.world.applyConfig({"http-proxy-ports": "10267"})
        self.assertAnswer(self.world.curl(*viaHTTPListener(edge, 9051, "/metrics")), 403)

    def test_dnatPortsPair(self) -> None:
        """
        ACK Edge's 1.18 example ConfigMap, C{dnat-ports-pair: '9051=10264'},
        opens 9051 as plain HTTP through the HTTP listener.
        """
        edge = self.edges[0]
        self.assertAnswer(self.world.curl(*viaHTTPListener(edge, 9051, "/")), 403)
        self.world.applyConfig({"dnat-ports-pair": "9051=10264"})
        result = self.world.curl(*viaHTTPListener(edge, 9051, "/"))
        self.assertAnswer(result, 200, f"{edge.name}\n".encode(), edge.name)
        self.assertEqual(result.headers["x-served-on"], f"{edge.nodeIP}:9051")

    def test_streaming(self) -> None:
        """
        C{kubectl logs -f}: each line the kubelet writes reaches the client
        when it is written, not when the response ends.  The kubelet writes
        its lines C{LOG_INTERVAL} apart, so the last one comes nearly two
        seconds after the first; a proxy that buffered the response would
        deliver them all at once.
        """
        edge = self.edges[0]
        lines, exitCode, error = self.world.curlLines(
            *viaHTTPSListener(edge, 10250, "/containerLogs/default/pod/c?follow=true")
        )
        self.assertEqual(exitCode, 0, f"{error}\n{self.world.logs()}")
        self.assertEqual([line for _, line in lines], [logLine(n) for n in range(LOG_LINES)])
        first, last = lines[0][0], lines[-1][0]
        self.assertGreater(last - first, (LOG_LINES - 1) * LOG_INTERVAL / 2, lines)

    def test_upgrade(self) -> None:
        """
        An upgraded connection (what C{kubectl exec} asks of the kubelet):
        the kubelet's C{101} comes back through the HTTPS listener, and
        then round trips of growing messages are echoed intact.
        """
        for edge in self.edges:
            completed = self.world.runInCloud(
                "-m", "tests.e2e_client",
                "--connect", f"{CLOUD_ADDRESS}:{HTTPS_LISTENER_PORT}", "--tls",
                "--host", f"{edge.nodeIP}:10250",
                "--path", "/exec/default/pod/c?command=cat&stdin=true&stdout=true",
            )  # fmt: skip
            message = f"{completed}\n{self.world.logs()}"
            self.assertEqual(completed.returncode, 0, message)
            result = json.loads(completed.stdout)
            self.assertEqual(result["status"], 101, message)
            self.assertEqual(result["headers"]["x-node"], edge.name, message)
            self.assertEqual(result["headers"]["upgrade"], "tt-echo", message)
            self.assertEqual(result["echoed"], [len(m) for m in MESSAGES], message)

    def test_bigTransferByteExact(self) -> None:
        """
        10 MiB come through byte for byte, from 10255 through the HTTP
        listener and from 10250 through the HTTPS listener (TLS ended at the
        server and made again towards the kubelet).
        """
        expected = hashlib.sha256(bigBody()).hexdigest()
        for edge, arguments in [
            (self.edges[0], viaHTTPListener(self.edges[0], 10255, "/big")),
            (self.edges[1], viaHTTPSListener(self.edges[1], 10250, "/big")),
        ]:
            path = os.path.join(self.world.directory, f"big-{edge.name}")
            result = self.world.curl("-o", path, *arguments, timeout=30)
            self.assertAnswer(result, 200, None, edge.name)
            with open(path, "rb") as f:
                received = f.read()
            self.assertEqual(len(received), len(bigBody()))
            self.assertEqual(hashlib.sha256(received).hexdigest(), expected)

    def test_agentStopped(self) -> None:
        """
        Once an agent has stopped (SIGTERM), requests for its node are
        refused at once (503: no agent), while the other node is still
        answered; once it runs again, its node is answered again.
        """
        stopped, other = self.edges[1], self.edges[0]
        server = self.world.server
        assert server is not None
        mark = server.mark()
        self.world.agents[stopped.name].stop(signal.SIGTERM)
        server.waitForLine(rf"agent {stopped.name} (is draining|disconnected)", start=mark)
        for arguments in [
            viaHTTPListener(stopped, 10255, "/healthz"),
            viaHTTPSListener(stopped, 10250, "/pods"),
        ]:
            result = self.world.curl(*arguments)
            self.assertAnswer(result, 503)
            self.assertIn(b"no agent connected", result.body)
            self.assertLess(result.elapsed, PROMPT)
        self.assertAnswer(
            self.world.curl(*viaHTTPListener(other, 10255, "/healthz")), 200, None, other.name
        )
        mark = server.mark()
        self.world.startAgent(stopped)
        self.world.waitForAgent(stopped, serverMark=mark)
        self.assertAnswer(
            self.world.curl(*viaHTTPListener(stopped, 10255, "/healthz")),
            200,
            f"{stopped.name}\n".encode(),
            stopped.name,
        )

    def test_edgeAddressUnreachableDirectly(self) -> None:
        """
        Without the tunnel, the cloud cannot reach an edge address: the
        load balancer refuses what the cloud routes to it at once (a TCP
        reset: curl's exit status 7), rather than letting it hang.
        """
        edge = self.edges[0]
        for url in [f"http://{edge.nodeIP}:10255/healthz", f"https://{edge.nodeIP}:10250/pods"]:
            result = self.world.curl("-k", url)
            self.assertEqual(result.exitCode, 7, result.describe())
            self.assertLess(result.elapsed, PROMPT)
