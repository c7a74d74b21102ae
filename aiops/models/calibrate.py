"""Causal calibration of residuals into bands and anomaly scores.

The score at ``t`` uses data up to ``t`` only: the residual ``r_t = y_t - yhat_t`` (``yhat_t``
from ``y[:t]``) is divided by a robust residual scale updated from earlier residuals, and the
result is compared with the split-conformal quantiles of the same ratio over a trailing
window. ``anomaly_score = 1`` is exactly the band edge, so on exchangeable normal data the
share of points with a score at or above 1 is ``1 - level``.

What ``anomaly_score`` means:

* ``0 <= s < 1``: inside the band; ``s = log p / log(1 - level)`` with ``p`` the causal tail
  probability of the residual's size, so the band edge is ``s = 1`` and a row is at or above 1
  exactly when it is outside the band.
* ``s > 1``: outside the band *and new*: ``s`` is the surprise of the deviation (same formula,
  so ``s`` means a tail probability of about ``(1 - level)^s``) counted only when the deviation
  is new information. It is not new when the series had a value as close at the same time of
  day (within ``RECUR_WIDTH`` steps) on one of the last ``RECUR_DAYS`` days (a daily cron job
  is not an anomaly however far it leaves the band), and it is not new when it is no more
  surprising than a row of the previous ``2 * halflife`` steps (one alert per change, not one
  per row of a lasting shift). A deviation whose residual pattern is new to the series gains
  up to ``NOVELTY_WEIGHT``: :func:`context_novelty` is the share of the last one and two
  residual size classes (at a few class widths) that never occurred before, so a first-ever
  deviation of its size, or a known spike in a new sequence, ranks above a deviation of a
  kind the series has shown before; it is added before the ``2 * halflife`` rule.
* ``s == 1``: outside the band but not new. A sustained deviation therefore scores above 1
  at its onset (and again whenever it grows) and exactly 1.0 while it lasts; events
  (:mod:`aiops.detect.events`) start at the new rows and last while the series stays outside
  its band.
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


def tail_probability(
    a: np.ndarray,
    *,
    window: int = 2000,
    every: int = 32,
    tail: float = 0.03,
    shape: float = 0.5,
    min_beta: float = 0.25,
    min_n: int = MIN_RESIDUALS,
    ref_start: int = 0,
) -> np.ndarray:
    """Causal probability of a value at least ``a[t]`` among the earlier values (NaN ignored).

    Empirical within the bulk of the past distribution; beyond its ``1 - tail`` quantile an
    exponential tail fitted to the exceedances (peaks over threshold) takes over, so values
    larger than anything seen still get ever smaller probabilities. The reference set is
    refreshed every ``every`` steps from the last ``window`` values before it, never from
    values before ``ref_start`` (a warm-up whose values are not comparable).
    """
    n = len(a)
    p = np.full(n, np.nan)
    for c in range(0, n, every):
        past = a[max(ref_start, c - window) : c]
        past = np.sort(past[np.isfinite(past)])
        m = past.size
        if m < min_n:
            continue
        seg = a[c : c + every]
        ge = m - np.searchsorted(past, seg, side="left")
        pe = (ge + 1.0) / (m + 1.0)
        k = max(int(np.ceil(tail * m)), 2)
        u = past[m - k]
        exc = past[m - k :] - u
        beta = max(float(exc.mean()), min_beta, 1e-9)
        # generalised Pareto tail with a fixed shape: heavier than exponential, so one huge
        # residual on a very quiet series does not reach absurd improbabilities
        pt = (k / (m + 1.0)) * (1.0 + shape * np.maximum(seg - u, 0.0) / beta) ** (-1.0 / shape)
        p[c : c + every] = np.where(np.isnan(seg), np.nan, np.where(seg > u, np.minimum(pe, pt), pe))
    return p


SMOOTH = 6
EXTRA_OFFSET = 2.0


def _surprise(p: np.ndarray, level: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.log(np.clip(p, 1e-300, 1.0)) / np.log(1.0 - level)
    return np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)


RECUR_DAYS = 3
RECUR_WIDTH = 3


def seasonal_distance(y: np.ndarray, season: int, *, seasons: int = RECUR_DAYS, width: int = RECUR_WIDTH) -> np.ndarray:
    """Distance from ``y[t]`` to the nearest earlier value at the same phase.

    The candidates are ``y[t - k * season + j]`` for ``k = 1..seasons`` and ``|j| <= width``
    (all strictly before ``t``); NaN where there is no finite candidate yet.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    best = np.full(n, np.inf)
    lags = {k * season - j for k in range(1, seasons + 1) for j in range(-width, width + 1)}
    for lag in sorted(lag for lag in lags if 0 < lag < n):
        d = np.abs(y[lag:] - y[:-lag])
        best[lag:] = np.fmin(best[lag:], np.where(np.isfinite(d), d, np.inf))
    return np.where(np.isfinite(best), best, np.nan)


