"""The data shapes passed between stages.

One shape between stages: a *long frame* of observations in (:class:`SeriesBatch`),
:class:`AnomalyEvent` objects out, :class:`Explanation` objects on top.

Long frame columns (``SERIES_COLUMNS``):
    ``series_id`` (str), ``ts`` (``datetime64[ns, UTC]``), ``value`` (float64; NaN = missing).

Forecast frame columns (``FORECAST_COLUMNS``):
    ``series_id``, ``ts``, ``yhat``, ``yhat_lower``, ``yhat_upper``.

A series id is the Prometheus text form of its label set with labels sorted, e.g.
``http_requests_total{instance="a:9100",job="node"}``; it is stable for a label set and
readable by people. :func:`series_id` builds it and :func:`parse_series_id` reads it back.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

import pandas as pd

SERIES_COLUMNS = ("series_id", "ts", "value")
FORECAST_COLUMNS = ("series_id", "ts", "yhat", "yhat_lower", "yhat_upper")
SCORE_COLUMNS = ("series_id", "ts", "value", "anomaly_score", "yhat", "yhat_lower", "yhat_upper")

Direction = Literal["spike", "drop", "level_shift", "trend_change"]
Severity = Literal["info", "warning", "critical"]

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def series_id(labels: Mapping[str, str]) -> str:
    """Stable, readable id for a label set: ``name{a="1",b="2"}`` with labels sorted.

    The ``__name__`` label becomes the prefix; a label set without one is just ``{...}``.
    """
    name = labels.get("__name__", "")
    rest = sorted((k, v) for k, v in labels.items() if k != "__name__")
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in rest)
    if not rest:
        return name or "{}"
    return f"{name}{{{inner}}}"


_ID_RE = re.compile(r'^\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(?P<body>.*)\})?\s*$', re.S)
_PAIR_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_series_id(text: str) -> dict[str, str]:
    """Inverse of :func:`series_id`. A bare name gives ``{"__name__": name}``.

    Raises:
        ValueError: ``text`` is not of the form ``name{label="value",...}``.
    """
    m = _ID_RE.match(text)
    if not m or (m.group("name") is None and m.group("body") is None):
        raise ValueError(f"not a series id: {text!r} (expected name{{label=\"value\",...}})")
    labels: dict[str, str] = {}
    if m.group("name"):
        labels["__name__"] = m.group("name")
    body = (m.group("body") or "").strip()
    pos = 0
    while pos < len(body):
        pm = _PAIR_RE.match(body, pos)
        if not pm:
            raise ValueError(f"not a series id: {text!r} (cannot read labels at {body[pos:]!r})")
        raw = pm.group(2)
        labels[pm.group(1)] = (
            raw.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        )
        pos = pm.end()
    return labels


@dataclass
class SeriesBatch:
    """Observations of one or more series plus what we know about them.

    Attributes:
        frame: long frame with ``SERIES_COLUMNS``; sorted by series_id then ts; NaN = missing.
        labels: series_id -> label set (including ``__name__`` when known).
        step: the sampling step when the source is regular (Prometheus range queries are).
        watch: the watch that fetched it, if any.
    """

    frame: pd.DataFrame
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    step: pd.Timedelta | None = None
    watch: str | None = None

    @property
    def series_ids(self) -> list[str]:
        return list(self.labels) if self.labels else sorted(self.frame["series_id"].unique())

    def __len__(self) -> int:
        return len(self.frame)

    def wide(self) -> pd.DataFrame:
        """Frame indexed by ts with one column per series (missing steps are NaN)."""
        return self.frame.pivot_table(
            index="ts", columns="series_id", values="value", aggfunc="last", dropna=False
        ).sort_index()


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series_id": pd.Series([], dtype="object"),
            "ts": pd.Series([], dtype="datetime64[ns, UTC]"),
            "value": pd.Series([], dtype="float64"),
        }
    )


@dataclass
class AnomalyEvent:
    """A contiguous run of anomalous scores on one series.

    ``end`` is None while the event is ongoing. ``observed``/``expected`` are at the peak;
    ``expected_lower``/``expected_upper`` are the calibrated band there.
    """

    watch: str
    series_id: str
    start: datetime
    end: datetime | None
    peak_time: datetime
    peak_score: float
    severity: Severity
    direction: Direction
    observed: float
    expected: float
    expected_lower: float
    expected_upper: float
    labels: dict[str, str] = field(default_factory=dict)
    id: int | None = None

    @property
    def ongoing(self) -> bool:
        return self.end is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("start", "end", "peak_time"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d


@dataclass
class EvidenceItem:
    """One fact the code computed, with its number, unit and where it came from."""

    kind: str  # e.g. "deviation", "co_anomaly", "change", "capacity", "runbook", "alert"
    text: str
    value: float | None = None
    unit: str | None = None
    source: str | None = None  # the PromQL query, file or URL it came from
    priority: int = 50  # lower = more important; trimming drops the highest numbers first
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    """Everything the explainer may say, computed before any LLM sees it."""

    subject: str  # what is being explained: a series id or an alert name
    items: list[EvidenceItem] = field(default_factory=list)
    untrusted: dict[str, str] = field(default_factory=dict)  # alert labels/annotations, verbatim


@dataclass
class Cause:
    name: str
    confidence: float
    reason: str


@dataclass
class Explanation:
    """What an operator reads: short, specific, with what to check next."""

    title: str
    summary: str
    causes: list[Cause] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    next_checks: list[str] = field(default_factory=list)
    narrative: str = ""
    backend: str = "template"
    guard_note: str | None = None  # why an LLM narrative was replaced, if it was

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
