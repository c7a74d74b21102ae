"""The NAB scorer against hand-computed cases and against brute force."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from aiops.errors import InputError
from aiops.eval.nab import (
    PROFILES,
    CostMatrix,
    FileLayout,
    evaluate,
    load_corpus,
    probation_rows,
    scaled_sigmoid,
    score_file,
    threshold_curve,
    window_bounds,
)

STD = PROFILES["standard"]
# 2 / (1 + exp(5y)) - 1 at the positions used below, computed by hand (math.exp).
S_M1 = 0.9866142981514305      # y = -1 (window start)
S_M05 = 0.8482836399575131     # y = -0.5
S_FP_2_9 = -0.5046723977218568  # y = 2/9 (two rows after a 10-row window)


def test_scaled_sigmoid_matches_published_values():
    assert scaled_sigmoid(-1.0) == pytest.approx(S_M1)
    assert scaled_sigmoid(-0.5) == pytest.approx(S_M05)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-S_M1)
    assert scaled_sigmoid(3.0) == -1.0 and scaled_sigmoid(7.5) == -1.0


def test_probation_is_15_percent_capped_at_750_rows():
    assert probation_rows(100) == 15
    assert probation_rows(4032) == 604
    assert probation_rows(22695) == 750


def _file_a():
    """100 rows, windows on rows 40..49 and 70..79, probation = 15 rows."""
    ts = pd.date_range("2020-01-01", periods=100, freq="5min", tz="UTC")
    windows = [(ts[40], ts[49]), (ts[70], ts[79])]
    layout = FileLayout.build(100, window_bounds(ts, windows))
    scores = np.zeros(100)
    scores[[10, 20, 45, 47, 51]] = 0.9  # probation, FP before any window, TP, 2nd TP, FP after
    return ts, windows, layout, scores


def test_hand_computed_file_score():
    _, _, layout, scores = _file_a()
    got = score_file(scores, layout, STD, 0.9)
    # 20: -fp (no window before); 45: S(-0.5)/S(-1); 47 ignored; 51: fp*S(2/9); window 2 missed: -fn
    expected = -0.11 + S_M05 / S_M1 + 0.11 * S_FP_2_9 - 1.0
    assert got.raw == pytest.approx(expected, abs=1e-12)
    assert (got.tp_windows, got.fn_windows, got.fp_rows) == (1, 1, 2)


def test_first_detection_counts_and_window_edges():
    _, _, layout, _ = _file_a()
    scores = np.zeros(100)
    scores[[40, 49]] = 1.0  # window start earns exactly tp; the later one adds nothing
    assert score_file(scores, layout, STD, 1.0).raw == pytest.approx(1.0 - 1.0)
    scores = np.zeros(100)
    scores[49] = 1.0  # last row of the window: y = -1/10
    assert score_file(scores, layout, STD, 1.0).raw == pytest.approx(
        float(scaled_sigmoid(-0.1)) / S_M1 - 1.0)


def test_low_fn_profile_weights_misses_and_far_fp_costs_full_weight():
    _, _, layout, _ = _file_a()
    scores = np.zeros(100)
    scores[99] = 1.0  # 20 rows after a 10-row window: y = 20/9 < 3, so not yet -1
    got = score_file(scores, layout, PROFILES["reward_low_FN_rate"], 1.0)
    assert got.raw == pytest.approx(-2.0 * 2 + 0.11 * float(scaled_sigmoid(20 / 9)))
    ts = pd.date_range("2020-01-01", periods=200, freq="h", tz="UTC")
    lay = FileLayout.build(200, window_bounds(ts, [(ts[40], ts[49])]))
    s = np.zeros(200)
    s[49 + 28] = 1.0  # y = 28/9 >= 3: full -fp
    assert score_file(s, lay, CostMatrix(1, 0.22, 1), 1.0).raw == pytest.approx(-1.0 - 0.22)


def test_window_inside_probation_is_not_scored():
    ts = pd.date_range("2020-01-01", periods=100, freq="min", tz="UTC")
    lay = FileLayout.build(100, window_bounds(ts, [(ts[2], ts[5]), (ts[50], ts[59])]))
    assert list(lay.scored_windows()) == [1]
    res = evaluate({"f": np.zeros(100)}, {"f": lay})["standard"]
    assert res.null == -1.0 and res.perfect == 2.0  # perfect counts every labelled window


def test_curve_equals_brute_force_scoring_at_every_threshold():
    rng = np.random.default_rng(7)
    layouts, scores = [], []
    for k in range(3):
        starts = sorted(rng.choice(np.arange(50, 280, 25), size=k + 1, replace=False))
        bounds = [(int(s), int(s) + int(rng.integers(3, 15))) for s in starts]
        layouts.append(FileLayout.build(300, bounds))
        s = np.round(rng.random(300), 2)  # ties on purpose
        s[rng.integers(0, 300, 5)] = np.nan
        scores.append(s)
    for cost in PROFILES.values():
        curve = threshold_curve(scores, layouts, cost)
        assert curve["threshold"].is_monotonic_decreasing
        for _, row in curve.iloc[::7].iterrows():
            brute = sum(score_file(s, lay, cost, row["threshold"]).raw for s, lay in zip(scores, layouts))
            assert row["score"] == pytest.approx(brute, abs=1e-9)


def test_evaluate_optimises_threshold_and_normalises():
    _, _, layout, scores = _file_a()
    res = evaluate({"a.csv": scores}, {"a.csv": layout})
    std = res["standard"]
    assert std.threshold == 0.9
    raw = -0.11 + S_M05 / S_M1 + 0.11 * S_FP_2_9 - 1.0
    assert std.raw == pytest.approx(raw)
    assert (std.null, std.perfect) == (-2.0, 2.0)
    assert std.normalized == pytest.approx(100 * (raw + 2) / 4)
    assert std.totals() == {"tp_windows": 1, "fn_windows": 1, "fp_rows": 2}

    perfect = np.zeros(100)
    perfect[[40, 70]] = 1.0
    assert evaluate({"a.csv": perfect}, {"a.csv": layout})["standard"].normalized == pytest.approx(100.0)
    assert evaluate({"a.csv": np.zeros(100)}, {"a.csv": layout})["standard"].normalized == pytest.approx(0.0)
    # Scores above 1 (aiops scores are unbounded) are thresholds like any other.
    assert evaluate({"a.csv": perfect * 37.5}, {"a.csv": layout})["standard"].threshold == 37.5


def test_bad_windows_and_lengths_are_input_errors():
    ts = pd.date_range("2020-01-01", periods=10, freq="min", tz="UTC")
    with pytest.raises(InputError):
        window_bounds(ts, [(ts[-1] + pd.Timedelta("1h"), ts[-1] + pd.Timedelta("2h"))])
    with pytest.raises(InputError):
        window_bounds(ts, [(ts[5], ts[8]), (ts[1], ts[3])])
    lay = FileLayout.build(10, window_bounds(ts, [(ts[5], ts[8])]))
    with pytest.raises(InputError):
        score_file(np.zeros(9), lay, STD, 0.5)


def test_load_corpus_reads_nab_layout(tmp_path):
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    (tmp_path / "config").mkdir()
    ts = pd.date_range("2014-01-01", periods=50, freq="5min")
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": np.arange(50.0)}).to_csv(
        tmp_path / "data" / "x" / "a.csv", index=False)
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(
        {"x/a.csv": [[str(ts[30]) + ".000000", str(ts[35]) + ".000000"]]}))
    (tmp_path / "config" / "profiles.json").write_text(json.dumps(
        {"p": {"CostMatrix": {"tpWeight": 1.0, "fpWeight": 0.5, "fnWeight": 3.0, "tnWeight": 1.0}}}))
    corpus = load_corpus(tmp_path)
    assert corpus.profiles == {"p": CostMatrix(1.0, 0.5, 3.0)}
    lay = corpus.layouts()["x/a.csv"]
    assert np.flatnonzero(lay.window == 0).tolist() == list(range(30, 36))
    assert str(corpus.frames["x/a.csv"]["ts"].dt.tz) == "UTC"
    with pytest.raises(InputError):
        load_corpus(tmp_path / "nope")
