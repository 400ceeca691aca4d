"""The API reference (docs/api/, ``make docs``): every public name has a docstring, the reference covers every
public module and every module the docs import from, and the committed reference is what the docstrings give now.

The public modules and the builder are scripts/api_docs.py's (``MODULES``, ``build``, ``missing_docstrings``).
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the builder lives in scripts/

import api_docs  # noqa: E402

#: the packages whose ``__all__`` is the library's interface: each has its page
PACKAGES = ("attnlrp", "attnlrp.core", "attnlrp.latent", "attnlrp.models", "attnlrp.evaluation", "attnlrp.concepts",
            "attnlrp.integrations")
#: the docs whose code imports from attnlrp
DOCS = ("README.md", "docs/quickstart.md", "docs/design.md", "docs/extending.md", "docs/distributed.md",
        "docs/gpu.md")
#: the command line's plug-in interface (docs/extending.md) is documented there and by ``attnlrp --help``
NOT_IN_THE_REFERENCE = ("attnlrp.cli",)


def test_every_public_name_has_a_docstring():
    missing = api_docs.missing_docstrings()
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def _imports_in_docs() -> dict[str, set[str]]:
    """Module → the names the docs' code imports from it (``import attnlrp.x``: the module itself, no name)."""
    found: dict[str, set[str]] = {}
    for path in DOCS:
        text = (ROOT / path).read_text(encoding="utf-8")
        for module, names in re.findall(r"^\s*from (attnlrp[\w.]*) import ([\w, ()]+)", text, flags=re.M):
            found.setdefault(module, set()).update(n.strip() for n in names.strip("()").split(",") if n.strip())
        for module in re.findall(r"^\s*import (attnlrp[\w.]*)", text, flags=re.M):
            found.setdefault(module, set())
    return found


def test_the_reference_covers_the_public_modules_and_what_the_docs_import():
    assert set(PACKAGES) <= set(api_docs.MODULES)
    documented = api_docs.documented_modules()
    names = {member for doc in documented.values() for member in doc.members}
    uncovered = []
    for module, imported in sorted(_imports_in_docs().items()):
        if module.startswith(NOT_IN_THE_REFERENCE):
            continue
        if not imported and module not in documented:
            uncovered.append(module)
        for name in imported:
            target = importlib.import_module(module)
            value = getattr(target, name)
            if isinstance(value, types.ModuleType):
                if value.__name__ not in documented:
                    uncovered.append(value.__name__)
            elif name not in names:
                uncovered.append(f"{module}.{name}")
    assert not uncovered, f"the docs use these, and the API reference does not document them: {uncovered}"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_committed_reference_is_up_to_date(tmp_path):
    """Built into a temporary folder without a warning from pdoc, byte for byte the committed docs/api/."""
    problems = api_docs.build(tmp_path / "api")
    assert not problems, "pdoc could not document everything:\n" + "\n".join(problems)
    built, committed = _files(tmp_path / "api"), _files(ROOT / "docs" / "api")
    pages = {name.removesuffix(".html").replace("/", ".") for name in built} - {"index"}
    assert pages == set(api_docs.MODULES), pages
    if built == committed:
        return
    report = ["docs/api/ differs from what the docstrings give now: run `make docs` and commit docs/api/."]
    for name in sorted(set(built) | set(committed)):
        if name not in committed:
            report.append(f"missing: docs/api/{name}")
        elif name not in built:
            report.append(f"no longer generated: docs/api/{name}")
        elif built[name] != committed[name]:
            diff = difflib.unified_diff(committed[name].decode().splitlines(), built[name].decode().splitlines(),
                                        f"docs/api/{name}", "built", n=1, lineterm="")
            report.append("\n".join(list(diff)[:40]))
    pytest.fail("\n".join(report))
