"""The relevance-patching study of issue #14 on the embedded SmolLM2-135M: how well each rule configuration's
patching estimates agree with real activation patching, per level and task, and which configuration is the
default. Writes docs/patching.md, docs/patching.json and the figures docs/patching-*.png.

    .venv/bin/python scripts/patching_study.py --threads 2         # the full study (`make patching-study`)
    .venv/bin/python scripts/patching_study.py --pairs 3 --residual-pairs 1 --neuron-pairs 1 --circuit-pairs 2 \\
        --output /tmp/patching-quick                                 # a quick look
    ... --cache out/patching-study.pt                                # saves every round; a rerun resumes
    ... --cache out/patching-study.pt --render-only                  # the report from what is measured so far

Everything goes through the library: ``attnlrp.patching.patch`` for the estimates of every method,
``activation_patching`` for the ground truth (once per pair, shared by all methods), ``agreement`` for Pearson,
Spearman and top-k overlap, ``circuit`` for the recovery curves. The prompt pairs are written out in
scripts/data/patching_tasks.json; pairs the model gets wrong (clean metric ≤ 0) are dropped and counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import attnlrp
from attnlrp.method_registry import Method
from attnlrp.models import load_model
from attnlrp.patching import DEFAULT_METHOD, activation_patching, agreement, circuit, patch
from attnlrp.patching.names import patching_method

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "patching_tasks.json"
LEVELS = ("heads", "mlps", "residual", "neurons")
#: top-k overlap: k per level (an MLP level has only 30 components)
TOP_K = {"heads": 10, "mlps": 5, "residual": 10, "neurons": 10}
#: the neuron sample per pair: the top NEURON_TOP by |estimate| of each method, plus NEURON_RANDOM random others
NEURON_TOP, NEURON_RANDOM = 50, 50


def candidates() -> dict[str, Method]:
    """Every configuration compared: the 2 × 2 grid of attention and gate treatments under the LRP rules (norms
    held constant, identity rule for activations in all four) and attribution patching (the plain gradient). Three
    of the four have names in ``attnlrp.patching`` (``relp`` is attention constant, gates uniform); the fourth is
    made here."""
    named = {name: patching_method(name) for name in ("gradient", "attnlrp", "cp-lrp", "relp")}
    named["attnlrp-cg"] = dataclasses.replace(named["attnlrp"], name="attnlrp-cg", label="AttnLRP, gates constant",
                                              gates="constant")
    return named


LABELS = {"gradient": "AtP (gradient)", "attnlrp": "AttnLRP (att. uniform, gates uniform)",
          "cp-lrp": "CP-LRP (att. constant, gates constant)", "relp": "RelP rules (att. constant, gates uniform)",
          "attnlrp-cg": "att. uniform, gates constant"}


# ------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Pair:
    task: str
    number: int  # position in the data file
    clean: str
    corrupted: str
    target: str
    contrast: str


def load_tasks(path: Path = DATA) -> dict[str, tuple[str, list[Pair]]]:
    """Task → (description, written pairs) from the data file."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {task: (spec["description"], [Pair(task, i, p["clean"], p["corrupted"], p["target"], p["contrast"])
                                         for i, p in enumerate(spec["pairs"])])
            for task, spec in raw.items()}


def screen(model: Any, tokenizer: Any, pairs: list[Pair]) -> tuple[list[float], list[float]]:
    """The metric of every pair's clean and corrupted prompt (one batched call; checks equal lengths too)."""
    result = patch(model, tokenizer, [p.clean for p in pairs], [p.corrupted for p in pairs],
                   [p.target for p in pairs], [p.contrast for p in pairs], method="gradient", levels=("mlps",))
    return list(result.metric["clean"]), list(result.metric["corrupted"])


# ------------------------------------------------------------------------------------------------ measuring
@dataclass
class PairRecord:
    """One pair's estimates (per method) and truth, on the components where the truth was measured."""

    pair: Pair
    clean_metric: float
    corrupted_metric: float
    first_difference: int
    estimates: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # method -> level -> tensor
    truth: dict[str, torch.Tensor] = field(default_factory=dict)  # level -> tensor (NaN: not patched)


