"""Annotations through the outbox, against the Grafana double."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest

from aiops.errors import GrafanaError, InputError
from aiops.grafana.annotations import Annotator, FileSink, _aware, to_ms
from aiops.grafana.client import GrafanaClient
from aiops.grafana.dashboards import PANEL_OBSERVED, dashboard_uid, provision
from aiops.store import utcnow

from .conftest import T0, make_config, make_event


@pytest.fixture
def provisioned(grafana, config):
    provision(config, GrafanaClient.from_config(config.grafana))
    return config


def annotator(config, store, **kw) -> Annotator:
    return Annotator.from_config(config.grafana, store, **kw)


def test_event_becomes_region_annotation_then_updates_in_place(grafana, provisioned, store):
    ann = annotator(provisioned, store)
    uid = dashboard_uid("latency-p90")
    ev = make_event(7)
    key = ann.enqueue(ev, "**latency** above band", uid, PANEL_OBSERVED)
    assert key == "event:7"
    assert ann.flush() == {"created": 1, "updated": 0, "failed": 0, "pending": 0}
    (a,) = grafana.annotations.values()
    assert a["dashboardUID"] == uid and a["panelId"] == PANEL_OBSERVED
    assert a["time"] == to_ms(ev.start) and a["timeEnd"] == to_ms(ev.peak_time)
    assert set(a["tags"]) >= {"aiops", "anomaly", "watch:latency-p90", "severity:warning"}
    assert a["text"] == "**latency** above band"

    # nothing changed -> nothing sent
    n = len(grafana.requests)
    ann.enqueue(ev, "**latency** above band", uid, PANEL_OBSERVED)
    assert ann.flush()["created"] == 0 and len(grafana.requests) == n

    # the event grows, then ends: same annotation, new end and text
    ann.enqueue(ev, "still going", uid, PANEL_OBSERVED, last_seen=T0 + timedelta(minutes=30))
    assert ann.flush()["updated"] == 1
    ev.end, ev.severity = T0 + timedelta(hours=1), "critical"
    ann.enqueue(ev, "ended", uid, PANEL_OBSERVED)
    assert ann.flush()["updated"] == 1
    (a,) = grafana.annotations.values()
    assert a["timeEnd"] == to_ms(ev.end) and a["text"] == "ended" and "severity:critical" in a["tags"]
    assert a["dashboardUID"] == uid  # PATCH keeps dashboard and panel

    # the double's GET filters find it by tag and dashboard
    client = GrafanaClient.from_config(provisioned.grafana)
    assert [x["id"] for x in client.find_annotations(tags=["watch:latency-p90"], dashboardUID=uid)] == [a["id"]]
    assert client.find_annotations(tags=["watch:other"]) == []
    assert client.find_annotations(**{"from": to_ms(ev.end) + 1, "to": to_ms(ev.end) + 10}) == []


def test_not_duplicated_across_restart(grafana, provisioned, store):
    ann = annotator(provisioned, store)
    ann.enqueue(make_event(1), "one", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    ann.enqueue(make_event(2), "two")
    assert ann.flush()["created"] == 2
    # a fresh process: new Annotator on the same store sees the same events again
    again = annotator(provisioned, store)
    again.enqueue(make_event(1, end=T0 + timedelta(hours=2)), "one, ended", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    again.enqueue(make_event(2), "two")
    stats = again.flush()
    assert stats["created"] == 0 and stats["updated"] == 1
    assert len(grafana.annotations) == 2
    assert sorted(a["text"] for a in grafana.annotations.values()) == ["one, ended", "two"]


def test_grafana_down_keeps_outbox_and_later_delivers_exactly_once(grafana, provisioned, store):
    ann = annotator(provisioned, store, backoff=10, max_backoff=60)
    for i in range(1, 4):
        ann.enqueue(make_event(i), f"event {i}", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    grafana.down = True
    now0 = utcnow()
    stats = ann.flush(now=now0)
    assert stats == {"created": 0, "updated": 0, "failed": 1, "pending": 3}  # stops at the first 503
    assert ann.flush(now=now0)["failed"] == 1  # the next due row; the failed one backs off
    stats = ann.flush(now=now0 + timedelta(seconds=5))
    assert stats["failed"] == 1 and not grafana.annotations
    assert stats["pending"] == 3

    grafana.down = False
    grafana.fail_next = 1  # one more blip, then healthy
    assert ann.flush(now=now0 + timedelta(seconds=100))["failed"] == 1
    stats = ann.flush(now=now0 + timedelta(hours=1))
    assert stats["created"] == 3 and stats["pending"] == 0
    assert sorted(a["text"] for a in grafana.annotations.values()) == ["event 1", "event 2", "event 3"]
    assert ann.flush(now=now0 + timedelta(hours=2)) == {"created": 0, "updated": 0, "failed": 0, "pending": 0}
    assert len(grafana.annotations) == 3


def test_backoff_grows_exponentially(grafana, provisioned, store):
    ann = annotator(provisioned, store, backoff=10, max_backoff=40)
    ann.enqueue(make_event(1), "x")
    grafana.down = True
    now, waits = utcnow(), []
    for _ in range(4):
        assert ann.flush(now=now)["failed"] == 1
        assert ann.flush(now=now + timedelta(seconds=1))["failed"] == 0  # not due yet
        with store.begin() as conn:
            due = conn.exec_driver_sql("select next_attempt_at from annotation_outbox").scalar_one()
        nxt = _aware(pd.Timestamp(due).to_pydatetime())
        waits.append((nxt - now).total_seconds())
        now = nxt
    assert waits == [10, 20, 40, 40]


def test_lost_create_answer_is_not_duplicated(grafana, provisioned, store, monkeypatch):
    ann = annotator(provisioned, store)
    ann.enqueue(make_event(1), "first", dashboard_uid("latency-p90"), PANEL_OBSERVED)

    def crash(*a, **k):
        raise SystemExit("crashed after Grafana saved the annotation")

    monkeypatch.setattr(Annotator, "_sent", crash)
    now0 = utcnow()
    with pytest.raises(SystemExit):
        ann.flush(now=now0)
    monkeypatch.undo()
    assert len(grafana.annotations) == 1
    restarted = annotator(provisioned, store)
    assert restarted.flush(now=now0)["created"] == 0  # still claimed by the crashed flusher
    stats = restarted.flush(now=now0 + timedelta(minutes=5))
    assert stats["created"] == 0 and stats["updated"] == 1
    assert len(grafana.annotations) == 1


def test_deleted_in_grafana_is_recreated_and_unknown_dashboard_falls_back(grafana, provisioned, store):
    ann = annotator(provisioned, store)
    ann.enqueue(make_event(1), "x", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    ann.flush()
    grafana.annotations.clear()
    ann.enqueue(make_event(1, end=T0 + timedelta(hours=1)), "x ended", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    assert ann.flush()["created"] == 1
    ann.enqueue(make_event(2), "no dashboard", "aiops-not-provisioned", 1)
    assert ann.flush()["created"] == 1
    a = next(a for a in grafana.annotations.values() if a["text"] == "no dashboard")
    assert a["dashboardUID"] == "" and "watch:latency-p90" in a["tags"]


def test_close_region(grafana, provisioned, store):
    ann = annotator(provisioned, store)
    ann.enqueue_payload("alert:abc:2026-11-20T12:00:00Z", text="HighLatency firing", time=T0,
                        tags=["aiops", "alert"])
    ann.flush()
    assert ann.close_region("alert:abc:2026-11-20T12:00:00Z", T0 + timedelta(minutes=45))
    assert not ann.close_region("alert:unknown", T0)
    assert ann.flush()["updated"] == 1
    (a,) = grafana.annotations.values()
    assert a["timeEnd"] - a["time"] == 45 * 60 * 1000


def test_wrong_token_is_a_grafana_error_with_token_hint(grafana, store):
    cfg = make_config(grafana.url, token="wrong")
    with pytest.raises(GrafanaError) as err:
        GrafanaClient.from_config(cfg.grafana).check_auth()
    assert err.value.status == 401 and "token" in err.value.hint
    assert "wrong" not in str(err.value)
    ann = annotator(cfg, store)
    ann.enqueue(make_event(1), "x")
    stats = ann.flush()
    assert stats["failed"] == 1 and stats["pending"] == 1  # kept, retried later


def test_unreachable_grafana_is_retryable(store):
    cfg = make_config("http://127.0.0.1:9", timeout="1s")
    with pytest.raises(GrafanaError) as err:
        GrafanaClient.from_config(cfg.grafana).health()
    assert err.value.status is None and "outbox" in err.value.hint
    ann = annotator(cfg, store)
    ann.enqueue(make_event(1), "x")
    assert ann.flush()["pending"] == 1


def test_file_mode_writes_json_once_per_key(tmp_path, store):
    cfg = make_config(None, output_dir=str(tmp_path / "grafana"))
    ann = annotator(cfg, store)
    assert isinstance(ann.sink, FileSink)
    ann.enqueue(make_event(1), "one", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    ann.enqueue(make_event(2), "two")
    assert ann.flush()["created"] == 2
    again = annotator(cfg, store)
    again.enqueue(make_event(1, end=T0 + timedelta(hours=1)), "one ended", dashboard_uid("latency-p90"), PANEL_OBSERVED)
    assert again.flush()["updated"] == 1
    files = sorted((tmp_path / "grafana" / "annotations").glob("*"))
    assert [f.name for f in files] == ["event_1.annotation", "event_2.annotation"]
    assert not list((tmp_path / "grafana").rglob("*.json"))  # Grafana's file provider would load them
    one = json.loads(files[0].read_text())
    assert one["text"] == "one ended" and one["id"] == 1 and one["timeEnd"] == to_ms(T0 + timedelta(hours=1))


def test_enqueue_checks_input(store, tmp_path):
    ann = annotator(make_config(None, output_dir=str(tmp_path)), store)
    with pytest.raises(InputError):
        ann.enqueue(make_event(None), "x")
    with pytest.raises(InputError):
        ann.enqueue(make_event(1), "  ")
