"""The Prometheus-compatible read API, through Flask's test client and prometheus-api-client."""

from __future__ import annotations

import threading
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml
from werkzeug.serving import make_server

from aiops.config import AiopsConfig
from aiops.outputs import label_values, latest_points, read_instant, read_range, select_series, write_outputs
from aiops.service.app import create_app
from aiops.store import Store

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
STEP = pd.Timedelta("5m")
HISTORY = pd.date_range(T0, periods=24, freq=STEP)  # 00:00 .. 01:55
FUTURE = pd.date_range(HISTORY[-1] + STEP, periods=36, freq=STEP)  # 3h ahead
NOW = HISTORY[-1]
SOURCES = {
    'http_latency{instance="a",job="api"}': {"__name__": "http_latency", "instance": "a", "job": "api"},
    'http_latency{instance="b",job="api"}': {"__name__": "http_latency", "instance": "b", "job": "api"},
    'http_latency{instance="c",job="web"}': {"__name__": "http_latency", "instance": "c", "job": "web"},
}
SCORE_AT_NOW = {"a": 0.4, "b": 2.5, "c": 1.2}
SCHEMAS = yaml.safe_load((Path(__file__).parent / "data" / "prometheus_api_schemas.yaml").read_text())


def _frames():
    rng = np.random.default_rng(0)
    rows, fc = [], []
    for i, (sid, lbl) in enumerate(SOURCES.items()):
        base = 10.0 * (i + 1)
        scores = np.r_[rng.uniform(0, 0.9, len(HISTORY) - 1), SCORE_AT_NOW[lbl["instance"]]]
        for t, s in zip(HISTORY, scores):
            rows.append(dict(series_id=sid, ts=t, value=base + s, anomaly_score=s, yhat=base, yhat_lower=base - 1, yhat_upper=base + 1))
        for k, t in enumerate(FUTURE):
            fc.append(dict(series_id=sid, ts=t, yhat=base + k, yhat_lower=base + k - 2, yhat_upper=base + k + 2))
    return pd.DataFrame(rows), pd.DataFrame(fc)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    st = Store.open(f"sqlite:///{tmp_path_factory.mktemp('promapi') / 'aiops.db'}")
    scores, forecast = _frames()
    write_outputs(
        st,
        "shop",
        SOURCES,
        scores=scores,
        forecast=forecast,
        time_to_threshold={'http_latency{instance="a",job="api"}': 7200.0, 'http_latency{instance="b",job="api"}': None},
        model_error={sid: 0.1 for sid in SOURCES},
    )
    return st


@pytest.fixture(scope="module")
def app(store):
    return create_app(AiopsConfig(), store=store)


@pytest.fixture()
def client(app):
    return app.test_client()


def check_shape(body: dict, schema: str) -> None:
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema}", **SCHEMAS}, cls=jsonschema.Draft202012Validator)


def query(client, q, t=NOW, method="get"):
    args = {"query": q, "time": str(t.timestamp())}
    resp = client.get("/prometheus/api/v1/query", query_string=args) if method == "get" else client.post(
        "/prometheus/api/v1/query", data=args
    )
    return resp.status_code, resp.get_json()


def instances(body) -> set[str]:
    return {r["metric"].get("instance") for r in body["data"]["result"]}


# --------------------------------------------------------------------------- outputs module


def test_write_is_idempotent_and_keeps_source_labels(store):
    before = latest_points(store, FUTURE[-1])
    scores, forecast = _frames()
    write_outputs(store, "shop", SOURCES, scores=scores, forecast=forecast)
    after = latest_points(store, FUTURE[-1])
    assert sorted(map(repr, before)) == sorted(map(repr, after))
    lbl = select_series(store, 'aiops_anomaly_score{instance="a"}')[0].labels
    assert lbl == {"__name__": "aiops_anomaly_score", "instance": "a", "job": "api", "source_metric": "http_latency", "watch": "shop"}
    assert label_values(store, "bound") == ["lower", "upper", "yhat"]


def test_readers_follow_lookback(store):
    got = dict((lbl["instance"], v) for lbl, v in read_instant(store, "aiops_anomaly_score", NOW))
    assert got == pytest.approx(SCORE_AT_NOW)
    assert read_instant(store, "aiops_anomaly_score", NOW + pd.Timedelta("6m")) == []  # past the 5m lookback
    (lbl, t, v), *_ = read_range(store, 'aiops_anomaly{instance="b"}', NOW - STEP, NOW, STEP)
    assert v.tolist()[-1] == 1.0 and len(t) == 2


# --------------------------------------------------------------------------- query


