"""End to end (issue 5): a real Prometheus -> the pipeline -> dashboards and annotations in Grafana.

Three latency series with daily seasonality are backfilled into Debian's ``prometheus``; the
callee ``b`` gets a clear level shift a few hours before the data ends and its caller ``a`` a
smaller, later one. One watch runs through :func:`aiops.pipeline.run_watch` with the template
explainer and a Grafana annotator pointed at the validating Grafana double.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from aiops.config import AiopsConfig, WatchConfig, validate_config
from aiops.explain.explainer import Explainer
from aiops.grafana.annotations import Annotator
from aiops.grafana.client import GrafanaClient
from aiops.grafana.dashboards import OVERVIEW_UID, PANEL_OBSERVED, ProvisionReport, dashboard_uid, provision
from aiops.outputs import read_instant, read_range
from aiops.pipeline import Stages, WatchResult, run_watch
from aiops.sources.prometheus import PrometheusSource
from aiops.store import Store
from aiops.types import AnomalyEvent
from tests.fixtures.grafana_double import GrafanaDouble
from tests.fixtures.prom import PromServer, SeriesData, data_end, prometheus_binary, start_prometheus

pytestmark = pytest.mark.prometheus

TOKEN = "glsa_e2e_token"
WATCH = "shop-latency"
METRIC = "shop_latency_seconds"
STEP = 300
DAYS = 4
SHIFT_B_AGO = 4 * 3600  # the callee's level shift, before the data's end
SHIFT_A_AGO = SHIFT_B_AGO - 20 * 60  # the caller follows 20 minutes later, smaller


def shop_series(end: int, seed: int = 7) -> list[SeriesData]:
    """``shop_latency_seconds{service="a"|"b"|"c"}`` at 5m with a daily cycle and noise."""
    rng = np.random.default_rng(seed)
    ts = np.arange(end - DAYS * 86400, end + 1, STEP, dtype="int64")
    daily = np.sin(2 * np.pi * (ts % 86400) / 86400)
    out = []
    for k, svc in enumerate("abc"):
        base = 0.2 + 0.05 * k
        vals = base + 0.04 * daily + rng.normal(0, 0.005, len(ts))
        if svc == "b":
            vals[ts >= end - SHIFT_B_AGO] += 0.30
        if svc == "a":
            vals[ts >= end - SHIFT_A_AGO] += 0.12
        out.append(SeriesData({"__name__": METRIC, "service": svc, "job": "shop"}, ts, vals))
    return out


@dataclass
class E2E:
    prom: PromServer
    grafana: GrafanaDouble
    config: AiopsConfig
    watch: WatchConfig
    store: Store
    end: pd.Timestamp
    provision1: ProvisionReport
    result: WatchResult
    flush1: dict
    annotations1: dict
    dashboards1: dict
    result2: WatchResult | None = None
    flush2: dict | None = None
    provision2: ProvisionReport | None = None


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    prometheus_binary("promtool")
    tmp = tmp_path_factory.mktemp("e2e")
    end = data_end()
    prom = start_prometheus(tmp / "prom", shop_series(end))
    try:
        with GrafanaDouble(token=TOKEN) as grafana:
            cfg = validate_config({
                "source": {"kind": "prometheus"},
                "prometheus": {"url": prom.url, "retries": 0},
                "grafana": {"url": grafana.url, "token": TOKEN},
                "store": {"url": f"sqlite:///{tmp / 'aiops.db'}"},
                "output_dir": str(tmp / "out"),
                "watches": [{"name": WATCH, "query": f'{METRIC}{{job="shop"}}', "step": "5m",
                             "history": f"{DAYS}d", "horizon": "6h"}],
            })
            watch = cfg.watch(WATCH)
            store = Store.open(cfg.store.url)
            source = PrometheusSource.from_config(cfg.prometheus)
            end_ts = pd.Timestamp(end, unit="s", tz="UTC")
            rep1 = provision(cfg, GrafanaClient.from_config(cfg.grafana))
            annotator = Annotator.from_config(cfg.grafana, store)
            stages = Stages(explainer=Explainer(cfg.explain), annotator=annotator)
            result = run_watch(cfg, watch, source=source, store=store, end=end_ts, stages=stages)
            flush1 = annotator.flush()
            state = E2E(prom, grafana, cfg, watch, store, end_ts, rep1, result, flush1,
                        annotations1={k: dict(v) for k, v in grafana.annotations.items()},
                        dashboards1={k: v["dashboard"]["version"] for k, v in grafana.dashboards.items()})
            # The second pass: same data, same events -> nothing new in Grafana.
            state.result2 = run_watch(cfg, watch, source=source, store=store, end=end_ts, stages=stages)
            state.flush2 = annotator.flush()
            state.provision2 = provision(cfg, GrafanaClient.from_config(cfg.grafana))
            yield state
    finally:
        prom.stop()


def _events_on(result: WatchResult, service: str) -> list[AnomalyEvent]:
    return [e for e in result.events if f'service="{service}"' in e.series_id]


def _near(ev: AnomalyEvent, t: pd.Timestamp, steps: int = 3) -> bool:
    return abs(pd.Timestamp(ev.start) - t) <= pd.Timedelta(seconds=steps * STEP)


def test_pipeline_finds_the_injected_shift(e2e: E2E):
    r = e2e.result
    assert r.error is None, r.error
    assert len(r.batch.series_ids) == 3
    shift_b = e2e.end - pd.Timedelta(seconds=SHIFT_B_AGO)
    on_b = [e for e in _events_on(r, "b") if _near(e, shift_b)]
    assert on_b, f"no event on b near {shift_b}: {[(e.series_id, e.start) for e in r.events]}"
    ev = on_b[0]
    assert ev.id is not None and ev.observed > ev.expected_upper and ev.direction in ("spike", "level_shift")
    assert ev.id in r.explanations and ev.id in r.markdown
    # the caller's later, smaller shift is traced back to the callee
    shift_a = e2e.end - pd.Timedelta(seconds=SHIFT_A_AGO)
    on_a = [e for e in _events_on(r, "a") if _near(e, shift_a)]
    assert on_a, f"no event on a near {shift_a}: {[(e.series_id, e.start) for e in r.events]}"
    causes = r.explanations[on_a[0].id].causes
    top = causes[0].name if causes else ""
    assert top == "b" or 'service="b"' in top, [(c.name, c.confidence) for c in causes]  # by service or series
    assert not [e for e in _events_on(r, "c") if pd.Timestamp(e.start) >= shift_b - pd.Timedelta("1h")], \
        "the untouched series c should stay quiet around the shift"


def test_grafana_received_folder_datasource_and_dashboards(e2e: E2E):
    g, cfg = e2e.grafana, e2e.config
    assert cfg.grafana.folder_uid in g.folders
    assert cfg.grafana.datasource_uid in g.datasources
    uid = dashboard_uid(WATCH)
    assert uid in g.dashboards and OVERVIEW_UID in g.dashboards
    assert g.dashboards[uid]["folderUid"] == cfg.grafana.folder_uid
    panels = {p["id"] for p in g.dashboards[uid]["dashboard"]["panels"]}
    assert PANEL_OBSERVED in panels
    assert not g.invalid_requests(), [(r.method, r.path, r.errors) for r in g.invalid_requests()]


def test_region_annotation_on_the_watch_dashboard(e2e: E2E):
    r = e2e.result
    assert e2e.flush1["created"] >= 1 and e2e.flush1["failed"] == 0 and e2e.flush1["pending"] == 0
    shift_b = e2e.end - pd.Timedelta(seconds=SHIFT_B_AGO)
    ev = next(e for e in _events_on(r, "b") if _near(e, shift_b))
    mine = [a for a in e2e.annotations1.values() if a["data"].get("event_id") == ev.id]
    assert len(mine) == 1, e2e.annotations1
    a = mine[0]
    assert a["dashboardUID"] == dashboard_uid(WATCH) and a["panelId"] == PANEL_OBSERVED
    assert a["time"] == int(pd.Timestamp(ev.start).timestamp() * 1000)
    assert a["time"] < a["timeEnd"] or ev.end is None
    assert {"aiops", "anomaly", f"watch:{WATCH}", f"severity:{ev.severity}"} <= set(a["tags"])
    assert a["text"] == r.markdown[ev.id]
    assert 'service="b"' in a["text"] or "service=b" in a["text"] or METRIC in a["text"], a["text"]
    # every explained event was annotated, and nothing else
    assert {x["data"]["event_id"] for x in e2e.annotations1.values()} == set(r.markdown)


def test_second_run_and_provision_are_idempotent(e2e: E2E):
    assert e2e.result2.error is None, e2e.result2.error
    assert sorted(e.id for e in e2e.result2.events) == sorted(e.id for e in e2e.result.events)
    assert e2e.flush2["created"] == 0 and e2e.flush2["failed"] == 0
    assert len(e2e.grafana.annotations) == len(e2e.annotations1)
    assert {k: v["text"] for k, v in e2e.grafana.annotations.items()} == \
        {k: v["text"] for k, v in e2e.annotations1.items()}
    rep = e2e.provision2
    assert not rep.created and not rep.updated and not rep.skipped_edited, rep.to_dict()
    assert {k: v["dashboard"]["version"] for k, v in e2e.grafana.dashboards.items()} == e2e.dashboards1
    assert not e2e.grafana.invalid_requests(), [(r.method, r.path, r.errors) for r in e2e.grafana.invalid_requests()]


def test_output_series_are_readable(e2e: E2E):
    got = read_instant(e2e.store, f'aiops_anomaly_score{{watch="{WATCH}"}}', e2e.end)
    assert {lbl.get("service") for lbl, _ in got} == {"a", "b", "c"}
    shift_b = e2e.end - pd.Timedelta(seconds=SHIFT_B_AGO)
    rng = read_range(e2e.store, f'aiops_anomaly_score{{watch="{WATCH}",service="b"}}',
                     shift_b, shift_b + pd.Timedelta("30m"), pd.Timedelta("5m"))
    assert rng and np.nanmax(rng[0][2]) >= e2e.watch.detector.threshold
    quiet = read_range(e2e.store, f'aiops_anomaly_score{{watch="{WATCH}",service="c"}}',
                       shift_b, e2e.end, pd.Timedelta("5m"))
    assert quiet and np.nanmax(quiet[0][2]) < e2e.watch.detector.threshold
