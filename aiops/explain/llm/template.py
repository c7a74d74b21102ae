"""The ``template`` backend: a deterministic narrative built from the evidence alone.

It needs no model and no network, always says the same thing for the same evidence, and is
what the faithfulness guard falls back to when an LLM narrative cites something unknown.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from aiops.explain.llm.base import Prompt, estimate_tokens
from aiops.types import Cause, Evidence, EvidenceItem

logger = logging.getLogger(__name__)

CAUSE_KINDS = ("cause_candidate", "rca", "candidate", "root_cause", "cause", "co_anomaly")
_KIND_WEIGHT = {"co_anomaly": 0.5}
UNEXPLAINED = 1.0  # score weight left for "none of the candidates"
_LEAD_KINDS = ("deviation", "event", "alert", "anomaly", "capacity", "question")


def _sorted(items: list[EvidenceItem]) -> list[EvidenceItem]:
    return sorted(items, key=lambda i: i.priority)  # stable: equal priorities keep their order


def _sentence(text: str) -> str:
    text = " ".join(text.split()).rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _explicit_confidence(item: EvidenceItem) -> float | None:
    for key in ("confidence", "probability"):
        v = item.data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            return float(v)
    return None


def cause_name(item: EvidenceItem) -> str:
    for key in ("cause", "name", "series_id", "series", "service"):
        v = item.data.get(key)
        if isinstance(v, str) and v:
            return v
    return item.source or item.text[:80]


def rank_causes(evidence: Evidence, limit: int = 5) -> list[Cause]:
    """Probable causes from candidate/co-anomaly items, most confident first.

    An item's ``data['confidence']`` is used as given. Otherwise candidate scores (``value``,
    unbounded) become shares: ``score / (sum of that kind's scores + UNEXPLAINED)``, so one
    weak candidate is not 100% sure; co-anomalies (moved together, no causal test) count half.
    """
    items = [i for i in evidence.items if i.kind in CAUSE_KINDS]
    totals: dict[str, float] = {}
    for i in items:
        if _explicit_confidence(i) is None and _score(i) > 0:
            totals[i.kind] = totals.get(i.kind, 0.0) + _score(i)
    best: dict[str, Cause] = {}
    for i in items:
        conf = _explicit_confidence(i)
        if conf is None:
            weight = _KIND_WEIGHT.get(i.kind, 1.0)
            conf = weight * _score(i) / (totals[i.kind] + UNEXPLAINED) if _score(i) > 0 else 0.1 * weight
        c = Cause(cause_name(i), round(conf, 3), " ".join(i.text.split()))
        if c.name not in best or best[c.name].confidence < c.confidence:
            best[c.name] = c
    return sorted(best.values(), key=lambda c: -c.confidence)[:limit]


def _score(item: EvidenceItem) -> float:
    v = item.value
    return float(v) if v is not None and math.isfinite(float(v)) and v > 0 else 0.0


def template_narrative(evidence: Evidence, *, question: str | None = None) -> str:
    """Three to five plain sentences that restate the evidence, most important first."""
    items = _sorted(evidence.items)
    lead = [i for i in items if i.kind in _LEAD_KINDS]
    causes = rank_causes(evidence, 3)
    changes = [i for i in items if i.kind in ("change", "deploy", "config_change")]
    runbooks = [i for i in items if i.kind in ("runbook", "kb")]
    out: list[str] = []
    if lead:
        out.append(_sentence(lead[0].text))
    elif items:
        out.append(_sentence(items[0].text))
    else:
        out.append(f"No evidence was found for {evidence.subject}.")
    if causes:
        top = causes[0]
        out.append(f"The most probable cause is {top.name} (confidence {top.confidence:.0%}): {_sentence(top.reason)}")
        others = [c.name for c in causes[1:3]]
        if others:
            out.append(f"Other candidates: {', '.join(others)}.")
    if changes:
        out.append("Recent change: " + _sentence(changes[0].text))
    if runbooks:
        src = runbooks[0].source or runbooks[0].data.get("title") or "the runbook"
        out.append(f"See {src} for the runbook.")
    return " ".join(out)


class TemplateBackend:
    """Deterministic narrator; the default backend and the guard's fallback."""

    name = "template"
    IS_LLM = False

    def __init__(self, context_tokens: int = 8192, max_new_tokens: int = 512):
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        return [template_narrative(p.evidence, question=p.meta.get("question")) for p in prompts]

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def fingerprint(self) -> str:
        return "template:1"
