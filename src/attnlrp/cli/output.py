"""What every command shares in how it reports warnings: the one about operations without a rule becomes one line
on standard error; every other warning takes the normal way through the warning filters."""

from __future__ import annotations

import sys
import warnings
from typing import Callable, TextIO, TypeVar

from ..errors import UnruledOperationWarning

T = TypeVar("T")


def report_unruled_operations(run: Callable[[], T]) -> T:
    """Run ``run``; each ``UnruledOperationWarning`` becomes ``warning: …`` on standard error, as it is raised (so
    none is lost when ``run`` fails afterwards), and any other warning goes to the usual ``warnings.showwarning``
    under the filters in force (``-W``, ``PYTHONWARNINGS``), neither swallowed nor forced on."""
    show_other = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, UnruledOperationWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and ``showwarning`` afterwards
        warnings.simplefilter("always", UnruledOperationWarning)
        warnings.showwarning = show
        return run()
