"""Executors (issue 8): shards by a stable hash, the local executor, and Ray giving the same
answers as one process, including after a Ray worker is killed mid-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from aiops.config import validate_config
from aiops.errors import ConfigError
from aiops.executors import (
    ExecutorError, LocalExecutor, RayExecutor, executor_for, merge_shards, shard_of, split_batch,
)
from aiops.pipeline import Stages, fetch_watch, run_watch, score_watch
from aiops.sources.base import make_source
from aiops.store import Store, output_points, output_series
from aiops.types import SeriesBatch

END = pd.Timestamp("2026-01-10", tz="UTC")
SHARD_SIZE = 2  # 7 shop services -> 4 hash shards, so sharding matters


def config(tmp_path: Path, **executor):
    """The synthetic shop with a small neural forecaster: seeded, global per shard, fast."""
    return validate_config({
        "source": {"kind": "synthetic", "synthetic": {"scenario": "shop", "seed": 7, "days": 3,
                                                      "end": "2026-01-10T00:00:00Z"}},
        "store": {"url": f"sqlite:///{tmp_path / 'aiops.db'}"},
        "executor": {"shard_size": SHARD_SIZE, **executor},
        "watches": [{
            "name": "rate", "query": "http_requests_per_second", "step": "5m", "history": "3d", "horizon": "2h",
            "detector": {"threshold": 3.0},
            "model": {"kind": "neural", "params": {"steps": 8, "hidden": 8, "max_context": 96, "batch": 32}},
        }],
    })


def run(cfg, stages: Stages | None = None):
    store = Store.open(cfg.store.url)
    result = run_watch(cfg, cfg.watches[0], source=make_source(cfg), store=store, end=END, stages=stages)
    return result, store


def stored(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every output point (series key, ts, value) and every event, in a fixed order."""
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(output_series.c.key, output_points.c.ts, output_points.c.value)
            .join(output_points, output_points.c.series == output_series.c.id)
        ).all()
    points = pd.DataFrame(rows, columns=["key", "ts", "value"]).sort_values(["key", "ts"], ignore_index=True)
    events = pd.DataFrame([{k: v for k, v in e.to_dict().items() if k not in ("id", "labels")}
                           for e in store.events(limit=10_000)])
    if not events.empty:
        events = events.sort_values(["series_id", "start"], ignore_index=True)
    return points, events


