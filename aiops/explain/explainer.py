"""Evidence -> :class:`~aiops.types.Explanation`, rendered as Markdown (Grafana) and JSON (API).

The structure of an explanation (title, summary, causes, evidence bullets, next checks) is
computed from the evidence by code; a backend only writes the ``narrative``. An LLM narrative
goes through the faithfulness guard (:mod:`aiops.explain.guard`) and is replaced by the
template narrative, with the reason in ``guard_note``, when it cites anything unknown or
the backend fails. Evidence is trimmed by priority to fit the model's context, and identical
requests are answered from a cache keyed by evidence, backend and prompt.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, replace
from functools import lru_cache
from typing import Any, Sequence

from aiops.config import ExplainConfig
from aiops.errors import AiopsError, ExplainError
from aiops.explain.guard import check_narrative
from aiops.explain.llm import LLMBackend, Prompt, make_backend
from aiops.explain.llm.template import CAUSE_KINDS, rank_causes, template_narrative
from aiops.types import Cause, Evidence, EvidenceItem, Explanation

logger = logging.getLogger(__name__)

UNTRUSTED_OPEN = "<<<UNTRUSTED_ALERT_DATA"
UNTRUSTED_CLOSE = "UNTRUSTED_ALERT_DATA>>>"
MAX_NARRATIVE_CHARS = 1200
MAX_UNTRUSTED_VALUE_CHARS = 400
MARKDOWN_MAX_BYTES = 2000


# --------------------------------------------------------------------------- evidence helpers


def evidence_to_dict(evidence: Evidence) -> dict[str, Any]:
    return asdict(evidence)


def evidence_from_dict(data: dict[str, Any]) -> Evidence:
    """Inverse of :func:`evidence_to_dict`; unknown item keys are an InputError-free skip."""
    if not isinstance(data, dict) or "subject" not in data:
        raise ExplainError("evidence must be a mapping with 'subject' and 'items'")
    fields = set(EvidenceItem.__dataclass_fields__)
    items = [EvidenceItem(**{k: v for k, v in it.items() if k in fields}) for it in data.get("items", [])]
    return Evidence(subject=str(data["subject"]), items=items, untrusted=dict(data.get("untrusted") or {}))


def explanation_from_dict(data: dict[str, Any]) -> Explanation:
    causes = [Cause(**c) for c in data.get("causes", [])]
    rest = {k: v for k, v in data.items() if k in Explanation.__dataclass_fields__ and k != "causes"}
    return Explanation(causes=causes, **rest)


def _clean_untrusted(value: Any) -> str:
    """Untrusted text on one block: delimiters removed, length capped, control chars dropped."""
    text = str(value)
    for marker in (UNTRUSTED_OPEN, UNTRUSTED_CLOSE, "<<<", ">>>"):
        text = text.replace(marker, " ")
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)
    text = " ".join(text.split())
    return text[:MAX_UNTRUSTED_VALUE_CHARS] + ("…" if len(text) > MAX_UNTRUSTED_VALUE_CHARS else "")


# --------------------------------------------------------------------------- structure


def build_causes(evidence: Evidence, limit: int = 5) -> list[Cause]:
    """Probable causes, most confident first (see :func:`~aiops.explain.llm.template.rank_causes`)."""
    return rank_causes(evidence, limit)


def _looks_promql(text: str) -> bool:
    return bool(re.match(r"^[a-zA-Z_:(]", text)) and not re.match(r"^[a-z]+://", text) and not text.endswith(
        (".md", ".yml", ".yaml")
    ) and "#" not in text.split("{")[0]


def build_next_checks(evidence: Evidence, limit: int = 5) -> list[str]:
    """PromQL queries to run and runbooks to read, from the evidence's sources."""
    out: list[str] = []
    for item in sorted(evidence.items, key=lambda i: i.priority):
        url = item.data.get("runbook_url")
        if isinstance(url, str) and url:
            out.append(f"Read the runbook: {url}")
        src = (item.source or "").strip()
        if not src:
            continue
        if item.kind in ("runbook", "kb") or src.startswith(("http://", "https://")) or "#" in src or src.endswith(".md"):
            out.append(f"Read the runbook: {src}")
        elif _looks_promql(src):
            out.append(f"Run in Prometheus: `{src}`")
    return list(dict.fromkeys(out))[:limit]


