"""Fixtures for the Grafana area: a validating Grafana double, a store, a config."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from aiops.config import AiopsConfig, validate_config
from aiops.store import Store
from aiops.types import AnomalyEvent
from tests.fixtures.grafana_double import GrafanaDouble

TOKEN = "glsa_test_token"


@pytest.fixture
def grafana():
    """A running Grafana double; the test fails if aiops sent it any invalid request."""
    with GrafanaDouble(token=TOKEN) as double:
        yield double
        bad = double.invalid_requests()
        assert not bad, "invalid requests sent to Grafana:\n" + "\n".join(
            f"{r.method} {r.path} -> {r.errors}" for r in bad
        )


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path / 'aiops.db'}")


def make_config(url: str | None = None, token: str | None = TOKEN, **grafana) -> AiopsConfig:
    data = {
        "grafana": {"url": url, "token": token, **grafana} if url else {**grafana},
        "service": {"host": "127.0.0.1", "port": 8080},
        "watches": [
            {"name": "latency-p90", "query": 'http_request_duration_seconds{quantile="0.9"}', "horizon": "1d"},
            {"name": "disk.free", "query": "node_filesystem_avail_bytes", "horizon": "7d",
             "capacity": {"threshold": 1e10, "direction": "below"}},
            {"name": "hidden", "query": "up", "dashboard": False},
        ],
    }
    return validate_config(data)


@pytest.fixture
def config(grafana) -> AiopsConfig:
    return make_config(grafana.url)


T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def make_event(event_id: int = 1, *, end: datetime | None = None, watch: str = "latency-p90",
               severity: str = "warning") -> AnomalyEvent:
    return AnomalyEvent(
        watch=watch, series_id='http_request_duration_seconds{quantile="0.9"}', start=T0,
        end=end, peak_time=T0 + timedelta(minutes=10), peak_score=2.5, severity=severity, direction="spike",
        observed=0.9, expected=0.3, expected_lower=0.2, expected_upper=0.4, id=event_id,
    )
