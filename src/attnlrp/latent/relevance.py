"""Relevance of latent units, read from the same backward pass that gives the input relevance.

The modified gradient ĝ reaches every intermediate tensor of the model, so the relevance of any latent
activation ``a`` is ``a ⊙ ĝ(a)`` — the same gradient × input form as at the input embeddings. Three sites per
transformer layer are read with tensor hooks, at no extra pass:

* **residual stream**: the layer's output hidden state, summed over the hidden dimension (one value per token);
* **MLP neurons**: the input of the MLP's output (down) projection, i.e. the activation of each intermediate
  neuron after the non-linearity (and after the gate, for gated MLPs);
* **attention heads**: the input of the attention's output projection, split into heads and summed over each
  head's dimension.

Because the output projections are linear, the neurons (heads) of one layer sum to the relevance that enters
the MLP (attention) branch of that layer, and each layer's residual stream sums to what is conserved at that
depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ExplainError

# Where a layer keeps its MLP output projection and its attention output projection, by family. The first match
# wins; names are relative to one transformer layer.
MLP_OUTPUT_NAMES = ("mlp.down_proj", "mlp.c_proj", "mlp.fc2", "mlp.dense_4h_to_h", "output.dense", "ffn.lin2",
                    "feed_forward.w2", "mlp.out_proj", "mlp.fc_out")
ATTENTION_OUTPUT_NAMES = ("self_attn.o_proj", "attn.c_proj", "self_attn.out_proj", "self_attn.dense",
                          "attention.dense", "attention.output.dense", "self_attention.dense", "attention.out_lin",
                          "attn.out_proj")


@dataclass(frozen=True)
class LayerSites:
    """The modules of one transformer layer whose inputs are its latent units."""

    index: int
    layer: nn.Module
    mlp_output: nn.Module  # input: the MLP neurons
    attention_output: nn.Module  # input: the heads' outputs, concatenated
    num_heads: int

    @property
    def num_neurons(self) -> int:
        """How many MLP neurons the layer has (the inputs of its MLP's output projection)."""
        return input_width(self.mlp_output)


def input_width(module: nn.Module) -> int:
    """How many input features a projection takes (nn.Linear, GPT-2's transposed Conv1D, or a 2-D weight)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):  # GPT-2: weight is (in, out)
        return weight.shape[0]
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[1]
    raise ExplainError(f"cannot tell the input width of {type(module).__name__}")


def _find(layer: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        try:
            return layer.get_submodule(name)
        except AttributeError:
            continue
    return None


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer layers: the ModuleList as long as ``config.num_hidden_layers``."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = [m for _, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if count is not None:
        candidates = [m for m in candidates if len(m) == count]
    if getattr(config, "is_encoder_decoder", False):
        raise ExplainError("latent relevance is available for decoder-only and encoder-only models, "
                           "not for encoder-decoders yet")
    if not candidates:
        raise ExplainError(f"{type(model).__name__}: found no list of {count} transformer layers")
    return candidates[0]


def layer_sites(model: nn.Module) -> list[LayerSites]:
    """Every layer's MLP and attention output projections, or an error naming what is missing."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not isinstance(heads, int):
        raise ExplainError(f"{type(model).__name__}: the config names no number of attention heads")
    sites = []
    for index, layer in enumerate(transformer_layers(model)):
        mlp = _find(layer, MLP_OUTPUT_NAMES)
        attention = _find(layer, ATTENTION_OUTPUT_NAMES)
        if mlp is None or attention is None:
            children = ", ".join(name for name, _ in layer.named_modules() if name and name.count(".") < 2)
            what = "MLP output projection" if mlp is None else "attention output projection"
            raise ExplainError(
                f"{type(layer).__name__} (layer {index}) has no {what} that attnlrp knows (it looks for "
                f"{', '.join(MLP_OUTPUT_NAMES if mlp is None else ATTENTION_OUTPUT_NAMES)}); its modules are: "
                f"{children}. Mixture-of-experts MLPs have no single neuron list and are not supported."
            )
        sites.append(LayerSites(index, layer, mlp, attention, heads))
    if sites and sites[0].num_neurons <= 0:
        raise ExplainError("the MLP has no neurons")
    return sites


@dataclass(frozen=True)
class NeuronScore:
    """One MLP neuron's relevance (summed over tokens, or at one token) and its largest activation."""

    layer: int
    neuron: int
    relevance: float
    activation: float

    def to_dict(self) -> dict[str, Any]:
        """The score as plain JSON-ready values."""
        return {"layer": self.layer, "neuron": self.neuron, "relevance": self.relevance,
                "activation": self.activation}


@dataclass(frozen=True)
class HeadScore:
    """One attention head's relevance (the relevance of its output, summed over tokens, or at one token)."""

    layer: int
    head: int
    relevance: float

    def to_dict(self) -> dict[str, Any]:
        """The score as plain JSON-ready values."""
        return {"layer": self.layer, "head": self.head, "relevance": self.relevance}


@dataclass(frozen=True)
class LatentRelevance:
    """Latent relevance of one explained prompt. Tensors are float32 on the CPU, layers first."""

    tokens: list[str]
    neurons: torch.Tensor  # (layers, tokens, neurons): relevance of each MLP neuron at each token
    activations: torch.Tensor  # (layers, tokens, neurons): the neurons' activations
    heads: torch.Tensor  # (layers, tokens, heads): relevance of each attention head's output at each token
    residual: torch.Tensor  # (layers, tokens): relevance of each layer's output hidden state at each token
    special: list[bool] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        """How many transformer layers the relevance covers."""
        return self.neurons.shape[0]

    def neuron_totals(self) -> torch.Tensor:
        """(layers, neurons): each neuron's relevance summed over the tokens (in float64)."""
        return self.neurons.double().sum(dim=1)

    def head_totals(self) -> torch.Tensor:
        """(layers, heads): each head's relevance summed over the tokens (in float64)."""
        return self.heads.double().sum(dim=1)

    def top_neurons(self, k: int = 10, *, layer: int | None = None, token: int | None = None,
                    order: str = "positive") -> list[NeuronScore]:
        """The ``k`` most relevant neurons of the whole model (or of one ``layer``), summed over the tokens or at
        one ``token``. ``order``: "positive" (highest first), "negative" (most negative first) or "absolute"."""
        scores = self.neuron_totals() if token is None else self.neurons[:, self._token(token)].double()
        return [NeuronScore(l, n, float(scores[l, n]), float(self.activations[l, :, n].max()))
                for l, n in self._rank(scores, k, layer, order)]

    def top_heads(self, k: int = 10, *, layer: int | None = None, order: str = "positive") -> list[HeadScore]:
        """The ``k`` most relevant attention heads, summed over the tokens."""
        scores = self.head_totals()
        return [HeadScore(l, h, float(scores[l, h])) for l, h in self._rank(scores, k, layer, order)]

    def head(self, layer: int, head: int) -> torch.Tensor:
        """One head's relevance over the tokens, ``(tokens,)``."""
        self._layer(layer)
        if not 0 <= head < self.heads.shape[2]:
            raise ExplainError(f"head {head} does not exist; layers have {self.heads.shape[2]} heads")
        return self.heads[layer, :, head]

    def neuron(self, layer: int, neuron: int) -> torch.Tensor:
        """One neuron's relevance over the tokens, ``(tokens,)``."""
        self._layer(layer)
        if not 0 <= neuron < self.neurons.shape[2]:
            raise ExplainError(f"neuron {neuron} does not exist; layers have {self.neurons.shape[2]} neurons")
        return self.neurons[layer, :, neuron]

    def to_dict(self, *, top_k: int = 20) -> dict[str, Any]:
        """A summary for JSON: the residual stream per layer and token, and the top neurons and heads."""
        return {
            "layers": self.num_layers,
            "neurons_per_layer": self.neurons.shape[2],
            "heads_per_layer": self.heads.shape[2],
            "residual": [[float(v) for v in row] for row in self.residual.tolist()],
            "top_neurons": [s.to_dict() for s in self.top_neurons(top_k)],
            "top_heads": [s.to_dict() for s in self.top_heads(top_k)],
        }

    def to_html(self, *, full_page: bool = True, top_k: int = 10, head: tuple[int, int] | None = None) -> str:
        """Layer × token heatmap of the residual stream, the top neurons and heads, and one head over tokens
        (``head=(layer, head)``, default: the most relevant head)."""
        from ..render.latent_html import latent_html

        return latent_html(self, top_k=top_k, head=head, full_page=full_page)

    def save_html(self, path: str, **kwargs: Any) -> None:
        """Write the standalone HTML page (``to_html(**kwargs)``) to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_html(**kwargs))

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)

    # ------------------------------------------------------------------------------------------- helpers
    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.num_layers:
            raise ExplainError(f"layer {layer} does not exist; the model has layers 0..{self.num_layers - 1}")
        return layer

    def _token(self, token: int) -> int:
        if not -len(self.tokens) <= token < len(self.tokens):
            raise ExplainError(f"token {token} is outside the prompt of {len(self.tokens)} tokens")
        return token % len(self.tokens)

    def _rank(self, scores: torch.Tensor, k: int, layer: int | None, order: str) -> list[tuple[int, int]]:
        if k < 1:
            raise ExplainError(f"k must be at least 1, got {k}")
        if order not in ("positive", "negative", "absolute"):
            raise ExplainError(f"order must be 'positive', 'negative' or 'absolute', not {order!r}")
        keyed = {"positive": scores, "negative": -scores, "absolute": scores.abs()}[order]
        if layer is not None:
            self._layer(layer)
            masked = torch.full_like(keyed, float("-inf"))
            masked[layer] = keyed[layer]
            keyed = masked
        flat = keyed.flatten()
        k = min(k, int(torch.isfinite(flat).sum()))
        # stable: equal scores keep (layer, unit) order, so rankings are reproducible
        order_index = torch.argsort(flat, descending=True, stable=True)[:k]
        width = scores.shape[1]
        return [(int(i) // width, int(i) % width) for i in order_index]


class _Capture:
    """One latent tensor of one forward call and, after the backward pass, its modified gradient."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.activation = tensor.detach()
        self.gradient: torch.Tensor | None = None
        tensor.register_hook(self._store)

    def _store(self, grad: torch.Tensor) -> None:
        self.gradient = grad if self.gradient is None else self.gradient + grad

    def relevance(self) -> torch.Tensor | None:
        if self.gradient is None:
            return None
        return self.activation.float() * self.gradient.float()


class LatentRecorder:
    """Reads the latent relevance of every layer during one forward and backward pass (use as a context).

    Hooks are per module of this model and removed on exit. Under gradient checkpointing a layer runs twice;
    only the call whose tensors take part in the backward receives a gradient, and that one is read.
    """

    def __init__(self, model: nn.Module) -> None:
        self.sites = layer_sites(model)
        self._captures: dict[tuple[int, str], list[_Capture]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "LatentRecorder":
        for site in self.sites:
            self._handles.append(site.mlp_output.register_forward_pre_hook(self._input_hook(site.index, "mlp")))
            self._handles.append(
                site.attention_output.register_forward_pre_hook(self._input_hook(site.index, "attention"))
            )
            self._handles.append(site.layer.register_forward_hook(self._output_hook(site.index)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep(self, key: tuple[int, str], tensor: Any) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            self._captures.setdefault(key, []).append(_Capture(tensor))

    def _input_hook(self, index: int, kind: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if args:
                self._keep((index, kind), args[0])
        return hook

    def _output_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            self._keep((index, "residual"), hidden)
        return hook

    def _relevance(self, index: int, kind: str) -> torch.Tensor:
        found = [r for r in (c.relevance() for c in self._captures.get((index, kind), [])) if r is not None]
        if not found:
            raise ExplainError(f"no relevance reached the {kind} of layer {index}; was the backward pass run?")
        if len(found) > 1:
            raise ExplainError(f"the {kind} of layer {index} ran {len(found)} times in one pass; latent relevance "
                               "needs each layer to run once per forward")
        return found[0]

    def _activation(self, index: int) -> torch.Tensor:
        for capture in self._captures[(index, "mlp")]:
            if capture.gradient is not None:
                return capture.activation.float()
        raise ExplainError(f"no MLP activation of layer {index}")

    def rows(self, lengths: list[int], tokens: list[list[str]], special: list[list[bool]]) -> list[LatentRelevance]:
        """Per batch row (of the given real lengths), the latent relevance; call after the backward pass."""
        neurons = [self._relevance(s.index, "mlp") for s in self.sites]
        activations = [self._activation(s.index) for s in self.sites]
        heads = []
        for site in self.sites:
            attention = self._relevance(site.index, "attention")
            width = attention.shape[-1]
            if width % site.num_heads:
                raise ExplainError(f"layer {site.index}: {width} attention outputs do not split into "
                                   f"{site.num_heads} heads")
            heads.append(attention.unflatten(-1, (site.num_heads, width // site.num_heads)).sum(-1))
        residual = [self._relevance(s.index, "residual").sum(-1) for s in self.sites]
        results = []
        for row, length in enumerate(lengths):
            def take(per_layer: list[torch.Tensor]) -> torch.Tensor:
                return torch.stack([_row(t, row, len(lengths))[:length] for t in per_layer]).cpu()
            results.append(LatentRelevance(
                tokens=tokens[row], neurons=take(neurons), activations=take(activations), heads=take(heads),
                residual=take(residual), special=special[row],
            ))
        return results


def _row(tensor: torch.Tensor, row: int, rows: int) -> torch.Tensor:
    """Row ``row`` of a (batch, tokens, …) tensor; models that drop a batch of one give (tokens, …)."""
    if tensor.shape[0] == rows:
        return tensor[row]
    if rows == 1:
        return tensor
    raise ExplainError(f"a latent tensor of shape {tuple(tensor.shape)} has no batch dimension of {rows}")

