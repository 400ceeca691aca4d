"""Real activation patching, the ground truth of the estimates: for each component, the base run with that
component's activation replaced by the source run's (noising: the clean run with the corrupted value), and the
change of the metric. Batched: each row of a forward pass patches a different component, so a level of ``n``
components costs ``n / batch_size`` forward passes per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..errors import ExplainError
from .agreement import Agreement, agreement
from .metric import MetricFn, TokenSpec
from .runs import Setup, check_direction
from .names import LEVELS
from .sites import check_levels, iterate_units


@dataclass(frozen=True)
class Verification:
    """The true effects per level (mean over the pairs, NaN where not patched), per pair, and their agreement with
    the estimates."""

    truth: dict[str, torch.Tensor]
    truth_per_pair: dict[str, torch.Tensor]
    agreement: dict[str, Agreement]

    @classmethod
    def of(cls, truth_per_pair: dict[str, torch.Tensor], estimates: Mapping[str, torch.Tensor],
           top_k: int = 10) -> "Verification":
        """The verification of ``estimates`` (level → mean over the pairs) by the per-pair truth."""
        truth = {level: values.mean(dim=0) for level, values in truth_per_pair.items()}
        return cls(truth, truth_per_pair,
                   {level: agreement(estimates[level], values, top_k) for level, values in truth.items()})


def _selection(level: str, shape: tuple[int, ...], components: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
    chosen = None if components is None else components.get(level)
    if chosen is None:
        return torch.ones(shape, dtype=torch.bool)
    chosen = torch.as_tensor(chosen)
    if chosen.dtype != torch.bool or tuple(chosen.shape) != shape:
        raise ExplainError(f"components[{level!r}] must be a bool tensor of shape {shape} (True: patch it), got "
                           f"{chosen.dtype} {tuple(chosen.shape)}")
    return chosen.cpu()


def true_effects(setup: Setup, levels: Sequence[str], direction: str, batch_size: int = 64,
                 components: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per level, (pairs, *shape) true effects ``m(base with the component patched) − m(base)``; NaN where
    ``components`` (level → bool mask of the level's shape) leaves a component out."""
    base_role, source_role = check_direction(direction)
    if batch_size < 1:
        raise ExplainError(f"batch_size must be at least 1, got {batch_size}")
    if "residual" in levels and len({len(p) for p in setup.pairs}) > 1:
        raise ExplainError("the residual level needs every pair to have the same number of tokens; leave out "
                           "'residual' or patch the pairs separately")
    positions = len(setup.pairs[0])
    shapes = {level: setup.sites.shape(level, positions) for level in levels}
    masks = {level: _selection(level, shapes[level], components) for level in levels}
    units = [(level, layer, index) for level, layer, index in iterate_units(levels, shapes)
             if masks[level][(layer,) if index is None else (layer, index)]]
    truth = {level: torch.full((len(setup.pairs), *shapes[level]), float("nan"), dtype=torch.float64)
             for level in levels}
    for pair in range(len(setup.pairs)):
        source = setup.record([pair], source_role, levels)
        base = setup.record([pair], base_role, [])
        for start in range(0, len(units), batch_size):
            chunk = units[start:start + batch_size]
            plan: dict[tuple[str, int], torch.Tensor] = {}
            for row, (level, layer, index) in enumerate(chunk):
                width = shapes[level][1] if len(shapes[level]) > 1 else 1
                mask = plan.setdefault((level, layer), torch.zeros(len(chunk), width, dtype=torch.bool))
                mask[row, 0 if index is None else index] = True
            values = setup.patched_metric(pair, base.embeddings, plan, source.activations, source.embeddings)
            effects = values - base.metric[0]
            for row, (level, layer, index) in enumerate(chunk):
                truth[level][(pair, layer) if index is None else (pair, layer, index)] = effects[row]
    return truth


def activation_patching(model: Any, tokenizer: Any, clean: Any, corrupted: Any,
                        target: TokenSpec | Sequence[TokenSpec] | None = None,
                        contrast: TokenSpec | Sequence[TokenSpec | None] | None = None, *,
                        levels: str | Sequence[str] = LEVELS, direction: str = "noising",
                        metric: MetricFn | None = None, batch_size: int = 64,
                        components: Mapping[str, torch.Tensor] | None = None,
                        add_bos: bool | None = None) -> dict[str, torch.Tensor]:
    """The true effect of patching each component of ``levels``, level → tensor of the shape of
    ``patch(...).estimates`` (mean over the pairs), from real patched forward passes (``batch_size`` patched
    copies per pass). ``components`` (level → bool tensor of that shape) restricts what is patched; the rest is
    NaN. The arguments mean what they mean for :func:`attnlrp.patching.patch`."""
    setup = Setup.build(model, tokenizer, clean, corrupted, target, contrast, metric, add_bos)
    per_pair = true_effects(setup, check_levels(levels), direction, batch_size, components)
    return {level: values.mean(dim=0) for level, values in per_pair.items()}
