"""Anomaly events as Grafana region annotations, through a durable outbox.

:meth:`Annotator.enqueue` writes the annotation an event should have into the store's
``annotation_outbox`` (key ``event:<id>``); :meth:`Annotator.flush` sends what is due. The
outbox row keeps the Grafana annotation id once created, so an event that grows or ends
updates its annotation instead of adding one, across restarts too. When Grafana is down or
answers 5xx the row stays pending with exponential backoff (``next_attempt_at``); nothing is
dropped.

A create whose answer was lost (timeout, crash after Grafana saved it) is not repeated blindly:
every body carries ``data.aiops_key``, and a row that already had an attempt is looked up in
Grafana by that key before it is created again.

Without ``grafana.url`` the same outbox writes files instead (:class:`FileSink`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa

from aiops.config import GrafanaConfig
from aiops.errors import GrafanaError, InputError
from aiops.grafana.client import GrafanaClient, is_retryable
from aiops.store import Store, annotation_outbox, utcnow
from aiops.types import AnomalyEvent

logger = logging.getLogger(__name__)

__all__ = ["Annotator", "AnnotationSink", "GrafanaSink", "FileSink", "event_key", "to_ms"]

_CLAIM = timedelta(seconds=60)  # a row being sent is hidden from other flushers this long


def event_key(event: AnomalyEvent) -> str:
    """Outbox key of an event: ``event:<id>`` (the event must be stored first)."""
    if event.id is None:
        raise InputError("the event has no id", hint="store it first with Store.upsert_event(event)")
    return f"event:{event.id}"


def to_ms(t: datetime | pd.Timestamp) -> int:
    """Unix milliseconds of a time; naive times are taken as UTC."""
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.value // 1_000_000)


def _aware(dt: datetime) -> datetime:
    # SQLite gives naive datetimes back; everything stored is UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


class AnnotationSink(Protocol):
    """Where annotations end up. ``key`` is the outbox key, ``body`` a PostAnnotationsCmd."""

    def create(self, key: str, body: dict) -> int:
        """Create the annotation; return its id."""

    def update(self, key: str, annotation_id: int, body: dict) -> None:
        """Replace time, timeEnd, text, tags and data; GrafanaError(status=404) if it is gone."""

    def find(self, key: str, body: dict) -> int | None:
        """The id of an annotation created earlier for ``key``, if one exists."""


class GrafanaSink:
    """Annotations in Grafana, via :class:`GrafanaClient`."""

    def __init__(self, client: GrafanaClient):
        self.client = client

    def create(self, key: str, body: dict) -> int:
        return self.client.create_annotation(body)

    def update(self, key: str, annotation_id: int, body: dict) -> None:
        patch = {k: body[k] for k in ("time", "timeEnd", "text", "tags", "data") if k in body}
        self.client.patch_annotation(annotation_id, patch)

    def find(self, key: str, body: dict) -> int | None:
        # No dashboardUID filter: the create may have fallen back to an org annotation.
        found = self.client.find_annotations(
            tags=["aiops"], type="annotation",
            **{"from": body.get("time"), "to": body.get("timeEnd")}, limit=1000,
        )
        for item in found or []:
            if (item.get("data") or {}).get("aiops_key") == key:
                return int(item["id"])
        return None


class FileSink:
    """Annotations as JSON files (``<dir>/<key>.annotation``) for runs without Grafana.

    Not ``.json``: Grafana's file provider loads every ``*.json`` below its path as a
    dashboard, and the dashboards live in the same ``grafana.output_dir``.
    """

    SUFFIX = ".annotation"

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    def _path(self, key: str) -> Path:
        return self.dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + self.SUFFIX)

    def _write(self, key: str, annotation_id: int, body: dict) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self._path(key).with_suffix(".tmp")
            tmp.write_text(json.dumps({"id": annotation_id, "key": key, **body}, indent=2))
            tmp.replace(self._path(key))
        except OSError as exc:
            raise GrafanaError(f"cannot write annotation file in {self.dir}: {exc.strerror}",
                               hint="check grafana.output_dir is writable") from None

    def create(self, key: str, body: dict) -> int:
        ids = [json.loads(p.read_text()).get("id", 0) for p in self.dir.glob("*" + self.SUFFIX)] if self.dir.exists() else []
        annotation_id = max(ids, default=0) + 1
        self._write(key, annotation_id, body)
        return annotation_id

    def update(self, key: str, annotation_id: int, body: dict) -> None:
        self._write(key, annotation_id, body)

    def find(self, key: str, body: dict) -> int | None:
        p = self._path(key)
        return int(json.loads(p.read_text())["id"]) if p.exists() else None


class Annotator:
    """Queue annotations durably and deliver them exactly once per key.

    Args:
        store: the aiops store (its ``annotation_outbox`` table holds the queue).
        sink: where annotations go (:class:`GrafanaSink` or :class:`FileSink`).
        backoff: first retry delay in seconds; doubles with each failed attempt.
        max_backoff: longest delay between attempts, in seconds.
    """

    def __init__(self, store: Store, sink: AnnotationSink, *, backoff: float = 5.0, max_backoff: float = 900.0):
        if backoff <= 0 or max_backoff < backoff:
            raise InputError("backoff must be > 0 and max_backoff >= backoff")
        self.store = store
        self.sink = sink
        self.backoff = backoff
        self.max_backoff = max_backoff

    @classmethod
    def from_config(cls, cfg: GrafanaConfig, store: Store, **kw: Any) -> "Annotator":
        """Grafana when ``cfg.url`` is set, else files under ``cfg.output_dir/annotations``."""
        if cfg.url:
            return cls(store, GrafanaSink(GrafanaClient.from_config(cfg)), **kw)
        return cls(store, FileSink(Path(cfg.output_dir) / "annotations"), **kw)

    # ------------------------------------------------------------------ queueing

    def enqueue(self, event: AnomalyEvent, markdown: str, dashboard_uid: str | None = None,
                panel_id: int | None = None, *, last_seen: datetime | None = None) -> str:
        """Queue (or refresh) the region annotation of a stored event; returns its key.

        The region runs from ``event.start`` to ``event.end``, or while the event is ongoing to
        ``last_seen`` (default: the peak time). Tags: ``aiops``, ``anomaly``, ``watch:<name>``,
        ``severity:<s>``, ``direction:<d>``.
        """
        key = event_key(event)
        end = event.end or last_seen or event.peak_time
        tags = ["aiops", "anomaly", f"watch:{event.watch}", f"severity:{event.severity}", f"direction:{event.direction}"]
        data = {"event_id": event.id, "series_id": event.series_id, "watch": event.watch,
                "ongoing": event.end is None}
        if math.isfinite(float(event.peak_score)):
            data["peak_score"] = round(float(event.peak_score), 4)
        self.enqueue_payload(key, text=markdown, time=event.start, time_end=max(end, event.start), tags=tags,
                             dashboard_uid=dashboard_uid, panel_id=panel_id, data=data)
        return key

    def enqueue_payload(self, key: str, *, text: str, time: datetime, time_end: datetime | None = None,
                        tags: list[str] | None = None, dashboard_uid: str | None = None,
                        panel_id: int | None = None, data: dict | None = None) -> None:
        """Queue any annotation under ``key`` (e.g. ``alert:<fingerprint>:<startsAt>``)."""
        if not key or len(key) > 255:
            raise InputError(f"annotation key must be 1-255 characters, got {len(key or '')}")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"annotation {key} has no text")
        body: dict[str, Any] = {"time": to_ms(time), "timeEnd": to_ms(time_end if time_end is not None else time),
                                "tags": [str(t) for t in (tags or ["aiops"])], "text": text,
                                "data": {**(data or {}), "aiops_key": key}}
        if dashboard_uid:
            body["dashboardUID"] = dashboard_uid
            if panel_id is not None:
                body["panelId"] = int(panel_id)
        self._upsert(key, body)

    def close_region(self, key: str, end: datetime) -> bool:
        """Set the end of a queued annotation (a resolved alert, an ended event).

        Returns False when nothing is queued under ``key``.
        """
        with self.store.begin() as conn:
            row = conn.execute(sa.select(annotation_outbox).where(annotation_outbox.c.key == key)).first()
        if row is None:
            return False
        body = dict(row.payload)
        body["timeEnd"] = max(to_ms(end), body["time"])
        body["data"] = {**body.get("data", {}), "ongoing": False}
        self._upsert(key, body)
        return True

    def _upsert(self, key: str, body: dict) -> None:
        t = annotation_outbox.c
        now = utcnow()
        with self.store.begin() as conn:
            row = conn.execute(sa.select(annotation_outbox).where(t.key == key)).first()
            if row is None:
                conn.execute(annotation_outbox.insert().values(
                    key=key, payload=body, state="pending", attempts=0, next_attempt_at=now, updated_at=now))
            elif row.payload != body:
                # A failing row keeps its backoff; a delivered one is due now.
                due = min(_aware(row.next_attempt_at), now) if row.attempts == 0 else row.next_attempt_at
                conn.execute(annotation_outbox.update().where(t.id == row.id).values(
                    payload=body, state="pending", next_attempt_at=due, updated_at=now))

    # ------------------------------------------------------------------ delivery

    def pending(self) -> int:
        """How many annotations wait to be delivered."""
        with self.store.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(annotation_outbox)
                                    .where(annotation_outbox.c.state == "pending")).scalar_one())

    def flush(self, now: datetime | None = None, *, limit: int = 500) -> dict[str, int]:
        """Send what is due. Returns counts: created, updated, failed, pending (left queued).

        Stops at the first failure that says Grafana is unreachable, 5xx or refusing the token,
        so a down Grafana costs one request per flush.
        """
        now = _aware(now) if now is not None else utcnow()
        stats = {"created": 0, "updated": 0, "failed": 0}
        t = annotation_outbox.c
        with self.store.begin() as conn:
            due = conn.execute(sa.select(annotation_outbox).where(t.state == "pending", t.next_attempt_at <= now)
                               .order_by(t.next_attempt_at, t.id).limit(limit)).all()
        for row in due:
            if not self._claim(row, now):
                continue
            try:
                outcome, gid = self._send(row)
            except GrafanaError as exc:
                stats["failed"] += 1
                self._failed(row, now, exc)
                if is_retryable(exc) or exc.status in (401, 403):
                    break
                continue
            stats[outcome] += 1
            self._sent(row, gid, now)
        stats["pending"] = self.pending()
        if stats["failed"]:
            logger.warning("annotations: %s", stats)
        return stats

    def _claim(self, row: Any, now: datetime) -> bool:
        t = annotation_outbox.c
        with self.store.begin() as conn:
            res = conn.execute(annotation_outbox.update()
                               .where(t.id == row.id, t.attempts == row.attempts, t.state == "pending")
                               .values(attempts=row.attempts + 1, next_attempt_at=now + _CLAIM))
        return res.rowcount == 1

    def _send(self, row: Any) -> tuple[str, int]:
        body = dict(row.payload)
        gid = row.grafana_id
        if gid is None and row.attempts > 0:  # an earlier try may have reached Grafana
            gid = self.sink.find(row.key, body)
        if gid is not None:
            try:
                self.sink.update(row.key, gid, body)
                return "updated", gid
            except GrafanaError as exc:
                if exc.status != 404:
                    raise
                logger.info("annotation %s (%s) was deleted in Grafana; creating it again", gid, row.key)
        try:
            return "created", self.sink.create(row.key, body)
        except GrafanaError as exc:
            if exc.status == 404 and "dashboardUID" in body:
                # The dashboard is not provisioned: keep the annotation as an org annotation; the
                # dashboards' tag query (watch:<name>) still shows it.
                logger.warning("dashboard %s not found for annotation %s; run `aiops grafana provision`",
                               body["dashboardUID"], row.key)
                body = {k: v for k, v in body.items() if k not in ("dashboardUID", "panelId")}
                return "created", self.sink.create(row.key, body)
            raise

    def _sent(self, row: Any, gid: int, now: datetime) -> None:
        t = annotation_outbox.c
        with self.store.begin() as conn:
            current = conn.execute(sa.select(annotation_outbox.c.payload).where(t.id == row.id)).scalar_one()
            changed = current != row.payload  # enqueued again while we were sending
            conn.execute(annotation_outbox.update().where(t.id == row.id).values(
                grafana_id=gid, state="pending" if changed else "sent", attempts=0,
                next_attempt_at=now, last_error=None, updated_at=utcnow()))

    def _failed(self, row: Any, now: datetime, exc: GrafanaError) -> None:
        attempts = row.attempts + 1
        delay = min(self.backoff * 2 ** (attempts - 1), self.max_backoff)
        if not is_retryable(exc):
            logger.error("annotation %s refused by Grafana: %s", row.key, exc)
        t = annotation_outbox.c
        with self.store.begin() as conn:
            conn.execute(annotation_outbox.update().where(t.id == row.id).values(
                next_attempt_at=now + timedelta(seconds=delay), last_error=str(exc)[:2000], updated_at=utcnow()))
