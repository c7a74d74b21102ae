"""Throughput and memory: fit and inference series/second on synthetic operations series.

    python benchmarks/throughput.py --series 1000 --points 2016 [--device cpu|cuda] [--out results.json]

Series are generated here with a seed (5-minute steps: daily season, weekday effect, noise,
drift, spikes). aiops's forecasters are timed as ``fit``, ``predict(horizon)`` on the fitted history, and
``predict(horizon, batch=frame)`` from the long frame (validation and gridding included, as in
a scheduled run);
statsforecast's MSTL and SeasonalNaive run on the same series in the same process (their
``forecast`` fits and predicts in one call). Peak memory is the process RSS above its level
before each phase (sampled every 5 ms), plus ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pandas as pd

STEP = pd.Timedelta("5min")
DAY = 288


def synthetic(n_series: int, n_points: int, seed: int = 0) -> pd.DataFrame:
    """A long frame of ``n_series`` operations-like series of ``n_points`` 5-minute steps."""
    ids, y = synthetic_values(n_series, n_points, seed)
    ts = pd.date_range("2024-01-01", periods=n_points, freq=STEP, tz="UTC")
    return pd.DataFrame({"series_id": np.repeat(ids, n_points), "ts": np.tile(ts, n_series), "value": y.ravel()})


def synthetic_panel(n_series: int, n_points: int, seed: int = 0, chunk: int = 10_000):
    """The same kind of series as a Panel (no long frame: 100,000 series fit in a few GB)."""
    from aiops.models.data import Panel

    ids, rows = [], []
    for c in range(0, n_series, chunk):
        i, y = synthetic_values(min(chunk, n_series - c), n_points, seed + 1 + c // chunk, first=c)
        ids += [f"unseen_{v}" for v in i]  # none of them was fitted
        rows += list(y)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    return Panel(ids, [start] * n_series, STEP, rows)


def synthetic_values(n_series: int, n_points: int, seed: int = 0, first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Series ids and an ``(n_series, n_points)`` array of values (see :func:`synthetic`)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_points)
    level = rng.lognormal(3, 1, (n_series, 1))
    amp = rng.uniform(0.1, 0.6, (n_series, 1))
    phase = rng.uniform(0, 2 * np.pi, (n_series, 1))
    daily = np.sin(2 * np.pi * t / DAY + phase)
    weekday = np.where((t // DAY) % 7 >= 5, rng.uniform(0.6, 1.0, (n_series, 1)), 1.0)
    drift = np.cumsum(rng.normal(0, 0.002, (n_series, n_points)), axis=1)
    noise = rng.normal(0, rng.uniform(0.02, 0.15, (n_series, 1)), (n_series, n_points))
    y = level * weekday * (1 + amp * daily + drift + noise)
    spikes = rng.random((n_series, n_points)) < 0.002
    y = np.where(spikes, y * rng.uniform(1.5, 3, (n_series, n_points)), y)
    ids = np.array([f'synthetic{{series="{i}"}}' for i in range(first, first + n_series)])
    return ids, y


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def measure(out: dict, key: str, device: str) -> Iterator[None]:
    """Wall time and peak RSS (and CUDA memory) above the starting point of the block."""
    gc.collect()
    base, peak, stop = _rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    cuda = device == "cuda"
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    th.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize()
        out[f"{key}_s"] = time.perf_counter() - t0
        stop.set()
        th.join()
        out[f"{key}_peak_rss_mb"] = max(peak[0], _rss()) / 2**20 - base / 2**20
        if cuda:
            out[f"{key}_cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20


def run_aiops(frame: pd.DataFrame, model: str, horizon: int, device: str, n: int, threads: int | None = None,
              predict_panel=None) -> dict:
    from aiops.models import get_model

    klass = get_model(model)
    defaults = getattr(klass, "DEFAULTS", {})
    params = {"device": device} if "device" in defaults else {}
    if threads is not None and "threads" in defaults:
        params["threads"] = threads
    res: dict = {"params": params}
    m = klass(level=0.8, seed=0, **params)
    if hasattr(m, "horizon"):
        m.horizon = horizon
    with measure(res, "fit", device):
        m.fit(frame, step=STEP)
    with measure(res, "predict", device):
        fc = m.predict(horizon)
    # what a scheduled run does: the fetched long frame in (validated, put on grids), forecasts out
    with measure(res, "predict_frame", device):
        m.predict(horizon, batch=frame)
    res["fit_series_per_s"] = n / res["fit_s"]
    res["predict_series_per_s"] = n / res["predict_s"]
    res["predict_frame_series_per_s"] = n / res["predict_frame_s"]
    if predict_panel is not None and getattr(klass, "GLOBAL", False) and model != "auto":
        # inference at a larger scale than the fit, from gridded series the model has not seen
        # (a global model forecasts them as they are; ``auto`` would fit its baseline on each)
        m.panel_ = predict_panel
        with measure(res, "predict_large", device):
            m.predict(horizon)
        res["predict_large_series"] = len(predict_panel)
        res["predict_large_series_per_s"] = len(predict_panel) / res["predict_large_s"]
    res["total_series_per_s"] = n / (res["fit_s"] + res["predict_s"])
    res["finite_share"] = float(np.isfinite(fc["yhat"]).mean())
    net = getattr(m, "neural_", m)
    if hasattr(net, "steps_"):  # training steps run (early stopping) and series the net serves
        res["train_steps"] = int(net.steps_)
        res["served_by_neural"] = (sum(st.get("model") == "neural" for st in m.series_.values()) / len(m.series_)
                                   if net is not m else 1.0)
    return res


def run_statsforecast(frame: pd.DataFrame, kind: str, horizon: int, n: int, n_jobs: int) -> dict:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, SeasonalNaive

    model = MSTL(season_length=DAY) if kind == "MSTL" else SeasonalNaive(season_length=DAY)
    ids = frame["series_id"].unique()[:n]
    df = frame[frame["series_id"].isin(ids)].rename(columns={"series_id": "unique_id", "ts": "ds", "value": "y"})
    df["ds"] = df["ds"].dt.tz_localize(None)
    res: dict = {"series": int(len(ids)), "n_jobs": n_jobs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # numba compiles on first use; keep that out of the timing (workers fork afterwards)
        StatsForecast(models=[model], freq="5min", n_jobs=1).forecast(
            h=horizon, df=df[df["unique_id"] == ids[0]], level=[80])
        with measure(res, "fit_predict", "cpu"):
            StatsForecast(models=[model], freq="5min", n_jobs=n_jobs).forecast(h=horizon, df=df, level=[80])
    res["total_series_per_s"] = len(ids) / res["fit_predict_s"]
    if n_jobs != 1:  # the work ran in worker processes, whose memory this process cannot see
        res["fit_predict_peak_rss_mb"] = None
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--points", type=int, default=2016)
    ap.add_argument("--horizon", type=int, default=DAY)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--models", default="auto", help="aiops model kinds, comma-separated")
    ap.add_argument("--baselines", default="SeasonalNaive,MSTL", help="statsforecast models ('' for none)")
    ap.add_argument("--baseline-series", type=int, default=200,
                    help="series given to statsforecast (MSTL is slow; series/s is per series)")
    ap.add_argument("--n-jobs", type=int, default=-1, help="statsforecast processes (-1: all cores)")
    ap.add_argument("--threads", type=int, help="torch CPU threads for the neural models (default: the model's, 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predict-series", type=int,
                    help="also time predict() of the global neural model on this many other series (made as "
                    "arrays, no long frame), fitted on --series: inference at scales whose long frame would not fit "
                    "in memory")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _common.setup_logging(args.verbose)

    t0 = time.perf_counter()
    frame = synthetic(args.series, args.points, args.seed)
    print(f"{args.series} series x {args.points} points generated in {time.perf_counter() - t0:.1f} s")
    big = None
    if args.predict_series:
        t0 = time.perf_counter()
        big = synthetic_panel(args.predict_series, args.points, args.seed)
        print(f"{args.predict_series} more series generated as arrays in {time.perf_counter() - t0:.1f} s")
    results: dict[str, dict] = {}
    for model in filter(None, args.models.split(",")):
        r = run_aiops(frame, model, args.horizon, args.device, args.series, args.threads, big)
        results[f"aiops:{model}"] = r
        print(f"aiops {model}: fit {r['fit_series_per_s']:.1f} series/s ({r['fit_peak_rss_mb']:.0f} MB), "
              f"predict {r['predict_series_per_s']:.1f} series/s ({r['predict_peak_rss_mb']:.0f} MB), "
              f"predict from the frame {r['predict_frame_series_per_s']:.1f} series/s"
              + (f", predict on {r['predict_large_series']} series {r['predict_large_series_per_s']:.1f} series/s "
                 f"({r['predict_large_peak_rss_mb']:.0f} MB)" if "predict_large_s" in r else ""))
    for kind in filter(None, args.baselines.split(",")):
        r = run_statsforecast(frame, kind, args.horizon, min(args.baseline_series, args.series), args.n_jobs)
        results[f"statsforecast:{kind}"] = r
        print(f"statsforecast {kind}: {r['total_series_per_s']:.1f} series/s fit+predict on {r['series']} series")

    print()
    print("| forecaster | fit series/s | predict series/s | predict from frame series/s | fit+predict series/s "
          "| peak RSS MB/1k series |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        n = r.get("series", args.series)
        peaks = [v for k, v in r.items() if k.endswith("peak_rss_mb") and v is not None]
        peak = f"{1000 * max(peaks) / n:.0f}" if peaks else "n/a (n_jobs != 1)"
        fit = f"{r['fit_series_per_s']:.1f}" if "fit_series_per_s" in r else "-"
        pred = f"{r['predict_series_per_s']:.1f}" if "predict_series_per_s" in r else "-"
        pf = f"{r['predict_frame_series_per_s']:.1f}" if "predict_frame_series_per_s" in r else "-"
        print(f"| {name} | {fit} | {pred} | {pf} | {r['total_series_per_s']:.1f} | {peak} |")
    mstl = results.get("statsforecast:MSTL")
    if mstl:
        for name, r in results.items():
            if name.startswith("aiops:"):
                ratio = r["total_series_per_s"] / mstl["total_series_per_s"]
                r["speedup_vs_mstl"] = ratio
                print(f"{name} fit+predict is {ratio:.1f}x MSTL's series/s")
    if args.out:
        _common.write_json(args.out, {"benchmark": "throughput", "machine": _common.machine(),
                                      "series": args.series, "points": args.points, "horizon": args.horizon,
                                      "device": args.device, "results": results})


if __name__ == "__main__":
    main()
