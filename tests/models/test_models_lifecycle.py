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


def test_cli_keep_duplicates_scores_every_row_and_lets_the_last_value_stand(tmp_path):
    f = seasonal(24 * 20)
    rows = pd.DataFrame({"timestamp": f["ts"].dt.strftime("%Y-%m-%d %H:%M:%S"), "value": f["value"]})
    # an hour repeated, as when a local clock is set back: the second reading is far off
    rep = rows.iloc[[400]].assign(value=rows["value"].iloc[400] + 1000.0)
    rows = pd.concat([rows.iloc[:401], rep, rows.iloc[401:]], ignore_index=True)
    rows.to_csv(tmp_path / "dup.csv", index=False)
    refused = CliRunner().invoke(cli, ["detect", "--input", str(tmp_path / "dup.csv"), "--output", str(tmp_path / "d.csv")])
    assert refused.exit_code == 2 and "--keep-duplicates" in refused.output
    r = CliRunner().invoke(cli, ["detect", "--keep-duplicates", "--quiet", "--input", str(tmp_path / "dup.csv"),
                                 "--output", str(tmp_path / "d.csv"), "--model", "robust"])
    assert r.exit_code == 0, r.output
    d = pd.read_csv(tmp_path / "d.csv")
    assert len(d) == len(rows)
    np.testing.assert_allclose(d["value"], rows["value"], rtol=1e-12)  # each row its own value
    # the step has one band; each of its rows is scored by its own value
    first, second = d.iloc[400], d.iloc[401]
    assert np.isfinite(first["yhat_upper"]) and first["yhat_upper"] == second["yhat_upper"]
    assert first["is_anomaly"] == 0 and second["is_anomaly"] == 1
    r = CliRunner().invoke(cli, ["forecast", "--keep-duplicates", "--input", str(tmp_path / "dup.csv"), "--horizon", "6",
                                 "--output", str(tmp_path / "f.csv"), "--model", "seasonal_naive"])
    assert r.exit_code == 0, r.output
    # the same as forecasting the file with only the last value of the repeated hour
    rows.drop(index=400).to_csv(tmp_path / "last.csv", index=False)
    r = CliRunner().invoke(cli, ["forecast", "--input", str(tmp_path / "last.csv"), "--horizon", "6",
                                 "--output", str(tmp_path / "g.csv"), "--model", "seasonal_naive"])
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "f.csv"), pd.read_csv(tmp_path / "g.csv"))


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


# ---------------------------------------------------------------- scheduled fits and versions


def _watch(kind: str = "robust", **params):
    from aiops.config import WatchConfig

    return WatchConfig.model_validate({"name": "w", "query": "m", "step": "1h", "history": "21d", "horizon": "1d",
                                       "model": {"kind": kind, "params": params}})


def _batch(frame: pd.DataFrame):
    from aiops.types import SeriesBatch

    return SeriesBatch(frame=frame, step=pd.Timedelta("1h"), watch="w")


def _two_series(n: int, seed: int = 0) -> pd.DataFrame:
    return pd.concat([seasonal(n, seed=seed, sid="a"), seasonal(n, seed=seed + 1, level=30.0, sid="b")],
                     ignore_index=True)


