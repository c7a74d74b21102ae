"""Root-cause ranking: which series, or which services, most likely caused an anomaly.

Everything is computed from the data itself:

1. **Baseline.** Each series gets a robust baseline from the history before the incident
   (median and a MAD-based scale with floors, so flat series do not give infinite scores).
2. **Causal onset.** In the incident window (from ``at - lookback`` on) a row counts only when
   it is away from the baseline *and* a change from the last row before the window, in the
   same direction; the onset is the first such row (it uses that row and earlier ones only).
   A series that was already off before the window is a standing condition, not a cause.
3. **Alignment.** A cause moves with its effect: a candidate's deviation over the window is
   correlated with the target's, and an onset after the target's is discounted.
4. **Propagation.** With a call graph (``caller -> callee``), a problem travels upstream from a
   callee to its callers. So a candidate counts fully when it is reachable from the target
   through anomalous services, and it is *explained away* when one of its own callees is at
   least as anomalous (the cause is further down).

Candidates are series, or label values with ``group_by`` (e.g. services): a group scores as
its strongest series, weighting series of the target's metric above other metrics.
"""

from __future__ import annotations

import difflib
import heapq
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from aiops.errors import InputError
from aiops.types import parse_series_id, series_id

logger = logging.getLogger(__name__)

# Label pairs that name both ends of a call (service meshes, tracing-derived metrics).
EDGE_LABEL_PAIRS = (
    ("source_workload", "destination_workload"),
    ("source_service", "destination_service"),
    ("client", "server"),
    ("caller", "callee"),
    ("source", "destination"),
)


@dataclass
class RcaParams:
    """Knobs of the ranking; the defaults suit 1-5 minute steps.

    Attributes:
        lookback_steps: the incident window starts this many steps before ``at``.
        min_history: fewest baseline points a series needs to be scored.
        onset_z: deviation (in baseline scales) at which a row counts as anomalous.
        other_metric_weight: weight of series whose metric differs from the target's.
        unreachable_weight: weight of graph nodes the target cannot reach by calls.
        explain_away: how much an anomalous callee lowers its caller (0..1).
        late_discount: factor per step by which an onset after the target's is discounted.
        early_bonus: factor per step (up to 3) for an onset before the target's.
        saturation: deviation (in scales) at which strength reaches 63% of its maximum.
        coverage_power: how strongly support from anomalous callers counts.
        max_history_steps: the baseline uses at most this many steps before the window.
    """

    lookback_steps: int = 1
    min_history: int = 8
    onset_z: float = 3.0
    other_metric_weight: float = 0.5
    unreachable_weight: float = 0.2
    explain_away: float = 0.7
    late_discount: float = 0.85
    early_bonus: float = 1.05
    saturation: float = 5.0
    coverage_power: float = 0.5
    max_history_steps: int = 4032


@dataclass
class Candidate:
    """One ranked root-cause candidate."""

    name: str
    score: float
    onset: pd.Timestamp | None
    evidence: list[str] = field(default_factory=list)
    series: str | None = None  # the series that carried the score
    deviation: float = 0.0  # signed, in baseline scales, at the peak
    observed: float | None = None
    expected: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": round(float(self.score), 6),
            "onset": self.onset.isoformat() if self.onset is not None else None,
            "evidence": list(self.evidence),
        }


