"""One evaluated text instance, and the score the evaluation reads from the model for it.

Every metric and every attribution method of the evaluation explains the same scalar: the target token's
**logit** at the explained position (or the logit difference target − contrast), as ``Explainer`` does. The
perturbation curves also record the target's **log-probability** (log-softmax over the vocabulary at that
position; with a contrast, ``logprob(target) − logprob(contrast)``, which equals the logit difference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ExplainError
from ..models.adapter import ModelAdapter

__all__ = ["TextInstance", "text_instance", "neutral_token_id", "position_logits", "target_scores", "embedding_of"]


@dataclass(frozen=True, eq=False)
class TextInstance:
    """A token sequence, the output to explain, and which tokens the evaluation may rank and flip.

    ``input_ids`` (T,) long; ``position``: the output position explained (normalised to 0..T-1);
    ``target_id`` / ``contrast_id``: vocabulary ids; ``flippable`` (T,) bool: False for special tokens (BOS,
    chat markers) and, for causal models, tokens after ``position`` — they are never ranked, flipped or
    attributed. ``meta`` carries whatever the data set wants to keep with the sample (text, answer span…).
    Instances compare by identity (their fields are tensors).
    """

    input_ids: torch.Tensor
    position: int
    target_id: int
    flippable: torch.Tensor
    contrast_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = torch.as_tensor(self.input_ids)
        if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point:
            raise ExplainError(f"input_ids must be a non-empty 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        flippable = torch.as_tensor(self.flippable, dtype=torch.bool)
        if flippable.shape != ids.shape:
            raise ExplainError(f"flippable has shape {tuple(flippable.shape)} but input_ids has {tuple(ids.shape)}")
        length = ids.numel()
        if not -length <= int(self.position) < length:
            raise ExplainError(f"position {self.position} is outside the sequence of {length} tokens")
        if self.contrast_id is not None and int(self.contrast_id) == int(self.target_id):
            raise ExplainError("target and contrast are the same token; the difference would be 0")
        object.__setattr__(self, "input_ids", ids.detach().to("cpu", torch.long))
        object.__setattr__(self, "flippable", flippable.detach().cpu())
        object.__setattr__(self, "position", int(self.position) % length)
        object.__setattr__(self, "target_id", int(self.target_id))
        if self.contrast_id is not None:
            object.__setattr__(self, "contrast_id", int(self.contrast_id))

    def __len__(self) -> int:
        return self.input_ids.numel()

    @property
    def n_flippable(self) -> int:
        """How many tokens may be flipped (ranked by a method)."""
        return int(self.flippable.sum())

    def require_flippable(self) -> None:
        """Raise if there is nothing to rank: an evaluation of such a sample is meaningless."""
        if self.n_flippable == 0:
            raise ExplainError("the instance has no flippable token (all are special or after the position)")


def _token(tokenizer, spec: int | str, what: str) -> int:
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ExplainError(f"{what} must be a token string or id, got {type(spec).__name__}")
    if isinstance(spec, int):
        return spec
    ids = tokenizer(spec, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ExplainError(f"{what} {spec!r} is {len(ids)} tokens for this tokenizer; give a single token or its id")
    return int(ids[0])


def text_instance(
    tokenizer,
    text: str | Sequence[int] | torch.Tensor,
    target: int | str | None = None,
    *,
    model: nn.Module | None = None,
    contrast: int | str | None = None,
    position: int = -1,
    add_special_tokens: bool = True,
    causal: bool = True,
    meta: dict[str, Any] | None = None,
) -> TextInstance:
    """Build a :class:`TextInstance` from text (or ids): special tokens (the tokenizer's ``all_special_ids``)
    are not flippable, nor (``causal=True``) tokens after ``position``, which a causal model cannot see.

    ``target=None`` takes the model's predicted token at ``position`` (``model`` is then required).
    """
    if isinstance(text, str):
        if not text.strip():
            raise ExplainError("the text is empty")
        ids = torch.tensor(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], dtype=torch.long)
    else:
        ids = torch.as_tensor(text, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ExplainError("the text gave no tokens")
    length = ids.numel()
    if not -length <= position < length:
        raise ExplainError(f"position {position} is outside the sequence of {length} tokens")
    position %= length
    special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []))
    flippable = torch.tensor([int(i) not in special for i in ids.tolist()], dtype=torch.bool)
    if causal:
        flippable[position + 1 :] = False
    if target is None:
        if model is None:
            raise ExplainError("target=None means the model's prediction: pass model= as well")
        with torch.no_grad():
            logits = position_logits(model, position, input_ids=ids.unsqueeze(0))
        target_id = int(logits[0].argmax())
    else:
        target_id = _token(tokenizer, target, "target")
    contrast_id = None if contrast is None else _token(tokenizer, contrast, "contrast")
    return TextInstance(ids, position, target_id, flippable, contrast_id, dict(meta or {}))


def neutral_token_id(tokenizer) -> int:
    """The token that stands for "no information" when a token is flipped by replacement.

    The tokenizer's single token for ``" "`` (a space) if ``" "`` is exactly one token — a real, frequent,
    content-free token, so that every perturbed input stays a plausible token sequence — else its unknown
    token, else its padding token. Raises :class:`ExplainError` if it has none of these.
    """
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if len(ids) == 1:
        return int(ids[0])
    for name in ("unk_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ExplainError("the tokenizer has no single-token ' ', no unk and no pad token: pass neutral_id= explicitly")


def embedding_of(model: nn.Module) -> nn.Module:
    """The model's input embedding layer (the evaluation perturbs and attributes at its output)."""
    embedding = ModelAdapter.of(model).embedding
    if embedding is None:
        raise ExplainError(f"{type(model).__name__} has no input embeddings (get_input_embeddings())")
    return embedding


def model_device(model: nn.Module) -> torch.device:
    return ModelAdapter.of(model).device


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` has a parameter ``name`` (the model's adapter knows)."""
    return ModelAdapter.of(model).accepts(name)


def position_logits(
    model: nn.Module,
    position: int,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (B, V) at one position of a batch of equally long sequences; differentiable.

    Uses ``logits_to_keep`` where the model's forward has it, so the vocabulary projection runs for the
    positions from ``position`` on only (the last one: one row) — a fifth of SmolLM2's compute.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ExplainError("give exactly one of input_ids and inputs_embeds")
    device = model_device(model)
    name, given = ("input_ids", input_ids) if input_ids is not None else ("inputs_embeds", inputs_embeds)
    assert given is not None  # exactly one is given (checked above)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    length = given.shape[1]
    kwargs: dict[str, Any] = {name: given.to(device)}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if forward_accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    keep = forward_accepts(model, "logits_to_keep")
    if keep:
        kwargs["logits_to_keep"] = length - position
    output = model(**kwargs)
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, torch.Tensor):
        logits = output
    if logits is None:
        raise ExplainError(f"{type(model).__name__} returns no logits; the evaluation needs a language-model head")
    return logits[:, 0] if keep else logits[:, position]


def target_scores(logits: torch.Tensor, target_id: int, contrast_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit score, log-probability score) per row of ``logits`` (B, V), in float64.

    Logit score: ``z[target]`` or ``z[target] − z[contrast]``; log-probability score: ``log_softmax(z)[target]``
    or ``log_softmax(z)[target] − log_softmax(z)[contrast]`` (which equals the logit difference).
    """
    z = logits.double()
    logprob = torch.log_softmax(z, dim=-1)
    logit_score, logprob_score = z[:, target_id], logprob[:, target_id]
    if contrast_id is not None:
        logit_score = logit_score - z[:, contrast_id]
        logprob_score = logprob_score - logprob[:, contrast_id]
    return logit_score, logprob_score
