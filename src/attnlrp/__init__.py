"""attnlrp: AttnLRP (attention-aware Layer-wise Relevance Propagation) for Hugging Face transformers."""

from .audit import Audit, LedgerReport, UnhandledOperationError
from .engine import METHODS, LRPContext, lrp
from .explain import Explainer, ExplainError, explain
from .explanation import Explanation, Target
from .generation import GenerationExplanation, explain_generation

__all__ = [
    "METHODS",
    "Audit",
    "ExplainError",
    "Explainer",
    "Explanation",
    "GenerationExplanation",
    "LRPContext",
    "LedgerReport",
    "Target",
    "UnhandledOperationError",
    "explain",
    "explain_generation",
    "lrp",
]
__version__ = "0.1.0"
