"""Explain a prompt: tokenize, run the model under the rules, differentiate the target, read relevance.

One forward and one backward pass per batch. Prompts in a batch are padded on the right, with explicit
position (and token-type) ids, so each row's relevance equals explaining that prompt alone.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .core import ExplainedPass, LRPContext, MethodSpec, SharedAbsorptionError, get_method
from .errors import ExplainError
from .explanation import Explanation
from .latent.relevance import LatentRecorder
from .models.adapter import ModelAdapter, Prompt, bos_policy, model_and_tokenizer, prepare_prompt, prepare_prompts
from .targets import NextToken, Reading, TargetSpec, TokenTarget, target_for
from .tokens import TokenizedPrompt, from_ids


class Explainer:
    """Explains prompts for one model and tokenizer with one method (the ``attribute()`` contract).

    >>> explainer = Explainer(model, tokenizer)              # AttnLRP by default
    >>> explanation = explainer("Lisbon is the capital of")  # the predicted next token
    >>> explanation.top(3)

    ``model`` may also be a transformers ``pipeline`` (its model and tokenizer are used): ``Explainer(pipe)``.
    Prompts are text, token ids (a list, a 1-D or ``(1, N)`` tensor) or what ``tokenizer(text,
    return_tensors="pt")`` returns (padding dropped by its ``attention_mask``).

    ``add_bos``: ``None`` ("auto", default) starts a text prompt of a decoder LM with the tokenizer's BOS token if
    it defines one (added if the tokenizer does not add it itself), ``True`` always, ``False`` never; prompts
    given as ids are used as given. A prepended BOS is a special token: it keeps its relevance (the attention
    sink's share) but ``top()``, the rankings and the colour scale leave it out unless ``include_special=True``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        *,
        method: MethodSpec = "attnlrp",
        strict: bool = False,
        add_special_tokens: bool = True,
        model_name: str | None = None,
        add_bos: bool | None = None,
    ) -> None:
        self._method = get_method(method)
        model, tokenizer = model_and_tokenizer(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.method = self._method.name
        self.strict = strict
        self.add_special_tokens = add_special_tokens
        bos_policy(add_bos, tokenizer, "custom")  # checks the value
        self.add_bos = add_bos
        self.model_name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or None
        self.adapter = ModelAdapter.of(model)
        self._embedding = self.adapter.input_embedding()
        self._batch_shares_absorbers = False
        # the rules' hooks, installed at the first call and parked between calls; removed by close() or when the
        # explainer is garbage collected (another explainer or lrp() context on the model removes them first)
        self._context = LRPContext(model, self._method, strict=strict, reusable=True)
        self._finalizer = weakref.finalize(self, self._context.close)

    def close(self) -> None:
        """Remove the rules' parked hooks from the model now (also done when the explainer is garbage collected,
        and by ``with Explainer(...) as explainer:``). The explainer can still be used: it sets them up again."""
        self._context.close()

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def head_kind(self) -> str:
        """What the model's output is: "causal-lm", "masked-lm", "seq-cls", "seq2seq", or "custom" (needs a
        target function)."""
        return self.adapter.head

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
        add_bos: bool | None = None,
    ) -> Explanation:
        """Explain one prompt. ``target``: a token (string or id), a class, or a callable on the output.

        Encoder-decoder models explain a decoder token over the encoder input *and* the decoder prefix
        (``decoder_prefix``: text or ids after the decoder start token; default empty).
        ``latents=True`` also reads the relevance of every layer's residual stream, MLP neurons and attention
        heads from the same backward pass (``Explanation.latents``, see ``attnlrp.latent``).
        ``add_bos``: this call's BOS policy (``None``: the explainer's, see the class docstring).
        """
        return self.explain_batch(
            [prompt], target=target, contrast=contrast, position=position,
            decoder_prefix=None if decoder_prefix is None else [decoder_prefix], latents=latents, add_bos=add_bos,
        )[0]

    def explain_batch(
        self,
        prompts: Sequence[Prompt] | torch.Tensor | Mapping[str, Any],
        *,
        target: TargetSpec | Sequence[TargetSpec] = None,
        contrast: int | str | None | Sequence[int | str | None] = None,
        position: int | None | Sequence[int | None] = None,
        decoder_prefix: Sequence[Prompt | None] | None = None,
        latents: bool = False,
        add_bos: bool | None = None,
    ) -> list[Explanation]:
        """Explain several prompts in one padded forward and backward pass; each row as if alone.

        ``prompts``: a list of prompts (each in any form ``explain`` takes), a ``(B, N)`` tensor of token ids, or
        a ``BatchEncoding`` / dict of B rows from ``tokenizer(texts, padding=True, return_tensors="pt")`` (each
        row's padding dropped by its ``attention_mask``). ``add_bos``: as for ``explain``."""
        policy = bos_policy(self.add_bos if add_bos is None else add_bos, self.tokenizer, self.adapter.head,
                            self.add_special_tokens)
        prepared = prepare_prompts(self.tokenizer, prompts, self.add_special_tokens, add_bos=policy)
        rows = len(prepared)
        segments = [_Segment("input", prepared, "inputs_embeds", "attention_mask")]
        if self.adapter.head == "seq2seq":
            prefixes = _per_row(decoder_prefix, rows, "decoder_prefix")
            decoder = [self._decoder_prompt(prefix) for prefix in prefixes]
            segments = [_Segment("encoder", prepared, "inputs_embeds", "attention_mask"),
                        _Segment("decoder", decoder, "decoder_inputs_embeds", "decoder_attention_mask")]
        elif decoder_prefix is not None:
            raise ExplainError("decoder_prefix is only for encoder-decoder models")
        for segment in segments:
            for p in segment.rows:
                self.adapter.check_length(len(p), self.tokenizer, "prompt" if segment.name == "input" else segment.name)
        targets = [
            target_for(self.adapter.head, spec, c, p)
            for spec, c, p in zip(_per_row(target, rows, "target"), _per_row(contrast, rows, "contrast"),
                                  _per_row(position, rows, "position"))
        ]
        if rows > 1 and not self._batch_shares_absorbers:
            try:
                return self._run(segments, targets, latents)
            except SharedAbsorptionError:
                # the model adds a tensor computed once for the whole batch (T5's relative position bias):
                # its absorbed relevance cannot be split per row, so rows run one at a time from now on
                self._batch_shares_absorbers = True
        if rows == 1:
            return self._run(segments, targets, latents)
        return [
            self._run([_Segment(s.name, [s.rows[r]], s.embeds_kwarg, s.mask_kwarg) for s in segments],
                      [targets[r]], latents)[0]
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
        else:
            body = prepare_prompt(self.tokenizer, prefix, False)
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

    def _run(self, segments: list["_Segment"], targets: list, latents: bool = False) -> list[Explanation]:
        device = self.adapter.device
        inputs: dict[str, Any] = dict(self.adapter.no_cache())
        leaves: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        rows = len(segments[0].rows)
        output_rows = segments[-1].rows  # positions refer to the last segment (the decoder, if any)
        recorder = LatentRecorder(self.model) if latents else None
        self._context.strict = self.strict
        with (ExplainedPass(self.model, self._method, context=self._context) as explained,
              recorder if recorder is not None else contextlib.nullcontext()):
            explained.start(rows)
            for segment in segments:
                ids, mask = self._pad(segment.rows, device)
                with torch.no_grad():
                    embeds = self._embedding(ids)
                leaf, inputs[segment.embeds_kwarg] = explained.leaf(embeds)
                inputs[segment.mask_kwarg] = mask
                leaves.append(leaf)
                masks.append(mask)
            kept = self._kept_positions(targets, output_rows)
            if kept is not None:
                inputs["logits_to_keep"] = torch.tensor(kept, device=device)
            output = self.model(**inputs)
            read = [
                target.read(Reading(output, row, rows, output_rows[row], self.adapter, self.tokenizer, kept))
                for row, target in enumerate(targets)
            ]
            values = torch.stack([value.to(torch.float64) for value, _ in read])
            result = explained.backward(values, leaves, masks=masks)
        latent_rows: list[Any] = [None] * rows
        if recorder is not None:
            latent_rows = recorder.rows(
                [len(p) for p in output_rows], [p.tokens for p in output_rows], [p.special for p in output_rows]
            )
        explanations = []
        for row in range(rows):
            parts = [(segment, segment.rows[row]) for segment in segments]
            explanations.append(
                Explanation(
                    tokens=[t for _, p in parts for t in p.tokens],
                    token_ids=[i for _, p in parts for i in p.input_ids],
                    relevance=torch.cat([s[row, : len(p)] for s, (_, p) in zip(result.scores, parts)]).float().cpu(),
                    target=read[row][1],
                    value=result.ledgers[row].value,
                    method=self.method,
                    ledger=result.ledgers[row],
                    special=[f for _, p in parts for f in p.special],
                    word_ids=_chain_word_ids([p.word_ids for _, p in parts]),
                    prompt=segments[0].rows[row].text,
                    model_name=self.model_name,
                    unhandled=explained.unhandled,
                    covered=explained.covered,
                    segments=[] if len(parts) == 1 else [seg.name for seg, p in parts for _ in p.input_ids],
                    latents=latent_rows[row],
                )
            )
        return explanations


    def _kept_positions(self, targets: list, rows: list[TokenizedPrompt]) -> tuple[int, ...] | None:
        """The positions whose logits the targets read, when a causal LM can compute only those
        (``logits_to_keep``): its output head, a large share of a short prompt's cost, then runs on a few
        positions instead of all. None (every position) for other heads and for targets that may read anything."""
        if self.adapter.head != "causal-lm" or not self.adapter.accepts("logits_to_keep"):
            return None
        if not all(type(t) in (NextToken, TokenTarget) for t in targets):
            return None
        positions = {
            t.resolved_position(Reading(None, row, len(rows), rows[row], self.adapter, self.tokenizer))
            for row, t in enumerate(targets)
        }
        return tuple(sorted(positions))


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
    method: MethodSpec = "attnlrp",
    target: TargetSpec = None,
    contrast: int | str | None = None,
    position: int | None = None,
    decoder_prefix: Prompt | None = None,
    strict: bool = False,
    latents: bool = False,
    add_bos: bool | None = None,
) -> Explanation:
    """Explain one prompt with ``method`` (a name from ``attnlrp.method_names()`` or a ``Method``).

    ``model`` may be a transformers ``pipeline`` with ``tokenizer=None``: ``explain(pipe, None, prompt)``."""
    with Explainer(model, tokenizer, method=method, strict=strict, add_bos=add_bos) as explainer:
        return explainer.explain(prompt, target=target, contrast=contrast, position=position,
                                 decoder_prefix=decoder_prefix, latents=latents)
