"""Reading an atlas: ``Atlas.open(path).samples(layer, neuron, by="actmax"|"relmax")``. No model needed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import first_scored
from .errors import AtlasError
from .store import KINDS, blob_values, chunks_done, connect, read_meta, windows_done


@dataclass(frozen=True)
class Sample:
    """One reference sample of one neuron: its window, the peak position and score, and per-token values.

    ``score``: for ActMax the neuron's largest activation over the window's scored tokens (at ``position``);
    for RelMax its relevance for the model's next-token prediction, summed over the scored tokens
    (``position``: the most relevant token). ``activations`` / ``relevance``: the neuron's value at every
    token of the window, from the same pass. Tokens before ``first_scored`` are context only.
    """

    kind: str
    rank: int
    layer: int
    neuron: int
    window: int
    document: int
    start: int
    position: int
    score: float
    token_ids: list[int]
    tokens: list[str]
    prefix: int  # the first ``prefix`` tokens are the tokenizer's special prefix (BOS), not text
    activations: list[float]
    relevance: list[float]

    @property
    def first_scored(self) -> int:
        """Positions before this one are context only: the prefix, or the window's first token."""
        return first_scored(self.prefix)

    @property
    def text(self) -> str:
        """The window's text, without the prefix special tokens."""
        return "".join(self.tokens[self.prefix :])

    @property
    def token(self) -> str:
        """The token at the peak position."""
        return self.tokens[self.position]

    def values(self) -> list[float]:
        """The values this ranking is about: activations for ActMax, relevance for RelMax."""
        return self.activations if self.kind == "actmax" else self.relevance

    def to_dict(self) -> dict[str, Any]:
        """The sample as plain JSON-ready values."""
        return {"rank": self.rank, "score": self.score, "window": self.window, "document": self.document,
                "start": self.start, "position": self.position, "token": self.token, "text": self.text,
                "prefix": self.prefix, "first_scored": self.first_scored, "tokens": self.tokens,
                "token_ids": self.token_ids, "activations": self.activations, "relevance": self.relevance}


class Atlas:
    """An atlas file opened for reading. Also a context manager (closes the connection)."""

    def __init__(self, path: Path, meta: dict[str, Any], conn) -> None:
        self.path = path
        self.meta = meta
        self._conn = conn

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Atlas":
        """Open an existing atlas; a clear error if there is none at ``path``."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise AtlasError(f"no concept atlas at {path}: build one with `attnlrp concepts build --db {path}` "
                             "(or pass --db where it is)")
        conn = connect(path)
        try:
            meta = read_meta(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(path, meta, conn)

    def close(self) -> None:
        """Close the atlas's database connection (``with Atlas.open(…)`` does it on exit)."""
        self._conn.close()

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- description
    @property
    def layers(self) -> list[int]:
        """The layers the atlas covers."""
        return list(self.meta["layers"])

    @property
    def neurons(self) -> int:
        """Neurons per layer."""
        return int(self.meta["neurons"])

    @property
    def top_k(self) -> int:
        """How many samples the atlas keeps per neuron and kind."""
        return int(self.meta["top_k"])

    @property
    def windows_total(self) -> int:
        """Windows in the whole corpus."""
        return int(self.meta["windows_total"])

    @property
    def windows_done(self) -> int:
        """Windows of committed chunks (the first ``windows_done`` of the corpus)."""
        return windows_done(self._conn)

    @property
    def chunks_done(self) -> int:
        """Committed chunks of the corpus."""
        return chunks_done(self._conn)

    @property
    def complete(self) -> bool:
        """Whether every window of the corpus is in the atlas."""
        return self.windows_done >= self.windows_total

    def describe(self) -> dict[str, Any]:
        """What a reader needs to judge the samples: model, corpus, coverage and settings."""
        m = self.meta
        return {"path": str(self.path), "model": m["model_name"], "corpus": m["corpus"], "method": m["method"],
                "layers": self.layers, "neurons": self.neurons, "top_k": self.top_k, "window": m["window"],
                "windows_done": self.windows_done, "windows_total": self.windows_total}

    # -------------------------------------------------------------------------------------------- samples
    def samples(self, layer: int, neuron: int, by: str = "actmax") -> list[Sample]:
        """The neuron's reference samples, best first (ties: lower window index first)."""
        if by not in KINDS:
            raise AtlasError(f"by must be one of {', '.join(KINDS)}, not {by!r}")
        if layer not in self.layers:
            raise AtlasError(f"layer {layer} is not in this atlas; it has layers {', '.join(map(str, self.layers))}")
        if not 0 <= neuron < self.neurons:
            raise AtlasError(f"neuron {neuron} does not exist; layers have neurons 0..{self.neurons - 1}")
        rows = self._conn.execute(
            "SELECT s.window_id, s.position, s.score, s.activations, s.relevance, w.document, w.start, "
            "w.prefix, w.token_ids, w.tokens FROM samples s JOIN windows w USING (window_id) "
            "WHERE s.kind = ? AND s.layer = ? AND s.neuron = ? ORDER BY s.score DESC, s.window_id",
            (by, layer, neuron)).fetchall()
        return [
            Sample(kind=by, rank=rank, layer=layer, neuron=neuron, window=window, document=document, start=start,
                   position=position, score=score, token_ids=json.loads(ids), tokens=json.loads(tokens),
                   prefix=prefix, activations=blob_values(acts), relevance=blob_values(rels))
            for rank, (window, position, score, acts, rels, document, start, prefix, ids, tokens)
            in enumerate(rows, start=1)
        ]
