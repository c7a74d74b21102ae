"""Model versions in the store: save, promote only when not worse, roll back, drift.

A version is a folder ``<root>/<watch>/v<N>`` holding ``config.json`` and
``weights.safetensors`` plus a row in ``model_versions``. A new version is promoted to
``serving`` only when its validation error is not worse than the serving one's; otherwise it
stays as ``rejected`` and the caller reports it. Drift is recent error / validation error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from aiops.errors import AiopsError, ModelError, StoreError
from aiops.models.base import BaseForecaster
from aiops.store import Store, model_versions, utcnow

logger = logging.getLogger(__name__)

SERVING, REJECTED, RETIRED, CANDIDATE = "serving", "rejected", "retired", "candidate"


@dataclass
class VersionResult:
    watch: str
    version: int
    status: str
    val_error: float | None
    serving_error: float | None
    path: str

    @property
    def promoted(self) -> bool:
        return self.status == SERVING


def list_versions(store: Store, watch: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``model_versions`` (newest first), optionally for one watch."""
    c = model_versions.c
    q = sa.select(model_versions).order_by(c.watch, c.version.desc())
    if watch:
        q = q.where(c.watch == watch)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def serving_version(store: Store, watch: str) -> dict[str, Any] | None:
    c = model_versions.c
    with store.engine.connect() as conn:
        r = conn.execute(
            sa.select(model_versions).where((c.watch == watch) & (c.status == SERVING)).order_by(c.version.desc())
        ).first()
    return dict(r._mapping) if r else None


def register_version(
    store: Store,
    watch: str,
    model: BaseForecaster,
    root: str | Path,
    *,
    val_error: float | None = None,
    details: dict[str, Any] | None = None,
    serving_error: float | None = None,
) -> VersionResult:
    """Save ``model`` as the next version of ``watch`` and promote it if not worse.

    ``val_error`` defaults to the model's ``val_error_`` (held-out error). It is compared with
    ``serving_error``, the serving model's error on the same held-out data when the caller
    could measure it, else with the serving version's own validation error. A model without a
    validation error is promoted only when nothing serves yet.
    """
    if val_error is None:
        val_error = getattr(model, "val_error_", None)
    c = model_versions.c
    with store.begin() as conn:
        last = conn.execute(sa.select(sa.func.max(c.version)).where(c.watch == watch)).scalar()
        version = int(last or 0) + 1
        path = Path(root) / watch / f"v{version}"
        model.save(path)
        cur = conn.execute(
            sa.select(c.id, c.val_error).where((c.watch == watch) & (c.status == SERVING))
        ).first()
        serving_err = (serving_error if serving_error is not None else cur.val_error) if cur else None
        if cur is None:
            status = SERVING
        elif val_error is None or serving_err is None:
            status = REJECTED if val_error is None else SERVING
        else:
            status = SERVING if val_error <= serving_err else REJECTED
        if status == SERVING and cur is not None:
            conn.execute(model_versions.update().where(c.id == cur.id).values(status=RETIRED))
        conn.execute(
            model_versions.insert().values(
                watch=watch, version=version, kind=model.NAME, path=str(path), created_at=utcnow(),
                status=status, val_error=val_error, details=details or {},
            )
        )
    if status == REJECTED:
        logger.warning(
            "watch %s: model v%d rejected (validation error %.4g worse than serving %.4g)",
            watch, version, val_error if val_error is not None else float("nan"),
            serving_err if serving_err is not None else float("nan"),
        )
    return VersionResult(watch, version, status, val_error, serving_err, str(path))


def load_serving(store: Store, watch: str) -> BaseForecaster | None:
    """The serving model of ``watch``, loaded strictly, or None when there is none."""
    row = serving_version(store, watch)
    if row is None:
        return None
    return BaseForecaster.load(row["path"])


def promote(store: Store, watch: str, version: int) -> None:
    """Serve ``version`` of ``watch`` (the current serving one is retired)."""
    c = model_versions.c
    with store.begin() as conn:
        row = conn.execute(sa.select(c.id, c.path).where((c.watch == watch) & (c.version == version))).first()
        if row is None:
            raise ModelError(f"watch {watch!r} has no model version {version}", hint="see `aiops models list`")
        if not Path(row.path, "config.json").is_file():
            raise ModelError(f"model version {version} of {watch!r} has no files at {row.path}")
        conn.execute(model_versions.update().where((c.watch == watch) & (c.status == SERVING)).values(status=RETIRED))
        conn.execute(model_versions.update().where(c.id == row.id).values(status=SERVING))


def rollback(store: Store, watch: str) -> int:
    """Serve the newest version older than the serving one that served before; returns it."""
    c = model_versions.c
    cur = serving_version(store, watch)
    if cur is None:
        raise ModelError(f"watch {watch!r} has no serving model to roll back from")
    with store.engine.connect() as conn:
        prev = conn.execute(
            sa.select(c.version).where((c.watch == watch) & (c.version < cur["version"]) & (c.status == RETIRED))
            .order_by(c.version.desc())
        ).first()
    if prev is None:
        raise ModelError(f"watch {watch!r} has no earlier served version to roll back to", hint="see `aiops models list`")
    promote(store, watch, int(prev[0]))
    with store.begin() as conn:
        conn.execute(model_versions.update().where((c.watch == watch) & (c.version == cur["version"])).values(status=REJECTED))
    return int(prev[0])


def record_drift(store: Store, watch: str, recent_error: float) -> float | None:
    """Store drift = ``recent_error`` / the serving version's validation error; returns it."""
    cur = serving_version(store, watch)
    if cur is None or not cur.get("val_error"):
        return None
    drift = float(recent_error) / float(cur["val_error"])
    try:
        with store.begin() as conn:
            conn.execute(model_versions.update().where(model_versions.c.id == cur["id"]).values(drift=drift))
    except StoreError:
        raise
    return drift


def load_serving_for(store: Store, watch: str, kind: str, step: pd.Timedelta) -> BaseForecaster | None:
    """The serving model of ``watch`` if it is a ``kind`` model on grid ``step``, else None.

    A serving model of another kind or step (the config changed since it was fitted) or one
    whose files cannot be read is logged and not used: the caller fits on the fly instead.
    """
    row = serving_version(store, watch)
    if row is None:
        return None
    if row["kind"] != kind:
        logger.info("watch %s: serving model v%d is a %r, the config asks for %r; fitting on the fly",
                    watch, row["version"], row["kind"], kind)
        return None
    try:
        model = BaseForecaster.load(row["path"])
    except AiopsError as exc:
        logger.warning("watch %s: serving model v%d cannot be loaded (%s); fitting on the fly", watch, row["version"], exc)
        return None
    if model.step_ != pd.Timedelta(step):
        logger.info("watch %s: serving model v%d is on a %s grid, the watch on %s; fitting on the fly",
                    watch, row["version"], model.step_, step)
        return None
    return model


def scoring_model(model: BaseForecaster) -> BaseForecaster:
    """The part of a fitted model that gives one-step predictions for anomaly scores.

    ``auto`` scores with its robust baseline, as :func:`aiops.models.registry.detect_kind`
    does for models fitted on the fly.
    """
    return getattr(model, "robust_", model) if model.NAME == "auto" else model


def split_tail(frame: pd.DataFrame, steps: int, step: pd.Timedelta) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """``(history, held-out tail, cut)``: rows after ``cut = last timestamp - steps * step`` are held out."""
    cut = pd.Timestamp(frame["ts"].max()) - steps * pd.Timedelta(step)
    after = frame["ts"] > cut
    return frame[~after].reset_index(drop=True), frame[after].reset_index(drop=True), cut


def forecast_error(model: BaseForecaster, history: pd.DataFrame, actual: pd.DataFrame, step: pd.Timedelta) -> float | None:
    """Mean over series of the forecast MAE on ``actual`` from ``history``, scaled per series.

    The scale is the series' in-sample seasonal-naive MAE (lag one day, or one step with less
    than two days of history), so 1.0 means as good as repeating yesterday (a MASE). Series
    without history, actuals or a positive scale are left out; None when none is left.
    """
    from aiops.eval.forecast import naive_scale, season_length
    from aiops.models.data import to_panel

    if history.empty or actual.empty:
        return None
    step = pd.Timedelta(step)
    h = int(round((pd.Timestamp(actual["ts"].max()) - pd.Timestamp(history["ts"].max())) / step))
    if h < 1:
        return None
    known = actual[actual["series_id"].isin(set(history["series_id"]))]
    if known.empty:
        return None
    fc = model.predict(h, batch=history)
    both = known.merge(fc, on=["series_id", "ts"], how="inner").dropna(subset=["value", "yhat"])
    if both.empty:
        return None
    panel = to_panel(history, step)
    m = season_length(step)
    scale = {sid: naive_scale(y, m) for sid, y in zip(panel.ids, panel.values)}
    errs = []
    for sid, g in both.groupby("series_id"):
        s = scale.get(str(sid), float("nan"))
        if s > 0:
            errs.append(float(np.mean(np.abs(g["value"].to_numpy() - g["yhat"].to_numpy()))) / s)
    return float(np.mean(errs)) if errs else None
