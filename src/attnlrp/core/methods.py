"""The attribution methods, one frozen ``Method`` each, in one registry: :mod:`attnlrp.method_registry`, seen
from the engine, where plug-ins import it too (``from attnlrp.core.methods import Method, register``).

The registry itself lives outside ``attnlrp.core`` and imports no torch, so that the command line lists the
methods in ``--help`` without importing torch; this module and that one are the same registry.
"""

from __future__ import annotations

from ..method_registry import (
    ATTNLRP,
    CP_LRP,
    GRADIENT,
    INPUT_X_GRADIENT,
    Method,
    MethodSpec,
    ProductTreatment,
    TokenScore,
    get_method,
    method_names,
    register,
    relevance_per_token,
    unregister,
)

__all__ = [
    "ATTNLRP",
    "CP_LRP",
    "GRADIENT",
    "INPUT_X_GRADIENT",
    "Method",
    "MethodSpec",
    "ProductTreatment",
    "TokenScore",
    "get_method",
    "method_names",
    "register",
    "relevance_per_token",
    "unregister",
]
