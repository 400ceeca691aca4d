"""Evidence that relevance finds the neurons that carry an answer: switch them off and measure.

A study of the library rather than part of it, so it lives beside its driver in ``scripts/`` (imported as
``evidence_study`` with ``scripts/`` on the path; ``tests/test_evidence.py`` does that).

The study (issue #5, ``scripts/neuron_evidence.py`` writes ``docs/neuron-evidence.md``): for factual prompts the
model answers correctly, pick the top-k MLP neurons by a method, switch them off (set to 0 during the forward
pass, as :func:`attnlrp.latent.steer` does) and measure how much the answer suffers — and how much unrelated
prompts suffer with the same neurons off. A method that finds the answer's own neurons hurts the answer a lot and
everything else little, so the headline number is the **specificity** = answer log-prob drop − off-target drop.

Neuron choosers:

* ``attnlrp``, ``cp-lrp``, ``input-x-gradient`` — the most positively relevant neurons for the logit of the
  answer (relevance summed over the prompt's tokens, ranked over the whole model). The input-x-gradient neurons
  are activation × plain gradient ("activation × gradient").
* ``activation`` — the largest activations at the last token (where the answer is predicted);
  ``activation-sum`` — the largest activations summed over the prompt's tokens.
* ``random`` — k neurons drawn uniformly from all layers, seeded, several draws (the baseline).

Everything runs in batches: one forward pass holds many rows, each row with its own switched-off neurons.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from attnlrp.core import get_method, method_names
from attnlrp.errors import ExplainError
from attnlrp.explain import Explainer
from attnlrp.latent import layer_sites
from attnlrp.models.adapter import ModelAdapter

Neuron = tuple[int, int]

#: The methods whose latent relevance ranks neurons (the registry's, e.g. not the gradient norm).
RELEVANCE_METHODS = method_names(has_unit_relevance=True)
ACTIVATION_METHODS = ("activation", "activation-sum")
CHOOSERS = RELEVANCE_METHODS + ACTIVATION_METHODS + ("random",)
LABELS = {
    **{name: get_method(name).label for name in RELEVANCE_METHODS},
    "input-x-gradient": "activation × gradient",  # what Input × Gradient is for a neuron
    "activation": "activation (last token)", "activation-sum": "activation (summed over tokens)",
    "random": "random",
}


@dataclass(frozen=True)
class Fact:
    """A prompt whose correct next token is the first token of ``answer`` (with its leading space)."""

    prompt: str
    answer: str
    kind: str


def _facts(kind: str, pairs: Iterable[tuple[str, str]]) -> list[Fact]:
    return [Fact(prompt, answer, kind) for prompt, answer in pairs]


# Written for this study; the ones SmolLM2-135M-Instruct gets wrong are dropped at run time (and reported).
FACTS: tuple[Fact, ...] = tuple(
    _facts("capital", [(f"The capital of {country} is", f" {city}") for country, city in (
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Russia", "Moscow"), ("England", "London"), ("China", "Beijing"), ("Egypt", "Cairo"),
        ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Canada", "Ottawa"),
        ("Australia", "Canberra"), ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Norway", "Oslo"),
        ("Sweden", "Stockholm"), ("Kenya", "Nairobi"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
        ("Turkey", "Ankara"), ("the Netherlands", "Amsterdam"), ("Denmark", "Copenhagen"),
        ("Finland", "Helsinki"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("Cuba", "Havana"),
        ("Peru", "Lima"),
    )])
    + _facts("country", [
        ("Madrid is the capital of", " Spain"), ("Cairo is the capital of", " Egypt"),
        ("Ottawa is the capital of", " Canada"), ("Lisbon is the capital of", " Portugal"),
    ])
    + _facts("language", [
        ("The official language of France is", " French"), ("The official language of Germany is", " German"),
        ("The official language of Mexico is", " Spanish"), ("The official language of Italy is", " Italian"),
        ("The official language of Russia is", " Russian"), ("The official language of Brazil is", " Portuguese"),
        ("The official language of Japan is", " Japanese"), ("Most people in Argentina speak", " Spanish"),
    ])
    + _facts("author", [
        ("Romeo and Juliet was written by William", " Shakespeare"),
        ("The novel 1984 was written by George", " Orwell"),
        ("Pride and Prejudice was written by Jane", " Austen"),
        ("War and Peace was written by Leo", " Tolstoy"),
        ("On the Origin of Species was written by Charles", " Darwin"),
        ("The Harry Potter books were written by J.K.", " Rowling"),
        ("The play Hamlet was written by", " William"),
        ("The Divine Comedy was written by Dante", " Alighieri"),
        ("Don Quixote was written by Miguel de", " Cervantes"),
        ("The author of The Adventures of Tom Sawyer is Mark", " Twain"),
        ("The Odyssey was written by", " Homer"),
    ])
    + _facts("person", [
        ("The theory of relativity was developed by Albert", " Einstein"),
        ("The first man to walk on the Moon was Neil", " Armstrong"),
        ("The Mona Lisa was painted by Leonardo da", " Vinci"),
        ("The composer of the Fifth Symphony is Ludwig van", " Beethoven"),
    ])
    + _facts("place", [
        ("The Statue of Liberty is in New", " York"), ("The Colosseum is located in", " Rome"),
        ("The Kremlin is located in", " Moscow"), ("The tallest mountain in the world is Mount", " Everest"),
        ("The longest river in Africa is the", " Nile"), ("The largest ocean on Earth is the", " Pacific"),
        ("The Eiffel Tower is located in", " Paris"),
    ])
    + _facts("science", [
        ("The chemical symbol for gold is", " Au"), ("The largest planet in the solar system is", " Jupiter"),
        ("The currency of Japan is the", " yen"), ("Water is made of hydrogen and", " oxygen"),
    ])
)

# Prompts with nothing to do with the facts: code, counting, cooking, daily life. Their own greedy next token is
# what the off-target damage measures.
UNRELATED: tuple[str, ...] = (
    "def add(a, b):\n    return a +",
    "1, 2, 3, 4, 5,",
    "Monday, Tuesday, Wednesday,",
    "To bake bread you need flour, water and",
    "She poured herself a cup of hot",
    "Please remember to turn off the",
    "The meeting has been moved to next",
    "He tied his shoes and went out for a",
    "Once upon a time, there was a little",
    "I am going to the store to buy some",
    "The cat climbed up the",
    "for i in range(10):\n    print(",
)


@dataclass(frozen=True)
class Checked:
    """A fact with its answer token, and whether the model's greedy next token is that token."""

    fact: Fact
    answer_id: int
    predicted_id: int
    predicted: str

    @property
    def correct(self) -> bool:
        return self.answer_id == self.predicted_id


