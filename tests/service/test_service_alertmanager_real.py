"""A real Alertmanager notifies a running aiops service (waitress on loopback).

Alerts posted to Alertmanager's API v2 reach the webhook with a bearer token, land in the
inbox once and are explained by the service's workers; the resolved notification closes the
alert's annotation region.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from aiops.config import AiopsConfig
from aiops.service.inbox import Inbox
from aiops.store import annotation_outbox, explanations
from tests.fixtures.alertmanager import start_alertmanager
from tests.fixtures.service import running_service, wait_for

pytestmark = pytest.mark.alertmanager

TOKEN = "am-s3cr3t"


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@pytest.fixture
def service(tmp_path):
    cfg = AiopsConfig.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "grafana": {"output_dir": str(tmp_path / "grafana")},
            "service": {"token": TOKEN, "lease": "30s", "retry_backoff": "0.1s"},
        }
    )
    with running_service(cfg, workers=2) as svc:
        yield svc.url, svc.store


def test_alertmanager_notifications_are_stored_and_explained(tmp_path, service):
    url, store = service
    am = start_alertmanager(tmp_path / "am", f"{url}/api/v1/alertmanager", token=TOKEN)
    try:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        alert = {
            "labels": {"alertname": "CheckoutLatencyHigh", "service": "checkout", "severity": "critical"},
            "annotations": {"summary": "p99 latency above 1s", "description": "checkout p99 is 2.3s"},
            "startsAt": _iso(now - timedelta(minutes=2)),
            "generatorURL": "http://prometheus.local:9090/graph?g0.expr=latency_p99+%3E+1&g0.tab=1",
        }
        am.post_alerts([alert])
        inbox = Inbox(store)
        wait_for(lambda: inbox.counts()["done"] >= 1, 20)
        (row,) = inbox.rows()
        assert row["status"] == "firing" and row["payload"]["labels"]["alertname"] == "CheckoutLatencyHigh"
        with store.engine.connect() as conn:
            (expl,) = conn.execute(sa.select(explanations)).all()
        assert expl.subject_kind == "alert"
        assert expl.subject_ref == f"{row['fingerprint']}@{row['starts_at']}"
        assert "CheckoutLatencyHigh" in expl.markdown
        assert "latency_p99" in expl.markdown  # the query from generatorURL

        # Resolve it: Alertmanager sends the resolved notification, which closes the region.
        am.post_alerts([{**alert, "endsAt": _iso(now - timedelta(seconds=5))}])
        wait_for(lambda: inbox.counts()["done"] >= 2, 20)
        states = sorted((r["status"], r["state"]) for r in inbox.rows())
        assert states == [("firing", "done"), ("resolved", "done")]
        with store.engine.connect() as conn:
            n_expl = conn.execute(sa.select(sa.func.count()).select_from(explanations)).scalar_one()
            (ann,) = conn.execute(sa.select(annotation_outbox)).all()
        assert n_expl == 1  # resolved alerts are not explained again
        assert ann.key == f"alert:{row['fingerprint']}:{row['starts_at']}"
        assert ann.payload["data"]["ongoing"] is False and ann.payload["timeEnd"] > ann.payload["time"]
    finally:
        am.stop()
    log = am.log.read_text()
    assert TOKEN not in log


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_binary_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    from tests.fixtures.alertmanager import alertmanager_binary

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y prometheus-alertmanager"):
        alertmanager_binary()
