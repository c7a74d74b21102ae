"""Approved actions: remediation webhooks that run only when an operator approves them.

A watch names its actions in the config (``watches[].actions``: url, method, headers, a
payload template). Nothing runs an action by itself: the only way in is
``POST /api/v1/actions/<watch>/<name>/runs`` with a write token, an ``event_id`` and who
approves. Every run is recorded in ``action_runs`` (who, when, the request sent without its
headers, the HTTP status, an excerpt of the answer, the error) whatever happened.

The payload is a fixed template from the config, rendered in Jinja2's sandbox from event and
explanation fields only; every ``{{ ... }}`` is JSON-encoded, so a label value or an LLM
summary is always data in the body, never template code or JSON structure.

Answers: 201 the receiver answered 2xx; 502 it could not be reached or answered otherwise
(the run is recorded all the same, and returned as ``run``); 400/401/404/409/413 as usual.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field

from aiops.config import ActionConfig, AiopsConfig
from aiops.errors import StoreError
from aiops.service.api import (
    JsonInt, api_error, iso, parse_args, parse_body, read_guard, store_unavailable, write_guard,
)
from aiops.store import MAX_ID, Store
from aiops.types import AnomalyEvent

logger = logging.getLogger(__name__)

RESPONSE_EXCERPT = 2000  # characters of the receiver's answer kept in the record
TEMPLATE_NAMES = frozenset({"event", "explanation", "action", "approved_by"})
EXPLANATION_FIELDS = ("id", "title", "summary", "backend", "created_at")


class ActionRunRequest(BaseModel):
    """The body of ``POST /api/v1/actions/<watch>/<name>/runs``."""

    model_config = ConfigDict(extra="forbid")

    event_id: JsonInt = Field(..., ge=1, le=MAX_ID, description="The anomaly event the action is run for.")
    approved_by: str = Field(..., min_length=1, max_length=128, pattern=r"\S", description="Who approves the run.")


class ActionRunsQuery(BaseModel):
    """Query parameters of ``GET /api/v1/action-runs``."""

    watch: str | None = Field(None, max_length=64)
    limit: int = Field(100, ge=1, le=1000)


# --------------------------------------------------------------------------- the payload template


class _Labels(dict):
    """Labels in the template: a label the series lacks renders as ``null`` instead of failing."""

    def __missing__(self, key: str) -> Any:
        return None


class _SampleLabels(dict):
    """Labels when checking a template: any label has a string value, so a quoted placeholder shows."""

    def __missing__(self, key: str) -> Any:
        return "sample"


def _json_value(value: Any) -> str:
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError naming the missing attribute

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, datetime):
            return iso(v)
        return v

    return json.dumps(clean(value), ensure_ascii=False)


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(finalize=_json_value, undefined=StrictUndefined, autoescape=False)


def check_payload_template(text: str) -> None:
    """Check a payload template: Jinja2 syntax, known names only, and valid JSON once rendered.

    Raises:
        ValueError: the problem, in one sentence (used by the config validator).
    """
    from jinja2 import TemplateError, meta

    env = _environment()
    try:
        unknown = meta.find_undeclared_variables(env.parse(text)) - TEMPLATE_NAMES
    except TemplateError as exc:
        raise ValueError(f"not a valid Jinja2 template: {exc}") from None
    if unknown:
        raise ValueError(
            f"unknown name(s) {', '.join(sorted(unknown))}; use {', '.join(sorted(TEMPLATE_NAMES))}"
        )
    sample_event = {
        "id": 1, "watch": "w", "series": 'm{a="b"}', "labels": _SampleLabels({"a": 'quote " and \\ backslash'}),
        "start": "2026-01-01T00:00:00Z", "end": None, "peak_time": "2026-01-01T00:05:00Z", "peak_score": 6.0,
        "severity": "warning", "direction": "spike", "observed": 2.0, "expected": 1.0,
    }
    for expl in ({k: None for k in EXPLANATION_FIELDS}, {k: "t" for k in EXPLANATION_FIELDS}):
        ctx = {"event": sample_event, "explanation": expl, "action": {"name": "a", "watch": "w"}, "approved_by": "x"}
        try:
            rendered = env.from_string(text).render(ctx)
        except (TemplateError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot render: {exc}") from None
        try:
            json.loads(rendered)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"does not render to JSON ({exc.msg} at character {exc.pos}); values are JSON-encoded "
                "already, so write {{ event.severity }} without quotes around it"
            ) from None


def template_context(
    event: AnomalyEvent, explanation: Mapping[str, Any] | None, action: ActionConfig, watch: str, approved_by: str
) -> dict[str, Any]:
    """What the payload template may use: event and explanation fields, the action, the approver."""
    expl = {k: None for k in EXPLANATION_FIELDS}
    if explanation is not None:
        body = explanation.get("explanation") or {}
        expl.update(id=explanation["id"], title=body.get("title"), summary=body.get("summary"),
                    backend=explanation.get("backend"), created_at=iso(explanation.get("created_at")))
    return {
        "event": {
            "id": event.id, "watch": event.watch, "series": event.series_id, "labels": _Labels(event.labels),
            "start": iso(event.start), "end": iso(event.end), "peak_time": iso(event.peak_time),
            "peak_score": event.peak_score, "severity": event.severity, "direction": event.direction,
            "observed": event.observed, "expected": event.expected,
        },
        "explanation": expl,
        "action": {"name": action.name, "watch": watch},
        "approved_by": approved_by,
    }


def render_payload(action: ActionConfig, context: Mapping[str, Any]) -> Any:
    """The JSON body for one run.

    Raises:
        ValueError: the template cannot be rendered for this event, or renders no JSON.
    """
    from jinja2 import TemplateError

    try:
        text = _environment().from_string(action.payload).render(dict(context))
        return json.loads(text)
    except (TemplateError, TypeError, ValueError) as exc:
        raise ValueError(f"action {action.name!r}: the payload template failed for this event: {exc}") from None


def redact_url(url: str) -> str:
    """The URL without user info and with query values hidden (they may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "&".join(f"{kv.split('=', 1)[0]}=***" for kv in parts.query.split("&") if kv) if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


# --------------------------------------------------------------------------- running


def run_action(
    store: Store, action: ActionConfig, watch: str, event: AnomalyEvent, approved_by: str
) -> dict[str, Any]:
    """Send one approved action and record the run; returns the recorded row.

    Raises:
        ValueError: the payload template cannot be rendered for this event (nothing was sent).
        StoreError: the run could not be recorded.
    """
    import requests

    explanation = store.latest_explanation("event", f"event:{event.id}")
    payload = render_payload(action, template_context(event, explanation, action, watch, approved_by))
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "aiops-action"}
    headers.update({k: v.get_secret_value() for k, v in action.headers.items()})
    status_code: int | None = None
    excerpt: str | None = None
    error: str | None = None
    try:
        resp = requests.request(action.method, action.url, data=body, headers=headers,
                                timeout=action.timeout.seconds, allow_redirects=False)
        status_code = resp.status_code
        excerpt = resp.text[:RESPONSE_EXCERPT]
        if not 200 <= resp.status_code < 300:
            error = f"the receiver answered HTTP {resp.status_code}"
    except requests.Timeout:
        error = f"no answer from {redact_url(action.url)} within {action.timeout}"
    except requests.RequestException as exc:
        error = f"cannot reach {redact_url(action.url)}: {type(exc).__name__}"
    run = store.add_action_run(
        watch=watch, action=action.name, event_id=event.id,
        explanation_id=explanation["id"] if explanation else None, approved_by=approved_by,
        status_code=status_code, response=excerpt, error=error,
        request={"method": action.method, "url": redact_url(action.url), "body": payload},
    )
    logger.info("action %s/%s for event %s approved by %s: %s", watch, action.name, event.id, approved_by,
                error or f"HTTP {status_code}")
    return run


