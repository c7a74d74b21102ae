"""Regenerate the notebooks' synthetic CSVs from aiops's own synthetic source.

    python notebooks/data/make_data.py

Deterministic (fixed seeds and end times), so re-running writes the same files unless the
synthetic source itself changed. The NAB files under ``nab/`` are copied, not generated:
see ``nab/PROVENANCE.md``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aiops.sources.synthetic import generate_scenario

HERE = Path(__file__).resolve().parent
SERVICES = ("frontend", "checkout", "payment", "db")


def shop_latency() -> pd.DataFrame:
    """p90 latency of four shop services over three days at 5m, with one injected incident."""
    sc = generate_scenario("shop", seed=1, days=3, step="5m", end="2026-01-10T12:00:00Z")
    rows = []
    for sid, labels in sc.batch.labels.items():
        if labels.get("__name__") == "http_request_duration_seconds" and labels["service"] in SERVICES:
            f = sc.batch.frame[sc.batch.frame["series_id"] == sid]
            rows.append(pd.DataFrame({
                "timestamp": f["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "series": f'http_request_duration_seconds{{job="shop",service="{labels["service"]}"}}',
                "value": f["value"],
            }))
    inc = sc.incidents[0]
    print(f"shop incident: root cause {inc.root_cause}, {inc.start} .. {inc.end}")
    return pd.concat(rows, ignore_index=True)


def disk_free() -> pd.DataFrame:
    """Free bytes of a database volume over 14 days at 30m, filling steadily."""
    sc = generate_scenario("capacity", seed=2, days=14, step="30m", end="2026-01-10T12:00:00Z")
    f = sc.batch.frame[sc.batch.frame["series_id"].str.startswith("node_filesystem_avail_bytes")]
    return pd.DataFrame({"timestamp": f["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": f["value"].round(-3)})


def main() -> None:
    shop_latency().to_csv(HERE / "shop_latency.csv", index=False, float_format="%.6g")
    disk_free().to_csv(HERE / "disk_free.csv", index=False, float_format="%.0f")


if __name__ == "__main__":
    main()
