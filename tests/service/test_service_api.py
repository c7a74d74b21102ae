"""The /api/v1 resources: watches, anomalies, forecasts, explanations, explain-now, feedback."""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from aiops.config import AiopsConfig
from aiops.explain.finetune import pairs_from_store
from aiops.outputs import write_outputs
from aiops.service.app import create_app
from aiops.sources.synthetic import SyntheticSource
from aiops.store import Store
from aiops.types import AnomalyEvent

TOKEN = "api-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
QUERY = 'http_requests_per_second{service="checkout"}'
SYN_END = "2026-11-22T12:00:00Z"


def make_config(tmp_path, **service) -> AiopsConfig:
    return AiopsConfig.model_validate({
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "source": {"kind": "synthetic", "synthetic": {"days": 2, "end": SYN_END}},
        "service": {"token": TOKEN, "max_body_bytes": 4096, **service},
        "watches": [{"name": "rps", "query": QUERY, "step": "5m", "horizon": "1h",
                     "capacity": {"threshold": 100.0}},
                    {"name": "disk", "query": "node_filesystem_avail_bytes"}],
        "explain": {"kb_index_dir": str(tmp_path / "kb")},
    })


def ev(watch="rps", start=T0, end=None, severity="critical", score=9.0, series='latency{service="checkout"}'):
    return AnomalyEvent(
        watch=watch, series_id=series, start=start, end=end, peak_time=start + timedelta(minutes=5),
        peak_score=score, severity=severity, direction="spike", observed=2.0, expected=float("nan"),
        expected_lower=0.4, expected_upper=0.6, labels={"__name__": "latency", "service": "checkout"},
    )


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/aiops.db")


@pytest.fixture
def seeded(store):
    ids = {
        "open": store.upsert_event(ev()),
        "closed": store.upsert_event(ev(start=T0 - timedelta(days=2), end=T0 - timedelta(days=2, hours=-1),
                                        severity="warning", score=6.5)),
        "disk": store.upsert_event(ev(watch="disk", start=T0 - timedelta(hours=3), severity="info", score=5.1,
                                      series="node_filesystem_avail_bytes")),
    }
    ids["expl"] = store.add_explanation(
        subject_kind="event", subject_ref=f"event:{ids['open']}", watch="rps", backend="template",
        evidence={"subject": "latency", "items": [{"kind": "deviation", "text": "2 vs 0.5"}]},
        explanation={"title": "Checkout latency spike", "summary": "Latency is 4x the forecast."},
        markdown="**Checkout latency spike**",
    )
    run = store.start_run("rps", "infer")
    store.finish_run(run, series=3, points=300)
    return ids


@pytest.fixture
def client(tmp_path, store):
    return create_app(make_config(tmp_path), store).test_client()


def data(resp, status=200):
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["data"]


