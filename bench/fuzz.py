"""
The fuzzing campaign: the properties of C{tests/package/test_fuzz.py}, with random
seeds and inputs eight times larger, for as long as it is given.

Why (issue 12): a peer or a client reaches four parsers (the wire codec,
HELLO, HTTP/1 and, through whoever may edit it, the ConfigMap).  Under
C{make test} each property runs a fixed, derandomized set of examples, a few
seconds in all, so that CI stays deterministic.  This runs the same
properties as a campaign: each property is called again and again (each
call is C{LONG_EXAMPLES} fresh random examples) until its share of the time
is used, and the report says, per property, how many examples ran, for how
long, and what failed.  A failure prints Hypothesis' minimal example; the
exit status is then 1.

Time and memory are measured here, not asserted in the tests: each
property runs in a child process of its own, and the report gives that
process's peak RSS, so that a parser that holds memory in proportion to
its input shows up, and no property is charged for another's garbage.

    usage: make fuzz [FUZZ_SECONDS=600]
           fuzz.py [--seconds S] [--only SUBSTRING]...
           fuzz.py --child CLASS.METHOD --seconds S   (one property, one row)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
import unittest
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def properties(module: object) -> Iterator[tuple[type[unittest.TestCase], str]]:
    """Every Hypothesis property of C{module}: (test case class, method name)."""
    for name in sorted(vars(module)):
        cls = getattr(module, name)
        if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
            continue
        if cls.__module__ != getattr(module, "__name__", None):
            continue
        for attribute in sorted(vars(cls)):
            method = getattr(cls, attribute)
            if attribute.startswith("test") and hasattr(method, "hypothesis"):
                yield cls, attribute


def peakRSSMiB() -> float:
    """This process's peak resident set so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def runProperty(module: object, cls: type[unittest.TestCase], name: str, seconds: float) -> bool:
    """
    Call one property again and again for C{seconds}; print its row.

    @return: whether it held.
    """
    examples = getattr(module, "LONG_EXAMPLES", 0)
    started = time.monotonic()
    calls = 0
    held = True
    while time.monotonic() - started < seconds:
        result = unittest.TestResult()
        cls(name).run(result)
        calls += 1
        problems = result.errors + result.failures
        if problems:
            held = False
            for _, text in problems:
                print(f"\n<!-- {cls.__name__}.{name} -->\n```\n{text}\n```\n", file=sys.stderr)
            break
    elapsed = time.monotonic() - started
    print(
        f"| {cls.__name__}.{name} | {calls} | {calls * examples} | {elapsed:.0f} "
        f"| {peakRSSMiB():.0f} | {'ok' if held else 'FAILED'} |",
        flush=True,
    )
    return held


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="the whole campaign's time (default 600)"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only properties whose name holds this"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    # must be set before the module is imported: it picks its settings then
    os.environ["TWISTED_TUNNEL_FUZZ"] = "long"
    sys.path.insert(0, str(ROOT))
    from tests.package import test_fuzz

    found = {f"{cls.__name__}.{name}": (cls, name) for cls, name in properties(test_fuzz)}
    if options.child:
        cls, name = found[options.child]
        return 0 if runProperty(test_fuzz, cls, name, options.seconds) else 1
    chosen = [
        label for label in found if not options.only or any(p in label for p in options.only)
    ]
    if not chosen:
        print("fuzz.py: no property matches", file=sys.stderr)
        return 2
    share = options.seconds / len(chosen)
    print(f"# Fuzzing campaign: {len(chosen)} properties, {share:.0f} s each\n")
    print(f"Python {sys.version.split()[0]}, examples per call: {test_fuzz.LONG_EXAMPLES}\n")
    print("| property | calls | examples | seconds | peak RSS MiB | result |")
    print("|---|---:|---:|---:|---:|---|", flush=True)
    failed = 0
    for label in chosen:
        child = subprocess.run(
            [sys.executable, __file__, "--child", label, "--seconds", str(share)],
            check=False,
        )
        failed += child.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
