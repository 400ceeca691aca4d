"""The vision task of the evaluation: a tiny ViT on scikit-learn's bundled digits, and patch (pixel) flipping.

Why this task exists: the γ-rule is meant for vision transformers, and its effect on faithfulness can only be
measured on a vision model that actually learned something. The digits (8×8 grey images, 0–16 ink, zero
background) are bundled with scikit-learn, so the task needs no download; ``scripts/train_digits_vit.py``
trains the model and commits its weights (tens of KB) to ``datasets/digits-vit/``.

Patch flipping follows the text metric's conventions (token flipping in ``perturbation.py``):

* patches are flipped in most-relevant-first (MoRF) and least-relevant-first (LeRF) order; a flipped patch
  is replaced by zeros, the digits' background (pixels are ink / 16, so 0 is "no ink");
* after every step the target class's **logit** and **log-probability** (nats) are recorded;
* the logit curve is normalised by ``|unperturbed logit|``, the log-probability is not;
* ABPC = area(LeRF) − area(MoRF), trapezoid rule over the fraction flipped, x ∈ [0, 1]. Higher is more
  faithful: removing what the explanation calls most relevant should hurt the score first.

All perturbed images of one explanation run as a few batched forward passes, never one per step.
:func:`evaluate_digits` turns this into the evaluation's records (task ``digits``, perturbation ``background``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..core import Method, MethodSpec, get_method, method_names
from ..errors import ExplainError
from ..extras import require
from .names import VISION_TASK
from .perturbation import trapezoid_area
from .records import GRID_POINTS

if TYPE_CHECKING:
    from transformers import ViTConfig

__all__ = [
    "ATTNLRP_GAMMA",
    "DIGITS_GAMMA",
    "DIGITS_VIT_DIR",
    "DigitsSplit",
    "VISION_METHODS",
    "VISION_PERTURBATION",
    "VISION_TASK",
    "PatchFlipCurves",
    "accuracy",
    "digits_split",
    "digits_test_set",
    "digits_vit_config",
    "evaluate_digits",
    "explain_patches",
    "load_digits_vit",
    "patch_flipping",
    "patch_order",
    "recorded_metrics",
    "to_pixels",
]

#: Where the committed weights live (config.json, model.safetensors, metrics.json).
DIGITS_VIT_DIR = Path(__file__).resolve().parent / "datasets" / "digits-vit"
#: The fixed split: 25 % of every class is test data, drawn with this seed (numpy PCG64, stable across versions).
SPLIT_SEED = 0
TEST_FRACTION = 0.25
#: Pixels are ink / 16, in [0, 1]; a flipped patch becomes the background, 0.
INK_SCALE = 16.0
BACKGROUND = 0.0
#: The γ setting evaluated "with γ" (the same values the library's vision tests use).
DIGITS_GAMMA: dict[str | type, float] = {"Conv2d": 0.25, "Linear": 0.05}
#: AttnLRP with the γ-rule at DIGITS_GAMMA: a setting of this task rather than a method of the library, so a
#: ``Method`` object used directly, not registered.
ATTNLRP_GAMMA: Method = replace(
    get_method("attnlrp"), name="attnlrp-gamma", label="AttnLRP (γ)",
    description="AttnLRP with the γ-rule on the linear and convolution layers (DIGITS_GAMMA)",
    gamma=MappingProxyType(dict(DIGITS_GAMMA)),
)
#: The digits task's methods: the registered ones, AttnLRP with γ, and random patch rankings (the floor).
_METHODS: dict[str, Method] = {m.name: m for m in (*map(get_method, method_names()), ATTNLRP_GAMMA)}
RANDOM = "random"
VISION_METHODS: tuple[str, ...] = (*_METHODS, RANDOM)
VISION_PERTURBATION = "background"  # a flipped patch becomes the digits' zero background

SCORES = ("logit", "logprob")


# ------------------------------------------------------------------------------------------ model and data


def digits_vit_config() -> "ViTConfig":
    """The tiny ViT: 8×8 one-channel images, 2×2 patches (16 patches + CLS), hidden 32, 2 layers, 10 classes."""
    from transformers import ViTConfig

    return ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label={i: str(i) for i in range(10)},  # 10 classes (num_labels follows id2label)
        label2id={str(i): i for i in range(10)},
        architectures=["ViTForImageClassification"],
    )


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed train/test split of the digits: pixels ``(n, 1, 8, 8)`` in [0, 1] and integer labels."""

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    test_index: np.ndarray  # row numbers into ``sklearn.datasets.load_digits()``, for stable sample ids


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    digits = require("sklearn.datasets", "eval").load_digits()  # scikit-learn ships the digits data
    return np.asarray(digits.data, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw digits (``(n, 64)`` or ``(n, 8, 8)``, ink 0–16) → model input ``(n, 1, 8, 8)`` float32 in [0, 1]."""
    array = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if array.dim() == 2 and array.shape[1] == 64:
        array = array.reshape(-1, 8, 8)
    if array.dim() != 3 or tuple(array.shape[1:]) != (8, 8):
        raise ValueError(f"expected digits of shape (n, 64) or (n, 8, 8), got {tuple(array.shape)}")
    return (array / INK_SCALE).unsqueeze(1)


def digits_split(seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> DigitsSplit:
    """The stratified split used for training and evaluation: per class, a seeded permutation, first part = test.

    Written with numpy's ``default_rng`` rather than scikit-learn's splitter so it cannot change with a
    scikit-learn release.
    """
    data, labels = _load_digits()
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        rows = rows[rng.permutation(len(rows))]
        test.append(rows[: int(round(test_fraction * len(rows)))])
    test_index = np.sort(np.concatenate(test))
    train_index = np.setdiff1d(np.arange(len(labels)), test_index)
    return DigitsSplit(
        train_pixels=to_pixels(data[train_index]),
        train_labels=torch.as_tensor(labels[train_index]),
        test_pixels=to_pixels(data[test_index]),
        test_labels=torch.as_tensor(labels[test_index]),
        test_index=test_index,
    )


def digits_test_set(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (all by default) and their labels, in a fixed order."""
    split = digits_split()
    if n is not None and not 0 < n <= len(split.test_labels):
        raise ValueError(f"n must be between 1 and {len(split.test_labels)} (the test split's size), got {n}")
    return split.test_pixels[:n], split.test_labels[:n]


def load_digits_vit(folder: str | Path | None = None, *, attn_implementation: str = "eager") -> nn.Module:
    """The committed digits ViT (fp32, eval mode). ``folder`` defaults to the copy shipped in the package."""
    from transformers import ViTForImageClassification

    path = Path(folder) if folder is not None else DIGITS_VIT_DIR
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no digits ViT in {path} (config.json and model.safetensors expected); "
            f"run `python scripts/train_digits_vit.py` to train it"
        )
    model = ViTForImageClassification.from_pretrained(
        str(path), attn_implementation=attn_implementation, use_safetensors=True
    )
    return model.float().eval()


