from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from aiops.errors import StoreError
from aiops.store import SCHEMA_VERSION, Store, schema_version
from aiops.types import AnomalyEvent

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def event(**kw):
    base = dict(
        watch="w", series_id='up{job="a"}', start=T0, end=None, peak_time=T0, peak_score=2.0,
        severity="warning", direction="spike", observed=5.0, expected=1.0, expected_lower=0.5,
        expected_upper=1.5, labels={"job": "a"},
    )
    base.update(kw)
    return AnomalyEvent(**base)


def test_create_is_idempotent_and_versioned(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    s = Store.open(url)
    s.create()
    assert Store.open(url).version() == s.version() == SCHEMA_VERSION


def test_event_upsert_identity_and_filters(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/s.db")
    first = s.upsert_event(event())
    grown = s.upsert_event(event(end=T0 + timedelta(minutes=10), peak_score=4.0, severity="critical"))
    assert first == grown
    other = s.upsert_event(event(start=T0 + timedelta(hours=1), peak_time=T0 + timedelta(hours=1)))
    assert other != first
    evs = s.events(watch="w")
    assert len(evs) == 2
    got = s.event(first)
    assert got.end == T0 + timedelta(minutes=10) and got.peak_score == 4.0 and got.labels == {"job": "a"}
    assert [e.id for e in s.events(severity="critical")] == [first]
    assert [e.id for e in s.events(ongoing=True)] == [other]
    assert s.events(watch="other") == []


def test_runs_are_recorded(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/s.db")
    rid = s.start_run("w", "fetch")
    s.finish_run(rid, status="error", error="boom")
    (run,) = s.runs("w")
    assert run["status"] == "error" and run["error"] == "boom" and run["finished_at"] is not None


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    s = Store.open(url)
    with s.engine.begin() as c:
        c.execute(schema_version.update().values(version=99))
    with pytest.raises(StoreError, match="newer than this aiops"):
        Store.open(url)


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create folder"):
        Store.open(f"sqlite:///{blocker}/sub/s.db")
    with pytest.raises(StoreError):
        Store.open("nosuchdialect://x")


def test_failed_transaction_writes_nothing(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(StoreError, match="nothing was written"):
        with s.begin() as c:
            c.execute(sa.text("INSERT INTO job_runs (watch, kind, started_at, status) VALUES ('w','fetch','2026-01-01','ok')"))
            c.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))
    assert s.runs() == []