def error(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["status"] == "error" and body["errorType"] and body["error"]
    return body


# --------------------------------------------------------------------------- reads


def test_watches_show_config_open_anomalies_and_last_runs(client, seeded):
    rps, disk = data(client.get("/api/v1/watches"))
    assert rps["name"] == "rps" and rps["query"] == QUERY and rps["step"] == "5m" and rps["horizon"] == "1h"
    assert rps["capacity"]["threshold"] == 100.0 and rps["actions"] == []
    assert rps["open_anomalies"] == 1 and disk["open_anomalies"] == 1
    assert rps["last_runs"]["infer"]["status"] == "ok" and rps["last_runs"]["infer"]["points"] == 300
    assert disk["last_runs"] == {}


def test_anomalies_filter_by_watch_severity_status_and_time(client, seeded):
    all_ = data(client.get("/api/v1/anomalies"))
    assert [e["id"] for e in all_] == [seeded["open"], seeded["disk"], seeded["closed"]]  # newest first
    first = all_[0]
    assert first["start"] == "2026-11-22T10:00:00Z" and first["end"] is None and first["status"] == "open"
    assert first["expected"] is None and first["observed"] == 2.0  # NaN is null, never invalid JSON
    assert first["explanation"]["id"] == seeded["expl"] and first["explanation"]["text"] == "**Checkout latency spike**"
    assert first["labels"] == {"__name__": "latency", "service": "checkout"}
    assert all_[1]["explanation"] is None
    ids = lambda q: [e["id"] for e in data(client.get(f"/api/v1/anomalies?{q}"))]  # noqa: E731
    assert ids("watch=disk") == [seeded["disk"]]
    assert ids("severity=warning") == [seeded["closed"]]
    assert ids("status=closed") == [seeded["closed"]]
    assert ids("status=open&watch=rps") == [seeded["open"]]
    assert ids("since=2026-11-22T08:00:00Z") == [seeded["open"], seeded["disk"]]
    assert ids("until=2026-11-21T00:00:00Z") == [seeded["closed"]]
    assert ids("limit=1") == [seeded["open"]]


@pytest.mark.parametrize("query,needle", [
    ("severity=huge", "severity"), ("status=maybe", "status"), ("limit=0", "limit"), ("limit=x", "limit"),
    ("since=yesterday", "since"),
])
def test_bad_anomaly_filters_are_named(client, seeded, query, needle):
    body = error(client.get(f"/api/v1/anomalies?{query}"), 400)
    assert body["problems"][0].startswith(needle)


def test_one_anomaly_and_missing_ones(client, seeded):
    got = data(client.get(f"/api/v1/anomalies/{seeded['closed']}"))
    assert got["id"] == seeded["closed"] and got["status"] == "closed" and got["end"] == "2026-11-20T11:00:00Z"
    assert "no anomaly event with id 999" in error(client.get("/api/v1/anomalies/999"), 404)["error"]
    assert error(client.get("/api/v1/anomalies/abc"), 404)["errorType"] == "not_found"
    assert error(client.get("/api/v1/no-such-thing"), 404)["errorType"] == "not_found"
    assert error(client.delete("/api/v1/anomalies"), 405)["errorType"] == "bad_method"


def test_explanations_list_detail_and_feedback_round_trip(client, seeded, store):
    listed = data(client.get("/api/v1/explanations?subject_kind=event"))
    assert [x["id"] for x in listed] == [seeded["expl"]] and listed[0]["title"] == "Checkout latency spike"
    assert data(client.get("/api/v1/explanations?subject_kind=alert")) == []
    assert [x["id"] for x in data(client.get(f"/api/v1/explanations?subject_ref=event:{seeded['open']}"))] == [seeded["expl"]]
    url = f"/api/v1/explanations/{seeded['expl']}"
    r = client.post(url + "/feedback", json={"verdict": "edit", "text": " Checkout slowed: DB pool. ", "author": "bo"},
                    headers=AUTH)
    fb = data(r, 201)
    assert fb["verdict"] == "edit" and fb["text"] == "Checkout slowed: DB pool." and fb["author"] == "bo"
    assert fb["explanation_id"] == seeded["expl"] and fb["created_at"].endswith("Z")
    # what `aiops llm finetune` trains on: the operator's edit, stored in the store's vocabulary
    assert [p["explanation"] for p in pairs_from_store(store)] == ["Checkout slowed: DB pool."]
    data(client.post(url + "/feedback", json={"verdict": "accept"}, headers=AUTH), 201)
    detail = data(client.get(url))
    assert detail["evidence"]["items"][0]["kind"] == "deviation" and detail["explanation"]["summary"]
    assert [f["verdict"] for f in detail["feedback"]] == ["accept", "edit"]
    assert [f["verdict"] for f in data(client.get("/api/v1/feedback"))] == ["accept", "edit"]
    assert data(client.get(f"/api/v1/feedback?explanation_id={seeded['expl'] + 1}")) == []
    assert [r["verdict"] for r in store.feedback()] == ["accepted", "edited"]
    assert error(client.get("/api/v1/explanations/12345"), 404)["error"] == "no explanation with id 12345"


@pytest.mark.parametrize("body,status,needle", [
    ({"verdict": "edit"}, 400, "text: Field required"),
    ({"verdict": "edit", "text": "   "}, 400, "text"),
    ({"verdict": "maybe"}, 400, "verdict"),
    ({"verdict": "accept", "extra": 1}, 400, "extra"),
    ({"verdict": "accept", "author": 5}, 400, "author"),
    ([], 400, "invalid feedback"),
    ({"verdict": "accept", "text": "x" * 5000}, 413, "max_body_bytes"),
])
def test_bad_feedback_is_refused_and_nothing_stored(client, seeded, store, body, status, needle):
    r = client.post(f"/api/v1/explanations/{seeded['expl']}/feedback", data=json.dumps(body), headers=AUTH)
    assert needle in error(r, status)["error"]
    assert store.feedback() == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}])
