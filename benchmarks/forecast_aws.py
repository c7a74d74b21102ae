"""Rolling-origin forecast benchmark on operations series (BENCHMARKS.md section 2).

    python benchmarks/forecast_aws.py --data /path/to/nab/data/realAWSCloudwatch [--out results.json]

Every CSV (``timestamp,value``) under ``--data`` is one series. aiops's ``forecast_frame`` and
statsforecast's SeasonalNaive(m), AutoETS (season capped at 24) and MSTL(m) run side by side on
the same origins; MASE, 80% coverage, width/scale and time are reported per forecaster.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Callable

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pandas as pd

from aiops.eval.forecast import OriginScore, horizon, origins, regularize, score_origin, season_length, summarize
from aiops.timeutil import parse_timestamps

logger = logging.getLogger("benchmarks.forecast_aws")
LEVEL = 80
# history values, history timestamps, step, m, h -> yhat, lower, upper
Forecaster = Callable[[np.ndarray, pd.DatetimeIndex, pd.Timedelta, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


def aiops_forecaster(model: str) -> Forecaster | None:
    forecast_frame = _common.aiops_api("forecast_frame")
    if forecast_frame is None:
        return None

    def run(y, ts, step, m, h):
        frame = pd.DataFrame({"series_id": "aws", "ts": ts, "value": y})
        out = forecast_frame(frame, h, step=step, level=LEVEL / 100, model=model, seed=0)
        out = out[out["ts"] > ts[-1]].sort_values("ts").head(h)
        if len(out) < h:
            raise RuntimeError(f"forecast_frame returned {len(out)} future rows for horizon {h}")
        return (out["yhat"].to_numpy(), out["yhat_lower"].to_numpy(), out["yhat_upper"].to_numpy())

    return run


def statsforecast_forecaster(kind: str) -> Forecaster:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, SeasonalNaive

    def run(y, ts, step, m, h):
        model = {"SeasonalNaive": lambda: SeasonalNaive(season_length=m),
                 "AutoETS": lambda: AutoETS(season_length=min(m, 24)),
                 "MSTL": lambda: MSTL(season_length=m)}[kind]()
        df = pd.DataFrame({"unique_id": "s", "ds": np.arange(y.size), "y": y})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = StatsForecast(models=[model], freq=1).forecast(h=h, df=df, level=[LEVEL])
        col = [c for c in fc.columns if c not in ("unique_id", "ds") and "-lo-" not in c and "-hi-" not in c][0]
        return fc[col].to_numpy(), fc[f"{col}-lo-{LEVEL}"].to_numpy(), fc[f"{col}-hi-{LEVEL}"].to_numpy()

    return run


def load_series(folder: str | Path, limit: int | None = None) -> dict[str, tuple[pd.DatetimeIndex, np.ndarray, pd.Timedelta]]:
    files = sorted(Path(folder).glob("*.csv"))[:limit]
    if not files:
        raise SystemExit(f"no CSV files under {folder}")
    out = {}
    for path in files:
        raw = pd.read_csv(path)
        ts, _ = parse_timestamps(raw["timestamp"])
        out[path.name] = regularize(ts, raw["value"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of timestamp,value CSVs (NAB realAWSCloudwatch)")
    ap.add_argument("--limit", type=int, help="first N files only")
    ap.add_argument("--forecasters", default="aiops,SeasonalNaive,AutoETS,MSTL")
    ap.add_argument("--model", default="auto", help="model passed to forecast_frame")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _common.setup_logging(args.verbose)

    series = load_series(args.data, args.limit)
    makers = {"aiops": lambda: aiops_forecaster(args.model)}
    for kind in ("SeasonalNaive", "AutoETS", "MSTL"):
        makers[kind] = lambda kind=kind: statsforecast_forecaster(kind)

    results = {}
    for name in args.forecasters.split(","):
        fc = makers[name]()
        if fc is None:
            print(f"{name}: not available, skipped")
            continue
        per_file: dict[str, list[OriginScore]] = {}
        failures = []
        t0 = time.perf_counter()
        for fname, (grid, y, step) in series.items():
            m = season_length(step)
            h = horizon(y.size, m)
            per_file[fname] = []
            logger.info("%s: %s (%d points, m=%d, H=%d)", name, fname, y.size, m, h)
            for o in origins(y.size, h):
                try:
                    yhat, lo, hi = fc(y[:o], grid[:o], step, m, h)
                except Exception as exc:  # noqa: BLE001 - a failure is a result here
                    failures.append(f"{fname}@{o}: {exc}")
                    logger.warning("%s failed on %s at origin %d: %s", name, fname, o, exc)
                    continue
                per_file[fname].append(score_origin(y[:o], y[o:o + h], np.asarray(yhat, float),
                                                    np.asarray(lo, float), np.asarray(hi, float), m))
        wall = time.perf_counter() - t0
        per_file = {k: v for k, v in per_file.items() if v}
        summary = summarize(per_file)
        summary.update(time_s=wall, failures=failures,
                       per_file_mase={k: float(np.nanmean([o.mase for o in v])) for k, v in per_file.items()})
        results[name] = summary
        print(f"{name}: MASE geo {summary['mase_geo']:.3f} mean {summary['mase_mean']:.3f} "
              f"coverage {summary['coverage']:.2f} width/scale {summary['width']:.2f} in {wall:.1f} s")

    print()
    print(f"| forecaster | MASE geo-mean | MASE mean | {LEVEL}% coverage | width/scale | time |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['mase_geo']:.3f} | {r['mase_mean']:.3f} | {r['coverage']:.2f} | "
              f"{r['width']:.2f} | {r['time_s']:.1f} s |")
    if args.out:
        _common.write_json(args.out, {"benchmark": "forecast_aws", "machine": _common.machine(),
                                      "series": len(series), "forecasters": results})


if __name__ == "__main__":
    main()
