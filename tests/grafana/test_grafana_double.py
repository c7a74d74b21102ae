"""The Grafana double itself: it must be as strict and stateful as the tests rely on."""

from __future__ import annotations

import json

import niquests
import pytest

from tests.fixtures.grafana_double import FULL_API, GrafanaDouble

from .conftest import TOKEN


@pytest.fixture
def double():
    with GrafanaDouble(token=TOKEN) as g:
        yield g


def call(g, method, path, body=None, token=TOKEN, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = niquests.request(method, g.url + "/api" + path, json=body, params=params or None, headers=headers, timeout=5)
    return r.status_code, (r.json() if r.content else None)


def test_health_needs_no_token_everything_else_does(double):
    assert call(double, "GET", "/health", token=None)[0] == 200
    assert call(double, "GET", "/folders", token=None)[0] == 401
    assert call(double, "GET", "/folders", token="nope")[0] == 401
    assert call(double, "GET", "/folders")[0] == 200


def test_uses_full_definitions_when_shared_contracts_are_present(double):
    assert double.full_definitions == FULL_API.exists()


def test_grafana_client_null_fields_are_rejected(double):
    """grafana-client's add_annotation sends panelId/time/timeEnd as null: Grafana's types say integer."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaBadInputError

    host, port = double.url.rsplit(":", 1)
    api = GrafanaApi(auth=TOKEN, host=host.split("//")[1], port=int(port))
    with pytest.raises(GrafanaBadInputError):
        api.annotations.add_annotation(text="x", tags=["a"])
    (bad,) = double.invalid_requests()
    assert any("panelId" in e and "own" in e for e in bad.errors)
    if double.full_definitions:
        assert any(e.startswith("full api PostAnnotationsCmd") for e in bad.errors)
    assert not double.annotations


def test_bodies_and_queries_are_validated(double):
    assert call(double, "POST", "/folders", {"uid": "f", "title": "t", "colour": "red"})[0] == 400
    assert call(double, "GET", "/annotations", limit="ten")[0] == 400
    assert call(double, "GET", "/annotations", dashboard="x")[0] == 400
    bad_dash = {"dashboard": {"uid": "d", "title": "t", "schemaVersion": 39, "panels": [{"title": "no type"}],
                              "templating": {"list": []}, "annotations": {"list": []}}}
    status, body = call(double, "POST", "/dashboards/db", bad_dash)
    assert status == 400 and any("dashboard schema subset" in e for e in body["errors"])
    assert len(double.invalid_requests()) == 4
    double.requests.clear()


def test_dashboard_versions_conflicts_and_404(double):
    dash = {"uid": "d1", "title": "One", "schemaVersion": 39, "templating": {"list": []}, "annotations": {"list": []}}
    assert call(double, "POST", "/folders", {"uid": "f", "title": "F"})[0] == 200
    assert call(double, "POST", "/folders", {"uid": "f", "title": "F2"})[0] == 409
    status, res = call(double, "POST", "/dashboards/db", {"dashboard": dash, "folderUid": "f"})
    assert status == 200 and res["version"] == 1 and res["uid"] == "d1"
    status, res = call(double, "POST", "/dashboards/db", {"dashboard": dash, "folderUid": "f"})
    assert status == 412 and res["status"] == "version-mismatch"
    status, res = call(double, "POST", "/dashboards/db", {"dashboard": {**dash, "version": 1}, "folderUid": "f"})
    assert status == 200 and res["version"] == 2
    status, res = call(double, "POST", "/dashboards/db", {"dashboard": {**dash, "uid": "d2"}, "folderUid": "f"})
    assert status == 412 and res["status"] == "name-exists"
    assert call(double, "POST", "/dashboards/db", {"dashboard": dash, "folderUid": "f", "overwrite": True})[1]["version"] == 3
    assert call(double, "GET", "/dashboards/uid/nope")[0] == 404
    status, res = call(double, "GET", "/dashboards/uid/d1")
    assert res["meta"]["folderUid"] == "f" and res["dashboard"]["version"] == 3
    assert not double.invalid_requests()


def test_datasource_conflicts(double):
    ds = {"name": "p", "type": "prometheus", "access": "proxy", "uid": "u1", "url": "http://x"}
    assert call(double, "POST", "/datasources", ds)[0] == 200
    assert call(double, "POST", "/datasources", ds)[0] == 409
    assert call(double, "POST", "/datasources", {**ds, "name": "q"})[0] == 409
    assert call(double, "GET", "/datasources/uid/u2")[0] == 404
    status, res = call(double, "PUT", "/datasources/uid/u1", {**ds, "url": "http://y", "version": 1})
    assert status == 200 and res["datasource"]["version"] == 2
    assert call(double, "PUT", "/datasources/uid/u1", {**ds, "version": 1})[0] == 409  # stale version


def test_annotation_filters_and_updates(double):
    for i, (t, tags) in enumerate([(1000, ["a", "b"]), (5000, ["a"]), (9000, ["c"])]):
        assert call(double, "POST", "/annotations", {"time": t, "timeEnd": t + 500, "tags": tags, "text": str(i)})[0] == 200
    texts = lambda **q: [a["text"] for a in call(double, "GET", "/annotations", **q)[1]]  # noqa: E731
    assert texts() == ["2", "1", "0"]
    assert texts(tags=["a"]) == ["1", "0"]
    assert texts(tags=["a", "b"]) == ["0"]
    assert texts(tags=["b", "c"], matchAny="true") == ["2", "0"]
    assert texts(**{"from": 1400, "to": 5100}) == ["1", "0"]
    assert texts(type="alert") == []
    assert call(double, "PATCH", "/annotations/1", {"text": "patched"})[0] == 200
    a = call(double, "GET", "/annotations/1")[1]
    assert a["text"] == "patched" and a["tags"] == ["a", "b"]
    assert call(double, "PUT", "/annotations/1", {"text": "put", "time": 10, "timeEnd": 20})[0] == 200
    a = call(double, "GET", "/annotations/1")[1]
    assert (a["text"], a["tags"], a["time"], a["timeEnd"]) == ("put", [], 10, 20)
    assert call(double, "PATCH", "/annotations/99", {"text": "x"})[0] == 404
    assert call(double, "POST", "/annotations", {"text": "x", "dashboardUID": "missing"})[0] == 404
    assert not double.invalid_requests()


def test_fail_next_and_down(double):
    double.fail_next = 2
    assert [call(double, "GET", "/health")[0] for _ in range(3)] == [503, 503, 200]
    double.down = True
    assert call(double, "GET", "/folders")[0] == 503
    double.down = False
    assert call(double, "GET", "/folders")[0] == 200
    assert json.loads(json.dumps([r.status for r in double.requests])) == [503, 503, 200, 503, 200]
