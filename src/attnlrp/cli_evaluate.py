"""``attnlrp evaluate``: faithfulness (token flipping, ABPC) of the attribution methods on built-in tasks or the
user's own JSONL data; shards its samples across processes when started by ``torchrun``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

TASK_CHOICES = ("next-token", "sentiment", "qa", "digits")
DEFAULT_TASKS = "next-token,sentiment,qa,digits"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="faithfulness of attribution methods: perturbation curves, ABPC, paired comparisons",
        description="Flip tokens in most- and least-relevant-first order and compare the methods' ABPC "
        "(area between the perturbation curves). Built-in tasks (--task) or your data (--data FILE.jsonl: "
        "one JSON object per line with 'text' and optionally 'target', 'contrast', 'id'). Under torchrun the "
        "samples are split across the processes and the results merged.",
    )
    parser.add_argument("--model", default=None, help="as for explain --model (default: embedded SmolLM2)")
    parser.add_argument("--data", default=None, metavar="FILE.jsonl", help="evaluate on your own samples")
    parser.add_argument("--task", default=None,
                        help=f"built-in tasks, comma-separated, or 'all' ({', '.join(TASK_CHOICES)}; "
                        f"default without --data: all)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated attribution methods (default: all twelve; digits: its six)")
    parser.add_argument("--perturbation", default="replace,zero",
                        help="replace (flipped tokens become a neutral token) and/or zero (embedding zeroed); "
                        "default both; 'none' for the qa task: plausibility only, no flipping")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="samples per task, the first N of its fixed order (default: the whole task)")
    parser.add_argument("--steps", type=int, default=None,
                        help="flipping steps per curve (default: one token per step)")
    parser.add_argument("--batch-size", type=int, default=32, help="perturbed inputs per forward pass")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="an option of one method, e.g. integrated-gradients.max_steps=32 or "
                        "kernel-shap.samples=128 (repeatable)")
    parser.add_argument("--records", default=None, metavar="FILE.jsonl",
                        help="also write every (sample, method) record, one JSON object per line after a header "
                        "line with the run's command and versions: the raw data the tables are computed from")
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE.jsonl",
                        help="run nothing: summarise records written by earlier runs (--records), e.g. one run "
                        "per task, into one set of results")
    parser.add_argument("--output-dir", default=None,
                        help="write results.json, results.md, run.json and curves PNGs there")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON: method → result for one task and perturbation, "
                        "else task:perturbation → method → result")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")
    parser.set_defaults(run=run)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_options(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``["integrated-gradients.max_steps=32"]`` → ``{"integrated-gradients": {"max_steps": 32}}``; values are
    read as JSON (numbers, true/false) and otherwise kept as text. Unknown methods and options are refused."""
    from .errors import ExplainError
    from .evaluation.methods import METHOD_NAMES, method_options

    options: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key, equals, raw = spec.partition("=")
        method, dot, name = key.strip().rpartition(".")
        if not equals or not dot or not method or not name:
            raise ExplainError(f"--option {spec!r}: write METHOD.KEY=VALUE, e.g. integrated-gradients.max_steps=32")
        if method not in METHOD_NAMES:
            raise ExplainError(f"--option {spec!r}: unknown method {method!r}; choose from {', '.join(METHOD_NAMES)}")
        accepted = method_options(method)
        if name not in accepted:
            raise ExplainError(f"--option {spec!r}: {method} has no option {name!r}; its options are: "
                               f"{', '.join(accepted) or 'none'}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(method, {})[name] = value
    return options


def _tasks(args: argparse.Namespace) -> list[str]:
    from .errors import ExplainError

    if args.data and args.task:
        raise ExplainError("give either --data (your samples) or --task (built-in tasks), not both")
    if args.data:
        return []
    tasks = list(TASK_CHOICES) if args.task in (None, "all") else _split(args.task)
    unknown = [t for t in tasks if t not in TASK_CHOICES]
    if unknown or not tasks:
        raise ExplainError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TASK_CHOICES)} or all")
    return tasks


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .errors import ExplainError
    from .evaluation import data, runner
    from .evaluation.methods import METHOD_NAMES
    from .evaluation.report import run_info
    from .models import load_model

    if args.merge:
        return _merge(args)
    tasks = _tasks(args)
    if args.samples is not None and args.samples < 1:
        raise ExplainError(f"--samples must be a positive number of samples, got {args.samples}")
    if args.steps is not None and args.steps < 1:
        raise ExplainError(f"--steps must be positive, got {args.steps}")
    modes = [] if args.perturbation.strip() == "none" else runner.check_modes(_split(args.perturbation))
    if not modes and (args.data or set(tasks) - {"qa"}):
        raise ExplainError("--perturbation none measures plausibility only, which only the qa task has; give "
                           "replace and/or zero for the other tasks")
    text_methods = runner.check_methods(_split(args.methods) or list(METHOD_NAMES))
    options = parse_options(args.option)
    started = time.time()
    with runner.distributed() as (rank, world):
        needs_text = bool(args.data) or any(t != "digits" for t in tasks)
        loaded = load_model(args.model, dtype=args.dtype) if needs_text else None
        jobs: list[tuple[str, list[Any]]] = []
        if args.data:
            try:
                jobs.append(("data", data.load_jsonl(args.data, loaded.tokenizer)[: args.samples]))
            except data.DataError as error:
                raise ExplainError(str(error)) from None
        for task in tasks:
            if task == "digits":
                from .evaluation.vision_task import digits_test_set

                pixels, labels = digits_test_set()
                jobs.append(("digits", list(zip(range(len(labels)), pixels, labels))[: args.samples]))
            else:
                jobs.append((task, data.build_task(task, loaded.tokenizer, args.samples)))
        total = sum(len(runner.shard(items, rank, world)) for _, items in jobs)
        bar = tqdm(total=total, desc=f"evaluate (process {rank + 1}/{world})", unit="sample",
                   disable=args.no_progress or rank != 0 and world > 1, file=sys.stderr)
        records: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        try:
            for task, items in jobs:
                mine = runner.shard(items, rank, world)
                if task == "digits":
                    import torch

                    from .evaluation.vision_task import load_digits_vit, recorded_metrics

                    vision_methods = [m for m in (_split(args.methods) or runner.VISION_METHODS)
                                      if m in runner.VISION_METHODS]
                    if not vision_methods:
                        continue
                    records += runner.evaluate_digits(
                        load_digits_vit(), torch.stack([p for _, p, _ in mine]) if mine else torch.zeros(0),
                        torch.stack([l for _, _, l in mine]) if mine else torch.zeros(0, dtype=torch.long),
                        methods=vision_methods, steps=args.steps, indices=[i for i, _, _ in mine],
                        progress=bar.update,
                    )
                    extra["digits_vit_test_accuracy"] = recorded_metrics().get("test_accuracy")
                    continue
                samples = data.resolve_targets(loaded.model, mine)
                records += runner.evaluate_samples(
                    loaded.model, loaded.tokenizer, task, samples, methods=text_methods, modes=modes,
                    steps=args.steps, batch_size=args.batch_size, options=options, progress=bar.update,
                )
        finally:
            bar.close()
        records = runner.gather(records, world)
    if rank != 0:
        return 0
    info = run_info(
        "attnlrp " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["evaluate"])),
        model=loaded.source if loaded is not None else "digits ViT",
        processes=world, samples={task: len(items) for task, items in jobs},
        wall_seconds=round(time.time() - started, 1), **extra,
    )
    if args.records:
        runner.write_records(records, args.records, info=info)
    return _report(args, runner.summarise(records), runner.mean_curves(records), info)


