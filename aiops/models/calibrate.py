"""Causal calibration of residuals into bands and anomaly scores.

The score at ``t`` uses data up to ``t`` only: the residual ``r_t = y_t - yhat_t`` (``yhat_t``
from ``y[:t]``) is divided by a robust residual scale updated from earlier residuals, and the
result is compared with the split-conformal quantiles of the same ratio over a trailing
window. ``anomaly_score = 1`` is exactly the band edge, so on exchangeable normal data the
share of points with a score at or above 1 is ``1 - level``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MIN_RESIDUALS = 8


def ew_scale(r: np.ndarray, *, halflife: float = 48.0, clip: float = 6.0) -> np.ndarray:
    """Robust exponentially weighted mean absolute residual *before* each step.

    ``out[t]`` uses ``r[:t]``; an update is clipped at ``clip`` times the current scale so one
    outlier cannot inflate the scale, while a lasting change still moves it within a few
    half-lives. NaN residuals leave the scale unchanged.
    """
    a = 1.0 - 0.5 ** (1.0 / max(halflife, 1.0))
    out = np.full(len(r), np.nan)
    absr = np.abs(r)
    ok = np.flatnonzero(np.isfinite(absr))
    if ok.size == 0:
        return out
    # warm start from the first few residuals (median |r|), not from zero
    first = absr[ok[: MIN_RESIDUALS]]
    s = float(np.mean(first)) if first.size else 0.0
    n = 0
    vals = absr.tolist()
    outl = out.tolist()
    for t in range(len(vals)):
        outl[t] = s if n >= 2 else np.nan
        v = vals[t]
        if v == v:  # not NaN
            if n >= 2 and s > 0:
                v = min(v, clip * s)
            s = s + a * (v - s) if n >= 1 else v
            n += 1
    return np.asarray(outl)


def causal_scores(
    y: np.ndarray,
    pred: np.ndarray,
    level: float,
    *,
    window: int = 1000,
    halflife: float = 48.0,
    floor: float | None = None,
) -> dict[str, np.ndarray]:
    """Band and anomaly score for every step of ``y`` given causal predictions ``pred``.

    Returns arrays ``anomaly_score`` (0 where not yet calibrated), ``yhat``, ``yhat_lower``,
    ``yhat_upper`` (NaN where not yet calibrated), all of ``len(y)``.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    r = y - pred
    scale = ew_scale(r, halflife=halflife)
    fin = y[np.isfinite(y)]
    if floor is None:
        spread = float(np.median(np.abs(fin - np.median(fin)))) if fin.size else 0.0
        floor = max(1e-3 * spread, 1e-9 * (1.0 + float(np.median(np.abs(fin))) if fin.size else 1e-9), 1e-12)
    scale = np.where(np.isfinite(scale), np.maximum(scale, floor), np.nan)
    z = r / scale
    zs = pd.Series(z)
    lo_q, hi_q = (1 - level) / 2, (1 + level) / 2
    roll = zs.rolling(window, min_periods=MIN_RESIDUALS)
    q_hi = roll.quantile(hi_q).shift(1).to_numpy()
    q_lo = roll.quantile(lo_q).shift(1).to_numpy()
    # a band never thinner than a small fraction of the scale on either side
    q_hi = np.maximum(q_hi, 0.05)
    q_lo = np.minimum(q_lo, -0.05)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(z >= 0, z / q_hi, z / q_lo)
    score = np.where(np.isfinite(score), np.maximum(score, 0.0), 0.0)
    lower = pred + q_lo * scale
    upper = pred + q_hi * scale
    return {"anomaly_score": score, "yhat": pred, "yhat_lower": lower, "yhat_upper": upper}


def conformal_factor(residuals: np.ndarray, half_widths: np.ndarray, level: float) -> float:
    """Factor to widen (or narrow) a band so that ``level`` of held-out residuals fall inside.

    ``residuals`` and ``half_widths`` are matched arrays (NaNs ignored); the factor is the
    finite-sample conformal quantile of ``|r| / half_width``.
    """
    ok = np.isfinite(residuals) & np.isfinite(half_widths) & (half_widths > 0)
    if ok.sum() < 10:
        return 1.0
    ratio = np.abs(residuals[ok]) / half_widths[ok]
    n = ratio.size
    q = min(1.0, np.ceil((n + 1) * level) / n)
    return float(np.quantile(ratio, q))
