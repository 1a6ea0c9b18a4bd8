# -*- test-case-name: tests.kube.test_nodes -*-
"""
Label selectors, as C{kubectl get -l} takes them, matched against an
object's labels here: the server watches every Node (all of them claim
addresses, see L{twisted_tunnel.server.directory}) and tells the edge nodes
apart by the operator's selector.

Only the equality-based forms and existence are taken (C{k=v}, C{k==v},
C{k!=v}, C{k}, C{!k}, joined by commas): what the documented choices need
(ACK's C{alibabacloud.com/is-edge-worker=true}, OpenYurt's
C{openyurt.io/is-edge-worker=true}).  A set-based form (C{k in (a,b)}) is
refused with a clear message rather than misread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from attrs import frozen

__all__ = ["LabelSelector", "SelectorError"]

#: A label key: an optional DNS prefix and a name (Kubernetes' rules).
_KEY = re.compile(
    r"(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
#: A label value (may be empty).
_VALUE = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
#: The longest selector taken.
MAX_SELECTOR = 1024


class SelectorError(ValueError):
    """A selector this module does not take, with why."""


@frozen
class _Requirement:
    key: str
    operator: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


@frozen
class LabelSelector:
    """A parsed selector: every requirement must hold (an empty one matches all)."""

    text: str
    requirements: tuple[_Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """
        @raise SelectorError: a form not taken, a key or value Kubernetes
            would refuse, or a selector longer than L{MAX_SELECTOR}.
        """
        if len(text) > MAX_SELECTOR:
            raise SelectorError(f"longer than {MAX_SELECTOR} characters")
        requirements = []
        for part in (p.strip() for p in text.split(",")) if text.strip() else ():
            requirements.append(_parseRequirement(part))
        return cls(text, tuple(requirements))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether C{labels} satisfy every requirement."""
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


def _parseRequirement(part: str) -> _Requirement:
    if " in " in f" {part} " or " notin " in f" {part} " or "(" in part:
        raise SelectorError(
            f"{part!r}: set-based requirements are not taken; use k=v, k!=v, k or !k"
        )
    for operator, name in (("!=", "!="), ("==", "="), ("=", "=")):
        if operator in part:
            key, value = (side.strip() for side in part.split(operator, 1))
            return _Requirement(_key(key, part), name, _value(value, part))
    if part.startswith("!"):
        return _Requirement(_key(part[1:].strip(), part), "!exists")
    return _Requirement(_key(part, part), "exists")


def _key(key: str, part: str) -> str:
    if not _KEY.fullmatch(key) or len(key) > 316:
        raise SelectorError(f"{part!r}: {key!r} is not a label key")
    return key


def _value(value: str, part: str) -> str:
    if not _VALUE.fullmatch(value):
        raise SelectorError(f"{part!r}: {value!r} is not a label value")
    return value
