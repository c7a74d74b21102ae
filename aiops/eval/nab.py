"""Numenta Anomaly Benchmark (NAB) scoring, written from the published method.

Lavin & Ahmad (2015) and NAB's README define it; edge cases follow NAB v1.1's sweeper:

* The probationary period is ``min(floor(0.15 * n), 0.15 * 5000)`` rows; nothing in it counts,
  and a window that lies wholly inside it is not scored at all.
* A row whose anomaly score is at or above the threshold is a detection. In a window only the
  earliest detection counts: ``tp * S(y) / S(-1)`` with ``y = -(right - i + 1) / width``.
* A detection outside every window earns ``fp * S(y)``, ``y = (i - right_prev) / (width_prev - 1)``
  after the preceding window, and ``-fp`` when ``y >= 3`` or no window precedes it.
* A window with no detection costs ``fn``. ``S(y) = 2 / (1 + exp(5y)) - 1``.
* One threshold per profile maximises the raw score summed over the corpus (every distinct
  score value is tried, plus "never fire"), and the normalised score is
  ``100 * (raw - null) / (perfect - null)`` with ``null = -fn * windows`` (never fires) and
  ``perfect = tp * windows`` (fires once at every window's first row).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from aiops.errors import InputError
from aiops.timeutil import parse_timestamps

logger = logging.getLogger(__name__)

PROBATION_FRACTION = 0.15


@dataclass(frozen=True)
class CostMatrix:
    """Weights of one NAB application profile."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(1.0, 0.11, 1.0),
    "reward_low_FP_rate": CostMatrix(1.0, 0.22, 1.0),
    "reward_low_FN_rate": CostMatrix(1.0, 0.11, 2.0),
}

Window = tuple[pd.Timestamp, pd.Timestamp]


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``S(y) = 2 / (1 + exp(5y)) - 1``, and -1 from ``y >= 3`` on."""
    y = np.asarray(y, dtype="float64")
    with np.errstate(over="ignore"):
        s = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y >= 3.0, -1.0, s)


_MAX_TP = float(scaled_sigmoid(-1.0))


def probation_rows(n: int, fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of an ``n``-row file whose detections are not counted."""
    return int(min(math.floor(fraction * n), fraction * 5000))


def window_bounds(timestamps: pd.Series | pd.DatetimeIndex, windows: Sequence[Window]) -> list[tuple[int, int]]:
    """Row index ``(first, last)`` of each window: the rows with ``start <= ts <= end``.

    Raises:
        InputError: a window covers no row, or windows overlap or are out of order.
    """
    ts = pd.DatetimeIndex(timestamps)
    out: list[tuple[int, int]] = []
    for start, end in windows:
        lo = int(ts.searchsorted(_utc(start), side="left"))
        hi = int(ts.searchsorted(_utc(end), side="right")) - 1
        if hi < lo:
            raise InputError(f"anomaly window {start} .. {end} covers no row of the file",
                             hint="check that the labels belong to this data file")
        if out and lo <= out[-1][1]:
            raise InputError(f"anomaly window {start} .. {end} overlaps or precedes the one before it",
                             hint="list windows in time order without overlaps")
        out.append((lo, hi))
    return out


@dataclass(frozen=True)
class FileLayout:
    """Where each row of one file stands relative to its windows (profile-free).

    Attributes:
        window: window number per row, -1 outside every window.
        position: per row, ``y`` of the scaled sigmoid: inside a window the relative position
            from its end, outside the distance past the preceding window (inf when none).
        scorable: False for probationary rows.
    """

    window: np.ndarray
    position: np.ndarray
    scorable: np.ndarray
    n_windows: int

    @classmethod
    def build(cls, n: int, bounds: Sequence[tuple[int, int]], probation_fraction: float = PROBATION_FRACTION) -> "FileLayout":
        window = np.full(n, -1, dtype="int64")
        position = np.full(n, np.inf)
        idx = np.arange(n)
        for k, (lo, hi) in enumerate(bounds):
            width = hi - lo + 1
            window[lo:hi + 1] = k
            position[lo:hi + 1] = -(hi - idx[lo:hi + 1] + 1) / width
            stop = bounds[k + 1][0] if k + 1 < len(bounds) else n
            # NAB divides by width - 1; a one-row window would divide by zero there.
            position[hi + 1:stop] = (idx[hi + 1:stop] - hi) / max(width - 1, 1)
        scorable = idx >= probation_rows(n, probation_fraction)
        return cls(window, position, scorable, len(bounds))

    def weights(self, cost: CostMatrix) -> np.ndarray:
        """Score each row would earn as a detection under ``cost`` (before first-only rule)."""
        s = scaled_sigmoid(self.position)
        return np.where(self.window >= 0, s * cost.tp / _MAX_TP, s * cost.fp)

    def scored_windows(self) -> np.ndarray:
        """Numbers of the windows that have at least one scorable row."""
        return np.unique(self.window[self.scorable & (self.window >= 0)])


