"""Evidence: the facts an explanation may state, computed before any LLM sees them.

Two entry points, one output (:class:`aiops.types.Evidence`):

* :func:`evidence_for_event` — an :class:`AnomalyEvent` plus the scored frame of its watch
  (``series_id, ts, value, anomaly_score, yhat, yhat_lower, yhat_upper``).
* :func:`evidence_for_alert` — an Alertmanager alert (``labels``, ``annotations``,
  ``startsAt``, ``generatorURL``), optionally with series fetched around it.

Every item is an :class:`EvidenceItem` with a number, a unit, the query it came from and a
priority (lower = more important): the deviation from the band (in band widths and percent),
onset, duration and direction; co-anomalous series in the same scope ranked as root-cause
candidates (:mod:`aiops.explain.rca`); changes (counter resets, ``up == 0``); capacity
consequences; matching runbook passages. Alert labels and annotations are *untrusted* text:
they are copied verbatim into ``Evidence.untrusted`` and never into item texts.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from aiops.errors import ExplainError, InputError
from aiops.explain.rca import RcaParams, ServiceGraph, rank_root_causes, robust_baseline
from aiops.timeutil import format_duration, parse_time
from aiops.types import AnomalyEvent, Evidence, EvidenceItem, parse_series_id

logger = logging.getLogger(__name__)

KbSearch = Callable[[str, int], list[dict]]
"""``kb_search(text, k)`` -> passages ``{"text", "source", "score"}``, best first."""

DEFAULT_SCOPE_LABELS = ("namespace", "service", "job", "instance")
# Detector events and alerts start after their cause (propagation, ``for:`` clauses), and the
# watch's history is contiguous, so causes are searched from this many steps before the start.
EVENT_LOOKBACK_STEPS = 6

# Priorities: lower = more important; trimming drops the highest numbers first.
P_ALERT, P_DEVIATION, P_TIMING, P_CHANGE, P_CAUSE, P_CAPACITY, P_CO, P_RUNBOOK = 5, 10, 12, 15, 20, 30, 35, 40


def _unit(name: str) -> str | None:
    """A unit guessed from Prometheus naming conventions (``_seconds``, ``_bytes``...)."""
    n = name.lower()
    for suffix, unit in (("_seconds", "s"), ("_bytes", "bytes"), ("_ratio", "ratio"), ("_percent", "%"),
                         ("_celsius", "°C"), ("_total", "count"), ("_count", "count"), ("_per_second", "1/s")):
        if suffix in n:
            return unit
    if n in ("availability",):
        return "%"
    if n in ("latency",):
        return "s"
    return None


def _name(sid: str, labels: Mapping[str, Mapping[str, str]] | None = None) -> str:
    lab = (labels or {}).get(sid)
    if lab is None:
        try:
            lab = parse_series_id(sid)
        except ValueError:
            return sid
    return lab.get("__name__", sid)


def _labels_of(sid: str, labels: Mapping[str, Mapping[str, str]] | None) -> Mapping[str, str]:
    if labels and sid in labels:
        return labels[sid]
    try:
        return parse_series_id(sid)
    except ValueError:
        return {"__name__": sid}


def _ts(x: Any) -> pd.Timestamp:
    t = pd.Timestamp(x)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _g(x: float) -> str:
    return f"{x:.4g}"


# --------------------------------------------------------------------------- items


def deviation_items(
    subject: str, observed: float, expected: float, lower: float | None, upper: float | None, *,
    at: pd.Timestamp, source: str | None,
) -> list[EvidenceItem]:
    """Observed vs expected, the band, and the deviation in band widths and percent."""
    unit = _unit(_name(subject))
    u = f" {unit}" if unit else ""
    items = []
    band = ""
    widths = None
    if lower is not None and upper is not None and np.isfinite(lower) and np.isfinite(upper):
        band = f" (expected band {_g(lower)}..{_g(upper)}{u})"
        width = upper - lower
        if width > 0:
            widths = (observed - expected) / width
    pct = (observed - expected) / abs(expected) * 100 if expected not in (0, None) and np.isfinite(expected) else None
    items.append(EvidenceItem(
        "deviation",
        f"{subject} was {_g(observed)}{u} at {at.isoformat()}, expected {_g(expected)}{u}{band}",
        value=float(observed), unit=unit, source=source, priority=P_DEVIATION,
        data={"observed": float(observed), "expected": float(expected), "lower": lower, "upper": upper,
              "band_widths": widths, "percent": pct, "at": at.isoformat()},
    ))
    if widths is not None:
        items.append(EvidenceItem(
            "deviation_size", f"the deviation is {abs(widths):.1f} band widths "
            f"{'above' if widths >= 0 else 'below'} the expected value"
            + (f" ({pct:+.0f}%)" if pct is not None else ""),
            value=float(widths), unit="band widths", source=source, priority=P_DEVIATION + 1,
            data={"percent": pct},
        ))
    elif pct is not None:
        items.append(EvidenceItem(
            "deviation_size", f"the value is {pct:+.0f}% from the expected value",
            value=float(pct), unit="%", source=source, priority=P_DEVIATION + 1,
        ))
    return items


def timing_items(start: pd.Timestamp, end: pd.Timestamp | None, now: pd.Timestamp, direction: str,
                 *, source: str | None) -> list[EvidenceItem]:
    """Onset, duration (ongoing or ended) and direction."""
    dur = ((end or now) - start)
    secs = max(dur.total_seconds(), 0.0)
    state = "ongoing for" if end is None else "lasted"
    return [EvidenceItem(
        "timing", f"started {start.isoformat()}, {state} {format_duration(pd.Timedelta(seconds=secs)) if secs else '0s'}; "
        f"direction: {direction}",
        value=secs, unit="s", source=source, priority=P_TIMING,
        data={"onset": start.isoformat(), "end": end.isoformat() if end is not None else None,
              "direction": direction, "ongoing": end is None},
    )]


def change_items(frame: pd.DataFrame, labels: Mapping[str, Mapping[str, str]] | None,
                 since: pd.Timestamp, until: pd.Timestamp, *, source: str | None = None) -> list[EvidenceItem]:
    """Restarts and outages near the incident: counter resets (``*_total`` going down) and ``up == 0``."""
    items: list[EvidenceItem] = []
    if frame is None or frame.empty:
        return items
    names = {sid: _name(sid, labels) for sid in frame["series_id"].unique()}
    keep = [sid for sid, n in names.items() if n == "up" or n.endswith(("_total", "_count"))]
    if not keep:
        return items
    win = frame[frame["series_id"].isin(keep) & (frame["ts"] >= since) & (frame["ts"] <= until)]
    for sid, g in win.groupby("series_id", sort=True):
        name = names[sid]
        v = g["value"].to_numpy(dtype=float)
        ts = g["ts"].to_numpy()
        if name == "up":
            down = np.flatnonzero(v == 0)
            if len(down):
                items.append(EvidenceItem(
                    "change", f"{sid} was 0 (target down) at {pd.Timestamp(ts[down[0]]).isoformat()}"
                    f" for {len(down)} sample{'s' if len(down) != 1 else ''}",
                    value=float(len(down)), unit="samples", source=source or sid, priority=P_CHANGE,
                    data={"series": sid, "first": pd.Timestamp(ts[down[0]]).isoformat(), "kind": "down"},
                ))
        elif name.endswith("_total") or name.endswith("_count"):
            ok = ~np.isnan(v)
            vv, tt = v[ok], ts[ok]
            drops = np.flatnonzero(np.diff(vv) < 0)
            if len(drops):
                at = pd.Timestamp(tt[drops[0] + 1])
                items.append(EvidenceItem(
                    "change", f"counter {sid} reset at {at.isoformat()} (a restart)",
                    value=float(len(drops)), unit="resets", source=source or sid, priority=P_CHANGE,
                    data={"series": sid, "at": at.isoformat(), "kind": "counter_reset"},
                ))
    return items


def capacity_items(capacity: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[EvidenceItem]:
    """Time-to-threshold facts. Each mapping: ``series``, ``threshold``, ``seconds`` (to the
    crossing, None = not within the horizon), optional ``eta`` and ``source``."""
    if not capacity:
        return []
    rows = [capacity] if isinstance(capacity, Mapping) else list(capacity)
    items = []
    for c in rows:
        secs = c.get("seconds")
        sid = c.get("series", "the series")
        if secs is None:
            text = f"{sid} is not forecast to reach {c.get('threshold')} within the horizon"
        else:
            text = f"{sid} is forecast to reach {c.get('threshold')} in {format_duration(pd.Timedelta(seconds=float(secs)))}"
            if c.get("eta"):
                text += f" (around {_ts(c['eta']).isoformat()})"
        items.append(EvidenceItem("capacity", text, value=None if secs is None else float(secs), unit="s",
                                  source=c.get("source"), priority=P_CAPACITY, data=dict(c)))
    return items


def runbook_items(kb_search: KbSearch | None, query: str, k: int = 3) -> list[EvidenceItem]:
    """Runbook passages matching ``query``; a failing search is logged and skipped."""
    if kb_search is None:
        return []
    try:
        hits = kb_search(query, k) or []
    except Exception as exc:  # the KB is optional: evidence must not fail because of it
        logger.warning("runbook search failed: %s", exc)
        return []
    items = []
    for i, h in enumerate(hits[:k]):
        text = str(h.get("text", "")).strip()
        if not text:
            continue
        items.append(EvidenceItem("runbook", text, value=float(h.get("score", 0.0)), unit="score",
                                  source=str(h.get("source", "")) or None, priority=P_RUNBOOK + i,
                                  data={"source": h.get("source"), "score": h.get("score")}))
    return items


def candidate_items(
    frame: pd.DataFrame, target: str, at: pd.Timestamp, *, labels=None, graph: ServiceGraph | None = None,
    group_by: str | None = None, limit: int = 5, source: str | None = None,
) -> list[EvidenceItem]:
    """Root-cause candidates among the series of ``frame`` (:func:`rank_root_causes`)."""
    if frame is None or frame["series_id"].nunique() < 2:
        return []
    try:
        ranking = rank_root_causes(frame[["series_id", "ts", "value"]], target, at, labels=labels,
                                   graph=graph, group_by=group_by,
                                   params=RcaParams(lookback_steps=EVENT_LOOKBACK_STEPS), limit=limit + 1)
    except InputError as exc:
        logger.info("no root-cause ranking: %s", exc)
        return []
    items = []
    for i, c in enumerate(ranking[:limit]):
        # The subject itself stays in the ranking: when it moved first, it is where the problem starts.
        itself = " (the anomalous series itself: it moved first)" if c.series == target and i == 0 else ""
        items.append(EvidenceItem(
            "cause_candidate",
            f"candidate cause #{i + 1}: {c.name}{itself} (score {c.score:.2f}; "
            + (f"onset {c.onset.isoformat()}" if c.onset is not None else "no clear onset") + ")",
            value=round(float(c.score), 4), unit="score", source=source or c.series, priority=P_CAUSE + i,
            data={"name": c.name, "series": c.series, "onset": c.onset.isoformat() if c.onset is not None else None,
                  "deviation": c.deviation, "observed": c.observed, "expected": c.expected, "why": c.evidence},
        ))
    return items


def co_anomaly_items(scored: pd.DataFrame, subject: str, start: pd.Timestamp, end: pd.Timestamp, *,
                     threshold: float = 1.0, limit: int = 5, source: str | None = None) -> list[EvidenceItem]:
    """Other series whose own model scored them anomalous during the event, strongest first."""
    if scored is None or "anomaly_score" not in scored.columns:
        return []
    w = scored[(scored["ts"] >= start) & (scored["ts"] <= end) & (scored["series_id"] != subject)]
    if w.empty:
        return []
    peak = w.groupby("series_id")["anomaly_score"].max().dropna()
    peak = peak[peak >= threshold].sort_values(ascending=False).head(limit)
    return [EvidenceItem("co_anomaly", f"{sid} was also anomalous (peak score {s:.1f})", value=float(s),
                         unit="score", source=source or sid, priority=P_CO + i, data={"series": sid})
            for i, (sid, s) in enumerate(peak.items())]


def in_scope(sids: Iterable[str], subject_labels: Mapping[str, str], scope_labels: Sequence[str],
             labels: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Series sharing at least one scope label value (e.g. the same instance) with the subject."""
    keys = [(k, subject_labels[k]) for k in scope_labels if k in subject_labels]
    out = []
    for sid in sids:
        lab = _labels_of(sid, labels)
        if any(lab.get(k) == v for k, v in keys):
            out.append(sid)
    return out


