"""Forecasting: batched fits agree with per-series fits, calibrated bands, early stopping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.models import get_model
from aiops.models.baselines import RobustSeasonal, _ses, _ses_rows, abs_phase
from aiops.models.data import check_frame, to_panel

from .conftest import seasonal


def _panel(n_series: int, n: int, *, seed: int = 0):
    frames = [seasonal(n, seed=seed + i, noise=0.2 + 0.3 * i / n_series, level=5.0 * (i + 1), sid=f"s{i}")
              for i in range(n_series)]
    frame = pd.concat(frames, ignore_index=True)
    # a trend on one series, so the slope rule is exercised both ways
    frame.loc[frame["series_id"] == "s1", "value"] += np.arange(n) * 0.05
    return to_panel(check_frame(frame))


def test_ses_rows_matches_the_per_series_smoother():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(5, 300)).cumsum(axis=1)
    obs = np.ones(300, bool)
    for a in (0.02, 0.3, 1.0):
        rows = _ses_rows(d, a)
        for i in range(5):
            np.testing.assert_allclose(rows[i], _ses(d[i], obs, a), rtol=0, atol=1e-12)


def test_robust_batched_fit_equals_fitting_each_series_alone():
    panel = _panel(6, 24 * 12)
    batched = RobustSeasonal()
    batched.step_ = panel.step
    batched._fit(panel)
    alone = RobustSeasonal()
    alone.step_ = panel.step
    for sid, start, y in zip(panel.ids, panel.starts, panel.values):
        st, prof = alone._fit_one(y, start)
        got = batched.series_[sid]
        assert got["season"] == st["season"] == 24
        assert got["alpha"] == st["alpha"] and got["grid"] == st["grid"]
        assert got["slope"] == pytest.approx(st["slope"], rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(got["q_lo"], st["q_lo"], rtol=1e-9)
        np.testing.assert_allclose(got["q_hi"], st["q_hi"], rtol=1e-9)
        np.testing.assert_allclose(batched.profiles_[sid], prof, rtol=1e-9, atol=1e-12)
    assert any(batched.series_[s]["slope"] != 0 for s in panel.ids)
    assert any(batched.series_[s]["slope"] == 0 for s in panel.ids)
    # the grouped level of the forecast equals the one-series smoother
    yh, _, _ = batched._forecast(panel, 30)
    h = np.arange(1, 31)
    for i, (sid, start, y) in enumerate(zip(panel.ids, panel.starts, panel.values)):
        st, prof = batched.series_[sid], batched.profiles_[sid]
        d = y - prof[abs_phase(start, panel.step, len(y), len(prof))]
        level = _ses(d, np.isfinite(d), st["alpha"])[-1]
        want = level + st["slope"] * h + prof[abs_phase(start, panel.step, 30, len(prof), offset=len(y))]
        np.testing.assert_allclose(yh[i], want, rtol=1e-12)


def test_robust_series_with_gaps_or_short_history_take_the_single_path(small_batch):
    m = get_model("robust")().fit(small_batch)
    assert list(m.series_) == sorted(small_batch["series_id"].unique())
    fc = m.predict(12)
    assert np.isfinite(fc[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()).all()