@pytest.mark.parametrize("method", ["get", "post"])
def test_grafana_health_check_one_plus_one(client, method):
    status, body = query(client, "1+1", pd.Timestamp(4, unit="s", tz="UTC"), method)
    assert status == 200
    check_shape(body, "QueryOutputBody")
    assert body["data"] == {"resultType": "scalar", "result": [4, "2"]}


@pytest.mark.parametrize(
    "selector, expected",
    [
        ('aiops_anomaly_score{instance="a"}', {"a"}),
        ('aiops_anomaly_score{instance!="a"}', {"b", "c"}),
        ('aiops_anomaly_score{instance=~"a|c"}', {"a", "c"}),
        ('aiops_anomaly_score{job!~"ap.*"}', {"c"}),
        ('{__name__="aiops_anomaly_score", watch="shop"}', {"a", "b", "c"}),
        ("aiops_anomaly_score{watch='other'}", set()),
    ],
)
def test_selectors(client, selector, expected):
    status, body = query(client, selector)
    assert status == 200, body
    check_shape(body, "QueryOutputBody")
    assert body["data"]["resultType"] == "vector"
    assert instances(body) == expected
    for r in body["data"]["result"]:
        assert float(r["value"][1]) == pytest.approx(SCORE_AT_NOW[r["metric"]["instance"]])
        assert r["value"][0] == NOW.timestamp()


def test_aggregations(client):
    _, body = query(client, "sum by (job) (aiops_anomaly_score)")
    got = {r["metric"]["job"]: float(r["value"][1]) for r in body["data"]["result"]}
    assert got == pytest.approx({"api": SCORE_AT_NOW["a"] + SCORE_AT_NOW["b"], "web": SCORE_AT_NOW["c"]})
    assert all(set(r["metric"]) == {"job"} for r in body["data"]["result"])
    _, body = query(client, "max(aiops_anomaly_score) by (watch)")
    assert [(r["metric"], r["value"][1]) for r in body["data"]["result"]] == [({"watch": "shop"}, "2.5")]
    _, body = query(client, "count without (instance) (aiops_anomaly_score)")
    assert sorted((r["metric"]["job"], r["value"][1]) for r in body["data"]["result"]) == [("api", "2"), ("web", "1")]
    _, body = query(client, "avg(aiops_anomaly_score)")
    assert float(body["data"]["result"][0]["value"][1]) == pytest.approx(np.mean(list(SCORE_AT_NOW.values())))
    _, body = query(client, "topk(2, aiops_anomaly_score)")
    assert instances(body) == {"b", "c"} and body["data"]["result"][0]["metric"]["__name__"] == "aiops_anomaly_score"
    _, body = query(client, "bottomk by (job) (1, aiops_anomaly_score)")
    assert instances(body) == {"a", "c"}
    check_shape(body, "QueryOutputBody")


def test_vector_scalar_arithmetic_and_inf(client):
    _, body = query(client, "aiops_time_to_threshold_seconds / 3600")
    got = {r["metric"]["instance"]: r["value"][1] for r in body["data"]["result"]}
    assert got == {"a": "2", "b": "+Inf"}
    assert all("__name__" not in r["metric"] for r in body["data"]["result"])


def test_query_range_reaches_into_the_future(client):
    start, end = NOW, FUTURE[-1]
    resp = client.post(
        "/prometheus/api/v1/query_range",
        data={"query": 'aiops_forecast{bound="upper",instance="b"}', "start": start.isoformat(), "end": str(end.timestamp()), "step": "15m"},
    )
    body = resp.get_json()
    assert resp.status_code == 200, body
    check_shape(body, "QueryRangeOutputBody")
    (series,) = body["data"]["result"]
    ts = [pd.Timestamp(t, unit="s", tz="UTC") for t, _ in series["values"]]
    assert ts == list(pd.date_range(start, end, freq="15min"))
    _, forecast = _frames()
    fb = forecast[forecast.series_id == 'http_latency{instance="b",job="api"}'].set_index("ts")["yhat_upper"]
    expected = [21.0] + [fb[t] for t in ts[1:]]  # in-sample band at NOW, forecast after
    assert [float(v) for _, v in series["values"]] == pytest.approx(expected)


def test_query_range_scalar_gives_one_series(client):
    resp = client.get("/prometheus/api/v1/query_range", query_string={"query": "2*3", "start": "0", "end": "60", "step": "30"})
    assert resp.get_json()["data"] == {"resultType": "matrix", "result": [{"metric": {}, "values": [[0, "6"], [30, "6"], [60, "6"]]}]}


