"""The cookbook notebooks: their saved outputs come from their current code, and they still run.

The freshness checks are fast and always run. Executing the notebooks (``-m notebook``) runs each
one top to bottom in a fresh kernel on the embedded models and fails on the first error.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the cookbook needs the docs extra: pip install -e .[docs]")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cookbook_execute", ROOT / "cookbook" / "execute.py")
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

NOTEBOOKS = execute.notebooks()
# notebooks whose story is told with a figure: each must have one in its saved outputs
WITH_FIGURES = {
    "01_quickstart.ipynb",
    "02_sea.ipynb",
    "03_darwin.ipynb",
    "04_guided_decoding.ipynb",
    "05_adaptive_best_of_n.ipynb",
    "06_retrieval.ipynb",
    "10_tools_and_structured_output.ipynb",
    "11_choosing_a_strategy.ipynb",
}


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_the_cookbook_has_notebooks() -> None:
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]
    assert {p.name for p in NOTEBOOKS} >= WITH_FIGURES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_saved_outputs_come_from_the_current_code(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    stamp = notebook.metadata.get(execute.STAMP, {})
    assert stamp.get("code_hash") == execute.code_hash(notebook), (
        f"{path.name}: its code changed since its outputs were saved. "
        f"Run `python cookbook/execute.py cookbook/{path.name}` and commit the result."
    )
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: not executed top to bottom: {counts}"
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: saved outputs contain an error: {errors[0].get('ename')}"
    if path.name in WITH_FIGURES:
        assert _images(notebook) >= 1, f"{path.name}: no figure in the saved outputs"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    pytest.importorskip("nbclient", reason="the cookbook needs the docs extra: pip install -e .[docs]")
    notebook = nbformat.read(path, as_version=4)
    execute.run_notebook(notebook)  # raises CellExecutionError, with the cell and traceback
    if path.name in WITH_FIGURES:
        assert _images(notebook) >= 1, f"{path.name}: drew no figure when executed"
