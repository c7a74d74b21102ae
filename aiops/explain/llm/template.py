"""The ``template`` backend: a deterministic narrative built from the evidence alone.

It needs no model and no network, always says the same thing for the same evidence, and is
what the faithfulness guard falls back to when an LLM narrative cites something unknown.
"""

from __future__ import annotations

import logging
from typing import Sequence

from aiops.explain.llm.base import Prompt, estimate_tokens
from aiops.types import Evidence, EvidenceItem

logger = logging.getLogger(__name__)

CAUSE_KINDS = ("rca", "candidate", "root_cause", "cause", "co_anomaly")
_LEAD_KINDS = ("deviation", "event", "alert", "anomaly", "capacity", "question")


def _sorted(items: list[EvidenceItem]) -> list[EvidenceItem]:
    return sorted(items, key=lambda i: i.priority)  # stable: equal priorities keep their order


def _sentence(text: str) -> str:
    text = " ".join(text.split()).rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def cause_confidence(item: EvidenceItem) -> float:
    """Confidence of a cause item: ``data['confidence']``, else a [0, 1] value, else by kind."""
    for key in ("confidence", "score", "probability"):
        v = item.data.get(key)
        if isinstance(v, (int, float)) and 0 <= v <= 1:
            return float(v)
    if item.value is not None and 0 <= item.value <= 1 and item.unit in (None, "", "ratio", "score"):
        return float(item.value)
    return 0.5 if item.kind != "co_anomaly" else 0.3


def cause_name(item: EvidenceItem) -> str:
    for key in ("cause", "name", "series_id", "series", "service"):
        v = item.data.get(key)
        if isinstance(v, str) and v:
            return v
    return item.source or item.text[:80]


def template_narrative(evidence: Evidence, *, question: str | None = None) -> str:
    """Three to five plain sentences that restate the evidence, most important first."""
    items = _sorted(evidence.items)
    lead = [i for i in items if i.kind in _LEAD_KINDS]
    causes = sorted((i for i in items if i.kind in CAUSE_KINDS), key=cause_confidence, reverse=True)
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
        out.append(
            f"The most probable cause is {cause_name(top)} "
            f"(confidence {cause_confidence(top):.0%}): {_sentence(top.text)}"
        )
        others = [cause_name(c) for c in causes[1:3]]
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
