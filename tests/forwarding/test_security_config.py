# -*- test-case-name: tests.forwarding.test_security_config -*-
"""
Security regression tests for what the server reads from disk: the
C{edge-tunnel-server-cfg} ConfigMap (findings 4 and 5 of issue 12) and the
certificate and key files (finding 20).

Each class pins one finding with tests that fail on the code as it was.
Where the old code did not fail but hung or ate memory (the alias bomb, a
FIFO, C{/dev/zero}), the dangerous call runs in a child process with a
memory limit and a timeout (L{runGuarded}), or with a watchdog that
unblocks it (L{fifoWatchdog}), so the old code fails the test instead of
taking the test run down.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tests.pki import TestPKI, temporaryDirectory
from twisted_tunnel.errors import CredentialsError
from twisted_tunnel.files import FileRefused, readFile
from twisted_tunnel.forwarding.config import (
    MAX_ENTRIES_PER_KEY,
    MAX_YAML_NODES,
    ConfigError,
    ConfigWatcher,
    ProxyConfig,
    loadConfig,
    parseConfigData,
)
from twisted_tunnel.forwarding.policy import (
    BUILTIN_POLICIES,
    HTTPPolicy,
    IForwardingPolicy,
    PolicyError,
    findPolicy,
    knownPolicies,
    loadPolicy,
    parsePolicyOption,
)
from twisted_tunnel.tap import server as tapserver
from twisted_tunnel.tls import loadCredentials
from twisted_tunnel.tls.rotation import watchCredentials

pki = TestPKI()
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(ROOT, "examples")

#: A ConfigMap manifest that is fine, and what it means.
GOOD = "apiVersion: v1\nkind: ConfigMap\ndata:\n  http-proxy-ports: '9051'\n"
GOOD_CONFIG = ProxyConfig(httpPorts={9051})


def aliasBomb(levels: int = 9, where: str = "kind") -> bytes:
    """
    A "billion laughs" ConfigMap: 366 bytes whose C{kind} (or C{where})
    stands for 9**9 = 387 million strings; C{str()} of it needs gigabytes.
    """
    lines = ["apiVersion: v1", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    if where == "data":
        lines.append(f"data:\n  http-proxy-ports: *{previous}")
    else:
        lines.append(f"kind: *{previous}")
    return ("\n".join(lines) + "\n").encode()


def writeFile(path: str, content: str | bytes) -> None:
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)


def runGuarded(code: str, *, memory: int = 1 << 30, timeout: float = 60.0) -> str:
    """
    Run C{code} in a child Python with this checkout importable, its
    address space capped at C{memory} bytes once imports are done, killed
    after C{timeout} seconds; return what it printed.

    The old code, given an alias bomb or C{/dev/zero}, runs out of that
    memory or time, so a test fails where it would have taken the machine's
    memory; the code under test answers in milliseconds.
    """
    prelude = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {ROOT!r})
        import twisted_tunnel.forwarding.config, twisted_tunnel.tls, twisted_tunnel.tls.rotation
        resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s (blocked or expanding)") from None
    if done.returncode != 0:
        raise AssertionError(f"exit status {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


class AliasBombTests(SynchronousTestCase):
    """
    Finding 4: a 366-byte YAML alias bomb in the ConfigMap hung the reactor
    and ate memory until the kernel killed the server; every part of
    reading the ConfigMap is now bounded.
    """

    def load(self, content: str | bytes) -> ConfigError:
        path = os.path.join(temporaryDirectory(self), "cfg.yaml")
        writeFile(path, content)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        return caught.exception

    def test_bombSize(self) -> None:
        """The bomb is the small thing the issue says it is."""
        self.assertLess(len(aliasBomb()), 412)

    def test_bombRefusedInBoundedMemory(self) -> None:
        """
        Refused before anything is built, whichever value it hides in, with
        less than 256 KiB allocated at the peak.  (A bomb of 6 levels, not
        9, so that the old code, which expanded it, fails this test in
        megabytes rather than eating gigabytes: see the next test.)
        """
        for where in ("kind", "data"):
            tracemalloc.start()
            try:
                error = self.load(aliasBomb(levels=6, where=where))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            self.assertIn("anchors (&) and aliases (*) are not accepted", str(error))
            self.assertIn("line 2, column 4", str(error))
            self.assertLess(peak, 256 * 1024, where)
            self.assertLess(len(str(error)), 300)

    def test_bombRefusedInAChildWithLittleMemory(self) -> None:
        """
        Through L{loadConfig}, in a process that may use 1 GiB at most: the
        old code ran out of it (C{MemoryError} after 8 s here).
        """
        printed = runGuarded(
            f"""
            from twisted_tunnel.forwarding.config import ConfigError, loadConfig
            path = {os.path.join(temporaryDirectory(self), "bomb.yaml")!r}
            open(path, "wb").write({aliasBomb()!r})
            try:
                loadConfig(path)
            except ConfigError as e:
                print("refused:", e.reason)
            """
        )
        self.assertIn("refused: YAML refused: anchors (&) and aliases (*)", printed)

    def test_anchorAloneRefused(self) -> None:
        """An anchor without an alias is refused too: a ConfigMap has no use for either."""
        error = self.load("apiVersion: v1\nkind: &k ConfigMap\n")
        self.assertIn("anchors (&) and aliases (*)", error.reason)

    def test_tooManyNodes(self) -> None:
        items = ", ".join("0" for _ in range(MAX_YAML_NODES + 1))
        error = self.load(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{x: [{items}]}}\n")
        self.assertIn(f"more than {MAX_YAML_NODES} values", error.reason)

    def test_tooDeep(self) -> None:
        error = self.load("apiVersion: v1\nkind: ConfigMap\nmetadata: " + "[" * 40 + "]" * 40)
        self.assertIn("nested deeper than 32 levels", error.reason)

    def test_hugeIntegerRefusedAsConfigError(self) -> None:
        """An integer too long for int() is a refusal, not an escaping ValueError."""
        error = self.load("apiVersion: v1\nkind: ConfigMap\nmetadata: {x: " + "9" * 5000 + "}\n")
        self.assertIn("YAML does not parse: Exceeds the limit", error.reason)
        self.assertNotIn("set_int_max_str_digits", error.reason)

    def test_renderedValuesBounded(self) -> None:
        """
        Whatever a refusal quotes is bounded: the message to 120 characters
        of the value, the structured C{value} and C{key} fields to 4 KiB.
        """
        big = "x" * (1024 * 1024 - 100)
        for data in [{"http-proxy-ports": big}, {big: "9051"}, {"policy-ports": big}]:
            with self.assertRaises(ConfigError) as caught:
                parseConfigData(data)
            error = caught.exception
            self.assertLess(len(str(error)), 1000)
            self.assertLessEqual(len(error.value or ""), 4096 + 3)
            self.assertLessEqual(len(error.key or ""), 4096 + 3)
            self.assertLessEqual(len(error.reason), 600 + 3)

    def test_nonStringRenderedBounded(self) -> None:
        """A non-string value (from an API, say) is rendered bounded, not with repr()."""
        nested: list[Any] = ["lol"] * 9
        for _ in range(8):
            nested = [nested] * 9
        with self.assertRaises(ConfigError) as caught:
            parseConfigData({"http-proxy-ports": nested})  # type: ignore[dict-item]
        self.assertLessEqual(len(caught.exception.value or ""), 200 + 3)

    def test_entriesPerKeyBounded(self) -> None:
        value = ",".join(["9051"] * (MAX_ENTRIES_PER_KEY + 1))
        with self.assertRaises(ConfigError) as caught:
            parseConfigData({"http-proxy-ports": value})
        self.assertIn(f"more than {MAX_ENTRIES_PER_KEY} entries", caught.exception.reason)
        # as many as that is fine
        value = ",".join(str(1024 + n) for n in range(MAX_ENTRIES_PER_KEY))
        self.assertEqual(
            len(parseConfigData({"http-proxy-ports": value}).httpPorts), MAX_ENTRIES_PER_KEY + 1
        )

    def test_volumeFilesBounded(self) -> None:
        """A volume directory with more files than a ConfigMap has keys is refused unread."""
        directory = temporaryDirectory(self)
        for n in range(65):
            writeFile(os.path.join(directory, f"k{n}"), "")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(directory)
        self.assertIn("more than 64 files", caught.exception.reason)

    def test_watcherKeepsTheLastGoodConfig(self) -> None:
        """
        A bomb appearing under a running server: refused, visibly stale, the
        last good configuration in force, one bounded warning.
        """
        path = os.path.join(temporaryDirectory(self), "cfg.yaml")
        writeFile(path, GOOD)
        clock = Clock()
        changes: list[ProxyConfig] = []
        watcher = ConfigWatcher(path, clock, loadConfig(path), changes.append, interval=2)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        writeFile(path, aliasBomb(levels=6))
        with capturedLogs() as events:
            clock.advance(2)
        self.assertEqual(watcher.current, GOOD_CONFIG)
        self.assertEqual(changes, [])
        self.assertTrue(watcher.stale)
        self.assertEqual(watcher.refusals, 1)
        assert watcher.staleReason is not None
        self.assertIn("aliases", watcher.staleReason)
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertLess(len(formatEvent(warning)), 400)


class PolicyImportTests(SynchronousTestCase):
    """
    Finding 5: C{policy-ports} in the ConfigMap imported an arbitrary module
    and called it (C{9100=os:abort} killed the server); the ConfigMap now
    only names policies the operator installed or named, and any failure
    while applying a configuration marks it refused and stale.
    """

    def setUp(self) -> None:
        # A module that records being imported and its factory being called:
        # what os:abort would have done, made observable.
        self.calls: list[str] = []
        module = types.ModuleType("tt_hostile_policy")
        module.__dict__["factory"] = lambda: self.calls.append("called") or HTTPPolicy()
        self.patch(sys, "modules", {**sys.modules, "tt_hostile_policy": module})

    def resolveAsTheServerDoes(self, named: dict[str, IForwardingPolicy] | None = None) -> Any:
        known = knownPolicies({}, named or {})
        return lambda name: findPolicy(name, known)

    def test_importPathRefused(self) -> None:
        """An import path in policy-ports is refused, and nothing is called."""
        for spec in ["tt_hostile_policy:factory", "os:abort", "sys:exit", "os.path"]:
            with self.assertRaises(ConfigError) as caught:
                parseConfigData(
                    {"http-proxy-ports": "9100", "policy-ports": f"9100={spec}"},
                    resolvePolicy=self.resolveAsTheServerDoes(),
                )
            message = str(caught.exception)
            self.assertIn(f"no policy named {spec!r} (known: http, https, tcp)", message)
            self.assertIn("--policy NAME=package.module:attribute", message)
        self.assertEqual(self.calls, [])

    def test_findPolicyNeverImports(self) -> None:
        """L{findPolicy}, the ConfigMap's resolver, is a lookup and nothing else."""
        for spec in ["tt_hostile_policy:factory", "sys:exit"]:
            self.assertRaises(PolicyError, findPolicy, spec, {})
        self.assertEqual(self.calls, [])

    def test_knownNamesListedBounded(self) -> None:
        named = {f"p{n:02}": HTTPPolicy() for n in range(30)}
        with self.assertRaises(PolicyError) as caught:
            findPolicy("x" * 10_000, knownPolicies({}, named))
        message = str(caught.exception)
        self.assertIn("and 13 more", message)
        self.assertLess(len(message), 400)

    def test_namedOnTheCommandLine(self) -> None:
        """What the operator names with --policy, the ConfigMap may bind by that name."""
        name, spec = parsePolicyOption("strict=tt_hostile_policy:factory")
        named = {name: loadPolicy(spec)}
        self.assertEqual(self.calls, ["called"])
        config = parseConfigData(
            {"http-proxy-ports": "9100", "policy-ports": "9100=strict"},
            resolvePolicy=self.resolveAsTheServerDoes(named),
        )
        self.assertEqual(config.policyName(9100), "strict")
        self.assertEqual(self.calls, ["called"])

    def test_policyOptionRefusals(self) -> None:
        for text, words in [
            ("strict", "expected NAME=package.module:attribute"),
            ("=m:a", "expected NAME=package.module:attribute"),
            ("a.b=m:a", "may hold only letters"),
            ("a:b=m:a", "may hold only letters"),
            ("http=m:a", "is a built-in policy's name"),
            ("strict=module", "expected package.module:attribute after '='"),
        ]:
            with self.assertRaises(PolicyError) as caught:
                parsePolicyOption(text)
            self.assertIn(words, str(caught.exception), text)

    def test_loadPolicyFactoryExits(self) -> None:
        """A factory that calls sys.exit is a broken policy: one PolicyError line."""
        module = sys.modules["tt_hostile_policy"]
        module.__dict__["exits"] = lambda: sys.exit(3)
        with self.assertRaises(PolicyError) as caught:
            loadPolicy("tt_hostile_policy:exits")
        self.assertIn("calling exits failed: SystemExit: 3", str(caught.exception))

    def watcher(self, onChange: Any, resolve: Any = None) -> tuple[ConfigWatcher, Clock, str]:
        path = os.path.join(temporaryDirectory(self), "cfg.yaml")
        writeFile(path, GOOD)
        clock = Clock()
        watcher = ConfigWatcher(
            path, clock, loadConfig(path), onChange, interval=2, resolvePolicy=resolve
        )
        watcher.startService()
        self.addCleanup(watcher.stopService)
        writeFile(path, GOOD.replace("'9051'", "'9051, 9100'"))
        return watcher, clock, path

    def assertRefusedAndStale(self, watcher: ConfigWatcher, clock: Clock, words: str) -> None:
        with capturedLogs() as events:
            clock.advance(2)
        self.assertEqual(watcher.current, GOOD_CONFIG)
        self.assertTrue(watcher.stale)
        self.assertEqual(watcher.refusals, 1)
        assert watcher.staleReason is not None
        self.assertIn(words, watcher.staleReason)
        [line] = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertIn("config refused, the last good one stays active", formatEvent(line))
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_observerSystemExit(self) -> None:
        """
        C{SystemExit} from applying a configuration (an observer, a policy
        factory) refuses it, visibly; the old code let it escape into the
        reactor, which logged and swallowed it, the config never stale.
        """
        applied: list[ProxyConfig] = []

        def onChange(config: ProxyConfig) -> None:
            applied.append(config)
            if config != GOOD_CONFIG:
                sys.exit(1)

        watcher, clock, _ = self.watcher(onChange)
        self.assertRefusedAndStale(watcher, clock, "applying it failed: SystemExit: 1")
        self.flushLoggedErrors(SystemExit)
        # the observer was handed the last good configuration back
        self.assertEqual(applied[-1], GOOD_CONFIG)
        # not retried at every poll, but after a delay; then taken when it works
        clock.advance(2)
        self.assertEqual(len(applied), 2)
        applied.clear()
        watcher.onChange = applied.append
        clock.advance(watcher.retryDelays[0])
        self.assertEqual(applied, [ProxyConfig(httpPorts={9051, 9100})])
        self.assertFalse(watcher.stale)

    def test_resolverSystemExit(self) -> None:
        """A resolver that raises SystemExit (the old findPolicy on sys:exit) refuses."""

        def resolve(name: str) -> object:
            sys.exit(0)

        watcher, clock, path = self.watcher(lambda config: None, resolve)
        writeFile(path, GOOD + "  policy-ports: '9051=x'\n")
        self.assertRefusedAndStale(watcher, clock, "reading it failed: SystemExit")
        self.flushLoggedErrors(SystemExit)

    def test_keyboardInterruptNotedThenRaised(self) -> None:
        """KeyboardInterrupt still interrupts a poll by hand, once the refusal is noted."""

        def onChange(config: ProxyConfig) -> None:
            if config != GOOD_CONFIG:
                raise KeyboardInterrupt()

        watcher, _, _ = self.watcher(onChange)
        with capturedLogs():
            self.assertRaises(KeyboardInterrupt, watcher.poll)
        self.flushLoggedErrors(KeyboardInterrupt)
        self.assertTrue(watcher.stale)
        self.assertEqual(watcher.current, GOOD_CONFIG)


