"""The web UI at /ui through Flask's test client: pages, escaping of hostile text, headers."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from aiops.config import AiopsConfig
from aiops.outputs import write_outputs
from aiops.service.app import create_app
from aiops.service.inbox import Inbox
from aiops.outputs import source_labels
from aiops.store import Store
from aiops.types import AnomalyEvent, series_id

WATCH = "checkout-latency"
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
SOURCE = {"__name__": "http_request_duration_seconds", "service": "checkout", "instance": "api-1:8080"}
SID = series_id(SOURCE)
START = datetime(2026, 11, 20, tzinfo=timezone.utc)


@dataclass
class Seeded:
    store: Store
    config: AiopsConfig
    event_id: int
    explanation_id: int
    alert_explanation_id: int
    dead_id: int


def ui_config(folder: Path, actions: list[dict] | None = None, **service) -> AiopsConfig:
    """The test watch over the observed values :func:`seed_store` wrote to ``folder``."""
    watch = {"name": WATCH, "query": "http_request_duration_seconds", "step": "5m", "history": "1d", "horizon": "2h"}
    if actions:
        watch["actions"] = actions
    return AiopsConfig.model_validate({
        "source": {"kind": "file", "file": {"path": str(folder / "observed.csv")}},
        "watches": [watch],
        "service": service,
    })


def seed_store(store: Store, folder: Path) -> Seeded:
    """A watch's output series and observed values (``folder/observed.csv``, first series only),
    an explained event, an explained alert and a dead letter.

    The event's labels, the explanation and the alert carry hostile HTML, as untrusted
    alert and LLM text can.
    """
    ts = pd.date_range(START, periods=288, freq="5min")
    t = np.arange(len(ts))
    yhat = 0.3 + 0.05 * np.sin(t / 288 * 2 * np.pi)
    rng = np.random.default_rng(0)
    score = np.abs(rng.normal(0, 0.3, len(ts)))
    score[250:262] = np.linspace(2, 6, 12)
    observed = yhat + rng.normal(0, 0.03, len(ts))
    observed[250:262] = np.linspace(0.5, 0.92, 12)
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "series": SID, "value": observed}).to_csv(
        folder / "observed.csv", index=False
    )
    sid2 = series_id({**SOURCE, "instance": f"api-2:8080 {HOSTILE}"})
    labels = {SID: SOURCE, sid2: {**SOURCE, "instance": f"api-2:8080 {HOSTILE}"}}
    scores = pd.concat([
        pd.DataFrame({"series_id": s, "ts": ts, "anomaly_score": score, "yhat": yhat, "yhat_lower": yhat - 0.1, "yhat_upper": yhat + 0.1})
        for s in labels
    ])
    fts = pd.date_range(ts[-1] + pd.Timedelta("5min"), periods=24, freq="5min")
    forecast = pd.DataFrame({"series_id": SID, "ts": fts, "yhat": 0.3, "yhat_lower": 0.2, "yhat_upper": 0.4})
    write_outputs(store, WATCH, labels, scores=scores, forecast=forecast)

    ev = AnomalyEvent(
        watch=WATCH, series_id=SID, start=ts[250].to_pydatetime(), end=None, peak_time=ts[261].to_pydatetime(),
        peak_score=6.0, severity="critical", direction="spike", observed=0.92, expected=0.3,
        expected_lower=0.2, expected_upper=0.4, labels={**SOURCE, "team": HOSTILE},
    )
    event_id = store.upsert_event(ev)
    explanation_id = store.add_explanation(
        subject_kind="event", subject_ref=f"event:{event_id}", watch=WATCH, backend="template",
        evidence={"items": []},
        explanation={"title": "Latency spike on checkout", "summary": f"Latency rose 3x. {HOSTILE}",
                     "causes": [{"name": "db", "confidence": 0.7, "reason": HOSTILE}], "next_checks": [HOSTILE]},
        markdown="**Latency spike**",
    )

    inbox = Inbox(store)
    alert = {
        "status": "firing", "fingerprint": "6c7fcba3be00a962", "startsAt": "2026-11-21T14:01:30Z",
        "labels": {"alertname": "HighRequestLatency", "service": "checkout"},
        "annotations": {"summary": f"High latency {HOSTILE}"},
    }
    dead = {**alert, "fingerprint": "00000000000000dd", "labels": {"alertname": "DiskFull", "instance": "db-1"}}
    inbox.add([alert, dead])
    item = inbox.claim("w1", lease=60, max_attempts=1)
    alert_explanation_id = inbox.complete(item, "w1", {
        "backend": "template", "explanation": {"title": "Checkout slow", "summary": f"Because of db. {HOSTILE}"},
        "markdown": "x",
    })
    item = inbox.claim("w1", lease=60, max_attempts=1)
    inbox.fail(item, "w1", f"explainer crashed {HOSTILE}", max_attempts=1, backoff=1)
    return Seeded(store, None, event_id, explanation_id, alert_explanation_id, item.id)


@pytest.fixture
def seeded(tmp_path) -> Seeded:
    s = seed_store(Store.open(f"sqlite:///{tmp_path}/aiops.db"), tmp_path)
    s.config = ui_config(tmp_path)
    return s


@pytest.fixture
def client(seeded):
    return create_app(seeded.config, seeded.store).test_client()


def assert_safe(html: str) -> None:
    """No hostile markup came through; its escaped form did."""
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=\"/ui/static/)(?![^>]*type=\"application/json\")", html)
    assert " on" + "click=" not in html.lower()


def test_index_lists_the_event_with_its_explanation_and_feedback_buttons(client, seeded):
    resp = client.get("/ui/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert f'id="event-{seeded.event_id}"' in html
    assert "Latency spike on checkout" in html
    assert f'data-explanation="{seeded.explanation_id}"' in html
    for verdict in ("accept", "reject", "edit"):
        assert f'data-verdict="{verdict}"' in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert_safe(html)


def test_pages_carry_a_csp_that_allows_scripts_from_this_origin_only(client):
    for path in ("/ui/", "/ui/watches", f"/ui/watches/{WATCH}", "/ui/alerts"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"] == "no-store"


def test_the_token_never_reaches_a_page(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/aiops.db")
    seed_store(store, tmp_path)
    client = create_app(ui_config(tmp_path, token="s3cret-token-value"), store).test_client()
    for path in ("/ui/", "/ui/watches", f"/ui/watches/{WATCH}", "/ui/alerts", "/ui/static/ui.js"):
        resp = client.get(path)
        assert resp.status_code == 200
        assert "s3cret-token-value" not in resp.get_data(as_text=True)


def test_watches_page_links_the_chart(client):
    html = client.get("/ui/watches").get_data(as_text=True)
    assert f'href="/ui/watches/{WATCH}"' in html
    assert "http_request_duration_seconds" in html


def plotly_values(v) -> np.ndarray:
    """A trace's values as plotly.py serialises them: a list, or a typed array in base64."""
    if isinstance(v, dict):
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.array([np.nan if x is None else x for x in v], dtype=float)


