"""What attnlrp needs to know about a loaded model, found out once: the kind of output head, the input embedding
and its device, the context length, which keyword arguments ``forward`` accepts, the layer sites (for latents and
steering) and how a token or class is named.

Every explainer, generation, steering, the evaluation and the concept atlas ask a ``ModelAdapter`` instead of
probing the model themselves, so each check and each error message exists once. ``ModelAdapter.of(model)`` keeps
one adapter per model instance.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import ExplainError
from ..tokens import TokenizedPrompt, from_ids, tokenize, with_bos
from .base import kind_of_class

if TYPE_CHECKING:
    from ..latent.relevance import LayerSites

#: a prompt: text, token ids (a list, a 1-D or ``(1, N)`` tensor or array), or what ``tokenizer(text,
#: return_tensors="pt")`` returns (a ``BatchEncoding`` or a dict with ``input_ids`` and optionally ``attention_mask``)
Prompt = Union[str, Sequence[int], torch.Tensor, np.ndarray, Mapping[str, Any]]

#: where an error about a prompt holding several sequences points
BATCH_POINTER = "explain several prompts with Explainer(model, tokenizer).explain_batch(prompts)"

#: the kinds of output head: how the explained value is read from the model's output
HEAD_KINDS = ("causal-lm", "masked-lm", "seq-cls", "seq2seq", "image-cls", "custom")


def head_kind(model: nn.Module) -> str:
    """The kind of output head, from the class name (transformers' naming convention) and the config."""
    name = type(model).__name__
    encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    kind = kind_of_class(name, encoder_decoder=encoder_decoder)
    if encoder_decoder:
        if kind == "seq2seq" or hasattr(model, "lm_head"):
            return "seq2seq"
        raise ExplainError(f"{name}: only encoder-decoders with a language-model head can be explained")
    if kind is not None:
        return kind
    return "causal-lm" if hasattr(model, "generate") and hasattr(model, "lm_head") else "custom"


def _input_embedding(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        embedding = getter()
    except (NotImplementedError, AttributeError):
        return None
    return embedding if isinstance(embedding, nn.Module) else None


_ADAPTERS: "weakref.WeakKeyDictionary[nn.Module, ModelAdapter]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class ModelAdapter:
    """One model's structure, as the explainers need it (see the module docstring)."""

    model: nn.Module
    head: str
    embedding: nn.Module | None
    forward_parameters: frozenset[str]
    _sites: list = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, model: nn.Module) -> "ModelAdapter":
        """The adapter of ``model`` (built on first use, then kept as long as the model lives)."""
        if not isinstance(model, nn.Module):
            hint = " (for a pipeline, pass it as the model and None as the tokenizer)" if is_pipeline(model) else ""
            raise ExplainError(
                f"expected a transformers model (a torch.nn.Module) or a pipeline, got {type(model).__name__}{hint}"
            )
        adapter = _ADAPTERS.get(model)
        if adapter is None:
            parameters = frozenset(inspect.signature(model.forward).parameters)
            adapter = cls(model, head_kind(model), _input_embedding(model), parameters)
            _ADAPTERS[model] = adapter
        return adapter

    # ------------------------------------------------------------------------------------------ inputs
    def accepts(self, name: str) -> bool:
        """Whether ``model.forward`` takes the keyword argument ``name``."""
        return name in self.forward_parameters

    def no_cache(self) -> dict[str, Any]:
        """``use_cache=False`` where the forward takes it: an explained pass never needs the key/value cache."""
        return {"use_cache": False} if self.accepts("use_cache") else {}

    def input_embedding(self) -> nn.Module:
        """The input embedding, where relevance is read; a clear error for models that cannot be explained."""
        if self.embedding is None:
            raise ExplainError(
                f"{type(self.model).__name__} has no input embeddings (get_input_embeddings()); attnlrp reads "
                "relevance at the input embeddings, so it needs a transformers model that accepts `inputs_embeds`."
            )
        if not self.accepts("inputs_embeds"):
            raise ExplainError(f"{type(self.model).__name__}.forward does not accept `inputs_embeds`")
        return self.embedding

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device, or accelerate's execution device when it is offloaded."""
        model, embedding = self.model, self.embedding
        hook = getattr(embedding, "_hf_hook", None) or getattr(model, "_hf_hook", None)
        execution_device = getattr(hook, "execution_device", None)
        if execution_device is not None:
            return torch.device(execution_device)
        weight = getattr(embedding, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
            return weight.device
        real = [p.device for p in model.parameters() if p.device.type != "meta"]
        return real[0] if real else torch.device("cpu")

    def vocab_size(self, tokenizer) -> int:
        weight = getattr(self.embedding, "weight", None)
        return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else len(tokenizer)

    def max_length(self, tokenizer=None) -> int | None:
        """The longest input the model (positions) and tokenizer accept, or None when neither says."""
        limits = []
        config = getattr(self.model, "config", None)
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 1_000_000:
            limits.append(model_max)
        return min(limits) if limits else None

    def check_length(self, tokens: int, tokenizer, what: str = "prompt", *, extra: int = 0) -> None:
        """An error that says how long is too long, before the model fails with an index error."""
        limit = self.max_length(tokenizer)
        if limit is None:
            return
        if tokens > limit:
            raise ExplainError(f"the {what} is {tokens} tokens long but the model takes at most {limit}; shorten it")
        if tokens + extra > limit:
            raise ExplainError(
                f"the {what} ({tokens} tokens) and {extra} new tokens exceed the model's maximum of {limit} "
                "tokens; shorten the prompt or generate fewer tokens"
            )

    # ------------------------------------------------------------------------------------- structure
    def layer_sites(self) -> "list[LayerSites]":
        """Per transformer layer: residual stream, attention output, MLP neurons (see ``attnlrp.latent``)."""
        if not self._sites:
            from ..latent.relevance import layer_sites

            self._sites.extend(layer_sites(self.model))
        return list(self._sites)

    # ------------------------------------------------------------------------------------------ naming
    def token_id(self, tokenizer, spec: int | str, what: str = "target") -> int:
        """A token given as a string (one token for this tokenizer) or an id, checked against the vocabulary."""
        vocab_size = self.vocab_size(tokenizer)
        if isinstance(spec, bool):
            raise ExplainError(f"{what} must be a token (string) or a token id (int), not a bool")
        if isinstance(spec, int):
            if not 0 <= spec < vocab_size:
                raise ExplainError(f"{what} id {spec} is outside the vocabulary (0..{vocab_size - 1})")
            return spec
        if isinstance(spec, str):
            if not spec:
                raise ExplainError(f"{what} is an empty string")
            return single_token(tokenizer, spec, what)
        raise ExplainError(f"{what} must be a token string or id, got {type(spec).__name__}")

    def class_index(self, spec: int | str | None, logits_row: torch.Tensor) -> tuple[int, str | None]:
        """The explained class of a classifier: the predicted one, a label, or an index; and its label."""
        id2label = getattr(getattr(self.model, "config", None), "id2label", None) or {}
        n = logits_row.shape[-1]
        if spec is None:
            index = int(logits_row.argmax())
        elif isinstance(spec, str):
            label2id = {str(v): int(k) for k, v in id2label.items()}
            if spec not in label2id:
                raise ExplainError(f"unknown class {spec!r}; the model's classes are {sorted(label2id)}")
            index = label2id[spec]
        elif isinstance(spec, int) and not isinstance(spec, bool) and 0 <= spec < n:
            index = spec
        else:
            raise ExplainError(f"class {spec!r} is not one of the model's {n} classes (0..{n - 1} or a label)")
        return index, id2label.get(index, id2label.get(str(index)))

    def pad_token_id(self, tokenizer) -> int | None:
        """The id ``generate`` should pad with: the tokenizer's, else the generation config's, else EOS.

        Passing it explicitly keeps ``generate`` from warning (and guessing) on every call."""
        for candidate in (
            getattr(tokenizer, "pad_token_id", None),
            getattr(getattr(self.model, "generation_config", None), "pad_token_id", None),
            getattr(tokenizer, "eos_token_id", None),
        ):
            if isinstance(candidate, int):
                return candidate
            if isinstance(candidate, (list, tuple)) and candidate:
                return int(candidate[0])
        return None


def single_token(tokenizer, text: str, what: str) -> int:
    """The id of ``text`` if it is exactly one token; else an error that shows the pieces (and the spaced form)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        hint = ""
        if not text.startswith(" "):
            spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            if len(spaced) == 1:
                hint = f" ' {text}' (with a leading space) is one token, id {spaced[0]}."
        raise ExplainError(
            f"{what} {text!r} is {len(ids)} tokens for this tokenizer: {pieces}; give a single token "
            f"(or its id).{hint}"
        )
    return ids[0]


# ------------------------------------------------------------------------------------------------- pipelines
def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``Pipeline`` (checked by class, without importing the pipelines)."""
    return any(c.__name__ == "Pipeline" and c.__module__.startswith("transformers")
               for c in type(obj).__mro__)


def model_and_tokenizer(model: Any, tokenizer: Any) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` as given, or the model and tokenizer of a transformers pipeline passed as ``model``
    (with ``tokenizer=None``; a tokenizer given as well is used instead of the pipeline's)."""
    if is_pipeline(model):
        inner = getattr(model, "model", None)
        task = getattr(model, "task", None) or type(model).__name__
        if not isinstance(inner, nn.Module):
            raise ExplainError(f"the {task} pipeline's model is not a PyTorch model ({type(inner).__name__})")
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ExplainError(f"the {task} pipeline has no tokenizer; pass one as the tokenizer argument")
        return inner, tokenizer
    if tokenizer is None and isinstance(model, nn.Module):
        raise ExplainError("a tokenizer is needed (only a pipeline, passed as the model, brings its own)")
    return model, tokenizer


# --------------------------------------------------------------------------------------------------- prompts
_PROMPT_FORMS = ("text, token ids (a list, a 1-D or (1, N) tensor), or the output of "
                 "tokenizer(text, return_tensors='pt') (a BatchEncoding or a dict with input_ids)")


def _rows_of(value: Any, what: str) -> list[list[int]]:
    """Rows of token ids from a list, a list of lists, or a 1-D / 2-D tensor or array."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
            raise ExplainError(f"{what} must hold integer token ids, got a {value.dtype} tensor")
        if value.dim() == 1:
            return [value.tolist()]
        if value.dim() == 2:
            return value.tolist()
        raise ExplainError(f"{what} must be 1-D (N) or 2-D (batch, N), got shape {tuple(value.shape)}")
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(row, (list, tuple, torch.Tensor, np.ndarray)) for row in value):
            return [row for item in value for row in _rows_of(item, what)]
        return [list(value)]
    raise ExplainError(f"{what} must be token ids, got {type(value).__name__}")


def _encoding_rows(encoding: Mapping[str, Any]) -> list[tuple[list[int], list[int | None] | None]]:
    """The rows of a ``BatchEncoding`` / dict: each row's ids without its padding (``attention_mask`` 0) and, from a
    fast tokenizer's encoding, its word ids."""
    if "input_ids" not in encoding:
        keys = ", ".join(map(str, encoding)) or "none"
        raise ExplainError(f"a dict prompt needs 'input_ids' (as tokenizer(text, return_tensors='pt') gives); "
                           f"its keys: {keys}")
    rows = _rows_of(encoding["input_ids"], "input_ids")
    masks = _rows_of(encoding["attention_mask"], "attention_mask") if encoding.get("attention_mask") is not None \
        else [[1] * len(row) for row in rows]
    if len(masks) != len(rows) or any(len(m) != len(r) for m, r in zip(masks, rows)):
        raise ExplainError("attention_mask and input_ids have different shapes")
    words: list[list[int | None] | None] = [None] * len(rows)
    encodings = getattr(encoding, "encodings", None)  # a fast tokenizer's BatchEncoding knows the words
    if encodings and len(encodings) == len(rows):
        word_ids = getattr(encoding, "word_ids")
        words = [word_ids(r) for r in range(len(rows))]
    kept = []
    for row, mask, word_ids in zip(rows, masks, words):
        keep = [i for i, m in enumerate(mask) if int(m) != 0]
        kept.append(([int(row[i]) for i in keep],
                     None if word_ids is None or len(word_ids) != len(row) else [word_ids[i] for i in keep]))
    return kept


def _id_rows(prompt: Any) -> list[tuple[list[int], list[int | None] | None]]:
    """A prompt given as ids, in any accepted form, as rows of ``(ids, word ids or None)``."""
    if isinstance(prompt, Mapping):
        return _encoding_rows(prompt)
    if isinstance(prompt, (torch.Tensor, np.ndarray, list, tuple)):
        return [(row, None) for row in _rows_of(prompt, "token ids")]
    raise ExplainError(f"a prompt must be {_PROMPT_FORMS}; got {type(prompt).__name__}")


def bos_policy(add_bos: bool | None, tokenizer, head: str, add_special_tokens: bool = True) -> bool | None:
    """What happens to the BOS token of a *text* prompt: ``True`` make it start with the tokenizer's BOS,
    ``False`` without one, ``None`` as the tokenizer tokenizes it.

    ``add_bos=None`` ("auto", the default) prepends BOS for decoder language models (``head == "causal-lm"``)
    whose tokenizer defines a BOS token, unless ``add_special_tokens=False`` — the tokenizers that define one but
    do not add it (SmolLM2's GGUF tokenizer under transformers 5.x, GPT-2) would otherwise leave the attention
    sink's relevance on the first word of the prompt (docs/evaluation/README.md, "The BOS token"). Other models
    keep their tokenizer's own special tokens. Prompts given as token ids are never changed.
    """
    if add_bos is not None and not isinstance(add_bos, bool):
        raise ExplainError(f"add_bos must be True, False or None (auto), got {add_bos!r}")
    if add_bos is not None:
        return add_bos
    if head == "causal-lm" and add_special_tokens and getattr(tokenizer, "bos_token_id", None) is not None:
        return True
    return None


def prepare_prompt(tokenizer, prompt: Prompt, add_special_tokens: bool, *,
                   several: str = BATCH_POINTER, add_bos: bool | None = None) -> TokenizedPrompt:
    """One prompt in any accepted form (see ``Prompt``) as a ``TokenizedPrompt``; a tensor or encoding that holds
    several sequences is refused with ``several`` (where to go instead) in the message. ``add_bos`` (a resolved
    :func:`bos_policy`): a text prompt starts with the BOS token (``True``), without it (``False``), or as
    tokenized (``None``); token ids are used as given."""
    if isinstance(prompt, str):
        prepared = tokenize(tokenizer, prompt, add_special_tokens=add_special_tokens)
        return prepared if add_bos is None else with_bos(tokenizer, prepared, add_bos)
    rows = _id_rows(prompt)
    if len(rows) != 1:
        raise ExplainError(f"the prompt holds {len(rows)} sequences but one is explained here; {several}")
    ids, word_ids = rows[0]
    return from_ids(tokenizer, ids, word_ids=word_ids)


def prepare_prompts(tokenizer, prompts: Any, add_special_tokens: bool, *,
                    add_bos: bool | None = None) -> list[TokenizedPrompt]:
    """Several prompts: a list of prompts (each in any accepted form), or a ``(B, N)`` tensor or a
    ``BatchEncoding`` / dict of B rows (padding dropped by its ``attention_mask``)."""
    if isinstance(prompts, (Mapping, torch.Tensor, np.ndarray)):
        if not isinstance(prompts, Mapping) and prompts.ndim != 2:
            raise ExplainError(f"a tensor of prompts must be 2-D (batch, N), got shape {tuple(prompts.shape)}; "
                               "a 1-D tensor is one prompt: explain it with explain()")
        rows = _id_rows(prompts)
        if not rows:
            raise ExplainError("explain_batch takes a non-empty list of prompts")
        return [from_ids(tokenizer, ids, word_ids=word_ids) for ids, word_ids in rows]
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ExplainError("explain_batch takes a non-empty list of prompts (or a (B, N) tensor, or a "
                           "BatchEncoding of B rows)")
    return [prepare_prompt(tokenizer, p, add_special_tokens, add_bos=add_bos) for p in prompts]
