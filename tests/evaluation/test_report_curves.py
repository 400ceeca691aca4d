"""The curve figures: every plotted line is its method's data in its method's colour, in every panel and task;
the bands are the per-point t-intervals over the samples; the legend names every method."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the eval extra, installed by `make test`

from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from attnlrp.evaluation import METHOD_NAMES  # noqa: E402
from attnlrp.evaluation.report import EXTRA_COLOURS, METHOD_COLOURS, curves_figure, method_colours, plot_curves  # noqa: E402
from attnlrp.evaluation.stats import mean_interval  # noqa: E402
from attnlrp.evaluation.summary import mean_curves  # noqa: E402

X = [0.0, 0.25, 0.5, 0.75, 1.0]
CURVES = ("morf_logit", "lerf_logit", "morf_logprob", "lerf_logprob")


def _grid(value: float) -> dict[str, list[float]]:
    """Curves whose every point says which method, curve and task they belong to (no two are equal)."""
    grid: dict[str, list[float]] = {"fraction": list(X)}
    for c, name in enumerate(CURVES):
        grid[name] = [value + 0.1 * c + 0.001 * i for i in range(len(X))]
        grid[f"{name}_ci95"] = [0.01 * (c + 1) + 0.002 * i for i in range(len(X))]
    return grid


def _curves() -> dict[str, dict[str, dict[str, list[float]]]]:
    # the methods come in a different order in each task, and "mine" is a user's method without a fixed colour:
    # a colour taken from a line's position in its panel, or a legend taken from one panel, shows up here
    return {
        "task-a:replace": {"random": _grid(1.0), "attnlrp": _grid(2.0), "mine": _grid(3.0)},
        "task-b:zero": {"mine": _grid(13.0), "random": _grid(11.0), "attnlrp": _grid(12.0)},
    }


def _panels(figure):
    """(task, axis) for every panel that draws a method (its title names it)."""
    return [(block.get_suptitle(), axis) for block in figure.subfigs for axis in block.axes
            if axis.get_title()]


@pytest.mark.parametrize("score", ["logit", "logprob"])
def test_each_plotted_line_carries_its_methods_data_and_colour(score):
    import matplotlib.pyplot as plt

    curves = _curves()
    figure = curves_figure(curves, score=score)
    try:
        colour_of: dict[str, str] = {}
        drawn = set()
        for task, axis in _panels(figure):
            method = axis.get_title()
            assert task in curves and method in curves[task]
            lines = {line.get_label(): line for line in axis.get_lines()}
            for order, name in (("morf", "MoRF"), ("lerf", "LeRF")):
                key = f"{order}_{score}"
                for owner, label in ((method, f"{method}: {name}"), ("attnlrp", f"attnlrp: {name} (reference)")):
                    if label.endswith("(reference)") and method == "attnlrp":
                        assert label not in lines  # the reference is not drawn twice in its own panel
                        continue
                    line = lines.pop(label)
                    np.testing.assert_array_equal(line.get_xdata(), X)
                    np.testing.assert_array_equal(line.get_ydata(), curves[task][owner][key])
                    assert colour_of.setdefault(owner, to_hex(line.get_color())) == to_hex(line.get_color())
                    assert line.get_linestyle() == ("-" if order == "morf" else "--")
                band = next(c for c in axis.collections if c.get_label() == f"{method}: {name} 95 % interval")
                assert isinstance(band, PolyCollection)
                assert to_hex(band.get_facecolor()[0]) == colour_of[method]
                y, half = np.array(curves[task][method][key]), np.array(curves[task][method][f"{key}_ci95"])
                vertices = band.get_paths()[0].vertices
                for x, low, high in zip(X, y - half, y + half):
                    at_x = vertices[np.isclose(vertices[:, 0], x), 1]
                    assert np.isclose(at_x, low).any() and np.isclose(at_x, high).any()
            assert not lines, f"unexpected lines in {method}'s panel: {list(lines)}"
            drawn.add((task, method))
        assert drawn == {(task, m) for task in curves for m in curves[task]}
        assert len(set(colour_of.values())) == 3  # one colour per method, different methods differ
        assert colour_of["attnlrp"] == METHOD_COLOURS["attnlrp"] and colour_of["random"] == METHOD_COLOURS["random"]
        assert colour_of["mine"] == EXTRA_COLOURS[0]
        legend = figure.subfigs[-1].legends[0]
        entries = {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)}
        for method, colour in colour_of.items():
            assert to_hex(entries[method].get_color()) == colour
    finally:
        plt.close(figure)


def test_panels_keep_one_order_and_wrap_at_the_column_count():
    import matplotlib.pyplot as plt

    curves = {"t": {m: _grid(float(k)) for k, m in enumerate(reversed(METHOD_NAMES))}}
    figure = curves_figure(curves, columns=5)
    try:
        titles = [axis.get_title() for _, axis in _panels(figure)]
        assert titles == list(METHOD_NAMES)  # the fixed order, whatever the order of the data
        block = figure.subfigs[0]
        assert len(block.axes) == 15 and sum(not axis.axison for axis in block.axes) == 3  # 3 rows of 5
    finally:
        plt.close(figure)


def test_every_evaluation_method_has_its_own_fixed_colour():
    assert set(METHOD_NAMES) <= set(METHOD_COLOURS)
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)
    assert not set(EXTRA_COLOURS) & set(METHOD_COLOURS.values())
    colours = method_colours(["zeta", "random", "alpha", "attnlrp"])
    assert list(colours) == ["attnlrp", "random", "alpha", "zeta"]
    assert colours == {"attnlrp": METHOD_COLOURS["attnlrp"], "random": METHOD_COLOURS["random"],
                       "alpha": EXTRA_COLOURS[0], "zeta": EXTRA_COLOURS[1]}


def test_mean_curves_bands_are_the_per_point_t_intervals_over_the_samples():
    rng = np.random.default_rng(0)
    per_sample = rng.normal(size=(6, 4, len(X)))  # sample, curve, point
    per_sample[2, 0, 1] = math.nan  # a sample whose point is undefined is left out there, as in the tables
    records = [{"task": "t", "index": i, "sample": f"s{i}", "method": "m",
                "grid": {"replace": {"fraction": list(X), **{name: per_sample[i, c].tolist()
                                                             for c, name in enumerate(CURVES)}}}}
               for i in range(6)]
    curves = mean_curves(records)["t:replace"]["m"]
    assert curves["fraction"] == X and "fraction_ci95" not in curves
    for c, name in enumerate(CURVES):
        for point in range(len(X)):
            expected = mean_interval(per_sample[:, c, point])
            assert curves[name][point] == pytest.approx(expected.mean, rel=1e-12)
            assert curves[f"{name}_ci95"][point] == pytest.approx(expected.half_width, rel=1e-12)
    assert curves["morf_logit"][1] == pytest.approx(np.mean(np.delete(per_sample[:, 0, 1], 2)), rel=1e-12)


def test_plot_curves_writes_a_png_and_an_empty_figure(tmp_path):
    plot_curves(_curves(), tmp_path / "curves.png", score="logprob")
    plot_curves({}, tmp_path / "empty.png")
    for name in ("curves.png", "empty.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="score"):
        curves_figure(_curves(), score="prob")
