"""Explanation latency per alert: evidence_for_alert + evidence_for_event + template narrative.

Synthetic shop scenarios (``aiops.sources.synthetic.generate_scenario``, one seed per
scenario) give a watch of p90 latency and error ratio for every service, 7 days at 5 minutes.
A rolling median/MAD baseline scores it (the model is not what is timed here) and
``scores_to_events`` finds events. Each timed alert is the first alert of
``tests/service/data/webhook_example.json`` relabelled to an event's series and start; per
alert we time, on one thread:

1. ``evidence_for_alert`` with the watch's series from 6 h before the alert to 1 h after
   (what a worker would fetch around it), service graph and ``group_by=service``;
2. ``evidence_for_event`` for the event behind it, over the whole scored watch;
3. the template explainer on both (cache off, so nothing is answered from memory).

Usage: ``python benchmarks/explain_latency.py [--n 200] [--scenarios 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import pandas as pd

from _common import REPO, machine, setup_logging, write_json

EXAMPLE = REPO / "tests" / "service" / "data" / "webhook_example.json"
END = "2026-11-01T00:00:00Z"


def score_watch(frame: pd.DataFrame, window: int = 24) -> pd.DataFrame:
    """A rolling median/MAD baseline as a scored frame (``aiops.types.SCORE_COLUMNS``)."""
    out = []
    for sid, g in frame.groupby("series_id", sort=True):
        g = g.sort_values("ts").reset_index(drop=True)
        v = g["value"]
        med = v.rolling(window, min_periods=6).median().shift(1)
        mad = (v - med).abs().rolling(window, min_periods=6).median().shift(1)
        sigma = (1.4826 * mad).clip(lower=1e-9 + 0.01 * med.abs())
        z = ((v - med) / sigma).abs()
        g["yhat"], g["yhat_lower"], g["yhat_upper"] = med, med - 1.2816 * sigma, med + 1.2816 * sigma
        g["anomaly_score"] = (z / 1.2816).where(v.notna() & med.notna())
        out.append(g)
    return pd.concat(out, ignore_index=True)


def prepare(seed: int):
    from aiops.config import DetectorConfig
    from aiops.detect.events import scores_to_events
    from aiops.sources.synthetic import generate_scenario

    sc = generate_scenario("shop", seed=seed, days=7, step="5m", end=END)
    f = sc.batch.frame
    keep = f["series_id"].str.startswith(("http_request_duration_seconds", "http_errors_ratio"))
    scored = score_watch(f[keep])
    labels = {s: sc.batch.labels[s] for s in scored["series_id"].unique()}
    events = scores_to_events(scored, watch="shop_latency", detector=DetectorConfig(), labels=labels)
    return scored, labels, events, sc.graph


def make_alert(template: dict, ev, labels: dict[str, dict[str, str]]) -> dict:
    alert = copy.deepcopy(template)
    lab = {k: v for k, v in labels[ev.series_id].items() if k != "__name__"}
    alert["labels"] = {"alertname": "ShopLatencyHigh", "severity": ev.severity, **lab}
    alert["startsAt"] = pd.Timestamp(ev.start).isoformat()
    alert["status"] = "firing" if ev.end is None else "resolved"
    alert["endsAt"] = pd.Timestamp(ev.end).isoformat() if ev.end is not None else "0001-01-01T00:00:00Z"
    return alert


def run(n: int, scenarios: int) -> dict:
    from aiops.explain.evidence import evidence_for_alert, evidence_for_event
    from aiops.explain.explainer import Explainer, render_markdown
    from aiops.explain.rca import ServiceGraph

    template = json.loads(EXAMPLE.read_text())["alerts"][0]
    explainer = Explainer(cache_size=0)
    prepared = [prepare(seed) for seed in range(scenarios)]
    stages = {"evidence_for_alert": [], "evidence_for_event": [], "template explanation": [], "total": []}
    query = 'http_request_duration_seconds{job="shop"} or http_errors_ratio{job="shop"}'
    for i in range(n):
        scored, labels, events, graph = prepared[i % scenarios]
        if not events:
            continue
        ev = sorted(events, key=lambda e: -e.peak_score)[(i // scenarios) % len(events)]
        alert = make_alert(template, ev, labels)
        start = pd.Timestamp(ev.start)
        win = scored[(scored["ts"] >= start - pd.Timedelta(hours=6)) & (scored["ts"] <= start + pd.Timedelta(hours=1))]
        now = scored["ts"].max()
        t0 = time.perf_counter()
        g = ServiceGraph(graph)
        ev_alert = evidence_for_alert(alert, frame=win[["series_id", "ts", "value"]], labels=labels, graph=g,
                                      group_by="service", now=now)
        t1 = time.perf_counter()
        ev_event = evidence_for_event(ev, scored, labels=labels, query=query, graph=g, group_by="service", now=now)
        t2 = time.perf_counter()
        for e in explainer.explain_many([ev_alert, ev_event]):
            render_markdown(e)
        t3 = time.perf_counter()
        for k, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            stages[k].append(dt * 1000)
    table = {k: {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95)),
                 "max_ms": float(np.max(v))} for k, v in stages.items()}
    return {"n": len(stages["total"]), "scenarios": scenarios,
            "events_per_scenario": [len(p[2]) for p in prepared],
            "rows_scored_per_scenario": int(len(prepared[0][0])), "stages": table, "machine": machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="alerts to time")
    ap.add_argument("--scenarios", type=int, default=10, help="synthetic shop scenarios (seeds)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    setup_logging(args.verbose)
    res = run(args.n, args.scenarios)
    print(f"{res['n']} alerts over {res['scenarios']} scenarios; events per scenario {res['events_per_scenario']}; "
          f"{res['rows_scored_per_scenario']} scored rows per watch")
    print("| stage | p50 ms | p95 ms | max ms |\n|---|---|---|---|")
    for k, v in res["stages"].items():
        print(f"| {k} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['max_ms']:.1f} |")
    print(json.dumps(res["machine"]))
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    main()
