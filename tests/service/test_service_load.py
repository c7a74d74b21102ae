"""A small version of benchmarks/webhook_load.py: concurrent bursts, every alert stored once.

The service runs on waitress over loopback with its inbox workers explaining at the same time,
so the webhook's inserts compete with the workers' claims and completions for the SQLite store.
"""

from __future__ import annotations

import pytest

from aiops.config import AiopsConfig
from aiops.service.inbox import Inbox
from benchmarks.webhook_load import check_stored, make_alerts, send_load
from tests.fixtures.service import running_service

TOKEN = "l0ad-token"


@pytest.fixture
def service(tmp_path):
    cfg = AiopsConfig.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "grafana": {"output_dir": str(tmp_path / "grafana")},
            "service": {"token": TOKEN, "workers": 2, "retry_backoff": "0.1s"},
        }
    )
    with running_service(cfg) as svc:
        yield svc.url, svc.store


def test_500_alerts_from_4_senders_with_resends_are_stored_exactly_once(service):
    url, store = service
    alerts = make_alerts(500, prefix="suite")
    res = send_load(f"{url}/api/v1/alertmanager", TOKEN, alerts, senders=4, batch=10, burst=5, pause=0.01,
                    resend=True)
    assert res.errors == [] and res.statuses == {202: 4 * 13 * 2}  # 125 alerts per sender: 13 requests, each twice
    assert res.accepted_alerts == 1000  # each request was sent twice
    assert res.stored == 500  # and the second copy stored nothing
    assert check_stored(store, alerts) == {"sent": 500, "stored": 500, "lost": 0, "stored_twice": 0}
    counts = Inbox(store).counts()
    assert sum(counts.values()) == 500 and counts["dead"] == 0


def test_check_stored_notices_lost_alerts(service):
    _, store = service
    alerts = make_alerts(3, prefix="lost")
    Inbox(store).add(alerts[:2])
    assert check_stored(store, alerts) == {"sent": 3, "stored": 2, "lost": 1, "stored_twice": 0}
