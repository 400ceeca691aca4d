"""The names the command line needs before any work (no torch here): the default method and the levels."""

from __future__ import annotations

DEFAULT_METHOD = "attnlrp"
"""The method ``patch`` and ``circuit`` use unless told otherwise (docs/patching.md has the evidence)."""

LEVELS = ("heads", "mlps", "neurons", "residual")
"""The levels of components that ``patch`` estimates, in report order."""

CIRCUIT_LEVELS = ("heads", "mlps", "neurons")
"""The levels a circuit can be made of (whole MLPs and their neurons exclude each other)."""
