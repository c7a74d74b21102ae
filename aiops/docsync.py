"""Keep the generated parts of the docs in step with their sources: ``aiops docs-sync``.

* ``docs/configuration.md``: the whole file, from the config models (:func:`aiops.configref.reference`);
* ``README.md`` between ``<!-- BEGIN config-reference -->`` and ``<!-- END config-reference -->``:
  one row per top-level config section (:func:`aiops.configref.readme_table`);
* ``README.md`` between ``<!-- BEGIN benchmarks -->`` and ``<!-- END benchmarks -->``: the
  headline figures of ``docs/benchmarks.md`` with peers and targets (:func:`benchmark_table`).

The benchmark figures are read from the tables of ``docs/benchmarks.md`` (section heading, row
label, column header), so the README shows what that file says. A table renamed there makes
the generator fail, naming the section, row and column it looked for; update :data:`SUMMARY`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiops.errors import InputError

logger = logging.getLogger(__name__)

CONFIG_MARK = "config-reference"
BENCH_MARK = "benchmarks"
SYNC_COMMAND = "aiops docs-sync"


# --------------------------------------------------------------------------- Markdown tables


@dataclass
class Table:
    """A Markdown table and the ``##`` heading it sits under."""

    section: str
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _plain(text: str) -> str:
    """A cell without emphasis markers, for matching and for quoting in the README."""
    return text.replace("**", "").strip().strip("*").strip()


def parse_tables(text: str) -> list[Table]:
    """Every pipe table of a Markdown document, in order."""
    tables: list[Table] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            tables.append(Table(section, header, rows))
            continue
        i += 1
    return tables


class Figures:
    """Looks up cells of ``docs/benchmarks.md`` by section, row label and column header."""

    def __init__(self, text: str, source: str = "docs/benchmarks.md"):
        self.tables = parse_tables(text)
        self.source = source

    def cell(self, section: str, row: str, column: str, *, where: dict[str, str] | None = None) -> str:
        """The cell in ``column`` of the first row whose first cell starts with ``row`` (and
        whose ``where`` columns start with the given text), in a table under a heading
        containing ``section``. Matching ignores case and ``**``/``*`` emphasis.

        Raises:
            InputError: no such section, row or column.
        """
        low = str.lower
        tables = [t for t in self.tables if low(section) in low(t.section)]
        if not tables:
            raise self._missing(f"no table under a heading containing {section!r}")
        for t in tables:
            cols = [low(_plain(h)) for h in t.header]
            want = [c for c in [column, *(where or {})] if not any(h.startswith(low(c)) for h in cols)]
            if want:
                continue
            idx = {c: next(k for k, h in enumerate(cols) if h.startswith(low(c))) for c in [column, *(where or {})]}
            for r in t.rows:
                if not low(_plain(r[0])).startswith(low(row)):
                    continue
                if all(idx[c] < len(r) and low(_plain(r[idx[c]])).startswith(low(v)) for c, v in (where or {}).items()):
                    value = _plain(r[idx[column]]) if idx[column] < len(r) else ""
                    if value:
                        return value
        extra = f" where {where}" if where else ""
        raise self._missing(f"no row starting with {row!r}{extra} with a {column!r} value under {section!r}")

    def number(self, section: str, row: str, column: str, **kw) -> float:
        text = self.cell(section, row, column, **kw)
        m = re.search(r"-?[\d,]*\.?\d+", text)
        if m is None:
            raise self._missing(f"{section!r} / {row!r} / {column!r} is {text!r}, not a number")
        return float(m.group().replace(",", ""))

    def _missing(self, what: str) -> InputError:
        return InputError(
            f"{self.source}: {what}",
            hint=f"restore that table, or update SUMMARY in aiops/docsync.py to its new layout; then run `{SYNC_COMMAND}`",
        )


# --------------------------------------------------------------------------- the README summary


@dataclass(frozen=True)
class SummaryRow:
    """One README row: what is measured, how to read aiops's and the peers' figures, the
    target, and whether the target is met (computed from the same figures)."""

    what: str
    aiops: Callable[[Figures], str]
    peers: Callable[[Figures], str]
    target: str
    met: Callable[[Figures], bool]


def _status(ok: bool) -> str:
    return "met" if ok else "**missed**"


