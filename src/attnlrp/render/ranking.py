"""Input checking, ordering and number formatting shared by the renderers."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check_pairs", "top_indices", "bottom_indices", "rank_of", "format_score", "ranked_scores"]


def check_pairs(tokens: Sequence[str], scores: Sequence[float]) -> tuple[list[str], list[float]]:
    """Validate that there is one score per token and normalise to plain lists.

    Accepts lists, numpy arrays or 1-d tensors for `scores`; a silent zip-truncation
    would attach relevances to the wrong tokens, hence the hard error.
    """
    if len(tokens) != len(scores):
        raise ValueError(f"tokens and scores differ in length: {len(tokens)} tokens, {len(scores)} scores")
    return [str(t) for t in tokens], [float(s) for s in scores]


def ranked_scores(scores: Sequence[float], exclude: Sequence[bool] | None = None) -> list[float]:
    """The scores that set the colour scale and the rankings: those of tokens marked in ``exclude`` (e.g. a BOS
    token holding the attention sink's relevance) become NaN, which both leave out; the tokens stay shown."""
    if exclude is None:
        return list(scores)
    if len(exclude) != len(scores):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(scores)} scores")
    return [math.nan if flag else s for s, flag in zip(scores, exclude)]


def _descending(scores: Sequence[float]) -> list[int]:
    # NaN has no order, so it is left out; ties keep prompt order (stable sort).
    return sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: -scores[i])


def top_indices(scores: Sequence[float], top_k: int) -> list[int]:
    """Indices of the `top_k` highest relevances, highest first."""
    return _descending(scores)[: max(top_k, 0)]


def bottom_indices(scores: Sequence[float], k: int = 3, exclude: Sequence[int] = ()) -> list[int]:
    """Indices of up to `k` most negative relevances, most negative first (skipping `exclude`)."""
    skip = set(exclude)
    neg = [i for i in reversed(_descending(scores)) if scores[i] < 0 and i not in skip]
    return neg[: max(k, 0)]


def rank_of(scores: Sequence[float]) -> dict[int, int]:
    """1-based rank of each non-NaN index in descending order."""
    return {i: r for r, i in enumerate(_descending(scores), start=1)}


def format_score(x: float, digits: int = 3) -> str:
    """Signed fixed-point, e.g. ``+4.912`` / ``-0.100``; the sign is the point of LRP."""
    return "nan" if math.isnan(x) else f"{x:+.{digits}f}"
