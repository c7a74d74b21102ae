"""Time until a forecast crosses a capacity threshold.

The median ETA is when ``yhat`` first crosses; the conservative ETA is when the chosen
quantile (``capacity.quantile``, 0.9 by default) first crosses, taken from the band: the
band edge on the threshold's side is the ``(1 + level) / 2`` quantile and other quantiles
are scaled from it as a normal distribution would. Crossings are interpolated between steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from statistics import NormalDist

import numpy as np
import pandas as pd

from aiops.config import CapacityConfig
from aiops.errors import InputError
from aiops.types import FORECAST_COLUMNS

logger = logging.getLogger(__name__)


@dataclass
class CapacityResult:
    """ETA of one series to its threshold; seconds are None when not within the horizon."""

    series_id: str
    threshold: float
    direction: str
    median_seconds: float | None
    conservative_seconds: float | None
    median_time: datetime | None
    conservative_time: datetime | None
    within_horizon: bool
    horizon_end: datetime | None

    @property
    def text(self) -> str:
        if self.conservative_seconds is None:
            return f"not within horizon (to {self.horizon_end:%Y-%m-%d %H:%M} UTC)" if self.horizon_end else "not within horizon"
        med = f"{self.median_seconds / 3600:.1f} h" if self.median_seconds is not None else "beyond horizon"
        return f"median {med}, conservative {self.conservative_seconds / 3600:.1f} h"


def time_to_threshold(
    forecast_df: pd.DataFrame, capacity: CapacityConfig, now: datetime | pd.Timestamp, *, level: float = 0.8
) -> dict[str, CapacityResult]:
    """ETA per series of ``forecast_df`` (``FORECAST_COLUMNS``) to cross ``capacity.threshold``.

    Args:
        forecast_df: the forecast, future steps only or not (rows before ``now`` are ignored).
        capacity: threshold, direction (``above``/``below``) and conservative quantile.
        now: the time the ETA counts from.
        level: the band's central level (as the forecast was made).
    """
    missing = [c for c in FORECAST_COLUMNS if c not in forecast_df.columns]
    if missing:
        raise InputError(f"forecast frame lacks column(s) {', '.join(missing)}")
    now_ts = pd.Timestamp(now)
    now_ts = now_ts.tz_localize("UTC") if now_ts.tzinfo is None else now_ts.tz_convert("UTC")
    nd = NormalDist()
    edge_z = nd.inv_cdf((1 + level) / 2)
    k = nd.inv_cdf(capacity.quantile) / edge_z
    sign = 1.0 if capacity.direction == "above" else -1.0
    out: dict[str, CapacityResult] = {}
    f = forecast_df.copy()
    f["ts"] = pd.to_datetime(f["ts"], utc=True)
    for sid, g in f.sort_values("ts").groupby("series_id", sort=True):
        g = g[g["ts"] >= now_ts]
        if g.empty:
            out[str(sid)] = CapacityResult(str(sid), capacity.threshold, capacity.direction, None, None, None, None, False, None)
            continue
        yhat = g["yhat"].to_numpy(dtype=np.float64)
        edge = (g["yhat_upper"] if sign > 0 else g["yhat_lower"]).to_numpy(dtype=np.float64)
        cons = yhat + k * (edge - yhat)
        ts = g["ts"]
        med_t = _crossing(ts, yhat, capacity.threshold, sign, now_ts)
        con_t = _crossing(ts, cons, capacity.threshold, sign, now_ts)
        if con_t is None and med_t is not None:
            con_t = med_t  # the conservative ETA is never later than the median one
        out[str(sid)] = CapacityResult(
            series_id=str(sid),
            threshold=capacity.threshold,
            direction=capacity.direction,
            median_seconds=(med_t - now_ts).total_seconds() if med_t is not None else None,
            conservative_seconds=(con_t - now_ts).total_seconds() if con_t is not None else None,
            median_time=med_t.floor("us").to_pydatetime() if med_t is not None else None,
            conservative_time=con_t.floor("us").to_pydatetime() if con_t is not None else None,
            within_horizon=con_t is not None,
            horizon_end=ts.iloc[-1].to_pydatetime(),
        )
    return out


def _crossing(ts: pd.Series, v: np.ndarray, thr: float, sign: float, now: pd.Timestamp) -> pd.Timestamp | None:
    d = sign * (v - thr)  # >= 0 means at or past the threshold
    hit = np.flatnonzero(np.nan_to_num(d, nan=-np.inf) >= 0)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return now if d[0] >= 0 and ts.iloc[0] <= now else ts.iloc[0]
    d0, d1 = d[i - 1], d[i]
    frac = d0 / (d0 - d1) if d0 != d1 else 1.0
    t0, t1 = ts.iloc[i - 1], ts.iloc[i]
    return t0 + (t1 - t0) * float(np.clip(frac, 0.0, 1.0))
