"""Raw attention, attention rollout and AtMan: explanations read from (or made by editing) attention weights.

Attention weights come from the eager implementation (``output_attentions=True``; fused kernels do not
return them). :func:`eager_attention` switches one model to eager for the duration of a block and restores
every config's implementation on exit, so the caller's model is unchanged afterwards.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import nn

from ...errors import ExplainError
from ..instance import TextInstance, forward_accepts, model_device, position_logits, target_scores
from ._common import zero_unflippable

_MISSING = object()
_IMPLEMENTATION = "_attn_implementation_internal"


def _configs(model: nn.Module) -> list[Any]:
    """Every config of the model and its sub-models, sub-configs included, each once."""
    seen: dict[int, Any] = {}
    pending = [getattr(module, "config", None) for module in model.modules()]
    while pending:
        config = pending.pop()
        if config is None or id(config) in seen or not hasattr(config, "to_dict"):
            continue
        seen[id(config)] = config
        pending.extend(getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {})
    return list(seen.values())


_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
)


@contextlib.contextmanager
def _module_state_kept(model: nn.Module) -> Iterator[None]:
    """Remove on exit the hooks and plain attributes the block added to any module (transformers 5 installs
    output-capturing hooks, and a flag saying so, the first time a model returns attentions)."""
    before = {
        id(module): (set(module.__dict__), {name: set(getattr(module, name, {})) for name in _HOOK_DICTS})
        for module in model.modules()
    }
    try:
        yield
    finally:
        for module in model.modules():
            attributes, hooks = before.get(id(module), (set(), {}))
            for name in _HOOK_DICTS:
                table = getattr(module, name, None)
                if table is None:
                    continue
                for key in set(table) - hooks.get(name, set()):
                    del table[key]
            for key in set(module.__dict__) - attributes:
                del module.__dict__[key]


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with transformers' eager attention inside the block; leave it exactly as before on exit.

    Uses ``model.set_attn_implementation("eager")`` where transformers has it (4.5x and 5.x), else the
    config's ``_attn_implementation``; on exit each config's stored implementation is written back, and
    hooks or attributes added to modules inside the block are removed.
    """
    configs = _configs(model)
    saved = [(config, config.__dict__.get(_IMPLEMENTATION, _MISSING)) for config in configs]
    with _module_state_kept(model):
        with _implementation_restored(saved):
            config: Any = getattr(model, "config", None)  # a transformers model's (none on other modules)
            current = getattr(config, "_attn_implementation", "eager")
            if current != "eager":
                setter = getattr(model, "set_attn_implementation", None)
                if setter is not None:
                    setter("eager")
                else:
                    config._attn_implementation = "eager"
            yield


@contextlib.contextmanager
def _implementation_restored(saved: list[tuple[Any, Any]]) -> Iterator[None]:
    try:
        yield
    finally:
        for config, value in saved:
            if value is _MISSING:
                config.__dict__.pop(_IMPLEMENTATION, None)
            else:
                config.__dict__[_IMPLEMENTATION] = value


