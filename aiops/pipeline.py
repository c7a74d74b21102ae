"""The pipeline: fetch -> fit/load -> forecast -> detect -> explain -> store -> publish.

Each stage is a function over a :class:`SeriesBatch` (or the frames derived from it), so a
batch of series can run in this process, on a GPU, or on another worker without change.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from aiops.config import AiopsConfig, WatchConfig
from aiops.errors import AiopsError
from aiops.executors import Executor, LocalExecutor, executor_for, shard_seed
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
    split = {"split_by": watch.split_by} if watch.split_by and getattr(source, "SPLITS_QUERIES", False) else {}
    batch = source.fetch(watch.query, start, end, step, watch=watch.name, max_series=watch.max_series, **split)
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
    capacity: dict[str, Any] = field(default_factory=dict)  # series id -> CapacityResult
    explanations: dict[int, Any] = field(default_factory=dict)  # event id -> Explanation
    markdown: dict[int, str] = field(default_factory=dict)  # event id -> annotation text
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Stages:
    """Collaborators a run may use; each is optional so a run does only what is configured."""

    explainer: Any = None  # aiops.explain.explainer.Explainer
    annotator: Any = None  # aiops.grafana.annotations.Annotator
    kb_search: Any = None  # callable(text, k) -> passages
    max_explained: int = 20  # events explained per run, highest peak first
    skip_explained: bool = False  # explain only events that are new or grew since their last explanation
    recent: pd.Timedelta | None = None  # only events ending within this window are explained
    executor: Any = None  # aiops.executors.Executor; default: the config's executor section


def score_watch(batch: SeriesBatch, watch: WatchConfig, executor: Executor | None = None, *, model: Any = None) -> pd.DataFrame:
    """Causal anomaly scores for every observation of the batch.

    With ``model`` (the watch's serving version, see :func:`fit_watch`) each row is scored from
    the model's one-step prediction; the fitted model travels to every shard, so with the Ray
    executor inference runs on the workers. Without, the history is scored as a backtest (fit on
    the past, refit on the model's default schedule), so events in the window are found the way
    a running scheduler would find them; each shard of series (see :mod:`aiops.executors`) is
    scored on its own with its own seed.
    """
    if model is not None:
        from aiops.models.lifecycle import scoring_model

        task = partial(_score_shard_with, model=scoring_model(model), window=watch.model.params.get("calib_window"))
        return (executor or LocalExecutor()).map_shards(task, batch)
    return (executor or LocalExecutor()).map_shards(partial(_score_shard, watch=watch), batch)


def forecast_watch(batch: SeriesBatch, watch: WatchConfig, executor: Executor | None = None, *, model: Any = None) -> pd.DataFrame:
    """Quantile forecast over the watch's horizon after the last observation.

    From ``model`` (the serving version) when given, else fitted on the fly per shard.
    """
    if model is not None:
        task = partial(_forecast_shard_with, model=model, steps=max(1, int(watch.horizon.td / watch.step.td)))
        return (executor or LocalExecutor()).map_shards(task, batch)
    return (executor or LocalExecutor()).map_shards(partial(_forecast_shard, watch=watch), batch)


def _score_shard_with(batch: SeriesBatch, shard: int, *, model: Any, window: int | None) -> pd.DataFrame:
    """One shard scored by an already fitted model (each series is scored on its own)."""
    return model.score(batch.frame, window=window)


def _forecast_shard_with(batch: SeriesBatch, shard: int, *, model: Any, steps: int) -> pd.DataFrame:
    return model.predict(steps, batch=batch.frame)


def _score_shard(batch: SeriesBatch, shard: int, *, watch: WatchConfig) -> pd.DataFrame:
    from aiops.models import detect_frame

    return detect_frame(
        batch.frame, step=batch.step or watch.step.td, level=watch.model.level, model=watch.model.kind,
        seed=shard_seed(watch.model.seed, shard), params=watch.model.params or None,
    )


def _forecast_shard(batch: SeriesBatch, shard: int, *, watch: WatchConfig) -> pd.DataFrame:
    from aiops.models import forecast_frame

    steps = max(1, int(watch.horizon.td / watch.step.td))
    return forecast_frame(
        batch.frame, steps, step=batch.step or watch.step.td, level=watch.model.level, model=watch.model.kind,
        seed=shard_seed(watch.model.seed, shard), params=watch.model.params or None,
    )


def _capacity(forecast: pd.DataFrame, watch: WatchConfig, now: pd.Timestamp) -> dict[str, Any]:
    if watch.capacity is None or forecast is None or forecast.empty:
        return {}
    from aiops.detect.capacity import time_to_threshold

    return time_to_threshold(forecast, watch.capacity, now, level=watch.model.level)


def _model_error(scores: pd.DataFrame) -> dict[str, float]:
    """Mean absolute error over the band half-width per series, on the last day of scores."""
    out: dict[str, float] = {}
    for sid, g in scores.groupby("series_id"):
        g = g.dropna(subset=["value", "yhat"]).tail(288)
        if g.empty:
            continue
        half = ((g["yhat_upper"] - g["yhat_lower"]) / 2).replace(0, float("nan"))
        err = ((g["value"] - g["yhat"]).abs() / half).mean()
        if err == err:
            out[str(sid)] = float(err)
    return out


def _group_label(batch: SeriesBatch, series: str) -> str | None:
    """The label to rank causes by (service, job, instance) when it tells the series apart."""
    labels = batch.labels.get(series, {})
    for key in ("service", "job", "instance"):
        if key in labels and len({lbl.get(key) for lbl in batch.labels.values()}) > 1:
            return key
    return None


def explain_events(
    config: AiopsConfig,
    watch: WatchConfig,
    result: WatchResult,
    store: Store,
    stages: Stages,
    now: pd.Timestamp,
) -> None:
    """Evidence then narrative for the watch's most severe events; stored and annotated."""
    from aiops.explain.evidence import evidence_for_event
    from aiops.explain.explainer import evidence_to_dict, render_markdown

    events = [e for e in result.events if e.id is not None]
    if stages.recent is not None:
        events = [e for e in events if e.end is None or e.end >= now - stages.recent]
    if stages.skip_explained:
        events, unchanged = _needs_explaining(store, events)
        for ev, md in unchanged:  # the region may have grown: refresh it with the explanation it has
            _annotate(stages, watch, ev, md)
    events = sorted(events, key=lambda e: -e.peak_score)[: stages.max_explained]
    if not events:
        return
    cap = [
        {"series": sid, "threshold": r.threshold, "seconds": r.median_seconds,
         "eta": r.median_time.isoformat() if r.median_time else None, "source": watch.query}
        for sid, r in result.capacity.items()
    ]
    evidences = []
    for ev in events:
        evidences.append(
            evidence_for_event(
                ev, result.scores, labels=result.batch.labels, query=watch.query,
                scope_labels=watch.scope_labels, capacity=[c for c in cap if c["series"] == ev.series_id] or None,
                kb_search=stages.kb_search, max_candidates=config.explain.max_candidates, now=now,
                group_by=_group_label(result.batch, ev.series_id),
            )
        )
    explanations = stages.explainer.explain_many(evidences)
    for ev, evidence, expl in zip(events, evidences, explanations):
        md = render_markdown(expl)
        store.add_explanation(
            subject_kind="event", subject_ref=f"event:{ev.id}", watch=watch.name, backend=expl.backend,
            evidence=evidence_to_dict(evidence), explanation=expl.to_dict(), markdown=md, guard_note=expl.guard_note,
        )
        result.explanations[ev.id] = expl
        result.markdown[ev.id] = md
        _annotate(stages, watch, ev, md)


def _annotate(stages: Stages, watch: WatchConfig, ev: AnomalyEvent, markdown: str) -> None:
    if stages.annotator is None:
        return
    from aiops.grafana.dashboards import PANEL_OBSERVED, dashboard_uid

    uid = dashboard_uid(watch.name) if watch.dashboard else None
    stages.annotator.enqueue(ev, markdown, uid, PANEL_OBSERVED if uid else None)


_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
REEXPLAIN_GROWTH = 1.25  # an explained event is explained again once its peak score grew by this factor


def _needs_explaining(store: Store, events: list[AnomalyEvent]) -> tuple[list[AnomalyEvent], list[tuple[AnomalyEvent, str]]]:
    """Split events into those to explain (new, or grown since their last explanation: a higher
    severity or a peak score ``REEXPLAIN_GROWTH`` times the explained one) and the others, with
    the Markdown of their last explanation."""
    import sqlalchemy as sa

    from aiops.store import explanations

    if not events:
        return [], []
    c = explanations.c
    refs = {f"event:{ev.id}": ev for ev in events}
    last: dict[str, Any] = {}
    q = (sa.select(c.subject_ref, c.evidence, c.markdown)
         .where((c.subject_kind == "event") & c.subject_ref.in_(list(refs))).order_by(c.id))
    with store.engine.connect() as conn:
        for row in conn.execute(q):
            last[row.subject_ref] = row  # ordered by id: the newest wins
    todo, unchanged = [], []
    for ref, ev in refs.items():
        row = last.get(ref)
        if row is None:
            todo.append(ev)
            continue
        peak, severity = _explained_peak(row.evidence)
        grew = (_SEVERITY_RANK.get(ev.severity, 0) > _SEVERITY_RANK.get(severity or ev.severity, 0)
                or (peak is not None and peak > 0 and ev.peak_score >= peak * REEXPLAIN_GROWTH))
        if grew:
            todo.append(ev)
        else:
            unchanged.append((ev, row.markdown))
    return todo, unchanged


def _explained_peak(evidence: Any) -> tuple[float | None, str | None]:
    """Peak score and severity an event had when its stored evidence was built."""
    for item in (evidence or {}).get("items", []) if isinstance(evidence, dict) else []:
        data = item.get("data") or {}
        if "peak_score" in data:
            try:
                return float(data["peak_score"]), data.get("severity")
            except (TypeError, ValueError):
                return None, data.get("severity")
    return None, None


def build_stages(config: AiopsConfig, store: Store, *, scheduled: bool = False) -> Stages:
    """The explain and annotate stages the config asks for.

    With ``scheduled`` (the scheduler's runs), only events ongoing or ended within
    ``explain.recent`` are explained, and only when new or grown since their last explanation;
    the others keep their explanation and get their annotation region refreshed.
    """
    from aiops.explain.explainer import Explainer
    from aiops.grafana.annotations import Annotator

    stages = Stages(explainer=Explainer(config.explain), annotator=Annotator.from_config(config.grafana, store))
    if config.explain.runbooks_dir:
        from aiops.explain.kb import KnowledgeBase

        stages.kb_search = KnowledgeBase.build(config.explain.runbooks_dir).search
    if scheduled:
        stages.skip_explained = True
        stages.recent = config.explain.recent.td
    return stages


def run_watch(
    config: AiopsConfig,
    watch: WatchConfig,
    *,
    source: MetricSource,
    store: Store,
    end: pd.Timestamp | None = None,
    stages: Stages | None = None,
) -> WatchResult:
    """Run one watch once: fetch, score, detect, forecast, capacity, publish, explain.

    Every run is recorded in the store's job runs; a failing stage records its error and the
    result carries it, so one bad watch never stops the others.
    """
    from aiops.detect.events import scores_to_events
    from aiops.outputs import write_outputs

    stages = stages or Stages()
    t0 = time.perf_counter()
    result = WatchResult(watch.name)
    run_id = store.start_run(watch.name, "infer")
    try:
        batch = fetch_watch(config, watch, source=source, end=end)
        result.batch = batch
        now = batch.frame["ts"].max()
        executor = stages.executor or executor_for(config.executor)
        serving = _serving_model(store, watch)
        result.scores = score_watch(batch, watch, executor, model=serving)
        events = scores_to_events(result.scores, watch=watch.name, detector=watch.detector, labels=batch.labels)
        for ev in events:
            store.upsert_event(ev)
        result.events = events
        result.forecast = forecast_watch(batch, watch, executor, model=serving)
        result.capacity = _capacity(result.forecast, watch, now)
        write_outputs(
            store, watch.name, batch.labels, scores=result.scores, forecast=result.forecast,
            time_to_threshold={sid: r.median_seconds for sid, r in result.capacity.items()} or None,
            model_error=_model_error(result.scores), threshold=watch.detector.threshold,
        )
        if stages.explainer is not None:
            explain_events(config, watch, result, store, stages, now)
    except AiopsError as exc:
        logger.warning("watch %s failed: %s", watch.name, exc)
        result.error = str(exc)
        store.finish_run(run_id, status="error", error=str(exc))
        result.seconds = time.perf_counter() - t0
        return result
    store.finish_run(
        run_id,
        series=len(batch.series_ids),
        points=int(batch.frame["value"].notna().sum()),
        details={"events": len(result.events), "explained": len(result.explanations)},
    )
    result.seconds = time.perf_counter() - t0
    return result


def models_root(config: AiopsConfig) -> Path:
    """Where model versions are saved: ``<output_dir>/models/<watch>/v<N>`` (shared by all scheduler nodes)."""
    return Path(config.output_dir) / "models"


def _serving_model(store: Store, watch: WatchConfig) -> Any:
    """The watch's serving model version when it fits the watch's config, else None."""
    from aiops.models.lifecycle import load_serving_for

    try:
        return load_serving_for(store, watch.name, watch.model.kind, watch.step.td)
    except AiopsError as exc:  # a store problem must not stop the run: fit on the fly
        logger.warning("watch %s: cannot look up the serving model: %s", watch.name, exc)
        return None


@dataclass
class FitResult:
    """What one fit of one watch produced."""

    watch: str
    version: Any = None  # aiops.models.lifecycle.VersionResult
    val_error: float | None = None
    drift: float | None = None  # recent error of the model serving before / its validation error
    error: str | None = None
    seconds: float = 0.0


def fit_watch(batch: SeriesBatch, watch: WatchConfig, store: Store, *, root: str | Path, refit: bool = True) -> FitResult:
    """Fit the watch's model on ``batch`` and register it as the watch's next model version.

    1. Drift: the model serving so far forecasts the observations after the data it was fitted
       on; its error there over its validation error is recorded (``record_drift``).
    2. Validation: a model fitted without the last horizon of every series (at most a quarter
       of the history) forecasts it; its error (MAE over the in-sample seasonal-naive MAE,
       mean over series) is the validation error. When the serving model was fitted on data
       ending before that held-out tail, it forecasts the same tail and the two errors are
       compared; otherwise the serving version's own validation error is the bar.
    3. The model is refitted on everything (``refit``; else the validated model is kept) and
       registered: promoted to serving when its validation error is not worse than the bar,
       otherwise kept as ``rejected`` and reported in the result and the log.
    """
    from aiops.models.api import make_model
    from aiops.models.lifecycle import forecast_error, record_drift, register_version, split_tail

    t0 = time.perf_counter()
    result = FitResult(watch.name)
    step = batch.step or watch.step.td
    frame = batch.frame
    serving = _serving_model(store, watch)
    fitted_end = None
    if serving is not None:
        from aiops.models.lifecycle import serving_version

        fitted_end = ((serving_version(store, watch.name) or {}).get("details") or {}).get("data_end")
        if fitted_end:
            end = pd.Timestamp(fitted_end)
            recent = forecast_error(serving, frame[frame["ts"] <= end], frame[frame["ts"] > end], step)
            if recent is not None:
                result.drift = record_drift(store, watch.name, recent)
    horizon = max(1, int(watch.horizon.td / watch.step.td))
    longest = int(frame.groupby("series_id")["ts"].count().max())
    tail = max(1, min(horizon, longest // 4))
    history, held, cut = split_tail(frame, tail, step)
    serving_error = None
    if fitted_end and pd.Timestamp(fitted_end) <= cut:  # the serving model has not seen the tail either
        serving_error = forecast_error(serving, history, held, step)

    def new_model():
        m = make_model(watch.model.kind, level=watch.model.level, seed=watch.model.seed, params=watch.model.params or None)
        if hasattr(m, "horizon"):
            m.horizon = horizon
        return m

    model = new_model().fit(history, step=step)
    result.val_error = forecast_error(model, history, held, step)
    if refit:
        model = new_model().fit(frame, step=step)
    details = {"data_end": pd.Timestamp(frame["ts"].max()).isoformat(), "series": len(batch.series_ids),
               "holdout_steps": tail, "refit": refit}
    result.version = register_version(store, watch.name, model, root, val_error=result.val_error, details=details,
                                      serving_error=serving_error)
    result.seconds = time.perf_counter() - t0
    return result


def run_fit(
    config: AiopsConfig, watch: WatchConfig, *, source: MetricSource, store: Store, end: pd.Timestamp | None = None
) -> FitResult:
    """The scheduler's fit job: fetch the watch's history and :func:`fit_watch` it.

    Recorded in the store's job runs as kind ``fit``; an error is recorded and carried in the
    result, never raised.
    """
    run_id = store.start_run(watch.name, "fit")
    t0 = time.perf_counter()
    try:
        batch = fetch_watch(config, watch, source=source, end=end)
        result = fit_watch(batch, watch, store, root=models_root(config))
    except AiopsError as exc:
        logger.warning("fit of watch %s failed: %s", watch.name, exc)
        store.finish_run(run_id, status="error", error=str(exc))
        return FitResult(watch.name, error=str(exc), seconds=time.perf_counter() - t0)
    v = result.version
    if not v.promoted:
        logger.warning("watch %s: new model v%d not promoted (validation error %s, serving %s)",
                       watch.name, v.version, v.val_error, v.serving_error)
    store.finish_run(
        run_id, series=len(batch.series_ids), points=int(batch.frame["value"].notna().sum()),
        details={"version": v.version, "status": v.status, "val_error": v.val_error,
                 "serving_error": v.serving_error, "drift": result.drift},
    )
    return result


@dataclass
class DemoSummary:
    """What ``aiops demo`` tells the user at the end."""

    results: list[WatchResult]
    output_dir: Path
    store_url: str
    files: dict[str, Path] = field(default_factory=dict)
    rankings: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0

    def render(self, top: int = 5) -> str:
        lines = [f"aiops demo finished in {self.seconds:.1f}s"]
        for r in self.results:
            if r.error:
                lines.append(f"  {r.watch}: FAILED: {r.error}")
                continue
            n = len(r.batch.series_ids) if r.batch is not None else 0
            extra = ""
            for sid, cap in r.capacity.items():
                extra += f"; {sid}: {cap.text}"
            lines.append(f"  {r.watch}: {n} series, {len(r.events)} anomaly events, {len(r.explanations)} explained{extra}")
        explained = [
            (ev, r.explanations[ev.id]) for r in self.results for ev in r.events if ev.id in r.explanations
        ]
        explained.sort(key=lambda p: -p[0].peak_score)
        if explained:
            lines.append("")
            lines.append("Top explained anomalies:")
            for ev, expl in explained[:top]:
                when = f"{ev.start:%Y-%m-%d %H:%M}" + ("" if ev.end is None else f"-{ev.end:%H:%M}")
                lines.append(f"  [{ev.severity}] {ev.watch} {when} UTC: {expl.title}")
                lines.append(f"      {expl.summary}")
        for name, ranking in self.rankings.items():
            if ranking:
                best = ", ".join(f"{c['name']} ({c['score']:.2f})" for c in ranking[:3])
                lines.append(f"\nRoot-cause ranking for {name}: {best}")
        lines.append("")
        lines.append(f"store: {self.store_url}")
        for name, path in self.files.items():
            lines.append(f"{name}: {path}")
        return "\n".join(lines)


def _rank_incident(result: WatchResult) -> tuple[str, list[dict]] | None:
    """Root-cause ranking around the watch's strongest event, by the series' own labels."""
    from aiops.errors import InputError
    from aiops.explain.rca import rank_root_causes

    if result.batch is None or not result.events:
        return None
    ev = max(result.events, key=lambda e: e.peak_score)
    group_by = _group_label(result.batch, ev.series_id)
    try:
        cands = rank_root_causes(result.batch.frame, ev.series_id, pd.Timestamp(ev.start),
                                 labels=result.batch.labels, group_by=group_by, step=result.batch.step, limit=10)
    except InputError as exc:
        logger.info("no root-cause ranking for %s: %s", ev.series_id, exc)
        return None
    return f"{ev.series_id} at {ev.start:%Y-%m-%d %H:%M} UTC", [c.to_dict() for c in cands]


def run_demo(config: AiopsConfig, *, progress: bool = True) -> DemoSummary:
    """Run every watch once end to end and summarise (the README's first command)."""
    from tqdm.auto import tqdm

    from aiops.report import write_report

    t0 = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Store.open(config.store.url)
    source = make_source(config)
    stages = build_stages(config, store)
    files: dict[str, Path] = {}
    if config.grafana.url:
        from aiops.grafana.client import GrafanaClient
        from aiops.grafana.dashboards import provision

        report = provision(config, GrafanaClient.from_config(config.grafana))
        logger.info("grafana: %s", report)
    else:
        from aiops.grafana.export import write_dashboards

        written = write_dashboards(config)
        if written:
            files["grafana dashboards"] = Path(written[0]).parent
    results = []
    bar = tqdm(config.watches, desc="pipeline", unit="watch", disable=not progress)
    for watch in bar:
        bar.set_postfix_str(f"{watch.name}: fetch, fit, forecast, detect, explain")
        results.append(run_watch(config, watch, source=source, store=store, stages=stages))
    flushed = stages.annotator.flush()
    logger.info("annotations: %s", flushed)
    if not config.grafana.url:
        files["grafana annotations"] = Path(config.grafana.output_dir) / "annotations"
    rankings = {}
    for r in results:
        ranked = _rank_incident(r)
        if ranked:
            rankings[ranked[0]] = ranked[1]
            break  # the strongest incident of the first watch that has one
    thresholds = {w.name: w.detector.threshold for w in config.watches}
    files["report"] = write_report(out / "report.html", results, thresholds=thresholds, rankings=rankings)
    return DemoSummary(results, out, config.store.url, files=files, rankings=rankings, seconds=time.perf_counter() - t0)
