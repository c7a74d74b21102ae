"""The scheduler: one APScheduler interval job per watch, run only by the elected leader.

Run it as its own process (``aiops scheduler``), never inside web workers: under a
multi-worker server each worker would start its own scheduler and every job would run N
times. Several scheduler processes may run for availability; the ``leases`` table elects one
leader and only the leader runs jobs. A leader renews its lease every third of the lease
time; when it dies, another takes over once the lease expires. Lease expiry compares
wall-clock times written by different nodes, so their clocks must agree to well within the
lease time (NTP does this).

Jobs: ``infer:<watch>`` every ``infer_every`` calls :func:`aiops.pipeline.run_watch` with the
explain and annotate stages the config asks for (:func:`aiops.pipeline.build_stages`: only
events that are new or grew since their last explanation are explained; annotations go
through the store's outbox and are flushed after each run, and retried by the next run or by
any ``aiops serve`` replica), and
``fit:<watch>`` every ``fit_every`` (the first one ``fit_every`` after start) calls
:func:`aiops.pipeline.run_fit`, which fits the watch's model and registers it as a new model
version, promoted only when not worse than the serving one; infer runs use the serving version
when there is one (both record each run in ``job_runs``). Jobs coalesce missed runs, never overlap,
and carry a little jitter so many watches do not hit Prometheus at the same second.
SIGTERM/SIGINT stop gracefully (running jobs finish, the lease is released so another node
takes over at once); SIGHUP reloads the config: jobs are replaced, the lease is kept.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from aiops.config import AiopsConfig, WatchConfig
from aiops.errors import AiopsError
from aiops.store import Store, leases, utcnow

logger = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
RunWatch = Callable[..., Any]  # run_watch(config, watch, *, source, store)
DEFAULT_FIT: Any = object()  # Scheduler(fit_watch=...) default: aiops.pipeline.run_fit


class LeaderLease:
    """A named lease in the ``leases`` table, held by one holder at a time.

    Args:
        store: the shared store.
        name: which lease (one per role).
        holder: this node's id (default ``host:pid:random``).
        ttl: seconds a successful :meth:`acquire` holds the lease.
    """

    def __init__(self, store: Store, name: str = LEASE_NAME, *, holder: str | None = None, ttl: float = 15.0):
        if ttl <= 0:
            raise ValueError("ttl must be > 0 seconds")
        self.store = store
        self.name = name
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = ttl
        self._valid_until = 0.0  # monotonic time until which we surely hold it

    def acquire(self) -> bool:
        """Acquire the lease, or renew it if we hold it; True when we hold it now.

        One conditional UPDATE (we hold it, or it expired), else an INSERT that loses
        quietly if another node inserted first: atomic across processes.
        """
        started = time.monotonic()
        now = utcnow()
        c = leases.c
        values = dict(holder=self.holder, expires_at=now + timedelta(seconds=self.ttl))
        try:
            with self.store.begin() as conn:
                won = conn.execute(
                    leases.update()
                    .where((c.name == self.name) & ((c.holder == self.holder) | (c.expires_at < now)))
                    .values(**values)
                ).rowcount == 1
                if not won:
                    won = _insert_ignore(conn, dict(name=self.name, **values))
        except AiopsError as exc:
            logger.warning("lease %s: cannot reach the store: %s", self.name, exc)
            won = False
        # Count the lease from before the write, so our view never outlives the row's expiry.
        self._valid_until = started + self.ttl * 0.9 if won else 0.0
        return won

    def is_leader(self) -> bool:
        """Whether our last successful acquire is still surely valid."""
        return time.monotonic() < self._valid_until

    def release(self) -> None:
        """Give the lease up now (graceful shutdown), if we hold it."""
        self._valid_until = 0.0
        try:
            with self.store.begin() as conn:
                conn.execute(leases.delete().where((leases.c.name == self.name) & (leases.c.holder == self.holder)))
        except AiopsError as exc:
            logger.warning("lease %s: release failed (it will expire): %s", self.name, exc)

    def current(self) -> tuple[str, datetime] | None:
        """``(holder, expires_at)`` as stored, or None."""
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(leases.c.holder, leases.c.expires_at).where(leases.c.name == self.name)).first()
        if row is None:
            return None
        exp = row[1] if row[1].tzinfo else row[1].replace(tzinfo=timezone.utc)
        return row[0], exp


def _insert_ignore(conn: Any, values: dict) -> bool:
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(leases).values(**values).on_conflict_do_nothing(index_elements=["name"])
        return conn.execute(stmt).rowcount == 1
    try:
        with conn.begin_nested():
            conn.execute(leases.insert().values(**values))
        return True
    except IntegrityError:
        return False


def _jitter(seconds: float) -> int:
    return int(min(max(seconds * 0.1, 0), 30))


class Scheduler:
    """Watch jobs on an APScheduler ``BackgroundScheduler``, gated by a :class:`LeaderLease`.

    Args:
        config: the validated configuration.
        store: the shared store (default: open ``config.store.url``).
        source: the metric source (default: built from the config, rebuilt on reload).
        run_watch: the infer job (default :func:`aiops.pipeline.run_watch`).
        fit_watch: the fit job (default :func:`aiops.pipeline.run_fit`; None: no fit jobs).
        lease_ttl: seconds of leadership per renewal (default ``service.lease``).
        holder: this node's id in the lease.
        first_run_delay: seconds before a new leader's first infer run of each watch.
        stages: the infer job's explain/annotate stages (default: built from the config when
            the infer function takes ``stages``; rebuilt on reload).
    """

    def __init__(
        self,
        config: AiopsConfig,
        *,
        store: Store | None = None,
        source: Any = None,
        run_watch: RunWatch | None = None,
        fit_watch: Any = DEFAULT_FIT,
        lease_ttl: float | None = None,
        holder: str | None = None,
        first_run_delay: float = 1.0,
        stages: Any = None,
    ):
        from apscheduler.schedulers.background import BackgroundScheduler

        import aiops.pipeline as pipeline

        self.config = config
        self.store = store if store is not None else Store.open(config.store.url)
        self._own_source = source is None
        self.source = source
        self.run_watch = run_watch or pipeline.run_watch
        self.fit_watch = pipeline.run_fit if fit_watch is DEFAULT_FIT else fit_watch
        takes_stages = "stages" in inspect.signature(self.run_watch).parameters
        self._own_stages = stages is None and takes_stages
        self.stages = stages if takes_stages else None
        ttl = lease_ttl if lease_ttl is not None else config.service.lease.seconds
        self.lease = LeaderLease(self.store, holder=holder, ttl=ttl)
        self.first_run_delay = first_run_delay
        self._was_leader = False
        self._lock = threading.RLock()
        self._sched = BackgroundScheduler(timezone=timezone.utc)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Scheduler":
        """Start renewing the lease and scheduling the watches (returns at once)."""
        if self.source is None:
            self.source = self._make_source(self.config)
        if self._own_stages:
            self.stages = self._make_stages(self.config)
        self._sched.add_job(
            self._renew, "interval", seconds=self.lease.ttl / 3, id="lease", coalesce=True, max_instances=1,
            misfire_grace_time=None, next_run_time=datetime.now(timezone.utc),  # a late renewal still counts
        )
        self._sync_jobs()
        self._sched.start()
        logger.info("scheduler %s started with %d watches", self.lease.holder, len(self.config.watches))
        return self

    def shutdown(self, *, wait: bool = True, release: bool = True) -> None:
        """Stop scheduling; with ``wait`` let running jobs finish; with ``release`` free the lease."""
        if self._sched.running:
            self._sched.shutdown(wait=wait)
        if release:
            self.lease.release()
        logger.info("scheduler %s stopped", self.lease.holder)

    def reload(self, config: AiopsConfig) -> None:
        """Swap in a new config: jobs are re-created, the lease and the store are kept."""
        with self._lock:
            if config.store.url != self.config.store.url:
                logger.warning("store.url changed; restart the scheduler to use the new store")
            if self._own_source:
                self.source = self._make_source(config)
            if self._own_stages:
                self.stages = self._make_stages(config)
            self.config = config
            self._sync_jobs()
        logger.info("scheduler config reloaded: %d watches", len(config.watches))

    def run_forever(self, reload_config: Callable[[], AiopsConfig] | None = None, *, stop: threading.Event | None = None) -> None:
        """Start, then block until SIGTERM/SIGINT (or ``stop``); SIGHUP calls ``reload_config``.

        A config that fails to load on SIGHUP is logged and the running one kept.
        """
        stop = stop or threading.Event()
        hup = threading.Event()
        main = threading.current_thread() is threading.main_thread()
        old: dict[int, Any] = {}
        if main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: stop.set())
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: (hup.set(), stop.set()))
        self.start()
        try:
            while True:
                stop.wait()
                if hup.is_set():
                    hup.clear()
                    stop.clear()
                    if reload_config is not None:
                        try:
                            self.reload(reload_config())
                        except AiopsError as exc:
                            logger.error("config reload failed, keeping the running config: %s", exc)
                    continue
                break
        finally:
            self.shutdown()
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # ------------------------------------------------------------------ jobs

    def jobs(self) -> list[str]:
        """Ids of the scheduled jobs (``lease``, ``infer:<watch>``, ``fit:<watch>``)."""
        return sorted(j.id for j in self._sched.get_jobs())

    def _make_source(self, config: AiopsConfig) -> Any:
        from aiops.sources.base import make_source

        return make_source(config)

    def _make_stages(self, config: AiopsConfig) -> Any:
        from aiops.pipeline import Stages, build_stages

        try:
            return build_stages(config, self.store, scheduled=True)
        except AiopsError as exc:
            logger.error("explanations and annotations are off for scheduled runs: %s", exc)
            return Stages()

    def _sync_jobs(self) -> None:
        wanted: dict[str, tuple[str, WatchConfig, float]] = {}
        for w in self.config.watches:
            wanted[f"infer:{w.name}"] = ("infer", w, w.infer_every.seconds)
            if self.fit_watch is not None:
                wanted[f"fit:{w.name}"] = ("fit", w, w.fit_every.seconds)
        for job in self._sched.get_jobs():
            if job.id != "lease" and job.id not in wanted:
                job.remove()
        first = datetime.now(timezone.utc) + timedelta(seconds=self.first_run_delay)
        for job_id, (kind, w, every) in wanted.items():
            self._sched.add_job(
                self._run_job, "interval", args=(kind, w.name), seconds=every, id=job_id, name=job_id,
                replace_existing=True, coalesce=True, max_instances=1,
                misfire_grace_time=max(int(every / 2), 1), jitter=_jitter(every),
                next_run_time=first if kind == "infer" else first + timedelta(seconds=every),
            )

    @staticmethod
    def _flush(annotator: Any) -> None:
        # Undelivered annotations stay in the outbox (Grafana down): the next run or a serve replica retries.
        try:
            annotator.flush()
        except Exception as exc:  # noqa: BLE001 - delivery problems never fail the job
            logger.warning("annotation flush failed: %s", exc)

    def _renew(self) -> None:
        leader = self.lease.acquire()
        if leader and not self._was_leader:
            logger.info("scheduler %s is now the leader", self.lease.holder)
        elif not leader and self._was_leader:
            logger.warning("scheduler %s lost the lead", self.lease.holder)
        self._was_leader = leader

    def _run_job(self, kind: str, watch_name: str) -> None:
        if not self.lease.is_leader():
            logger.debug("%s:%s skipped: not the leader", kind, watch_name)
            return
        with self._lock:
            config, source, stages = self.config, self.source, self.stages
        try:
            watch = config.watch(watch_name)
        except AiopsError:
            return  # removed by a reload while queued
        fn = self.run_watch if kind == "infer" else self.fit_watch
        extra = {"stages": stages} if kind == "infer" and stages is not None else {}
        t0 = time.perf_counter()
        try:
            result = fn(config, watch, source=source, store=self.store, **extra)
        except Exception:  # noqa: BLE001 - a failing job must not stop the scheduler
            logger.exception("%s:%s failed", kind, watch_name)
            return
        finally:
            if extra and getattr(stages, "annotator", None) is not None:
                self._flush(stages.annotator)
        err = getattr(result, "error", None)
        if err:
            logger.warning("%s:%s: %s", kind, watch_name, err)
        else:
            logger.info("%s:%s done in %.2fs", kind, watch_name, time.perf_counter() - t0)
