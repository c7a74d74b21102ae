"""Scheduled runs explain and annotate: new events once, grown events again, the rest never."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from aiops.config import AiopsConfig
from aiops.scheduler import Scheduler
from aiops.store import Store, explanations
from tests.fixtures.grafana_double import GrafanaDouble
from tests.fixtures.service import wait_for

TOKEN = "graf-t0ken"
SERIES = 'latency_seconds{service="checkout"}'


def write_series(path, end: pd.Timestamp) -> None:
    """Two days of a daily cycle every 5 minutes with a burst half an hour before ``end``."""
    ts = pd.date_range(end - pd.Timedelta("2d"), end, freq="5min")
    rng = np.random.default_rng(0)
    v = 100 + 20 * np.sin(2 * np.pi * np.arange(len(ts)) / 288) + rng.normal(0, 1, len(ts))
    v[-12:-6] += 80
    pd.DataFrame({"timestamp": ts, "series": SERIES, "value": v}).to_csv(path, index=False)


def make_config(tmp_path, grafana_url: str) -> AiopsConfig:
    return AiopsConfig.model_validate(
        {
            "source": {"kind": "file", "file": {"path": str(tmp_path / "series.csv")}},
            "store": {"url": f"sqlite:///{tmp_path}/aiops.db"},
            "grafana": {"url": grafana_url, "token": TOKEN},
            "service": {"lease": "5s"},
            "watches": [{"name": "lat", "query": "latency_seconds", "step": "5m", "history": "2d", "horizon": "1h",
                         "infer_every": "1h", "model": {"kind": "seasonal_naive"}, "dashboard": False}],
        }
    )


def explained(store: Store) -> list[tuple[str, int]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(explanations.c.subject_ref, explanations.c.id).where(explanations.c.subject_kind == "event")
            .order_by(explanations.c.id))]


@pytest.fixture
def grafana():
    with GrafanaDouble(token=TOKEN) as g:
        yield g


def test_scheduled_runs_explain_new_events_once_and_annotate_them(tmp_path, grafana):
    write_series(tmp_path / "series.csv", pd.Timestamp.now(tz="UTC").floor("5min"))
    cfg = make_config(tmp_path, grafana.url)
    store = Store.open(cfg.store.url)
    sched = Scheduler(cfg, store=store, lease_ttl=5, first_run_delay=0.1).start()
    try:
        wait_for(lambda: any(r["status"] != "running" for r in store.runs()), 30)
        (run,) = store.runs()
        assert run["status"] == "ok", run["error"]
        events = store.events(watch="lat")
        assert events, "the burst should make at least one event"
        first = explained(store)
        assert sorted(ref for ref, _ in first) == sorted(f"event:{e.id}" for e in events)
        assert run["details"]["explained"] == len(events)
        # Flushed at the end of the run: each event is a region annotation in Grafana.
        wait_for(lambda: len(grafana.annotations) >= len(events), 10)
        keys = sorted(a["data"]["aiops_key"] for a in grafana.annotations.values())
        assert keys == sorted(f"event:{e.id}" for e in events)
        assert all("latency_seconds" in a["text"] for a in grafana.annotations.values())

        # The same data again: nothing is explained twice, nothing new reaches Grafana.
        sched._run_job("infer", "lat")
        assert explained(store) == first
        assert store.runs(limit=1)[0]["details"]["explained"] == 0
        assert len(grafana.annotations) == len(events)

        # One event's explanation is from when it was smaller, another's from a lower severity:
        # both grew, so both are explained again; the rest are left alone.
        grown = [f"event:{e.id}" for e in events[:2]]
        with store.begin() as conn:
            for n, ref in enumerate(grown):
                row = conn.execute(sa.select(explanations).where(explanations.c.subject_ref == ref)).one()
                evidence = dict(row.evidence)
                for item in evidence["items"]:
                    if "peak_score" in (item.get("data") or {}):
                        if n == 0:
                            item["data"] = {**item["data"], "peak_score": item["data"]["peak_score"] / 2}
                        else:
                            item["data"] = {**item["data"], "severity": "info"}
                        break
                conn.execute(explanations.update().where(explanations.c.id == row.id).values(evidence=evidence))
        sched._run_job("infer", "lat")
        again = [ref for ref, _ in explained(store)[len(first):]]
        assert sorted(again) == sorted(grown[: len(events)])
        assert len(grafana.annotations) == len(events)  # updated in place, not duplicated
        assert grafana.invalid_requests() == []
    finally:
        sched.shutdown(wait=False)


def test_an_injected_run_watch_without_stages_still_works(tmp_path):
    calls = []

    def run_watch(cfg, watch, *, source, store):
        calls.append(watch.name)

    cfg = make_config(tmp_path, "http://127.0.0.1:9")
    sched = Scheduler(cfg, store=Store.open(cfg.store.url), source=object(), run_watch=run_watch, fit_watch=None,
                      lease_ttl=5, first_run_delay=0.1)
    assert sched.stages is None
    sched.start()
    try:
        wait_for(lambda: calls == ["lat"], 10)
    finally:
        sched.shutdown(wait=False)
