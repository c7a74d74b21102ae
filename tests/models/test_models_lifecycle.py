"""Capacity ETAs, model versions (promotion refuses a worse model), and the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from aiops.cli import cli
from aiops.config import CapacityConfig
from aiops.detect.capacity import time_to_threshold
from aiops.models import get_model
from aiops.models.lifecycle import list_versions, load_serving, record_drift, register_version, rollback
from aiops.store import Store

from .conftest import seasonal


def test_capacity_eta_median_and_conservative():
    now = pd.Timestamp("2024-01-01", tz="UTC")
    ts = pd.date_range(now + pd.Timedelta("1h"), periods=48, freq="1h")
    yhat = np.arange(1, 49, dtype=float)  # +1 per hour
    fc = pd.DataFrame({"series_id": "disk", "ts": ts, "yhat": yhat, "yhat_lower": yhat - 5, "yhat_upper": yhat + 5})
    res = time_to_threshold(fc, CapacityConfig(threshold=30.5, direction="above", quantile=0.9), now)["disk"]
    assert res.within_horizon
    assert res.median_seconds == pytest.approx(30.5 * 3600)
    assert res.conservative_seconds == pytest.approx(25.5 * 3600)  # upper edge = the 0.9 quantile at 80%
    none = time_to_threshold(fc, CapacityConfig(threshold=100, direction="above"), now)["disk"]
    assert not none.within_horizon and none.median_seconds is None and "not within horizon" in none.text
    below = time_to_threshold(fc.assign(yhat=100 - yhat, yhat_lower=95 - yhat, yhat_upper=105 - yhat),
                              CapacityConfig(threshold=80, direction="below", quantile=0.9), now)["disk"]
    assert below.median_seconds == pytest.approx(20 * 3600)


def test_promotion_refuses_a_worse_model(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    frame = seasonal(24 * 8)
    m = get_model("robust")().fit(frame)
    first = register_version(store, "w", m, tmp_path / "models", val_error=0.5)
    assert first.status == "serving"
    worse = register_version(store, "w", m, tmp_path / "models", val_error=0.9)
    assert worse.status == "rejected" and not worse.promoted and worse.serving_error == 0.5
    better = register_version(store, "w", m, tmp_path / "models", val_error=0.4)
    assert better.promoted
    rows = {r["version"]: r["status"] for r in list_versions(store, "w")}
    assert rows == {1: "retired", 2: "rejected", 3: "serving"}
    assert load_serving(store, "w") is not None
    assert record_drift(store, "w", 0.8) == pytest.approx(2.0)
    assert rollback(store, "w") == 1
    assert {r["version"]: r["status"] for r in list_versions(store, "w")}[1] == "serving"


def _csv(tmp_path, text: str):
    p = tmp_path / "in.csv"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("timestamp,value\n", "no data rows"),
        ("timestamp,value\n2014-02-14 14:27:00,1\nyesterday,2\n", "row 2"),
        ("timestamp,value\n2014-02-14 14:27:00,1\n2014-02-14 14:32:00,abc\n", "row 2"),
        ("timestamp,value\n2014-02-14 14:27:00,1\n2014-02-14 14:27:00,2\n", "duplicate timestamp"),
        ("time,val\n1,2\n", "expected columns"),
    ],
)
def test_cli_rejects_bad_input_naming_the_row(tmp_path, text, needle):
    res = CliRunner().invoke(cli, ["detect", "--input", _csv(tmp_path, text), "--output", str(tmp_path / "o.csv")])
    assert res.exit_code == 2
    assert needle in res.output


def test_cli_detect_and_forecast_keep_the_timestamp_form(tmp_path):
    f = seasonal(24 * 6)
    naive = pd.DataFrame({"timestamp": f["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"), "value": f["value"]})
    naive.to_csv(tmp_path / "n.csv", index=False)
    r = CliRunner().invoke(cli, ["detect", "--input", str(tmp_path / "n.csv"), "--output", str(tmp_path / "d.csv"), "--quiet"])
    assert r.exit_code == 0, r.output
    d = pd.read_csv(tmp_path / "d.csv")
    assert list(d.columns) == ["timestamp", "value", "anomaly_score", "yhat", "yhat_lower", "yhat_upper", "is_anomaly"]
    assert len(d) == len(f) and d["timestamp"].iloc[0] == naive["timestamp"].iloc[0]
    unix = pd.DataFrame({"timestamp": f["ts"].astype("int64") // 10**9, "series": "a", "value": f["value"]})
    unix.to_csv(tmp_path / "u.csv", index=False)
    r = CliRunner().invoke(cli, ["forecast", "--input", str(tmp_path / "u.csv"), "--horizon", "1d",
                                 "--output", str(tmp_path / "f.csv"), "--model", "robust"])
    assert r.exit_code == 0, r.output
    fc = pd.read_csv(tmp_path / "f.csv")
    assert list(fc.columns) == ["series", "timestamp", "yhat", "yhat_lower", "yhat_upper"]
    assert len(fc) == 24 and fc["timestamp"].iloc[0] == unix["timestamp"].iloc[-1] + 3600


def test_cli_models_list_promote_rollback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{tmp_path}/s.db\n")
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    m = get_model("seasonal_naive")().fit(seasonal(24 * 4))
    register_version(store, "w", m, tmp_path / "models", val_error=0.5)
    register_version(store, "w", m, tmp_path / "models", val_error=0.7)
    run = CliRunner()
    out = run.invoke(cli, ["models", "list", "-c", str(cfg)])
    assert out.exit_code == 0 and "rejected" in out.output and "serving" in out.output
    assert run.invoke(cli, ["models", "promote", "-c", str(cfg), "w", "2"]).exit_code == 0
    assert run.invoke(cli, ["models", "rollback", "-c", str(cfg), "w"]).exit_code == 0
    bad = run.invoke(cli, ["models", "promote", "-c", str(cfg), "w", "9"])
    assert bad.exit_code == 2 and "no model version 9" in bad.output
