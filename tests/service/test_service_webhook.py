"""The Alertmanager webhook: auth, validation, limits, idempotent storage."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from aiops.cli import cli
from aiops.config import AiopsConfig
from aiops.errors import ConfigError
from aiops.service.app import create_app
from aiops.service.auth import bearer_ok, check_bind, is_loopback, write_denied
from aiops.service.inbox import Inbox
from aiops.store import Store, explanations
from tests.fixtures.prom import free_port

DATA = Path(__file__).parent / "data"
TOKEN = "s3cr3t-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = ["webhook_example.json", "webhook_example_resolved.json", "webhook_example_pre_v0.32.json"]


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def make_config(tmp_path: Path, **service) -> AiopsConfig:
    svc = {"token": TOKEN, "max_body_bytes": 65536, "max_alerts_per_request": 50, **service}
    return AiopsConfig.model_validate({"store": {"url": f"sqlite:///{tmp_path}/aiops.db"}, "service": svc})


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path}/aiops.db")


@pytest.fixture
def client(tmp_path, store):
    app = create_app(make_config(tmp_path), store)
    return app.test_client()


def stored(store: Store) -> list[dict]:
    return Inbox(store).rows()


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_payloads_are_accepted_and_stored_once(client, store, name):
    payload = load(name)
    r = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    n = len(payload["alerts"])
    assert body == {"status": "accepted", "alerts": n, "stored": n, "duplicates": 0}
    rows = stored(store)
    assert [(x["fingerprint"], x["starts_at"], x["status"]) for x in rows] == [
        (a["fingerprint"], a["startsAt"], a["status"]) for a in payload["alerts"]
    ]
    assert all(x["state"] == "pending" for x in rows)
    # Unknown fields are kept in the stored alert.
    assert rows[0]["payload"]["labels"] == payload["alerts"][0]["labels"]

    # Alertmanager re-sends the group: accepted, nothing stored twice.
    r2 = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r2.status_code == 202
    assert r2.get_json()["stored"] == 0 and r2.get_json()["duplicates"] == n
    assert len(stored(store)) == n


def test_firing_then_resolved_are_distinct_rows(client, store):
    firing, resolved = load("webhook_example.json"), load("webhook_example_resolved.json")
    assert client.post("/api/v1/alertmanager", json=firing, headers=AUTH).status_code == 202
    assert client.post("/api/v1/alertmanager", json=resolved, headers=AUTH).status_code == 202
    keys = {(x["fingerprint"], x["status"]) for x in stored(store)}
    fp = firing["alerts"][0]["fingerprint"]
    assert (fp, "firing") in keys and (fp, "resolved") in keys


@pytest.mark.parametrize(
    "headers, needle",
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer nope"}, "wrong bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, "wrong bearer token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "wrong bearer token"),
    ],
)
def test_bad_or_missing_token_is_401_and_nothing_stored(client, store, headers, needle):
    r = client.post("/api/v1/alertmanager", json=load("webhook_example.json"), headers=headers)
    assert r.status_code == 401
    assert needle in r.get_json()["error"]
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in r.get_data(as_text=True)
    assert stored(store) == []


def test_malformed_json_is_400_with_message(client, store):
    r = client.post("/api/v1/alertmanager", data=b'{"version": "4", "alerts": [', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.get_json()["error"].startswith("malformed JSON")
    r = client.post("/api/v1/alertmanager", data=b"\xff\xfe", headers=AUTH)
    assert r.status_code == 400
    assert stored(store) == []


@pytest.mark.parametrize(
    "mutate, path",
    [
        (lambda p: p["alerts"][0].__setitem__("startsAt", "yesterday"), "alerts[0].startsAt"),
        (lambda p: p["alerts"][1].__setitem__("startsAt", 1234), "alerts[1].startsAt"),
        (lambda p: p["alerts"][0].pop("fingerprint"), "alerts[0].fingerprint"),
        (lambda p: p["alerts"][1].__setitem__("status", "pending"), "alerts[1].status"),
        (lambda p: p["alerts"][0]["labels"].__setitem__("severity", 3), "alerts[0].labels.severity"),
        (lambda p: p.__setitem__("version", "3"), "version"),
        (lambda p: p.__setitem__("alerts", {"a": 1}), "alerts"),
    ],
)
def test_wrong_types_are_400_naming_the_field_and_nothing_stored(client, store, mutate, path):
    payload = load("webhook_example.json")
    mutate(payload)
    r = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert any(p.startswith(path + ":") for p in body["problems"]), body
    assert path in body["error"]
    assert stored(store) == []  # one bad alert rejects the whole request: Alertmanager sees it


def test_non_object_body_is_400(client, store):
    r = client.post("/api/v1/alertmanager", json=[1, 2], headers=AUTH)
    assert r.status_code == 400
    assert stored(store) == []


def test_huge_body_is_413(client, store):
    payload = load("webhook_example.json")
    payload["alerts"][0]["annotations"]["description"] = "x" * 70000
    r = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r.status_code == 413
    assert "max_body_bytes" in r.get_json()["error"]
    assert stored(store) == []


def test_too_many_alerts_is_413(client, store):
    payload = load("webhook_example.json")
    one = payload["alerts"][0]
    payload["alerts"] = []
    for i in range(51):
        a = copy.deepcopy(one)
        a["fingerprint"] = f"{i:016x}"
        a["annotations"] = {}
        payload["alerts"].append(a)
    r = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r.status_code == 413
    assert "max_alerts_per_request" in r.get_json()["error"]
    assert stored(store) == []
    payload["alerts"] = payload["alerts"][:50]
    r = client.post("/api/v1/alertmanager", json=payload, headers=AUTH)
    assert r.status_code == 202 and r.get_json()["stored"] == 50


def test_no_token_allows_writes_only_on_loopback(tmp_path, store):
    payload = load("webhook_example.json")
    open_app = create_app(make_config(tmp_path, token=None, host="0.0.0.0"), store)
    r = open_app.test_client().post("/api/v1/alertmanager", json=payload)
    assert r.status_code == 401 and "no service.token" in r.get_json()["error"]
    assert stored(store) == []
    local_app = create_app(make_config(tmp_path, token=None, host="127.0.0.1"), store)
    assert local_app.test_client().post("/api/v1/alertmanager", json=payload).status_code == 202
    assert len(stored(store)) == 2


def test_dead_letters_endpoint_lists_and_requeues(client, store):
    client.post("/api/v1/alertmanager", json=load("webhook_example.json"), headers=AUTH)
    inbox = Inbox(store)
    item = inbox.claim("w", lease=30, max_attempts=1)
    assert inbox.fail(item, "w", "boom", max_attempts=1, backoff=0) == "dead"
    r = client.get("/api/v1/dead-letters")
    assert r.status_code == 200
    dead = r.get_json()["data"]
    assert [d["fingerprint"] for d in dead] == [item.fingerprint]
    assert dead[0]["last_error"] == "boom" and dead[0]["attempts"] == 1
    assert client.post(f"/api/v1/dead-letters/{item.id}/retry").status_code == 401
    assert client.post(f"/api/v1/dead-letters/{item.id}/retry", headers=AUTH).status_code == 202
    assert client.post(f"/api/v1/dead-letters/{item.id}/retry", headers=AUTH).status_code == 404
    assert client.get("/api/v1/dead-letters").get_json()["data"] == []


def test_auth_helpers():
    assert bearer_ok(f"Bearer {TOKEN}", TOKEN) and bearer_ok(f"bearer {TOKEN}", TOKEN)
    assert not bearer_ok(None, TOKEN) and not bearer_ok(TOKEN, TOKEN)
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.1.2.3"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com"):
        assert not is_loopback(host), host
    cfg = AiopsConfig.model_validate({"service": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0"):
        check_bind(cfg.service)
    check_bind(AiopsConfig.model_validate({"service": {"host": "0.0.0.0", "allow_insecure_bind": True}}).service)
    check_bind(AiopsConfig.model_validate({"service": {"host": "0.0.0.0", "token": "t"}}).service)
    assert write_denied(cfg.service, None) is not None


def test_serve_refuses_open_bind_without_token(tmp_path):


    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{tmp_path}/aiops.db\nservice:\n  host: 0.0.0.0\n")
    for cmd in ("serve", "run"):
        r = CliRunner().invoke(cli, [cmd, "-c", str(cfg)])
        assert r.exit_code == 2, r.output
        assert "refusing to listen on 0.0.0.0 without service.token" in r.output


def _serve(cfg_path: Path, port: int) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "aiops", "serve", "-c", str(cfg_path), "--port", str(port)],
                            env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            requests.get(f"http://127.0.0.1:{port}/api/v1/dead-letters", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("aiops serve did not start")


def test_serve_survives_kill_9_without_losing_alerts(tmp_path):
    """Alerts accepted with 202 are explained after a kill -9 and a restart: none lost."""
    cfg_path = tmp_path / "aiops.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
        "grafana": {"output_dir": str(tmp_path / "grafana")},
        "service": {"token": TOKEN, "lease": "1s", "workers": 1},
    }))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/alertmanager"
    proc = _serve(cfg_path, port)
    accepted = set()
    try:
        payload = load("webhook_example.json")
        one = payload["alerts"][0]
        for i in range(20):
            payload["alerts"] = [dict(one, fingerprint=f"{i:016x}")]
            r = requests.post(url, json=payload, headers=AUTH, timeout=10)
            assert r.status_code == 202
            accepted.add(f"{i:016x}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _serve(cfg_path, port)
        store = Store.open(f"sqlite:///{tmp_path}/aiops.db")
        inbox = Inbox(store)
        deadline = time.time() + 30
        while time.time() < deadline and inbox.counts()["done"] < 20:
            time.sleep(0.1)
        rows = inbox.rows()
        assert {r["fingerprint"] for r in rows if r["state"] == "done"} == accepted
        with store.engine.connect() as conn:
            refs = [x[0] for x in conn.execute(sa.select(explanations.c.subject_ref))]
        assert len(refs) == len(set(refs)) == 20  # each explained exactly once
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_retry_of_an_impossible_dead_letter_id_is_a_404_not_a_500(client):
    r = client.post(f"/api/v1/dead-letters/{2**70}/retry", headers=AUTH)
    assert r.status_code == 404
    assert "no dead letter" in r.get_json()["error"]
