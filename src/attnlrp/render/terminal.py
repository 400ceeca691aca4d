"""Terminal rendering: an ANSI-coloured prompt line and a plain ranking table.

All token text goes through `escape.terminal_text`, so the only escape sequences in
the output are the colour codes written here.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import TextIO

from .colors import relevance_rgb, symmetric_scale
from .escape import terminal_text, token_repr
from .ranking import bottom_indices, check_pairs, format_score, rank_of, ranked_scores, top_indices

__all__ = ["heatmap_terminal", "ranking_table", "resolve_color", "should_color"]

_RESET = "\x1b[0m"
_BAR_WIDTH = 20


def _paint(text: str, rgb: tuple[int, int, int]) -> str:
    # Black foreground on a 24-bit background; reset per segment so colour never bleeds
    # past a token or across a line break.
    return f"\x1b[38;2;0;0;0;48;2;{rgb[0]};{rgb[1]};{rgb[2]}m{text}{_RESET}"


def heatmap_terminal(tokens: Sequence[str], scores: Sequence[float], *, color: bool = True,
                     exclude: Sequence[bool] | None = None) -> str:
    """The prompt with each token's background coloured by relevance.

    A newline inside a token is shown as ``↵`` and followed by a real line break. With
    ``color=False`` each token becomes a ``[token|+1.23]`` marker, for logs and pipes. ``exclude``: tokens (True)
    left out of the colour scale (still shown, saturated beyond it), e.g. a BOS token's sink relevance.
    """
    toks, vals = check_pairs(tokens, scores)
    scale = symmetric_scale(ranked_scores(vals, exclude))
    out: list[str] = []
    for tok, val in zip(toks, vals):
        # "\n" only survives escaping where we asked for it, i.e. after the visible ↵.
        lines = terminal_text(tok, newline="↵\n").split("\n")
        if color:
            rgb = relevance_rgb(val, scale)
            out.append("\n".join(_paint(seg, rgb) if seg else "" for seg in lines))
        else:
            out.append(f"[{''.join(lines)}|{format_score(val, 2)}]" + ("\n" if len(lines) > 1 else ""))
    return "".join(out)


def _width(s: str) -> int:
    """Display columns of `s` (wide East Asian characters take two, combining marks none)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s
    )


def ranking_table(tokens: Sequence[str], scores: Sequence[float], *, top_k: int = 10,
                  exclude: Sequence[bool] | None = None) -> str:
    """Aligned plain-text table of the top_k tokens (and up to 3 most negative ones).

    Tokens are shown repr-style so whitespace and invisible characters are unambiguous;
    the █ bar is proportional to |relevance| / max |relevance|. ``exclude``: tokens (True) left out of the
    ranking and of that maximum (e.g. a BOS token holding the attention sink's relevance).
    """
    toks, vals = check_pairs(tokens, scores)
    kept = ranked_scores(vals, exclude)
    scale = symmetric_scale(kept)
    ranks = rank_of(kept)
    top = top_indices(kept, top_k)
    bottom = bottom_indices(kept, 3, exclude=top)
    if not top:
        return "(no scored tokens)"

    def row(i: int) -> tuple[str, str, str, str]:
        n = round(_BAR_WIDTH * min(abs(vals[i]) / scale, 1.0)) if scale > 0 else 0
        return str(ranks[i]), token_repr(toks[i]), format_score(vals[i]), "█" * n

    head = ("rank", "token", "relevance", "")
    rows = [row(i) for i in top]
    extra = [row(i) for i in bottom]
    allrows = [head, *rows, *extra]
    w = [max(_width(r[c]) for r in allrows) for c in range(3)]

    def fmt(r: tuple[str, str, str, str]) -> str:
        tok_pad = " " * (w[1] - _width(r[1]))
        return f"{r[0]:>{w[0]}}  {r[1]}{tok_pad}  {r[2]:>{w[2]}}  {r[3]}".rstrip()

    lines = [fmt(head), *map(fmt, rows)]
    if extra:
        lines += ["most negative:", *map(fmt, extra)]
    return "\n".join(lines)


def should_color(stream: TextIO) -> bool:
    """Whether to emit ANSI colour on `stream`.

    FORCE_COLOR (non-empty, not "0"/"false") forces it on, e.g. in CI logs; otherwise
    colour needs a TTY that is not TERM=dumb and NO_COLOR unset or empty (https://no-color.org).
    """
    force = os.environ.get("FORCE_COLOR", "")
    if force and force.lower() not in ("0", "false"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def resolve_color(color: bool | None, stream: TextIO | None = None) -> bool:
    """``color`` when it is given; ``None`` (auto) means :func:`should_color` of ``stream`` (default: standard
    output, as looked up now). Every terminal view (``to_terminal()``) and the command line's ``--color auto``
    decide through this one function, so no colour code is written into a pipe or file unless asked for."""
    if color is None:
        return should_color(sys.stdout if stream is None else stream)
    return bool(color)
