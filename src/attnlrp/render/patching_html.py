"""HTML views of relevance patching: the patch report (a heatmap per level, the top components, estimate against
truth once verified) and a circuit's layered graph with its recovery curves. Static HTML and inline SVG: no
script, no external resource; every token and label escaped here."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from .colors import NEGATIVE_RGB, POSITIVE_RGB, relevance_rgb, symmetric_scale
from .escape import html_text, token_repr
from .html import HEATMAP_CSS, class_prefix, css_rgb, document

if TYPE_CHECKING:  # pragma: no cover
    from ..patching import Circuit, PatchResult

_CSS = """
.{p} table.grid td{{padding:.1rem .25rem;min-width:1.1rem;font-size:.7rem}}
.{p} table.grid th{{font-size:.7rem;font-weight:normal;padding:.1rem .25rem}}
.{p} table.grid th.tok{{writing-mode:vertical-rl;transform:rotate(180deg);
  font-family:ui-monospace,Menlo,Consolas,monospace}}
.{p} svg text{{font-family:system-ui,sans-serif;font-size:11px}}
.{p} .note{{color:#555;font-size:.85rem}}
"""

#: curve colours for the rankings (Okabe–Ito: distinguishable with the common colour-vision deficiencies)
_CURVE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00")
_RANDOM_COLOUR = "#777777"
_LEVEL_COLOURS = {"heads": "#0072B2", "mlps": "#D55E00", "neurons": "#009E73", "residual": "#CC79A7"}


def _fmt(value: float | None) -> str:
    """Four significant digits with a sign (patching effects span orders of magnitude)."""
    return "—" if value is None or math.isnan(value) else f"{value:+.4g}"


def _cell(value: float, scale: float, title: str) -> str:
    return (f'<td style="background:{css_rgb(relevance_rgb(value, scale))}" '
            f'title="{html_text(title)}"></td>')


def grid(caption: str, rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]],
         truth: Sequence[Sequence[float]] | None = None, *, vertical_columns: bool = False) -> str:
    """A heatmap table: one row per label of ``rows``, one coloured cell per column; a cell's title gives the
    value (and the truth)."""
    scale = symmetric_scale(v for row in values for v in row)
    cls = ' class="tok"' if vertical_columns else ""
    head = "".join(f"<th{cls}>{html_text(c)}</th>" for c in columns)
    body = []
    for r, label in enumerate(rows):
        cells = []
        for c, value in enumerate(values[r]):
            title = f"{label}, {columns[c]}: estimate {_fmt(value)}"
            if truth is not None:
                title += f", truth {_fmt(truth[r][c])}"
            cells.append(_cell(value, scale, title))
        body.append(f"<tr><th>{html_text(label)}</th>{''.join(cells)}</tr>")
    return (f'<table class="grid"><caption>{html_text(caption)} (scale ±{scale:.3g})</caption>'
            f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def bars(caption: str, labels: Sequence[str], values: Sequence[float], width: int = 420) -> str:
    """Horizontal bars from a centre line, one per label (red positive, blue negative), as inline SVG."""
    scale = symmetric_scale(values) or 1.0
    row, left = 16, 70
    half = (width - left - 60) / 2
    centre = left + half
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(labels) + 24}" '
             f'role="img" aria-label="{html_text(caption)}"><title>{html_text(caption)}</title>']
    for i, (label, value) in enumerate(zip(labels, values)):
        y = 18 + i * row
        length = 0.0 if math.isnan(value) else abs(value) / scale * half
        x = centre if value >= 0 else centre - length
        colour = css_rgb(POSITIVE_RGB if value >= 0 else NEGATIVE_RGB)
        parts.append(f'<text x="{left - 6}" y="{y + 10}" text-anchor="end">{html_text(label)}</text>'
                     f'<rect x="{x:.1f}" y="{y}" width="{length:.1f}" height="{row - 4}" fill="{colour}">'
                     f"<title>{html_text(f'{label}: {_fmt(value)}')}</title></rect>"
                     f'<text x="{width - 4}" y="{y + 10}" text-anchor="end">{html_text(_fmt(value))}</text>')
    parts.append(f'<line x1="{centre}" y1="14" x2="{centre}" y2="{18 + row * len(labels)}" stroke="#333"/>'
                 f'<text x="{left}" y="11">{html_text(caption)}</text></svg>')
    return "".join(parts)


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high == low:
        low, high = low - 1.0, high + 1.0
    pad = (high - low) * 0.05
    return low - pad, high + pad


def scatter(points: dict[str, list[tuple[float, float]]], size: int = 320) -> str:
    """Estimate (x) against truth (y) per level, with the diagonal y = x, as inline SVG."""
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    low, high = _axis_range(xs + ys)
    margin = 40

    def at(value: float, flip: bool) -> float:
        t = (value - low) / (high - low)
        return margin + (1 - t if flip else t) * (size - 2 * margin)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 90}" height="{size}" role="img" '
             'aria-label="estimate against true patching effect"><title>estimate against true patching effect'
             "</title>",
             f'<rect x="{margin}" y="{margin}" width="{size - 2 * margin}" height="{size - 2 * margin}" '
             'fill="none" stroke="#999"/>',
             f'<line x1="{at(low, False):.1f}" y1="{at(low, True):.1f}" x2="{at(high, False):.1f}" '
             f'y2="{at(high, True):.1f}" stroke="#bbb" stroke-dasharray="4 3"/>',
             f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle">estimate</text>',
             f'<text x="12" y="{size / 2}" transform="rotate(-90 12 {size / 2})" text-anchor="middle">truth</text>',
             f'<text x="{margin}" y="{size - margin + 14}">{html_text(f"{low:.3g}")}</text>',
             f'<text x="{size - margin}" y="{size - margin + 14}" text-anchor="end">{html_text(f"{high:.3g}")}</text>']
    for number, (level, pts) in enumerate(points.items()):
        colour = _LEVEL_COLOURS.get(level, _CURVE_COLOURS[number % len(_CURVE_COLOURS)])
        for x, y in pts:
            if math.isfinite(x) and math.isfinite(y):
                parts.append(f'<circle cx="{at(x, False):.1f}" cy="{at(y, True):.1f}" r="2.5" fill="{colour}" '
                             'fill-opacity="0.7"/>')
        parts.append(f'<text x="{size - 30}" y="{margin + 14 * number + 10}" fill="{colour}">{html_text(level)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _components_table(result: "PatchResult", top_k: int) -> str:
    top = result.components()[:top_k]
    verified = result.verification is not None
    scale = symmetric_scale(c.estimate for c in top)
    rows = "".join(
        f'<tr><td class="n">{rank}</td><td>{html_text(c.name)}</td><td>{html_text(c.kind)}</td>'
        f'<td class="n" style="background:{css_rgb(relevance_rgb(c.estimate, scale))}">{_fmt(c.estimate)}</td>'
        + (f'<td class="n">{_fmt(c.truth)}</td>' if verified else "") + "</tr>"
        for rank, c in enumerate(top, 1)
    )
    truth_head = "<th>truth</th>" if verified else ""
    return (f"<table><caption>top {len(top)} components by |estimate|</caption><thead><tr><th>rank</th>"
            f"<th>component</th><th>kind</th><th>estimate</th>{truth_head}</tr></thead><tbody>{rows}</tbody></table>")


def patch_html(result: "PatchResult", *, top_k: int = 20, full_page: bool = True) -> str:
    """The patch report of ``result`` (see the module docstring)."""
    estimates = {level: values.tolist() for level, values in result.estimates.items()}
    truth = {} if result.verification is None else {k: v.tolist() for k, v in result.verification.truth.items()}
    p = class_prefix("patch", result.method, result.direction, estimates, truth, top_k)
    metric = result.metric
    clean, corrupted = (metric["clean"], metric["corrupted"]) if not result.setup.batch else \
        (sum(metric["clean"]) / len(metric["clean"]), sum(metric["corrupted"]) / len(metric["corrupted"]))
    pairs = len(result.setup.pairs)
    parts = [f'<div class="{p}"><h2>Relevance patching ({html_text(result.method)}, {html_text(result.direction)})'
             "</h2>",
             f'<p>metric on the clean prompt {html_text(_fmt(clean))}, on the corrupted prompt '
             f"{html_text(_fmt(corrupted))}{html_text(f' (means over {pairs} pairs)' if result.setup.batch else '')}. "
             "Each estimate is the metric's change when that component's activation is patched; red raises the "
             "metric, blue lowers it.</p>"]
    layers = [f"layer {i}" for i in range(len(result.setup.sites.layers))]
    if "heads" in estimates:
        heads = [f"H{h}" for h in range(result.setup.sites.num_heads)]
        parts.append(grid("attention heads: layer × head", layers, heads, estimates["heads"], truth.get("heads")))
    if "mlps" in estimates:
        parts.append(bars("MLP outputs per layer", layers, estimates["mlps"]))
    if "residual" in estimates:
        tokens = [token_repr(t) for t in result.tokens[0]]
        parts.append(grid("residual stream: layer × position", layers, tokens, estimates["residual"],
                          truth.get("residual"), vertical_columns=True))
    parts.append(_components_table(result, top_k))
    if result.verification is not None:
        agreement = result.verification.agreement
        rows = "".join(f"<tr><td>{html_text(level)}</td><td class='n'>{_fmt(a.pearson)}</td>"
                       f"<td class='n'>{_fmt(a.spearman)}</td><td class='n'>{a.top_k_overlap:.2f} (k={a.k})</td>"
                       f"<td class='n'>{a.n}</td></tr>" for level, a in agreement.items())
        parts.append("<table><caption>agreement with real activation patching</caption><thead><tr><th>level</th>"
                     "<th>Pearson</th><th>Spearman</th><th>top-k overlap</th><th>components</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
        points = {level: list(zip(result.estimates[level].flatten().tolist(), values.flatten().tolist()))
                  for level, values in result.verification.truth.items()}
        parts.append(scatter(points))
    parts.append("</div>")
    css = f"<style>{HEATMAP_CSS.format(p=p)}{_CSS.format(p=p)}</style>"
    return document(css, "".join(parts), "Relevance patching", full_page)


# ------------------------------------------------------------------------------------------------ circuits
def _rows_of(circuit: "Circuit") -> list[tuple[int, int]]:
    from ..patching.sites import component_order

    level = {"embedding": "embedding", "head": "heads", "mlp": "mlps", "neuron": "neurons"}
    return [component_order(level[n.kind], n.layer) for n in circuit.nodes]


def graph_svg(circuit: "Circuit", width: int = 720) -> str:
    """The kept nodes in rows (the embedding on top, then per layer its heads and its MLP), the edges between
    them: width by |value|, red positive, blue negative. Empty layers are left out."""
    keys = _rows_of(circuit)
    rows = sorted(set(keys))
    row_height, top = 56, 30
    height = top + row_height * max(1, len(rows))
    members: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    where: dict[int, tuple[float, float]] = {}
    gutter = 110
    labels = []
    for r, key in enumerate(rows):
        row_y = top + r * row_height + 10.0
        for j, member in enumerate(members[key]):
            where[member] = (gutter + (j + 1) * (width - gutter) / (len(members[key]) + 1), row_y)
        name = "embedding" if key[0] < 0 else f"layer {key[0]} " + ("heads" if key[1] == 1 else "MLP")
        labels.append(f'<text x="4" y="{row_y + 4:.1f}">{html_text(name)}</text>')
    node_scale = symmetric_scale(n.estimate for n in circuit.nodes)
    edge_scale = symmetric_scale(e.value for e in circuit.edges) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="circuit graph"><title>circuit: {len(circuit.nodes)} nodes, {len(circuit.edges)} edges'
             "</title>", *labels]
    for edge in sorted(circuit.edges, key=lambda e: abs(e.value)):
        (x1, y1), (x2, y2) = where[edge.source], where[edge.target]
        strength = abs(edge.value) / edge_scale
        colour = css_rgb(POSITIVE_RGB if edge.value >= 0 else NEGATIVE_RGB)
        name = f"{circuit.nodes[edge.source].name} → {circuit.nodes[edge.target].name}: {_fmt(edge.value)}"
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}" '
                     f'stroke-width="{0.5 + 5 * strength:.2f}" stroke-opacity="{0.2 + 0.7 * strength:.2f}">'
                     f"<title>{html_text(name)}</title></line>")
    for i, node in enumerate(circuit.nodes):
        x, y = where[i]
        fill = css_rgb(relevance_rgb(node.estimate, node_scale))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="{fill}" stroke="#333">'
                     f"<title>{html_text(f'{node.name}: estimate {_fmt(node.estimate)}')}</title></circle>"
                     f'<text x="{x:.1f}" y="{y + 22:.1f}" text-anchor="middle">{html_text(node.name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(curves: dict[str, list[tuple[int, float]]], threshold: float, width: int = 560,
               height: int = 300) -> str:
    """Recovery against circuit size N for each ranking, with the threshold as a dashed line, as inline SVG."""
    sizes = [n for curve in curves.values() for n, _ in curve] or [0, 1]
    values = [r for curve in curves.values() for _, r in curve] + [0.0, 1.0, threshold]
    low, high = _axis_range(values)
    largest = max(max(sizes), 1)
    left, right, top, bottom = 48, 130, 16, 36

    def x(n: float) -> float:
        return left + n / largest * (width - left - right)

    def y(r: float) -> float:
        return top + (1 - (r - low) / (high - low)) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             'aria-label="recovery curves"><title>fraction of the clean − corrupted gap recovered by the top-N '
             "circuit</title>",
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>']
    for level_value in (0.0, 1.0):
        parts.append(f'<line x1="{left}" y1="{y(level_value):.1f}" x2="{width - right}" y2="{y(level_value):.1f}" '
                     f'stroke="#ccc"/><text x="{left - 4}" y="{y(level_value) + 4:.1f}" text-anchor="end">'
                     f"{level_value:g}</text>")
    parts.append(f'<line x1="{left}" y1="{y(threshold):.1f}" x2="{width - right}" y2="{y(threshold):.1f}" '
                 f'stroke="#555" stroke-dasharray="5 4"/><text x="{left - 4}" y="{y(threshold) + 4:.1f}" '
                 f'text-anchor="end">{threshold:g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">circuit size N '
                 f"(0 … {largest})</text>")
    for number, (name, curve) in enumerate(curves.items()):
        colour = _RANDOM_COLOUR if name == "random" else _CURVE_COLOURS[number % len(_CURVE_COLOURS)]
        path = " ".join(f"{x(n):.1f},{y(r):.1f}" for n, r in curve if math.isfinite(r))
        dash = ' stroke-dasharray="2 3"' if name == "random" else ""
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
                     f"<title>{html_text(name)}</title></polyline>"
                     f'<text x="{width - right + 8}" y="{top + 14 + 16 * number}" fill="{colour}">'
                     f"{html_text(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def circuit_html(circuit: "Circuit", *, full_page: bool = True) -> str:
    """The circuit page: prompt, metric, the smallest N per ranking, the graph and the curves."""
    p = class_prefix("circuit", circuit.method, circuit.curves, [n.name for n in circuit.nodes],
                     [(e.source, e.target, e.value) for e in circuit.edges], circuit.tokens)
    smallest = circuit.smallest()
    rows = "".join(f"<tr><td>{html_text(name)}</td><td class='n'>{'—' if n is None else n}</td></tr>"
                   for name, n in smallest.items())
    prompt = "".join(circuit.tokens)
    parts = [f'<div class="{p}"><h2>Circuit ({html_text(circuit.method)}, levels '
             f"{html_text(', '.join(circuit.levels))})</h2>",
             f"<p>clean prompt: <code>{html_text(token_repr(prompt))}</code>; metric clean "
             f"{html_text(_fmt(circuit.metric['clean']))}, corrupted {html_text(_fmt(circuit.metric['corrupted']))}."
             "</p>",
             f"<table><caption>smallest N recovering {circuit.threshold:.0%} of the gap</caption><thead><tr>"
             f"<th>ranking</th><th>N</th></tr></thead><tbody>{rows}</tbody></table>",
             curves_svg(circuit.curves, circuit.threshold),
             f"<p class='note'>The {len(circuit.nodes)} kept nodes of the {html_text(circuit.method)} ranking "
             "(colour: estimated effect) and the relevance between them (edge width: |value|; red: patching the "
             "upstream node raises the downstream node's contribution to the metric, blue: lowers it).</p>",
             graph_svg(circuit), "</div>"]
    css = f"<style>{HEATMAP_CSS.format(p=p)}{_CSS.format(p=p)}</style>"
    return document(css, "".join(parts), "Circuit", full_page)
