"""Patching estimates for every component from two forward passes and one backward pass.

For a component with activation ``a`` the estimated change of the metric when the clean run's ``a`` is replaced
by the corrupted run's (noising) is ``Σ (a_corrupted − a_clean) ⊙ ĝ``, summed over the component's elements, with
``ĝ`` the gradient of the metric at the clean run under the method's rules: the plain gradient for ``"gradient"``
(attribution patching, AtP), the LRP-modified gradient for ``"attnlrp"`` or ``"cp-lrp"`` (relevance patching,
RelP). ``direction="denoising"`` swaps the runs: the corrupted run is differentiated and clean values patched in.

The corrupted run is a plain forward without gradient; the clean run is one explained pass
(:class:`~attnlrp.core.ExplainedPass`) whose backward reaches every site at once, so all components of all levels
cost the same two forwards and one backward (per group of pairs of one length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..core import ExplainedPass, MethodSpec
from ..errors import ExplainError
from .metric import MetricFn, TokenSpec
from .names import DEFAULT_METHOD, LEVELS, patching_method
from .runs import Setup, check_direction
from .sites import (EMBEDDING, KIND, ComponentSites, Recorder, check_levels, component_order, iterate_units,
                    unit_mask, units_view)
from .truth import Verification, true_effects

#: a component: (level, layer, index) with index the head, neuron or position, None for an MLP or the embedding
Component = tuple[str, int, "int | None"]


@dataclass(frozen=True)
class ComponentEffect:
    """One component's estimated effect on the metric (and the true one, once verified)."""

    kind: str  # "head", "mlp", "neuron", "residual" (or "embedding" in circuits)
    layer: int
    index: int | None  # the head, the neuron or the position; None for a whole MLP
    estimate: float
    truth: float | None = None

    @property
    def name(self) -> str:
        """A short name: ``L3.H5``, ``L3.MLP``, ``L3.N120``, ``L3.P7`` or ``embed``."""
        if self.kind == "embedding":
            return "embed"
        unit = {"head": "H", "neuron": "N", "residual": "P"}.get(self.kind)
        return f"L{self.layer}.{'MLP' if unit is None else f'{unit}{self.index}'}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract's component: kind, layer, index, estimate and (when verified) truth."""
        data: dict[str, Any] = {"kind": self.kind, "layer": self.layer, "index": self.index,
                                "estimate": self.estimate}
        if self.truth is not None:
            data["truth"] = self.truth
        return data


@dataclass(frozen=True)
class GroupPass:
    """What one pass pair gives for one group of pairs (rows): estimates per level (rows, *shape), the metric of
    the base and the source runs per row, and the circuit edges asked for ((upstream, downstream) → (rows,))."""

    estimates: dict[str, torch.Tensor]
    base_metric: torch.Tensor
    source_metric: torch.Tensor
    edges: dict[tuple[int, int], torch.Tensor]


def unit_sums(level: str, tensor: torch.Tensor, sites: ComponentSites) -> torch.Tensor:
    """(rows, units) sums of a site's elementwise values over each unit's elements (all positions, or one
    position for the residual stream)."""
    if level == "residual":
        return tensor.sum(-1)
    return units_view(level, tensor, sites).sum(dim=(1, 3))


def _only_unit(level: str, tensor: torch.Tensor, index: int | None, sites: ComponentSites) -> torch.Tensor:
    """``tensor`` with every element outside the unit ``index`` set to zero (the whole tensor for an MLP)."""
    if index is None:
        return tensor
    units = tensor.shape[1] if level == "residual" else units_view(level, tensor, sites).shape[2]
    mask = torch.zeros(1, units, dtype=torch.bool, device=tensor.device)
    mask[0, index] = True
    view = units_view(level, tensor, sites)
    return torch.where(unit_mask(level, mask), view, torch.zeros_like(view)).reshape(tensor.shape)