def test_feedback_without_the_token_is_refused_and_nothing_stored(client, seeded, store, headers):
    r = client.post(f"/api/v1/explanations/{seeded['expl']}/feedback", json={"verdict": "accept"}, headers=headers)
    assert error(r, 401)["errorType"] == "unauthorized" and r.headers["WWW-Authenticate"] == "Bearer"
    assert store.feedback() == []


def test_feedback_on_a_missing_explanation_and_malformed_json(client, seeded, store):
    r = client.post("/api/v1/explanations/999/feedback", json={"verdict": "accept"}, headers=AUTH)
    assert "no explanation with id 999" in error(r, 404)["error"]
    r = client.post(f"/api/v1/explanations/{seeded['expl']}/feedback", data=b"{\xff", headers=AUTH)
    assert "malformed JSON" in error(r, 400)["error"]
    assert store.feedback() == []


def test_reads_need_the_token_when_configured(tmp_path, store, seeded):
    client = create_app(make_config(tmp_path, read_token_required=True), store).test_client()
    for url in ("/api/v1/watches", "/api/v1/anomalies", f"/api/v1/explanations/{seeded['expl']}", "/api/v1/feedback",
                "/api/v1/forecasts?watch=rps", "/api/v1/actions", "/api/v1/action-runs"):
        assert error(client.get(url), 401)["errorType"] == "unauthorized", url
        assert client.get(url, headers=AUTH).status_code == 200, url


# --------------------------------------------------------------------------- forecasts


def test_forecasts_serve_band_scores_and_observed_per_series(tmp_path, store):
    src = SyntheticSource("shop", days=2, end=SYN_END)
    batch = src.fetch(QUERY, pd.Timestamp("2026-11-22T10:00Z"), pd.Timestamp(SYN_END), pd.Timedelta("5m"))
    (sid,) = batch.labels
    f = batch.frame.dropna()
    scores = pd.DataFrame({"series_id": sid, "ts": f["ts"], "anomaly_score": np.linspace(0, 3, len(f)),
                           "yhat": f["value"].to_numpy() + 1, "yhat_lower": f["value"].to_numpy() - 1,
                           "yhat_upper": f["value"].to_numpy() + 2})
    horizon = pd.date_range(pd.Timestamp(SYN_END) + pd.Timedelta("5m"), periods=3, freq="5min")
    forecast = pd.DataFrame({"series_id": sid, "ts": horizon, "yhat": [1.0, 2.0, 3.0], "yhat_lower": 0.0,
                             "yhat_upper": [2.0, 4.0, np.inf]})
    write_outputs(store, "rps", batch.labels, scores=scores, forecast=forecast)
    client = create_app(make_config(tmp_path), store).test_client()
    got = data(client.get("/api/v1/forecasts?watch=rps&since=2026-11-22T10:00:00Z&until=2026-11-22T12:15:00Z"))
    assert got["watch"] == "rps" and got["step"] == "300s" and got["observed_error"] is None
    (s,) = got["series"]
    assert s["series"] == sid and s["labels"] == batch.labels[sid]
    assert len(s["anomaly_score"]) == len(f) and s["anomaly_score"][-1] == ["2026-11-22T12:00:00Z", 3.0]
    assert s["yhat"][-3:] == [["2026-11-22T12:05:00Z", 1.0], ["2026-11-22T12:10:00Z", 2.0], ["2026-11-22T12:15:00Z", 3.0]]
    assert s["upper"][-1] == ["2026-11-22T12:15:00Z", None]  # +Inf is null in JSON
    assert s["observed"][0] == ["2026-11-22T10:00:00Z", pytest.approx(float(f["value"].iloc[0]))]
    assert len(s["observed"]) == len(f)
    assert data(client.get("/api/v1/forecasts?watch=rps&series=nope&since=2026-11-22T10:00:00Z"))["series"] == []
    one = data(client.get("/api/v1/forecasts", query_string={"watch": "rps", "series": sid, "observed": "false",
                                                              "since": "2026-11-22T10:00:00Z"}))
    assert one["series"][0]["observed"] == [] and one["series"][0]["yhat"]
    wide = data(client.get("/api/v1/forecasts?watch=rps&since=0001-01-01T00:00:00Z&until=9999-01-01T00:00:00Z&observed=false"))
    assert int(wide["step"][:-1]) >= 300 and len(wide["series"][0]["yhat"]) <= 11_000
    assert "no watch named 'nope'" in error(client.get("/api/v1/forecasts?watch=nope"), 404)["error"]
    assert error(client.get("/api/v1/forecasts"), 400)["problems"] == ["watch: Field required"]


