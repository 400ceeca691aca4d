"""attnlrp: AttnLRP (attention-aware Layer-wise Relevance Propagation) for Hugging Face transformers."""

from .audit import Audit, LedgerReport, UnhandledOperationError
from .engine import METHODS, LRPContext, lrp
from .explain import Explainer, ExplainError, explain
from .explanation import Explanation, Target

__all__ = [
    "METHODS",
    "Audit",
    "ExplainError",
    "Explainer",
    "Explanation",
    "LRPContext",
    "LedgerReport",
    "Target",
    "UnhandledOperationError",
    "explain",
    "lrp",
]
__version__ = "0.1.0"
