"""A global quantile MLP trained across all series of a watch, and the ``auto`` ensemble.

:class:`NeuralForecaster` reads a context window of each series (normalised by the series'
robust scale around the window's median) and forecasts ``horizon`` steps directly as three
quantiles, on top of a seasonal-median base forecast (so an untrained net already forecasts
like a robust seasonal baseline). It trains on random windows from every series, batches thousands of series per step, stops
early once the training loss stops improving, uses CUDA with bfloat16 autocast when present and
is deterministic for a seed on CPU. Each series' last one or two horizons are held out from
training; forecasts from a few origins inside that tail calibrate the band conformally, per
horizon bucket, pooled across series and origins.

:class:`AutoForecaster` (kind ``auto``) fits it and the robust baseline and serves, per series,
the one with the lower held-out error over the same origins (each with its band calibrated
there); the baseline alone where history is too short or the net fails.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from aiops.errors import ModelError
from aiops.models.base import BaseForecaster
from aiops.models.baselines import RobustSeasonal
from aiops.models.calibrate import factors_at, horizon_factors, widen
from aiops.models.data import Panel, detect_season, fill_gaps, robust_scale, robust_scale_rows

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


class _AdamW:
    """AdamW (decoupled weight decay), the update of ``torch.optim.AdamW`` in a few tensor ops.

    Constructing a ``torch.optim`` optimizer imports ``torch._dynamo``, about 2 s per process,
    which would dominate a one-shot ``aiops forecast`` on a small watch.
    """

    def __init__(self, params, lr: float, weight_decay: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-8):
        torch = _torch()
        self.params = list(params)
        self.wd, self.b1, self.b2, self.eps = weight_decay, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, lr: float) -> None:
        torch = _torch()
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                if p.grad is None:
                    continue
                g = p.grad
                p.mul_(1 - lr * self.wd)
                m.mul_(self.b1).add_(g, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                p.addcdiv_(m, (v.sqrt() / np.sqrt(c2)).add_(self.eps), value=-lr / c1)


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


CALIB_CHUNK = 8192  # held-out forecast windows per batch while calibrating (bounds memory)
CHECK_EVERY = 25  # training steps per plateau check


class _Schedule:
    """Learning-rate factor and stopping rule for at most ``steps`` training steps.

    Linear warm-up, then the full rate until the mean loss of the last ``CHECK_EVERY`` steps has
    not improved on the best such mean by 1% for ``patience`` checks in a row (or 80% of the
    budget is spent); then a linear anneal over a quarter of the steps done so far, and stop.
    """

    def __init__(self, steps: int, patience: int):
        self.steps, self.patience = max(int(steps), 1), int(patience)
        self.warm = max(1, min(20, self.steps // 10))
        self.step, self.best, self.bad = 0, np.inf, 0
        self.anneal_from: int | None = None
        self.end = self.steps
        self._losses: list[float] = []

    def running(self) -> bool:
        return self.step < self.end

    def lr_factor(self) -> float:
        if self.anneal_from is not None:
            return max(0.02, 1.0 - (self.step - self.anneal_from) / max(self.end - self.anneal_from, 1))
        return min(1.0, (self.step + 1) / self.warm)

    def record(self, loss: float) -> None:
        self.step += 1
        self._losses.append(loss)
        if self.anneal_from is not None:
            return
        plateau = False
        if self.step % CHECK_EVERY == 0:
            mean = float(np.mean(self._losses[-CHECK_EVERY:]))
            if mean < self.best * 0.99:
                self.best, self.bad = mean, 0
            else:
                self.bad += 1
            plateau = self.patience > 0 and self.bad >= self.patience
        if plateau or self.step >= int(0.8 * self.steps):
            self.anneal_from = self.step
            self.end = min(self.steps, self.step + max(CHECK_EVERY, self.step // 4))


class NeuralForecaster(BaseForecaster):
    """Global MLP quantile forecaster (see the module docstring).

    Params:
        horizon: steps forecast at once (longer horizons roll forward); set by forecast_frame.
        context_seasons: context length in seasons (at least ``min_context`` steps).
        hidden, layers: MLP size. steps, batch, lr: training budget (at most ``steps``).
        patience: checks (every 25 steps) without a 1% better training loss before the learning
            rate anneals and training stops early; 0 always runs ``steps``.
        calib_origins: held-out forecast origins per series for the band calibration (over the
            last two horizons, when the series is long enough; one horizon otherwise).
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
        "threads": 1, "calib_origins": 4, "patience": 3,
    }

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        self.net_ = None
        self.val_error_: float | None = None
        self.cal_: tuple[list[int], list[float]] = ([1], [1.0])
        self.steps_ = 0

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
        # (n, m), phase aligned with the context end; the median of two is their mean (cheaper)
        prof = seasons.mean(axis=1) if K <= 2 else np.median(seasons, axis=1)
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

    def _holdout(self, n: int) -> int:
        """Steps at the end of a series of ``n`` held out from training for calibration."""
        L, H, _ = self._dims()
        if int(self.params["calib_origins"]) > 1 and n >= L + 4 * H:
            return 2 * H
        return H if n > L + 2 * H else 0

    def _origins(self, n: int, hold: int) -> list[int]:
        """Held-out forecast origins (history lengths) in a tail of ``hold`` steps."""
        H = self.horizon
        if hold <= H:
            return [n - H] if hold else []
        k = int(self.params["calib_origins"])
        return sorted({int(round(o)) for o in np.linspace(n - hold, n - H, k)})

    def _fit_net(self, panel: Panel) -> None:
        torch = _torch()
        self.m_ = self._season_all(panel)
        L, H, _ = self._dims()
        self.series_ = {}
        filled = [fill_gaps(y) for y in panel.values]
        masks = [np.isfinite(y) for y in panel.values]
        scales = [robust_scale(y)[1] for y in panel.values]
        holds = [self._holdout(len(x)) for x in filled]
        for sid, s, v in zip(panel.ids, scales, holds):
            self.series_[sid] = {"scale": s, "holdout": v}
        train = [(x[: len(x) - v], mk[: len(mk) - v]) for x, mk, v in zip(filled, masks, holds)]
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net_ = _build_net(L + H, 3 * H, int(self.params["hidden"]), int(self.params["layers"])).to(dev)
        usable = [i for i, (x, _) in enumerate(train) if len(x) >= H + 8]
        self.steps_ = 0
        if not usable:
            logger.info("neural: no series long enough to train on; the base forecast stands")
            self._calibrate(panel, filled, masks, scales, holds)
            return
        pads = [np.concatenate([np.full(max(0, L - (len(train[i][0]) - H)), train[i][0][0]), train[i][0]]) for i in usable]
        pmask = [np.concatenate([np.zeros(len(p) - len(train[i][1]), bool), train[i][1]]) for p, i in zip(pads, usable)]
        lens = np.array([len(p) - L - H + 1 for p in pads])
        flat, fmask = np.concatenate(pads), np.concatenate(pmask)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in pads])[:-1]])
        sc = np.array([scales[i] for i in usable])
        lr = float(self.params["lr"])
        opt = _AdamW(self.net_.parameters(), lr=lr, weight_decay=1e-4)
        steps, batch = int(self.params["steps"]), int(self.params["batch"])
        sched = _Schedule(steps, int(self.params["patience"]))
        qs = torch.tensor([(1 - self.level) / 2, 0.5, (1 + self.level) / 2], device=dev)
        ar = np.arange(L + H)
        amp = dev.type == "cuda"
        self.net_.train()
        while sched.running():
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
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net_.parameters(), 1.0, foreach=False)
            opt.step(lr * sched.lr_factor())
            sched.record(float(loss.detach()))
        self.steps_ = sched.step
        logger.debug("neural: trained %d of %d steps on %d series", sched.step, steps, len(usable))
        self._calibrate(panel, filled, masks, scales, holds)

    def _calibrate(self, panel: Panel, filled, masks, scales, holds) -> None:
        """Band factors per horizon bucket and validation error from held-out forecasts.

        Each series with a held-out tail is forecast from a few origins inside it (the net has
        not trained on any step it forecasts there); the errors against the band give
        conformal factors pooled across series and origins by horizon bucket
        (:func:`~aiops.models.calibrate.horizon_factors`), and the mean absolute error per
        series, in its scale, is its validation error.
        """
        H = self.horizon
        rows = [(i, o) for i, (x, v) in enumerate(zip(filled, holds)) for o in self._origins(len(x), v)]
        self.cal_ = ([1], [1.0])
        errs: dict[int, list[float]] = {}
        res, half = [], []
        for c in range(0, len(rows), CALIB_CHUNK):
            part = rows[c : c + CALIB_CHUNK]
            yh, lo, hi = self._raw_forecast([filled[i][:o] for i, o in part], [scales[i] for i, _ in part], H)
            truth = np.stack([np.where(masks[i][o : o + H], filled[i][o : o + H], np.nan) for i, o in part])
            r = truth - yh
            floor = 1e-6 * np.array([scales[i] for i, _ in part])[:, None]
            res.append(r)
            half.append(np.maximum(np.where(r >= 0, hi - yh, yh - lo), floor))
            with np.errstate(invalid="ignore"):
                mae = np.nanmean(np.abs(r), axis=1) if np.isfinite(r).any() else np.full(len(part), np.nan)
            for (i, _), e in zip(part, mae):
                errs.setdefault(i, []).append(float(e) / scales[i])
        if res:
            self.cal_ = horizon_factors(np.concatenate(res), np.concatenate(half), self.level)
        finite = []
        for i, e in errs.items():
            e = [v for v in e if np.isfinite(v)]
            err = float(np.mean(e)) if e else np.nan
            self.series_[panel.ids[i]]["val_error"] = err
            if e:
                finite.append(err)
        self.val_error_ = float(np.mean(finite)) if finite else None

    # ------------------------------------------------------------------ predicting

    def _raw_forecast(self, xs: list[np.ndarray], scales: list[float], horizon: int):
        torch = _torch()
        L, H, _ = self._dims()
        ctx = np.empty((len(xs), L))
        full = [i for i, x in enumerate(xs) if len(x) >= L]
        if full:
            ctx[full] = np.stack([xs[i][-L:] for i in full])
        for i, x in enumerate(xs):
            if len(x) < L:  # a short history is padded with its first value
                ctx[i, : L - len(x)] = x[0]
                ctx[i, L - len(x) :] = x
        sc = np.asarray(scales, dtype=np.float64)
        outs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        dev = next(self.net_.parameters()).device
        done = 0
        while done < horizon:
            feats, base, loc = self._features(ctx, sc)
            self.net_.eval()
            with torch.no_grad():
                parts = [self.net_(torch.from_numpy(feats[i : i + 4096]).to(dev)).float().cpu().numpy()
                         for i in range(0, len(feats), 4096)]
            q = np.concatenate(parts).reshape(len(ctx), H, 3)
            a, b, c = q[:, :, 0], q[:, :, 1], q[:, :, 2]
            # the three quantiles in order (min, median, max of three), back in series units
            ab_lo, ab_hi = np.minimum(a, b), np.maximum(a, b)
            lo, hi = np.minimum(ab_lo, c), np.maximum(ab_hi, c)
            mid = np.maximum(ab_lo, np.minimum(ab_hi, c))
            outs.append(tuple((v + base) * sc[:, None] + loc for v in (lo, mid, hi)))
            done += H
            if done < horizon:
                ctx = np.concatenate([ctx, outs[-1][1]], axis=1)[:, -L:]  # roll forward on the median
        if len(outs) == 1:
            lo, mid, hi = (v[:, :horizon] for v in outs[0])
        else:
            lo, mid, hi = (np.concatenate([o[j] for o in outs], axis=1)[:, :horizon] for j in range(3))
        return mid, lo, hi

    def _scale_of(self, sid: str, y: np.ndarray) -> float:
        st = self.series_.get(sid)
        return float(st["scale"]) if st else robust_scale(y)[1]

    def _scales(self, panel: Panel) -> np.ndarray:
        """Each series' scale: the fitted one, else :func:`robust_scale` of its history (computed
        for many same-length gap-free series at once)."""
        out = np.empty(len(panel))
        same: dict[int, list[int]] = {}
        for i, (sid, y) in enumerate(zip(panel.ids, panel.values)):
            st = self.series_.get(sid)
            if st:
                out[i] = float(st["scale"])
            elif np.isfinite(y).all():
                same.setdefault(len(y), []).append(i)
            else:
                out[i] = robust_scale(y)[1]
        for idx in same.values():
            for c in range(0, len(idx), CALIB_CHUNK):
                part = idx[c : c + CALIB_CHUNK]
                out[part] = robust_scale_rows(np.stack([panel.values[i] for i in part]))
        return out

    def _forecast(self, panel: Panel, horizon: int):
        L = self._dims()[0]
        xs = []
        for y in panel.values:  # only the context window is needed; filled only where it has gaps
            tail = y[-L:]
            xs.append(tail if np.isfinite(tail).all() else fill_gaps(y)[-L:])
        with _threads(int(self.params["threads"])):
            yh, lo, hi = self._raw_forecast(xs, list(self._scales(panel)), horizon)
        lo, hi = widen(yh, lo, hi, factors_at(*self.cal_, horizon)[None, :])
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
        starts, factors = self.cal_
        return {"season": self.m_, "cal_starts": starts, "cal_factors": factors, "val_error": self.val_error_,
                "steps": self.steps_}

    def _load_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        torch = _torch()
        self.m_ = int(state["season"])
        if "cal_starts" in state:
            self.cal_ = ([int(v) for v in state["cal_starts"]], [float(v) for v in state["cal_factors"]])
        else:  # saved before per-horizon calibration: one factor
            self.cal_ = ([1], [float(state.get("factor", 1.0))])
        self.steps_ = int(state.get("steps", 0))
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
        self.robust_cal_: tuple[list[int], list[float]] = ([1], [1.0])

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
        robust_err = self._validate_robust(panel)
        self.series_ = {}
        errs = []
        for sid in panel.ids:
            ne = self.neural_.series_.get(sid, {}).get("val_error") if ok else None
            re = robust_err.get(sid)
            choice, err = "robust", re
            if ne is not None and np.isfinite(ne) and (re is None or not np.isfinite(re) or ne <= re):
                choice, err = "neural", ne
            self.series_[sid] = {"model": choice, "val_error": err}
            if err is not None and np.isfinite(err):
                errs.append(err)
        self.val_error_ = float(np.mean(errs)) if errs else None

    def _validate_robust(self, panel: Panel) -> dict[str, float]:
        """Held-out error per series of the robust baseline, and its band factors.

        The baseline is refitted on each series without its held-out tail (the neural model's
        rule) and forecasts from the same held-out origins; its band is calibrated on those
        forecasts the way the neural one is.
        """
        nn = self.neural_
        if getattr(nn, "m_", None) is None:
            nn.m_ = nn._season_all(panel)
        H = nn.horizon
        holds = [nn._holdout(len(y)) for y in panel.values]
        keep = [i for i, v in enumerate(holds) if v]
        self.robust_cal_ = ([1], [1.0])
        if not keep:
            return {}
        rb = RobustSeasonal(level=self.level, **{k: self.params[k] for k in RobustSeasonal.DEFAULTS})
        rb.step_ = panel.step
        rb._fit(Panel([panel.ids[i] for i in keep], [panel.starts[i] for i in keep], panel.step,
                      [panel.values[i][: len(panel.values[i]) - holds[i]] for i in keep]))
        rows = [(i, o) for i in keep for o in nn._origins(len(panel.values[i]), holds[i])]
        res, halves = [], []
        out: dict[str, list[float]] = {}
        for c in range(0, len(rows), CALIB_CHUNK):
            part = rows[c : c + CALIB_CHUNK]
            sub = Panel([panel.ids[i] for i, _ in part], [panel.starts[i] for i, _ in part], panel.step,
                        [panel.values[i][:o] for i, o in part])
            yh, lo, hi = (np.stack(a) for a in rb._forecast(sub, H))
            scale = np.array([nn._scale_of(panel.ids[i], panel.values[i]) for i, _ in part])
            r = np.stack([panel.values[i][o : o + H] for i, o in part]) - yh
            res.append(r)
            halves.append(np.maximum(np.where(r >= 0, hi - yh, yh - lo), 1e-6 * scale[:, None]))
            with np.errstate(invalid="ignore"):
                mae = np.nanmean(np.abs(r), axis=1) / scale
            for (i, _), e in zip(part, mae):
                out.setdefault(panel.ids[i], []).append(float(e))
        self.robust_cal_ = horizon_factors(np.concatenate(res), np.concatenate(halves), self.level)
        return {sid: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for sid, v in out.items()}

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
            if model is self.robust_:
                f = factors_at(*self.robust_cal_, horizon)
                b, c = zip(*(widen(a[j], b[j], c[j], f) for j in range(len(idx))))
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
            "robust_cal": {"starts": self.robust_cal_[0], "factors": self.robust_cal_[1]},
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
        cal = state.get("robust_cal") or {"starts": [1], "factors": [1.0]}
        self.robust_cal_ = ([int(v) for v in cal["starts"]], [float(v) for v in cal["factors"]])