def recorded_metrics(folder: str | Path | None = None) -> dict[str, Any]:
    """What the training script recorded next to the weights (test accuracy, split, seed, timing)."""
    path = (Path(folder) if folder is not None else DIGITS_VIT_DIR) / "metrics.json"
    return json.loads(path.read_text())


def _logits(model: Callable, pixels: torch.Tensor) -> torch.Tensor:
    """Class logits of a batch; ``model`` may return a tensor or an output object with ``.logits``."""
    output = model(pixel_values=pixels) if isinstance(model, nn.Module) and _takes_pixel_values(model) else model(pixels)
    return output.logits if hasattr(output, "logits") else output


def _takes_pixel_values(model: nn.Module) -> bool:
    return hasattr(model, "config") and hasattr(model.config, "num_channels")


@torch.no_grad()
def accuracy(model: Callable, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``pixels`` (``(n, 1, 8, 8)``) classified as ``labels``."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = _logits(model, pixels[start : start + batch_size])
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def explain_patches(
    model: nn.Module,
    pixel_values: torch.Tensor,
    *,
    method: MethodSpec = "attnlrp",
    gamma: Mapping[str | type, float] | None = None,
    target: int | None = None,
):
    """One image's :class:`~attnlrp.vision.ImageExplanation` (patch relevance in ``.patch_relevance``).

    A thin convenience over :class:`~attnlrp.vision.ImageExplainer` so the evaluation builds no explainer
    itself. ``gamma`` defaults to the method's own (``ATTNLRP_GAMMA``'s for that method).
    """
    from ..vision import ImageExplainer

    method = get_method(method)
    return ImageExplainer(model, method=method, gamma=method.gamma if gamma is None else gamma).explain(
        pixel_values, target=target
    )


# -------------------------------------------------------------------------------------------- patch flipping


@dataclass(frozen=True)
class PatchFlipCurves:
    """The target's score after flipping 0, …, all patches, in MoRF and LeRF order, for one image.

    ``*_logit`` hold raw logits and ``*_logprob`` log-probabilities in nats; :meth:`curve` gives the
    normalised form the ABPC is computed on.
    """

    fractions: np.ndarray  # (steps + 1,), fraction of patches flipped, 0 … 1
    morf_logit: np.ndarray
    lerf_logit: np.ndarray
    morf_logprob: np.ndarray
    lerf_logprob: np.ndarray
    target: int
    morf_order: np.ndarray  # patch indices (row-major) in the order they are flipped
    lerf_order: np.ndarray

    @property
    def unperturbed_logit(self) -> float:
        return float(self.morf_logit[0])

    @property
    def base_logit(self) -> float:
        """The unperturbed logit (the text metric's name for it)."""
        return self.unperturbed_logit

    @property
    def base_logprob(self) -> float:
        return float(self.morf_logprob[0])

    def curve(self, order: str = "morf", score: str = "logit") -> np.ndarray:
        """One curve as the ABPC sees it: logits divided by ``|unperturbed logit|`` (NaN if it is 0),
        log-probabilities as they are."""
        _check_score(score)
        if order not in ("morf", "lerf"):
            raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
        values = getattr(self, f"{order}_{score}")
        if score == "logprob":
            return values.copy()
        scale = abs(self.unperturbed_logit)
        return values / scale if scale > 0 else np.full_like(values, np.nan)

    def area(self, order: str = "morf", score: str = "logit") -> float:
        """Trapezoid area under one curve over the fraction flipped (x ∈ [0, 1])."""
        return trapezoid_area(self.curve(order, score), self.fractions)

    def abpc(self, score: str = "logit") -> float:
        """Area between the perturbation curves, area(LeRF) − area(MoRF): higher means more faithful."""
        return self.area("lerf", score) - self.area("morf", score)

    def on_grid(self, points: int = 21) -> dict[str, list[float]]:
        """The normalised curves (as :meth:`curve`) linearly interpolated at ``points`` equally spaced
        fractions, to average images with different patch counts; same keys as the text metric's."""
        if points < 2:
            raise ValueError("a grid needs at least 2 points")
        grid = np.linspace(0.0, 1.0, points)
        out: dict[str, list[float]] = {"fraction": grid.tolist()}
        for order in ("morf", "lerf"):
            for score in SCORES:
                out[f"{order}_{score}"] = np.interp(grid, self.fractions, self.curve(order, score)).tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "fractions": self.fractions.tolist(),
            "morf_logit": self.morf_logit.tolist(),
            "lerf_logit": self.lerf_logit.tolist(),
            "morf_logprob": self.morf_logprob.tolist(),
            "lerf_logprob": self.lerf_logprob.tolist(),
            "unperturbed_logit": self.unperturbed_logit,
            "abpc": self.abpc("logit"),
            "abpc_logprob": self.abpc("logprob"),
            "morf_order": self.morf_order.tolist(),
            "lerf_order": self.lerf_order.tolist(),
        }