def threshold_curve(scores: Sequence[np.ndarray], layouts: Sequence[FileLayout], cost: CostMatrix) -> pd.DataFrame:
    """Corpus raw score at every candidate threshold, highest threshold first.

    Args:
        scores: anomaly scores per file (NaN never detects).
        layouts: the matching :class:`FileLayout` per file.
        cost: the profile's weights.

    Returns:
        Frame ``threshold, score, tp_windows, fp_rows``; the first row (threshold +inf) is the
        detector that never fires.
    """
    if len(scores) != len(layouts):
        raise InputError(f"{len(scores)} score arrays for {len(layouts)} files")
    s_all, w_all, wt_all = [], [], []
    n_windows, offset = 0, 0
    for s, lay in zip(scores, layouts):
        s = np.asarray(s, dtype="float64")
        if s.shape != lay.window.shape:
            raise InputError(f"{s.size} anomaly scores for a file of {lay.window.size} rows",
                             hint="score every row of the file, in order")
        n_windows += lay.scored_windows().size
        keep = lay.scorable & ~np.isnan(s)
        s_all.append(s[keep])
        w_all.append(np.where(lay.window[keep] >= 0, lay.window[keep] + offset, -1))
        wt_all.append(lay.weights(cost)[keep])
        offset += lay.n_windows
    s, win, wt = (np.concatenate(a) if a else np.empty(0) for a in (s_all, w_all, wt_all))
    base = -cost.fn * n_windows
    order = np.argsort(-s, kind="stable")
    s, win, wt = s[order], win[order].astype("int64"), wt[order]

    inside = win >= 0
    delta = np.where(inside, 0.0, wt)
    first = np.zeros(s.size, dtype=bool)
    if inside.any():
        frame = pd.DataFrame({"win": win[inside], "wt": wt[inside]})
        best = frame.groupby("win")["wt"].cummax()
        prev = best.groupby(frame["win"]).shift(1, fill_value=-cost.fn)
        delta[inside] = (best - prev).to_numpy()
        first[np.flatnonzero(inside)] = ~frame["win"].duplicated().to_numpy()
    total = base + np.cumsum(delta)
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if s.size else np.empty(0, dtype=int)
    return pd.DataFrame({
        "threshold": np.concatenate([[np.inf], s[ends]]),
        "score": np.concatenate([[base], total[ends]]),
        "tp_windows": np.concatenate([[0], np.cumsum(first)[ends]]).astype("int64"),
        "fp_rows": np.concatenate([[0], np.cumsum(~inside)[ends]]).astype("int64"),
    })


@dataclass(frozen=True)
class FileScore:
    """One file scored at one threshold."""

    raw: float
    tp_windows: int
    fn_windows: int
    fp_rows: int


def score_file(scores: np.ndarray, layout: FileLayout, cost: CostMatrix, threshold: float) -> FileScore:
    """Raw NAB score of one file when every row with ``score >= threshold`` is a detection."""
    scores = np.asarray(scores, dtype="float64")
    if scores.shape != layout.window.shape:
        raise InputError(f"{scores.size} anomaly scores for a file of {layout.window.size} rows")
    det = layout.scorable & (scores >= threshold)
    wt = layout.weights(cost)
    raw, tp = 0.0, 0
    for k in layout.scored_windows():
        hit = det & (layout.window == k)
        if hit.any():
            raw += float(wt[hit].max())
            tp += 1
        else:
            raw -= cost.fn
    fp = det & (layout.window < 0)
    raw += float(wt[fp].sum())
    return FileScore(raw, tp, int(layout.scored_windows().size) - tp, int(fp.sum()))


