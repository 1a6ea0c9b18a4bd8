"""
Network namespaces for tests: hosts of our own, with their own interfaces,
routes, iptables rules and conntrack table.

Everything made here lives inside namespaces the test creates, and is gone
when the test ends, passed or failed: L{Namespace.create} registers the
namespace's deletion with C{testCase.addCleanup}.  Deleting a namespace
removes its interfaces (a veth pair goes with either end), its iptables
rules and its conntrack entries; the processes running in it are killed
first, by PID, since a namespace outlives C{ip netns delete} as long as a
process is still inside.

Traffic stays inside these namespaces: a new namespace has nothing but a
loopback interface, and the only links made here are veth pairs between two
of our namespaces (both ends are created directly inside them, so nothing
ever appears in the host's namespace).

Typical use, in any C{unittest}-style test case (trial or not)::

    def setUp(self):
        requireNetns(self, "iptables")

    def test_something(self):
        cloud = Namespace.create(self, "tt")
        edge = Namespace.create(self, "tt")
        link(cloud, edge, "192.168.50.1/24", "192.168.50.2/24")
        edge.addDummy("10.200.0.7/32")
        cloud.addRoute("10.200.0.0/24", via="192.168.50.2")
        cloud.iptables("-t", "nat", "-A", "OUTPUT", ...)
        server = edge.spawn([sys.executable, "-m", ...], stdout=subprocess.PIPE)
        result = cloud.run("curl", "-sS", "http://10.200.0.7:10255/")

C{requireNetns} skips a test when namespaces cannot be made here (not root,
no C{ip}, a container without the capability), with the reason; under
C{CI=true} it fails instead, since CI is where these tests must run.

Waiting has a deadline: cleanup waits for a killed process on its pidfd,
and L{pollUntil} polls what nothing notifies (the kernel tears a deleted
namespace down asynchronously: the far end of a veth pair disappears a
little after C{ip netns delete} returns).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from attrs import frozen

__all__ = [
    "Link",
    "Namespace",
    "NetnsCommandError",
    "link",
    "netnsUnavailable",
    "pollUntil",
    "requireNetns",
]

#: How long one C{ip}/C{iptables} command may take.
COMMAND_TIMEOUT = 30.0

#: How long cleanup waits for the processes in a namespace to die.
KILL_TIMEOUT = 10.0

_names = itertools.count(1)
_interfaces = itertools.count(1)


class _TestCase(Protocol):
    """What we need of a test case (C{unittest.TestCase}, trial's, ...)."""

    def addCleanup(self, function: Any, /, *args: Any, **kwargs: Any) -> None: ...

    def skipTest(self, reason: str) -> Any: ...

    def fail(self, msg: Any = None) -> Any: ...


class NetnsCommandError(Exception):
    """A command run for a namespace failed; the message has its output."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with status {returncode}"
        super().__init__(
            f"{' '.join(self.argv)} {status}\n"
            f"--- stdout:\n{stdout.rstrip()}\n--- stderr:\n{stderr.rstrip()}"
        )


def pollUntil(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.01
) -> float:
    """
    Check C{condition} every C{interval} seconds until it holds, for things
    nothing notifies us of (the kernel finishing a namespace's teardown).

    @param what: What we wait for, for the failure message.
    @return: How many seconds it took.
    @raise AssertionError: It still did not hold after C{timeout} seconds.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            env=None if env is None else dict(env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else ""
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else ""
        raise NetnsCommandError(argv, None, out, err) from None
    if check and result.returncode != 0:
        raise NetnsCommandError(argv, result.returncode, result.stdout, result.stderr)
    return result


@functools.cache
def netnsUnavailable() -> str | None:
    """
    Why network namespaces cannot be used here, or C{None} if they can.

    Being root is not enough (a container may lack C{CAP_SYS_ADMIN}), so
    this makes and deletes a namespace once per process.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespace tests need root (ip netns, iptables)"
    if shutil.which("ip") is None:
        return "network namespace tests need the ip command (iproute2)"
    probe = f"tt-{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except (NetnsCommandError, OSError) as e:
        return f"cannot create a network namespace here: {str(e).strip()}"
    try:
        _run(["ip", "netns", "delete", probe])
    except (NetnsCommandError, OSError) as e:
        return f"cannot delete network namespace {probe}: {str(e).strip()}"
    return None


def requireNetns(testCase: _TestCase, *commands: str, mandatory: bool | None = None) -> None:
    """
    Skip C{testCase} unless network namespaces, and C{commands}, are usable.

    @param commands: Other programs the test runs, e.g. C{"iptables"},
        C{"ip6tables"}, C{"conntrack"}.
    @param mandatory: Fail instead of skipping.  By default, true when the
        environment says C{CI=true}: the end-to-end suite must run in CI.
    """
    reason = netnsUnavailable()
    if reason is None:
        missing = [command for command in commands if shutil.which(command) is None]
        if missing:
            reason = f"network namespace test needs {', '.join(missing)}, not found on PATH"
    if reason is None:
        return
    why = "this test must run here"
    if mandatory is None:
        mandatory = os.environ.get("CI") == "true"
        why = "CI=true, so this test must run"
    if mandatory:
        testCase.fail(f"{why}, but {reason}")
    testCase.skipTest(reason)


def _interfaceAddress(address: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """C{"10.0.0.1/24"} or C{"fd00::1"} (a host address) as an interface address."""
    return ipaddress.ip_interface(address)


class Namespace:
    """
    A network namespace made by a test, deleted when the test ends.

    Make them with L{create}.  C{name} is unique on the machine while the
    test runs (C{<prefix>-<pid>-<n>}).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.deleted = False
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Namespace {self.name}{' (deleted)' if self.deleted else ''}>"

    @classmethod
    def create(cls, testCase: _TestCase, name_prefix: str = "tt") -> Namespace:
        """
        Make a namespace with its loopback interface up; C{testCase}'s
        cleanup deletes it (see L{delete}).
        """
        while True:
            name = f"{name_prefix}-{os.getpid()}-{next(_names)}"
            if not os.path.exists(os.path.join("/run/netns", name)):
                break
        _run(["ip", "netns", "add", name])
        namespace = cls(name)
        testCase.addCleanup(namespace.delete)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    # Running things inside.

    def command(self, *argv: str) -> list[str]:
        """The command line that runs C{argv} inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside the namespace to completion; its output is text.

        @raise NetnsCommandError: It failed (with C{check}) or timed out; the
            message shows its stdout and stderr.
        """
        return _run(self.command(*argv), check=check, input=input, env=env, timeout=timeout)

    def spawn(self, argv: Sequence[str], **popenArguments: Any) -> subprocess.Popen[Any]:
        """
        Start a long-running C{argv} inside the namespace.

        It runs in a session of its own, and is killed (its process group,
        by PID) when the namespace is deleted, if it has not ended by then.
        C{popenArguments} go to L{subprocess.Popen} (C{stdout}, C{env}...).

        To run it under the reactor instead (e.g. with L{tests.realnet.Daemon}),
        spawn L{command}C{(*argv)}: C{ip netns exec} execs the program in
        place, so the PID is the program's, and L{delete} kills whatever is
        still inside the namespace anyway.
        """
        process = subprocess.Popen(self.command(*argv), start_new_session=True, **popenArguments)
        self._processes.append(process)
        return process

    def pids(self) -> list[int]:
        """The processes running inside the namespace now."""
        result = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(pid) for pid in result.stdout.split()]

    # Configuration.

    def ip(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run C{ip -n <name> <arguments>}."""
        return _run(["ip", "-n", self.name, *arguments])

    def addAddress(self, device: str, address: str) -> None:
        """
        Put C{address} (C{"10.0.0.1/24"}; a bare address is a host address)
        on C{device}.  IPv6 addresses skip duplicate address detection, so
        they are usable at once.
        """
        interface = _interfaceAddress(address)
        extra = ["nodad"] if interface.version == 6 else []
        self.ip("address", "add", interface.with_prefixlen, "dev", device, *extra)

    def addDummy(self, *addresses: str, name: str | None = None) -> str:
        """
        Add an interface that leads nowhere, up, with C{addresses}: a home
        for an address (or, with a prefix, a route) that packets never leave
        the namespace through.

        Kernels built without the C{dummy} driver get a veth pair whose both
        ends are in this namespace instead, which behaves the same here.

        @return: The interface's name.
        """
        name = name or f"d{os.getpid()}-{next(_interfaces)}"
        try:
            self.ip("link", "add", name, "type", "dummy")
        except NetnsCommandError as noDummy:
            peer = f"{name[:13]}p"
            try:
                self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
            except NetnsCommandError as noVeth:
                raise noVeth from noDummy
            self.ip("link", "set", peer, "up")
        for address in addresses:
            self.addAddress(name, address)
        self.ip("link", "set", name, "up")
        return name

    def addRoute(
        self, destination: str, *, via: str | None = None, device: str | None = None
    ) -> None:
        """Add a route to C{destination} (C{"10.200.0.0/24"} or C{"default"})."""
        arguments = ["route", "add", destination]
        if via is not None:
            arguments += ["via", via]
        if device is not None:
            arguments += ["dev", device]
        self.ip(*arguments)

    def sysctl(self, key: str, value: str) -> None:
        """Set C{key} (C{"net.ipv4.conf.all.route_localnet"}) in this namespace."""
        path = "/proc/sys/" + key.replace(".", "/")
        self.run("sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", value, path)

    def iptables(self, *arguments: str, version: int = 4) -> subprocess.CompletedProcess[str]:
        """Run C{iptables -w <arguments>} (C{ip6tables} for C{version=6}) in here."""
        return self.run(_iptables(version), "-w", *arguments)

    def iptablesRestore(self, rules: str, *, version: int = 4, noflush: bool = True) -> None:
        """Load C{rules} (C{iptables-save} format) with C{iptables-restore} in here."""
        command = f"{_iptables(version)}-restore"
        self.run(command, "-w", *(["--noflush"] if noflush else []), input=rules)

    def iptablesSave(self, table: str | None = None, *, version: int = 4) -> str:
        """What C{iptables-save} prints in here (one C{table}, or all)."""
        command = f"{_iptables(version)}-save"
        return self.run(command, *(["-t", table] if table else [])).stdout

    # The end.

    def delete(self) -> None:
        """
        Kill the processes inside (ours first, then any other, by PID), wait
        until none is left, and delete the namespace.  Idempotent.
        """
        if self.deleted:
            return
        for process in self._processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                process.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass  # Still inside: the sweep below tries again, and says so.
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self.pids():
            # Whatever else is inside (a grandchild, a process that Twisted
            # spawned): only tests made this namespace, so it is ours too.
            for pid in pids:
                self._kill(pid, deadline)
            if time.monotonic() > deadline:
                raise AssertionError(f"processes {pids} in {self.name} would not die")
        _run(["ip", "netns", "delete", self.name])
        self.deleted = True

    def _kill(self, pid: int, deadline: float) -> None:
        """
        Kill C{pid} if it is still inside this namespace, and wait for it to
        exit.  A pidfd makes this immune to the PID being reused meanwhile.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            try:
                inside = (
                    os.stat(f"/proc/{pid}/ns/net").st_ino
                    == os.stat(os.path.join("/run/netns", self.name)).st_ino
                )
            except OSError:
                return  # Gone already.
            if not inside:
                return
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                return
            # The pidfd becomes readable when the process has exited.
            select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(pidfd)


def _iptables(version: int) -> str:
    if version not in (4, 6):
        raise ValueError(f"IP version {version}: 4 or 6")
    return "iptables" if version == 4 else "ip6tables"


@frozen
class Link:
    """
    A veth pair between two namespaces.

    @ivar a, b: The namespaces; C{nameA} is the interface in C{a}, C{nameB}
        the one in C{b}.
    @ivar addressA, addressB: Their addresses, without prefix length.
    """

    a: Namespace
    b: Namespace
    nameA: str
    nameB: str
    addressA: str
    addressB: str


def link(a: Namespace, b: Namespace, addrA: str, addrB: str) -> Link:
    """
    Join C{a} and C{b} with a veth pair, up, with C{addrA} on C{a}'s end and
    C{addrB} on C{b}'s (C{"192.168.50.1/24"}: with a prefix length, each side
    gets the route to the other).

    Both ends are made inside the namespaces, never in the host's; the pair
    vanishes when either namespace is deleted.
    """
    number = next(_interfaces)
    nameA, nameB = f"v{os.getpid()}-{number}a", f"v{os.getpid()}-{number}b"
    a.ip("link", "add", nameA, "type", "veth", "peer", "name", nameB, "netns", b.name)
    a.addAddress(nameA, addrA)
    b.addAddress(nameB, addrB)
    a.ip("link", "set", nameA, "up")
    b.ip("link", "set", nameB, "up")
    return Link(
        a=a,
        b=b,
        nameA=nameA,
        nameB=nameB,
        addressA=str(_interfaceAddress(addrA).ip),
        addressB=str(_interfaceAddress(addrB).ip),
    )