def attention_weights(model: nn.Module, instance: TextInstance) -> list[torch.Tensor]:
    """Each layer's attention probabilities (heads, T, T) in float64, from one eager forward pass."""
    ids = instance.input_ids.to(model_device(model)).unsqueeze(0)
    kwargs: dict[str, Any] = {"input_ids": ids, "output_attentions": True}
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    with eager_attention(model), torch.no_grad():
        try:
            output = model(**kwargs)
        except (TypeError, ValueError) as error:
            raise ExplainError(f"{type(model).__name__} cannot return attention weights: {error}") from error
    attentions = getattr(output, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ExplainError(
            f"{type(model).__name__} returned no attention weights even with eager attention and "
            "output_attentions=True; the attention and rollout baselines need a model that can return them"
        )
    return [a[0].detach().double().cpu() for a in attentions]


def raw_attention(model: nn.Module, instance: TextInstance) -> tuple[torch.Tensor, dict[str, Any]]:
    """The last layer's attention from the explained position to every token, mean over heads."""
    row = attention_weights(model, instance)[-1].mean(dim=0)[instance.position]
    return zero_unflippable(row, instance), {"special_mass": float(row[~instance.flippable].sum())}


def rollout_matrix(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema (2020): Ã_l = rownorm(0.5·mean_heads(A_l) + 0.5·I), rollout = Ã_L ··· Ã_1 (T, T)."""
    result = None
    for layer in attentions:
        mixed = 0.5 * layer.mean(dim=0) + 0.5 * torch.eye(layer.shape[-1], dtype=layer.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ExplainError("the model has no attention layers to roll out")
    return result


def rollout(model: nn.Module, instance: TextInstance) -> tuple[torch.Tensor, dict[str, Any]]:
    """Attention rollout through all layers, the row of the explained position."""
    row = rollout_matrix(attention_weights(model, instance))[instance.position]
    return zero_unflippable(row, instance), {"special_mass": float(row[~instance.flippable].sum())}


#: the additive attention bias standing for p = 1: exp(−10⁴) is 0 in every float type, and unlike −inf it
#: cannot turn a row with nothing else to attend to into NaN
_FULL_SUPPRESSION = -1e4


def suppression_masks(length: int, suppressed: list[int | None], p: float, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, T, T) additive masks: causal (−inf above the diagonal) plus log(1 − p) on the column of the
    suppressed token (none for ``None``), which multiplies its unnormalised attention weight exp(s) by 1 − p."""
    bias = _FULL_SUPPRESSION if p >= 1 else max(math.log1p(-p), _FULL_SUPPRESSION)
    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    masks = causal.repeat(len(suppressed), 1, 1)
    for row, column in enumerate(suppressed):
        if column is not None:
            masks[row, column:, column] += bias
    return masks.unsqueeze(1).to(dtype)


def atman(
    model: nn.Module, instance: TextInstance, *, p: float = 0.9, batch_size: int = 32
) -> tuple[torch.Tensor, dict[str, Any]]:
    """AtMan (Deb et al., NeurIPS 2023): relevance_i = f(x) − f(x with attention to token i suppressed).

    Suppression scales the unnormalised attention weight of every query to key ``i``, in every layer and
    head, by (1 − ``p``) — log(1 − p) added to the attention logits of column ``i`` through a 4-D additive
    attention mask (causal part included), which Hugging Face causal LMs take as is. ``p = 1`` removes the
    token from attention; ``p = 0`` changes nothing. f is the explained logit score (not the paper's
    cross-entropy, so that all methods explain the same quantity). One row per flippable token plus an
    unsuppressed reference row, ``batch_size`` rows per forward pass; the reference row is checked against a
    plain forward pass, so a model that ignores custom 4-D masks raises instead of returning noise.
    """
    if not 0 <= p <= 1:
        raise ExplainError(f"AtMan's suppression p must lie in [0, 1], got {p!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}")
    instance.require_flippable()
    device = model_device(model)
    ids = instance.input_ids.to(device).unsqueeze(0)
    dtype = next((q.dtype for q in model.parameters() if q.is_floating_point()), torch.float32)
    tokens = torch.nonzero(instance.flippable, as_tuple=False).squeeze(1).tolist()
    rows: list[int | None] = [None] + tokens
    scores = []
    with torch.no_grad():
        plain = target_scores(position_logits(model, instance.position, input_ids=ids), instance.target_id,
                              instance.contrast_id)[0]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            masks = suppression_masks(len(instance), chunk, p, dtype).to(device)
            try:
                logits = position_logits(model, instance.position, input_ids=ids.expand(len(chunk), -1),
                                         attention_mask=masks)
            except (RuntimeError, ValueError, TypeError) as error:
                raise ExplainError(f"{type(model).__name__} does not take a 4-D additive attention mask: {error}") from error
            scores.append(target_scores(logits, instance.target_id, instance.contrast_id)[0].cpu())
    scores_all = torch.cat(scores)
    reference = float(scores_all[0])
    tolerance = (1e-4 if dtype in (torch.float32, torch.float64) else 3e-2) * max(1.0, abs(float(plain)))
    if abs(reference - float(plain)) > tolerance:
        raise ExplainError(
            f"{type(model).__name__} ignores or alters a custom 4-D attention mask (score {reference:.6g} with the "
            f"mask, {float(plain):.6g} without); AtMan cannot suppress attention in this model"
        )
    rounding = 64 * torch.finfo(dtype).eps * max(1.0, abs(reference))
    if p > 0 and float((scores_all[1:] - reference).abs().max()) <= rounding:
        raise ExplainError(
            f"{type(model).__name__} ignores the attention mask: suppressing any token changes nothing; AtMan needs "
            "a model that applies a 4-D additive attention mask"
        )
    relevance = torch.zeros(len(instance), dtype=torch.float64)
    relevance[tokens] = reference - scores_all[1:].double()
    return relevance, {"p": p, "reference": reference}
