"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``GET /api/v1/openapi.json``).

Request bodies and query parameters come from the same pydantic models the handlers validate
with (``model_json_schema``), so the document cannot drift from what is enforced. Responses
are described here; ``tests/service/test_service_openapi.py`` runs schemathesis against the
app with this document and checks that every ``/api/v1`` route of the app is in it.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

import aiops

logger = logging.getLogger(__name__)

REF = "#/components/schemas/{model}"


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_S = {"type": "string"}
_T = {"type": "string", "format": "date-time"}
_N = {"type": ["number", "null"]}
_SN = {"type": ["string", "null"]}
_TN = {"type": ["string", "null"], "format": "date-time"}
_IN = {"type": ["integer", "null"]}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}

RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "properties": {"status": {"const": "error"}, "errorType": _S, "error": _S,
                       "problems": {"type": "array", "items": _S}},
        "required": ["status", "error"],
    },
    "ExplanationSummary": _obj({
        "id": {"type": "integer"}, "subject_kind": _S, "subject_ref": _S, "watch": _SN, "created_at": _T,
        "backend": _S, "title": _SN, "summary": _SN, "text": _S, "guard_note": _SN,
    }),
    "Event": _obj({
        "id": _IN, "watch": _S, "series": _S, "labels": _LABELS, "start": _T, "end": _TN, "peak_time": _T,
        "status": {"enum": ["open", "closed"]}, "peak_score": _N, "severity": {"enum": ["info", "warning", "critical"]},
        "direction": _S, "observed": _N, "expected": _N, "expected_lower": _N, "expected_upper": _N,
        "explanation": {"anyOf": [_ref("ExplanationSummary"), {"type": "null"}]},
    }),
    "Feedback": _obj({
        "id": {"type": "integer"}, "explanation_id": {"type": "integer"}, "verdict": _S, "text": _SN,
        "author": _SN, "created_at": _T,
    }),
    "Watch": _obj({
        "name": _S, "query": _S, "step": _S, "history": _S, "horizon": _S, "infer_every": _S, "fit_every": _S,
        "model": _S, "threshold": {"type": "number"}, "capacity": {"type": ["object", "null"]},
        "dashboard": {"type": "boolean"},
        "actions": {"type": "array", "items": _obj({"name": _S, "description": _S})},
        "open_anomalies": {"type": "integer", "minimum": 0},
        "last_runs": {"type": "object", "additionalProperties": _obj({
            "id": {"type": "integer"}, "status": _S, "started_at": _T, "finished_at": _TN, "series": _IN,
            "points": _IN, "error": _SN})},
    }),
    "Points": {"type": "array", "items": {"type": "array", "prefixItems": [_T, _N], "minItems": 2, "maxItems": 2}},
    "Forecasts": _obj({
        "watch": _S, "since": _T, "until": _T, "step": _S, "observed_error": _SN,
        "series": {"type": "array", "items": _obj({
            "series": _S, "labels": _LABELS, "observed": _ref("Points"), "yhat": _ref("Points"),
            "lower": _ref("Points"), "upper": _ref("Points"), "anomaly_score": _ref("Points")})},
    }),
    "ExplainResult": _obj({
        "query": _S, "start": _T, "end": _T, "step": _S, "series": {"type": "integer"},
        "anomalous": {"type": "boolean"}, "events": {"type": "array", "items": _ref("Event")},
        "explanation": _obj({"id": {"type": "integer"}, "title": _S, "summary": _S, "text": _S, "markdown": _S,
                             "backend": _S, "evidence_items": {"type": "array"}},
                            ["id", "title", "summary", "text", "backend"]),
    }),
    "ActionRun": _obj({
        "id": {"type": "integer"}, "watch": _SN, "action": _S, "event_id": _IN, "explanation_id": _IN,
        "approved_by": _S, "approved_at": _T, "request": {"type": ["object", "null"]}, "status_code": _IN,
        "response": _SN, "error": _SN, "ok": {"type": "boolean"},
    }),
    "Action": _obj({"watch": _S, "name": _S, "description": _S, "method": _S, "target": _S}),
    "DeadLetter": {"type": "object"},
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj({"status": {"enum": ["ready", "not ready"]}, "checks": {
        "type": "object", "additionalProperties": _obj({"ok": {"type": "boolean"}, "detail": _S})}}),
}

_ERRORS = {
    400: "Bad JSON, a bad field or parameter (named in problems).",
    401: "Missing or wrong bearer token.",
    404: "No such resource.",
    409: "The request contradicts stored state.",
    413: "Body larger than service.max_body_bytes.",
    422: "Valid input that cannot be acted on.",
    502: "An upstream system (metric source, action receiver) failed.",
    503: "The store is unavailable; retry.",
}