class ServiceGraph:
    """Who calls whom. An edge ``caller -> callee``; problems propagate from callee to caller."""

    def __init__(self, calls: Mapping[str, Iterable[str]]):
        self._callees: dict[str, list[str]] = {}
        for caller, callees in calls.items():
            self._callees.setdefault(str(caller), [])
            for c in callees:
                if str(c) != str(caller) and str(c) not in self._callees[str(caller)]:
                    self._callees[str(caller)].append(str(c))
                self._callees.setdefault(str(c), [])
        self._callers: dict[str, list[str]] = {n: [] for n in self._callees}
        for caller, callees in self._callees.items():
            for c in callees:
                self._callers[c].append(caller)

    @property
    def nodes(self) -> list[str]:
        return list(self._callees)

    def callees(self, node: str) -> list[str]:
        return self._callees.get(node, [])

    def callers(self, node: str) -> list[str]:
        return self._callers.get(node, [])

    def __contains__(self, node: object) -> bool:
        return node in self._callees

    def __len__(self) -> int:
        return len(self._callees)

    @classmethod
    def from_csv(cls, path: str | Path) -> "ServiceGraph":
        """Read an adjacency-matrix CSV: node names as header and index; a non-zero cell in
        row R, column C means R calls C.

        Raises:
            InputError: unreadable file, header and index naming different nodes, or cells that
                are not numbers.
        """
        p = Path(path)
        try:
            df = pd.read_csv(p, index_col=0)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"cannot read graph {p}: {exc}") from None
        return cls.from_matrix(df, source=str(p))

    @classmethod
    def from_matrix(cls, df: pd.DataFrame, *, source: str = "graph") -> "ServiceGraph":
        rows = [str(i).strip() for i in df.index]
        cols = [str(c).strip() for c in df.columns]
        if set(rows) != set(cols) or len(rows) != len(cols):
            missing = sorted(set(rows) ^ set(cols))[:5]
            raise InputError(
                f"{source}: the header and the first column must name the same nodes; "
                f"differs in {', '.join(map(repr, missing))}",
                hint="an adjacency matrix has one row and one column per node",
            )
        try:
            m = df.apply(pd.to_numeric).fillna(0).to_numpy(dtype=float)
        except (ValueError, TypeError):
            raise InputError(f"{source}: adjacency cells must be numbers (1 = calls, 0 = not)") from None
        calls = {r: [cols[j] for j in np.flatnonzero(m[i] != 0)] for i, r in enumerate(rows)}
        return cls(calls)

    @classmethod
    def infer(cls, labels: Iterable[Mapping[str, str]]) -> "ServiceGraph | None":
        """Build the graph from labels naming both ends of a call (``source_workload`` and
        ``destination_workload``, ``client``/``server``...); None when no series has them."""
        calls: dict[str, set[str]] = {}
        for lab in labels:
            for a, b in EDGE_LABEL_PAIRS:
                if lab.get(a) and lab.get(b):
                    calls.setdefault(lab[a], set()).add(lab[b])
                    break
        return cls({k: sorted(v) for k, v in calls.items()}) if calls else None

    def reachable(self, source: str) -> set[str]:
        """Nodes the source calls, directly or through others."""
        seen, stack = {source}, [source]
        while stack:
            for c in self.callees(stack.pop()):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return seen

    def widest_paths(self, source: str, weight: Mapping[str, float]) -> dict[str, float]:
        """For each node reachable from ``source``: the best path's weakest intermediate weight.

        The source and the end node do not count; a direct callee gets 1.0.
        """
        best = {source: 1.0}
        heap = [(-1.0, source)]
        while heap:
            neg, node = heapq.heappop(heap)
            width = -neg
            if width < best.get(node, -1.0):
                continue
            through = width if node == source else min(width, weight.get(node, 0.0))
            for c in self.callees(node):
                if through > best.get(c, -1.0):
                    best[c] = through
                    heapq.heappush(heap, (-through, c))
        return best


# --------------------------------------------------------------------------- scoring


@dataclass
class _Scored:
    """Per-series results of the data scoring, aligned with ``ids``."""

    ids: list[str]
    ts: pd.DatetimeIndex
    start: int  # first row of the incident window
    eff: np.ndarray  # rows x series: signed deviation that is also a change, 0 elsewhere
    z: np.ndarray  # rows x series: deviation from the baseline in scales
    median: np.ndarray
    scale: np.ndarray
    valid: np.ndarray  # series with enough history


