"""Self-monitoring on /metrics: computed from the store, so every process reports the same."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aiops.config import AiopsConfig
from aiops.grafana.annotations import Annotator, FileSink
from aiops.scheduler import LeaderLease
from aiops.service.app import create_app
from aiops.service.inbox import Inbox
from aiops.service.metrics import build_registry
from aiops.store import Store, alert_inbox, annotation_outbox, explanations, job_runs

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
NOW = pd.Timestamp(T0 + timedelta(minutes=10))


def samples(store: Store, clock=lambda: NOW) -> dict[str, dict[tuple, float]]:
    text = generate_latest(build_registry(store, clock=clock)).decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def run(store: Store, watch: str, kind: str, seconds: float, *, status: str = "ok", series: int = 0, points: int = 0,
        start: datetime = T0) -> None:
    rid = store.start_run(watch, kind)
    store.finish_run(rid, status=status, series=series, points=points, error="boom" if status == "error" else None)
    with store.begin() as conn:
        conn.execute(job_runs.update().where(job_runs.c.id == rid).values(
            started_at=start, finished_at=start + timedelta(seconds=seconds)))


def alert(i: int) -> dict:
    return {"fingerprint": f"fp{i}", "startsAt": "2026-11-22T11:00:00Z", "status": "firing",
            "labels": {"alertname": f"A{i}"}}


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/aiops.db")


def test_job_durations_series_processed_and_errors(store):
    run(store, "disk", "infer", 2.0, series=3, points=300)
    run(store, "disk", "infer", 4.0, series=3, points=310, start=T0 + timedelta(minutes=5))
    run(store, "disk", "infer", 1.0, status="error", start=T0 + timedelta(minutes=6))
    run(store, "disk", "fit", 30.0, series=3, points=9000)
    store.start_run("disk", "infer")  # still running: no duration yet
    m = samples(store)
    key = (("kind", "infer"), ("watch", "disk"))
    assert m["aiops_job_duration_seconds_count"][key] == 3
    assert m["aiops_job_duration_seconds_sum"][key] == pytest.approx(7.0, abs=0.01)
    assert m["aiops_job_duration_seconds_sum"][(("kind", "fit"), ("watch", "disk"))] == pytest.approx(30.0, abs=0.01)
    last = m["aiops_job_last_duration_seconds"]
    assert last == {
        (("kind", "infer"), ("status", "error"), ("watch", "disk")): pytest.approx(1.0, abs=0.01),
        (("kind", "fit"), ("status", "ok"), ("watch", "disk")): pytest.approx(30.0, abs=0.01),
    }
    assert m["aiops_series_processed_total"][key] == 6  # failed runs count nothing
    assert m["aiops_points_processed_total"][key] == 610
    errors = {dict(k)["kind"]: v for k, v in m["aiops_errors_total"].items()}
    assert errors == {"job_infer": 1.0, "job_fit": 0.0, "alert_attempt": 0.0}


def test_inbox_depth_dead_letters_latency_and_failed_attempts(store):
    inbox = Inbox(store)
    assert inbox.add([alert(i) for i in range(5)]) == (5, 0)
    # fp0: explained at the first attempt, 3 s after arrival; fp1: failed once, then explained after 40 s.
    for want_fail in (False, True, False):
        item = inbox.claim("w", lease=60, max_attempts=3, now=datetime.now(timezone.utc) + timedelta(hours=1))
        if want_fail:
            assert inbox.fail(item, "w", "LLM timed out", max_attempts=3, backoff=0.0) == "pending"
        else:
            assert inbox.complete(item, "w", {"explanation": {}, "markdown": "x", "backend": "template"})
    # fp2: dead after 3 failed attempts.
    item = None
    for _ in range(3):
        item = inbox.claim("w", lease=60, max_attempts=3, now=datetime.now(timezone.utc) + timedelta(hours=1))
        assert item.fingerprint == "fp2"
        inbox.fail(item, "w", "bad", max_attempts=3, backoff=0.0)
    # fp3 is being worked on; fp4 waits.
    assert inbox.claim("w", lease=60, max_attempts=3, now=datetime.now(timezone.utc) + timedelta(hours=1)).fingerprint == "fp3"
    with store.begin() as conn:
        conn.execute(alert_inbox.update().values(received_at=T0))
        for fp, latency in (("fp0", 3.0), ("fp1", 40.0)):
            eid = conn.execute(sa.select(alert_inbox.c.explanation_id).where(alert_inbox.c.fingerprint == fp)).scalar_one()
            conn.execute(explanations.update().where(explanations.c.id == eid).values(
                created_at=T0 + timedelta(seconds=latency)))
    m = samples(store)
    depth = {dict(k)["state"]: v for k, v in m["aiops_inbox_alerts"].items()}
    assert depth == {"pending": 1.0, "working": 1.0, "done": 2.0, "dead": 1.0}
    assert m["aiops_inbox_oldest_waiting_seconds"][()] == pytest.approx(600.0)
    lat = {dict(k)["le"]: v for k, v in m["aiops_alert_explanation_latency_seconds_bucket"].items()}
    assert lat["2.5"] == 0 and lat["5.0"] == 1 and lat["30.0"] == 1 and lat["60.0"] == 2 and lat["+Inf"] == 2
    assert m["aiops_alert_explanation_latency_seconds_count"][()] == 2
    assert m["aiops_alert_explanation_latency_seconds_sum"][()] == pytest.approx(43.0, abs=0.01)
    errors = {dict(k)["kind"]: v for k, v in m["aiops_errors_total"].items()}
    assert errors["alert_attempt"] == 4  # fp1 once, fp2 three times; fp3's attempt is in progress


def test_annotation_outbox_and_scheduler_leader(store, tmp_path):
    ann = Annotator(store, FileSink(tmp_path / "ann"))
    for i in range(3):
        ann.enqueue_payload(f"k{i}", text="t", time=T0)
    ann.flush()
    ann.enqueue_payload("k3", text="t", time=T0)
    with store.begin() as conn:
        conn.execute(annotation_outbox.update().where(annotation_outbox.c.key == "k3").values(last_error="HTTP 503"))
    ann.enqueue_payload("k4", text="t", time=T0)
    real_now = lambda: pd.Timestamp.now(tz="UTC")  # noqa: E731
    m = samples(store, clock=real_now)
    assert {dict(k)["state"]: v for k, v in m["aiops_annotation_outbox"].items()} == {"pending": 2.0, "sent": 3.0}
    assert m["aiops_annotation_outbox_failing"][()] == 1.0
    assert m["aiops_scheduler_leader"][()] == 0.0
    assert LeaderLease(store, ttl=30).acquire()
    assert samples(store, clock=real_now)["aiops_scheduler_leader"][()] == 1.0
    later = lambda: pd.Timestamp.now(tz="UTC") + pd.Timedelta("1min")  # noqa: E731
    assert samples(store, clock=later)["aiops_scheduler_leader"][()] == 0.0  # the lease has run out


def test_two_processes_report_the_same(store):
    """A service replica and the scheduler open the store separately and export equal numbers."""
    run(store, "disk", "infer", 2.0, series=3, points=300)
    Inbox(store).add([alert(1)])
    other = Store.open(str(store.engine.url))
    assert samples(store) == samples(other)
    text = create_app(AiopsConfig(), store=other).test_client().get("/metrics").data.decode()
    assert 'aiops_inbox_alerts{state="pending"} 1.0' in text
