"""The web UI at ``/ui``: pages rendered on the server from the store.

Pages: ``/ui/`` (current anomalies with their explanations, feedback and approve buttons),
``/ui/watches`` and ``/ui/watches/<watch>?series=<id>`` (a plotly chart of one series' forecast
band, anomaly score and events), ``/ui/alerts`` (the alert inbox and dead letters).

Everything shown is read here in Python; the figures are built by :mod:`aiops.report` and
embedded as JSON; ``/ui/static/plotly.min.js`` is the installed plotly package's own copy (no
CDN). Buttons POST with ``fetch()`` to the JSON API (``/api/v1/explanations/<id>/feedback``,
``/api/v1/actions/<watch>/<name>/runs``, ``/api/v1/dead-letters/<id>/retry``) with the write
token the operator types once into the page; it stays in the tab's ``sessionStorage`` and is
never in a page or URL. Alert and LLM text is untrusted: Jinja2 escapes it, the pages carry no
inline script, and the Content-Security-Policy allows scripts from this origin only.

With ``service.read_token_required`` the pages answer 401: a browser cannot send a bearer
token on a page load, so put an authenticating proxy in front and turn the option off.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from flask import Blueprint, Response, abort, current_app, render_template, request, send_file

from aiops.config import WatchConfig
from aiops.errors import AiopsError, StoreError
from aiops.outputs import ANOMALY_SCORE, FORECAST, output_labels
from aiops.outputs import source_labels
from aiops.service.api import shared_source
from aiops.service.auth import read_denied
from aiops.store import Store, _utc, alert_inbox, explanations, feedback, output_points, output_series
from aiops.types import AnomalyEvent, SeriesBatch, parse_series_id, series_id

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
MAX_EVENTS = 100
MAX_ALERTS = 200
MAX_SERIES_LISTED = 200
DEFAULT_WINDOW = pd.Timedelta("8d")  # chart window when the watch is not in the config


def create_ui_blueprint() -> Blueprint:
    """The UI blueprint (mount at ``/ui``); needs ``app.extensions["aiops"]`` with config and store."""
    bp = Blueprint(
        "aiops_ui", __name__, template_folder="templates", static_folder="static/ui", static_url_path="/static"
    )

    @bp.before_request
    def _read_access() -> Response | None:
        denied = read_denied(_ext()["config"].service, request.headers.get("Authorization"))
        if denied:
            body = render_template("ui/denied.html", reason=denied)
            return Response(body, status=401, headers={"WWW-Authenticate": "Bearer"})
        return None

    @bp.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        if resp.mimetype == "text/html":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.errorhandler(StoreError)
    def _store_down(exc: StoreError) -> tuple[str, int]:
        logger.error("ui: store unavailable: %s", exc)
        return render_template("ui/error.html", message="The store is unavailable; reload in a moment."), 503

    @bp.get("/static/plotly.min.js")
    def plotly_js() -> Response:
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        return send_file(path, mimetype="text/javascript", max_age=86400)

    @bp.get("/")
    def index() -> str:
        store, config = _ext()["store"], _ext()["config"]
        events = store.events(limit=MAX_EVENTS)
        events.sort(key=lambda e: (not e.ongoing, -e.peak_score))
        expl = _explanations_for(store, [f"event:{e.id}" for e in events], kind="event")
        actions = {w.name: list(getattr(w, "actions", None) or []) for w in config.watches}
        rows = [
            {"event": e, "labels": _labels_text(e), "explanation": expl.get(f"event:{e.id}"), "actions": actions.get(e.watch, [])}
            for e in events
        ]
        return render_template("ui/index.html", rows=rows, page="anomalies")

    @bp.get("/watches")
    def watches() -> str:
        store, config = _ext()["store"], _ext()["config"]
        open_counts = _open_counts(store)
        seen = _watches_with_outputs(store)
        rows = [
            {"name": w.name, "query": w.query, "step": str(w.step), "horizon": str(w.horizon),
             "open": open_counts.get(w.name, 0), "charted": w.name in seen,
             "actions": list(getattr(w, "actions", None) or [])}
            for w in config.watches
        ]
        known = {w.name for w in config.watches}
        rows += [
            {"name": name, "query": None, "step": None, "horizon": None, "open": open_counts.get(name, 0),
             "charted": True, "actions": []}
            for name in sorted(seen - known)
        ]
        return render_template("ui/watches.html", rows=rows, page="watches")

    @bp.get("/watches/<watch>")
    def watch_chart(watch: str) -> str:
        store, config = _ext()["store"], _ext()["config"]
        series = _watch_series(store, watch)
        if not series:
            abort(404, description=f"no output series stored for watch {watch!r}; run the watch first")
        events = store.events(watch=watch, limit=MAX_EVENTS)
        chosen = request.args.get("series") or _default_series(series, events)
        if chosen not in series:
            abort(404, description=f"watch {watch!r} has no series {chosen!r}; pick one from the list")
        cfg = next((w for w in config.watches if w.name == watch), None)
        mine = [e for e in events if e.series_id == chosen]
        figure, observed_note = _series_figure(store, cfg, watch, chosen, mine)
        return render_template(
            "ui/watch.html", page="watches", watch=watch, series=series, chosen=chosen, figure=figure,
            events=mine, observed_note=observed_note,
        )

    @bp.get("/alerts")
    def alerts() -> str:
        store = _ext()["store"]
        c = alert_inbox.c
        with store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(alert_inbox).order_by(c.id.desc()).limit(MAX_ALERTS))]
        by_id = _explanations_by_id(store, [r["explanation_id"] for r in rows if r["explanation_id"]])
        inbox = [_alert_row(r, by_id.get(r["explanation_id"])) for r in rows if r["state"] != "dead"]
        dead = [_alert_row(r, None) for r in rows if r["state"] == "dead"]
        return render_template("ui/alerts.html", page="alerts", inbox=inbox, dead=dead)

    @bp.errorhandler(404)
    def _not_found(exc: Any) -> tuple[str, int]:
        return render_template("ui/error.html", message=getattr(exc, "description", "not found")), 404

    return bp


def _ext() -> dict[str, Any]:
    return current_app.extensions["aiops"]


# --------------------------------------------------------------------------- reading


def _explanations_for(store: Store, refs: list[str], *, kind: str) -> dict[str, dict]:
    """The newest explanation per subject ref, with its feedback, keyed by ref."""
    newest = store.latest_explanations(kind, refs)
    _attach_feedback(store, list(newest.values()))
    return newest


def _explanations_by_id(store: Store, ids: list[int]) -> dict[int, dict]:
    if not ids:
        return {}
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(explanations).where(explanations.c.id.in_(ids)))]
    _attach_feedback(store, rows)
    return {r["id"]: r for r in rows}


def _attach_feedback(store: Store, rows: list[dict]) -> None:
    """Add ``feedback`` (oldest first) and the parts of the explanation JSON the pages show."""
    ids = [r["id"] for r in rows]
    got: dict[int, list[dict]] = {}
    if ids:
        c = feedback.c
        with store.engine.connect() as conn:
            for r in conn.execute(sa.select(feedback).where(c.explanation_id.in_(ids)).order_by(c.id)):
                got.setdefault(r._mapping["explanation_id"], []).append(dict(r._mapping))
    for r in rows:
        body = r["explanation"] if isinstance(r["explanation"], dict) else {}
        r["feedback"] = got.get(r["id"], [])
        r["title"] = str(body.get("title") or "")
        r["summary"] = str(body.get("summary") or "")
        r["causes"] = [c for c in body.get("causes") or [] if isinstance(c, dict)]
        r["next_checks"] = [str(x) for x in body.get("next_checks") or []]


def _open_counts(store: Store) -> dict[str, int]:
    from aiops.store import anomaly_events

    c = anomaly_events.c
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(c.watch, sa.func.count()).where(c.end.is_(None)).group_by(c.watch)).all())


def _watches_with_outputs(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(output_series.c.watch).distinct()).scalars())


def _watch_series(store: Store, watch: str) -> list[str]:
    """Source series ids of a watch that have an anomaly score or forecast stored, sorted."""
    c = output_series.c
    q = sa.select(c.labels).where((c.watch == watch) & c.metric.in_([ANOMALY_SCORE, FORECAST]))
    with store.engine.connect() as conn:
        return sorted({series_id(source_labels(lbl)) for lbl in conn.execute(q).scalars()})[:MAX_SERIES_LISTED]


def _default_series(series: list[str], events: list[AnomalyEvent]) -> str:
    ranked = [e.series_id for e in sorted(events, key=lambda e: -e.peak_score) if e.series_id in series]
    return ranked[0] if ranked else series[0]


def _series_frames(store: Store, watch: str, sid: str, window: pd.Timedelta) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(forecast frame, scores frame) of one source series from its output series."""
    try:
        source = parse_series_id(sid)
    except ValueError:
        source = {"series": sid}
    keys = {series_id(output_labels(source, ANOMALY_SCORE, watch)): "anomaly_score"}
    for col, bound in (("yhat", "yhat"), ("yhat_lower", "lower"), ("yhat_upper", "upper")):
        keys[series_id(output_labels(source, FORECAST, watch, bound=bound))] = col
    c, p = output_series.c, output_points.c
    with store.engine.connect() as conn:
        ids = {i: keys[k] for i, k in conn.execute(sa.select(c.id, c.key).where(c.key.in_(list(keys))))}
        newest = conn.execute(sa.select(sa.func.max(p.ts)).where(p.series.in_(list(ids)))).scalar() if ids else None
        rows = [] if newest is None else conn.execute(
            sa.select(p.series, p.ts, p.value)
            .where(p.series.in_(list(ids)), p.ts >= newest - int(window.total_seconds() * 1000))
            .order_by(p.ts)
        ).all()
    long = pd.DataFrame(rows, columns=["series", "ts", "value"])
    long["col"] = long["series"].map(ids)
    wide = long.pivot_table(index="ts", columns="col", values="value", aggfunc="last") if len(long) else pd.DataFrame()
    wide.index = pd.to_datetime(wide.index, unit="ms", utc=True)
    wide = wide.reset_index().rename(columns={"index": "ts"}).assign(series_id=sid)
    bands = ["yhat", "yhat_lower", "yhat_upper"]
    forecast = wide[["series_id", "ts", *bands]].dropna(subset=["yhat"]) if set(bands) <= set(wide.columns) else None
    scores = wide[["series_id", "ts", "anomaly_score"]].dropna() if "anomaly_score" in wide.columns else None
    return forecast, scores