NAB, FC, TP, RCA, LAT, WH = "NAB", "Forecasting", "Throughput", "Root-cause", "Explanation latency", "Webhook load"


def _published_nab(f: Figures) -> str:
    label = f.cell(NAB, "published", "detector")
    names = [n.strip(" *") for n in label.split(":")[-1].split("/")]
    std = [v.strip() for v in f.cell(NAB, "published", "standard").split("/")]
    low_fp = [v.strip() for v in f.cell(NAB, "published", "reward low FP").split("/")]
    if not len(names) == len(std) == len(low_fp):
        raise f._missing(f"the published row of {NAB!r} lists {len(names)} names but {len(std)}/{len(low_fp)} scores")
    return ", ".join(f"{n} {s} / {p}" for n, s, p in zip(names, std, low_fp))


def _ratio(f: Figures, series: str, mstl_row: str) -> tuple[float, float, float]:
    ours = f.number(TP, "aiops `auto`", "fit+predict", where={"series": series})
    theirs = f.number(TP, mstl_row, "fit+predict")
    return ours / theirs, ours, theirs


def _throughput_met(f: Figures) -> bool:
    return all(_ratio(f, n, row)[0] >= 10 for n, row in (("1,000", "statsforecast MSTL"),
                                                       ("10,000", "statsforecast MSTL, n_jobs=-1 (same run)")))


def _throughput(f: Figures) -> str:
    r1, a1, _ = _ratio(f, "1,000", "statsforecast MSTL")
    r2, a2, _ = _ratio(f, "10,000", "statsforecast MSTL, n_jobs=-1 (same run)")
    return f"{r1:.1f}x at 1,000 series ({a1:g} series/s), {r2:.1f}x at 10,000 ({a2:g})"


SUMMARY: tuple[SummaryRow, ...] = (
    SummaryRow(
        "Anomaly detection, NAB (34 files), standard / low FP",
        lambda f: f"{f.cell(NAB, 'aiops (', 'standard')} / {f.cell(NAB, 'aiops (', 'reward low FP')}",
        lambda f: f"{_published_nab(f)}; NAB's windowed Gaussian "
        f"{f.cell(NAB, 'windowed Gaussian', 'standard')} / {f.cell(NAB, 'windowed Gaussian', 'reward low FP')}",
        "> 74 / > 68",
        lambda f: f.number(NAB, "aiops (", "standard") > 74 and f.number(NAB, "aiops (", "reward low FP") > 68,
    ),
    SummaryRow(
        "Causal detection time, the 34 NAB files",
        lambda f: f.cell(NAB, "aiops (", "detect time"),
        lambda f: "—",
        "< 3 min",
        lambda f: f.number(NAB, "aiops (", "detect time") < 180,
    ),
    SummaryRow(
        "Forecast, AWS CloudWatch rolling origin, MASE geo-mean",
        lambda f: f.cell(FC, "aiops `auto`", "MASE geo-mean"),
        lambda f: ", ".join(f"{n} {f.cell(FC, 'statsforecast ' + n, 'MASE geo-mean')}" for n in ("SeasonalNaive", "AutoETS", "MSTL")),
        "≤ 0.80",
        lambda f: f.number(FC, "aiops `auto`", "MASE geo-mean") <= 0.80,
    ),
    SummaryRow(
        "Forecast, 80% interval coverage",
        lambda f: f.cell(FC, "aiops `auto`", "80% coverage"),
        lambda f: ", ".join(f"{n} {f.cell(FC, 'statsforecast ' + n, '80% coverage')}" for n in ("SeasonalNaive", "AutoETS", "MSTL")),
        "0.75–0.85",
        lambda f: 0.75 <= f.number(FC, "aiops `auto`", "80% coverage") <= 0.85,
    ),
    SummaryRow(
        "Fit + forecast throughput, `auto` vs MSTL (CPU)",
        _throughput,
        lambda f: f"MSTL {f.cell(TP, 'statsforecast MSTL', 'fit+predict')} series/s "
        f"(1,000), {f.cell(TP, 'statsforecast MSTL, n_jobs=-1 (same run)', 'fit+predict')} (10,000)",
        "≥ 10x at both sizes",
        _throughput_met,
    ),
    SummaryRow(
        "Forecast inference, global neural model, 100,000 series",
        lambda f: f"{f.cell(TP, 'aiops `neural`', 'predict series/s', where={'series': '100,000'})} series/s on an H100 "
        f"(before per-series host work was removed; not re-measured since); "
        f"{f.number(TP, 'aiops `neural`', 'predict, 100,000 unseen'):,.0f} series/s now on the 2-core CPU",
        lambda f: "—",
        "≥ 5,000 series/s on an H100",
        lambda f: f.number(TP, "aiops `neural`", "predict series/s", where={"series": "100,000"}) >= 5000,
    ),
    SummaryRow(
        "Root cause, PetShop train split, top-1 / top-3",
        lambda f: f"{f.cell(RCA, 'mean of', 'top-1')} / {f.cell(RCA, 'mean of', 'top-3')}",
        lambda f: f"anomaly traversal {f.cell(RCA, 'mean of', 'published traversal')}",
        "≥ 0.75 / 0.95",
        lambda f: f.number(RCA, "mean of", "top-1") >= 0.75 and f.number(RCA, "mean of", "top-3") >= 0.95,
    ),
    SummaryRow(
        "Evidence + template explanation, p95 per alert",
        lambda f: f"{f.cell(LAT, 'total per alert', 'p95')} ms",
        lambda f: "—",
        "< 100 ms",
        lambda f: f.number(LAT, "total per alert", "p95") < 100,
    ),
    SummaryRow(
        "Alertmanager webhook, 10,000 alerts from 8 concurrent senders",
        lambda f: f"{f.cell(WH, 'no inbox workers', 'alerts/s')} alerts/s accepted, p50 {f.cell(WH, 'no inbox workers', 'p50 ms')} ms "
        f"/ p99 {f.cell(WH, 'no inbox workers', 'p99 ms')} ms; {f.cell(WH, '2 inbox workers', 'alerts/s')} alerts/s while 2 workers explain",
        lambda f: "—",
        "all accepted, none lost or doubled",
        lambda f: all(f.number(WH, row, col) == 0 for row in ("no inbox workers", "2 inbox workers") for col in ("lost", "stored twice")),
    ),
)


