"""/metrics: output values and own health, parsed back, and scraped by a real Prometheus."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from aiops.config import AiopsConfig
from aiops.outputs import write_outputs
from aiops.service.app import create_app
from aiops.service.metrics import AiopsCollector, build_registry
from aiops.store import Store

ROOT = Path(__file__).resolve().parents[2]
NOW = pd.Timestamp.now(tz="UTC").floor("min")
SID_A = 'disk_used{instance="a",job="node"}'
SID_B = 'disk_used{instance="b",job="node"}'


def fill(store: Store, now: pd.Timestamp = NOW) -> None:
    ts = pd.date_range(now - pd.Timedelta("20m"), now, freq="5min")
    scores = pd.DataFrame(
        [
            dict(series_id=sid, ts=t, value=1.0, anomaly_score=score, yhat=10.0, yhat_lower=8.0, yhat_upper=12.0)
            for sid, score in ((SID_A, 0.3), (SID_B, 2.5))
            for t in ts
        ]
    )
    future = pd.DataFrame(
        [dict(series_id=SID_A, ts=now + pd.Timedelta(minutes=5 * k), yhat=99.0, yhat_lower=0.0, yhat_upper=200.0) for k in range(1, 5)]
    )
    write_outputs(
        store, "disk", {}, scores=scores, forecast=future,
        time_to_threshold={SID_A: 3 * 86400.0, SID_B: None}, model_error={SID_A: 0.05, SID_B: 0.07},
    )
    run = store.start_run("disk", "infer")
    store.finish_run(run, status="ok")
    for _ in range(2):
        run = store.start_run("disk", "fit")
        store.finish_run(run, status="error", error="boom")


@pytest.fixture()
def store(tmp_path):
    st = Store.open(f"sqlite:///{tmp_path / 'aiops.db'}")
    fill(st)
    return st


def scrape(registry) -> dict[str, list]:
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def by_instance(samples) -> dict[str, float]:
    return {s.labels["instance"]: s.value for s in samples}


def test_metrics_export_current_values_and_health(store):
    fams = scrape(build_registry(store, clock=lambda: NOW + pd.Timedelta("1m")))
    assert by_instance(fams["aiops_anomaly_score"]) == {"a": 0.3, "b": 2.5}
    assert by_instance(fams["aiops_anomaly"]) == {"a": 0.0, "b": 1.0}
    assert by_instance(fams["aiops_time_to_threshold_seconds"]) == {"a": 3 * 86400.0, "b": float("inf")}
    assert by_instance(fams["aiops_model_error"]) == {"a": 0.05, "b": 0.07}
    yhat = {s.labels["instance"]: s.value for s in fams["aiops_forecast"] if s.labels["bound"] == "yhat"}
    assert yhat == {"a": 10.0, "b": 10.0}  # the point at now, not the horizon's 99
    sample = fams["aiops_anomaly_score"][0]
    assert sample.labels == {"instance": "a", "job": "node", "source_metric": "disk_used", "watch": "disk"}
    assert [s.value for s in fams["aiops_up"]] == [1.0]
    assert fams["aiops_build_info"][0].labels["version"]
    runs = {(s.labels["kind"], s.labels["status"]): s.value for s in fams["aiops_last_run_timestamp_seconds"]}
    assert set(runs) == {("infer", "ok"), ("fit", "error")}
    assert abs(runs[("infer", "ok")] - time.time()) < 300
    failures = {s.labels["kind"]: s.value for s in fams["aiops_job_failures"] if s.name.endswith("_total")}
    assert failures == {"fit": 2.0, "infer": 0.0}


def test_stale_outputs_are_left_out(store):
    fams = scrape(build_registry(store, clock=lambda: NOW + pd.Timedelta("3d"), max_age=pd.Timedelta("1d")))
    assert "aiops_anomaly_score" not in fams
    assert [s.value for s in fams["aiops_up"]] == [1.0]


def test_unreadable_store_reports_down_not_500(tmp_path):
    broken = Store(sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    fams = scrape(build_registry(broken))
    assert [s.value for s in fams["aiops_up"]] == [0.0]
    assert "aiops_anomaly_score" not in fams


def test_each_registry_is_its_own(store):
    from prometheus_client import REGISTRY

    build_registry(store)
    assert not any(isinstance(c, AiopsCollector) for c in REGISTRY._collector_to_names)


def test_metrics_endpoint(store):
    resp = create_app(AiopsConfig(), store=store).test_client().get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(resp.data.decode())}
    assert {"aiops_up", "aiops_anomaly_score", "aiops_forecast", "aiops_job_failures"} <= names


# --------------------------------------------------------------------------- real Prometheus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.prometheus
def test_real_prometheus_scrapes_and_rules_go_pending(store, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        msg = "prometheus is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    server = make_server("127.0.0.1", 0, create_app(AiopsConfig(), store=store), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = _free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "alert_rules" / "aiops.rules.yml")],
        "scrape_configs": [
            {"job_name": "aiops", "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        pending: dict[str, set[str]] = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                alerts = _get(f"{base}/alerts")["data"]["alerts"]
            except OSError:
                continue
            pending = {}
            for a in alerts:
                pending.setdefault(a["labels"]["alertname"], set()).add(a["labels"].get("instance", ""))
            if "AiopsAnomalySustained" in pending and "AiopsCapacityExhaustedSoon" in pending:
                break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert pending.get("AiopsAnomalySustained") == {"b"}, pending
        assert pending.get("AiopsCapacityExhaustedSoon") == {"a"}, pending
        assert "AiopsDown" not in pending and "AiopsAnomalySustainedCritical" not in pending
        got = _get(f"{base}/query?query=aiops_anomaly_score")["data"]["result"]
        assert {(r["metric"]["instance"], r["metric"]["job"], r["value"][1]) for r in got} == {("a", "node", "0.3"), ("b", "node", "2.5")}
    finally:
        proc.terminate()
        proc.wait(10)
        server.shutdown()