# --------------------------------------------------------------------------- explain now


def explain(client, headers=AUTH, **body):
    base = {"query": QUERY, "start": "2026-11-21T12:00:00Z", "end": SYN_END}
    return client.post("/api/v1/explain", data=json.dumps({**base, **body}), headers=headers)


def test_explain_now_explains_and_stores_the_query(client, store):
    got = data(explain(client))
    assert got["query"] == QUERY and got["series"] == 1 and got["start"] == "2026-11-21T12:00:00Z"
    assert got["step"] == "173s"  # a day / 500, rounded up to the second
    expl = got["explanation"]
    assert expl["title"] and expl["summary"] and expl["text"] and expl["evidence_items"]
    stored = store.explanation(expl["id"])
    assert stored["subject_kind"] == "query" and stored["subject_ref"].startswith(QUERY + " @ 2026-11-21T12:00:00Z")
    assert data(client.get(f"/api/v1/explanations/{expl['id']}"))["subject_kind"] == "query"
    assert data(client.post(f"/api/v1/explanations/{expl['id']}/feedback", json={"verdict": "accept"}, headers=AUTH), 201)
    if got["anomalous"]:
        assert got["events"][0]["peak_score"] >= 5.0
    else:
        assert got["events"] == []


@pytest.mark.parametrize("body,status,needle", [
    ({"query": 'http_requests_per_second{service="checkout"'}, 400, "the query was rejected"),
    ({"query": 'nothing_here{job="x"}'}, 404, "no data"),
    ({"end": "2026-11-21T12:00:00Z"}, 400, "must be after start"),
    ({"start": "2026-10-01T00:00:00Z"}, 400, "longer than 31 days"),
    ({"step": "1s"}, 400, "use a larger step"),
    ({"step": "soon"}, 400, "step"),
    ({"start": "yesterday"}, 400, "start"),
    ({"query": "   "}, 400, "query"),
    ({"query": "up", "extra": True}, 400, "extra"),
])
def test_explain_now_bad_input_is_named_and_nothing_stored(client, store, body, status, needle):
    assert needle in error(explain(client, **body), status)["error"]
    assert store.explanations() == []


def test_explain_now_needs_the_token(client, store):
    assert error(explain(client, headers={}), 401)["errorType"] == "unauthorized"
    assert store.explanations() == []


def test_explain_now_with_prometheus_down_is_a_clear_502(tmp_path, store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config(tmp_path).model_copy(update={"source": AiopsConfig.model_validate({}).source})
    cfg.prometheus.url = f"http://127.0.0.1:{port}"
    cfg.prometheus.retries = 0
    body = error(explain(create_app(cfg, store).test_client()), 502)
    assert body["errorType"] == "upstream" and "unreachable" in body["error"]
    assert store.explanations() == []


def test_store_failures_answer_503_on_every_resource(client, store, monkeypatch):
    from aiops.errors import StoreError

    def down(*_a, **_k):
        raise StoreError("database is locked")

    for name in ("events", "event", "explanations", "explanation", "feedback", "open_event_counts", "action_runs"):
        monkeypatch.setattr(store, name, down)
    for path in ("/api/v1/watches", "/api/v1/anomalies", "/api/v1/anomalies/1", "/api/v1/explanations",
                 "/api/v1/explanations/1", "/api/v1/feedback", "/api/v1/action-runs"):
        body = error(client.get(path), 503)
        assert body["errorType"] == "unavailable" and "retry later" in body["error"], path
    body = error(client.post("/api/v1/explanations/1/feedback", json={"verdict": "accept"}, headers=AUTH), 503)
    assert "retry later" in body["error"]
