"""Explain a generated answer: for every generated token, its relevance over the prompt and the tokens generated
before it, and the relevance of the answer as a whole.

The model generates first (no rule active). Then ONE forward pass over prompt + answer (minus the last generated
token, which is never an input) runs under the rules, and each generated token's logit at the position before it
is differentiated on its own (one backward per token, the graph kept). The answer as a whole (the sum of the
generated logits) needs no pass of its own: the rules' backward is linear in its seed, so its gradient is the sum
of the rows' gradients.
Row ``k`` equals explaining the prefix that precedes generated token ``k`` with that token as target.

On a GPU the rows can instead be explained in batches (``row_batch``): the sequence is repeated B times along the
batch dimension, copy ``b`` is seeded with row ``b``'s logit, and one forward + one backward give B rows. That
costs B times the arithmetic of one row, but a GPU running a ~100-token sequence is bound by kernel launches, not
arithmetic, so B rows take about the time of one. On a CPU the arithmetic is the cost, and one shared forward with
one backward per row is cheaper (``row_batch="auto"`` chooses per device).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from .core import ExplainedPass, LedgerReport, Method, MethodSpec, SharedAbsorptionError, get_method
from .errors import ExplainError
from .explanation import HtmlView, json_object, ledger_from_dict, ranked_tokens
from .extras import require
from .models.adapter import ModelAdapter, Prompt, bos_policy, model_and_tokenizer, prepare_prompt

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


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
        """The ids of the generated tokens (without the prompt's)."""
        return self.token_ids[self.prompt_length:]

    @property
    def answer(self) -> str:
        """The generated text."""
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
        """The explanation as plain JSON-ready values (``from_dict`` reads it back)."""
        return {
            **self._token_fields(),
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
        """The explanation as JSON (``to_dict``; ``kwargs`` go to ``json.dumps``); ``from_json`` reads it back."""
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationExplanation":
        """The explanation ``to_dict`` describes (``generated`` and ``answer`` are computed again)."""
        tokens, values = list(data["tokens"]), [float(v) for v in data["values"]]
        answer_ledger = data.get("answer_ledger")
        return cls(
            tokens=tokens,
            token_ids=[int(i) for i in data["token_ids"]],
            prompt_length=int(data["prompt_length"]),
            matrix=torch.tensor([[float(x) for x in row] for row in data["matrix"]],
                                dtype=torch.float32).reshape(len(values), len(tokens)),
            values=values,
            answer_relevance=torch.tensor([float(x) for x in data["answer_relevance"]],
                                          dtype=torch.float32).reshape(len(tokens)),
            answer_value=float(data["answer_value"]),
            method=data["method"],
            ledgers=[ledger_from_dict(ledger) for ledger in data.get("ledgers", [])],
            answer_ledger=None if answer_ledger is None else ledger_from_dict(answer_ledger),
            special=[bool(f) for f in data.get("special", [])],
            prompt=data.get("prompt"),
            model_name=data.get("model"),
            unhandled=list(data.get("unhandled", [])),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "GenerationExplanation":
        """Read back ``to_json()``: ``GenerationExplanation.from_json(g.to_json()).to_json() == g.to_json()``, with
        the same matrix and answer relevance tensors."""
        return cls.from_dict(json_object(text, cls.__name__))

    def to_pandas(self) -> "pandas.DataFrame":
        """Long format, one row per (generated token, earlier token): ``generated_index`` (k), ``generated_token``,
        ``source_index`` (the position of the earlier token in prompt + answer), ``source_token``,
        ``source_token_id``, ``source_special``, ``relevance`` (``matrix[k, source_index]``). Only the tokens
        before each generated token are rows (the rest of the matrix is 0 by causality).
        ``df.pivot(index="generated_index", columns="source_index", values="relevance")`` gives the matrix back.
        Needs pandas (``pip install 'attnlrp[pandas]'``)."""
        pandas = require("pandas", "pandas")
        n = len(self.tokens)
        special = list(self.special) if len(self.special) == n else [False] * n
        generated, sources = [], []
        for k in range(len(self)):
            for j in range(self.position(k)):
                generated.append(k)
                sources.append(j)
        matrix = self.matrix.detach().cpu().float().numpy()
        frame = pandas.DataFrame({
            "generated_index": pandas.Series(generated, dtype="int64"),
            "generated_token": pandas.Series([self.generated[k] for k in generated], dtype="str"),
            "source_index": pandas.Series(sources, dtype="int64"),
            "source_token": pandas.Series([self.tokens[j] for j in sources], dtype="str"),
            "source_token_id": pandas.Series([self.token_ids[j] for j in sources], dtype="int64"),
            "source_special": pandas.Series([special[j] for j in sources], dtype="bool"),
            "relevance": pandas.Series(matrix[generated, sources] if generated else [], dtype="float32"),
        })
        frame.attrs = {"method": self.method, "prompt_length": self.prompt_length, "answer": self.answer,
                       "model": self.model_name, "prompt": self.prompt}
        return frame

    def to_figure(self, *, row: int | str | None = None, include_special: bool = True, title: str | None = None,
                  **kwargs: Any) -> "Figure":
        """The generation matrix (``row=None``) or one row as a text heatmap as a matplotlib ``Figure`` (see
        ``save_figure``)."""
        from .render.figure import generation_figure, text_heatmap_figure

        if row is None:
            return generation_figure(self.tokens, self.matrix.tolist(), self.prompt_length, title=title, **kwargs)
        if row == "answer":
            end, relevance = len(self.tokens) - 1, self.answer_relevance.tolist()
        elif isinstance(row, int) and not isinstance(row, bool) and -len(self) <= row < len(self):
            end = self.position(row % len(self))
            relevance = self.matrix[row].tolist()
        else:
            raise ValueError(f"row must be None (the matrix), 'answer' or a generated token's index "
                             f"(0..{len(self) - 1}), got {row!r}")
        special = list(self.special) if len(self.special) == len(self.tokens) else [False] * len(self.tokens)
        keep = [i for i in range(end) if include_special or not special[i]]
        return text_heatmap_figure([self.tokens[i] for i in keep], [relevance[i] for i in keep],
                                   special=[special[i] for i in keep], title=title, **kwargs)

    def save_figure(self, path: Any, *, format: str | None = None, dpi: int = 300, **kwargs: Any) -> None:
        """A paper-ready figure of the generation matrix: generated tokens (rows) against prompt + answer
        (columns), coloured by relevance (blue −, white 0, red +, symmetric scale) with a colour bar; cells that
        are not inputs of their row are grey. The format follows the suffix (``.pdf``/``.svg`` keep text as text,
        ``.png`` at ``dpi``).

        Options: ``row="answer"`` or ``row=k`` draw the whole answer's or generated token k's relevance as a
        text heatmap instead (with ``include_special``, ``width`` and the other options of
        ``Explanation.save_figure``); for the matrix ``normalize_rows=True`` scales each row to its largest
        |relevance|, and ``title``, ``fontsize``, ``scale``. Needs matplotlib (``pip install 'attnlrp[vision]'``).
        """
        from .render.figure import save_figure

        save_figure(self.to_figure(**kwargs), path, format=format, dpi=dpi)

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

    def to_terminal(self, *, color: bool | None = None, top_k: int = 3) -> str:
        """Prompt, answer, the whole answer's heatmap and each generated token's ``top_k`` earlier tokens.

        ``color``: ANSI colours (``True``), ``[token|score]`` markers (``False``), or ``None`` (default): colours
        only when standard output is a terminal and ``NO_COLOR`` is unset (:func:`attnlrp.render.resolve_color`).
        """
        from .render import heatmap_terminal, resolve_color, terminal_text, token_repr
        from .render.ranking import format_score

        lines = [f"{k}: {v}" for k, v in self._details().items()]
        lines += [
            "",
            "prompt: " + terminal_text("".join(self.tokens[: self.prompt_length])),
            "answer: " + terminal_text(self.answer),
            "",
            "relevance for the whole answer:",
            heatmap_terminal(self.tokens, self.answer_relevance.tolist(), color=resolve_color(color),
                             exclude=list(self.special) if len(self.special) == len(self.tokens) else None),
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


def _summed(ledgers: list[LedgerReport], *, value: float) -> LedgerReport:
    """The ledger of a sum of targets: every entry is linear in the seed, so the rows' ledgers add up."""
    sites: dict[str, float] = {}
    for ledger in ledgers:
        for site, amount in ledger.by_site.items():
            sites[site] = sites.get(site, 0.0) + amount
    return LedgerReport(input=sum(l.input for l in ledgers), absorbed=sum(sites.values()), value=value, by_site=sites)


# Rows per batched pass: at most this many (measured on an H100: 64 rows in one pass 7.1x the naive loop, 16 rows
# 5.8x, see docs/gpu.md), and on a non-CUDA accelerator, where free memory cannot be read, this many.
MAX_ROW_BATCH = 64
AUTO_ROW_BATCH_ACCELERATOR = 16
# share of the free GPU memory that the copies of one batched pass may take
MEMORY_SHARE = 0.5


def resolve_row_batch(row_batch: int | str, device: torch.device, rows: int) -> int | None:
    """How many generated tokens one forward + backward explains; ``None``: measure on the first row (CUDA).

    ``"auto"``: 1 on a CPU (one shared forward, one backward per row; batches of 16 measured 1.28x slower for 64
    generated tokens on 2 cores and no faster for 16, with 16 times the activations);
    on CUDA as many as fit in ``MEMORY_SHARE`` of the free memory, judged from the first row's pass (at most
    ``MAX_ROW_BATCH``); ``AUTO_ROW_BATCH_ACCELERATOR`` on other accelerators.
    """
    if row_batch == "auto":
        if device.type == "cpu" or rows == 1:
            return 1
        return None if device.type == "cuda" else min(rows, AUTO_ROW_BATCH_ACCELERATOR)
    if isinstance(row_batch, bool) or not isinstance(row_batch, int) or row_batch < 1:
        raise ExplainError(f"row_batch must be 'auto' or a positive integer, got {row_batch!r}")
    return min(row_batch, rows)


def rows_that_fit(free_bytes: int, bytes_per_copy: int, rows: int) -> int:
    """Copies of the sequence whose kept activations take at most ``MEMORY_SHARE`` of the free memory."""
    if bytes_per_copy <= 0:
        return min(rows, MAX_ROW_BATCH)
    return max(1, min(rows, MAX_ROW_BATCH, int(MEMORY_SHARE * free_bytes / bytes_per_copy)))


class CudaMemory:
    """What the adaptive row batch reads: bytes held by tensors, and bytes a new allocation could still get."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)


def explain_generation(
    model: nn.Module,
    tokenizer,
    prompt: Prompt,
    *,
    max_new_tokens: int = 16,
    method: MethodSpec = "attnlrp",
    strict: bool = False,
    add_special_tokens: bool = True,
    model_name: str | None = None,
    add_bos: bool | None = None,
    row_batch: int | str = "auto",
    progress: Callable[[int, int], None] | None = None,
    **generate_kwargs: Any,
) -> GenerationExplanation:
    """Generate an answer to ``prompt`` (greedy unless sampling settings are given) and explain every token of it.

    ``generate_kwargs`` go to ``model.generate`` as they are (``do_sample``, ``temperature``, ``top_k``, …).
    ``row_batch``: generated tokens explained per forward + backward pass: 1 shares one forward among all rows
    (best on a CPU), B > 1 repeats the sequence B times in a batch (best on a GPU), ``"auto"`` picks per device.
    The relevance is the same either way.
    ``model`` may be a transformers ``pipeline`` with ``tokenizer=None``; ``prompt`` is text, token ids or a
    one-row ``BatchEncoding`` (as for ``explain``). ``add_bos``: the BOS policy of ``Explainer`` (``None``: auto,
    a text prompt starts with the tokenizer's BOS token).
    ``progress(done, total)``, if given, is called once the answer is generated (``done`` 0) and after each
    explained pass with the generated tokens explained so far, for a progress bar (``attnlrp explain --generate``).
    """
    method = get_method(method)
    model, tokenizer = model_and_tokenizer(model, tokenizer)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ExplainError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if row_batch != "auto":
        resolve_row_batch(row_batch, torch.device("cpu"), max_new_tokens)  # reject a bad value before generating
    adapter = ModelAdapter.of(model)
    embedding = adapter.input_embedding()
    generate = getattr(model, "generate", None)  # nn.Module declares none: a transformers language model's
    if adapter.head != "causal-lm" or generate is None:
        raise ExplainError(f"{type(model).__name__}: generation attribution needs a causal language model")
    prepared = prepare_prompt(tokenizer, prompt, add_special_tokens,
                              several="explain_generation explains one prompt: call it once per prompt",
                              add_bos=bos_policy(add_bos, tokenizer, adapter.head, add_special_tokens))
    adapter.check_length(len(prepared), tokenizer, extra=max_new_tokens)
    device = adapter.device
    prompt_ids = torch.tensor([prepared.input_ids], dtype=torch.long, device=device)

    # ------------------------------------------------------------------ 1. generate, no rule active
    generate_kwargs.setdefault("do_sample", False)
    pad = adapter.pad_token_id(tokenizer)
    if pad is not None:
        generate_kwargs.setdefault("pad_token_id", pad)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
        output = generate(
            input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    generated = [int(t) for t in sequences[0, prompt_ids.shape[1]:].tolist()]
    if not generated:
        raise ExplainError("the model generated no token")
    ids = prepared.input_ids + generated
    n, start = len(generated), len(prepared)

    # ------------------------------------------------------------------ 2. explained forward + backward passes
    inputs_ids = torch.tensor([ids[:-1]], dtype=torch.long, device=device)
    with torch.no_grad():
        embeds = embedding(inputs_ids)
    seq_len = len(ids)
    passes = _RowPasses(adapter, embeds, positions=torch.arange(start - 1, start - 1 + n, device=device),
                        targets=generated, progress=None if progress is None else lambda done: progress(done, n))
    passes.report(0)
    batch = resolve_row_batch(row_batch, device, n)
    with ExplainedPass(model, method, strict=strict) as explained:
        try:
            if batch is None:
                rows = passes.batched(explained, memory=CudaMemory(device))
            else:
                rows = passes.batched(explained, batch) if batch > 1 else passes.shared(explained)
        except SharedAbsorptionError:
            # relevance absorbed by a tensor that all copies of the batch share cannot be split per row
            rows = passes.shared(explained)
    matrix = torch.zeros(n, seq_len, dtype=torch.float64)
    answer = torch.zeros(seq_len, dtype=torch.float64)
    for k, row in enumerate(rows):
        matrix[k, : seq_len - 1] = row.scores
    answer[: seq_len - 1] = passes.answer_scores(method)
    values = [row.value for row in rows]
    ledgers = [row.ledger for row in rows]
    answer_ledger = _summed(ledgers, value=sum(values))
    unhandled = explained.unhandled
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    return GenerationExplanation(
        tokens=list(prepared.tokens) + [tokenizer.decode([t]) for t in generated],
        token_ids=ids,
        prompt_length=start,
        matrix=matrix.float(),
        values=values,
        answer_relevance=answer.float(),
        answer_value=sum(values),
        method=method.name,
        ledgers=ledgers,
        answer_ledger=answer_ledger,
        special=list(prepared.special) + [t in special_ids for t in generated],
        prompt=prepared.text,
        model_name=model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        unhandled=unhandled,
    )


@dataclass
class _Row:
    scores: torch.Tensor  # (tokens - 1,), float64, CPU
    value: float
    ledger: LedgerReport


class _RowPasses:
    """The explained passes over prompt + answer (minus its last token): row ``k`` is generated token ``k``'s
    logit at position ``positions[k]``. Both strategies give the same rows; they differ in what they repeat."""

    def __init__(self, adapter: ModelAdapter, embeds: torch.Tensor, *, positions: torch.Tensor,
                 targets: list[int], progress: Callable[[int], None] | None = None) -> None:
        self.adapter, self.embeds, self.positions, self.targets = adapter, embeds, positions, targets
        self.progress = progress  # called with the rows done so far (from 0 again if a strategy starts over)
        # the vocabulary projection only where a generated token is read: every backward then skips the
        # (positions × vocabulary) matmul of all other positions
        self.keep_only = adapter.accepts("logits_to_keep")
        self.answer_grad: torch.Tensor | None = None  # (1, tokens, dim), float64: the sum of the rows' gradients

    def report(self, done: int) -> None:
        if self.progress is not None:
            self.progress(done)

    def answer_scores(self, method: Method) -> torch.Tensor:
        """The whole answer's relevance: every rule's backward is linear in its seed, so the gradient of the sum
        of the generated logits is the sum of the rows' gradients (no backward pass of its own)."""
        assert self.answer_grad is not None
        leaf, _ = ExplainedPass.leaf(self.embeds)
        return method.token_scores(leaf, self.answer_grad)[0].cpu()

    def _forward(self, explained: ExplainedPass, copies: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``copies`` copies of the sequence as leaves requiring grad, and each copy's logits at ``positions``."""
        explained.start(copies)
        leaf, embeds = explained.leaf(self.embeds, copies)
        inputs: dict[str, Any] = {
            "inputs_embeds": embeds,
            "attention_mask": torch.ones(leaf.shape[:2], dtype=torch.long, device=leaf.device),
            **self.adapter.no_cache(),
        }
        if self.keep_only:
            inputs["logits_to_keep"] = positions
            logits = self.adapter.model(**inputs).logits
        else:
            logits = self.adapter.model(**inputs).logits
            logits = logits[:, positions.to(logits.device)]
        return leaf, logits

    def _values(self, logits: torch.Tensor, batch_index: torch.Tensor, kept_index: torch.Tensor,
                rows: range) -> torch.Tensor:
        """Row ``rows[i]``'s logit, read from copy ``batch_index[i]`` at kept position ``kept_index[i]``."""
        targets = torch.tensor([self.targets[k] for k in rows], device=logits.device)
        return logits[batch_index.to(logits.device), kept_index.to(logits.device), targets].to(torch.float64)

    def _backward(self, explained: ExplainedPass, values: torch.Tensor, leaf: torch.Tensor, retain: bool) -> list[_Row]:
        """One backward seeded with ``values`` (copy ``b`` of the pass with ``values[b]`` only): its rows."""
        result = explained.backward(values, [leaf], retain=retain, what="a generated token")
        summed = result.grads[0].double().sum(dim=0, keepdim=True)
        self.answer_grad = summed if self.answer_grad is None else self.answer_grad + summed
        scores = result.scores[0].cpu()
        return [_Row(scores[b], ledger.value, ledger) for b, ledger in enumerate(result.ledgers)]

    def shared(self, explained: ExplainedPass) -> list[_Row]:
        """One forward for all rows, then one backward per row with the graph kept."""
        n = len(self.targets)
        self.answer_grad = None
        leaf, logits = self._forward(explained, 1, self.positions)
        values = self._values(logits, torch.zeros(n, dtype=torch.long), torch.arange(n), range(n))
        rows = []
        for k in range(n):
            rows += self._backward(explained, values[k: k + 1], leaf, retain=k < n - 1)
            self.report(len(rows))
        return rows

    def batched(self, explained: ExplainedPass, batch: int | None = None, memory: CudaMemory | None = None) -> list[_Row]:
        """``batch`` rows per pass: copy ``b`` of the sequence is seeded with its own row's logit only.

        Without ``batch``, the first row runs alone and the memory its pass holds (read from ``memory``) sizes
        the passes of the rest.
        """
        if batch is None and memory is None:
            raise ValueError("batched passes need a batch size or a memory reading to size them")
        n = len(self.targets)
        self.answer_grad = None
        rows: list[_Row] = []
        first = 0
        while first < n:
            sizing = memory if batch is None else None  # the first pass sizes the rest (memory given, checked above)
            copies = min(batch or 1, n - first)
            held_before = sizing.allocated() if sizing is not None else 0
            leaf, logits = self._forward(explained, copies, self.positions[first: first + copies])
            if sizing is not None:
                held = sizing.allocated() - held_before
                batch = rows_that_fit(sizing.available() + held, held, n - 1)
            own = torch.arange(copies)
            values = self._values(logits, own, own, range(first, first + copies))
            rows += self._backward(explained, values, leaf, retain=False)
            first += copies
            self.report(len(rows))
        return rows
