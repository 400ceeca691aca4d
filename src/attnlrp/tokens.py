"""Readable tokens and words from a tokenizer's offset mapping (never from ``Ġ``/``▁`` heuristics).

Each token's surface is the slice of the prompt it came from, *including the whitespace before it*, so that
``"".join(tokens)`` gives back the prompt for byte-level tokenizers and a heatmap reads like the text.
Words group sub-word tokens; their relevance is the *sum* of their tokens', which keeps conservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ExplainError


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt as the model sees it, and as a person reads it."""

    input_ids: list[int]
    tokens: list[str]
    special: list[bool]  # True for tokens the tokenizer added (BOS, [CLS], …)
    word_ids: list[int]  # a word index per token; consecutive tokens with the same index form one word
    text: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(tokenizer, text: str, *, add_special_tokens: bool = True) -> TokenizedPrompt:
    """Tokenize ``text`` and recover each token's surface string from the offsets."""
    if not isinstance(text, str):
        raise ExplainError(f"prompt must be a string or a sequence of token ids, got {type(text).__name__}")
    if not text.strip():
        raise ExplainError("the prompt is empty: give some text to explain")
    if not getattr(tokenizer, "is_fast", False):
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        return from_ids(tokenizer, ids)
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    special_ids = set(tokenizer.all_special_ids)
    raw_word_ids = encoding.word_ids() if hasattr(encoding, "word_ids") else [None] * len(ids)
    tokens: list[str] = []
    special: list[bool] = []
    previous_end = 0
    for token_id, (start, end) in zip(ids, offsets):
        is_special = start == end and token_id in special_ids
        if is_special or start == end:
            tokens.append(tokenizer.decode([token_id]))
        else:
            surface = text[min(previous_end, start) : end]
            tokens.append(surface if surface else tokenizer.decode([token_id]))
            previous_end = max(previous_end, end)
        special.append(is_special)
    return TokenizedPrompt(ids, tokens, special, _number_words(raw_word_ids, tokens, special), text)


def from_ids(
    tokenizer, ids: Sequence[int] | torch.Tensor, *, word_ids: Sequence[int | None] | None = None
) -> TokenizedPrompt:
    """Tokens of a prompt given as ids (no text to take offsets from): each id decoded on its own.

    ``word_ids``: the tokenizer's word index per token where it is known (``BatchEncoding.word_ids()``), else
    words start at whitespace."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ExplainError(f"token ids must be one sequence (1-D), got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    ids = [int(i) for i in ids]
    if not ids:
        raise ExplainError("the prompt is empty: give at least one token id")
    vocab = len(tokenizer) if tokenizer is not None else None
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
    if bad:
        raise ExplainError(f"token ids out of the tokenizer's range 0..{vocab - 1 if vocab else '?'}: {bad[:5]}")
    special_ids = set(tokenizer.all_special_ids)
    tokens = [tokenizer.decode([i]) for i in ids]
    special = [i in special_ids for i in ids]
    raw = list(word_ids) if word_ids is not None and len(word_ids) == len(ids) else [None] * len(ids)
    return TokenizedPrompt(ids, tokens, special, _number_words(raw, tokens, special), None)


def with_bos(tokenizer, prepared: TokenizedPrompt, add_bos: bool) -> TokenizedPrompt:
    """``prepared`` starting with exactly one of the tokenizer's BOS token (``add_bos=True``: prepended unless the
    tokenizer put it there already) or without a leading BOS (``False``: one the tokenizer added is dropped).
    A prepended BOS is marked special: shown, but left out of rankings and colour scales by default."""
    bos = getattr(tokenizer, "bos_token_id", None)
    starts = bool(prepared.input_ids) and bos is not None and prepared.input_ids[0] == bos
    if add_bos:
        if bos is None:
            raise ExplainError("add_bos=True but the tokenizer defines no BOS token (bos_token_id is None)")
        if starts:
            return prepared
        token = getattr(tokenizer, "bos_token", None) or tokenizer.decode([bos])
        return TokenizedPrompt([int(bos)] + list(prepared.input_ids), [str(token)] + list(prepared.tokens),
                               [True] + list(prepared.special), [0] + [w + 1 for w in prepared.word_ids],
                               prepared.text)
    if not starts or len(prepared) < 2:
        return prepared
    first = prepared.word_ids[1]
    return TokenizedPrompt(list(prepared.input_ids[1:]), list(prepared.tokens[1:]), list(prepared.special[1:]),
                           [w - first for w in prepared.word_ids[1:]], prepared.text)


def _number_words(raw: Sequence[int | None], tokens: Sequence[str], special: Sequence[bool]) -> list[int]:
    """Word index per token: the tokenizer's word ids where it has them, else a new word at whitespace."""
    numbers: list[int] = []
    current = -1
    previous_raw: int | None = None
    for i, (word, token, is_special) in enumerate(zip(raw, tokens, special)):
        starts_new = (
            i == 0
            or is_special
            or special[i - 1]
            or (word is None and (token[:1].isspace() or not token))
            or (word is not None and word != previous_raw)
            or token[:1].isspace()
        )
        if starts_new:
            current += 1
        numbers.append(current)
        previous_raw = word
    return numbers


def words(tokens: Sequence[str], word_ids: Sequence[int], relevance: Sequence[float]) -> list[tuple[str, float]]:
    """Sub-word tokens merged into words; a word's relevance is the sum of its tokens' relevance."""
    merged: list[tuple[str, float]] = []
    last = None
    for token, word, r in zip(tokens, word_ids, relevance):
        if merged and word == last:
            text, total = merged[-1]
            merged[-1] = (text + token, total + float(r))
        else:
            merged.append((token, float(r)))
        last = word
    return merged
