"""The durable alert inbox: the queries on the ``alert_inbox`` table.

An alert is identified by ``(fingerprint, startsAt, status)``; Alertmanager re-sends groups,
and a re-sent alert is accepted but not stored again. Rows move
``pending -> working -> done`` (or back to ``pending`` with a later ``next_attempt_at`` on
failure, and to ``dead`` after the last attempt).

Claims are atomic across threads and processes: a claim is one conditional UPDATE whose
rowcount says whether this worker won. A worker's claim lasts until ``locked_until``; after
that (the worker died) the row is claimable again. Completion writes the explanation and marks
the row done in one transaction, and only while the worker still holds the row, so each alert
is explained exactly once even across ``kill -9``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from aiops.errors import StoreError
from aiops.store import MAX_ID, Store, _utc, alert_inbox, explanations, utcnow

logger = logging.getLogger(__name__)

_IDENTITY = ("fingerprint", "starts_at", "status")


@dataclass
class InboxItem:
    """A claimed inbox row."""

    id: int
    fingerprint: str
    starts_at: str
    status: str
    alert: dict[str, Any]
    attempts: int

    @property
    def subject_ref(self) -> str:
        return f"{self.fingerprint}@{self.starts_at}"


class _LostClaim(Exception):
    """The row was re-claimed by another worker; roll back."""


class Inbox:
    """Inbox operations over a :class:`~aiops.store.Store` (thread-safe; one per process is plenty)."""

    def __init__(self, store: Store):
        self.store = store

    # ------------------------------------------------------------------ writing

    def add(self, alerts: Iterable[dict[str, Any]]) -> tuple[int, int]:
        """Store alerts (Alertmanager's dicts) once each; returns ``(stored, duplicates)``.

        All or nothing: on a store error nothing is stored and StoreError is raised.
        """
        rows = []
        for a in alerts:
            for key in ("fingerprint", "startsAt", "status"):
                if not isinstance(a.get(key), str) or not a[key]:
                    raise StoreError(f"alert has no {key}; cannot store it")
            rows.append(
                dict(fingerprint=a["fingerprint"], starts_at=a["startsAt"], status=a["status"], payload=a)
            )
        return self._add(rows)

    def _add(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        stored = 0
        now = utcnow()
        with self.store.begin() as conn:
            for row in rows:
                values = dict(row, received_at=now, state="pending", attempts=0, next_attempt_at=now)
                stored += _insert_ignore(conn, values)
        return stored, len(rows) - stored

    # ------------------------------------------------------------------ claiming

    def claim(self, worker: str, *, lease: float, max_attempts: int, now: datetime | None = None) -> InboxItem | None:
        """Claim the oldest due row for ``lease`` seconds, or return None when nothing is due.

        A row whose worker's lease expired after its last allowed attempt is dead-lettered
        here instead of being handed out again.
        """
        c = alert_inbox.c
        now = now or utcnow()
        due = sa.or_(
            sa.and_(c.state == "pending", c.next_attempt_at <= now),
            sa.and_(c.state == "working", c.locked_until < now),
        )
        with self.store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(c.id).where(due).order_by(c.id).limit(16))]
        for row_id in ids:
            with self.store.begin() as conn:
                won = conn.execute(
                    alert_inbox.update()
                    .where((c.id == row_id) & due)
                    .values(
                        state="working",
                        locked_by=worker,
                        locked_until=now + timedelta(seconds=lease),
                        attempts=c.attempts + 1,
                    )
                ).rowcount
                if won != 1:
                    continue  # another worker was faster
                r = conn.execute(sa.select(alert_inbox).where(c.id == row_id)).one()._mapping
                if r["attempts"] > max_attempts:
                    conn.execute(
                        alert_inbox.update()
                        .where(c.id == row_id)
                        .values(
                            state="dead",
                            locked_by=None,
                            locked_until=None,
                            attempts=max_attempts,
                            last_error=r["last_error"] or "worker lease expired on every attempt (worker crashed?)",
                        )
                    )
                    logger.warning("alert %s dead-lettered: its workers kept dying", r["fingerprint"])
                    continue
            return InboxItem(
                id=r["id"],
                fingerprint=r["fingerprint"],
                starts_at=r["starts_at"],
                status=r["status"],
                alert=dict(r["payload"]),
                attempts=r["attempts"],
            )
        return None

    def complete(
        self,
        item: InboxItem,
        worker: str,
        explanation: dict[str, Any] | None = None,
    ) -> int | None | bool:
        """Mark a claimed row done, storing its explanation in the same transaction.

        Args:
            item: the claimed row.
            worker: the claiming worker's id; the write happens only while it holds the row.
            explanation: values for the ``explanations`` table (``explanation``, ``markdown``,
                ``backend``, optional ``evidence`` and ``guard_note``); None for rows that need
                none (resolved alerts).

        Returns:
            The explanation id (None when none was stored), or False when the claim was lost
            (the lease expired and another worker took the row); then nothing was written.
        """
        c = alert_inbox.c
        try:
            with self.store.begin() as conn:
                expl_id = None
                if explanation is not None:
                    res = conn.execute(
                        explanations.insert().values(
                            subject_kind="alert",
                            subject_ref=item.subject_ref,
                            watch=explanation.get("watch"),
                            created_at=utcnow(),
                            backend=str(explanation.get("backend") or "unknown")[:32],
                            evidence=explanation.get("evidence") or {},
                            explanation=explanation["explanation"],
                            markdown=explanation["markdown"],
                            guard_note=explanation.get("guard_note"),
                        )
                    )
                    expl_id = int(res.inserted_primary_key[0])
                done = conn.execute(
                    alert_inbox.update()
                    .where((c.id == item.id) & (c.state == "working") & (c.locked_by == worker))
                    .values(state="done", locked_by=None, locked_until=None, explanation_id=expl_id, last_error=None)
                ).rowcount
                if done != 1:
                    raise _LostClaim()
        except _LostClaim:
            logger.warning("alert %s: claim lost before completion; another worker owns it", item.subject_ref)
            return False
        return expl_id

    def fail(
        self, item: InboxItem, worker: str, error: str, *, max_attempts: int, backoff: float, now: datetime | None = None
    ) -> str:
        """Record a failed attempt: back to ``pending`` after an exponential delay, or ``dead``.

        Returns the new state (``pending``, ``dead``, or ``lost`` when the claim was gone).
        """
        c = alert_inbox.c
        now = now or utcnow()
        dead = item.attempts >= max_attempts
        delay = backoff * 2 ** max(item.attempts - 1, 0)
        state = "dead" if dead else "pending"
        with self.store.begin() as conn:
            n = conn.execute(
                alert_inbox.update()
                .where((c.id == item.id) & (c.state == "working") & (c.locked_by == worker))
                .values(
                    state=state,
                    locked_by=None,
                    locked_until=None,
                    last_error=error[:2000],
                    next_attempt_at=now + timedelta(seconds=delay),
                )
            ).rowcount
        if n != 1:
            return "lost"
        if dead:
            logger.error("alert %s dead-lettered after %d attempts: %s", item.subject_ref, item.attempts, error)
        else:
            logger.warning("alert %s attempt %d failed (retry in %.1fs): %s", item.subject_ref, item.attempts, delay, error)
        return state

    # ------------------------------------------------------------------ reading

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered rows, newest first, for ``GET /api/v1/dead-letters``."""
        c = alert_inbox.c
        q = sa.select(alert_inbox).where(c.state == "dead").order_by(c.id.desc()).limit(limit)
        with self.store.engine.connect() as conn:
            return [_public(r._mapping) for r in conn.execute(q)]

    def requeue(self, row_id: int) -> bool:
        """Give a dead-lettered row a fresh set of attempts; False when it is not dead (or cannot exist)."""
        if row_id > MAX_ID:
            return False
        c = alert_inbox.c
        with self.store.begin() as conn:
            n = conn.execute(
                alert_inbox.update()
                .where((c.id == row_id) & (c.state == "dead"))
                .values(state="pending", attempts=0, next_attempt_at=utcnow())
            ).rowcount
        return n == 1

    def counts(self) -> dict[str, int]:
        """Rows per state (pending, working, done, dead)."""
        c = alert_inbox.c
        with self.store.engine.connect() as conn:
            got = dict(conn.execute(sa.select(c.state, sa.func.count()).group_by(c.state)).all())
        return {s: int(got.get(s, 0)) for s in ("pending", "working", "done", "dead")}

    def rows(self, limit: int = 1000) -> list[dict[str, Any]]:
        """All rows, oldest first (tests and debugging)."""
        with self.store.engine.connect() as conn:
            q = sa.select(alert_inbox).order_by(alert_inbox.c.id).limit(limit)
            return [_public(r._mapping) for r in conn.execute(q)]


def _public(m: Any) -> dict[str, Any]:
    out = dict(m)
    for k in ("received_at", "next_attempt_at", "locked_until"):
        v = _utc(out.get(k))
        out[k] = v.isoformat() if v is not None else None
    return out


def _insert_ignore(conn: Connection, values: dict[str, Any]) -> int:
    """Insert unless the alert identity exists; 1 if inserted, else 0."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(alert_inbox).values(**values).on_conflict_do_nothing(index_elements=list(_IDENTITY))
        return int(conn.execute(stmt).rowcount == 1)
    try:  # other databases: a savepoint per row
        with conn.begin_nested():
            conn.execute(alert_inbox.insert().values(**values))
        return 1
    except IntegrityError:
        return 0
