"""The package is typed: it ships ``py.typed`` (PEP 561), and mypy finds no error in src/ with the settings of
pyproject.toml's ``[tool.mypy]``.

mypy keeps its incremental cache in pytest's cache folder (.pytest_cache, never committed): the first run in a
fresh clone checks everything (about a minute on 2 cores, most of it reading torch and transformers), later runs
only what changed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_says_it_is_typed():
    import attnlrp

    assert (Path(attnlrp.__file__).parent / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'attnlrp = ["py.typed"]' in pyproject, "py.typed is package data, so that wheels carry it"


def test_mypy_finds_no_error_in_src(request, tmp_path):
    # pytest's cache folder when its cache plugin is on (-p no:cacheprovider turns it off): a fresh folder then
    cache = request.config.cache.mkdir("mypy") if getattr(request.config, "cache", None) else tmp_path / "mypy"
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, f"mypy: errors (settings: pyproject.toml [tool.mypy]):\n{done.stdout}{done.stderr}"
