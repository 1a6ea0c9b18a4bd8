"""
Issue 16, item 1, in the real Kubernetes world: the agents prove their node
with the kubelet's own client certificate (L{InteropWorld} with
C{kubeletClientCert}), and follow its rotation.

    python3 tests/interop/identity.py [--keep-going]    (as root)

Each node's API client certificate from the cluster CA (C{CN=system:node:
edge-N, O=system:nodes}) is kept as the kubelet keeps it: one 0600 file,
certificate then key, behind the symlink C{kubelet-client-current.pem},
which the world's kubelet's kubeconfig names too.  Each agent reads it
(C{--kubelet-client-cert}) as root with no capability at all; the server
trusts the cluster CA for agents (C{--agent-ca}).  Checked, each printed
PASS/FAIL with what it measured:

  1. each agent connected with its kubelet's certificate (the server's
     C{/agents} names the serial) from a process with no capability, and
     kube-apiserver reaches each node through it (C{kubectl logs});
  2. the kubelet rotates edge-1's certificate (new file, symlink
     repointed): the agent takes it within C{--tls-reload-interval}, the
     tunnel up keeps the old one and keeps working;
  3. the tunnels cut (the load balancer restarted): edge-1's agent comes
     back with the new certificate, edge-2's with its own, both work;
  4. edge-1's file repointed at edge-2's certificate: the agent refuses
     the rotation and, cut again, comes back with the good one;
  5. start-up refusals, each one line and exit status 2: another node's
     certificate for C{--node-name}, the cluster admin's certificate, an
     expired one, and a non-root user who cannot read the key;
  6. the server itself, through the load balancer, facing a hostile agent
     (a child of this script, C{--hostile-hello}) with certificates from
     the cluster CA: the admin's and another node's are refused at HELLO
     (GOAWAY UNAUTHORIZED), an expired node certificate in the handshake,
     and the real agents' tunnels stay untouched.

Not a test module (no C{test_} prefix): C{tests/system/test_interop_identity.py}
runs it.  Only etcd, kube-apiserver, kubectl and the kubelet are needed
(C{tests/interop/build.py etcd kube kubelet}).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

#: How long a rotation may take to be noticed: the agent's default
#: --tls-reload-interval (10 s), and a margin.
ROTATION_TIMEOUT = 20.0
#: How long agents may take to come back once the load balancer is back
#: (their --max-backoff is 0.5 s in the world).
RECONNECT_TIMEOUT = 20.0
#: The components this needs (no metrics-server, no Prometheus).
NEEDED = ("etcd", "kube", "kubelet")


def serialOf(issued: Any) -> str:
    return f"{issued.certificate.serial_number:#x}"


def agentsByNode(world: Any) -> dict[str, dict[str, Any]]:
    """The server's C{/agents}, by node."""
    result = world.cloud.run("curl", "-sS", "--max-time", "5", "http://127.0.0.1:10265/agents")
    return {agent["node"]: agent for agent in json.loads(result.stdout)["agents"]}


