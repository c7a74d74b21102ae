"""A self-contained HTML report (plotly) of one pipeline run.

Per watch: observed series with the forecast band and anomaly score, events shaded with their
explanation on hover and listed beside, the capacity forecast with the threshold crossing
marked; per incident, the root-cause ranking.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from aiops.pipeline import WatchResult

logger = logging.getLogger(__name__)

MAX_SERIES_PER_WATCH = 6
MAX_EVENTS_DRAWN = 25
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _short(sid: str, width: int = 60) -> str:
    return sid if len(sid) <= width else sid[: width - 1] + "…"


def _pick_series(result: "WatchResult") -> list[str]:
    """The series worth drawing: those with events first, then the highest scores."""
    ids = result.batch.series_ids if result.batch is not None else []
    if result.scores is not None and not result.scores.empty:
        peak = result.scores.groupby("series_id")["anomaly_score"].max().sort_values(ascending=False)
        with_events = [e.series_id for e in sorted(result.events, key=lambda e: -e.peak_score)]
        ordered = list(dict.fromkeys(with_events + list(peak.index)))
        return ordered[:MAX_SERIES_PER_WATCH]
    return ids[:MAX_SERIES_PER_WATCH]


def watch_figure(result: "WatchResult", *, threshold: float | None = None) -> Any:
    """Observed + forecast band (top) and anomaly score (bottom) for one watch."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
    frame = result.batch.frame if result.batch is not None else pd.DataFrame(columns=["series_id", "ts", "value"])
    for i, sid in enumerate(_pick_series(result)):
        color = _COLORS[i % len(_COLORS)]
        obs = frame[frame["series_id"] == sid]
        fig.add_trace(go.Scatter(x=obs["ts"], y=obs["value"], name=_short(sid, 40), line=dict(color=color, width=1.2), legendgroup=sid), 1, 1)
        if result.forecast is not None and not result.forecast.empty:
            fc = result.forecast[result.forecast["series_id"] == sid]
            if not fc.empty:
                fig.add_trace(go.Scatter(x=fc["ts"], y=fc["yhat_upper"], line=dict(width=0), showlegend=False, hoverinfo="skip", legendgroup=sid), 1, 1)
                fig.add_trace(
                    go.Scatter(
                        x=fc["ts"], y=fc["yhat_lower"], fill="tonexty", line=dict(width=0), fillcolor="rgba(120,120,120,0.25)",
                        name="forecast band", showlegend=i == 0, legendgroup=sid, hoverinfo="skip",
                    ),
                    1, 1,
                )
                fig.add_trace(go.Scatter(x=fc["ts"], y=fc["yhat"], line=dict(color=color, dash="dot", width=1), name="forecast", showlegend=False, legendgroup=sid), 1, 1)
        if result.scores is not None and not result.scores.empty:
            sc = result.scores[result.scores["series_id"] == sid]
            fig.add_trace(go.Scatter(x=sc["ts"], y=sc["anomaly_score"], line=dict(color=color, width=1), showlegend=False, legendgroup=sid, name="score"), 2, 1)
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="red", dash="dash", width=1), row=2, col=1)
    shown = sorted(result.events, key=lambda e: -e.peak_score)[:MAX_EVENTS_DRAWN]
    last = frame["ts"].max() if not frame.empty else None
    if last is None and result.scores is not None and not result.scores.empty:
        last = result.scores["ts"].max()  # no observed frame (the UI draws from stored outputs)
    shapes = [
        dict(type="rect", xref="x", yref="paper", x0=ev.start, x1=ev.end or last or ev.start, y0=0, y1=1,
             fillcolor="red", opacity=0.12, line_width=0)
        for ev in shown
    ]
    hovers = []
    for ev in shown:
        expl = result.explanations.get(ev.id) if ev.id is not None else None
        hover = f"<b>{html.escape(ev.direction)} on {html.escape(_short(ev.series_id))}</b><br>peak score {ev.peak_score:.1f}"
        if expl is not None:
            hover += "<br>" + html.escape(getattr(expl, "summary", str(expl)))[:300]
        hovers.append(hover)
    if shown:
        fig.add_trace(
            go.Scatter(x=[ev.peak_time for ev in shown], y=[ev.observed for ev in shown], mode="markers",
                       marker=dict(color="red", size=9, symbol="x"), name="events", hovertext=hovers, hoverinfo="text"),
            1, 1,
        )
    fig.update_layout(shapes=shapes)
    cap = result.capacity or {}
    for sid, res in cap.items():
        eta = getattr(res, "median_time", None) or getattr(res, "crossing_median", None)
        if eta is not None:
            fig.add_vline(x=pd.Timestamp(eta), line=dict(color="purple", dash="dot"), row=1, col=1)
    fig.update_layout(height=520, margin=dict(l=40, r=20, t=30, b=30), legend=dict(orientation="h", y=-0.12), hovermode="closest")
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_yaxes(title_text="anomaly score", row=2, col=1)
    return fig


def ranking_figure(ranking: list[dict], title: str) -> Any:
    import plotly.graph_objects as go

    top = ranking[:8][::-1]
    fig = go.Figure(go.Bar(x=[r["score"] for r in top], y=[_short(str(r["name"]), 50) for r in top], orientation="h"))
    fig.update_layout(title=title, height=320, margin=dict(l=40, r=20, t=40, b=30))
    return fig


def write_report(
    path: str | Path,
    results: list["WatchResult"],
    *,
    title: str = "aiops report",
    thresholds: dict[str, float] | None = None,
    rankings: dict[str, list[dict]] | None = None,
) -> Path:
    """Write one self-contained HTML file (plotly inlined) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}"
        ".ev{border-left:4px solid #d62728;padding:4px 10px;margin:6px 0;background:#fafafa}"
        "h2{border-bottom:1px solid #ddd}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    first = True
    for r in results:
        parts.append(f"<h2>{html.escape(r.watch)}</h2>")
        if r.error:
            parts.append(f"<p><b>failed:</b> {html.escape(r.error)}</p>")
            continue
        fig = watch_figure(r, threshold=(thresholds or {}).get(r.watch))
        parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
        first = False
        for ev in sorted(r.events, key=lambda e: -e.peak_score)[:10]:
            expl = r.explanations.get(ev.id) if ev.id is not None else None
            text = html.escape(expl.summary) if expl is not None else ""
            parts.append(
                f"<div class='ev'><b>{ev.severity}</b> {html.escape(ev.direction)} on <code>{html.escape(ev.series_id)}</code> "
                f"from {ev.start:%Y-%m-%d %H:%M} (peak score {ev.peak_score:.1f}, observed {ev.observed:.4g} vs expected {ev.expected:.4g})"
                f"<br>{text}</div>"
            )
        for sid, res in (r.capacity or {}).items():
            parts.append(f"<p>capacity: <code>{html.escape(sid)}</code>: {html.escape(str(res))}</p>")
    for name, ranking in (rankings or {}).items():
        if ranking:
            parts.append(f"<h2>Root cause: {html.escape(name)}</h2>")
            parts.append(ranking_figure(ranking, name).to_html(full_html=False, include_plotlyjs=first))
            first = False
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
