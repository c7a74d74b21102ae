"""The pipeline: fetch -> fit/load -> forecast -> detect -> explain -> store -> publish.

Each stage is a function over a :class:`SeriesBatch` (or the frames derived from it), so a
batch of series can run in this process, on a GPU, or on another worker without change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from aiops.config import AiopsConfig, WatchConfig
from aiops.errors import AiopsError
from aiops.sources.base import MetricSource, make_source
from aiops.store import Store
from aiops.types import AnomalyEvent, SeriesBatch

logger = logging.getLogger(__name__)


def fetch_watch(
    config: AiopsConfig,
    watch: WatchConfig,
    *,
    source: MetricSource | None = None,
    end: pd.Timestamp | None = None,
    history: pd.Timedelta | None = None,
) -> SeriesBatch:
    """Fetch a watch's history window ending at ``end`` (default: now, floored to the step)."""
    source = source or make_source(config)
    step = watch.step.td
    end = (end if end is not None else pd.Timestamp.now(tz="UTC")).floor(step)
    start = end - (history if history is not None else watch.history.td)
    batch = source.fetch(watch.query, start, end, step, watch=watch.name, max_series=watch.max_series)
    batch.watch = watch.name
    return batch


@dataclass
class WatchResult:
    """What one run of one watch produced."""

    watch: str
    batch: SeriesBatch | None = None
    scores: pd.DataFrame | None = None
    forecast: pd.DataFrame | None = None
    events: list[AnomalyEvent] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=dict)
    explanations: dict[int, Any] = field(default_factory=dict)  # event id -> Explanation
    error: str | None = None
    seconds: float = 0.0


def run_watch(
    config: AiopsConfig,
    watch: WatchConfig,
    *,
    source: MetricSource,
    store: Store,
    end: pd.Timestamp | None = None,
) -> WatchResult:
    """Run one watch once: every stage that exists, each recorded as a job run."""
    t0 = time.perf_counter()
    result = WatchResult(watch.name)
    run_id = store.start_run(watch.name, "fetch")
    try:
        batch = fetch_watch(config, watch, source=source, end=end)
    except AiopsError as exc:
        store.finish_run(run_id, status="error", error=str(exc))
        result.error = str(exc)
        result.seconds = time.perf_counter() - t0
        return result
    result.batch = batch
    store.finish_run(
        run_id, series=len(batch.series_ids), points=int(batch.frame["value"].notna().sum())
    )
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class DemoSummary:
    """What ``aiops demo`` tells the user at the end."""

    results: list[WatchResult]
    output_dir: Path
    store_url: str
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def render(self) -> str:
        lines = [f"aiops demo finished in {self.seconds:.1f}s"]
        for r in self.results:
            if r.error:
                lines.append(f"  {r.watch}: FAILED: {r.error}")
                continue
            n = len(r.batch.series_ids) if r.batch is not None else 0
            pts = int(r.batch.frame["value"].notna().sum()) if r.batch is not None else 0
            lines.append(f"  {r.watch}: {n} series, {pts} points, {len(r.events)} anomaly events")
        lines.append(f"store: {self.store_url}")
        for name, path in self.files.items():
            lines.append(f"{name}: {path}")
        return "\n".join(lines)


def run_demo(config: AiopsConfig, *, progress: bool = True) -> DemoSummary:
    """Run every watch once end to end and summarise (the README's first command)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Store.open(config.store.url)
    source = make_source(config)
    results = []
    bar = tqdm(config.watches, desc="watches", unit="watch", disable=not progress)
    for watch in bar:
        bar.set_postfix_str(watch.name)
        results.append(run_watch(config, watch, source=source, store=store))
    return DemoSummary(results, out, config.store.url, seconds=time.perf_counter() - t0)
