"""AttnLRP, CP-LRP, Input × Gradient and Gradient: the library's own ``Explainer``, one backward pass each.

They explain exactly the score the evaluation flips (the target logit, or the logit difference with the
contrast, at the instance's position). The token score is what the method's ``token_score`` says, as
``Explainer`` reports it: Σ_d e·ĝ over the embedding dimension, or the gradient's L2 norm (``gradient``).
"""

from __future__ import annotations

from typing import Any

import torch

from ...explain import Explainer
from ..instance import TextInstance
from ._common import zero_unflippable


def explainer_relevance(explainer: Explainer, instance: TextInstance) -> tuple[torch.Tensor, dict[str, Any]]:
    explanation = explainer.explain(
        instance.input_ids, target=instance.target_id, contrast=instance.contrast_id, position=instance.position
    )
    relevance = zero_unflippable(explanation.relevance, instance)
    details = {"value": explanation.value, "relevance_sum": float(relevance.sum())}
    return relevance, details
