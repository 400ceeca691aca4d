"""Write an evaluation's results: ``results.json`` (task → method → numbers), ``results.md`` (the tables, with
the command and versions that made them) and ``curves.png`` (the mean perturbation curves per task)."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Mapping

from ..extras import require
from ..render.escape import markdown_cell
from .summary import REFERENCE

__all__ = ["run_info", "markdown", "write_results", "plot_curves"]


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


def plot_curves(curves: Mapping[str, Mapping[str, Mapping[str, list[float]]]], path: str | Path,
                *, score: str = "logit") -> None:
    """One panel per task: each method's mean MoRF (solid) and LeRF (dashed) curve; needs matplotlib (the
    ``eval`` extra), imported here so that the evaluation itself imports without it."""
    require("matplotlib", "eval").use("Agg", force=False)
    plt = require("matplotlib.pyplot", "eval")

    tasks = list(curves)
    columns = min(3, max(1, len(tasks)))
    rows = math.ceil(len(tasks) / columns) if tasks else 1
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    colours = plt.get_cmap("tab20")
    for axis, task in zip(axes.flat, tasks):
        for k, (method, grid) in enumerate(curves[task].items()):
            colour = colours(k % 20)
            axis.plot(grid["fraction"], grid[f"morf_{score}"], color=colour, label=method)
            axis.plot(grid["fraction"], grid[f"lerf_{score}"], color=colour, linestyle="--")
        axis.set_title(task)
        axis.set_xlabel("fraction flipped")
        axis.set_ylabel("logit / |unperturbed logit|" if score == "logit" else "log-probability (nats)")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(tasks):]:
        axis.axis("off")
    if tasks:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small")
    figure.suptitle("Mean perturbation curves: MoRF solid, LeRF dashed")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(summary: Mapping[str, Any], curves: Mapping[str, Any], info: Mapping[str, Any],
                  output_dir: str | Path) -> list[Path]:
    """results.json, results.md, run.json and curves.png (logit) / curves-logprob.png in ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "results.md", out / "run.json", out / "curves.png",
             out / "curves-logprob.png"]
    paths[0].write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(summary, info), encoding="utf-8")
    paths[2].write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    plot_curves(curves, paths[3], score="logit")
    plot_curves(curves, paths[4], score="logprob")
    return paths
