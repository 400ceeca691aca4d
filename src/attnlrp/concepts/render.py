"""A neuron's concept page: its reference samples with the neuron's value at every token, as terminal text, a
static HTML page (no script, all corpus and tokenizer text escaped) or a JSON-ready dict.

Colours share one scale per ranking (the largest |value| over its samples' scored tokens), so the samples of a
ranking can be compared with each other; context-only tokens (before ``first_scored``) stay uncoloured.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..render.colors import relevance_rgb, symmetric_scale
from ..render.escape import html_text, html_token, terminal_text, token_repr
from ..render.html import HEATMAP_CSS, class_prefix, css_rgb, document
from ..render.terminal import resolve_color
from .atlas import Sample

TITLES = {
    "actmax": ("ActMax", "activation", "windows with the neuron's largest activation (at the marked token)"),
    "relmax": ("RelMax", "relevance", "windows where the neuron is most relevant for the model's next-token "
               "prediction (relevance summed over the window; the marked token is the most relevant)"),
}
_RESET = "\x1b[0m"
_MARK_SHARE = 0.25  # without colour, tokens at ≥ this share of the scale get a [token|value] marker


def format_score(value: float, digits: int = 3) -> str:
    """Signed, with significant digits: neuron relevance is often 1e-3 or smaller."""
    return f"{value:+.{digits}g}"


def _scale(samples: Sequence[Sample]) -> float:
    return symmetric_scale(v for s in samples for v in s.values()[s.first_scored :])


def concept_dict(info: Mapping[str, Any], layer: int, neuron: int, groups: Mapping[str, list[Sample]]) -> dict:
    """The JSON form: the atlas description, then per ranking its samples (see :meth:`Sample.to_dict`)."""
    return {"layer": layer, "neuron": neuron, "atlas": dict(info),
            **{kind: [s.to_dict() for s in samples] for kind, samples in groups.items()}}


# ------------------------------------------------------------------------------------------------ terminal


def _terminal_tokens(sample: Sample, scale: float, color: bool) -> str:
    out = []
    for i, (token, value) in enumerate(zip(sample.tokens, sample.values())):
        text = terminal_text(token, newline="↵")
        scored = i >= sample.first_scored
        if color:
            rgb = relevance_rgb(value, scale) if scored else (255, 255, 255)
            style = "1;" if i == sample.position else ""
            out.append(f"\x1b[{style}38;2;0;0;0;48;2;{rgb[0]};{rgb[1]};{rgb[2]}m{text}{_RESET}" if text else "")
        elif i == sample.position:
            out.append(f"[[{text}|{format_score(value, 2)}]]")
        elif scored and scale > 0 and abs(value) >= _MARK_SHARE * scale:
            out.append(f"[{text}|{format_score(value, 2)}]")
        else:
            out.append(text)
    return "".join(out)


def concept_terminal(info: Mapping[str, Any], layer: int, neuron: int, groups: Mapping[str, list[Sample]], *,
                     color: bool | None = None) -> str:
    """Header, then per ranking one block per sample: rank, score, peak token, and the window's tokens.

    ``color``: ANSI colours, ``[token|value]`` markers, or ``None`` (default): colours only when standard output is
    a terminal and ``NO_COLOR`` is unset (:func:`attnlrp.render.resolve_color`)."""
    color = resolve_color(color)
    done, total = info["windows_done"], info["windows_total"]
    coverage = f"{done} of {total} windows" + ("" if done >= total else " (partial atlas)")
    lines = [f"layer {layer}, neuron {neuron}",
             f"model: {terminal_text(str(info['model']))}",
             f"corpus: {terminal_text(str(info['corpus']))}, {coverage}; relevance: {info['method']}"]
    for kind, samples in groups.items():
        name, quantity, what = TITLES[kind]
        lines += ["", f"{name}: {len(samples)} {what}"]
        if not samples:
            lines.append("  (no samples yet)")
            continue
        scale = _scale(samples)
        marks = "colour" if color else "[[peak|value]], [token|value] at ≥ 25% of the scale"
        lines.append(f"  {quantity} per token: {marks}; scale ±{scale:.3g}")
        for s in samples:
            lines.append(f"  #{s.rank:<2d} {quantity} {format_score(s.score)} at {token_repr(s.token)} "
                         f"(window {s.window}, token {s.position})")
            lines.append("      " + _terminal_tokens(s, scale, color))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- HTML

_PAGE_CSS = """
.{p} table.samples td{{vertical-align:top}}
.{p} .win{{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}}
.{p} .win span{{border-radius:2px}}
.{p} .win span.peak{{outline:2px solid #000;font-weight:bold}}
.{p} .win span.ctx{{color:#777}}
.{p} p.note{{font-size:.9rem;color:#333}}
"""


def _html_window(sample: Sample, scale: float) -> str:
    spans = []
    for i, (token, act, rel) in enumerate(zip(sample.tokens, sample.activations, sample.relevance)):
        title = html_text(f"{token_repr(token)} activation {format_score(act)} relevance {format_score(rel)}")
        if i < sample.first_scored:
            spans.append(f'<span class="ctx" title="{title}">{html_token(token)}</span>')
            continue
        value = act if sample.kind == "actmax" else rel
        peak = ' class="peak"' if i == sample.position else ""
        spans.append(f'<span{peak} style="background:{css_rgb(relevance_rgb(value, scale))}" '
                     f'title="{title}">{html_token(token)}</span>')
    return f'<div class="win" style="white-space:pre-wrap">{"".join(spans)}</div>'


def concept_html(info: Mapping[str, Any], layer: int, neuron: int, groups: Mapping[str, list[Sample]], *,
                 note: str | None = None, full_page: bool = True) -> str:
    """A static page: the atlas details, an optional ``note`` (plain text, escaped), then per ranking a table
    of samples with each window's tokens coloured by the neuron's activation or relevance."""
    p = class_prefix("concept", layer, neuron, sorted(info.items()),
                [(k, [(s.window, s.score) for s in v]) for k, v in groups.items()])
    title = f"Layer {layer}, neuron {neuron}"
    details = {"model": info["model"], "corpus": info["corpus"],
               "windows": f"{info['windows_done']} of {info['windows_total']}", "window": f"{info['window']} tokens",
               "layers in the atlas": ", ".join(map(str, info["layers"])), "top k": info["top_k"],
               "relevance method": info["method"]}
    rows = "".join(f"<tr><th>{html_text(str(k))}</th><td>{html_text(str(v))}</td></tr>" for k, v in details.items())
    parts = [f'<div class="{p}"><h2>{html_text(title)}</h2>', f"<table><tbody>{rows}</tbody></table>"]
    if note:
        parts.append(f'<p class="note">{html_text(note)}</p>')
    for kind, samples in groups.items():
        name, quantity, what = TITLES[kind]
        scale = _scale(samples)
        parts.append(f"<h2>{html_text(name)}</h2><p>{html_text(f'{len(samples)} {what}. Colour: the neuron’s')} "
                     f"{html_text(quantity)} per token (red positive, blue negative, scale ±{scale:.3g}); hover a "
                     "token for both values; grey tokens are context only.</p>")
        body = "".join(
            f'<tr><td class="n">{s.rank}</td><td class="n">{html_text(format_score(s.score))}</td>'
            f"<td><code>{html_text(token_repr(s.token))}</code></td>"
            f'<td class="n">{s.window}</td><td>{_html_window(s, scale)}</td></tr>'
            for s in samples
        )
        parts.append(f'<table class="samples"><thead><tr><th>#</th><th>{html_text(quantity)}</th><th>token</th>'
                     f"<th>window</th><th>text</th></tr></thead><tbody>{body}</tbody></table>")
    parts.append("</div>")
    css = f"<style>{HEATMAP_CSS.format(p=p)}{_PAGE_CSS.format(p=p)}</style>"
    return document(css, "".join(parts), f"Concept atlas: {title}", full_page)
