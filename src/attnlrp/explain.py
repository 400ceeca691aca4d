"""Explain a prompt: tokenize, run the model under the rules, differentiate the target, read relevance.

One forward and one backward pass per batch. Prompts in a batch are padded on the right, with explicit
position (and token-type) ids, so each row's relevance equals explaining that prompt alone.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from .engine import LRPContext, METHODS
from .audit import SharedAbsorptionError
from .errors import ExplainError
from .explanation import Explanation, Target
from .inputs import Prompt, class_index, head_of, input_device, input_embedding, max_length, prepare_prompt
from .latent import LatentRecorder
from .tokens import TokenizedPrompt, from_ids, tokenize

TargetSpec = Union[None, int, str, Callable[[Any], torch.Tensor]]


def token_relevance(leaf: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per token, gradient × input summed over the embedding, in float64: ``(..., tokens)``."""
    return (leaf.detach().double() * grad.double()).sum(dim=-1)


def token_scores(leaf: torch.Tensor, grad: torch.Tensor, method: str) -> torch.Tensor:
    """What a heatmap shows per token: the relevance, or the gradient's L2 norm for the plain-gradient method."""
    return grad.double().norm(dim=-1) if method == "gradient" else token_relevance(leaf, grad)


def _single_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        hint = ""
        if not text.startswith(" "):
            spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            if len(spaced) == 1:
                hint = f" ' {text}' (with a leading space) is one token, id {spaced[0]}."
        raise ExplainError(
            f"{what} {text!r} is {len(ids)} tokens for this tokenizer: {pieces}; give a single token "
            f"(or its id).{hint}"
        )
    return ids[0]


def _token_id(tokenizer, spec: int | str, what: str, vocab_size: int) -> int:
    if isinstance(spec, bool):
        raise ExplainError(f"{what} must be a token (string) or a token id (int), not a bool")
    if isinstance(spec, int):
        if not 0 <= spec < vocab_size:
            raise ExplainError(f"{what} id {spec} is outside the vocabulary (0..{vocab_size - 1})")
        return spec
    if isinstance(spec, str):
        if not spec:
            raise ExplainError(f"{what} is an empty string")
        return _single_token(tokenizer, spec, what)
    raise ExplainError(f"{what} must be a token string or id, got {type(spec).__name__}")


