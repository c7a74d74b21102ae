"""``/healthz`` (the process answers) and ``/readyz`` (it can do its work now).

``GET /healthz`` → 200 ``{"status": "ok"}`` whenever the process serves HTTP; it touches
nothing else, so a liveness probe never restarts aiops because a dependency is down.

``GET /readyz`` → 200 ``{"status": "ready", "checks": {...}}`` or 503 ``{"status": "not ready",
"checks": {...}}``. Each check is ``{"ok": bool, "detail": str}``:

- ``store``: a write can be committed now (an update of the schema-version row, with a short
  lock timeout so a locked store answers within seconds instead of hanging the probe);
- ``prometheus``: present only when ``source.kind`` is ``prometheus``: the server answers
  (``/api/v1/status/buildinfo``, else ``/-/ready``) within a few seconds, no retries;
- ``scheduler``: present only while ``service.scheduler_required`` is true: some scheduler
  holds a live leader lease in the store (``aiops scheduler`` renews it every third of
  ``service.lease``).

Neither endpoint needs a token (probes carry none) and neither shows a secret: URLs are
redacted and errors name only what failed and how to fix it.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any, Callable

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError

from aiops.config import AiopsConfig, Duration
from aiops.errors import AiopsError
from aiops.store import Store, _store_hint, schema_version, utcnow

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0  # each dependency gets this long; kubelet's default probe timeout is 1 s per try
Check = dict[str, Any]  # {"ok": bool, "detail": str}


def check_store(store: Store, *, timeout: float = PROBE_TIMEOUT_S) -> Check:
    """Whether a write to the store commits now (nothing visible changes: a timestamp is touched)."""
    t0 = time.perf_counter()
    try:
        with store.engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # the store waits 15 s on a lock; a probe must answer sooner
                before = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                conn.commit()
            try:
                with conn.begin():
                    if conn.dialect.name == "postgresql":
                        ms = int(timeout * 1000)
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
                        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                    conn.execute(
                        schema_version.update().where(schema_version.c.id == 1).values(updated_at=utcnow())
                    )
            finally:
                if sqlite:  # the pooled connection keeps the pragma: give it back its own
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={int(before)}")
                    conn.commit()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0][:300]
        hint = _store_hint(exc) or "check store.url and that the database is up"
        return {"ok": False, "detail": f"store is not writable: {reason}; {hint}"}
    return {"ok": True, "detail": f"writable ({(time.perf_counter() - t0) * 1000:.0f} ms)"}


def check_scheduler(store: Store, *, now: datetime | None = None) -> Check:
    """Whether some scheduler holds a live leader lease."""
    from aiops.scheduler import LeaderLease

    now = now or utcnow()
    try:
        current = LeaderLease(store, holder="readyz").current()
    except SQLAlchemyError as exc:
        return {"ok": False, "detail": f"cannot read the scheduler lease: {str(getattr(exc, 'orig', exc))[:200]}"}
    if current is None:
        return {"ok": False, "detail": "no scheduler holds the lease; start `aiops scheduler` (or set "
                "service.scheduler_required: false where none runs)"}
    holder, expires = current
    left = (expires - now).total_seconds()
    if left <= 0:
        return {"ok": False, "detail": f"the scheduler lease expired {-left:.0f}s ago (leader {holder} stopped "
                "renewing); check the `aiops scheduler` processes"}
    return {"ok": True, "detail": f"leader {holder}, lease valid for {left:.0f}s"}


def make_prometheus_check(config: AiopsConfig) -> Callable[[], Check] | None:
    """A check of the configured Prometheus (None unless ``source.kind`` is prometheus)."""
    if config.source.kind != "prometheus":
        return None
    from aiops.sources.prometheus import PrometheusSource

    timeout = min(config.prometheus.timeout.seconds, PROBE_TIMEOUT_S)
    cfg = config.prometheus.model_copy(update={"retries": 0, "timeout": Duration(f"{timeout:g}s")})
    try:
        source = PrometheusSource.from_config(cfg)
    except AiopsError as exc:
        detail = str(exc)
        return lambda: {"ok": False, "detail": detail}

    def check() -> Check:
        t0 = time.perf_counter()
        try:
            source.check()
        except AiopsError as exc:
            return {"ok": False, "detail": str(exc)}
        return {"ok": True, "detail": f"{source.safe_url} answered in {(time.perf_counter() - t0) * 1000:.0f} ms"}

    return check


def readiness(config: AiopsConfig, store: Store, prometheus: Callable[[], Check] | None) -> tuple[bool, dict[str, Check]]:
    """Run every check that applies; ``(all ok, checks by name)``."""
    checks: dict[str, Check] = {"store": check_store(store)}
    if prometheus is not None:
        checks["prometheus"] = prometheus()
    if config.service.scheduler_required:
        checks["scheduler"] = check_scheduler(store)
    return all(c["ok"] for c in checks.values()), checks


def create_health_blueprint() -> Blueprint:
    """``/healthz`` and ``/readyz``; needs ``app.extensions["aiops"]`` with ``config`` and ``store``."""
    bp = Blueprint("aiops_health", __name__)
    state: dict[str, Any] = {}

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @bp.get("/readyz")
    def readyz() -> Response:
        ext = current_app.extensions["aiops"]
        if "prometheus" not in state:
            state["prometheus"] = make_prometheus_check(ext["config"])
        ok, checks = readiness(ext["config"], ext["store"], state["prometheus"])
        if ok != state.get("ready"):  # log changes, not every probe
            failing = {k: v["detail"] for k, v in checks.items() if not v["ok"]}
            if ok:
                logger.info("/readyz: ready")
            else:
                logger.warning("/readyz: not ready: %s", failing)
            state["ready"] = ok
        resp = jsonify({"status": "ready" if ok else "not ready", "checks": checks})
        resp.status_code = 200 if ok else 503
        resp.headers["Cache-Control"] = "no-store"
        return resp

    return bp