def run_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "watch": row.get("watch"), "action": row["action"], "event_id": row.get("event_id"),
        "explanation_id": row.get("explanation_id"), "approved_by": row["approved_by"],
        "approved_at": iso(row.get("approved_at")), "request": row.get("request"),
        "status_code": row.get("status_code"), "response": row.get("response"), "error": row.get("error"),
        "ok": row.get("error") is None and row.get("status_code") is not None,
    }


def _find(config: AiopsConfig, watch: str, name: str) -> ActionConfig | None:
    for w in config.watches:
        if w.name == watch:
            return next((a for a in w.actions if a.name == name), None)
    return None


def create_actions_blueprint() -> Blueprint:
    """``/api/v1/actions``, ``/api/v1/actions/<watch>/<name>/runs``, ``/api/v1/action-runs``."""
    bp = Blueprint("aiops_actions", __name__)
    bp.register_error_handler(StoreError, store_unavailable)  # 503, logged

    @bp.get("/api/v1/actions")
    def list_actions() -> Response:
        config = current_app.extensions["aiops"]["config"]
        denied = read_guard()
        if denied:
            return denied
        data = [
            {"watch": w.name, "name": a.name, "description": a.description, "method": a.method,
             "target": redact_url(a.url)}
            for w in config.watches for a in w.actions
        ]
        return jsonify({"status": "success", "data": data})

    @bp.post("/api/v1/actions/<watch>/<name>/runs")
    def approve(watch: str, name: str) -> Response:
        ext = current_app.extensions["aiops"]
        config, store = ext["config"], ext["store"]
        denied = write_guard("actions")
        if denied:
            return denied
        body = parse_body(ActionRunRequest, "action run")
        if isinstance(body, Response):
            return body
        action = _find(config, watch, name)
        if action is None:
            return api_error(404, "not_found", f"watch {watch!r} has no action {name!r}; GET /api/v1/actions lists them")
        event = store.event(body.event_id)
        if event is None:
            return api_error(404, "not_found", f"no anomaly event with id {body.event_id}")
        if event.watch != watch:
            return api_error(409, "conflict", f"event {event.id} belongs to watch {event.watch!r}, not {watch!r}; "
                             f"approve an action of watch {event.watch!r}")
        try:
            run = run_action(store, action, watch, event, body.approved_by.strip())
        except ValueError as exc:
            return api_error(422, "bad_data", str(exc))
        except StoreError as exc:
            logger.error("actions: cannot record a run: %s", exc)
            return api_error(503, "unavailable", "the store is unavailable; the run may have been sent but was not recorded")
        out = run_to_json(run)
        if run["error"] is not None:
            return api_error(502, "action_failed", f"action {watch}/{name}: {run['error']} (the run is recorded as {run['id']})",
                             run=out)
        resp = jsonify({"status": "success", "data": out})
        resp.status_code = 201
        return resp

    @bp.get("/api/v1/action-runs")
    def list_runs() -> Response:
        store = current_app.extensions["aiops"]["store"]
        denied = read_guard()
        if denied:
            return denied
        args = parse_args(ActionRunsQuery)
        if isinstance(args, Response):
            return args
        rows = store.action_runs(watch=args.watch, limit=args.limit)
        return jsonify({"status": "success", "data": [run_to_json(r) for r in rows]})

    return bp
