"""Output series: what aiops computes, stored as Prometheus-style series.

Names are fixed (see docs/output-series.md); each keeps the source series' labels (minus
``__name__``, which moves to ``source_metric``) and adds ``watch``:

==================================  ======================================================
``aiops_forecast{bound="yhat"}``    forecast (in-sample fit over history, then the horizon)
``aiops_forecast{bound="lower"}``   lower edge of the calibrated band
``aiops_forecast{bound="upper"}``   upper edge of the calibrated band
``aiops_anomaly_score``             1.0 = edge of the band; above = outside it
``aiops_anomaly``                   1 inside an anomaly (from a score at or above the threshold
                                    while the series stays outside its band), else 0
``aiops_time_to_threshold_seconds`` seconds until the capacity threshold is crossed
                                    (``+Inf`` = not within the horizon)
``aiops_model_error``               the model's validation error on that series
==================================  ======================================================

A source label that clashes with one aiops adds (``watch``, ``bound``, ``source_metric``) is
kept as ``exported_<name>``, the way Prometheus keeps clashing target labels.

Points live in ``output_points`` keyed by (series, unix ms) and are upserted, so writing the
same frame twice changes nothing. Readers evaluate like Prometheus: at each evaluation time
the newest point not older than ``lookback`` is the value.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from aiops.detect.events import anomalous_rows
from aiops.errors import InputError, StoreError
from aiops.promql import Selector, parse_selector
from aiops.store import Store, output_points, output_series
from aiops.types import parse_series_id, series_id

logger = logging.getLogger(__name__)

FORECAST = "aiops_forecast"
ANOMALY_SCORE = "aiops_anomaly_score"
ANOMALY = "aiops_anomaly"
TIME_TO_THRESHOLD = "aiops_time_to_threshold_seconds"
MODEL_ERROR = "aiops_model_error"

#: metric name -> HELP text (also served by /api/v1/metadata and /metrics)
METRICS: dict[str, str] = {
    FORECAST: "Forecast of the source series; bound=yhat|lower|upper (calibrated band).",
    ANOMALY_SCORE: "Anomaly score of the source series; 1.0 is the edge of the calibrated band.",
    ANOMALY: "1 from a score at or above the watch's threshold while the series stays outside its band, else 0.",
    TIME_TO_THRESHOLD: "Seconds until the forecast crosses the capacity threshold (+Inf: not within the horizon).",
    MODEL_ERROR: "Validation error of the model serving this series.",
}
ADDED_LABELS = ("watch", "bound", "source_metric")
DEFAULT_LOOKBACK = pd.Timedelta("5m")
_CHUNK = 500  # ids per IN (...) clause; well under every backend's bind-parameter limit


@dataclass
class OutputSeries:
    """One stored output series: its row id and full label set (with ``__name__``)."""

    id: int
    labels: dict[str, str]

    @property
    def metric(self) -> str:
        return self.labels["__name__"]


def output_labels(source: Mapping[str, str], metric: str, watch: str, **extra: str) -> dict[str, str]:
    """Labels of an output series derived from a source series' labels."""
    out: dict[str, str] = {}
    for k, v in source.items():
        if k == "__name__":
            continue
        out[f"exported_{k}" if k in ADDED_LABELS else k] = str(v)
    if source.get("__name__"):
        out["source_metric"] = str(source["__name__"])
    out.update(extra)
    out["watch"] = watch
    out["__name__"] = metric
    return out


def source_labels(output: Mapping[str, str]) -> dict[str, str]:
    """Inverse of :func:`output_labels`: the source series' labels of an output series."""
    out = {k: v for k, v in output.items() if k not in ("__name__", "source_metric") + ADDED_LABELS}
    for k in ADDED_LABELS:
        if f"exported_{k}" in output:
            out.pop(f"exported_{k}", None)
            out[k] = output[f"exported_{k}"]
    if "source_metric" in output:
        out["__name__"] = output["source_metric"]
    return out


# --------------------------------------------------------------------------- writing


