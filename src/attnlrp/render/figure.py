"""Paper-ready figures with matplotlib (PDF, PNG, SVG; no LaTeX): a text heatmap and a generation matrix.

The text heatmap draws every token (or word) as a box coloured by its relevance, wrapped into lines like running
text, with a colour bar; the generation matrix draws generated tokens (rows) against the tokens before them
(columns). Both use the HTML view's palette (blue for negative, white at zero, red for positive) with a scale
symmetric around zero, so that the colour's hue is the sign and its strength the magnitude. Text stays text: PDFs
embed TrueType fonts (``pdf.fonttype`` 42, what journals ask for) and SVGs keep ``<text>`` elements; token text is
never read as mathtext, so ``$`` and ``_`` appear as typed.

Needs matplotlib (``pip install 'attnlrp[vision]'``); without it a
:class:`~attnlrp.errors.MissingExtraError` names the extra. Pure functions on plain data, like the other
renderers: :meth:`attnlrp.Explanation.save_figure` and :meth:`attnlrp.GenerationExplanation.save_figure` call them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Sequence

from ..extras import require
from .colors import NAN_RGB, NEGATIVE_RGB, POSITIVE_RGB, WHITE, symmetric_scale

if TYPE_CHECKING:
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure

__all__ = ["relevance_cmap", "text_heatmap_figure", "generation_figure", "save_figure", "display_token"]

#: rcParams while saving: TrueType fonts embedded in PDF/PS (selectable, searchable text), text kept in SVG
VECTOR_TEXT = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


def _matplotlib() -> Any:
    return require("matplotlib", "vision")


def relevance_cmap() -> "Colormap":
    """The diverging palette of the HTML and terminal views: blue (−) → white (0) → red (+); NaN is grey."""
    colors = require("matplotlib.colors", "vision")
    cmap = colors.LinearSegmentedColormap.from_list(
        "attnlrp", [tuple(c / 255 for c in rgb) for rgb in (NEGATIVE_RGB, WHITE, POSITIVE_RGB)]
    )
    return cmap.with_extremes(bad=tuple(c / 255 for c in NAN_RGB))


def display_token(token: str) -> str:
    """A token as a figure shows it: surrounding whitespace dropped (gaps between boxes show it), a token of only
    whitespace as a visible mark (↵ for a line break, ␣ for spaces, ⇥ for a tab)."""
    body = token.strip()
    if body:
        return body
    if "\n" in token or "\r" in token:
        return "↵"
    if "\t" in token:
        return "⇥"
    return "␣" if token else "∅"


@dataclass(frozen=True)
class _Item:
    text: str
    relevance: float
    gap_before: bool  # a new word starts here: a space between this box and the one before
    break_before: bool  # the token starts a new line (it begins with a line break, or a new segment)
    gid: str


def _items(tokens: Sequence[str], relevance: Sequence[float], word_ids: Sequence[int] | None,
           special: Sequence[bool] | None, gid: str) -> list[_Item]:
    items = []
    for i, (token, value) in enumerate(zip(tokens, relevance)):
        if i == 0:
            gap = False
        elif word_ids is not None and len(word_ids) == len(tokens):
            gap = word_ids[i] != word_ids[i - 1]
        else:
            gap = token[:1].isspace() or bool(special and (special[i] or special[i - 1]))
        # a line break inside the text: after a token of only whitespace with a newline (shown as ↵), before a
        # token that starts with one (the first token of another segment)
        after_newline = i > 0 and not tokens[i - 1].strip() and any(c in tokens[i - 1] for c in "\n\r")
        starts_line = bool(token.strip()) and token.lstrip(" \t")[:1] in ("\n", "\r")
        items.append(_Item(display_token(token), float(value), gap, i > 0 and (after_newline or starts_line),
                           f"{gid}-{i}"))
    return items


def _color(cmap: "Colormap", value: float, scale: float) -> tuple[float, float, float, float]:
    if math.isnan(value):
        return cmap(float("nan"))
    if scale <= 0 or not math.isfinite(scale):
        return cmap(0.5)
    return cmap(0.5 + 0.5 * max(-1.0, min(1.0, value / scale)))


def _colorbar(figure: "Figure", cmap: "Colormap", scale: float, rect: Sequence[float], fontsize: float,
              label: str, orientation: str = "horizontal") -> None:
    colors = require("matplotlib.colors", "vision")
    cm = require("matplotlib.cm", "vision")
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    axis = figure.add_axes((rect[0], rect[1], rect[2], rect[3]))
    bar = figure.colorbar(cm.ScalarMappable(norm=colors.Normalize(-scale, scale), cmap=cmap), cax=axis,
                          orientation=orientation)
    bar.set_ticks([-scale, 0.0, scale])
    bar.set_ticklabels([f"{-scale:+.3g}", "0", f"{scale:+.3g}"])
    bar.ax.tick_params(labelsize=fontsize * 0.8, length=2, width=0.5)
    bar.outline.set_linewidth(0.5)
    bar.set_label(label, fontsize=fontsize * 0.85)


def text_heatmap_figure(
    tokens: Sequence[str],
    relevance: Sequence[float],
    *,
    word_ids: Sequence[int] | None = None,
    special: Sequence[bool] | None = None,
    title: str | None = None,
    width: float = 6.0,
    fontsize: float = 10.0,
    scale: float | None = None,
    colorbar: bool = True,
    label: str = "relevance",
    gid: str = "token",
) -> "Figure":
    """Tokens as boxes coloured by relevance, wrapped into lines of ``width`` inches, with a colour bar.

    ``word_ids`` (one per token) puts a space between words and none between the pieces of one word; without them
    a token that starts with whitespace (or is next to a special token) starts a word. ``scale``: the |relevance|
    of full colour (default: the largest |relevance| shown). Each box (a ``Rectangle``) and its text have the
    artist id ``f"{gid}-{i}"`` for token ``i``.
    """
    _matplotlib()
    figure_module = require("matplotlib.figure", "vision")
    agg = require("matplotlib.backends.backend_agg", "vision")
    patches = require("matplotlib.patches", "vision")
    transforms = require("matplotlib.transforms", "vision")
    font_manager = require("matplotlib.font_manager", "vision")

    values = [float(v) for v in relevance]
    if len(values) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} relevance values")
    scale = symmetric_scale(values) if scale is None else float(scale)
    cmap = relevance_cmap()
    items = _items(tokens, values, word_ids, special, gid)

    figure = figure_module.Figure(figsize=(width, 1.0), dpi=100)
    renderer = agg.FigureCanvasAgg(figure).get_renderer()
    font = font_manager.FontProperties(size=fontsize)
    to_points = 72.0 / figure.dpi

    def measure(text: str) -> tuple[float, float, float]:
        w, h, d = renderer.get_text_width_height_descent(text, font, ismath=False)
        return w * to_points, h * to_points, d * to_points

    _, full_height, descent = measure("ÅgjÉ|()")
    pad_x, pad_y = 0.18 * fontsize, 0.12 * fontsize
    box_height = full_height + 2 * pad_y
    line_height = box_height + 0.3 * fontsize
    space = measure("a a")[0] - measure("aa")[0]
    margin = 0.25 * fontsize
    line_width = width * 72.0 - 2 * margin

    # ---------------------------------------------------------------- layout: lines of word groups
    boxes = [measure(item.text)[0] + 2 * pad_x for item in items]
    words: list[list[int]] = []
    for i, item in enumerate(items):
        if not words or item.gap_before or item.break_before:
            words.append([])
        words[-1].append(i)
    placed: list[tuple[int, float, int]] = []  # (item, x, line)
    line, x = 0, 0.0
    for word in words:
        first = items[word[0]]
        if first.break_before and placed:
            line, x = line + 1, 0.0
        gap = space if (first.gap_before and x > 0) else 0.0
        word_width = sum(boxes[i] for i in word)
        if x > 0 and x + gap + word_width > line_width:
            line, x, gap = line + 1, 0.0, 0.0
        x += gap
        for i in word:
            if x > 0 and x + boxes[i] > line_width:  # a word longer than a line breaks between its tokens
                line, x = line + 1, 0.0
            placed.append((i, x, line))
            x += boxes[i]
    lines = (max(p[2] for p in placed) + 1) if placed else 0
    # a short text gets a figure as wide as it (and its title and colour bar), not the full width
    used = max((x + boxes[i] for i, x, _ in placed), default=0.0)
    narrowest = max(used, measure(title)[0] if title else 0.0, 160.0 if colorbar else 0.0)
    width = min(width, (narrowest + 2 * margin) / 72.0)

    title_height = (measure(title)[1] + 0.8 * fontsize) if title else 0.0
    bar_height = 4.6 * fontsize if colorbar else 0.0  # gap, bar, tick labels and the label under it
    height = margin + title_height + lines * line_height + bar_height + margin
    figure.set_size_inches(width, max(height, 2 * margin + fontsize) / 72.0)
    points = transforms.Affine2D().scale(1 / 72.0) + figure.dpi_scale_trans
    top = height - margin - title_height

    if title:
        figure.text(margin, height - margin, title, transform=points, fontsize=fontsize, va="top",
                    parse_math=False, fontweight="bold")
    for i, x, row in placed:
        item = items[i]
        baseline = top - row * line_height - pad_y - (full_height - descent)
        box = patches.Rectangle((margin + x, baseline - descent - pad_y), boxes[i], box_height, transform=points,
                                facecolor=_color(cmap, item.relevance, scale), edgecolor="none", linewidth=0)
        box.set_gid(item.gid)
        figure.add_artist(box)
        text = figure.text(margin + x + pad_x, baseline, item.text, transform=points, fontproperties=font,
                           va="baseline", ha="left", color="black", parse_math=False)
        text.set_gid(item.gid)
    if colorbar:
        bar_width = min(max(0.45 * width * 72.0, 140.0), 220.0, width * 72.0 - 2 * margin - 3 * fontsize)
        rect = ((width * 72.0 - bar_width) / 2 / (width * 72.0), (margin + 2.9 * fontsize) / height,
                bar_width / (width * 72.0), 0.55 * fontsize / height)
        _colorbar(figure, cmap, scale, rect, fontsize, label)
    return figure


def generation_figure(
    tokens: Sequence[str],
    matrix: Sequence[Sequence[float]],
    prompt_length: int,
    *,
    title: str | None = None,
    fontsize: float = 8.0,
    scale: float | None = None,
    normalize_rows: bool = False,
    cell: float | None = None,
    max_label: int = 16,
) -> "Figure":
    """Generated tokens (rows) against prompt + answer (columns), coloured by relevance, with a colour bar.

    Cells at or after a row's own token (never inputs for it) are grey; a line separates the prompt from the
    answer. ``normalize_rows`` divides each row by its largest |relevance| (rows of very different size stay
    readable; the colour bar then reads "relevance / row maximum"). ``cell``: the side of a cell in points.
    """
    _matplotlib()
    figure_module = require("matplotlib.figure", "vision")
    np = require("numpy", "vision")

    grid = np.array(matrix, dtype=np.float64).reshape(len(matrix), len(tokens))
    rows, columns = grid.shape
    for k in range(rows):
        grid[k, prompt_length + k:] = np.nan  # the token itself and what follows it: not inputs of this row
    if normalize_rows:
        for k in range(rows):
            peak = np.nanmax(np.abs(grid[k])) if np.isfinite(grid[k]).any() else 0.0
            if peak > 0:
                grid[k] /= peak
    finite = grid[np.isfinite(grid)]
    scale = (float(np.abs(finite).max()) if finite.size else 0.0) if scale is None else float(scale)
    shown_scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    cmap = relevance_cmap().with_extremes(bad="#ececec")  # cells that are not inputs of their row

    cell = cell if cell is not None else 1.5 * fontsize
    label_room = 0.62 * fontsize * min(max_label, max((len(display_token(t)) for t in tokens), default=1)) + 8
    width = (label_room + columns * cell + 6 * fontsize) / 72.0
    height = (label_room + rows * cell + (2.5 * fontsize if title else 0.0) + fontsize) / 72.0
    figure = figure_module.Figure(figsize=(max(width, 2.5), max(height, 1.5)), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(grid, cmap=cmap, vmin=-shown_scale, vmax=shown_scale, interpolation="nearest",
                        aspect="equal")

    def label(token: str) -> str:
        text = display_token(token)
        return text if len(text) <= max_label else text[: max_label - 1] + "…"

    axis.set_xticks(range(columns), [label(t) for t in tokens], rotation=90, fontsize=fontsize, parse_math=False)
    axis.set_yticks(range(rows), [label(t) for t in tokens[prompt_length:prompt_length + rows]], fontsize=fontsize,
                    parse_math=False)
    axis.tick_params(length=0, pad=2)
    axis.set_xlabel("prompt and answer (inputs)", fontsize=fontsize)
    axis.set_ylabel("generated token", fontsize=fontsize)
    if 0 < prompt_length < columns:
        axis.axvline(prompt_length - 0.5, color="black", linewidth=0.6)
    for spine in axis.spines.values():
        spine.set_linewidth(0.5)
    if title:
        axis.set_title(title, fontsize=fontsize * 1.1, loc="left")
        axis.title.set_parse_math(False)
    bar = figure.colorbar(image, ax=axis, shrink=min(1.0, max(0.3, 6 / max(rows, 1))), pad=0.02, aspect=15)
    bar.set_ticks([-shown_scale, 0.0, shown_scale])
    bar.set_ticklabels([f"{-shown_scale:+.3g}", "0", f"{shown_scale:+.3g}"])
    bar.ax.tick_params(labelsize=fontsize * 0.9, length=2, width=0.5)
    bar.outline.set_linewidth(0.5)
    bar.set_label("relevance / row maximum" if normalize_rows else "relevance", fontsize=fontsize)
    return figure


def save_figure(figure: "Figure", target: str | os.PathLike | IO[bytes], *, format: str | None = None,
                dpi: int = 300) -> None:
    """Write ``figure`` to ``target`` (a path: the format from its suffix, ``.pdf``, ``.png``, ``.svg``…; or a
    binary file with ``format``) with vector text and, for PDFs, no creation date (the same figure, the same
    bytes)."""
    matplotlib = _matplotlib()
    if format is None:
        if isinstance(target, (str, os.PathLike)):
            suffix = os.path.splitext(os.fspath(target))[1].lstrip(".").lower()
            if not suffix:
                raise ValueError(f"cannot tell the format of {os.fspath(target)!r}: give it a suffix (.pdf, .png, "
                                 ".svg) or format=")
            format = suffix
        else:
            raise ValueError("writing to a file object needs format= ('pdf', 'png', 'svg', …)")
    kwargs: dict[str, Any] = {}
    if format == "pdf":
        kwargs["metadata"] = {"CreationDate": None}
    elif format == "svg":
        kwargs["metadata"] = {"Date": None}
    with matplotlib.rc_context(VECTOR_TEXT):
        figure.savefig(target, format=format, dpi=dpi, facecolor="white", **kwargs)
