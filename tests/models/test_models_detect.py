"""Known-answer tests: calibration on normal data, injected anomalies found early, events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.config import DetectorConfig
from aiops.detect.events import scores_to_events
from aiops.models import detect_frame, forecast_frame

from .conftest import seasonal


def test_calibration_on_normal_data_matches_level():
    frame = seasonal(24 * 40, seed=7)
    for level in (0.8, 0.9):
        sc = detect_frame(frame, level=level)
        tail = sc.iloc[len(sc) // 4 :]  # after warm-up
        share = float((tail["anomaly_score"] >= 1.0).mean())
        assert abs(share - (1 - level)) < 0.05, (level, share)


def test_score_is_causal():
    frame = seasonal(24 * 12, seed=1)
    full = detect_frame(frame)
    changed = frame.copy()
    changed.loc[changed.index[200:], "value"] += 100.0  # the future changes
    part = detect_frame(changed)
    cols = ["anomaly_score", "yhat", "yhat_lower", "yhat_upper"]
    pd.testing.assert_frame_equal(full.iloc[:200][cols], part.iloc[:200][cols])


@pytest.mark.parametrize(
    "kind, direction",
    [("spike", "spike"), ("drop", "drop"), ("shift", "level_shift")],
)
def test_injected_anomaly_is_found_early(kind, direction):
    frame = seasonal(24 * 21, seed=11)
    at = 24 * 16 + 5
    v = frame["value"].to_numpy().copy()
    if kind == "spike":
        v[at] += 6.0
    elif kind == "drop":
        v[at] -= 6.0
    else:
        v[at:] += 5.0
    frame["value"] = v
    sc = detect_frame(frame)
    det = DetectorConfig(threshold=4.0, merge_gap="3h", min_duration="0s", critical_score=6.0)
    events = scores_to_events(sc, watch="w", detector=det)
    onset = frame["ts"].iloc[at]
    near = [e for e in events if abs(pd.Timestamp(e.start) - onset) <= pd.Timedelta("3h")]
    assert near, [(e.start, e.peak_score) for e in events]
    ev = near[0]
    assert ev.direction == direction
    assert ev.peak_score >= 4.0
    assert ev.severity in ("warning", "critical")
    if kind != "shift":
        assert ev.end is not None and abs(ev.observed - ev.expected) > 4.0


def test_no_events_on_clean_data_beyond_rate(clean):
    sc = detect_frame(clean)
    det = DetectorConfig(threshold=4.0, merge_gap="2h", min_duration="0s")
    events = scores_to_events(sc, watch="w", detector=det)
    # the score of 4 is about p = 0.2**4 = 0.0016 per point: ~1 expected in 500 points
    assert len(events) <= 3, [(e.start, e.peak_score) for e in events]


def test_events_merge_gaps_min_duration_and_ongoing():
    ts = pd.date_range("2024-01-01", periods=20, freq="5min", tz="UTC")
    s = np.zeros(20)
    s[[3, 5]] = 2.0  # two blips 10 min apart: merge into one event
    s[10] = 5.0  # a lone point: dropped by min_duration 10m
    s[17:] = 1.5  # runs to the end: ongoing, kept although short
    df = pd.DataFrame({"series_id": "x", "ts": ts, "anomaly_score": s, "value": s, "yhat": 0.0,
                       "yhat_lower": -1.0, "yhat_upper": 1.0})
    det = DetectorConfig(threshold=1.0, merge_gap="10m", min_duration="10m", critical_score=4.0)
    ev = scores_to_events(df, watch="w", detector=det)
    assert len(ev) == 2
    assert ev[0].start == ts[3] and ev[0].end == ts[5] + pd.Timedelta("5min")
    assert ev[1].start == ts[17] and ev[1].end is None and ev[1].ongoing
    det2 = DetectorConfig(threshold=1.0, merge_gap="5m", min_duration="0s", critical_score=4.0)
    ev2 = scores_to_events(df, watch="w", detector=det2)
    assert [e.severity for e in ev2] == ["info", "info", "critical", "info"]


def test_forecast_frame_bands_cover_and_handle_horizon_forms(clean):
    hist, fut = clean.iloc[:-48], clean.iloc[-48:]
    fc = forecast_frame(hist, "2d", model="robust")
    assert len(fc) == 48
    inside = ((fut["value"].to_numpy() >= fc["yhat_lower"].to_numpy())
              & (fut["value"].to_numpy() <= fc["yhat_upper"].to_numpy())).mean()
    assert 0.6 <= inside <= 0.98
    mae = np.abs(fut["value"].to_numpy() - fc["yhat"].to_numpy()).mean()
    assert mae < 0.6  # noise sd 0.3: the daily cycle (amplitude 3) is captured
    assert len(forecast_frame(hist, 5, model="seasonal_naive")) == 5
