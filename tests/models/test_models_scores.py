"""Known answers for the "new information" anomaly score and the events built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.config import DetectorConfig
from aiops.detect.events import scores_to_events
from aiops.models import detect_frame
from aiops.models.calibrate import new_information, seasonal_distance, tail_probability

from .conftest import seasonal


def test_seasonal_distance_is_the_nearest_same_phase_value_before():
    y = np.arange(20, dtype=float)
    y[13] = 100.0
    d = seasonal_distance(y, 5, seasons=2, width=1)
    assert np.isnan(d[:4]).all()  # lag 4 (5 - 1) is the shortest
    assert d[4] == 4.0  # y[4] - y[0]
    assert d[10] == 4.0  # nearest of y[4..6] and y[0..1] is y[6]
    assert d[13] == 100.0 - 9.0  # the outlier is far from y[7..9] and y[2..4]
    assert d[18] == 100.0 - 18.0 or d[18] == 4.0  # y[13] is a candidate of t=18 (lag 5) but y[14] is closer
    assert d[18] == 4.0


def test_new_information_needs_to_beat_the_recent_past():
    s = np.array([0.0, 5.0, 4.0, 6.0, np.nan, 6.0, 1.0, 1.0, 1.0, 2.0])
    # a tie is not new; a missing row never is; 2.0 is new once the 6.0 is 3 rows back
    assert new_information(s, 3).tolist() == [True, True, False, True, False, False, False, False, False, True]


def test_tail_probability_of_a_missing_value_is_missing():
    a = np.r_[np.linspace(0, 1, 50), np.nan, 0.5]
    p = tail_probability(a, every=8, min_n=8)
    assert np.isnan(p[50]) and 0.2 < p[51] < 0.8


def _with(frame: pd.DataFrame, at: list[int], add: float) -> pd.DataFrame:
    f = frame.copy()
    v = f["value"].to_numpy().copy()
    v[at] += add
    f["value"] = v
    return f


def test_a_deviation_that_recurs_daily_is_not_new():
    """A daily batch job near 03:00 (an hour early or late) leaves the band; only its first day alerts."""
    frame = seasonal(24 * 20, seed=3)
    days = np.arange(24 * 8 + 3, 24 * 20, 24) + np.resize([0, 1, -1], 12)  # jitter: no fixed phase
    sc = detect_frame(_with(frame, list(days), 4.0))["anomaly_score"].to_numpy()
    assert sc[days[0]] > 3.0
    assert (sc[days[1:]] >= 1.0).all(), sc[days]  # still outside the band: the band is not changed
    # but not new once seen on the days before: far below the alert level of a one-off jump
    assert (sc[days[1:]] < 3.0).all() and np.median(sc[days[1:]]) == 1.0, sc[days]
    once = detect_frame(_with(frame, [int(days[-1])], 4.0))["anomaly_score"].to_numpy()
    assert once[days[-1]] > 5.0  # the same jump on one day only is new


def test_a_served_model_scores_like_the_backtest_a_daily_recurrence_is_not_new():
    """Scheduled runs with a serving model go through ``score()``: the same-time-of-day rule
    applies there too. At 5-minute steps the 2 x half-life hold (8 hours) does not cover a day,
    so only that rule keeps a daily job from alerting every day."""
    from aiops.models import get_model

    rng = np.random.default_rng(3)
    n = 288 * 12
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 0.3, n)
    days = np.arange(288 * 6 + 36, n, 288) + np.resize([0, 1, -1], 6)
    y[days] += 4.0
    f = pd.DataFrame({"series_id": "s", "ts": pd.date_range("2024-01-01", periods=n, freq="5min", tz="UTC"), "value": y})
    sc = get_model("robust")().fit(f.iloc[: 288 * 5]).score(f)["anomaly_score"].to_numpy()
    assert sc[days[0]] > 5.0
    assert (sc[days[3:]] == 1.0).all(), sc[days]  # outside the band, not new (4.3-4.9 without the rule)


def test_a_lasting_shift_scores_its_onset_then_the_band_edge():
    frame = seasonal(24 * 21, seed=11)
    at = 24 * 16 + 5
    sc = detect_frame(_with(frame, list(range(at, len(frame))), 5.0))
    s = sc["anomaly_score"].to_numpy()
    assert s[at] >= 5.0 and s[at - 24 : at].max() < 4.0
    # the rows after the onset are outside the band, but they repeat what the onset said
    # (a row may beat the onset's surprise by a hair as the residual scale settles)
    assert (s[at + 1 : at + 12] >= 1.0).all() and (s[at + 1 : at + 12] == 1.0).sum() >= 9, s[at : at + 12]
    ev = scores_to_events(sc, watch="w", detector=DetectorConfig(threshold=4.0, merge_gap="1m"))
    near = [e for e in ev if e.start == sc["ts"].iloc[at]]
    assert len(near) == 1 and near[0].direction == "level_shift"
    # the event lasts while the series is outside its band, not only for the onset row
    assert near[0].end is None or pd.Timestamp(near[0].end) - pd.Timestamp(near[0].start) >= pd.Timedelta("6h")


@pytest.mark.parametrize("level", [0.8, 0.9])
def test_share_at_or_above_the_band_edge_is_kept(level):
    """Only scores above 1 are reduced, so the band's calibration shows through unchanged."""
    frame = seasonal(24 * 40, seed=7)
    sc = detect_frame(frame, level=level)
    tail = sc.iloc[len(sc) // 4 :]
    share = float((tail["anomaly_score"] >= 1.0).mean())
    assert abs(share - (1 - level)) < 0.05, share
    outside = (tail["value"] > tail["yhat_upper"]) | (tail["value"] < tail["yhat_lower"])
    agree = float(((tail["anomaly_score"] >= 1.0) == outside).mean())
    assert agree > 0.98, agree


def test_events_extend_over_the_band_after_an_alert():
    ts = pd.date_range("2024-01-01", periods=12, freq="5min", tz="UTC")
    s = np.array([0.2, 1.5, 6.0, 1.0, 1.0, 0.5, 1.2, 1.0, 6.5, 1.0, 0.3, 0.1])
    df = pd.DataFrame({"series_id": "x", "ts": ts, "anomaly_score": s})
    ev = scores_to_events(df, watch="w", detector=DetectorConfig(threshold=5.0, merge_gap="1m"))
    # the out-of-band row before an alert is not part of it; the ones after are
    assert [(e.start, e.end) for e in ev] == [(ts[2], ts[5]), (ts[8], ts[10])]
    assert [e.peak_score for e in ev] == [6.0, 6.5]
