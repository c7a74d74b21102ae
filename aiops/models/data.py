"""From long frames to regular per-series arrays, and seasonality detection.

Every model works on :class:`Panel`: one float64 array per series on that series' own regular
grid (missing steps are NaN), so series of different lengths, starts and gaps share one code
path. Values are normalised per series with a robust location/scale (median, IQR).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from aiops.errors import InputError
from aiops.types import SERIES_COLUMNS

logger = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)


@dataclass
class Panel:
    """Series on regular grids: ``values[i][k]`` is series ``ids[i]`` at ``starts[i] + k*step``."""

    ids: list[str]
    starts: list[pd.Timestamp]
    step: pd.Timedelta
    values: list[np.ndarray]
    # row positions of the original frame rows in each grid (for detect output alignment)
    positions: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def ends(self) -> list[pd.Timestamp]:
        return [s + (len(v) - 1) * self.step for s, v in zip(self.starts, self.values)]


class _Rows(NamedTuple):
    """A long frame's rows as arrays, sorted by (series, time) and stable."""

    codes: np.ndarray  # each row's series: an index into ``names``
    names: np.ndarray  # the series ids as text, sorted
    t: np.ndarray  # timestamps, int64 ns since the epoch
    values: np.ndarray  # float64


def check_frame(frame: pd.DataFrame, *, duplicates: str = "error") -> pd.DataFrame:
    """Validate a long frame and return it sorted with UTC timestamps and float values.

    ``duplicates="error"`` rejects repeated (series_id, ts) pairs; ``"keep"`` keeps them (the
    last one then stands for that step when put on a grid).
    """
    r = _checked_rows(frame, duplicates)
    return pd.DataFrame({"series_id": r.names[r.codes], "ts": pd.to_datetime(r.t, unit="ns", utc=True), "value": r.values})


def panel_of(frame: pd.DataFrame, step: pd.Timedelta | None = None, *, duplicates: str = "error") -> Panel:
    """``to_panel(check_frame(frame, duplicates=...), step)`` in one pass over the rows."""
    return _grid(_checked_rows(frame, duplicates), step)


def _checked_rows(frame: pd.DataFrame, duplicates: str) -> _Rows:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"expected a DataFrame with columns {SERIES_COLUMNS}, got {type(frame).__name__}")
    missing = [c for c in SERIES_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"frame lacks column(s) {', '.join(missing)}",
            hint=f"a long frame has columns {', '.join(SERIES_COLUMNS)}",
        )
    if frame.empty:
        raise InputError("frame has no rows", hint="fetch a longer history or check the query")
    ts = pd.to_datetime(frame["ts"], utc=True)
    if ts.isna().any():
        raise InputError(f"frame has {int(ts.isna().sum())} row(s) without a timestamp", hint="drop or fix those rows")
    try:
        values = pd.to_numeric(frame["value"], errors="raise").astype("float64").to_numpy()
    except (ValueError, TypeError) as exc:
        raise InputError(f"frame has non-numeric values: {exc}") from None
    r = _sorted_rows(frame["series_id"], pd.DatetimeIndex(ts).as_unit("ns").asi8, values)
    # sorted by (series, time) and stable, so a repeat is the row right after its first
    dup = (r.codes[1:] == r.codes[:-1]) & (r.t[1:] == r.t[:-1])
    if dup.any() and duplicates == "keep":
        logger.info("%d rows repeat an earlier timestamp of their series", int(dup.sum()))
    elif dup.any():
        i = int(np.argmax(dup)) + 1
        raise InputError(
            f"duplicate timestamp {pd.Timestamp(int(r.t[i]), tz='UTC')} in series {r.names[r.codes[i]]!r}",
            hint="each series needs one value per timestamp",
        )
    return r


def _sorted_rows(ids: pd.Series, t: np.ndarray, values: np.ndarray) -> _Rows:
    """Rows sorted by (series id as text, time), stable; ids that read the same as text
    (``1`` and ``"1"``) are one series."""
    codes, uniq = pd.factorize(ids)
    if (codes < 0).any():  # a missing id is the series "nan", as str() says
        codes = np.where(codes < 0, len(uniq), codes)
        uniq = list(uniq) + [np.nan]
    names, inv = np.unique(np.asarray([str(u) for u in uniq], dtype=object), return_inverse=True)
    codes = inv.reshape(-1)[codes].astype(np.int32 if len(names) < 2**31 else np.int64)
    if len(codes) > 1:
        dc = np.diff(codes)
        if (dc < 0).any():
            order = np.argsort(codes, kind="stable")  # a radix/merge sort on small ints
            codes, t, values = codes[order], t[order], values[order]
            dc = np.diff(codes)
        back = (dc == 0) & (np.diff(t) < 0)
        if back.any():  # time goes back within a series: sort by time too
            order = np.lexsort((t, codes))
            codes, t, values = codes[order], t[order], values[order]
    return _Rows(codes, names, t, values)