def new_information(s: np.ndarray, hold: int) -> np.ndarray:
    """True where ``s[t]`` exceeds every value of ``s[t - hold : t]`` (causal; NaN never counts)."""
    s = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=-np.inf)
    prev = pd.Series(s).shift(1).rolling(max(int(hold), 1), min_periods=1).max().to_numpy()
    return s > np.nan_to_num(prev, nan=-np.inf)


NOVELTY_EDGES = (1.5, 3.0, 6.0)
NOVELTY_SCALES = (1.0, 2.0 ** 0.5, 2.0, 2.0 ** 1.5)
NOVELTY_DEPTH = 2
NOVELTY_WEIGHT = 4.0


def context_novelty(z: np.ndarray, *, edges: tuple[float, ...] = NOVELTY_EDGES,
                    scales: tuple[float, ...] = NOVELTY_SCALES, depth: int = NOVELTY_DEPTH) -> np.ndarray:
    """Share of recent residual patterns never seen before in the series, in ``[0, 1]`` (causal).

    ``z`` (signed residuals in units of their scale; NaN counts as 0) is quantised into classes
    split at ``±e * c`` for ``e`` in ``edges``; for every context length ``k = 1..depth`` the
    pattern of the last ``k`` classes is *new* at ``t`` when it occurs nowhere before ``t``.
    The result averages the new share over the quantisations ``c`` in ``scales`` (so it does not
    hinge on one set of edges): 1 where every pattern at every scale is new.
    """
    z = np.nan_to_num(np.asarray(z, dtype=np.float64), nan=0.0)
    n = len(z)
    out = np.zeros(n)
    if n == 0:
        return out
    base = np.asarray(edges, dtype=np.float64)
    for c in scales:
        cut = np.concatenate([-base[::-1], base]) * c
        b = np.searchsorted(cut, z).astype(np.int64)  # classes 0..len(cut)
        pad = len(cut) + 1  # the class "before the start"
        key = np.zeros(n, dtype=np.int64)
        for k in range(depth):
            shifted = np.full(n, pad, dtype=np.int64)
            shifted[k:] = b[: n - k]
            key = key * (pad + 1) + shifted
            _, first = np.unique(key, return_index=True)  # each pattern's first occurrence
            out[first] += 1.0
    return out / (len(scales) * depth)


def causal_spread(y: np.ndarray, every: int = 64) -> np.ndarray:
    """Robust spread (IQR / 1.349) of the values before each step; tiny but positive when flat."""
    n = len(y)
    out = np.empty(n)
    last = 0.0
    for c in range(0, n, every):
        past = y[:c]
        past = past[np.isfinite(past)]
        if past.size >= 4:
            q25, q75 = np.percentile(past, [25, 75])
            med = float(np.median(np.abs(past)))
            last = max(float(q75 - q25) / 1.349, 1e-6 * (1.0 + med))
        out[c : c + every] = last if last > 0 else 1e-9
    return out


