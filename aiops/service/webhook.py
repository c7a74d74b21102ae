"""The Alertmanager webhook: ``POST /api/v1/alertmanager`` into the durable inbox.

The handler only authenticates, validates and stores; workers explain later, so Alertmanager
gets its 202 within milliseconds. Payloads are Alertmanager's webhook format version "4";
fields newer releases add (``notification_reason``, ``routeLabels``...) are accepted and kept.

Answers: 202 stored (duplicates of already stored alerts count as accepted), 400 bad JSON or
a bad field (named by path, e.g. ``alerts[0].startsAt``), 401 token, 413 too large or too many
alerts, 503 store unavailable (Alertmanager retries). Also ``GET /api/v1/dead-letters`` and
``POST /api/v1/dead-letters/<id>/retry``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.exceptions import RequestEntityTooLarge

from aiops.config import AiopsConfig, yaml_path
from aiops.errors import StoreError
from aiops.service.auth import read_denied, write_denied
from aiops.service.inbox import Inbox

logger = logging.getLogger(__name__)


def _rfc3339(v: str) -> str:
    try:
        datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {v[:64]!r}") from None
    return v


class WebhookAlert(BaseModel):
    """One alert as Alertmanager sends it; only what aiops uses is required."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str = Field(..., min_length=1, max_length=64)

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _times(cls, v: str | None) -> str | None:
        return v if v is None else _rfc3339(v)


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body (format version 4)."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str | None = None
    groupKey: str | None = None
    alerts: list[WebhookAlert]


def _error(status: int, message: str, **extra: Any) -> Response:
    resp = jsonify({"status": "error", "error": message, **extra})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _ctx() -> tuple[AiopsConfig, Inbox]:
    ext = current_app.extensions["aiops"]
    if "inbox" not in ext:
        ext["inbox"] = Inbox(ext["store"])
    return ext["config"], ext["inbox"]


def create_webhook_blueprint() -> Blueprint:
    """The webhook blueprint; needs ``app.extensions["aiops"]`` with ``config`` and ``store``.

    An optional ``app.extensions["aiops"]["inbox_notify"]`` callable is called after alerts
    are stored (it wakes the worker threads of ``aiops serve``).
    """
    bp = Blueprint("aiops_webhook", __name__)

    @bp.post("/api/v1/alertmanager")
    def alertmanager() -> Response:
        config, inbox = _ctx()
        svc = config.service
        denied = write_denied(svc, request.headers.get("Authorization"))
        if denied:
            logger.warning("webhook: refused a request from %s: %s", request.remote_addr, denied)
            return _error(401, denied)
        if request.content_length is not None and request.content_length > svc.max_body_bytes:
            return _error(413, f"body is {request.content_length} bytes; the limit is {svc.max_body_bytes} "
                          "(service.max_body_bytes); set max_alerts on the Alertmanager receiver")
        try:
            raw = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _error(413, f"body exceeds service.max_body_bytes ({svc.max_body_bytes})")
        if len(raw) > svc.max_body_bytes:
            return _error(413, f"body exceeds service.max_body_bytes ({svc.max_body_bytes})")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"malformed JSON: {exc}")
        if isinstance(data, dict) and isinstance(data.get("alerts"), list):
            n = len(data["alerts"])
            if n > svc.max_alerts_per_request:
                return _error(413, f"{n} alerts in one request; the limit is {svc.max_alerts_per_request} "
                              "(service.max_alerts_per_request); set max_alerts on the Alertmanager receiver")
        try:
            payload = WebhookPayload.model_validate(data)
        except ValidationError as exc:
            problems = [f"{yaml_path(e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors(include_url=False)]
            return _error(400, "invalid Alertmanager payload: " + "; ".join(problems[:10]), problems=problems)
        alerts = [a.model_dump(mode="json") for a in payload.alerts]
        try:
            stored, dupes = inbox.add(alerts)
        except StoreError as exc:
            logger.error("webhook: cannot store %d alerts: %s", len(alerts), exc)
            return _error(503, "the inbox is unavailable; retry later")
        notify = current_app.extensions["aiops"].get("inbox_notify")
        if stored and notify is not None:
            notify()
        logger.info("webhook: %d alerts from %s (%d new, %d already stored)",
                    len(alerts), payload.receiver, stored, dupes)
        resp = jsonify({"status": "accepted", "alerts": len(alerts), "stored": stored, "duplicates": dupes})
        resp.status_code = 202
        return resp

    @bp.get("/api/v1/dead-letters")
    def dead_letters() -> Response:
        config, inbox = _ctx()
        denied = read_denied(config.service, request.headers.get("Authorization"))
        if denied:
            return _error(401, denied)
        try:
            limit = min(max(int(request.args.get("limit", 100)), 1), 1000)
        except ValueError:
            return _error(400, "limit must be an integer")
        return jsonify({"status": "success", "data": inbox.dead_letters(limit)})

    @bp.post("/api/v1/dead-letters/<int:row_id>/retry")
    def retry_dead_letter(row_id: int) -> Response:
        config, inbox = _ctx()
        denied = write_denied(config.service, request.headers.get("Authorization"))
        if denied:
            return _error(401, denied)
        if not inbox.requeue(row_id):
            return _error(404, f"no dead letter with id {row_id}")
        notify = current_app.extensions["aiops"].get("inbox_notify")
        if notify is not None:
            notify()
        resp = jsonify({"status": "accepted", "id": row_id})
        resp.status_code = 202
        return resp

    return bp
