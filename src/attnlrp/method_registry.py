"""The attribution methods, one frozen ``Method`` each, in one registry.

Every list of choices (the CLI's ``--method``, the evaluation's, the neuron and concept commands', the image
explainer's) is derived from this registry, and code asks a method what it does (``method.uses_rules``,
``method.attention``) instead of comparing its name. Adding a method is one ``register`` call.

The engine and plug-ins import it as :mod:`attnlrp.core.methods` (or from :mod:`attnlrp.core`); it lives here,
outside ``attnlrp.core``, and imports no torch (only tensors passed in are used), so that the command line
lists the methods in ``--help`` without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Mapping, Union

from .errors import ExplainError

if TYPE_CHECKING:
    import torch

#: How a product of two input-dependent tensors passes the gradient back:
#: "uniform"  — each of the n factors gets 1/n of the gradient (AttnLRP's uniform rule, attention and gates);
#: "constant" — a factor that is attention probabilities or a gate activation is held constant (CP-LRP);
#: "gradient" — the plain gradient (no rule at all).
ProductTreatment = Literal["uniform", "constant", "gradient"]
#: What a heatmap shows per token: "relevance" (gradient × input summed over the embedding) or "gradient-norm".
TokenScore = Literal["relevance", "gradient-norm"]


@dataclass(frozen=True)
class Method:
    """One attribution method: what the engine does for it and how its result is read."""

    name: str
    label: str  # how figures and tables name it
    description: str
    uses_rules: bool  # the LRP rules are switched on (else the model runs plain, only the leaves are read)
    attention: ProductTreatment  # how attention probabilities (softmax · V, fused attention) are treated
    gates: ProductTreatment  # how products with a gate activation (SwiGLU, GeGLU) are treated
    token_score: TokenScore = "relevance"
    conserves: bool = True  # input relevance + absorbed = explained value (the ledger balances)
    has_unit_relevance: bool = True  # activation × modified gradient ranks latent units (neurons, heads)
    #: γ per layer type (class name or class) for the generalised γ-rule on linear layers; empty: no γ
    gamma: Mapping[str | type, float] = field(default_factory=lambda: MappingProxyType({}))

    def __str__(self) -> str:
        return self.name

    def token_scores(self, leaf: torch.Tensor, grad: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Per token (summed over ``dim``, the features), in float64: relevance or the gradient's L2 norm."""
        if self.token_score == "gradient-norm":
            return grad.double().norm(dim=dim)
        return relevance_per_token(leaf, grad, dim)


def relevance_per_token(leaf: torch.Tensor, grad: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Gradient × input summed over ``dim`` (the embedding or channels), in float64."""
    return (leaf.detach().double() * grad.double()).sum(dim=dim)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new); returns it, so it can be a module constant."""
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (for tests and plug-ins that register temporarily)."""
    _REGISTRY.pop(name, None)


def method_names(*, uses_rules: bool | None = None, has_unit_relevance: bool | None = None) -> tuple[str, ...]:
    """Registered names, in registration order, optionally only those with the given properties."""
    return tuple(
        m.name
        for m in _REGISTRY.values()
        if (uses_rules is None or m.uses_rules == uses_rules)
        and (has_unit_relevance is None or m.has_unit_relevance == has_unit_relevance)
    )


MethodSpec = Union[str, Method]
"""A method, given by its registered name (``"attnlrp"``) or as a :class:`Method`."""


def get_method(spec: MethodSpec, *, among: tuple[str, ...] | None = None) -> Method:
    """The ``Method`` named ``spec`` (or ``spec`` itself); an ``ExplainError`` listing the choices otherwise.

    ``among`` narrows the choices (e.g. the methods that rank neurons) with the same message."""
    choices = among if among is not None else tuple(_REGISTRY)
    name = spec.name if isinstance(spec, Method) else spec
    if isinstance(spec, Method) and (among is None or name in choices):
        return spec  # a Method object needs no registration to be used directly
    if not isinstance(name, str) or name not in choices or name not in _REGISTRY:
        raise ExplainError(f"unknown method {name!r}; choose one of: {', '.join(choices)}")
    return _REGISTRY[name]


ATTNLRP = register(Method(
    "attnlrp", "AttnLRP", "attention-aware LRP: uniform rule for attention and gates, identity for activations, "
    "norm statistics held constant",
    uses_rules=True, attention="uniform", gates="uniform",
))
CP_LRP = register(Method(
    "cp-lrp", "CP-LRP", "LRP with attention probabilities and gates held constant (Ali et al., 2022)",
    uses_rules=True, attention="constant", gates="constant",
))
INPUT_X_GRADIENT = register(Method(
    "input-x-gradient", "Input × Gradient", "the plain gradient times the input (no rules; does not conserve)",
    uses_rules=False, attention="gradient", gates="gradient", conserves=False,
))
GRADIENT = register(Method(
    "gradient", "Gradient", "the L2 norm of the plain gradient per token (saliency; not a relevance)",
    uses_rules=False, attention="gradient", gates="gradient", token_score="gradient-norm", conserves=False,
    has_unit_relevance=False,
))
