"""t quantiles against tables and closed forms; intervals against hand computations and a coverage check."""

from __future__ import annotations

import math
import random

import pytest

from attnlrp.evaluation.stats import Interval, mean_interval, paired_difference, paired_differences, t_quantile

# two-sided 95 % critical values (the 0.975 quantile) from standard t tables, 7 significant digits
T_TABLE_975 = {1: 12.70620, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 10: 2.228139,
               19: 2.093024, 30: 2.042272, 59: 2.000995, 100: 1.983972, 199: 1.971957, 1000: 1.962339}


@pytest.mark.parametrize("df, expected", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=2e-6)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)
    # df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t²))  ⇒  t = (2p − 1) / sqrt(2 p (1 − p))
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


def test_t_quantile_is_symmetric_and_tends_to_the_normal():
    assert t_quantile(0.025, 7) == -t_quantile(0.975, 7)
    assert t_quantile(0.5, 3) == 0.0
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, rel=1e-6)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, rel=1e-6)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            t_quantile(bad, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_mean_interval_is_the_t_interval_by_hand():
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    s = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert interval.mean == 2.5 and interval.n == 4
    assert interval.half_width == pytest.approx(T_TABLE_975[3] * s / 2, rel=2e-6)
    assert interval.lower == pytest.approx(2.5 - interval.half_width)
    assert interval.to_dict() == {"mean": 2.5, "ci95": interval.half_width, "n": 4}
    assert interval.excludes_zero and not Interval(0.2, 0.5, 3).excludes_zero and Interval(1.0, 0.5, 3).excludes_zero
    assert Interval(-1.0, 0.5, 3).excludes_zero


def test_paired_difference_uses_per_sample_differences_and_drops_nan_pairs():
    a = [1.0, 2.0, 4.0, math.nan, 7.0]
    b = [0.5, 1.0, 3.0, 1.0, 5.5]
    paired = paired_difference(a, b)
    assert paired.n == 4 and paired.mean == pytest.approx((0.5 + 1.0 + 1.0 + 1.5) / 4)
    assert paired.half_width == pytest.approx(mean_interval([0.5, 1.0, 1.0, 1.5]).half_width)
    # a shared per-sample offset cancels in the pairs but not in the separate means' intervals
    offsets = [0.0, 10.0, -7.0, 3.0, 25.0]
    x = [o + 1.0 + 0.01 * i for i, o in enumerate(offsets)]
    y = [o for o in offsets]
    assert paired_difference(x, y).excludes_zero
    assert mean_interval(x).half_width > 10 * paired_difference(x, y).half_width


def test_small_and_bad_samples():
    single = mean_interval([3.0])
    assert single.mean == 3.0 and math.isnan(single.half_width) and single.n == 1
    with pytest.raises(ValueError, match="no values"):
        mean_interval([])
    with pytest.raises(ValueError, match="no values"):
        mean_interval([math.nan])
    with pytest.raises(ValueError, match="equal length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="reference"):
        paired_differences({"a": [1.0, 2.0]}, "attnlrp")


def test_paired_differences_subtract_every_method_from_the_reference():
    table = {"attnlrp": [1.0, 2.0, 3.0], "random": [0.0, 0.5, 1.0], "cp-lrp": [1.0, 2.0, 2.0]}
    diffs = paired_differences(table, "attnlrp")
    assert set(diffs) == {"random", "cp-lrp"}
    assert diffs["random"].mean == pytest.approx(1.5) and diffs["cp-lrp"].mean == pytest.approx(1 / 3)


def test_the_95_percent_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = random.Random(0)
    trials, covered = 4000, 0
    for _ in range(trials):
        interval = mean_interval([rng.gauss(1.0, 2.0) for _ in range(5)])
        covered += interval.lower <= 1.0 <= interval.upper
    assert abs(covered / trials - 0.95) < 0.012  # ±3.5 binomial standard errors
