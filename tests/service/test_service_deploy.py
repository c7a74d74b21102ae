"""deploy/: configs pass promtool/amtool, and the compose wiring points where it should."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from aiops.config import load_config
from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


tool = require_binary


def load(rel: str) -> dict:
    return yaml.safe_load((DEPLOY / rel).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


def test_prometheus_config_passes_promtool_and_loads_the_rules():
    res = subprocess.run(
        [tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    n_rules = len(list((ROOT / "alert_rules").glob("*.yml")))
    assert f"SUCCESS: {n_rules} rule files found" in out  # the relative rule path resolved
    assert "alert_rules/aiops.rules.yml" in out


def test_alertmanager_config_passes_amtool():
    res = subprocess.run(
        [tool("amtool"), "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_compose_services_and_mounted_files_exist(compose):
    assert {"aiops", "aiops-scheduler", "prometheus", "alertmanager", "grafana", "node-exporter"} <= set(compose["services"])
    assert (DEPLOY / compose["services"]["aiops"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts missing {src}"
    assert compose["secrets"]["aiops_token"]["file"] == "./secrets/aiops_token"


def test_rule_path_resolves_inside_the_container(compose):
    prom = compose["services"]["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    config_dir = mounts["./prometheus"]
    rule_glob = load("prometheus/prometheus.yml")["rule_files"][0]
    in_container = os.path.normpath(os.path.join(config_dir, rule_glob))
    assert os.path.dirname(in_container) == mounts["../alert_rules"]
    assert "--config.file=" + config_dir + "/prometheus.yml" in prom["command"]


def test_prometheus_scrapes_aiops_and_node_exporter():
    cfg = load("prometheus/prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["aiops"]["static_configs"][0]["targets"] == ["aiops:8080"]
    assert jobs["aiops"]["honor_labels"] is True  # keep the source series' instance/job labels
    assert jobs["node"]["static_configs"][0]["targets"] == ["node-exporter:9100"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_alertmanager_webhook_goes_to_aiops_with_the_shared_token(compose):
    am = load("alertmanager/alertmanager.yml")
    (hook,) = next(r for r in am["receivers"] if r["name"] == am["route"]["receiver"])["webhook_configs"]
    assert hook["url"] == "http://aiops:8080/api/v1/alertmanager"
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"] == "/run/secrets/aiops_token"
    assert "aiops_token" in compose["services"]["alertmanager"]["secrets"]


def test_aiops_config_is_valid_and_matches_the_stack(tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    cfg = load_config(DEPLOY / "aiops" / "aiops.yaml", environ={}, overrides={"service.token_file": str(token)})
    assert cfg.service.token.get_secret_value() == "t0ken"
    assert cfg.prometheus.url == "http://prometheus:9090"
    assert load("aiops/aiops.yaml")["service"]["token_file"] == "/run/secrets/aiops_token"
    assert (cfg.service.host, cfg.service.port) == ("0.0.0.0", 8080)
    ds = {d["uid"]: d for d in load("grafana/provisioning/datasources/aiops.yaml")["datasources"]}
    assert ds[cfg.grafana.datasource_uid]["url"] == "http://aiops:8080/prometheus" == cfg.grafana.public_url
    assert ds[cfg.grafana.datasource_uid]["type"] == "prometheus"
    providers = load("grafana/provisioning/dashboards/aiops.yaml")["providers"]
    assert providers[0]["options"]["path"] == cfg.grafana.output_dir


def test_dockerfile_and_compose_commands_exist_in_the_cli(compose):
    from click.testing import CliRunner

    from aiops.cli import cli

    text = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["aiops", "serve", "--config", "/etc/aiops/aiops.yaml"]' in text
    scheduler = compose["services"]["aiops-scheduler"]["command"]
    for argv in (["serve", "--config", "x.yaml"], scheduler[1:]):
        res = CliRunner().invoke(cli, [argv[0], "--help"])
        assert res.exit_code == 0, res.output
        assert "--config" in res.output


def test_app_from_config_file_serves(tmp_path):
    from aiops.service.app import app_from_config_file

    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{tmp_path / 'aiops.db'}\n")
    client = app_from_config_file(str(cfg)).test_client()
    assert client.get("/prometheus/api/v1/query?query=1%2B1").get_json()["data"]["result"][1] == "2"
    assert client.get("/metrics").status_code == 200
