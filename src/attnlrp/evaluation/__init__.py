"""Faithfulness evaluation: token-flipping curves, ABPC, the attribution methods compared, paired statistics.

>>> from attnlrp.evaluation import Attributor, text_instance, flip_curves_many, METHOD_NAMES
>>> instance = text_instance(tokenizer, "Lisbon is the capital of", model=model)   # target: the prediction
>>> attributor = Attributor(model, tokenizer)
>>> relevances = {m: attributor(m, instance).relevance for m in METHOD_NAMES}
>>> curves = flip_curves_many(model, instance, relevances, mode="replace", tokenizer=tokenizer)
>>> curves["attnlrp"].abpc(), curves["attnlrp"].abpc("logprob")

Per-sample ABPCs of two methods are compared with :func:`paired_difference` (mean and 95 % t-interval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import make_lazy

if TYPE_CHECKING:  # imported on first use (attnlrp._lazy): `attnlrp evaluate --help` imports no torch
    from .instance import TextInstance, neutral_token_id, position_logits, target_scores, text_instance
    from .methods import METHOD_NAMES, Attribution, Attributor, attribute, eager_attention, method_options
    from .perturbation import MODES, SCORES, FlipCurves, flip_curves, flip_curves_many, flip_order, flip_schedule
    from .stats import Interval, mean_interval, paired_difference, paired_differences, t_quantile

__all__ = [
    "TextInstance", "text_instance", "neutral_token_id", "position_logits", "target_scores",
    "METHOD_NAMES", "Attribution", "Attributor", "attribute", "eager_attention", "method_options",
    "MODES", "SCORES", "FlipCurves", "flip_curves", "flip_curves_many", "flip_order", "flip_schedule",
    "Interval", "mean_interval", "paired_difference", "paired_differences", "t_quantile",
]

make_lazy(__name__, {
    **dict.fromkeys(("TextInstance", "text_instance", "neutral_token_id", "position_logits", "target_scores"),
                    ".instance"),
    **dict.fromkeys(("METHOD_NAMES", "Attribution", "Attributor", "attribute", "eager_attention", "method_options"),
                    ".methods"),
    **dict.fromkeys(("MODES", "SCORES", "FlipCurves", "flip_curves", "flip_curves_many", "flip_order",
                     "flip_schedule"), ".perturbation"),
    **dict.fromkeys(("Interval", "mean_interval", "paired_difference", "paired_differences", "t_quantile"), ".stats"),
})
