"""The ``/api/v1`` resources: watches, anomalies, forecasts, explanations, explain-now, feedback.

All answers are JSON: ``{"status": "success", "data": ...}``, or on a client error
``{"status": "error", "errorType": "<kind>", "error": "<what is wrong and how to fix it>"}``
with a 4xx status (``problems`` lists each bad field by path). Reads are open unless
``service.read_token_required``; every write needs ``Authorization: Bearer <service.token>``.
A refused write stores nothing. Times are ISO 8601 in UTC. The OpenAPI document of these
routes is ``GET /api/v1/openapi.json`` (built by :mod:`aiops.service.openapi`).

Feedback verdicts are ``accept | reject | edit`` here and ``accepted | rejected | edited`` in
the store, where ``aiops llm finetune`` reads them (accepted pairs keep the explanation,
edited ones train on the operator's text).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Mapping, TypeVar, Union

import numpy as np
import pandas as pd
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, RootModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from aiops.config import AiopsConfig, DetectorConfig, Duration, WatchConfig, yaml_path
from aiops.errors import (
    AiopsError, AuthError, BadQuery, NoData, SourceError, SourceUnavailable, StoreError, TooManySeries,
)
from aiops.service.auth import read_denied, write_denied
from aiops.store import MAX_ID
from aiops.types import AnomalyEvent, series_id

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    text = v.strip().upper().replace(" ", "T")
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 time: {v[:64]!r}; write e.g. 2026-11-22T10:00:00Z")
    if text[17:19] == "60":  # a leap second; Python's datetime has none
        text = text[:17] + "59" + text[19:]
    return datetime.fromisoformat(text)


def _whole_number(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


#: A time as the OpenAPI document states it (``date-time``): ISO 8601 with a UTC offset or ``Z``.
Time = Annotated[datetime, BeforeValidator(_rfc3339)]
#: An integer; ``5.0`` counts (JSON Schema says so), ``"5"`` does not.
JsonInt = Annotated[int, BeforeValidator(_whole_number)]

VERDICTS = {"accept": "accepted", "reject": "rejected", "edit": "edited"}  # API word -> stored word
_STORED_VERDICTS = {v: k for k, v in VERDICTS.items()}
MAX_POINTS = 11_000  # points per series in one forecasts answer or explain-now fetch
EXPLAIN_MAX_SERIES = 500
EXPLAIN_MAX_RANGE = pd.Timedelta(days=31)
_EARLIEST, _LATEST = pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("2200-01-01", tz="UTC")
_LOCK = threading.Lock()


# --------------------------------------------------------------------------- request models


class AnomaliesQuery(BaseModel):
    """Query parameters of ``GET /api/v1/anomalies``."""

    watch: str | None = Field(None, max_length=64, description="Only this watch's events.")
    severity: Literal["info", "warning", "critical"] | None = None
    status: Literal["open", "closed"] | None = Field(None, description="open: still ongoing; closed: ended.")
    since: Time | None = Field(None, description="Events ongoing at or ending after this time.")
    until: Time | None = Field(None, description="Events starting at or before this time.")
    limit: int = Field(100, ge=1, le=1000)


class ForecastsQuery(BaseModel):
    """Query parameters of ``GET /api/v1/forecasts``."""

    watch: str = Field(..., max_length=64)
    series: str | None = Field(None, max_length=4000, description="One series id (as in an event's series).")
    since: Time | None = Field(None, description="Default: one day ago.")
    until: Time | None = Field(None, description="Default: now plus the watch's horizon.")
    observed: bool = Field(True, description="Also fetch the observed values from the watch's source.")


class ExplanationsQuery(BaseModel):
    """Query parameters of ``GET /api/v1/explanations``."""

    subject_kind: Literal["event", "alert", "query", "question"] | None = None
    subject_ref: str | None = Field(None, max_length=4000, description="e.g. event:12")
    watch: str | None = Field(None, max_length=64)
    limit: int = Field(100, ge=1, le=1000)


class FeedbackQuery(BaseModel):
    """Query parameters of ``GET /api/v1/feedback``."""

    explanation_id: int | None = Field(None, ge=1, le=MAX_ID)
    limit: int = Field(100, ge=1, le=1000)


class ExplainRequest(BaseModel):
    """The body of ``POST /api/v1/explain``: explain a PromQL query over a time range now."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., min_length=1, max_length=4000, pattern=r"\S", description="PromQL range query.")
    start: Time = Field(..., description="RFC 3339, e.g. 2026-11-22T10:00:00Z.")
    end: Time = Field(..., description="After start, at most 31 days later.")
    step: Duration | None = Field(None, description="Default: the range / 500, at least 15s.")