# --------------------------------------------------------------------------- events


def evidence_for_event(
    event: AnomalyEvent,
    scored: pd.DataFrame,
    *,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    query: str | None = None,
    scope_labels: Sequence[str] = DEFAULT_SCOPE_LABELS,
    related: pd.DataFrame | None = None,
    graph: ServiceGraph | None = None,
    group_by: str | None = None,
    capacity: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    kb_search: KbSearch | None = None,
    max_candidates: int = 5,
    now: pd.Timestamp | None = None,
) -> Evidence:
    """Evidence for an anomaly event from its watch's scored frame.

    Args:
        event: the event to explain.
        scored: the watch's scored frame (``aiops.types.SCORE_COLUMNS``).
        labels: series id -> labels (parsed from the ids when missing).
        query: the watch's PromQL, used as the items' source.
        scope_labels: labels that put series in the event's scope (``WatchConfig.scope_labels``).
        related: a long frame of the watch's related queries (all are candidates).
        graph: service call graph for the ranking; group_by: rank label values (e.g. service).
        capacity: time-to-threshold facts (see :func:`capacity_items`).
        kb_search: runbook search, ``kb_search(text, k)``.

    Raises:
        ExplainError: the scored frame lacks columns or has no rows for the event's series.
    """
    missing = {"series_id", "ts", "value"} - set(scored.columns)
    if missing:
        raise ExplainError(f"scored frame lacks columns {sorted(missing)}",
                           hint="pass the frame the watch's model scored (series_id, ts, value, anomaly_score, yhat...)")
    own = scored[scored["series_id"] == event.series_id]
    if own.empty:
        raise ExplainError(f"the scored frame has no rows for {event.series_id!r}")
    return _evidence_for_event(event, scored, own, labels, query, scope_labels, related, graph, group_by,
                               capacity, kb_search, max_candidates, now)


