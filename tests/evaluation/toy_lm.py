"""A toy causal language model whose explained logit is exactly additive over tokens, so the right ranking,
the perturbation curves and every attribution are known in closed form.

logits[b, p, v] = Σ_{t ≤ p} e[b, t] · H[v]   (e: input embeddings, H: the head's rows)

so the target's logit at position p is Σ_{t ≤ p} w[token_t] with w = E · H[target]; zeroing token t's
embedding removes w[token_t], replacing the token by ``n`` changes the logit by w[n] − w[token_t].
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class ToyLM(nn.Module):
    """Embedding, causal cumulative sum, linear head; float64; counts the rows it scores."""

    def __init__(self, vocab: int = 16, dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim).double()
        self.head = nn.Linear(dim, vocab, bias=False).double()
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab, dim, generator=generator, dtype=torch.float64))
            self.head.weight.copy_(torch.randn(vocab, dim, generator=generator, dtype=torch.float64))
        self.rows_scored = 0
        self.calls = 0

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def _logits(self, input_ids, inputs_embeds) -> torch.Tensor:
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        self.rows_scored += embeds.shape[0]
        self.calls += 1
        return self.head(embeds.cumsum(dim=1))

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, logits_to_keep: int = 0):
        logits = self._logits(input_ids, inputs_embeds)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)

    def token_weights(self, target: int, contrast: int | None = None) -> torch.Tensor:
        """w[v]: what token v adds to the explained logit (target, minus contrast) at any later position."""
        head = self.head.weight[target] - (0 if contrast is None else self.head.weight[contrast])
        return (self.embed.weight @ head).detach()


class ToyLMWithoutKeep(ToyLM):
    """The same model without ``logits_to_keep``: the evaluation must then slice the full logits itself."""

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        return SimpleNamespace(logits=self._logits(input_ids, inputs_embeds))
