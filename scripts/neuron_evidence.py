"""The neuron evidence study of issue #5 on the embedded SmolLM2-135M-Instruct; writes docs/neuron-evidence.md
and docs/neuron-evidence.json (every number as measured).

    .venv/bin/python scripts/neuron_evidence.py                 # the full study (`make evidence`)
    .venv/bin/python scripts/neuron_evidence.py --draws 2 --max-facts 10 --output /tmp/quick   # a quick look

See evidence_study.py beside this script for the method: top-k MLP neurons per chooser are switched off (set to 0) for each fact;
the answer's drop and the damage to unrelated prompts with the same neurons off are measured in batched forwards.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

import evidence_study as evidence  # scripts/ is on the path: this script's own folder
import attnlrp
from attnlrp.models import load_model

ROOT = Path(__file__).resolve().parent.parent


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="5,10,50", help="numbers of neurons switched off (default: 5,10,50)")
    parser.add_argument("--draws", type=int, default=5, help="random draws per fact and k (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws (default: 0)")
    parser.add_argument("--max-facts", type=int, default=None, help="use only the first N correctly answered facts")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass (default: 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "neuron-evidence"),
                        help="path without extension: writes OUTPUT.md and OUTPUT.json (default: docs/neuron-evidence)")
    return parser.parse_args(argv)


def _versions(source: str) -> list[str]:
    return [
        f"attnlrp {getattr(attnlrp, '__version__', '0.1.0')}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}",
        f"model: {source.split(' (')[0]} (fp32, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores)",
    ]


def _comparison(study: evidence.Study, k: int) -> list[str]:
    """AttnLRP against every other chooser at one k, fact by fact (paired: the same facts and prompts)."""
    try:
        ours = study.row("attnlrp", k).specificity_per_fact
    except KeyError:
        return []
    lines = [f"| other chooser | AttnLRP − other, mean specificity | facts where AttnLRP is more specific |",
             "|---|---:|---:|"]
    for row in (r for r in study.rows if r.k == k and r.method != "attnlrp"):
        diffs = [a - b for a, b in zip(ours, row.specificity_per_fact)]
        wins = sum(d > 0 for d in diffs)
        label = row.label + (f" (mean of {row.draws} draws)" if row.method == "random" else "")
        lines.append(f"| {label} | {sum(diffs) / len(diffs):+.2f} | {wins} of {len(diffs)} |")
    return lines


def _findings(study: evidence.Study) -> list[str]:
    """Plain statements read off the table (generated, so they always match the numbers)."""
    out = []
    for k in study.ks:
        rows = [r for r in study.rows if r.k == k]
        chance = next((r for r in rows if r.method == "random"), None)
        chosen = sorted((r for r in rows if r.method != "random"), key=lambda r: -r.specificity)
        if not chosen:
            continue
        ranking = " > ".join(f"{r.label} {r.specificity:.2f}" for r in chosen)
        out.append(f"- **k = {k}**: specificity {ranking}" + (f" (random {chance.specificity:.2f})" if chance else "")
                   + ".")
        if chance is None:
            continue
        weakest = min(chosen, key=lambda r: r.logprob_drop)
        out.append(f"  Answer log-prob drop: every chooser ≥ {weakest.logprob_drop:.2f} ({weakest.label}) against "
                   f"{chance.logprob_drop:.4f} for random neurons.")
        below = [r for r in chosen if r.logit_drop <= chance.logit_drop]
        if below:
            out.append("  Answer *logit* drop not above random's "
                       f"({chance.logit_drop:+.2f}): " + ", ".join(f"{r.label} ({r.logit_drop:+.2f})" for r in below)
                       + " — these neurons lower the answer's probability by raising other tokens more than the "
                       "answer, not by lowering the answer's logit.")
    return out


REFERENCE_AT_50 = {"attnlrp": 8.0, "input-x-gradient": 3.6, "cp-lrp": 2.4}


def _reference(study: evidence.Study) -> list[str]:
    """The issue's reference measurement (lxt 2.1, the authors' implementation, same model) next to ours."""
    lines = ["## Against the reference measurement", "",
             "Issue #5 quotes a measurement with the reference implementation on this model: every method far "
             "above random; at k ≤ 10 the methods close to each other on the answer's drop; at k = 50 AttnLRP the "
             "most specific (≈ 8.0, against 3.6 for activation × gradient and 2.4 for CP-LRP). Here, with this "
             "library's rules, prompts and neuron choice (not tuned to match):", ""]
    if 50 in study.ks:
        ours = {m: study.row(m, 50).specificity for m in REFERENCE_AT_50 if _has(study, m, 50)}
        lines.append("- k = 50: " + ", ".join(f"{evidence.LABELS[m]} {v:.2f} (reference ≈ {REFERENCE_AT_50[m]})"
                                             for m, v in ours.items())
                     + (". Same order as the reference." if list(ours) == sorted(ours, key=lambda m: -ours[m])
                        and len(ours) == 3 else ". The order differs from the reference."))
    for k in (k for k in study.ks if k <= 10):
        drops = {m: study.row(m, k).logprob_drop for m in REFERENCE_AT_50 if _has(study, m, k)}
        lines.append(f"- k = {k}: answer log-prob drop " + ", ".join(
            f"{evidence.LABELS[m]} {v:.2f}" for m, v in drops.items())
            + f"; specificity " + ", ".join(f"{evidence.LABELS[m]} {study.row(m, k).specificity:.2f}" for m in drops)
            + ".")
    return lines


def _has(study: evidence.Study, method: str, k: int) -> bool:
    try:
        study.row(method, k)
    except KeyError:
        return False
    return True


def _markdown(study: evidence.Study, args: argparse.Namespace, source: str, seconds: float, command: str) -> str:
    kept, total = len(study.facts_kept), study.facts_total
    lines = [
        "# Neuron evidence: switching off the neurons each method finds (SmolLM2-135M-Instruct)",
        "",
        "Issue #5, item 4. For factual prompts the model answers correctly, the top-k MLP neurons chosen by each "
        "method are switched off (set to 0 at every position, the input of the layer's MLP down projection) and "
        "the answer's drop is measured; the same neurons are then switched off on unrelated prompts, whose own "
        "predicted token's log-probability drop is the **off-target damage**. **Specificity** = answer log-prob "
        "drop − off-target drop (nats; higher is better).",
        "",
        f"- command: `{command}`",
        *[f"- {v}" for v in _versions(source)],
        f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC; run time {seconds / 60:.1f} min",
        f"- facts: **{kept} of {total}** written prompts are answered correctly (greedy next token = the answer's "
        f"first token) and used; {len(study.unrelated)} unrelated prompts; k = {', '.join(map(str, study.ks))}; "
        f"random: {study.draws} seeded draws (seed {study.seed}) of k neurons from all layers per fact and k",
        "",
        "Neurons chosen by:",
        "",
        "- **AttnLRP**, **CP-LRP**: the most positively relevant neurons for the answer's logit (relevance summed "
        "over the prompt's tokens, ranked over the whole model), `Explainer(method=…).explain(…, latents=True)`.",
        "- **activation × gradient**: the same with method `input-x-gradient` (no rule: activation × plain "
        "gradient).",
        "- **activation (last token)**: the k largest activations at the last token, where the answer is predicted; "
        "**activation (summed over tokens)**: the k largest activations summed over the prompt's tokens.",
        "- **random**: k neurons drawn uniformly from all layers; the row is the mean over the draws.",
        "",
        "`tests/test_evidence.py::test_evidence_on_smollm2` (marked `real_model`) re-measures half of this study "
        "(every second fact, every third unrelated prompt, off-target damage at k = 50 only) and asserts that every "
        "chooser's answer log-prob drop is far above random's at each k and that AttnLRP is the most specific at "
        "k = 50.",
        "",
        "Columns: answer logit drop and log-prob drop (mean over facts), flip rate (share of facts whose greedy "
        "next token changes), off-target log-prob drop and flip rate (mean over facts of the mean over the "
        "unrelated prompts), specificity.",
        "",
        evidence.markdown_table(study),
        "",
        "## Findings (read off the table)",
        "",
        *_findings(study),
        "",
        *_reference(study),
        "",
    ]
    for k in study.ks:
        comparison = _comparison(study, k)
        if comparison:
            lines += [f"### AttnLRP against the others at k = {k}, fact by fact", "", *comparison, ""]
    random_rows = [r for r in study.rows if r.method == "random"]
    if random_rows:
        lines += ["### Random draws", "",
                  "| k | specificity of each draw |", "|---:|---|"]
        lines += [f"| {r.k} | {', '.join(f'{v:.3f}' for v in r.specificity_per_draw)} |" for r in random_rows]
        lines.append("")
    lines += ["## Prompts", "", f"Facts used ({kept}):", ""]
    lines += [f"- `{c.fact.prompt}` → `{c.fact.answer.strip()}` ({c.fact.kind})" for c in study.facts_kept]
    lines += ["", f"Facts dropped because the model answers otherwise ({len(study.facts_dropped)}):", ""]
    lines += [f"- `{c.fact.prompt}` → expected `{c.fact.answer.strip()}`, predicted `{c.predicted!r}`"
              for c in study.facts_dropped]
    lines += ["", "Unrelated prompts (and their own predicted next token):", ""]
    lines += [f"- `{json.dumps(p)[1:-1]}` → `{t!r}`" for p, t in zip(study.unrelated, study.unrelated_predicted)]
    lines += ["", f"All numbers, per fact too: `{Path(args.output).name}.json`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    start = time.perf_counter()
    loaded = load_model()
    study = evidence.run_study(
        loaded.model, loaded.tokenizer, ks=ks, draws=args.draws, seed=args.seed, batch_size=args.batch_size,
        max_facts=args.max_facts,
        progress=lambda message: print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - start
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/neuron_evidence.py", *(argv or sys.argv[1:])])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(_markdown(study, args, loaded.source, seconds, command), encoding="utf-8")
    data = study.to_dict() | {"command": command, "versions": _versions(loaded.source), "seconds": seconds}
    output.with_suffix(".json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    print(evidence.markdown_table(study))
    print(f"\nwritten: {output.with_suffix('.md')}, {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