def figure_of(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="figure-data">(.*?)</script>', html, re.S).group(1))


def test_watch_page_embeds_the_figure_with_observed_band_score_and_event(client):
    resp = client.get(f"/ui/watches/{WATCH}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    fig = figure_of(html)
    names = [tr.get("name") for tr in fig["data"]]
    assert "forecast band" in names and "score" in names and "events" in names
    observed = fig["data"][0]  # watch_figure draws the observed line first
    assert observed["legendgroup"] == SID
    assert np.isfinite(plotly_values(observed["y"])).sum() == len(observed["x"]) == 288  # the file's points
    assert "Observed values not drawn" not in html
    (span,) = fig["layout"]["shapes"]  # the ongoing event's span reaches the newest score
    assert pd.Timestamp(span["x1"]) - pd.Timestamp(span["x0"]) == pd.Timedelta("185min")  # ts[250] .. ts[287]
    assert '<script src="/ui/static/plotly.min.js">' in html
    assert_safe(html)


def test_watch_page_picks_a_series_and_escapes_hostile_series_ids(client):
    html = client.get(f"/ui/watches/{WATCH}").get_data(as_text=True)
    assert "api-2:8080 &lt;script&gt;" in html  # the second series is listed, escaped
    hostile_sid = series_id({**SOURCE, "instance": f"api-2:8080 {HOSTILE}"})
    resp = client.get(f"/ui/watches/{WATCH}", query_string={"series": hostile_sid})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "Observed values not drawn: the source returned no values for this series" in html
    assert_safe(html)


def test_an_unreadable_source_leaves_the_chart_and_says_why(seeded, tmp_path):
    (tmp_path / "observed.csv").unlink()
    html = create_app(seeded.config, seeded.store).test_client().get(f"/ui/watches/{WATCH}").get_data(as_text=True)
    assert "Observed values not drawn: input file" in html and "does not exist" in html
    assert "forecast band" in html


def test_unknown_watch_or_series_is_a_clear_404(client):
    resp = client.get("/ui/watches/nope")
    assert resp.status_code == 404
    assert "no output series stored for watch &#39;nope&#39;" in resp.get_data(as_text=True)
    resp = client.get(f"/ui/watches/{WATCH}", query_string={"series": HOSTILE})
    assert resp.status_code == 404
    assert "pick one from the list" in resp.get_data(as_text=True)
    assert_safe(resp.get_data(as_text=True))


def test_alerts_page_shows_inbox_explanation_and_dead_letter(client, seeded):
    html = client.get("/ui/alerts").get_data(as_text=True)
    assert "HighRequestLatency" in html and "Checkout slow" in html
    assert f'data-explanation="{seeded.alert_explanation_id}"' in html
    assert f'id="dead-{seeded.dead_id}"' in html and f'data-id="{seeded.dead_id}"' in html
    assert "explainer crashed &lt;script&gt;" in html
    assert_safe(html)


def test_plotly_is_served_locally(client):
    resp = client.get("/ui/static/plotly.min.js")
    assert resp.status_code == 200
    assert resp.mimetype == "text/javascript"
    assert b"plotly" in resp.get_data()[:2000].lower()
    resp.close()


def test_read_token_required_refuses_pages_with_the_reason(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path}/aiops.db")
    client = create_app(ui_config(tmp_path, token="t0ken-abc", read_token_required=True), store).test_client()
    resp = client.get("/ui/")
    assert resp.status_code == 401
    assert "read_token_required" in resp.get_data(as_text=True)
    assert client.get("/ui/", headers={"Authorization": "Bearer t0ken-abc"}).status_code == 200


def test_empty_store_renders_guidance(tmp_path):
    client = create_app(ui_config(tmp_path), Store.open(f"sqlite:///{tmp_path}/aiops.db")).test_client()
    assert "No anomaly events stored yet" in client.get("/ui/").get_data(as_text=True)
    assert "No alerts received" in client.get("/ui/alerts").get_data(as_text=True)
    assert client.get(f"/ui/watches/{WATCH}").status_code == 404


@pytest.mark.parametrize("labels", [
    SOURCE,
    {"__name__": "up", "watch": "clash", "bound": "b", "job": "x"},
    {"instance": "no-name"},
])
def test_chart_series_ids_invert_output_labels(labels):
    """The chart lists output series under their source ids; events carry the same ids."""
    from aiops.outputs import ANOMALY_SCORE, output_labels

    assert source_labels(output_labels(labels, ANOMALY_SCORE, WATCH)) == labels


def test_approve_buttons_follow_the_watch_actions(seeded, tmp_path):
    action = {"name": "restart-checkout", "url": "http://127.0.0.1:9/hook", "description": f"Restart {HOSTILE}"}
    app = create_app(ui_config(tmp_path, actions=[action]), seeded.store)
    html = app.test_client().get("/ui/").get_data(as_text=True)
    assert f'class="approve" data-watch="{WATCH}" data-action="restart-checkout" data-event="{seeded.event_id}"' in html
    assert 'title="Restart &lt;script&gt;' in html
    assert_safe(html)
    plain = create_app(seeded.config, seeded.store).test_client().get("/ui/").get_data(as_text=True)
    assert 'class="approve"' not in plain  # no configured action, no button
