"""attnlrp: AttnLRP (attention-aware Layer-wise Relevance Propagation) for Hugging Face transformers.

The public names below are imported on first use (:mod:`attnlrp._lazy`): ``import attnlrp`` itself imports no
torch, so that the command line answers ``--help`` and ``--version`` at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import make_lazy
from .errors import ExplainError, MissingExtraError, UnruledOperationWarning
from .method_registry import Method, method_names

if TYPE_CHECKING:
    from .core import Audit, ExplainedPass, LedgerReport, LRPContext, UnhandledOperationError, lrp
    from .explain import Explainer, explain
    from .explanation import Explanation, Target, explanations_to_pandas
    from .generation import GenerationExplanation, explain_generation

METHODS = method_names()
"""The names of the built-in methods (:func:`method_names` also lists methods registered later)."""

__all__ = [
    "METHODS",
    "Audit",
    "ExplainError",
    "ExplainedPass",
    "Explainer",
    "Explanation",
    "GenerationExplanation",
    "LRPContext",
    "LedgerReport",
    "Method",
    "MissingExtraError",
    "Target",
    "UnhandledOperationError",
    "UnruledOperationWarning",
    "explain",
    "explain_generation",
    "explanations_to_pandas",
    "lrp",
    "method_names",
]
__version__ = "0.1.0"

make_lazy(__name__, {
    **dict.fromkeys(("Audit", "ExplainedPass", "LedgerReport", "LRPContext", "UnhandledOperationError", "lrp"), ".core"),
    **dict.fromkeys(("Explainer", "explain"), ".explain"),
    **dict.fromkeys(("Explanation", "Target", "explanations_to_pandas"), ".explanation"),
    **dict.fromkeys(("GenerationExplanation", "explain_generation"), ".generation"),
})
