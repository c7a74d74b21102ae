"""Approved actions: a webhook runs only on an approved API call, and every run is recorded."""

from __future__ import annotations

import json
import socket
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from aiops.config import DEFAULT_ACTION_PAYLOAD, AiopsConfig, load_config
from aiops.errors import ConfigError
from aiops.service.app import create_app
from aiops.store import SCHEMA_VERSION, Store, action_runs, schema_version
from aiops.types import AnomalyEvent

TOKEN = "act-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = 'x", "evil": true, "y": "{{ 7*7 }}'
PAYLOAD = ('{"runbook": "restart", "service": {{ event.labels.service }}, "event": {{ event.id }}, '
           '"severity": {{ event.severity }}, "summary": {{ explanation.summary }}, "by": {{ approved_by }}, '
           '"missing": {{ event.labels.nope }}}')


class Receiver:
    """A real loopback HTTP server that records what it is sent and answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[dict] = []
        self.server = make_server("127.0.0.1", 0, self._app)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/run?key=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @Request.application
    def _app(self, request: Request) -> Response:
        self.requests.append({"method": request.method, "path": request.path, "headers": dict(request.headers),
                              "body": request.get_data(as_text=True)})
        return Response('{"job": "started"}', status=self.status, content_type="application/json")

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp_path, url: str, **action) -> AiopsConfig:
    return AiopsConfig.model_validate({
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "service": {"token": TOKEN, "max_body_bytes": 4096},
        "watches": [
            {"name": "checkout", "query": 'latency{service="checkout"}',
             "actions": [{"name": "restart", "url": url, "description": "Restart checkout pods",
                          "payload": PAYLOAD, "headers": {"Authorization": "Bearer runner-secret"},
                          "timeout": "3s", **action}]},
            {"name": "disk", "query": "node_filesystem_avail_bytes"},
        ],
    })


def seed(store: Store) -> dict[str, int]:
    t0 = datetime(2026, 11, 22, 10, tzinfo=timezone.utc)
    ids = {}
    for watch, service in (("checkout", HOSTILE), ("disk", "db")):
        ids[watch] = store.upsert_event(AnomalyEvent(
            watch=watch, series_id=f'latency{{service="{watch}"}}', start=t0, end=None, peak_time=t0 + timedelta(minutes=5),
            peak_score=9.0, severity="critical", direction="spike", observed=2.0, expected=0.5,
            expected_lower=0.4, expected_upper=0.6, labels={"__name__": "latency", "service": service},
        ))
    ids["explanation"] = store.add_explanation(
        subject_kind="event", subject_ref=f"event:{ids['checkout']}", watch="checkout", backend="transformers",
        evidence={"subject": "x", "items": []},
        explanation={"title": "Checkout slow", "summary": 'LLM says: ignore rules {% raw %}"}{{ config }}'},
        markdown="Checkout slow",
    )
    return ids


def setup(tmp_path, url, **action):
    store = Store.open(f"sqlite:///{tmp_path}/aiops.db")
    ids = seed(store)
    app = create_app(make_config(tmp_path, url, **action), store)
    return app.test_client(), store, ids


def approve(client, ids, watch="checkout", name="restart", headers=AUTH, **body):
    payload = {"event_id": ids[watch] if watch in ids else ids["checkout"], "approved_by": "alice", **body}
    return client.post(f"/api/v1/actions/{watch}/{name}/runs", json=payload, headers=headers)


def test_approved_run_sends_the_rendered_template_once_and_records_it(tmp_path, receiver):
    client, store, ids = setup(tmp_path, receiver.url)
    r = approve(client, ids)
    assert r.status_code == 201, r.get_json()
    run = r.get_json()["data"]
    assert len(receiver.requests) == 1
    sent = receiver.requests[0]
    assert sent["method"] == "POST" and sent["path"] == "/hooks/run"
    assert sent["headers"]["Authorization"] == "Bearer runner-secret"
    body = json.loads(sent["body"])
    # hostile label and LLM text arrive as plain data: no injected keys, no template evaluation
    assert body == {"runbook": "restart", "service": HOSTILE, "event": ids["checkout"], "severity": "critical",
                    "summary": 'LLM says: ignore rules {% raw %}"}{{ config }}', "by": "alice", "missing": None}
    assert run["approved_by"] == "alice" and run["status_code"] == 200 and run["ok"] is True
    assert run["event_id"] == ids["checkout"] and run["explanation_id"] == ids["explanation"]
    assert run["response"] == '{"job": "started"}' and run["error"] is None
    assert run["request"]["body"] == body and run["request"]["url"].endswith("/hooks/run?key=***")
    assert "runner-secret" not in json.dumps(run) and "s3cret" not in json.dumps(run)
    listed = client.get("/api/v1/action-runs?watch=checkout").get_json()["data"]
    assert [x["id"] for x in listed] == [run["id"]] and listed[0]["approved_at"].endswith("Z")
    assert client.get("/api/v1/action-runs?watch=disk").get_json()["data"] == []


def test_actions_are_listed_without_secrets(tmp_path, receiver):
    client, _, _ = setup(tmp_path, receiver.url)
    data = client.get("/api/v1/actions").get_json()["data"]
    assert data == [{"watch": "checkout", "name": "restart", "description": "Restart checkout pods", "method": "POST",
                     "target": receiver.url.replace("s3cret", "***")}]
    watches = client.get("/api/v1/watches").get_json()["data"]
    assert watches[0]["actions"] == [{"name": "restart", "description": "Restart checkout pods"}]
    assert receiver.requests == []  # listing runs nothing


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_no_or_wrong_token_runs_and_records_nothing(tmp_path, receiver, headers):
    client, store, ids = setup(tmp_path, receiver.url)
    r = approve(client, ids, headers=headers)
    assert r.status_code == 401 and r.get_json()["errorType"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert receiver.requests == [] and store.action_runs() == []


@pytest.mark.parametrize("watch,name,body,status,needle", [
    ("checkout", "nope", {}, 404, "has no action 'nope'"),
    ("checkout", "restart", {"event_id": 999}, 404, "no anomaly event with id 999"),
    ("disk", "restart", {}, 404, "watch 'disk' has no action"),
    ("checkout", "restart", {"approved_by": ""}, 400, "approved_by"),
    ("checkout", "restart", {"approved_by": "   "}, 400, "approved_by"),
    ("checkout", "restart", {"event_id": "1"}, 400, "event_id"),
    ("checkout", "restart", {"extra": 1}, 400, "extra"),
])
def test_bad_requests_are_refused_and_nothing_runs(tmp_path, receiver, watch, name, body, status, needle):
    client, store, ids = setup(tmp_path, receiver.url)
    r = approve(client, ids, watch=watch, name=name, **body)
    assert r.status_code == status, r.get_json()
    assert needle in r.get_json()["error"]
    assert receiver.requests == [] and store.action_runs() == []


def test_event_of_another_watch_is_a_conflict(tmp_path, receiver):
    client, store, ids = setup(tmp_path, receiver.url)
    r = approve(client, ids, event_id=ids["disk"])
    assert r.status_code == 409 and "belongs to watch 'disk'" in r.get_json()["error"]
    assert receiver.requests == [] and store.action_runs() == []


def test_malformed_and_huge_bodies_are_refused(tmp_path, receiver):
    client, store, ids = setup(tmp_path, receiver.url)
    url = "/api/v1/actions/checkout/restart/runs"
    r = client.post(url, data="{not json", headers=AUTH)
    assert r.status_code == 400 and "malformed JSON" in r.get_json()["error"]
    r = client.post(url, data=json.dumps({"event_id": 1, "approved_by": "x" * 10_000}), headers=AUTH)
    assert r.status_code == 413 and "max_body_bytes" in r.get_json()["error"]
    assert receiver.requests == [] and store.action_runs() == []


def test_receiver_down_is_recorded_and_answers_502(tmp_path):
    client, store, ids = setup(tmp_path, f"http://127.0.0.1:{free_port()}/run")
    r = approve(client, ids)
    assert r.status_code == 502
    err = r.get_json()
    assert err["errorType"] == "action_failed" and "cannot reach http://127.0.0.1" in err["error"]
    (row,) = store.action_runs()
    assert row["approved_by"] == "alice" and row["status_code"] is None and "cannot reach" in row["error"]
    assert err["run"]["id"] == row["id"] and err["run"]["ok"] is False


def test_receiver_error_status_is_recorded_and_answers_502(tmp_path):
    rec = Receiver(status=500)
    try:
        client, store, ids = setup(tmp_path, rec.url)
        r = approve(client, ids)
        assert r.status_code == 502 and "answered HTTP 500" in r.get_json()["error"]
        (row,) = store.action_runs()
        assert row["status_code"] == 500 and row["response"] == '{"job": "started"}'
        assert len(rec.requests) == 1
    finally:
        rec.close()


@pytest.mark.parametrize("payload,needle", [
    ('{"service": "{{ event.labels.service }}"}', "does not render to JSON"),
    ('{"x": {{ secrets }}}', "unknown name(s) secrets"),
    ('{"x": {{ event.sevrity }}}', "no attribute 'sevrity'"),
    ('{"x": {{ event.id }', "not a valid Jinja2 template"),
    ('{"x": {{ event.__class__.__mro__ }}}', "cannot render"),
])
def test_bad_payload_templates_fail_at_config_load(tmp_path, payload, needle):
    path = tmp_path / "aiops.yaml"
    path.write_text(
        "watches:\n  - name: w\n    query: up\n    actions:\n      - name: a\n        url: http://127.0.0.1:1/x\n"
        f"        payload: {json.dumps(payload)}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "watches[0].actions[0].payload" in text and needle in text


def test_action_config_rules(tmp_path):
    base = {"name": "w", "query": "up"}
    with pytest.raises(Exception, match="used twice"):
        AiopsConfig.model_validate({"watches": [{**base, "actions": [{"name": "a", "url": "http://h/x"}] * 2}]})
    with pytest.raises(Exception, match="not an http"):
        AiopsConfig.model_validate({"watches": [{**base, "actions": [{"name": "a", "url": "file:///etc/passwd"}]}]})
    with pytest.raises(Exception, match="at most 120s"):
        AiopsConfig.model_validate({"watches": [{**base, "actions": [{"name": "a", "url": "http://h", "timeout": "1h"}]}]})
    ok = AiopsConfig.model_validate({"watches": [{**base, "actions": [{"name": "a", "url": "http://h/x"}]}]})
    assert "Bearer" not in repr(ok)


def test_default_template_renders_the_event(tmp_path, receiver):
    client, _, ids = setup(tmp_path, receiver.url, payload=DEFAULT_ACTION_PAYLOAD)
    r = approve(client, ids)
    assert r.status_code == 201
    body = json.loads(receiver.requests[-1]["body"])
    assert body["action"] == "restart" and body["event_id"] == ids["checkout"] and body["approved_by"] == "alice"
    assert body["labels"]["service"] == HOSTILE and body["start"] == "2026-11-22T10:00:00Z"


def test_schema_1_store_gains_the_run_columns_and_keeps_rows(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as c:  # the version-1 table, as older aiops created it
        c.exec_driver_sql(
            "CREATE TABLE action_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, watch VARCHAR(64), action VARCHAR(64) "
            "NOT NULL, explanation_id INTEGER, approved_by VARCHAR(128) NOT NULL, approved_at DATETIME NOT NULL, "
            "status_code INTEGER, response TEXT)")
        c.exec_driver_sql("INSERT INTO action_runs (watch, action, approved_by, approved_at, status_code) "
                          "VALUES ('w', 'a', 'bob', '2026-01-01 00:00:00', 200)")
        schema_version.create(c)
        c.execute(schema_version.insert().values(id=1, version=1, updated_at=datetime.now(timezone.utc)))
    engine.dispose()
    store = Store.open(url)
    assert store.version() == SCHEMA_VERSION
    (old,) = store.action_runs()
    assert old["approved_by"] == "bob" and old["status_code"] == 200 and old["error"] is None
    store.add_action_run(watch="w", action="a", approved_by="carol", event_id=3, request={"body": {}}, error="boom")
    assert [r["error"] for r in store.action_runs()] == ["boom", None]
    cols = {c["name"] for c in sa.inspect(store.engine).get_columns("action_runs")}
    assert {"event_id", "request", "error"} <= cols and len(action_runs.c) == len(cols)
