"""Anomaly scores -> :class:`~aiops.types.AnomalyEvent`.

An event starts at a row of one series scoring at or above ``detector.threshold`` and lasts
while the following rows stay outside the band (score at or above 1.0, ``BAND_EDGE``): a score
above 1 counts only new information (:mod:`aiops.models.calibrate`), so the rows of a lasting
shift after its onset score 1.0 and belong to the event that the onset opened. Runs closer
than ``merge_gap`` merge into one; a run shorter than ``min_duration`` is dropped unless it is
still ongoing at the last row (it may yet grow). Severity comes from the peak score; the
direction from the shape of the residuals over the event.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import pandas as pd

from aiops.config import DetectorConfig
from aiops.errors import InputError
from aiops.types import AnomalyEvent, Direction, Severity

logger = logging.getLogger(__name__)

REQUIRED = ("series_id", "ts", "anomaly_score")
LEVEL_MIN_ROWS = 6  # a run at least this long that keeps its sign is a shift, not a spike
BAND_EDGE = 1.0  # anomaly_score of the calibrated band's edge


def scores_to_events(
    scores_df: pd.DataFrame,
    *,
    watch: str,
    detector: DetectorConfig,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> list[AnomalyEvent]:
    """Events of every series in ``scores_df`` (columns of ``aiops.types.SCORE_COLUMNS``).

    ``value``/``yhat``/``yhat_lower``/``yhat_upper`` are optional; without them observed and
    expected are NaN and the direction defaults to spike. An event whose last anomalous row
    is the series' last row is ongoing (``end`` is None).
    """
    missing = [c for c in REQUIRED if c not in scores_df.columns]
    if missing:
        raise InputError(f"scores frame lacks column(s) {', '.join(missing)}")
    if scores_df.empty:
        return []
    df = scores_df.copy()
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    for c in ("value", "yhat", "yhat_lower", "yhat_upper"):
        if c not in df.columns:
            df[c] = np.nan
    df = df.sort_values(["series_id", "ts"], kind="stable")
    events: list[AnomalyEvent] = []
    for sid, g in df.groupby("series_id", sort=True):
        events.extend(_series_events(str(sid), g.reset_index(drop=True), watch, detector, dict((labels or {}).get(sid, {}))))
    return events


def _runs(hot: np.ndarray, ts: np.ndarray, merge_gap: np.timedelta64) -> list[tuple[int, int]]:
    """(first, last) row index of runs of True, merging runs whose gap is within ``merge_gap``."""
    idx = np.flatnonzero(hot)
    if idx.size == 0:
        return []
    runs = [[idx[0], idx[0]]]
    for i in idx[1:]:
        last = runs[-1][1]
        if i == last + 1 or ts[i] - ts[last] <= merge_gap:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]


def anomalous_rows(score: np.ndarray, threshold: float) -> np.ndarray:
    """Rows at or above ``threshold``, each extended over the out-of-band rows right after it.

    The rows events are made of (before merging across gaps); also ``aiops_anomaly`` = 1.
    NaN scores count as in-band.
    """
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=0.0)
    alert = score >= threshold
    out = score >= BAND_EDGE
    run = np.cumsum(~out)  # out-of-band rows in one contiguous stretch share a number
    started = pd.Series(alert).groupby(run).cummax().to_numpy()
    return alert | (out & started)


def _series_events(sid: str, g: pd.DataFrame, watch: str, det: DetectorConfig, labels: dict) -> list[AnomalyEvent]:
    score = g["anomaly_score"].to_numpy(dtype=np.float64)
    ts = g["ts"].to_numpy()
    hot = anomalous_rows(score, det.threshold)
    step = np.median(np.diff(ts)) if len(ts) > 1 else np.timedelta64(0, "ns")
    gap = np.timedelta64(int(det.merge_gap.td.value), "ns")
    min_dur = det.min_duration.td
    out = []
    for a, b in _runs(hot, ts, gap):
        ongoing = b == len(g) - 1
        # an event covers its last anomalous row, so it lasts (last - first + one step)
        duration = pd.Timedelta(ts[b] - ts[a]) + pd.Timedelta(step)
        if duration < min_dur and not ongoing:
            continue
        seg = g.iloc[a : b + 1]
        k = int(np.nanargmax(seg["anomaly_score"].to_numpy()))
        peak = seg.iloc[k]
        end = None if ongoing else (pd.Timestamp(ts[b]) + pd.Timedelta(step)).to_pydatetime()
        out.append(
            AnomalyEvent(
                watch=watch,
                series_id=sid,
                start=pd.Timestamp(ts[a]).to_pydatetime(),
                end=end,
                peak_time=pd.Timestamp(peak["ts"]).to_pydatetime(),
                peak_score=float(peak["anomaly_score"]),
                severity=_severity(float(peak["anomaly_score"]), det),
                direction=_direction(seg),
                observed=float(peak["value"]),
                expected=float(peak["yhat"]),
                expected_lower=float(peak["yhat_lower"]),
                expected_upper=float(peak["yhat_upper"]),
                labels=labels,
            )
        )
    return out


def _severity(peak: float, det: DetectorConfig) -> Severity:
    if peak >= det.critical_score:
        return "critical"
    if peak >= det.threshold + 0.5 * (det.critical_score - det.threshold):
        return "warning"
    return "info"


def _direction(seg: pd.DataFrame) -> Direction:
    """spike/drop for short or mixed runs; level_shift for a lasting one-sided offset;
    trend_change when that offset keeps growing along the run."""
    r = (seg["value"] - seg["yhat"]).to_numpy(dtype=np.float64)
    ok = np.isfinite(r)
    if not ok.any():
        return "spike"
    r = r[ok]
    peak_sign = np.sign(r[int(np.argmax(np.abs(r)))]) or 1.0
    same = float(np.mean(np.sign(r) == peak_sign))
    if len(r) >= LEVEL_MIN_ROWS and same >= 0.8:
        x = np.arange(len(r))
        slope = np.polyfit(x, r * peak_sign, 1)[0]
        rise = slope * (len(r) - 1)
        mean = float(np.mean(np.abs(r)))
        # an offset that grows steadily from small to large is a trend, a flat one a level shift
        if rise > 1.0 * mean and abs(r[0]) < 0.5 * np.max(np.abs(r)):
            return "trend_change"
        return "level_shift"
    return "spike" if peak_sign > 0 else "drop"