def _evidence_for_event(event, scored, own, labels, query, scope_labels, related, graph, group_by,
                        capacity, kb_search, max_candidates, now) -> Evidence:
    start, end, peak = _ts(event.start), (_ts(event.end) if event.end is not None else None), _ts(event.peak_time)
    last = _ts(own["ts"].max())
    now = _ts(now) if now is not None else last
    src = query or event.series_id
    items = deviation_items(event.series_id, event.observed, event.expected, event.expected_lower,
                            event.expected_upper, at=peak, source=src)
    items[0].data["peak_score"] = event.peak_score
    items[0].data["severity"] = event.severity
    items += timing_items(start, end, now, event.direction, source=src)

    subject_labels = event.labels or _labels_of(event.series_id, labels)
    scope = in_scope(scored["series_id"].unique(), subject_labels, scope_labels, labels)
    frames = [scored.loc[scored["series_id"].isin(set(scope) | {event.series_id}), ["series_id", "ts", "value"]]]
    if related is not None and not related.empty:
        frames.append(related[["series_id", "ts", "value"]])
    cand_frame = pd.concat(frames, ignore_index=True).drop_duplicates(["series_id", "ts"], keep="first")
    items += candidate_items(cand_frame, event.series_id, start, labels=labels, graph=graph, group_by=group_by,
                             limit=max_candidates)
    items += co_anomaly_items(scored[scored["series_id"].isin(scope)], event.series_id, start, end or now,
                              limit=max_candidates, source=query)
    items += change_items(cand_frame, labels, start - pd.Timedelta(hours=1), end or now)
    items += capacity_items(capacity)
    items += runbook_items(kb_search, _search_text(event.series_id, subject_labels, event.direction))
    items.sort(key=lambda it: it.priority)
    return Evidence(subject=event.series_id, items=items, untrusted={})


