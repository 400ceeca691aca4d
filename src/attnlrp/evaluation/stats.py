"""Means and paired differences with Student-t confidence intervals, without scipy.

Methods are compared on the *same* samples, so the honest comparison is the per-sample difference
``a_i − b_i`` and its t-interval: sample difficulty cancels, and the interval is often much narrower than the
two separate intervals suggest. ``torch.distributions.StudentT`` has no ``icdf``, so the t quantile is computed
here: Newton's method on the t CDF, the CDF by composite Simpson integration of the density (error < 1e-10).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, Sequence

__all__ = ["Interval", "mean_interval", "paired_difference", "paired_differences", "t_quantile"]


def _t_density(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf(x: float, df: float, intervals: int = 4000) -> float:
    """P(T ≤ x) for x ≥ 0: 1/2 plus Simpson's rule for the density over [0, x]."""
    h = x / intervals
    total = _t_density(0.0, df) + _t_density(x, df)
    total += 4 * sum(_t_density((2 * i - 1) * h, df) for i in range(1, intervals // 2 + 1))
    total += 2 * sum(_t_density(2 * i * h, df) for i in range(1, intervals // 2))
    return 0.5 + total * h / 3


@functools.lru_cache(maxsize=1024)
def t_quantile(probability: float, df: float) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (df = inf: the normal)."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must lie in (0, 1), got {probability}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if probability < 0.5:
        return -t_quantile(1 - probability, df)
    if probability == 0.5:
        return 0.0
    z = NormalDist().inv_cdf(probability)
    if math.isinf(df) or df > 1e7:
        return z
    if df == 1:  # Cauchy: closed form (Newton converges slowly in its heavy tail)
        return math.tan(math.pi * (probability - 0.5))
    x = z * (1 + (z * z + 1) / (4 * df))  # Cornish-Fisher start, within a few % for df ≥ 2
    for _ in range(60):
        step = (_t_cdf(x, df) - probability) / _t_density(x, df)
        x = max(x - step, x / 2)  # never jump below 0 in the tail
        if abs(step) < 1e-12 * max(1.0, x):
            break
    return x


@dataclass(frozen=True)
class Interval:
    """A mean and the half-width of its two-sided confidence interval (``nan`` when n < 2)."""

    mean: float
    half_width: float
    n: int
    level: float = 0.95

    @property
    def lower(self) -> float:
        return self.mean - self.half_width

    @property
    def upper(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0 (a difference is then significant)."""
        return self.lower > 0 or self.upper < 0

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95" if self.level == 0.95 else "ci": self.half_width, "n": self.n}


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if not math.isnan(float(v))]


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-interval half-width ``t_{(1+level)/2, n−1} · s / √n`` (s: sample standard deviation).

    NaN values (e.g. a normalised ABPC of a sample whose unperturbed score was exactly 0) are left out and
    ``n`` counts the rest. Raises ``ValueError`` when nothing is left.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    kept = _finite(values)
    n = len(kept)
    if n == 0:
        raise ValueError("no values to average")
    mean = math.fsum(kept) / n
    if n < 2:
        return Interval(mean, float("nan"), n, level)
    variance = math.fsum((v - mean) ** 2 for v in kept) / (n - 1)
    return Interval(mean, t_quantile((1 + level) / 2, n - 1) * math.sqrt(variance / n), n, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of the per-sample differences ``a_i − b_i`` and its t-interval; pairs with a NaN are left out."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    differences = [float(x) - float(y) for x, y in zip(a, b) if not (math.isnan(float(x)) or math.isnan(float(y)))]
    return mean_interval(differences, level)


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
