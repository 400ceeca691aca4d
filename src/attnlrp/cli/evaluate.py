"""``attnlrp evaluate``: faithfulness (token flipping, ABPC) of the attribution methods on built-in tasks or the
user's own JSONL data; shards its samples across processes when started by ``torchrun``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Iterator

from ..evaluation.names import TASK_NAMES
from .args import (Style, add_attn, add_color, add_device, add_dtype, add_loading_permissions, add_model, add_quiet,
                   input_file, load_model, positive_int, progress_bar, show_progress, style)
from .failures import Inputs, model_must_run, text_inputs


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="faithfulness of attribution methods: perturbation curves, ABPC, paired comparisons",
        description="Flip tokens in most- and least-relevant-first order and compare the methods' ABPC "
        "(area between the perturbation curves). Built-in tasks (--task) or your data (--data FILE.jsonl: "
        "one JSON object per line with 'text' and optionally 'target', 'contrast', 'id'). Under torchrun the "
        "samples are split across the processes and the results merged.",
    )
    add_model(parser, help="as for explain --model (default: embedded SmolLM2)")
    parser.add_argument("--data", type=input_file, default=None, metavar="FILE.jsonl",
                        help="evaluate on your own samples")
    parser.add_argument("--task", default=None,
                        help=f"built-in tasks, comma-separated, or 'all' ({', '.join(TASK_NAMES)}; "
                        f"default without --data: all)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated attribution methods (default: all twelve; digits: its six)")
    parser.add_argument("--perturbation", default="replace,zero",
                        help="replace (flipped tokens become a neutral token) and/or zero (embedding zeroed); "
                        "default both; 'none' for the qa task: plausibility only, no flipping")
    parser.add_argument("--samples", type=positive_int, default=None, metavar="N",
                        help="samples per task, the first N of its fixed order (default: the whole task)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="flipping steps per curve (default: one token per step)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="perturbed inputs per forward pass (default: 32)")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="an option of one method, e.g. integrated-gradients.max_steps=32 or "
                        "kernel-shap.samples=128 (repeatable)")
    parser.add_argument("--records", default=None, metavar="FILE.jsonl",
                        help="also write every (sample, method) record, one JSON object per line after a header "
                        "line with the run's command and versions: the raw data the tables are computed from; "
                        "an existing file is refused unless --force")
    parser.add_argument("--force", action="store_true",
                        help="let --records replace an existing file (never one the run reads); it is replaced "
                        "only once the new records are written in full")
    parser.add_argument("--merge", nargs="+", type=input_file, default=None, metavar="FILE.jsonl",
                        help="run nothing: summarise records written by earlier runs (--records), e.g. one run "
                        "per task, into one set of results")
    parser.add_argument("--output-dir", default=None,
                        help="write results.json, results.md, run.json and curves PNGs there (each replaced "
                        "only once written in full)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON: method → result for one task and perturbation, "
                        "else task:perturbation → method → result")
    add_dtype(parser)
    add_device(parser, help="the text model's device: cpu (default), cuda, cuda:N or mps; under torchrun, cuda is "
               "each process's own GPU (that of its LOCAL_RANK)")
    add_attn(parser)
    add_color(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on standard error (as --quiet)")
    add_loading_permissions(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_options(specs: list[str]) -> dict[str, dict[str, Any]]:
    """``["integrated-gradients.max_steps=32"]`` → ``{"integrated-gradients": {"max_steps": 32}}``; values are
    read as JSON (numbers, true/false) and otherwise kept as text. Unknown methods and options are refused."""
    from ..errors import ExplainError
    from ..evaluation.methods import METHOD_NAMES, method_options

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
    from ..errors import ExplainError

    if args.data and args.task:
        raise ExplainError("give either --data (your samples) or --task (built-in tasks), not both")
    if args.data:
        return []
    tasks = list(TASK_NAMES) if args.task in (None, "all") else _split(args.task)
    unknown = [t for t in tasks if t not in TASK_NAMES]
    if unknown or not tasks:
        raise ExplainError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TASK_NAMES)} or all")
    return tasks


def run(args: argparse.Namespace) -> int:
    from ..errors import ExplainError
    from ..evaluation import data, runner, tasks as evaluation_tasks
    from ..distributed import distributed, gather, shard
    from ..evaluation.records import write_records
    from ..evaluation.report import run_info
    from ..evaluation.summary import mean_curves, summarise

    _check_outputs(args)
    if args.merge:
        return _merge(args)
    names = _tasks(args)
    modes = [] if args.perturbation.strip() == "none" else runner.check_modes(_split(args.perturbation))
    if not modes and (args.data or set(names) - {"qa"}):
        raise ExplainError("--perturbation none measures plausibility only, which only the qa task has; give "
                           "replace and/or zero for the other tasks")
    settings = evaluation_tasks.Settings(
        evaluation_tasks.LanguageModel(lambda: load_model(args)),
        modes=modes, steps=args.steps, batch_size=args.batch_size, options=parse_options(args.option),
    )
    tasks: list[evaluation_tasks.Task] = []
    if args.data:
        tasks.append(evaluation_tasks.TextTask.from_jsonl(args.data, settings))
    tasks += [evaluation_tasks.build_task(name, settings) for name in names]
    methods = evaluation_tasks.check_methods(tasks, _split(args.methods))
    started = time.time()
    with distributed() as (rank, world):
        try:
            jobs = [(task, task.samples(args.samples)) for task in tasks]
        except data.DataError as error:
            raise ExplainError(str(error)) from None
        total = sum(len(shard(items, rank, world)) for _, items in jobs)
        bar = progress_bar(args, total=total, desc=f"evaluate (process {rank + 1}/{world})", unit="sample",
                           leave=True, disable=not show_progress(args) or rank != 0 and world > 1)
        records: list[dict[str, Any]] = []
        extra: dict[str, Any] = {}
        try:
            for task, items in jobs:
                chosen = evaluation_tasks.applicable(task, methods)
                if chosen:
                    mine = shard(items, rank, world)
                    with model_must_run(lambda: _text_model(task), _sample_inputs(task, mine)):
                        records += task.evaluate(mine, chosen, bar.update)
                    extra.update(task.run_info())
        finally:
            bar.close()
        records = gather(records, world)
    if rank != 0:
        return 0
    language = settings.language
    info = run_info(
        "attnlrp " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["evaluate"])),
        model=language.get().source if language.loaded else tasks[0].model_name,
        processes=world, samples={task.name: len(items) for task, items in jobs},
        wall_seconds=round(time.time() - started, 1), **extra,
    )
    if args.records:
        write_records(records, args.records, info=info)
    return _report(args, summarise(records), mean_curves(records), info)


def _text_model(task: Any) -> Any:
    """The user's model a text task runs on, for :func:`model_must_run`; ``None`` for the built-in digits ViT,
    which is attnlrp's own: its failure is never the user's model."""
    from ..evaluation.tasks import TextTask

    return task.settings.language.get().model if isinstance(task, TextTask) else None


def _sample_inputs(task: Any, samples: list[Any]) -> Iterator[Inputs]:
    """The plain forward's input for each of ``samples`` of a text task, in order (built only when needed)."""
    loaded = task.settings.language.get()
    for sample in samples:
        yield text_inputs(loaded.model, loaded.tokenizer, list(sample.input_ids))


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path the run writes, checked before any work, so that no mistake in them is found only after the
    run (its results then lost): ``--records`` a file, not an input, kept unless ``--force``; ``--output-dir`` a
    folder whose result files are neither folders nor inputs; each in a folder that exists or can be made."""
    from ..errors import ExplainError, MissingExtraError
    from ..evaluation.report import RESULT_FILES
    from ..extras import require

    given = [("--data", args.data), ("--model", args.model)] + [("--merge", path) for path in args.merge or []]
    inputs = [(flag, path) for flag, path in given if path and os.path.exists(path)]  # files the run reads
    if args.records and not args.merge:  # --merge writes no records
        records = Path(args.records)
        if args.records.endswith(("/", os.sep)) or records.is_dir():
            raise ExplainError(f"--records {args.records} is a folder; give a file name, e.g. "
                               f"{records / 'records.jsonl'}")
        _not_an_input(records, "--records", inputs)
        if records.exists() and not args.force:
            raise ExplainError(f"--records {args.records} exists; pass --force to replace it (the old file is "
                               "kept until the new records are written in full) or give another file name")
        _creatable(records.parent, f"--records {args.records}")
    if args.output_dir:
        out = Path(args.output_dir)
        if out.exists() and not out.is_dir():
            raise ExplainError(f"--output-dir {args.output_dir} is a file; give a folder (it gets "
                               f"{', '.join(RESULT_FILES)})")
        _creatable(out, f"--output-dir {args.output_dir}")
        for name in RESULT_FILES:
            if (out / name).is_dir():
                raise ExplainError(f"--output-dir {args.output_dir}: {out / name} is a folder, where the results "
                                   f"write the file {name}; remove it or choose another --output-dir")
            _not_an_input(out / name, f"--output-dir {args.output_dir} (its {name})", inputs)
            if args.records and not args.merge and Path(args.records).resolve() == (out / name).resolve():
                raise ExplainError(f"--records {args.records} is the {name} that --output-dir writes; give "
                                   "another file name")
        try:
            require("matplotlib", "eval")  # the curves: found missing only after the run, they would lose it
        except MissingExtraError as error:
            raise ExplainError(f"--output-dir: {error}") from None


def _not_an_input(path: Path, what: str, inputs: list[tuple[str, str]]) -> None:
    """Refuse an output that is one of the run's inputs (the same file, by any name or link)."""
    from ..errors import ExplainError

    if not path.exists():
        return
    for flag, given in inputs:
        if os.path.samefile(path, given):
            raise ExplainError(f"{what} is the input {flag} {given}; the run would overwrite what it reads: give "
                               "another file name")


