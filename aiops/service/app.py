"""The Flask application factory. Nothing happens at import time."""

from __future__ import annotations

import hmac
import logging

import pandas as pd
from flask import Flask, Response, jsonify, request

from aiops.config import AiopsConfig
from aiops.outputs import DEFAULT_LOOKBACK
from aiops.store import Store

logger = logging.getLogger(__name__)

READ_PREFIXES = ("/prometheus", "/metrics")


def create_app(config: AiopsConfig, store: Store | None = None, *, lookback: pd.Timedelta = DEFAULT_LOOKBACK) -> Flask:
    """Build the service app.

    Args:
        config: the validated configuration (``service`` and ``store`` sections are used).
        store: an open store; default: open ``config.store.url``.
        lookback: how far back the read API looks for a sample at each evaluation time.

    Routes: ``/prometheus/api/v1/*`` (Prometheus-compatible read API), ``/metrics``, ``/healthz``, ``/readyz``.
    """
    from aiops.service.metrics import create_metrics_view
    from aiops.service.promapi import create_blueprint

    app = Flask("aiops")
    app.config["MAX_CONTENT_LENGTH"] = config.service.max_body_bytes
    app.extensions["aiops"] = {
        "config": config,
        "store": store if store is not None else Store.open(config.store.url),
        "lookback": lookback,
    }
    app.register_blueprint(create_blueprint(), url_prefix="/prometheus")
    app.add_url_rule("/metrics", "metrics", create_metrics_view(app.extensions["aiops"]["store"]))
    from aiops.service.webhook import create_webhook_blueprint

    app.register_blueprint(create_webhook_blueprint())  # /api/v1/alertmanager, /api/v1/dead-letters
    from aiops.service.ask_api import create_ask_blueprint

    app.register_blueprint(create_ask_blueprint())  # /api/v1/ask
    from aiops.service.actions import create_actions_blueprint
    from aiops.service.api import create_api_blueprint

    app.register_blueprint(create_api_blueprint())  # /api/v1 resources, explain-now, feedback, openapi.json
    app.register_blueprint(create_actions_blueprint())  # /api/v1/actions, /api/v1/action-runs (approved only)
    from aiops.service.ui import create_ui_blueprint

    app.register_blueprint(create_ui_blueprint(), url_prefix="/ui")  # web pages; writes go through /api/v1
    from aiops.service.health import create_health_blueprint

    app.register_blueprint(create_health_blueprint())  # /healthz, /readyz (no token: probes carry none)

    token = config.service.token.get_secret_value() if config.service.token else None
    if token and config.service.read_token_required:

        @app.before_request
        def _require_read_token():
            if request.path.startswith(READ_PREFIXES):
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    resp: Response = jsonify(
                        {"status": "error", "errorType": "unauthorized", "error": "missing or wrong bearer token"}
                    )
                    resp.status_code = 401
                    resp.headers["WWW-Authenticate"] = "Bearer"
                    return resp
            return None

    return app


def app_from_config_file(path: str | None = None) -> Flask:
    """For WSGI servers: ``gunicorn 'aiops.service.app:app_from_config_file("/etc/aiops/aiops.yaml")'``.

    The file is loaded like the CLI loads it (YAML < ``AIOPS_...`` environment).
    """
    from aiops.config import load_config

    return create_app(load_config(path))
