"""Dashboards and provisioning against the Grafana double."""

from __future__ import annotations

import json

import jsonschema
import pytest

from aiops.errors import GrafanaError
from aiops.grafana.client import GrafanaClient
from aiops.grafana.dashboards import (
    OVERVIEW_UID,
    PANEL_CAPACITY,
    build_dashboards,
    content_hash,
    dashboard_uid,
    load_schema,
    provision,
    stamped_hash,
)
from tests.fixtures.grafana_double import FULL_DASHBOARD

from .conftest import make_config


def client_for(config) -> GrafanaClient:
    return GrafanaClient.from_config(config.grafana)


def test_dashboard_uids_are_fixed_short_and_distinct():
    assert dashboard_uid("latency-p90") == "aiops-latency-p90"
    long = dashboard_uid("x" * 64)
    assert len(long) <= 40 and long == dashboard_uid("x" * 64)
    assert dashboard_uid("disk.free") != dashboard_uid("disk-free")
    assert all(len(dashboard_uid(n)) <= 40 for n in ("a", "a.b", "A_b-c" * 12))


def test_built_dashboards_are_valid_and_carry_their_hash():
    config = make_config("http://grafana:3000")
    dashboards = build_dashboards(config)
    assert [d["uid"] for d in dashboards] == [OVERVIEW_UID, "aiops-latency-p90", dashboard_uid("disk.free")]
    validators = [jsonschema.Draft7Validator(load_schema("grafana-dashboard"))]
    if FULL_DASHBOARD.exists():
        validators.append(jsonschema.Draft7Validator(json.loads(FULL_DASHBOARD.read_text())))
    for d in dashboards:
        for v in validators:
            v.validate(d)
        assert stamped_hash(d) == content_hash(d)
    latency, disk = dashboards[1], dashboards[2]
    exprs = [t["expr"] for p in latency["panels"] for t in p.get("targets", [])]
    assert 'http_request_duration_seconds{quantile="0.9"}' in exprs
    for bound in ("yhat", "lower", "upper"):
        assert f'aiops_forecast{{watch="latency-p90",bound="{bound}"}}' in exprs
    assert 'aiops_anomaly_score{watch="latency-p90"}' in exprs
    assert not any("aiops_time_to_threshold_seconds" in e for e in exprs)  # no capacity on this watch
    assert any(p["id"] == PANEL_CAPACITY and "aiops_time_to_threshold_seconds" in p["targets"][0]["expr"]
               for p in disk["panels"])
    ann = latency["annotations"]["list"][1]
    assert ann["target"]["tags"] == ["aiops", "watch:latency-p90"]
    assert latency["time"] == {"from": "now-3d", "to": "now+1d"}
    overview = dashboards[0]
    assert overview["panels"][0]["targets"][0]["expr"] == "topk(10, aiops_anomaly_score)"
    assert overview["panels"][1]["type"] == "annolist"
    # the same config builds the same bytes (stable uids and hashes)
    assert json.dumps(build_dashboards(config)) == json.dumps(dashboards)


def test_provision_creates_everything_then_changes_nothing(grafana, config):
    client = client_for(config)
    report = provision(config, client)
    assert report.created == ["folder:aiops", "datasource:aiops-prometheus", f"dashboard:{OVERVIEW_UID}",
                              "dashboard:aiops-latency-p90", f"dashboard:{dashboard_uid('disk.free')}"]
    ds = grafana.datasources["aiops-prometheus"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:8080/prometheus"
    assert all(e["folderUid"] == "aiops" and e["dashboard"]["version"] == 1 for e in grafana.dashboards.values())
    writes = len(grafana.calls("POST")) + len(grafana.calls("PUT"))

    again = provision(config, client)
    assert again.created == again.updated == again.skipped_edited == []
    assert len(again.unchanged) == 5
    assert len(grafana.calls("POST")) + len(grafana.calls("PUT")) == writes  # nothing written
    assert all(e["dashboard"]["version"] == 1 for e in grafana.dashboards.values())


def test_changed_config_updates_dashboard_and_datasource(grafana, config):
    provision(config, client_for(config))
    changed = make_config(grafana.url, public_url="http://aiops.internal:8080/prometheus")
    data = changed.model_dump()
    data["watches"][0]["detector"]["threshold"] = 2.0
    changed = type(changed).model_validate(data)
    report = provision(changed, client_for(changed))
    assert "dashboard:aiops-latency-p90" in report.updated
    assert "datasource:aiops-prometheus" in report.updated
    assert grafana.dashboards["aiops-latency-p90"]["dashboard"]["version"] == 2
    assert grafana.datasources["aiops-prometheus"]["url"] == "http://aiops.internal:8080/prometheus"
    assert grafana.datasources["aiops-prometheus"]["version"] == 2


def test_edited_dashboard_is_kept_unless_overwrite_edited(grafana, config):
    provision(config, client_for(config))
    grafana.edit_dashboard("aiops-latency-p90", title="my own latency board")
    report = provision(config, client_for(config))
    assert report.skipped_edited == ["dashboard:aiops-latency-p90"]
    assert grafana.dashboards["aiops-latency-p90"]["dashboard"]["title"] == "my own latency board"

    forced = make_config(grafana.url, overwrite_edited=True)
    report = provision(forced, client_for(forced))
    assert report.updated == ["dashboard:aiops-latency-p90"]
    d = grafana.dashboards["aiops-latency-p90"]["dashboard"]
    assert d["title"] == "aiops: latency-p90" and d["version"] == 3
    assert provision(config, client_for(config)).updated == []  # ours again: unchanged


def test_concurrent_edit_answers_412_and_is_not_overwritten(grafana, config, monkeypatch):
    provision(config, client_for(config))
    client = client_for(config)
    real_get = client.get_dashboard

    def stale_get(uid):  # someone saves in Grafana between our read and our write
        have = real_get(uid)
        if uid == "aiops-latency-p90":
            grafana.edit_dashboard(uid)  # same content, version bumped
        return have

    monkeypatch.setattr(client, "get_dashboard", stale_get)
    data = config.model_dump()
    data["watches"][0]["query"] = "http_request_duration_seconds"
    changed = type(config).model_validate(data)
    report = provision(changed, client)
    assert report.skipped_edited == ["dashboard:aiops-latency-p90"]
    assert grafana.calls("POST", "/api/dashboards/db")[-1].status == 412


def test_name_clash_and_duplicate_datasource_are_grafana_errors(grafana, config):
    client = client_for(config)
    client.create_datasource({"name": "aiops", "type": "prometheus", "access": "proxy", "uid": "someone-else",
                              "url": "http://x"})
    with pytest.raises(GrafanaError) as err:
        provision(config, client)
    assert err.value.status == 409 and "name" in err.value.hint


def test_wrong_token_fails_provisioning_with_token_hint(grafana):
    cfg = make_config(grafana.url, token="not-the-token")
    with pytest.raises(GrafanaError) as err:
        provision(cfg, client_for(cfg))
    assert err.value.status == 401 and "grafana.token" in err.value.hint
    assert not grafana.folders


def test_grafana_500_during_provisioning_is_an_error_and_a_rerun_completes(grafana, config):
    grafana.fail_next = 1
    with pytest.raises(GrafanaError) as err:
        provision(config, client_for(config))
    assert err.value.status == 503
    assert len(provision(config, client_for(config)).created) == 5


def test_url_with_path_prefix(grafana, config):
    cfg = make_config(grafana.url + "/", org_id=1)
    assert client_for(cfg).health()["database"] == "ok"
    assert client_for(cfg).api.client.url == grafana.url + "/api"
