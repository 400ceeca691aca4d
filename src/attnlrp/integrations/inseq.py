"""AttnLRP as an inseq attribution method: importing this module registers ``"attnlrp"`` in inseq's registry.

>>> import inseq
>>> import attnlrp.integrations.inseq  # registers the method (once per process)
>>> model = inseq.load_model(hf_model, "attnlrp", tokenizer=tokenizer)
>>> out = model.attribute("Lisbon is the capital of", generation_args={"max_new_tokens": 2})
>>> out.show()

inseq finds its methods by subclass: every subclass of its ``FeatureAttribution`` with a ``method_name`` is
listed by ``inseq.list_feature_attribution_methods()`` and loaded by name. ``AttnLRPAttribution`` is such a
subclass; it exists once this module is imported (inseq has no plug-in entry points, so ``import attnlrp``
alone cannot register it without importing inseq every time).

Each generation step runs ``attnlrp.integrations.captum.AttnLRP`` on inseq's forward (the model on the step's
input embeddings, then inseq's attributed function), and the relevance is summed over the embedding: one signed
score per token (a coarse attribution, shown as it is, with no norm taken). With this method the model's default
attributed function is the **logit** of the generated token (inseq's own default is its probability), so that
``attribute(...)`` gives, for every generated token, the row ``attnlrp.explain_generation`` gives (on the same
ids: inseq tokenizes the prompt itself and prepends no BOS the tokenizer does not add, so compare with
``add_bos=False``); pass
``attributed_fn="probability"`` (or any inseq step function) to explain something else. Encoder-decoders work
the same way (tested on BART, with ``attribute_target=True`` for the decoder prefix).

``inseq.load_model(model, "attnlrp", tokenizer=…, lrp_method="cp-lrp")`` picks another attnlrp method
(``attnlrp.method_names()``); ``strict=True`` raises at the first non-linear operation without a rule.
"""

from __future__ import annotations

from typing import Any

from ..core import MethodSpec
from ..extras import require

require("inseq", "inseq")  # a MissingExtraError naming the extra, before the imports below could fail

from inseq.attr.attribution_decorators import set_hook, unset_hook  # noqa: E402
from inseq.attr.feat.attribution_utils import get_source_target_attributions  # noqa: E402
from inseq.attr.feat.gradient_attribution import GradientAttributionRegistry  # noqa: E402
from inseq.data import CoarseFeatureAttributionStepOutput  # noqa: E402

from .captum import AttnLRP  # noqa: E402  (inseq brings captum)

DEFAULT_ATTRIBUTED_FN = "logit"
"""The attributed function this method makes the model's default (inseq's step function of the target's logit)."""


class AttnLRPAttribution(GradientAttributionRegistry):
    """inseq's ``"attnlrp"`` method: attnlrp relevance for every generated token (see the module docstring)."""

    method_name = "attnlrp"

    def __init__(self, attribution_model: Any, lrp_method: MethodSpec = "attnlrp", strict: bool = False,
                 **kwargs: Any) -> None:
        self._previous_default: str | None = None
        super().__init__(attribution_model, **kwargs)
        self.method = AttnLRP(attribution_model.model, forward_func=attribution_model, method=lrp_method,
                              strict=strict)

    @set_hook
    def hook(self, **kwargs: Any) -> None:
        """inseq's hook for gradient methods, and the logit as the model's default attributed function."""
        super().hook(**kwargs)
        model = self.attribution_model
        if self._previous_default is None:
            self._previous_default = model.default_attributed_fn_id
        # inseq's public setter is declared under another name (`set_attributed_fn`), so the property cannot be
        # assigned: the attribute behind it is
        model._default_attributed_fn_id = DEFAULT_ATTRIBUTED_FN

    @unset_hook
    def unhook(self, **kwargs: Any) -> None:
        """inseq's unhook, and the model's default attributed function as it was."""
        super().unhook(**kwargs)
        if self._previous_default is not None:
            self.attribution_model._default_attributed_fn_id = self._previous_default
            self._previous_default = None

    def attribute_step(self, attribute_fn_main_args: dict[str, Any], attribution_args: dict[str, Any] = {}) -> Any:
        """One generation step: relevance per token (summed over the embedding), for the source and the prefix."""
        attributions = self.method.attribute(**attribute_fn_main_args, **attribution_args)
        if not isinstance(attributions, tuple):
            attributions = (attributions,)
        per_token = tuple(a.sum(dim=-1) for a in attributions)
        source, target = get_source_target_attributions(per_token, self.attribution_model.is_encoder_decoder)
        return CoarseFeatureAttributionStepOutput(
            source_attributions=source, target_attributions=target, step_scores={}
        )


__all__ = ["DEFAULT_ATTRIBUTED_FN", "AttnLRPAttribution"]
