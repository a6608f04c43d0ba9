"""Every notebook in tutorials/ runs top to bottom in a real kernel, as Jupyter runs it.

Each one starts in a tmp_path of its own, with TMPDIR there too: a notebook first moves to
a new folder from `tempfile.mkdtemp()`, so the files it makes (tutorial.db, tasks.py) stay
in its tmp_path. The notebooks assert what they claim, so a change in pluq's behaviour
fails here. `nox -s tutorials` runs this file alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT = 120


def test_the_tutorials_folder_has_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_without_errors(notebook: Path, tmp_path: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    kernel_env = {**os.environ, "TMPDIR": str(tmp_path)}  # where mkdtemp() makes folders
    client.execute(env=kernel_env)  # raises CellExecutionError, with the cell and traceback


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_tutorials_readme_names_every_notebook() -> None:
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    missing = [path.name for path in NOTEBOOKS if path.name not in readme]
    assert missing == [], f"tutorials/README.md does not mention {missing}"