class _FeedbackBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    author: str | None = Field(None, max_length=128, description="Who gives the feedback.")


class FeedbackVerdict(_FeedbackBase):
    verdict: Literal["accept", "reject"]
    text: str | None = Field(None, max_length=20_000, description="Optional comment.")


class FeedbackEdit(_FeedbackBase):
    verdict: Literal["edit"]
    text: str = Field(..., min_length=1, max_length=20_000, pattern=r"\S",
                      description="The corrected explanation; fine-tuning learns from it.")


class FeedbackRequest(RootModel[Annotated[Union[FeedbackVerdict, FeedbackEdit], Field(discriminator="verdict")]]):
    """The body of ``POST /api/v1/explanations/<id>/feedback``; ``text`` is required for ``edit``."""


# --------------------------------------------------------------------------- shared helpers


def api_error(status: int, kind: str, message: str, **extra: Any) -> Response:
    """The error answer of every /api/v1 resource."""
    resp = jsonify({"status": "error", "errorType": kind, "error": message, **extra})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def iso(value: Any) -> str | None:
    """ISO 8601 in UTC with a ``Z``; None stays None."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.isoformat().replace("+00:00", "Z")


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_guard() -> Response | None:
    denied = read_denied(current_app.extensions["aiops"]["config"].service, request.headers.get("Authorization"))
    return api_error(401, "unauthorized", denied) if denied else None


def write_guard(what: str) -> Response | None:
    denied = write_denied(current_app.extensions["aiops"]["config"].service, request.headers.get("Authorization"))
    if denied:
        logger.warning("%s: refused a write from %s: %s", what, request.remote_addr, denied)
        return api_error(401, "unauthorized", denied)
    return None


def _problems(exc: ValidationError, drop: tuple = ()) -> list[str]:
    out = []
    for e in exc.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if p not in drop)
        out.append(f"{yaml_path(loc) or '(body)'}: {e['msg']}")
    return out


def parse_body(model: type[M], what: str) -> M | Response:
    """Read, size-check, parse and validate a JSON body; a Response is the 4xx to return."""
    limit = current_app.extensions["aiops"]["config"].service.max_body_bytes
    too_large = api_error(413, "too_large", f"body exceeds service.max_body_bytes ({limit} bytes)")
    if request.content_length is not None and request.content_length > limit:
        return too_large
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        return too_large
    if len(raw) > limit:
        return too_large
    try:
        json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return api_error(400, "bad_data", f"malformed JSON in the {what} body: {exc}; send a JSON object")
    try:
        # strict JSON mode: "1" is not an integer, as the OpenAPI document says; ISO strings are times
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        problems = _problems(exc, drop=tuple(VERDICTS))
        return api_error(400, "bad_data", f"invalid {what}: " + "; ".join(problems[:10]), problems=problems)


def parse_args(model: type[M]) -> M | Response:
    """Validate the query string against ``model``; unknown parameters are ignored."""
    try:
        return model.model_validate(request.args.to_dict(flat=True))
    except ValidationError as exc:
        problems = _problems(exc)
        return api_error(400, "bad_data", "invalid query parameter(s): " + "; ".join(problems[:10]), problems=problems)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _ts(dt: datetime) -> pd.Timestamp:
    """A pandas timestamp, clamped to 1970..2200 (outside it there is no data to find)."""
    d = _utc(dt)
    if d.year < 1970:
        return _EARLIEST
    if d.year >= 2200:
        return _LATEST
    return pd.Timestamp(d)


# --------------------------------------------------------------------------- JSON shapes


def explanation_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    body = row.get("explanation") or {}
    return {
        "id": row["id"], "subject_kind": row["subject_kind"], "subject_ref": row["subject_ref"],
        "watch": row.get("watch"), "created_at": iso(row.get("created_at")), "backend": row["backend"],
        "title": body.get("title"), "summary": body.get("summary"), "text": row.get("markdown") or "",
        "guard_note": row.get("guard_note"),
    }


def event_json(ev: AnomalyEvent, explanation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": ev.id, "watch": ev.watch, "series": ev.series_id, "labels": dict(ev.labels),
        "start": iso(ev.start), "end": iso(ev.end), "peak_time": iso(ev.peak_time),
        "status": "open" if ev.end is None else "closed", "peak_score": _num(ev.peak_score),
        "severity": ev.severity, "direction": ev.direction, "observed": _num(ev.observed),
        "expected": _num(ev.expected), "expected_lower": _num(ev.expected_lower),
        "expected_upper": _num(ev.expected_upper),
        "explanation": explanation_summary(explanation) if explanation else None,
    }


def feedback_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "explanation_id": row["explanation_id"],
        "verdict": _STORED_VERDICTS.get(row["verdict"], row["verdict"]), "text": row.get("text"),
        "author": row.get("author"), "created_at": iso(row.get("created_at")),
    }


def _watch_json(w: WatchConfig, open_counts: Mapping[str, int], runs: list[dict]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for r in runs:  # newest first
        last.setdefault(r["kind"], {
            "id": r["id"], "status": r["status"], "started_at": iso(r["started_at"]),
            "finished_at": iso(r["finished_at"]), "series": r["series"], "points": r["points"], "error": r["error"],
        })
    return {
        "name": w.name, "query": w.query, "step": str(w.step), "history": str(w.history),
        "horizon": str(w.horizon), "infer_every": str(w.infer_every), "fit_every": str(w.fit_every),
        "model": w.model.kind, "threshold": w.detector.threshold,
        "capacity": w.capacity.model_dump() if w.capacity else None, "dashboard": w.dashboard,
        "actions": [{"name": a.name, "description": a.description} for a in w.actions],
        "open_anomalies": int(open_counts.get(w.name, 0)), "last_runs": last,
    }


# --------------------------------------------------------------------------- context


def _ctx() -> tuple[AiopsConfig, Any]:
    ext = current_app.extensions["aiops"]
    return ext["config"], ext["store"]


def shared_source():
    """The watch source of this app, made once and shared by the API and the UI."""
    ext = current_app.extensions["aiops"]
    if "source" not in ext:
        with _LOCK:
            if "source" not in ext:
                from aiops.sources.base import make_source

                ext["source"] = make_source(ext["config"])
    return ext["source"]


def _source_error(exc: SourceError) -> Response:
    msg = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    if isinstance(exc, BadQuery):
        return api_error(400, "bad_data", f"the query was rejected: {msg}")
    if isinstance(exc, NoData):
        return api_error(404, "not_found", f"no data: {msg}")
    if isinstance(exc, TooManySeries):
        return api_error(422, "bad_data", f"{msg}; narrow the query with label matchers")
    if isinstance(exc, AuthError):
        return api_error(502, "upstream", f"the metric source refused aiops's credentials: {msg}")
    if isinstance(exc, SourceUnavailable):
        return api_error(502, "upstream", f"the metric source is unreachable: {msg}")
    return api_error(502, "upstream", f"the metric source failed: {msg}")


# --------------------------------------------------------------------------- the blueprint


def create_api_blueprint() -> Blueprint:
    """The resources blueprint; needs ``app.extensions["aiops"]`` with ``config`` and ``store``."""
    bp = Blueprint("aiops_api", __name__)

    # Any store failure in a route answers 503 (logged), nothing half-done: see store_unavailable.
    bp.register_error_handler(StoreError, store_unavailable)

    @bp.app_errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Unmatched /api/v1 paths, wrong methods and oversize bodies answer JSON like the rest.
        if not request.path.startswith("/api/v1/"):
            return exc
        kinds = {404: "not_found", 405: "bad_method", 413: "too_large"}
        resp = api_error(exc.code or 500, kinds.get(exc.code or 0, "bad_data"),
                         f"{exc.name}: {exc.description} ({request.method} {request.path}); "
                         "GET /api/v1/openapi.json lists the routes")
        for name, value in exc.get_headers():  # e.g. Allow on a 405, as RFC 9110 requires
            if name.lower() != "content-type":
                resp.headers[name] = value
        return resp

    @bp.get("/api/v1/openapi.json")
    def openapi() -> Response:
        from aiops.service.openapi import build_document

        return jsonify(build_document())

    @bp.get("/api/v1/watches")
    def watches() -> Response:
        config, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        counts = store.open_event_counts()
        data = [_watch_json(w, counts, store.runs(watch=w.name, limit=20)) for w in config.watches]
        return jsonify({"status": "success", "data": data})

    @bp.get("/api/v1/anomalies")
    def anomalies() -> Response:
        _, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        q = parse_args(AnomaliesQuery)
        if isinstance(q, Response):
            return q
        events = store.events(
            watch=q.watch, since=_utc(q.since), until=_utc(q.until), severity=q.severity,
            ongoing=None if q.status is None else q.status == "open", limit=q.limit,
        )
        expl = store.latest_explanations("event", [f"event:{e.id}" for e in events])
        return jsonify({"status": "success", "data": [event_json(e, expl.get(f"event:{e.id}")) for e in events]})

    @bp.get("/api/v1/anomalies/<int:event_id>")
    def anomaly(event_id: int) -> Response:
        _, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        ev = store.event(event_id)
        if ev is None:
            return api_error(404, "not_found", f"no anomaly event with id {event_id}")
        expl = store.latest_explanation("event", f"event:{event_id}")
        return jsonify({"status": "success", "data": event_json(ev, expl)})

    @bp.get("/api/v1/forecasts")
    def forecasts() -> Response:
        config, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        q = parse_args(ForecastsQuery)
        if isinstance(q, Response):
            return q
        watch = next((w for w in config.watches if w.name == q.watch), None)
        if watch is None:
            names = ", ".join(w.name for w in config.watches) or "none"
            return api_error(404, "not_found", f"no watch named {q.watch!r}; configured watches: {names}")
        return jsonify({"status": "success", "data": _forecasts(store, watch, q)})

    @bp.get("/api/v1/explanations")
    def explanations() -> Response:
        _, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        q = parse_args(ExplanationsQuery)
        if isinstance(q, Response):
            return q
        rows = store.explanations(subject_kind=q.subject_kind, subject_ref=q.subject_ref, watch=q.watch, limit=q.limit)
        return jsonify({"status": "success", "data": [explanation_summary(r) for r in rows]})

    @bp.get("/api/v1/explanations/<int:explanation_id>")
    def explanation(explanation_id: int) -> Response:
        _, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        row = store.explanation(explanation_id)
        if row is None:
            return api_error(404, "not_found", f"no explanation with id {explanation_id}")
        fb = store.feedback(explanation_id=explanation_id)
        data = explanation_summary(row)
        data.update(explanation=row["explanation"], evidence=row["evidence"], feedback=[feedback_json(f) for f in fb])
        return jsonify({"status": "success", "data": data})

    @bp.post("/api/v1/explanations/<int:explanation_id>/feedback")
    def add_feedback(explanation_id: int) -> Response:
        _, store = _ctx()
        if (denied := write_guard("feedback")) is not None:
            return denied
        body = parse_body(FeedbackRequest, "feedback")
        if isinstance(body, Response):
            return body
        fb = body.root
        if store.explanation(explanation_id) is None:
            return api_error(404, "not_found", f"no explanation with id {explanation_id}")
        text = fb.text.strip() if fb.text is not None else None
        row = store.add_feedback(explanation_id, VERDICTS[fb.verdict], text or None,
                                 fb.author.strip() or None if fb.author else None)
        resp = jsonify({"status": "success", "data": feedback_json(row)})
        resp.status_code = 201
        return resp

    @bp.get("/api/v1/feedback")
    def list_feedback() -> Response:
        _, store = _ctx()
        if (denied := read_guard()) is not None:
            return denied
        q = parse_args(FeedbackQuery)
        if isinstance(q, Response):
            return q
        rows = store.feedback(explanation_id=q.explanation_id, limit=q.limit)
        return jsonify({"status": "success", "data": [feedback_json(r) for r in rows]})

    @bp.post("/api/v1/explain")
    def explain_now() -> Response:
        if (denied := write_guard("explain")) is not None:
            return denied
        body = parse_body(ExplainRequest, "explain request")
        if isinstance(body, Response):
            return body
        return _explain_now(body)

    return bp


def store_unavailable(exc: StoreError) -> Response:
    logger.error("api: store unavailable: %s", exc)
    return api_error(503, "unavailable", "the store is unavailable; retry later")


# --------------------------------------------------------------------------- forecasts


def _forecasts(store: Any, watch: WatchConfig, q: ForecastsQuery) -> dict[str, Any]:
    from aiops.outputs import ANOMALY_SCORE, FORECAST, read_range, source_labels
    from aiops.promql import Matcher, Selector

    now = pd.Timestamp.now(tz="UTC")
    until = _ts(q.until) if q.until is not None else now + watch.horizon.td
    since = _ts(q.since) if q.since is not None else now - pd.Timedelta(days=1)
    step = watch.step.td
    if until > since and (until - since) / step > MAX_POINTS:
        step = pd.Timedelta(seconds=math.ceil((until - since).total_seconds() / MAX_POINTS))
    out: dict[str, dict[str, Any]] = {}

    def entry(labels: Mapping[str, str]) -> dict[str, Any] | None:
        src = source_labels(labels)
        sid = series_id(src)
        if q.series is not None and sid != q.series:
            return None
        return out.setdefault(sid, {"series": sid, "labels": src, "observed": [], "yhat": [], "lower": [],
                                    "upper": [], "anomaly_score": []})

    def pairs(times: np.ndarray, values: np.ndarray) -> list[list[Any]]:
        idx = pd.to_datetime(times, unit="ms", utc=True)
        return [[iso(t), _num(v)] for t, v in zip(idx, values)]

    if until >= since:
        for metric in (FORECAST, ANOMALY_SCORE):
            sel = Selector((Matcher("__name__", "=", metric), Matcher("watch", "=", watch.name)))
            for labels, times, values in read_range(store, sel, since, until, step, lookback=step):
                e = entry(labels)
                if e is not None:
                    e["anomaly_score" if metric == ANOMALY_SCORE else labels.get("bound", "yhat")] = pairs(times, values)
    observed_error = None
    past_end = min(until, now)
    if q.observed and out and past_end > since:
        try:
            batch = shared_source().fetch(watch.query, since, past_end, step, watch=watch.name, max_series=watch.max_series)
            for sid, g in batch.frame.groupby("series_id"):
                g = g.dropna(subset=["value"])
                if str(sid) in out:
                    out[str(sid)]["observed"] = pairs(pd.DatetimeIndex(g["ts"]).as_unit("ms").asi8, g["value"].to_numpy())
        except AiopsError as exc:
            observed_error = str(exc)
    return {"watch": watch.name, "since": iso(since), "until": iso(until), "step": f"{int(step.total_seconds())}s",
            "observed_error": observed_error, "series": list(out.values())}


# --------------------------------------------------------------------------- explain now


def _explain_now(body: ExplainRequest) -> Response:
    from aiops.detect.events import scores_to_events
    from aiops.explain.evidence import evidence_for_event
    from aiops.explain.explainer import evidence_to_dict, render_json, render_markdown
    from aiops.models import detect_frame
    from aiops.service.ask_api import _explain_ctx

    _, store = _ctx()
    start, end = _ts(body.start), _ts(body.end)
    if end <= start:
        return api_error(400, "bad_data", f"end ({iso(end)}) must be after start ({iso(start)})")
    if end - start > EXPLAIN_MAX_RANGE:
        return api_error(400, "bad_data", "the range is longer than 31 days; explain a shorter range")
    step = body.step.td if body.step is not None else max(pd.Timedelta("15s"), pd.Timedelta(
        seconds=math.ceil((end - start).total_seconds() / 500)))
    if step <= pd.Timedelta(0):
        return api_error(400, "bad_data", "step must be more than 0s")
    if (end - start) / step > MAX_POINTS:
        return api_error(400, "bad_data", f"{int((end - start) / step)} points per series at step {body.step}; "
                         f"the limit is {MAX_POINTS}: use a larger step or a shorter range")
    try:
        batch = shared_source().fetch(body.query, start, end, step, max_series=EXPLAIN_MAX_SERIES)
    except SourceError as exc:
        return _source_error(exc)
    except AiopsError as exc:
        return api_error(400, "bad_data", str(exc))
    try:
        scores = detect_frame(batch.frame, step=step)
        events = scores_to_events(scores, watch="explain", detector=DetectorConfig(), labels=batch.labels)
        subject = max(events, key=lambda e: e.peak_score) if events else _quiet_event(scores, batch.labels)
        if subject is None:
            return api_error(404, "not_found", "the query returned no values in the range")
        explainer, kb = _explain_ctx()
        evidence = evidence_for_event(
            subject, scores, labels=batch.labels, query=body.query,
            kb_search=kb.search if kb is not None else None, now=end,
        )
        expl = explainer.explain(evidence)
        md = render_markdown(expl)
        ref = f"{body.query} @ {iso(start)}..{iso(end)}"
        eid = store.add_explanation(subject_kind="query", subject_ref=ref, watch=None, backend=expl.backend,
                                    evidence=evidence_to_dict(evidence), explanation=expl.to_dict(), markdown=md,
                                    guard_note=expl.guard_note)
    except StoreError as exc:
        return store_unavailable(exc)
    except AiopsError as exc:
        logger.error("explain: cannot explain %r: %s", body.query[:200], exc)
        return api_error(422, "bad_data", f"cannot explain this query: {exc}")
    out = render_json(expl, evidence=evidence)
    out.update(id=eid, subject_kind="query", subject_ref=ref, text=md)
    return jsonify({"status": "success", "data": {
        "query": body.query, "start": iso(start), "end": iso(end), "step": f"{int(step.total_seconds())}s",
        "series": len(batch.labels), "anomalous": bool(events),
        "events": [event_json(e) for e in sorted(events, key=lambda e: -e.peak_score)[:20]],
        "explanation": out,
    }})


def _quiet_event(scores: pd.DataFrame, labels: Mapping[str, Mapping[str, str]]) -> AnomalyEvent | None:
    """No event crossed the threshold: describe the point that came closest, as severity info."""
    s = scores.dropna(subset=["value"])
    if s.empty:
        return None
    scored = s.dropna(subset=["anomaly_score"])
    row = scored.loc[scored["anomaly_score"].idxmax()] if not scored.empty else s.iloc[-1]
    ts = pd.Timestamp(row["ts"]).to_pydatetime()
    yhat = row.get("yhat", np.nan)
    return AnomalyEvent(
        watch="explain", series_id=str(row["series_id"]), start=ts, end=ts, peak_time=ts,
        peak_score=float(row["anomaly_score"]) if _num(row.get("anomaly_score")) is not None else 0.0,
        severity="info", direction="spike" if not (_num(yhat) is not None and row["value"] < yhat) else "drop",
        observed=float(row["value"]), expected=float(yhat), expected_lower=float(row.get("yhat_lower", np.nan)),
        expected_upper=float(row.get("yhat_upper", np.nan)), labels=dict(labels.get(row["series_id"], {})),
    )