def assert_same_results(a, b) -> None:
    """Two runs agree: scores, forecasts, events, and everything in their stores."""
    ra, sa_ = a
    rb, sb = b
    assert ra.error is None and rb.error is None, (ra.error, rb.error)
    pd.testing.assert_frame_equal(ra.scores, rb.scores, rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(ra.forecast, rb.forecast, rtol=1e-6, atol=1e-9)
    assert [e.to_dict() | {"id": None} for e in ra.events] == [e.to_dict() | {"id": None} for e in rb.events]
    pa, ea = stored(sa_)
    pb, eb = stored(sb)
    assert not pa.duplicated(["key", "ts"]).any()
    pd.testing.assert_frame_equal(pa[["key", "ts"]], pb[["key", "ts"]])
    np.testing.assert_allclose(pa["value"], pb["value"], rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(ea, eb, rtol=1e-6)


# -- sharding -----------------------------------------------------------------------------------


def test_shard_of_is_stable_across_processes_and_spreads_evenly():
    ids = [f'up{{instance="10.0.{i // 256}.{i % 256}:9100"}}' for i in range(2000)]
    here = [shard_of(s, 7) for s in ids[:50]]
    code = ("import sys; from aiops.executors import shard_of; "
            "print(','.join(str(shard_of(l.strip(), 7)) for l in sys.stdin))")
    for salt in ("1", "2"):  # Python's own hash() would differ between these two processes
        out = subprocess.run([sys.executable, "-c", code], input="\n".join(ids[:50]), capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": salt}).stdout
        assert [int(x) for x in out.strip().split(",")] == here
    counts = np.bincount([shard_of(s, 4) for s in ids], minlength=4)
    assert counts.min() > 400 and counts.max() < 600, counts
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("x", 0)


def test_split_batch_covers_every_series_once_and_merge_restores_order(tmp_path):
    cfg = config(tmp_path)
    batch = fetch_watch(cfg, cfg.watches[0], source=make_source(cfg), end=END)
    shards = split_batch(batch, SHARD_SIZE)
    n = -(-len(batch.series_ids) // SHARD_SIZE)
    assert len(shards) > 1
    seen = []
    for k, sub in shards:
        assert set(sub.frame["series_id"]) == set(sub.labels)
        assert all(shard_of(s, n) == k for s in sub.labels)
        seen += list(sub.labels)
    assert sorted(seen) == sorted(batch.series_ids)
    assert sum(len(s.frame) for _, s in shards) == len(batch.frame)
    merged = merge_shards(batch, [s.frame for _, s in reversed(shards)])
    pd.testing.assert_frame_equal(merged, batch.frame.reset_index(drop=True))
    assert split_batch(batch, 1000) == [(0, batch)]


def test_per_series_model_scores_do_not_depend_on_sharding(tmp_path):
    cfg = config(tmp_path)
    watch = cfg.watches[0].model_copy(update={"model": cfg.watches[0].model.model_copy(update={"kind": "robust",
                                                                                               "params": {}})})
    batch = fetch_watch(cfg, watch, source=make_source(cfg), end=END)
    whole = score_watch(batch, watch, LocalExecutor(shard_size=1000))
    sharded = score_watch(batch, watch, LocalExecutor(shard_size=SHARD_SIZE))
    pd.testing.assert_frame_equal(whole, sharded)


def test_executor_config_section(tmp_path):
    assert isinstance(executor_for(config(tmp_path).executor), LocalExecutor)
    assert executor_for(config(tmp_path).executor).shard_size == SHARD_SIZE
    with pytest.raises(ConfigError, match=r"executor: address is only used with kind: ray"):
        config(tmp_path, address="ray://head:10001")
    with pytest.raises(ConfigError, match=r"executor.shard_size"):
        config(tmp_path, shard_size=0)
    with pytest.raises(ConfigError, match=r"unknown key 'gpus'"):
        config(tmp_path, gpus=1)
    ray_cfg = config(tmp_path, kind="ray", address="ray://head:10001", num_gpus=0.5).executor
    ex = executor_for(ray_cfg)
    assert isinstance(ex, RayExecutor) and ex.num_gpus == 0.5 and executor_for(ray_cfg) is ex


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for this module, shut down afterwards."""
    ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: the same scenario in this process with the local executor."""
    return run(config(tmp_path_factory.mktemp("local")))


class RecordWorker:
    """Write the worker's pid per shard into ``folder`` (runs in the Ray worker)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, shard: int) -> None:
        (self.folder / f"shard-{shard}").write_text(str(os.getpid()))


class KillOnce:
    """Kill the Ray worker running ``shard`` the first time it starts (marker file in tmp)."""

    def __init__(self, marker: Path, shard: int):
        self.marker, self.shard = marker, shard

    def __call__(self, shard: int) -> None:
        if shard == self.shard and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-run, as with an OOM kill


def test_ray_gives_the_same_results_as_one_process(ray_local, local_run, tmp_path):
    cfg = config(tmp_path, kind="ray", max_in_flight=2)
    assert len(split_batch(local_run[0].batch, SHARD_SIZE)) > 2  # more shards than slots in flight
    result, store = run(cfg, Stages(executor=RayExecutor.from_config(cfg.executor)))
    assert_same_results(local_run, (result, store))
    assert local_run[0].events, "the scenario should produce events to compare"
    assert [r["status"] for r in store.runs()] == ["ok"]


def test_ray_worker_killed_mid_run_is_retried_without_gaps_or_doubles(ray_local, local_run, tmp_path):
    cfg = config(tmp_path, kind="ray", max_retries=2)
    victim = split_batch(local_run[0].batch, SHARD_SIZE)[-1][0]
    marker = tmp_path / "killed"
    ex = RayExecutor.from_config(cfg.executor, before_shard=KillOnce(marker, victim))
    result, store = run(cfg, Stages(executor=ex))
    assert marker.exists(), "the worker was never killed"
    assert int(marker.read_text()) != os.getpid()
    assert_same_results(local_run, (result, store))


def test_ray_shard_lost_past_retries_is_a_clear_error(ray_local, tmp_path):
    cfg = config(tmp_path, kind="ray", max_retries=0)
    batch = fetch_watch(cfg, cfg.watches[0], source=make_source(cfg), end=END)
    victim = split_batch(batch, SHARD_SIZE)[0][0]
    ex = RayExecutor.from_config(cfg.executor, before_shard=KillOnce(tmp_path / "killed", victim))
    result, store = run(cfg, Stages(executor=ex))
    assert f"shard {victim} of watch rate: its Ray worker died on every attempt (1;" in result.error
    assert "max_retries" in result.error
    assert store.runs()[0]["status"] == "error"
    assert stored(store)[0].empty  # nothing half-written


def test_ray_stage_errors_keep_their_aiops_type(ray_local):
    batch = SeriesBatch(frame=pd.DataFrame({"series_id": ["a"], "ts": [END], "value": [1.0]}),
                        labels={"a": {}}, step=pd.Timedelta("5m"), watch="w")
    with pytest.raises(ConfigError, match="boom"):
        RayExecutor(max_retries=0).map_shards(_raise_config_error, batch)
    with pytest.raises(ExecutorError, match="shard 0 of watch w failed in a Ray worker: division by zero"):
        RayExecutor(max_retries=0).map_shards(_divide_by_zero, batch)


def _raise_config_error(batch, shard):
    raise ConfigError("boom", hint="fix it")


def _divide_by_zero(batch, shard):
    return 1 / 0


def test_serving_model_inference_runs_per_shard_on_ray_with_the_same_answers(ray_local, tmp_path):
    """Once a scheduled fit has produced a serving model, inference still goes through the
    executor: the fitted model travels to each shard; answers do not depend on the sharding or
    on where the shard ran."""
    from aiops.models.api import make_model
    from aiops.pipeline import forecast_watch

    cfg = config(tmp_path, kind="ray")
    watch = cfg.watches[0].model_copy(update={"model": cfg.watches[0].model.model_copy(update={"kind": "auto"})})
    batch = fetch_watch(cfg, watch, source=make_source(cfg), end=END)
    model = make_model("auto", level=0.8, seed=0, params=watch.model.params).fit(batch.frame, step=batch.step)
    whole = (score_watch(batch, watch, LocalExecutor(shard_size=1000), model=model),
             forecast_watch(batch, watch, LocalExecutor(shard_size=1000), model=model))
    ex = RayExecutor.from_config(cfg.executor, before_shard=RecordWorker(tmp_path))
    on_ray = (score_watch(batch, watch, ex, model=model), forecast_watch(batch, watch, ex, model=model))
    shards = {k for k, _ in split_batch(batch, SHARD_SIZE)}
    assert len(shards) > 1
    ran = {int(f.name.split("-")[1]): int(f.read_text()) for f in tmp_path.glob("shard-*")}
    assert set(ran) == shards and os.getpid() not in ran.values()  # every shard ran in a Ray worker
    for a, b in zip(whole, on_ray):
        assert not a.empty and set(a["series_id"]) == set(batch.series_ids)
        pd.testing.assert_frame_equal(a, b, rtol=1e-6, atol=1e-9)