@pytest.mark.parametrize(
    "path, args, needle",
    [
        ("query", {"query": "rate(aiops_anomaly_score[5m])"}, "not supported"),
        ("query", {"query": "aiops_anomaly_score[5m]"}, "range vectors"),
        ("query", {"query": "aiops_anomaly_score + aiops_anomaly"}, "two vectors"),
        ("query", {"query": "aiops_anomaly_score offset 5m"}, "offset"),
        ("query", {"query": '{job=~".*"}'}, "does not match empty"),
        ("query", {"query": ""}, "query is empty"),
        ("query", {"query": "sum(1"}, "expected ')'"),
        ("query", {"query": "1", "time": "yesterday"}, 'invalid parameter "time"'),
        ("query_range", {"query": "1", "start": "100", "end": "50", "step": "10"}, "end timestamp must not be before"),
        ("query_range", {"query": "1", "start": "0", "end": "50", "step": "0"}, "zero or negative"),
        ("query_range", {"query": "1", "start": "0", "end": "11001", "step": "1"}, "11,000 points"),
        ("query_range", {"query": "1", "start": "0", "end": "10"}, 'invalid parameter "step"'),
        ("series", {}, "no match[]"),
        ("series", {"match[]": "up{"}, 'invalid parameter "match[]"'),
    ],
)
def test_bad_requests_get_the_error_envelope(client, path, args, needle):
    resp = client.get(f"/prometheus/api/v1/{path}", query_string=args)
    body = resp.get_json()
    assert resp.status_code == 400
    check_shape(body, "Error")
    assert body["status"] == "error" and body["errorType"] == "bad_data"
    assert needle in body["error"]


def test_eleven_thousand_points_is_allowed(client):
    resp = client.get("/prometheus/api/v1/query_range", query_string={"query": "1", "start": "0", "end": "11000", "step": "1"})
    assert resp.status_code == 200


# --------------------------------------------------------------------------- metadata endpoints


def test_labels_values_series(client):
    body = client.get("/prometheus/api/v1/labels").get_json()
    check_shape(body, "LabelsOutputBody")
    assert {"__name__", "watch", "bound", "source_metric", "instance", "job"} <= set(body["data"])
    body = client.post("/prometheus/api/v1/labels", data={"match[]": "aiops_anomaly_score"}).get_json()
    assert "bound" not in body["data"]
    body = client.get("/prometheus/api/v1/label/__name__/values").get_json()
    check_shape(body, "LabelValuesOutputBody")
    assert body["data"] == sorted(
        ["aiops_anomaly", "aiops_anomaly_score", "aiops_forecast", "aiops_model_error", "aiops_time_to_threshold_seconds"]
    )
    body = client.get("/prometheus/api/v1/label/instance/values", query_string={"match[]": '{job="api"}'}).get_json()
    assert body["data"] == ["a", "b"]
    body = client.get(
        "/prometheus/api/v1/series", query_string=[("match[]", 'aiops_forecast{instance="c"}'), ("match[]", "aiops_model_error")]
    ).get_json()
    check_shape(body, "SeriesOutputBody")
    assert len(body["data"]) == 3 + 3
    body = client.post("/prometheus/api/v1/series", data={"match[]": "aiops_model_error", "limit": "1"}).get_json()
    assert len(body["data"]) == 1 and body["warnings"]


def test_metadata_and_buildinfo(client):
    body = client.get("/prometheus/api/v1/metadata").get_json()
    check_shape(body, "MetadataOutputBody")
    assert body["data"]["aiops_anomaly_score"][0]["type"] == "gauge"
    assert list(client.get("/prometheus/api/v1/metadata?metric=aiops_anomaly").get_json()["data"]) == ["aiops_anomaly"]
    body = client.get("/prometheus/api/v1/status/buildinfo").get_json()
    check_shape(body, "StatusBuildInfoOutputBody")
    assert client.get("/prometheus/api/v1/query_exemplars?query=test").get_json()["status"] == "success"