def neuron_sample(estimates: dict[str, dict[str, torch.Tensor]], seed: int) -> torch.Tensor:
    """The union of every method's top-NEURON_TOP neurons by |estimate| and NEURON_RANDOM random others."""
    shape = next(iter(estimates.values()))["neurons"].shape
    chosen = torch.zeros(shape, dtype=torch.bool)
    for values in estimates.values():
        chosen.view(-1)[values["neurons"].abs().flatten().argsort(descending=True)[:NEURON_TOP]] = True
    others = (~chosen).flatten().nonzero().flatten()
    pick = others[torch.randperm(others.numel(), generator=torch.Generator().manual_seed(seed))[:NEURON_RANDOM]]
    chosen.view(-1)[pick] = True
    return chosen


def measure_pair(model: Any, tokenizer: Any, pair: Pair, methods: dict[str, Method], levels: tuple[str, ...],
                 batch_size: int, seed: int) -> PairRecord:
    """Every method's estimates for one pair and the true effects of the same components (residual positions
    from the first differing token on: before it both runs are identical, estimate and truth are exactly 0)."""
    args = (model, tokenizer, pair.clean, pair.corrupted, pair.target, pair.contrast)
    results = {name: patch(*args, method=method, levels=levels) for name, method in methods.items()}
    first = next(iter(results.values()))
    ids = first.to_dict()["token_ids"]
    diff = next(i for i, (a, b) in enumerate(zip(ids["clean"], ids["corrupted"])) if a != b)
    estimates = {name: {level: r.estimates[level] for level in levels} for name, r in results.items()}
    components = {}
    if "residual" in levels:
        components["residual"] = torch.zeros_like(first.estimates["residual"], dtype=torch.bool)
        components["residual"][:, diff:] = True
    if "neurons" in levels:
        components["neurons"] = neuron_sample(estimates, seed)
    truth = activation_patching(*args, levels=levels, components=components, batch_size=batch_size)
    return PairRecord(pair, float(first.metric["clean"]), float(first.metric["corrupted"]), diff, estimates, truth)


