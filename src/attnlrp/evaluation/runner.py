"""Run an evaluation: every sample attributed by every method, flipped under each perturbation, summarised.

A run produces **records**, one per (sample, method), plain JSON data: the seconds the attribution took, its
details (IG's completeness error…), per perturbation both ABPCs and the curves on a common grid, and for QA
samples the plausibility. Records are what processes exchange when a run is sharded, so a sharded run
summarises exactly like a single process: :func:`summarise` sorts them first.

Summaries map task (``"next-token:replace"``, the perturbation after the colon) → method → ``{"abpc", "ci95",
"abpc_logprob", "ci95_logprob", "seconds_per_sample", "n", …}``, with AttnLRP's paired difference to every
method (per sample, 95 % t-interval): a method is only *better* where that interval excludes 0.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import ExplainError
from .data import TextSample, answered_correctly, plausibility
from .instance import TextInstance
from .methods import METHOD_NAMES, Attributor
from .perturbation import MODES, flip_curves_many
from .stats import mean_interval, paired_difference

REFERENCE = "attnlrp"
GRID_POINTS = 21

__all__ = [
    "REFERENCE", "evaluate_samples", "summarise", "to_instance", "shard", "distributed", "gather", "write_records",
    "read_records",
]


def to_instance(sample: TextSample) -> TextInstance:
    """The metric's view of a sample: explained at its last token; special tokens never ranked or flipped."""
    if sample.target_id is None:
        raise ExplainError(f"sample {sample.id} has no target yet; resolve it with resolve_targets(model, samples)")
    return TextInstance(
        sample.ids_tensor(), len(sample) - 1, sample.target_id, torch.tensor(sample.rankable),
        sample.contrast_id, {"id": sample.id},
    )


