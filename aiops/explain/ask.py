"""Questions in plain words ("why is checkout slow since 10:00?") answered from evidence.

The question's words are matched to watch names and queries, to anomaly events in the store
(watch, series and labels), and to knowledge-base passages; what matches becomes evidence,
narrated through the same explainer (backend, guard, cache) as any anomaly, with its sources
(queries, runbooks) listed in the explanation's next checks.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiops.config import AiopsConfig
from aiops.errors import InputError
from aiops.explain.evidence import runbook_items
from aiops.explain.kb import KnowledgeBase, tokenize
from aiops.types import AnomalyEvent, Evidence, EvidenceItem, Explanation

logger = logging.getLogger(__name__)

_CLOCK_RE = re.compile(r"\b(?:since|after|from)\s+(\d{1,2}):(\d{2})\b", re.I)
_AGO_RE = re.compile(r"\b(?:last|past)\s+(\d+)?\s*(minute|min|hour|h|day|d)s?\b", re.I)
_SINCE_ISO_RE = re.compile(r"\bsince\s+(\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?Z?)", re.I)
_UNIT = {"minute": 60, "min": 60, "hour": 3600, "h": 3600, "day": 86400, "d": 86400}


def question_since(question: str, now: datetime | None = None) -> datetime | None:
    """The start time a question names: ``since 10:00`` (UTC, today or yesterday),
    ``since 2024-05-01T10:00``, ``in the last 2 hours``; None when it names none."""
    from aiops.timeutil import parse_time

    now = now or datetime.now(timezone.utc)
    m = _SINCE_ISO_RE.search(question)
    if m:
        return parse_time(m.group(1)).to_pydatetime()
    m = _CLOCK_RE.search(question)
    if m:
        hh, mm = int(m.group(1)), int(m.group(2))
        if hh < 24 and mm < 60:
            t = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
            return t if t <= now else t - timedelta(days=1)
    m = _AGO_RE.search(question)
    if m:
        return now - timedelta(seconds=int(m.group(1) or 1) * _UNIT[m.group(2).lower()])
    return None


def _overlap(words: set[str], text: str) -> int:
    return len(words & set(tokenize(text)))


def _fmt(x: float | None) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:.4g}"


def event_item(ev: AnomalyEvent, *, query: str | None = None, priority: int = 10) -> EvidenceItem:
    """An anomaly event as one evidence item (its numbers exactly as stored)."""
    state = "ongoing" if ev.end is None else f"ended {ev.end:%Y-%m-%d %H:%M} UTC"
    text = (
        f"{ev.severity} {ev.direction.replace('_', ' ')} on {ev.series_id} (watch {ev.watch}) since "
        f"{ev.start:%Y-%m-%d %H:%M} UTC, {state}: observed {_fmt(ev.observed)} vs expected "
        f"{_fmt(ev.expected)} (band {_fmt(ev.expected_lower)} to {_fmt(ev.expected_upper)}), "
        f"peak score {_fmt(ev.peak_score)} at {ev.peak_time:%H:%M}"
    )
    return EvidenceItem("event", text, float(ev.peak_score), "score", query, priority,
                        {"event_id": ev.id, "watch": ev.watch, "series_id": ev.series_id})


def _load_kb(config: AiopsConfig) -> KnowledgeBase | None:
    index = Path(config.explain.kb_index_dir)
    if (index / "passages.json").exists():
        return KnowledgeBase.load(index)
    if config.explain.runbooks_dir and Path(config.explain.runbooks_dir).is_dir():
        return KnowledgeBase.build(config.explain.runbooks_dir)
    return None


def question_evidence(
    question: str,
    *,
    config: AiopsConfig,
    store: Any = None,
    kb: KnowledgeBase | None = None,
    now: datetime | None = None,
    max_events: int = 5,
    max_passages: int = 3,
) -> Evidence:
    """Evidence for a question: matching watches, their events in the store, KB passages."""
    words = set(tokenize(question))
    since = question_since(question, now)
    window = since or (now or datetime.now(timezone.utc)) - timedelta(days=1)
    queries = {w.name: w.query for w in config.watches}
    scored_watches = sorted(
        ((_overlap(words, f"{w.name} {w.query}"), w) for w in config.watches), key=lambda t: -t[0]
    )
    watches = [w for s, w in scored_watches if s > 0]
    items: list[EvidenceItem] = []
    if store is not None:
        events = store.events(since=window, limit=500)
        names = {w.name for w in watches}
        ranked = []
        for ev in events:
            s = _overlap(words, f"{ev.watch} {ev.series_id} {' '.join(ev.labels.values())}")
            s += 2 * (ev.watch in names)
            ranked.append((s, ev.peak_score, ev))
        # a question naming nothing known ("what is wrong?") gets the strongest recent events
        hits = [t for t in ranked if t[0] > 0] or ([] if watches else ranked)
        hits.sort(key=lambda t: (-t[0], -t[1]))
        for rank, (_, _, ev) in enumerate(hits[:max_events]):
            items.append(event_item(ev, query=queries.get(ev.watch), priority=10 + rank))
        seen = {ev.watch for _, _, ev in hits[:max_events]}
        for w in watches:
            if w.name not in seen:
                items.append(EvidenceItem(
                    "watch", f"watch {w.name} shows no anomaly event since {window:%Y-%m-%d %H:%M} UTC",
                    None, None, w.query, 30, {"watch": w.name},
                ))
    kb = kb if kb is not None else _load_kb(config)
    if kb is not None:
        items += runbook_items(kb.search, question, max_passages)
    if not items:
        items.append(EvidenceItem(
            "note", f"no anomaly event, watch or runbook passage matches the question (events since "
            f"{window:%Y-%m-%d %H:%M} UTC were searched)", None, None, None, 0,
        ))
    return Evidence(subject=question.strip()[:120], items=items)


def answer_question(
    question: str,
    *,
    config: AiopsConfig,
    store: Any = None,
    kb: KnowledgeBase | None = None,
    source: Any = None,
    explainer: Any = None,
) -> Explanation:
    """Answer ``question`` from the store's events, the watches and the knowledge base.

    Args:
        question: the operator's question.
        config: the whole configuration (watches and the ``explain`` section).
        store: an :class:`aiops.store.Store` to look up anomaly events in.
        kb: a knowledge base; default: the index at ``explain.kb_index_dir`` when built.
        source: a metric source (reserved for live look-ups; unused for now).
        explainer: reuse this :class:`~aiops.explain.explainer.Explainer` (and its cache).

    Raises:
        InputError: the question is empty.
    """
    from aiops.explain.explainer import Explainer

    if not question or not question.strip():
        raise InputError("the question is empty", hint='ask e.g. "why is checkout slow since 10:00?"')
    evidence = question_evidence(question, config=config, store=store, kb=kb)
    explainer = explainer or Explainer(config.explain)
    return explainer.explain(evidence, question=question.strip())
