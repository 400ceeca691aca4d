"""The one result object: tokens, relevance, target, value, ledger, and how it shows itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from .core.ledger import LedgerReport
from .extras import require
from .tokens import words

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Target:
    """What was explained: an output position and the logit (or logit difference, or class) taken there."""

    kind: str  # "next-token", "token", "masked-token", "class", "custom"
    position: int | None  # index of the explained output in the sequence (None for a sequence-level head)
    token_id: int | None = None
    token: str | None = None
    contrast_id: int | None = None
    contrast_token: str | None = None
    label: str | None = None  # class name for classification heads

    def describe(self) -> str:
        """What was explained, in words: ``"logit of ' Lisbon' at position 5"``, ``"class 3 (cat)"``."""
        if self.kind == "class":
            return f"class {self.token_id}" + (f" ({self.label})" if self.label else "")
        if self.kind == "custom":
            return "custom target"
        text = f"logit of {self.token!r}"
        if self.contrast_id is not None:
            text += f" minus logit of {self.contrast_token!r}"
        if self.position is not None:
            text += f" at position {self.position}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The target as plain JSON-ready values (``Target.from_dict`` reads it back)."""
        return {
            "kind": self.kind,
            "position": self.position,
            "token_id": self.token_id,
            "token": self.token,
            "contrast_id": self.contrast_id,
            "contrast_token": self.contrast_token,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Target":
        """The target ``to_dict`` describes."""
        return cls(kind=data["kind"], position=data.get("position"), token_id=data.get("token_id"),
                   token=data.get("token"), contrast_id=data.get("contrast_id"),
                   contrast_token=data.get("contrast_token"), label=data.get("label"))


def ledger_from_dict(data: Mapping[str, Any]) -> LedgerReport:
    """The ``LedgerReport`` that ``LedgerReport.to_dict`` describes (its ``residual`` is computed again)."""
    return LedgerReport(float(data["input"]), float(data["absorbed"]), float(data["value"]),
                        {str(k): float(v) for k, v in (data.get("by_site") or {}).items()})


class LatentSummary(dict):
    """What JSON keeps of ``Explanation.latents`` (``LatentRelevance.to_dict()``: the residual stream per layer and
    token, the top neurons and heads), as ``from_json`` gives it back: a dict, not the tensors."""

    def to_dict(self) -> dict[str, Any]:
        """The summary as a plain dict."""
        return dict(self)


def json_object(text: str | bytes | Mapping[str, Any], what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (a dict passes through), with an error that says what was expected."""
    data = dict(text) if isinstance(text, Mapping) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{what}.from_json expects a JSON object (from {what}.to_json()), got {type(data).__name__}")
    return data


def explanations_to_pandas(explanations: Iterable[Any], *, key: str = "row") -> "pandas.DataFrame":
    """Several explanations (``Explanation`` or ``GenerationExplanation``, e.g. from ``explain_batch``) as one
    DataFrame: each one's ``to_pandas()`` rows, after a ``key`` column ("row") holding its position in the list.
    Needs pandas (``pip install 'attnlrp[pandas]'``)."""
    pandas = require("pandas", "pandas")
    frames = []
    for row, explanation in enumerate(explanations):
        frame = explanation.to_pandas()
        frame.insert(0, key, row)
        frames.append(frame)
    if not frames:
        return pandas.DataFrame({key: pandas.Series(dtype="int64"), **{c: pandas.Series(dtype=t)
                                 for c, t in _EXPLANATION_COLUMNS.items()}})
    combined = pandas.concat(frames, ignore_index=True)
    combined.attrs = {}
    return combined


#: the columns of ``Explanation.to_pandas()`` and their dtypes ("segment" only for encoder-decoders)
_EXPLANATION_COLUMNS = {"index": "int64", "token": "str", "token_id": "int64", "relevance": "float32",
                        "special": "bool", "word_id": "int64"}


def ranked_tokens(
    tokens: list[str], relevance: torch.Tensor, special: list[bool], k: int, *, include_special: bool = False
) -> list[tuple[int, str, float]]:
    """The ``k`` highest of ``relevance`` (one per leading token) as ``(index, token, relevance)``; special
    tokens (BOS, [CLS]…) left out unless asked."""
    order = torch.argsort(relevance, descending=True, stable=True).tolist()
    ranked = [(i, tokens[i], float(relevance[i])) for i in order]
    if not include_special and special:
        ranked = [r for r in ranked if not special[r[0]]]
    return ranked[:k]


class HtmlView:
    """``save_html`` and the notebook view for any result that renders itself with ``to_html(full_page=…)``."""

    if TYPE_CHECKING:  # the token fields each token-level result declares (read by ``_token_fields``)
        tokens: list[str]
        token_ids: list[int]
        method: str
        special: list[bool]
        prompt: str | None
        model_name: str | None

    def to_html(self, *, full_page: bool = True) -> str:  # pragma: no cover - implemented by each result
        """The heatmap as HTML: a standalone page, or with ``full_page=False`` a fragment to embed (the notebook
        view)."""
        raise NotImplementedError

    def save_html(self, path: str) -> None:
        """Write the standalone HTML page (``to_html()``) to ``path``."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_html())

    def _repr_html_(self) -> str:
        return self.to_html(full_page=False)

    def _token_fields(self) -> dict[str, Any]:
        """The fields every token-level result's ``to_dict`` starts with (prompt, model, method, tokens)."""
        return {
            "prompt": self.prompt,
            "model": self.model_name,
            "method": self.method,
            "tokens": list(self.tokens),
            "token_ids": list(self.token_ids),
            "special": list(self.special),
        }


@dataclass(frozen=True)
class Explanation(HtmlView):
    """Relevance of each input token for one explained value."""

    tokens: list[str]
    token_ids: list[int]
    relevance: torch.Tensor  # (tokens,), float32, on CPU
    target: Target
    value: float
    method: str
    ledger: LedgerReport
    special: list[bool] = field(default_factory=list)
    word_ids: list[int] = field(default_factory=list)
    prompt: str | None = None
    model_name: str | None = None
    unhandled: list[dict] = field(default_factory=list)  # non-linear operations that ran without a rule
    covered: list[dict] = field(default_factory=list)  # which rule covered which operation, with counts
    segments: list[str] = field(default_factory=list)  # per token, for encoder-decoders: "encoder" / "decoder"
    latents: Any = None  # attnlrp.latent.LatentRelevance when explained with latents=True

    def __len__(self) -> int:
        return len(self.tokens)

    # ------------------------------------------------------------------------------------------ aggregation
    def part(self, segment: str) -> tuple[list[str], torch.Tensor]:
        """Tokens and relevance of one segment ("encoder" or "decoder") of an encoder-decoder explanation."""
        if not self.segments:
            raise ValueError("this explanation has a single input; use .tokens and .relevance")
        index = [i for i, s in enumerate(self.segments) if s == segment]
        if not index:
            raise ValueError(f"no segment {segment!r}; segments are {sorted(set(self.segments))}")
        return [self.tokens[i] for i in index], self.relevance[index]

    def segment_totals(self) -> dict[str, float]:
        """Input relevance per segment (one entry, "input", for single-input models)."""
        if not self.segments:
            return {"input": float(self.relevance.double().sum())}
        totals: dict[str, float] = {}
        for name, r in zip(self.segments, self.relevance.tolist()):
            totals[name] = totals.get(name, 0.0) + r
        return totals


    def words(self) -> list[tuple[str, float]]:
        """Words with the *sum* of their tokens' relevance (sums keep the ledger balanced)."""
        return words(self.tokens, self.word_ids or list(range(len(self.tokens))), self.relevance.tolist())

    def top(self, k: int = 10, *, include_special: bool = False) -> list[tuple[int, str, float]]:
        """The ``k`` most relevant tokens as ``(index, token, relevance)``, highest first."""
        return ranked_tokens(self.tokens, self.relevance, self.special, k, include_special=include_special)

    # -------------------------------------------------------------------------------------------- outputs
    def to_dict(self) -> dict[str, Any]:
        """The explanation as plain JSON-ready values (``Explanation.from_dict`` reads it back)."""
        return {
            **self._token_fields(),
            "relevance": [float(r) for r in self.relevance.tolist()],
            "word_ids": list(self.word_ids),
            "words": [{"word": w, "relevance": r} for w, r in self.words()],
            "target": self.target.to_dict(),
            "value": self.value,
            "ledger": self.ledger.to_dict(),
            "unhandled": list(self.unhandled),
            "covered": list(self.covered),
            "segments": list(self.segments),
            "segment_totals": self.segment_totals(),
            **({"latents": self.latents.to_dict()} if self.latents is not None else {}),
        }

    def to_json(self, **kwargs: Any) -> str:
        """The explanation as JSON (``to_dict``; ``kwargs`` go to ``json.dumps``); ``Explanation.from_json`` reads it
        back."""
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Explanation":
        """The explanation ``to_dict`` describes (derived entries such as ``words`` are computed again)."""
        tokens = list(data["tokens"])
        latents = data.get("latents")
        return cls(
            tokens=tokens,
            token_ids=[int(i) for i in data["token_ids"]],
            relevance=torch.tensor([float(r) for r in data["relevance"]], dtype=torch.float32).reshape(len(tokens)),
            target=Target.from_dict(data["target"]),
            value=float(data["value"]),
            method=data["method"],
            ledger=ledger_from_dict(data["ledger"]),
            special=[bool(f) for f in data.get("special", [])],
            word_ids=[int(w) for w in data.get("word_ids", [])],
            prompt=data.get("prompt"),
            model_name=data.get("model"),
            unhandled=list(data.get("unhandled", [])),
            covered=list(data.get("covered", [])),
            segments=list(data.get("segments", [])),
            latents=None if latents is None else LatentSummary(latents),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Explanation":
        """Read back ``to_json()``: ``Explanation.from_json(e.to_json()).to_json() == e.to_json()``, with the same
        tokens, ids and relevance tensor. ``latents`` come back as their JSON summary (a ``LatentSummary``)."""
        return cls.from_dict(json_object(text, cls.__name__))

    def to_pandas(self) -> "pandas.DataFrame":
        """One row per token: ``index``, ``token``, ``token_id``, ``relevance``, ``special``, ``word_id`` (and
        ``segment`` for encoder-decoders). ``attrs`` holds the method, target, value and model. Needs pandas
        (``pip install 'attnlrp[pandas]'``)."""
        pandas = require("pandas", "pandas")
        n = len(self.tokens)
        columns: dict[str, Any] = {
            "index": pandas.Series(range(n), dtype="int64"),
            "token": pandas.Series(list(self.tokens), dtype="str"),
            "token_id": pandas.Series(list(self.token_ids), dtype="int64"),
            "relevance": pandas.Series(self.relevance.detach().cpu().float().numpy().copy(), dtype="float32"),
            "special": pandas.Series(list(self.special) if len(self.special) == n else [False] * n, dtype="bool"),
            "word_id": pandas.Series(list(self.word_ids) if len(self.word_ids) == n else range(n), dtype="int64"),
        }
        if self.segments:
            columns["segment"] = pandas.Series(list(self.segments), dtype="str")
        frame = pandas.DataFrame(columns)
        frame.attrs = {"method": self.method, "target": self.target.describe(), "value": self.value,
                       "model": self.model_name, "prompt": self.prompt}
        return frame

    def to_figure(self, *, words: bool = False, include_special: bool = True, title: str | None = None,
                  **kwargs: Any) -> "Figure":
        """The text heatmap as a matplotlib ``Figure`` (see ``save_figure``)."""
        from .render.figure import text_heatmap_figure

        tokens, relevance = self._display_tokens(), self.relevance.tolist()
        special = list(self.special) if len(self.special) == len(tokens) else [False] * len(tokens)
        word_ids = list(self.word_ids) if len(self.word_ids) == len(tokens) else None
        if words:
            merged = self.words()
            tokens, relevance = [w for w, _ in merged], [r for _, r in merged]
            firsts = [i for i in range(len(special)) if word_ids is None or i == 0 or word_ids[i] != word_ids[i - 1]]
            special = [special[i] for i in firsts] if len(firsts) == len(tokens) else [False] * len(tokens)
            word_ids = list(range(len(tokens)))
        if not include_special:
            keep = [i for i, flag in enumerate(special) if not flag]
            tokens, relevance = [tokens[i] for i in keep], [relevance[i] for i in keep]
            word_ids = None if word_ids is None else [word_ids[i] for i in keep]
            special = [False] * len(keep)
        return text_heatmap_figure(tokens, relevance, word_ids=word_ids, special=special, title=title,
                                   gid="word" if words else "token", **kwargs)

    def save_figure(self, path: Any, *, format: str | None = None, dpi: int = 300, **kwargs: Any) -> None:
        """A paper-ready text heatmap: every token a box coloured by its relevance (blue −, white 0, red +, one
        scale symmetric around 0), wrapped like running text, with a colour bar. The format follows the suffix
        (``.pdf`` and ``.svg`` keep the text as text, fonts embedded; ``.png`` at ``dpi``).

        Options: ``words=True`` (one box per word, relevance summed), ``include_special=False`` (leave out BOS and
        the like, whose large relevance can wash out the rest), ``title``, ``width`` (inches, default 6),
        ``fontsize`` (points), ``scale`` (the |relevance| of full colour), ``colorbar``. Needs matplotlib
        (``pip install 'attnlrp[vision]'``)."""
        from .render.figure import save_figure

        save_figure(self.to_figure(**kwargs), path, format=format, dpi=dpi)

    def _details(self) -> dict[str, str]:
        details = {
            "method": self.method,
            "target": self.target.describe(),
            "value": f"{self.value:+.4f}",
            "ledger": (
                f"input {self.ledger.input:+.4f} + absorbed {self.ledger.absorbed:+.4f} = "
                f"{self.ledger.input + self.ledger.absorbed:+.4f} (residual {self.ledger.residual:+.2e})"
            ),
        }
        if self.model_name:
            details = {"model": self.model_name, **details}
        if self.segments:
            details["relevance by segment"] = ", ".join(f"{k} {v:+.4f}" for k, v in self.segment_totals().items())
        if self.unhandled:
            details["unhandled operations"] = ", ".join(f"{u['operation']} in {u['module']}" for u in self.unhandled)
        return details

    def _display_tokens(self) -> list[str]:
        """Tokens as shown: each segment after the first (the decoder side) starts on a new line."""
        shown = list(self.tokens)
        for i in range(1, len(shown)):
            if self.segments and self.segments[i] != self.segments[i - 1]:
                shown[i] = "\n" + shown[i]
        return shown

    def _excluded(self, include_special: bool) -> list[bool] | None:
        """Tokens left out of the colour scale and the rankings: the special ones (BOS…) unless included."""
        if include_special or len(self.special) != len(self.tokens) or not any(self.special):
            return None
        return [bool(flag) for flag in self.special]

    def to_html(self, *, full_page: bool = True, top_k: int = 10, include_special: bool = False) -> str:
        """The heatmap page. Special tokens (a BOS holding the attention sink's relevance) are shown with their
        relevance but left out of the colour scale and the tables unless ``include_special=True``."""
        from .render import heatmap_html

        return heatmap_html(
            self._display_tokens(),
            self.relevance.tolist(),
            title=f"{self.method}: {self.target.describe()}",
            details=self._details(),
            top_k=top_k,
            full_page=full_page,
            exclude=self._excluded(include_special),
        )

    def to_terminal(self, *, color: bool | None = None, top_k: int = 10, include_special: bool = False) -> str:
        """The details, the prompt as a heatmap and the ranking of the ``top_k`` tokens, for a terminal.

        ``color``: ANSI colours (``True``), ``[token|score]`` markers (``False``), or ``None`` (default): colours
        only when standard output is a terminal and ``NO_COLOR`` is unset (:func:`attnlrp.render.resolve_color`).
        Special tokens (BOS…) are shown in the heatmap with their relevance but left out of the colour scale and
        the ranking unless ``include_special=True`` (as in :meth:`top`).
        """
        from .render import heatmap_terminal, ranking_table, resolve_color

        excluded = self._excluded(include_special)
        lines = [f"{k}: {v}" for k, v in self._details().items()]
        lines += ["", heatmap_terminal(self._display_tokens(), self.relevance.tolist(), color=resolve_color(color),
                                       exclude=excluded), ""]
        lines.append(ranking_table(self.tokens, self.relevance.tolist(), top_k=top_k, exclude=excluded))
        return "\n".join(lines)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top={best[0][1]!r} {best[0][2]:+.3f}" if best else ""
        return (
            f"Explanation(method={self.method!r}, tokens={len(self.tokens)}, target={self.target.describe()!r}, "
            f"value={self.value:.4f}, input_relevance={self.ledger.input:.4f}{lead})"
        )
