# -*- test-case-name: tests.system.test_e2e -*-
"""
The end-to-end suite: the real daemons on a real network of namespaces
(L{tests.system.e2e_world}): a cloud running C{twistd edge-tunnel-server} and the
clients, a load balancer running HAProxy in TCP mode (the only address the
edges can reach), and two edges behind it, each with a private node
address the cloud has no route to, an C{edge-tunnel-agent} dialing out
through HAProxy, and a kubelet stand-in (L{tests.system.e2e_kubelet}).

Every request is made from the cloud namespace with plain C{curl} (no
proxy settings), as kube-apiserver and metrics-server make theirs, or, for
an upgraded connection, which curl cannot drive, with L{tests.system.e2e_client}:

    - L{ProxyListenersEndToEndTests}: the server runs with C{--no-iptables};
      clients reach the proxy listeners by address and name their target
      with C{Host} (or C{--connect-to}, which sets it);
    - L{TransparentInterceptionEndToEndTests}: the server runs with
      C{--iptables}; clients dial C{<edge-node-ip>:<port>} itself, and the
      server's DNAT rules in the cloud's nat table bring them to its
      listeners.

Each test builds its own world (about a second) and tears it down,
processes killed by PID and namespaces deleted, passed or failed.  The
suite needs root, C{ip}, C{iptables}, C{haproxy}, C{curl} and C{ss} (and,
for the DNAT tests, C{iptables-save}, C{iptables-restore} and
C{conntrack}): it skips without them, with the reason, except under
C{CI=true}, where it fails (L{tests.netns.requireNetns}).

Nothing sleeps: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from tests.netns import requireNetns
from tests.system.e2e_client import MESSAGES
from tests.system.e2e_kubelet import LOG_INTERVAL, LOG_LINES, bigBody, logLine
from tests.system.e2e_world import (
    CLOUD_ADDRESS,
    HTTP_LISTENER_PORT,
    HTTPS_LISTENER_PORT,
    CurlResult,
    Edge,
    World,
    normalizedTable,
)
from twisted_tunnel.tls.certs import mintAgent

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
    listeners as they work without any iptables rule (C{--no-iptables}).
    """

    def setUp(self) -> None:
        requireNetns(self, *COMMANDS)
        self.world = World(self, serverArguments=["--no-iptables"]).build()
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

    def test_httpsListenerAsksForAClientCertificate(self) -> None:
        """
        The HTTPS listener lends out the proxy client certificate, so it
        answers only clients with a certificate from its client CA, and
        never a node's: without one, or with an agent's certificate from
        that very CA, the handshake fails and nothing reaches the kubelet.
        """
        edge = self.edges[0]
        request = viaHTTPSListener(edge, 10250, "/pods")
        anonymous = self.world.curl(*request, clientCertificate=False)
        self.assertEqual(anonymous.status, 0, anonymous.describe())
        self.assertNotEqual(anonymous.exitCode, 0, anonymous.describe())
        cert, key = self.world._write(
            mintAgent(self.world.kubeletAuthority, "edge-2"), "agent-of-client-ca"
        )
        agent = self.world.curl("--cert", cert, "--key", key, *request, clientCertificate=False)
        self.assertEqual(agent.status, 0, agent.describe())
        self.assertNotEqual(agent.exitCode, 0, agent.describe())

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
            # routed by Host, the request is parsed, and its Host made loopback's
            self.assertEqual(result.headers["x-host"], "127.0.0.1:10267")
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
                "-m", "tests.system.e2e_client",
                "--connect", f"{CLOUD_ADDRESS}:{HTTPS_LISTENER_PORT}", "--tls",
                *self.world.clientCertificate(),
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
        refused at once (502: no agent), while the other node is still
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
            self.assertAnswer(result, 502)
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


#: Rules of other owners in the cloud's nat table, laid down before the
#: server starts: they must come out of every sync, stop and crash
#: recovery exactly as they went in.
FOREIGN_NAT_RULES = """\
*nat
:KUBE-SERVICES - [0:0]
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j RETURN
-A OUTPUT -d 192.0.2.7/32 -p tcp -m tcp --dport 10250 -j RETURN
COMMIT
"""