def build_skeleton(evidence: Evidence, *, max_candidates: int = 5, question: str | None = None) -> Explanation:
    """Everything but the narrative, computed from the evidence by code."""
    items = sorted(evidence.items, key=lambda i: i.priority)
    causes = build_causes(evidence, max_candidates)
    if question:
        title = f"Q: {question}"
    elif any(i.kind == "alert" for i in items):
        title = f"Alert {evidence.subject}"
    else:
        title = f"Anomaly on {evidence.subject}"
    facts = [i for i in items if i.kind not in CAUSE_KINDS + ("runbook", "kb")]
    lead = facts[0] if facts else (items[0] if items else None)
    summary = " ".join(lead.text.split()).rstrip(".") if lead else f"No evidence was found for {evidence.subject}"
    if lead is not None and lead.kind != "deviation":  # an alert or event line: add what was measured
        dev = next((i for i in facts if i.kind == "deviation" and i is not lead), None)
        if dev is not None:
            summary += "; " + " ".join(dev.text.split()).rstrip(".")
    summary += "."
    if causes:
        summary += f" Most probable cause: {causes[0].name} ({causes[0].confidence:.0%})."
    bullets = [" ".join(i.text.split())[:200] for i in items if i.kind not in ("runbook", "kb")][:8]
    return Explanation(
        title=title[:120],
        summary=summary[:400],
        causes=causes,
        evidence=bullets,
        next_checks=build_next_checks(evidence),
    )


# --------------------------------------------------------------------------- prompts


@lru_cache(maxsize=1)
def _jinja_env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("aiops.explain", "prompts"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text prompts, never HTML
        keep_trailing_newline=True,
    )


@lru_cache(maxsize=8)
def prompt_source_hash(*names: str) -> str:
    env = _jinja_env()
    h = hashlib.sha256()
    for n in names:
        h.update(env.loader.get_source(env, n)[0].encode())
    return h.hexdigest()[:16]


PROMPT_FILES = ("system.jinja2", "explain.jinja2")


def build_messages(
    evidence: Evidence, *, question: str | None = None, causes: Sequence[Cause] = (), sentences: str = "2 to 4"
) -> list[dict[str, str]]:
    """Chat messages for ``evidence``; alert labels/annotations sit in a delimited data block."""
    env = _jinja_env()
    ctx = dict(open=UNTRUSTED_OPEN, close=UNTRUSTED_CLOSE, sentences=sentences)
    system = env.get_template("system.jinja2").render(**ctx).strip()
    user = env.get_template("explain.jinja2").render(
        subject=evidence.subject,
        question=question,
        items=sorted(evidence.items, key=lambda i: i.priority),
        causes=list(causes),
        untrusted=[(_clean_untrusted(k)[:64], _clean_untrusted(v)) for k, v in sorted(evidence.untrusted.items())],
        **ctx,
    ).strip()
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def trim_evidence(
    evidence: Evidence, backend: LLMBackend, *, question: str | None = None, max_candidates: int = 5
) -> Evidence:
    """Keep the most important items (lowest priority numbers) that fit the model's context."""
    budget = backend.context_tokens - backend.max_new_tokens
    base = Evidence(evidence.subject, [], evidence.untrusted)

    def cost(ev: Evidence) -> int:
        msgs = build_messages(ev, question=question, causes=build_causes(ev, max_candidates))
        return sum(backend.count_tokens(m["content"]) for m in msgs) + 8 * len(msgs)

    if cost(evidence) <= budget:
        return evidence
    if cost(base) > budget:  # even the alert block does not fit: drop it, keep the subject
        base = Evidence(evidence.subject, [], {})
    kept: list[EvidenceItem] = []
    for item in sorted(evidence.items, key=lambda i: i.priority):
        trial = Evidence(base.subject, kept + [item], base.untrusted)
        if cost(trial) <= budget:
            kept.append(item)
    logger.info("trimmed evidence for %s from %d to %d items", evidence.subject, len(evidence.items), len(kept))
    return Evidence(base.subject, kept, base.untrusted)