def run_group(setup: Setup, group: Sequence[int], method: MethodSpec, direction: str, levels: Sequence[str],
              nodes: Sequence[Component] = ()) -> GroupPass:
    """One pass pair for the pairs ``group`` (one length): the source run plain, the base run explained; then,
    for circuit ``nodes``, one more backward per downstream node for the edges (see :mod:`.circuits`)."""
    base_role, source_role = check_direction(direction)
    sites = setup.sites
    source = setup.record(group, source_role, [level for level in levels if level != EMBEDDING])
    base_embeddings = setup.embed(setup.ids(group, base_role))
    rows = len(group)
    with ExplainedPass(setup.model, patching_method(method)) as explained, Recorder(sites, levels) as recorder:
        explained.start(rows)
        leaf, inputs = explained.leaf(base_embeddings)
        values = setup.metric(setup.forward(inputs), group)
        result = explained.backward(values, [leaf], retain=bool(nodes), what="the metric")
        recorder.freeze()

        def delta(level: str, layer: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
            """(source − base) activation, the live base tensor and its capture's gradient."""
            if level == EMBEDDING:
                return (source.embeddings.double() - leaf.detach().double()), leaf, result.grads[0]
            capture = recorder.capture(level, layer, gradient=True)
            difference = source.activations[(level, layer)].double() - capture.activation.double()
            return difference, capture.tensor, capture.gradient

        estimates: dict[str, torch.Tensor] = {}
        for level in levels:
            per_layer = []
            for layer in ([-1] if level == EMBEDDING else range(len(sites.layers))):
                difference, _, gradient = delta(level, layer)
                per_layer.append(unit_sums(level, difference * gradient.double(), sites).cpu())
            stacked = torch.stack(per_layer, dim=1)  # (rows, layers, units)
            estimates[level] = stacked[:, :, 0] if level in ("mlps", EMBEDDING) else stacked
        edges = _edges(nodes, delta, sites) if nodes else {}
    return GroupPass(estimates, values.detach().double().cpu(), source.metric, edges)


def _edges(nodes: Sequence[Component], delta: Any, sites: ComponentSites) -> dict[tuple[int, int], torch.Tensor]:
    """For each downstream node ``d`` one backward of ``ĝ_d ⊙ a_d`` (its unit only) through the graph under the
    rules, read at every upstream node ``u``: ``Σ (a_u,source − a_u,base) ⊙ ∂̂(ĝ_d · a_d)/∂a_u``."""
    edges: dict[tuple[int, int], torch.Tensor] = {}
    for d, (level_d, layer_d, index_d) in enumerate(nodes):
        if level_d == EMBEDDING:
            continue
        upstream = [u for u, (level, layer, _) in enumerate(nodes)
                    if component_order(level, layer) < component_order(level_d, layer_d)]
        if not upstream:
            continue
        _, tensor_d, gradient_d = delta(level_d, layer_d)
        seed = _only_unit(level_d, gradient_d, index_d, sites).to(tensor_d.dtype)
        keys = sorted({(nodes[u][0], nodes[u][1]) for u in upstream})
        live = {key: delta(*key) for key in keys}
        grads = torch.autograd.grad(tensor_d, [live[key][1] for key in keys], grad_outputs=seed, retain_graph=True,
                                    allow_unused=True)
        by_key = dict(zip(keys, grads))
        for u in upstream:
            level_u, layer_u, index_u = nodes[u]
            grad = by_key[(level_u, layer_u)]
            difference = live[(level_u, layer_u)][0]
            if grad is None:
                edges[(u, d)] = torch.zeros(difference.shape[0], dtype=torch.float64)
                continue
            sums = unit_sums(level_u, difference * grad.double(), sites).cpu()
            edges[(u, d)] = sums[:, 0 if index_u is None else index_u]
    return edges


@dataclass(frozen=True)
class Estimates:
    """Per-pair estimates of a set of pairs, and the metric of each pair's two runs."""

    per_pair: dict[str, torch.Tensor]  # level -> (pairs, *shape)
    clean: list[float]
    corrupted: list[float]
    edges: dict[tuple[int, int], torch.Tensor]  # (upstream, downstream) node indices -> (pairs,)


def estimate_pairs(setup: Setup, method: MethodSpec, direction: str, levels: Sequence[str],
                   nodes: Sequence[Component] = ()) -> Estimates:
    """Every pair's estimates (group by group of one length), with the circuit edges of ``nodes`` if given."""
    check_direction(direction)
    if "residual" in levels and len({len(p) for p in setup.pairs}) > 1:
        raise ExplainError("the residual level needs every pair to have the same number of tokens (its positions "
                           "must line up to be averaged); leave out 'residual' or patch the pairs separately")
    count = len(setup.pairs)
    positions = len(setup.pairs[0])
    per_pair = {level: torch.zeros(count, *setup.sites.shape(level, positions), dtype=torch.float64)
                for level in levels}
    base = torch.zeros(count, dtype=torch.float64)
    source = torch.zeros(count, dtype=torch.float64)
    edges: dict[tuple[int, int], torch.Tensor] = {}
    for group in setup.groups():
        done = run_group(setup, group, method, direction, levels, nodes)
        rows = torch.tensor(group)
        for level in levels:
            per_pair[level][rows] = done.estimates[level]
        base[rows], source[rows] = done.base_metric, done.source_metric
        for key, values in done.edges.items():
            edges.setdefault(key, torch.zeros(count, dtype=torch.float64))[rows] = values
    clean, corrupted = (base, source) if direction == "noising" else (source, base)
    return Estimates(per_pair, clean.tolist(), corrupted.tolist(), edges)


@dataclass
class PatchResult:
    """The estimates of one ``patch`` call; ``verify()`` adds the true effects and their agreement."""

    method: str
    direction: str
    levels: tuple[str, ...]
    estimates: dict[str, torch.Tensor]  # level -> mean over the pairs, float64
    per_pair: dict[str, torch.Tensor]  # level -> (pairs, *shape)
    clean_metric: list[float]
    corrupted_metric: list[float]
    setup: Setup = field(repr=False)
    verification: Verification | None = None

    @property
    def metric(self) -> dict[str, Any]:
        """The metric on the clean and the corrupted prompts: floats for one pair, lists for a list of pairs."""
        if self.setup.batch:
            return {"clean": list(self.clean_metric), "corrupted": list(self.corrupted_metric)}
        return {"clean": self.clean_metric[0], "corrupted": self.corrupted_metric[0]}

    @property
    def tokens(self) -> list[list[str]]:
        """Each pair's clean tokens (the residual level's positions)."""
        return [pair.clean.tokens for pair in self.setup.pairs]

    def components(self, level: str | None = None) -> list[ComponentEffect]:
        """Every component (of ``level``, or of all levels), largest |estimate| first; ``truth`` once verified
        (``None`` for a component that was not patched)."""
        levels = self.levels if level is None else check_levels([level], allowed=self.levels)
        truth = self.verification.truth if self.verification is not None else {}
        shapes = {lvl: tuple(self.estimates[lvl].shape) for lvl in levels}
        effects = []
        for lvl, layer, index in iterate_units(levels, shapes):
            at = (layer,) if index is None else (layer, index)
            known = truth.get(lvl)
            true_value = None if known is None else float(known[at])
            if true_value is not None and not math.isfinite(true_value):
                true_value = None  # not patched
            effects.append(ComponentEffect(KIND[lvl], layer, index, float(self.estimates[lvl][at]), true_value))
        return sorted(effects, key=lambda e: -abs(e.estimate))

    def verify(self, levels: str | Sequence[str] | None = None, batch_size: int = 64,
               components: dict[str, torch.Tensor] | None = None, top_k: int = 10) -> Verification:
        """Run real activation patching for the components of ``levels`` (default: all of this result's; restrict
        the neurons with ``components``) and compare: Pearson, Spearman and top-``top_k`` overlap per level."""
        chosen = self.levels if levels is None else check_levels(levels, allowed=self.levels)
        truth = true_effects(self.setup, chosen, self.direction, batch_size, components)
        self.verification = Verification.of(truth, self.estimates, top_k)
        return self.verification

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of ``attnlrp patch --json``."""
        pairs = self.setup.pairs
        ids = {"clean": [p.clean.input_ids for p in pairs], "corrupted": [p.corrupted.input_ids for p in pairs]}
        data: dict[str, Any] = {
            "metric": self.metric, "method": self.method, "direction": self.direction,
            "token_ids": ids if self.setup.batch else {k: v[0] for k, v in ids.items()},
            "components": [c.to_dict() for c in self.components()],
        }
        if self.verification is not None:
            data["agreement"] = {level: a.to_dict() for level, a in self.verification.agreement.items()}
        return data

    def to_html(self, *, full_page: bool = True, top_k: int = 20) -> str:
        """The patch report: per-level heatmaps, the top components, and estimate against truth when verified."""
        from ..render.patching_html import patch_html

        return patch_html(self, top_k=top_k, full_page=full_page)

    def save_html(self, path: str, **kwargs: Any) -> None:
        """Write the standalone HTML page (``to_html(**kwargs)``) to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_html(**kwargs))

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)