def write_outputs(
    store: Store,
    watch: str,
    labels: Mapping[str, Mapping[str, str]],
    scores: pd.DataFrame | None = None,
    forecast: pd.DataFrame | None = None,
    time_to_threshold: Mapping[str, float | None] | None = None,
    model_error: Mapping[str, float] | None = None,
    threshold: float = 1.0,
    at: pd.Timestamp | None = None,
) -> int:
    """Upsert a watch's outputs; returns the number of points written.

    Args:
        store: where to write.
        watch: the watch name (label ``watch``).
        labels: source series_id -> its labels; series missing here are parsed from the id.
        scores: frame with series_id, ts, anomaly_score and optionally yhat, yhat_lower, yhat_upper
            (in-sample band, drawn over history).
        forecast: frame with series_id, ts, yhat, yhat_lower, yhat_upper (the horizon).
        time_to_threshold: series_id -> seconds until crossing, None = not within the horizon.
        model_error: series_id -> validation error.
        threshold: score at or above which ``aiops_anomaly`` becomes 1 (and stays 1 while the
            score is at or above 1.0, the band edge).
        at: timestamp of the time-to-threshold and model-error points (default: the newest
            scored timestamp, else now).

    Raises:
        InputError: a frame lacks a required column.
        StoreError: the write failed; nothing was written.
    """
    parts: list[tuple[dict[str, str], np.ndarray, np.ndarray]] = []
    if scores is not None and len(scores):
        _require(scores, ("series_id", "ts", "anomaly_score"), "scores")
        parts += _frame_parts(scores, labels, watch, ANOMALY_SCORE, "anomaly_score")
        ordered = scores.sort_values(["series_id", "ts"], kind="stable")
        flag = np.concatenate(
            [anomalous_rows(g.to_numpy(float), threshold) for _, g in ordered.groupby("series_id", sort=False)["anomaly_score"]]
        ).astype(float)
        anomaly = ordered[["series_id", "ts"]].assign(flag=flag)
        anomaly.loc[ordered["anomaly_score"].isna().to_numpy(), "flag"] = np.nan
        parts += _frame_parts(anomaly, labels, watch, ANOMALY, "flag")
        for col, bound in (("yhat", "yhat"), ("yhat_lower", "lower"), ("yhat_upper", "upper")):
            if col in scores.columns:
                parts += _frame_parts(scores, labels, watch, FORECAST, col, bound=bound)
    if forecast is not None and len(forecast):
        _require(forecast, ("series_id", "ts", "yhat", "yhat_lower", "yhat_upper"), "forecast")
        for col, bound in (("yhat", "yhat"), ("yhat_lower", "lower"), ("yhat_upper", "upper")):
            parts += _frame_parts(forecast, labels, watch, FORECAST, col, bound=bound)
    if at is None:
        at = pd.Timestamp(scores["ts"].max()) if scores is not None and len(scores) else pd.Timestamp.now(tz="UTC")
    at_ms = np.array([_ms(pd.DatetimeIndex([at]))[0]])
    for metric, values in ((TIME_TO_THRESHOLD, time_to_threshold), (MODEL_ERROR, model_error)):
        for sid, v in (values or {}).items():
            v = float("inf") if v is None else float(v)
            if v == v:  # NaN = nothing known; write nothing
                parts.append((output_labels(_source_labels(labels, sid), metric, watch), at_ms, np.array([v])))
    return _write(store, watch, parts)


