"""Root-cause ranking on the PetShop dataset, through ``aiops rca`` (BENCHMARKS.md section 3).

Each incident becomes one long CSV (``timestamp,series,value``): the scenario's normal period,
re-timed to end one 5-minute step before the incident window, then the window. Series ids are
``<metric>{node="<microservice>",statistic="<statistic>"}``. ``aiops rca`` ranks the nodes
(``--group-by node``) with the scenario's ``graph.csv``; we score top-1 and top-3 recall of
the root-cause node per scenario and alerting metric.

    python benchmarks/petshop.py --data /work/shared/data/petshop [--split train] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEP = 300  # seconds


def read_metrics(path: Path) -> pd.DataFrame:
    """A PetShop metrics.csv: three header rows (microservice, metric, statistic), unix index."""
    df = pd.read_csv(path, header=[0, 1, 2], index_col=0)
    df.index = df.index.astype("float64")
    return df


def to_long(df: pd.DataFrame) -> pd.DataFrame:
    from aiops.types import series_id

    ids = [series_id({"__name__": m, "node": n, "statistic": s}) for n, m, s in df.columns]
    wide = df.copy()
    wide.columns = ids
    wide.index.name = "timestamp"
    long = wide.reset_index().melt(id_vars="timestamp", var_name="series", value_name="value")
    return long.dropna(subset=["value"])


def incident_csv(normal: pd.DataFrame, window: pd.DataFrame, path: Path) -> None:
    """History re-timed to end one step before the window, followed by the window."""
    shift = (window.index.min() - STEP) - normal.index.max()
    hist = normal.copy()
    hist.index = hist.index + shift
    long = pd.concat([to_long(hist), to_long(window)], ignore_index=True)
    long["timestamp"] = long["timestamp"].round().astype("int64")
    long.to_csv(path, index=False)


def run_rca(runner, args: list[str]):
    from aiops.cli import cli

    res = runner.invoke(cli, ["rca", *args], catch_exceptions=False)
    if res.exit_code != 0:
        raise RuntimeError(f"aiops rca failed ({res.exit_code}): {res.output}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="PetShop dataset folder (holding <scenario>/graph.csv).")
    ap.add_argument("--split", default="train", help="Split folder inside each scenario (train, test).")
    ap.add_argument("--scenarios", nargs="*", help="Scenario folders (default: every one with graph.csv).")
    ap.add_argument("--json", dest="json_out", help="Write per-incident results and the summary here.")
    ap.add_argument("--subprocess", action="store_true", help="Run `python -m aiops rca` per incident.")
    args = ap.parse_args(argv)

    import subprocess

    from click.testing import CliRunner

    data = Path(args.data)
    scenarios = args.scenarios or sorted(p.parent.name for p in data.glob("*/graph.csv"))
    if not scenarios:
        print(f"no <scenario>/graph.csv under {data}", file=sys.stderr)
        return 2
    runner = CliRunner()
    rows = []
    t0 = time.perf_counter()
    rca_times = []
    with tempfile.TemporaryDirectory() as tmp:
        for scen in scenarios:
            base = data / scen
            normal = read_metrics(base / "noissue" / "metrics.csv")
            issues = sorted((base / args.split).glob("issue_*"), key=lambda p: int(p.name.split("_")[-1]))
            for issue in issues:
                target = json.loads((issue / "target.json").read_text())
                window = read_metrics(issue / "metrics.csv")
                csv = Path(tmp) / f"{scen}_{issue.name}.csv"
                out = Path(tmp) / f"{scen}_{issue.name}.json"
                incident_csv(normal, window, csv)
                from aiops.types import series_id

                t = target["target"]
                tid = series_id({"__name__": t["metric"], "node": t["node"], "statistic": t["agg"]})
                cmd = ["--input", str(csv), "--target", tid, "--at", str(t["timestamp"]),
                       "--graph", str(base / "graph.csv"), "--group-by", "node", "--output", str(out)]
                t1 = time.perf_counter()
                if args.subprocess:
                    proc = subprocess.run([sys.executable, "-m", "aiops", "rca", *cmd], cwd=ROOT,
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr)
                else:
                    run_rca(runner, cmd)
                rca_times.append(time.perf_counter() - t1)
                ranking = json.loads(out.read_text())
                names = [c["name"] for c in ranking]
                truth = target["root_cause"]["node"]
                rank = names.index(truth) + 1 if truth in names else None
                rows.append({
                    "scenario": scen, "issue": issue.name, "metric": t["metric"], "truth": truth,
                    "rank": rank, "top1": rank == 1, "top3": rank is not None and rank <= 3,
                    "predicted": names[:3],
                })
                print(f"{scen:14s} {issue.name:9s} {t['metric']:12s} rank={rank} top3={names[:3]}")
    df = pd.DataFrame(rows)
    cells = df.groupby(["scenario", "metric"])[["top1", "top3"]].mean()
    print()
    print(cells.round(3).to_string())
    summary = {
        "top1_mean": float(cells["top1"].mean()),
        "top3_mean": float(cells["top3"].mean()),
        "incidents": len(df),
        "rca_seconds_median": float(np.median(rca_times)),
        "total_seconds": time.perf_counter() - t0,
    }
    print(f"\nmean over {len(cells)} cells: top-1 {summary['top1_mean']:.3f}, top-3 {summary['top3_mean']:.3f}; "
          f"{summary['incidents']} incidents, median {summary['rca_seconds_median']:.2f} s per `aiops rca`")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "summary": summary,
            "cells": {f"{s}/{m}": {"top1": float(r.top1), "top3": float(r.top3)} for (s, m), r in cells.iterrows()},
            "incidents": rows,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