def _check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def patch_order(relevance: torch.Tensor | np.ndarray, order: str = "morf") -> np.ndarray:
    """Patch indices (row-major) from most to least relevant (``"morf"``) or the reverse (``"lerf"``).

    Signed relevance is ranked as it is (negative evidence is least relevant). Ties keep row-major order
    in both directions (a stable sort), so the result is deterministic.
    """
    values = np.asarray(torch.as_tensor(relevance).detach().double().cpu()).reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError("relevance contains NaN or inf; cannot rank patches")
    if order == "morf":
        return np.argsort(-values, kind="stable")
    if order == "lerf":
        return np.argsort(values, kind="stable")
    raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")


def _patch_relevance(relevance: torch.Tensor | np.ndarray, height: int, width: int, patch: int) -> torch.Tensor:
    """Accept patch relevance ``(rows, columns)`` or pixel relevance ``(height, width)`` (summed per patch)."""
    rows, columns = height // patch, width // patch
    relevance = torch.as_tensor(relevance).detach().double().cpu()
    if relevance.dim() == 3 and relevance.shape[0] == 1:
        relevance = relevance[0]
    if tuple(relevance.shape) == (rows, columns):
        return relevance
    if tuple(relevance.shape) == (height, width):
        return relevance.reshape(rows, patch, columns, patch).sum(dim=(1, 3))
    raise ValueError(
        f"relevance must be per patch {(rows, columns)} or per pixel {(height, width)}, got {tuple(relevance.shape)}"
    )


def _flip_steps(patches: int, steps: int | None) -> np.ndarray:
    """How many patches are flipped at each point of the curve: 0, …, ``patches`` (one per step by default)."""
    if steps is None:
        steps = patches
    if not isinstance(steps, int) or not 1 <= steps <= patches:
        raise ValueError(f"steps must be an integer between 1 and the number of patches ({patches}), got {steps!r}")
    return np.unique(np.round(np.linspace(0, patches, steps + 1)).astype(int))