class Explainer:
    """Explains prompts for one model and tokenizer with one method (the ``attribute()`` contract).

    >>> explainer = Explainer(model, tokenizer)              # AttnLRP by default
    >>> explanation = explainer("Lisbon is the capital of")  # the predicted next token
    >>> explanation.top(3)
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        method: str = "attnlrp",
        strict: bool = False,
        add_special_tokens: bool = True,
        model_name: str | None = None,
    ) -> None:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.strict = strict
        self.add_special_tokens = add_special_tokens
        self.model_name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or None
        self._embedding = input_embedding(model)
        self._head = head_of(model)
        self._batch_shares_absorbers = False

    @property
    def head_kind(self) -> str:
        """What the model's output is: "causal-lm", "masked-lm", "seq-cls", or "custom" (needs a target function)."""
        return self._head.kind

    def __call__(self, prompt: Prompt, **kwargs: Any) -> Explanation:
        return self.explain(prompt, **kwargs)

    def explain(
        self,
        prompt: Prompt,
        *,
        target: TargetSpec = None,
        contrast: int | str | None = None,
        position: int | None = None,
        decoder_prefix: Prompt | None = None,
        latents: bool = False,
    ) -> Explanation:
        """Explain one prompt. ``target``: a token (string or id), a class, or a callable on the output.

        Encoder-decoder models explain a decoder token over the encoder input *and* the decoder prefix
        (``decoder_prefix``: text or ids after the decoder start token; default empty).
        ``latents=True`` also reads the relevance of every layer's residual stream, MLP neurons and attention
        heads from the same backward pass (``Explanation.latents``, see ``attnlrp.latent``).
        """
        return self.explain_batch(
            [prompt], target=target, contrast=contrast, position=position,
            decoder_prefix=None if decoder_prefix is None else [decoder_prefix], latents=latents,
        )[0]

    def explain_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        target: TargetSpec | Sequence[TargetSpec] = None,
        contrast: int | str | None | Sequence[int | str | None] = None,
        position: int | None | Sequence[int | None] = None,
        decoder_prefix: Sequence[Prompt | None] | None = None,
        latents: bool = False,
    ) -> list[Explanation]:
        """Explain several prompts in one padded forward and backward pass; each row as if alone."""
        if isinstance(prompts, (str, torch.Tensor)) or not isinstance(prompts, Sequence) or not prompts:
            raise ExplainError("explain_batch takes a non-empty list of prompts")
        rows = len(prompts)
        prepared = [prepare_prompt(self.tokenizer, p, self.add_special_tokens) for p in prompts]
        segments = [_Segment("input", prepared, "inputs_embeds", "attention_mask")]
        if self._head.kind == "seq2seq":
            prefixes = _per_row(decoder_prefix, rows, "decoder_prefix")
            decoder = [self._decoder_prompt(prefix) for prefix in prefixes]
            segments = [_Segment("encoder", prepared, "inputs_embeds", "attention_mask"),
                        _Segment("decoder", decoder, "decoder_inputs_embeds", "decoder_attention_mask")]
        elif decoder_prefix is not None:
            raise ExplainError("decoder_prefix is only for encoder-decoder models")
        limit = max_length(self.model, self.tokenizer)
        for segment in segments:
            for p in segment.rows:
                if limit is not None and len(p) > limit:
                    raise ExplainError(
                        f"the {segment.name if segment.name != 'input' else 'prompt'} is {len(p)} tokens long but "
                        f"the model takes at most {limit}; shorten it"
                    )
        targets = _per_row(target, rows, "target")
        contrasts = _per_row(contrast, rows, "contrast")
        positions = _per_row(position, rows, "position")
        if rows > 1 and not self._batch_shares_absorbers:
            try:
                return self._run(segments, targets, contrasts, positions, latents)
            except SharedAbsorptionError:
                # the model adds a tensor computed once for the whole batch (T5's relative position bias):
                # its absorbed relevance cannot be split per row, so rows run one at a time from now on
                self._batch_shares_absorbers = True
        if rows == 1:
            return self._run(segments, targets, contrasts, positions, latents)
        return [
            self._run([_Segment(s.name, [s.rows[r]], s.embeds_kwarg, s.mask_kwarg) for s in segments],
                      [targets[r]], [contrasts[r]], [positions[r]], latents)[0]
            for r in range(rows)
        ]

    # --------------------------------------------------------------------------------------------- internals
    def _decoder_prompt(self, prefix: Prompt | None) -> TokenizedPrompt:
        """The decoder's input: its start token, then the prefix (text without special tokens, or ids)."""
        start = getattr(self.model.config, "decoder_start_token_id", None)
        if start is None:
            raise ExplainError(f"{type(self.model).__name__} has no decoder_start_token_id in its config")
        if prefix is None or (isinstance(prefix, str) and prefix == ""):
            body = None
        elif isinstance(prefix, str):
            body = tokenize(self.tokenizer, prefix, add_special_tokens=False)
        else:
            body = from_ids(self.tokenizer, prefix)
        head = from_ids(self.tokenizer, [start])
        head = TokenizedPrompt(head.input_ids, head.tokens, [True], [0], None)
        if body is None:
            return head
        return TokenizedPrompt(
            head.input_ids + body.input_ids, head.tokens + body.tokens, head.special + body.special,
            [0] + [w + 1 for w in body.word_ids], body.text,
        )

    def _pad(self, rows: list[TokenizedPrompt], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Right padding: every row's real tokens keep the positions (and the model's own default position
        ids, e.g. RoBERTa's offset by the padding index) they have alone."""
        length = max(len(p) for p in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
        for row, p in enumerate(rows):
            ids[row, : len(p)] = torch.tensor(p.input_ids, dtype=torch.long, device=device)
            mask[row, : len(p)] = 1
        return ids, mask

    def _run(self, segments: list["_Segment"], targets, contrasts, positions, latents: bool = False) -> list[Explanation]:
        device = input_device(self.model, self._embedding)
        vocab_size = self._embedding.weight.shape[0] if hasattr(self._embedding, "weight") else len(self.tokenizer)
        inputs: dict[str, Any] = {}
        leaves: list[torch.Tensor] = []
        for segment in segments:
            ids, mask = self._pad(segment.rows, device)
            with torch.no_grad():
                embeds = self._embedding(ids)
            # relevance is read in fp32 even when the model runs in half precision
            leaf_dtype = torch.float32 if embeds.dtype in (torch.float16, torch.bfloat16) else embeds.dtype
            leaf = embeds.detach().to(leaf_dtype).requires_grad_(True)
            leaves.append(leaf)
            inputs[segment.embeds_kwarg] = leaf if embeds.dtype == leaf_dtype else leaf.to(embeds.dtype)
            inputs[segment.mask_kwarg] = mask
        if "use_cache" in inspect.signature(self.model.forward).parameters:
            inputs["use_cache"] = False
        rows = len(segments[0].rows)
        output_rows = segments[-1].rows  # positions refer to the last segment (the decoder, if any)
        recorder = LatentRecorder(self.model) if latents else contextlib.nullcontext()
        with torch.enable_grad(), LRPContext(self.model, self.method, strict=self.strict) as ctx, recorder:
            ctx.batch_size = rows
            output = self.model(**inputs)
            values, resolved = self._values(output, output_rows, targets, contrasts, positions, vocab_size)
            if not torch.isfinite(values.detach()).all():
                raise ExplainError(
                    "the model produced a non-finite value (NaN or inf) for the target; check the model's "
                    "weights and dtype (fp16 overflows easily: try bfloat16 or float32)"
                )
            # .backward(), not autograd.grad: reentrant gradient checkpointing supports only the former. The
            # parameters are frozen, so only our own leaves (inputs, additive embeddings) receive .grad
            values.sum().backward()
            grads = [leaf.grad for leaf in leaves]
        per_segment = []
        for leaf, grad in zip(leaves, grads):
            grad = torch.zeros_like(leaf) if grad is None else grad
            if not torch.isfinite(grad).all():
                raise ExplainError("relevance is not finite (NaN/inf in the backward pass); try float32")
            totals = token_relevance(leaf, grad)
            scores = token_scores(leaf, grad, self.method)
            per_segment.append((scores, totals))
        unhandled = ctx.audit.unhandled_list()
        covered = ctx.audit.covered_table()
        if unhandled and self.method in ("attnlrp", "cp-lrp"):
            listing = "; ".join(f"{u['operation']} in {u['module']} ({u['count']}×)" for u in unhandled[:8])
            warnings.warn(
                f"non-linear operations ran without an LRP rule, relevance may be unfaithful: {listing}. "
                "The ledger's residual quantifies it; pass strict=True to make this an error.",
                stacklevel=3,
            )
        latent_rows: list[Any] = [None] * rows
        if latents:
            latent_rows = recorder.rows(
                [len(p) for p in output_rows], [p.tokens for p in output_rows], [p.special for p in output_rows]
            )
        explanations = []
        for row in range(rows):
            parts = [(segment, segment.rows[row]) for segment in segments]
            value = float(values[row].detach().double())
            input_relevance = sum(float(t[row, : len(p)].sum()) for (_, t), (_, p) in zip(per_segment, parts))
            prompt_row = segments[0].rows[row]
            explanations.append(
                Explanation(
                    tokens=[t for _, p in parts for t in p.tokens],
                    token_ids=[i for _, p in parts for i in p.input_ids],
                    relevance=torch.cat([s[row, : len(p)] for (s, _), (_, p) in zip(per_segment, parts)]).float().cpu(),
                    target=resolved[row],
                    value=value,
                    method=self.method,
                    ledger=ctx.ledger.row(row, input_relevance=input_relevance, value=value, batch_size=rows),
                    special=[f for _, p in parts for f in p.special],
                    word_ids=_chain_word_ids([p.word_ids for _, p in parts]),
                    prompt=prompt_row.text,
                    model_name=self.model_name,
                    unhandled=unhandled,
                    covered=covered,
                    segments=[] if len(parts) == 1 else [seg.name for seg, p in parts for _ in p.input_ids],
                    latents=latent_rows[row],
                )
            )
        return explanations

    def _values(self, output, prepared, targets, contrasts, positions, vocab_size):
        """The explained scalar per row, and a ``Target`` describing it."""
        logits = getattr(output, "logits", None)
        values, resolved = [], []
        for row, p in enumerate(prepared):
            spec, contrast, position = targets[row], contrasts[row], positions[row]
            if callable(spec):
                value = spec(output)
                if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] != len(prepared):
                    raise ExplainError("a target function must return a 1-D tensor with one value per prompt")
                values.append(value[row])
                resolved.append(Target(kind="custom", position=None))
                continue
            if logits is None:
                raise ExplainError(
                    f"{type(self.model).__name__} has no output head (no logits) to explain; load the model with "
                    "a head (…ForCausalLM, …ForMaskedLM, …ForSequenceClassification) or pass a target function"
                )
            if self._head.kind == "seq-cls":
                if contrast is not None or position is not None:
                    raise ExplainError("a sequence-classification head takes only a class as target")
                index, label = class_index(self.model, spec, logits[row])
                values.append(logits[row, index])
                resolved.append(Target(kind="class", position=None, token_id=index, label=label))
                continue
            kind = "token"
            if position is None:
                if self._head.kind == "masked-lm":
                    mask_id = self.tokenizer.mask_token_id
                    hits = [i for i, t in enumerate(p.input_ids) if t == mask_id]
                    if not hits:
                        raise ExplainError("no mask token in the prompt: add one or pass position=")
                    position, kind = hits[0], "masked-token"
                else:  # the next token (after the decoder prefix, for encoder-decoders)
                    position, kind = len(p) - 1, "next-token"
            if not -len(p) <= position < len(p):
                raise ExplainError(f"position {position} is outside the prompt of {len(p)} tokens")
            position %= len(p)
            row_logits = logits[row, position]
            token_id = int(row_logits.argmax()) if spec is None else _token_id(self.tokenizer, spec, "target", vocab_size)
            if spec is not None:
                kind = "token"
            value = row_logits[token_id]
            contrast_id = contrast_token = None
            if contrast is not None:
                contrast_id = _token_id(self.tokenizer, contrast, "contrast", vocab_size)
                if contrast_id == token_id:
                    raise ExplainError("target and contrast are the same token; the difference would be 0")
                value = value - row_logits[contrast_id]
                contrast_token = self.tokenizer.decode([contrast_id])
            values.append(value)
            resolved.append(
                Target(
                    kind=kind,
                    position=position,
                    token_id=token_id,
                    token=self.tokenizer.decode([token_id]),
                    contrast_id=contrast_id,
                    contrast_token=contrast_token,
                )
            )
        return torch.stack([v.to(torch.float64) for v in values]), resolved


@dataclass(frozen=True)
class _Segment:
    """One embedded input of the model: the prompt, or an encoder-decoder's encoder or decoder side."""

    name: str
    rows: list[TokenizedPrompt]
    embeds_kwarg: str
    mask_kwarg: str


def _chain_word_ids(parts: list[list[int]]) -> list[int]:
    """Word indices of consecutive segments, renumbered so that no word spans two segments."""
    chained: list[int] = []
    offset = 0
    for word_ids in parts:
        chained.extend(w + offset for w in word_ids)
        offset = (max(chained) + 1) if chained else 0
    return chained


def _per_row(spec: Any, rows: int, what: str) -> list[Any]:
    if isinstance(spec, (list, tuple)):
        if len(spec) != rows:
            raise ExplainError(f"{len(spec)} values for {what} but {rows} prompts")
        return list(spec)
    return [spec] * rows


def explain(
    model: nn.Module,
    tokenizer,
    prompt: Prompt,
    *,
    method: str = "attnlrp",
    target: TargetSpec = None,
    contrast: int | str | None = None,
    position: int | None = None,
    decoder_prefix: Prompt | None = None,
    strict: bool = False,
    latents: bool = False,
) -> Explanation:
    """Explain one prompt with ``method`` (``attnlrp``, ``cp-lrp``, ``input-x-gradient``, ``gradient``)."""
    explainer = Explainer(model, tokenizer, method=method, strict=strict)
    return explainer.explain(prompt, target=target, contrast=contrast, position=position,
                             decoder_prefix=decoder_prefix, latents=latents)
