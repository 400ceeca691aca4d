"""Running top-k of every neuron of one layer, merged batch by batch without a Python loop over neurons.

The order is total and fixed: higher score first, and among equal scores the lower window index first. Merging
is then associative: any split of the corpus into batches and chunks gives the same top-k as one pass over all
windows, which is what makes a resumed build equal to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY = -1  # window index of an unused slot (its score is -inf)


@dataclass
class TopK:
    """Per neuron, the ``k`` best windows so far: score, window, peak position and the per-token values.

    ``scores`` (neurons, k) float64, ``windows`` and ``positions`` (neurons, k) int64; ``activations`` and
    ``relevance`` (neurons, k, tokens) float32 hold the neuron's values over the window's tokens, needed only
    for entries not yet written to the store (entries read back from it have zeros there).
    """

    scores: torch.Tensor
    windows: torch.Tensor
    positions: torch.Tensor
    activations: torch.Tensor
    relevance: torch.Tensor

    @classmethod
    def empty(cls, neurons: int, k: int, tokens: int) -> "TopK":
        return cls(
            torch.full((neurons, k), float("-inf"), dtype=torch.float64),
            torch.full((neurons, k), EMPTY, dtype=torch.int64),
            torch.zeros((neurons, k), dtype=torch.int64),
            torch.zeros((neurons, k, tokens), dtype=torch.float32),
            torch.zeros((neurons, k, tokens), dtype=torch.float32),
        )

    @property
    def k(self) -> int:
        return self.scores.shape[1]

    def merge(self, scores: torch.Tensor, windows: torch.Tensor, positions: torch.Tensor,
              activations: torch.Tensor, relevance: torch.Tensor) -> None:
        """Merge one batch: ``scores``/``positions`` (batch, neurons), ``windows`` (batch,), ``activations`` and
        ``relevance`` (batch, tokens, neurons). Two stable sorts (window, then score) give the fixed order."""
        neurons, k = self.scores.shape
        batch = scores.shape[0]
        cand_scores = torch.cat([self.scores, scores.to(torch.float64).T], dim=1)  # (neurons, k + batch)
        cand_windows = torch.cat([self.windows, windows.to(torch.int64).expand(neurons, batch)], dim=1)
        by_window = torch.argsort(cand_windows, dim=1, stable=True)
        by_score = torch.argsort(cand_scores.gather(1, by_window), dim=1, descending=True, stable=True)
        pick = by_window.gather(1, by_score[:, :k])  # (neurons, k): indices into the candidates
        self.scores = cand_scores.gather(1, pick)
        self.windows = cand_windows.gather(1, pick)
        self.positions = torch.cat([self.positions, positions.to(torch.int64).T], dim=1).gather(1, pick)
        index = pick.unsqueeze(-1).expand(-1, -1, self.activations.shape[2])
        self.activations = torch.cat([self.activations, activations.permute(2, 0, 1)], dim=1).gather(1, index)
        self.relevance = torch.cat([self.relevance, relevance.permute(2, 0, 1)], dim=1).gather(1, index)

    def keys(self) -> torch.Tensor:
        """(neurons, k) int64 key ``neuron * 2**32 + window`` per slot, -1 for an empty slot."""
        neuron = torch.arange(self.windows.shape[0], dtype=torch.int64).unsqueeze(1)
        return torch.where(self.windows >= 0, neuron * (1 << 32) + self.windows, torch.full_like(self.windows, -1))


def changes(before: torch.Tensor, after: TopK) -> tuple[torch.Tensor, torch.Tensor]:
    """What to write to go from the stored windows ``before`` (neurons, k) to ``after``: the (neuron, window)
    pairs to delete, shape (n, 2), and the (neuron, slot) indices of ``after`` to insert, shape (m, 2)."""
    neuron = torch.arange(before.shape[0], dtype=torch.int64).unsqueeze(1)
    old = torch.where(before >= 0, neuron * (1 << 32) + before, torch.full_like(before, -1))
    new = after.keys()
    gone = (old >= 0) & ~torch.isin(old, new)
    came = (new >= 0) & ~torch.isin(new, old)
    deleted = torch.stack([neuron.expand_as(before)[gone], before[gone]], dim=1)
    return deleted, came.nonzero()
