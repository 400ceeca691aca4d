"""Circuits: the smallest set of components that carries a behaviour, found by ranking components by their
estimated effect and checked by real patching.

For a ranking and a size ``N``, the circuit keeps the top ``N`` components and patches every other component of
the chosen levels to its corrupted value in the clean run; its *recovery* is the fraction of the metric's gap that
it keeps, ``(m(circuit) − m(corrupted)) / (m(clean) − m(corrupted))`` (over several pairs: the means of each term).
The input embeddings are the clean prompt's and always part of the circuit (everything the circuit knows enters
through them): keeping everything is the clean run (recovery 1), keeping nothing leaves only the direct path from
the embeddings to the logits, which is exactly the corrupted run (recovery 0) when both prompts end in the same
token. Curves for the method's ranking, attribution patching's (``"gradient"``) and random rankings (their mean)
show how quickly each ranking recovers the behaviour. The graph's nodes are the embeddings and the method's
smallest circuit that recovers the threshold (80 %).

**Edges.** Between two kept nodes ``u`` (upstream) and ``d`` (downstream), the edge value is the estimated change
of ``d``'s linearised contribution to the metric when ``u`` alone is patched:

    edge(u → d) = Σ (a_u,corrupted − a_u,clean) ⊙ ∂̂(ĝ_d · a_d) / ∂a_u

with ``ĝ_d`` the modified gradient of the metric at ``d`` (held fixed) and ``∂̂`` the derivative under the
method's rules, summed over ``u``'s elements: one backward pass per kept downstream node, seeded at ``a_d`` with
``ĝ_d`` (restricted to ``d``'s unit). It counts every path from ``u`` to ``d``, also those through other
components. Where ``a_d`` is linear in ``a_u`` it is exact: ``ĝ_d · (a_d(u patched) − a_d)``; ``edge(u → d)``
is in the units of the metric, like the nodes' estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..core import MethodSpec, get_method
from ..errors import ExplainError
from .estimate import ComponentEffect, estimate_pairs
from .metric import MetricFn, TokenSpec
from .names import CIRCUIT_LEVELS, DEFAULT_METHOD, patching_method
from .runs import Setup
from .sites import EMBEDDING, KIND, check_levels, iterate_units

@dataclass(frozen=True)
class CircuitEdge:
    """The edge from kept node ``source`` to kept node ``target`` (indices into ``Circuit.nodes``); see the module
    docstring for what ``value`` is."""

    source: int
    target: int
    value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"source": self.source, "target": self.target, "value": self.value}


@dataclass
class Circuit:
    """Recovery curves of several rankings, the kept nodes (the method's top components) and the edges between
    them."""

    method: str
    levels: tuple[str, ...]
    metric: dict[str, float]  # "clean", "corrupted": means over the pairs
    ranked: list[ComponentEffect]  # every component, the method's ranking (largest |estimate| first)
    curves: dict[str, list[tuple[int, float]]]  # ranking -> [(n, recovery)], "random": the mean of the random ones
    random_curves: list[list[float]]  # each random ranking's recovery at the sizes of the curves
    nodes: list[ComponentEffect]  # the input embeddings, then the kept components in ranking order
    edges: list[CircuitEdge]
    threshold: float = 0.8
    tokens: list[str] = field(default_factory=list)

    def smallest(self, threshold: float | None = None) -> dict[str, int | None]:
        """Per ranking, the smallest ``N`` whose circuit recovers at least ``threshold`` (default: the circuit's,
        0.8) of the gap, or ``None`` when no evaluated ``N`` does. The curves hold every N up to 20, then a
        grid (×1.15) filled in between each curve's first crossing of ``threshold`` and the grid point before it:
        no N between those two reaches the threshold."""
        limit = self.threshold if threshold is None else threshold
        return {name: next((n for n, r in curve if r >= limit), None) for name, curve in self.curves.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``attnlrp circuit --json``."""
        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "method": self.method, "levels": list(self.levels), "metric": self.metric, "threshold": self.threshold,
            "curves": {name: [[n, number(r)] for n, r in curve] for name, curve in self.curves.items()},
            "smallest": self.smallest(),
            "nodes": [{"name": n.name, **n.to_dict()} for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
        }

    def to_html(self, *, full_page: bool = True) -> str:
        """The layered graph of the kept nodes and edges, and the recovery curves (inline SVG, offline)."""
        from ..render.patching_html import circuit_html

        return circuit_html(self, full_page=full_page)

    def save_html(self, path: str, **kwargs: Any) -> None:
        """Write the standalone HTML page (``to_html(**kwargs)``) to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_html(**kwargs))

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)


def check_circuit_levels(levels: str | Sequence[str]) -> tuple[str, ...]:
    """The levels of a circuit (any of ``CIRCUIT_LEVELS``, not MLPs with their neurons), or a clear error."""
    chosen = check_levels(levels, allowed=CIRCUIT_LEVELS)
    if "mlps" in chosen and "neurons" in chosen:
        raise ExplainError("a circuit is made of whole MLPs or of their neurons, not both: choose 'mlps' or "
                           "'neurons'")
    return chosen


def _rankings(scores: dict[str, torch.Tensor], random_rankings: int, seed: int) -> dict[str, torch.Tensor]:
    """Per ranking, each component's place (0 = first kept): by |score| (stable), and random permutations."""
    count = next(iter(scores.values())).numel()
    places = {}
    for name, values in scores.items():
        order = torch.argsort(values.abs(), descending=True, stable=True)
        places[name] = torch.empty(count, dtype=torch.long)
        places[name][order] = torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    for r in range(random_rankings):
        places[f"random-{r}"] = torch.randperm(count, generator=generator)
    return places


def size_grid(largest: int, dense: int = 20, growth: float = 1.15) -> list[int]:
    """The circuit sizes evaluated first: every N up to ``dense``, then growing by ``growth`` up to ``largest``."""
    sizes = list(range(min(largest, dense) + 1))
    step = float(sizes[-1])
    while sizes[-1] < largest:
        step = max(step * growth, sizes[-1] + 1.0)
        sizes.append(min(largest, int(round(step))))
    return sizes


def _before_crossing(curve: list[tuple[int, float]], threshold: float) -> range:
    """The sizes between a curve's first point at or above ``threshold`` and the evaluated size before it."""
    for i, (n, recovery) in enumerate(curve):
        if recovery >= threshold:
            return range(curve[i - 1][0] + 1, n) if i else range(0)
    return range(0)


def _recovery_metrics(setup: Setup, levels: Sequence[str], places: dict[str, torch.Tensor], sizes: Sequence[int],
                      slices: dict[tuple[str, int], slice], batch_size: int) -> dict[str, torch.Tensor]:
    """Per ranking, the metric (mean over the pairs) of the circuit of each size, plus "clean" and "corrupted"."""
    rows = [(name, n) for name in places for n in sizes]
    totals = torch.zeros(len(rows), dtype=torch.float64)
    clean = corrupted = 0.0
    for pair in range(len(setup.pairs)):
        source = setup.record([pair], "corrupted", levels)
        base = setup.record([pair], "clean", [])
        clean += float(base.metric[0]) / len(setup.pairs)
        corrupted += float(source.metric[0]) / len(setup.pairs)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            place = torch.stack([places[name] for name, _ in chunk])
            kept = torch.tensor([n for _, n in chunk])[:, None]
            plan = {key: place[:, where] >= kept for key, where in slices.items()}  # True: patched (not kept)
            totals[start:start + len(chunk)] += setup.patched_metric(
                pair, base.embeddings, plan, source.activations, source.embeddings) / len(setup.pairs)
    result = {name: totals[[i for i, (ranking, _) in enumerate(rows) if ranking == name]] for name in places}
    result["clean"] = torch.tensor([clean], dtype=torch.float64)
    result["corrupted"] = torch.tensor([corrupted], dtype=torch.float64)
    return result


def circuit(model: Any, tokenizer: Any, clean: Any, corrupted: Any,
            target: TokenSpec | Sequence[TokenSpec] | None = None,
            contrast: TokenSpec | Sequence[TokenSpec | None] | None = None, *, method: MethodSpec = DEFAULT_METHOD,
            levels: str | Sequence[str] = ("heads", "mlps"), budget: int | None = None, random_rankings: int = 5,
            seed: int = 0, batch_size: int = 64, edges: bool = True, max_nodes: int = 30, threshold: float = 0.8,
            metric: MetricFn | None = None, add_bos: bool | None = None) -> Circuit:
    """Rank the components of ``levels`` by ``method``'s estimate, by attribution patching's and at random
    (``random_rankings`` permutations from ``seed``); measure the recovery of the top-N circuit for N = 0 …
    ``budget`` (default: every component); keep the method's smallest circuit that recovers ``threshold`` of the
    gap (at most ``budget`` and ``max_nodes`` components; the input embeddings are node 0) and compute the edges
    between its nodes (``edges=False`` skips them). Other arguments as for :func:`attnlrp.patching.patch`
    (noising)."""
    resolved = patching_method(method)
    chosen = check_circuit_levels(levels)
    if budget is not None and budget < 0:
        raise ExplainError(f"budget must be 0 or more, got {budget}")
    if random_rankings < 0 or batch_size < 1 or max_nodes < 0:
        raise ExplainError("random_rankings and max_nodes must be 0 or more and batch_size at least 1")
    setup = Setup.build(model, tokenizer, clean, corrupted, target, contrast, metric, add_bos)
    with_embedding = (EMBEDDING, *chosen)
    positions = len(setup.pairs[0])
    shapes = {level: setup.sites.shape(level, positions) for level in chosen}
    units = list(iterate_units(chosen, shapes))
    slices: dict[tuple[str, int], slice] = {}
    for i, (level, layer, _) in enumerate(units):
        old = slices.get((level, layer))
        slices[(level, layer)] = slice(i if old is None else old.start, i + 1)

    def flat(per_pair: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([per_pair[level].mean(dim=0).reshape(-1) for level in chosen])

    estimated = estimate_pairs(setup, resolved, "noising", with_embedding).per_pair
    embedding = ComponentEffect(KIND[EMBEDDING], -1, None, float(estimated[EMBEDDING].mean()))
    scores = {resolved.name: flat(estimated)}
    if resolved.name != "gradient":
        scores["gradient"] = flat(estimate_pairs(setup, get_method("gradient"), "noising", chosen).per_pair)
    places = _rankings(scores, random_rankings, seed)
    largest = len(units) if budget is None else min(budget, len(units))
    sizes = size_grid(largest)
    metrics = _recovery_metrics(setup, chosen, places, sizes, slices, batch_size)
    clean_value, corrupted_value = float(metrics["clean"][0]), float(metrics["corrupted"][0])
    gap = clean_value - corrupted_value
    if gap == 0:
        raise ExplainError("the metric is the same on the clean and the corrupted prompts, so there is no gap to "
                           "recover; choose a corrupted prompt (or target) that changes the metric")

    def recovery(values: torch.Tensor) -> list[float]:
        return [float((v - corrupted_value) / gap) for v in values.tolist()]

    def curves_of(sizes: list[int], table: dict[str, torch.Tensor]) -> dict[str, list[tuple[int, float]]]:
        curves = {name: list(zip(sizes, recovery(table[name]))) for name in scores}
        if random_rankings:
            mean = torch.stack([table[f"random-{r}"] for r in range(random_rankings)]).mean(dim=0)
            curves["random"] = list(zip(sizes, recovery(mean)))
        return curves

    table = {name: metrics[name] for name in places}
    curves = curves_of(sizes, table)
    extra = sorted({n for curve in curves.values() for n in _before_crossing(curve, threshold)} - set(sizes))
    if extra:  # every size between the grid point before each ranking's first crossing and the crossing
        more = _recovery_metrics(setup, chosen, places, extra, slices, batch_size)
        order = torch.argsort(torch.tensor(sizes + extra))
        sizes = [(sizes + extra)[i] for i in order.tolist()]
        table = {name: torch.cat([table[name], more[name]])[order] for name in places}
        curves = curves_of(sizes, table)
    random_curves = [recovery(table[f"random-{r}"]) for r in range(random_rankings)]
    ranked_index = torch.argsort(places[resolved.name])
    method_scores = scores[resolved.name]
    ranked = [ComponentEffect(KIND[units[i][0]], units[i][1], units[i][2], float(method_scores[i]))
              for i in ranked_index.tolist()]
    kept = next((n for n, r in curves[resolved.name] if r >= threshold), largest)
    nodes = [embedding, *ranked[:min(kept, max_nodes)]]
    found: list[CircuitEdge] = []
    if edges and len(nodes) > 1:
        levels_of = {"head": "heads", "mlp": "mlps", "neuron": "neurons", "embedding": EMBEDDING}
        components = [(levels_of[n.kind], n.layer, n.index) for n in nodes]
        values = estimate_pairs(setup, resolved, "noising", with_embedding, nodes=components).edges
        found = [CircuitEdge(u, d, float(v.mean())) for (u, d), v in sorted(values.items())]
    return Circuit(resolved.name, chosen, {"clean": clean_value, "corrupted": corrupted_value}, ranked, curves,
                   random_curves, nodes, found, threshold, list(setup.pairs[0].clean.tokens))
