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


def test_demo_runs_without_servers(tmp_path):
    r = CliRunner().invoke(cli, ["demo", "--output", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "latency-p90: 7 series" in r.output
    assert (tmp_path / "out" / "aiops.db").exists()
