"""What a model and a prompt must be before they are explained: the model's kind of head, its input embedding
and device, its length limit, and the prompt as tokens.

Shared by everything that runs an explained forward pass (``Explainer``, generation, steering, images), so
each check and each error message exists once.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

from .errors import ExplainError
from .tokens import TokenizedPrompt, from_ids, tokenize

__all__ = [
    "Prompt", "ModelHead", "head_of", "input_embedding", "input_device", "max_length", "prepare_prompt",
    "class_index",
]

Prompt = Union[str, Sequence[int], torch.Tensor]


@dataclass(frozen=True)
class ModelHead:
    """How to read the explained value from a model's output."""

    kind: str  # "causal-lm", "masked-lm", "seq-cls", "seq2seq", "custom"


def head_of(model: nn.Module) -> ModelHead:
    """The kind of output head, which decides how the explained value is read from the model's output."""
    name = type(model).__name__
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        if name.endswith(("ForConditionalGeneration", "ForSeq2SeqLM")) or hasattr(model, "lm_head"):
            return ModelHead("seq2seq")
        raise ExplainError(f"{name}: only encoder-decoders with a language-model head can be explained")
    if name.endswith("ForSequenceClassification"):
        return ModelHead("seq-cls")
    if name.endswith("ForMaskedLM"):
        return ModelHead("masked-lm")
    if name.endswith(("ForCausalLM", "LMHeadModel")) or hasattr(model, "generate") and hasattr(model, "lm_head"):
        return ModelHead("causal-lm")
    return ModelHead("custom")


def input_embedding(model: nn.Module) -> nn.Module:
    """The model's input embedding, where relevance is read; a clear error for models that cannot be explained."""
    if not isinstance(model, nn.Module):
        raise ExplainError(f"expected a transformers model (a torch.nn.Module), got {type(model).__name__}")
    getter = getattr(model, "get_input_embeddings", None)
    embedding = None
    if getter is not None:
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if not isinstance(embedding, nn.Module):
        raise ExplainError(
            f"{type(model).__name__} has no input embeddings (get_input_embeddings()); attnlrp reads relevance "
            "at the input embeddings, so it needs a transformers model that accepts `inputs_embeds`."
        )
    if "inputs_embeds" not in inspect.signature(model.forward).parameters:
        raise ExplainError(f"{type(model).__name__}.forward does not accept `inputs_embeds`")
    return embedding


def input_device(model: nn.Module, embedding: nn.Module) -> torch.device:
    """Where the input ids go: the embedding's device, or accelerate's execution device when it is offloaded."""
    hook = getattr(embedding, "_hf_hook", None) or getattr(model, "_hf_hook", None)
    if getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    weight = getattr(embedding, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.device.type != "meta":
        return weight.device
    real = [p.device for p in model.parameters() if p.device.type != "meta"]
    return real[0] if real else torch.device("cpu")


def max_length(model: nn.Module, tokenizer) -> int | None:
    """The longest input the model (positions) and tokenizer accept, or None when neither says."""
    limits = []
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits) if limits else None


def prepare_prompt(tokenizer, prompt: Prompt, add_special_tokens: bool) -> TokenizedPrompt:
    """Text or token ids as a ``TokenizedPrompt``."""
    if isinstance(prompt, str):
        return tokenize(tokenizer, prompt, add_special_tokens=add_special_tokens)
    if isinstance(prompt, (torch.Tensor, list, tuple)):
        return from_ids(tokenizer, prompt)
    raise ExplainError(f"a prompt must be text or token ids, got {type(prompt).__name__}")


def class_index(model: nn.Module, spec: int | str | None, logits_row: torch.Tensor) -> tuple[int, str | None]:
    """The explained class of a classifier: the predicted one, a label, or an index; and its label."""
    id2label = getattr(model.config, "id2label", None) or {}
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


def pad_token_id(model: nn.Module, tokenizer) -> int | None:
    """The id ``generate`` should pad with: the tokenizer's, else the model's generation config's, else EOS.

    Passing it explicitly keeps ``generate`` from warning (and guessing) on every call for models without one.
    """
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
        if isinstance(candidate, (list, tuple)) and candidate:
            return int(candidate[0])
    return None
