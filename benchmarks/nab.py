"""NAB benchmark: causal anomaly scores on every file, scored under NAB's three profiles.

    python benchmarks/nab.py --data /path/to/nab [--limit N] [--out results.json]

``--data`` is a NAB folder (``data/``, ``labels/combined_windows.json``, ``config/profiles.json``).
Each file is one series, scored causally by ``aiops.models.detect_frame``; two cheap baselines
(NAB's windowed Gaussian and a rolling robust z-score) run in the same process for context.
``aiops_onset`` (not run by default: ``--detectors aiops,aiops_onset``) keeps aiops's scores only
where they beat the previous day's maximum; since aiops's own score counts only new
information above the band edge (``aiops.models.calibrate``), it mostly repeats ``aiops``.
Scoring is :mod:`aiops.eval.nab` (one threshold per detector and profile, optimised over the files).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable

import _common  # noqa: F401  (puts the repo on sys.path)
import numpy as np
import pandas as pd

from aiops.eval.nab import evaluate, load_corpus

Detector = Callable[[pd.DataFrame], np.ndarray]


def windowed_gaussian(frame: pd.DataFrame, window: int = 6400) -> np.ndarray:
    """NAB's windowed Gaussian baseline: tail probability of x under the last ``window`` values."""
    x = frame["value"].to_numpy(dtype="float64")
    n = x.size
    c1 = np.concatenate([[0.0], np.cumsum(x)])
    c2 = np.concatenate([[0.0], np.cumsum(x * x)])
    t = np.arange(n)
    lo = np.maximum(t - window, 0)
    cnt = np.maximum(t - lo, 1)
    mean = (c1[t] - c1[lo]) / cnt
    var = np.maximum((c2[t] - c2[lo]) / cnt - mean ** 2, 0.0)
    std = np.where(var > 0, np.sqrt(var), 1e-6)
    z = np.abs(x - mean) / std
    score = 1.0 - 0.5 * np.array([math.erfc(v / math.sqrt(2)) for v in z])
    score[0] = 0.0
    return score


def robust_z(frame: pd.DataFrame, window: int = 288) -> np.ndarray:
    """|x - rolling median| / rolling MAD of the previous ``window`` rows (causal)."""
    x = frame["value"].astype("float64")
    past = x.shift(1).rolling(window, min_periods=10)
    med = past.median()
    mad = (x.shift(1) - med).abs().rolling(window, min_periods=10).median()
    spread = 1.4826 * mad + 0.1 * past.std() + 1e-9  # flat stretches have MAD 0
    return ((x - med).abs() / spread).to_numpy()


def onset_only(scores: np.ndarray, ts: pd.Series, hold: str = "1D") -> np.ndarray:
    """Keep a row's score only when it beats every score of the preceding ``hold`` (causal).

    An alert fires once per incident: repeated high scores right after a higher one are not
    new detections. NAB counts every row above the threshold, so this shows how much of a
    detector's loss comes from re-firing rather than from missing or mistiming anomalies.
    """
    s = pd.Series(np.nan_to_num(np.asarray(scores, dtype="float64"), nan=-np.inf), index=pd.DatetimeIndex(ts))
    prev_max = s.shift(1).rolling(hold, min_periods=1).max().to_numpy()
    out = np.where(np.nan_to_num(prev_max, nan=-np.inf) < s.to_numpy(), s.to_numpy(), 0.0)
    return np.where(np.isfinite(out), out, 0.0)


