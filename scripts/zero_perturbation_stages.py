#!/usr/bin/env python
"""Why is AttnLRP's logit ABPC under ``zero`` 0.07 in our evaluation and 0.16 in the lxt 2.1 reference run?

Issue #17, item 5. The same SmolLM2 token ids go through two measurement procedures, switching one stage at a
time, and the normalised logit ABPC of AttnLRP (our relevance, which matches lxt's) is tabulated per stage:

- data: "windows", the reference's windows (24–40 tokens cut at a random point of prose paragraphs of
  ``pydoc_data.topics``, rebuilt here by the same seeded procedure as the reference run; see
  :func:`reference_windows`), "sentences", our next-token sentences (``attnlrp.evaluation.data.next_token_samples``),
  or "windows-short", window i cut to the length of sentence i;
- BOS: ``<|im_start|>`` (id 1) kept in front of the content or not (transformers 5.x's tokenizer adds none);
  BOS is never ranked or flipped, so without it the first *content* token is rankable and flippable;
- procedure "ref": 11 points, ``k = round(f·n)`` tokens flipped at f = 0, 0.1, …, 1, trapezoid over f, both
  curves divided by the unperturbed logit; "ours": ``attnlrp.evaluation.flip_curves`` (one token per step,
  trapezoid over the fraction flipped, divided by |unperturbed logit|); "ours/10": ``steps=10``
  (``floor(s·n/10)``);
- ranking: signed AttnLRP relevance, ties by position (both); "first content token never flipped" (ref
  procedure): a diagnostic of the attention sink, not a method;
- "zero": the flipped tokens' input embeddings set to 0 (both procedures do exactly this).

The target is the model's greedy next token on the ids measured (with BOS when BOS is kept).

    .venv/bin/python scripts/zero_perturbation_stages.py --n 12 --json out/zero_stages_n12.json   # ~10 min, one core
    .venv/bin/python scripts/zero_perturbation_stages.py --n 12 --data windows-short
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time

import torch

from attnlrp.evaluation import data as evaluation_data
from attnlrp.evaluation.instance import TextInstance, embedding_of, position_logits
from attnlrp.evaluation.methods import Attributor
from attnlrp.evaluation.perturbation import flip_curves
from attnlrp.models import load_model

BOS = 1  # SmolLM2's <|im_start|>, the tokenizer's bos_token
FRACTIONS = [i / 10 for i in range(11)]


# ------------------------------------------------------------------------------------------------ data

def _reference_paragraphs() -> list[tuple[str, str]]:
    """(topic, paragraph) pairs the reference run cut its windows from: unindented paragraphs of at least 160
    characters, without markup-like runs, grammar, doctest prompts, pipes or citations, with few quotes or
    asterisks and at least 93 % letters, spaces and ``,.;'``."""
    import pydoc_data.topics as topics

    markup = re.compile(r"[*=~^-]{4,}|::=|>>>|\||\[\d")
    found = []
    for topic in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[topic]):
            lines = [line for line in block.split("\n") if line.strip()]
            if not lines or any(line.startswith(" ") for line in lines):
                continue
            text = " ".join(line.strip() for line in lines)
            plain = sum(c.isalpha() or c in " ,.;'" for c in text) / len(text) if text else 0.0
            if len(text) < 160 or markup.search(text) or text.count('"') > 4 or text.count("*") > 2 or plain < 0.93:
                continue
            found.append((topic, text))
    return found


def reference_windows(tokenizer, n: int, seed: int = 0, shortest: int = 24, longest: int = 40,
                      per_topic: int = 4) -> list[dict]:
    """The reference run's first ``n`` windows (same seeded draws, so the first ``n`` of its 60): for each
    shuffled paragraph (at most ``per_topic`` per topic) a length L in [shortest, longest], a sentence to start
    at such that L + 1 tokens follow, and the first L tokens from there (no special tokens)."""
    rng = random.Random(seed)
    paragraphs = _reference_paragraphs()
    rng.shuffle(paragraphs)
    windows: list[dict] = []
    taken: dict[str, int] = {}
    for topic, text in paragraphs:
        if taken.get(topic, 0) >= per_topic:
            continue
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
        length = rng.randint(shortest, longest)

        def ids_from(i: int) -> list[int]:
            return tokenizer(" ".join(sentences[i:]), add_special_tokens=False)["input_ids"]

        starts = [i for i in range(len(sentences)) if len(ids_from(i)) >= length + 1]
        if not starts:
            continue
        ids = ids_from(rng.choice(starts))[:length]
        windows.append({"id": f"window:{topic}:{len(windows)}", "ids": list(ids)})
        taken[topic] = taken.get(topic, 0) + 1
        if len(windows) == n:
            return windows
    raise SystemExit(f"only {len(windows)} windows from this Python's pydoc_data")


def our_sentences(tokenizer, n: int) -> list[dict]:
    """The evaluation's next-token samples (Python-doc sentences cut before their last word), content ids only."""
    samples = evaluation_data.next_token_samples(tokenizer, n)
    return [{"id": s.id, "ids": [i for i, sp in zip(s.input_ids, s.special) if not sp]} for s in samples]


# ------------------------------------------------------------------------------------------- measuring

