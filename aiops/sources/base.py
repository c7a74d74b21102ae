"""The metric source protocol and helpers shared by every source."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from aiops.errors import NoData, TooManySeries
from aiops.promql import parse_selector
from aiops.types import SeriesBatch, empty_frame

if TYPE_CHECKING:
    from aiops.config import AiopsConfig

logger = logging.getLogger(__name__)


@runtime_checkable
class MetricSource(Protocol):
    """Anything that answers a range query with a long frame.

    ``fetch`` returns every series on the step grid from ``start`` to ``end`` inclusive,
    with NaN where no sample exists (gaps are kept, never invented). It raises
    :class:`aiops.errors.NoData` when the query matches nothing, ``TooManySeries`` past
    ``max_series``, ``BadQuery`` for a query the source rejects and ``SourceUnavailable`` when
    the source cannot be reached.
    """

    name: str

    def fetch(
        self,
        query: str,
        start: pd.Timestamp,
        end: pd.Timestamp,
        step: pd.Timedelta,
        *,
        watch: str | None = None,
        max_series: int | None = None,
    ) -> SeriesBatch: ...

    def check(self) -> None:
        """Raise SourceUnavailable if the source cannot answer now."""


def grid(start: pd.Timestamp, end: pd.Timestamp, step: pd.Timedelta) -> pd.DatetimeIndex:
    """Step-aligned timestamps covering [start, end]: multiples of ``step`` since the epoch."""
    s = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start, tz="UTC")
    e = pd.Timestamp(end).tz_convert("UTC") if pd.Timestamp(end).tzinfo else pd.Timestamp(end, tz="UTC")
    step_ns = int(step.value)
    first = -(-s.value // step_ns) * step_ns  # ceil to the step
    last = (e.value // step_ns) * step_ns
    if last < first:
        return pd.DatetimeIndex([], tz="UTC")
    return pd.DatetimeIndex(np.arange(first, last + 1, step_ns, dtype="int64"), tz="UTC")


def align_to_grid(frame: pd.DataFrame, index: pd.DatetimeIndex, step: pd.Timedelta) -> pd.DataFrame:
    """Put each series of a long frame on ``index``: each sample goes to its nearest grid point
    within half a step (the latest wins), grid points with no sample get NaN."""
    if frame.empty or len(index) == 0:
        return empty_frame()
    half = step / 2
    out = []
    for sid, g in frame.groupby("series_id", sort=True):
        g = g.dropna(subset=["ts"]).sort_values("ts")
        s = pd.Series(g["value"].to_numpy(dtype="float64"), index=pd.DatetimeIndex(g["ts"]))
        s = s[~s.index.duplicated(keep="last")]
        pos = index.get_indexer(s.index, method="nearest")
        ok = (pos >= 0) & (np.abs((index[np.clip(pos, 0, len(index) - 1)] - s.index).to_numpy()) <= half.to_timedelta64())
        vals = np.full(len(index), np.nan)
        vals[pos[ok]] = s.to_numpy()[ok]
        out.append(pd.DataFrame({"series_id": sid, "ts": index, "value": vals}))
    return pd.concat(out, ignore_index=True)


def select_range(
    data: SeriesBatch,
    query: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    step: pd.Timedelta,
    *,
    watch: str | None = None,
    max_series: int | None = None,
    where: str = "the data",
    hint: str | None = None,
) -> SeriesBatch:
    """Answer a vector-selector range query from series held in memory (file and synthetic
    sources): select by labels, enforce ``max_series``, put the range on the step grid.

    Raises:
        BadQuery: not a vector selector. NoData: nothing matches, or no point in the range.
        TooManySeries: more series match than ``max_series``.
    """
    sel = parse_selector(query)
    ids = [sid for sid, lbls in data.labels.items() if sel.matches(lbls)]
    if not ids:
        raise NoData(f"no series in {where} match {query}", watch=watch, query=query, hint=hint)
    if max_series is not None and len(ids) > max_series:
        raise TooManySeries(
            f"query matched {len(ids)} series, more than the limit of {max_series}",
            count=len(ids), limit=max_series, watch=watch, query=query,
        )
    f = data.frame[data.frame["series_id"].isin(ids)]
    idx = grid(start, end, step)
    if len(idx):
        f = f[(f["ts"] >= idx[0] - step) & (f["ts"] <= idx[-1] + step)]
    frame = align_to_grid(f, idx, step)
    if frame.empty or frame["value"].notna().sum() == 0:
        raise NoData(f"series in {where} match {query} but have no points in the range", watch=watch, query=query)
    return SeriesBatch(frame, {sid: data.labels[sid] for sid in ids}, step, watch)


def make_source(config: "AiopsConfig") -> MetricSource:
    """Build the source the config names (imports the heavy client only when needed)."""
    kind = config.source.kind
    if kind == "prometheus":
        from aiops.sources.prometheus import PrometheusSource

        return PrometheusSource.from_config(config.prometheus)
    if kind == "synthetic":
        from aiops.sources.synthetic import SyntheticSource

        return SyntheticSource.from_config(config.source.synthetic)
    from aiops.sources.files import FileSource

    assert config.source.file is not None
    return FileSource(config.source.file.path)
