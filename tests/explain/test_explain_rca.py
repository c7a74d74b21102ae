"""Root-cause ranking: known-answer incidents, the `aiops rca` command, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from aiops.cli import cli
from aiops.errors import InputError
from aiops.explain.rca import RcaParams, ServiceGraph, rank_root_causes
from aiops.sources.synthetic import propagation_hops
from aiops.types import series_id

GRAPH = {"front": ["api"], "api": ["db", "cache"], "db": [], "cache": []}
T0 = pd.Timestamp("2024-05-01T00:00:00Z")
STEP = pd.Timedelta("5m")


def incident_frame(root: str = "db", n: int = 300, start: int = 280, seed: int = 0,
                   chronic: str | None = None) -> pd.DataFrame:
    """Latency and errors of four services; a slowdown at ``root`` reaches each caller one step
    later per hop. ``chronic`` is a service whose latency is off since long before the incident."""
    rng = np.random.default_rng(seed)
    ts = T0 + STEP * np.arange(n)
    hops = propagation_hops(GRAPH, root)
    rows = []
    for svc in GRAPH:
        lat = 0.05 * np.exp(0.05 * rng.standard_normal(n))
        err = np.clip(0.01 + 0.002 * rng.standard_normal(n), 0, None)
        if svc in hops:
            lat[start + hops[svc]:] += 0.4
        if svc == chronic:
            lat[start - 40:] += 0.6 * (1 + 0.3 * rng.standard_normal(n - start + 40))
        for name, v in (("latency_seconds", lat), ("errors_ratio", err)):
            sid = series_id({"__name__": name, "service": svc})
            rows.append(pd.DataFrame({"series_id": sid, "ts": ts, "value": v}))
    return pd.concat(rows, ignore_index=True)


def target_of(svc: str = "front") -> str:
    return series_id({"__name__": "latency_seconds", "service": svc})


@pytest.mark.parametrize("root", ["db", "cache", "api"])
def test_graph_traces_problem_to_the_callee_it_started_in(root):
    frame = incident_frame(root)
    at = T0 + STEP * 280
    ranking = rank_root_causes(frame, target_of(), at, graph=ServiceGraph(GRAPH), group_by="service",
                               params=RcaParams(lookback_steps=3))
    assert ranking[0].name == root
    assert ranking[0].onset == at
    assert {c.name for c in ranking} == set(GRAPH)
    assert any("called by the target's front" in e for e in ranking[0].evidence)


def test_without_graph_earlier_onset_wins():
    frame = incident_frame("db")
    ranking = rank_root_causes(frame, target_of(), T0 + STEP * 280, group_by="service",
                               params=RcaParams(lookback_steps=3))
    assert ranking[0].name == "db"
    onsets = {c.name: c.onset for c in ranking}
    assert onsets["db"] < onsets["api"] < onsets["front"]


def test_series_mode_ranks_series_and_excludes_standing_deviation():
    frame = incident_frame("cache", chronic="db")
    ranking = rank_root_causes(frame, target_of(), T0 + STEP * 280, graph=ServiceGraph(GRAPH),
                               params=RcaParams(lookback_steps=3))
    assert ranking[0].name == target_of("cache")
    names = [c.name for c in ranking]
    # db has been slow for hours: a standing condition, not the cause of this change.
    assert names.index(target_of("db")) > names.index(target_of("api"))


def test_graph_inferred_from_call_labels():
    rng = np.random.default_rng(1)
    ts = T0 + STEP * np.arange(200)
    rows = []
    for src, dst in (("web", "orders"), ("orders", "pg")):
        v = 0.1 * np.exp(0.05 * rng.standard_normal(200))
        if dst in ("orders", "pg"):
            v[190:] += 1.0 if dst == "pg" else 1.2
        sid = series_id({"__name__": "call_seconds", "source_workload": src, "destination_workload": dst})
        rows.append(pd.DataFrame({"series_id": sid, "ts": ts, "value": v}))
    for svc, extra in (("web", 1.3), ("orders", 1.2), ("pg", 1.0)):
        v = 0.1 * np.exp(0.05 * rng.standard_normal(200))
        v[190:] += extra
        rows.append(pd.DataFrame({"series_id": series_id({"__name__": "svc_seconds", "source_workload": svc}),
                                  "ts": ts, "value": v}))
    frame = pd.concat(rows, ignore_index=True)
    g = ServiceGraph.infer([{"source_workload": "web", "destination_workload": "orders"}])
    assert g is not None and g.callees("web") == ["orders"]
    ranking = rank_root_causes(frame, series_id({"__name__": "svc_seconds", "source_workload": "web"}),
                               T0 + STEP * 190, group_by="source_workload")
    assert ranking[0].name == "pg"


def test_synthetic_shop_known_answer():
    synthetic = pytest.importorskip("aiops.sources.synthetic")
    for seed in (0, 1, 2):  # db, payment, inventory
        sc = synthetic.generate_scenario("shop", seed=seed, days=3, end="2024-03-01T00:00:00Z")
        inc = sc.incidents[0]
        target = series_id({"__name__": "http_request_duration_seconds", "service": "frontend",
                            "quantile": "0.9", "job": "shop"})
        at = inc.affected[target]  # the frontend's onset: later than the root's
        ranking = rank_root_causes(sc.batch.frame, target, at, labels=sc.batch.labels,
                                   graph=ServiceGraph(sc.graph), group_by="service",
                                   params=RcaParams(lookback_steps=4))
        assert ranking[0].name == inc.root_cause, (seed, [c.name for c in ranking[:3]])


# --------------------------------------------------------------------------- the command


def write_long_csv(path, frame: pd.DataFrame, iso: bool = True) -> None:
    out = pd.DataFrame({
        "timestamp": frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S") if iso else frame["ts"].astype("int64") // 10**9,
        "series": frame["series_id"], "value": frame["value"]})
    out.to_csv(path, index=False)


def write_graph(path, graph: dict[str, list[str]]) -> None:
    nodes = list(graph)
    m = pd.DataFrame(0, index=nodes, columns=nodes)
    for a, cs in graph.items():
        for c in cs:
            m.loc[a, c] = 1
    m.to_csv(path)


def test_rca_command_end_to_end(tmp_path):
    write_long_csv(tmp_path / "long.csv", incident_frame("cache"), iso=True)
    write_graph(tmp_path / "graph.csv", GRAPH)
    out = tmp_path / "ranking.json"
    res = CliRunner().invoke(cli, [
        "rca", "--input", str(tmp_path / "long.csv"), "--target", 'latency_seconds{service="front"}',
        "--at", (T0 + STEP * 280).strftime("%Y-%m-%dT%H:%M:%S"), "--graph", str(tmp_path / "graph.csv"),
        "--group-by", "service", "--lookback", "15m", "--output", str(out)])
    assert res.exit_code == 0, res.output
    ranking = json.loads(out.read_text())
    assert [set(c) for c in ranking] == [{"name", "score", "onset", "evidence"}] * len(ranking)
    assert ranking[0]["name"] == "cache"
    assert ranking[0]["onset"].startswith("2024-05-01T23:20:00")
    assert all(a["score"] >= b["score"] for a, b in zip(ranking, ranking[1:]))


def test_rca_command_unix_times_and_stdout(tmp_path):
    write_long_csv(tmp_path / "long.csv", incident_frame("db"), iso=False)
    at = str(int((T0 + STEP * 280).timestamp()))
    res = CliRunner().invoke(cli, ["rca", "--input", str(tmp_path / "long.csv"),
                                   "--target", 'latency_seconds{service="front"}', "--at", at, "--lookback", "15m"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["name"] == 'latency_seconds{service="db"}'


@pytest.mark.parametrize("case,message", [
    ("columns", "expected columns"),
    ("target", "is not in the input"),
    ("at", "cannot parse time"),
    ("graph_nodes", "do not match the data"),
    ("graph_square", "must name the same nodes"),
    ("group_by", "no label 'pod'"),
])
def test_rca_command_bad_input(tmp_path, case, message):
    write_long_csv(tmp_path / "long.csv", incident_frame("db", n=60, start=50))
    write_graph(tmp_path / "graph.csv", GRAPH)
    args = ["rca", "--input", str(tmp_path / "long.csv"), "--target", 'latency_seconds{service="front"}',
            "--at", (T0 + STEP * 50).isoformat()]
    if case == "columns":
        pd.DataFrame({"time": [1], "value": [2]}).to_csv(tmp_path / "long.csv", index=False)
    elif case == "target":
        args[4] = 'latency_seconds{service="frnt"}'
    elif case == "at":
        args[6] = "yesterday-ish"
    elif case == "graph_nodes":
        write_graph(tmp_path / "other.csv", {"x": ["y"], "y": []})
        args += ["--graph", str(tmp_path / "other.csv"), "--group-by", "service"]
    elif case == "graph_square":
        (tmp_path / "bad.csv").write_text(",a,b\na,0,1\nc,0,0\n")
        args += ["--graph", str(tmp_path / "bad.csv")]
    elif case == "group_by":
        args += ["--group-by", "pod"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_unknown_target_suggests_close_names():
    frame = incident_frame("db", n=60, start=50)
    with pytest.raises(InputError) as exc:
        rank_root_causes(frame, 'latency_seconds{service="fronts"}', T0 + STEP * 50)
    assert "front" in (exc.value.hint or "")


def test_label_order_of_target_does_not_matter():
    frame = incident_frame("db", n=60, start=50)
    frame["series_id"] = frame["series_id"].str.replace('{service="front"}', '{ service="front" }', regex=False)
    ranking = rank_root_causes(frame, 'latency_seconds{service="front"}', T0 + STEP * 50,
                               params=RcaParams(lookback_steps=3))
    assert ranking
