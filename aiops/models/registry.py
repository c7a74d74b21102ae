"""Model registry: name -> class. Torch-backed models are imported only when asked for.

``auto`` is the default kind: the global neural model with a robust baseline fallback for
forecasting. For causal detection, :func:`detect_kind` maps ``auto`` to the cheap robust
baseline (refitted often) because one-step residuals are what scores need.
"""

from __future__ import annotations

import importlib
import logging

from aiops.errors import ModelError

logger = logging.getLogger(__name__)

_BUILTIN: dict[str, str] = {
    "seasonal_naive": "aiops.models.baselines:SeasonalNaive",
    "robust": "aiops.models.baselines:RobustSeasonal",
    "neural": "aiops.models.neural:NeuralForecaster",
    "auto": "aiops.models.neural:AutoForecaster",
}
_REGISTERED: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator adding a model under ``cls.NAME``."""
    _REGISTERED[cls.NAME] = cls
    return cls


def model_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_model(kind: str) -> type:
    """The model class registered as ``kind``."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    target = _BUILTIN.get(kind)
    if target is None:
        raise ModelError(f"unknown model kind {kind!r}", hint=f"use one of: {', '.join(model_names())}")
    mod_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    _REGISTERED[kind] = cls
    return cls


def all_models() -> dict[str, type]:
    """Every registered model, imported."""
    return {name: get_model(name) for name in model_names()}


def detect_kind(kind: str) -> str:
    """The model used for causal scoring when ``kind`` is asked for."""
    return "robust" if kind == "auto" else kind