# ------------------------------------------------------------------------------------------ batched forward
def _logits_at_last(model: nn.Module, tokenizer, prompts: Sequence[str], *, batch_size: int = 32,
                    off: Sequence[Sequence[Neuron]] | None = None) -> torch.Tensor:
    """Next-token logits (float64, rows × vocabulary) of each prompt; row ``i`` with neurons ``off[i]`` set to 0.

    Rows are grouped by token count, so no batch needs padding (each row computes exactly what it computes
    alone) and the vocabulary projection runs at the last position only.
    """
    if off is not None and len(off) != len(prompts):
        raise ExplainError(f"{len(off)} neuron lists for {len(prompts)} prompts")
    encoded = [tokenizer(p, add_special_tokens=True).input_ids for p in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise ExplainError("a prompt of the study has no tokens")
    by_length: dict[int, list[int]] = {}
    for row, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(row)
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            logits = _forward_rows(model, [encoded[r] for r in chunk], None if off is None else [off[r] for r in chunk])
            for r, row_logits in zip(chunk, logits):
                out[r] = row_logits
    return torch.stack(out)  # type: ignore[arg-type]


def _forward_rows(model: nn.Module, rows: list[list[int]], off: Sequence[Sequence[Neuron]] | None) -> torch.Tensor:
    """One forward pass over rows of equal length; the logits at the last position, float64 on the CPU."""
    device = next(model.parameters()).device
    adapter = ModelAdapter.of(model)
    kwargs: dict[str, Any] = {"input_ids": torch.tensor(rows, dtype=torch.long, device=device), **adapter.no_cache()}
    if adapter.accepts("logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    ablation = RowAblation(model, off) if off is not None else contextlib.nullcontext()
    with torch.no_grad(), ablation:
        logits = model(**kwargs).logits
    return logits[:, -1].double().cpu()


class RowAblation:
    """Within one batched forward, row ``i`` runs with the neurons ``off[i]`` set to 0 (per-row steering).

    Equivalent, row by row, to ``steer(model, off=off[i])`` on that row alone; hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, off: Sequence[Sequence[Neuron]]) -> None:
        sites = layer_sites(model)
        self._modules = {s.index: s.mlp_output for s in sites}
        self._keep: dict[int, torch.Tensor] = {}
        for row, neurons in enumerate(off):
            for layer, neuron in neurons:
                if not (0 <= layer < len(sites) and 0 <= neuron < sites[layer].num_neurons):
                    raise ExplainError(f"neuron {layer}:{neuron} does not exist in this model")
                if layer not in self._keep:
                    self._keep[layer] = torch.ones(len(off), sites[layer].num_neurons, dtype=torch.bool)
                self._keep[layer][row, neuron] = False
        self._handles: list[Any] = []

    def _hook(self, layer: int) -> Callable:
        keep = self._keep[layer]

        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            mask = keep.to(x.device)
            if x.dim() == 3:
                mask = mask[:, None, :]
            return (x.masked_fill(~mask, 0), *args[1:])
        return hook

    def __enter__(self) -> "RowAblation":
        try:
            for layer in self._keep:
                self._handles.append(self._modules[layer].register_forward_pre_hook(self._hook(layer), prepend=True))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# ------------------------------------------------------------------------------------------------ facts
def answer_token(tokenizer, answer: str) -> int:
    """The first token of the answer as the model would write it (leading space included)."""
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    if not ids:
        raise ExplainError(f"the answer {answer!r} has no tokens")
    return int(ids[0])


def check_facts(model: nn.Module, tokenizer, facts: Sequence[Fact] = FACTS, *, batch_size: int = 32) -> list[Checked]:
    """Every fact with the model's greedy next token; keep those with ``.correct``."""
    logits = _logits_at_last(model, tokenizer, [f.prompt for f in facts], batch_size=batch_size)
    predicted = logits.argmax(-1).tolist()
    return [Checked(f, answer_token(tokenizer, f.answer), int(p), tokenizer.decode([int(p)]))
            for f, p in zip(facts, predicted)]


# ------------------------------------------------------------------------------------------- choosing neurons
def relevant_neurons(model: nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[int], method: str,
                     k: int, *, batch_size: int = 8) -> tuple[list[list[Neuron]], list[Any]]:
    """Per prompt, the ``k`` most positively relevant neurons for the answer's logit (relevance summed over the
    tokens, ranked over the whole model), and the latent relevance objects (their activations are reused)."""
    explainer = Explainer(model, tokenizer, method=method)
    chosen: list[list[Neuron]] = []
    latents: list[Any] = []
    for start in range(0, len(prompts), batch_size):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explanations = explainer.explain_batch(list(prompts[start:start + batch_size]),
                                                   target=list(answers[start:start + batch_size]), latents=True)
        for explanation in explanations:
            latents.append(explanation.latents)
            chosen.append([(s.layer, s.neuron) for s in explanation.latents.top_neurons(k)])
    return chosen, latents


def active_neurons(activations: torch.Tensor, k: int, *, summed: bool) -> list[Neuron]:
    """The ``k`` largest activations of one prompt (``(layers, tokens, neurons)``): at the last token, or
    summed over the tokens. Ties keep (layer, neuron) order."""
    scores = activations.double().sum(dim=1) if summed else activations[:, -1].double()
    order = torch.argsort(scores.flatten(), descending=True, stable=True)[:k]
    width = scores.shape[1]
    return [(int(i) // width, int(i) % width) for i in order]


def random_neurons(widths: Sequence[int], k: int, generator: torch.Generator) -> list[Neuron]:
    """``k`` distinct neurons drawn uniformly from all layers."""
    offsets = [0]
    for w in widths:
        offsets.append(offsets[-1] + w)
    picks = torch.randperm(offsets[-1], generator=generator)[:k].tolist()
    out = []
    for p in picks:
        layer = max(i for i in range(len(widths)) if offsets[i] <= p)
        out.append((layer, p - offsets[layer]))
    return out


# ------------------------------------------------------------------------------------------------ measure
@dataclass
class Row:
    """One chooser at one k, averaged over the facts (and over the draws for ``random``)."""

    method: str
    k: int
    logit_drop: float
    logprob_drop: float
    flip_rate: float
    off_target_drop: float
    off_target_flip_rate: float
    specificity: float
    draws: int = 1
    specificity_per_draw: list[float] = field(default_factory=list)
    specificity_per_fact: list[float] = field(default_factory=list)
    logprob_drop_per_fact: list[float] = field(default_factory=list)
    # [fact][unrelated prompt]: the log-prob drop of that unrelated prompt with that fact's neurons off
    off_target_drop_per_fact_and_prompt: list[list[float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS.get(self.method, self.method)


@dataclass
class Study:
    """The settings, the facts kept and dropped, and one :class:`Row` per chooser and k."""

    facts_total: int
    facts_kept: list[Checked]
    facts_dropped: list[Checked]
    unrelated: list[str]
    unrelated_predicted: list[str]
    ks: list[int]
    draws: int
    seed: int
    rows: list[Row]

    def row(self, method: str, k: int) -> Row:
        for r in self.rows:
            if r.method == method and r.k == k:
                return r
        raise KeyError((method, k))

    def to_dict(self) -> dict[str, Any]:
        return {
            "facts_total": self.facts_total,
            "facts_kept": [{"prompt": c.fact.prompt, "answer": c.fact.answer, "kind": c.fact.kind}
                           for c in self.facts_kept],
            "facts_dropped": [{"prompt": c.fact.prompt, "answer": c.fact.answer, "kind": c.fact.kind,
                               "predicted": c.predicted} for c in self.facts_dropped],
            "unrelated": [{"prompt": p, "predicted": t} for p, t in zip(self.unrelated, self.unrelated_predicted)],
            "ks": self.ks, "random_draws": self.draws, "seed": self.seed,
            "rows": [_rounded(asdict(r)) | {"label": r.label} for r in self.rows],
        }


def _rounded(value: Any, digits: int = 5) -> Any:
    """Floats to ``digits`` decimals (nats; far below the differences that matter), keeping the JSON small."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)  # NaN (not measured) is null in JSON
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, dict):
        return {key: _rounded(v, digits) for key, v in value.items()}
    return value


def _log_softmax_at(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit, log-probability) of token ``ids[i]`` in row ``i``."""
    picked = logits[torch.arange(len(ids)), ids]
    return picked, picked - torch.logsumexp(logits, dim=-1)


@dataclass
class _Baseline:
    answer_ids: torch.Tensor
    answer_logit: torch.Tensor
    answer_logprob: torch.Tensor
    unrelated_ids: torch.Tensor
    unrelated_logprob: torch.Tensor


def _ablate(model: nn.Module, tokenizer, facts: Sequence[Checked], unrelated: Sequence[str],
            neuron_sets: Sequence[Sequence[Neuron]], base: _Baseline, batch_size: int) -> dict[str, torch.Tensor]:
    """Per fact: answer logit / log-prob drop and flip with its neurons off, and (when ``unrelated`` is not
    empty) the off-target drop of every unrelated prompt with the same neurons off. One batch holds many
    (prompt, neuron set) rows."""
    n, u = len(facts), len(unrelated)
    prompts = [c.fact.prompt for c in facts] + [p for _ in facts for p in unrelated]
    off = [list(s) for s in neuron_sets] + [list(s) for s in neuron_sets for _ in unrelated]
    logits = _logits_at_last(model, tokenizer, prompts, batch_size=batch_size, off=off)
    answer_logit, answer_logprob = _log_softmax_at(logits[:n], base.answer_ids)
    result = {
        "logit_drop": base.answer_logit - answer_logit,
        "logprob_drop": base.answer_logprob - answer_logprob,
        "flip": (logits[:n].argmax(-1) != base.answer_ids).double(),
    }
    if u == 0:  # not measured: NaN, never a made-up 0
        nan = torch.full((n,), math.nan, dtype=torch.float64)
        return result | {"off_target_drop": nan, "off_target_flip": nan,
                         "off_target_matrix": torch.empty(n, 0, dtype=torch.float64)}
    other = logits[n:]
    other_ids = base.unrelated_ids.repeat(n)
    _, other_logprob = _log_softmax_at(other, other_ids)
    other_matrix = (base.unrelated_logprob.repeat(n) - other_logprob).view(n, u)
    return result | {
        "off_target_drop": other_matrix.mean(1),
        "off_target_flip": (other.argmax(-1) != other_ids).double().view(n, u).mean(1),
        "off_target_matrix": other_matrix,
    }


def _summarise(method: str, k: int, per_draw: list[dict[str, torch.Tensor]]) -> Row:
    def mean(key: str) -> float:
        return float(torch.stack([d[key] for d in per_draw]).mean())

    specificity = [d["logprob_drop"] - d["off_target_drop"] for d in per_draw]
    per_fact = torch.stack(specificity).mean(0)

    def per_draw_mean(key: str) -> list:
        return torch.stack([d[key] for d in per_draw]).mean(0).tolist()

    return Row(
        method=method, k=k, logit_drop=mean("logit_drop"), logprob_drop=mean("logprob_drop"),
        flip_rate=mean("flip"), off_target_drop=mean("off_target_drop"),
        off_target_flip_rate=mean("off_target_flip"), specificity=float(per_fact.mean()), draws=len(per_draw),
        specificity_per_draw=[float(s.mean()) for s in specificity],
        specificity_per_fact=[float(v) for v in per_fact],
        logprob_drop_per_fact=per_draw_mean("logprob_drop"),
        off_target_drop_per_fact_and_prompt=per_draw_mean("off_target_matrix"),
    )


def run_study(model: nn.Module, tokenizer, *, facts: Sequence[Fact] = FACTS,
              unrelated: Sequence[str] = UNRELATED, ks: Sequence[int] = (5, 10, 50),
              methods: Sequence[str] = CHOOSERS, draws: int = 5, seed: int = 0, batch_size: int = 32,
              max_facts: int | None = None, off_target_ks: Sequence[int] | None = None,
              progress: Callable[[str], None] | None = None) -> Study:
    """Run the whole study (see the module docstring). ``max_facts`` keeps the first correct facts only;
    ``off_target_ks`` measures the off-target damage (and so the specificity) only at these k (default: all),
    the rest report NaN there — the answer's drop is the cheap part, the unrelated prompts the costly one."""
    unknown = [m for m in methods if m not in CHOOSERS]
    if unknown:
        raise ExplainError(f"unknown neuron chooser {unknown[0]!r}; choose from {', '.join(CHOOSERS)}")
    if not ks or min(ks) < 1:
        raise ExplainError("ks must be positive numbers of neurons")
    say = progress or (lambda message: None)
    checked = check_facts(model, tokenizer, facts, batch_size=batch_size)
    kept = [c for c in checked if c.correct][:max_facts]
    if not kept:
        raise ExplainError("the model answers none of the facts correctly")
    say(f"{len(kept)} of {len(checked)} facts answered correctly")
    base = _baseline(model, tokenizer, kept, unrelated, batch_size)
    k_max = max(ks)
    chosen = _choose(model, tokenizer, kept, methods, k_max, draws, seed, say)
    rows = []
    for method in methods:
        for k in sorted(ks):
            others = unrelated if off_target_ks is None or k in off_target_ks else ()
            per_draw = [_ablate(model, tokenizer, kept, others, [s[:k] for s in sets], base, batch_size)
                        for sets in chosen[method]]
            rows.append(_summarise(method, k, per_draw))
            say(f"{method:>18} k={k:<3} specificity {rows[-1].specificity:+.3f}")
    return Study(
        facts_total=len(checked), facts_kept=kept, facts_dropped=[c for c in checked if not c.correct],
        unrelated=list(unrelated), unrelated_predicted=[tokenizer.decode([int(i)]) for i in base.unrelated_ids],
        ks=sorted(ks), draws=draws, seed=seed, rows=rows,
    )


def _baseline(model: nn.Module, tokenizer, kept: Sequence[Checked], unrelated: Sequence[str],
              batch_size: int) -> _Baseline:
    answer_ids = torch.tensor([c.answer_id for c in kept])
    answer_logit, answer_logprob = _log_softmax_at(
        _logits_at_last(model, tokenizer, [c.fact.prompt for c in kept], batch_size=batch_size), answer_ids)
    other = _logits_at_last(model, tokenizer, list(unrelated), batch_size=batch_size)
    unrelated_ids = other.argmax(-1)
    _, unrelated_logprob = _log_softmax_at(other, unrelated_ids)
    return _Baseline(answer_ids, answer_logit, answer_logprob, unrelated_ids, unrelated_logprob)


def _choose(model: nn.Module, tokenizer, kept: Sequence[Checked], methods: Sequence[str], k_max: int, draws: int,
            seed: int, say: Callable[[str], None]) -> dict[str, list[list[list[Neuron]]]]:
    """Per chooser: a list of draws (one for all but ``random``), each a ranked neuron list of length ``k_max``
    per fact; the top k of a list are its first k."""
    prompts = [c.fact.prompt for c in kept]
    answers = [c.answer_id for c in kept]
    chosen: dict[str, list[list[list[Neuron]]]] = {}
    activations: list[torch.Tensor] | None = None
    for method in methods:
        if method in RELEVANCE_METHODS:
            sets, latents = relevant_neurons(model, tokenizer, prompts, answers, method, k_max)
            chosen[method] = [sets]
            activations = activations or [lat.activations for lat in latents]
            say(f"chose neurons by {method}")
    for method in methods:
        if method in ACTIVATION_METHODS:
            if activations is None:
                _, latents = relevant_neurons(model, tokenizer, prompts, answers, "input-x-gradient", 1)
                activations = [lat.activations for lat in latents]
            chosen[method] = [[active_neurons(a, k_max, summed=method == "activation-sum") for a in activations]]
        elif method == "random":
            widths = [s.num_neurons for s in layer_sites(model)]
            chosen[method] = []
            for draw in range(draws):
                generator = torch.Generator().manual_seed(seed * 7919 + draw)
                chosen[method].append([random_neurons(widths, k_max, generator) for _ in kept])
    return chosen


# ------------------------------------------------------------------------------------------------ report
def markdown_table(study: Study) -> str:
    """The result table: one line per chooser and k, every number as measured."""
    lines = [
        "| k | neurons chosen by | answer logit drop | answer log-prob drop | flip rate | off-target log-prob drop "
        "| off-target flip rate | specificity |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in study.ks:
        for r in (r for r in study.rows if r.k == k):
            label = r.label + (f" (mean of {r.draws} draws)" if r.method == "random" else "")
            lines.append(
                f"| {k} | {label} | {r.logit_drop:.2f} | {r.logprob_drop:.2f} | {r.flip_rate:.0%} | "
                f"{_number(r.off_target_drop, '.3f')} | {_number(r.off_target_flip_rate, '.0%')} | "
                f"**{_number(r.specificity, '.2f')}** |"
            )
    return "\n".join(lines)


def _number(value: float, spec: str) -> str:
    return "not measured" if math.isnan(value) else format(value, spec)


def finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)