def test_fit_watch_versions_promote_reject_and_drift(tmp_path):
    from aiops.pipeline import fit_watch

    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    watch = _watch()
    full = _two_series(24 * 16)
    first = fit_watch(_batch(full[full["ts"] < full["ts"].min() + pd.Timedelta(days=14)]), watch, store,
                      root=tmp_path / "models")
    assert first.version.promoted and first.version.version == 1 and first.drift is None
    assert 0 < first.val_error < 1.5  # a MASE: near or below seasonal naive on a clean seasonal series
    row = list_versions(store, "w")[0]
    assert row["details"]["holdout_steps"] == 24 and row["details"]["data_end"].startswith("2024-01-14T23")

    # two more days of the same process: drift of the serving model is recorded, near 1, and
    # both models are compared on the same held-out day, which v1 has not seen either
    second = fit_watch(_batch(full), watch, store, root=tmp_path / "models")
    assert second.drift is not None and 0.3 < second.drift < 3
    rows = {r["version"]: r for r in list_versions(store, "w")}
    assert rows[1]["drift"] == pytest.approx(second.drift)
    assert second.version.serving_error != pytest.approx(first.val_error)
    assert second.version.promoted == (second.val_error <= second.version.serving_error)

    # the last day breaks away: the model validated on it is worse, kept but not promoted
    broken = full.copy()
    tail = broken["ts"] > broken["ts"].max() - pd.Timedelta(hours=24)
    broken.loc[tail, "value"] = broken.loc[tail, "value"] * 3 + 40
    serving_before = [r["version"] for r in list_versions(store, "w") if r["status"] == "serving"]
    third = fit_watch(_batch(broken), watch, store, root=tmp_path / "models")
    assert third.version.status == "rejected" and not third.version.promoted
    assert third.val_error > third.version.serving_error
    assert (tmp_path / "models" / "w" / f"v{third.version.version}" / "config.json").is_file()  # kept
    assert [r["version"] for r in list_versions(store, "w") if r["status"] == "serving"] == serving_before


def test_run_watch_uses_the_serving_version(tmp_path):
    from aiops.models.lifecycle import load_serving_for
    from aiops.pipeline import fit_watch, forecast_watch, score_watch

    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    watch = _watch()
    history = _two_series(24 * 14)
    fit_watch(_batch(history), watch, store, root=tmp_path / "models")
    # two days later the daily shape has flipped: the serving model still carries the old profile
    later = _two_series(24 * 16, seed=5)
    later = later[later["ts"] >= later["ts"].min() + pd.Timedelta(days=2)].copy()
    later["value"] = 2 * later.groupby("series_id")["value"].transform("mean") - later["value"]
    batch = _batch(later.reset_index(drop=True))
    serving = load_serving_for(store, "w", "robust", pd.Timedelta("1h"))
    assert serving is not None
    with_model = forecast_watch(batch, watch, model=serving)
    on_the_fly = forecast_watch(batch, watch)
    pd.testing.assert_frame_equal(with_model, serving.predict(24, batch=batch.frame))
    assert not np.allclose(with_model["yhat"], on_the_fly["yhat"])
    scores = score_watch(batch, watch, model=serving)
    assert len(scores) == len(batch.frame) and scores["anomaly_score"].notna().any()
    # a config asking for another kind does not use it
    assert load_serving_for(store, "w", "seasonal_naive", pd.Timedelta("1h")) is None
    assert load_serving_for(store, "w", "robust", pd.Timedelta("5min")) is None


def test_scheduled_fit_job_creates_a_version(tmp_path):
    from aiops.config import AiopsConfig
    from aiops.scheduler import Scheduler
    from tests.fixtures.service import wait_for

    cfg = AiopsConfig.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"scenario": "quiet", "days": 3, "step": "1h"}},
        "store": {"url": f"sqlite:///{tmp_path}/s.db"},
        "output_dir": str(tmp_path / "out"),
        "watches": [{"name": "q", "query": "http_requests_per_second", "step": "1h", "history": "3d",
                     "infer_every": "1h", "fit_every": "1s", "model": {"kind": "robust"}}],
    })
    store = Store.open(cfg.store.url)
    sched = Scheduler(cfg, store=store, run_watch=lambda *a, **k: None, lease_ttl=5, first_run_delay=0.0).start()
    try:
        wait_for(lambda: list_versions(store, "q"), timeout=60, step=0.2)
    finally:
        sched.shutdown()
    row = list_versions(store, "q")[-1]
    assert row["version"] == 1 and row["status"] == "serving" and row["kind"] == "robust"
    assert row["path"].startswith(str(tmp_path / "out" / "models"))
    fits = [r for r in store.runs(watch="q") if r["kind"] == "fit" and r["status"] == "ok"]
    assert fits and fits[-1]["details"]["version"] == 1 and fits[-1]["details"]["status"] == "serving"
