"""Synthetic operations metrics with ground truth: the embedded default source.

The ``shop`` scenario is a small online shop whose services call each other::

    frontend -> checkout, catalog, cart
    checkout -> payment, inventory, cart
    inventory -> db          catalog -> db

Every service exports request rate (daily and weekly seasonality, slow trend), p90 latency
(which includes the latency of what it calls), error ratio, a request counter that resets
when the service restarts, and ``up``. The database host exports free disk bytes shrinking
towards full. Scrapes are missed now and then (NaN), and one service has a longer outage.

Incidents are injected at a root-cause service and propagate to its callers one scrape later
per hop; :class:`Incident` records the root cause and each affected series' onset, so tests
and benchmarks can score detection and root-cause ranking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from aiops.sources.base import grid, select_range
from aiops.timeutil import parse_duration, parse_time
from aiops.types import SeriesBatch, series_id

logger = logging.getLogger(__name__)

SHOP_GRAPH: dict[str, list[str]] = {
    "frontend": ["checkout", "catalog", "cart"],
    "checkout": ["payment", "inventory", "cart"],
    "catalog": ["db"],
    "cart": [],
    "payment": [],
    "inventory": ["db"],
    "db": [],
}
_BASE_LATENCY = {  # own work in seconds, before callees
    "frontend": 0.030, "checkout": 0.045, "catalog": 0.020, "cart": 0.012,
    "payment": 0.120, "inventory": 0.025, "db": 0.008,
}
_TRAFFIC_SHARE = {
    "frontend": 1.0, "checkout": 0.18, "catalog": 0.7, "cart": 0.35,
    "payment": 0.15, "inventory": 0.2, "db": 0.95,
}


@dataclass
class Incident:
    """Ground truth for one injected incident."""

    root_cause: str  # service name
    kind: str  # latency | errors | outage
    start: pd.Timestamp
    end: pd.Timestamp
    affected: dict[str, pd.Timestamp] = field(default_factory=dict)  # series_id -> onset


@dataclass
class Scenario:
    batch: SeriesBatch
    incidents: list[Incident]
    graph: dict[str, list[str]]


def propagation_hops(graph: dict[str, list[str]], root: str) -> dict[str, int]:
    """Services a problem at ``root`` reaches (itself and its transitive callers) and after how
    many call-graph hops; ``graph`` maps each caller to its callees."""
    up: dict[str, list[str]] = {s: [] for s in graph}
    for caller, callees in graph.items():
        for c in callees:
            up[c].append(caller)
    hops, frontier = {root: 0}, [root]
    while frontier:
        nxt = []
        for s in frontier:
            for c in up[s]:
                if c not in hops:
                    hops[c] = hops[s] + 1
                    nxt.append(c)
        frontier = nxt
    return hops


def generate_scenario(
    name: str = "shop",
    *,
    seed: int = 0,
    days: float = 10.0,
    step: str | pd.Timedelta = "5m",
    end: str | pd.Timestamp | None = None,
) -> Scenario:
    """Generate a scenario's series and ground truth (deterministic for a seed and end).

    Args:
        name: ``shop`` (services with an incident), ``capacity`` (shop traffic, disk filling,
            no incident) or ``quiet`` (no incident).
        days: length of history; step: sampling step; end: last timestamp (default: now).
    """
    if name not in ("shop", "capacity", "quiet"):
        raise ValueError(f"unknown scenario {name!r}; choose shop, capacity or quiet")
    step_td = parse_duration(step) if not isinstance(step, pd.Timedelta) else step
    end_ts = parse_time(end) if end is not None else pd.Timestamp.now(tz="UTC")
    end_ts = end_ts.floor(step_td)
    index = grid(end_ts - pd.Timedelta(days=days), end_ts, step_td)
    n = len(index)
    rng = np.random.default_rng(seed)
    hours = (index.hour + index.minute / 60).to_numpy()
    dow = index.dayofweek.to_numpy()
    t_days = (index - index[0]).total_seconds().to_numpy() / 86400.0

    # Traffic: daily shape peaking mid-afternoon, quieter weekends, slow growth.
    daily = 0.55 + 0.45 * np.clip(np.sin((hours - 8) / 24 * 2 * np.pi) * 1.2, -1, 1)
    weekly = np.where(dow >= 5, 0.7, 1.0)
    base_rps = 120.0 * daily * weekly * (1 + 0.01 * t_days)

    services = list(SHOP_GRAPH)
    incidents: list[Incident] = []
    extra_latency = {s: np.zeros(n) for s in services}
    extra_errors = {s: np.zeros(n) for s in services}
    down = {s: np.zeros(n, dtype=bool) for s in services}

    if name == "shop":
        root = ["db", "payment", "inventory"][seed % 3]
        start_i = int(n - rng.integers(int(0.25 * 86400 / step_td.total_seconds()), int(0.6 * 86400 / step_td.total_seconds())))
        dur = int(rng.integers(6, 13))  # 30-60 min at 5m
        end_i = min(start_i + dur, n - 1)
        inc = Incident(root, "latency", index[start_i], index[end_i])
        hops = propagation_hops(SHOP_GRAPH, root)
        magnitude = 6.0 * _BASE_LATENCY[root] + 0.08
        extra_latency[root][start_i:end_i + 1] = magnitude
        for svc, h in hops.items():
            onset = min(start_i + h, end_i)
            if h <= 1:
                extra_errors[svc][onset:end_i + 1 + h] += 0.02 / (h + 1)
                inc.affected[series_id({"__name__": "http_errors_ratio", "service": svc, "job": "shop"})] = index[onset]
            sid = series_id({"__name__": "http_request_duration_seconds", "service": svc, "quantile": "0.9", "job": "shop"})
            inc.affected[sid] = index[onset]
        incidents.append(inc)

    # A restart of cart mid-history: a scrape gap, a counter reset, `up` = 0.
    restart_i = int(n * 0.4)
    down["cart"][restart_i:restart_i + 3] = True

    rows: list[pd.DataFrame] = []
    labels: dict[str, dict[str, str]] = {}

    def add(lbls: dict[str, str], values: np.ndarray, miss_rate: float = 0.003) -> None:
        v = values.astype("float64").copy()
        v[rng.random(n) < miss_rate] = np.nan
        sid = series_id(lbls)
        labels[sid] = dict(lbls)
        rows.append(pd.DataFrame({"series_id": sid, "ts": index, "value": v}))

    for svc in services:
        share = _TRAFFIC_SHARE[svc]
        rps = base_rps * share * (1 + 0.05 * rng.standard_normal(n))
        rps[down[svc]] = np.nan
        add({"__name__": "http_requests_per_second", "service": svc, "job": "shop"}, rps)

        counter = np.cumsum(np.nan_to_num(rps) * step_td.total_seconds())
        if down[svc].any():  # restart: counter starts again from zero
            first_up = int(np.flatnonzero(down[svc])[-1]) + 1
            counter[first_up:] -= counter[first_up - 1]
            counter[down[svc]] = np.nan
        add({"__name__": "http_requests_total", "service": svc, "job": "shop"}, counter, 0.0)

        up = np.where(down[svc], 0.0, 1.0)
        add({"__name__": "up", "service": svc, "job": "shop"}, up, 0.0)

    lat_cache: dict[str, np.ndarray] = {}

    def latency(svc: str) -> np.ndarray:
        if svc not in lat_cache:
            own = _BASE_LATENCY[svc] * (1 + 0.35 * (daily - 0.55)) * np.exp(0.08 * rng.standard_normal(n))
            # A caller's p90 reflects its callees' latency one scrape later.
            calls = sum((np.concatenate([latency(c)[:1], latency(c)[:-1]]) for c in SHOP_GRAPH[svc]), np.zeros(n))
            lat_cache[svc] = own + 0.6 * calls + extra_latency[svc]
        return lat_cache[svc]

    for svc in services:
        lat = latency(svc).copy()
        lat[down[svc]] = np.nan
        add({"__name__": "http_request_duration_seconds", "service": svc, "quantile": "0.9", "job": "shop"}, lat)
        err = np.clip(0.002 + 0.001 * rng.standard_normal(n), 0, None) + extra_errors[svc]
        err[down[svc]] = np.nan
        add({"__name__": "http_errors_ratio", "service": svc, "job": "shop"}, err)

    # Database disk: ~500 GB volume filling by ~8 GB a day with daily wiggle; runs out soon
    # after the end of history (for the capacity planner's panel).
    total = 500e9
    fill_per_day = 8e9
    days_left_at_end = 3.5 if name != "quiet" else 40.0
    free_at_end = 10e9 + fill_per_day * days_left_at_end
    t_end = t_days[-1]
    free = free_at_end + fill_per_day * (t_end - t_days) - 1.5e9 * (daily - 0.55) + 2e8 * rng.standard_normal(n)
    add(
        {"__name__": "node_filesystem_avail_bytes", "instance": "db-1", "mountpoint": "/var/lib/postgresql", "job": "node"},
        np.clip(free, 0, total),
    )
    frame = pd.concat(rows, ignore_index=True).sort_values(["series_id", "ts"], kind="stable").reset_index(drop=True)
    return Scenario(SeriesBatch(frame, labels, step_td, None), incidents, {k: list(v) for k, v in SHOP_GRAPH.items()})


@lru_cache(maxsize=8)
def _cached(name: str, seed: int, days: float, step: str, end: str | None) -> Scenario:
    return generate_scenario(name, seed=seed, days=days, step=step, end=end)


class SyntheticSource:
    """Answers vector-selector queries from a generated scenario (no server needed)."""

    name = "synthetic"

    def __init__(self, scenario: str = "shop", *, seed: int = 0, days: float = 10.0, step: str = "5m", end: str | None = None):
        self.scenario_name = scenario
        self.seed = seed
        self.days = days
        self.step = step
        self.end = end

    @classmethod
    def from_config(cls, cfg) -> "SyntheticSource":
        return cls(cfg.scenario, seed=cfg.seed, days=cfg.days, step=str(cfg.step), end=cfg.end)

    def _end_key(self) -> str:
        if self.end is not None:
            return str(self.end)
        # "now", floored to the step so repeated fetches within a step share one scenario
        return str(pd.Timestamp.now(tz="UTC").floor(parse_duration(self.step)))

    @property
    def scenario(self) -> Scenario:
        return _cached(self.scenario_name, self.seed, self.days, str(self.step), self._end_key())

    def check(self) -> None:
        return None

    def fetch(self, query, start, end, step, *, watch=None, max_series=None) -> SeriesBatch:
        return select_range(
            self.scenario.batch, query, start, end, step, watch=watch, max_series=max_series,
            where=f"the synthetic {self.scenario_name} scenario",
            hint="synthetic metrics: http_requests_per_second, http_requests_total, up, "
            "http_request_duration_seconds, http_errors_ratio, node_filesystem_avail_bytes",
        )