def _observed(cfg: WatchConfig | None, sid: str, since: pd.Timestamp, until: pd.Timestamp) -> tuple[SeriesBatch | None, str | None]:
    """The observed values of one series from the watch's source, or None and why not."""
    if cfg is None:
        return None, "the watch is not in the configuration, so its query is unknown"
    until = min(until, pd.Timestamp.now(tz="UTC"))
    if until <= since:
        return None, "the chart lies in the future"
    try:
        batch = shared_source().fetch(cfg.query, since, until, cfg.step.td, watch=cfg.name, max_series=cfg.max_series)
    except AiopsError as exc:
        logger.warning("ui: observed values of %s unavailable: %s", cfg.name, exc)
        return None, str(exc)
    frame = batch.frame[batch.frame["series_id"] == sid].dropna(subset=["value"])
    if frame.empty:
        return None, "the source returned no values for this series in the chart's window"
    return SeriesBatch(frame, {sid: batch.labels.get(sid, {})}, step=batch.step, watch=cfg.name), None


def _series_figure(
    store: Store, cfg: WatchConfig | None, watch: str, sid: str, events: list[AnomalyEvent]
) -> tuple[dict, str | None]:
    """One series' plotly figure (JSON-ready, built by :func:`aiops.report.watch_figure`) and,
    when the observed values could not be drawn, why."""
    from types import SimpleNamespace

    from aiops.pipeline import WatchResult
    from aiops.report import watch_figure

    window = (cfg.history.td + cfg.horizon.td) if cfg is not None else DEFAULT_WINDOW
    forecast, scores = _series_frames(store, watch, sid, window)
    stamps = [f["ts"] for f in (forecast, scores) if f is not None and len(f)]
    batch, note = (None, "nothing stored") if not stamps else _observed(
        cfg, sid, min(t.min() for t in stamps), max(t.max() for t in stamps)
    )
    expl = _explanations_for(store, [f"event:{e.id}" for e in events], kind="event")
    result = WatchResult(
        watch=watch, batch=batch, forecast=forecast, scores=scores, events=events,
        explanations={e.id: SimpleNamespace(summary=expl[f"event:{e.id}"]["summary"]) for e in events if f"event:{e.id}" in expl},
    )
    return json.loads(watch_figure(result).to_json()), note


def _labels_text(ev: AnomalyEvent) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(ev.labels.items()) if k != "__name__")


def _alert_row(r: dict, expl: dict | None) -> dict:
    payload = r["payload"] if isinstance(r["payload"], dict) else {}
    labels = payload.get("labels") if isinstance(payload.get("labels"), dict) else {}
    annotations = payload.get("annotations") if isinstance(payload.get("annotations"), dict) else {}
    received = _utc(r["received_at"])
    return {
        "id": r["id"], "alertname": str(labels.get("alertname", "")), "status": r["status"], "state": r["state"],
        "attempts": r["attempts"], "received_at": received.strftime("%Y-%m-%d %H:%M:%S") if received else "",
        "labels": ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname"),
        "summary": str(annotations.get("summary") or annotations.get("description") or ""),
        "last_error": r["last_error"] or "", "explanation": expl,
    }
