"""What the attribution methods share: the explained score as a function of the flippable tokens' embeddings."""

from __future__ import annotations

import contextlib
import zlib
from typing import Iterator

import torch
from torch import nn

from ...errors import ExplainError
from ..instance import TextInstance, embedding_of, model_device, position_logits


class EmbeddingScorer:
    """``f(x)``: the explained logit score when the flippable tokens have embeddings ``x`` (B, F, D).

    Special tokens keep their own embeddings, so methods that perturb or integrate over ``x`` never attribute
    anything to them, and captum sees only the features the evaluation ranks. ``x0`` is the actual input.
    """

    def __init__(self, model: nn.Module, instance: TextInstance) -> None:
        instance.require_flippable()
        self.model = model
        self.instance = instance
        self.device = model_device(model)
        ids = instance.input_ids.to(self.device).unsqueeze(0)
        with torch.no_grad():
            self.base = embedding_of(model)(ids).detach()  # (1, T, D)
        self.index = torch.nonzero(instance.flippable, as_tuple=False).squeeze(1).to(self.device)
        self.x0 = self.base[:, self.index].clone()  # (1, F, D)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) input embeddings with the flippable rows taken from ``x`` (B, F, D)."""
        embeds = self.base.expand(x.shape[0], -1, -1).clone()
        embeds[:, self.index] = x.to(embeds.dtype)
        return embeds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = position_logits(self.model, self.instance.position, inputs_embeds=self.full(x))
        score = logits[:, self.instance.target_id]
        if self.instance.contrast_id is not None:
            score = score - logits[:, self.instance.contrast_id]
        return score

    def to_tokens(self, per_feature: torch.Tensor) -> torch.Tensor:
        """(F,) values of the flippable tokens → (T,) float64 on CPU, 0 at the other tokens."""
        relevance = torch.zeros(len(self.instance), dtype=torch.float64)
        relevance[self.index.cpu()] = per_feature.detach().double().cpu()
        return relevance


def zero_unflippable(relevance: torch.Tensor, instance: TextInstance) -> torch.Tensor:
    """(T,) float64 on CPU with special (and other non-flippable) tokens set to 0."""
    relevance = relevance.detach().double().cpu().clone()
    if relevance.shape != instance.input_ids.shape:
        raise ExplainError(f"a method returned relevance of shape {tuple(relevance.shape)} for {len(instance)} tokens")
    relevance[~instance.flippable] = 0.0
    return relevance


def instance_seed(seed: int, instance: TextInstance) -> int:
    """A seed that differs between instances but is reproducible: ``seed`` mixed with a CRC of the token ids."""
    crc = zlib.crc32(instance.input_ids.numpy().astype("<i8").tobytes())
    return (int(seed) * 1_000_003 + crc) % (2**63 - 1)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for ``device`` (and the CPU) inside the block only; the caller's state returns."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield
