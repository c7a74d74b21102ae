"""A global quantile MLP trained across all series of a watch, and the ``auto`` ensemble.

:class:`NeuralForecaster` reads a context window of each series (normalised by the series'
robust scale around the window's median) and forecasts ``horizon`` steps directly as three
quantiles, on top of a seasonal-median base forecast (so an untrained net already forecasts
like a robust seasonal baseline). It trains on random windows from every series for a
bounded number of steps, batches thousands of series per step, uses CUDA with bfloat16
autocast when present and is deterministic for a seed on CPU. The band is conformally
recalibrated on each series' last ``horizon`` steps, held out from training.

:class:`AutoForecaster` (kind ``auto``) fits it and the robust baseline and serves, per series,
the one with the lower held-out error; the baseline alone where history is too short or the
net fails.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from aiops.errors import ModelError
from aiops.models.base import BaseForecaster
from aiops.models.baselines import RobustSeasonal
from aiops.models.calibrate import conformal_factor
from aiops.models.data import Panel, detect_season, fill_gaps, robust_scale

logger = logging.getLogger(__name__)


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        raise ModelError("the neural model needs torch", hint="pip install torch") from exc
    return torch


class _threads:
    """Temporarily set torch's CPU thread count (0 leaves it alone)."""

    def __init__(self, n: int):
        self.n, self.old = n, None

    def __enter__(self) -> None:
        if self.n > 0:
            torch = _torch()
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            _torch().set_num_threads(self.old)


def _build_net(n_in: int, n_out: int, hidden: int, layers: int):
    torch = _torch()
    mods: list[Any] = []
    d = n_in
    for _ in range(layers):
        mods += [torch.nn.Linear(d, hidden), torch.nn.GELU()]
        d = hidden
    last = torch.nn.Linear(d, n_out)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return torch.nn.Sequential(*mods, last)


