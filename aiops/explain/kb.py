"""Knowledge base: BM25 (``bm25s``) over runbooks and Prometheus alert-rule annotations.

Runbooks are Markdown files split into passages at headings; each passage keeps its file
and a GitHub-style heading anchor (``runbooks/checkout.md#high-latency``). Alert rules are
YAML files of ``groups[].rules[]``; each alerting rule becomes one passage from its name,
``summary``, ``description``, ``runbook_url`` and expression.

The index folder holds ``passages.json`` plus the bm25s arrays; build it with
``aiops kb index DIR [--rules DIR] [--out INDEX_DIR]``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from aiops.errors import ExplainError, InputError

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
MAX_PASSAGE_CHARS = 2000
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_WORD_RE = re.compile(r"[a-z0-9]+(?:[_:.\-][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an and are as at be but by for from has have how i if in into is it its of on or so that the "
    "their then there these this to was what when where which while who why will with you your since "
    "does do did not no can".split()
)


@dataclass
class Passage:
    text: str
    source: str  # file path + '#anchor', or rules file + '#alertname'
    title: str
    data: dict[str, Any] = field(default_factory=dict)  # e.g. runbook_url, kind


def slugify(heading: str) -> str:
    """GitHub-style anchor: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def tokenize(text: str) -> list[str]:
    """Words, plus the parts of snake_case/dotted names so ``checkout latency`` finds
    ``checkout_latency_seconds``."""
    out: list[str] = []
    for w in _WORD_RE.findall(text.lower()):
        parts = [p for p in re.split(r"[_:.\-]", w) if p]
        if len(parts) > 1:
            out.append(w)
        out += [p for p in parts if p not in _STOPWORDS and (len(p) > 1 or p.isdigit())]
    return out


def split_markdown(text: str, source: str) -> list[Passage]:
    """Passages at Markdown headings (not inside fenced code), each with its anchor."""
    passages: list[Passage] = []
    title, anchor, buf = Path(source).stem, "", []
    doc_title = None
    anchors: dict[str, int] = {}
    in_fence = False

    def flush() -> None:
        body = "\n".join(buf).strip()
        if body:
            heading = title if doc_title in (None, title) else f"{doc_title} / {title}"
            src = f"{source}#{anchor}" if anchor else source
            for i in range(0, len(body), MAX_PASSAGE_CHARS):
                passages.append(Passage(f"{title}\n{body[i : i + MAX_PASSAGE_CHARS]}", src, heading, {"kind": "runbook"}))

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = None if in_fence else _HEADING_RE.match(line)
        if m:
            flush()
            buf = []
            title = m.group(2).strip()
            if doc_title is None and len(m.group(1)) == 1:
                doc_title = title
            slug = slugify(title)
            n = anchors.get(slug, 0)
            anchors[slug] = n + 1
            anchor = slug if n == 0 else f"{slug}-{n}"
            continue
        buf.append(line)
    flush()
    return passages


