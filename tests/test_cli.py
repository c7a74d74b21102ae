import re

from click.testing import CliRunner

from aiops import __version__
from aiops.cli import cli


def test_help_teaches_and_version():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0
    assert "aiops demo" in r.output and "check-config" in r.output and "AIOPS_" in r.output
    v = CliRunner().invoke(cli, ["--version"])
    assert v.exit_code == 0 and __version__ in v.output


def test_fetch_prints_what_it_fetched():
    r = CliRunner().invoke(cli, ["fetch", "disk-free"])
    assert r.exit_code == 0, r.output
    assert re.search(r"watch disk-free: 1 series, \d+ steps of 5m", r.output)
    assert 'mountpoint="/var/lib/postgresql"' in r.output
    bad = CliRunner().invoke(cli, ["fetch", "nope"])
    assert bad.exit_code == 2 and "configured watches: latency-p90" in bad.output


SMALL_DEMO = """
source: {kind: synthetic, synthetic: {scenario: shop, seed: 1, days: 4, step: 5m}}
watches:
  - {name: latency-p90, query: 'http_request_duration_seconds{quantile="0.9"}', history: 4d, horizon: 6h}
  - name: disk-free
    query: node_filesystem_avail_bytes
    history: 4d
    horizon: 7d
    capacity: {threshold: 10.0e+9, direction: below}
"""


def test_demo_runs_the_pipeline_without_servers(tmp_path):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(SMALL_DEMO)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["demo", "-c", str(cfg), "--output", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "latency-p90: 7 series" in r.output and "FAILED" not in r.output
    # the seeded incident is found and explained, and its root cause ranked
    assert "Top explained anomalies:" in r.output and "Root-cause ranking for" in r.output
    assert re.search(r"disk-free: 1 series, .*node_filesystem_avail_bytes.*(median|not within horizon)", r.output)
    report = (out / "report.html").read_text()
    assert "plotly" in report and "latency-p90" in report
    assert list((out / "grafana").glob("*.json")), "dashboards written as files"
    assert list((out / "grafana" / "annotations").glob("*.annotation")), "annotations written as files"
    from aiops.store import Store

    store = Store.open(f"sqlite:///{out}/aiops.db")
    assert store.events(watch="latency-p90")
    assert {r["status"] for r in store.runs()} == {"ok"}
