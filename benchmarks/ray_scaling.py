"""Throughput of the pipeline's model stages against the number of Ray workers.

    python benchmarks/ray_scaling.py --series 200 --points 2016 --shard-size 25 --workers 1,2 [--out results.json]

The stages timed are the ones the executor runs per shard in ``aiops.pipeline.run_watch``:
the causal backtest score (``score_watch``) and the horizon forecast (``forecast_watch``), on
seeded synthetic 5-minute series (``benchmarks/throughput.py``'s generator). They run once
with the local executor (this process) and, for each worker count W, on a fresh local Ray
started with ``num_cpus=W`` (one CPU per shard task, so W shards run at once; with
``--num-gpus`` each task also requests that share of a GPU, which Ray detects by itself). Ray start-up
and worker warm-up (importing torch and aiops in each worker) are timed apart from the run.
Every Ray run is checked against the local one (max abs difference of forecasts and scores),
so a speed-up that changed the answers would show.
"""

from __future__ import annotations

import argparse
import importlib
import time

import _common
import numpy as np
import pandas as pd
from throughput import STEP, synthetic

from aiops.config import WatchConfig
from aiops.executors import LocalExecutor, RayExecutor, split_batch
from aiops.pipeline import forecast_watch, score_watch
from aiops.types import SeriesBatch


def _warm(batch: SeriesBatch, shard: int) -> pd.DataFrame:
    importlib.import_module("aiops.models.neural")  # torch and the models, as a real shard imports them
    return batch.frame.head(0)


def run_stages(batch: SeriesBatch, watch: WatchConfig, executor) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    t0 = time.perf_counter()
    scores = score_watch(batch, watch, executor)
    t1 = time.perf_counter()
    forecast = forecast_watch(batch, watch, executor)
    t2 = time.perf_counter()
    n = len(batch.series_ids)
    return {"score_s": t1 - t0, "forecast_s": t2 - t1, "total_s": t2 - t0,
            "series_per_s": n / (t2 - t0)}, scores, forecast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--points", type=int, default=2016)
    ap.add_argument("--horizon", default="1d")
    ap.add_argument("--model", default="auto", help="model kind (auto: global neural forecast, robust scores)")
    ap.add_argument("--shard-size", type=int, default=25)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts (CPUs of the local Ray), comma-separated")
    ap.add_argument("--num-gpus", type=float, default=0.0,
                    help="GPUs per shard task (on a GPU machine: 1, or 0.5 for two shards per GPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _common.setup_logging(args.verbose)
    import ray

    frame = synthetic(args.series, args.points, args.seed)
    batch = SeriesBatch(frame=frame, labels={s: {"series": s} for s in pd.unique(frame["series_id"])},
                        step=STEP, watch="bench")
    watch = WatchConfig(name="bench", query="synthetic", step="5m", history=f"{args.points * 5}m",
                        horizon=args.horizon, model={"kind": args.model})
    shards = len(split_batch(batch, args.shard_size))
    print(f"{args.series} series x {args.points} points, {shards} shards of about {args.shard_size}")

    local, ref_scores, ref_fc = run_stages(batch, watch, LocalExecutor(shard_size=args.shard_size))
    print(f"local executor: {local['total_s']:.1f} s, {local['series_per_s']:.2f} series/s")
    results = {"local": local}
    for w in [int(x) for x in args.workers.split(",") if x]:
        t0 = time.perf_counter()
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False, configure_logging=False)
        t1 = time.perf_counter()
        ex = RayExecutor(shard_size=args.shard_size, max_in_flight=2 * w, num_gpus=args.num_gpus)
        ray.get([ray.remote(num_cpus=1)(_warm).remote(batch, k) for k in range(w)])
        t2 = time.perf_counter()
        r, scores, fc = run_stages(batch, watch, ex)
        r.update(ray_init_s=t1 - t0, warmup_s=t2 - t1, per_worker_series_per_s=r["series_per_s"] / w,
                 speedup_vs_local=local["total_s"] / r["total_s"],
                 max_abs_diff_forecast=float(np.nanmax(np.abs(fc[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()
                                                            - ref_fc[["yhat", "yhat_lower", "yhat_upper"]].to_numpy()))),
                 max_abs_diff_score=float(np.nanmax(np.abs(scores["anomaly_score"].to_numpy()
                                                         - ref_scores["anomaly_score"].to_numpy()))))
        ray.shutdown()
        results[f"ray_{w}"] = r
        print(f"ray, {w} worker(s): {r['total_s']:.1f} s ({r['score_s']:.1f} score + {r['forecast_s']:.1f} forecast), "
              f"{r['series_per_s']:.2f} series/s, {r['speedup_vs_local']:.2f}x local; start {r['ray_init_s']:.1f} s + "
              f"warm-up {r['warmup_s']:.1f} s; max |diff| forecast {r['max_abs_diff_forecast']:.2g}, "
              f"score {r['max_abs_diff_score']:.2g}")
    if args.out:
        _common.write_json(args.out, {"machine": _common.machine(), "series": args.series, "points": args.points,
                                      "shard_size": args.shard_size, "shards": shards, "model": args.model,
                                      "results": results})


if __name__ == "__main__":
    main()
