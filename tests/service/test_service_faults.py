"""Faults: Prometheus down, Grafana down, the store locked or full.

Each names what went wrong, loses nothing and recovers on its own once the fault is gone.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import partial

import numpy as np
import pandas as pd
import pytest
import requests
import sqlalchemy as sa
from sqlalchemy import event

from aiops.config import AiopsConfig
from aiops.errors import StoreError
from aiops.pipeline import run_watch
from aiops.scheduler import Scheduler
from aiops.service.app import create_app
from aiops.service.inbox import Inbox
from aiops.service.worker import InboxWorker
from aiops.store import Store, alert_inbox, annotation_outbox, explanations
from tests.fixtures.grafana_double import GrafanaDouble
from tests.fixtures.prom import SeriesData, data_end, start_prometheus
from tests.fixtures.service import running_service, wait_for

TOKEN = "fau1t-token"
GRAFANA_TOKEN = "graf-fau1t"


def alert(i: int, *, description: str = "disk almost full") -> dict:
    return {"status": "firing", "labels": {"alertname": "DiskFull", "instance": f"node-{i}"},
            "annotations": {"description": description}, "startsAt": "2026-11-22T10:00:00Z",
            "fingerprint": f"f{i:04d}"}


def payload(alerts: list[dict]) -> dict:
    return {"version": "4", "status": "firing", "receiver": "aiops", "alerts": alerts}


def auth() -> dict:
    return {"Authorization": f"Bearer {TOKEN}"}


def service_config(db) -> AiopsConfig:
    return AiopsConfig.model_validate({"source": {"kind": "synthetic"}, "store": {"url": f"sqlite:///{db}"},
                                       "service": {"token": TOKEN, "scheduler_required": False}})


def rows(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# --------------------------------------------------------------------------- Prometheus down


@pytest.mark.prometheus
def test_prometheus_down_fails_jobs_cleanly_readyz_says_so_and_runs_recover(tmp_path):
    end = data_end()
    ts = np.arange(end - 86400, end + 1, 300, dtype="int64")
    values = 100 + 20 * np.sin(2 * np.pi * (ts % 86400) / 86400)
    series = [SeriesData({"__name__": "queue_depth", "job": "worker"}, ts, values)]
    prom = start_prometheus(tmp_path / "prom", series)
    cfg = AiopsConfig.model_validate({
        "source": {"kind": "prometheus"},
        "prometheus": {"url": prom.url, "retries": 0, "timeout": "2s"},
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "grafana": {"output_dir": str(tmp_path / "grafana")},
        "service": {"lease": "3s"},
        "watches": [{"name": "queue", "query": "queue_depth", "step": "5m", "history": "1d", "horizon": "1h",
                     "infer_every": "1s", "model": {"kind": "seasonal_naive"}, "dashboard": False}],
    })
    store = Store.open(cfg.store.url)
    client = create_app(cfg, store=store).test_client()
    end_ts = pd.Timestamp(end, unit="s", tz="UTC")
    sched = Scheduler(cfg, store=store, run_watch=partial(run_watch, end=end_ts), fit_watch=None, first_run_delay=0.1)
    sched.start()
    try:
        last = lambda: store.runs(limit=1)[0] if store.runs(limit=1) else {}  # noqa: E731
        wait_for(lambda: last().get("status") == "ok", 30)
        assert client.get("/readyz").status_code == 200

        prom.stop()
        wait_for(lambda: last().get("status") == "error", 30)
        err = last()["error"]
        assert "unavailable" in err and prom.url in err and "queue" in err, err
        body = client.get("/readyz").get_json()
        assert body["status"] == "not ready"
        assert body["checks"]["prometheus"]["ok"] is False and body["checks"]["store"]["ok"] is True
        assert body["checks"]["scheduler"]["ok"] is True  # the scheduler itself is fine
        assert sched._sched.running  # failing jobs do not stop the scheduler

        prom = start_prometheus(tmp_path / "prom", [], port=prom.port)  # back, same address and data
        wait_for(lambda: last().get("status") == "ok", 30)
        assert client.get("/readyz").status_code == 200
        failed = [r for r in store.runs(limit=500) if r["status"] == "error"]
        assert failed and all(r["finished_at"] is not None for r in failed)  # recorded, not left running
    finally:
        sched.shutdown(wait=True)
        prom.stop()


# --------------------------------------------------------------------------- Grafana down


def test_grafana_down_keeps_annotations_in_the_outbox_until_it_returns(tmp_path):
    with GrafanaDouble(token=GRAFANA_TOKEN) as grafana:
        grafana.down = True
        cfg = AiopsConfig.model_validate({
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "grafana": {"url": grafana.url, "token": GRAFANA_TOKEN},
            "service": {"token": TOKEN, "scheduler_required": False},
        })
        with running_service(cfg, tick_every=0.2) as svc:
            r = requests.post(f"{svc.url}/api/v1/alertmanager", json=payload([alert(1), alert(2)]), headers=auth(),
                              timeout=10)
            assert r.status_code == 202
            inbox = Inbox(svc.store)
            wait_for(lambda: inbox.counts()["done"] == 2, 20)  # explaining does not wait for Grafana

            def outbox() -> list:
                with svc.store.engine.connect() as conn:
                    return conn.execute(sa.select(annotation_outbox)).all()

            wait_for(lambda: any(o.last_error for o in outbox()), 10)
            assert {o.state for o in outbox()} == {"pending"} and len(outbox()) == 2
            assert "503" in next(o.last_error for o in outbox() if o.last_error)
            assert grafana.annotations == {}
            text = requests.get(f"{svc.url}/metrics", timeout=10).text
            assert "aiops_annotation_outbox_failing 1.0" in text or "aiops_annotation_outbox_failing 2.0" in text

            grafana.down = False  # back: the retry (5 s backoff) delivers each annotation once
            wait_for(lambda: {o.state for o in outbox()} == {"sent"}, 30, 0.2)
            assert len(grafana.annotations) == 2
            assert sorted(a["data"]["fingerprint"] for a in grafana.annotations.values()) == ["f0001", "f0002"]
            assert grafana.invalid_requests() == []


# --------------------------------------------------------------------------- store locked or full


def quick_store(url: str, *, max_pages: int | None = None) -> Store:
    """A store that gives up on a lock after 0.3 s (the default waits 15 s)."""
    engine = sa.create_engine(url, connect_args={"timeout": 0.3, "check_same_thread": False})
    if max_pages is not None:
        event.listen(engine, "connect", lambda conn, _rec: conn.execute(f"PRAGMA max_page_count={max_pages}"))
    store = Store(engine)
    store.create()
    return store


def test_locked_store_refuses_alerts_clearly_and_keeps_nothing_half_written(tmp_path, caplog):
    db = tmp_path / "aiops.db"
    store = quick_store(f"sqlite:///{db}")
    cfg = service_config(db)
    client = create_app(cfg, store=store).test_client()
    holder = sqlite3.connect(db)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with caplog.at_level(logging.ERROR, logger="aiops.service.webhook"):
            r = client.post("/api/v1/alertmanager", json=payload([alert(i) for i in range(5)]), headers=auth())
        assert r.status_code == 503 and "retry" in r.get_json()["error"]
        assert any("database is locked" in m and "another process holds the database" in m for m in caplog.messages)
        ready = client.get("/readyz").get_json()
        assert ready["checks"]["store"]["ok"] is False and "locked" in ready["checks"]["store"]["detail"]
    finally:
        holder.rollback()
        holder.close()
    assert rows(store, alert_inbox) == 0  # not one of the five
    r = client.post("/api/v1/alertmanager", json=payload([alert(i) for i in range(5)]), headers=auth())
    assert r.status_code == 202 and r.get_json()["stored"] == 5  # Alertmanager's retry succeeds
    assert client.get("/readyz").status_code == 200


def test_store_locked_while_a_worker_completes_explains_once_later(tmp_path):
    db = tmp_path / "aiops.db"
    store = quick_store(f"sqlite:///{db}")
    Inbox(store).add([alert(1)])
    holder = sqlite3.connect(db)
    calls = []

    def explain_then_lock(a: dict):
        calls.append(a["fingerprint"])
        if len(calls) == 1:
            holder.execute("BEGIN IMMEDIATE")  # the store locks up while we explain
        return {"title": "t", "backend": "template"}, "**t**"

    worker = InboxWorker(store, explain_then_lock, lease=0.5, backoff=0.01)
    with pytest.raises(StoreError, match="locked"):
        worker.run_once()  # cannot complete, cannot even record the failure: the claim just expires
    holder.rollback()
    holder.close()
    assert rows(store, explanations) == 0  # nothing half-written
    wait_for(lambda: worker.run_once(), 5, 0.1)  # re-claimed once the 0.5 s lease has run out
    assert calls == ["f0001", "f0001"]
    assert rows(store, explanations) == 1
    assert Inbox(store).counts()["done"] == 1


def test_full_store_refuses_alerts_clearly_and_stores_none_of_them(tmp_path, caplog):
    db = tmp_path / "aiops.db"
    quick_store(f"sqlite:///{db}").engine.dispose()  # the tables exist; count the pages they use
    with sqlite3.connect(db) as c:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    store = quick_store(f"sqlite:///{db}", max_pages=pages + 2)  # "the disk" has room for two more pages
    cfg = service_config(db)
    client = create_app(cfg, store=store).test_client()
    big = [alert(i, description="x" * 3000) for i in range(40)]  # about 30 pages of payload
    with caplog.at_level(logging.ERROR, logger="aiops.service.webhook"):
        r = client.post("/api/v1/alertmanager", json=payload(big), headers=auth())
    assert r.status_code == 503, r.get_json()
    assert any("database or disk is full" in m and "free disk space" in m for m in caplog.messages), caplog.messages
    assert rows(store, alert_inbox) == 0  # all or nothing: none of the 40
    small = client.post("/api/v1/alertmanager", json=payload([alert(99)]), headers=auth())
    assert small.status_code == 202  # what fits is still accepted
    roomy = quick_store(f"sqlite:///{db}")  # space freed
    r = create_app(cfg, store=roomy).test_client().post("/api/v1/alertmanager", json=payload(big), headers=auth())
    assert r.status_code == 202 and r.get_json()["stored"] == 40
    assert rows(roomy, alert_inbox) == 41
