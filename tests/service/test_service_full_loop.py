"""The full loop with real parts: Prometheus scrapes aiops /metrics and evaluates the shipped
alert rules, fires to a real Alertmanager, which calls the aiops webhook; aiops explains the
alert and its annotation reaches Grafana (the API double).

The shipped rules are used as they are, except that every ``for:`` is set to 0s so an alert
fires within seconds instead of 10 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import requests
import sqlalchemy as sa
import yaml

from aiops.config import AiopsConfig
from aiops.outputs import write_outputs
from aiops.service.inbox import Inbox
from aiops.store import Store, explanations
from tests.fixtures.alertmanager import start_alertmanager
from tests.fixtures.grafana_double import GrafanaDouble
from tests.fixtures.prom import start_prometheus
from tests.fixtures.service import running_service, wait_for

pytestmark = [pytest.mark.prometheus, pytest.mark.alertmanager]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "l00p-token"
GRAFANA_TOKEN = "graf-l00p"
SID = 'checkout_latency_seconds{instance="b",job="shop"}'


def rules_firing_at_once(dest: Path) -> Path:
    rules = yaml.safe_load((ROOT / "alert_rules" / "aiops.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    dest.write_text(yaml.safe_dump(rules, sort_keys=False))
    return dest


def seed_anomaly(store: Store) -> None:
    """What a scheduled run writes when a series leaves its band: score 2.5 at now."""
    now = pd.Timestamp.now(tz="UTC").floor("min")
    ts = pd.date_range(now - pd.Timedelta("10m"), now, freq="5min")
    scores = pd.DataFrame([dict(series_id=SID, ts=t, value=2.4, anomaly_score=2.5, yhat=1.0, yhat_lower=0.8,
                                yhat_upper=1.2) for t in ts])
    write_outputs(store, "checkout", {}, scores=scores)


def test_prometheus_alertmanager_aiops_grafana(tmp_path):
    with GrafanaDouble(token=GRAFANA_TOKEN) as grafana:
        cfg = AiopsConfig.model_validate(
            {
                "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
                "grafana": {"url": grafana.url, "token": GRAFANA_TOKEN},
                "service": {"token": TOKEN, "retry_backoff": "0.2s", "scheduler_required": False},
            }
        )
        store = Store.open(cfg.store.url)
        seed_anomaly(store)
        with running_service(cfg, store, tick_every=0.5) as svc:
            am = start_alertmanager(tmp_path / "am", f"{svc.url}/api/v1/alertmanager", token=TOKEN)
            host = svc.url.split("//", 1)[1]
            prom = start_prometheus(tmp_path / "prom", [], config={
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules_firing_at_once(tmp_path / "rules.yml"))],
                "scrape_configs": [{"job_name": "aiops", "honor_labels": True,
                                    "static_configs": [{"targets": [host]}]}],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.url.split("//", 1)[1]]}]}]},
            })
            try:
                inbox = Inbox(store)

                def sustained_done() -> dict | None:
                    for row in inbox.rows():
                        labels = row["payload"]["labels"]
                        if labels.get("alertname") == "AiopsAnomalySustained" and row["state"] == "done":
                            return row
                    return None

                wait_for(sustained_done, 60, 0.2)
                row = sustained_done()
                assert row["payload"]["labels"]["instance"] == "b"
                assert row["payload"]["labels"]["watch"] == "checkout"
                assert "outside its forecast band" in row["payload"]["annotations"]["summary"]
                assert "aiops_anomaly_score" in row["payload"]["generatorURL"]
                with store.engine.connect() as conn:
                    md = conn.execute(sa.select(explanations.c.markdown)
                                      .where(explanations.c.id == row["explanation_id"])).scalar_one()
                assert "AiopsAnomalySustained" in md and "aiops_anomaly == 1" in md

                key = f"alert:{row['fingerprint']}:{row['starts_at']}"

                def annotated() -> dict | None:
                    with grafana.lock:
                        found = [a for a in grafana.annotations.values() if a.get("data", {}).get("aiops_key") == key]
                    return found[0] if found else None

                wait_for(annotated, 20, 0.2)
                ann = annotated()
                assert "alert" in ann["tags"] and "alertname:AiopsAnomalySustained" in ann["tags"]
                assert "AiopsAnomalySustained" in ann["text"]
                assert grafana.invalid_requests() == []
                # aiops's own /metrics saw the explanation it just made.
                text = requests.get(f"{svc.url}/metrics", timeout=10).text
                count = [ln for ln in text.splitlines() if ln.startswith("aiops_alert_explanation_latency_seconds_count")]
                assert count and float(count[0].split()[-1]) >= 1
            finally:
                prom.stop()
                am.stop()
    assert TOKEN not in am.log.read_text()