def _perturbed_batch(
    pixels: torch.Tensor, order: np.ndarray, counts: np.ndarray, patch: int, baseline: float
) -> torch.Tensor:
    """One image per count, with the first ``count`` patches of ``order`` set to ``baseline``."""
    channels, height, width = pixels.shape
    columns = width // patch
    mask = torch.zeros(len(counts), height, width, dtype=torch.bool)
    for row, count in enumerate(counts):
        for index in order[:count]:
            r, c = divmod(int(index), columns)
            mask[row, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = True
    batch = pixels.unsqueeze(0).repeat(len(counts), 1, 1, 1)
    return batch.masked_fill(mask.unsqueeze(1), baseline)


@torch.no_grad()
def patch_flipping(
    model: Callable,
    pixel_values: torch.Tensor,
    relevance: torch.Tensor | np.ndarray,
    target: int,
    *,
    patch_size: int | None = None,
    baseline: float = BACKGROUND,
    steps: int | None = None,
    batch_size: int = 64,
) -> PatchFlipCurves:
    """MoRF and LeRF curves of one image ``(channels, height, width)`` for class ``target``.

    ``relevance`` is per patch ``(rows, columns)`` (e.g. ``ImageExplanation.patch_relevance``) or per pixel.
    ``model`` is an image classifier taking ``pixel_values`` (or any callable from a batch to logits).
    ``steps`` points after the first (default: one patch per step). Both curves' images run together in
    batches of ``batch_size``; the result does not depend on it.
    """
    pixels = torch.as_tensor(pixel_values)
    if pixels.dim() != 3 or not pixels.is_floating_point():
        raise ValueError(f"pixel_values must be one float image (channels, height, width), got {tuple(pixels.shape)}")
    patch = int(patch_size if patch_size is not None else getattr(getattr(model, "config", None), "patch_size", 0))
    if patch < 1:
        raise ValueError("patch_size is needed for a model without config.patch_size")
    _, height, width = pixels.shape
    if height % patch or width % patch:
        raise ValueError(f"image size {height}×{width} is not a multiple of the patch size {patch}")
    scores = _patch_relevance(relevance, height, width, patch)
    counts = _flip_steps(scores.numel(), steps)
    morf, lerf = patch_order(scores, "morf"), patch_order(scores, "lerf")
    batch = torch.cat([_perturbed_batch(pixels, o, counts, patch, baseline) for o in (morf, lerf)])
    dtype = _model_dtype(model, pixels.dtype)
    logits = torch.cat([
        _logits(model, batch[start : start + batch_size].to(dtype)).double().cpu()
        for start in range(0, len(batch), batch_size)
    ])
    if not 0 <= target < logits.shape[-1]:
        raise ValueError(f"target {target} is not one of the model's {logits.shape[-1]} classes")
    logit = logits[:, target].numpy()
    logprob = torch.log_softmax(logits, dim=-1)[:, target].numpy()
    n = len(counts)
    return PatchFlipCurves(
        fractions=counts / scores.numel(),
        morf_logit=logit[:n], lerf_logit=logit[n:], morf_logprob=logprob[:n], lerf_logprob=logprob[n:],
        target=int(target), morf_order=morf, lerf_order=lerf,
    )


def _model_dtype(model: Callable, default: torch.dtype) -> torch.dtype:
    if isinstance(model, nn.Module):
        parameter = next(iter(model.parameters()), None)
        if parameter is not None and parameter.is_floating_point():
            return parameter.dtype
    return default


# ------------------------------------------------------------------------------------------------ records


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
    method, in the text evaluation's record format; ``indices`` name the images' positions in the full test set
    (for sharding)."""
    unknown = [m for m in methods if m not in VISION_METHODS]
    if unknown:
        raise ExplainError(f"unknown vision method(s) {', '.join(unknown)}; choose from {', '.join(VISION_METHODS)}")
    indices = list(range(len(labels))) if indices is None else list(indices)
    records: list[dict[str, Any]] = []
    for index, image, label in zip(indices, pixels, labels.tolist()):
        for method in methods:
            start = time.perf_counter()
            if method == RANDOM:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
                patch = int(getattr(model, "config").patch_size)  # the ViT's (nn.Module declares no config)
                relevance = torch.rand(image.shape[1] // patch, image.shape[2] // patch, generator=generator)
            else:
                relevance = explain_patches(model, image, method=_METHODS[method], target=label).patch_relevance
            seconds = time.perf_counter() - start
            curves = patch_flipping(model, image, relevance, label, steps=steps)
            records.append({
                "task": VISION_TASK, "index": index, "sample": f"digits-test-{index}", "method": method,
                "seconds": seconds, "details": {}, "tokens": int(relevance.numel()),
                "flippable": int(relevance.numel()),
                "abpc": {VISION_PERTURBATION: {"logit": curves.abpc("logit"), "logprob": curves.abpc("logprob")}},
                "base": {"logit": curves.base_logit, "logprob": curves.base_logprob},
                "grid": {VISION_PERTURBATION: curves.on_grid(GRID_POINTS)},
            })
        if progress is not None:
            progress(1)
    return records
