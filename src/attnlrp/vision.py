"""Explaining image classifiers (ViT and other transformers taking ``pixel_values``): pixel and patch relevance.

Relevance is read at the pixels (``pixel_values ⊙ ĝ``, summed over colour channels) and summed per patch, so
patch relevance keeps the ledger's balance. The γ-rule, which sharpens heatmaps of vision models, is opt-in
per layer type: ``ImageExplainer(model, gamma={"Conv2d": 0.25, "Linear": 0.05})``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .core import ExplainedPass, LedgerReport, MethodSpec, get_method
from .errors import ExplainError
from .explanation import Target
from .models.adapter import ModelAdapter
from .targets import ClassTarget, Reading


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
        """The explanation as plain JSON-ready values."""
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
        """The explanation as JSON (``to_dict``; ``kwargs`` go to ``json.dumps``)."""
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
        method: MethodSpec = "attnlrp",
        gamma: Mapping[str | type, float] | None = None,
        strict: bool = False,
    ) -> None:
        self._method = get_method(method)
        if gamma and not self._method.uses_rules:  # (a method's own γ is checked by the rule context)
            raise ExplainError("the γ-rule is an LRP rule: use it with a method that uses rules, e.g. 'attnlrp'")
        if ModelAdapter.of(model).head != "image-cls":
            raise ExplainError(
                f"{type(model).__name__} is not an image classifier (…ForImageClassification); for text use Explainer"
            )
        config = model.config
        self.model, self.method, self.strict = model, self._method.name, strict
        #: γ per layer type: the given one, else the method's own (a ``Method`` may carry γ)
        self.gamma = dict(gamma) if gamma is not None else dict(self._method.gamma)
        self.adapter = ModelAdapter.of(model)
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
        pixels_in = pixels.to(parameter.device, torch.float64 if parameter.dtype == torch.float64 else torch.float32)
        with ExplainedPass(self.model, self._method, strict=self.strict, gamma=self.gamma, feature_dim=1) as explained:
            explained.start(1)
            leaf, _ = explained.leaf(pixels_in.unsqueeze(0))
            output = self.model(pixel_values=leaf.to(parameter.dtype))
            value, described = ClassTarget(target).read(Reading(output, 0, 1, None, self.adapter, None))
            result = explained.backward(value, [leaf])
        relevance = result.scores[0][0]
        return ImageExplanation(
            pixel_relevance=relevance.float().cpu(),
            patch_relevance=_patch_sums(relevance, self.patch).float().cpu(),
            target=described,
            value=result.ledgers[0].value,
            method=self.method,
            ledger=result.ledgers[0],
            image=_display_image(pixels) if image is None else np.asarray(image),
            gamma=dict(self.gamma),
            unhandled=explained.unhandled,
            covered=explained.covered,
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
