"""One check run over every registered model: fit, predict, score, save, load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.models import get_model, model_names
from aiops.models.base import BaseForecaster
from aiops.types import FORECAST_COLUMNS, SCORE_COLUMNS

FAST = {"neural": {"steps": 20, "hidden": 32}, "auto": {"steps": 20, "hidden": 32}}


@pytest.mark.parametrize("kind", model_names())
def test_model_contract(kind, small_batch, tmp_path):
    cls = get_model(kind)
    assert cls.NAME == kind
    for cap in ("GLOBAL", "USES_TORCH", "SUPPORTS_GPU", "MIN_HISTORY"):
        assert hasattr(cls, cap)
    model = cls(level=0.8, seed=0, **FAST.get(kind, {}))
    if hasattr(model, "horizon"):
        model.horizon = 12
    assert model.fit(small_batch) is model

    fc = model.predict(12)
    assert list(fc.columns) == list(FORECAST_COLUMNS)
    assert len(fc) == 12 * 3
    assert not fc[["yhat", "yhat_lower", "yhat_upper"]].isna().any().any()
    assert (fc["yhat_lower"] <= fc["yhat"] + 1e-9).all() and (fc["yhat"] <= fc["yhat_upper"] + 1e-9).all()
    last = small_batch.groupby("series_id")["ts"].max()
    first = fc.groupby("series_id")["ts"].min()
    assert ((first - last) == pd.Timedelta("1h")).all()
    assert (fc.groupby("series_id")["ts"].diff().dropna() == pd.Timedelta("1h")).all()
    assert str(fc["ts"].dtype) == "datetime64[ns, UTC]" and fc["series_id"].map(type).eq(str).all()

    sc = model.score(small_batch)
    assert list(sc.columns) == list(SCORE_COLUMNS)
    assert len(sc) == len(small_batch)
    observed = sc["value"].notna()
    assert (sc.loc[observed, "anomaly_score"] >= 0).all() and sc.loc[observed, "anomaly_score"].notna().all()
    assert sc.loc[~observed, "anomaly_score"].isna().all(), "a missing observation has no score"

    path = model.save(tmp_path / kind)
    assert {p.name for p in path.iterdir()} == {"config.json", "weights.safetensors"}
    again = BaseForecaster.load(path)
    assert type(again) is cls
    pd.testing.assert_frame_equal(again.predict(12, small_batch), model.predict(12, small_batch))
    pd.testing.assert_frame_equal(again.score(small_batch), sc)


def test_load_refuses_tampered_weights(small_batch, tmp_path):
    from safetensors.numpy import load_file, save_file

    from aiops.errors import ModelError

    m = get_model("neural")(steps=5, hidden=16, horizon=6).fit(small_batch)
    path = m.save(tmp_path / "n")
    arrays = load_file(str(path / "weights.safetensors"))
    arrays["net.extra"] = np.zeros(3, dtype=np.float32)
    save_file(arrays, str(path / "weights.safetensors"))
    with pytest.raises(ModelError):
        BaseForecaster.load(path)


def test_neural_is_deterministic_on_cpu(small_batch):
    cls = get_model("neural")
    a = cls(seed=3, steps=15, hidden=16, horizon=8).fit(small_batch).predict(8)
    b = cls(seed=3, steps=15, hidden=16, horizon=8).fit(small_batch).predict(8)
    pd.testing.assert_frame_equal(a, b)


def test_unknown_model_and_param_are_clear():
    from aiops.errors import ModelError

    with pytest.raises(ModelError, match="unknown model kind"):
        get_model("prophet")
    with pytest.raises(ModelError, match="unknown parameter"):
        get_model("robust")(sesons=3)
