"""``POST /api/v1/ask``: a question in plain words, answered from evidence.

Body: ``{"question": "why is checkout slow since 10:00?", "format": "json" | "markdown"}``.
The question is untrusted text: it is matched against watches, stored events and runbooks
and handed to the explainer as the operator's question, never as instructions; the answer's
structure and numbers come from the evidence, and nothing in the output is executed.

Answers: 200 ``render_json`` of the explanation plus ``markdown``, ``evidence_items`` and
``sources`` (or ``text/markdown`` with ``format: markdown``), 400 bad JSON or field (named),
401 token (same rules as the webhook), 413 body over ``service.max_body_bytes``, 500/503 when
the explainer or the store fails.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Literal

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from aiops.config import yaml_path
from aiops.errors import AiopsError, StoreError
from aiops.service.auth import write_denied
from aiops.service.webhook import _error
from aiops.types import Evidence

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()


class AskRequest(BaseModel):
    """The body of ``POST /api/v1/ask``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=2000)
    format: Literal["json", "markdown"] = "json"


def evidence_sources(evidence: Evidence) -> list[str]:
    """The distinct sources (queries, runbook paths, URLs) of the evidence items, in order."""
    return list(dict.fromkeys(it.source for it in evidence.items if it.source))


def _explain_ctx() -> tuple[Any, Any]:
    """The app's explainer and knowledge base, built once (a transformers model loads once)."""
    ext = current_app.extensions["aiops"]
    if "explainer" not in ext:
        with _LOCK:
            if "explainer" not in ext:
                from aiops.explain.ask import _load_kb
                from aiops.explain.explainer import Explainer

                config = ext["config"]
                ext["kb"] = _load_kb(config)
                ext["explainer"] = Explainer(config.explain)
    return ext["explainer"], ext["kb"]


def create_ask_blueprint() -> Blueprint:
    """The ask blueprint; needs ``app.extensions["aiops"]`` with ``config`` and ``store``."""
    bp = Blueprint("aiops_ask", __name__)

    @bp.post("/api/v1/ask")
    def ask() -> Response:
        ext = current_app.extensions["aiops"]
        svc = ext["config"].service
        denied = write_denied(svc, request.headers.get("Authorization"))
        if denied:
            logger.warning("ask: refused a request from %s: %s", request.remote_addr, denied)
            return _error(401, denied)
        too_large = f"body exceeds service.max_body_bytes ({svc.max_body_bytes})"
        if request.content_length is not None and request.content_length > svc.max_body_bytes:
            return _error(413, too_large)
        try:
            raw = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _error(413, too_large)
        if len(raw) > svc.max_body_bytes:
            return _error(413, too_large)
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, f"malformed JSON: {exc}")
        try:
            body = AskRequest.model_validate(data)
        except ValidationError as exc:
            problems = [f"{yaml_path(e['loc']) or '(body)'}: {e['msg']}" for e in exc.errors(include_url=False)]
            return _error(400, "invalid ask request: " + "; ".join(problems[:10]), problems=problems)
        return _answer(body)

    return bp


def _answer(body: AskRequest) -> Response:
    from aiops.explain.ask import question_evidence
    from aiops.explain.explainer import render_json

    ext = current_app.extensions["aiops"]
    question = body.question.strip()
    if not question:
        return _error(400, "invalid ask request: question: is blank", problems=["question: is blank"])
    try:
        explainer, kb = _explain_ctx()
        evidence = question_evidence(question, config=ext["config"], store=ext["store"], kb=kb)
        expl = explainer.explain(evidence, question=question)
    except StoreError as exc:
        logger.error("ask: store unavailable: %s", exc)
        return _error(503, "the store is unavailable; retry later")
    except AiopsError as exc:
        logger.error("ask: cannot answer: %s", exc)
        return _error(500, f"cannot answer: {exc.message}", hint=exc.hint)
    out = render_json(expl, evidence=evidence)
    out["sources"] = evidence_sources(evidence)
    if body.format == "markdown":
        return Response(out["markdown"], mimetype="text/markdown")
    return jsonify(out)