def benchmark_table(text: str, source: str = "docs/benchmarks.md") -> str:
    """The README's benchmark summary from the text of ``docs/benchmarks.md``."""
    f = Figures(text, source)
    rows = ["| what | aiops | peers / baseline, same protocol | target | |", "|---|---|---|---|---|"]
    for r in SUMMARY:
        rows.append(f"| {r.what} | {r.aiops(f)} | {r.peers(f)} | {r.target} | {_status(r.met(f))} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- marked sections


def replace_marked(text: str, mark: str, body: str, *, where: str = "README.md") -> str:
    """``text`` with the lines between ``<!-- BEGIN mark -->`` and ``<!-- END mark -->`` replaced."""
    begin, end = f"<!-- BEGIN {mark} -->", f"<!-- END {mark} -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < 0 or j < i or text.count(begin) != 1 or text.count(end) != 1:
        raise InputError(
            f"{where}: expected one {begin} followed by one {end}",
            hint=f"put the two marker lines back around the generated section, then run `{SYNC_COMMAND}`",
        )
    head = text[: i + len(begin)]
    return f"{head}\n{body.rstrip()}\n{text[j:]}"


def find_root(start: Path | None = None) -> Path:
    """The checkout root: the nearest folder up from ``start`` with README.md and aiops/."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "README.md").is_file() and (p / "aiops" / "config.py").is_file():
            return p
    raise InputError(f"no aiops checkout at or above {here}", hint="run it from the repository, or pass --root")


def generated(root: Path) -> dict[Path, str]:
    """What each generated file should contain, from the sources in checkout ``root``."""
    from aiops.configref import readme_table, reference

    readme = root / "README.md"
    text = readme.read_text()
    bench = (root / "docs" / "benchmarks.md").read_text()
    text = replace_marked(text, CONFIG_MARK, readme_table())
    text = replace_marked(text, BENCH_MARK, benchmark_table(bench))
    return {root / "docs" / "configuration.md": reference(), readme: text}


def sync(root: Path, *, write: bool = True) -> list[Path]:
    """Files whose content differs from what :func:`generated` makes; rewritten when ``write``."""
    stale = []
    for path, content in generated(root).items():
        if not path.is_file() or path.read_text() != content:
            stale.append(path)
            if write:
                path.write_text(content)
                logger.info("rewrote %s", path)
    return stale
