"""Metric sources: where observations come from. All return a :class:`aiops.types.SeriesBatch`."""

from aiops.sources.base import MetricSource, align_to_grid, make_source

__all__ = ["MetricSource", "align_to_grid", "make_source"]
