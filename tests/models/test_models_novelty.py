"""Known answers for the context-novelty view of the anomaly score."""

from __future__ import annotations

import numpy as np

from aiops.models import calibrate
from aiops.models.calibrate import causal_scores, context_novelty


def test_context_novelty_by_hand():
    z = np.array([0.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0, -5.0])
    # classes split at -1.5 and 1.5: 1 1 2 1 2 1 1 0
    # length 1 new at t = 0, 2, 7; pairs (before-start, 1) (1,1) (1,2) (2,1) new at t = 0..3, (1,0) at 7
    got = context_novelty(z, edges=(1.5,), scales=(1.0,), depth=2)
    assert got.tolist() == [1.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0, 1.0]


def test_context_novelty_averages_over_scales_and_treats_missing_as_zero():
    z = np.array([0.0, np.nan, 2.0, 2.0])
    # at scale 1 the edge is 1.5 (2.0 is a new class at t=2); at scale 2 it is 3 (2.0 is class 1)
    got = context_novelty(z, edges=(1.5,), scales=(1.0, 2.0), depth=1)
    assert got.tolist() == [1.0, 0.0, 0.5, 0.0]


def test_context_novelty_is_causal_and_repeats_are_not_new():
    rng = np.random.default_rng(0)
    period = np.r_[rng.normal(0, 1, 30), 8.0, -8.0]
    z = np.tile(period, 10)
    nov = context_novelty(z)
    assert (nov[2 * len(period):] == 0).all()  # every pattern was seen in the first periods
    zz = np.r_[z, -8.0, 8.0]  # the spike pair reversed: a pattern never seen before
    longer = context_novelty(zz)
    assert np.array_equal(longer[: len(z)], nov)  # later data changes nothing earlier
    assert longer[-2] > 0 and longer[-1] > 0


def test_novelty_raises_only_scores_outside_the_band(monkeypatch):
    rng = np.random.default_rng(1)
    n = 1500
    y = rng.normal(0.0, 1.0, n)
    y[1000] += 3.0  # above the band, but of a size the noise has reached before
    y[1200] -= 12.0  # far below anything seen: a new residual class
    pred = np.zeros(n)
    with_nov = causal_scores(y, pred, 0.8)["anomaly_score"]
    monkeypatch.setattr(calibrate, "NOVELTY_WEIGHT", 0.0)
    without = causal_scores(y, pred, 0.8)["anomaly_score"]
    inside = without < 1.0
    assert np.array_equal(with_nov[inside], without[inside])  # the band edge and below unchanged
    assert ((with_nov >= 1.0) == (without >= 1.0)).all()  # so is the share of rows outside the band
    assert with_nov[1200] >= without[1200] + 1.0  # a never-seen deviation gains
    # rows after it may drop to 1.0 (the hold: not new next to a bigger deviation), never below
    changed = with_nov != without
    assert changed.any() and (with_nov[changed] >= 1.0).all()
