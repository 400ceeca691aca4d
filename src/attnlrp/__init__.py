"""attnlrp: AttnLRP (attention-aware Layer-wise Relevance Propagation) for Hugging Face transformers."""

from .core import Audit, ExplainedPass, LedgerReport, LRPContext, Method, UnhandledOperationError, lrp, method_names
from .errors import ExplainError, MissingExtraError, UnruledOperationWarning
from .explain import Explainer, explain
from .explanation import Explanation, Target, explanations_to_pandas
from .generation import GenerationExplanation, explain_generation

#: the names of the built-in methods (``attnlrp.method_names()`` also lists methods registered later)
METHODS = method_names()

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
