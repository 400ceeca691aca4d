"""Optional dependencies: `pip install attnlrp` brings what explaining needs, extras bring the rest, and a
missing extra fails with a message that names it."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from attnlrp.errors import MissingExtraError
from attnlrp.extras import EXTRAS, require
from attnlrp.render.image import heatmap_png

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_image_figure_without_matplotlib_names_the_vision_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingExtraError) as err:
        heatmap_png(io.BytesIO(), np.zeros((2, 2)))
    assert "attnlrp[vision]" in str(err.value) and "matplotlib" in str(err.value)
    assert isinstance(err.value, ImportError)  # code that catches ImportError keeps working


def test_image_figure_with_matplotlib_writes_a_png():
    pytest.importorskip("matplotlib")
    target = io.BytesIO()
    heatmap_png(target, np.arange(4.0).reshape(2, 2) - 1.5, image=np.zeros((4, 4, 3)), title="t")
    assert target.getvalue().startswith(b"\x89PNG")


def test_require_names_the_extra_and_rejects_unknown_extras():
    assert require("json", "serve").__name__ == "json"
    with pytest.raises(MissingExtraError, match=r"pip install 'attnlrp\[eval\]'") as err:
        require("attnlrp_no_such_module_xyz", "eval")
    assert "attnlrp_no_such_module_xyz" in str(err.value)
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", "no-such-extra")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the suite's venv has it
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings ('captum>=0.7' -> 'captum'; 'attnlrp[eval]' -> 'attnlrp')."""
    return {re.match(r"[A-Za-z0-9._-]+", r.strip()).group(0).lower() for r in requirements}


def test_pyproject_keeps_evaluation_and_plotting_out_of_the_core_dependencies():
    project = _pyproject()
    core, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert {"torch", "transformers", "accelerate", "safetensors", "gguf", "numpy", "tqdm"} <= core
    assert not {"captum", "matplotlib", "scikit-learn", "scipy", "starlette", "uvicorn"} & core
    assert {"captum", "scikit-learn", "matplotlib", "scipy"} <= _names(extras["eval"])
    assert "matplotlib" in _names(extras["vision"])
    assert {"starlette", "uvicorn"} <= _names(extras["serve"])
    assert set(EXTRAS) <= set(extras), "every extra attnlrp.extras can name is declared"
    assert "pandas" in _names(extras["pandas"]) and "pandas" not in core
    included = {e.strip() for r in extras["all"] if r.startswith("attnlrp[") for e in r[8:].rstrip("]").split(",")}
    assert {"eval", "vision", "serve", "pandas"} <= included, extras["all"]
    assert "pytest" in _names(extras["dev"]) and "attnlrp[all]" in extras["dev"], "`make test` gets every extra"


@pytest.mark.parametrize("constraints", ["constraints.txt", "constraints-transformers-4.57.txt"])
def test_every_dependency_and_extra_is_pinned_for_make_test(constraints):
    """`make test` installs '.[dev]' with ``-c constraints``: each package pyproject names has its pinned version."""
    project = _pyproject()
    named = _names(project["dependencies"]).union(*(_names(r) for r in project["optional-dependencies"].values()))
    text = (PYPROJECT.parent / constraints).read_text(encoding="utf-8")
    pinned = {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9._-]+)==", text, flags=re.MULTILINE)}
    assert named - {"attnlrp"} <= pinned, f"not pinned in {constraints}: {sorted(named - {'attnlrp'} - pinned)}"
