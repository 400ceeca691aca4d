"""Relevance → colour mapping shared by the HTML and terminal renderers.

Diverging and symmetric around zero so that sign is read from hue and magnitude from
saturation; the endpoints are light enough for black text to stay readable on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["WHITE", "POSITIVE_RGB", "NEGATIVE_RGB", "NAN_RGB", "relevance_rgb", "symmetric_scale"]

RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
POSITIVE_RGB: RGB = (255, 64, 64)  # full red: contrast with black text ≈ 6:1
NEGATIVE_RGB: RGB = (64, 128, 255)  # full blue: contrast with black text ≈ 5.7:1
NAN_RGB: RGB = (190, 190, 190)  # grey: "no value", distinct from 0 (white)


def relevance_rgb(score: float, scale: float) -> RGB:
    """Colour for `score`: white at 0, linear towards red (+) or blue (−), full at |score| ≥ scale.

    A NaN score is grey; a scale ≤ 0 or non-finite carries no magnitude information,
    so everything (except NaN) is white rather than arbitrarily saturated.
    """
    score, scale = float(score), float(scale)
    if math.isnan(score):
        return NAN_RGB
    if not math.isfinite(scale) or scale <= 0.0 or score == 0.0:
        return WHITE
    t = min(abs(score) / scale, 1.0)
    end = POSITIVE_RGB if score > 0 else NEGATIVE_RGB
    # Half-up rounding (not banker's) so the midpoint is a predictable integer.
    red, green, blue = (int(w + (e - w) * t + 0.5) for w, e in zip(WHITE, end))
    return (red, green, blue)


def symmetric_scale(scores: Iterable[float]) -> float:
    """Largest finite |score| (0.0 if none): one scale for both signs keeps colours comparable."""
    return max((abs(v) for v in map(float, scores) if math.isfinite(v)), default=0.0)