def _search_text(subject: str, labels: Mapping[str, str], direction: str) -> str:
    words = [labels.get("__name__", ""), direction] + [v for k, v in labels.items() if k != "__name__"]
    return " ".join(w for w in words if w)[:500] or subject


# --------------------------------------------------------------------------- alerts

_SAFE_RE = re.compile(r"[^A-Za-z0-9_:.\-]")


def promql_from_generator_url(url: str | None) -> str | None:
    """The expression in a Prometheus ``generatorURL`` (its ``g0.expr`` parameter), if any."""
    if not url:
        return None
    try:
        q = parse_qs(urlparse(url).query)
    except ValueError:
        return None
    expr = q.get("g0.expr")
    return expr[0] if expr else None


def evidence_for_alert(
    alert: Mapping[str, Any],
    *,
    frame: pd.DataFrame | None = None,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    scope_labels: Sequence[str] = DEFAULT_SCOPE_LABELS,
    graph: ServiceGraph | None = None,
    group_by: str | None = None,
    capacity: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    kb_search: KbSearch | None = None,
    max_candidates: int = 5,
    now: pd.Timestamp | None = None,
) -> Evidence:
    """Evidence for one Alertmanager alert.

    Labels and annotations go verbatim into ``Evidence.untrusted`` (keys ``label.<name>`` and
    ``annotation.<name>``); item texts are built only from numbers, times and series ids.

    Args:
        alert: one alert of an Alertmanager webhook payload.
        frame: optional long frame fetched around the alert (the alert's expression and related
            queries); the series whose labels match the alert's is the subject.

    Raises:
        InputError: the alert has no labels mapping or an unparsable ``startsAt``.
    """
    lab = alert.get("labels")
    if not isinstance(lab, Mapping):
        raise InputError("alert has no labels object", hint="pass one alert of the webhook's alerts list")
    try:
        starts = parse_time(alert["startsAt"]) if alert.get("startsAt") else None
    except InputError as exc:
        raise InputError(f"alert startsAt: {exc.message}", hint=exc.hint) from None
    return _evidence_for_alert(alert, lab, starts, frame, labels, scope_labels, graph, group_by, capacity,
                               kb_search, max_candidates, now)


