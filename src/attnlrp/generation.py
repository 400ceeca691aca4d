"""Explain a generated answer: for every generated token, its relevance over the prompt and the tokens generated
before it, and the relevance of the answer as a whole.

The model generates first (no rule active). Then ONE forward pass over prompt + answer (minus the last generated
token, which is never an input) runs under the rules, and each generated token's logit at the position before it
is differentiated on its own (one backward per token, the graph kept). The answer as a whole (the sum of the
generated logits) needs no pass of its own: the rules' backward is linear in its seed, so its gradient is the sum
of the rows' gradients.
Row ``k`` equals explaining the prefix that precedes generated token ``k`` with that token as target.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .audit import LedgerReport
from .engine import LRPContext, METHODS
from .errors import ExplainError
from .explanation import HtmlView, ranked_tokens
from .explain import token_relevance, token_scores
from .inputs import Prompt, head_of, input_device, input_embedding, max_length, prepare_prompt


@dataclass(frozen=True)
class GenerationExplanation(HtmlView):
    """Relevance of each token of prompt + answer for each generated token (rows) and for the whole answer.

    ``tokens`` / ``token_ids`` hold the prompt, then the generated tokens; ``matrix[k, j]`` is the relevance of
    token ``j`` for generated token ``k`` (its logit at the position before it). Columns at or after the
    generated token itself are exactly 0 (causality); the last column (the last generated token, never an
    input) is always 0.
    """

    tokens: list[str]
    token_ids: list[int]
    prompt_length: int
    matrix: torch.Tensor  # (n_generated, len(tokens)), float32, on CPU
    values: list[float]  # logit of each generated token at the position before it
    answer_relevance: torch.Tensor  # (len(tokens),), float32: relevance for the sum of the generated logits
    answer_value: float
    method: str
    ledgers: list[LedgerReport] = field(default_factory=list)  # one per generated token
    answer_ledger: LedgerReport | None = None
    special: list[bool] = field(default_factory=list)
    prompt: str | None = None
    model_name: str | None = None
    unhandled: list[dict] = field(default_factory=list)

    # ---------------------------------------------------------------------------------------------- access
    @property
    def generated(self) -> list[str]:
        """The generated tokens, one decoded string per id."""
        return self.tokens[self.prompt_length:]

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.prompt_length:]

    @property
    def answer(self) -> str:
        return "".join(self.generated)

    def __len__(self) -> int:
        return len(self.generated)

    def position(self, k: int) -> int:
        """Sequence position of generated token ``k``."""
        return self.prompt_length + k

    def top(self, k: int, n: int = 3, *, include_special: bool = False) -> list[tuple[int, str, float]]:
        """The ``n`` most relevant earlier tokens for generated token ``k`` as ``(index, token, relevance)``."""
        row = self.matrix[k, : self.position(k)]
        return ranked_tokens(self.tokens, row, self.special, n, include_special=include_special)

    # --------------------------------------------------------------------------------------------- outputs
    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "model": self.model_name,
            "method": self.method,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "special": list(self.special),
            "prompt_length": self.prompt_length,
            "generated": list(self.generated),
            "answer": self.answer,
            "matrix": [[float(x) for x in row] for row in self.matrix.tolist()],
            "values": [float(v) for v in self.values],
            "answer_relevance": [float(x) for x in self.answer_relevance.tolist()],
            "answer_value": self.answer_value,
            "ledgers": [ledger.to_dict() for ledger in self.ledgers],
            "answer_ledger": None if self.answer_ledger is None else self.answer_ledger.to_dict(),
            "unhandled": list(self.unhandled),
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)

    def _details(self) -> dict[str, str]:
        details = {"method": self.method, "generated tokens": str(len(self))}
        if self.model_name:
            details = {"model": self.model_name, **details}
        details["answer value"] = f"{self.answer_value:+.4f} (sum of the generated tokens' logits)"
        if self.answer_ledger is not None:
            ledger = self.answer_ledger
            details["answer ledger"] = (
                f"input {ledger.input:+.4f} + absorbed {ledger.absorbed:+.4f} = "
                f"{ledger.input + ledger.absorbed:+.4f} (residual {ledger.residual:+.2e})"
            )
        if self.unhandled:
            details["unhandled operations"] = ", ".join(f"{u['operation']} in {u['module']}" for u in self.unhandled)
        return details

    def to_html(self, *, full_page: bool = True) -> str:
        from .render.generation_html import generation_html

        return generation_html(
            self.tokens,
            self.prompt_length,
            self.matrix.tolist(),
            self.values,
            self.answer_relevance.tolist(),
            self.answer_value,
            title=f"{self.method}: relevance of a generated answer",
            details=self._details(),
            full_page=full_page,
        )

    def to_terminal(self, *, color: bool = True, top_k: int = 3) -> str:
        from .render import heatmap_terminal, terminal_text, token_repr
        from .render.ranking import format_score

        lines = [f"{k}: {v}" for k, v in self._details().items()]
        lines += [
            "",
            "prompt: " + terminal_text("".join(self.tokens[: self.prompt_length])),
            "answer: " + terminal_text(self.answer),
            "",
            "relevance for the whole answer:",
            heatmap_terminal(self.tokens, self.answer_relevance.tolist(), color=color),
            "",
            f"top {top_k} earlier tokens for each generated token:",
        ]
        width = max((len(token_repr(t)) for t in self.generated), default=0)
        for k, token in enumerate(self.generated):
            best = ", ".join(f"{token_repr(t)} {format_score(r)}" for _, t, r in self.top(k, top_k))
            lines.append(f"  {k:3d} {token_repr(token):<{width}}  logit {format_score(self.values[k])}:  {best}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"GenerationExplanation(method={self.method!r}, prompt_tokens={self.prompt_length}, "
            f"generated={self.generated!r}, answer_value={self.answer_value:.4f})"
        )


def _pad_token_id(model: nn.Module, tokenizer) -> int | None:
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, (list, tuple)) and candidate:
            return int(candidate[0])
    return None


def _summed(ledgers: list[LedgerReport], *, value: float) -> LedgerReport:
    """The ledger of a sum of targets: every entry is linear in the seed, so the rows' ledgers add up."""
    sites: dict[str, float] = {}
    for ledger in ledgers:
        for site, amount in ledger.by_site.items():
            sites[site] = sites.get(site, 0.0) + amount
    return LedgerReport(input=sum(l.input for l in ledgers), absorbed=sum(sites.values()), value=value, by_site=sites)


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt: Prompt,
    *,
    max_new_tokens: int = 16,
    method: str = "attnlrp",
    strict: bool = False,
    add_special_tokens: bool = True,
    model_name: str | None = None,
    **generate_kwargs: Any,
) -> GenerationExplanation:
    """Generate an answer to ``prompt`` (greedy unless sampling settings are given) and explain every token of it.

    ``generate_kwargs`` go to ``model.generate`` as they are (``do_sample``, ``temperature``, ``top_k``, …).
    """
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ExplainError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    embedding = input_embedding(model)
    if head_of(model).kind != "causal-lm" or not hasattr(model, "generate"):
        raise ExplainError(f"{type(model).__name__}: generation attribution needs a causal language model")
    prepared = prepare_prompt(tokenizer, prompt, add_special_tokens)
    limit = max_length(model, tokenizer)
    if limit is not None and len(prepared) > limit:
        raise ExplainError(f"the prompt is {len(prepared)} tokens long but the model takes at most {limit}; shorten it")
    if limit is not None and len(prepared) + max_new_tokens > limit:
        raise ExplainError(
            f"the prompt ({len(prepared)} tokens) and {max_new_tokens} new tokens exceed the model's maximum of "
            f"{limit} tokens; shorten the prompt or generate fewer tokens"
        )
    device = input_device(model, embedding)
    prompt_ids = torch.tensor([prepared.input_ids], dtype=torch.long, device=device)

    # ------------------------------------------------------------------ 1. generate, no rule active
    generate_kwargs.setdefault("do_sample", False)
    pad = _pad_token_id(model, tokenizer)
    if pad is not None:
        generate_kwargs.setdefault("pad_token_id", pad)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
        output = model.generate(
            input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    generated = [int(t) for t in sequences[0, prompt_ids.shape[1]:].tolist()]
    if not generated:
        raise ExplainError("the model generated no token")
    ids = prepared.input_ids + generated
    n, start = len(generated), len(prepared)

    # ------------------------------------------------------------------ 2. one explained forward pass
    inputs_ids = torch.tensor([ids[:-1]], dtype=torch.long, device=device)
    with torch.no_grad():
        embeds = embedding(inputs_ids)
    leaf_dtype = torch.float32 if embeds.dtype in (torch.float16, torch.bfloat16) else embeds.dtype
    leaf = embeds.detach().to(leaf_dtype).requires_grad_(True)
    inputs: dict[str, Any] = {
        "inputs_embeds": leaf if embeds.dtype == leaf_dtype else leaf.to(embeds.dtype),
        "attention_mask": torch.ones_like(inputs_ids),
    }
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False
    seq_len = len(ids)
    matrix = torch.zeros(n, seq_len, dtype=torch.float64)
    values: list[float] = []
    ledgers: list[LedgerReport] = []
    positions = torch.arange(start - 1, start - 1 + n, device=device)
    keep_only = "logits_to_keep" in inspect.signature(model.forward).parameters
    if keep_only:
        # the vocabulary projection only where a generated token is read: every row's backward then skips
        # the (positions × vocabulary) matmul of all other positions
        inputs["logits_to_keep"] = positions
    with torch.enable_grad(), LRPContext(model, method, strict=strict) as ctx:
        ctx.batch_size = 1
        logits = model(**inputs).logits[0]
        targets = torch.tensor(generated, device=logits.device)
        rows = torch.arange(n, device=logits.device) if keep_only else positions.to(logits.device)
        logit_values = logits[rows, targets].to(torch.float64)
        if not torch.isfinite(logit_values.detach()).all():
            raise ExplainError(
                "the model produced a non-finite logit (NaN or inf) for a generated token; check the model's "
                "weights and dtype (fp16 overflows easily: try bfloat16 or float32)"
            )

        def backward(value: torch.Tensor, retain: bool) -> tuple[torch.Tensor, LedgerReport]:
            ctx.ledger.reset()
            grads = torch.autograd.grad(
                value, [leaf, *ctx.absorber_leaves], retain_graph=retain, allow_unused=True
            )
            grad = torch.zeros_like(leaf) if grads[0] is None else grads[0]
            if not torch.isfinite(grad).all():
                raise ExplainError("relevance is not finite (NaN/inf in the backward pass); try float32")
            report = ctx.ledger.row(0, input_relevance=float(token_relevance(leaf, grad).sum()),
                                    value=float(value.detach()))
            return grad, report

        # Every rule's backward is linear in the gradient it receives, so the answer's gradient (the sum of the
        # generated logits) is the sum of the rows' gradients: no extra backward pass for it.
        answer_grad = torch.zeros_like(leaf, dtype=torch.float64)
        for k in range(n):
            grad, report = backward(logit_values[k], retain=k < n - 1)
            answer_grad += grad.double()
            matrix[k, : seq_len - 1] = token_scores(leaf, grad, method)[0].cpu()
            values.append(float(logit_values[k].detach()))
            ledgers.append(report)
        answer_scores = token_scores(leaf, answer_grad, method)[0].cpu()
        answer_ledger = _summed(ledgers, value=float(logit_values.detach().sum()))
    answer = torch.zeros(seq_len, dtype=torch.float64)
    answer[: seq_len - 1] = answer_scores
    unhandled = ctx.audit.unhandled_list()
    if unhandled and method in ("attnlrp", "cp-lrp"):
        listing = "; ".join(f"{u['operation']} in {u['module']} ({u['count']}×)" for u in unhandled[:8])
        warnings.warn(
            f"non-linear operations ran without an LRP rule, relevance may be unfaithful: {listing}. "
            "The ledger's residual quantifies it; pass strict=True to make this an error.",
            stacklevel=2,
        )
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    return GenerationExplanation(
        tokens=list(prepared.tokens) + [tokenizer.decode([t]) for t in generated],
        token_ids=ids,
        prompt_length=start,
        matrix=matrix.float(),
        values=values,
        answer_relevance=answer.float(),
        answer_value=float(logit_values.detach().sum()),
        method=method,
        ledgers=ledgers,
        answer_ledger=answer_ledger,
        special=list(prepared.special) + [t in special_ids for t in generated],
        prompt=prepared.text,
        model_name=model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        unhandled=unhandled,
    )
