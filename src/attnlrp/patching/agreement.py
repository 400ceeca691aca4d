"""How well estimates agree with the true patching effects: Pearson and Spearman correlation and the overlap of
the top-k components by absolute effect. Ranks are computed with torch (ties share their mean rank)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Agreement:
    """The agreement of one level's estimates with the truth over ``n`` components (NaN where undefined: fewer
    than two components, or a constant side)."""

    pearson: float
    spearman: float
    top_k_overlap: float  # |top-k by |estimate| ∩ top-k by |truth|| / k
    k: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (NaN as ``None``)."""
        return {"pearson": _json(self.pearson), "spearman": _json(self.spearman),
                "top_k_overlap": _json(self.top_k_overlap), "k": self.k}


def _json(value: float) -> float | None:
    return value if math.isfinite(value) else None


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's r of two 1-D tensors (float64); NaN when either is constant or shorter than 2."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan


def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties given their mean rank (as scipy.stats.rankdata)."""
    x = x.double().flatten()
    values, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    return mean_rank[inverse]


def agreement(estimate: torch.Tensor, truth: torch.Tensor, k: int = 10) -> Agreement:
    """Agreement over the components where the truth is known (finite): Pearson, Spearman and top-k overlap with
    ``k`` capped at the number of components."""
    estimate, truth = estimate.double().flatten().cpu(), truth.double().flatten().cpu()
    known = torch.isfinite(truth) & torch.isfinite(estimate)
    estimate, truth = estimate[known], truth[known]
    n = int(estimate.numel())
    k = min(k, n)
    if k == 0:
        return Agreement(math.nan, math.nan, math.nan, 0, 0)
    top_estimate = set(torch.argsort(estimate.abs(), descending=True, stable=True)[:k].tolist())
    top_truth = set(torch.argsort(truth.abs(), descending=True, stable=True)[:k].tolist())
    return Agreement(pearson(estimate, truth), pearson(ranks(estimate), ranks(truth)),
                     len(top_estimate & top_truth) / k, k, n)
