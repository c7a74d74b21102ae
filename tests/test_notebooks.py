"""The notebooks: stored clean, small, and part of the default test run.

nbmake executes them (``setup.cfg``: ``testpaths = tests notebooks``, ``--nbmake``); these
tests guard how they are stored and wired, not what they compute.
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ("quickstart.ipynb", "capacity.ipynb", "evaluation.ipynb")
MAX_DATA_BYTES = 1_000_000


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_three_notebooks_exist_and_the_readme_lists_them():
    names = [p.name for p in _notebooks()]
    assert set(EXPECTED) <= set(names), names
    readme = (NOTEBOOKS / "README.md").read_text()
    missing = [n for n in names if n not in readme]
    assert not missing, f"notebooks/README.md does not mention {missing}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebook_is_valid_and_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (
        f"notebooks/{path.name}: code cells {dirty} were committed with outputs; clear them with "
        f"`jupyter nbconvert --clear-output --inplace notebooks/{path.name}`"
    )


def test_default_pytest_run_executes_the_notebooks():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pytest_cfg = cfg["tool:pytest"]
    assert "notebooks" in pytest_cfg["testpaths"].split(), "setup.cfg testpaths must include notebooks"
    opts = shlex.split(pytest_cfg["addopts"])
    assert "--nbmake" in opts, "setup.cfg addopts must include --nbmake"
    assert any(o.startswith("--nbmake-timeout") for o in opts), "a per-cell --nbmake-timeout keeps a hung kernel from stalling CI"
    test_extra = cfg["options.extras_require"]["test"]
    for pkg in ("nbmake", "ipykernel"):
        assert pkg in test_extra, f"{pkg} must be in the test extra so scripts/install.sh --test installs it"


def test_notebook_data_is_small_and_nab_files_carry_their_licence():
    data = NOTEBOOKS / "data"
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert total < MAX_DATA_BYTES, f"notebooks/data holds {total} bytes; keep it under {MAX_DATA_BYTES}"
    nab = data / "nab"
    assert "Permission is hereby granted" in (nab / "LICENSE.txt").read_text()
    listed = (nab / "PROVENANCE.md").read_text()
    for csv in (nab / "data").rglob("*.csv"):
        assert str(csv.relative_to(nab)) in listed, f"{csv.name} is not listed in notebooks/data/nab/PROVENANCE.md"