def rule_passages(path: Path, source: str) -> list[Passage]:
    """One passage per alerting rule in a Prometheus rule file."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read rule file {path}: {exc}", hint="rule files are YAML with groups[].rules[]") from None
    out = []
    for group in doc.get("groups") or [] if isinstance(doc, dict) else []:
        for rule in group.get("rules") or []:
            if not isinstance(rule, dict) or "alert" not in rule:
                continue
            ann = rule.get("annotations") or {}
            name = str(rule["alert"])
            lines = [f"Alert {name}"]
            for key in ("summary", "description"):
                if ann.get(key):
                    lines.append(str(ann[key]))
            lines.append(f"expr: {rule.get('expr', '')}")
            data = {"kind": "alert_rule", "group": group.get("name"), "expr": str(rule.get("expr", ""))}
            if ann.get("runbook_url"):
                data["runbook_url"] = str(ann["runbook_url"])
                lines.append(f"runbook: {ann['runbook_url']}")
            out.append(Passage("\n".join(lines), f"{source}#{name}", name, data))
    return out


def _bm25s():
    import bm25s

    # bm25s sets its logger to DEBUG at import; hand the level back to the app's logging setup.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


class KnowledgeBase:
    """BM25 search over passages. Build with :meth:`build`, keep with :meth:`save`/:meth:`load`."""

    def __init__(self, passages: list[Passage], retriever: Any = None):
        self.passages = passages
        self._retriever = retriever

    def __len__(self) -> int:
        return len(self.passages)

    @classmethod
    def build(cls, runbooks_dir: str | Path | None = None, rules_dir: str | Path | None = None) -> "KnowledgeBase":
        """Index every ``*.md`` under ``runbooks_dir`` and ``*.yml``/``*.yaml`` under ``rules_dir``.

        Raises:
            InputError: a folder is missing, or nothing was found to index.
        """
        passages: list[Passage] = []
        for folder, patterns, reader in (
            (runbooks_dir, ("*.md", "*.markdown"), lambda p, s: split_markdown(p.read_text(errors="replace"), s)),
            (rules_dir, ("*.yml", "*.yaml"), rule_passages),
        ):
            if folder is None:
                continue
            root = Path(folder)
            if not root.is_dir():
                raise InputError(f"{root} is not a folder", hint="pass the folder that holds the files")
            for path in sorted(p for pat in patterns for p in root.rglob(pat)):
                passages += reader(path, str(path))
        if not passages:
            raise InputError("nothing to index: no Markdown runbooks or alerting rules found",
                             hint="pass a folder of *.md runbooks and/or --rules with *.yml rule files")
        return cls(passages)._index()

    def _index(self) -> "KnowledgeBase":
        retriever = _bm25s().BM25()
        retriever.index([tokenize(f"{p.title}\n{p.text}") or ["_empty_"] for p in self.passages], show_progress=False)
        self._retriever = retriever
        return self

    def search(self, text: str, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` best passages for ``text``: dicts of text, source, score, title (and data)."""
        if k < 1:
            raise InputError("k must be at least 1")
        tokens = tokenize(text)
        if not tokens or not self.passages:
            return []
        res = self._retriever.retrieve([tokens], k=min(k, len(self.passages)), show_progress=False)
        out = []
        for idx, score in zip(res.documents[0], res.scores[0]):
            if score <= 0:
                continue
            p = self.passages[int(idx)]
            out.append({"text": p.text, "source": p.source, "score": float(score), "title": p.title, **p.data})
        return out

    def save(self, index_dir: str | Path) -> Path:
        out = Path(index_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._retriever.save(str(out / "bm25"), show_progress=False)
        meta = {"format": INDEX_FORMAT, "passages": [asdict(p) for p in self.passages]}
        (out / "passages.json").write_text(json.dumps(meta))
        return out

    @classmethod
    def load(cls, index_dir: str | Path) -> "KnowledgeBase":
        """Load an index written by :meth:`save`.

        Raises:
            ExplainError: no index there, or one from another aiops version.
        """
        root = Path(index_dir)
        try:
            meta = json.loads((root / "passages.json").read_text())
        except (OSError, ValueError):
            raise ExplainError(f"no knowledge-base index in {root}",
                               hint="build one with: aiops kb index RUNBOOKS_DIR [--rules RULES_DIR] --out "
                               f"{root}") from None
        if meta.get("format") != INDEX_FORMAT:
            raise ExplainError(f"the index in {root} has format {meta.get('format')}, expected {INDEX_FORMAT}",
                               hint="rebuild it with aiops kb index")
        retriever = _bm25s().BM25.load(str(root / "bm25"), show_progress=False)
        return cls([Passage(**p) for p in meta["passages"]], retriever)


def passages_as_evidence(hits: Iterable[dict[str, Any]], *, priority: int = 60, max_chars: int = 300) -> list:
    """KB hits as ``runbook`` evidence items (text shortened, source kept)."""
    from aiops.types import EvidenceItem

    items = []
    for h in hits:
        body = " ".join(h["text"].split())
        data = {k: h[k] for k in ("title", "runbook_url") if h.get(k)}
        items.append(EvidenceItem("runbook", body[:max_chars], None, None, h["source"], priority, data))
    return items
