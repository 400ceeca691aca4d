"""Self-contained HTML heatmap of per-token relevance (standalone page or Jupyter fragment).

No JavaScript and no external resources, so a saved report opens anywhere, offline,
and is safe to share. All text goes through `escape`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from .colors import NEGATIVE_RGB, POSITIVE_RGB, relevance_rgb, symmetric_scale
from .escape import html_text, html_token, token_repr
from .ranking import bottom_indices, check_pairs, format_score, rank_of, ranked_scores, top_indices

__all__ = ["heatmap_html", "HEATMAP_CSS", "class_prefix", "css_rgb"]

#: The heatmap page's style sheet; ``{p}`` is the class prefix that scopes it (the other views extend it).
HEATMAP_CSS = """
.{p}{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;color:#111;background:#fff;
  max-width:60rem;line-height:1.5}}
.{p} h2{{font-size:1.15rem;margin:.4rem 0}}
.{p} table{{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}}
.{p} th,.{p} td{{border:1px solid #ddd;padding:.15rem .5rem;text-align:left}}
.{p} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.{p} code{{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}}
.{p} .heat{{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
  word-break:break-word;border:1px solid #ddd;padding:.5rem;margin:.5rem 0}}
.{p} .heat span{{color:#000;border-radius:2px}}
.{p} .legend{{display:flex;align-items:center;gap:.5rem;font-size:.85rem}}
.{p} .bar{{width:12rem;height:.8rem;border:1px solid #ccc}}
"""


def css_rgb(c: tuple[int, int, int]) -> str:
    """A colour as CSS ``rgb(r,g,b)``."""
    return f"rgb({c[0]},{c[1]},{c[2]})"


def class_prefix(*parts: object) -> str:
    """A CSS class for one view: deterministic (same input → same output, diffable) yet distinct across
    different views, so several views embedded in one page do not restyle each other."""
    return "attnlrp-" + hashlib.sha1(repr(parts).encode("utf-8", "backslashreplace")).hexdigest()[:10]


def _rank_table(
    caption: str, idx: list[int], tokens: list[str], scores: list[float], ranks: dict[int, int], scale: float
) -> str:
    rows = "".join(
        f'<tr><td class="n">{ranks[i]}</td><td><code>{html_text(token_repr(tokens[i]))}</code></td>'
        f'<td class="n" style="background:{css_rgb(relevance_rgb(scores[i], scale))}">'
        f"{format_score(scores[i])}</td></tr>"
        for i in idx
    )
    return (
        f"<table><caption>{html_text(caption)}</caption>"
        f"<thead><tr><th>rank</th><th>token</th><th>relevance</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def heatmap_html(
    tokens: Sequence[str],
    scores: Sequence[float],
    *,
    title: str = "",
    details: Mapping[str, str] | None = None,
    top_k: int = 10,
    full_page: bool = True,
    exclude: Sequence[bool] | None = None,
) -> str:
    """Render tokens coloured by relevance, with a details table, legend and top/bottom tables.

    ``exclude``: tokens (True) shown with their relevance but left out of the colour scale and the tables (a
    BOS token's sink relevance would otherwise set the scale); their colour saturates beyond the scale.

    `full_page=True` returns a standalone HTML5 document; `False` returns a fragment for
    Jupyter ``_repr_html_`` whose CSS is scoped under a unique class so it cannot leak.
    """
    toks, vals = check_pairs(tokens, scores)
    kept = ranked_scores(vals, exclude)
    scale = symmetric_scale(kept)
    p = class_prefix(toks, vals, title, sorted((details or {}).items()), top_k)

    parts = [f'<div class="{p}">']
    if title:
        parts.append(f"<h2>{html_text(title)}</h2>")
    if details:
        rows = "".join(
            f"<tr><th>{html_text(str(k))}</th><td>{html_text(str(v))}</td></tr>" for k, v in details.items()
        )
        parts.append(f'<table class="details"><tbody>{rows}</tbody></table>')

    spans = "".join(
        f'<span style="background:{css_rgb(relevance_rgb(s, scale))}" '
        f'title="{html_text(f"{token_repr(t)} {format_score(s)}")}">{html_token(t)}</span>'
        for t, s in zip(toks, vals)
    )
    # Inline pre-wrap as well as in CSS: some notebook frontends strip <style> blocks.
    parts.append(f'<div class="heat" style="white-space:pre-wrap">{spans}</div>')

    gradient = f"linear-gradient(to right,{css_rgb(NEGATIVE_RGB)},#fff,{css_rgb(POSITIVE_RGB)})"
    parts.append(
        f'<div class="legend"><span>negative {html_text(format_score(-scale))}</span>'
        f'<span class="bar" style="background:{gradient}"></span>'
        f"<span>positive {html_text(format_score(scale))}</span>"
        f"<span>(white = 0; scale = max |relevance| = {scale:.3g})</span></div>"
    )

    ranks = rank_of(kept)
    top = top_indices(kept, top_k)
    parts.append(_rank_table(f"top {len(top)} tokens by relevance", top, toks, vals, ranks, scale))
    bottom = bottom_indices(kept, 3, exclude=top)
    if bottom:
        parts.append(_rank_table("most negative tokens", bottom, toks, vals, ranks, scale))
    parts.append("</div>")

    return document(f"<style>{HEATMAP_CSS.format(p=p)}</style>", "".join(parts), title or "AttnLRP relevance", full_page)


def document(css: str, body: str, title: str, full_page: bool) -> str:
    """A standalone HTML5 page around ``css`` + ``body`` (``title`` escaped here), or the fragment alone."""
    if not full_page:
        return css + body
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_text(title)}</title>\n{css}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