def _chosen(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``values`` without repeats, in order, or an error naming the unknown ones and the choices."""
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ExplainError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from: "
                           f"{', '.join(allowed)}")
    return list(dict.fromkeys(values))


def check_methods(methods: Sequence[str]) -> list[str]:
    return _chosen(methods, METHOD_NAMES, "method")


def check_modes(modes: Sequence[str], *, allow_none: bool = False) -> list[str]:
    """The perturbations, checked; ``allow_none``: an empty list means plausibility only (no flipping)."""
    if allow_none and not modes:
        return []
    return _chosen(modes, MODES, "perturbation")


def evaluate_samples(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    samples: Sequence[TextSample],
    *,
    methods: Sequence[str] = METHOD_NAMES,
    modes: Sequence[str] = MODES,
    steps: int | None = None,
    batch_size: int = 32,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    attributor: Attributor | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Records of ``samples`` (targets resolved) for ``methods`` under ``modes``; ``options``: method → its
    keyword options (``{"integrated-gradients": {"max_steps": 256}}``). ``progress(1)`` is called per sample.

    ``modes=()`` skips token flipping: only the plausibility of samples with an answer span (QA) is scored.
    """
    methods, modes = check_methods(methods), check_modes(modes, allow_none=True)
    if not modes and any(s.answer_span is None for s in samples):
        raise ExplainError("without a perturbation only plausibility is measured, which needs samples with an "
                           "answer span (the qa task); give --perturbation replace and/or zero")
    attributor = attributor or Attributor(model, tokenizer, batch_size=batch_size)
    options = options or {}
    records: list[dict[str, Any]] = []
    correct = answered_correctly(model, samples) if samples else []
    for index, sample in enumerate(samples):
        instance = to_instance(sample)
        attributions = {m: attributor(m, instance, **dict(options.get(m, {}))) for m in methods}
        relevances = {m: a.relevance for m, a in attributions.items()}
        curves = {mode: flip_curves_many(model, instance, relevances, mode=mode, steps=steps,
                                         neutral_id=attributor.neutral_id, batch_size=batch_size)
                  for mode in modes}
        for method, attribution in attributions.items():
            record: dict[str, Any] = {
                "task": task, "index": index, "sample": sample.id, "method": method,
                "seconds": attribution.seconds, "details": _plain(attribution.details),
                "tokens": len(sample), "flippable": instance.n_flippable,
                "abpc": {mode: {"logit": c[method].abpc("logit"), "logprob": c[method].abpc("logprob")}
                         for mode, c in curves.items()},
                "base": {"logit": curves[modes[0]][method].base_logit,
                         "logprob": curves[modes[0]][method].base_logprob} if modes else None,
                "grid": {mode: c[method].on_grid(GRID_POINTS) for mode, c in curves.items()},
                "correct": correct[index],
            }
            if sample.answer_span is not None and sample.context_mask is not None:
                score = plausibility(attribution.relevance, sample)
                record["plausibility"] = {"top1_in_span": score.top1_in_span, "iou": score.iou}
            records.append(record)
        if progress is not None:
            progress(1)
    return records


def _plain(details: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of a method's details (tensors become lists, other objects their repr)."""
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        elif not isinstance(value, (int, float, str, bool, type(None), list, dict)):
            value = repr(value)
        out[str(key)] = value
    return out


# ------------------------------------------------------------------------------------------------- records
def write_records(records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                  *, info: Mapping[str, Any] | None = None) -> None:
    """Records as JSON Lines, in summary order, after a header line ``{"run": info}`` (the command and versions
    that made them): the raw data of a run, to re-summarise or merge with other runs later."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"run": dict(info or {})}) + "\n")
        for record in _ordered(records):
            handle.write(json.dumps(record, allow_nan=True) + "\n")


def read_records(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """``(run info, records)`` of a file written by :func:`write_records`; a clear error names a missing file
    or a line that is not a record."""
    source = Path(path)
    if not source.is_file():
        raise ExplainError(f"no such records file: {source}")
    info: dict[str, Any] | None = None
    records = []
    with source.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExplainError(f"{source}, line {number}: not valid JSON ({e.msg})") from None
            if number == 1 and isinstance(record, dict) and set(record) == {"run"}:
                info = record["run"]
                continue
            if not isinstance(record, dict) or not {"task", "index", "sample", "method", "abpc", "seconds"} <= set(record):
                raise ExplainError(f"{source}, line {number}: not an evaluation record (write them with --records)")
            records.append(record)
    if not records:
        raise ExplainError(f"{source} holds no evaluation records")
    return info, records


# ------------------------------------------------------------------------------------------------- summary
def _ordered(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(records, key=lambda r: (r["task"], r["index"], r["sample"], r["method"]))


def _interval(values: Sequence[float]) -> tuple[float, float, int]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan"), 0
    interval = mean_interval(kept)
    return interval.mean, interval.half_width, interval.n


PLAUSIBILITY = "plausibility"  # the table name of a task evaluated without perturbation (QA: plausibility only)


def summarise(records: Sequence[Mapping[str, Any]], *, reference: str = REFERENCE) -> dict[str, dict[str, Any]]:
    """task:perturbation → method → means with 95 % half-widths, seconds per sample and (for methods other
    than ``reference``) the paired difference ``reference − method`` of both ABPCs. A task run without
    perturbation (plausibility only) gets one table, ``task:plausibility``."""
    records = _ordered(records)
    summary: dict[str, dict[str, Any]] = {}
    tasks = list(dict.fromkeys(r["task"] for r in records))
    for task in tasks:
        rows = [r for r in records if r["task"] == task]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        modes = list(dict.fromkeys(mode for r in rows for mode in r["abpc"]))
        by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
        samples = [r["sample"] for r in by_method[methods[0]]]
        for m in methods:
            if [r["sample"] for r in by_method[m]] != samples:
                raise ExplainError(f"task {task}: method {m} was not run on the same samples as {methods[0]}")
        if not modes:
            summary[f"{task}:{PLAUSIBILITY}"] = {m: _per_method(by_method[m]) for m in methods}
        for mode in modes:
            table: dict[str, Any] = {}
            for m in methods:
                logit = [r["abpc"][mode]["logit"] for r in by_method[m]]
                logprob = [r["abpc"][mode]["logprob"] for r in by_method[m]]
                mean, half, n = _interval(logit)
                mean_lp, half_lp, _ = _interval(logprob)
                entry: dict[str, Any] = {
                    "abpc": mean, "ci95": half, "abpc_logprob": mean_lp, "ci95_logprob": half_lp,
                    **_per_method(by_method[m]), "n": n,
                }
                if reference in by_method and m != reference:
                    entry[f"paired_{reference}_minus_this"] = {
                        score: _paired([r["abpc"][mode][score] for r in by_method[reference]],
                                       [r["abpc"][mode][score] for r in by_method[m]])
                        for score in ("logit", "logprob")
                    }
                table[m] = entry
            summary[f"{task}:{mode}"] = table
    return summary


def _per_method(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What does not depend on the perturbation: cost, the model's accuracy, plausibility, IG's completeness."""
    entry: dict[str, Any] = {"seconds_per_sample": math.fsum(r["seconds"] for r in rows) / len(rows), "n": len(rows)}
    judged = [r["correct"] for r in rows if r.get("correct") is not None]
    if judged:
        entry["model_correct_count"] = sum(judged)
        entry["model_judged"] = len(judged)
    plaus = [r for r in rows if "plausibility" in r]
    if plaus:
        hits = [r["plausibility"]["top1_in_span"] for r in plaus]
        entry["top1_in_span"] = sum(hits) / len(hits)
        entry["top1_in_span_count"] = sum(hits)
        entry["top1_in_span_count_when_correct"] = sum(h for h, r in zip(hits, plaus) if r.get("correct"))
        entry["iou"], entry["ci95_iou"], _ = _interval([r["plausibility"]["iou"] for r in plaus])
    completeness = [r["details"]["completeness_error"] for r in rows
                    if isinstance(r["details"].get("completeness_error"), (int, float))]
    if completeness:
        entry["completeness_error_median"] = sorted(completeness)[len(completeness) // 2]
    return entry


def _paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    try:
        interval = paired_difference(a, b)
    except ValueError:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    return {"mean": interval.mean, "ci95": interval.half_width, "n": interval.n}


def mean_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """task:perturbation → method → the mean of each grid curve over the samples (for the plots)."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for record in _ordered(records):
        for mode, grid in record["grid"].items():
            slot = out.setdefault(f"{record['task']}:{mode}", {}).setdefault(record["method"], {})
            for name, values in grid.items():
                slot.setdefault(name, []).append(values)
    return {task: {method: {name: [math.fsum(col) / len(col) for col in zip(*rows)]
                            for name, rows in curves.items()}
                   for method, curves in methods.items()}
            for task, methods in out.items()}


# --------------------------------------------------------------------------------------------- sharding
def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """This process's share: every ``world``-th item from ``rank`` (balanced, and independent of timing)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(items[rank::world])


@contextmanager
def distributed() -> Iterator[tuple[int, int]]:
    """``(rank, world)``: from torchrun's environment (a process group with gloo on CPU, NCCL on GPUs, torn
    down on exit), or ``(0, 1)`` for a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def gather(records: list[dict[str, Any]], world: int) -> list[dict[str, Any]]:
    """Every process's records, on every process (``all_gather_object``); the input itself for one process."""
    if world <= 1:
        return records
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, records)
    return [r for part in parts for r in part]


# ------------------------------------------------------------------------------------------------- vision
#: The digits task's methods: AttnLRP with and without the γ-rule (vision_task.DIGITS_GAMMA), the baselines
#: the image explainer offers, and random patch rankings.
VISION_METHODS = ("attnlrp", "attnlrp-gamma", "cp-lrp", "input-x-gradient", "gradient", "random")
VISION_TASK = "digits"
VISION_PERTURBATION = "background"  # a flipped patch becomes the digits' zero background


def evaluate_digits(
    model: nn.Module,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    *,
    methods: Sequence[str] = VISION_METHODS,
    steps: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Records of patch flipping on digits images (explained class: the gold label), one per image and
    method; ``indices`` name the images' positions in the full test set (for sharding)."""
    import time

    import numpy as np

    from .vision_task import DIGITS_GAMMA, explain_patches, patch_flipping

    unknown = [m for m in methods if m not in VISION_METHODS]
    if unknown:
        raise ExplainError(f"unknown vision method(s) {', '.join(unknown)}; choose from {', '.join(VISION_METHODS)}")
    indices = list(range(len(labels))) if indices is None else list(indices)
    records: list[dict[str, Any]] = []
    grid = np.linspace(0.0, 1.0, GRID_POINTS)
    for index, image, label in zip(indices, pixels, labels.tolist()):
        for method in methods:
            start = time.perf_counter()
            if method == "random":
                generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
                patch = int(model.config.patch_size)
                relevance = torch.rand(image.shape[1] // patch, image.shape[2] // patch, generator=generator)
            else:
                base = "attnlrp" if method == "attnlrp-gamma" else method
                gamma = DIGITS_GAMMA if method == "attnlrp-gamma" else None
                relevance = explain_patches(model, image, method=base, gamma=gamma, target=label).patch_relevance
            seconds = time.perf_counter() - start
            curves = patch_flipping(model, image, relevance, label, steps=steps)
            on_grid = {"fraction": grid.tolist()}
            for order in ("morf", "lerf"):
                for score in ("logit", "logprob"):
                    on_grid[f"{order}_{score}"] = np.interp(grid, curves.fractions,
                                                            curves.curve(order, score)).tolist()
            records.append({
                "task": VISION_TASK, "index": index, "sample": f"digits-test-{index}", "method": method,
                "seconds": seconds, "details": {}, "tokens": int(relevance.numel()),
                "flippable": int(relevance.numel()),
                "abpc": {VISION_PERTURBATION: {"logit": curves.abpc("logit"), "logprob": curves.abpc("logprob")}},
                "base": {"logit": curves.unperturbed_logit, "logprob": float(curves.morf_logprob[0])},
                "grid": {VISION_PERTURBATION: on_grid},
            })
        if progress is not None:
            progress(1)
    return records
