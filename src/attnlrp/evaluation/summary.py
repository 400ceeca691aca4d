"""Summaries of evaluation records: means with 95 % intervals per task, perturbation and method, and the paired
comparison with the reference method.

A summary maps task (``"next-token:replace"``, the perturbation after the colon) → method → ``{"abpc", "ci95",
"abpc_logprob", "ci95_logprob", "seconds_per_sample", "n", …}``, with AttnLRP's paired difference to every
method (per sample, 95 % t-interval): a method is only *better* where that interval excludes 0. Records are
sorted first (:func:`~attnlrp.evaluation.records.ordered`), so a sharded run summarises like a single process.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from ..errors import ExplainError
from .records import ordered
from .stats import mean_interval, mean_intervals, paired_difference

__all__ = ["PLAUSIBILITY", "REFERENCE", "mean_curves", "summarise"]

#: The method every other one is compared with, sample by sample.
REFERENCE = "attnlrp"
#: The table name of a task evaluated without perturbation (QA: plausibility only).
PLAUSIBILITY = "plausibility"


def _interval(values: Sequence[float]) -> tuple[float, float, int]:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan"), 0
    interval = mean_interval(kept)
    return interval.mean, interval.half_width, interval.n


def summarise(records: Sequence[Mapping[str, Any]], *, reference: str = REFERENCE) -> dict[str, dict[str, Any]]:
    """task:perturbation → method → means with 95 % half-widths, seconds per sample and (for methods other
    than ``reference``) the paired difference ``reference − method`` of both ABPCs. A task run without
    perturbation (plausibility only) gets one table, ``task:plausibility``."""
    records = ordered(records)
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
    entry: dict[str, Any] = {"seconds_per_sample": statistics.fmean(r["seconds"] for r in rows), "n": len(rows)}
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
        # the upper median (the larger middle value of an even count), as the committed results were made
        entry["completeness_error_median"] = statistics.median_high(completeness)
    return entry


def _paired(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    try:
        interval = paired_difference(a, b)
    except ValueError:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    return {"mean": interval.mean, "ci95": interval.half_width, "n": interval.n}


def mean_curves(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """task:perturbation → method → each grid curve's mean over the samples (for the plots), and beside each
    curve but ``fraction`` its 95 % t-interval half-width, ``<curve>_ci95``, point by point. NaN points (a
    sample whose unperturbed logit was 0) are left out, as in the ABPC tables."""
    out: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    for record in ordered(records):
        for mode, grid in record["grid"].items():
            slot = out.setdefault(f"{record['task']}:{mode}", {}).setdefault(record["method"], {})
            for name, values in grid.items():
                slot.setdefault(name, []).append(values)
    result: dict[str, dict[str, dict[str, list[float]]]] = {}
    for task, methods in out.items():
        for method, curves in methods.items():
            entry = result.setdefault(task, {}).setdefault(method, {})
            for name, rows in curves.items():
                mean, half, _ = mean_intervals(rows)
                entry[name] = mean.tolist()
                if name != "fraction":
                    entry[f"{name}_ci95"] = half.tolist()
    return result
