"""Rendering layer: escaping, colour oracle, ranking, HTML well-formedness."""

from __future__ import annotations

import io
import math
from html.parser import HTMLParser

import pytest

from attnlrp.render import (
    NAN_RGB,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    WHITE,
    heatmap_html,
    heatmap_terminal,
    ranking_table,
    relevance_rgb,
    should_color,
    symmetric_scale,
    terminal_text,
)

XSS = "<script>alert(1)</script>"
TOKENS = [" The", " capital", " of", " France", XSS, ' say "hi"', "\n is"]
SCORES = [0.1, 4.912, -0.2, 2.5, -3.0, 0.7, -1.0]


def _both_html(**kw):
    return [heatmap_html(TOKENS, SCORES, full_page=fp, **kw) for fp in (True, False)]


# ---------------------------------------------------------------- HTML escaping
def test_html_escapes_token_title_details():
    for out in _both_html(title=XSS, details={XSS: XSS, "model": "m"}):
        assert "<script" not in out
        assert "&lt;script&gt;" in out


def test_html_tooltip_quote_cannot_break_attribute():
    out = heatmap_html([' say "hi"'], [1.0])
    assert 'title="&#x27; say &quot;hi&quot;&#x27; +1.000"' in out
    assert '"hi"' not in out


def test_html_neutralises_bidi_and_controls():
    out = heatmap_html([" rtl\u202egnp.exe", "\x1b[31m"], [1.0, -1.0])
    assert "\u202e" not in out and "\x1b" not in out
    assert "\\u202e" in out and "\\x1b[31m" in out


def test_html_newline_is_visible_then_breaks():
    out = heatmap_html(["a\nb"], [1.0], full_page=False)
    assert "a↵<br>b" in out


def test_html_tooltip_has_signed_relevance():
    assert "+4.912" in heatmap_html(TOKENS, SCORES)


class _Balance(HTMLParser):
    VOID = {"meta", "br", "link", "img", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack}")
        else:
            self.stack.pop()


def _check_balanced(doc: str) -> _Balance:
    p = _Balance()
    p.feed(doc)
    p.close()
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed: {p.stack}"
    return p


def test_full_page_well_formed_and_script_free():
    doc = heatmap_html(TOKENS, SCORES, title=XSS, details={"model": XSS})
    assert doc.lower().startswith("<!doctype html>")
    assert '<meta charset="utf-8">' in doc
    assert "<script" not in doc.lower()
    assert "http://" not in doc and "https://" not in doc  # no external resources
    p = _check_balanced(doc)
    assert {"html", "head", "body", "style", "span", "table"} <= p.tags


def test_fragment_well_formed_and_scoped():
    frag = heatmap_html(TOKENS, SCORES, full_page=False)
    assert "<html" not in frag and "<!doctype" not in frag.lower()
    _check_balanced(frag)
    css = frag[frag.index("<style>") + 7 : frag.index("</style>")]
    prefix = frag.split('<div class="', 1)[1].split('"', 1)[0]
    assert prefix.startswith("attnlrp-")
    selectors = [rule.split("{", 1)[0] for rule in css.split("}") if "{" in rule]
    for sel in selectors:
        for part in sel.split(","):
            assert part.strip().startswith("." + prefix), part


def test_html_bottom_table_only_with_negatives():
    assert "most negative" in heatmap_html(TOKENS, SCORES, top_k=2)
    assert "most negative" not in heatmap_html([" a", " b"], [1.0, 2.0])


# ---------------------------------------------------------------- terminal escaping
INJECT = "\x1b[31m"
NASTY = [" ok", f" red{INJECT}x", " rtl\u202egnp.exe", " iso\u2066x\u2069", "\x9b31m", "bell\x07\x7f"]


@pytest.mark.parametrize("color", [True, False])
def test_terminal_never_emits_raw_controls(color):
    out = heatmap_terminal(NASTY, [1.0, -1.0, 0.5, 0.2, 0.1, -0.3], color=color) + ranking_table(
        NASTY, [1.0, -1.0, 0.5, 0.2, 0.1, -0.3]
    )
    assert INJECT not in out
    for ch in "\u202e\u2066\u2069\x9b\x07\x7f":
        assert ch not in out
    assert "\\x1b[31m" in out and "\\u202e" in out
    if color:
        assert "\x1b[38;2;0;0;0;48;2;" in out and "\x1b[0m" in out
    else:
        assert "\x1b" not in out
        assert "[ ok|+1.00]" in out


