"""Running top-k of every neuron of one layer, merged batch by batch without a Python loop over neurons.

The order is total and fixed: higher score first, and among equal scores the lower window index first. Merging
is then associative: any split of the corpus into batches and chunks gives the same top-k as one pass over all
windows, which is what makes a resumed build equal to an uninterrupted one, and a sharded build (each process
ranks its own chunks, :meth:`TopK.combine` merges them in chunk order) equal to a one-process build.
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
    for entries not yet written to the store (entries read back from it have zeros there); a top-k that only
    ranks has ``tokens = 0``.
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
        ``relevance`` (batch, tokens, neurons)."""
        neurons, batch = self.scores.shape[0], scores.shape[0]
        self._keep_best(scores.to(torch.float64).T, windows.to(torch.int64).expand(neurons, batch),
                        positions.to(torch.int64).T, activations.permute(2, 0, 1), relevance.permute(2, 0, 1))

    def combine(self, other: "TopK") -> None:
        """Merge another top-k of the same neurons (one chunk's, say): the same result as merging the windows it
        was built from one by one. Its empty slots (score -inf) never displace an entry."""
        self._keep_best(other.scores, other.windows, other.positions, other.activations, other.relevance)

    def _keep_best(self, scores: torch.Tensor, windows: torch.Tensor, positions: torch.Tensor,
                   activations: torch.Tensor, relevance: torch.Tensor) -> None:
        """Keep the ``k`` best of the current entries and the candidates (neurons, n[, tokens]). Two stable sorts
        (window, then score) give the fixed order."""
        k = self.scores.shape[1]
        cand_scores = torch.cat([self.scores, scores], dim=1)  # (neurons, k + n)
        cand_windows = torch.cat([self.windows, windows], dim=1)
        by_window = torch.argsort(cand_windows, dim=1, stable=True)
        by_score = torch.argsort(cand_scores.gather(1, by_window), dim=1, descending=True, stable=True)
        pick = by_window.gather(1, by_score[:, :k])  # (neurons, k): indices into the candidates
        self.scores = cand_scores.gather(1, pick)
        self.windows = cand_windows.gather(1, pick)
        self.positions = torch.cat([self.positions, positions], dim=1).gather(1, pick)
        index = pick.unsqueeze(-1).expand(-1, -1, self.activations.shape[2])
        self.activations = torch.cat([self.activations, activations], dim=1).gather(1, index)
        self.relevance = torch.cat([self.relevance, relevance], dim=1).gather(1, index)

    def floor(self) -> torch.Tensor:
        """(neurons,) float64: the score a new window must beat to enter each neuron's top-k (-inf while the
        top-k is not full). A later window with an equal score does not enter: the earlier window ranks first."""
        return self.scores[:, -1].clone()

    def above(self, floor: torch.Tensor) -> dict[str, torch.Tensor]:
        """The entries whose score beats ``floor`` (neurons,), compactly: what one process sends of its chunk.
        The others can never enter a top-k whose entries already reach ``floor``."""
        keep = (self.windows >= 0) & (self.scores > floor.unsqueeze(1))
        neuron, slot = keep.nonzero(as_tuple=True)
        return {"neuron": neuron, "slot": slot, "scores": self.scores[keep], "windows": self.windows[keep],
                "positions": self.positions[keep], "activations": self.activations[keep],
                "relevance": self.relevance[keep]}

    @classmethod
    def from_entries(cls, entries: dict[str, torch.Tensor], neurons: int, k: int, tokens: int) -> "TopK":
        """The top-k :meth:`above` came from, with the entries it left out empty. ``tokens=0``: without the
        per-token values (a top-k that only ranks, as process 0's running top-k: see :func:`entry_rows`)."""
        state = cls.empty(neurons, k, tokens)
        at = (entries["neuron"], entries["slot"])
        state.scores[at] = entries["scores"]
        state.windows[at] = entries["windows"]
        state.positions[at] = entries["positions"]
        if tokens:
            state.activations[at] = entries["activations"]
            state.relevance[at] = entries["relevance"]
        return state

    def keys(self) -> torch.Tensor:
        """(neurons, k) int64 key ``neuron * 2**32 + window`` per slot, -1 for an empty slot."""
        neuron = torch.arange(self.windows.shape[0], dtype=torch.int64).unsqueeze(1)
        return torch.where(self.windows >= 0, neuron * (1 << 32) + self.windows, torch.full_like(self.windows, -1))


def entry_rows(entries: dict[str, torch.Tensor], neuron: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Where each (neuron, window) pair is among :meth:`TopK.above`'s ``entries`` (every pair must be there)."""
    have = entries["neuron"] * (1 << 32) + entries["windows"]
    want = neuron * (1 << 32) + window
    if not len(want):
        return torch.zeros(0, dtype=torch.int64)
    order = torch.argsort(have)
    at = torch.searchsorted(have[order], want).clamp(max=max(len(have) - 1, 0))
    if not len(have) or not torch.equal(have[order][at], want):
        raise ValueError("a (neuron, window) pair is not among the entries")
    return order[at]


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
