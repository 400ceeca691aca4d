"""Token flipping: how fast does the explained score fall when the tokens an explanation ranks first go?

For one :class:`~attnlrp.evaluation.TextInstance` and one relevance vector, the flippable tokens (never special
tokens such as BOS) are ordered by relevance — **MoRF**, most relevant first, and **LeRF**, least relevant
first; ties are broken by position, earlier first, in both orders — and flipped cumulatively, ``k`` tokens at
step ``k`` (or in ``steps`` equal parts of the flippable tokens). After each step, step 0 being the unperturbed
input, the model's target score is recorded twice:

- the **logit** of the target at the explained position (with a contrast: logit(target) − logit(contrast)),
  the quantity every method explains;
- its **log-probability** (log-softmax over the vocabulary; with a contrast: logprob(target) − logprob(contrast),
  which equals the logit difference).

Two perturbations flip a token:

- ``"replace"`` (the default): the token id becomes a neutral token (:func:`neutral_token_id`: the tokenizer's
  single token for ``" "``), so every perturbed input is still a real token sequence the model was trained on;
- ``"zero"``: the token's input embedding is set to zero (the model runs on ``inputs_embeds``).

**ABPC** (area between the perturbation curves) = area(LeRF) − area(MoRF), each area by the trapezoid rule over
x = the fraction of flippable tokens flipped, x ∈ [0, 1]. A faithful explanation removes the evidence for the
target first under MoRF and last under LeRF, so a larger ABPC is better; a random ranking scores ≈ 0 in
expectation and an anti-faithful one < 0. The **logit ABPC is normalised by |unperturbed logit score|** (so
samples with large and small logits weigh alike: ABPC = 0.3 means the curves lie on average 30 % of the
original logit apart); the **log-probability ABPC is in nats, unnormalised** (log-probabilities are already
on a common scale).

All steps of one sample (both orders, and in :func:`flip_curves_many` every method's ranking) run as a few
batched forward passes of ``batch_size`` perturbed copies; identical perturbed inputs (step 0, the fully
flipped input, rankings that agree) are evaluated once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ExplainError
from .instance import TextInstance, embedding_of, model_device, neutral_token_id, position_logits, target_scores

__all__ = ["MODES", "SCORES", "FlipCurves", "flip_curves", "flip_curves_many", "flip_order", "flip_schedule",
           "trapezoid_area"]

MODES = ("replace", "zero")
"""How flipped tokens are perturbed: replaced by a neutral token, or their input embeddings zeroed."""
SCORES = ("logit", "logprob")
"""What each point of a curve measures: the target's logit, or its log-probability."""
ORDERS = ("morf", "lerf")


def flip_order(relevance: torch.Tensor, flippable: torch.Tensor, order: str) -> torch.Tensor:
    """Positions of the flippable tokens in flipping order: ``"morf"`` (most relevant first) or ``"lerf"``.

    Ties keep position order (earlier first) in both orders, so a constant relevance flips the same tokens in
    the same order under MoRF and LeRF and scores ABPC = 0, whatever the model.
    """
    if order not in ORDERS:
        raise ExplainError(f"unknown order {order!r}; choose one of {ORDERS}")
    positions = torch.nonzero(flippable, as_tuple=False).squeeze(1)
    values = relevance.detach().cpu().double()[positions]
    key = -values if order == "morf" else values
    return positions[torch.sort(key, stable=True).indices]


