"""Image heatmaps as PNG (matplotlib, headless): the image beside its relevance map, red positive, blue negative."""

from __future__ import annotations

from typing import IO

import numpy as np
import torch

from ..extras import require


def heatmap_png(
    target: str | IO[bytes],
    relevance: torch.Tensor | np.ndarray,
    *,
    image: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Write a PNG: ``image`` (height, width, 3 in [0, 1]) and ``relevance`` (any grid, e.g. patches) over it.

    The colour scale is symmetric around 0 (``bwr``), so white means no relevance whatever the range.
    Needs matplotlib (``pip install 'attnlrp[vision]'``): without it, a :class:`~attnlrp.errors.MissingExtraError`
    says so.
    """
    matplotlib = require("matplotlib", "vision")
    matplotlib.use("Agg", force=False)
    Figure = require("matplotlib.figure", "vision").Figure

    grid = np.asarray(relevance, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"relevance must be a 2-D map, got shape {grid.shape}")
    finite = grid[np.isfinite(grid)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    scale = scale if scale > 0 else 1.0
    panels = 2 if image is not None else 1
    figure = Figure(figsize=(3.2 * panels + 0.6, 3.4), dpi=100)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    if image is not None:
        axes[0].imshow(np.clip(np.asarray(image, dtype=np.float64), 0, 1), interpolation="nearest")
        axes[0].set_title("input", fontsize=9)
    height, width = (image.shape[:2] if image is not None else grid.shape)
    shown = axes[-1].imshow(
        grid, cmap="bwr", vmin=-scale, vmax=scale, interpolation="nearest", extent=(0, width, height, 0)
    )
    if image is not None:
        axes[-1].imshow(np.clip(np.asarray(image).mean(axis=2), 0, 1), cmap="gray", alpha=0.25,
                        extent=(0, width, height, 0), interpolation="nearest")
    axes[-1].set_title("relevance", fontsize=9)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(shown, ax=axes[-1], fraction=0.046, pad=0.04)
    if title:
        figure.suptitle(title, fontsize=9)  # matplotlib draws text literally: no markup to escape in a PNG
    figure.savefig(target, format="png")
