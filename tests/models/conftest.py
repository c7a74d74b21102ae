"""Synthetic series for model tests: seasonal, noisy, with gaps, with injected anomalies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

STEP = pd.Timedelta("1h")


def seasonal(n: int = 24 * 21, *, seed: int = 0, noise: float = 0.3, level: float = 10.0, sid: str = "s") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=n, freq=STEP, tz="UTC")
    t = np.arange(n)
    y = level + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, noise, n)
    return pd.DataFrame({"series_id": sid, "ts": ts, "value": y})


@pytest.fixture
def clean() -> pd.DataFrame:
    return seasonal()


@pytest.fixture
def small_batch() -> pd.DataFrame:
    """Three series of different lengths and starts, one with a gap and missing steps."""
    a = seasonal(24 * 10, seed=1, sid='m{i="a"}')
    b = seasonal(24 * 6, seed=2, level=50, sid='m{i="b"}').iloc[5:]
    b = b.drop(b.index[30:40])  # a gap of ten steps
    c = seasonal(24 * 8, seed=3, level=-5, sid='m{i="c"}')
    c.loc[c.index[::17], "value"] = np.nan  # scattered missing values
    return pd.concat([a, b, c], ignore_index=True)
