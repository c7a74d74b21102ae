"""GitOps export: provisioning YAML and dashboard JSON, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from aiops.cli import cli
from aiops.grafana.dashboards import dashboard_uid, load_schema
from aiops.grafana.export import export
from tests.fixtures.grafana_double import SHARED_GRAFANA

from .conftest import TOKEN, make_config

REPO = Path(__file__).resolve().parents[2]

# Keys Grafana's provisioning documents accept (grafana/grafana conf/provisioning samples and docs).
DATASOURCE_KEYS = {"name", "type", "access", "orgId", "uid", "url", "user", "database", "basicAuth", "basicAuthUser",
                   "withCredentials", "isDefault", "jsonData", "secureJsonData", "version", "editable"}
PROVIDER_KEYS = {"name", "orgId", "folder", "folderUid", "type", "disableDeletion", "updateIntervalSeconds",
                 "allowUiUpdates", "options"}
PROVIDER_OPTION_KEYS = {"path", "foldersFromFilesStructure"}


def _sample_keys() -> tuple[set, set, set]:
    """Keys used in the samples beside the repo, when present (they are AGPL; read, not copied)."""
    ds = yaml.safe_load((SHARED_GRAFANA / "provisioning/datasources/docs-example-graphite.yaml").read_text())
    dash = yaml.safe_load((SHARED_GRAFANA / "provisioning/dashboards/docs-example.yaml").read_text())
    return set(ds["datasources"][0]), set(dash["providers"][0]), set(dash["providers"][0]["options"])


def test_export_writes_valid_provisioning(tmp_path):
    config = make_config(None, folder_uid="ops", folder_title="Ops", public_url="http://aiops:8080/prometheus")
    files = export(config, tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in files)
    assert names == [f"dashboards/{dashboard_uid('disk.free')}.json", "dashboards/aiops-latency-p90.json",
                     "dashboards/aiops-overview.json", "provisioning/dashboards/aiops.yaml",
                     "provisioning/datasources/aiops.yaml"]
    ds_doc = yaml.safe_load((tmp_path / "provisioning/datasources/aiops.yaml").read_text())
    dash_doc = yaml.safe_load((tmp_path / "provisioning/dashboards/aiops.yaml").read_text())
    assert ds_doc["apiVersion"] == 1 and dash_doc["apiVersion"] == 1
    (ds,) = ds_doc["datasources"]
    (provider,) = dash_doc["providers"]
    assert ds["uid"] == "aiops-prometheus" and ds["type"] == "prometheus" and ds["url"] == "http://aiops:8080/prometheus"
    assert provider["folderUid"] == "ops" and provider["type"] == "file"
    allowed = (DATASOURCE_KEYS, PROVIDER_KEYS, PROVIDER_OPTION_KEYS)
    if SHARED_GRAFANA.exists():
        allowed = _sample_keys()
        assert allowed[0] <= DATASOURCE_KEYS | {"uid"} and allowed[1] <= PROVIDER_KEYS
    assert set(ds) <= allowed[0]
    assert set(provider) <= allowed[1] and set(provider["options"]) <= allowed[2]
    schema = jsonschema.Draft7Validator(load_schema("grafana-dashboard"))
    for p in (tmp_path / "dashboards").glob("*.json"):
        schema.validate(json.loads(p.read_text()))
    before = {p: p.read_bytes() for p in files}
    export(config, tmp_path)
    assert {p: p.read_bytes() for p in files} == before  # re-export is byte-identical


def test_export_never_writes_the_service_token(tmp_path):
    config = make_config(None)
    data = config.model_dump()
    data["service"].update(token="s3cret-read-token", read_token_required=True)
    config = type(config).model_validate(data)
    export(config, tmp_path)
    text = (tmp_path / "provisioning/datasources/aiops.yaml").read_text()
    assert "s3cret" not in text
    ds = yaml.safe_load(text)["datasources"][0]
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Bearer $AIOPS_SERVICE_TOKEN"


def _write_config(tmp_path, grafana_url=None) -> Path:
    cfg = {"store": {"url": f"sqlite:///{tmp_path / 'aiops.db'}"},
           "watches": [{"name": "cpu", "query": "node_cpu_seconds_total"}]}
    if grafana_url:
        cfg["grafana"] = {"url": grafana_url, "token": TOKEN}
    else:
        cfg["grafana"] = {"output_dir": str(tmp_path / "files")}
    path = tmp_path / "aiops.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_export_and_provision(tmp_path, grafana):
    runner = CliRunner()
    res = runner.invoke(cli, ["grafana", "export", str(tmp_path / "out"), "-c", str(_write_config(tmp_path))])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out/dashboards/aiops-cpu.json").exists()

    cfg = _write_config(tmp_path, grafana.url)
    res = runner.invoke(cli, ["grafana", "provision", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "created         dashboard:aiops-cpu" in res.output
    res = runner.invoke(cli, ["grafana", "provision", "-c", str(cfg)])
    assert res.exit_code == 0 and "created" not in res.output

    res = runner.invoke(cli, ["grafana", "flush", "-c", str(cfg)])
    assert res.exit_code == 0 and json.loads(res.output)["pending"] == 0


def test_cli_provision_without_url_explains(tmp_path):
    res = CliRunner().invoke(cli, ["grafana", "provision", "-c", str(_write_config(tmp_path))])
    assert res.exit_code == 2 and "grafana.url" in res.output


@pytest.mark.parametrize("path", sorted((REPO / "dashboards").glob("*.json")), ids=lambda p: p.name)
def test_shipped_dashboards_are_valid(path):
    jsonschema.Draft7Validator(load_schema("grafana-dashboard")).validate(json.loads(path.read_text()))


def test_file_mode_dashboards_beside_annotation_files(tmp_path, store):
    from datetime import datetime, timezone

    from aiops.grafana.annotations import Annotator
    from aiops.grafana.export import write_dashboards

    config = make_config(None, output_dir=str(tmp_path / "grafana"))
    files = write_dashboards(config)
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert write_dashboards(config) == files and {p: p.stat().st_mtime_ns for p in files} == mtimes
    ann = Annotator.from_config(config.grafana, store)
    ann.enqueue_payload("alert:x:1", text="fired", time=datetime(2026, 11, 20, tzinfo=timezone.utc))
    assert ann.flush()["created"] == 1
    # what a Grafana file provider on grafana.output_dir loads: only the dashboards
    loaded = sorted((tmp_path / "grafana").rglob("*.json"))
    assert loaded == sorted(files) and all(json.loads(p.read_text())["title"] for p in loaded)
