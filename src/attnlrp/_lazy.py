"""Packages whose public names are imported on first use, so that importing the package stays cheap: ``import
attnlrp`` (and with it the command line's ``--help`` and ``--version``) imports no torch until a name that needs
it is used. A package calls :func:`make_lazy` at the end of its ``__init__`` and imports the same names under
``typing.TYPE_CHECKING`` for type checkers."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Mapping


class LazyPackage(ModuleType):
    """A package whose names in ``_lazy_origins`` (name → module, relative to the package) are imported from their
    module on first use, then kept.

    A public name that is also the name of a submodule (the function ``attnlrp.explain`` and the module
    ``attnlrp/explain.py``) stays the public name when the import system binds the submodule to the package, as it
    does whenever the submodule is first imported, so ``attnlrp.explain`` is the function however it was reached.
    """

    def __getattr__(self, name: str) -> Any:  # only called when the name is not (yet) in the package
        origin = self.__dict__.get("_lazy_origins", {}).get(name)
        if origin is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(origin, self.__name__), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        origins = self.__dict__.get("_lazy_origins", {})
        if isinstance(value, ModuleType) and name in origins and value.__name__ == f"{self.__name__}.{name}":
            value = getattr(value, name)  # the submodule being bound: the package keeps its public name
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_lazy_origins", {})))


def make_lazy(package: str, origins: Mapping[str, str]) -> None:
    """Make the (imported) package ``package`` a :class:`LazyPackage` that imports each of ``origins``' names from
    its module (``".core"``: relative to the package) on first use."""
    module = sys.modules[package]
    module.__dict__["_lazy_origins"] = dict(origins)
    module.__class__ = LazyPackage
