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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import torch
from torch import nn

from ..errors import ExplainError
from ..tokens import TokenizedPrompt, from_ids, tokenize
from .base import kind_of_class

if TYPE_CHECKING:
    from ..latent.relevance import LayerSites

Prompt = Union[str, Sequence[int], torch.Tensor]

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
            raise ExplainError(f"expected a transformers model (a torch.nn.Module), got {type(model).__name__}")
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
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
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


def prepare_prompt(tokenizer, prompt: Prompt, add_special_tokens: bool) -> TokenizedPrompt:
    """Text or token ids as a ``TokenizedPrompt``."""
    if isinstance(prompt, str):
        return tokenize(tokenizer, prompt, add_special_tokens=add_special_tokens)
    if isinstance(prompt, (torch.Tensor, list, tuple)):
        return from_ids(tokenizer, prompt)
    raise ExplainError(f"a prompt must be text or token ids, got {type(prompt).__name__}")
