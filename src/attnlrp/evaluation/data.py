"""The text tasks of the evaluation, and the user's own data: prompts as token ids with what to explain.

Why one sample type: the perturbation metric, the attribution methods and the plausibility score all need the
same few things per prompt — the token ids the model sees, which of them must never be ranked or flipped
(BOS, chat-template markers such as ``<|im_start|>``: the tokenizer's ``all_special_ids``), the token to
explain and, for contrastive questions, the token to explain it against. :class:`TextSample` carries exactly
that, plus what a task knows about the right answer.

Tasks (all offline and deterministic):

``next-token``
    sentences of the Python documentation CPython ships (``pydoc_data.topics``), cut before their last word;
    the target is the model's own prediction (resolve with :func:`resolve_targets`). The corpus is the running
    interpreter's documentation, so the sentences differ between Python versions (each sample records it).
``sentiment``
    the reviews in ``datasets/reviews.jsonl`` (written for this project), in a chat-template prompt whose next
    token is ``" positive"`` or ``" negative"``; target the gold label, contrast the other one.
``qa``
    the questions in ``datasets/qa.jsonl`` (written for this project) after one worked example; target the
    first token of the gold answer, with its token span and a mask of the context tokens for
    :func:`plausibility`.

User data: :func:`load_jsonl` reads one JSON object per line (``text``, optional ``target``, ``contrast``, ``id``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from ..errors import ExplainError
from ..models.adapter import ModelAdapter, single_token
from .names import TEXT_TASKS

__all__ = [
    "DATASETS_DIR",
    "QA_EXAMPLE",
    "SENTIMENT_LABELS",
    "TASKS",
    "DataError",
    "DocSentence",
    "Plausibility",
    "TextSample",
    "build_task",
    "load_jsonl",
    "load_qa_items",
    "load_reviews",
    "next_token_logits",
    "next_token_samples",
    "plausibility",
    "python_doc_sentences",
    "answered_correctly",
    "qa_correct",
    "qa_prompt",
    "qa_samples",
    "resolve_targets",
    "sentiment_accuracy",
    "sentiment_prompt",
    "sentiment_samples",
]

DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
TASKS = TEXT_TASKS  # the names live in .names, which imports no torch (`attnlrp evaluate --help`)


class DataError(ValueError):
    """Data that cannot be turned into samples; the message says where (file and line) and what to fix."""


# ---------------------------------------------------------------------------------------------- the sample


@dataclass(frozen=True)
class TextSample:
    """One prompt to explain, as token ids, with what to explain and what is known about the answer.

    ``special[i]`` is True for tokens the metric must never rank or flip (the tokenizer's special tokens).
    ``target_id`` ``None`` means "the model's predicted next token", resolved by :func:`resolve_targets`.
    ``contrast_id``, when set, makes the explained value ``logit[target] − logit[contrast]``.
    ``answer_span`` is ``(start, end)``, token indices into ``input_ids``, end exclusive; ``context_mask``
    marks the tokens that may be scored as evidence (QA: the passage, not the worked example or question).
    ``label``: the gold label (sentiment: ``"positive"``/``"negative"``; qa: the answer text).
    ``gold_id``: the token that really comes next in the source text (next-token), for information only.
    """

    id: str
    task: str
    input_ids: tuple[int, ...]
    special: tuple[bool, ...]
    text: str | None = None
    target_id: int | None = None
    contrast_id: int | None = None
    label: str | None = None
    answer_span: tuple[int, int] | None = None
    context_mask: tuple[bool, ...] | None = None
    gold_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.special) != len(self.input_ids):
            raise ValueError(f"sample {self.id}: special mask has {len(self.special)} entries for "
                             f"{len(self.input_ids)} tokens")
        if self.context_mask is not None and len(self.context_mask) != len(self.input_ids):
            raise ValueError(f"sample {self.id}: context mask length differs from the number of tokens")
        if self.answer_span is not None:
            start, end = self.answer_span
            if not 0 <= start < end <= len(self.input_ids):
                raise ValueError(f"sample {self.id}: answer span {self.answer_span} is outside the prompt")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def rankable(self) -> tuple[bool, ...]:
        """Tokens a perturbation may rank and flip: everything but the special tokens."""
        return tuple(not s for s in self.special)

    def ids_tensor(self) -> torch.Tensor:
        """The prompt as a 1-D ``torch.long`` tensor (what ``Explainer.explain`` accepts)."""
        return torch.tensor(self.input_ids, dtype=torch.long)

    def with_target(self, target_id: int) -> "TextSample":
        """A copy with the target set (samples are immutable)."""
        return replace(self, target_id=int(target_id))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (lists instead of tuples)."""
        return {
            "id": self.id, "task": self.task, "text": self.text, "input_ids": list(self.input_ids),
            "special": list(self.special), "target_id": self.target_id, "contrast_id": self.contrast_id,
            "label": self.label, "answer_span": list(self.answer_span) if self.answer_span else None,
            "context_mask": list(self.context_mask) if self.context_mask is not None else None,
            "gold_id": self.gold_id, "meta": dict(self.meta),
        }


@dataclass(frozen=True)
class _Encoded:
    ids: tuple[int, ...]
    offsets: tuple[tuple[int, int], ...]
    special: tuple[bool, ...]


def _encode(tokenizer, text: str, *, add_special_tokens: bool) -> _Encoded:
    """Token ids, character offsets (when the tokenizer is fast) and the special-token mask of ``text``.

    Special = one of the tokenizer's ``all_special_ids`` (BOS, ``<|im_start|>``…), except the unknown token
    where it stands for characters of the text: an ``[UNK]`` is input a word-level tokenizer could not read,
    and the metric may flip it like any other word. With ``add_special_tokens`` the text starts with the
    tokenizer's BOS token where it defines one, added if the tokenizer does not add it itself — the evaluated
    models are decoder LMs, and this is ``Explainer``'s ``add_bos`` default (docs/evaluation/README.md).
    """
    special_ids = set(tokenizer.all_special_ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = tuple((int(a), int(b)) for a, b in encoding["offset_mapping"])
    else:
        encoding = tokenizer(text, add_special_tokens=add_special_tokens)
        offsets = tuple((0, 0) for _ in encoding["input_ids"])
    ids = tuple(int(i) for i in encoding["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_special_tokens and bos is not None and (not ids or ids[0] != bos):
        ids, offsets = (int(bos),) + ids, ((0, 0),) + offsets
    special = tuple(i in special_ids and not (i == unk and a < b) for i, (a, b) in zip(ids, offsets))
    return _Encoded(ids, offsets, special)


def _token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_token(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` if it is exactly one token; a :class:`DataError` naming its pieces otherwise."""
    try:
        return single_token(tokenizer, text, what)
    except ExplainError as e:
        raise DataError(str(e)) from None


def _stable_id(*parts: str) -> str:
    return hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()[:10]


# ------------------------------------------------------------------------------------- (a) next-token prose

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# plain prose only: no reST emphasis (*x*), no quoted code ("x"), no grammar symbols or other markup
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-“”’]*[a-z]\.$")
_ABBREVIATION = re.compile(r"\b(e\.g|i\.e|etc|cf|vs)\b")
_LAST_WORD = re.compile(r"^(?P<prompt>.*[A-Za-z,;)’'])\s+(?P<word>[A-Za-z][A-Za-z\-]*)\.$")
_UNDERLINE = set("*=-~^#")


@dataclass(frozen=True)
class DocSentence:
    """One sentence of the Python documentation, the topic it came from, and its split before the last word."""

    topic: str
    sentence: str
    prompt: str  # the sentence without its last word and full stop
    last_word: str


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Unindented paragraphs (code, grammar and literal blocks are indented), headings and '::' blocks skipped;
    bullet items ("* text" with a hanging indent of two) count as prose."""
    for block in re.split(r"\n\s*\n", text):
        lines = block.rstrip().split("\n")
        if lines and lines[0].startswith("* "):
            lines = [lines[0][2:]] + [line[2:] if line.startswith("  ") else "\t" for line in lines[1:]]
        if any(line.startswith((" ", "\t")) or not line for line in lines):
            continue
        if len(lines) >= 2 and set(lines[-1].strip()) <= _UNDERLINE:
            continue
        if block.rstrip().endswith("::"):
            continue
        yield " ".join(line.strip() for line in lines)


def python_doc_sentences() -> list[DocSentence]:
    """Every clean prose sentence of ``pydoc_data.topics`` that can be cut before a last word, once each,
    in topic order. Deterministic for a given Python version."""
    return list(_doc_sentences())


@functools.lru_cache(maxsize=1)
def _doc_sentences() -> tuple[DocSentence, ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DataError("this Python has no pydoc_data (its documentation topics); the next-token task needs "
                        "a CPython with its standard library complete") from None
    seen: set[str] = set()
    sentences: list[DocSentence] = []
    for topic in sorted(topics):
        for paragraph in _prose_paragraphs(topics[topic]):
            for sentence in _SENTENCE_END.split(paragraph):
                sentence = sentence.strip()
                if sentence in seen or not _PROSE.match(sentence) or _ABBREVIATION.search(sentence):
                    continue
                if "  " in sentence or "()" in sentence:
                    continue
                match = _LAST_WORD.match(sentence)
                if match is None:
                    continue
                seen.add(sentence)
                sentences.append(DocSentence(topic, sentence, match["prompt"], match["word"]))
    return tuple(sentences)


def next_token_samples(
    tokenizer, n: int | None = 200, seed: int = 0, *, min_tokens: int = 12, max_tokens: int = 40
) -> list[TextSample]:
    """``n`` Python-documentation sentences cut before their last word, with ``min_tokens``–``max_tokens``
    tokens, in a seeded shuffled order (smaller ``n`` with the same seed gives a prefix of the larger set).

    The target is left to the model (``target_id=None``; see :func:`resolve_targets`); ``gold_id`` is the
    first token of the word the sentence really continues with.
    """
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"need 1 ≤ min_tokens ≤ max_tokens, got {min_tokens}, {max_tokens}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    pool: list[TextSample] = []
    for doc in python_doc_sentences():
        encoded = _encode(tokenizer, doc.prompt, add_special_tokens=True)
        content = len(encoded.ids) - sum(encoded.special)
        if not min_tokens <= content <= max_tokens:
            continue
        gold = _token_ids(tokenizer, " " + doc.last_word)
        pool.append(TextSample(
            id=f"next-token:{doc.topic}:{_stable_id(doc.sentence)}", task="next-token", input_ids=encoded.ids,
            special=encoded.special, text=doc.prompt, gold_id=gold[0] if gold else None,
            meta={"topic": doc.topic, "sentence": doc.sentence, "next_word": doc.last_word, "python": version},
        ))
    random.Random(seed).shuffle(pool)
    return _take(pool, n, "next-token")


def _take(pool: list[TextSample], n: int | None, task: str) -> list[TextSample]:
    if n is None:
        return pool
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer or None (all), got {n!r}")
    if n > len(pool):
        raise DataError(f"the {task} task has {len(pool)} samples for this tokenizer; asked for {n}")
    return pool[:n]


# ------------------------------------------------------------------------------------------ (b) sentiment

#: The label words, as the tokens that follow the prompt (a leading space: one token each for SmolLM2).
SENTIMENT_LABELS = {"positive": " positive", "negative": " negative"}
SENTIMENT_QUESTION = "Is the sentiment of the following review positive or negative?\n\nReview: {review}"
SENTIMENT_ANSWER_PREFIX = "The sentiment of this review is"


def load_reviews(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The committed reviews (``id``, ``label``, ``domain``, ``text``), validated."""
    rows = list(_read_jsonl(Path(path) if path else DATASETS_DIR / "reviews.jsonl"))
    for where, row in rows:
        _require(row, ("id", "label", "text"), where)
        if row["label"] not in SENTIMENT_LABELS:
            raise DataError(f"{where}: label must be one of {sorted(SENTIMENT_LABELS)}, got {row['label']!r}")
    return [row for _, row in rows]


def sentiment_prompt(tokenizer, review: str) -> str:
    """The zero-shot classification prompt: the chat template (when the tokenizer has one) with the
    assistant's answer begun, so the next token is the label word."""
    question = SENTIMENT_QUESTION.format(review=review)
    if getattr(tokenizer, "chat_template", None):
        start = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return start + SENTIMENT_ANSWER_PREFIX
    return f"{question}\nAnswer: {SENTIMENT_ANSWER_PREFIX}"


def _label_ids(tokenizer) -> dict[str, int]:
    ids = {label: _single_token(tokenizer, word, f"the sentiment label word") for label, word in SENTIMENT_LABELS.items()}
    if len(set(ids.values())) != len(ids):
        raise DataError(f"the sentiment label words {list(SENTIMENT_LABELS.values())} map to the same token "
                        f"for this tokenizer; the task needs a tokenizer that tells them apart")
    return ids


def sentiment_samples(tokenizer, n: int | None = None) -> list[TextSample]:
    """The reviews as prompts; target the gold label's token, contrast the other label's token.

    Order alternates positive and negative, so every prefix (``n``) is balanced to within one.
    """
    ids = _label_ids(tokenizer)
    reviews = load_reviews()
    positive = [r for r in reviews if r["label"] == "positive"]
    negative = [r for r in reviews if r["label"] == "negative"]
    ordered = [r for pair in zip(positive, negative) for r in pair]
    ordered += positive[len(negative):] + negative[len(positive):]
    samples = []
    for review in ordered:
        prompt = sentiment_prompt(tokenizer, review["text"])
        has_template = bool(getattr(tokenizer, "chat_template", None))
        encoded = _encode(tokenizer, prompt, add_special_tokens=not has_template)
        other = next(label for label in SENTIMENT_LABELS if label != review["label"])
        samples.append(TextSample(
            id=f"sentiment:{review['id']}", task="sentiment", input_ids=encoded.ids, special=encoded.special,
            text=prompt, target_id=ids[review["label"]], contrast_id=ids[other], label=review["label"],
            meta={"review": review["text"], "domain": review.get("domain")},
        ))
    return _take(samples, n, "sentiment")


# ------------------------------------------------------------------------------------------------ (c) QA

#: The worked example before every question (its own facts, which no item repeats). A "where" question with
#: a bare noun-phrase answer: after it SmolLM2 answers with the span itself far more often than after a
#: "who" example (74 % against 48 % greedy first-token matches), instead of a sentence starting "The …".
QA_EXAMPLE = {
    "context": "The Ostrava chess club was founded by a group of railway workers. "
               "Its members met every Thursday at the Station Hotel in Vitkov.",
    "question": "Where did the members of the Ostrava chess club meet?",
    "answer": "Station Hotel",
}
_QA_BLOCK = "Context: {context}\nQuestion: {question}\nAnswer:"


def load_qa_items(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The committed QA items (``id``, ``context``, ``question``, ``answer``), validated: the answer occurs
    exactly once in its context, as whole words."""
    rows = list(_read_jsonl(Path(path) if path else DATASETS_DIR / "qa.jsonl"))
    for where, row in rows:
        _require(row, ("id", "context", "question", "answer"), where)
        _answer_start(row["context"], row["answer"], where)
    return [row for _, row in rows]


def _answer_start(context: str, answer: str, where: str) -> int:
    hits = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", context)]
    if len(hits) != 1:
        raise DataError(f"{where}: the answer {answer!r} must occur exactly once in its context as whole "
                        f"words, found {len(hits)} times")
    return hits[0]


def qa_prompt(item: dict[str, str]) -> tuple[str, int]:
    """The prompt (worked example, blank line, the item) and the character offset where the item's context starts."""
    example = _QA_BLOCK.format(**QA_EXAMPLE) + " " + QA_EXAMPLE["answer"] + "\n\n"
    return example + _QA_BLOCK.format(context=item["context"], question=item["question"]), len(example) + len("Context: ")


def _span_from_chars(encoded: _Encoded, text: str, start: int, end: int, where: str) -> tuple[int, int]:
    """Token indices ``[first, last + 1)`` of the tokens covering characters ``[start, end)``.

    A token counts by the non-space characters it covers (byte-level tokens carry their leading space);
    a token that reaches outside the range (the answer fused with a neighbouring word) is an error.
    """
    inside: list[int] = []
    for index, (a, b) in enumerate(encoded.offsets):
        if encoded.special[index] or a == b:
            continue
        piece = text[a:b]
        a, b = a + (len(piece) - len(piece.lstrip())), b - (len(piece) - len(piece.rstrip()))
        if a >= b or b <= start or a >= end:
            continue
        if a < start or b > end:
            raise DataError(f"{where}: a token ({text[a:b]!r}) straddles the edge of the answer; the answer "
                            f"cannot be marked by whole tokens")
        inside.append(index)
    if not inside:
        raise DataError(f"{where}: no token covers the answer (the tokenizer gives no character offsets?)")
    return inside[0], inside[-1] + 1


def _char_mask(encoded: _Encoded, start: int, end: int) -> tuple[bool, ...]:
    """True for non-special tokens lying within characters ``[start, end)``."""
    return tuple(
        not special and a < b and a >= start - 1 and b <= end
        for (a, b), special in zip(encoded.offsets, encoded.special)
    )


def qa_samples(tokenizer, n: int | None = None) -> list[TextSample]:
    """The QA items as prompts; target = first token of ``" " + answer``, with the answer's token span and
    a mask of the item's context tokens. Needs a fast tokenizer (character offsets)."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("the qa task needs a fast tokenizer (character offsets mark the answer span)")
    samples = []
    for item in load_qa_items():
        where = f"qa item {item['id']}"
        prompt, context_start = qa_prompt(item)
        encoded = _encode(tokenizer, prompt, add_special_tokens=True)
        answer_start = context_start + _answer_start(item["context"], item["answer"], where)
        span = _span_from_chars(encoded, prompt, answer_start, answer_start + len(item["answer"]), where)
        context = _char_mask(encoded, context_start, context_start + len(item["context"]))
        target = _token_ids(tokenizer, " " + item["answer"])
        samples.append(TextSample(
            id=f"qa:{item['id']}", task="qa", input_ids=encoded.ids, special=encoded.special, text=prompt,
            target_id=target[0], label=item["answer"], answer_span=span, context_mask=context,
            meta={"question": item["question"], "context": item["context"]},
        ))
    return _take(samples, n, "qa")


@dataclass(frozen=True)
class Plausibility:
    """How well one relevance vector points at the gold answer, among the context tokens only."""

    top1_in_span: bool  # the most relevant context token lies in the answer span
    iou: float  # |top-k context tokens ∩ span| / |∪|, k = span length
    top_tokens: tuple[int, ...]  # the k most relevant context tokens (indices into the prompt), best first


def plausibility(relevance: Sequence[float] | torch.Tensor, sample: TextSample) -> Plausibility:
    """Score one relevance vector (signed; higher = more relevant) of a QA sample. Ties go to the earlier token."""
    if sample.answer_span is None or sample.context_mask is None:
        raise ValueError(f"sample {sample.id} has no answer span / context mask (only qa samples do)")
    values = torch.as_tensor(relevance, dtype=torch.float64).detach().cpu().reshape(-1)
    if len(values) != len(sample):
        raise ValueError(f"relevance has {len(values)} entries, the prompt {len(sample)} tokens")
    if not torch.isfinite(values).all():
        raise ValueError("relevance contains NaN or inf")
    context = [i for i, keep in enumerate(sample.context_mask) if keep]
    start, end = sample.answer_span
    k = end - start
    ranked = sorted(context, key=lambda i: (-float(values[i]), i))
    top = ranked[:k]
    span = set(range(start, end))
    return Plausibility(
        top1_in_span=ranked[0] in span,
        iou=len(span & set(top)) / len(span | set(top)),
        top_tokens=tuple(top),
    )


# -------------------------------------------------------------------------------------------- (d) user data


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each non-blank line; ``where`` is ``"FILE, line N"``."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object like {{\"text\": \"…\"}}, got {type(row).__name__}")
            yield where, row


def _require(row: dict[str, Any], keys: Iterable[str], where: str) -> None:
    for key in keys:
        if key not in row:
            raise DataError(f"{where}: missing {key!r}")
        if not isinstance(row[key], str) or not row[key].strip():
            raise DataError(f"{where}: {key!r} must be a non-empty string")


def _user_token(tokenizer, spec: Any, what: str, where: str) -> int | None:
    """A user's target/contrast: ``None``, a token id, or a string that must be exactly one token."""
    if spec is None:
        return None
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise DataError(f"{where}: {what} must be a token string or a token id, got {json.dumps(spec)}")
    if isinstance(spec, int):
        if not 0 <= spec < len(tokenizer):
            raise DataError(f"{where}: {what} id {spec} is outside the vocabulary (0..{len(tokenizer) - 1})")
        return spec
    if not spec:
        raise DataError(f"{where}: {what} is an empty string")
    try:
        return _single_token(tokenizer, spec, what)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def load_jsonl(path: str | os.PathLike, tokenizer, *, add_special_tokens: bool = True) -> list[TextSample]:
    """The user's prompts: one JSON object per line with ``text`` and optionally ``target`` and ``contrast``
    (a single token, as a string such as ``" Paris"`` or an id) and ``id``; other keys are kept in ``meta``.

    Without ``target`` the model's predicted next token is explained (see :func:`resolve_targets`). Every
    problem raises :class:`DataError` naming the file and line.
    """
    path = Path(path)
    samples: list[TextSample] = []
    seen: set[str] = set()
    for where, row in _read_jsonl(path):
        if "text" not in row:
            raise DataError(f"{where}: missing \"text\" (each line needs {{\"text\": \"…\"}})")
        text = row["text"]
        if not isinstance(text, str):
            raise DataError(f"{where}: \"text\" must be a string, got {json.dumps(text)}")
        if not text.strip():
            raise DataError(f"{where}: \"text\" is empty")
        target = _user_token(tokenizer, row.get("target"), "target", where)
        contrast = _user_token(tokenizer, row.get("contrast"), "contrast", where)
        if contrast is not None and contrast == target:
            raise DataError(f"{where}: target and contrast are the same token")
        sample_id = str(row.get("id", f"{path.stem}:{where.rsplit(' ', 1)[-1]}"))
        if sample_id in seen:
            raise DataError(f"{where}: duplicate id {sample_id!r}")
        seen.add(sample_id)
        encoded = _encode(tokenizer, text, add_special_tokens=add_special_tokens)
        samples.append(TextSample(
            id=sample_id, task="user", input_ids=encoded.ids, special=encoded.special, text=text,
            target_id=target, contrast_id=contrast,
            meta={k: v for k, v in row.items() if k not in ("text", "target", "contrast", "id")},
        ))
    if not samples:
        raise DataError(f"{path} holds no samples (one JSON object per line expected)")
    return samples


# --------------------------------------------------------------------------------------------- the tasks


def build_task(name: str, tokenizer, n: int | None = None, *, seed: int = 0) -> list[TextSample]:
    """The samples of one built-in task: ``"next-token"`` (200 by default), ``"sentiment"`` or ``"qa"`` (all
    by default). ``n`` takes a prefix of the task's fixed order."""
    if name == "next-token":
        return next_token_samples(tokenizer, n=200 if n is None else n, seed=seed)
    if name == "sentiment":
        return sentiment_samples(tokenizer, n)
    if name == "qa":
        return qa_samples(tokenizer, n)
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")


# ------------------------------------------------------------------------- model predictions on the samples


@torch.no_grad()
def next_token_logits(model: torch.nn.Module, samples: Sequence[TextSample], batch_size: int = 16) -> torch.Tensor:
    """Logits of the next token after each prompt, ``(len(samples), vocab)`` float32.

    Prompts run in right-padded batches of similar length, each row read at its own last token; the
    vocabulary projection runs only at those positions where the model takes ``logits_to_keep``.
    """
    if not samples:
        raise ValueError("no samples given")
    parameter = next(model.parameters())
    keep_supported = ModelAdapter.of(model).accepts("logits_to_keep")
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    result: list[torch.Tensor | None] = [None] * len(samples)
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        chunk = [samples[i] for i in rows]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, sample in enumerate(chunk):
            ids[r, : len(sample)] = sample.ids_tensor()
            mask[r, : len(sample)] = 1
        last = torch.tensor([len(s) - 1 for s in chunk])
        kwargs: dict[str, Any] = {"input_ids": ids.to(parameter.device), "attention_mask": mask.to(parameter.device)}
        positions = torch.unique(last)  # sorted
        if keep_supported:
            kwargs["logits_to_keep"] = positions.to(parameter.device)
        logits = model(**kwargs).logits.float().cpu()
        columns = torch.searchsorted(positions, last) if keep_supported else last
        picked = logits[torch.arange(len(chunk)), columns]
        for r, index in enumerate(rows):
            result[index] = picked[r]
    rows_read = [row for row in result if row is not None]
    assert len(rows_read) == len(samples)  # every sample is in one batch
    return torch.stack(rows_read)


def resolve_targets(model: torch.nn.Module, samples: Sequence[TextSample], batch_size: int = 16) -> list[TextSample]:
    """Samples whose target is unset get the model's greedy next token; the others are returned as they are."""
    missing = [i for i, s in enumerate(samples) if s.target_id is None]
    result = list(samples)
    if missing:
        predicted = next_token_logits(model, [samples[i] for i in missing], batch_size).argmax(-1)
        for i, token in zip(missing, predicted.tolist()):
            result[i] = samples[i].with_target(token)
    return result


def sentiment_accuracy(model: torch.nn.Module, samples: Sequence[TextSample], batch_size: int = 16) -> float:
    """Fraction of sentiment samples where the gold label's logit beats the other label's."""
    judged = answered_correctly(model, samples, batch_size)
    return sum(bool(j) for j in judged) / len(judged) if judged else float("nan")


def answered_correctly(model: torch.nn.Module, samples: Sequence[TextSample], batch_size: int = 16) -> list[bool | None]:
    """Per sample, does the model get it right? Sentiment: the gold label's logit beats the other label's; QA:
    the greedy next token is the gold answer's first token; other tasks (no gold label): ``None``."""
    judged = [i for i, s in enumerate(samples) if s.task in ("sentiment", "qa") and s.target_id is not None]
    result: list[bool | None] = [None] * len(samples)
    if judged:
        logits = next_token_logits(model, [samples[i] for i in judged], batch_size)
        for row, i in enumerate(judged):
            sample = samples[i]
            if sample.task == "sentiment":
                result[i] = bool(logits[row, sample.target_id] > logits[row, sample.contrast_id])
            else:
                result[i] = int(logits[row].argmax()) == sample.target_id
    return result


def qa_correct(model: torch.nn.Module, samples: Sequence[TextSample], batch_size: int = 16) -> list[bool]:
    """Per QA sample: does the model's greedy next token equal the gold answer's first token?"""
    return [bool(j) for j in answered_correctly(model, samples, batch_size)]