def _frame_rows(frame: pd.DataFrame) -> _Rows:
    """The rows of a long frame, unvalidated, sorted by (series, time)."""
    return _sorted_rows(frame["series_id"], pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8,
                        frame["value"].to_numpy(dtype=np.float64))


def infer_step(frame: pd.DataFrame) -> pd.Timedelta:
    """Median spacing of consecutive timestamps across all series."""
    return _infer_step(_frame_rows(frame))


def _infer_step(r: _Rows) -> pd.Timedelta:
    d = np.diff(r.t)[r.codes[1:] == r.codes[:-1]]
    d = d[d > 0]
    if d.size == 0:
        raise InputError(
            "cannot infer the sampling step from a single timestamp per series",
            hint="pass step= explicitly or give at least two points per series",
        )
    return pd.Timedelta(int(np.median(d)), unit="ns")


def to_panel(frame: pd.DataFrame, step: pd.Timedelta | None = None) -> Panel:
    """Put each series of a (checked) long frame on its own regular grid.

    Samples snap to the nearest grid step from the series' first timestamp; when two land on
    the same step the last wins. Steps without a sample are NaN.
    """
    return _grid(_frame_rows(frame), step)


def _grid(r: _Rows, step: pd.Timedelta | None) -> Panel:
    step = pd.Timedelta(step) if step is not None else _infer_step(r)
    if step <= pd.Timedelta(0):
        raise InputError(f"step must be positive, got {step}")
    ids, starts, values, positions = [], [], [], []
    ns = step.value
    # one pass over contiguous row ranges: a pandas groupby costs more than the grids
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(r.codes)) + 1, [len(r.codes)]])
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        tt = r.t[a:b]
        k = np.rint((tt - tt[0]) / ns).astype(np.int64)
        arr = np.full(int(k[-1]) + 1, np.nan)
        arr[k] = r.values[a:b]  # a repeated step keeps the last row
        ids.append(str(r.names[r.codes[a]]))
        starts.append(pd.Timestamp(int(tt[0]), tz="UTC"))
        values.append(arr)
        positions.append(k)
    return Panel(ids, starts, step, values, positions)


def robust_scale(y: np.ndarray) -> tuple[float, float]:
    """(median, scale) of the finite values; scale from IQR, MAD or std, never 0."""
    f = y[np.isfinite(y)]
    if f.size == 0:
        return 0.0, 1.0
    med = float(np.median(f))
    q25, q75 = np.percentile(f, [25, 75])
    s = float(q75 - q25) / 1.349
    if s <= 1e-12:
        s = float(np.std(f))
    if s <= 1e-12:
        s = max(abs(med) * 0.01, 1e-6)
    return med, s


def robust_scale_rows(x: np.ndarray) -> np.ndarray:
    """The scale of :func:`robust_scale` for every row of a gap-free 2-D array."""
    q25, q75 = np.percentile(x, [25, 75], axis=1)
    s = (q75 - q25) / 1.349
    small = s <= 1e-12
    if small.any():
        s = np.where(small, np.std(x, axis=1), s)
        s = np.where(s <= 1e-12, np.maximum(np.abs(np.median(x, axis=1)) * 0.01, 1e-6), s)
    return s


def fill_gaps(y: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN gaps; leading NaNs take the first value."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    if ok.all() or not ok.any():
        return y.copy() if ok.any() else np.zeros_like(y)
    idx = np.arange(len(y))
    return np.interp(idx, idx[ok], y[ok])


def season_candidates(step: pd.Timedelta) -> list[int]:
    """Daily and weekly periods in steps, when they are whole numbers of at least 2 steps."""
    out = []
    for period in (DAY, WEEK):
        m = period / step
        if m >= 2 and abs(m - round(m)) < 1e-6:
            out.append(int(round(m)))
    return out


def detect_season(y: np.ndarray, step: pd.Timedelta, *, min_acf: float = 0.3) -> int:
    """The strongest of the daily/weekly periods by autocorrelation, or 1 when neither shows.

    A period needs at least two full cycles of history and an autocorrelation at its lag of at
    least ``min_acf`` that also beats half a period's lag (so a trend alone does not pass).
    """
    x = fill_gaps(y)
    best, best_acf = 1, min_acf
    for m in season_candidates(step):
        if len(x) < 2 * m + 2:
            continue
        # detrend with a moving average over one period so slow drifts do not look seasonal
        d = x - np.convolve(x, np.ones(m) / m, mode="same")
        d = d[m // 2 : len(d) - m // 2]
        if len(d) < m + 2:
            continue
        d = d - d.mean()
        den = float(np.dot(d, d))
        if den <= 1e-12:
            continue
        acf = float(np.dot(d[m:], d[:-m])) / den
        half = float(np.dot(d[m // 2 :], d[: -(m // 2)])) / den if m >= 4 else -1.0
        if acf > best_acf and acf > half + 0.1:
            best, best_acf = m, acf
    return best
