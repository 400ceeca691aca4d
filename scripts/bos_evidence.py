#!/usr/bin/env python
"""Relevance with and without the BOS token on SmolLM2 (issue #17, item 4): the evidence for ``add_bos``'s default.

For a handful of prompts (the README's capitals example first, then lxt's reference prompts and short factual
ones) AttnLRP explains the predicted next token twice, ``add_bos=True`` (``<|im_start|>`` in front, as
transformers 4.x's tokenizer did) and ``add_bos=False`` (what transformers 5.x's tokenizer gives), and prints
the first token's relevance, BOS's, the share of the input relevance each carries, the top 3 content tokens,
the Spearman correlation of the content tokens' relevance between the two, and the agreement with the stored
lxt 2.1 vectors (tests/data/lxt_reference_smollm2.json, computed on ids that start with BOS).

    .venv/bin/python scripts/bos_evidence.py            # ~1 min on one core
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import attnlrp
from attnlrp.models import load_model

PROMPTS = [
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Lisbon is the capital of",
    "The Eiffel Tower is located in the city of",
    "Water freezes at a temperature of zero degrees",
    "The largest planet in our solar system is",
    "Shakespeare wrote the play Romeo and",
    "The chemical symbol for gold is",
]
LXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "lxt_reference_smollm2.json"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    torch.set_num_threads(1)
    lm = load_model()
    explainer = attnlrp.Explainer(lm.model, lm.tokenizer)
    print("| prompt | target (BOS / no BOS) | BOS: its relevance | BOS: first word | no BOS: first word | "
          "top 3 with BOS | top 3 without | Spearman (content) |")
    print("|---|---|---|---|---|---|---|---|")
    for prompt in PROMPTS:
        with_bos = explainer(prompt, add_bos=True)
        without = explainer(prompt, add_bos=False)
        assert with_bos.special[0] and with_bos.token_ids[1:] == without.token_ids

        def top(e):
            return ", ".join(f"{t.strip()!s} {r:+.2f}" for _, t, r in e.top(3))

        r1, r0 = with_bos.relevance, without.relevance
        print(f"| {prompt[:40]}… | {with_bos.target.describe().split(' of ')[1].split(' at ')[0]} / "
              f"{without.target.describe().split(' of ')[1].split(' at ')[0]} | {float(r1[0]):+.3f} | "
              f"{with_bos.tokens[1].strip()} {float(r1[1]):+.3f} | {float(r0[0]):+.3f} | {top(with_bos)} | {top(without)} "
              f"| {spearman(r1[1:], r0):.3f} |")
    print()
    reference = json.loads(LXT.read_text())
    print("lxt 2.1 agreement (AttnLRP relevance, max |ours − lxt| / max |lxt|):")
    for item in reference["prompts"]:
        lxt = torch.tensor(item["attnlrp"], dtype=torch.float64)
        auto = explainer(item["prompt"], target=item["target_id"])
        never = explainer(item["prompt"], target=item["target_id"], add_bos=False)
        same_ids = auto.token_ids == item["input_ids"]
        diff = float((auto.relevance.double() - lxt).abs().max() / lxt.abs().max()) if same_ids else float("nan")
        print(f"- {item['prompt'][:40]!r}: add_bos auto → ids {'identical to' if same_ids else 'DIFFERENT from'} "
              f"lxt's, rel. max diff {diff:.1e}; add_bos=False → Spearman with lxt's content tokens "
              f"{spearman(never.relevance.double(), lxt[1:]):.3f}, first token {float(never.relevance[0]):+.3f} "
              f"vs lxt {float(lxt[1]):+.3f}")


if __name__ == "__main__":
    main()
