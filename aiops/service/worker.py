"""Inbox workers: claim an alert, explain it, store the explanation, annotate, forward.

The explainer is injected as a callable ``explain_alert(alert) -> (explanation, markdown)``
(optionally a third element, the evidence dict), so the worker does not depend on how
evidence is built. :func:`make_explain_alert` wires the default (evidence from
:mod:`aiops.explain.evidence` when it offers ``alert_evidence``, the configured explainer).

Delivery guarantees: the explanation insert and the ``done`` mark are one transaction made
only while this worker still holds the row, so an accepted alert is explained exactly once.
Annotation calls are idempotent per key and run before completion (at least once); the
forward to a chat webhook runs after it (at most once: a crash in between skips it).
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import uuid
from datetime import datetime
from typing import Any, Callable, Protocol

from aiops.config import AiopsConfig
from aiops.errors import AiopsError
from aiops.service.inbox import Inbox, InboxItem
from aiops.store import Store
from aiops.timeutil import parse_time
from aiops.types import Evidence, EvidenceItem

logger = logging.getLogger(__name__)

ExplainResult = tuple  # (explanation dict, markdown) or (explanation dict, markdown, evidence dict)


class ExplainAlert(Protocol):
    def __call__(self, alert: dict[str, Any]) -> ExplainResult: ...


class AlertAnnotator(Protocol):
    """What workers need from :class:`aiops.grafana.annotations.Annotator`."""

    def enqueue_payload(self, key: str, *, text: str, time: datetime, time_end: datetime | None = None,
                        tags: list[str] | None = None, data: dict | None = None) -> None: ...

    def close_region(self, key: str, end: datetime) -> bool: ...


def annotation_key(item: InboxItem) -> str:
    """Outbox key of an alert's region: ``alert:<fingerprint>:<startsAt>``."""
    return f"alert:{item.fingerprint}:{item.starts_at}"[:255]


