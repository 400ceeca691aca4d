"""AttnLRP as a captum attribution: ``AttnLRP(model).attribute(inputs_embeds, target=token_id)``.

``AttnLRP`` is gradient × input computed under attnlrp's rules (``attnlrp.core.ExplainedPass``): the forward pass
runs with the method's rules switched on for ``model``, the explained output is differentiated once, and the
attribution of each input feature is ``input × modified gradient``. Summed over the embedding, that is exactly
the relevance ``attnlrp.Explainer`` gives (same rules, same seed, read at full precision).

It follows captum's ``attribute(inputs, target=…, additional_forward_args=…)`` contract:

- ``inputs`` are input embeddings (``model.get_input_embeddings()(ids)``, one tensor or a tuple of tensors);
  token ids (or any integer tensor the forward turns into ids) are also taken: the relevance is then read at the
  output of ``layer`` (the input embeddings), as captum's layer methods do;
- ``target`` picks the explained value from the forward's output (a token id, a tuple, a tensor or a list, as
  in captum); the default forward (the model itself) outputs the scores of the next token, so ``target=token``
  explains that token's logit;
- ``additional_forward_args`` follow the inputs into the forward: for the default forward, positionally after
  ``input_ids`` (``(attention_mask,)``), or as one dict of keyword arguments.

**What is explained.** captum's LLM attribution explains the *log-probability* of each target token. Here the
default is the *logit*, like every attnlrp explainer (AttnLRP conserves the logit; a log-probability adds the
log-sum-exp over the whole vocabulary, which spreads relevance onto every competing token). The log-probability
is one argument away: ``AttnLRP(model, objective="log_prob")``.

**Inside ``LLMGradientAttribution``.** ``AttnLRP`` is a ``LayerGradientXActivation`` (the class captum's
``LLMGradientAttribution`` accepts) on the input embeddings. ``LLMGradientAttribution`` replaces the method's
forward function with its own ``GradientForwardFunc``, which returns the log-probability of the current target
token; with ``objective="logit"`` (the default) ``AttnLRP`` recognises that forward and runs the same input
assembly (the prompt, then the target tokens before the current one) but reads the logit instead; with
``objective="log_prob"`` it runs captum's forward unchanged. ``LLMAttributionResult.plot_token_attr()`` then
shows AttnLRP relevance.

>>> from captum.attr import LLMGradientAttribution, TextTokenInput
>>> from attnlrp.integrations.captum import AttnLRP
>>> llm_attr = LLMGradientAttribution(AttnLRP(model), tokenizer)
>>> result = llm_attr.attribute(TextTokenInput("Lisbon is the capital of", tokenizer), target=" Portugal")
>>> result.plot_token_attr()
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Literal, Union

import torch
from torch import nn

from ..core import ExplainedPass, LedgerReport, MethodSpec, get_method
from ..errors import ExplainError
from ..extras import require
from ..models.adapter import ModelAdapter

require("captum.attr", "captum")  # a MissingExtraError naming the extra, before the imports below could fail

from captum._utils.common import _select_targets  # noqa: E402  (captum's own target selection, as its methods use)
from captum.attr import LayerGradientXActivation, LLMGradientAttribution  # noqa: E402

Objective = Literal["logit", "log_prob"]
"""What the default forward explains of the next token's scores: the logit, or its log-probability."""
OBJECTIVES: tuple[str, ...] = ("logit", "log_prob")
"""The values of :data:`Objective`."""

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...]]


def apply_objective(scores: torch.Tensor, objective: str) -> torch.Tensor:
    """The explained scores over the vocabulary (last dimension): the logits themselves, or log-probabilities."""
    if objective == "logit":
        return scores
    if objective == "log_prob":
        return torch.log_softmax(scores, dim=-1)
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def _llm_forward_class() -> type | None:
    """captum's ``GradientForwardFunc`` (the forward ``LLMGradientAttribution`` installs, captum 0.9), if any."""
    try:
        module = importlib.import_module("captum.attr._core.llm_attr")
    except ImportError:
        return None
    found = getattr(module, "GradientForwardFunc", None)
    return found if isinstance(found, type) else None