class NeuralForecaster(BaseForecaster):
    """Global MLP quantile forecaster (see the module docstring).

    Params:
        horizon: steps forecast at once (longer horizons roll forward); set by forecast_frame.
        context_seasons: context length in seasons (at least ``min_context`` steps).
        hidden, layers: MLP size. steps, batch, lr: training budget.
        threads: CPU threads for torch while fitting/predicting (0 = torch's default). One is
            the default because on small shared machines torch's thread pool spins against
            other processes (20x slower measured on a loaded 2-core host).
        season: steps per season; 0 = the most common detected one across series.
    """

    NAME = "neural"
    GLOBAL = True
    USES_TORCH = True
    SUPPORTS_GPU = True
    MIN_HISTORY = 16
    DEFAULTS = {
        "horizon": 24, "context_seasons": 2, "min_context": 48, "max_context": 1024, "hidden": 256,
        "layers": 2, "steps": 300, "batch": 512, "lr": 2e-3, "season": 0, "calib_window": 2000,
        "threads": 1,
    }

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.net_ = None
        self.val_error_: float | None = None

    @property
    def horizon(self) -> int:
        return int(self.params["horizon"])

    @horizon.setter
    def horizon(self, h: int) -> None:
        self.params["horizon"] = int(h)

    # ------------------------------------------------------------------ shapes

    def _season_all(self, panel: Panel) -> int:
        m = int(self.params["season"])
        if m >= 1:
            return m
        seasons = [detect_season(v, panel.step) for v in panel.values]
        vals, counts = np.unique(seasons, return_counts=True)
        return int(vals[np.argmax(counts)]) if len(vals) else 1

    def _dims(self) -> tuple[int, int, int]:
        m, H = self.m_, self.horizon
        L = max(int(self.params["context_seasons"]) * m, int(self.params["min_context"]))
        L = min(L, int(self.params["max_context"]))
        K = max(1, L // m) if m > 1 else 1
        return L, H, K

    def _base(self, ctx: np.ndarray) -> np.ndarray:
        """Seasonal-median base forecast over the horizon from context windows (n, L)."""
        L, H, K = self._dims()
        m = self.m_
        if m <= 1 or K * m > L:
            last = np.median(ctx[:, -3:], axis=1, keepdims=True)
            return np.repeat(last, H, axis=1)
        seasons = ctx[:, L - K * m :].reshape(len(ctx), K, m)
        prof = np.median(seasons, axis=1)  # (n, m), phase aligned with the context end
        reps = int(np.ceil(H / m))
        return np.tile(prof, (1, reps))[:, :H]

    def _features(self, ctx: np.ndarray, scale: np.ndarray):
        """Normalised inputs and the base, for context windows ``ctx`` (n, L) in series units."""
        loc = np.median(ctx, axis=1, keepdims=True)
        xn = (ctx - loc) / scale[:, None]
        base = self._base(xn)
        return np.concatenate([xn, base], axis=1).astype(np.float32), base, loc

    # ------------------------------------------------------------------ training

    def _fit(self, panel: Panel) -> None:
        with _threads(int(self.params["threads"])):
            self._fit_net(panel)

    def _fit_net(self, panel: Panel) -> None:
        torch = _torch()
        self.m_ = self._season_all(panel)
        L, H, _ = self._dims()
        self.series_ = {}
        filled, masks, scales = [], [], []
        for sid, y in zip(panel.ids, panel.values):
            _, s = robust_scale(y)
            self.series_[sid] = {"scale": s}
            filled.append(fill_gaps(y))
            masks.append(np.isfinite(y))
            scales.append(s)
        # hold out the last H steps of each series for validation and conformal calibration
        train = [(x[:-H], mk[:-H]) if len(x) > L + 2 * H else (x, mk) for x, mk in zip(filled, masks)]
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net_ = _build_net(L + H, 3 * H, int(self.params["hidden"]), int(self.params["layers"])).to(dev)
        usable = [i for i, (x, _) in enumerate(train) if len(x) >= H + 8]
        if not usable:
            logger.info("neural: no series long enough to train on; the base forecast stands")
            self._calibrate(panel, filled, masks, scales)
            return
        pads = [np.concatenate([np.full(max(0, L - (len(train[i][0]) - H)), train[i][0][0]), train[i][0]]) for i in usable]
        pmask = [np.concatenate([np.zeros(len(p) - len(train[i][1]), bool), train[i][1]]) for p, i in zip(pads, usable)]
        lens = np.array([len(p) - L - H + 1 for p in pads])
        flat, fmask = np.concatenate(pads), np.concatenate(pmask)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in pads])[:-1]])
        sc = np.array([scales[i] for i in usable])
        opt = torch.optim.AdamW(self.net_.parameters(), lr=float(self.params["lr"]), weight_decay=1e-4)
        steps, batch = int(self.params["steps"]), int(self.params["batch"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(self.params["lr"]), total_steps=max(steps, 1))
        qs = torch.tensor([(1 - self.level) / 2, 0.5, (1 + self.level) / 2], device=dev)
        ar = np.arange(L + H)
        amp = dev.type == "cuda"
        self.net_.train()
        for _ in range(steps):
            si = rng.integers(0, len(usable), batch)
            start = offsets[si] + (rng.random(batch) * lens[si]).astype(np.int64)
            w = flat[start[:, None] + ar]
            wm = fmask[start[:, None] + ar][:, L:]
            feats, base, loc = self._features(w[:, :L], sc[si])
            target = (w[:, L:] - loc) / sc[si][:, None] - base
            xb = torch.from_numpy(feats).to(dev)
            tb = torch.from_numpy(target.astype(np.float32)).to(dev)
            mb = torch.from_numpy(wm.astype(np.float32)).to(dev)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                out = self.net_(xb).float().view(-1, H, 3)
            diff = tb.unsqueeze(-1) - out
            loss = (torch.maximum(qs * diff, (qs - 1) * diff) * mb.unsqueeze(-1)).sum() / mb.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net_.parameters(), 1.0)
            opt.step()
            sched.step()
        del g
        self._calibrate(panel, filled, masks, scales)

    def _calibrate(self, panel: Panel, filled, masks, scales) -> None:
        """Conformal band factor and validation error on each series' held-out last H steps."""
        L, H, _ = self._dims()
        res, half, errs = [], [], []
        self.factor_ = 1.0
        for sid, x, mk, s in zip(panel.ids, filled, masks, scales):
            if len(x) <= L + 2 * H:
                continue
            yh, lo, hi = self._raw_forecast([x[:-H]], [s], H)
            truth = np.where(mk[-H:], x[-H:], np.nan)
            r = truth - yh[0]
            res.append(r), half.append(np.where(r >= 0, hi[0] - yh[0], yh[0] - lo[0]))
            err = float(np.nanmean(np.abs(r)) / s) if np.isfinite(r).any() else np.nan
            self.series_[sid]["val_error"] = err
            errs.append(err)
        if res:
            self.factor_ = conformal_factor(np.concatenate(res), np.concatenate(half), self.level)
        finite = [e for e in errs if np.isfinite(e)]
        self.val_error_ = float(np.mean(finite)) if finite else None

    # ------------------------------------------------------------------ predicting

    def _raw_forecast(self, xs: list[np.ndarray], scales: list[float], horizon: int):
        torch = _torch()
        L, H, _ = self._dims()
        ctx = np.stack([np.concatenate([np.full(max(0, L - len(x)), x[0]), x])[-L:] for x in xs])
        sc = np.asarray(scales, dtype=np.float64)
        outs = []
        dev = next(self.net_.parameters()).device
        done = 0
        while done < horizon:
            feats, base, loc = self._features(ctx, sc)
            self.net_.eval()
            with torch.no_grad():
                parts = [self.net_(torch.from_numpy(feats[i : i + 4096]).to(dev)).float().cpu().numpy()
                         for i in range(0, len(feats), 4096)]
            q = np.concatenate(parts).reshape(len(ctx), H, 3)
            q = np.sort(q + base[:, :, None], axis=2) * sc[:, None, None] + loc[:, :, None]
            outs.append(q)
            done += H
            ctx = np.concatenate([ctx, q[:, :, 1]], axis=1)[:, -L:]  # roll forward on the median
        q = np.concatenate(outs, axis=1)[:, :horizon]
        return q[:, :, 1], q[:, :, 0], q[:, :, 2]

    def _scale_of(self, sid: str, y: np.ndarray) -> float:
        st = self.series_.get(sid)
        return float(st["scale"]) if st else robust_scale(y)[1]

    def _forecast(self, panel: Panel, horizon: int):
        xs = [fill_gaps(y) for y in panel.values]
        with _threads(int(self.params["threads"])):
            yh, lo, hi = self._raw_forecast(xs, [self._scale_of(s, y) for s, y in zip(panel.ids, panel.values)], horizon)
        f = getattr(self, "factor_", 1.0)
        lo = yh - f * (yh - lo)
        hi = yh + f * (hi - yh)
        return list(yh), list(lo), list(hi)

    def _one_step(self, sid: str, y: np.ndarray, t0: pd.Timestamp) -> np.ndarray:
        torch = _torch()
        L, H, _ = self._dims()
        x = pd.Series(y).ffill().bfill().to_numpy() if np.isfinite(y).any() else np.zeros(len(y))
        xp = np.concatenate([np.full(L, x[0]), x])
        from numpy.lib.stride_tricks import sliding_window_view

        ctx = sliding_window_view(xp, L)[: len(y)]  # ctx[t] ends at y[t-1]
        s = self._scale_of(sid, y)
        feats, base, loc = self._features(np.ascontiguousarray(ctx), np.full(len(ctx), s))
        self.net_.eval()
        dev = next(self.net_.parameters()).device
        with torch.no_grad(), _threads(int(self.params["threads"])):
            out = np.concatenate([self.net_(torch.from_numpy(feats[i : i + 8192]).to(dev)).float().cpu().numpy()
                                  for i in range(0, len(feats), 8192)])
        med = (out.reshape(len(ctx), H, 3)[:, 0, 1] + base[:, 0]) * s + loc[:, 0]
        med[0] = np.nan
        return med

    # ------------------------------------------------------------------ persistence

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {f"net.{k}": v.detach().float().cpu().numpy() for k, v in self.net_.state_dict().items()}

    def _state_json(self) -> dict[str, Any]:
        return {"season": self.m_, "factor": getattr(self, "factor_", 1.0), "val_error": self.val_error_}

    def _load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        torch = _torch()
        self.m_ = int(state["season"])
        self.factor_ = float(state.get("factor", 1.0))
        self.val_error_ = state.get("val_error")
        L, H, _ = self._dims()
        self.net_ = _build_net(L + H, 3 * H, int(self.params["hidden"]), int(self.params["layers"]))
        sd = {k[len("net."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
        try:
            self.net_.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"saved neural weights do not fit the saved hyperparameters: {exc}") from None


class AutoForecaster(BaseForecaster):
    """Per series, the better of the global neural model and the robust baseline.

    Both are fitted; each series is served by the one with the lower held-out error (the
    baseline where the series is too short to validate or the net failed to train).
    """

    NAME = "auto"
    GLOBAL = True
    USES_TORCH = True
    SUPPORTS_GPU = True
    MIN_HISTORY = 3
    DEFAULTS = {**NeuralForecaster.DEFAULTS, "seasons": 4, "trend": "auto"}

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        p = self.params
        self.neural_ = NeuralForecaster(level=self.level, seed=self.seed, **{k: p[k] for k in NeuralForecaster.DEFAULTS})
        self.robust_ = RobustSeasonal(level=self.level, seed=self.seed, **{k: p[k] for k in RobustSeasonal.DEFAULTS})
        self.val_error_: float | None = None

    @property
    def horizon(self) -> int:
        return self.neural_.horizon

    @horizon.setter
    def horizon(self, h: int) -> None:
        self.neural_.horizon = h
        self.params["horizon"] = int(h)

    def _fit(self, panel: Panel) -> None:
        for m in (self.neural_, self.robust_):
            m.step_ = panel.step
        self.robust_._fit(panel)
        try:
            self.neural_._fit(panel)
            ok = True
        except (RuntimeError, ValueError) as exc:  # torch failures: serve the baseline
            logger.warning("neural model failed, serving the robust baseline: %s", exc)
            ok = False
        H = self.neural_.horizon
        self.series_ = {}
        errs = []
        for sid, y in zip(panel.ids, panel.values):
            ne = self.neural_.series_.get(sid, {}).get("val_error") if ok else None
            choice, err = "robust", None
            if ne is not None and np.isfinite(ne) and len(y) > 2 * H + 8:
                sub = Panel([sid], [panel.starts[panel.ids.index(sid)]], panel.step, [y[:-H]])
                rb = RobustSeasonal(level=self.level, **{k: self.params[k] for k in RobustSeasonal.DEFAULTS})
                rb.step_ = panel.step
                rb._fit(sub)
                yh = rb._forecast(sub, H)[0][0]
                s = self.neural_.series_[sid]["scale"]
                re = float(np.nanmean(np.abs(y[-H:] - yh)) / s)
                choice, err = ("neural", ne) if ne <= re else ("robust", re)
            self.series_[sid] = {"model": choice, "val_error": err}
            if err is not None:
                errs.append(err)
        self.val_error_ = float(np.mean(errs)) if errs else None

    def _pick(self, sid: str) -> BaseForecaster:
        st = self.series_.get(sid)
        return self.neural_ if st and st["model"] == "neural" and self.neural_.net_ is not None else self.robust_

    def _forecast(self, panel: Panel, horizon: int):
        yh, lo, hi = [None] * len(panel), [None] * len(panel), [None] * len(panel)
        for model in (self.neural_, self.robust_):
            idx = [i for i, sid in enumerate(panel.ids) if self._pick(sid) is model]
            if not idx:
                continue
            sub = Panel([panel.ids[i] for i in idx], [panel.starts[i] for i in idx], panel.step, [panel.values[i] for i in idx])
            a, b, c = model._forecast(sub, horizon)
            for j, i in enumerate(idx):
                yh[i], lo[i], hi[i] = a[j], b[j], c[j]
        return yh, lo, hi

    def _one_step(self, sid: str, y: np.ndarray, t0: pd.Timestamp) -> np.ndarray:
        return self._pick(sid)._one_step(sid, y, t0)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        out = {f"robust.{k}": v for k, v in self.robust_._state_arrays().items()}
        if self.neural_.net_ is not None:
            out.update({f"neural.{k}": v for k, v in self.neural_._state_arrays().items()})
        return out

    def _state_json(self) -> dict[str, Any]:
        return {
            "robust": {"series": self.robust_.series_, "state": self.robust_._state_json()},
            "neural": {"series": self.neural_.series_, "state": self.neural_._state_json()} if self.neural_.net_ is not None else None,
            "val_error": self.val_error_,
        }

    def _load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for m in (self.neural_, self.robust_):
            m.step_ = self.step_
        self.robust_.series_ = state["robust"]["series"]
        self.robust_._load_state(state["robust"]["state"], {k[7:]: v for k, v in arrays.items() if k.startswith("robust.")})
        if state.get("neural"):
            self.neural_.series_ = state["neural"]["series"]
            self.neural_._load_state(state["neural"]["state"], {k[7:]: v for k, v in arrays.items() if k.startswith("neural.")})
        self.val_error_ = state.get("val_error")