def _require(frame: pd.DataFrame, cols: Sequence[str], name: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise InputError(
            f"{name} frame lacks column(s) {', '.join(missing)}",
            hint=f"{name} needs columns {', '.join(cols)}",
        )


def _source_labels(labels: Mapping[str, Mapping[str, str]], sid: str) -> Mapping[str, str]:
    if sid in labels:
        return labels[sid]
    try:
        return parse_series_id(sid)
    except ValueError:
        return {"series": sid}


def _ms(ts: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    idx = pd.DatetimeIndex(ts)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    return idx.as_unit("ms").asi8.astype(np.int64)


def _frame_parts(frame, labels, watch, metric, col, **extra):
    """Split one column of a long frame into (output labels, ts_ms, values) per series, NaN dropped."""
    codes, uniq = pd.factorize(frame["series_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
    ts, vals = _ms(frame["ts"]), frame[col].to_numpy(dtype=float)
    out = []
    for i, sid in enumerate(uniq):
        rows = order[bounds[i] : bounds[i + 1]]
        keep = rows[~np.isnan(vals[rows])]
        if len(keep):
            out.append((output_labels(_source_labels(labels, sid), metric, watch, **extra), ts[keep], vals[keep]))
    return out


def _write(store: Store, watch: str, parts: list[tuple[dict[str, str], np.ndarray, np.ndarray]]) -> int:
    if not parts:
        return 0
    keys = {series_id(lbl): lbl for lbl, _, _ in parts}
    with store.begin() as conn:
        ids = _series_ids(conn, list(keys))
        new = [
            {"key": k, "metric": lbl["__name__"], "watch": watch, "labels": lbl}
            for k, lbl in keys.items()
            if k not in ids
        ]
        if new:
            conn.execute(output_series.insert(), new)
            ids.update(_series_ids(conn, [r["key"] for r in new]))
        pts = pd.DataFrame(
            {
                "series": np.concatenate([np.full(len(ts), ids[series_id(lbl)], dtype=np.int64) for lbl, ts, _ in parts]),
                "ts": np.concatenate([ts for _, ts, _ in parts]),
                "value": np.concatenate([vals for _, _, vals in parts]),
            }
        ).drop_duplicates(["series", "ts"], keep="last")  # later parts win, as an upsert would
        rows = list(zip(pts["series"].tolist(), pts["ts"].tolist(), pts["value"].tolist()))
        _upsert_points(conn, rows)
    logger.debug("wrote %d output points over %d series for watch %s", len(rows), len(keys), watch)
    return len(rows)


def _series_ids(conn: sa.Connection, keys: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(keys), _CHUNK):
        q = sa.select(output_series.c.key, output_series.c.id).where(output_series.c.key.in_(keys[i : i + _CHUNK]))
        out.update({k: int(v) for k, v in conn.execute(q)})
    return out


def _upsert_points(conn: sa.Connection, rows: list[tuple[int, int, float]]) -> None:
    dialect = conn.dialect.name
    if dialect in ("sqlite", "postgresql"):
        # Raw executemany: ~5x faster than Core for millions of points; both speak ON CONFLICT.
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO output_points (series, ts, value) VALUES ({mark}, {mark}, {mark}) "
            "ON CONFLICT (series, ts) DO UPDATE SET value = excluded.value"
        )
        for i in range(0, len(rows), 100_000):
            conn.exec_driver_sql(sql, rows[i : i + 100_000])
        return
    # Other backends: delete what is about to be written, then insert (same transaction).
    by_series: dict[int, list[int]] = {}
    for sid, t, _ in rows:
        by_series.setdefault(sid, []).append(t)
    for sid, tss in by_series.items():
        conn.execute(output_points.delete().where((output_points.c.series == sid) & output_points.c.ts.in_(tss)))
    conn.execute(output_points.insert(), [{"series": s, "ts": t, "value": v} for s, t, v in rows])


def prune_outputs(store: Store, before: pd.Timestamp, watch: str | None = None) -> int:
    """Delete output points older than ``before`` (optionally for one watch); returns the count."""
    cutoff = int(_ms(pd.DatetimeIndex([before]))[0])
    q = output_points.delete().where(output_points.c.ts < cutoff)
    if watch:
        q = q.where(output_points.c.series.in_(sa.select(output_series.c.id).where(output_series.c.watch == watch)))
    with store.begin() as conn:
        return int(conn.execute(q).rowcount or 0)


# --------------------------------------------------------------------------- reading


def _as_selectors(matchers: str | Selector | Iterable[str | Selector]) -> list[Selector]:
    if isinstance(matchers, (str, Selector)):
        matchers = [matchers]
    return [parse_selector(m) if isinstance(m, str) else m for m in matchers]


def select_series(store: Store, matchers: str | Selector | Iterable[str | Selector] | None = None) -> list[OutputSeries]:
    """Output series matching any of the selectors (all series when None), sorted by labels."""
    selectors = _as_selectors(matchers) if matchers is not None else []
    q = sa.select(output_series.c.id, output_series.c.labels)
    names = {s.metric_name for s in selectors}
    if selectors and None not in names:
        q = q.where(output_series.c.metric.in_(sorted(names)))
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(q).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read output series: {getattr(exc, 'orig', exc)}") from None
    out = [OutputSeries(int(i), dict(lbl)) for i, lbl in rows]
    if selectors:
        out = [s for s in out if any(sel.matches(s.labels) for sel in selectors)]
    return sorted(out, key=lambda s: series_id(s.labels))


def _points(store: Store, ids: list[int], start_ms: int, end_ms: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    got: dict[int, tuple[list[int], list[float]]] = {}
    c = output_points.c
    try:
        with store.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                q = (
                    sa.select(c.series, c.ts, c.value)
                    .where(c.series.in_(ids[i : i + _CHUNK]), c.ts >= start_ms, c.ts <= end_ms)
                    .order_by(c.series, c.ts)
                )
                for s, t, v in conn.execute(q):
                    entry = got.setdefault(s, ([], []))
                    entry[0].append(t)
                    entry[1].append(v)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read output points: {getattr(exc, 'orig', exc)}") from None
    return {s: (np.asarray(t, dtype=np.int64), np.asarray(v, dtype=float)) for s, (t, v) in got.items()}


def sample_at(
    store: Store, series: list[OutputSeries], times_ms: np.ndarray, lookback_ms: int
) -> list[tuple[OutputSeries, np.ndarray]]:
    """Each series' value at each evaluation time (NaN where no point within the lookback)."""
    if not series or not len(times_ms):
        return []
    pts = _points(store, [s.id for s in series], int(times_ms.min()) - lookback_ms + 1, int(times_ms.max()))
    out = []
    for s in series:
        if s.id not in pts:
            continue
        ts, vals = pts[s.id]
        idx = np.searchsorted(ts, times_ms, side="right") - 1
        ok = idx >= 0
        got = np.full(len(times_ms), np.nan)
        got[ok] = vals[idx[ok]]
        got[ok] = np.where(ts[idx[ok]] > times_ms[ok] - lookback_ms, got[ok], np.nan)
        out.append((s, got))
    return out


def eval_times(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> np.ndarray:
    """Evaluation times in unix ms from start to end (inclusive) every step."""
    s, e = int(_ms(pd.DatetimeIndex([start]))[0]), int(_ms(pd.DatetimeIndex([end]))[0])
    st = max(int(step.total_seconds() * 1000), 1)
    return np.arange(s, e + 1, st, dtype=np.int64)


def read_range(
    store: Store,
    selector: str | Selector,
    start: pd.Timestamp,
    end: pd.Timestamp,
    step: pd.Timedelta,
    lookback: pd.Timedelta = DEFAULT_LOOKBACK,
) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
    """Range query of one selector: ``[(labels, times_ms, values)]`` without NaN steps."""
    times = eval_times(start, end, step)
    out = []
    for s, vals in sample_at(store, select_series(store, selector), times, int(lookback.total_seconds() * 1000)):
        keep = ~np.isnan(vals)
        if keep.any():
            out.append((s.labels, times[keep], vals[keep]))
    return out


def read_instant(
    store: Store, selector: str | Selector, time: pd.Timestamp, lookback: pd.Timedelta = DEFAULT_LOOKBACK
) -> list[tuple[dict[str, str], float]]:
    """Instant query of one selector: ``[(labels, value)]`` at ``time``."""
    return [(lbl, float(v[0])) for lbl, _, v in read_range(store, selector, time, time, pd.Timedelta("1s"), lookback)]


def label_names(store: Store, matchers=None) -> list[str]:
    """Sorted label names over the matching output series (``__name__`` included)."""
    return sorted({k for s in select_series(store, matchers) for k in s.labels})


def label_values(store: Store, name: str, matchers=None) -> list[str]:
    """Sorted values of one label over the matching output series."""
    return sorted({s.labels[name] for s in select_series(store, matchers) if name in s.labels})


def latest_points(
    store: Store, now: pd.Timestamp | None = None, max_age: pd.Timedelta | None = None
) -> list[tuple[dict[str, str], int, float]]:
    """Each output series' newest point at or before ``now``: ``[(labels, ts_ms, value)]``.

    Points older than ``now - max_age`` are left out, so a removed watch stops being exported.
    """
    now_ms = int(_ms(pd.DatetimeIndex([now if now is not None else pd.Timestamp.now(tz="UTC")]))[0])
    c = output_points.c
    newest = sa.select(c.series, sa.func.max(c.ts).label("ts")).where(c.ts <= now_ms)
    if max_age is not None:
        newest = newest.where(c.ts >= now_ms - int(max_age.total_seconds() * 1000))
    newest = newest.group_by(c.series).subquery()
    q = (
        sa.select(output_series.c.labels, c.ts, c.value)
        .select_from(newest.join(output_points, (c.series == newest.c.series) & (c.ts == newest.c.ts)))
        .join(output_series, output_series.c.id == c.series)
    )
    try:
        with store.engine.connect() as conn:
            return [(dict(lbl), int(t), float(v)) for lbl, t, v in conn.execute(q)]
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read output points: {getattr(exc, 'orig', exc)}") from None
