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


# ---------------------------------------------------------------- calibrated bands


def test_horizon_factors_pool_windows_by_bucket_and_merge_thin_buckets():
    from aiops.models.calibrate import factors_at, horizon_factors

    rng = np.random.default_rng(0)
    windows, H = 400, 16
    # errors grow with the step while the model's band does not: later buckets need wider bands
    sd = np.linspace(1.0, 3.0, H)
    r = rng.normal(0, sd, (windows, H))
    half = np.full((windows, H), 1.2816)  # the 80% half-width of a unit normal
    starts, factors = horizon_factors(r, half, 0.8, min_count=50)
    assert starts == [1, 2, 4, 8, 16]  # every bucket has at least 400 ratios
    f = factors_at(starts, factors, H + 4)
    assert f[0] == pytest.approx(1.0, abs=0.15) and f[-1] == pytest.approx(3.0, abs=0.4)
    assert np.all(np.diff(factors) > -0.1)
    inside = np.abs(r) <= half * f[:H]
    assert inside.mean() == pytest.approx(0.8, abs=0.03)
    # one window only: buckets are merged until they hold min_count ratios
    starts1, _ = horizon_factors(r[:1], half[:1], 0.8, min_count=5)
    assert starts1 == [1, 8]
    assert horizon_factors(r[:1, :3], half[:1, :3], 0.8) == ([1], [1.0])  # too few: no change


def test_horizon_factors_never_fall_with_the_lead_time():
    from aiops.models.calibrate import conformal_factor, horizon_factors

    rng = np.random.default_rng(1)
    windows, H = 400, 16
    # the model's band over-widens at later steps, so the raw per-bucket factors would fall
    r = rng.normal(0, 1.0, (windows, H))
    half = np.tile(np.linspace(1.2816, 3 * 1.2816, H), (windows, 1))
    starts, factors = horizon_factors(r, half, 0.8, min_count=50)
    assert starts == [1, 2, 4, 8, 16]
    raw = [conformal_factor(r[:, a - 1 : b - 1].ravel(), half[:, a - 1 : b - 1].ravel(), 0.8)
           for a, b in zip(starts, starts[1:] + [H + 1])]
    assert raw[-1] < raw[0] * 0.6  # what the buckets alone say
    assert factors[0] == pytest.approx(raw[0]) and np.all(np.diff(factors) >= 0)
    assert factors == pytest.approx(np.maximum.accumulate(np.maximum(raw, 0.5)).tolist())


@pytest.mark.parametrize("kind", ["neural", "auto"])
def test_calibrated_band_covers_about_the_level_on_held_out_days(kind):
    """Noisy seasonal series: the 80% band covers about 80% of the next day, never far off."""
    rng = np.random.default_rng(4)
    n, H = 24 * 28, 24
    frames = []
    for i in range(12):
        t = np.arange(n + H)
        y = 20 + 5 * np.sin(2 * np.pi * t / 24 + i) + rng.standard_t(5, n + H) * (0.5 + 0.2 * i)
        frames.append(pd.DataFrame({"series_id": f"s{i}", "ts": pd.date_range("2024-01-01", periods=n + H, freq="1h",
                                                                               tz="UTC"), "value": y}))
    full = pd.concat(frames, ignore_index=True)
    cut = full["ts"].min() + pd.Timedelta(hours=n)
    m = get_model(kind)(seed=0, steps=120, hidden=32, batch=128, horizon=H)
    m.fit(full[full["ts"] < cut])
    fc = m.predict(H).merge(full[full["ts"] >= cut], on=["series_id", "ts"])
    inside = ((fc["value"] >= fc["yhat_lower"]) & (fc["value"] <= fc["yhat_upper"])).mean()
    assert 0.68 <= inside <= 0.92, inside
    starts, factors = m.neural_.cal_ if kind == "auto" else m.cal_
    assert len(starts) > 1 and all(np.isfinite(factors))


def test_neural_training_stops_when_the_loss_plateaus(clean):
    from aiops.models.neural import _Schedule

    m = get_model("neural")(seed=0, steps=400, hidden=16, batch=64, horizon=24).fit(clean)
    assert 0 < m.steps_ < 400  # stopped after a plateau, not at the budget
    full = get_model("neural")(seed=0, steps=150, hidden=16, batch=64, horizon=24, patience=0).fit(clean)
    assert full.steps_ == 150
    # the schedule: warm-up, full rate, then a linear anneal to the end
    s = _Schedule(100, 0)
    lrs = []
    while s.running():
        lrs.append(s.lr_factor())
        s.record(1.0)
    assert len(lrs) == 100 and lrs[0] < lrs[20] == 1.0 and lrs[-1] < 0.1
