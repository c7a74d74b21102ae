"""The store: SQLAlchemy tables and the small set of queries the stages need.

SQLite by default (one file), PostgreSQL by URL. Tables are created idempotently.

How the schema evolves: ``SCHEMA_VERSION`` is recorded in the ``schema_version`` table.
New tables are added to ``metadata`` and appear through ``create_all`` (idempotent). A change
to an existing table is a numbered function in ``MIGRATIONS`` (version -> callable taking a
connection) that runs once, in order, inside a transaction, when an older store is opened;
the recorded version then moves on. A store newer than this code is refused with a clear
error rather than written to. No migration ever drops data without a copy.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from aiops.errors import StoreError
from aiops.types import AnomalyEvent

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
MAX_ID = 2**62  # row ids above this cannot exist (SQLite integers are 64-bit); APIs answer 404
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}  # filled below the tables

metadata = sa.MetaData()
UTCDateTime = sa.DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow),
)

job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("watch", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),  # fetch | fit | infer | demo ...
    sa.Column("started_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("status", sa.String(16), nullable=False, default="running"),  # running|ok|error
    sa.Column("series", sa.Integer),
    sa.Column("points", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("details", sa.JSON),
)

anomaly_events = sa.Table(
    "anomaly_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("watch", sa.String(64), nullable=False, index=True),
    sa.Column("series_id", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False, default=dict),
    sa.Column("start", UTCDateTime, nullable=False),
    sa.Column("end", UTCDateTime),  # NULL while ongoing
    sa.Column("peak_time", UTCDateTime, nullable=False),
    sa.Column("peak_score", sa.Float, nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("observed", sa.Float),
    sa.Column("expected", sa.Float),
    sa.Column("expected_lower", sa.Float),
    sa.Column("expected_upper", sa.Float),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    sa.UniqueConstraint("watch", "series_id", "start", name="uq_event_identity"),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("watch", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # folder holding weights.safetensors + config.json
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("status", sa.String(16), nullable=False),  # serving | candidate | rejected | retired
    sa.Column("val_error", sa.Float),
    sa.Column("drift", sa.Float),
    sa.Column("details", sa.JSON),
    sa.UniqueConstraint("watch", "version", name="uq_model_version"),
)

explanations = sa.Table(
    "explanations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject_kind", sa.String(16), nullable=False),  # event | alert | query | question
    sa.Column("subject_ref", sa.Text, nullable=False),  # event id, alert fingerprint+startsAt ...
    sa.Column("watch", sa.String(64)),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    sa.Column("explanation", sa.JSON, nullable=False),
    sa.Column("markdown", sa.Text, nullable=False),
    sa.Column("guard_note", sa.Text),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("explanation_id", sa.Integer, sa.ForeignKey("explanations.id"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("verdict", sa.String(16), nullable=False),  # accepted | edited | rejected
    sa.Column("text", sa.Text),
    sa.Column("author", sa.String(128)),
)

alert_inbox = sa.Table(
    "alert_inbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("starts_at", sa.String(64), nullable=False),  # as Alertmanager sent it
    sa.Column("status", sa.String(16), nullable=False),  # firing | resolved
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("state", sa.String(16), nullable=False, default="pending"),  # pending|working|done|dead
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("locked_by", sa.String(128)),
    sa.Column("locked_until", UTCDateTime),
    sa.Column("last_error", sa.Text),
    sa.Column("explanation_id", sa.Integer),
    sa.UniqueConstraint("fingerprint", "starts_at", "status", name="uq_alert_identity"),
)

annotation_outbox = sa.Table(
    "annotation_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(255), nullable=False, unique=True),  # e.g. event:<id>
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("grafana_id", sa.Integer),  # annotation id once created
    sa.Column("state", sa.String(16), nullable=False, default="pending"),  # pending | sent
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

action_runs = sa.Table(
    "action_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("watch", sa.String(64)),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("explanation_id", sa.Integer),
    sa.Column("approved_by", sa.String(128), nullable=False),
    sa.Column("approved_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("status_code", sa.Integer),
    sa.Column("response", sa.Text),  # excerpt of the receiver's answer
    sa.Column("event_id", sa.Integer),  # schema 2
    sa.Column("request", sa.JSON),  # schema 2: method, url (query redacted), body; never headers
    sa.Column("error", sa.Text),  # schema 2: why the run failed (unreachable, non-2xx answer)
)


def _migrate_2(conn: Connection) -> None:
    """Schema 2: action_runs records the event, the request sent and the error."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("action_runs")}
    for name in ("event_id", "request", "error"):
        if name not in have:
            ddl = action_runs.c[name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE action_runs ADD COLUMN {name} {ddl}"))


MIGRATIONS[2] = _migrate_2


# Output series (aiops_forecast, aiops_anomaly_score, ...) served by the read API and /metrics.
output_series = sa.Table(
    "output_series",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False, unique=True),  # series_id() of the full label set
    sa.Column("metric", sa.String(64), nullable=False, index=True),  # aiops_forecast ...
    sa.Column("watch", sa.String(64), nullable=False, index=True),
    sa.Column("labels", sa.JSON, nullable=False),  # includes __name__ and watch
)