def _ok(schema: dict[str, Any], description: str = "OK", status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": _obj({
        "status": {"const": "success"}, "data": schema})}}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": _ERRORS[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in codes}


def _param_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: a parameter is absent or a string, never null."""
    out = {k: v for k, v in prop.items() if k not in ("title", "description")}
    alts = [a for a in out.pop("anyOf", []) if a.get("type") != "null"]
    if len(alts) == 1:
        out.update(alts[0])
    elif alts:
        out["anyOf"] = alts
    if out.get("default", 0) is None:
        del out["default"]
    return out


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _param_schema(prop),
         **({"description": prop["description"]} if "description" in prop else {})}
        for name, prop in schema["properties"].items()
    ]


def _path_param(name: str, description: str) -> dict[str, Any]:
    if name in ("watch", "name"):
        return {"name": name, "in": "path", "required": True, "description": description,
                "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "integer", "minimum": 1}}


def _alternatives(prop: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not prop:
        return []
    return [prop, *prop.get("anyOf", [])]


class _Builder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = dict(RESPONSE_SCHEMAS)

    def body(self, model: type[BaseModel], description: str, times: tuple[str, ...] = ()) -> dict[str, Any]:
        """The request body of ``model``; ``times`` names string fields its validators check as RFC 3339."""
        schema = model.model_json_schema(ref_template=REF)
        for name, sub in schema.pop("$defs", {}).items():
            self.components[name] = sub
        for sub in [schema, *self.components.values()]:
            for name in times:
                for alt in _alternatives(sub.get("properties", {}).get(name)):
                    if alt.get("type") == "string":
                        alt["format"] = "date-time"
        self.components[model.__name__] = schema
        return {"required": True, "description": description,
                "content": {"application/json": {"schema": _ref(model.__name__)}}}


def build_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every ``/api/v1`` route plus ``/healthz`` and ``/readyz``."""
    from aiops.service.actions import ActionRunRequest, ActionRunsQuery
    from aiops.service.api import (
        AnomaliesQuery, ExplainRequest, ExplanationsQuery, FeedbackQuery, FeedbackRequest, ForecastsQuery,
    )
    from aiops.service.ask_api import AskRequest
    from aiops.service.webhook import WebhookPayload

    b = _Builder()
    read = [{}, {"bearer": []}]  # open unless service.read_token_required
    write = [{"bearer": []}]
    rd = _errors(400, 401, 503)
    paths: dict[str, dict[str, Any]] = {
        "/api/v1/openapi.json": {"get": {
            "summary": "This document.", "security": [{}],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
        "/api/v1/watches": {"get": {
            "summary": "Configured watches with open anomalies, actions and their last runs.", "security": read,
            "responses": {**_ok({"type": "array", "items": _ref("Watch")}), **_errors(401, 503)},
        }},
        "/api/v1/anomalies": {"get": {
            "summary": "Anomaly events, newest first, with their latest explanation.", "security": read,
            "parameters": _query_params(AnomaliesQuery),
            "responses": {**_ok({"type": "array", "items": _ref("Event")}), **rd},
        }},
        "/api/v1/anomalies/{event_id}": {"get": {
            "summary": "One anomaly event.", "security": read,
            "parameters": [_path_param("event_id", "Event id.")],
            "responses": {**_ok(_ref("Event")), **_errors(401, 404, 503)},
        }},
        "/api/v1/forecasts": {"get": {
            "summary": "Observed values, forecast band and anomaly scores per series of a watch.", "security": read,
            "parameters": _query_params(ForecastsQuery),
            "responses": {**_ok(_ref("Forecasts")), **_errors(400, 401, 404, 503)},
        }},
        "/api/v1/explanations": {"get": {
            "summary": "Explanations, newest first.", "security": read,
            "parameters": _query_params(ExplanationsQuery),
            "responses": {**_ok({"type": "array", "items": _ref("ExplanationSummary")}), **rd},
        }},
        "/api/v1/explanations/{explanation_id}": {"get": {
            "summary": "One explanation with its evidence and feedback.", "security": read,
            "parameters": [_path_param("explanation_id", "Explanation id.")],
            "responses": {**_ok({"allOf": [_ref("ExplanationSummary"), _obj({
                "explanation": {"type": "object"}, "evidence": {"type": "object"},
                "feedback": {"type": "array", "items": _ref("Feedback")}})]}), **_errors(401, 404, 503)},
        }},
        "/api/v1/explanations/{explanation_id}/feedback": {"post": {
            "summary": "Accept, reject or edit an explanation (edits feed fine-tuning).", "security": write,
            "parameters": [_path_param("explanation_id", "Explanation id.")],
            "requestBody": b.body(FeedbackRequest, "The verdict; text is required for edit."),
            "responses": {**_ok(_ref("Feedback"), "Stored", 201), **_errors(400, 401, 404, 413, 503)},
        }},
        "/api/v1/feedback": {"get": {
            "summary": "Feedback, newest first.", "security": read, "parameters": _query_params(FeedbackQuery),
            "responses": {**_ok({"type": "array", "items": _ref("Feedback")}), **rd},
        }},
        "/api/v1/explain": {"post": {
            "summary": "Explain a PromQL query over a time range now; the explanation is stored.", "security": write,
            "requestBody": b.body(ExplainRequest, "The query and range."),
            "responses": {**_ok(_ref("ExplainResult")), **_errors(400, 401, 404, 413, 422, 502, 503)},
        }},
        "/api/v1/actions": {"get": {
            "summary": "Remediation actions configured per watch.", "security": read,
            "responses": {**_ok({"type": "array", "items": _ref("Action")}), **_errors(401)},
        }},
        "/api/v1/actions/{watch}/{name}/runs": {"post": {
            "summary": "Approve and run an action for an anomaly event; the run is recorded.", "security": write,
            "parameters": [_path_param("watch", "Watch name."), _path_param("name", "Action name.")],
            "requestBody": b.body(ActionRunRequest, "The event and who approves."),
            "responses": {**_ok(_ref("ActionRun"), "Run and recorded", 201),
                          **_errors(400, 401, 404, 409, 413, 422, 503),
                          "502": {"description": "The receiver was unreachable or answered non-2xx; the run is recorded.",
                                  "content": {"application/json": {"schema": {"allOf": [_ref("Error"), _obj(
                                      {"run": _ref("ActionRun")})]}}}}},
        }},
        "/api/v1/action-runs": {"get": {
            "summary": "Recorded action runs, newest first.", "security": read,
            "parameters": _query_params(ActionRunsQuery),
            "responses": {**_ok({"type": "array", "items": _ref("ActionRun")}), **rd},
        }},
        "/api/v1/ask": {"post": {
            "summary": "A question in plain words, answered from stored evidence.", "security": write,
            "requestBody": b.body(AskRequest, "The question."),
            "responses": {
                "200": {"description": "The answer", "content": {"application/json": {"schema": {"type": "object"}},
                                                                 "text/markdown": {"schema": _S}}},
                **_errors(400, 401, 413), "500": {"description": "The explainer failed.",
                                                  "content": {"application/json": {"schema": _ref("Error")}}},
                **_errors(503),
            },
        }},
        "/api/v1/alertmanager": {"post": {
            "summary": "Alertmanager webhook (format 4): alerts into the durable inbox.", "security": write,
            "requestBody": b.body(WebhookPayload, "Alertmanager's webhook body.", times=("startsAt", "endsAt")),
            "responses": {"202": {"description": "Stored", "content": {"application/json": {"schema": _obj({
                "status": {"const": "accepted"}, "alerts": {"type": "integer"}, "stored": {"type": "integer"},
                "duplicates": {"type": "integer"}})}}}, **_errors(400, 401, 413, 503)},
        }},
        "/api/v1/dead-letters": {"get": {
            "summary": "Alerts that failed every explain attempt.", "security": read,
            "parameters": [{"name": "limit", "in": "query", "required": False, "description": "Clamped to 1..1000.",
                            "schema": {"type": "integer", "default": 100}}],
            "responses": {**_ok({"type": "array", "items": _ref("DeadLetter")}), **_errors(400, 401)},
        }},
        "/api/v1/dead-letters/{row_id}/retry": {"post": {
            "summary": "Queue a dead letter again.", "security": write,
            "parameters": [_path_param("row_id", "Dead letter id.")],
            "responses": {"202": {"description": "Queued", "content": {"application/json": {"schema": _obj({
                "status": {"const": "accepted"}, "id": {"type": "integer"}})}}}, **_errors(401, 404)},
        }},
        "/healthz": {"get": {
            "summary": "Liveness: the process serves HTTP.", "security": [{}],
            "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": _ref("Health")}}}},
        }},
        "/readyz": {"get": {
            "summary": "Readiness: store, source and scheduler checks.", "security": [{}],
            "responses": {code: {"description": desc, "content": {"application/json": {"schema": _ref("Ready")}}}
                          for code, desc in (("200", "Ready"), ("503", "Not ready"))},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "aiops API", "version": aiops.__version__,
                 "description": "Anomalies, forecasts, explanations, feedback and approved actions. Errors are "
                 '{"status": "error", "errorType": ..., "error": ...}. Writes need a bearer token.'},
        "paths": paths,
        "components": {"schemas": b.components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "service.token"}}},
    }