def test_terminal_text_mapping():
    assert terminal_text("a\tb\nc") == "a→b↵c"
    assert terminal_text("a\nb", newline="↵\n") == "a↵\nb"
    assert terminal_text("\x1b\x00\x7f\x85\u202a\u2069") == "\\x1b\\x00\\x7f\\x85\\u202a\\u2069"
    assert terminal_text("héllo 世界 🙂") == "héllo 世界 🙂"


def test_terminal_colour_resets_each_token_and_line():
    out = heatmap_terminal(["a\nb", "c"], [1.0, -1.0])
    r, g, b = POSITIVE_RGB
    assert out == (
        f"\x1b[38;2;0;0;0;48;2;{r};{g};{b}ma↵\x1b[0m\n\x1b[38;2;0;0;0;48;2;{r};{g};{b}mb\x1b[0m"
        f"\x1b[38;2;0;0;0;48;2;{NEGATIVE_RGB[0]};{NEGATIVE_RGB[1]};{NEGATIVE_RGB[2]}mc\x1b[0m"
    )


# ---------------------------------------------------------------- colour oracle
def test_colour_oracle():
    assert relevance_rgb(0, 1) == WHITE == (255, 255, 255)
    assert relevance_rgb(1, 1) == POSITIVE_RGB
    assert relevance_rgb(-1, 1) == NEGATIVE_RGB
    assert relevance_rgb(5, 1) == POSITIVE_RGB  # clipped
    half = tuple(int(255 + (e - 255) * 0.5 + 0.5) for e in POSITIVE_RGB)
    assert relevance_rgb(0.5, 1) == half == (255, 160, 160)
    assert relevance_rgb(-0.5, 1) == (160, 192, 255)
    assert relevance_rgb(2.0, 4.0) == relevance_rgb(0.5, 1)
    assert POSITIVE_RGB[0] > POSITIVE_RGB[2] and NEGATIVE_RGB[2] > NEGATIVE_RGB[0]


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, math.nan])
def test_bad_scale_is_white(scale):
    assert relevance_rgb(0.7, scale) == WHITE


def test_nan_is_grey():
    assert relevance_rgb(math.nan, 1.0) == NAN_RGB
    assert len(set(NAN_RGB)) == 1 and NAN_RGB != WHITE


def test_symmetric_scale():
    assert symmetric_scale([1.0, -3.0, math.nan, math.inf]) == 3.0
    assert symmetric_scale([]) == 0.0
    assert symmetric_scale([math.nan]) == 0.0


# ---------------------------------------------------------------- ranking / validation
@pytest.mark.parametrize(
    "fn",
    [
        lambda t, s: heatmap_html(t, s),
        lambda t, s: heatmap_html(t, s, full_page=False),
        lambda t, s: heatmap_terminal(t, s),
        lambda t, s: ranking_table(t, s),
    ],
)
def test_length_mismatch_raises(fn):
    with pytest.raises(ValueError, match=r"3 tokens, 2 scores"):
        fn(["a", "b", "c"], [1.0, 2.0])


def test_ranking_table_order():
    table = ranking_table(TOKENS, SCORES, top_k=3)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["rank", "token", "relevance"]
    top = [float(line.split()[-2]) if "█" in line else float(line.split()[-1]) for line in lines[1:4]]
    assert top == sorted(top, reverse=True) == [4.912, 2.5, 0.7]
    assert "' capital'" in lines[1] and "█" * 20 in lines[1]
    assert "most negative:" in lines
    neg = lines[lines.index("most negative:") + 1 :]
    assert "&lt;" not in table and "'<script>alert(1)</script>'" in neg[0]


def test_html_top_table_order():
    out = heatmap_html(TOKENS, SCORES, top_k=3, full_page=False)
    top = out.split("<caption>top", 1)[1].split("</table>", 1)[0]
    assert top.index("capital") < top.index("France") < top.index("hi")
    assert "The" not in top


def test_should_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for var in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(var, raising=False)
    assert should_color(Tty()) is True
    assert should_color(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "1")
    assert should_color(Tty()) is False
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert should_color(io.StringIO()) is True
    closed = io.StringIO()
    closed.close()
    monkeypatch.delenv("FORCE_COLOR")
    monkeypatch.delenv("NO_COLOR")
    assert should_color(closed) is False
