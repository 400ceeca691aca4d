"""Compatibility with how models are run around us: accelerate's offloading and transformers' gradient
checkpointing. Kept apart from the rules so the context only has to ask, never to know the details."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def forward_slot(module: nn.Module) -> str:
    """Where ``module``'s own computation lives: ``_old_forward`` under an accelerate hook, else ``forward``.

    A module dispatched by accelerate keeps its computation in ``_old_forward`` and wraps it in ``forward``
    (load the offloaded weights, run, offload again): a rule that overrides the computation takes the inner
    slot, so the wrapper still materialises the weights the rule reads.
    """
    if "_hf_hook" in module.__dict__ and "_old_forward" in module.__dict__:
        return "_old_forward"
    return "forward"


def materialised(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter's values, also when accelerate has offloaded it (``meta`` between its forward passes)."""
    tensor = getattr(module, name)
    if tensor.device.type == "meta":
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        if weights is None:
            raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload map holds it")
        tensor = weights[name].to(getattr(hook, "execution_device", None) or "cpu")
    return tensor


def is_checkpointed(module: nn.Module) -> bool:
    """A transformers layer with gradient checkpointing switched on (``gradient_checkpointing_enable()``)."""
    return bool(module.__dict__.get("gradient_checkpointing")) and "_gradient_checkpointing_func" in module.__dict__


def rule_recomputation(module: nn.Module, run_ruled: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[[], None]:
    """Gradient checkpointing re-runs a layer's forward during backward, outside any forward hook: wrap the
    layer's checkpoint function (per instance) so that ``run_ruled(function)`` runs the re-run under the rules.
    Returns the undo."""
    original = module.__dict__["_gradient_checkpointing_func"]
    # setattr: nn.Module's attribute type (Tensor | Module) does not cover a plain function
    setattr(module, "_gradient_checkpointing_func",
            lambda function, *args, **kwargs: original(run_ruled(function), *args, **kwargs))
    return lambda: setattr(module, "_gradient_checkpointing_func", original)
