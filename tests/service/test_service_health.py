"""/healthz and /readyz: liveness without dependencies, readiness naming what is wrong."""

from __future__ import annotations

import sqlite3
import time

import pytest
import sqlalchemy as sa

from aiops.config import AiopsConfig
from aiops.scheduler import LeaderLease
from aiops.service.app import create_app
from aiops.store import Store, leases
from tests.fixtures.prom import free_port

TOKEN = "h3alth-t0ken"


def make_config(tmp_path, **service) -> AiopsConfig:
    return AiopsConfig.model_validate(
        {
            "source": {"kind": "synthetic"},
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "service": {"token": TOKEN, "read_token_required": True, **service},
        }
    )


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/aiops.db")


def test_healthz_needs_no_token_and_touches_nothing(tmp_path):
    broken = Store(sa.create_engine(f"sqlite:///{tmp_path}/missing/x.db"))  # cannot even be opened
    client = create_app(make_config(tmp_path), store=broken).test_client()
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}
    assert client.get("/metrics").status_code == 401  # reads need the token here; probes do not


def test_readyz_waits_for_a_scheduler_lease(tmp_path, store):
    client = create_app(make_config(tmp_path), store=store).test_client()
    resp = client.get("/readyz")
    body = resp.get_json()
    assert resp.status_code == 503 and body["status"] == "not ready"
    assert set(body["checks"]) == {"store", "scheduler"}  # no prometheus check for a synthetic source
    assert body["checks"]["store"]["ok"] is True
    assert body["checks"]["scheduler"]["ok"] is False
    assert "aiops scheduler" in body["checks"]["scheduler"]["detail"]
    assert resp.headers["Cache-Control"] == "no-store"

    lease = LeaderLease(store, holder="node-1", ttl=30)
    assert lease.acquire()
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["status"] == "ready"
    assert "node-1" in resp.get_json()["checks"]["scheduler"]["detail"]

    # The leader dies without releasing: once its lease has expired, not ready again.
    with store.begin() as conn:
        conn.execute(leases.update().values(expires_at=sa.func.datetime("now", "-90 seconds")))
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "expired" in resp.get_json()["checks"]["scheduler"]["detail"]


def test_readyz_without_a_scheduler_when_configured_so(tmp_path, store):
    client = create_app(make_config(tmp_path, scheduler_required=False), store=store).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert set(resp.get_json()["checks"]) == {"store"}


def test_readyz_reports_a_locked_store_quickly_and_restores_the_store_timeout(tmp_path, store):
    client = create_app(make_config(tmp_path, scheduler_required=False), store=store).test_client()
    holder = sqlite3.connect(tmp_path / "aiops.db")
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        t0 = time.monotonic()
        resp = client.get("/readyz")
        took = time.monotonic() - t0
    finally:
        holder.rollback()
        holder.close()
    assert resp.status_code == 503
    detail = resp.get_json()["checks"]["store"]["detail"]
    assert "locked" in detail and "retry" in detail, detail
    assert took < 6, took  # not the store's 15 s busy timeout
    assert client.get("/readyz").status_code == 200  # lock gone: ready again
    with store.engine.connect() as conn:  # the pooled connection got its own timeout back
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 15000


@pytest.mark.prometheus
def test_readyz_checks_prometheus_when_it_is_the_source(tmp_path, store, prometheus):
    def cfg(url: str) -> AiopsConfig:
        return AiopsConfig.model_validate(
            {
                "source": {"kind": "prometheus"},
                "prometheus": {"url": url, "basic_auth": {"username": "u", "password": "pr0m-pw"}},
                "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
                "service": {"scheduler_required": False},
            }
        )

    resp = create_app(cfg(prometheus.url), store=store).test_client().get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"]["prometheus"]["ok"] is True

    dead = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    resp = create_app(cfg(dead), store=store).test_client().get("/readyz")
    assert time.monotonic() - t0 < 5  # no retries with backoff in a probe
    body = resp.get_json()
    assert resp.status_code == 503 and body["checks"]["store"]["ok"] is True
    assert body["checks"]["prometheus"]["ok"] is False
    assert dead in body["checks"]["prometheus"]["detail"]
    assert "pr0m-pw" not in resp.get_data(as_text=True)