def _evidence_for_alert(alert, lab, starts, frame, labels, scope_labels, graph, group_by, capacity,
                        kb_search, max_candidates, now) -> Evidence:
    untrusted = {f"label.{k}": str(v) for k, v in lab.items()}
    for k, v in (alert.get("annotations") or {}).items():
        untrusted[f"annotation.{k}"] = str(v)
    expr = promql_from_generator_url(alert.get("generatorURL"))
    if expr:
        untrusted["generator.expr"] = expr
    name = _SAFE_RE.sub("_", str(lab.get("alertname", "alert")))[:100] or "alert"
    status = _SAFE_RE.sub("_", str(alert.get("status", "firing")))[:20]
    items: list[EvidenceItem] = []
    now_ts = _ts(now) if now is not None else pd.Timestamp.now(tz="UTC")
    ends = alert.get("endsAt")
    end_ts = None
    if status == "resolved" and ends:
        try:
            end_ts = parse_time(ends)
        except InputError:
            end_ts = None
    if starts is not None:
        items.append(EvidenceItem(
            "alert", f"alert {name} is {status} since {starts.isoformat()}",
            value=max((((end_ts or now_ts) - starts).total_seconds()), 0.0), unit="s",
            source=expr, priority=P_ALERT, data={"alertname": name, "status": status, "startsAt": starts.isoformat()},
        ))
    subject = name
    if frame is not None and not frame.empty and starts is not None:
        items += _alert_series_items(frame, lab, starts, end_ts, now_ts, expr, labels, scope_labels, graph,
                                     group_by, max_candidates)
    items += capacity_items(capacity)
    items += runbook_items(kb_search, " ".join([name] + [str(v) for k, v in lab.items()
                                                           if k in ("service", "job", "severity", "namespace")]))
    items.sort(key=lambda it: it.priority)
    return Evidence(subject=subject, items=items, untrusted=untrusted)


def _alert_series_items(frame, lab, starts, end_ts, now_ts, expr, labels, scope_labels, graph, group_by,
                        max_candidates) -> list[EvidenceItem]:
    """Deviation, timing, candidates and changes from series fetched around an alert."""
    sids = list(frame["series_id"].unique())
    want = {k: str(v) for k, v in lab.items() if k not in ("alertname", "severity")}

    def overlap(sid: str) -> int:
        sl = _labels_of(sid, labels)
        return sum(1 for k, v in want.items() if sl.get(k) == v) - sum(1 for k, v in want.items() if k in sl and sl[k] != v)

    subject = max(sids, key=lambda s: (overlap(s), s == sids[0]))
    own = frame[frame["series_id"] == subject].sort_values("ts")
    hist = own[own["ts"] < starts]["value"].to_numpy(dtype=float)
    items: list[EvidenceItem] = []
    after = own[own["ts"] >= starts].dropna(subset=["value"])
    if len(hist) >= 3 and not after.empty:
        med, scale, _ = robust_baseline(hist[:, None])
        med, scale = float(med[0]), float(scale[0])
        k = int(np.argmax(np.abs(after["value"].to_numpy() - med)))
        obs, at = float(after["value"].iloc[k]), _ts(after["ts"].iloc[k])
        # An 80% band of the robust baseline (+-1.28 scales), the same level as watch bands.
        items += deviation_items(subject, obs, med, med - 1.2816 * scale, med + 1.2816 * scale, at=at, source=expr)
        direction = "spike" if obs >= med else "drop"
        items += timing_items(starts, end_ts, now_ts, direction, source=expr)
    scope = set(in_scope(sids, _labels_of(subject, labels), scope_labels, labels)) | {subject}
    if graph is not None or group_by:
        scope = set(sids)
    cand = frame[frame["series_id"].isin(scope)]
    items += candidate_items(cand, subject, starts, labels=labels, graph=graph, group_by=group_by,
                             limit=max_candidates, source=None)
    items += change_items(cand, labels, starts - pd.Timedelta(hours=1), end_ts or now_ts)
    return items
