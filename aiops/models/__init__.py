"""Forecasting and anomaly scoring: models, registry, calibration and the library API.

Importing this package does not import torch; the neural model loads on first use.
"""

from aiops.models.api import detect_frame, forecast_frame
from aiops.models.base import BaseForecaster, Forecaster
from aiops.models.registry import get_model, model_names, register

__all__ = [
    "BaseForecaster",
    "Forecaster",
    "detect_frame",
    "forecast_frame",
    "get_model",
    "model_names",
    "register",
]