def aiops_detector(level: float, model: str) -> Detector | None:
    detect_frame = _common.aiops_api("detect_frame")
    if detect_frame is None:
        return None

    def run(frame: pd.DataFrame) -> np.ndarray:
        long = pd.DataFrame({"series_id": "nab_value", "ts": frame["ts"], "value": frame["value"]})
        out = detect_frame(long, level=level, model=model, seed=0)
        if len(out) == len(frame) and (out["ts"].to_numpy() == frame["ts"].to_numpy()).all():
            return out["anomaly_score"].to_numpy(dtype="float64")  # one row per input row, in order
        out = out.sort_values("ts", kind="stable")[["ts", "anomaly_score"]]
        # Align on each input row; a regridded output row at or before it (causal), within a step.
        tol = pd.Series(frame["ts"]).diff().median()
        got = pd.merge_asof(frame[["ts"]], out, on="ts", direction="backward", tolerance=tol)
        return got["anomaly_score"].to_numpy(dtype="float64")

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="NAB folder with data/, labels/, config/")
    ap.add_argument("--limit", type=int, help="first N files only (quick check)")
    ap.add_argument("--only", nargs="*", help="files whose name contains one of these")
    ap.add_argument("--detectors", default="aiops,windowed_gaussian,robust_z")
    ap.add_argument("--level", type=float, default=0.8, help="band level passed to detect_frame")
    ap.add_argument("--model", default="auto", help="model passed to detect_frame")
    ap.add_argument("--out", help="write results JSON here")
    ap.add_argument("--save-scores", help="write NAB-format per-file score CSVs under this folder")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    _common.setup_logging(args.verbose)

    corpus = load_corpus(args.data, limit=args.limit, only=args.only)
    layouts = corpus.layouts()
    n_rows = sum(len(f) for f in corpus.frames.values())
    print(f"{len(corpus.frames)} files, {n_rows} rows, {sum(map(len, corpus.windows.values()))} windows")

    detectors: dict[str, Detector | None] = {
        "aiops": aiops_detector(args.level, args.model),
        "windowed_gaussian": windowed_gaussian,
        "robust_z": robust_z,
    }
    if detectors["aiops"] is not None:
        base = detectors["aiops"]
        detectors["aiops_onset"] = lambda f: onset_only(base(f), f["ts"])
    results: dict[str, dict] = {}
    for name in args.detectors.split(","):
        det = detectors.get(name)
        if det is None:
            print(f"{name}: not available, skipped")
            continue
        scores, per_file_s = {}, {}
        t0, c0 = time.perf_counter(), time.process_time()
        for fname, frame in corpus.frames.items():
            t1 = time.perf_counter()
            scores[fname] = det(frame)
            per_file_s[fname] = time.perf_counter() - t1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if args.save_scores:
            for fname, frame in corpus.frames.items():
                d, f = fname.rsplit("/", 1) if "/" in fname else ("", fname)
                path = Path(args.save_scores, name, d, f"{name}_{f}")
                path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"timestamp": frame["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"), "value": frame["value"],
                              "anomaly_score": scores[fname]}).to_csv(path, index=False)
        missing = int(sum(np.isnan(s).sum() for s in scores.values()))
        res = evaluate(scores, layouts, corpus.profiles)
        results[name] = {
            "wall_s": wall,
            "cpu_s": cpu,  # this process's CPU time: steadier than wall time on a shared machine
            "rows_per_s": n_rows / wall if wall > 0 else None,
            "median_file_s": float(np.median(list(per_file_s.values()))),
            "rows_without_score": missing,
            "profiles": {p: {"normalized": r.normalized, "raw": r.raw, "threshold": r.threshold,
                             "null": r.null, "perfect": r.perfect, **r.totals()} for p, r in res.items()},
            "files_raw_standard": {f: s.raw for f, s in res["standard"].files.items()} if "standard" in res else {},
            "file_seconds": per_file_s,
        }

    profiles = list(corpus.profiles)
    print()
    print(f"{'detector':<20}" + "".join(f"{p:>20}" for p in profiles) + f"{'wall s':>10}{'cpu s':>10}{'no score':>10}")
    for name, r in results.items():
        cells = "".join(f"{r['profiles'][p]['normalized']:>20.1f}" for p in profiles)
        print(f"{name:<20}{cells}{r['wall_s']:>10.1f}{r['cpu_s']:>10.1f}{r['rows_without_score']:>10d}")
    for name, r in results.items():
        t = r["profiles"].get("standard")
        if t:
            print(f"{name}: standard threshold {t['threshold']:.4g}, windows hit {t['tp_windows']}, "
                  f"missed {t['fn_windows']}, FP rows {t['fp_rows']}")
    if args.out:
        _common.write_json(args.out, {"benchmark": "nab", "machine": _common.machine(),
                                      "files": len(corpus.frames), "rows": n_rows, "detectors": results})


if __name__ == "__main__":
    main()