output_points = sa.Table(
    "output_points",
    metadata,
    sa.Column("series", sa.Integer, sa.ForeignKey("output_series.id"), primary_key=True),
    sa.Column("ts", sa.BigInteger, primary_key=True),  # unix milliseconds
    sa.Column("value", sa.Float, nullable=False),
)

class Store:
    """A handle on the database. Build with :meth:`open`; cheap to share across threads."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, create: bool = True) -> "Store":
        """Open (and by default create or migrate) the store at ``url``."""
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                parent = Path(path).expanduser().parent
                try:
                    parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create folder {parent} for store: {exc.strerror}") from None
            kwargs["connect_args"] = {"timeout": 15, "check_same_thread": False}
        try:
            engine = sa.create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(
                f"cannot open store {_redact_url(url)}: {exc}",
                hint="use sqlite:///path.db or postgresql+psycopg://user@host/db",
            ) from None
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        if create:
            store.create()
        return store

    def create(self) -> None:
        """Create missing tables and run pending migrations (idempotent)."""
        try:
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                row = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.id == 1)).first()
                current = row[0] if row else None
                if current is None:
                    conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=utcnow()))
                    return
                if current > SCHEMA_VERSION:
                    raise StoreError(
                        f"the store has schema version {current}, newer than this aiops ({SCHEMA_VERSION})",
                        hint="upgrade aiops, or point store.url at another database",
                    )
                for v in range(current + 1, SCHEMA_VERSION + 1):
                    logger.info("migrating store to schema version %d", v)
                    MIGRATIONS[v](conn)
                if current < SCHEMA_VERSION:
                    conn.execute(
                        schema_version.update().where(schema_version.c.id == 1).values(
                            version=SCHEMA_VERSION, updated_at=utcnow()
                        )
                    )
        except OperationalError as exc:
            raise StoreError(f"cannot prepare store: {exc.orig}", hint=_store_hint(exc)) from None

    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(schema_version.c.version)).scalar_one())

    def check_writable(self) -> None:
        """Raise StoreError unless a write can be committed now."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    schema_version.update().where(schema_version.c.id == 1).values(updated_at=utcnow())
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"store is not writable: {getattr(exc, 'orig', exc)}", hint=_store_hint(exc)) from None

    def begin(self) -> Iterator[Connection]:
        """A transaction; store errors come out as StoreError and nothing half-written stays."""
        return _Txn(self.engine)

    # ------------------------------------------------------------------ job runs

    def start_run(self, watch: str, kind: str, details: dict | None = None) -> int:
        with self.begin() as conn:
            res = conn.execute(
                job_runs.insert().values(
                    watch=watch, kind=kind, started_at=utcnow(), status="running", details=details or {}
                )
            )
            return int(res.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        *,
        status: str = "ok",
        series: int | None = None,
        points: int | None = None,
        error: str | None = None,
        details: dict | None = None,
    ) -> None:
        values: dict[str, Any] = dict(finished_at=utcnow(), status=status, series=series, points=points, error=error)
        if details is not None:
            values["details"] = details
        with self.begin() as conn:
            conn.execute(job_runs.update().where(job_runs.c.id == run_id).values(**values))

    def runs(self, watch: str | None = None, limit: int = 50) -> list[dict]:
        q = sa.select(job_runs).order_by(job_runs.c.id.desc()).limit(limit)
        if watch:
            q = q.where(job_runs.c.watch == watch)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ anomaly events

    def upsert_event(self, ev: AnomalyEvent) -> int:
        """Insert or update an event identified by (watch, series_id, start); returns its id."""
        values = dict(
            labels=ev.labels,
            end=ev.end,
            peak_time=ev.peak_time,
            peak_score=float(ev.peak_score),
            severity=ev.severity,
            direction=ev.direction,
            observed=_f(ev.observed),
            expected=_f(ev.expected),
            expected_lower=_f(ev.expected_lower),
            expected_upper=_f(ev.expected_upper),
            updated_at=utcnow(),
        )
        key = (
            (anomaly_events.c.watch == ev.watch)
            & (anomaly_events.c.series_id == ev.series_id)
            & (anomaly_events.c.start == ev.start)
        )
        with self.begin() as conn:
            row = conn.execute(sa.select(anomaly_events.c.id).where(key)).first()
            if row:
                conn.execute(anomaly_events.update().where(anomaly_events.c.id == row[0]).values(**values))
                ev.id = int(row[0])
            else:
                res = conn.execute(
                    anomaly_events.insert().values(watch=ev.watch, series_id=ev.series_id, start=ev.start, **values)
                )
                ev.id = int(res.inserted_primary_key[0])
        return ev.id

    def events(
        self,
        *,
        watch: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        severity: str | None = None,
        ongoing: bool | None = None,
        limit: int = 500,
    ) -> list[AnomalyEvent]:
        c = anomaly_events.c
        q = sa.select(anomaly_events).order_by(c.start.desc()).limit(limit)
        if watch:
            q = q.where(c.watch == watch)
        if since is not None:
            q = q.where(sa.or_(c.end.is_(None), c.end >= since))
        if until is not None:
            q = q.where(c.start <= until)
        if severity:
            q = q.where(c.severity == severity)
        if ongoing is not None:
            q = q.where(c.end.is_(None) if ongoing else c.end.is_not(None))
        with self.engine.connect() as conn:
            return [_row_to_event(r._mapping) for r in conn.execute(q)]

    def event(self, event_id: int) -> AnomalyEvent | None:
        """The event with this id, or None (also for ids no row can have, past :data:`MAX_ID`)."""
        if event_id > MAX_ID:
            return None
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(anomaly_events).where(anomaly_events.c.id == event_id)).first()
        return _row_to_event(r._mapping) if r else None


    # ------------------------------------------------------------------ explanations

    def add_explanation(
        self,
        *,
        subject_kind: str,
        subject_ref: str,
        watch: str | None,
        backend: str,
        evidence: dict,
        explanation: dict,
        markdown: str,
        guard_note: str | None = None,
    ) -> int:
        """Store one explanation and return its id."""
        with self.begin() as conn:
            res = conn.execute(
                explanations.insert().values(
                    subject_kind=subject_kind, subject_ref=subject_ref, watch=watch, created_at=utcnow(),
                    backend=backend, evidence=evidence, explanation=explanation, markdown=markdown,
                    guard_note=guard_note,
                )
            )
            return int(res.inserted_primary_key[0])

    def latest_explanation(self, subject_kind: str, subject_ref: str) -> dict | None:
        c = explanations.c
        q = (
            sa.select(explanations)
            .where((c.subject_kind == subject_kind) & (c.subject_ref == subject_ref))
            .order_by(c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        return dict(r._mapping) if r else None

    def explanation(self, explanation_id: int) -> dict | None:
        """The explanation row with this id, or None (also past :data:`MAX_ID`)."""
        if explanation_id > MAX_ID:
            return None
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(explanations).where(explanations.c.id == explanation_id)).first()
        return dict(r._mapping) if r else None

    def explanations(
        self, *, subject_kind: str | None = None, subject_ref: str | None = None, watch: str | None = None,
        limit: int = 100,
    ) -> list[dict]:
        """Explanations, newest first, optionally of one subject kind, subject or watch."""
        c = explanations.c
        q = sa.select(explanations).order_by(c.id.desc()).limit(limit)
        for col, value in ((c.subject_kind, subject_kind), (c.subject_ref, subject_ref), (c.watch, watch)):
            if value is not None:
                q = q.where(col == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def latest_explanations(self, subject_kind: str, subject_refs: list[str]) -> dict[str, dict]:
        """subject_ref -> its newest explanation, for many subjects in one query."""
        if not subject_refs:
            return {}
        c = explanations.c
        newest = (
            sa.select(sa.func.max(c.id))
            .where((c.subject_kind == subject_kind) & c.subject_ref.in_(subject_refs))
            .group_by(c.subject_ref)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(explanations).where(c.id.in_(newest))).all()
        return {r._mapping["subject_ref"]: dict(r._mapping) for r in rows}

    # ------------------------------------------------------------------ feedback

    def add_feedback(self, explanation_id: int, verdict: str, text: str | None, author: str | None) -> dict:
        """Store an operator's verdict (accepted | edited | rejected) on an explanation."""
        values = dict(explanation_id=explanation_id, verdict=verdict, text=text, author=author, created_at=utcnow())
        with self.begin() as conn:
            res = conn.execute(feedback.insert().values(**values))
            return {"id": int(res.inserted_primary_key[0]), **values}

    def feedback(self, *, explanation_id: int | None = None, limit: int = 100) -> list[dict]:
        q = sa.select(feedback).order_by(feedback.c.id.desc()).limit(limit)
        if explanation_id is not None:
            q = q.where(feedback.c.explanation_id == explanation_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # ------------------------------------------------------------------ approved action runs

    def add_action_run(self, **values: Any) -> dict:
        """Record one approved action run (columns of ``action_runs``); returns the row."""
        values.setdefault("approved_at", utcnow())
        with self.begin() as conn:
            res = conn.execute(action_runs.insert().values(**values))
            return {"id": int(res.inserted_primary_key[0]), **values}

    def action_runs(self, *, watch: str | None = None, limit: int = 100) -> list[dict]:
        q = sa.select(action_runs).order_by(action_runs.c.id.desc()).limit(limit)
        if watch is not None:
            q = q.where(action_runs.c.watch == watch)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def open_event_counts(self) -> dict[str, int]:
        """watch -> number of ongoing anomaly events."""
        c = anomaly_events.c
        q = sa.select(c.watch, sa.func.count()).where(c.end.is_(None)).group_by(c.watch)
        with self.engine.connect() as conn:
            return {w: int(n) for w, n in conn.execute(q)}

class _Txn:
    def __init__(self, engine: Engine):
        self._cm = engine.begin()

    def __enter__(self) -> Connection:
        try:
            return self._cm.__enter__()
        except SQLAlchemyError as exc:
            raise StoreError(f"store unavailable: {getattr(exc, 'orig', exc)}", hint=_store_hint(exc)) from None

    def __exit__(self, et, ev, tb) -> bool:
        try:
            self._cm.__exit__(et, ev, tb)
        except SQLAlchemyError as exc:
            raise StoreError(f"store write failed, nothing was written: {getattr(exc, 'orig', exc)}", hint=_store_hint(exc)) from None
        if isinstance(ev, SQLAlchemyError):
            raise StoreError(f"store write failed, nothing was written: {getattr(ev, 'orig', ev)}", hint=_store_hint(ev)) from None
        return False


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _row_to_event(m: Any) -> AnomalyEvent:
    return AnomalyEvent(
        id=m["id"],
        watch=m["watch"],
        series_id=m["series_id"],
        labels=dict(m["labels"] or {}),
        start=_utc(m["start"]),
        end=_utc(m["end"]),
        peak_time=_utc(m["peak_time"]),
        peak_score=m["peak_score"],
        severity=m["severity"],
        direction=m["direction"],
        observed=m["observed"] if m["observed"] is not None else float("nan"),
        expected=m["expected"] if m["expected"] is not None else float("nan"),
        expected_lower=m["expected_lower"] if m["expected_lower"] is not None else float("nan"),
        expected_upper=m["expected_upper"] if m["expected_upper"] is not None else float("nan"),
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=15000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _store_hint(exc: Exception) -> str | None:
    text = str(exc).lower()
    if "locked" in text:
        return "another process holds the database; retry, or use PostgreSQL for several writers"
    if "disk" in text and ("full" in text or "space" in text):
        return "free disk space where the store lives"
    if "readonly" in text or "read-only" in text:
        return "make the store file and its folder writable"
    return None


def _redact_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for messages
        return "<unparsable url>"


def default_sqlite_url(folder: str | os.PathLike) -> str:
    return f"sqlite:///{Path(folder) / 'aiops.db'}"
