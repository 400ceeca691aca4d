"""The engine: methods, the rule table, the per-model context that switches rules on, the conservation ledger
and the explained pass every explainer runs. Nothing here knows about tokenizers, heads or file formats."""

from .audit import Audit, UnhandledOp, UnhandledOperationError, warn_unruled
from .context import LRPContext, lrp
from .explained_pass import BackwardResult, ExplainedPass
from .ledger import Ledger, LedgerReport, SharedAbsorptionError
# the registry (also as attnlrp.core.methods) lives outside core and imports no torch: the command line lists the
# methods without it
from ..method_registry import Method, MethodSpec, get_method, method_names, register, relevance_per_token, unregister

__all__ = [
    "Audit",
    "BackwardResult",
    "ExplainedPass",
    "LRPContext",
    "Ledger",
    "LedgerReport",
    "Method",
    "MethodSpec",
    "SharedAbsorptionError",
    "UnhandledOp",
    "UnhandledOperationError",
    "get_method",
    "lrp",
    "method_names",
    "register",
    "relevance_per_token",
    "unregister",
    "warn_unruled",
]