def _installed_by_llm_attribution(forward: Any) -> bool:
    """Whether ``forward`` is the one an ``LLMGradientAttribution`` put in place (as a module holding it, or as
    its bound method in other captum versions)."""
    owners = (getattr(forward, "attr", None), getattr(forward, "__self__", None))
    return any(isinstance(owner, LLMGradientAttribution) for owner in owners)


class AttnLRP(LayerGradientXActivation):
    """AttnLRP (or another attnlrp method) as a captum gradient attribution.

    ``model``: the transformers model whose rules are switched on (and the default forward function).
    ``forward_func``: another forward, as in captum (it must run ``model``); its output is used as it is, so
    ``objective`` applies only to the default forward and to ``LLMGradientAttribution``'s.
    ``objective``: ``"logit"`` (default) or ``"log_prob"`` of the next token's scores.
    ``method``: an attnlrp method name (``attnlrp.method_names()``) or ``Method``; ``strict`` raises at the first
    non-linear operation without a rule. ``layer``: where relevance is read for integer inputs (default: the input
    embeddings).

    Attributions are float64 (gradient × input, read at full precision as attnlrp's explainers do), shaped like
    the inputs (embeddings) or like the layer's output (ids). ``ledgers`` holds the conservation ledger of each
    row of the last ``attribute`` call (inside ``LLMGradientAttribution``, on its copy: ``llm_attr.attr_method``).
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Any] | None = None,
        *,
        objective: Objective = "logit",
        method: MethodSpec = "attnlrp",
        strict: bool = False,
        layer: nn.Module | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"AttnLRP takes the transformers model (a torch.nn.Module), got {type(model).__name__}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        adapter = ModelAdapter.of(model)
        if layer is None:
            layer = adapter.embedding
            if layer is None:
                raise ExplainError(
                    f"{type(model).__name__} has no input embeddings (get_input_embeddings()); pass layer="
                )
        super().__init__(model if forward_func is None else forward_func, layer, multiply_by_inputs=True)
        self.model = model
        self.objective: str = objective
        self.method = get_method(method)
        self.strict = strict
        self.ledgers: list[LedgerReport] = []
        self._adapter = adapter

    # ----------------------------------------------------------------------------------------- attribute
    def attribute(
        self,
        inputs: Inputs,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> Inputs:
        """Gradient × input under the rules of ``method``, for the value ``target`` picks (one per row).

        Floating-point ``inputs`` are the embeddings the forward takes (the attributions have their shape);
        integer inputs are ids (or captum's interpretable tensor), and the attributions are read at ``layer``'s
        output. Returns a tensor, or a tuple when ``inputs`` is a tuple of embeddings (or ``layer`` ran more than
        once)."""
        if attribute_to_layer_input:
            raise ValueError("AttnLRP reads relevance at the output of the layer (the input embeddings)")
        is_tuple = isinstance(inputs, tuple)
        tensors = tuple(inputs) if isinstance(inputs, tuple) else (inputs,)
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError("inputs must be a tensor or a tuple of tensors")
        args = _as_tuple(additional_forward_args)
        rows = int(tensors[0].shape[0]) if tensors[0].dim() else 1
        embeddings = all(t.is_floating_point() for t in tensors)
        with ExplainedPass(self.model, self.method, strict=self.strict) as explained:
            explained.start(rows)
            if embeddings:
                pairs = [explained.leaf(t) for t in tensors]
                leaves = [leaf for leaf, _ in pairs]
                output = self._forward([fed for _, fed in pairs], args, embeddings=True)
            else:
                leaves = []

                def read_layer(module: nn.Module, module_inputs: Any, layer_output: torch.Tensor) -> torch.Tensor:
                    leaf, fed = explained.leaf(layer_output)
                    leaves.append(leaf)
                    return fed

                handle = self.layer.register_forward_hook(read_layer)
                try:
                    output = self._forward(list(tensors), args, embeddings=False)
                finally:
                    handle.remove()
                if not leaves:
                    raise ExplainError(f"the layer {type(self.layer).__name__} did not run in the forward pass")
            values = _select(output, target, rows)
            result = explained.backward(values, leaves)
        self.ledgers = list(result.ledgers)
        attributions = tuple(leaf.detach().double() * grad.double() for leaf, grad in zip(leaves, result.grads))
        if embeddings:
            return attributions if is_tuple else attributions[0]
        return attributions[0] if len(attributions) == 1 else attributions

    # ------------------------------------------------------------------------------------------- forward
    def _forward(self, tensors: list[torch.Tensor], args: tuple, *, embeddings: bool) -> Any:
        forward = self.forward_func
        if forward is self.model:
            return apply_objective(self._next_token_scores(tensors, args, embeddings), self.objective)
        if self.objective == "logit" and _installed_by_llm_attribution(forward):
            llm_forward = _llm_forward_class()
            if llm_forward is None or not isinstance(forward, llm_forward):
                raise ExplainError(
                    "this captum's LLMGradientAttribution forward is not the one AttnLRP reads the logit from "
                    "(captum 0.9's GradientForwardFunc); it explains log-probabilities: use "
                    "AttnLRP(model, objective='log_prob'), or install captum>=0.9"
                )
            return self._llm_logit(forward, tensors[0], *args)
        return forward(*tensors, *args)

    def _next_token_scores(self, tensors: list[torch.Tensor], args: tuple, embeddings: bool) -> torch.Tensor:
        """The model's scores at the last position (``(rows, vocabulary)``; a classifier's ``(rows, classes)``)."""
        if len(tensors) != 1:
            raise ExplainError("the model takes one input tensor; for several, pass a forward_func that takes them")
        kwargs = self._model_kwargs(args)
        kwargs["inputs_embeds" if embeddings else "input_ids"] = tensors[0]
        output = self.model(**kwargs)
        logits = getattr(output, "logits", None)
        if logits is None:
            logits = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(logits, torch.Tensor):
            raise ExplainError(f"{type(self.model).__name__} returned no logits; pass a forward_func that does")
        return logits[:, -1] if logits.dim() == 3 else logits

    def _model_kwargs(self, args: tuple) -> dict[str, Any]:
        """``additional_forward_args`` as keyword arguments of ``model.forward``: one dict as it is, otherwise
        positionally after its first parameter (``input_ids``), as ``model(ids, *args)`` would take them."""
        if len(args) == 1 and isinstance(args[0], dict):
            kwargs = dict(args[0])
        else:
            names = [
                p.name for p in inspect.signature(self.model.forward).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ][1:]
            if len(args) > len(names):
                raise ExplainError(f"{len(args)} additional forward arguments but {type(self.model).__name__}.forward "
                                   f"takes {len(names)} after the input")
            kwargs = dict(zip(names, args))
        for key, value in self._adapter.no_cache().items():
            kwargs.setdefault(key, value)
        return kwargs

    def _llm_logit(self, llm_forward: Any, tensor: torch.Tensor, inp: Any, target_tokens: torch.Tensor,
                   index: int) -> torch.Tensor:
        """What ``LLMGradientAttribution``'s forward computes (the prompt, then the target tokens before the
        current one), with the current target token's logit instead of its log-probability."""
        ids = llm_forward.attr._format_model_input(inp.to_model_input(tensor))["input_ids"]
        if index:
            before = target_tokens[:index].to(ids.device).unsqueeze(0).expand(ids.shape[0], -1)
            ids = torch.cat([ids, before], dim=1)
        logits = self.model(input_ids=ids, **self._adapter.no_cache()).logits[:, -1]
        return logits[:, int(target_tokens[index])]


def _as_tuple(args: Any) -> tuple:
    if args is None:
        return ()
    return tuple(args) if isinstance(args, tuple) else (args,)


def _select(output: Any, target: Any, rows: int) -> torch.Tensor:
    """One explained value per row: ``target`` picks it from the output as captum's methods do."""
    if not isinstance(output, torch.Tensor):
        raise ExplainError(f"the forward returned {type(output).__name__}, not a tensor of scores")
    values = output if target is None else _select_targets(output, target)
    if values.numel() != rows:
        raise ExplainError(
            f"the forward's output {tuple(output.shape)} gives {values.numel()} values for {rows} rows; "
            "pass target= to pick one value per row (a token id, for the default forward)"
        )
    return values.reshape(rows)


__all__ = ["OBJECTIVES", "AttnLRP", "Objective", "apply_objective"]