def test_read_token_when_required(store):
    cfg = AiopsConfig.model_validate({"service": {"token": "s3cret", "read_token_required": True}})
    c = create_app(cfg, store=store).test_client()
    assert c.get("/prometheus/api/v1/labels").status_code == 401
    assert c.get("/metrics").status_code == 401
    assert c.get("/prometheus/api/v1/labels", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# --------------------------------------------------------------------------- a real client over HTTP


@pytest.fixture(scope="module")
def server_url(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/prometheus"
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_prometheus_api_client(server_url, method):
    from prometheus_api_client import PrometheusApiClientException, PrometheusConnect

    prom = PrometheusConnect(url=server_url, method=method, retry=None)
    assert prom.check_prometheus_connection()
    assert prom.custom_query("1+1", params={"time": 4}) == [4, "2"]
    result = prom.custom_query('aiops_anomaly{instance=~"b|c"}', params={"time": NOW.timestamp()})
    assert {r["metric"]["instance"]: r["value"][1] for r in result} == {"b": "1", "c": "1"}
    rng = prom.custom_query_range(
        'aiops_forecast{bound="yhat",instance="a"}', NOW.to_pydatetime(), FUTURE[-1].to_pydatetime(), "1h"
    )
    assert [float(v) for _, v in rng[0]["values"]] == [10.0, 21.0, 33.0, 45.0]
    assert "aiops_forecast" in prom.all_metrics()
    assert "bound" in prom.get_label_names()
    series = prom.get_series(HISTORY[0].to_pydatetime(), FUTURE[-1].to_pydatetime(), params={"match[]": "aiops_model_error"})
    assert len(series) == 3
    with pytest.raises(PrometheusApiClientException, match="400"):
        prom.custom_query("histogram_quantile(0.9, x)")


# --------------------------------------------------------------------------- outputs edge cases


def test_label_clash_missing_columns_nan_and_prune(tmp_path):
    from aiops.errors import InputError
    from aiops.outputs import prune_outputs

    st = Store.open(f"sqlite:///{tmp_path / 'o.db'}")
    sid = 'jobs{watch="etl",bound="x"}'
    scores = pd.DataFrame({"series_id": sid, "ts": HISTORY[:3], "value": 1.0, "anomaly_score": [0.5, np.nan, 1.0]})
    assert write_outputs(st, "w", {}, scores=scores, threshold=1.0) == 2 + 2  # NaN score: no point in either series
    (s,) = select_series(st, "aiops_anomaly")
    assert s.labels == {"__name__": "aiops_anomaly", "exported_watch": "etl", "exported_bound": "x", "source_metric": "jobs", "watch": "w"}
    assert [v for _, _, v in read_range(st, "aiops_anomaly", HISTORY[0], HISTORY[2], STEP, pd.Timedelta("1m"))][0].tolist() == [0.0, 1.0]
    with pytest.raises(InputError, match="anomaly_score"):
        write_outputs(st, "w", {}, scores=scores.drop(columns="anomaly_score"))
    assert prune_outputs(st, HISTORY[1]) == 2
    assert read_range(st, "aiops_anomaly_score", HISTORY[0], HISTORY[0], STEP) == []


def test_anomaly_flag_holds_from_threshold_while_outside_the_band(tmp_path):
    """aiops_anomaly: 1 from a score at or above the threshold while the score stays >= 1 (outside
    the band); out-of-band rows that never reached the threshold stay 0; series are independent
    even when the frame interleaves them."""
    st = Store.open(f"sqlite:///{tmp_path / 'flag.db'}")
    a = [0.2, 6.0, 1.0, 1.0, 0.3, 1.0, 1.2]
    b = [1.5, 1.5, 0.1, 7.0, 1.0, 1.0, 1.0]
    ts = HISTORY[: len(a)]
    frame = pd.concat([
        pd.DataFrame({"series_id": 'x{instance="a"}', "ts": ts, "anomaly_score": a}),
        pd.DataFrame({"series_id": 'x{instance="b"}', "ts": ts, "anomaly_score": b}),
    ]).sort_values("ts", kind="stable")  # interleaved series
    write_outputs(st, "w", {}, scores=frame, threshold=5.0)
    got = {s["instance"]: v.tolist() for s, _, v in read_range(st, "aiops_anomaly", ts[0], ts[-1], STEP, pd.Timedelta("1m"))}
    assert got == {"a": [0, 1, 1, 1, 0, 0, 0], "b": [0, 0, 0, 1, 1, 1, 1]}


def test_thousands_of_series_in_one_write(tmp_path):
    import time

    st = Store.open(f"sqlite:///{tmp_path / 'bulk.db'}")
    n, steps = 2000, 12
    ts = pd.date_range(T0, periods=steps, freq=STEP)
    sids = [f'cpu{{instance="h{i}"}}' for i in range(n)]
    scores = pd.DataFrame({"series_id": np.repeat(sids, steps), "ts": np.tile(ts, n), "value": 1.0})
    scores = scores.assign(anomaly_score=np.linspace(0, 2, len(scores)), yhat=1.0, yhat_lower=0.5, yhat_upper=1.5)
    t = time.perf_counter()
    assert write_outputs(st, "bulk", {}, scores=scores) == n * steps * 5
    assert time.perf_counter() - t < 30
    assert len(select_series(st, "aiops_forecast")) == 3 * n
    assert len(read_instant(st, 'aiops_anomaly_score{instance=~"h1.*"}', ts[-1])) == 1 + 10 + 100 + 1000