def reference_abpc(model, ids: torch.Tensor, target: int, relevance: torch.Tensor, rankable: torch.Tensor) -> float:
    """The reference's procedure: 11 points k = round(f·n), signed ranking (stable, ties by position), the
    flipped input embeddings zeroed, the target logit at the last position, both curves / unperturbed logit."""
    positions = torch.nonzero(rankable).squeeze(1)
    values = relevance.double()[positions]
    n = len(positions)
    embeds = embedding_of(model)(ids.unsqueeze(0)).detach()[0]
    curves = {}
    for order, key in (("morf", -values), ("lerf", values)):
        ranked = positions[torch.sort(key, stable=True).indices]
        batch = embeds.unsqueeze(0).repeat(len(FRACTIONS), 1, 1)
        for row, f in enumerate(FRACTIONS):
            batch[row, ranked[: int(round(f * n))]] = 0.0
        with torch.no_grad():
            curves[order] = position_logits(model, len(ids) - 1, inputs_embeds=batch)[:, target].double()
    y0 = float(curves["morf"][0])

    def area(y):
        y = (y / y0).tolist()
        return sum((y[i] + y[i + 1]) / 2 * (FRACTIONS[i + 1] - FRACTIONS[i]) for i in range(len(y) - 1))

    return area(curves["lerf"]) - area(curves["morf"])


def greedy(model, ids: torch.Tensor) -> tuple[int, float]:
    with torch.no_grad():
        z = position_logits(model, len(ids) - 1, input_ids=ids.unsqueeze(0))[0]
    return int(z.argmax()), float(z.max())


def zero_one(model, ids: torch.Tensor, target: int, position: int) -> float:
    """Target logit with only ``position``'s embedding zeroed, relative to the unperturbed logit."""
    embeds = embedding_of(model)(ids.unsqueeze(0)).detach()
    base = position_logits(model, len(ids) - 1, inputs_embeds=embeds)[0, target]
    embeds[0, position] = 0.0
    with torch.no_grad():
        return float(position_logits(model, len(ids) - 1, inputs_embeds=embeds)[0, target] / base)


def mean_ci(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    if len(t) < 2:
        return float(t.mean()), float("nan")
    from scipy import stats

    return float(t.mean()), float(stats.t.ppf(0.975, len(t) - 1) * t.std(unbiased=True) / math.sqrt(len(t)))


def measure(model, attributor, item: dict, bos: bool, mode: str = "zero", fine: bool = True) -> dict:
    ids = torch.tensor(([BOS] if bos else []) + item["ids"])
    target, logit = greedy(model, ids)
    rankable = torch.ones(len(ids), dtype=torch.bool)
    if bos:
        rankable[0] = False
    instance = TextInstance(ids, len(ids) - 1, target, rankable)
    relevance = attributor("attnlrp", instance).relevance.detach().cpu()
    first = 1 if bos else 0  # the first content token
    out = {
        "id": item["id"], "tokens": len(item["ids"]), "target": target, "logit": logit,
        "ref": reference_abpc(model, ids, target, relevance, rankable) if mode == "zero" else None,
        "ours": flip_curves(model, instance, relevance, mode=mode,
                            neutral_id=attributor.neutral_id).abpc("logit") if fine else None,
        "ours10": flip_curves(model, instance, relevance, mode=mode, steps=10,
                              neutral_id=attributor.neutral_id).abpc("logit"),
        "first_relevance": float(relevance[first]),
        "first_is_min": int(torch.nonzero(rankable).squeeze(1)[relevance[rankable].argmin()]) == first,
        "zero_first": zero_one(model, ids, target, first),
    }
    kept = rankable.clone()
    kept[first] = False
    out["sink_kept"] = reference_abpc(model, ids, target, relevance, kept) if mode == "zero" else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="windows and sentences per data set (default 16)")
    parser.add_argument("--data", default="windows,sentences", help="windows, sentences and/or windows-short")
    parser.add_argument("--modes", default="zero", help="zero and/or replace (replace: ours only)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fine-all", action="store_true",
                        help="one token per step in every row (default: windows with BOS, sentences without)")
    parser.add_argument("--json", help="write the per-sample results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model()
    model, tokenizer = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    attributor = Attributor(model, tokenizer)
    sets = {"windows": lambda: reference_windows(tokenizer, args.n), "sentences": lambda: our_sentences(tokenizer, args.n),
            # length-matched: window i cut to the length of sentence i (is it the length or the kind of text?)
            "windows-short": lambda: [{"id": w["id"], "ids": w["ids"][: len(s["ids"])]} for w, s in
                                      zip(reference_windows(tokenizer, args.n), our_sentences(tokenizer, args.n))]}
    results: dict[str, list[dict]] = {}
    start = time.perf_counter()
    for name in args.data.split(","):
        items = sets[name]()
        for mode in args.modes.split(","):
            for bos in (True, False):
                key = f"{name}|{'BOS' if bos else 'no BOS'}|{mode}"
                # one token per step costs ~3x the rest: run it where the two setups under comparison are
                fine = args.fine_all or (name, bos) in (("windows", True), ("sentences", False))
                results[key] = [measure(model, attributor, item, bos, mode, fine) for item in items]
                print(f"[{time.perf_counter() - start:.0f}s] {key} done", file=sys.stderr, flush=True)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, n = {args.n} per data set; "
          f"mean ± 95 % CI (t) of AttnLRP's normalised logit ABPC\n")
    print("| data | BOS | mode | ref procedure (11 pts) | ours (1 token/step) | ours (steps=10) | ref procedure, first content token never flipped "
          "| first token's relevance | first token = least relevant | logit with only the first token zeroed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, rows in results.items():
        name, bos, mode = key.split("|")

        def cell(field):
            values = [r[field] for r in rows if r[field] is not None]
            return "%.3f ± %.3f" % mean_ci(values) if values else "–"

        share = sum(r["first_is_min"] for r in rows)
        print(f"| {name} | {bos} | {mode} | {cell('ref')} | {cell('ours')} | {cell('ours10')} | {cell('sink_kept')} "
              f"| {cell('first_relevance')} | {share}/{len(rows)} | {cell('zero_first')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