#: Our chains' names start with this.
CHAIN = "EDGE-TUNNEL"


def ours(saved: str) -> list[str]:
    """The lines of C{iptables-save} output that name a chain of ours."""
    return [line for line in saved.splitlines() if CHAIN in line]


def dnatLines(saved: str, address: str) -> list[str]:
    """Our rules that DNAT connections to C{address}."""
    return [line for line in ours(saved) if f"-d {address}/32 " in line and "DNAT" in line]


class TransparentInterceptionEndToEndTests(SynchronousTestCase):
    """
    From the cloud, straight to the edge addresses, with plain curl and no
    proxy settings: the server (C{--iptables}) DNATs the connected nodes'
    ports to its proxy listeners in the cloud namespace's nat table, and
    takes its rules away when a node goes and when it stops.
    """

    def setUp(self) -> None:
        requireNetns(self, *COMMANDS, "iptables-save", "iptables-restore", "conntrack")
        self.world = World(self, serverArguments=["--iptables"])
        self.world.build(beforeServer=lambda cloud: cloud.iptablesRestore(FOREIGN_NAT_RULES))
        self.edges = self.world.edges
        self.foreign = [line for line in normalizedTable(FOREIGN_NAT_RULES) if line != "COMMIT"]
        self.waitForNodes(self.edges)

    def waitForNodes(self, present: Sequence[Edge], absent: Sequence[Edge] = ()) -> str:
        """Wait until the nat table DNATs exactly the C{present} nodes' addresses."""

        def matches(saved: str) -> bool:
            return all(dnatLines(saved, e.nodeIP) for e in present) and not any(
                dnatLines(saved, e.nodeIP) for e in absent
            )

        names = ", ".join(e.name for e in present) or "no node"
        return self.world.waitForNat(matches, f"DNAT rules for {names} only")

    def assertAnswer(self, result: CurlResult, status: int, node: str | None = None) -> None:
        message = f"{result.describe()}\n{self.world.logs()}\n{self.world.nat()}"
        self.assertEqual((result.exitCode, result.status), (0, status), message)
        if node is not None:
            self.assertEqual(result.body, f"{node}\n".encode(), message)
            self.assertEqual(result.headers.get("x-node"), node, message)

    def assertRefused(self, result: CurlResult) -> None:
        """Refused at once, as without the tunnel (the load balancer's reset)."""
        message = f"{result.describe()}\n{self.world.nat()}"
        self.assertEqual(result.exitCode, 7, message)
        self.assertLess(result.elapsed, PROMPT, message)

    def assertForeignRulesIntact(self, saved: str) -> None:
        lines = normalizedTable(saved)
        for line in self.foreign:
            self.assertEqual(lines.count(line), 1, f"{line!r} in:\n{saved}")

    def test_kubeletPortByDNAT(self) -> None:
        """
        C{curl -k https://<node-ip>:10250/pods}, as kube-apiserver dials a
        kubelet: DNATed to the HTTPS listener and answered by that node's
        kubelet, which saw the proxy client certificate.
        """
        for edge in self.edges:
            result = self.world.curl("-k", f"https://{edge.nodeIP}:10250/pods")
            self.assertAnswer(result, 200, edge.name)
            self.assertEqual(result.headers["x-client-cn"], PROXY_CLIENT_NAME)

    def test_upgradeByDNAT(self) -> None:
        """
        C{kubectl exec}'s upgraded connection to C{<node-ip>:10250}, DNATed:
        the C{101} and the echoed round trips come back intact.
        """
        for edge in self.edges:
            completed = self.world.runInCloud(
                "-m", "tests.system.e2e_client",
                "--connect", f"{edge.nodeIP}:10250", "--tls",
                *self.world.clientCertificate(),
                "--host", f"{edge.nodeIP}:10250",
            )  # fmt: skip
            message = f"{completed}\n{self.world.logs()}"
            self.assertEqual(completed.returncode, 0, message)
            result = json.loads(completed.stdout)
            self.assertEqual(result["status"], 101, message)
            self.assertEqual(result["headers"]["x-node"], edge.name, message)
            self.assertEqual(result["echoed"], [len(m) for m in MESSAGES], message)

    def test_readOnlyPortByDNAT(self) -> None:
        """C{curl http://<node-ip>:10255/healthz}: answered by that node."""
        for edge in self.edges:
            self.assertAnswer(
                self.world.curl(f"http://{edge.nodeIP}:10255/healthz"), 200, edge.name
            )

    def test_configChangeByDNAT(self) -> None:
        """
        A port the ConfigMap does not forward is not DNATed (refused as
        without the tunnel); once the ConfigMap lists it, it is, at once.
        """
        edge = self.edges[0]
        self.assertRefused(self.world.curl(f"http://{edge.nodeIP}:9051/"))
        self.world.applyConfig({"http-proxy-ports": "9051, 10267"})
        self.world.waitForNat(
            lambda saved: any("--dport 9051" in line for line in ours(saved)),
            "a rule for port 9051",
        )
        result = self.world.curl(f"http://{edge.nodeIP}:9051/")
        self.assertAnswer(result, 200, edge.name)
        self.assertEqual(result.headers["x-served-on"], f"{edge.nodeIP}:9051")

    def test_rawTCPPortByDNAT(self) -> None:
        """
        A C{tcp-proxy-ports} port is DNATed to the raw TCP listener, which
        needs no Host: it carries the bytes to the original destination's
        node as they are (here, an HTTP exchange it does not parse).
        """
        edge = self.edges[1]
        self.world.applyConfig({"http-proxy-ports": "10267", "tcp-proxy-ports": "9051"})
        self.world.waitForNat(
            lambda saved: any("--dport 9051" in line for line in ours(saved)),
            "a rule for port 9051",
        )
        result = self.world.curl(f"http://{edge.nodeIP}:9051/")
        self.assertAnswer(result, 200, edge.name)
        self.assertEqual(result.headers["x-served-on"], f"{edge.nodeIP}:9051")

    def test_localhostPortByDNAT(self) -> None:
        """
        C{curl http://<node-ip>:10267/}: 10267 is under C{http-proxy-ports}
        and a localhost port by default, so the DNATed request is answered
        by the service on the node's loopback only.  The connection is
        routed once and relayed as bytes (the fast path): the service sees
        the Host the client sent, as with iptables DNAT to a loopback port.
        """
        self.world.waitForNat(
            lambda saved: any("--dport 10267" in line for line in ours(saved)),
            "a rule for port 10267",
        )
        for edge in self.edges:
            result = self.world.curl(f"http://{edge.nodeIP}:10267/")
            self.assertAnswer(result, 200, edge.name)
            self.assertEqual(result.headers["x-served-on"], "127.0.0.1:10267")
            # routed as a whole and relayed as bytes: the Host is the client's
            self.assertEqual(result.headers["x-host"], f"{edge.nodeIP}:10267")

    def test_dnatPortsPairByDNAT(self) -> None:
        """
        ACK Edge's 1.18 ConfigMap, C{dnat-ports-pair: '9051=10264'}: once
        the server has reloaded it, 9051 is DNATed and answered by the
        node's 9051 service.
        """
        edge = self.edges[0]
        self.assertRefused(self.world.curl(f"http://{edge.nodeIP}:9051/"))
        self.world.applyConfig({"dnat-ports-pair": "9051=10264"})
        self.world.waitForNat(
            lambda saved: any("--dport 9051" in line for line in ours(saved)),
            "a rule for port 9051",
        )
        result = self.world.curl(f"http://{edge.nodeIP}:9051/")
        self.assertAnswer(result, 200, edge.name)
        self.assertEqual(result.headers["x-served-on"], f"{edge.nodeIP}:9051")

    def test_streamingByDNAT(self) -> None:
        """
        C{kubectl logs -f} by DNAT, through 10255 and 10250: the lines
        arrive as the kubelet writes them, the first well before the last.
        """
        path = "/containerLogs/default/pod/c?follow=true"
        for arguments in [
            [f"http://{self.edges[0].nodeIP}:10255{path}"],
            ["-k", f"https://{self.edges[1].nodeIP}:10250{path}"],
        ]:
            lines, exitCode, error = self.world.curlLines(*arguments)
            self.assertEqual(exitCode, 0, f"{error}\n{self.world.logs()}")
            self.assertEqual([line for _, line in lines], [logLine(n) for n in range(LOG_LINES)])
            first, last = lines[0][0], lines[-1][0]
            self.assertGreater(last - first, (LOG_LINES - 1) * LOG_INTERVAL / 2, lines)

    def test_bigTransferByDNAT(self) -> None:
        """
        10 MiB by DNAT come through byte for byte, from 10255 (plain HTTP)
        and from 10250 (HTTPS, TLS ended at the server and made again).
        """
        big = bigBody()
        expected = hashlib.sha256(big).hexdigest()
        for edge, arguments in [
            (self.edges[0], [f"http://{self.edges[0].nodeIP}:10255/big"]),
            (self.edges[1], ["-k", f"https://{self.edges[1].nodeIP}:10250/big"]),
        ]:
            path = os.path.join(self.world.directory, f"big-dnat-{edge.name}")
            result = self.world.curl("-o", path, *arguments, timeout=30)
            self.assertAnswer(result, 200)
            self.assertEqual(result.headers.get("x-node"), edge.name, result.describe())
            with open(path, "rb") as f:
                received = f.read()
            self.assertEqual(len(received), len(big))
            self.assertEqual(hashlib.sha256(received).hexdigest(), expected)

    def test_agentStoppedByDNAT(self) -> None:
        """
        When an agent stops, its node stays routed (C{--keep-gone-nodes}):
        requests for it are answered at once by the server, C{502} naming
        the node and when its agent left, rather than sent past the tunnel
        to an address that, for kube-apiserver, refuses or silently drops
        them (issue 13, item 10).  The other node is still answered, and the
        node is again once its agent is back.
        """
        stopped, other = self.edges[1], self.edges[0]
        server = self.world.server
        assert server is not None
        mark = server.mark()
        self.world.agents[stopped.name].stop(signal.SIGTERM)
        server.waitForLine(rf"agent {stopped.name} (is draining|disconnected)", start=mark)
        self.waitForNodes(self.edges)
        for arguments in [
            [f"http://{stopped.nodeIP}:10255/healthz"],
            ["-k", f"https://{stopped.nodeIP}:10250/pods"],
        ]:
            result = self.world.curl(*arguments)
            self.assertAnswer(result, 502)
            self.assertRegex(
                result.body,
                rb"no agent connected for node '%s' \(%s\): its agent left \d+s ago"
                % (stopped.name.encode(), stopped.nodeIP.encode()),
            )
            self.assertLess(result.elapsed, PROMPT)
        self.assertAnswer(self.world.curl(f"http://{other.nodeIP}:10255/healthz"), 200, other.name)
        mark = server.mark()
        self.world.startAgent(stopped)
        self.world.waitForAgent(stopped, serverMark=mark)
        self.waitForNodes(self.edges)
        self.assertAnswer(
            self.world.curl(f"http://{stopped.nodeIP}:10255/healthz"), 200, stopped.name
        )

    def test_noRulesLeftAfterStop(self) -> None:
        """
        A server that stops (SIGTERM) takes every rule and chain of its own
        away, and leaves the other owners' rules as they were; the edge
        addresses are then refused as without the tunnel.
        """
        server = self.world.server
        assert server is not None
        self.assertForeignRulesIntact(self.world.nat())
        server.stop(signal.SIGTERM)
        saved = self.world.nat()
        self.assertEqual(ours(saved), [], f"{saved}\n{server.log()}")
        self.assertForeignRulesIntact(saved)
        self.assertRefused(self.world.curl(f"http://{self.edges[0].nodeIP}:10255/healthz"))

    def test_restartAfterKill(self) -> None:
        """
        A server killed with SIGKILL cannot clean up: its rules stay.  The
        next one replaces them (one copy of each, the other owners' rules
        untouched), serves the nodes once their agents are back, and
        cleans up when it stops.
        """
        first = self.world.server
        assert first is not None
        first.stop(signal.SIGKILL)
        leftovers = self.world.nat()
        self.assertNotEqual(dnatLines(leftovers, self.edges[0].nodeIP), [], leftovers)
        second = self.world.startServer()
        self.world.waitForServer()
        for edge in self.edges:
            self.world.waitForAgent(edge)
        second.waitForLine(r"leftovers of a previous run")
        saved = self.waitForNodes(self.edges)
        lines = normalizedTable(saved)
        self.assertEqual(len(lines), len(set(lines)), f"a line twice in:\n{saved}")
        self.assertForeignRulesIntact(saved)
        for edge in self.edges:
            self.assertAnswer(
                self.world.curl(f"http://{edge.nodeIP}:10255/healthz"), 200, edge.name
            )
            self.assertAnswer(
                self.world.curl("-k", f"https://{edge.nodeIP}:10250/pods"), 200, edge.name
            )
        second.stop(signal.SIGTERM)
        saved = self.world.nat()
        self.assertEqual(ours(saved), [], f"{saved}\n{second.log()}")
        self.assertForeignRulesIntact(saved)


