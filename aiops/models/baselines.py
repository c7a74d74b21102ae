"""Robust per-series baselines: seasonal naive and an ETS-like robust seasonal model.

Both detect daily/weekly seasonality by themselves, handle gaps (interpolated for the model,
never scored) and give bands from the empirical quantiles of their own in-sample errors at
each horizon (so the band widens with the horizon as the errors do).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from aiops.models.base import BaseForecaster
from aiops.models.data import Panel, detect_season, fill_gaps, robust_scale, robust_scale_rows

logger = logging.getLogger(__name__)

ALPHAS = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
GROUP_ROWS = 512  # series fitted together at most (bounds memory)


def abs_phase(start: pd.Timestamp, step: pd.Timedelta, n: int, m: int, offset: int = 0) -> np.ndarray:
    """Phase in a season of ``m`` steps, anchored to the epoch so it does not depend on start."""
    base = start.value // step.value
    return (base + offset + np.arange(n)) % m


def _lag_grid(max_lag: int) -> np.ndarray:
    grid = np.unique(np.round(np.geomspace(1, max(1, max_lag), num=12)).astype(int))
    return grid[grid >= 1]


def _interp_q(grid: np.ndarray, q: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Interpolate per-lag quantiles in log-lag; beyond the grid grow with sqrt(lag)."""
    lg = np.log(grid.astype(float))
    out = np.interp(np.log(h.astype(float)), lg, q)
    beyond = h > grid[-1]
    if beyond.any():
        out[beyond] = q[-1] * np.sqrt(h[beyond] / grid[-1])
    return out


