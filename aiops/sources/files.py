"""CSV and Parquet files as a metric source and as input to the offline commands.

Accepted shapes (header names are case-insensitive):
    long:   ``timestamp,series,value`` (series = ``name{label="v"}`` or any text)
    single: ``timestamp,value`` (the series id is the file's stem)
Timestamps are ISO 8601 (naive = UTC) or unix seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aiops.errors import InputError
from aiops.sources.base import select_range
from aiops.timeutil import parse_timestamps
from aiops.types import SeriesBatch, parse_series_id

logger = logging.getLogger(__name__)


@dataclass
class LoadedFile:
    """A parsed input file: the long frame, labels, the step, and how timestamps were written."""

    batch: SeriesBatch
    time_form: str  # unix | iso | iso_naive
    had_series_column: bool


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file {p} does not exist")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def load_series_file(path: str | Path, *, allow_duplicates: bool = False) -> LoadedFile:
    """Read and validate a series file into a long frame.

    Raises:
        InputError: no rows, missing columns, unparsable timestamps, non-numeric values, or
            duplicate timestamps within a series — each naming the row.
    """
    p = Path(path)
    df = read_table(p)
    if "timestamp" not in df.columns or "value" not in df.columns:
        raise InputError(
            f"{p}: expected columns timestamp,value or timestamp,series,value; found {','.join(df.columns) or 'none'}"
        )
    if df.empty:
        raise InputError(f"{p}: no data rows")
    has_series = "series" in df.columns
    ts, form = parse_timestamps(df["timestamp"], column="timestamp")
    raw = df["value"].astype(str).str.strip() if df["value"].dtype == object else df["value"]
    values = pd.to_numeric(raw.replace({"": np.nan, "NaN": np.nan, "nan": np.nan, "null": np.nan}), errors="coerce")
    bad = values.isna() & ~pd.Series(raw).astype(str).str.strip().isin(["", "NaN", "nan", "null"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{p}: value {df['value'].iloc[i]!r} on data row {i + 1} is not a number")
    sids = df["series"].astype(str) if has_series else pd.Series([p.stem] * len(df))
    frame = pd.DataFrame({"series_id": sids.to_numpy(), "ts": ts.to_numpy(), "value": values.to_numpy(dtype="float64")})
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    dup = frame.duplicated(["series_id", "ts"], keep="first")
    if dup.any() and not allow_duplicates:
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(
            f"{p}: duplicate timestamp {df['timestamp'].iloc[i]} for series {frame['series_id'].iloc[i]!r} on data row {i + 1}",
            hint="each series needs one value per timestamp",
        )
    frame = frame.sort_values(["series_id", "ts"], kind="stable").reset_index(drop=True)
    labels = {}
    for sid in frame["series_id"].unique():
        try:
            labels[sid] = parse_series_id(sid)
        except ValueError:
            labels[sid] = {"__name__": "value", "series": sid}
    return LoadedFile(SeriesBatch(frame, labels, infer_step(frame), None), form, has_series)


def infer_step(frame: pd.DataFrame) -> pd.Timedelta | None:
    """The median spacing between consecutive samples of a series (None with < 2 samples)."""
    diffs = frame.groupby("series_id")["ts"].diff().dropna()
    diffs = diffs[diffs > pd.Timedelta(0)]
    if diffs.empty:
        return None
    return pd.Timedelta(diffs.median())


class FileSource:
    """Serves vector-selector queries from a CSV/Parquet file (loaded once)."""

    name = "file"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._loaded: LoadedFile | None = None

    def _load(self) -> LoadedFile:
        if self._loaded is None:
            self._loaded = load_series_file(self.path)
        return self._loaded

    def check(self) -> None:
        self._load()

    def fetch(self, query, start, end, step, *, watch=None, max_series=None) -> SeriesBatch:
        return select_range(self._load().batch, query, start, end, step, watch=watch,
                            max_series=max_series, where=str(self.path))
