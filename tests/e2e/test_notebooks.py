"""The statistics notebooks: committed without outputs, and they run clean on the sample builds.

Each notebook is executed with nbclient in a fresh kernel, pointed at the session's sample build
through FLAMINGO_CORPUS_BUILD (the variable its first code cell reads); a cell that raises fails
the test.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
STRIP_HINT = (
    "strip it before committing: jupyter nbconvert --clear-output --inplace notebooks/*.ipynb "
    "(or Edit > Clear All Outputs, then save); see notebooks/README.md"
)


def _notebooks():
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert {p.name for p in _notebooks()} >= {"dataset_stats.ipynb", "mmc4_stats.ipynb"}


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: {STRIP_HINT}"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count: {STRIP_HINT}"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "FLAMINGO_CORPUS_BUILD" in first_code.source and "BUILD =" in first_code.source


def _run(name: str, build_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("FLAMINGO_CORPUS_BUILD", str(build_dir))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb, timeout=600, startup_timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError on the first cell that raises
    return nb


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    "name,build", [("dataset_stats", "sample_build"), ("dataset_stats", "mmc4_build"), ("mmc4_stats", "mmc4_build")]
)
def test_notebook_runs_clean_on_the_sample_build(name, build, request, monkeypatch):
    out_dir, _ = request.getfixturevalue(build)
    nb = _run(name, out_dir, monkeypatch)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    assert str(out_dir) in printed  # the notebook looked at the build it was pointed at
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    figures = sum(1 for c in nb.cells if c.cell_type == "code" and "plot_" in c.source)
    assert len(pngs) >= figures  # every plotting cell showed its figure
    assert any("text/html" in o.get("data", {}) for o in outputs)  # and the tables
