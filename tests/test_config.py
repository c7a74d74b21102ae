from pathlib import Path

import pytest
from click.testing import CliRunner

from aiops.cli import cli
from aiops.config import load_config
from aiops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "aiops.yaml"


def problems(exc: ConfigError) -> dict[str, str]:
    return dict(exc.problems)


def test_embedded_default_and_example_are_valid():
    cfg = load_config(None, environ={})
    assert cfg.source.kind == "synthetic" and len(cfg.watches) >= 3
    ex = load_config(EXAMPLE, environ={})
    assert ex.watches[0].step.seconds == 60
    assert ex.watch("disk-free").capacity.direction == "below"


def test_unknown_key_and_bad_duration_named_by_yaml_path_and_line(tmp_path):
    bad = EXAMPLE.read_text().replace("step: 1m", "step: 1x").replace("horizon: 14d", "horizn: 14d")
    f = tmp_path / "bad.yaml"
    f.write_text(bad)
    with pytest.raises(ConfigError) as ei:
        load_config(f, environ={})
    p = problems(ei.value)
    assert "invalid duration '1x'" in p["watches[0].step"]
    assert "unknown key 'horizn'" in p["watches[1].horizn"]
    line = bad.splitlines().index("    horizn: 14d") + 1
    assert f"(line {line})" in p["watches[1].horizn"]


def test_env_overrides_are_typed_and_reach_list_items(tmp_path):
    env = {
        "AIOPS_PROMETHEUS__URL": "http://prom:9090/",
        "AIOPS_PROMETHEUS__VERIFY_TLS": "false",
        "AIOPS_WATCHES__1__MAX_SERIES": "7",
        "AIOPS_PROMETHEUS__HEADERS": "{X-Scope-OrgID: tenant-a}",
        "UNRELATED": "x",
    }
    cfg = load_config(EXAMPLE, environ=env)
    assert cfg.prometheus.url == "http://prom:9090"
    assert cfg.prometheus.verify_tls is False
    assert cfg.watches[1].max_series == 7
    assert cfg.prometheus.headers == {"X-Scope-OrgID": "tenant-a"}


def test_env_errors_name_the_variable():
    with pytest.raises(ConfigError) as ei:
        load_config(EXAMPLE, environ={"AIOPS_PROMETHEUS__TIMEOUT": "soon"})
    assert "AIOPS_PROMETHEUS__TIMEOUT" in problems(ei.value)["prometheus.timeout"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EXAMPLE, environ={"AIOPS_WATCHES__9__STEP": "1m"})


def test_secrets_from_file_and_never_printed(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("s3cr3t-value\n")
    f = tmp_path / "c.yaml"
    f.write_text(f"grafana: {{url: 'http://g:3000', token_file: '{tok}'}}\nprometheus: {{bearer_token: abc123}}\n")
    cfg = load_config(f, environ={})
    assert cfg.grafana.token.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(cfg) and "abc123" not in str(cfg.model_dump())
    f.write_text("grafana: {token_file: /nonexistent/tok}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(f, environ={})
    assert "token_file: cannot read /nonexistent/tok" in problems(ei.value)["grafana"]


def test_other_mistakes_are_reported(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("watches:\n  - {name: a, query: up}\n  - {name: a, query: up}\n")
    with pytest.raises(ConfigError, match="used twice"):
        load_config(f, environ={})
    f.write_text("watches:\n  - name: a\n    query: up\n   step: 5m\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(f, environ={})
    f.write_text("prometheus: {url: 'localhost:9090'}\n")
    with pytest.raises(ConfigError, match="http\\(s\\) URL"):
        load_config(f, environ={})
    f.write_text("prometheus: {bearer_token: a, basic_auth: {username: u, password: p}}\n")
    with pytest.raises(ConfigError, match="set bearer_token or basic_auth, not both"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_check_config_cli_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["check-config", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "OK (2 watches" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("history: 14d", "history: fortnight"))
    res = runner.invoke(cli, ["check-config", str(bad)])
    assert res.exit_code == 2
    assert "watches[1].history: invalid duration 'fortnight'" in res.output


def test_configuration_reference_is_current():
    from aiops.configref import reference

    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == reference(), "docs/configuration.md is stale: run `aiops config-reference > docs/configuration.md`"