def _clean_narrative(text: str) -> str:
    text = (text or "").strip()
    text = re.sub(r"^(assistant|answer|narrative)\s*:\s*", "", text, flags=re.I)
    text = " ".join(text.split())
    if len(text) > MAX_NARRATIVE_CHARS:
        cut = text[:MAX_NARRATIVE_CHARS]
        end = cut.rfind(". ")
        text = cut[: end + 1] if end > 200 else cut.rstrip() + "…"
    return text


# --------------------------------------------------------------------------- the explainer


class Explainer:
    """Turns evidence into explanations through one configured backend, with a cache.

    Args:
        config: the ``explain`` section; its ``backend`` picks the narrator.
        backend: use this backend instead of building one from ``config``.
        cache_size: how many explanations to keep (0 disables the cache).
    """

    def __init__(
        self, config: ExplainConfig | None = None, *, backend: LLMBackend | None = None, cache_size: int = 256
    ):
        self.config = config or ExplainConfig()
        self.backend = backend or make_backend(self.config)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Explanation] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0

    def explain(self, evidence: Evidence, *, question: str | None = None) -> Explanation:
        """One explanation; see :meth:`explain_many`."""
        return self.explain_many([evidence], questions=[question])[0]

    def explain_many(
        self, evidences: Sequence[Evidence], *, questions: Sequence[str | None] | None = None
    ) -> list[Explanation]:
        """Explanations for several pieces of evidence; LLM calls are batched.

        Raises:
            ExplainError: an input is not an :class:`Evidence`.
        """
        questions = list(questions) if questions is not None else [None] * len(evidences)
        if len(questions) != len(evidences):
            raise ExplainError("questions must match evidences one to one")
        for ev in evidences:
            if not isinstance(ev, Evidence):
                raise ExplainError(f"expected Evidence, got {type(ev).__name__}")
        return self._explain_many(list(evidences), questions)

    def cache_key(self, evidence: Evidence, question: str | None = None) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(evidence_to_dict(evidence), sort_keys=True, default=str).encode())
        h.update(f"\0{question or ''}\0{self.backend.fingerprint()}\0{prompt_source_hash(*PROMPT_FILES)}".encode())
        h.update(f"\0{self.config.max_candidates}".encode())
        return h.hexdigest()

    def _explain_many(self, evidences: list[Evidence], questions: list[str | None]) -> list[Explanation]:
        out: list[Explanation | None] = [None] * len(evidences)
        todo: list[tuple[int, str]] = []
        for i, (ev, q) in enumerate(zip(evidences, questions)):
            key = self.cache_key(ev, q)
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    self.cache_hits += 1
                    out[i] = copy.deepcopy(hit)
                    continue
            todo.append((i, key))
        if todo:
            made = self._narrate([evidences[i] for i, _ in todo], [questions[i] for i, _ in todo])
            for (i, key), expl in zip(todo, made):
                out[i] = expl
                if self.cache_size > 0:
                    with self._lock:
                        self._cache[key] = copy.deepcopy(expl)
                        while len(self._cache) > self.cache_size:
                            self._cache.popitem(last=False)
        return [o for o in out if o is not None]

    def _narrate(self, evidences: list[Evidence], questions: list[str | None]) -> list[Explanation]:
        backend = self.backend
        n_cand = self.config.max_candidates
        skeletons = [build_skeleton(ev, max_candidates=n_cand, question=q) for ev, q in zip(evidences, questions)]
        if not backend.IS_LLM:
            texts = backend.generate([Prompt([], ev, meta={"question": q}) for ev, q in zip(evidences, questions)])
            return [replace(s, narrative=t, backend=backend.name) for s, t in zip(skeletons, texts)]
        trimmed = [trim_evidence(ev, backend, question=q, max_candidates=n_cand) for ev, q in zip(evidences, questions)]
        prompts = [
            Prompt(build_messages(t, question=q, causes=build_causes(t, n_cand)), t, meta={"question": q})
            for t, q in zip(trimmed, questions)
        ]
        try:
            raw = backend.generate(prompts)
            failure = None
        except AiopsError as exc:
            logger.warning("%s backend failed, using the template narrative: %s", backend.name, exc)
            raw, failure = [""] * len(prompts), f"{backend.name} backend failed: {exc.message}"[:500]
        out = []
        for skel, ev, t, p, text in zip(skeletons, evidences, trimmed, prompts, raw):
            q = p.meta.get("question")
            narrative = _clean_narrative(text)
            note = failure
            if note is None:
                verdict = check_narrative(narrative, t, extra_text=p.messages[-1]["content"])
                note = None if verdict.ok else verdict.reason
            if note is None:
                out.append(replace(skel, narrative=narrative, backend=backend.name))
            else:
                logger.info("guard replaced the %s narrative for %s: %s", backend.name, ev.subject, note)
                out.append(
                    replace(skel, narrative=template_narrative(ev, question=q), backend="template", guard_note=note)
                )
        return out


