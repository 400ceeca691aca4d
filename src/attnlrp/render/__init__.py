"""Rendering of per-token relevance as HTML or terminal text.

Pure functions on plain data (token strings and float scores); no dependency on the
rest of attnlrp. All escaping of token/prompt text lives in `escape`.
"""

from .colors import NAN_RGB, NEGATIVE_RGB, POSITIVE_RGB, WHITE, relevance_rgb, symmetric_scale
from .escape import html_text, html_token, terminal_text, token_repr
from .generation_html import generation_html, script_json
from .html import heatmap_html
from .terminal import heatmap_terminal, ranking_table, resolve_color, should_color

__all__ = [
    "heatmap_html",
    "generation_html",
    "script_json",
    "heatmap_terminal",
    "ranking_table",
    "should_color",
    "resolve_color",
    "relevance_rgb",
    "symmetric_scale",
    "html_text",
    "html_token",
    "terminal_text",
    "token_repr",
    "WHITE",
    "POSITIVE_RGB",
    "NEGATIVE_RGB",
    "NAN_RGB",
]