class SeasonalNaive(BaseForecaster):
    """``yhat(t+h) = y(t+h-k*m)`` with ``m`` the detected season (1 = naive).

    Params:
        season: steps per season; 0 = detect daily/weekly by autocorrelation.
    """

    NAME = "seasonal_naive"
    MIN_HISTORY = 2
    DEFAULTS = {"season": 0, "calib_window": 2000}

    def _season(self, y: np.ndarray) -> int:
        m = int(self.params["season"])
        return m if m >= 1 else detect_season(y, self.step_)

    def _fit(self, panel: Panel) -> None:
        self.series_ = {}
        for sid, y in zip(panel.ids, panel.values):
            self.series_[sid] = self._fit_one(y)

    def _fit_one(self, y: np.ndarray) -> dict[str, Any]:
        m = self._season(y)
        x = fill_gaps(y)
        ok = np.isfinite(y)
        n = len(x)
        grid = _lag_grid(max(1, (n - 1) // m))
        grid = grid[grid * m < n] if n > m else np.array([1])
        lo, hi = [], []
        a, b = (1 - self.level) / 2, (1 + self.level) / 2
        for k in grid:
            lag = int(k) * m
            if lag >= n:
                lo.append(lo[-1] if lo else 0.0), hi.append(hi[-1] if hi else 0.0)
                continue
            e = (x[lag:] - x[:-lag])[ok[lag:] & ok[:-lag]]
            if e.size < 2:
                e = x[lag:] - x[:-lag]
            lo.append(float(np.quantile(e, a))), hi.append(float(np.quantile(e, b)))
        return {"season": m, "grid": [int(g) for g in grid], "q_lo": lo, "q_hi": hi}

    def _state_for(self, sid: str, y: np.ndarray) -> dict[str, Any]:
        st = self.series_.get(sid)
        return st if st is not None else self._fit_one(y)

    def _forecast(self, panel: Panel, horizon: int):
        yh, lo, hi = [], [], []
        h = np.arange(1, horizon + 1)
        for sid, y in zip(panel.ids, panel.values):
            st = self._state_for(sid, y)
            m = min(st["season"], len(y))
            x = fill_gaps(y)
            k = np.ceil(h / m).astype(int)
            idx = len(x) - 1 + h - k * m
            f = x[np.clip(idx, 0, len(x) - 1)]
            grid = np.asarray(st["grid"])
            ql = _interp_q(grid, np.asarray(st["q_lo"]), k)
            qh = _interp_q(grid, np.asarray(st["q_hi"]), k)
            yh.append(f), lo.append(f + np.minimum(ql, 0)), hi.append(f + np.maximum(qh, 0))
        return yh, lo, hi

    def _one_step(self, sid: str, y: np.ndarray, t0: pd.Timestamp) -> np.ndarray:
        m = self._state_for(sid, y)["season"]
        x = pd.Series(y).ffill().to_numpy()
        out = np.full(len(y), np.nan)
        if len(y) > m:
            out[m:] = x[:-m]
        return out


class RobustSeasonal(BaseForecaster):
    """ETS-like robust baseline: seasonal profile + exponentially smoothed level + robust trend.

    The seasonal profile is the per-phase median of the detrended last few seasons; the level
    is simple exponential smoothing of the deseasonalised series with the smoothing factor
    that minimises absolute one-step error; the trend is a robust slope kept only when it is
    large against the noise.

    Params:
        season: steps per season; 0 = detect.
        seasons: how many recent seasons form the profile.
        trend: "auto", "none" or "linear".
    """

    NAME = "robust"
    MIN_HISTORY = 3
    DEFAULTS = {"season": 0, "seasons": 4, "trend": "auto", "calib_window": 2000}

    def _fit(self, panel: Panel) -> None:
        self.series_ = {}
        self.profiles_: dict[str, np.ndarray] = {}
        k = int(self.params["seasons"])
        groups: dict[tuple[int, int], list[int]] = {}
        for i, y in enumerate(panel.values):
            m = int(self.params["season"]) or detect_season(y, self.step_)
            if m > 1 and len(y) >= (k + 1) * m and np.isfinite(y).all():
                groups.setdefault((len(y), m), []).append(i)  # same shape: fitted together
            else:
                st, prof = self._fit_one(panel.values[i], panel.starts[i], m)
                self.series_[panel.ids[i]], self.profiles_[panel.ids[i]] = st, prof
        for (_, m), idx in groups.items():
            for c in range(0, len(idx), GROUP_ROWS):
                part = idx[c : c + GROUP_ROWS]
                states, profs = self._fit_rows(np.stack([panel.values[i] for i in part]), [panel.starts[i] for i in part], m)
                for i, st, prof in zip(part, states, profs):
                    self.series_[panel.ids[i]], self.profiles_[panel.ids[i]] = st, prof
        self.series_ = {sid: self.series_[sid] for sid in panel.ids}  # panel order, as saved

    def _fit_rows(self, x: np.ndarray, starts: list[pd.Timestamp], m: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        """:meth:`_fit_one` for rows of equal length without gaps, as array operations.

        Gives the same states as fitting each row alone (a test checks it); it exists because
        a watch's series usually share one grid and per-series pandas calls dominate the fit.
        """
        r, n = x.shape
        k = int(self.params["seasons"])
        tail = (k + 1) * m
        seg = x[:, n - tail :]
        trend = pd.DataFrame(seg.T).rolling(m, center=True, min_periods=1).median().to_numpy().T
        base = np.array([s.value // self.step_.value for s in starts], dtype=np.int64)
        med = np.median((seg - trend).reshape(r, k + 1, m), axis=1)  # by position within a season
        prof = np.empty((r, m))
        np.put_along_axis(prof, (base[:, None] + n - tail + np.arange(m)) % m, med, axis=1)
        prof -= np.median(prof, axis=1, keepdims=True)
        d = x - np.take_along_axis(prof, (base[:, None] + np.arange(n)) % m, axis=1)
        best, best_err = np.ones(r), np.full(r, np.inf)
        if n - 1 > 5:  # every smoothing factor at once: rows repeated per factor
            cols = np.tile(np.ascontiguousarray(d.T), (1, len(ALPHAS)))
            errs = _ses_cols(cols, np.repeat(ALPHAS, r), err_from=(n - 1) // 5).reshape(len(ALPHAS), r)
            for a, err in zip(ALPHAS, errs):
                better = err < best_err - 1e-12
                best, best_err = np.where(better, a, best), np.where(better, err, best_err)
        slope = self._slope_rows(d, m)
        lev = _ses_rows(d, best)
        grid = _lag_grid(max(1, n // 2))
        grid = grid[grid < n]
        qa, qb = (1 - self.level) / 2, (1 + self.level) / 2
        q = np.empty((2, r, len(grid)))
        for j, h in enumerate(grid):
            e = d[:, h:] - (lev[:, :-h] + h * slope[:, None])
            e = e[:, (n - h) // 5 :] if n - h > 20 else e
            q[:, :, j] = np.quantile(e, [qa, qb], axis=1)
        g = [int(v) for v in grid]
        states = [
            {"season": m, "alpha": float(best[i]), "slope": float(slope[i]), "grid": g,
             "q_lo": q[0, i].tolist(), "q_hi": q[1, i].tolist()}
            for i in range(r)
        ]
        return states, prof

    def _slope_rows(self, d: np.ndarray, m: int) -> np.ndarray:
        """:meth:`_slope` of every row of ``d`` (no gaps)."""
        r, n = d.shape
        mode = self.params["trend"]
        if mode == "none" or n < 8:
            return np.zeros(r)
        w = min(n, max(4 * m, 64))
        seg = d[:, n - w :]
        third = max(w // 3, 1)
        slope = (np.median(seg[:, -third:], axis=1) - np.median(seg[:, :third], axis=1)) / max(w - third, 1)
        if mode == "linear":
            return slope
        noise = robust_scale_rows(np.diff(seg, axis=1))
        return np.where(np.abs(slope) * w > 3.0 * noise * np.sqrt(third) / np.sqrt(2), slope, 0.0)

    # ------------------------------------------------------------------ fitting one series

    def _profile(self, x: np.ndarray, start: pd.Timestamp, m: int) -> np.ndarray:
        if m <= 1:
            return np.zeros(1)
        k = int(self.params["seasons"])
        tail = min(len(x), k * m + m)
        seg = x[len(x) - tail :]
        trend = pd.Series(seg).rolling(m, center=True, min_periods=1).median().to_numpy()
        d = seg - trend
        ph = abs_phase(start, self.step_, len(x), m)[len(x) - tail :]
        prof = pd.Series(d).groupby(ph).median().reindex(range(m)).to_numpy()
        prof = np.where(np.isfinite(prof), prof, 0.0)
        return prof - np.median(prof)

    def _fit_one(self, y: np.ndarray, start: pd.Timestamp, m: int | None = None) -> tuple[dict[str, Any], np.ndarray]:
        m = m or int(self.params["season"]) or detect_season(y, self.step_)
        x = fill_gaps(y)
        prof = self._profile(x, start, m)
        d = x - prof[abs_phase(start, self.step_, len(x), len(prof))]
        obs = np.isfinite(y)
        best, best_err = 1.0, np.inf
        for a in ALPHAS:
            lev = _ses(d, obs, a)
            e = np.abs(d[1:] - lev[:-1])[obs[1:]]
            err = float(np.mean(e[len(e) // 5 :])) if e.size > 5 else np.inf
            if err < best_err - 1e-12:
                best, best_err = float(a), err
        slope = self._slope(d, obs, m)
        st = {"season": m, "alpha": best, "slope": slope}
        st.update(self._error_quantiles(d, obs, best, slope))
        return st, prof

    def _slope(self, d: np.ndarray, obs: np.ndarray, m: int) -> float:
        mode = self.params["trend"]
        if mode == "none" or len(d) < 8:
            return 0.0
        w = min(len(d), max(4 * m, 64))
        seg = d[len(d) - w :]
        third = max(w // 3, 1)
        a, b = np.median(seg[:third]), np.median(seg[-third:])
        slope = float(b - a) / max(w - third, 1)
        if mode == "linear":
            return slope
        _, noise = robust_scale(np.diff(seg))
        # keep a trend only when it moves the level by more than the step noise over the window
        return slope if abs(slope) * w > 3.0 * noise * np.sqrt(third) / np.sqrt(2) else 0.0

    def _error_quantiles(self, d: np.ndarray, obs: np.ndarray, alpha: float, slope: float) -> dict[str, Any]:
        lev = _ses(d, obs, alpha)
        n = len(d)
        grid = _lag_grid(max(1, n // 2))
        lo, hi = [], []
        a, b = (1 - self.level) / 2, (1 + self.level) / 2
        for h in grid:
            h = int(h)
            if h >= n:
                break
            e = (d[h:] - (lev[:-h] + h * slope))[obs[h:]]
            e = e[len(e) // 5 :] if e.size > 20 else e
            if e.size < 2:
                break
            lo.append(float(np.quantile(e, a))), hi.append(float(np.quantile(e, b)))
        if not lo:
            _, s = robust_scale(d)
            grid, lo, hi = np.array([1]), [-1.28 * s], [1.28 * s]
        return {"grid": [int(g) for g in grid[: len(lo)]], "q_lo": lo, "q_hi": hi}

    def _state_for(self, sid: str, y: np.ndarray, start: pd.Timestamp) -> tuple[dict[str, Any], np.ndarray]:
        if sid in self.series_ and sid in self.profiles_:
            return self.series_[sid], self.profiles_[sid]
        return self._fit_one(y, start)

    # ------------------------------------------------------------------ predicting

    def _forecast(self, panel: Panel, horizon: int):
        n_rows = len(panel)
        yh, lo, hi = [None] * n_rows, [None] * n_rows, [None] * n_rows
        h = np.arange(1, horizon + 1)
        states = [self._state_for(sid, y, start) for sid, start, y in zip(panel.ids, panel.starts, panel.values)]
        levels = np.empty(n_rows)
        groups: dict[tuple[int, int, float], list[int]] = {}
        for i, ((st, prof), start, y) in enumerate(zip(states, panel.starts, panel.values)):
            if np.isfinite(y).all():
                groups.setdefault((len(y), len(prof), st["alpha"]), []).append(i)
            else:
                x = fill_gaps(y)
                d = x - prof[abs_phase(start, self.step_, len(x), len(prof))]
                levels[i] = _ses(d, np.isfinite(y), st["alpha"])[-1]
        for (n, m, alpha), idx in groups.items():  # same length and smoothing: one pandas call
            base = np.array([panel.starts[i].value // self.step_.value for i in idx], dtype=np.int64)
            prof = np.stack([states[i][1] for i in idx])
            d = np.stack([panel.values[i] for i in idx]) - np.take_along_axis(prof, (base[:, None] + np.arange(n)) % m, axis=1)
            levels[idx] = _ses_rows(d, alpha)[:, -1]
        for i, ((st, prof), start, y) in enumerate(zip(states, panel.starts, panel.values)):
            f = levels[i] + st["slope"] * h + prof[abs_phase(start, self.step_, horizon, len(prof), offset=len(y))]
            grid = np.asarray(st["grid"])
            yh[i] = f
            lo[i] = f + np.minimum(_interp_q(grid, np.asarray(st["q_lo"]), h), 0)
            hi[i] = f + np.maximum(_interp_q(grid, np.asarray(st["q_hi"]), h), 0)
        return yh, lo, hi

    def _one_step(self, sid: str, y: np.ndarray, t0: pd.Timestamp) -> np.ndarray:
        st, prof = self._state_for(sid, y, t0)
        x = np.asarray(y, dtype=np.float64)
        obs = np.isfinite(x)
        s = prof[abs_phase(t0, self.step_, len(x), len(prof))]
        d = np.where(obs, x - s, np.nan)
        lev = _ses(d, obs, st["alpha"])
        out = np.full(len(x), np.nan)
        out[1:] = lev[:-1] + st["slope"] + s[1:]
        return out

    # ------------------------------------------------------------------ persistence

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {f"profile.{i}": self.profiles_[sid].astype(np.float64) for i, sid in enumerate(self.series_)}

    def _state_json(self) -> dict[str, Any]:
        return {"order": list(self.series_)}

    def _load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        order = state.get("order", [])
        if sorted(arrays) != sorted(f"profile.{i}" for i in range(len(order))):
            from aiops.errors import ModelError

            raise ModelError("saved robust model is inconsistent: profiles do not match its series")
        self.profiles_ = {sid: arrays[f"profile.{i}"] for i, sid in enumerate(order)}


def _ses_rows(d: np.ndarray, alpha: float | np.ndarray, *, err_from: int | None = None):
    """:func:`_ses` of every row of ``d`` (no gaps), one array step per time step.

    ``alpha`` is one factor or one per row. The update is pandas' ``ewm(adjust=False)``
    arithmetic, so rows agree with :func:`_ses`. With ``err_from``, returns instead the mean
    absolute one-step error ``|d[t] - level[t-1]|`` over ``t > err_from`` per row (without
    keeping the levels).
    """
    return _ses_cols(np.ascontiguousarray(d.T), alpha, err_from=err_from)


def _ses_cols(cols: np.ndarray, alpha: float | np.ndarray, *, err_from: int | None = None):
    """:func:`_ses_rows` on the transposed array (time steps as rows); returns rows again."""
    n, r = cols.shape
    a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (r,))
    keep, den = 1.0 - a, (1.0 - a) + a
    w = cols[0].copy()
    out = None if err_from is not None else np.empty_like(cols)
    err = np.zeros(r)
    if out is not None:
        out[0] = w
    for t in range(1, n):
        cur = cols[t]
        if err_from is not None and t > err_from:
            err += np.abs(cur - w)
        w = np.where(w != cur, (keep * w + a * cur) / den, w)
        if out is not None:
            out[t] = w
    if err_from is not None:
        return err / max(n - 1 - err_from, 1)
    return out.T


def _ses(d: np.ndarray, obs: np.ndarray, alpha: float) -> np.ndarray:
    """Level after each step of simple exponential smoothing; missing steps keep the level."""
    n = len(d)
    if n == 0:
        return np.zeros(0)
    first = np.flatnonzero(obs)
    if first.size == 0:
        return np.zeros(n)
    if alpha >= 1.0:
        return pd.Series(np.where(obs, d, np.nan)).ffill().bfill().to_numpy()
    # SES is an EWM with adjust=False; pandas does it in C and skips NaNs when ignore_na=True
    s = pd.Series(np.where(obs, d, np.nan))
    s.iloc[: first[0]] = d[first[0]]
    return s.ewm(alpha=alpha, adjust=False, ignore_na=True).mean().ffill().to_numpy()
