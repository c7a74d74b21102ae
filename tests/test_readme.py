"""README: generated sections match their sources, and what it tells users to run exists."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from aiops.cli import cli
from aiops.config import AiopsConfig
from aiops.configref import readme_table
from aiops.docsync import Figures, benchmark_table, replace_marked, sync
from aiops.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

DOC = """# Bench

## Anomaly detection: NAB

| detector | standard | reward low FP |
|---|---|---|
| aiops (`detect_frame`) | **36.4** | **25.4** |
| *published:* A / B | 73.6 / 71.7 | 68.4 / 68.2 |

## Throughput

| forecaster | series | fit+predict series/s |
|---|---|---|
| aiops `auto` | 1,000 | 41.5 |
| aiops `auto` | 10,000 | 78.7 |
"""


def test_readme_generated_sections_are_current():
    stale = [p for p in sync(ROOT, write=False) if p.name == "README.md"]
    assert not stale, (
        "README.md's generated sections (configuration, benchmarks) differ from aiops/config.py or "
        "docs/benchmarks.md: run `aiops docs-sync` (or `python -m aiops docs-sync`) and commit README.md"
    )


def test_cells_are_found_by_section_row_and_column_without_emphasis():
    f = Figures(DOC)
    assert f.cell("NAB", "aiops (", "standard") == "36.4"
    assert f.cell("nab", "published", "reward low") == "68.4 / 68.2"
    assert f.cell("Throughput", "aiops `auto`", "fit+predict", where={"series": "10,000"}) == "78.7"
    assert f.number("Throughput", "aiops `auto`", "fit+predict") == 41.5


@pytest.mark.parametrize("section,row,column,named", [
    ("Forecasting", "aiops", "MASE", "'Forecasting'"),
    ("NAB", "rolling z", "standard", "'rolling z'"),
    ("NAB", "aiops (", "low FN", "'low FN'"),
])
def test_a_missing_table_row_or_column_is_named_with_the_fix(section, row, column, named):
    with pytest.raises(InputError) as exc:
        Figures(DOC).cell(section, row, column)
    assert named in exc.value.message
    assert "aiops docs-sync" in exc.value.hint and "SUMMARY" in exc.value.hint


def test_benchmark_table_reads_docs_benchmarks_and_judges_targets():
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| aiops (`detect_frame`"))
    cells = row.split("|")
    cells[2], cells[3] = " **80.1** ", " **70.2** "
    better = doc.replace(row, "|".join(cells))
    before = next(line for line in benchmark_table(doc).splitlines() if line.startswith("| Anomaly detection, NAB"))
    after = next(line for line in benchmark_table(better).splitlines() if line.startswith("| Anomaly detection, NAB"))
    assert "| 80.1 / 70.2 |" in after and after.endswith("| met |")
    assert "80.1" not in before
    assert "Numenta HTM" in after and "SeasonalNaive" in benchmark_table(doc)


def test_replace_marked_rewrites_only_between_markers():
    text = "intro\n<!-- BEGIN x -->\nold\n<!-- END x -->\noutro\n"
    once = replace_marked(text, "x", "new line\n")
    assert once == "intro\n<!-- BEGIN x -->\nnew line\n<!-- END x -->\noutro\n"
    assert replace_marked(once, "x", "new line\n") == once
    with pytest.raises(InputError, match="BEGIN y"):
        replace_marked(text, "y", "z")


def test_config_table_has_every_section_and_links_to_existing_anchors():
    table = readme_table()
    reference = (ROOT / "docs" / "configuration.md").read_text()
    headings = {h.replace(".", "").replace("[]", "").replace(" ", "-") for h in re.findall(r"^## `([^`]+)`", reference, re.M)}
    for name in AiopsConfig.model_fields:
        assert f"[`{name}`" in table, name
    for anchor in re.findall(r"\(docs/configuration\.md#([^)]+)\)", table):
        assert anchor in headings, f"README links docs/configuration.md#{anchor}, which has no such section"


def test_docs_sync_cli_check_fails_when_stale_then_sync_fixes_it(tmp_path):
    for rel in ("README.md", "docs/benchmarks.md", "docs/configuration.md", "aiops/config.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    readme = tmp_path / "README.md"
    readme.write_text(replace_marked(readme.read_text(), "benchmarks", "| hand-edited |"))
    runner = CliRunner()
    res = runner.invoke(cli, ["docs-sync", "--check", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "README.md" in res.output
    assert "hand-edited" in readme.read_text()  # --check changes nothing
    res = runner.invoke(cli, ["docs-sync", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "rewrote" in res.output
    assert runner.invoke(cli, ["docs-sync", "--check", "--root", str(tmp_path)]).exit_code == 0
    assert "hand-edited" not in readme.read_text()


def test_docs_sync_without_markers_says_how_to_fix(tmp_path):
    for rel in ("docs/benchmarks.md", "aiops/config.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "README.md").write_text("# no markers\n")
    res = CliRunner().invoke(cli, ["docs-sync", "--check", "--root", str(tmp_path)])
    assert res.exit_code == 2
    assert "<!-- BEGIN config-reference -->" in res.output and "marker" in res.output


def test_setup_commands_in_the_readme_exist():
    text = README.read_text()
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"bash {script}" in text
        assert (ROOT / script).is_file(), script


def test_readme_alertmanager_receiver_matches_the_deployed_one():
    text = README.read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "receivers:" in b)
    ours = yaml.safe_load(re.sub(r"^  ", "", block, flags=re.M))["receivers"]
    deployed = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())["receivers"]
    assert ours == deployed
