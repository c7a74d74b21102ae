"""Settings for the notebooks that nbmake executes as part of the suite.

``setup.cfg`` puts ``notebooks`` in ``testpaths`` and ``--nbmake`` in ``addopts``, so a plain
``python -m pytest`` runs every notebook here in a ``python3`` kernel of the running
interpreter, cells in order, from this folder. A notebook fails the run when a cell raises
(the notebooks check their own results with ``assert``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOK_TIMEOUT_S = 120  # a whole notebook; each one takes seconds on 2 cores


def _is_notebook(item: pytest.Item) -> bool:
    return item.path.suffix == ".ipynb" and HERE in item.path.parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_notebook(item):
            item.add_marker(pytest.mark.timeout(NOTEBOOK_TIMEOUT_S))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Kernels inherit the environment: put this checkout first on PYTHONPATH so notebooks
    import the aiops under test, as the tests under tests/ do (nbmake items take no fixtures)."""
    if not _is_notebook(item):
        return (yield)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), before]) if before else str(ROOT)
    try:
        return (yield)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
