"""Rolling-origin forecast metrics (BENCHMARKS.md section 2) on hand-checked series."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.errors import InputError
from aiops.eval.forecast import horizon, naive_scale, origins, regularize, score_origin, season_length, summarize


def test_regularize_snaps_to_median_step_and_fills_linearly():
    ts = pd.to_datetime(["2020-01-01 00:00", "2020-01-01 00:05", "2020-01-01 00:05", "2020-01-01 00:10",
                         "2020-01-01 00:16", "2020-01-01 00:20", "2020-01-01 00:30"], utc=True)
    grid, y, step = regularize(pd.Series(ts), [0.0, 1.0, 1.0, 2.0, 3.2, 4.0, 6.0])
    assert step == pd.Timedelta("5min")
    assert list(grid.strftime("%H:%M")) == ["00:00", "00:05", "00:10", "00:15", "00:20", "00:25", "00:30"]
    # 00:16 is within half a step of 00:15; 00:25 has no sample and is interpolated
    assert y.tolist() == pytest.approx([0.0, 1.0, 2.0, 3.2, 4.0, 5.0, 6.0])
    with pytest.raises(InputError):
        regularize(pd.Series(ts[:2]), [1.0, 2.0])


def test_season_horizon_and_origins():
    assert season_length(pd.Timedelta("5min")) == 288
    assert season_length(pd.Timedelta("1h")) == 24
    assert horizon(4032, 288) == 288 and horizon(1243, 288) == 124
    assert origins(4032, 288) == [3024, 3264, 3504, 3744]
    with pytest.raises(InputError):
        origins(10, 9)


def test_naive_scale_uses_lag_m_or_lag_1_for_short_history():
    y = np.array([1.0, 5.0, 1.0, 5.0, 2.0, 6.0])
    assert naive_scale(y, 2) == pytest.approx(np.mean([0, 0, 1, 1]))
    assert naive_scale(y, 4) == pytest.approx(np.mean(np.abs(np.diff(y))))  # 6 < 2 * 4


def test_score_origin_and_summary():
    hist = np.array([0.0, 2.0, 0.0, 2.0])  # lag-1 scale 2
    got = score_origin(hist, np.array([1.0, 4.5]), np.array([2.0, 2.0]), np.array([0.0, 2.5]),
                       np.array([2.0, 4.0]), m=3)
    # MAE (1 + 2.5) / 2 over scale 2; one of two actuals inside; mean width 1.75 over scale 2
    assert got.mase == pytest.approx(0.875) and got.coverage == 0.5 and got.width == pytest.approx(0.875)
    s = summarize({"a": [got, got], "b": [score_origin(hist, np.array([4.0]), np.array([0.0]), None, None, 3)]})
    assert s["mase_geo"] == pytest.approx(np.sqrt(0.875 * 2.0)) and s["mase_mean"] == pytest.approx(1.4375)
    assert s["coverage"] == 0.5
