"""Closed forms of ``f(x)/x`` for the common activations, so the identity rule needs no division.

The identity rule passes ``ĝ(x) = ĝ(y) ⊙ f(x)/x`` back. For an arbitrary ``f`` that ratio is computed as a
stabilised division, and ``f(0)`` is evaluated once per call to find a constant offset (a host synchronisation
on a GPU). For the activations transformer models use, ``f(x) = x · s(x)`` with a known ``s``: SiLU → sigmoid,
ReLU → step, GELU → the normal CDF Φ (or its tanh approximation), QuickGELU → sigmoid(1.702 x). ``s`` is the
exact ratio (also at 0, where the division had to be stabilised), costs one kernel, and ``f(0) = 0`` is known.

Only forms that equal ``f(x)/x`` exactly are listed; ``tests/test_rules.py`` checks each against ``f`` itself.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

Ratio = Callable[[torch.Tensor], torch.Tensor]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _step(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).to(x.dtype)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))


def _normal_cdf_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x.pow(3))))


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(1.702 * x)


#: Functional activations (the name under which ``torch.nn.functional`` / ``torch`` calls arrive) → ratio.
_FUNCTIONAL: dict[str, Ratio] = {"silu": torch.sigmoid, "relu": _step}

#: Activation module classes, by class name (transformers.activations and torch.nn) → ratio.
_MODULES: dict[str, Ratio] = {
    "SiLU": torch.sigmoid,
    "SiLUActivation": torch.sigmoid,
    "ReLU": _step,
    "GELUActivation": _normal_cdf,
    "NewGELUActivation": _normal_cdf_tanh,
    "GELUTanh": _normal_cdf_tanh,
    "PytorchGELUTanh": _normal_cdf_tanh,
    "QuickGELUActivation": _quick_gelu,
}


def functional_ratio(name: str, kwargs: Mapping[str, Any]) -> Ratio | None:
    """``f(x)/x`` for the functional activation ``name`` called with ``kwargs``, or None when not known."""
    if name == "gelu":
        return _normal_cdf_tanh if kwargs.get("approximate", "none") == "tanh" else _normal_cdf
    return _FUNCTIONAL.get(name)


def module_ratio(module: nn.Module) -> Ratio | None:
    """``f(x)/x`` for the activation module ``module``, or None when not known (then the division is used)."""
    if type(module) is nn.GELU:
        return _normal_cdf_tanh if module.approximate == "tanh" else _normal_cdf
    if type(module).__module__ not in ("torch.nn.modules.activation", "transformers.activations"):
        return None  # a user's subclass may compute something else under the same name
    return _MODULES.get(type(module).__name__)
