"""Write an evaluation's results: ``results.json`` (task → method → numbers), ``results.md`` (the tables, with
the command and versions that made them) and ``curves.png`` / ``curves-logprob.png`` (the mean perturbation
curves with their 95 % bands, one panel per task and method, one colour per method: :func:`curves_figure`)."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..extras import require
from ..render.escape import markdown_cell
from .records import replacing
from .summary import REFERENCE

__all__ = ["EXTRA_COLOURS", "METHOD_COLOURS", "RESULT_FILES", "curves_figure", "markdown", "method_colours",
           "plot_curves", "run_info", "write_results"]

#: The files :func:`write_results` writes in its folder, in this order (the CLI checks them before a run).
RESULT_FILES = ("results.json", "results.md", "run.json", "curves.png", "curves-logprob.png")


def run_info(command: str, **extra: Any) -> dict[str, Any]:
    """What made the results: the command and the versions of everything that can change a number."""
    import torch
    import transformers

    import attnlrp

    try:
        import captum

        captum_version = captum.__version__
    except ImportError:  # captum is optional (the eval extra); a run without its methods does not need it
        captum_version = None
    return {
        "command": command,
        "attnlrp": attnlrp.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum_version,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        **extra,
    }


def _number(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.{digits}f}"


def _pm(mean: float, half: float) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:+.3f} ± {half:.3f}" if not math.isnan(half) else f"{mean:+.3f}"


def _cell(text: str) -> str:
    """A Markdown table cell: user-given names (methods, tasks) cannot break the table or inject HTML."""
    return markdown_cell(str(text))


def markdown(summary: Mapping[str, Mapping[str, Any]], info: Mapping[str, Any], *, reference: str = REFERENCE) -> str:
    """The results as Markdown: one table per task and perturbation, then how they were made."""
    lines = ["# Faithfulness evaluation", ""]
    lines += [
        "ABPC = area(LeRF) − area(MoRF) of the token-flipping curves (higher = more faithful); the logit ABPC is "
        "normalised by |unperturbed logit|, the log-probability ABPC is in nats. ± is the 95 % t-interval "
        "half-width over samples. *Paired* columns: AttnLRP's ABPC minus the method's, per sample, with its 95 % "
        "interval — a difference is only established where the interval excludes 0 (marked ✓).",
        "",
    ]
    for task, table in summary.items():
        has_plausibility = any("top1_in_span" in entry for entry in table.values())
        n = max((entry.get("n", 0) for entry in table.values()), default=0)
        lines += [f"## {_cell(task)} ({n} samples)", ""]
        judged = next((e for e in table.values() if "model_judged" in e), None)
        if judged is not None:
            lines += [f"The model answers {judged['model_correct_count']} of {judged['model_judged']} samples "
                      "correctly (sentiment: the gold label's logit beats the other's; QA: the greedy next token "
                      "starts the gold answer)." + (" *top-1 in span*: all samples (where the model is correct)."
                                                   if has_plausibility else ""), ""]
        if not any("abpc" in entry for entry in table.values()):
            lines += _plausibility_table(table) + [""]
            continue
        header = ["method", "ABPC logit", "ABPC log-prob (nats)", f"{reference} − method, logit",
                  f"{reference} − method, log-prob", "s / sample"]
        if has_plausibility:
            header += ["top-1 in span", "IoU top-k"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        ranked = sorted(table.items(), key=lambda kv: -(kv[1]["abpc"] if not math.isnan(kv[1]["abpc"]) else -1e9))
        for method, entry in ranked:
            paired = entry.get(f"paired_{reference}_minus_this", {})
            cells = [_cell(method), _pm(entry["abpc"], entry["ci95"]), _pm(entry["abpc_logprob"], entry["ci95_logprob"])]
            for score in ("logit", "logprob"):
                p = paired.get(score)
                if not p:
                    cells.append("(reference)" if method == reference else "–")
                    continue
                mark = " ✓" if not math.isnan(p["ci95"]) and abs(p["mean"]) > p["ci95"] else ""
                cells.append(_pm(p["mean"], p["ci95"]) + mark)
            cells.append(f"{entry['seconds_per_sample']:.3f}")
            if has_plausibility:
                cells.append(_top1_cell(entry))
                cells.append(_pm(entry.get("iou", float("nan")), entry.get("ci95_iou", float("nan")))
                             if "iou" in entry else "–")
            lines.append("| " + " | ".join(cells) + " |")
        extra = [f"{_cell(m)}: median completeness error {e['completeness_error_median']:.3f}"
                 for m, e in table.items() if "completeness_error_median" in e]
        if extra:
            lines += ["", "Integrated Gradients: " + "; ".join(extra) + " (|Σ attribution − (f(x) − f(baseline))| "
                      "/ |f(x) − f(baseline)|)."]
        lines.append("")
    lines += ["## How these numbers were made", ""]
    lines += _info_lines(info)
    lines.append("")
    return "\n".join(lines)


def _info_lines(info: Mapping[str, Any], indent: str = "") -> list[str]:
    """The run info as a Markdown list; merged runs (``runs``) each as a nested list."""
    lines = []
    for key, value in info.items():
        if key == "runs" and isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            lines.append(f"{indent}- **runs** (merged):")
            for run in value:
                lines.append(f"{indent}  - {_cell(run.get('command', run.get('records', 'run')))}")
                lines += _info_lines({k: v for k, v in run.items() if k != "command"}, indent + "    ")
            continue
        text = json.dumps(value) if isinstance(value, (dict, list)) else value
        lines.append(f"{indent}- **{_cell(key)}**: {_cell(text)}")
    return lines


def _plausibility_table(table: Mapping[str, Any]) -> list[str]:
    """A task scored by plausibility only: top-1 in the answer span and IoU of the top-k, best first."""
    lines = ["| method | top-1 in span | IoU top-k | s / sample |", "|---|---|---|---|"]
    ranked = sorted(table.items(), key=lambda kv: (-kv[1].get("top1_in_span", -1.0), -kv[1].get("iou", -1.0)))
    for method, entry in ranked:
        iou = _pm(entry.get("iou", float("nan")), entry.get("ci95_iou", float("nan"))) if "iou" in entry else "–"
        lines.append(f"| {_cell(method)} | {_top1_cell(entry)} | {iou} | {entry['seconds_per_sample']:.3f} |")
    return lines


def _top1_cell(entry: Mapping[str, Any]) -> str:
    """``a/N`` samples whose most relevant context token lies in the answer span, ``(b/C)`` where correct."""
    if "top1_in_span" not in entry:
        return "–"
    cell = f"{entry.get('top1_in_span_count', 0)}/{entry['n']}"
    if "model_correct_count" in entry:
        cell += f" ({entry.get('top1_in_span_count_when_correct', 0)}/{entry['model_correct_count']})"
    return cell


#: One colour per method, the same in every panel and every figure: Paul Tol's colour-blind-safe "muted" scheme
#: with three of Okabe & Ito's (blue, orange, vermillion), AttnLRP (the reference) in black; the order is the panels'.
METHOD_COLOURS: Mapping[str, str] = {
    "attnlrp": "#000000",
    "attnlrp-gamma": "#aa4499",
    "cp-lrp": "#0072b2",
    "input-x-gradient": "#117733",
    "gradient": "#e69f00",
    "integrated-gradients": "#999933",
    "smoothgrad": "#88ccee",
    "attention": "#cc6677",
    "rollout": "#882255",
    "atman": "#332288",
    "occlusion": "#d55e00",
    "kernel-shap": "#44aa99",
    "random": "#888888",
}
#: Colours of the methods not named in METHOD_COLOURS (a user's own), handed out in name order.
EXTRA_COLOURS = ("#56b4e9", "#009e73", "#ddcc77", "#cc79a7", "#f0e442", "#bbbbbb")
_ORDERS = (("morf", "MoRF", "-"), ("lerf", "LeRF", "--"))


def method_colours(methods: Iterable[str]) -> dict[str, str]:
    """method → colour for ``methods``, in panel order: the known methods as :data:`METHOD_COLOURS` orders and
    colours them, then the others by name with :data:`EXTRA_COLOURS` (cycled)."""
    names = set(methods)
    known = {m: c for m, c in METHOD_COLOURS.items() if m in names}
    others = sorted(names - set(METHOD_COLOURS))
    return {**known, **{m: EXTRA_COLOURS[k % len(EXTRA_COLOURS)] for k, m in enumerate(others)}}


def curves_figure(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], *, score: str = "logit",
                  reference: str = REFERENCE, columns: int = 6) -> Any:
    """The perturbation curves as small multiples (a matplotlib ``Figure``): one block of panels per task, one
    panel per method (at most ``columns`` a row, in :func:`method_colours`' order), each with the method's mean
    MoRF (solid) and LeRF (dashed) curve and its 95 % interval band where ``curves`` has ``<curve>_ci95``
    (:func:`~attnlrp.evaluation.summary.mean_curves` gives them); ``reference``'s curves are drawn thin in every
    other panel of its task to compare with. Each method keeps one colour everywhere; every line is labelled
    ``"method: MoRF"`` (the reference's copies ``"method: MoRF (reference)"``), every band
    ``"method: MoRF 95 % interval"``. Needs matplotlib (the ``eval`` extra)."""
    require("matplotlib", "eval").use("Agg", force=False)
    plt = require("matplotlib.pyplot", "eval")
    lines_module = require("matplotlib.lines", "eval")
    patches_module = require("matplotlib.patches", "eval")
    if score not in ("logit", "logprob"):
        raise ValueError(f"score must be 'logit' or 'logprob', got {score!r}")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be a positive integer, got {columns!r}")
    tasks = [task for task in curves if curves[task]]
    colours = method_colours(m for task in tasks for m in curves[task])
    width = min(columns, max((len(curves[task]) for task in tasks), default=1))
    rows = [math.ceil(len(curves[task]) / width) for task in tasks]
    # the legend's columns follow the figure's width (a long label takes about one panel's width)
    legend_columns = min(6, max(2, width))
    panel_width, panel_height, title_height, legend_height = 2.45, 1.95, 0.45, 0.4 + 0.22 * math.ceil(
        (len(colours) + 4) / legend_columns)
    figure = plt.figure(figsize=(panel_width * width + 0.5, panel_height * sum(rows) + title_height * len(tasks)
                                 + legend_height + 0.5), layout="constrained")
    unit = "logit / |unperturbed logit|" if score == "logit" else "log-probability (nats)"
    figure.suptitle(f"Mean perturbation curves over the samples, {unit}", fontsize="large")
    if not tasks:
        figure.text(0.5, 0.5, "no perturbation curves", ha="center", va="center")
        return figure
    blocks = figure.subfigures(len(tasks) + 1, 1, squeeze=False,
                               height_ratios=[panel_height * r + title_height for r in rows] + [legend_height])[:, 0]
    for block, task, count in zip(blocks, tasks, rows):
        block.suptitle(task, fontsize="medium", fontweight="bold")
        axes = block.subplots(count, width, sharey=True, squeeze=False)
        methods = [m for m in colours if m in curves[task]]
        for k, axis in enumerate(axes.flat):
            if k >= len(methods):
                axis.set_axis_off()
                continue
            _panel(axis, curves[task], methods[k], colours, score, reference)
            if k % width == 0:
                axis.set_ylabel(unit, fontsize="small")
            if k + width >= len(methods):  # nothing below it
                axis.set_xlabel("fraction flipped", fontsize="small")
    handles = [lines_module.Line2D([], [], color=colours[m], linewidth=2.4) for m in colours]
    labels = list(colours)
    handles += [lines_module.Line2D([], [], color="0.3", linestyle=style) for _, _, style in _ORDERS]
    labels += ["MoRF: most relevant flipped first", "LeRF: least relevant flipped first"]
    handles.append(patches_module.Patch(color="0.3", alpha=0.25, linewidth=0))
    labels.append("95 % t-interval of the mean")
    if any(reference in curves[task] for task in tasks):
        handles.append(lines_module.Line2D([], [], color=colours.get(reference, "0"), linewidth=0.9, alpha=0.5))
        labels.append(f"{reference} (thin), to compare")
    blocks[-1].legend(handles, labels, loc="center", ncol=min(legend_columns, len(labels)), fontsize="small",
                      frameon=False)
    return figure


def _panel(axis: Any, task_curves: Mapping[str, Mapping[str, Sequence[float]]], method: str,
           colours: Mapping[str, str], score: str, reference: str) -> None:
    """One method's curves (and the reference's, thin) in one panel."""
    import numpy as np

    if method != reference and reference in task_curves:
        grid = task_curves[reference]
        for order, name, style in _ORDERS:
            axis.plot(grid["fraction"], grid[f"{order}_{score}"], color=colours[reference], linestyle=style,
                      linewidth=0.9, alpha=0.5, zorder=1, label=f"{reference}: {name} (reference)")
    grid = task_curves[method]
    colour = colours[method]
    for order, name, style in _ORDERS:
        y = np.asarray(grid[f"{order}_{score}"], dtype=np.float64)
        axis.plot(grid["fraction"], y, color=colour, linestyle=style, linewidth=1.7, zorder=3,
                  label=f"{method}: {name}")
        band = grid.get(f"{order}_{score}_ci95")
        if band is not None:
            half = np.asarray(band, dtype=np.float64)
            axis.fill_between(grid["fraction"], y - half, y + half, color=colour, alpha=0.2, linewidth=0,
                              zorder=2, label=f"{method}: {name} 95 % interval")
    axis.set_title(method, fontsize="medium", color="black")
    axis.set_xlim(0, 1)
    axis.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
    axis.tick_params(labelsize="small")
    axis.grid(alpha=0.3)


def plot_curves(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], path: str | Path,
                *, score: str = "logit", reference: str = REFERENCE) -> None:
    """:func:`curves_figure` written to ``path`` (PNG, or what its suffix names); needs matplotlib (the ``eval``
    extra), imported here so that the evaluation itself imports without it."""
    plt = require("matplotlib.pyplot", "eval")
    figure = curves_figure(curves, score=score, reference=reference)
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def write_results(summary: Mapping[str, Any], curves: Mapping[str, Any], info: Mapping[str, Any],
                  output_dir: str | Path) -> list[Path]:
    """results.json, results.md, run.json and curves.png (logit) / curves-logprob.png in ``output_dir``, each
    written whole to a temporary file that then replaces it (:func:`~attnlrp.evaluation.records.replacing`), so
    an interrupted write keeps the previous file."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in RESULT_FILES]
    texts = [json.dumps(summary, indent=1, allow_nan=True) + "\n", markdown(summary, info),
             json.dumps(info, indent=1) + "\n"]
    for path, text in zip(paths, texts):
        with replacing(path) as temporary:
            temporary.write_text(text, encoding="utf-8")
    for path, score in zip(paths[3:], ("logit", "logprob")):
        with replacing(path) as temporary:
            plot_curves(curves, temporary, score=score)
    return paths