# --------------------------------------------------------------------------- rendering


def _md(text: str) -> str:
    """One line, with anything that could open an HTML tag defused (``<b`` -> ``< b``).

    Grafana shows annotation text as sanitised HTML and Markdown viewers show code spans
    verbatim, so PromQL like ``x < 1`` stays readable in both while no tag can open.
    """
    return re.sub(r"<(?=[A-Za-z/!?])", "< ", " ".join(str(text).split()))


def render_markdown(expl: Explanation, *, max_bytes: int = MARKDOWN_MAX_BYTES) -> str:
    """Compact Markdown for a Grafana annotation (at most ``max_bytes`` UTF-8 bytes).

    HTML in any field is escaped; when too long, evidence bullets, then checks, then the
    narrative are shortened before anything else.
    """
    causes = [f"- {_md(c.name)} ({c.confidence:.0%}): {_md(c.reason)[:160]}" for c in expl.causes[:3]]
    evidence = [f"- {_md(e)}" for e in expl.evidence]
    checks = [f"- {_md(c)}" for c in expl.next_checks]
    narrative = _md(expl.narrative)

    def build() -> str:
        parts = [f"**{_md(expl.title)}**", _md(expl.summary)]
        if causes:
            parts.append("**Probable causes**\n" + "\n".join(causes))
        if evidence:
            parts.append("**Evidence**\n" + "\n".join(evidence))
        if checks:
            parts.append("**Next checks**\n" + "\n".join(checks))
        if narrative and expl.backend != "template":  # the template narrative restates the above
            parts.append(narrative)
        foot = f"_{expl.backend}_" + (f" · guard: {_md(expl.guard_note)[:160]}" if expl.guard_note else "")
        parts.append(foot)
        return "\n\n".join(parts)

    text = build()
    while len(text.encode()) > max_bytes:
        if len(evidence) > 2:
            evidence.pop()
        elif len(checks) > 1:
            checks.pop()
        elif len(causes) > 1:
            causes.pop()
        elif len(narrative) > 80:
            narrative = narrative[: max(80, len(narrative) - 200)].rstrip() + "…"
        else:
            return text.encode()[: max_bytes - 3].decode(errors="ignore") + "…"
        text = build()
    return text


def render_json(expl: Explanation, *, evidence: Evidence | None = None) -> dict[str, Any]:
    """The explanation as a JSON-ready dict (plus Markdown and, if given, the evidence)."""
    out = expl.to_dict()
    out["markdown"] = render_markdown(expl)
    if evidence is not None:
        out["evidence_items"] = evidence_to_dict(evidence)["items"]
        out["subject"] = evidence.subject
    return out
