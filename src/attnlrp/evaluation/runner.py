"""Run the text evaluation: every sample attributed by every method, flipped under each perturbation.

It produces records (:mod:`~attnlrp.evaluation.records`), one per (sample, method); :mod:`.summary` turns them
into tables, :mod:`attnlrp.distributed` shards them across processes, and :mod:`.tasks` puts this text pipeline and the
digits one behind the protocol the CLI loops over.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ExplainError
from .data import TextSample, answered_correctly, plausibility
from .instance import TextInstance
from .methods import METHOD_NAMES, Attributor
from .perturbation import MODES, flip_curves_many
from .records import GRID_POINTS, plain
from .summary import summarise  # the README's ``runner.summarise``: records in, tables out

__all__ = ["check_methods", "check_modes", "chosen", "evaluate_samples", "summarise", "to_instance"]


def to_instance(sample: TextSample) -> TextInstance:
    """The metric's view of a sample: explained at its last token; special tokens never ranked or flipped."""
    if sample.target_id is None:
        raise ExplainError(f"sample {sample.id} has no target yet; resolve it with resolve_targets(model, samples)")
    return TextInstance(
        sample.ids_tensor(), len(sample) - 1, sample.target_id, torch.tensor(sample.rankable),
        sample.contrast_id, {"id": sample.id},
    )


def chosen(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``values`` without repeats, in order, or an error naming the unknown ones and the choices."""
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ExplainError(f"unknown {what}(s) {', '.join(unknown) or '(none given)'}; choose from: "
                           f"{', '.join(allowed)}")
    return list(dict.fromkeys(values))


def check_methods(methods: Sequence[str]) -> list[str]:
    return chosen(methods, METHOD_NAMES, "method")


def check_modes(modes: Sequence[str], *, allow_none: bool = False) -> list[str]:
    """The perturbations, checked; ``allow_none``: an empty list means plausibility only (no flipping)."""
    if allow_none and not modes:
        return []
    return chosen(modes, MODES, "perturbation")


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
                "seconds": attribution.seconds, "details": plain(attribution.details),
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