def _creatable(folder: Path, what: str) -> None:
    """``folder`` exists, or can be made, and can be written in: its nearest existing ancestor is a folder that
    the user may write in (the results are written there as temporary files that then replace the old ones)."""
    from ..errors import ExplainError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExplainError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExplainError(f"{what}: no permission to write in the folder {existing}")


def _merge(args: argparse.Namespace) -> int:
    """``--merge``: the records of earlier runs summarised together; their run infos become ``runs``."""
    from ..errors import ExplainError
    from ..evaluation.records import read_records
    from ..evaluation.summary import mean_curves, summarise

    if args.task or args.data:
        raise ExplainError("--merge summarises earlier runs' records; it takes no --task or --data")
    if args.records:
        raise ExplainError("--merge writes no records (it reads them); drop --records, or concatenate the record "
                           "files yourself if you want them in one file")
    records: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in args.merge:
        info, part = read_records(path)
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
    return _report(args, summarise(records), mean_curves(records), info)


def _report(args: argparse.Namespace, summary: dict[str, Any], curves: dict[str, Any], info: dict[str, Any]) -> int:
    from ..evaluation.report import write_results

    if args.output_dir:
        write_results(summary, curves, info, args.output_dir)
    if args.json:
        shown = next(iter(summary.values())) if len(summary) == 1 else summary
        print(json.dumps(shown, ensure_ascii=False, allow_nan=True))
    else:
        print(_table(summary, style(args)))
        if args.output_dir:
            print(f"\nresults written to {args.output_dir}")
    return 0


def _table(summary: dict[str, Any], s: Style = Style()) -> str:
    from ..render.escape import terminal_text

    lines = []
    for task, table in summary.items():
        lines.append(f"{s.bold}{terminal_text(task)}{s.reset}")
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
