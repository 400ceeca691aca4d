"""Rules that apply to a whole module rather than to one torch call: activation layers (identity rule), the
γ-rule on linear layers, additive embeddings and biases (which absorb relevance), and which modules are norms.

Each ``*_forward`` builds a per-instance forward that the context installs (and restores); each ``*_hook``
is a forward hook the context registers (and removes).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import closed_forms, rules
from .audit import Audit
from .compat import forward_slot, materialised
from .dispatch import ROLE, foreign_function, requires_grad
from .ledger import Ledger, SharedSink

_ACTIVATION_MODULE_HOMES = ("transformers.activations", "torch.nn.modules.activation")
_NOT_ELEMENTWISE = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU", "ClassInstantier"}
#: layers the γ-rule applies to
GAMMA_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_activation_module(module: nn.Module) -> bool:
    """Element-wise activation layers: those of torch.nn and transformers.activations (GELU, SiLU, tanh…)."""
    cls = type(module)
    return cls.__module__ in _ACTIVATION_MODULE_HOMES and cls.__name__ not in _NOT_ELEMENTWISE


def is_norm_module(module: nn.Module) -> bool:
    """Layers that divide by a statistic of their own input: LayerNorm, RMSNorm and their per-model variants."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return True
    return "norm" in type(module).__name__.lower() and not list(module.children())


def identity_forward(module: nn.Module, audit: Audit, ledger: Ledger) -> Callable:
    """An activation module's forward under the identity rule; its output is marked as a gate."""
    original = getattr(module, forward_slot(module))
    label = type(module).__name__
    ratio = closed_forms.module_ratio(module)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not requires_grad(x):
            return original(x, *args, **kwargs)
        audit.cover("identity", label)
        y = rules.identity_rule(lambda t: original(t, *args, **kwargs), x, sink=ledger,
                                ratio=ratio if not (args or kwargs) else None)
        setattr(y, ROLE, "activation")
        return y

    return forward


def check_gamma(gamma: Mapping[str | type, float] | None) -> dict[str | type, float]:
    """γ per layer type, e.g. ``{"Conv2d": 0.25, "Linear": 0.05}`` (class names or classes)."""
    if gamma is None:
        return {}
    if not isinstance(gamma, Mapping):
        raise TypeError("gamma maps layer types to values, e.g. {'Conv2d': 0.25, 'Linear': 0.05}")
    for key, value in gamma.items():
        if not isinstance(key, (str, type)):
            raise TypeError(f"gamma keys are layer class names or classes, got {key!r}")
        if not isinstance(value, (int, float)) or value < 0 or value != value:
            raise ValueError(f"γ for {key} must be a number ≥ 0, got {value!r}")
    return dict(gamma)


def gamma_for(module: nn.Module, gamma: Mapping[str | type, float]) -> float | None:
    """The γ configured for ``module``'s type, if any (an error for a type the γ-rule does not apply to)."""
    for key, value in gamma.items():
        matches = isinstance(module, key) if isinstance(key, type) else type(module).__name__ == key
        if matches:
            if not isinstance(module, GAMMA_MODULES):
                raise TypeError(
                    f"the γ-rule applies to {', '.join(c.__name__ for c in GAMMA_MODULES)} layers, not "
                    f"{type(module).__name__}"
                )
            return value
    return None


def gamma_forward(module: nn.Module, gamma: float, audit: Audit, ledger: Ledger) -> Callable:
    """A Linear / convolution forward (one of ``GAMMA_MODULES``) under the generalised γ-rule."""
    if not isinstance(module, GAMMA_MODULES):
        raise TypeError(f"the γ-rule applies to {', '.join(m.__name__ for m in GAMMA_MODULES)}, "
                        f"not {type(module).__name__}")
    original = getattr(module, forward_slot(module))
    linear: Callable[..., torch.Tensor] = F.linear if isinstance(module, nn.Linear) else module._conv_forward
    label = f"{type(module).__name__} (γ={gamma})"

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not requires_grad(x):
            return original(x)
        audit.cover("γ-rule", label)
        return rules.gamma_rule(linear, x, module.weight, module.bias, gamma, sink=ledger)

    return forward


def absorbing_embedding_hook(
    audit: Audit, ledger: Ledger, leaves: list[torch.Tensor], rows: Callable[[], int | None]
) -> Callable:
    """Additive embeddings (positions, token types, relative position bias) take relevance like a bias: their
    output becomes a leaf of its own (collected in ``leaves``) whose relevance the ledger counts."""

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not output.is_floating_point():
            return output
        batch = rows()
        if batch is not None and output.dim() >= 2 and output.shape[0] == 1 and batch > 1:
            output = output.expand(batch, *output.shape[1:])  # positions computed once for the whole batch
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        audit.cover("absorbs like a bias", type(module).__name__)
        batched = batch is None or (output.dim() >= 2 and output.shape[0] == batch)
        return rules.tap(leaf, ledger if batched else SharedSink(ledger), "embeddings", +1.0)

    return hook


def is_element_wise(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Numerically: ``function`` maps each element on its own (it commutes with a permutation of all elements
    and keeps the shape). Softmax, norms and projections fail this; GELU-like activations pass."""
    with torch.no_grad():
        sample = x.detach()[:1]
        order = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0)).to(sample.device)
        y = function(sample)
        if not isinstance(y, torch.Tensor) or y.shape != sample.shape:
            return False
        permuted = function(sample.reshape(-1)[order].reshape(sample.shape))
        return bool(torch.allclose(permuted.reshape(-1), y.reshape(-1)[order], rtol=1e-4, atol=1e-6))


def custom_function_hook(audit: Audit, ledger: Ledger, report: Callable[[torch.Tensor], None]) -> Callable:
    """A forward hook (``with_kwargs=True``) for every module: an output made by a foreign autograd Function gets the identity rule
    when the module maps one input element-wise (verified numerically, once per module), and is reported
    (``report(output)``) otherwise."""
    element_wise: dict[int, bool] = {}

    def hook(module: nn.Module, args: Any, kwargs: dict, output: Any) -> Any:
        cls = foreign_function(output) if requires_grad(output) else None
        if cls is None:
            return None
        x = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None
        if x is not None and requires_grad(x) and x.shape == output.shape:
            run = getattr(module, forward_slot(module))
            if id(module) not in element_wise:
                element_wise[id(module)] = is_element_wise(run, x)
            if element_wise[id(module)]:
                audit.cover("identity (custom autograd Function)", f"{cls.__name__} in {type(module).__name__}")
                y = rules.identity_rule(run, x, sink=ledger)  # the Function's own backward is left out
                setattr(y, ROLE, "activation")
                return y
        report(output)
        return None

    return hook


def bias_dim(module: nn.Module) -> int:
    """The output dimension a 1-D bias is added along: channels (dim 1) for convolutions, else the last."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def bias_hook(ledger: Ledger, channel_dim: int) -> Callable:
    """A module's bias absorbs ``Σ b_c ĝ_c``: report it to the ledger during backward."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        channel = channel_dim % output.dim()
        b = materialised(module, "bias").detach()

        def absorb(g: torch.Tensor) -> None:
            # Σ b_c ĝ_{…c…} per row: sum ĝ over positions first, then one small dot product
            others = [d for d in range(1, g.dim()) if d != channel]
            per_channel = g.sum(dim=others) if others else g
            dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
            ledger.absorb("bias", (per_channel.to(dtype) @ b.to(dtype)).reshape(-1))

        output.register_hook(absorb)

    return hook
