"""Faithfulness guard for LLM narratives.

An LLM only narrates evidence the code computed. Every number and every metric name in its
narrative must appear in what it was shown; a narrative that cites anything else, is empty,
is not prose (JSON, code), or repeats a run of words from the untrusted alert text (the
sign of a model obeying instructions planted in an annotation) is rejected, and the caller
falls back to the template narrative with the returned reason. Nothing here, or anywhere in aiops, executes model output.

Numbers match with rounding and format variants: evidence ``0.1234`` allows ``0.12``,
``0.123``, ``12.3%`` and ``12%``; ``1834.2`` allows ``1,834`` and ``1.8k``; ``0.35`` (s)
allows ``350`` (ms). Signs are ignored (``-30%`` and ``a 30% drop`` are the same fact).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from aiops.types import Evidence

logger = logging.getLogger(__name__)

_NUM_RE = re.compile(
    r"(?<![A-Za-z0-9_.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?:\s?([kKMGT])(?![A-Za-z]))?"
)
# Metric-like names: snake_case or recording-rule names (job:rate:5m); plain words are not names.
_NAME_RE = re.compile(r"(?<![A-Za-z0-9_:.\-/])[a-zA-Z_][a-zA-Z0-9]*(?:[_:][a-zA-Z0-9]+)+(?![A-Za-z0-9_:])")
_SUFFIX = {"k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SHINGLE_WORDS = 5  # this many words in a row copied from alert text count as following it
_SCALES = (1.0, 100.0, 0.01, 1e3, 1e-3, 1e-6, 1e-9, 1e6, 1e9)


@dataclass
class GuardResult:
    """The guard's verdict: ``ok`` or a ``reason`` naming what was not in the evidence."""

    ok: bool
    reason: str | None = None
    unknown_numbers: list[str] = field(default_factory=list)
    unknown_names: list[str] = field(default_factory=list)


@dataclass
class _Num:
    text: str
    value: float
    tol: float


def extract_numbers(text: str) -> list[_Num]:
    """Numbers written in ``text`` with the rounding tolerance their display implies."""
    out = []
    for m in _NUM_RE.finditer(text):
        whole, frac, suffix = m.group(1), m.group(2), m.group(3)
        mult = _SUFFIX.get(suffix or "", 1.0)
        decimals = len(frac) if frac else 0
        value = float(whole.replace(",", "") + ("." + frac if frac else "")) * mult
        out.append(_Num(m.group(0), value, 0.5 * 10.0 ** (-decimals) * mult))
    return out


def extract_names(text: str) -> set[str]:
    """Metric-like names (``http_requests_total``, ``job:errors:rate5m``) in ``text``."""
    return {m.group(0) for m in _NAME_RE.finditer(text)}


def _walk_values(obj: Any) -> Iterable[Any]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _walk_values(v)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from _walk_values(v)
    else:
        yield obj


def evidence_facts(evidence: Evidence, extra_text: str = "") -> tuple[list[float], set[str]]:
    """All numbers (full precision) and metric names in ``evidence`` plus ``extra_text``."""
    numbers: list[float] = []
    texts = [evidence.subject, extra_text]
    texts += [f"{k} {v}" for k, v in evidence.untrusted.items()]
    for item in evidence.items:
        texts += [item.text, item.source or "", item.unit or ""]
        if item.value is not None and math.isfinite(float(item.value)):
            numbers.append(float(item.value))
        for v in _walk_values(item.data):
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, (int, float)):
                if math.isfinite(float(v)):
                    numbers.append(float(v))
            else:
                texts.append(str(v))
    joined = "\n".join(t for t in texts if t)
    numbers += [n.value for n in extract_numbers(joined)]
    # also every digit run, so times inside ISO stamps (T10:00) and names count as shown
    numbers += [float(m.group(0)) for m in re.finditer(r"\d+(?:\.\d+)?", joined)]
    return numbers, extract_names(joined)


def _number_known(n: _Num, known: list[float]) -> bool:
    for v in known:
        a = abs(v)
        for s in _SCALES:
            if abs(a * s - n.value) <= n.tol * (1 + 1e-9) + 1e-12:
                return True
    return False


def check_narrative(narrative: str, evidence: Evidence, *, extra_text: str = "") -> GuardResult:
    """Check that ``narrative`` cites only numbers and metric names found in the evidence.

    Args:
        narrative: the LLM's text.
        evidence: the evidence the LLM was shown (after trimming).
        extra_text: other text the LLM was shown as evidence (e.g. the rendered prompt).
    """
    text = (narrative or "").strip()
    if not text:
        return GuardResult(False, "the model returned an empty narrative")
    if _looks_structured(text):
        return GuardResult(False, "the model's narrative is not prose (it looks like JSON or code)")
    copied = _copied_untrusted(text, evidence)
    if copied:
        return GuardResult(False, f"the narrative repeats untrusted alert text ({copied!r})")
    known_numbers, known_names = evidence_facts(evidence, extra_text)
    bad_numbers = [n.text for n in extract_numbers(text) if not _number_known(n, known_numbers)]
    bad_names = sorted(extract_names(text) - known_names)
    if not bad_numbers and not bad_names:
        return GuardResult(True)
    parts = []
    if bad_numbers:
        parts.append("numbers not in the evidence: " + ", ".join(dict.fromkeys(bad_numbers)))
    if bad_names:
        parts.append("metric names not in the evidence: " + ", ".join(bad_names))
    reason = "narrative cites " + "; ".join(parts)
    return GuardResult(False, reason[:500], list(dict.fromkeys(bad_numbers)), bad_names)


def _shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _copied_untrusted(text: str, evidence: Evidence) -> str | None:
    """A run of words the narrative copied from alert labels/annotations and not from the
    computed evidence: the mark of a model following instructions planted in an alert."""
    if not evidence.untrusted:
        return None
    untrusted = set().union(*(_shingles(str(v)) for v in evidence.untrusted.values()))
    trusted = _shingles(" ".join([evidence.subject] + [f"{i.text} {i.source or ''}" for i in evidence.items]))
    copied = (_shingles(text) & untrusted) - trusted
    return " ".join(min(copied)) if copied else None


def _looks_structured(text: str) -> bool:
    if "```" in text or text[0] in "{[<":
        return True
    try:
        json.loads(text)
        return not isinstance(json.loads(text), str)
    except ValueError:
        return False
