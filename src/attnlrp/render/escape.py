"""The one place where user/tokenizer text is made safe for output.

Tokens and prompts come from untrusted sources (user input, tokenizer vocabularies,
files). Every renderer routes them through these functions so that no markup, ANSI
sequence, bidi override or lone surrogate reaches an HTML page or a terminal raw.
"""

from __future__ import annotations

import html
import re

__all__ = ["html_text", "markdown_cell", "terminal_text", "token_repr", "html_token"]

# C0 controls (incl. ESC), DEL, C1 controls, bidi marks/embeddings/overrides/isolates,
# line/paragraph separators (they break lines in some terminals) and lone surrogates
# (they cannot be encoded and would crash a write).
_UNSAFE = re.compile(
    "[\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028\\u2029"
    "\\u202a-\\u202e\\u2066-\\u2069\\ud800-\\udfff]"
)


def _visible_escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def html_text(s: str) -> str:
    """Escape text for HTML element content *and* quoted attribute values."""
    return html.escape(s, quote=True)


def markdown_cell(s: str) -> str:
    """Text for a Markdown table cell: no HTML (``<``, ``>``, ``&`` escaped), no cell break (``|``), no line
    break or control character; quotes stay as they are (they mean nothing outside an attribute)."""
    text = html.escape(s, quote=False).replace("|", "&#124;")
    return _UNSAFE.sub(lambda m: " " if m.group() in "\n\r\t" else _visible_escape(m.group()), text)


def terminal_text(s: str, *, newline: str = "↵", tab: str = "→") -> str:
    """Make `s` safe and visible in a terminal.

    Control, bidi and surrogate characters become visible escapes such as ``\\x1b`` or
    ``\\u202e`` so they can neither inject escape sequences nor reorder or hide text.
    `newline` / `tab` replace ``\\n`` / ``\\t``; they are inserted after escaping, so a
    caller may pass ``"↵\\n"`` to keep a real line break after the visible marker.
    """

    def sub(m: re.Match[str]) -> str:
        ch = m.group()
        if ch == "\n":
            return newline
        if ch == "\t":
            return tab
        return _visible_escape(ch)

    return _UNSAFE.sub(sub, s)


def token_repr(s: str) -> str:
    """Unambiguous, quoted, printable form of a token (Python ``repr``, then hardened).

    ``repr`` already escapes every non-printable character; `terminal_text` on top is a
    guarantee that does not depend on that. The result still needs `html_text` for HTML.
    """
    return terminal_text(repr(s))


def html_token(s: str) -> str:
    """HTML for a token shown in place: escaped, controls made visible, and each
    newline drawn as a visible ``↵`` followed by a real ``<br>``."""
    return "↵<br>".join(html_text(terminal_text(part, tab="\t")) for part in s.split("\n"))
