"""Clean and corrupted prompts, tokenised as the explainers tokenise (the same BOS policy), in pairs of equal
length: activation patching copies a component's activation position by position, so both runs must have the
same positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ExplainError
from ..models.adapter import ModelAdapter, Prompt, bos_policy, prepare_prompt
from ..render.escape import token_repr
from ..tokens import TokenizedPrompt


@dataclass(frozen=True)
class PromptPair:
    """One clean prompt and its corrupted counterpart, of the same length."""

    clean: TokenizedPrompt
    corrupted: TokenizedPrompt

    def __len__(self) -> int:
        return len(self.clean)


def _is_batch(prompts: Any) -> bool:
    """Several prompts: a list of texts or of id sequences, or a 2-D tensor / array (a list of ints is one)."""
    if isinstance(prompts, (torch.Tensor, np.ndarray)):
        return prompts.ndim == 2
    if isinstance(prompts, (list, tuple)):
        return bool(prompts) and all(isinstance(p, (str, list, tuple, torch.Tensor, np.ndarray)) for p in prompts)
    return False


def _rows(prompts: Any) -> list[Prompt]:
    if isinstance(prompts, (torch.Tensor, np.ndarray)) and prompts.ndim == 2:
        return [row for row in prompts]
    return list(prompts) if _is_batch(prompts) else [prompts]


def prepare_pairs(adapter: ModelAdapter, tokenizer: Any, clean: Any, corrupted: Any,
                  add_bos: bool | None = None) -> tuple[list[PromptPair], bool]:
    """The pairs (text or ids; one prompt each, or lists of the same length) and whether a batch was given.

    Text gets the explainers' BOS policy (:func:`attnlrp.models.adapter.bos_policy`); ids are used as given. A
    pair whose prompts tokenise to different lengths is refused, naming the first position where they differ."""
    batch = _is_batch(clean)
    if batch != _is_batch(corrupted):
        raise ExplainError("give one clean and one corrupted prompt, or two lists of the same length")
    cleans, corrupteds = _rows(clean), _rows(corrupted)
    if len(cleans) != len(corrupteds):
        raise ExplainError(f"{len(cleans)} clean prompts but {len(corrupteds)} corrupted ones; they go in pairs")
    if not cleans:
        raise ExplainError("no prompt pairs given")
    policy = bos_policy(add_bos, tokenizer, adapter.head)
    pairs = []
    for number, (a, b) in enumerate(zip(cleans, corrupteds)):
        pair = PromptPair(prepare_prompt(tokenizer, a, True, add_bos=policy),
                          prepare_prompt(tokenizer, b, True, add_bos=policy))
        _check_lengths(pair, number if batch else None)
        adapter.check_length(len(pair), tokenizer)
        pairs.append(pair)
    return pairs, batch


def _check_lengths(pair: PromptPair, number: int | None) -> None:
    a, b = pair.clean, pair.corrupted
    if len(a) == len(b):
        return
    where = "" if number is None else f" (pair {number})"
    first = next((i for i, (x, y) in enumerate(zip(a.input_ids, b.input_ids)) if x != y), min(len(a), len(b)))

    def token(prompt: TokenizedPrompt) -> str:
        return token_repr(prompt.tokens[first]) if first < len(prompt) else "(the end)"

    raise ExplainError(
        f"the clean and corrupted prompts{where} tokenise to {len(a)} and {len(b)} tokens; patching needs equal "
        f"lengths. They first differ at position {first}: {token(a)} vs {token(b)}. Reword the corrupted prompt "
        "(e.g. swap in a name or word that is one token, like the one it replaces), or pass token ids."
    )


def stack_ids(prompts: Sequence[TokenizedPrompt], device: torch.device) -> torch.Tensor:
    """The ids of prompts of one length as a (rows, positions) tensor on ``device``."""
    return torch.tensor([p.input_ids for p in prompts], dtype=torch.long, device=device)
