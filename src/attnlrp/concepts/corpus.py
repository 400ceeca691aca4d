"""Corpus → documents → fixed token windows, deterministically.

A window is a run of ``window`` consecutive tokens of one document (non-overlapping, in order), preceded by the
special tokens the tokenizer puts in front of every text (BOS, if any). A document's last, shorter piece is kept
when it has at least ``max(2, window // 4)`` tokens: short documents still count, crumbs do not. Windows never
cross documents, so a sample never mixes two unrelated texts.

Scored positions start after the prefix, and never at position 0: under causal attention the first token sees
only itself, so its activations are a function of the token id alone (and in models without a BOS token it is
the attention sink, with outsized activations in a few neurons that would otherwise win every ActMax list).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

from .errors import AtlasError


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order and a readable note of where they came from."""

    documents: tuple[str, ...]
    description: str

    @property
    def sha256(self) -> str:
        """Hash of the documents' text and order (not of the description): what the atlas was built from."""
        digest = hashlib.sha256()
        for doc in self.documents:
            data = doc.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


CorpusSpec = Union[Corpus, str, os.PathLike, Sequence[str], None]
"""What ``load_corpus`` takes: a ``Corpus``, a path, a list of documents, or ``None`` for the default corpus."""


@dataclass(frozen=True)
class Window:
    """One context window: the model input (prefix + text tokens) and where it came from."""

    index: int
    document: int
    start: int  # offset of the first text token within the document's tokens
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # readable surface of each token (leading whitespace kept)
    prefix: int  # how many of the first tokens are the tokenizer's special prefix (BOS), not text

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def first_scored(self) -> int:
        """Positions before this one are context only (the prefix, or the first token)."""
        return first_scored(self.prefix)


def first_scored(prefix: int) -> int:
    return max(1, prefix)


def default_corpus() -> Corpus:
    """The Python documentation text CPython ships (``pydoc_data.topics``): one document per topic, by name."""
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # some distributions strip it
        raise AtlasError("this Python has no pydoc_data.topics (the default corpus); pass a corpus "
                         "(a text file or a list of strings)") from e
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus(tuple(topics[name] for name in sorted(topics)),
                  f"pydoc_data.topics (Python {version}, {len(topics)} topics)")


def load_corpus(spec: CorpusSpec) -> Corpus:
    """``None``: the default corpus; a path (``str`` or ``PathLike``): a UTF-8 text file, one document per
    paragraph (blank-line separated); a list of strings: one document each; a :class:`Corpus`: itself."""
    if spec is None:
        return default_corpus()
    if isinstance(spec, Corpus):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise AtlasError(f"corpus file {path} does not exist (a corpus given as a string is a file path; "
                             "pass a list of strings for texts)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise AtlasError(f"corpus file {path} is not UTF-8 text: {e}") from None
        paragraphs = tuple(p for p in re.split(r"\n[ \t]*\n", text) if p.strip())
        return Corpus(paragraphs, f"file {path.name} ({len(paragraphs)} paragraphs)")
    if isinstance(spec, Sequence) and all(isinstance(d, str) for d in spec):
        return Corpus(tuple(spec), f"{len(spec)} texts")
    raise AtlasError(f"a corpus is a text file path or a list of strings, not {type(spec).__name__}")


def prefix_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before every text (e.g. BOS), found by tokenising a probe."""
    probe = "hello world"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def _surfaces(tokenizer, text: str) -> tuple[list[int], list[str]]:
    """Token ids of ``text`` and each token's surface (the slice of text it came from, whitespace before it
    included), so that a window reads like the text; slow tokenizers fall back to decoding each id."""
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = list(encoding["input_ids"])
        surfaces, previous_end = [], 0
        for token_id, (start, end) in zip(ids, encoding["offset_mapping"]):
            surface = text[min(previous_end, start) : end] if end > start else ""
            surfaces.append(surface or tokenizer.decode([token_id]))
            previous_end = max(previous_end, end)
        return ids, surfaces
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return ids, [tokenizer.decode([i]) for i in ids]


def min_window_tokens(window: int) -> int:
    """The shortest last piece of a document that still becomes a window."""
    return max(2, window // 4)


def make_windows(tokenizer, corpus: Corpus, window: int) -> list[Window]:
    """Every window of the corpus, numbered from 0 in document order."""
    if window < 2:
        raise AtlasError(f"a window needs at least 2 tokens, got {window}")
    prefix = prefix_ids(tokenizer)
    prefix_tokens = [tokenizer.decode([i]) for i in prefix]
    shortest = min_window_tokens(window)
    windows: list[Window] = []
    for doc_index, doc in enumerate(corpus.documents):
        if not doc.strip():
            continue
        ids, surfaces = _surfaces(tokenizer, doc)
        for start in range(0, len(ids), window):
            piece = ids[start : start + window]
            if len(piece) < shortest:
                continue
            windows.append(Window(len(windows), doc_index, start, tuple(prefix + piece),
                                  tuple(prefix_tokens + surfaces[start : start + window]), len(prefix)))
    if not windows:
        raise AtlasError(f"the corpus ({corpus.description}) gives no window: it needs a document of at least "
                         f"{shortest} tokens")
    return windows


def windows_sha256(windows: Iterable[Window]) -> str:
    """Hash of every window's place and token ids: changes with the corpus, the tokenizer or the window size."""
    digest = hashlib.sha256()
    for w in windows:
        digest.update(json.dumps([w.document, w.start, w.prefix, w.token_ids]).encode())
    return digest.hexdigest()
