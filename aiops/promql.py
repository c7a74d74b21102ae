"""Vector selectors: the part of PromQL aiops evaluates itself.

``name{label="v", other!="x", re=~"a|b", nre!~"c.*"}``: the embedded sources and the read API
match label sets with these. Regexes are fully anchored, as in Prometheus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from aiops.errors import BadQuery

_SEL_RE = re.compile(r"^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<body>.*)\})?\s*$", re.S)
_MATCHER_RE = re.compile(
    r'\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*'
    r'(?P<q>["\'`])(?P<value>(?:\\.|(?!(?P=q)).)*)(?P=q)\s*(?:,|$)'
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # one of = != =~ !~
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    matchers: tuple[Matcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    @property
    def metric_name(self) -> str | None:
        for m in self.matchers:
            if m.label == "__name__" and m.op == "=":
                return m.value
        return None


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def parse_selector(text: str) -> Selector:
    """Parse an instant vector selector.

    Raises:
        BadQuery: ``text`` is not a plain vector selector; the message says what is served.
    """
    m = _SEL_RE.match(text)
    if not m or (m.group("name") is None and m.group("body") is None):
        raise BadQuery(
            f"only vector selectors like name{{label=\"value\"}} are supported here, got {text!r}",
            query=text,
        )
    matchers: list[Matcher] = []
    if m.group("name"):
        matchers.append(Matcher("__name__", "=", m.group("name")))
    body = (m.group("body") or "").strip()
    pos = 0
    while pos < len(body):
        mm = _MATCHER_RE.match(body, pos)
        if not mm:
            raise BadQuery(f"cannot parse label matcher at {body[pos:]!r} in {text!r}", query=text)
        value = _unescape(mm.group("value"))
        if mm.group("op") in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise BadQuery(f"invalid regex {value!r} in {text!r}: {exc}", query=text) from None
        matchers.append(Matcher(mm.group("label"), mm.group("op"), value))
        pos = mm.end()
    if not any(not (mt.op in ("=~", "!~") and re.fullmatch(mt.value, "")) and mt.op != "!=" for mt in matchers):
        raise BadQuery(
            f"vector selector {text!r} must contain at least one matcher that does not match empty",
            query=text,
        )
    return Selector(tuple(matchers))