@dataclass
class ProfileResult:
    """A detector's result under one profile."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    files: dict[str, FileScore] = field(default_factory=dict)

    @property
    def normalized(self) -> float:
        """``100 * (raw - null) / (perfect - null)``."""
        return 100.0 * (self.raw - self.null) / (self.perfect - self.null)

    def totals(self) -> dict[str, int]:
        """Detected windows, missed windows and false-positive rows over the corpus."""
        return {
            "tp_windows": sum(f.tp_windows for f in self.files.values()),
            "fn_windows": sum(f.fn_windows for f in self.files.values()),
            "fp_rows": sum(f.fp_rows for f in self.files.values()),
        }


def evaluate(
    scores: Mapping[str, np.ndarray],
    layouts: Mapping[str, FileLayout],
    profiles: Mapping[str, CostMatrix] = PROFILES,
) -> dict[str, ProfileResult]:
    """Optimise one threshold per profile over the corpus and score every file with it.

    Args:
        scores: anomaly scores per file name (one per row, causal).
        layouts: :class:`FileLayout` per file name; the keys of ``scores`` must all be here.
        profiles: the cost matrices to score under.
    """
    missing = sorted(set(scores) - set(layouts))
    if missing:
        raise InputError(f"no labels for {missing[:3]}", hint="score only files listed in the labels")
    names = sorted(scores)
    lays = [layouts[n] for n in names]
    arrays = [np.asarray(scores[n], dtype="float64") for n in names]
    n_windows = sum(lay.n_windows for lay in lays)
    n_scored = sum(lay.scored_windows().size for lay in lays)
    out: dict[str, ProfileResult] = {}
    for pname, cost in profiles.items():
        curve = threshold_curve(arrays, lays, cost)
        best = curve.iloc[int(np.argmax(curve["score"].to_numpy()))]
        res = ProfileResult(pname, float(best["threshold"]), 0.0, -cost.fn * n_scored, cost.tp * n_windows)
        for n, s, lay in zip(names, arrays, lays):
            res.files[n] = score_file(s, lay, cost, res.threshold)
        res.raw = sum(f.raw for f in res.files.values())
        out[pname] = res
    return out


# --- the corpus on disk -------------------------------------------------------------------


def _utc(ts: str | pd.Timestamp) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def load_profiles(path: str | Path) -> dict[str, CostMatrix]:
    """Read NAB's ``config/profiles.json``."""
    raw = json.loads(Path(path).read_text())
    return {
        name: CostMatrix(float(p["CostMatrix"]["tpWeight"]), float(p["CostMatrix"]["fpWeight"]),
                         float(p["CostMatrix"]["fnWeight"]))
        for name, p in raw.items()
    }


@dataclass
class Corpus:
    """NAB data files with their windows: ``frames[name]`` has columns ``ts, value``."""

    frames: dict[str, pd.DataFrame]
    windows: dict[str, list[Window]]
    profiles: dict[str, CostMatrix]

    def layouts(self, probation_fraction: float = PROBATION_FRACTION) -> dict[str, FileLayout]:
        """:class:`FileLayout` of every file."""
        return {
            name: FileLayout.build(len(f), window_bounds(f["ts"], self.windows[name]), probation_fraction)
            for name, f in self.frames.items()
        }


def load_corpus(root: str | Path, *, limit: int | None = None, only: Sequence[str] | None = None) -> Corpus:
    """Load a NAB checkout or subset: ``data/``, ``labels/combined_windows.json``, ``config/profiles.json``.

    Args:
        root: the NAB folder.
        limit: keep the first ``limit`` files (sorted by name), for quick runs.
        only: keep files whose name contains one of these strings.

    Raises:
        InputError: a part of the corpus is missing or a window matches no row.
    """
    root = Path(root)
    labels = root / "labels" / "combined_windows.json"
    if not labels.is_file():
        raise InputError(f"{labels} not found", hint="point --data at a NAB folder with data/, labels/, config/")
    windows_raw: dict[str, list[list[str]]] = json.loads(labels.read_text())
    prof_path = root / "config" / "profiles.json"
    profiles = load_profiles(prof_path) if prof_path.is_file() else dict(PROFILES)
    names = sorted(windows_raw)
    if only:
        names = [n for n in names if any(o in n for o in only)]
    if limit is not None:
        names = names[:limit]
    frames, windows = {}, {}
    for name in names:
        path = root / "data" / name
        if not path.is_file():
            raise InputError(f"{path} is listed in the labels but missing", hint="restore the data file or drop it")
        raw = pd.read_csv(path)
        ts, _ = parse_timestamps(raw["timestamp"])
        frames[name] = pd.DataFrame({"ts": ts.to_numpy(), "value": raw["value"].astype("float64").to_numpy()})
        windows[name] = [(_utc(a), _utc(b)) for a, b in windows_raw[name]]
    logger.info("loaded %d NAB files with %d windows", len(frames), sum(map(len, windows.values())))
    return Corpus(frames, windows, profiles)