class PolicyOptionTests(SynchronousTestCase):
    """
    Finding 5, on the command line: C{--policy NAME=module:attribute} is how
    an operator names a policy; the ConfigMap binds it by name.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory)
        sys.path.insert(0, EXAMPLES)
        self.addCleanup(sys.path.remove, EXAMPLES)
        self.addCleanup(sys.modules.pop, "metrics_only", None)

    def options(self, *args: str) -> tapserver.Options:
        options = tapserver.Options()
        options.parseOptions([*self.paths.options(), "--no-iptables", *args])
        return options

    def config(self, policyPorts: str) -> str:
        path = os.path.join(self.directory, "cfg.yaml")
        writeFile(path, GOOD + f"  policy-ports: '{policyPorts}'\n")
        return path

    def fatal(self, *args: str) -> str:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        with self.assertRaises(SystemExit):
            tapserver.makeService(self.options(*args))
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        return stderr.getvalue()

    def test_boundByName(self) -> None:
        path = self.config("9051=metrics-only")
        service = tapserver.makeService(
            self.options("--config", path, "--policy", "metrics-only=metrics_only:policy")
        )
        watcher = service.getServiceNamed("--config")
        assert isinstance(watcher, ConfigWatcher)
        self.assertEqual(watcher.current.policyName(9051), "metrics-only")
        state = watcher.onChange.__self__  # type: ignore[attr-defined]
        self.assertEqual(state.custom()[9051].name, "metrics-only")

    def test_importPathInConfigMapStopsStartup(self) -> None:
        line = self.fatal("--config", self.config("9051=metrics_only:policy"))
        self.assertIn("no policy named 'metrics_only:policy'", line)
        self.assertNotIn("metrics_only", sys.modules)

    def test_badPolicyOption(self) -> None:
        for spec in ["nope", "http=metrics_only:policy", "a.b=metrics_only:policy"]:
            self.assertRaises(UsageError, self.options, "--policy", spec)
        self.assertRaises(
            UsageError,
            self.options,
            "--policy",
            "m=metrics_only:policy",
            "--policy",
            "m=metrics_only:policy",
        )

    def test_unloadablePolicyStopsStartup(self) -> None:
        line = self.fatal("--policy", "m=metrics_only:nothing")
        self.assertIn("--policy m=metrics_only:nothing", line)
        self.assertIn("has no nothing", line)

    def test_builtinsStillKnown(self) -> None:
        for name in BUILTIN_POLICIES:
            self.assertIs(findPolicy(name, {}), BUILTIN_POLICIES[name])


@contextmanager
def fifoWatchdog(path: str, deadline: float = 10.0) -> Iterator[list[bool]]:
    """
    Make a FIFO at C{path}; should whatever runs inside block on it (as
    C{open()} does, waiting for a writer), open it for writing after
    C{deadline} seconds so that it returns, and record it: the test then
    fails instead of hanging.  The list yielded holds C{True} if it had to.
    """
    os.mkfifo(path)
    done = threading.Event()
    fired: list[bool] = []

    def unblock() -> None:
        if done.wait(deadline):
            return
        fired.append(True)
        while not done.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet (ENXIO)
                pass
            done.wait(0.05)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
        thread.join()


class UnsafeFileTests(SynchronousTestCase):
    """
    Finding 20: certificate and config files were read blocking and
    unbounded on the reactor thread (a FIFO swapped in under C{..data} froze
    C{/healthz}; C{/dev/zero} would exhaust memory); only regular files are
    read now, without blocking, and at most 1 MiB of them.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.paths = pki.paths(pki.server, self.directory)

    def test_readFileRefusesFIFO(self) -> None:
        path = os.path.join(self.directory, "fifo")
        with fifoWatchdog(path) as fired:
            with self.assertRaises(FileRefused) as caught:
                readFile(path)
        self.assertEqual(fired, [])
        self.assertEqual(caught.exception.strerror, "not a regular file (a FIFO)")

    def test_readFileRefusesDevZero(self) -> None:
        link = os.path.join(self.directory, "zero")
        os.symlink("/dev/zero", link)
        with self.assertRaises(FileRefused) as caught:
            readFile(link)
        self.assertEqual(caught.exception.strerror, "not a regular file (a character device)")

    def test_readFileBounded(self) -> None:
        path = os.path.join(self.directory, "big")
        with open(path, "wb") as f:
            f.truncate(100)
        self.assertEqual(readFile(path, 100), b"\0" * 100)
        with self.assertRaises(FileRefused) as caught:
            readFile(path, 99)
        self.assertIn("larger than 99 bytes", caught.exception.strerror or "")

    def test_readFileFollowsSymlinks(self) -> None:
        """Secret and ConfigMap volumes are symlinks: followed."""
        link = os.path.join(self.directory, "link")
        os.symlink(self.paths.cert, link)
        with open(self.paths.cert, "rb") as f:
            self.assertEqual(readFile(link), f.read())

    def test_certificateFIFO(self) -> None:
        """A FIFO as the certificate: one line naming the option and path, at once."""
        path = os.path.join(self.directory, "fifo.pem")
        with fifoWatchdog(path) as fired:
            with self.assertRaises(CredentialsError) as caught:
                loadCredentials(self.paths.ca, path, self.paths.key)
        self.assertEqual(fired, [])
        self.assertEqual(
            str(caught.exception),
            f"--cert {path}: not a regular file (a FIFO); a certificate or key file is expected",
        )

    def test_certificateTooLarge(self) -> None:
        """A file of more than 1 MiB is refused unread (the old code read it all)."""
        path = os.path.join(self.directory, "huge.pem")
        with open(path, "wb") as f:
            f.truncate(1024 * 1024 + 1)
        with self.assertRaises(CredentialsError) as caught:
            loadCredentials(path, self.paths.cert, self.paths.key)
        self.assertIn(f"--ca {path}: larger than 1 MiB", str(caught.exception))

    def test_configFIFO(self) -> None:
        """A key file of a ConfigMap volume that is a FIFO: refused at once, naming it."""
        volume = os.path.join(self.directory, "config")
        os.mkdir(volume)
        with fifoWatchdog(os.path.join(volume, "http-proxy-ports")) as fired:
            with self.assertRaises(ConfigError) as caught:
                loadConfig(volume)
        self.assertEqual(fired, [])
        self.assertEqual(caught.exception.key, "http-proxy-ports")
        self.assertIn("not a regular file (a FIFO)", str(caught.exception))

    def test_rotationFIFO(self) -> None:
        """
        The rotation watcher, polling on the reactor, meets a FIFO swapped in
        for the certificate: it does not block, and refuses the rotation.
        """
        clock = Clock()
        changes: list[object] = []
        watcher = watchCredentials(self.paths.load(), changes.append, clock, interval=10)
        assert watcher is not None
        fifo = os.path.join(self.directory, "swap")
        with fifoWatchdog(fifo) as fired:
            os.rename(fifo, self.paths.cert)
            with capturedLogs() as events:
                self.assertFalse(watcher.poll())
        self.assertEqual(fired, [])
        self.assertEqual(changes, [])
        [error] = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertIn("not a regular file (a FIFO)", formatEvent(error))

    def test_devZeroEverywhereInAChild(self) -> None:
        """
        C{/dev/zero} behind the certificate, a ConfigMap key, and the
        rotation watcher's files, in a process limited to 1 GiB: the old
        code read it until it ran out (certificates, rotation).
        """
        directory = temporaryDirectory(self)
        printed = runGuarded(
            f"""
            import os
            from twisted_tunnel.forwarding.config import ConfigError, loadConfig
            from twisted_tunnel.errors import CredentialsError
            from twisted_tunnel.tls.rotation import CredentialsWatcher
            from twisted_tunnel.tls import loadCredentials
            directory = {directory!r}
            zero = os.path.join(directory, "zero")
            os.symlink("/dev/zero", zero)
            try:
                loadCredentials({self.paths.ca!r}, zero, {self.paths.key!r})
            except CredentialsError as e:
                print("tls:", e)
            os.mkdir(os.path.join(directory, "config"))
            os.symlink("/dev/zero", os.path.join(directory, "config", "tcp-proxy-ports"))
            try:
                loadConfig(os.path.join(directory, "config"))
            except ConfigError as e:
                print("config:", e.reason)
            watcher = CredentialsWatcher(lambda: None, [zero], print, None)
            print("rotation: read")
            """
        )
        self.assertIn("tls: --cert ", printed)
        self.assertIn("not a regular file (a character device)", printed)
        self.assertIn("config: not a regular file (a character device)", printed)
        self.assertIn("rotation: read", printed)
