"""HTML view of latent relevance: a layer × token heatmap of the residual stream, the most relevant neurons
and heads, and one head's relevance over the tokens. Static HTML, no script; all text escaped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .colors import relevance_rgb, symmetric_scale
from .escape import html_text, token_repr
from .html import HEATMAP_CSS, class_prefix, css_rgb, document, heatmap_html
from .ranking import format_score

if TYPE_CHECKING:  # pragma: no cover
    from ..latent import LatentRelevance

_GRID_CSS = """
.{p} table.grid td{{padding:.1rem .25rem;min-width:1.2rem;font-size:.75rem}}
.{p} table.grid th.tok{{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;
  font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.75rem}}
"""


def _cell(value: float, scale: float) -> str:
    return (f'<td style="background:{css_rgb(relevance_rgb(value, scale))}" '
            f'title="{html_text(format_score(value))}"></td>')


def residual_grid(tokens: list[str], residual: list[list[float]]) -> str:
    """Rows: layers (deepest on top, as relevance flows from the output down); columns: tokens."""
    scale = symmetric_scale(v for row in residual for v in row)
    head = "".join(f'<th class="tok">{html_text(token_repr(t))}</th>' for t in tokens)
    rows = "".join(
        f"<tr><th>layer {layer}</th>{''.join(_cell(v, scale) for v in residual[layer])}</tr>"
        for layer in reversed(range(len(residual)))
    )
    return (f'<table class="grid"><caption>residual stream relevance per layer and token '
            f"(scale ±{scale:.3g})</caption><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>")


def _score_table(caption: str, header: tuple[str, ...], rows: list[tuple]) -> str:
    scale = symmetric_scale(r[-1] for r in rows)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{html_text(str(v))}</td>' for v in row[:-1])
        + f'<td class="n" style="background:{css_rgb(relevance_rgb(row[-1], scale))}">{format_score(row[-1])}</td></tr>'
        for row in rows
    )
    heads = "".join(f"<th>{html_text(h)}</th>" for h in header)
    return f"<table><caption>{html_text(caption)}</caption><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


def latent_html(latents: "LatentRelevance", *, top_k: int = 10, head: tuple[int, int] | None = None,
                full_page: bool = True) -> str:
    residual = latents.residual.tolist()
    p = class_prefix("latent", latents.tokens, residual, top_k, head)
    neurons = latents.top_neurons(top_k)
    heads = latents.top_heads(top_k)
    if head is None:
        head = (heads[0].layer, heads[0].head) if heads else (0, 0)
    parts = [
        f'<div class="{p}"><h2>Latent relevance</h2>',
        residual_grid(latents.tokens, residual),
        _score_table(f"top {len(neurons)} MLP neurons (relevance summed over tokens)",
                     ("layer", "neuron", "max activation", "relevance"),
                     [(s.layer, s.neuron, f"{s.activation:.3g}", s.relevance) for s in neurons]),
        _score_table(f"top {len(heads)} attention heads (relevance summed over tokens)",
                     ("layer", "head", "relevance"), [(s.layer, s.head, s.relevance) for s in heads]),
        "</div>",
    ]
    head_view = heatmap_html(latents.tokens, latents.head(*head).tolist(),
                             title=f"head {head[1]} of layer {head[0]}: relevance over tokens", top_k=5,
                             full_page=False)
    css = f"<style>{HEATMAP_CSS.format(p=p)}{_GRID_CSS.format(p=p)}</style>"
    return document(css, "".join(parts) + head_view, "AttnLRP latent relevance", full_page)
