"""Library entry points used by the pipeline, the CLI and the benchmarks."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from aiops.errors import InputError
from aiops.models.base import scores_frame
from aiops.models.calibrate import band_score
from aiops.models.data import Panel, check_frame, panel_of, to_panel
from aiops.models.registry import detect_kind, get_model
from aiops.timeutil import parse_duration
from aiops.types import SCORE_COLUMNS

logger = logging.getLogger(__name__)

MIN_FIT_STEPS = 24


def steps_of(value: int | str | pd.Timedelta, step: pd.Timedelta, *, what: str = "horizon") -> int:
    """A step count from an int, a digit string, or a duration (``1d``) at ``step``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        try:
            td = value if isinstance(value, pd.Timedelta) else parse_duration(value)
        except ValueError as exc:
            raise InputError(f"invalid {what} {value!r}: {exc}", hint="a step count (288) or a duration (1d)") from None
        n = int(np.ceil(td / step - 1e-9))
    if n < 1:
        raise InputError(f"{what} must be at least one step, got {value!r}")
    return n


def make_model(model: str, *, level: float, seed: int, params: dict[str, Any] | None):
    return get_model(model)(level=level, seed=seed, **(params or {}))


def forecast_frame(
    frame: pd.DataFrame,
    horizon_steps: int | str,
    *,
    step: pd.Timedelta | str | None = None,
    level: float = 0.8,
    model: str = "auto",
    seed: int = 0,
    params: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Fit ``model`` on a long frame and forecast ``horizon_steps`` past each series' end.

    Returns ``series_id, ts, yhat, yhat_lower, yhat_upper`` (``level`` central interval).
    """
    panel = panel_of(frame, _step(step))
    h = steps_of(horizon_steps, panel.step)
    m = make_model(model, level=level, seed=seed, params=params)
    if hasattr(m, "horizon"):
        m.horizon = h
    m.fit(panel)
    return m.predict(h)


def refit_schedule(n: int, refit_every: int, min_fit: int = MIN_FIT_STEPS) -> list[int]:
    """Positions where the causal backtest refits: doubling from ``min_fit``, then every ``refit_every``."""
    if n <= min_fit:
        return [min(n, max(3, n // 2))] if n >= 3 else []
    out, r = [], min_fit
    while r < n:
        out.append(r)
        r = min(r * 2, r + refit_every)
    return out


def detect_frame(
    frame: pd.DataFrame,
    *,
    step: pd.Timedelta | str | None = None,
    level: float = 0.8,
    model: str = "auto",
    seed: int = 0,
    params: dict[str, Any] | None = None,
    refit_every: int | str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Causal backtest: score every row as the scheduler would.

    The model is fitted on the past only (first after ``MIN_FIT_STEPS`` steps, then at doubling
    history lengths, then every ``refit_every`` steps or duration, default one day or an eighth
    of the longest series, whichever is longer) and each row is scored from earlier rows.

    Returns ``series_id, ts, value, anomaly_score, yhat, yhat_lower, yhat_upper``, one row per
    input row, in input order of series then time.
    """
    f = check_frame(frame, duplicates="keep")
    panel = to_panel(f, _step(step))
    longest = max(len(v) for v in panel.values)
    if refit_every is None:
        day = int(pd.Timedelta(days=1) / panel.step) if panel.step <= pd.Timedelta(days=1) else 1
        every = max(day, longest // 8, MIN_FIT_STEPS)
    else:
        every = steps_of(refit_every, panel.step, what="refit_every")
    kind = detect_kind(model)
    klass = get_model(kind)
    schedule = refit_schedule(longest, every)
    preds = [np.full(len(v), np.nan) for v in panel.values]
    bar = _bar(len(schedule) * (len(panel) if not klass.GLOBAL else 1), progress)
    for k, r in enumerate(schedule):
        nxt = schedule[k + 1] if k + 1 < len(schedule) else longest
        live = [i for i, v in enumerate(panel.values) if len(v) > r]
        if not live:
            break
        groups = [live] if klass.GLOBAL else [[i] for i in live]
        for g in groups:
            m = klass(level=level, seed=seed, **(params or {}))
            m.step_ = panel.step
            sub = Panel([panel.ids[i] for i in g], [panel.starts[i] for i in g], panel.step,
                        [panel.values[i][:r] for i in g])
            if not any(np.isfinite(v).sum() >= 3 for v in sub.values):
                bar.update(1)
                continue
            m._fit(sub)
            for i in g:
                y = panel.values[i][:nxt]
                preds[i][r:nxt] = m._one_step(panel.ids[i], y, panel.starts[i])[r:nxt]
            bar.update(1)
    bar.close()
    out = scores_frame(panel, preds, level, window=int((params or {}).get("calib_window", 2000)))
    # report each input row as given: its own timestamp and value (grid snapping may round
    # off-grid samples, and rows repeating a timestamp share that step's band)
    out["ts"] = f["ts"].to_numpy()
    own = f["value"].to_numpy()
    differs = ~((own == out["value"].to_numpy()) | (np.isnan(own) & out["value"].isna().to_numpy()))
    if differs.any():
        out.loc[differs, "value"] = own[differs]
        out.loc[differs, "anomaly_score"] = np.where(np.isfinite(own[differs]), band_score(
            own[differs], out["yhat"][differs], out["yhat_lower"][differs], out["yhat_upper"][differs]
        ), np.nan)
    return out[list(SCORE_COLUMNS)]


def _step(step: pd.Timedelta | str | None) -> pd.Timedelta | None:
    if step is None or isinstance(step, pd.Timedelta):
        return step
    try:
        return parse_duration(step)
    except ValueError as exc:
        raise InputError(f"invalid step {step!r}: {exc}") from None


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, progress: bool):
    if not progress:
        return _NoBar()
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc="detect", unit="fit", file=sys.stderr, leave=False)
