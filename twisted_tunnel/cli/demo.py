"""
C{make demo}: the whole product on loopback, with throwaway certificates.

Starts three real processes: C{twistd edge-tunnel-server}, C{twistd
edge-tunnel-agent} for a node called C{edge-1}, and a stand-in edge HTTP
service that listens on the node's loopback only.  Then it asks for the
service through the tunnel, twice (through the HTTP CONNECT front door, as
kube-apiserver's egress selector does, and through a static forward
listener), prints what came back, and keeps everything running until
interrupted, so you can try the printed C{curl} commands yourself.

This is a plain blocking script on purpose: it only orchestrates processes.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ..files import writeAtomically
from ..tls.certs import mintAgent, mintCA, mintServer, writePair
from .status import readStatus, render

NODE = "edge-1"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connectThrough(doorPort: int, target: str, request: bytes, timeout: float = 5.0) -> bytes:
    """Send one request through the CONNECT door; return the tunnel's answer."""
    with socket.create_connection(("127.0.0.1", doorPort), timeout=timeout) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200"):
            return status + b"\r\n\r\n" + rest
        s.sendall(request)
        body = rest
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status + b"\r\n\r\n" + body


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="edge-tunnel-demo-"))
    # The CA's key signs the two certificates below and is never written:
    # nothing here needs it again, and a folder left in /tmp must not hold
    # a key that could sign for any node.
    ca = mintCA()
    writeAtomically(work / "ca.pem", ca.certificatePEM(), 0o644)
    writePair(
        mintServer(ca, ["localhost", "127.0.0.1"]), work / "server.pem", work / "server-key.pem"
    )
    writePair(mintAgent(ca, NODE, ["127.0.0.1"]), work / "agent.pem", work / "agent-key.pem")
    site = work / "site"
    site.mkdir()
    (site / "index.html").write_text(f"hello from the kubelet stand-in on {NODE}\n")

    tunnelPort, doorPort, servicePort, forwardPort, proxyPort, serverMeta, agentMeta = (
        freePort() for _ in range(7)
    )
    # the edge-tunnel-server-cfg ConfigMap, as kubectl would apply it: open the service's port
    (work / "edge-tunnel-server-cfg.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edge-tunnel-server-cfg\n"
        f'  namespace: kube-system\ndata:\n  http-proxy-ports: "{servicePort}"\n'
    )
    python = sys.executable
    # twisted.scripts.twistd has no __main__ block, so "-m" would do nothing
    twistd = [python, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str]) -> None:
        log = open(work / f"{name}.log", "wb")
        processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        print(f"  started {name:<8} pid {processes[-1].pid}  (log: {work / (name + '.log')})")

    def stopAll(*_: object) -> None:
        for p in processes:
            if p.poll() is None:
                p.terminate()
        for p in processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    print(f"edge-tunnel demo: certificates and logs in {work}")
    start(
        "service",
        [
            python,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(servicePort),
            "--directory",
            str(site),
        ],
    )
    start(
        "server",
        twistd
        + [
            "edge-tunnel-server",
            f"--tunnel-endpoint=tcp:{tunnelPort}:interface=127.0.0.1",
            f"--connect-endpoint=tcp:{doorPort}:interface=127.0.0.1",
            f"--forward={NODE}:{servicePort}=tcp:{forwardPort}:interface=127.0.0.1",
            f"--http-proxy-endpoint=tcp:{proxyPort}:interface=127.0.0.1",
            "--https-proxy-endpoint=none",
            "--tcp-proxy-endpoint=none",
            "--no-iptables",  # a demo on loopback leaves the host's iptables alone
            f"--meta-endpoint=tcp:{serverMeta}:interface=127.0.0.1",
            f"--config={work / 'edge-tunnel-server-cfg.yaml'}",
            f"--ca={work / 'ca.pem'}",
            f"--cert={work / 'server.pem'}",
            f"--key={work / 'server-key.pem'}",
        ],
    )
    start(
        "agent",
        twistd
        + [
            "edge-tunnel-agent",
            f"--server=127.0.0.1:{tunnelPort}",
            f"--meta-endpoint=tcp:{agentMeta}:interface=127.0.0.1",
            f"--ca={work / 'ca.pem'}",
            f"--cert={work / 'agent.pem'}",
            f"--key={work / 'agent-key.pem'}",
        ],
    )

    def terminated(*_: object) -> None:
        stopAll()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)

    # kept after a failure, for its logs; removed when the demo is stopped
    keepLogs = True
    request = f"GET / HTTP/1.1\r\nHost: {NODE}\r\nConnection: close\r\n\r\n".encode()
    target = f"{NODE}:{servicePort}"
    deadline = time.monotonic() + 30
    answer = b""
    try:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                print("a process exited early; its log says why:")
                for name in ("server", "agent", "service"):
                    print(f"--- {name}.log\n" + (work / f"{name}.log").read_text()[-2000:])
                stopAll()
                return 1
            try:
                answer = connectThrough(doorPort, target, request)
            except OSError:
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                break
            time.sleep(0.2)
        else:
            print("the agent did not come up within 30 s; see the logs above")
            stopAll()
            return 1

        print(f"\n$ CONNECT {target} through the front door on 127.0.0.1:{doorPort}")
        print(answer.decode(errors="replace").rstrip())
        with urllib.request.urlopen(f"http://127.0.0.1:{forwardPort}/", timeout=5) as r:
            print(f"\n$ GET http://127.0.0.1:{forwardPort}/  (static forward to {target})")
            print(f"HTTP {r.status}: {r.read().decode().rstrip()}")
        proxied = urllib.request.Request(
            f"http://127.0.0.1:{proxyPort}/", headers={"Host": f"{NODE}:{servicePort}"}
        )
        with urllib.request.urlopen(proxied, timeout=5) as r:
            print(
                f"\n$ GET / with Host: {target} at the HTTP proxy listener 127.0.0.1:{proxyPort}"
            )
            print(f"HTTP {r.status}: {r.read().decode().rstrip()}")
        print(f"\n$ edge-tunnel status --server http://127.0.0.1:{serverMeta}")
        now = datetime.datetime.now(datetime.UTC)
        for line in render(readStatus(f"http://127.0.0.1:{serverMeta}"), now):
            print(line)
        print(
            "\nTry it yourself:\n"
            f"  curl -H 'Host: {NODE}:{servicePort}' http://127.0.0.1:{proxyPort}/\n"
            f"  curl -H 'Host: {NODE}:22' http://127.0.0.1:{proxyPort}/   # 403: not configured\n"
            f"  curl -p -x http://127.0.0.1:{doorPort} http://{NODE}:{servicePort}/\n"
            f"  curl http://127.0.0.1:{forwardPort}/\n"
            f"  curl -p -x http://127.0.0.1:{doorPort} http://nowhere:80/   # 503: no such node\n"
            f"  curl http://127.0.0.1:{serverMeta}/readyz    # and /healthz, /metrics, /agents\n"
            f"  curl http://127.0.0.1:{agentMeta}/metrics\n"
            f"  edge-tunnel status --server http://127.0.0.1:{serverMeta}\n"
            "\nRunning until interrupted (Ctrl-C)."
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("a process exited; stopping the demo")
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        keepLogs = False
        return 0
    except SystemExit as stopped:  # SIGTERM: terminated() exits 0
        keepLogs = bool(stopped.code)
        raise
    finally:
        stopAll()
        leave(work, keepLogs)


def leave(work: Path, keepLogs: bool) -> None:
    """
    Tidy up after the demo: remove its folder when it was stopped (Ctrl-C,
    SIGTERM); after a failure keep its logs for the user to read, without
    the keys.
    """
    if not keepLogs:
        shutil.rmtree(work, ignore_errors=True)
        return
    for key in work.glob("*-key.pem"):
        key.unlink(missing_ok=True)
    print(f"the logs stay in {work} (the keys are removed)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