def waitFor(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll C{condition} until true (seconds it took) or fail after C{timeout}."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"no {what} within {timeout:g}s")
        time.sleep(0.1)
    return time.monotonic() - started


def capabilities(pid: int) -> tuple[int, int]:
    """The uid and effective capabilities of process C{pid}."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return int(status["Uid"].split()[1]), int(status["CapEff"].strip(), 16)


def checkConnected(world: Any, pods: dict[str, str], firstSerials: dict[str, str]) -> str:
    from tests.interop.smoke import check, logsWork

    agents = agentsByNode(world)
    out = []
    for edge in world.edges:
        agent = agents.get(edge.name)
        check(agent is not None, f"{edge.name} not in /agents: {sorted(agents)}")
        assert agent is not None
        check(
            agent["certificate_serial"] == firstSerials[edge.name],
            f"{edge.name}: /agents says serial {agent['certificate_serial']}, its kubelet's "
            f"certificate is {firstSerials[edge.name]}",
        )
        uid, effective = capabilities(world.agents[edge.name].popen.pid)
        check(
            uid == 0 and effective == 0, f"{edge.name}'s agent: uid {uid}, CapEff {effective:#x}"
        )
        out.append(f"{edge.name}: serial {agent['certificate_serial']}, uid 0 CapEff 0, "
                   f"{logsWork(world, pods[edge.name])}")  # fmt: skip
    return "; ".join(out)


def checkRotation(world: Any, pods: dict[str, str], state: dict[str, Any]) -> str:
    from tests.interop.smoke import check, logsWork

    edge = world.edges[0]
    agent = world.agents[edge.name]
    before = agentsByNode(world)[edge.name]
    mark = agent.mark()
    rotated = world.rotateKubeletCertificate(edge)
    state["rotated"] = rotated
    started = time.monotonic()
    agent.waitForLine(
        rf"certificates reloaded: node {edge.name}, serial {serialOf(rotated)}",
        ROTATION_TIMEOUT,
        start=mark,
    )
    noticed = time.monotonic() - started
    after = agentsByNode(world)[edge.name]
    check(
        after["certificate_serial"] == before["certificate_serial"]
        and after["connected_since"] == before["connected_since"],
        f"the tunnel up should have been kept: before {before}, after {after}",
    )
    return (
        f"{edge.name}: rotation to {serialOf(rotated)} taken in {noticed:.1f}s; the tunnel up "
        f"kept (serial {after['certificate_serial']}, since {after['connected_since']}); "
        f"{logsWork(world, pods[edge.name])}"
    )


def cutTunnels(world: Any) -> float:
    """Restart the load balancer (every tunnel is cut); seconds until both agents are back."""
    assert world.server is not None
    mark = world.server.mark()
    world.haproxy.stop()
    world.haproxy = world.startHAProxy()
    started = time.monotonic()
    for edge in world.edges:
        world.server.waitForLine(
            rf"agent {edge.name} connected from", RECONNECT_TIMEOUT, start=mark
        )
    return time.monotonic() - started


def checkReconnect(world: Any, pods: dict[str, str], state: dict[str, Any]) -> str:
    from tests.interop.smoke import check, logsWork

    firstSerials = state["first"]
    seconds = cutTunnels(world)
    expected = {world.edges[0].name: serialOf(state["rotated"])}
    expected.update({edge.name: firstSerials[edge.name] for edge in world.edges[1:]})
    waitFor(
        lambda: {n: a["certificate_serial"] for n, a in agentsByNode(world).items()} == expected,
        RECONNECT_TIMEOUT,
        f"/agents to show {expected}",
    )
    works = [f"{edge.name}: {logsWork(world, pods[edge.name])}" for edge in world.edges]
    check(bool(works), "no edge")
    return f"back in {seconds:.1f}s with serials {expected}; " + "; ".join(works)


def checkRefusedRotation(world: Any, pods: dict[str, str], state: dict[str, Any]) -> str:
    from tests.interop.smoke import check, logsWork
    from twisted_tunnel.tls.certs import mintAgent

    edge, other = world.edges[0], world.edges[1]
    agent = world.agents[edge.name]
    mark = agent.mark()
    foreign = mintAgent(world.clusterAuthority, other.name, [other.nodeIP])
    world.rotateKubeletCertificate(edge, foreign)
    line = agent.waitForLine(
        r"certificate rotation refused, keeping the certificates in use: .*"
        rf"not node {edge.name}'s certificate",
        ROTATION_TIMEOUT,
        start=mark,
    )
    seconds = cutTunnels(world)
    good = serialOf(state["rotated"])
    waitFor(
        lambda: agentsByNode(world)[edge.name]["certificate_serial"] == good,
        RECONNECT_TIMEOUT,
        f"{edge.name} back with {good}",
    )
    check(other.name in agentsByNode(world), f"{other.name} gone")
    return (
        f"refused: {line.string.strip()[-160:]!r}; back in {seconds:.1f}s with {good}; "
        f"{logsWork(world, pods[edge.name])}"
    )


def checkStartupRefusals(world: Any, atExit: list[Callable[[], object]]) -> str:
    from tests.interop.smoke import check
    from tests.pki import KubeletCertificateStore
    from tests.realnet import daemonEnvironment, twistdCommand
    from tests.system.e2e_world import LB_ADDRESS, SERVER_NAME, TUNNEL_PORT
    from twisted_tunnel.tls.certs import mintAgent

    edge, other = world.edges[0], world.edges[1]
    admin = KubeletCertificateStore(os.path.join(world.directory, "admin/pki"))
    with open(world.adminCert, "rb") as c, open(world.adminKey, "rb") as k:
        admin.unlinkCurrent(admin.write(c.read() + k.read()))
    admin.linkCurrent()
    # What a non-root user could reach of a real node: a public CA certificate, and
    # the kubelet's directory (0755) with its file (root's, 0600). The world's own
    # directory is root's alone (0700).
    public = tempfile.mkdtemp(prefix="twisted-tunnel-identity-")
    os.chmod(public, 0o755)
    atExit.append(lambda: shutil.rmtree(public, ignore_errors=True))
    publicCA = shutil.copy(world.tunnelCA, os.path.join(public, "ca.pem"))
    os.chmod(publicCA, 0o644)
    node = KubeletCertificateStore(os.path.join(public, "var/lib/kubelet/pki"))
    for directory in ("var", "var/lib", "var/lib/kubelet"):
        os.chmod(os.path.join(public, directory), 0o755)
    node.update(mintAgent(world.clusterAuthority, edge.name, [edge.nodeIP]))
    expired = KubeletCertificateStore(os.path.join(world.directory, "expired/pki"))
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expiredAt = now - datetime.timedelta(hours=1)
    expired.update(
        mintAgent(
            world.clusterAuthority,
            edge.name,
            notBefore=now - datetime.timedelta(days=2),
            notAfter=expiredAt,
        )
    )
    cases = [
        (
            "another node's",
            [],
            ["--kubelet-client-cert", world.kubeletStores[other.name].current,
             "--node-name", edge.name],
            rf"'system:node:{other.name}', not system:node:{edge.name}",
        ),
        (
            "the admin's",
            [],
            ["--kubelet-client-cert", admin.current],
            r"CN=interop-admin.* not a node's",
        ),
        (
            "expired",
            [],
            ["--kubelet-client-cert", expired.current],
            rf"certificate expired on {expiredAt:%Y-%m-%d %H:%M:%S} UTC",
        ),
        (
            "user 65532",
            ["setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--"],
            ["--kubelet-client-cert", node.current],
            rf"--kubelet-client-cert {node.current}: permission denied",
        ),
    ]  # fmt: skip
    out = []
    for name, prefix, identity, expected in cases:
        options = [
            "--ca", publicCA, *identity,
            "--server", f"{LB_ADDRESS}:{TUNNEL_PORT}", "--server-name", SERVER_NAME,
            "--meta-endpoint", "none",
        ]  # fmt: skip
        if prefix:
            command = [*prefix, *twistdCommand("edge-tunnel-agent", options)]
        else:
            command = world.agentCommand(edge, options)  # root, no capability
        started = time.monotonic()
        done = subprocess.run(
            edge.namespace.command(*command),
            capture_output=True,
            text=True,
            timeout=60,
            env=daemonEnvironment(),
            cwd="/",
            check=False,
        )
        seconds = time.monotonic() - started
        output = (done.stdout + done.stderr).strip()
        lines = [line for line in output.splitlines() if line.startswith("edge-tunnel-agent: ")]
        check(done.returncode == 2, f"{name}: exit status {done.returncode}: {output[-2000:]}")
        check(len(lines) == 1 and "Traceback" not in output, f"{name}: {output[-2000:]}")
        check(
            re.search(expected, lines[0]) is not None, f"{name}: {lines[0]!r} lacks {expected!r}"
        )
        out.append(f"{name}: exit 2 in {seconds:.1f}s, {lines[0]!r}")
    return "; ".join(out)


def hostileHello(certPath: str, keyPath: str, caPath: str, node: str) -> int:
    """
    Child mode (C{--hostile-hello}, run in an edge namespace): dial the
    load balancer's tunnel port with a certificate and key, say HELLO as
    C{node}, and print what the server did as one JSON line:
    C{accepted}, the GOAWAY C{code} and C{text}, or why the connection
    ended.
    """
    from cryptography import x509
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
    from twisted.internet.task import react

    from tests.server.hostile import HostileAgentConnection
    from tests.system.e2e_world import LB_ADDRESS, SERVER_NAME, TUNNEL_PORT
    from twisted_tunnel.tls import agentOptions, makeCredentials
    from twisted_tunnel.tls.certs import readPair

    # unchecked, as a hostile agent would present it (an expired one too)
    issued = readPair(certPath, keyPath)
    with open(caPath, "rb") as f:
        authority = x509.load_pem_x509_certificates(f.read())
    credentials = makeCredentials(authority, issued.certificate, issued.key)
    info = {"node": node, "ips": [], "servers": [], "software": "hostile-agent"}
    connection = HostileAgentConnection(info)

    async def run(_: Any) -> None:
        endpoint = wrapClientTLS(
            agentOptions(credentials, SERVER_NAME),
            TCP4ClientEndpoint(reactor, LB_ADDRESS, TUNNEL_PORT),
        )
        await connectProtocol(endpoint, connection)
        deadline = time.monotonic() + 10
        while not connection.accepted and connection.lost is None:
            if time.monotonic() > deadline:
                break
            pause: Deferred[None] = Deferred()
            reactor.callLater(0.05, pause.callback, None)  # type: ignore[attr-defined]
            await pause
        connection.abort()
        reason = connection.lost.getErrorMessage() if connection.lost is not None else None
        print(
            json.dumps(
                {
                    "accepted": connection.accepted,
                    "code": connection.goaway[0] if connection.goaway else None,
                    "text": connection.goaway[1] if connection.goaway else None,
                    "lost": reason,
                }
            ),
            flush=True,
        )

    react(lambda r: Deferred.fromCoroutine(run(r)))
    return 0


def checkServerRefusals(world: Any) -> str:
    """
    The real server, through the load balancer, facing hostile HELLOs with
    certificates from the cluster CA it trusts for agents.
    """
    from tests.interop.smoke import check
    from tests.realnet import REPO_ROOT, daemonEnvironment
    from twisted_tunnel.tls.certs import mintAgent, writePair
    from twisted_tunnel.wire import ErrorCode

    edge, other = world.edges[0], world.edges[1]
    now = datetime.datetime.now(datetime.UTC)
    expiredPaths = (
        os.path.join(world.directory, "hostile-expired.pem"),
        os.path.join(world.directory, "hostile-expired-key.pem"),
    )
    writePair(
        mintAgent(
            world.clusterAuthority,
            edge.name,
            notBefore=now - datetime.timedelta(days=2),
            notAfter=now - datetime.timedelta(hours=1),
        ),
        *expiredPaths,
    )
    otherFile = world.kubeletStores[other.name].current
    cases = [
        ("the admin's certificate", (world.adminCert, world.adminKey), edge.name,
         "not a node certificate"),
        (f"{other.name}'s kubelet certificate as {edge.name}", (otherFile, otherFile), edge.name,
         f"'system:node:{other.name}', not system:node:{edge.name}"),
        ("an expired kubelet certificate", expiredPaths, edge.name, None),
    ]  # fmt: skip
    before = agentsByNode(world)
    out = []
    for name, (cert, key), node, refusal in cases:
        done = subprocess.run(
            other.namespace.command(
                sys.executable, os.path.abspath(__file__), "--hostile-hello",
                cert, key, world.tunnelCA, node,
            ),
            capture_output=True, text=True, timeout=60, env=daemonEnvironment(),
            cwd=REPO_ROOT, check=False,
        )  # fmt: skip
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        check(done.returncode == 0 and len(lines) == 1, f"{name}: {done.stdout}{done.stderr}")
        seen = json.loads(lines[0])
        check(not seen["accepted"], f"{name}: accepted as {node}")
        if refusal is None:
            # refused in the TLS handshake: no GOAWAY, the connection ended
            check(seen["code"] is None and seen["lost"], f"{name}: {seen}")
            out.append(f"{name}: refused in the handshake ({seen['lost']})")
        else:
            check(seen["code"] == ErrorCode.UNAUTHORIZED, f"{name}: {seen}")
            check(refusal in seen["text"], f"{name}: {seen['text']!r} lacks {refusal!r}")
            out.append(f"{name}: GOAWAY UNAUTHORIZED {seen['text'][-90:]!r}")
    after = agentsByNode(world)
    check(
        {n: a["connected_since"] for n, a in after.items()}
        == {n: a["connected_since"] for n, a in before.items()},
        f"the real agents' tunnels changed: {before} -> {after}",
    )
    return "; ".join(out) + "; the real agents' tunnels untouched"


CHECKS = {
    "1": "agents connected with the kubelets' certificates, no capability; kubectl logs",
    "2": "the kubelet rotates edge-1's certificate: taken, the tunnel up kept",
    "3": "tunnels cut: back with the rotated certificate",
    "4": "rotation to another node's certificate refused",
    "5": "start-up refusals",
    "6": "the server refuses cluster identities that are no node's",
}


def main(argv: list[str]) -> int:
    from tests.interop.build import cached
    from tests.interop.world import Cleanups, InteropWorld, buildOrReport

    if argv[:1] == ["--hostile-hello"]:
        return hostileHello(*argv[1:5])
    keepGoing = "--keep-going" in argv
    missing = [name for name in NEEDED if cached(name) is None]
    if missing:
        print(f"not built: {', '.join(missing)} (tests/interop/build.py {' '.join(missing)})")
        return 3
    cleanups = Cleanups()
    results: list[bool] = []
    atExit: list[Callable[[], object]] = []
    try:
        world = InteropWorld(cleanups, kubeletClientCert=True, observability=False)
        if not buildOrReport(world):
            return 1
        print(f"world up in {world.bringUpSeconds:.1f}s", flush=True)
        pods = {edge.name: world.createTicker(edge) for edge in world.edges}
        time.sleep(2)  # let each ticker write some 20 lines
        state: dict[str, Any] = {
            "first": {
                name: f"{int(_serial(store.current)):#x}"
                for name, store in world.kubeletStores.items()
            }
        }
        runs = {
            "1": lambda: checkConnected(world, pods, state["first"]),
            "2": lambda: checkRotation(world, pods, state),
            "3": lambda: checkReconnect(world, pods, state),
            "4": lambda: checkRefusedRotation(world, pods, state),
            "5": lambda: checkStartupRefusals(world, atExit),
            "6": lambda: checkServerRefusals(world),
        }
        for item, run in runs.items():
            started = time.monotonic()
            try:
                detail, ok = run(), True
            except Exception as e:  # noqa: BLE001 - reported
                detail, ok = f"{type(e).__name__}: {e}\n{traceback.format_exc()}", False
            results.append(ok)
            verdict = "PASS" if ok else "FAIL"
            print(
                f"check {item} ({CHECKS[item]}): {verdict} in "
                f"{time.monotonic() - started:.1f}s: {detail}",
                flush=True,
            )
            if not ok and not keepGoing:
                break
        if not all(results):
            for process in world.processes:
                print(f"--- {process.name} (pid {process.popen.pid}):\n{process.log()[-4000:]}")
    finally:
        for cleanup in atExit:
            cleanup()
        errors = cleanups.run()
        for error in errors:
            print(f"cleanup error: {error!r}", flush=True)
    passed = len(results) == len(CHECKS) and all(results)
    print("ALL PASS" if passed else "FAILED")
    return 0 if passed else 1


def _serial(path: str) -> int:
    from cryptography import x509

    with open(path, "rb") as f:
        return int(x509.load_pem_x509_certificates(f.read())[0].serial_number)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