def worker_id() -> str:
    """A process- and thread-unique worker name: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class InboxWorker:
    """Processes inbox rows one at a time.

    Args:
        store: the store holding the inbox.
        explain_alert: the explainer callable (see module doc).
        lease: seconds a claim lasts; a row whose worker died is re-claimed after this.
        max_attempts: attempts before a row is dead-lettered.
        backoff: seconds before the first retry; doubles each attempt.
        annotator: optional; firing alerts get a region annotation, resolved ones close it.
        close_region: optional ``close_region(key, end)``; default ``annotator.close_region``.
        forward: optional ``forward(text, alert)`` called with the Markdown after completion.
        name: this worker's id in ``locked_by``.
    """

    def __init__(
        self,
        store: Store,
        explain_alert: ExplainAlert,
        *,
        lease: float = 60.0,
        max_attempts: int = 5,
        backoff: float = 5.0,
        annotator: AlertAnnotator | None = None,
        close_region: Callable[[str, datetime], Any] | None = None,
        forward: Callable[[str, dict], Any] | None = None,
        name: str | None = None,
    ):
        if lease <= 0 or max_attempts < 1 or backoff < 0:
            raise ValueError("lease must be > 0, max_attempts >= 1, backoff >= 0")
        self.inbox = Inbox(store)
        self.explain_alert = explain_alert
        self.lease = lease
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.annotator = annotator
        self.close_region = close_region or (annotator.close_region if annotator is not None else None)
        self.forward = forward
        self.name = name or worker_id()

    def run_once(self) -> bool:
        """Claim and process one due row; False when nothing was due."""
        item = self.inbox.claim(self.name, lease=self.lease, max_attempts=self.max_attempts)
        if item is None:
            return False
        try:
            self._process(item)
        except Exception as exc:  # noqa: BLE001 - any failure is a retry, never a lost alert
            msg = str(exc) if isinstance(exc, AiopsError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AiopsError):
                logger.debug("alert %s failed", item.subject_ref, exc_info=True)
            self.inbox.fail(item, self.name, msg, max_attempts=self.max_attempts, backoff=self.backoff)
        return True

    def drain(self, limit: int = 10_000) -> int:
        """Process due rows until none is left (or ``limit``); returns how many were handled."""
        n = 0
        while n < limit and self.run_once():
            n += 1
        return n

    def _process(self, item: InboxItem) -> None:
        if item.status == "resolved":
            if self.close_region is not None:
                self.close_region(annotation_key(item), _time(item.alert.get("endsAt")) or _now())
            self.inbox.complete(item, self.name)
            return
        result = self.explain_alert(item.alert)
        explanation, markdown = result[0], result[1]
        evidence = result[2] if len(result) > 2 else {}
        if not isinstance(explanation, dict) or not isinstance(markdown, str):
            raise TypeError("explain_alert must return (explanation dict, markdown str[, evidence dict])")
        if self.annotator is not None:
            labels = item.alert.get("labels") or {}
            self.annotator.enqueue_payload(
                annotation_key(item),
                text=markdown,
                time=_time(item.starts_at) or _now(),
                tags=["aiops", "alert", f"alertname:{labels.get('alertname', '')}"],
                data={"fingerprint": item.fingerprint, "ongoing": True},
            )
        done = self.inbox.complete(
            item,
            self.name,
            {
                "explanation": explanation,
                "markdown": markdown,
                "evidence": evidence,
                "backend": explanation.get("backend"),
                "guard_note": explanation.get("guard_note"),
            },
        )
        if done is not False and self.forward is not None:
            try:
                self.forward(markdown, item.alert)
            except Exception as exc:  # noqa: BLE001 - forwarding is best effort
                logger.warning("forwarding the explanation of %s failed: %s", item.subject_ref, exc)


class WorkerPool:
    """Worker threads polling the inbox; :meth:`notify` wakes them when alerts arrive.

    Args:
        make_worker: builds one :class:`InboxWorker` per thread.
        threads: how many threads.
        poll: seconds between polls when idle.
        tick: optional callable run by the first thread every ``tick_every`` seconds
            (e.g. ``Annotator.flush``).
    """

    def __init__(
        self,
        make_worker: Callable[[], InboxWorker],
        *,
        threads: int = 2,
        poll: float = 1.0,
        tick: Callable[[], Any] | None = None,
        tick_every: float = 10.0,
    ):
        self.workers = [make_worker() for _ in range(threads)]
        self.poll = poll
        self.tick = tick
        self.tick_every = tick_every
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "WorkerPool":
        for i, w in enumerate(self.workers):
            t = threading.Thread(target=self._loop, args=(w, i == 0), name=f"aiops-inbox-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the rows in hand are finished (unfinished claims expire and are re-claimed)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)

    def _loop(self, worker: InboxWorker, ticks: bool) -> None:
        import time

        last_tick = 0.0
        while not self._stop.is_set():
            try:
                busy = worker.run_once()
            except AiopsError as exc:  # the store is down: wait and retry
                logger.warning("inbox worker %s: %s", worker.name, exc)
                busy = False
            if ticks and self.tick is not None and time.monotonic() - last_tick >= self.tick_every:
                last_tick = time.monotonic()
                try:
                    self.tick()
                except Exception as exc:  # noqa: BLE001
                    logger.warning("inbox tick failed: %s", exc)
            if not busy:
                self._wake.wait(self.poll)
                self._wake.clear()


# --------------------------------------------------------------------------- default wiring


def alert_evidence(alert: dict[str, Any]) -> Evidence:
    """Minimal evidence from the alert itself: its name, state, times and labels.

    Labels and annotations are untrusted text (they may carry prompt injections) and go
    into ``Evidence.untrusted`` verbatim, never into the trusted items.
    """
    labels = {str(k): str(v) for k, v in (alert.get("labels") or {}).items()}
    annotations = {str(k): str(v) for k, v in (alert.get("annotations") or {}).items()}
    name = labels.get("alertname", "alert")
    items = [
        EvidenceItem(
            kind="alert",
            text=f"Alertmanager reports {name} {alert.get('status', 'firing')} since {alert.get('startsAt')}",
            source=_generator_query(alert.get("generatorURL")),
            priority=10,
            data={"fingerprint": alert.get("fingerprint")},
        )
    ]
    untrusted = {f"label.{k}": v for k, v in labels.items()}
    untrusted.update({f"annotation.{k}": v for k, v in annotations.items()})
    return Evidence(subject=name, items=items, untrusted=untrusted)


def _generator_query(url: Any) -> str | None:
    """The PromQL expression in a Prometheus ``generatorURL`` (``g0.expr``), if any."""
    from urllib.parse import parse_qs, urlsplit

    if not isinstance(url, str) or not url:
        return None
    expr = parse_qs(urlsplit(url).query).get("g0.expr")
    return expr[0] if expr else None


def make_explain_alert(config: AiopsConfig, store: Store | None = None) -> ExplainAlert:
    """The default ``explain_alert``: evidence for the alert, then the configured explainer.

    Evidence comes from :func:`aiops.explain.evidence.evidence_for_alert` (from the alert
    alone: no series are fetched around it yet), else from :func:`alert_evidence`.
    """
    from aiops.explain.explainer import Explainer, evidence_to_dict, render_markdown

    build: Callable[[dict], Evidence] = alert_evidence
    try:
        from aiops.explain.evidence import evidence_for_alert
    except ImportError:
        evidence_for_alert = None
    if evidence_for_alert is not None:
        kw: dict[str, Any] = {}
        if "max_candidates" in inspect.signature(evidence_for_alert).parameters:
            kw["max_candidates"] = config.explain.max_candidates
        build = lambda alert: evidence_for_alert(alert, **kw)  # noqa: E731
    explainer = Explainer(config.explain)

    def explain_alert(alert: dict[str, Any]) -> ExplainResult:
        evidence = build(alert)
        expl = explainer.explain(evidence)
        return expl.to_dict(), render_markdown(expl), evidence_to_dict(evidence)

    return explain_alert


def make_forward(url: str, *, timeout: float = 10.0) -> Callable[[str, dict], None]:
    """POST ``{"text": markdown}`` (Slack-compatible) to ``url``; errors raise AiopsError."""
    import requests

    def forward(text: str, alert: dict) -> None:
        try:
            r = requests.post(url, json={"text": text}, timeout=timeout)
        except requests.RequestException as exc:
            raise AiopsError(f"forward webhook unreachable: {type(exc).__name__}",
                             hint="check service.forward_url") from None
        if r.status_code >= 300:
            raise AiopsError(f"forward webhook answered HTTP {r.status_code}", hint="check service.forward_url")

    return forward


def _time(text: Any) -> datetime | None:
    if not text or str(text).startswith("0001-"):  # Go's zero time: unset
        return None
    try:
        return parse_time(str(text)).to_pydatetime(warn=False)
    except (ValueError, AiopsError):
        return None


def _now() -> datetime:
    from aiops.store import utcnow

    return utcnow()
