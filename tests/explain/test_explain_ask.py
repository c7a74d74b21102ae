"""Questions answered from watches, store events and the knowledge base."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from click.testing import CliRunner

from aiops.cli import cli
from aiops.config import validate_config
from aiops.errors import InputError
from aiops.explain.ask import answer_question, question_evidence, question_since
from aiops.explain.kb import KnowledgeBase
from aiops.store import Store
from aiops.types import AnomalyEvent

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)


def _config(tmp_path):
    return {
        "store": {"url": f"sqlite:///{tmp_path / 'aiops.db'}"},
        "explain": {"kb_index_dir": str(tmp_path / "kb")},
        "watches": [
            {"name": "checkout-latency", "query": 'http_request_duration_seconds{service="checkout"}'},
            {"name": "disk-free", "query": "node_filesystem_avail_bytes"},
        ],
    }


def _event(watch, sid, start, score, observed, labels):
    return AnomalyEvent(watch=watch, series_id=sid, start=start, end=None, peak_time=start + timedelta(minutes=10),
                        peak_score=score, severity="critical", direction="spike", observed=observed,
                        expected=0.35, expected_lower=0.3, expected_upper=0.41, labels=labels)


@pytest.fixture
def setup(tmp_path):
    cfg = validate_config(_config(tmp_path))
    store = Store.open(cfg.store.url)
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    store.upsert_event(_event("checkout-latency", 'http_request_duration_seconds{service="checkout"}', since, 4.2, 1.83,
                              {"service": "checkout"}))
    store.upsert_event(_event("disk-free", 'node_filesystem_avail_bytes{instance="db-1"}', since, 9.9, 5e9,
                              {"instance": "db-1"}))
    rb = tmp_path / "runbooks"
    rb.mkdir()
    (rb / "checkout.md").write_text("# Checkout\n\n## Slow checkout\n\nCheck the payments service latency first.\n")
    KnowledgeBase.build(rb).save(cfg.explain.kb_index_dir)
    return cfg, store


def test_question_since():
    assert question_since("why is checkout slow since 10:00?", NOW) == NOW.replace(hour=10)
    assert question_since("errors since 13:30", NOW) == NOW.replace(hour=13, minute=30) - timedelta(days=1)
    assert question_since("what broke in the last 2 hours", NOW) == NOW - timedelta(hours=2)
    assert question_since("since 2026-03-01T08:00", NOW) == datetime(2026, 3, 1, 8, tzinfo=timezone.utc)
    assert question_since("why is it slow", NOW) is None


def test_answer_matches_watch_events_and_runbooks(setup):
    cfg, store = setup
    ev = question_evidence("why is checkout slow?", config=cfg, store=store)
    kinds = [i.kind for i in ev.items]
    assert kinds[0] == "event" and "runbook" in kinds
    assert "checkout-latency" in ev.items[0].text and "1.83" in ev.items[0].text
    assert not any("disk-free" in i.text for i in ev.items)  # the stronger but unrelated event stays out
    expl = answer_question("why is checkout slow?", config=cfg, store=store)
    assert expl.title == "Q: why is checkout slow?" and expl.backend == "template"
    assert "1.83" in expl.summary
    assert any('http_request_duration_seconds{service="checkout"}' in c for c in expl.next_checks)
    assert any("checkout.md#slow-checkout" in c for c in expl.next_checks)


def test_unmatched_question_says_so(setup):
    cfg, _ = setup
    expl = answer_question("is the zebra quantum ok?", config=cfg, store=None)
    assert "no anomaly event, watch or runbook passage matches" in expl.summary
    with pytest.raises(InputError):
        answer_question("  ", config=cfg)


def test_cli_ask(setup, tmp_path):
    cfg, _ = setup
    path = tmp_path / "aiops.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    res = CliRunner().invoke(cli, ["ask", "why is checkout slow?", "-c", str(path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["title"] == "Q: why is checkout slow?" and out["markdown"].startswith("**Q: why is checkout slow?**")
