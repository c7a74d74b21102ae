"""Rolling-origin forecast evaluation (BENCHMARKS.md section 2).

Each series is put on its median step (nearest sample within half a step, then linear fill);
the season ``m`` is steps per day, the horizon ``H = min(m, 10% of the length)``, and 4 origins
are spread evenly from 75% of the series to its end minus ``H``. Errors are scaled by the
in-sample seasonal-naive MAE (lag ``m``, lag 1 when the history is shorter than ``2m``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aiops.errors import InputError

logger = logging.getLogger(__name__)


def regularize(ts: pd.Series, values: pd.Series | np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray, pd.Timedelta]:
    """Put a series on its median step: nearest sample within half a step, then linear fill.

    Returns:
        The grid, the values on it and the step.

    Raises:
        InputError: fewer than 3 distinct timestamps.
    """
    frame = pd.DataFrame({"ts": pd.DatetimeIndex(ts), "value": np.asarray(values, dtype="float64")})
    frame = frame.dropna(subset=["ts"]).sort_values("ts", kind="stable")
    diffs = frame["ts"].diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    if len(diffs) < 2:
        raise InputError("a series needs at least 3 distinct timestamps to find its step")
    step = diffs.median()
    grid = pd.date_range(frame["ts"].iloc[0], frame["ts"].iloc[-1], freq=step)
    got = pd.merge_asof(pd.DataFrame({"ts": grid}), frame, on="ts", direction="nearest", tolerance=step / 2)
    y = got["value"].interpolate(method="linear", limit_direction="both").to_numpy()
    return grid, y, step


def season_length(step: pd.Timedelta) -> int:
    """Steps per day (at least 1)."""
    return max(1, int(round(pd.Timedelta("1D") / step)))


def horizon(n: int, m: int) -> int:
    """``H = m`` capped at 10% of the series length (at least 1)."""
    return max(1, min(m, int(0.1 * n)))


def origins(n: int, h: int, count: int = 4) -> list[int]:
    """``count`` forecast origins (history lengths) spread evenly from 75% of ``n`` to ``n - h``."""
    lo, hi = int(0.75 * n), n - h
    if hi < lo:
        raise InputError(f"series of {n} points is too short for horizon {h}")
    return sorted({int(round(v)) for v in np.linspace(lo, hi, count)})


def naive_scale(history: np.ndarray, m: int) -> float:
    """In-sample MAE of the seasonal-naive forecast (lag ``m``; lag 1 below ``2m`` points)."""
    lag = m if history.size >= 2 * m else 1
    d = np.abs(history[lag:] - history[:-lag])
    return float(np.nanmean(d)) if d.size else float("nan")


@dataclass(frozen=True)
class OriginScore:
    """Errors of one forecast from one origin."""

    mase: float
    coverage: float
    width: float  # mean 80% interval width / scale


def score_origin(history: np.ndarray, actual: np.ndarray, yhat: np.ndarray,
                 lower: np.ndarray | None, upper: np.ndarray | None, m: int) -> OriginScore:
    """MASE, interval coverage and scaled width of one forecast."""
    scale = naive_scale(history, m)
    if not scale > 0:
        scale = float("nan")  # flat history: MASE undefined, dropped from the means
    mase = float(np.mean(np.abs(actual - yhat))) / scale
    if lower is None or upper is None:
        return OriginScore(mase, float("nan"), float("nan"))
    cov = float(np.mean((actual >= lower) & (actual <= upper)))
    return OriginScore(mase, cov, float(np.mean(upper - lower)) / scale)


def summarize(per_file: dict[str, list[OriginScore]]) -> dict[str, float]:
    """Per-file means over origins, then the geometric and arithmetic MASE means over files."""
    def mean(vals: list[float]) -> float:
        vals = [v for v in vals if not np.isnan(v)]  # inf (an unbounded band) stays
        return float(np.mean(vals)) if vals else float("nan")

    mase = np.array([mean([o.mase for o in v]) for v in per_file.values()])
    cov = np.array([mean([o.coverage for o in v]) for v in per_file.values()])
    width = np.array([mean([o.width for o in v]) for v in per_file.values()])
    ok = np.isfinite(mase) & (mase > 0)
    return {
        "files": int(ok.sum()),
        "mase_geo": float(np.exp(np.mean(np.log(mase[ok])))) if ok.any() else float("nan"),
        "mase_mean": float(np.mean(mase[ok])) if ok.any() else float("nan"),
        "coverage": float(np.nanmean(cov)) if np.isfinite(cov).any() else float("nan"),
        "width": float(np.nanmean(width)) if np.isfinite(width).any() else float("nan"),
    }
