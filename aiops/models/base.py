"""The model contract: ``fit`` / ``predict`` / ``score`` / ``save`` / ``load``.

Public methods validate and convert; subclasses implement the private ``_fit``,
``_forecast`` and ``_one_step`` on a :class:`~aiops.models.data.Panel`. Capabilities are class
attributes. A model saves hyperparameters and small per-series state as ``config.json`` and
arrays as ``weights.safetensors`` (never pickles) and reloads strictly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from aiops.errors import InputError, ModelError
from aiops.models.calibrate import causal_scores
from aiops.models.data import Panel, panel_of
from aiops.types import FORECAST_COLUMNS, SCORE_COLUMNS, SeriesBatch

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


@runtime_checkable
class Forecaster(Protocol):
    """What the pipeline needs from a model."""

    NAME: ClassVar[str]

    def fit(self, batch: SeriesBatch | pd.DataFrame, *, step: pd.Timedelta | None = None) -> "Forecaster": ...

    def predict(self, horizon: int, batch: SeriesBatch | pd.DataFrame | None = None) -> pd.DataFrame: ...

    def score(self, batch: SeriesBatch | pd.DataFrame, *, start: Any = None) -> pd.DataFrame: ...

    def save(self, path: str | Path) -> Path: ...


def scores_frame(panel: Panel, preds: list[np.ndarray], level: float, *, window: int,
                 start: pd.Timestamp | None = None) -> pd.DataFrame:
    """``SCORE_COLUMNS`` for every observed row of ``panel`` (from ``start`` on) given causal
    one-step predictions per series (:func:`~aiops.models.calibrate.causal_scores`).

    One rule for the scheduler and the backtest: with a step under a day, deviations that recur
    at the same time of day are not new (``season`` = steps per day).
    """
    day = pd.Timedelta(days=1)
    season = int(round(day / panel.step)) if panel.step < day else None
    cols: dict[str, list[np.ndarray]] = {c: [] for c in SCORE_COLUMNS}
    for sid, t0, y, pos, pred in zip(panel.ids, panel.starts, panel.values, panel.positions, preds):
        s = causal_scores(y, pred, level, window=window, season=season)
        # times as integer ns since the epoch: a Timedelta times an array builds Python objects
        ts = t0.value + panel.step.value * pos
        keep = slice(None) if start is None else ts >= start.value
        ts = ts[keep]
        cols["series_id"].append(np.full(len(ts), sid, dtype=object))
        cols["ts"].append(ts)
        cols["value"].append(y[pos][keep])
        for k, v in s.items():
            cols[k].append(v[pos][keep])
    out = {c: np.concatenate(v) for c, v in cols.items()}
    out["ts"] = pd.to_datetime(out["ts"], unit="ns", utc=True)
    return pd.DataFrame(out)


def _as_frame(batch: SeriesBatch | pd.DataFrame) -> tuple[pd.DataFrame, pd.Timedelta | None]:
    if isinstance(batch, SeriesBatch):
        return batch.frame, batch.step
    return batch, None


class BaseForecaster:
    """Shared validation, panel handling and (de)serialisation.

    Class attributes (capabilities):
        NAME: registry name.
        GLOBAL: one model is trained across all series of a batch.
        USES_TORCH / SUPPORTS_GPU: needs torch; uses CUDA when present.
        MIN_HISTORY: steps of history below which the model is not trusted.
    """

    NAME: ClassVar[str] = "base"
    GLOBAL: ClassVar[bool] = False
    USES_TORCH: ClassVar[bool] = False
    SUPPORTS_GPU: ClassVar[bool] = False
    MIN_HISTORY: ClassVar[int] = 3
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, level: float = 0.8, seed: int = 0, **params: Any):
        if not 0 < level < 1:
            raise InputError(f"level must be between 0 and 1 (exclusive), got {level}", hint="e.g. 0.8 for an 80% band")
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise ModelError(
                f"unknown parameter(s) for model {self.NAME!r}: {', '.join(sorted(unknown))}",
                hint=f"known: {', '.join(sorted(self.DEFAULTS)) or 'none'}",
            )
        self.level = float(level)
        self.seed = int(seed)
        self.params = {**self.DEFAULTS, **params}
        self.step_: pd.Timedelta | None = None
        self.panel_: Panel | None = None
        self.series_: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ public API

    def fit(self, batch: SeriesBatch | pd.DataFrame | Panel, *, step: pd.Timedelta | None = None) -> "BaseForecaster":
        """Fit on every series of ``batch`` (a long frame, or series already on grids); returns self."""
        if isinstance(batch, Panel):
            panel = batch
        else:
            frame, bstep = _as_frame(batch)
            panel = panel_of(frame, step or bstep)
        self.step_ = panel.step
        self.panel_ = panel
        self._fit(panel)
        return self

    def predict(self, horizon: int, batch: SeriesBatch | pd.DataFrame | None = None) -> pd.DataFrame:
        """Forecast ``horizon`` steps past the end of each series (of ``batch``, or the fitted data).

        Returns a frame with ``FORECAST_COLUMNS``.
        """
        self._check_fitted()
        if int(horizon) < 1:
            raise InputError(f"horizon must be at least 1 step, got {horizon}")
        panel = self.panel_ if batch is None else self._panel(batch)
        if panel is None:
            raise ModelError("no history to forecast from", hint="pass the batch to predict() after load()")
        h = int(horizon)
        yhat, lo, hi = self._forecast(panel, h)
        # one frame for all series at once: per-series frames cost more than the forecast itself
        ends = np.array([t.value for t in panel.ends()], dtype=np.int64)
        ts = (ends[:, None] + panel.step.value * np.arange(1, h + 1, dtype=np.int64)[None, :]).ravel()

        def flat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([np.asarray(a, dtype=np.float64).reshape(h) for a in parts]) if parts else np.empty(0)

        cols = {
            "series_id": np.repeat(np.asarray(panel.ids, dtype=object), h),
            "ts": pd.to_datetime(ts, unit="ns", utc=True),
            "yhat": flat(yhat), "yhat_lower": flat(lo), "yhat_upper": flat(hi),
        }
        return pd.DataFrame({c: cols[c] for c in FORECAST_COLUMNS})

    def score(self, batch: SeriesBatch | pd.DataFrame, *, start: Any = None, window: int | None = None) -> pd.DataFrame:
        """Causal anomaly scores of the rows of ``batch`` (from ``start`` on, default all).

        Each row's expected value uses only earlier rows; the score is 1.0 at the edge of the
        band calibrated on the residuals before it. Returns ``SCORE_COLUMNS``.
        """
        self._check_fitted()
        panel = self._panel(batch)
        start_ts = pd.Timestamp(start) if start is not None else None
        if start_ts is not None and start_ts.tzinfo is None:
            start_ts = start_ts.tz_localize("UTC")
        preds = [self._one_step(sid, y, t0) for sid, y, t0 in zip(panel.ids, panel.values, panel.starts)]
        return scores_frame(panel, preds, self.level, window=window or self.params.get("calib_window", 1000),
                            start=start_ts)

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` under ``path`` (a folder)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self._state_arrays().items()}
        cfg = {
            "format_version": FORMAT_VERSION,
            "kind": self.NAME,
            "level": self.level,
            "seed": self.seed,
            "params": self.params,
            "step_seconds": self.step_.total_seconds() if self.step_ is not None else None,
            "series": self.series_,
            "state": self._state_json(),
            "arrays": sorted(tensors),
        }
        try:
            save_file(tensors, str(p / WEIGHTS_FILE))
            (p / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, default=float))
        except OSError as exc:
            raise ModelError(f"cannot save model to {p}: {exc.strerror}") from None
        return p

    @classmethod
    def load(cls, path: str | Path) -> "BaseForecaster":
        """Load a model saved by :meth:`save`; refuses unknown kinds, versions or arrays."""
        from safetensors.numpy import load_file

        from aiops.models.registry import get_model

        p = Path(path)
        try:
            cfg = json.loads((p / CONFIG_FILE).read_text())
            arrays = load_file(str(p / WEIGHTS_FILE))
        except FileNotFoundError as exc:
            raise ModelError(f"no saved model in {p}: {exc.filename} is missing") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read saved model in {p}: {exc}") from None
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"model in {p} has format {cfg.get('format_version')}, expected {FORMAT_VERSION}")
        klass = get_model(cfg["kind"]) if cls is BaseForecaster else cls
        if klass.NAME != cfg["kind"]:
            raise ModelError(f"model in {p} is a {cfg['kind']!r}, not a {klass.NAME!r}")
        if sorted(arrays) != sorted(cfg.get("arrays", [])):
            raise ModelError(f"model in {p} is inconsistent: weights do not match config.json")
        model = klass(level=cfg["level"], seed=cfg["seed"], **cfg["params"])
        model.step_ = pd.Timedelta(seconds=cfg["step_seconds"]) if cfg.get("step_seconds") else None
        model.series_ = cfg["series"]
        model._load_state(cfg.get("state") or {}, arrays)
        return model

    # ------------------------------------------------------------------ helpers

    def _panel(self, batch: SeriesBatch | pd.DataFrame) -> Panel:
        frame, bstep = _as_frame(batch)
        return panel_of(frame, self.step_ or bstep)

    def _check_fitted(self) -> None:
        if self.step_ is None:
            raise ModelError(f"model {self.NAME!r} is not fitted", hint="call fit() or load() first")

    # ------------------------------------------------------------------ for subclasses

    def _fit(self, panel: Panel) -> None:
        raise NotImplementedError

    def _forecast(self, panel: Panel, horizon: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        raise NotImplementedError

    def _one_step(self, sid: str, y: np.ndarray, t0: pd.Timestamp) -> np.ndarray:
        """Expected value of ``y[t]`` from ``y[:t]`` for every ``t`` (NaN where unknown).

        ``y`` is the series on its grid starting at ``t0``.
        """
        raise NotImplementedError

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _state_json(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if arrays:
            raise ModelError(f"model {self.NAME!r} does not take arrays, found {sorted(arrays)}")
