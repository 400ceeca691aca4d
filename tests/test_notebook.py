"""The notebook tutorial (docs/tutorial.ipynb) runs from top to bottom without an error, in a Jupyter kernel that
is a separate process of this Python (the repository's venv), as a reader's would be.

The kernel loads the embedded SmolLM2 itself (from the dequantised copy on disk); every cell must finish within
``CELL_TIMEOUT`` seconds. The committed notebook carries no outputs, so that it changes only when its cells do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
CELL_TIMEOUT = 600
KERNEL = "attnlrp-tests"


@pytest.fixture
def kernel_of_this_python(tmp_path, monkeypatch):
    """A kernel spec that starts ipykernel with this Python (not whatever ``python`` is on the PATH)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
    }), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    return KERNEL


def test_the_committed_notebook_has_no_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_the_tutorial_runs_without_an_error(kernel_of_this_python, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    client = NotebookClient(notebook, kernel_name=kernel_of_this_python, timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, at the first failing cell
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert len(shown) >= 3, "the heatmap, the latents and the generation show themselves as HTML"
    assert (work / "heatmap.html").is_file()
