"""The one result object: tokens, relevance, target, value, ledger, and how it shows itself."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from .core.ledger import LedgerReport
from .tokens import words


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
        return {
            "kind": self.kind,
            "position": self.position,
            "token_id": self.token_id,
            "token": self.token,
            "contrast_id": self.contrast_id,
            "contrast_token": self.contrast_token,
            "label": self.label,
        }


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

    def to_html(self, *, full_page: bool = True) -> str:  # pragma: no cover - implemented by each result
        raise NotImplementedError

    def save_html(self, path: str) -> None:
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
        return {
            **self._token_fields(),
            "relevance": [float(r) for r in self.relevance.tolist()],
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
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)

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

    def to_html(self, *, full_page: bool = True, top_k: int = 10) -> str:
        from .render import heatmap_html

        return heatmap_html(
            self._display_tokens(),
            self.relevance.tolist(),
            title=f"{self.method}: {self.target.describe()}",
            details=self._details(),
            top_k=top_k,
            full_page=full_page,
        )

    def to_terminal(self, *, color: bool = True, top_k: int = 10) -> str:
        from .render import heatmap_terminal, ranking_table

        lines = [f"{k}: {v}" for k, v in self._details().items()]
        lines += ["", heatmap_terminal(self._display_tokens(), self.relevance.tolist(), color=color), ""]
        lines.append(ranking_table(self.tokens, self.relevance.tolist(), top_k=top_k))
        return "\n".join(lines)

    def __repr__(self) -> str:
        best = self.top(1)
        lead = f", top={best[0][1]!r} {best[0][2]:+.3f}" if best else ""
        return (
            f"Explanation(method={self.method!r}, tokens={len(self.tokens)}, target={self.target.describe()!r}, "
            f"value={self.value:.4f}, input_relevance={self.ledger.input:.4f}{lead})"
        )
