"""What patching measures: by default ``logit(A) − logit(B)`` at the last position (``logit(A)`` without a
contrast), with one target (and contrast) per pair or one for all; or any callable on the logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch

from ..errors import ExplainError
from ..models.adapter import ModelAdapter

#: a user's metric: ``metric(logits)`` with logits ``(rows, positions, vocab)`` gives one value per row
MetricFn = Callable[[torch.Tensor], torch.Tensor]
#: a token: a string (one token for the tokenizer, kept verbatim with its leading space) or an id
TokenSpec = Union[int, str]


@dataclass(frozen=True)
class PairMetric:
    """The metric of every pair: the default logit difference (``targets``, ``contrasts`` per pair) or ``custom``."""

    targets: tuple[int, ...] | None
    contrasts: tuple[int | None, ...] | None
    custom: MetricFn | None = None

    def __call__(self, logits: torch.Tensor, pairs: Sequence[int]) -> torch.Tensor:
        """One value per row of ``logits`` (rows, positions, vocab); row ``r`` belongs to pair ``pairs[r]``."""
        if self.custom is not None:
            values = self.custom(logits)
            if not isinstance(values, torch.Tensor) or values.shape != (logits.shape[0],):
                shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
                raise ExplainError(f"the metric must return one value per row, a tensor of shape "
                                   f"({logits.shape[0]},); it returned {shape}")
            return values
        assert self.targets is not None and self.contrasts is not None
        last = logits[:, -1]
        rows = torch.arange(len(pairs), device=last.device)
        target = torch.tensor([self.targets[p] for p in pairs], device=last.device)
        values = last[rows, target]
        contrasts = [self.contrasts[p] for p in pairs]
        if any(c is not None for c in contrasts):
            contrast = torch.tensor([c if c is not None else 0 for c in contrasts], device=last.device)
            has = torch.tensor([c is not None for c in contrasts], device=last.device)
            values = values - torch.where(has, last[rows, contrast], torch.zeros_like(values))
        return values


def _per_pair(spec: Any, pairs: int, what: str) -> list[Any]:
    if isinstance(spec, (list, tuple)):
        if len(spec) != pairs:
            raise ExplainError(f"{len(spec)} values for {what} but {pairs} prompt pairs")
        return list(spec)
    return [spec] * pairs


def build_metric(adapter: ModelAdapter, tokenizer: Any, pairs: int, target: TokenSpec | Sequence[TokenSpec] | None,
                 contrast: TokenSpec | Sequence[TokenSpec | None] | None, metric: MetricFn | None) -> PairMetric:
    """The metric for ``pairs`` pairs: ``metric`` if given (then no target), else the logit difference of the
    target and contrast tokens (each a string of one token or an id; one for all pairs or a list, one per pair)."""
    if metric is not None:
        if target is not None or contrast is not None:
            raise ExplainError("give either a metric or a target (and contrast), not both")
        if not callable(metric):
            raise ExplainError(f"metric must be a callable on the logits, got {type(metric).__name__}")
        return PairMetric(None, None, metric)
    if target is None:
        raise ExplainError("give a target token (the metric is logit(target) − logit(contrast) at the last "
                           "position) or a metric callable")
    if adapter.head != "causal-lm":
        raise ExplainError(f"{type(adapter.model).__name__} is not a causal language model: the default metric "
                           "reads the next token's logits; pass metric=callable(logits) -> one value per row")
    targets = tuple(adapter.token_id(tokenizer, t, "target") for t in _per_pair(target, pairs, "target"))
    contrasts = tuple(None if c is None else adapter.token_id(tokenizer, c, "contrast")
                      for c in _per_pair(contrast, pairs, "contrast"))
    return PairMetric(targets, contrasts)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output (an object with ``.logits``, or a tensor)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise ExplainError(f"the model's output has no logits ({type(output).__name__})")
    return logits
