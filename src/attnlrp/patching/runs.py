"""One model, tokenizer, set of prompt pairs and metric, and the plain forward passes on them that every part of
patching shares (the estimate's other run, the truth's and the circuit's patched runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..models.adapter import ModelAdapter, model_and_tokenizer
from .metric import MetricFn, PairMetric, TokenSpec, build_metric, logits_of
from .pairs import PromptPair, prepare_pairs, stack_ids
from .sites import EMBEDDING, ComponentSites, Patcher, Plan, Recorder, replace_units

#: which prompt of a pair is run as it is (the base) and which one gives the patched-in values, per direction
ROLES = {"noising": ("clean", "corrupted"), "denoising": ("corrupted", "clean")}


def check_direction(direction: str) -> tuple[str, str]:
    """(base, source) prompt of each pair for ``direction``; an error naming the two directions otherwise."""
    from ..errors import ExplainError

    if direction not in ROLES:
        raise ExplainError(f"unknown direction {direction!r}; choose 'noising' (the clean run, corrupted values "
                           "patched in) or 'denoising' (the corrupted run, clean values patched in)")
    return ROLES[direction]


@dataclass(frozen=True)
class Recorded:
    """What a plain forward pass of some pairs' prompts gives: activations per (level, layer), the metric per row
    and the input embeddings."""

    activations: dict[tuple[str, int], torch.Tensor]
    metric: torch.Tensor
    embeddings: torch.Tensor


@dataclass(frozen=True, eq=False)
class Setup:
    """The model (its adapter and sites), the prompt pairs and the metric of one patching request."""

    model: nn.Module
    tokenizer: Any
    adapter: ModelAdapter
    sites: ComponentSites
    pairs: list[PromptPair]
    batch: bool  # a list of pairs was given (results per pair are lists)
    metric: PairMetric

    @classmethod
    def build(cls, model: nn.Module, tokenizer: Any, clean: Any, corrupted: Any,
              target: TokenSpec | Sequence[TokenSpec] | None, contrast: TokenSpec | Sequence[TokenSpec | None] | None,
              metric: MetricFn | None, add_bos: bool | None) -> "Setup":
        """Check and tokenise everything before any forward pass."""
        model, tokenizer = model_and_tokenizer(model, tokenizer)
        adapter = ModelAdapter.of(model)
        adapter.input_embedding()  # a clear error for models without inputs_embeds
        sites = ComponentSites.of(model)
        pairs, batch = prepare_pairs(adapter, tokenizer, clean, corrupted, add_bos)
        return cls(model, tokenizer, adapter, sites, pairs, batch,
                   build_metric(adapter, tokenizer, len(pairs), target, contrast, metric))

    def groups(self) -> list[list[int]]:
        """The pairs' indices grouped by length (each group runs as one batch), in the order first seen."""
        groups: dict[int, list[int]] = {}
        for index, pair in enumerate(self.pairs):
            groups.setdefault(len(pair), []).append(index)
        return list(groups.values())

    def ids(self, pairs: Sequence[int], which: str) -> torch.Tensor:
        """(rows, positions) ids of the ``which`` ("clean" or "corrupted") prompt of each pair (one length)."""
        return stack_ids([getattr(self.pairs[p], which) for p in pairs], self.adapter.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The input embeddings of ``ids``, without gradient."""
        with torch.no_grad():
            return self.adapter.input_embedding()(ids)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The logits for input embeddings (rows, positions, features): no padding, no cache; only the last
        position's for the default metric, where the model can skip the others."""
        inputs: dict[str, Any] = {"inputs_embeds": embeddings, **self.adapter.no_cache()}
        if self.metric.custom is None and self.adapter.accepts("logits_to_keep"):
            inputs["logits_to_keep"] = 1  # the default metric reads the last position only
        if self.adapter.accepts("attention_mask"):
            inputs["attention_mask"] = torch.ones(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
        return logits_of(self.model(**inputs))

    def record(self, pairs: Sequence[int], which: str, levels: Sequence[str]) -> Recorded:
        """A plain forward pass of the ``which`` prompts of ``pairs``, reading the activations of ``levels``."""
        embeddings = self.embed(self.ids(pairs, which))
        with torch.no_grad(), Recorder(self.sites, levels) as recorder:
            values = self.metric(self.forward(embeddings), pairs)
        activations = {(level, site.index): recorder.capture(level, site.index).activation
                       for level in levels if level != EMBEDDING for site in self.sites.layers}
        return Recorded(activations, values.detach().double().cpu(), embeddings)

    def patched_metric(self, pair: int, base: torch.Tensor, plan: Plan, sources: Mapping[tuple[str, int], torch.Tensor],
                       source_embeddings: torch.Tensor) -> torch.Tensor:
        """The metric of one pair's base run (embeddings ``base``, one row) with the plan's units (rows of it)
        patched from ``sources``; the embedding's plan entry patches the inputs. One forward pass, no gradient."""
        rows = next(iter(plan.values())).shape[0]
        embeddings = base.expand(rows, *base.shape[1:])
        mask = plan.get((EMBEDDING, -1))
        if mask is not None:
            embeddings = replace_units(EMBEDDING, embeddings, source_embeddings, mask, self.sites)
        with torch.no_grad(), Patcher(self.sites, plan, sources):
            return self.metric(self.forward(embeddings), [pair] * rows).detach().double().cpu()
