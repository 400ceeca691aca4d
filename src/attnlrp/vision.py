"""Explaining image classifiers (ViT and other transformers taking ``pixel_values``): pixel and patch relevance.

Relevance is read at the pixels (``pixel_values ⊙ ĝ``, summed over colour channels) and summed per patch, so
patch relevance keeps the ledger's balance. The γ-rule, which sharpens heatmaps of vision models, is opt-in
per layer type: ``ImageExplainer(model, gamma={"Conv2d": 0.25, "Linear": 0.05})``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .audit import LedgerReport
from .engine import LRP_METHODS, METHODS, LRPContext
from .errors import ExplainError
from .inputs import class_index
from .explanation import Target


@dataclass(frozen=True)
class ImageExplanation:
    """Relevance of each pixel and patch of one image for one class logit."""

    pixel_relevance: torch.Tensor  # (height, width), summed over channels
    patch_relevance: torch.Tensor  # (rows, columns) of patches
    target: Target
    value: float
    method: str
    ledger: LedgerReport
    image: np.ndarray | None = None  # (height, width, 3) in [0, 1], for display
    gamma: dict = field(default_factory=dict)
    unhandled: list[dict] = field(default_factory=list)
    covered: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "gamma": {str(k if isinstance(k, str) else k.__name__): v for k, v in self.gamma.items()},
            "target": self.target.to_dict(),
            "value": self.value,
            "patch_relevance": self.patch_relevance.tolist(),
            "ledger": self.ledger.to_dict(),
            "unhandled": list(self.unhandled),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def save_png(self, path: str, *, patches: bool = True) -> None:
        """The image beside its relevance heatmap (patch grid by default, else per pixel) as a PNG."""
        from .render.image import heatmap_png

        heatmap_png(
            path,
            self.patch_relevance if patches else self.pixel_relevance,
            image=self.image,
            title=f"{self.method}: {self.target.describe()} = {self.value:+.3f}",
        )

    def _repr_png_(self) -> bytes:
        import io

        from .render.image import heatmap_png

        buffer = io.BytesIO()
        heatmap_png(buffer, self.patch_relevance, image=self.image, title=self.target.describe())
        return buffer.getvalue()


class ImageExplainer:
    """Explains the class logits of an image-classification transformer (``…ForImageClassification``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "attnlrp",
        gamma: Mapping[str | type, float] | None = None,
        strict: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ExplainError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if gamma and method not in LRP_METHODS:
            raise ExplainError("the γ-rule is an LRP rule: use it with method 'attnlrp' or 'cp-lrp'")
        if not type(model).__name__.endswith("ForImageClassification"):
            raise ExplainError(
                f"{type(model).__name__} is not an image classifier (…ForImageClassification); for text use Explainer"
            )
        config = model.config
        self.model, self.method, self.strict, self.gamma = model, method, strict, dict(gamma or {})
        self.channels = int(getattr(config, "num_channels", 3))
        self.patch = int(getattr(config, "patch_size", 1))
        self.size = getattr(config, "image_size", None)

    def __call__(self, pixel_values: torch.Tensor | np.ndarray, **kwargs: Any) -> ImageExplanation:
        return self.explain(pixel_values, **kwargs)

    def explain(
        self, pixel_values: torch.Tensor | np.ndarray, *, target: int | str | None = None, image: np.ndarray | None = None
    ) -> ImageExplanation:
        """Explain one preprocessed image, ``(channels, height, width)``; ``target`` a class index or label
        (default: the predicted class). ``image`` (height, width, 3 in [0, 1]) is only for display."""
        pixels = self._check(pixel_values)
        parameter = next(self.model.parameters())
        leaf = pixels.to(parameter.device, torch.float64 if parameter.dtype == torch.float64 else torch.float32)
        leaf = leaf.unsqueeze(0).requires_grad_(True)
        with torch.enable_grad(), LRPContext(self.model, self.method, strict=self.strict, gamma=self.gamma) as ctx:
            ctx.batch_size = 1
            logits = self.model(pixel_values=leaf.to(parameter.dtype)).logits[0]
            index, label = class_index(self.model, target, logits)
            value = logits[index]
            if not torch.isfinite(value):
                raise ExplainError("the model produced a non-finite logit; check its weights and dtype")
            grad, *_ = torch.autograd.grad(value, [leaf, *ctx.absorber_leaves], allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
        relevance = (grad.double().norm(dim=1) if self.method == "gradient" else (leaf.detach().double() * grad.double()).sum(dim=1))[0]
        unhandled = ctx.audit.unhandled_list()
        if unhandled and self.method in LRP_METHODS:
            listing = "; ".join(f"{u['operation']} in {u['module']}" for u in unhandled[:8])
            warnings.warn(f"non-linear operations ran without an LRP rule: {listing}", stacklevel=2)
        input_relevance = float((leaf.detach().double() * grad.double()).sum())
        return ImageExplanation(
            pixel_relevance=relevance.float().cpu(),
            patch_relevance=_patch_sums(relevance, self.patch).float().cpu(),
            target=Target(kind="class", position=None, token_id=index, label=label),
            value=float(value.detach().double()),
            method=self.method,
            ledger=ctx.ledger.row(0, input_relevance=input_relevance, value=float(value.detach().double())),
            image=_display_image(pixels) if image is None else np.asarray(image),
            gamma=dict(self.gamma),
            unhandled=unhandled,
            covered=ctx.audit.covered_table(),
        )

    def _check(self, pixel_values: torch.Tensor | np.ndarray) -> torch.Tensor:
        pixels = torch.as_tensor(pixel_values)
        if pixels.dim() == 4 and pixels.shape[0] == 1:
            pixels = pixels[0]
        if pixels.dim() != 3 or pixels.shape[0] != self.channels:
            raise ExplainError(
                f"expected one preprocessed image of shape ({self.channels}, height, width), got "
                f"{tuple(pixels.shape)}; use the model's image processor to prepare it"
            )
        if not pixels.is_floating_point() or not torch.isfinite(pixels).all():
            raise ExplainError("pixel values must be finite floating-point numbers (NaN or inf found, or integers)")
        height, width = pixels.shape[1:]
        if height % self.patch or width % self.patch:
            raise ExplainError(f"image size {height}×{width} is not a multiple of the patch size {self.patch}")
        if self.size and (height, width) != _pair(self.size):
            raise ExplainError(f"the model takes {_pair(self.size)} images, got {height}×{width}; resize first")
        return pixels


def _pair(size: int | tuple | list) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _patch_sums(relevance: torch.Tensor, patch: int) -> torch.Tensor:
    """Sum relevance over each patch × patch block (sums keep conservation)."""
    height, width = relevance.shape
    return relevance.reshape(height // patch, patch, width // patch, patch).sum(dim=(1, 3))


def _display_image(pixels: torch.Tensor) -> np.ndarray:
    """The preprocessed image rescaled to [0, 1] for display (normalisation undone approximately)."""
    image = pixels.detach().double().cpu().permute(1, 2, 0).numpy()
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)
