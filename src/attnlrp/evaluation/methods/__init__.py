"""The attribution methods the evaluation compares, behind one call: ``attribute(method, model, tokenizer, instance)``.

Every method explains the same scalar — the target's logit at the instance's position, or the logit
difference with the contrast — and returns one relevance value per token, float64 on the CPU, with special
(non-flippable) tokens at 0. ``METHOD_NAMES`` lists them in the order of the results table:

========================  =====================================================================  =============
name                      what                                                                   cost
========================  =====================================================================  =============
``attnlrp``               AttnLRP (``Explainer``)                                                1 fwd+bwd
``cp-lrp``                CP-LRP: attention probabilities and gates held constant                1 fwd+bwd
``input-x-gradient``      Σ_d x·∂f/∂x                                                            1 fwd+bwd
``gradient``              ‖∂f/∂x‖₂ per token                                                     1 fwd+bwd
``integrated-gradients``  captum IG from the zero embedding, steps doubled until complete (5 %)  32–96 fwd+bwd
``smoothgrad``            Σ_d x · mean gradient at x + N(0, σ²), captum NoiseTunnel              16 fwd+bwd
``attention``             last layer's attention row of the position, mean over heads            1 fwd
``rollout``               attention rollout (Abnar & Zuidema 2020)                               1 fwd
``atman``                 AtMan: score drop when attention to the token is suppressed (p = 0.9)  F+1 fwd
``occlusion``             score drop when the token is replaced by the neutral token (captum)    F+1 fwd
``kernel-shap``           captum KernelSHAP, neutral-token baseline, 64 coalitions               64 fwd
``random``                seeded uniform noise, a different draw per instance                    none
========================  =====================================================================  =============

(F: flippable tokens.) The first four are the library's method registry (:func:`attnlrp.core.method_names`, run
through ``Explainer``), so a method registered before this package is imported is compared too; the rest are
the evaluation's own baselines (captum's need the ``eval`` extra). Options are keyword arguments of the method
(``attribute("integrated-gradients", …, max_steps=256)``); ``batch_size`` (default 32) bounds every batched
forward pass. An unknown option raises.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ...core import method_names
from ...errors import ExplainError
from ...explain import Explainer
from ..instance import TextInstance, embedding_of, model_device, neutral_token_id
from . import attention_based, captum_based
from ._common import EmbeddingScorer, instance_seed, zero_unflippable
from .attention_based import eager_attention, rollout_matrix, suppression_masks
from .explainer_based import explainer_relevance

__all__ = [
    "METHOD_NAMES", "Attribution", "Attributor", "attribute", "eager_attention", "method_options", "rollout_matrix",
    "suppression_masks",
]



@dataclass(frozen=True)
class Attribution:
    """One method's relevance (T,) float64 on CPU for one instance, the wall-clock ``seconds`` it took, and
    method-specific ``details`` (e.g. IG's ``completeness_error`` and ``steps``)."""

    method: str
    relevance: torch.Tensor
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The attribution as plain JSON-ready values."""
        return {"method": self.method, "relevance": self.relevance.tolist(), "seconds": self.seconds,
                "details": self.details}


def _random(attributor: "Attributor", instance: TextInstance, *, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Uniform noise in [0, 1): the floor any method must beat; seeded, a different draw per instance."""
    generator = torch.Generator().manual_seed(instance_seed(seed, instance))
    return zero_unflippable(torch.rand(len(instance), generator=generator, dtype=torch.float64), instance), {}


def _explainer_method(name: str) -> Callable[..., tuple[torch.Tensor, dict]]:
    def run(attributor: "Attributor", instance: TextInstance) -> tuple[torch.Tensor, dict]:
        return explainer_relevance(attributor.explainer(name), instance)

    run.__doc__ = f"``{name}`` through attnlrp's Explainer."
    return run


def _ig(attributor: "Attributor", instance: TextInstance, **options: Any) -> tuple[torch.Tensor, dict]:
    return captum_based.integrated_gradients(EmbeddingScorer(attributor.model, instance), **options)


def _smoothgrad(attributor: "Attributor", instance: TextInstance, **options: Any) -> tuple[torch.Tensor, dict]:
    return captum_based.smoothgrad(EmbeddingScorer(attributor.model, instance), **options)


def _occlusion(attributor: "Attributor", instance: TextInstance, **options: Any) -> tuple[torch.Tensor, dict]:
    scorer = EmbeddingScorer(attributor.model, instance)
    return captum_based.occlusion(scorer, attributor.neutral_embedding(), **options)


def _kernel_shap(attributor: "Attributor", instance: TextInstance, **options: Any) -> tuple[torch.Tensor, dict]:
    scorer = EmbeddingScorer(attributor.model, instance)
    return captum_based.kernel_shap(scorer, attributor.neutral_embedding(), **options)


def _attention(attributor: "Attributor", instance: TextInstance) -> tuple[torch.Tensor, dict]:
    return attention_based.raw_attention(attributor.model, instance)


def _rollout(attributor: "Attributor", instance: TextInstance) -> tuple[torch.Tensor, dict]:
    return attention_based.rollout(attributor.model, instance)


def _atman(attributor: "Attributor", instance: TextInstance, **options: Any) -> tuple[torch.Tensor, dict]:
    return attention_based.atman(attributor.model, instance, **options)


#: method → (runner, the implementing function whose keyword-only parameters are the method's options): the
#: library's registered methods through ``Explainer``, then the evaluation's baselines.
_REGISTRY: dict[str, tuple[Callable[..., tuple[torch.Tensor, dict]], Callable[..., Any]]] = {
    **{name: (_explainer_method(name), explainer_relevance) for name in method_names()},
    "integrated-gradients": (_ig, captum_based.integrated_gradients),
    "smoothgrad": (_smoothgrad, captum_based.smoothgrad),
    "attention": (_attention, attention_based.raw_attention),
    "rollout": (_rollout, attention_based.rollout),
    "atman": (_atman, attention_based.atman),
    "occlusion": (_occlusion, captum_based.occlusion),
    "kernel-shap": (_kernel_shap, captum_based.kernel_shap),
    "random": (_random, _random),
}
METHOD_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""The methods the evaluation compares, in the order of the results table."""


def method_options(method: str) -> dict[str, Any]:
    """The options ``method`` takes and their defaults, e.g. ``{"steps": 32, "max_steps": 128, …}``."""
    _check_method(method)
    signature = inspect.signature(_REGISTRY[method][1])
    return {name: p.default for name, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_method(method: str) -> None:
    if method not in _REGISTRY:
        raise ExplainError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHOD_NAMES)}")


class Attributor:
    """Runs every method on one model and tokenizer, keeping what is costly to rebuild: one ``Explainer``
    per LRP-family method, the neutral token's embedding.

    ``neutral_id``: the token that stands for an absent token in occlusion and KernelSHAP (default
    :func:`~attnlrp.evaluation.neutral_token_id`); ``batch_size``: the default bound of batched passes.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, neutral_id: int | None = None, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.neutral_id = neutral_token_id(tokenizer) if neutral_id is None else int(neutral_id)
        self.batch_size = batch_size
        self._explainers: dict[str, Explainer] = {}
        self._neutral: torch.Tensor | None = None

    def explainer(self, method: str) -> Explainer:
        """The ``Explainer`` of a library method on this model (built once, then reused)."""
        if method not in self._explainers:
            self._explainers[method] = Explainer(self.model, self.tokenizer, method=method)
        return self._explainers[method]

    def neutral_embedding(self) -> torch.Tensor:
        """The input embedding of the neutral token (the baseline of the perturbation-based methods)."""
        if self._neutral is None:
            ids = torch.tensor([self.neutral_id], device=model_device(self.model))
            with torch.no_grad():
                self._neutral = embedding_of(self.model)(ids)[0].detach()
        return self._neutral

    def __call__(self, method: str, instance: TextInstance, **options: Any) -> Attribution:
        """Relevance of ``instance``'s tokens by ``method`` (one of ``METHOD_NAMES``)."""
        _check_method(method)
        if not isinstance(instance, TextInstance):
            raise ExplainError(f"expected a TextInstance, got {type(instance).__name__}")
        accepted = method_options(method)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ExplainError(
                f"{method} takes no option {', '.join(unknown)}; its options are: {', '.join(accepted) or 'none'}"
            )
        if "batch_size" in accepted and "batch_size" not in options:
            options["batch_size"] = self.batch_size
        instance.require_flippable()
        runner = _REGISTRY[method][0]
        start = time.perf_counter()
        relevance, details = runner(self, instance, **options)
        seconds = time.perf_counter() - start
        return Attribution(method, zero_unflippable(relevance, instance), seconds, dict(details))


_ATTRIBUTORS: "OrderedDict[tuple[int, int], Attributor]" = OrderedDict()
_CACHE_SIZE = 4


def attribute(method: str, model: nn.Module, tokenizer: Any, instance: TextInstance, **options: Any) -> Attribution:
    """Relevance of ``instance`` by ``method`` for ``model``; see the module docstring for methods and options.

    Reuses an :class:`Attributor` per (model, tokenizer) — the last few pairs are kept, so a loop over
    samples does not rebuild explainers. Hold an ``Attributor`` yourself to control that lifetime.
    """
    key = (id(model), id(tokenizer))
    attributor = _ATTRIBUTORS.get(key)
    if attributor is None or attributor.model is not model or attributor.tokenizer is not tokenizer:
        attributor = Attributor(model, tokenizer)
        _ATTRIBUTORS[key] = attributor
    _ATTRIBUTORS.move_to_end(key)
    while len(_ATTRIBUTORS) > _CACHE_SIZE:
        _ATTRIBUTORS.popitem(last=False)
    return attributor(method, instance, **options)