def causal_scores(
    y: np.ndarray,
    pred: np.ndarray,
    level: float,
    *,
    window: int = 2000,
    halflife: float = 48.0,
    floor: float | np.ndarray | None = None,
    floor_frac: float = 0.02,
    shape: float = 0.5,
    extra: bool = False,
    season: int | None = None,
) -> dict[str, np.ndarray]:
    """Band and anomaly score for every step of ``y`` given causal predictions ``pred``.

    The residual is divided by a causal robust scale (:func:`ew_scale`); the point surprise is
    ``log p / log(1 - level)`` with ``p`` the causal tail probability of that ratio's size
    (:func:`tail_probability`), so 1.0 is the conformal band edge and the score grows with
    the surprise beyond it in a way comparable across series. Above 1.0 only new information
    counts (see the module docstring): with ``season`` (steps per day) a deviation is also
    scored by the surprise of its distance to the same time of the last days
    (:func:`seasonal_distance`) and keeps the smaller of the two; a residual pattern new to the
    series adds up to ``NOVELTY_WEIGHT`` (:func:`context_novelty`); a row that does not beat the
    previous ``2 * halflife`` rows (:func:`new_information`) scores 1.0.

    Returns arrays ``anomaly_score`` (0 where not yet calibrated), ``yhat``, ``yhat_lower``,
    ``yhat_upper`` (NaN where not yet calibrated), all of ``len(y)``.
    """
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    r = y - pred
    scale = ew_scale(r, halflife=halflife)
    if floor is None:
        floor = floor_frac * causal_spread(y)
    scale = np.where(np.isfinite(scale), np.maximum(scale, floor), np.nan)
    z = np.abs(r) / scale
    # the residual scale needs a few half-lives to forget its start; ratios from before that
    # would make every later point look surprising
    fin = np.flatnonzero(np.isfinite(z))
    burn = int(fin[0] + 2 * halflife) if fin.size else 0
    score = _surprise(tail_probability(z, window=window, shape=shape, ref_start=burn), level)
    if extra:
        # Two slower views of the same residuals raise the score only far past the band edge
        # (by ``EXTRA_OFFSET`` levels of surprise), so they add early warnings for level
        # shifts and never-seen values without changing the calibration near 1.0.
        zs = np.abs(pd.Series(r / scale).rolling(SMOOTH, min_periods=1).mean().to_numpy()) * np.sqrt(SMOOTH)
        ys = pd.Series(y)
        med = ys.shift(1).rolling(window, min_periods=MIN_RESIDUALS).median().to_numpy()
        zv = np.abs(y - med) / causal_spread(y)
        for a in (zs, zv):
            score = np.maximum(score, _surprise(tail_probability(a, window=window, shape=shape), level) - EXTRA_OFFSET)
    novelty = context_novelty(r / scale)
    novelty[:burn] = 0.0  # every pattern is new while the residual scale warms up
    score = _only_new(score, y, level, season=season, window=window, shape=shape, burn=burn,
                      hold=int(2 * halflife), novelty=novelty)
    # band half-width: the conformal ``level`` quantile of past |z|, in the series' units
    zr = np.where(np.arange(len(z)) >= burn, z, np.nan)
    q = pd.Series(zr).rolling(window, min_periods=MIN_RESIDUALS).quantile(level).shift(1).to_numpy()
    q = np.maximum(q, 1e-6)
    # a missed scrape is not evidence of anything: no observation, no score
    score = np.where(np.isfinite(y), score, np.nan)
    return {"anomaly_score": score, "yhat": pred, "yhat_lower": pred - q * scale, "yhat_upper": pred + q * scale}


def _only_new(point: np.ndarray, y: np.ndarray, level: float, *, season: int | None, window: int,
              shape: float, burn: int, hold: int, novelty: np.ndarray | None = None) -> np.ndarray:
    """Scores above 1 kept only for new deviations; the others outside the band score 1.0.

    ``novelty`` (:func:`context_novelty`, in ``[0, 1]``) adds ``NOVELTY_WEIGHT`` times itself
    to the surprise of rows outside the band.
    """
    novel = point
    if season is not None and season >= 2 * RECUR_WIDTH + 2:
        # in the series' units: the tail fit is scale-free when its floor on the tail scale is off
        dist = seasonal_distance(y, season)
        p = tail_probability(dist, window=window, shape=shape, ref_start=burn, min_beta=0.0)
        # where the same time of day has no history yet, only the point surprise speaks
        novel = np.where(np.isfinite(p), np.minimum(point, _surprise(p, level)), point)
    if novelty is not None:
        novel = novel + NOVELTY_WEIGHT * novelty
    novel = np.where(point <= 1.0, point, np.maximum(novel, 1.0))
    return np.where(point <= 1.0, point, np.where(new_information(novel, hold), novel, 1.0))


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