def known(record: PairRecord, method: str, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(estimate, truth) of one method and level on the components whose truth was measured."""
    truth = record.truth[level].flatten()
    keep = torch.isfinite(truth)
    return record.estimates[method][level].flatten()[keep], truth[keep]


# ------------------------------------------------------------------------------------------------ summaries
def _mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, sd


def summarise(records: list[PairRecord], methods: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """method → level → per-pair Pearson/Spearman/top-k (mean, sd, values), the pooled Pearson and Spearman over
    all components of all pairs, and the least-squares slope of truth on estimate (pooled)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        for level in LEVELS:
            rows = [r for r in records if level in r.truth]
            if not rows:
                continue
            per_pair = [agreement(*known(r, method, level), k=TOP_K[level]) for r in rows]
            estimate = torch.cat([known(r, method, level)[0] for r in rows])
            truth = torch.cat([known(r, method, level)[1] for r in rows])
            pooled = agreement(estimate, truth, k=TOP_K[level])
            slope = float((estimate * truth).sum() / (estimate * estimate).sum()) if estimate.abs().sum() else math.nan
            entry: dict[str, Any] = {"pairs": len(rows), "components_per_pair": sum(a.n for a in per_pair) / len(rows)}
            for name in ("pearson", "spearman", "top_k_overlap"):
                values = [getattr(a, name) for a in per_pair]
                mean, sd = _mean_sd(values)
                entry[name] = {"mean": mean, "sd": sd, "per_pair": values}
            entry["pooled"] = {"pearson": pooled.pearson, "spearman": pooled.spearman}
            if level == "mlps":  # the first MLP carries the token's identity; see docs/patching.md, "Why"
                without = [agreement(*(t[1:] for t in known(r, method, level))).pearson for r in rows]
                entry["pearson_without_layer0"] = dict(zip(("mean", "sd"), _mean_sd(without)))
            entry["slope"] = slope
            entry["beats_gradient"] = None
            out.setdefault(method, {})[level] = entry
    for method in methods:
        for level, entry in out.get(method, {}).items():
            if method != "gradient" and "gradient" in out:
                theirs = out["gradient"][level]["pearson"]["per_pair"]
                ours = entry["pearson"]["per_pair"]
                entry["beats_gradient"] = sum(a > b for a, b in zip(ours, theirs)
                                              if math.isfinite(a) and math.isfinite(b))
    return out


#: the levels the default is chosen on: those where every component is patched (the neurons are a sample picked
#: by the methods' own largest estimates, on fewer pairs; they are reported, and ranked separately)
CHOICE_LEVELS = ("heads", "mlps", "residual")


def rank_methods(summary: dict[str, dict[str, dict[str, dict[str, Any]]]], methods: list[str],
                 levels: tuple[str, ...] = CHOICE_LEVELS) -> list[tuple[str, float, float]]:
    """Every method ranked by its worst mean per-pair Pearson over every task and the given levels (the target is a
    floor on every level and task), ties broken by the mean over them: [(method, worst, mean)], best first."""
    ranking = []
    for method in methods:
        values = [summary[task][method][level]["pearson"]["mean"] for task in summary for level in levels
                  if level in summary[task][method]]
        ranking.append((method, min(values), sum(values) / len(values)))
    return sorted(ranking, key=lambda row: (-row[1], -row[2]))


# ------------------------------------------------------------------------------------------------ figures
def figure_correlations(summary: dict, methods: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), sharey=True)
    width = 0.8 / len(methods)
    for ax, task in zip(axes, tasks):
        for i, method in enumerate(methods):
            means = [summary[task][method][lv]["pearson"]["mean"] for lv in LEVELS]
            sds = [summary[task][method][lv]["pearson"]["sd"] for lv in LEVELS]
            ax.bar([x + (i - (len(methods) - 1) / 2) * width for x in range(len(LEVELS))], means, width, yerr=sds,
                   label=LABELS[method], capsize=2)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(LEVELS)), LEVELS)
        ax.set_title(task)
        ax.set_ylim(-0.2, 1.05)
    axes[0].set_ylabel("Pearson with activation patching\n(mean over pairs ± sd)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_scatter(records: list[PairRecord], methods: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = ("heads", "mlps")
    fig, axes = plt.subplots(len(levels), len(methods), figsize=(3.0 * len(methods), 2.9 * len(levels)))
    for row, level in enumerate(levels):
        for col, method in enumerate(methods):
            ax = axes[row][col]
            estimate = torch.cat([known(r, method, level)[0] for r in records])
            truth = torch.cat([known(r, method, level)[1] for r in records])
            ax.scatter(truth, estimate, s=4, alpha=0.4)
            low, high = float(min(truth.min(), estimate.min())), float(max(truth.max(), estimate.max()))
            ax.plot([low, high], [low, high], color="grey", lw=0.8)
            ax.set_title(f"{method}: {level}", fontsize=9)
            ax.set_xlabel("true effect", fontsize=8)
            ax.set_ylabel("estimate", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_circuits(circuits: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(circuits)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), sharey=True)
    for ax, task in zip(axes, tasks):
        for name, curve in circuits[task]["curves"].items():
            ax.plot([n for n, _ in curve], [r for _, r in curve], label=LABELS.get(name, name), lw=1.4)
        ax.axhline(0.8, color="grey", lw=0.8, ls="--")
        ax.set_title(task)
        ax.set_xlabel("components kept (N)")
    axes[0].set_ylabel("recovered fraction of the gap")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main
def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=30, help="kept pairs per task (default: 30)")
    parser.add_argument("--residual-pairs", type=int, default=10,
                        help="pairs per task with the residual level (default: 10)")
    parser.add_argument("--neuron-pairs", type=int, default=5,
                        help="pairs per task with the neuron sample (default: 5)")
    parser.add_argument("--circuit-pairs", type=int, default=4,
                        help="pairs per task for the circuit curves (default: 4)")
    parser.add_argument("--circuit-budget", type=int, default=30, help="largest circuit evaluated (default: 30)")
    parser.add_argument("--random-rankings", type=int, default=3, help="random rankings per circuit (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="patched copies per forward pass (default: 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "patching"),
                        help="path without extension: OUTPUT.md, OUTPUT.json, OUTPUT-*.png (default: docs/patching)")
    parser.add_argument("--cache", default=None,
                        help="save the raw measurements here after every round (torch.save) and resume from them")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing more: write the report from the pairs in --cache")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = load_model()
    model, tokenizer = loaded.model, loaded.tokenizer
    methods = candidates()
    names = list(methods)
    tasks = load_tasks()
    cached = torch.load(args.cache, weights_only=False) if args.cache and os.path.exists(args.cache) else None
    if args.render_only and cached is None:
        raise SystemExit(f"--render-only needs the measurements of an earlier run in --cache ({args.cache})")

    if cached is not None and "screening" in cached:  # the same pairs as the run that measured them
        screening, kept_pairs = cached["screening"], cached["kept_pairs"]
    else:
        screening, kept_pairs = {}, {}
        for task, (_, pairs) in tasks.items():
            clean, corrupted = screen(model, tokenizer, pairs)
            kept = [p for p, c in zip(pairs, clean) if c > 0]
            screening[task] = {"written": len(pairs), "clean_correct": len(kept),
                               "corrupted_flipped": sum(c > 0 and x < 0 for c, x in zip(clean, corrupted)),
                               "dropped": [p.clean for p, c in zip(pairs, clean) if c <= 0]}
            kept_pairs[task] = kept[:args.pairs]
        if cached is not None:
            cached.update(screening=screening, kept_pairs=kept_pairs, screening_s=time.perf_counter() - started)
    timings["model loading and screening"] = (cached or {}).get("screening_s", time.perf_counter() - started)

    # round robin over the tasks (pair 1 of every task, then pair 2, …), saved after every round: a run cut short
    # leaves a balanced set that --render-only turns into the report
    state = cached or {"records": {task: [] for task in tasks}, "circuits": {}, "loads": [],
                       "measure_s": 0.0, "measure_cpu_s": 0.0, "screening": screening, "kept_pairs": kept_pairs,
                       "screening_s": timings["model loading and screening"]}
    records: dict[str, list[PairRecord]] = state["records"]
    rounds = 0 if args.render_only else max(len(kept) for kept in kept_pairs.values())
    for i in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        loads = len(state["loads"])
        for task in tasks:
            if i < len(records[task]) or i >= len(kept_pairs[task]):
                continue
            levels = ("heads", "mlps") + (("residual",) if i < args.residual_pairs else ()) \
                + (("neurons",) if i < args.neuron_pairs else ())
            records[task].append(measure_pair(model, tokenizer, kept_pairs[task][i], methods, levels,
                                              args.batch_size, args.seed + 1000 * i))
            state["loads"].append(os.getloadavg()[0])
        state["measure_s"] += time.perf_counter() - t0
        state["measure_cpu_s"] += time.process_time() - c0
        if len(state["loads"]) > loads:  # this round's seconds and mean load: how much the sharing slowed it
            this = state["loads"][loads:]
            state.setdefault("round_s", []).append([time.perf_counter() - t0, sum(this) / len(this)])
        print(f"round {i + 1}/{rounds} ({state['measure_s']:.0f} s measuring)", file=sys.stderr, flush=True)
        if args.cache:
            torch.save(state, args.cache)
    timings["estimates and truth"] = state["measure_s"]
    summary = {task: summarise(records[task], names) for task in tasks}
    ranking = rank_methods(summary, names)
    default = next(method for method, _, _ in ranking if methods[method].uses_rules)  # AtP is the baseline

    circuits: dict[str, dict[str, Any]] = state["circuits"]
    for task in tasks:
        if task in circuits and default in circuits[task]["curves"]:
            continue  # measured already, for this default
        t0, c0 = time.perf_counter(), time.process_time()
        chosen = kept_pairs[task][:args.circuit_pairs]
        found = circuit(model, tokenizer, [p.clean for p in chosen], [p.corrupted for p in chosen],
                        [p.target for p in chosen], [p.contrast for p in chosen], method=methods[default],
                        levels=("heads", "mlps"), budget=args.circuit_budget, random_rankings=args.random_rankings,
                        seed=args.seed, batch_size=args.batch_size, edges=False)
        circuits[task] = {"pairs": len(chosen), "metric": found.metric, "curves": found.curves,
                          "smallest_80": found.smallest(0.8),
                          "top": [c.name for c in found.ranked[:10]]}
        state.setdefault("circuit_s", {})[task] = time.perf_counter() - t0
        state.setdefault("circuit_cpu_s", {})[task] = time.process_time() - c0
        if args.cache:
            torch.save(state, args.cache)
    timings.update({f"{task}: circuit": seconds for task, seconds in state.get("circuit_s", {}).items()})

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure_correlations(summary, names, output.with_name(output.name + "-correlation.png"))
    figure_scatter(records["ioi"] if "ioi" in records else next(iter(records.values())), ["gradient", default],
                   output.with_name(output.name + "-scatter.png"))
    figure_circuits(circuits, output.with_name(output.name + "-circuits.png"))
    # the time to measure everything once: screening and model loading of this run, plus the measurements
    # (saved with them, so a re-rendered report states the time they took)
    wall = timings["model loading and screening"] + state["measure_s"] + sum(state.get("circuit_s", {}).values())
    cpu = state["measure_cpu_s"] + sum(state.get("circuit_cpu_s", {}).values())
    loads = state["loads"]
    worst = worst_components(records, default)
    report = {
        "command": "python scripts/patching_study.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "versions": versions(loaded.source),
        "wall_s": wall, "cpu_s": cpu, "timings_s": timings, "cores": os.cpu_count(),
        "load_average": sum(loads) / len(loads) if loads else None, "rounds": state.get("round_s", []),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "cache")},
        "methods": {name: {"attention": m.attention, "gates": m.gates, "uses_rules": m.uses_rules}
                    for name, m in methods.items()},
        "task_descriptions": {task: description for task, (description, _) in tasks.items()},
        "screening": screening, "summary": summary, "ranking": ranking, "default": default,
        "choice_levels": CHOICE_LEVELS, "library_default": DEFAULT_METHOD,
        "ranking_with_neurons": rank_methods(summary, names, LEVELS),
        "circuits": circuits, "worst_components": worst,
    }
    output.with_suffix(".json").write_text(json.dumps(_jsonable(report), indent=1) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text(render(report, output.name), encoding="utf-8")
    print(f"wrote {output}.md, .json and figures in {wall:.0f} s (CPU {cpu:.0f} s)", file=sys.stderr)


def worst_components(records: dict[str, list[PairRecord]], default: str,
                     count: int = 4) -> dict[str, list[dict[str, Any]]]:
    """Per task, the heads and MLPs whose mean true effect (over the pairs) the default misses most, with AtP's
    estimate beside it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, rows in records.items():
        for level in ("heads", "mlps"):
            truth = torch.stack([r.truth[level] for r in rows]).mean(0)
            ours = torch.stack([r.estimates[default][level] for r in rows]).mean(0)
            atp = torch.stack([r.estimates["gradient"][level] for r in rows]).mean(0)
            heads = truth.shape[1] if truth.dim() > 1 else 1
            for i in (ours - truth).abs().flatten().argsort(descending=True)[:count].tolist():
                name = f"L{i // heads}.H{i % heads}" if level == "heads" else f"L{i}.MLP"
                out.setdefault(task, []).append({"component": name, "truth": float(truth.flatten()[i]),
                                                 "default": float(ours.flatten()[i]),
                                                 "gradient": float(atp.flatten()[i])})
    return out


def versions(source: str) -> list[str]:
    return [f"attnlrp {getattr(attnlrp, '__version__', '0.1.0')}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}",
            f"model: {source.split(' (')[0]} (fp32, {torch.get_num_threads()} CPU threads, {os.cpu_count()} cores)"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 5) if math.isfinite(value) else None
    return value


# ------------------------------------------------------------------------------------------------ the report
def _cell(entry: dict[str, Any], key: str = "pearson") -> str:
    stat = entry[key]
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def render(report: dict[str, Any], stem: str) -> str:
    """docs/patching.md from the measured numbers (the prose around them is in prose.py beside this script)."""
    import patching_prose as prose  # scripts/ is on the path: this script's own folder

    return prose.render(report, stem, LABELS, LEVELS, TOP_K, NEURON_TOP, NEURON_RANDOM)


if __name__ == "__main__":
    main()
