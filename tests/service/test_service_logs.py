"""``aiops serve`` logs as JSON when ``service.json_logs`` says so, and no secret reaches its log.

The service runs as its own process at debug level with every kind of secret configured
(service token, Grafana token, Prometheus password) and is driven through the paths that log:
a refused request with a wrong token, an alert whose text quotes the token, an annotation
that cannot reach Grafana, a readiness probe that cannot reach Prometheus.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from tests.fixtures.prom import free_port
from tests.fixtures.service import wait_for

ROOT = Path(__file__).resolve().parents[2]
SERVICE_TOKEN = "svc-T0KEN-4f9a"
GRAFANA_TOKEN = "glsa_GRAFANA-7d21"
PROM_PASSWORD = "pr0m-PASS-93be"
WRONG_TOKEN = "wrong-T0KEN-c0de"  # what a caller sent: a credential too, maybe valid elsewhere


def test_json_logs_without_secrets(tmp_path):
    port = free_port()
    cfg = {
        "source": {"kind": "prometheus"},
        "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "retries": 0, "timeout": "1s",
                       "basic_auth": {"username": "aiops", "password": PROM_PASSWORD}},
        "grafana": {"url": f"http://127.0.0.1:{free_port()}", "token": GRAFANA_TOKEN},
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "service": {"token": SERVICE_TOKEN, "json_logs": True, "workers": 1, "retry_backoff": "0.1s"},
    }
    (tmp_path / "aiops.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aiops", "-vv", "serve", "-c", str(tmp_path / "aiops.yaml"),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), 60, 0.2)
        hook = f"{base}/api/v1/alertmanager"
        alert = {"status": "firing", "labels": {"alertname": "Leaky", "token": SERVICE_TOKEN},
                 "annotations": {"description": f"Authorization: Bearer {SERVICE_TOKEN}"},
                 "startsAt": "2026-11-22T10:00:00Z", "fingerprint": "00aa"}
        body = {"version": "4", "status": "firing", "receiver": "aiops", "alerts": [alert]}
        assert requests.post(hook, json=body, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}, timeout=10).status_code == 401
        assert requests.post(hook, json=body, headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}, timeout=10).status_code == 202
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 503  # Prometheus is not there
        # The worker explains the alert, then fails to deliver its annotation to the absent Grafana.
        wait_for(lambda: '"aiops.grafana.annotations"' in log.read_text(), 30, 0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"aiops.service.webhook", "aiops.service.health", "aiops.grafana.annotations"} <= loggers, loggers
    assert any(r["level"] == "info" for r in records)  # -vv: the talkative levels were on
    for secret in (SERVICE_TOKEN, GRAFANA_TOKEN, PROM_PASSWORD, WRONG_TOKEN):
        assert secret not in text, f"{secret} leaked into the log"


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
