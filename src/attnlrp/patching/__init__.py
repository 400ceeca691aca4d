"""Relevance patching and circuits: which attention heads, MLPs, neurons and residual-stream positions carry a
behaviour, estimated for every component at once and checked against real activation patching.

* :func:`patch` — estimates for every component from two forward passes and one backward pass, with the gradient
  under the method's rules (``"gradient"``: attribution patching; ``"attnlrp"``, ``"cp-lrp"``: relevance patching);
* :func:`activation_patching` — the ground truth, batched (``PatchResult.verify`` compares the two);
* :func:`circuit` — rank components, keep the top N, measure how much of the clean − corrupted gap they recover,
  and the relevance edges between the kept components.

>>> from attnlrp.patching import patch
>>> result = patch(model, tokenizer, clean, corrupted, target=" Mary", contrast=" John")
>>> result.components()[:5]          # largest |estimate| first
>>> result.verify().agreement        # Pearson, Spearman, top-k overlap per level
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import make_lazy
from .names import CIRCUIT_LEVELS, DEFAULT_METHOD, LEVELS

if TYPE_CHECKING:  # imported on first use (attnlrp._lazy): `attnlrp patch --help` imports no torch
    from .agreement import Agreement, agreement
    from .circuits import Circuit, CircuitEdge, circuit
    from .estimate import ComponentEffect, PatchResult, patch
    from .truth import Verification, activation_patching

__all__ = [
    "CIRCUIT_LEVELS",
    "DEFAULT_METHOD",
    "LEVELS",
    "Agreement",
    "Circuit",
    "CircuitEdge",
    "ComponentEffect",
    "PatchResult",
    "Verification",
    "activation_patching",
    "agreement",
    "circuit",
    "patch",
]

make_lazy(__name__, {
    **dict.fromkeys(("Agreement", "agreement"), ".agreement"),
    **dict.fromkeys(("Circuit", "CircuitEdge", "circuit"), ".circuits"),
    **dict.fromkeys(("ComponentEffect", "PatchResult", "patch"), ".estimate"),
    **dict.fromkeys(("Verification", "activation_patching"), ".truth"),
})