MIN_FACTOR = 0.5


def horizon_factors(
    residuals: np.ndarray, half_widths: np.ndarray, level: float, *, min_count: int = 50
) -> tuple[list[int], list[float]]:
    """Conformal band factors per horizon bucket from held-out multi-step forecasts.

    ``residuals`` and ``half_widths`` are ``(windows, H)``: row ``i`` column ``h`` is the error
    of held-out forecast window ``i`` at step ``h + 1`` and the band half-width on the side of
    that error. Steps are pooled across windows (series, origins) into buckets starting at
    steps 1, 2, 4, 8, ...; a bucket with fewer than ``min_count`` finite ratios is merged into
    the next. Returns ``(starts, factors)``: bucket ``j`` covers steps from ``starts[j]`` on
    (1-based) and widens the band by ``factors[j]``: :func:`conformal_factor` of its ratios, at
    least ``MIN_FACTOR`` and at least the factor of the bucket before.
    """
    r = np.asarray(residuals, dtype=np.float64)
    w = np.asarray(half_widths, dtype=np.float64)
    if r.ndim != 2 or r.shape != w.shape or r.shape[1] == 0:
        return [1], [1.0]
    H = r.shape[1]
    ok = (np.isfinite(r) & np.isfinite(w) & (w > 0)).sum(axis=0)
    edges = [0]
    while edges[-1] * 2 + 1 < H:
        edges.append(edges[-1] * 2 + 1)  # 0-based starts: steps 1, 2, 4, 8, ...
    edges.append(H)
    buckets: list[tuple[int, int]] = []
    a = 0
    for b in edges[1:]:
        if ok[a:b].sum() >= min_count or b == H:
            buckets.append((a, b))
            a = b
    if len(buckets) > 1 and ok[buckets[-1][0] : H].sum() < min_count:
        buckets[-2:] = [(buckets[-2][0], H)]  # a thin last bucket joins the one before
    # Where most held-out errors are exactly zero (a quantised or flat stretch) the quantile is
    # zero and the band would vanish; it never shrinks below MIN_FACTOR of the model's own band.
    factors = [max(conformal_factor(r[:, a:b].ravel(), w[:, a:b].ravel(), level), MIN_FACTOR) for a, b in buckets]
    # A later lead time is never easier than an earlier one: a bucket's factor is at least the
    # one before it. A later bucket that calibrates lower rests on the same few held-out
    # windows (their far ends overlap in the last horizon of the tail), so the dip is taken
    # for sampling noise rather than a band that may shrink.
    factors = np.maximum.accumulate(factors).tolist()
    return [a + 1 for a, _ in buckets], factors


def factors_at(starts: list[int], factors: list[float], horizon: int) -> np.ndarray:
    """The factor of every step ``1..horizon`` (steps past the last bucket take its factor)."""
    idx = np.searchsorted(np.asarray(starts), np.arange(1, horizon + 1), side="right") - 1
    return np.asarray(factors, dtype=np.float64)[np.clip(idx, 0, len(factors) - 1)]


def widen(yhat: np.ndarray, lower: np.ndarray, upper: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale a band's distance from ``yhat`` by ``factor`` (per step); returns (lower, upper)."""
    return yhat - factor * (yhat - lower), yhat + factor * (upper - yhat)


def band_score(value, yhat, lower, upper) -> np.ndarray:
    """Score of values against a band: 0 at ``yhat``, 1 at the edge, 0 where the band is unknown."""
    v, f, lo, hi = (np.asarray(a, dtype=np.float64) for a in (value, yhat, lower, upper))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(v >= f, (v - f) / (hi - f), (f - v) / (f - lo))
    return np.where(np.isfinite(s), np.maximum(s, 0.0), 0.0)