def flip_schedule(n_flippable: int, steps: int | None = None) -> list[int]:
    """How many tokens are flipped at each step: ``0, 1, …, n`` (``steps=None``), or ``floor(s·n/steps)``
    for ``s = 0…steps`` (``steps`` equal parts, at most one per token)."""
    if n_flippable < 1:
        raise ExplainError("nothing to flip: the instance has no flippable token")
    if steps is None or steps >= n_flippable:
        return list(range(n_flippable + 1))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ExplainError(f"steps must be a positive integer or None, got {steps!r}")
    return [s * n_flippable // steps for s in range(steps + 1)]


#: numpy's trapezoid rule: ``np.trapezoid`` (numpy ≥ 2.0), ``np.trapz`` before
_np_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")


def trapezoid_area(y: Any, x: Any) -> float:
    """Trapezoid-rule area under the curve ``y`` over ``x`` (arrays, CPU tensors or lists), in float64."""
    return float(_np_trapezoid(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class FlipCurves:
    """The perturbation curves of one sample and one ranking; step 0 is the unperturbed input.

    ``flipped[s]`` tokens are flipped at step ``s`` (of ``n_flippable``); the four curves hold the logit and
    log-probability scores (float64) after each step under MoRF and LeRF; ``morf_order`` / ``lerf_order`` are
    the token positions in flipping order.
    """

    mode: str
    n_flippable: int
    flipped: tuple[int, ...]
    morf_logit: torch.Tensor
    lerf_logit: torch.Tensor
    morf_logprob: torch.Tensor
    lerf_logprob: torch.Tensor
    morf_order: tuple[int, ...]
    lerf_order: tuple[int, ...]

    @property
    def fractions(self) -> torch.Tensor:
        """x of each step: the fraction of flippable tokens flipped, 0 … 1."""
        return torch.tensor(self.flipped, dtype=torch.float64) / self.n_flippable

    @property
    def base_logit(self) -> float:
        """The unperturbed logit score (target logit, or logit difference with the contrast)."""
        return float(self.morf_logit[0])

    @property
    def base_logprob(self) -> float:
        """The unperturbed log-probability score."""
        return float(self.morf_logprob[0])

    def curve(self, order: str, score: str = "logit") -> torch.Tensor:
        """One curve: ``order`` in ("morf", "lerf"), ``score`` in ("logit", "logprob")."""
        if order not in ORDERS:
            raise ExplainError(f"unknown order {order!r}; choose one of {ORDERS}")
        if score not in SCORES:
            raise ExplainError(f"unknown score {score!r}; choose one of {SCORES}")
        return getattr(self, f"{order}_{score}")

    def area(self, order: str, score: str = "logit") -> float:
        """Trapezoid-rule area under one curve over x ∈ [0, 1], unnormalised."""
        return trapezoid_area(self.curve(order, score), self.fractions)

    def abpc(self, score: str = "logit") -> float:
        """area(LeRF) − area(MoRF). ``"logit"``: divided by |unperturbed logit score| (``nan`` if that is 0);
        ``"logprob"``: in nats, not normalised."""
        between = self.area("lerf", score) - self.area("morf", score)
        if score == "logprob":
            return between
        base = abs(self.base_logit)
        return between / base if base > 0 else float("nan")

    def on_grid(self, points: int = 21) -> dict[str, list[float]]:
        """The curves linearly interpolated at ``points`` equally spaced fractions (to average samples of
        different lengths); logit curves divided by |unperturbed logit|, log-probability curves in nats."""
        if points < 2:
            raise ExplainError("a grid needs at least 2 points")
        grid = np.linspace(0.0, 1.0, points)
        x = self.fractions.numpy()
        base = abs(self.base_logit) or float("nan")
        out: dict[str, list[float]] = {"fraction": grid.tolist()}
        for order in ORDERS:
            for score in SCORES:
                y = self.curve(order, score).numpy()
                y = y / base if score == "logit" else y
                out[f"{order}_{score}"] = np.interp(grid, x, y).tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the curves, the orders and both ABPCs."""
        return {
            "mode": self.mode,
            "n_flippable": self.n_flippable,
            "flipped": list(self.flipped),
            "fractions": self.fractions.tolist(),
            **{f"{o}_{s}": self.curve(o, s).tolist() for o in ORDERS for s in SCORES},
            "morf_order": list(self.morf_order),
            "lerf_order": list(self.lerf_order),
            "abpc": self.abpc("logit"),
            "abpc_logprob": self.abpc("logprob"),
        }


def _check_relevance(relevance: torch.Tensor, instance: TextInstance, name: str) -> torch.Tensor:
    relevance = torch.as_tensor(relevance)
    if relevance.numel() == 0:
        raise ExplainError(f"relevance{name} is empty")
    if relevance.dim() != 1 or relevance.shape[0] != len(instance):
        raise ExplainError(
            f"relevance{name} has shape {tuple(relevance.shape)} but the instance has {len(instance)} tokens"
        )
    if not torch.isfinite(relevance.detach().double()[instance.flippable]).all():
        raise ExplainError(f"relevance{name} is not finite (NaN or inf) at a flippable token")
    return relevance


def _flipped_masks(order: torch.Tensor, counts: Sequence[int], length: int) -> torch.Tensor:
    """(steps+1, T) bool: which tokens are flipped at each step."""
    rank = torch.full((length,), len(order), dtype=torch.long)
    rank[order] = torch.arange(len(order))
    return rank.unsqueeze(0) < torch.tensor(counts).unsqueeze(1)


def _score_masks(
    model: nn.Module, instance: TextInstance, masks: torch.Tensor, mode: str, neutral_id: int | None, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (logit, logprob) scores of the instance with each row of ``masks`` flipped, in chunks."""
    device = model_device(model)
    ids = instance.input_ids.to(device).unsqueeze(0)
    if mode == "zero":
        with torch.no_grad():
            embeds = embedding_of(model)(ids)

        def flipped(chunk: torch.Tensor) -> torch.Tensor:
            batch = embeds.expand(chunk.shape[0], -1, -1).masked_fill(chunk.unsqueeze(-1), 0.0)
            return position_logits(model, instance.position, inputs_embeds=batch)
    elif neutral_id is not None:
        neutral = neutral_id

        def flipped(chunk: torch.Tensor) -> torch.Tensor:
            batch = ids.expand(chunk.shape[0], -1).masked_fill(chunk, neutral)
            return position_logits(model, instance.position, input_ids=batch)
    else:
        raise ExplainError('mode="replace" needs the neutral token id')
    logits, logprobs = [], []
    with torch.no_grad():
        for start in range(0, masks.shape[0], batch_size):
            z = flipped(masks[start : start + batch_size].to(device))
            logit, logprob = target_scores(z, instance.target_id, instance.contrast_id)
            logits.append(logit.cpu())
            logprobs.append(logprob.cpu())
    return torch.cat(logits), torch.cat(logprobs)


def flip_curves_many(
    model: nn.Module,
    instance: TextInstance,
    relevances: Mapping[str, torch.Tensor],
    *,
    mode: str = "replace",
    steps: int | None = None,
    neutral_id: int | None = None,
    tokenizer: Any = None,
    batch_size: int = 32,
) -> dict[str, FlipCurves]:
    """MoRF and LeRF curves of several rankings of one instance (name → relevance (T,)), batched together.

    ``mode``: ``"replace"`` (flipped tokens become ``neutral_id``, by default :func:`neutral_token_id` of
    ``tokenizer``) or ``"zero"`` (flipped input embeddings are zeroed). ``steps``: ``None`` flips one token per
    step; an integer flips the flippable tokens in that many equal parts. Identical perturbed inputs are scored
    once; the rest run ``batch_size`` at a time under ``torch.no_grad()``.
    """
    if mode not in MODES:
        raise ExplainError(f"unknown perturbation mode {mode!r}; choose one of {MODES}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExplainError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not relevances:
        raise ExplainError("no relevance to evaluate")
    if mode == "replace" and neutral_id is None:
        if tokenizer is None:
            raise ExplainError('mode="replace" needs neutral_id= or tokenizer= (to find the neutral token)')
        neutral_id = neutral_token_id(tokenizer)
    instance.require_flippable()
    counts = flip_schedule(instance.n_flippable, steps)
    orders: dict[str, dict[str, torch.Tensor]] = {}
    masks: list[torch.Tensor] = []
    for name, relevance in relevances.items():
        relevance = _check_relevance(relevance, instance, "" if len(relevances) == 1 else f" of {name!r}")
        orders[name] = {o: flip_order(relevance, instance.flippable, o) for o in ORDERS}
        masks.extend(_flipped_masks(orders[name][o], counts, len(instance)) for o in ORDERS)
    unique, inverse = torch.unique(torch.cat(masks), dim=0, return_inverse=True)
    logit, logprob = _score_masks(model, instance, unique, mode, neutral_id, batch_size)
    rows = inverse.view(len(relevances), len(ORDERS), len(counts))
    results = {}
    for k, name in enumerate(orders):
        morf, lerf = rows[k]
        results[name] = FlipCurves(
            mode=mode,
            n_flippable=instance.n_flippable,
            flipped=tuple(counts),
            morf_logit=logit[morf],
            lerf_logit=logit[lerf],
            morf_logprob=logprob[morf],
            lerf_logprob=logprob[lerf],
            morf_order=tuple(orders[name]["morf"].tolist()),
            lerf_order=tuple(orders[name]["lerf"].tolist()),
        )
    return results


def flip_curves(
    model: nn.Module,
    instance: TextInstance,
    relevance: torch.Tensor,
    *,
    mode: str = "replace",
    steps: int | None = None,
    neutral_id: int | None = None,
    tokenizer: Any = None,
    batch_size: int = 32,
) -> FlipCurves:
    """MoRF and LeRF curves of one ranking of one instance; see :func:`flip_curves_many` for the options and
    the module docstring for the metric. ``flip_curves(...).abpc()`` is the normalised logit ABPC."""
    return flip_curves_many(
        model, instance, {"relevance": relevance}, mode=mode, steps=steps, neutral_id=neutral_id,
        tokenizer=tokenizer, batch_size=batch_size,
    )["relevance"]
