"""Means and paired differences with Student-t confidence intervals.

Methods are compared on the *same* samples, so the honest comparison is the per-sample difference
``a_i − b_i`` and its t-interval: sample difficulty cancels, and the interval is often much narrower than the
two separate intervals suggest. The t quantile is scipy's (``scipy.stats.t.ppf``, the ``eval`` extra); the
means and standard deviations are numpy's.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..extras import require

__all__ = ["Interval", "mean_interval", "mean_intervals", "paired_difference", "paired_differences", "t_quantile"]


@functools.lru_cache(maxsize=1024)
def t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (df = inf: the normal), by
    ``scipy.stats.t.ppf``; needs scipy (the ``eval`` extra)."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must lie in (0, 1), got {probability}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if probability < 0.5:  # exactly symmetric: t(p) = −t(1 − p)
        return -t_quantile(1 - probability, df)
    if probability == 0.5:
        return 0.0
    return float(require("scipy.stats", "eval").t.ppf(probability, df))


@dataclass(frozen=True)
class Interval:
    """A mean and the half-width of its two-sided confidence interval (``nan`` when n < 2)."""

    mean: float
    half_width: float
    n: int
    level: float = 0.95

    @property
    def lower(self) -> float:
        """The interval's lower bound."""
        return self.mean - self.half_width

    @property
    def upper(self) -> float:
        """The interval's upper bound."""
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0 (a difference is then significant)."""
        return self.lower > 0 or self.upper < 0

    def to_dict(self) -> dict[str, float | int]:
        """``{"mean", "ci95" (or "ci" at another level), "n"}``."""
        return {"mean": self.mean, "ci95" if self.level == 0.95 else "ci": self.half_width, "n": self.n}


def mean_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """Mean and t-interval half-width ``t_{(1+level)/2, n−1} · s / √n`` (s: sample standard deviation).

    NaN values (e.g. a normalised ABPC of a sample whose unperturbed score was exactly 0) are left out and
    ``n`` counts the rest. Raises ``ValueError`` when nothing is left.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    kept = np.asarray(values, dtype=np.float64).reshape(-1)
    kept = kept[~np.isnan(kept)]
    if kept.size == 0:
        raise ValueError("no values to average")
    mean, half, n = mean_intervals(kept[:, None], level)
    return Interval(float(mean[0]), float(half[0]), int(n[0]), level)


def mean_intervals(samples: Sequence[Sequence[float]] | np.ndarray, level: float = 0.95,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise :func:`mean_interval` of a (samples, points) array, e.g. the per-sample perturbation curves
    on a common grid: ``(mean, half_width, n)``, each of shape (points,). NaNs are left out per column; a
    column with fewer than 2 values gets a NaN half-width (and a NaN mean when it has none)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"samples must be a (samples, points) array, got shape {array.shape}")
    n = np.count_nonzero(~np.isnan(array), axis=0)
    with warnings.catch_warnings():  # an empty column's mean, a single value's deviation: NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(array, axis=0)
        sd = np.nanstd(array, axis=0, ddof=1)
        quantile = require("scipy.stats", "eval").t.ppf((1 + level) / 2, n - 1)  # NaN where n < 2
    half = np.where(n >= 2, quantile * sd / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, half, n


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = 0.95,
                      ) -> Interval:
    """Mean of the per-sample differences ``a_i − b_i`` and its t-interval; pairs with a NaN are left out."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = ~(np.isnan(first) | np.isnan(second))
    return mean_interval(first[both] - second[both], level)


def paired_differences(
    per_method: Mapping[str, Sequence[float]], reference: str, level: float = 0.95
) -> dict[str, Interval]:
    """``reference`` minus every other method, paired per sample: method → Interval of the difference."""
    if reference not in per_method:
        raise ValueError(f"reference method {reference!r} is not among {sorted(per_method)}")
    return {
        name: paired_difference(per_method[reference], values, level)
        for name, values in per_method.items()
        if name != reference
    }