def robust_baseline(history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and scale per column of a rows x series array (NaN = missing).

    The scale is the largest of 1.4826 * MAD, 1.2533 * mean absolute deviation (so a mostly
    flat series with rare moves still has a width) and 0.1% of the median's size.
    Returns ``(median, scale, count)``.
    """
    count = np.sum(~np.isnan(history), axis=0)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(history, axis=0)
            dev = np.abs(history - med)
            mad = 1.4826 * np.nanmedian(dev, axis=0)
            meanad = 1.2533 * np.nanmean(dev, axis=0)
    scale = np.fmax(np.fmax(mad, meanad), 1e-3 * np.abs(med))
    scale = np.where(np.isnan(scale) | (scale <= 0), 1e-9, scale)
    return med, scale, count


def score_window(wide: pd.DataFrame, at: pd.Timestamp, step: pd.Timedelta, params: RcaParams) -> _Scored:
    """Baseline, deviation and causal change per series for an incident at ``at``."""
    ts = pd.DatetimeIndex(wide.index)
    win_start = at - params.lookback_steps * step
    start = int(np.searchsorted(ts.values, win_start.to_datetime64(), side="left"))
    values = wide.to_numpy(dtype="float64")
    hist = values[max(0, start - params.max_history_steps):start]
    med, scale, count = robust_baseline(hist) if len(hist) else (
        np.full(values.shape[1], np.nan), np.ones(values.shape[1]), np.zeros(values.shape[1]))
    z = (values - med) / scale
    z = np.where(np.isnan(z), 0.0, z)
    # Reference: the last observed row before the window (a standing deviation is not new).
    ref = np.zeros(values.shape[1])
    if start > 0:
        pre = values[max(0, start - 3):start]
        for j in range(values.shape[1]):
            col = pre[:, j]
            ok = np.flatnonzero(~np.isnan(col))
            if len(ok):
                ref[j] = (col[ok[-1]] - med[j]) / scale[j] if not np.isnan(med[j]) else 0.0
    d = z - ref
    same = np.sign(d) == np.sign(z)
    eff = np.where(same, np.sign(z) * np.minimum(np.abs(z), np.abs(d)), 0.0)
    eff[:start] = 0.0
    eff = np.where(np.isnan(values), 0.0, eff)
    valid = count >= params.min_history
    eff[:, ~valid] = 0.0
    return _Scored(list(wide.columns), ts, start, eff, z, med, scale, valid)


def to_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """Long frame -> ts x series_id (the last value wins on duplicates); faster than pivot_table."""
    sid_codes, sids = pd.factorize(frame["series_id"], sort=True)
    ts_codes, tss = pd.factorize(frame["ts"], sort=True)
    values = np.full((len(tss), len(sids)), np.nan)
    values[ts_codes, sid_codes] = frame["value"].to_numpy(dtype="float64")
    return pd.DataFrame(values, index=pd.DatetimeIndex(tss, name="ts"), columns=pd.Index(sids, name="series_id"))


def _onsets(eff: np.ndarray, start: int, threshold: float) -> np.ndarray:
    """Row index of the first window row at or past the threshold per series (-1 = none)."""
    hit = np.abs(eff[start:]) >= threshold
    first = np.argmax(hit, axis=0)
    return np.where(hit.any(axis=0), first + start, -1)


def _alignment(eff: np.ndarray, start: int, target: int, max_lead: int = 3) -> np.ndarray:
    """How well each series' compressed |deviation| tracks the target's: the best correlation
    (floored at 0) with the series leading the target by 0..max_lead steps (a cause may lead)."""
    w = np.log1p(np.abs(eff[start:]))
    best = np.zeros(w.shape[1])
    for lag in range(0, max(0, min(max_lead, w.shape[0] - 4)) + 1):  # keep >= 4 points
        x = w[: w.shape[0] - lag]  # series at t - lag ...
        t = w[lag:, target]  # ... against the target at t
        x = x - x.mean(axis=0)
        t = t - t.mean()
        den = np.sqrt((x**2).sum(axis=0) * (t**2).sum())
        with np.errstate(all="ignore"):
            r = np.where(den > 0, (x * t[:, None]).sum(axis=0) / np.where(den > 0, den, 1.0), 0.0)
        best = np.maximum(best, r)
    return np.clip(best, 0.0, 1.0)


# --------------------------------------------------------------------------- ranking


def _match_target(target: str, ids: list[str], labels: Mapping[str, Mapping[str, str]]) -> str:
    if target in ids:
        return target
    try:
        want = series_id(parse_series_id(target))
    except ValueError:
        want = target
    for sid in ids:
        if series_id(labels.get(sid) or {"__name__": sid}) == want:
            return sid
    close = difflib.get_close_matches(target, ids, n=3)
    raise InputError(
        f"target series {target!r} is not in the input",
        hint=("did you mean " + ", ".join(map(repr, close))) if close else "give a series id from the input",
    )


def _node_label(target_labels: Mapping[str, str], graph: ServiceGraph) -> str | None:
    for k, v in target_labels.items():
        if k != "__name__" and v in graph:
            return k
    return None


def rank_root_causes(
    frame: pd.DataFrame,
    target: str,
    at: pd.Timestamp,
    *,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    graph: ServiceGraph | None = None,
    group_by: str | None = None,
    step: pd.Timedelta | None = None,
    params: RcaParams | None = None,
    limit: int | None = None,
) -> list[Candidate]:
    """Rank candidate causes of the anomaly on ``target`` around time ``at``, best first.

    Args:
        frame: long frame (``series_id, ts, value``) with history before the incident.
        target: the alerting series id (label order does not matter).
        at: when the target's anomaly started (alert time); the window starts a step earlier.
        labels: series id -> labels; parsed from the ids when not given.
        graph: call graph; inferred from call labels when None and the data has them.
        group_by: rank the values of this label (e.g. ``service``) instead of series.
        step: sampling step; the median spacing when None.
        limit: keep at most this many candidates.

    Raises:
        InputError: unknown target, no history before ``at``, no data in the window, a
            ``group_by`` label the target lacks, or a graph that shares no node with the data.
    """
    if frame.empty:
        raise InputError("no data to rank root causes from")
    params = params or RcaParams()
    at = pd.Timestamp(at)
    at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    wide = to_wide(frame)
    ids = [str(c) for c in wide.columns]
    if labels is None:
        labels = {}
    lab: dict[str, Mapping[str, str]] = {}
    for sid in ids:
        if sid in labels:
            lab[sid] = labels[sid]
        else:
            try:
                lab[sid] = parse_series_id(sid)
            except ValueError:
                lab[sid] = {"__name__": sid}
    target_id = _match_target(target, ids, lab)
    if step is None:
        diffs = np.diff(wide.index.values).astype("timedelta64[ns]")
        diffs = diffs[diffs > np.timedelta64(0, "ns")]
        step = pd.Timedelta(np.median(diffs)) if len(diffs) else pd.Timedelta(minutes=5)
    if at < wide.index[0] or at > wide.index[-1] + step:
        raise InputError(
            f"--at {at.isoformat()} is outside the data ({wide.index[0].isoformat()} .. {wide.index[-1].isoformat()})",
            hint="give the time the target's anomaly started",
        )
    sc = score_window(wide, at, step, params)
    if sc.start >= len(sc.ts):
        raise InputError(f"no data at or after {at.isoformat()}")
    ti = ids.index(target_id)
    if not sc.valid[ti]:
        raise InputError(
            f"target {target_id!r} has fewer than {params.min_history} points before {at.isoformat()}",
            hint="include normal history before the incident in the input",
        )
    tlab = lab[target_id]
    if group_by and group_by not in tlab:
        raise InputError(
            f"the target series has no label {group_by!r} to group by",
            hint="its labels are " + ", ".join(k for k in tlab if k != "__name__"),
        )
    if graph is None:
        graph = ServiceGraph.infer(lab.values())
        node_label = group_by if graph is not None and group_by else (_node_label(tlab, graph) if graph else None)
        if graph is not None and node_label is None:
            graph = None
    else:
        node_label = group_by or _node_label(tlab, graph)
        if node_label is None or not any(lab[s].get(node_label) in graph for s in ids):
            sample = ", ".join(repr(n) for n in graph.nodes[:3])
            raise InputError(
                "the graph's nodes do not match the data"
                + (f": no value of label {node_label!r} is a graph node" if node_label else
                   ": none of the target's label values is a graph node"),
                hint=f"graph nodes look like {sample}; pass --group-by with the label holding them",
            )
        if tlab.get(node_label) not in graph:
            raise InputError(f"the target's {node_label}={tlab.get(node_label)!r} is not a node of the graph")

    onset = _onsets(sc.eff, sc.start, params.onset_z)
    align = _alignment(sc.eff, sc.start, ti)
    align[ti] = 1.0
    peak_abs = np.abs(sc.eff[sc.start:]).max(axis=0)
    metric = [lab[s].get("__name__", "") for s in ids]
    t_metric = metric[ti]
    weight = np.array([1.0 if m == t_metric else params.other_metric_weight for m in metric])
    t_onset = onset[ti]
    timing = np.ones(len(ids))
    if t_onset >= 0:
        rel = np.where(onset >= 0, onset - t_onset, 0)
        timing = np.where(rel > 0, params.late_discount ** rel, params.early_bonus ** np.minimum(-rel, 3))
    # Strength in [0, 1): saturates, so once a series is clearly off, structure decides.
    strength = weight * (1.0 - np.exp(-peak_abs / params.saturation)) * (0.5 + 0.5 * align) * timing
    strength[onset < 0] *= 0.25  # never crossed the onset threshold: weak evidence
    strength[~sc.valid] = 0.0
    magnitude = np.log1p(peak_abs)

    # Candidates: label values (group_by), else each series on its own. With a graph, a series
    # counts after explaining away, along its path from the target and with caller support.
    node_of = (lambda j: lab[ids[j]].get(node_label)) if graph is not None else (lambda j: None)
    delta = np.array([sc.z[sc.start + int(np.argmax(np.abs(sc.eff[sc.start:, j]))), j] * sc.scale[j]
                      for j in range(len(ids))])
    kind = [tuple(sorted((k, v) for k, v in lab[s].items() if k != node_label)) for s in ids]
    structure = _graph_factors(graph, ids, node_of, kind, strength, delta, ti, params) if graph is not None else {}
    effective = strength.copy()
    for j in range(len(ids)):
        f = structure.get(node_of(j))
        if f is not None:
            effective[j] *= f["explain"].get(kind[j], 1.0) * f["path"] * f["coverage"]
        elif graph is not None:
            effective[j] *= params.unreachable_weight
    key = [lab[s].get(group_by) if group_by else s for s in ids]
    best: dict[str, int] = {}
    for j, k in enumerate(key):
        if k is not None and (k not in best or effective[j] > effective[best[k]]):
            best[k] = j

    out: list[Candidate] = []
    for k, j in best.items():
        f = structure.get(node_of(j))
        notes = f["notes"] if f is not None else []
        base = float(effective[j])
        score = base * (1.0 + 0.05 * magnitude[j])
        sid = ids[j]
        ev: list[str] = []
        pk = sc.start + int(np.argmax(np.abs(sc.eff[sc.start:, j])))
        dev = float(sc.z[pk, j])
        obs = wide.iat[pk, j]
        ev.append(
            f"{sid}: {abs(dev):.1f} baseline scales {'above' if dev >= 0 else 'below'} its median "
            f"{_fmt(sc.median[j])} (observed {_fmt(obs)} at {sc.ts[pk].isoformat()})"
        )
        if onset[j] >= 0:
            rel = int(onset[j] - t_onset) if t_onset >= 0 else None
            when = "" if rel is None or j == ti else (
                " (same step as the target)" if rel == 0 else
                f" ({abs(rel)} step{'s' if abs(rel) != 1 else ''} {'before' if rel < 0 else 'after'} the target)")
            ev.append(f"onset {sc.ts[onset[j]].isoformat()}{when}")
        else:
            ev.append(f"no new deviation of {params.onset_z:g} scales in the window")
        if j != ti:
            ev.append(f"moves with the target: correlation {align[j]:.2f}")
        ev.extend(notes)
        out.append(Candidate(
            name=str(k), score=score, onset=sc.ts[onset[j]] if onset[j] >= 0 else None,
            evidence=ev, series=sid, deviation=dev,
            observed=None if pd.isna(obs) else float(obs),
            expected=None if np.isnan(sc.median[j]) else float(sc.median[j]),
        ))
    out.sort(key=lambda c: (-c.score, c.onset or pd.Timestamp.max.tz_localize("UTC"), c.name))
    return out[:limit] if limit else out


def _graph_factors(graph, ids, node_of, kind, strength, delta, ti, params) -> dict[str, dict]:
    """Per graph node: explained-away factor per series kind, path from the target, coverage.

    * Explained away: a callee's series of the same kind (same labels but the node's, so the
      same metric and statistic, in the same units) lowers the caller's by how much of the
      caller's change it accounts for: a caller's latency includes its callee's, an error
      returned by a callee is an error of its caller. Problems propagate as the same signal.
    * Path: the best call path from the target to the node, as its weakest intermediate node.
    * Coverage: a cause shows in every caller, so anomalous callers (direct or not) add support.
    """
    per: dict[str, dict[tuple, int]] = {}
    for j in range(len(ids)):
        n = node_of(j)
        if n is not None and n in graph:
            per.setdefault(n, {})[kind[j]] = j
    prob = {n: max(float(strength[j]) for j in d.values()) for n, d in per.items()}
    t_node = node_of(ti)
    paths = graph.widest_paths(t_node, prob)
    reach = set(paths)
    callers_of: dict[str, set[str]] = {}

    def ancestors(n: str) -> set[str]:
        if n not in callers_of:
            seen, stack = set(), [n]
            while stack:
                for c in graph.callers(stack.pop()):
                    if c not in seen and c != n:
                        seen.add(c)
                        stack.append(c)
            callers_of[n] = seen
        return callers_of[n]

    cover = {n: prob[n] + sum(prob.get(a, 0.0) for a in ancestors(n)) for n in per}
    top_cover = max(cover.values()) if cover else 1.0
    out: dict[str, dict] = {}
    for n, d in per.items():
        notes: list[str] = []
        explain = {}
        for k, j in d.items():
            worst, by = 0.0, None
            for c in graph.callees(n):
                jc = per.get(c, {}).get(k)
                if jc is None or c not in reach or delta[j] == 0 or np.sign(delta[jc]) != np.sign(delta[j]):
                    continue
                share = float(strength[jc]) * min(1.0, abs(delta[jc]) / abs(delta[j]))
                if share > worst:
                    worst, by = share, (c, ids[jc])
            explain[k] = 1.0 - params.explain_away * worst
            if worst > 0.3 and strength[j] > 0.3:
                notes.append(f"its callee {by[0]} moved the same way ({by[1]}) and explains {worst:.0%} of {ids[j]}")
        if n == t_node:
            path = 1.0
        elif n in paths:
            path = max(paths[n], params.unreachable_weight)
            notes.append(f"called by the target's {t_node}" + (" directly" if n in graph.callees(t_node) else
                         f" through anomalous services (path strength {paths[n]:.2f})"))
        else:
            path = params.unreachable_weight
            notes.append(f"not called by the target's {t_node}, directly or indirectly")
        coverage = (cover[n] / top_cover) ** params.coverage_power if top_cover > 0 else 1.0
        anc = [a for a in ancestors(n) if prob.get(a, 0.0) > 0.5]
        if anc:
            notes.append(f"{len(anc)} of its callers are anomalous too: " + ", ".join(sorted(anc)[:4]))
        out[n] = {"explain": explain, "path": path, "coverage": coverage, "notes": notes}
    return out


def _fmt(x: float) -> str:
    return "nan" if x is None or pd.isna(x) else f"{x:.4g}"