def patch(model: Any, tokenizer: Any, clean: Any, corrupted: Any, target: TokenSpec | Sequence[TokenSpec] | None = None,
          contrast: TokenSpec | Sequence[TokenSpec | None] | None = None, *, method: MethodSpec = DEFAULT_METHOD,
          levels: str | Sequence[str] = LEVELS, direction: str = "noising", metric: MetricFn | None = None,
          add_bos: bool | None = None) -> PatchResult:
    """Estimate the effect on the metric of patching every component of ``levels``, from two forward passes and
    one backward pass per group of pairs of one length.

    ``clean``/``corrupted``: one prompt each (text or token ids) or lists of the same length; each pair must
    tokenise to equal lengths. The metric is ``logit(target) − logit(contrast)`` at the last position
    (``logit(target)`` without a contrast; one token for all pairs or a list, one per pair) or ``metric(logits)``.
    ``method``: a registered name or a :class:`~attnlrp.core.Method` (``"gradient"`` is attribution patching).
    Estimates are averaged over the pairs (``result.per_pair`` keeps each pair's).
    """
    resolved = patching_method(method)
    chosen = check_levels(levels)
    setup = Setup.build(model, tokenizer, clean, corrupted, target, contrast, metric, add_bos)
    done = estimate_pairs(setup, resolved, direction, chosen)
    means = {level: values.mean(dim=0) for level, values in done.per_pair.items()}
    return PatchResult(resolved.name, direction, chosen, means, done.per_pair, done.clean, done.corrupted, setup)
