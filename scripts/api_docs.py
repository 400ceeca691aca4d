"""The API reference in docs/api/: HTML pages that pdoc generates from the docstrings of the public modules.

    python scripts/api_docs.py [--output docs/api]      (``make docs``)

The public modules are those of :data:`MODULES`; each page lists its module's ``__all__`` (every public name of a
module without one). tests/test_api_docs.py builds the reference into a temporary folder and compares it with the
committed docs/api/, and checks that every public name, and every public method and property of a public class,
has a docstring (:func:`missing_docstrings`). Pages leave out the source code (and the search index), so that
they change only when a signature or a docstring does.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pdoc.doc
import pdoc.render

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "api"

#: The public modules: the packages whose ``__all__`` is the library's interface (attnlrp, core, latent, models,
#: serve, evaluation, concepts, patching, integrations), the integrations themselves, and the modules the docs name
#: as extension points (rules and dispatch for custom rules, targets for target kinds, vision for images).
MODULES = (
    "attnlrp",
    "attnlrp.core",
    "attnlrp.core.rules",
    "attnlrp.core.dispatch",
    "attnlrp.targets",
    "attnlrp.vision",
    "attnlrp.latent",
    "attnlrp.models",
    "attnlrp.evaluation",
    "attnlrp.concepts",
    "attnlrp.patching",
    "attnlrp.serve",
    "attnlrp.integrations",
    "attnlrp.integrations.captum",
    "attnlrp.integrations.inseq",
)


def _imported_from(module: object) -> dict[str, str]:
    """Name → the module a package's ``__init__`` imports it from (``from .base import KINDS``), read from its
    source (imports under ``TYPE_CHECKING`` included: lazy packages import their names there for type checkers)."""
    path = getattr(module, "__file__", None)
    if not path:
        return {}
    package = module.__name__ if path.endswith("__init__.py") else module.__name__.rpartition(".")[0]
    found = {}
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                found[alias.asname or alias.name] = base
    return found


def documented_modules() -> dict[str, pdoc.doc.Module]:
    """pdoc's view of each public module, with the docstrings of re-exported variables filled in.

    pdoc reads a variable's docstring (the string literal after its assignment) from the module it documents;
    for a name a package re-exports (``attnlrp.models.KINDS``) that is the module it was imported from."""
    docs = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):
            getattr(module, public)  # a lazy package imports its names on first use: pdoc looks in __dict__
        docs[name] = pdoc.doc.Module.from_name(name)
    for name, doc in docs.items():
        origins = _imported_from(doc.obj)
        for member in doc.members.values():
            if not isinstance(member, pdoc.doc.Variable):
                continue
            if not member.docstring and member.name in origins:
                origin = pdoc.doc.Module.from_name(origins[member.name])
                member.docstring = origin._var_docstrings.get(member.name, "")
            if "<function" in member.default_value_str:
                # a registry of functions (OPERATION_RULES): its contents are what was registered, not an interface
                member.default_value_str = ""  # an instance attribute over pdoc's cached_property
    return docs


def missing_docstrings() -> list[str]:
    """The public names without a docstring: module members (``__all__``), and the public methods and properties
    of public classes (inherited ones included, where they come from attnlrp)."""
    missing = []
    for name, module in documented_modules().items():
        if not module.docstring.strip():
            missing.append(name)
        for member in module.members.values():
            if member.name.startswith("_"):
                continue
            if not member.docstring.strip():
                missing.append(member.fullname)
            if isinstance(member, pdoc.doc.Class):
                for attribute in member.members.values():
                    if attribute.name.startswith("_") or not attribute.taken_from[0].startswith("attnlrp"):
                        continue
                    if isinstance(attribute, pdoc.doc.Variable) and not isinstance(
                            inspect.getattr_static(member.obj, attribute.name, None), property):
                        continue  # a field or an attribute: the class's docstring describes it
                    if not attribute.docstring.strip():
                        missing.append(f"{member.fullname}.{attribute.name}")
    return sorted(set(missing))


def build(output: Path) -> list[str]:
    """Write the reference into ``output`` (replaced whole); returns the warnings pdoc gave (an annotation it could
    not resolve, a name it could not find), which leave a page incomplete."""
    pdoc.render.configure(docformat="restructuredtext", show_source=False, search=False,
                          footer_text="attnlrp API reference (make docs)")
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as scratch:
        warnings.simplefilter("always")
        modules = documented_modules()
        # pdoc.pdoc() without its walk over submodules: exactly the public modules, each once
        for module in modules.values():
            page = Path(scratch) / f"{module.fullname.replace('.', '/')}.html"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(pdoc.render.html_module(module, modules), encoding="utf-8")
        (Path(scratch) / "index.html").write_text(pdoc.render.html_index(modules), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(scratch, output)
    return [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder to write (default: docs/api)")
    args = parser.parse_args(argv)
    problems = build(args.output)
    print(f"API reference written to {args.output}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
