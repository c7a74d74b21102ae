"""Knowledge base: runbooks split at headings, alert-rule annotations, BM25 search, CLI."""

import json

import pytest
from click.testing import CliRunner

from aiops.cli import cli
from aiops.errors import ExplainError, InputError
from aiops.explain.kb import KnowledgeBase, passages_as_evidence, split_markdown, tokenize

CHECKOUT_MD = """# Checkout service

Owned by the shop team.

## High latency

When checkout_latency_seconds p95 is high, check the payments dependency first.

```
# this is a shell comment, not a heading
kubectl -n shop rollout undo deploy/checkout
```

## Errors

5xx errors usually come from the database connection pool being exhausted.

## Errors

A second section with the same heading gets its own anchor.
"""

RULES = """groups:
- name: shop
  rules:
  - alert: DiskWillFillIn4h
    expr: predict_linear(node_filesystem_avail_bytes[6h], 4*3600) < 0
    labels: {severity: warning}
    annotations:
      summary: Disk will fill within four hours
      description: The filesystem on {{ $labels.instance }} is filling up fast.
      runbook_url: https://runbooks.example/disk-fill
  - record: job:requests:rate5m
    expr: sum by (job) (rate(http_requests_total[5m]))
"""


@pytest.fixture
def folders(tmp_path):
    rb = tmp_path / "runbooks"
    (rb / "db").mkdir(parents=True)
    (rb / "checkout.md").write_text(CHECKOUT_MD)
    (rb / "db" / "postgres.md").write_text("# Postgres\n\n## Replication lag\n\nCheck WAL shipping and replica IO.\n")
    rules = tmp_path / "alert_rules"
    rules.mkdir()
    (rules / "node.yml").write_text(RULES)
    return rb, rules


def test_markdown_split_by_headings_with_anchors():
    passages = split_markdown(CHECKOUT_MD, "runbooks/checkout.md")
    assert [p.source for p in passages] == [
        "runbooks/checkout.md#checkout-service",
        "runbooks/checkout.md#high-latency",
        "runbooks/checkout.md#errors",
        "runbooks/checkout.md#errors-1",
    ]
    assert passages[1].title == "Checkout service / High latency"
    assert "rollout undo" in passages[1].text  # the fenced '#' line stayed in its section


def test_index_search_save_load(folders, tmp_path):
    rb, rules = folders
    kb = KnowledgeBase.build(rb, rules)
    assert len(kb) == 6  # 4 + 1 runbook passages (empty sections skipped), 1 alerting rule (not recording rules)
    hits = kb.search("why is checkout latency high", k=3)
    assert hits[0]["source"].endswith("checkout.md#high-latency")
    assert set(hits[0]) >= {"text", "source", "score", "title"} and hits[0]["score"] > 0
    disk = kb.search("disk filling up", k=2)[0]
    assert disk["source"].endswith("node.yml#DiskWillFillIn4h") and disk["runbook_url"] == "https://runbooks.example/disk-fill"
    assert kb.search("replication lag", k=1)[0]["source"].endswith("postgres.md#replication-lag")
    assert kb.search("zebra quantum", k=5) == []
    out = kb.save(tmp_path / "index")
    again = KnowledgeBase.load(out)
    assert [h["source"] for h in again.search("database connection pool", k=2)] == [
        h["source"] for h in kb.search("database connection pool", k=2)]
    items = passages_as_evidence(hits[:1])
    assert items[0].kind == "runbook" and items[0].source == hits[0]["source"]


def test_metric_name_parts_are_searchable():
    assert {"checkout_latency_seconds", "checkout", "latency", "seconds"} <= set(tokenize("checkout_latency_seconds"))


def test_errors(tmp_path):
    with pytest.raises(InputError, match="nothing to index"):
        KnowledgeBase.build(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        KnowledgeBase.build(tmp_path / "missing")
    with pytest.raises(ExplainError, match="aiops kb index"):
        KnowledgeBase.load(tmp_path)


def test_cli_index_and_search(folders, tmp_path):
    rb, rules = folders
    runner = CliRunner()
    res = runner.invoke(cli, ["kb", "index", str(rb), "--rules", str(rules), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    assert "indexed 6 passages (1 alert_rule, 5 runbook)" in res.output
    res = runner.invoke(cli, ["kb", "search", "checkout latency", "-k", "2", "--index", str(tmp_path / "idx"), "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert len(hits) == 2 and hits[0]["source"].endswith("#high-latency")
    res = runner.invoke(cli, ["kb", "search", "x", "--index", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no knowledge-base index" in res.output
