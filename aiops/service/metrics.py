"""``/metrics``: current output values and the backend's own health, for Prometheus to scrape.

Read from the store at scrape time by a custom collector on its own ``CollectorRegistry`` (never
the global one), so every service replica exports the same numbers:

- every output series (``aiops_anomaly_score``, ``aiops_anomaly``, ``aiops_forecast``,
  ``aiops_time_to_threshold_seconds``, ``aiops_model_error``) at its newest point not after now
  and not older than ``max_age``;
- ``aiops_up`` (1 when the store could be read), ``aiops_build_info{version}``,
  ``aiops_last_run_timestamp_seconds{watch,kind,status}`` (newest job run of each kind and status),
  ``aiops_job_failures_total{watch,kind}`` (job runs that ended in error).
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Callable, Iterator

import pandas as pd
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, exposition, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

from aiops import __version__
from aiops.errors import StoreError
from aiops.outputs import METRICS, latest_points
from aiops.store import Store, job_runs

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE = pd.Timedelta("1d")
# Text format 0.0.4: what every Prometheus 2.x understands (prometheus_client >= 0.22 defaults to 1.0.0).
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)


class AiopsCollector:
    """A prometheus_client collector reading current values from the store at each scrape."""

    def __init__(
        self,
        store: Store,
        *,
        max_age: pd.Timedelta = DEFAULT_MAX_AGE,
        clock: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
    ):
        self.store = store
        self.max_age = max_age
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        up = 1.0
        try:
            outputs = self._outputs()
            runs = self._runs()
        except StoreError as exc:
            logger.warning("/metrics: cannot read the store: %s", exc)
            up, outputs, runs = 0.0, [], []
        yield GaugeMetricFamily("aiops_up", "1 when aiops can read its store, else 0.", value=up)
        info = InfoMetricFamily("aiops_build", "aiops build information.")
        info.add_metric([], {"version": __version__})
        yield info
        yield from outputs
        yield from runs

    def _outputs(self) -> list[Metric]:
        families = {name: Metric(name, help_, "gauge") for name, help_ in METRICS.items()}
        for labels, _ts, value in latest_points(self.store, self.clock(), self.max_age):
            name = labels.get("__name__", "")
            if name in families:
                families[name].add_sample(name, {k: v for k, v in labels.items() if k != "__name__"}, value)
        return [m for m in families.values() if m.samples]

    def _runs(self) -> list[Metric]:
        c = job_runs.c
        when = sa.func.max(sa.func.coalesce(c.finished_at, c.started_at))
        q = sa.select(c.watch, c.kind, c.status, when, sa.func.count()).group_by(c.watch, c.kind, c.status)
        try:
            with self.store.engine.connect() as conn:
                rows = conn.execute(q).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read job runs: {getattr(exc, 'orig', exc)}") from None
        last = GaugeMetricFamily(
            "aiops_last_run_timestamp_seconds",
            "Unix time of the newest job run per watch, kind and status.",
            labels=["watch", "kind", "status"],
        )
        failures = CounterMetricFamily(
            "aiops_job_failures", "Job runs that ended in error.", labels=["watch", "kind"]
        )
        failed: dict[tuple[str, str], int] = {}
        for watch, kind, status, ts, count in rows:
            if ts is not None:
                ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
                last.add_metric([watch, kind, status], ts.timestamp())
            if status == "error":
                failed[(watch, kind)] = failed.get((watch, kind), 0) + int(count)
            else:
                failed.setdefault((watch, kind), 0)
        for (watch, kind), n in sorted(failed.items()):
            failures.add_metric([watch, kind], n)
        return [last, failures]


def build_registry(store: Store, **kwargs) -> CollectorRegistry:
    """A fresh registry holding only an :class:`AiopsCollector` (kwargs go to it)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AiopsCollector(store, **kwargs))
    return registry


def create_metrics_view(store: Store, **kwargs) -> Callable:
    """A Flask view serving the registry in the Prometheus text format."""
    from flask import Response

    registry = build_registry(store, **kwargs)

    def metrics_view():
        return Response(generate_latest(registry), content_type=CONTENT_TYPE)

    return metrics_view