def _merge(args: argparse.Namespace) -> int:
    """``--merge``: the records of earlier runs summarised together; their run infos become ``runs``."""
    from .errors import ExplainError
    from .evaluation import runner

    if args.task or args.data:
        raise ExplainError("--merge summarises earlier runs' records; it takes no --task or --data")
    records: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in args.merge:
        info, part = runner.read_records(path)
        records += part
        runs.append({"records": path, **(info or {})})
    seen: set[tuple[Any, ...]] = set()
    for record in records:
        key = (record["task"], record["sample"], record["method"])
        if key in seen:
            raise ExplainError(f"{record['method']} on {record['task']} sample {record['sample']} is in more than "
                               "one of the merged files; merge runs of different tasks")
        seen.add(key)
    wall = sum(r.get("wall_seconds", 0.0) for r in runs)
    info = {"command": "attnlrp evaluate --merge " + " ".join(shlex.quote(p) for p in args.merge),
            "wall_seconds_of_the_runs": round(wall, 1), "runs": runs}
    return _report(args, runner.summarise(records), runner.mean_curves(records), info)


def _report(args: argparse.Namespace, summary: dict[str, Any], curves: dict[str, Any], info: dict[str, Any]) -> int:
    from .evaluation.report import write_results

    if args.output_dir:
        write_results(summary, curves, info, args.output_dir)
    if args.json:
        shown = next(iter(summary.values())) if len(summary) == 1 else summary
        print(json.dumps(shown, ensure_ascii=False, allow_nan=True))
    else:
        print(_table(summary))
        if args.output_dir:
            print(f"\nresults written to {args.output_dir}")
    return 0


def _table(summary: dict[str, Any]) -> str:
    from .render.escape import terminal_text

    lines = []
    for task, table in summary.items():
        lines.append(f"{terminal_text(task)}")
        if not any("abpc" in entry for entry in table.values()):  # plausibility only
            lines.append(f"  {'method':<22} {'top-1 in span':>14} {'IoU top-k':>18} {'s/sample':>9}")
            for method, entry in sorted(table.items(), key=lambda kv: -kv[1].get("top1_in_span", -1.0)):
                top1 = f"{entry.get('top1_in_span_count', 0)}/{entry['n']}"
                lines.append(f"  {terminal_text(method):<22} {top1:>14} {entry.get('iou', float('nan')):>+10.3f} ± "
                             f"{entry.get('ci95_iou', float('nan')):<5.3f} {entry['seconds_per_sample']:>9.3f}")
            lines.append("")
            continue
        lines.append(f"  {'method':<22} {'ABPC logit':>18} {'ABPC log-prob':>18} {'s/sample':>9}")
        for method, entry in sorted(table.items(), key=lambda kv: -kv[1]["abpc"]):
            lines.append(f"  {terminal_text(method):<22} {entry['abpc']:>+10.3f} ± {entry['ci95']:<5.3f} "
                         f"{entry['abpc_logprob']:>+10.3f} ± {entry['ci95_logprob']:<5.3f} "
                         f"{entry['seconds_per_sample']:>9.3f}")
        lines.append("")
    return "\n".join(lines).rstrip()
