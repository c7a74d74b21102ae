"""alert_rules/: promtool checks and unit tests, annotations and runbooks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "alert_rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "alert_rules" / "tests").glob("*.yml"))


tool = require_binary


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_rules_pass_promtool_check():
    assert RULES
    res = run(tool("promtool"), "check", "rules", *map(str, RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_rule_unit_tests_pass():
    assert RULE_TESTS
    res = run(tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_is_unit_tested():
    tested = {t["alertname"] for f in RULE_TESTS for case in yaml.safe_load(f.read_text())["tests"] for t in case.get("alert_rule_test", [])}
    assert {a["alert"] for a in alerts()} <= tested


def test_promtool_catches_a_broken_rule(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(x[5m]\n")
    assert run(tool("promtool"), "check", "rules", str(bad)).returncode != 0


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_alert_has_annotations_severity_and_runbook(rule):
    ann = rule["annotations"]
    assert ann["summary"] and ann["description"]
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    m = re.fullmatch(r"docs/runbooks/(Aiops\w+)\.md", ann["runbook_url"])
    assert m, ann["runbook_url"]
    text = (ROOT / ann["runbook_url"]).read_text()
    assert text.startswith(f"# {m.group(1)}") and "## Diagnosis" in text and "## Mitigation" in text
