"""Interactive HTML view of a generated answer's relevance.

The prompt and the answer are drawn once, coloured by the relevance of the whole answer (also the view without
JavaScript). Pointing at (or focusing) a generated token recolours the whole text with that token's row: its
relevance over the prompt and the tokens generated before it; a click pins that row, a second click (or the
"whole answer" button) goes back. The numbers travel as JSON inside a ``<script>``, escaped so that no token
text can close the script; every token string on the page is escaped by `escape` or set via ``textContent``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from .colors import NEGATIVE_RGB, POSITIVE_RGB, relevance_rgb, symmetric_scale
from .escape import html_text, html_token, token_repr
from .html import class_prefix, css_rgb, document
from .ranking import format_score

__all__ = ["generation_html", "script_json"]

_CSS = """
.{p}{{font-family:system-ui,-apple-system,Segoe UI,sans-serif;color:#111;background:#fff;max-width:60rem;
  line-height:1.5}}
.{p} h2{{font-size:1.15rem;margin:.4rem 0}}
.{p} table{{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}}
.{p} th,.{p} td{{border:1px solid #ddd;padding:.15rem .5rem;text-align:left}}
.{p} .heat{{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word;
  border:1px solid #ddd;padding:.5rem;margin:.5rem 0}}
.{p} .heat span{{color:#000;border-radius:2px}}
.{p} .heat .gen{{cursor:pointer;border-bottom:2px solid #888}}
.{p} .heat .gen.current{{outline:2px solid #000}}
.{p} .heat .gen.pinned{{outline:2px solid #000;border-bottom-color:#000}}
.{p} .sep{{color:#888}}
.{p} .status{{font-size:.9rem;margin:.3rem 0}}
.{p} .legend{{display:flex;align-items:center;gap:.5rem;font-size:.85rem}}
.{p} .bar{{width:12rem;height:.8rem;border:1px solid #ccc}}
"""

# Colours are computed in the page exactly as `colors.relevance_rgb` does (symmetric scale per view).
_JS = """
(function(){
var root=document.getElementById(%(root)s);if(!root)return;
var D=%(data)s;
var W=[255,255,255],P=%(pos)s,N=%(neg)s,G=[190,190,190];
function rgb(s,scale){if(s===null||isNaN(s))return G;if(!(scale>0)||s===0)return W;
 var t=Math.min(Math.abs(s)/scale,1),e=s>0?P:N,c=[];
 for(var i=0;i<3;i++)c.push(Math.floor(W[i]+(e[i]-W[i])*t+0.5));return c;}
function fmt(x){return (x===null||isNaN(x))?'nan':(x>=0?'+':'')+x.toFixed(3);}
var spans=root.querySelectorAll('.heat span[data-i]'),status=root.querySelector('.status'),pinned=-1;
function show(k){
 var row=k<0?D.answer:D.matrix[k],scale=0,i;
 for(i=0;i<row.length;i++){if(row[i]!==null&&isFinite(row[i]))scale=Math.max(scale,Math.abs(row[i]));}
 for(i=0;i<spans.length;i++){var s=spans[i],j=+s.getAttribute('data-i'),c=rgb(row[j],scale);
  s.style.background='rgb('+c[0]+','+c[1]+','+c[2]+')';
  s.title=D.tokens[j]+' '+fmt(row[j]);
  var g=j-D.prompt_length;
  if(g>=0){s.classList.toggle('current',g===k);s.classList.toggle('pinned',g===pinned);}}
 status.textContent=k<0?('whole answer: sum of the generated logits '+fmt(D.answer_value)+
  ' (point at or click a generated token to see its own relevance)'):
  ('generated token '+k+' '+D.tokens[D.prompt_length+k]+' (logit '+fmt(D.values[k])+
  '): relevance of the prompt and the '+k+' tokens generated before it'+(k===pinned?' [pinned]':''));
 root.querySelector('.scale').textContent=scale.toPrecision(3);}
function back(){show(pinned);}
for(var i=0;i<spans.length;i++)(function(s){var g=+s.getAttribute('data-i')-D.prompt_length;if(g<0)return;
 s.addEventListener('mouseenter',function(){show(g);});s.addEventListener('focus',function(){show(g);});
 s.addEventListener('mouseleave',back);s.addEventListener('blur',back);
 function toggle(){pinned=pinned===g?-1:g;show(g);}
 s.addEventListener('click',toggle);
 s.addEventListener('keydown',function(ev){if(ev.key==='Enter'||ev.key===' '){ev.preventDefault();toggle();}});
})(spans[i]);
root.querySelector('button').addEventListener('click',function(){pinned=-1;show(-1);});
show(-1);
})();
"""


def script_json(data: object) -> str:
    """JSON that is safe inside an HTML ``<script>``: ``<``, ``>``, ``&`` and U+2028/2029 become ``\\uXXXX``.

    No ``</script>`` or ``<!--`` can then appear, whatever the strings hold; non-ASCII is escaped too
    (``ensure_ascii``), so lone surrogates cannot break the page's encoding. Non-finite numbers become ``null``.
    """
    text = json.dumps(_finite(data), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def generation_html(
    tokens: Sequence[str],
    prompt_length: int,
    matrix: Sequence[Sequence[float]],
    values: Sequence[float],
    answer_relevance: Sequence[float],
    answer_value: float,
    *,
    title: str = "",
    details: Mapping[str, str] | None = None,
    full_page: bool = True,
) -> str:
    """The prompt and answer, coloured by the whole answer's relevance, recoloured per generated token on hover.

    ``matrix`` has one row per generated token (``len(tokens) - prompt_length`` rows) and one column per token.
    """
    toks = [str(t) for t in tokens]
    n = len(toks) - prompt_length
    rows = [[float(x) for x in row] for row in matrix]
    answer = [float(x) for x in answer_relevance]
    if not 0 <= prompt_length <= len(toks) or len(rows) != n or len(values) != n:
        raise ValueError(f"{len(rows)} rows and {len(values)} values for {n} generated tokens")
    if any(len(row) != len(toks) for row in rows) or len(answer) != len(toks):
        raise ValueError(f"every row of relevance needs one value per token ({len(toks)})")
    scale = symmetric_scale(answer)
    p = class_prefix("generation", toks, prompt_length, rows, title, sorted((details or {}).items()))

    parts = [f'<div class="{p}" id="{p}">']
    if title:
        parts.append(f"<h2>{html_text(title)}</h2>")
    if details:
        cells = "".join(f"<tr><th>{html_text(str(k))}</th><td>{html_text(str(v))}</td></tr>" for k, v in details.items())
        parts.append(f'<table class="details"><tbody>{cells}</tbody></table>')
    parts.append(
        '<div class="status">whole answer: sum of the generated logits '
        f"{html_text(format_score(float(answer_value)))}</div>"
        '<div><button type="button">whole answer</button></div>'
    )
    spans = []
    for i, (t, s) in enumerate(zip(toks, answer)):
        if i == prompt_length:
            spans.append('<span class="sep">\n⟶ </span>')
        tip = html_text(f"{token_repr(t)} {format_score(s)}")
        extra = ' class="gen" tabindex="0" role="button"' if i >= prompt_length else ""
        spans.append(
            f'<span data-i="{i}"{extra} style="background:{css_rgb(relevance_rgb(s, scale))}" title="{tip}">'
            f"{html_token(t)}</span>"
        )
    parts.append(f'<div class="heat" style="white-space:pre-wrap">{"".join(spans)}</div>')
    gradient = f"linear-gradient(to right,{css_rgb(NEGATIVE_RGB)},#fff,{css_rgb(POSITIVE_RGB)})"
    parts.append(
        f'<div class="legend"><span>negative</span><span class="bar" style="background:{gradient}"></span>'
        f'<span>positive</span><span>(white = 0; scale = max |relevance| of the view = '
        f'<span class="scale">{scale:.3g}</span>)</span></div>'
    )
    parts.append("</div>")
    data = {
        "tokens": [token_repr(t) for t in toks],
        "prompt_length": prompt_length,
        "matrix": rows,
        "values": [float(v) for v in values],
        "answer": answer,
        "answer_value": float(answer_value),
    }
    script = _JS % {
        "root": script_json(p), "data": script_json(data), "pos": list(POSITIVE_RGB), "neg": list(NEGATIVE_RGB),
    }
    parts.append(f"<script>{script}</script>")
    css = f"<style>{_CSS.format(p=p)}</style>"
    return document(css, "".join(parts), title or "AttnLRP relevance of a generated answer", full_page)
