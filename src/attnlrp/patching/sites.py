"""Where the patched components live, how their activations are read (with the modified gradient) and how they are
replaced, all from the layer layouts of :func:`attnlrp.latent.relevance.layer_sites`.

A component is one unit of one *site* of one layer. The sites (module hooks, per instance, removed on exit):

=============  ==========================================================  =====================
level          activation                                                  unit
=============  ==========================================================  =====================
``heads``      input of the attention output projection (``o_proj``)     one head's slice
``mlps``       output of the MLP output projection (the MLP block's out)  the whole MLP
``neurons``    input of the MLP output projection                          one channel
``residual``   the layer's output hidden state                             one position
(embedding)    the input embeddings (circuits only)                        all of them
=============  ==========================================================  =====================

Every unit covers all positions except the residual stream's, which is one position. A *plan* says, per row of a
batch, which units take their value from another run: ``{(site, layer): bool mask (rows, units)}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch
from torch import nn

from ..errors import ExplainError
from ..latent.relevance import LayerSites, input_width, layer_sites
from .names import LEVELS

#: the component kind of each level, as the JSON contract names it
KIND = {"heads": "head", "mlps": "mlp", "neurons": "neuron", "residual": "residual", "embedding": "embedding"}
#: the input embeddings: a node of circuits (not a level of ``patch``)
EMBEDDING = "embedding"

#: config attributes that count the experts of a mixture-of-experts model
_EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")

Plan = dict[tuple[str, int], torch.Tensor]


def check_levels(levels: str | Sequence[str], *, allowed: Sequence[str] = LEVELS) -> tuple[str, ...]:
    """The levels asked for (a comma-separated string or a sequence), in report order; an error naming the valid
    ones for anything else."""
    names = [n.strip() for n in levels.split(",")] if isinstance(levels, str) else list(levels)
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        what = f"unknown level {unknown[0]!r}" if unknown else "no level given"
        raise ExplainError(f"{what}; choose from: {', '.join(allowed)}")
    return tuple(level for level in (*LEVELS, EMBEDDING) if level in names)


def _is_moe(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    return any(isinstance(getattr(config, name, None), int) and getattr(config, name) > 1 for name in _EXPERT_COUNTS)


@dataclass(frozen=True)
class ComponentSites:
    """The patchable sites of one model: its layers (``LayerSites``) and the sizes of their units."""

    layers: list[LayerSites]
    num_heads: int
    head_dim: int
    num_neurons: int

    @classmethod
    def of(cls, model: nn.Module) -> "ComponentSites":
        """The sites of ``model``; mixture-of-experts models and encoder-decoders are refused with a clear error."""
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ExplainError("relevance patching is available for decoder-only and encoder-only models, not for "
                               "encoder-decoders yet")
        if _is_moe(model):
            raise ExplainError(f"{type(model).__name__} is a mixture-of-experts model; relevance patching does not "
                               "support mixture-of-experts MLPs yet (their neurons change with the routing)")
        layers = layer_sites(model)
        width = input_width(layers[0].attention_output)
        heads = layers[0].num_heads
        if width % heads:
            raise ExplainError(f"{width} attention outputs do not split into {heads} heads")
        return cls(layers, heads, width // heads, layers[0].num_neurons)

    def shape(self, level: str, positions: int) -> tuple[int, ...]:
        """The shape of one pair's estimates at ``level``: heads (layers, heads), mlps (layers,), neurons
        (layers, neurons), residual (layers, positions), embedding (1,)."""
        count = len(self.layers)
        return {"heads": (count, self.num_heads), "mlps": (count,), "neurons": (count, self.num_neurons),
                "residual": (count, positions), EMBEDDING: (1,)}[level]


# --------------------------------------------------------------------------------------------- reading
#: where each level's activation is read: (which module of the layer, input or output)
SITE = {"heads": "attention_in", "neurons": "mlp_in", "mlps": "mlp_out", "residual": "layer_out"}


_Hooks = TypeVar("_Hooks", bound="_ModuleHooks")


class _ModuleHooks:
    """Hooks on this model's modules, installed by ``_install`` on entering and all removed on exit (also when
    installing fails half-way)."""

    _handles: list[Any]

    def _install(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Hooks) -> _Hooks:
        try:
            self._install()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class _Capture:
    """One activation of one forward call, its live tensor (for further backward passes) and its gradient."""

    def __init__(self, tensor: torch.Tensor, owner: "Recorder") -> None:
        self.tensor = tensor
        self.activation = tensor.detach()
        self.gradient: torch.Tensor | None = None
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: owner._store(self, grad))


class Recorder(_ModuleHooks):
    """Reads the activations of the given sites during one forward pass, and their (modified) gradients during the
    following backward pass. A context manager; its hooks are this model's and removed on exit.

    Under gradient checkpointing a layer runs twice; the call whose tensors receive a gradient is the one read.
    Gradients are recorded until :meth:`freeze`; backward passes after it (circuit edges) leave them unchanged.
    """

    def __init__(self, sites: ComponentSites, levels: Sequence[str]) -> None:
        self.sites = sites
        self.kinds = {SITE[level] for level in levels if level in SITE}
        self.captures: dict[tuple[str, int], list[_Capture]] = {}
        self._handles: list[Any] = []
        self._frozen = False

    def _install(self) -> None:
        for site in self.sites.layers:
            i = site.index
            if "attention_in" in self.kinds:
                hook = self._on_input("attention_in", i)
                self._handles.append(site.attention_output.register_forward_pre_hook(hook))
            if "mlp_in" in self.kinds:
                self._handles.append(site.mlp_output.register_forward_pre_hook(self._on_input("mlp_in", i)))
            if "mlp_out" in self.kinds:
                self._handles.append(site.mlp_output.register_forward_hook(self._on_output("mlp_out", i)))
            if "layer_out" in self.kinds:
                self._handles.append(site.layer.register_forward_hook(self._on_output("layer_out", i)))

    def freeze(self) -> None:
        """Keep the gradients read so far: later backward passes through the same graph do not add to them."""
        self._frozen = True

    def _store(self, capture: _Capture, grad: torch.Tensor) -> None:
        if not self._frozen:
            capture.gradient = grad if capture.gradient is None else capture.gradient + grad

    def _keep(self, key: tuple[str, int], tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor):
            self.captures.setdefault(key, []).append(_Capture(tensor, self))

    def _on_input(self, kind: str, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if args:
                self._keep((kind, index), args[0])
        return hook

    def _on_output(self, kind: str, index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._keep((kind, index), _hidden(output))
        return hook

    def capture(self, level: str, layer: int, *, gradient: bool = False) -> _Capture:
        """The capture of ``level`` at ``layer`` (with a gradient, when ``gradient``: the one the backward reached)."""
        found = self.captures.get((SITE[level], layer), [])
        if gradient:
            found = [c for c in found if c.gradient is not None]
        if len(found) != 1:
            what = "no activation" if not found else f"{len(found)} activations"
            raise ExplainError(f"{what} of the {level} of layer {layer} in one pass; relevance patching needs each "
                               "layer to run once per forward" + (" and to take part in the metric's backward pass"
                                                                  if gradient and not found else ""))
        return found[0]


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, (tuple, list)) else output


# --------------------------------------------------------------------------------------------- patching
def units_view(level: str, tensor: torch.Tensor, sites: ComponentSites) -> torch.Tensor:
    """``tensor`` (rows, positions, width) of a site with its units on dimension 2 and the unit's own features
    last: heads (rows, pos, heads, head_dim), neurons (rows, pos, neurons, 1), mlps and the embedding
    (rows, pos, 1, width), residual (rows, pos, 1, width) with the positions as the units (see :func:`unit_mask`)."""
    if level == "heads":
        return tensor.unflatten(-1, (sites.num_heads, sites.head_dim))
    if level == "neurons":
        return tensor.unsqueeze(-1)
    return tensor.unsqueeze(-2)


def unit_mask(level: str, mask: torch.Tensor) -> torch.Tensor:
    """A (rows, units) mask broadcast against :func:`units_view`: residual units are positions."""
    if level == "residual":
        return mask[:, :, None, None]
    return mask[:, None, :, None]


def replace_units(level: str, tensor: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                  sites: ComponentSites) -> torch.Tensor:
    """``tensor`` with the units that ``mask`` (rows, units) marks taken from ``source`` (same shape, or one row)."""
    source = source.to(tensor.device, tensor.dtype).expand_as(tensor)
    keep = unit_mask(level, mask.to(tensor.device))
    view = units_view(level, tensor, sites)
    return torch.where(keep, units_view(level, source, sites), view).reshape(tensor.shape)


class Patcher(_ModuleHooks):
    """Applies a plan during the forward passes of its block: per row, the marked units of each site take their
    value from ``sources`` ({(level, layer): tensor (rows or 1, positions, width)}). Hooks per instance, removed
    on exit; the embedding (a plan entry ``(EMBEDDING, -1)``) is patched by the caller, on the inputs."""

    def __init__(self, sites: ComponentSites, plan: Plan, sources: Mapping[tuple[str, int], torch.Tensor]) -> None:
        self.sites = sites
        self.plan = {key: mask for key, mask in plan.items() if key[0] != EMBEDDING and bool(mask.any())}
        self.sources = sources
        self._handles: list[Any] = []

    def _install(self) -> None:
        for (level, layer), mask in self.plan.items():
            site = self.sites.layers[layer]
            replace = self._replacer(level, layer, mask)
            if level in ("heads", "neurons"):
                module = site.attention_output if level == "heads" else site.mlp_output
                self._handles.append(module.register_forward_pre_hook(
                    lambda m, args, replace=replace: (replace(args[0]), *args[1:])))
            else:
                module = site.mlp_output if level == "mlps" else site.layer
                self._handles.append(module.register_forward_hook(
                    lambda m, args, output, replace=replace: _with_hidden(output, replace(_hidden(output)))))

    def _replacer(self, level: str, layer: int, mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        source = self.sources[(level, layer)]
        return lambda tensor: replace_units(level, tensor, source, mask, self.sites)


def _with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    return hidden


def component_order(level: str, layer: int) -> tuple[int, int]:
    """Where a component sits in the forward pass, for the direction of circuit edges: the embedding first, then
    per layer its heads, then its MLP (or neurons), then its residual output."""
    return {EMBEDDING: (-1, 0), "heads": (layer, 1), "mlps": (layer, 2), "neurons": (layer, 2),
            "residual": (layer, 3)}[level]


def iterate_units(levels: Sequence[str],
                  shapes: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[str, int, int | None]]:
    """Every component of the levels, as (level, layer, index), layer-major within each level; mlps and the
    embedding have no index (``None``)."""
    for level in levels:
        shape = shapes[level]
        if level == EMBEDDING:
            yield level, -1, None
        elif level == "mlps":
            for layer in range(shape[0]):
                yield level, layer, None
        else:
            for layer in range(shape[0]):
                for index in range(shape[1]):
                    yield level, layer, index
