"""``/metrics``: current output values and the backend's own health, for Prometheus to scrape.

Read from the store at scrape time by a custom collector on its own ``CollectorRegistry`` (never
the global one), so every service replica exports the same numbers:

- every output series (``aiops_anomaly_score``, ``aiops_anomaly``, ``aiops_forecast``,
  ``aiops_time_to_threshold_seconds``, ``aiops_model_error``) at its newest point not after now
  and not older than ``max_age``;
- ``aiops_up`` (1 when the store could be read), ``aiops_build_info{version}``,
  ``aiops_last_run_timestamp_seconds{watch,kind,status}`` (newest job run of each kind and status),
  ``aiops_job_failures_total{watch,kind}`` (job runs that ended in error);
- self-monitoring (docs/self-monitoring.md): job durations, series and points processed, the
  alert inbox by state and its oldest waiting alert, alert explanation latency, errors by kind,
  the annotation outbox, and whether a scheduler holds the leader lease.

Everything is computed from the store at scrape time, never from in-process counters, so every
service replica and the separate scheduler process report the same numbers and a restart loses
none. Counters are totals over the store's history (a store reset resets them, which
Prometheus's ``rate()`` handles like a process restart).
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Callable, Iterator

import pandas as pd
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, exposition, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from sqlalchemy.exc import SQLAlchemyError

from aiops import __version__
from aiops.errors import StoreError
from aiops.outputs import METRICS, latest_points
from aiops.store import Store, _utc, alert_inbox, annotation_outbox, explanations, job_runs, leases

logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE = pd.Timedelta("1d")
# Seconds from an alert's arrival to its stored explanation (queueing included).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
INBOX_STATES = ("pending", "working", "done", "dead")
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
            runs = self._runs() + self._self_monitoring()
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


    def _self_monitoring(self) -> list[Metric]:
        try:
            with self.store.engine.connect() as conn:
                seconds = _seconds_between(conn.dialect.name)
                return (
                    self._jobs(conn, seconds)
                    + self._inbox(conn, seconds)
                    + self._outbox(conn)
                    + self._leader(conn)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read self-monitoring data: {getattr(exc, 'orig', exc)}") from None

    def _jobs(self, conn: sa.Connection, seconds: Callable | None) -> list[Metric]:
        c = job_runs.c
        done = c.finished_at.is_not(None)
        processed_series = CounterMetricFamily(
            "aiops_series_processed", "Series read by job runs that succeeded.", labels=["watch", "kind"]
        )
        processed_points = CounterMetricFamily(
            "aiops_points_processed", "Observed points read by job runs that succeeded.", labels=["watch", "kind"]
        )
        q = sa.select(c.watch, c.kind, sa.func.coalesce(sa.func.sum(c.series), 0), sa.func.coalesce(sa.func.sum(c.points), 0))
        for watch, kind, series, points in conn.execute(q.where(c.status == "ok").group_by(c.watch, c.kind)):
            processed_series.add_metric([watch, kind], float(series))
            processed_points.add_metric([watch, kind], float(points))
        errors = CounterMetricFamily(
            "aiops_errors", "Errors by kind: job_<kind> (failed job runs), alert_attempt (failed explanation "
            "attempts of inbox alerts).", labels=["kind"],
        )
        by_kind = {"job_infer": 0, "job_fit": 0}
        for kind, n in conn.execute(sa.select(c.kind, sa.func.count()).where(c.status == "error").group_by(c.kind)):
            by_kind[f"job_{kind}"] = int(n)
        a = alert_inbox.c
        # Every attempt failed except the one of a done row and the one in progress of a working row.
        failed = sa.case((a.state.in_(("done", "working")) & (a.attempts > 0), a.attempts - 1), else_=a.attempts)
        by_kind["alert_attempt"] = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(failed), 0))).scalar_one())
        for kind, n in sorted(by_kind.items()):
            errors.add_metric([kind], float(n))
        out: list[Metric] = [processed_series, processed_points, errors]
        if seconds is None:
            return out
        took = seconds(c.finished_at, c.started_at)
        duration = SummaryMetricFamily(
            "aiops_job_duration_seconds", "Wall time of finished job runs.", labels=["watch", "kind"]
        )
        q = sa.select(c.watch, c.kind, sa.func.count(), sa.func.coalesce(sa.func.sum(took), 0.0))
        for watch, kind, n, total in conn.execute(q.where(done).group_by(c.watch, c.kind)):
            duration.add_metric([watch, kind], count_value=int(n), sum_value=float(total))
        newest = sa.select(sa.func.max(c.id)).where(done).group_by(c.watch, c.kind)
        last = GaugeMetricFamily(
            "aiops_job_last_duration_seconds", "Wall time of the newest finished job run.", labels=["watch", "kind", "status"]
        )
        for watch, kind, status, value in conn.execute(
            sa.select(c.watch, c.kind, c.status, took).where(c.id.in_(newest))
        ):
            last.add_metric([watch, kind, status], max(float(value or 0.0), 0.0))
        return out + [duration, last]

    def _inbox(self, conn: sa.Connection, seconds: Callable | None) -> list[Metric]:
        a = alert_inbox.c
        counts = dict(conn.execute(sa.select(a.state, sa.func.count()).group_by(a.state)).all())
        depth = GaugeMetricFamily(
            "aiops_inbox_alerts", "Alerts in the durable inbox by state (dead = dead letters).", labels=["state"]
        )
        for state in INBOX_STATES:
            depth.add_metric([state], float(counts.get(state, 0)))
        oldest = conn.execute(sa.select(sa.func.min(a.received_at)).where(a.state.in_(("pending", "working")))).scalar()
        age = 0.0
        if oldest is not None:
            oldest = pd.Timestamp(oldest)
            oldest = oldest.tz_localize("UTC") if oldest.tzinfo is None else oldest
            age = max((self.clock() - oldest).total_seconds(), 0.0)
        waiting = GaugeMetricFamily(
            "aiops_inbox_oldest_waiting_seconds",
            "Age of the oldest alert not yet explained (pending or working); 0 when none waits.", value=age,
        )
        out: list[Metric] = [depth, waiting]
        if seconds is None:
            return out
        e = explanations.c
        lat = seconds(e.created_at, a.received_at)
        cols = [sa.func.count(), sa.func.coalesce(sa.func.sum(lat), 0.0)]
        cols += [sa.func.coalesce(sa.func.sum(sa.case((lat <= b, 1), else_=0)), 0) for b in LATENCY_BUCKETS]
        row = conn.execute(sa.select(*cols).select_from(alert_inbox.join(explanations, a.explanation_id == e.id))).one()
        n, total, cumulative = int(row[0]), float(row[1]), [int(x) for x in row[2:]]
        buckets = [(_bound(b), float(k)) for b, k in zip(LATENCY_BUCKETS, cumulative)] + [("+Inf", float(n))]
        out.append(HistogramMetricFamily(
            "aiops_alert_explanation_latency_seconds",
            "Seconds from an alert's arrival at the webhook to its stored explanation (queueing included).",
            buckets=buckets, sum_value=total,
        ))
        return out

    def _outbox(self, conn: sa.Connection) -> list[Metric]:
        o = annotation_outbox.c
        counts = dict(conn.execute(sa.select(o.state, sa.func.count()).group_by(o.state)).all())
        failing = conn.execute(
            sa.select(sa.func.count()).where((o.state == "pending") & o.last_error.is_not(None))
        ).scalar_one()
        rows = GaugeMetricFamily(
            "aiops_annotation_outbox", "Annotations in the outbox: pending (not yet in Grafana) or sent.",
            labels=["state"],
        )
        for state in ("pending", "sent"):
            rows.add_metric([state], float(counts.get(state, 0)))
        return [rows, GaugeMetricFamily(
            "aiops_annotation_outbox_failing",
            "Pending annotations whose last delivery failed (Grafana down or refusing); they are retried.",
            value=float(failing),
        )]

    def _leader(self, conn: sa.Connection) -> list[Metric]:
        from aiops.scheduler import LEASE_NAME

        expires = conn.execute(sa.select(leases.c.expires_at).where(leases.c.name == LEASE_NAME)).scalar()
        live = expires is not None and _utc(expires) > self.clock().to_pydatetime()
        return [GaugeMetricFamily(
            "aiops_scheduler_leader", "1 while some scheduler holds a live leader lease, else 0.", value=float(live)
        )]


def _bound(b: float) -> str:
    return repr(float(b))


def _seconds_between(dialect: str) -> Callable | None:
    """``f(later, earlier)`` -> SQL seconds between two timestamp columns, for the store's dialect."""
    if dialect == "sqlite":
        return lambda later, earlier: (sa.func.julianday(later) - sa.func.julianday(earlier)) * 86400.0
    if dialect == "postgresql":
        return lambda later, earlier: sa.func.extract("epoch", later - earlier)
    return None  # other databases: no duration metrics


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