class SameHostWorld(World):
    """
    The e2e world with edge 1 on the server's host: its node IP on the
    cloud namespace's own interface, its kubelet stand-in and its agent in
    the cloud namespace with the server (C{--iptables}).
    """

    def _network(self) -> None:
        super()._network()
        first = self.edges[0]
        self.cloud.addDummy(f"{first.nodeIP}/32")
        self.edges[0] = Edge(
            first.index, first.name, first.nodeIP, self.cloud, first.agentCredentials
        )


class SameHostEndToEndTests(SynchronousTestCase):
    """
    Server and agent in one network namespace, the server DNATing the
    connected nodes' ports (C{--iptables}): the agent's own dial to its
    kubelet (the node IP, an address of the namespace) is not DNATed back
    into the server, which sent it to the agent again, stream after stream
    (one request became over a thousand streams, until the agent refused
    them).  A node elsewhere is DNATed as always.
    """

    def setUp(self) -> None:
        requireNetns(self, *COMMANDS, "iptables-save", "iptables-restore", "conntrack")
        self.world = SameHostWorld(self, serverArguments=["--iptables"])
        self.world.build()
        self.local, self.remote = self.world.edges
        self.world.waitForNat(
            lambda saved: bool(dnatLines(saved, self.remote.nodeIP)), "the remote node's rules"
        )

    def assertAnswer(self, result: CurlResult, node: str) -> None:
        message = f"{result.describe()}\n{self.world.logs()}\n{self.world.nat()}"
        self.assertEqual((result.exitCode, result.status), (0, 200), message)
        self.assertEqual(result.headers.get("x-node"), node, message)

    def test_noLoopThroughTheListener(self) -> None:
        """
        A request for the local node, on a port the agent dials at the
        node's IP (not a localhost port: those it dials on 127.0.0.1, which
        no rule matches), through the HTTP proxy listener: it goes through
        the tunnel once, and the agent's dial reaches the kubelet.
        """
        assert self.world.server is not None
        self.world.applyConfig({"http-proxy-ports": "9051, 10267"})
        self.world.waitForNat(
            lambda saved: any("--dport 9051" in line for line in ours(saved)),
            "a rule for port 9051",
        )
        mark = self.world.server.mark()
        result = self.world.curl(*viaHTTPListener(self.local, 9051, "/"))
        self.assertAnswer(result, self.local.name)
        self.assertEqual(result.headers["x-served-on"], f"{self.local.nodeIP}:9051")
        agent = self.world.agents[self.local.name]
        self.assertEqual(agent.count("refusing new streams"), 0, agent.log())
        refusals = self.world.server.count(r"accepts \d+ streams| 50[234] ", mark)
        self.assertEqual(refusals, 0, self.world.logs())

    def test_localAddressNotDNATed(self) -> None:
        """
        Straight to the local node's address: answered by its kubelet,
        directly (the rules let local addresses pass); the remote node is
        DNATed to the listener and answered through its tunnel.
        """
        self.assertIn("-m addrtype --dst-type LOCAL -j RETURN", self.world.nat())
        self.assertAnswer(
            self.world.curl(f"http://{self.local.nodeIP}:10255/healthz"), self.local.name
        )
        self.assertAnswer(
            self.world.curl(f"http://{self.remote.nodeIP}:10255/healthz"), self.remote.name
        )
