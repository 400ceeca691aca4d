"""What every model source shares: the loaded result, the user-facing error, and the one way to build a model.

Every source (a folder, a hub id, a GGUF file, its dequantised cache) loads the same way: the config, then the
head that ``kind`` asks for (or the one the checkpoint was saved with), in eval mode on the requested device,
then the tokenizer. :func:`from_pretrained` does that once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "KINDS", "LOAD_ERRORS", "LoadedModel", "ModelLoadError", "first_lines", "finish", "from_pretrained",
    "kind_from_config", "kind_of_class", "load_kwargs", "resolve_device", "resolve_dtype", "resolve_kind",
]


class ModelLoadError(ValueError):
    """A model could not be loaded for a reason the user can act on; the message says how.

    ``original`` keeps the underlying exception (if any) for debugging, without printing its traceback.
    """

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


@dataclass
class LoadedModel:
    """A model ready to explain, its tokenizer, and a readable note of where it came from.

    ``tokenizer`` is ``None`` only for image models, which have no tokenizer. ``cache_path`` is the
    dequantised copy of a GGUF file (``None`` for other sources) and ``from_cache`` says whether this load
    read it (``True``) or had to dequantise the GGUF file itself (``False``).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    source: str
    cache_path: Path | None = None
    from_cache: bool = False


KINDS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "image-cls": "AutoModelForImageClassification",
    "base": "AutoModel",
}
"""The kinds ``load_model(kind=…)`` takes besides ``"auto"`` → the transformers Auto class that builds that head."""

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_TRANSFORMERS_VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())

#: What transformers raises for a checkpoint it cannot read; each source turns these into a ModelLoadError.
LOAD_ERRORS = (OSError, ValueError, ImportError, RuntimeError, KeyError, TypeError)


# ------------------------------------------------------------------------------------- the user's arguments


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """Turn the user's dtype (None, a torch dtype or a short string) into a torch dtype; None is fp32.

    fp32 is the default because relevance is only conservative to rounding error, which bf16 makes large.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    accepted = ", ".join(repr(k) for k in _DTYPES)
    raise ModelLoadError(f"unknown dtype {dtype!r}: pass a torch.dtype, None (float32), or one of {accepted}")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """Check the user's device before any weight is read: a typo or a missing GPU is a one-line error."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"unknown device {device!r}: pass 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                "pass --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device {device!r} asked for, but MPS is not available here; pass --device cpu")
    return resolved


def load_kwargs(dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """The ``from_pretrained`` arguments every source passes to the model class."""
    # `from_pretrained` takes ``dtype=`` from transformers 4.56 on, ``torch_dtype=`` before (and warns on it after)
    kwargs: dict[str, Any] = {"dtype": dtype} if _TRANSFORMERS_VERSION >= (4, 56) else {"torch_dtype": dtype}
    kwargs["trust_remote_code"] = trust_remote_code
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


# ------------------------------------------------------------------------------------------- kind detection


#: class-name endings of transformers' model heads -> the kind of head (transformers' naming convention)
HEAD_SUFFIXES = (
    ("ForCausalLM", "causal-lm"), ("LMHeadModel", "causal-lm"), ("ForSequenceClassification", "seq-cls"),
    ("ForMaskedLM", "masked-lm"), ("ForConditionalGeneration", "seq2seq"), ("ForSeq2SeqLM", "seq2seq"),
    ("ForImageClassification", "image-cls"),
)


def kind_of_class(name: str, *, encoder_decoder: bool) -> str | None:
    """The kind of head a model class name says, or None (a generation head counts as seq2seq only for an
    encoder-decoder: vision-language models also end in ``ForConditionalGeneration``)."""
    for suffix, kind in HEAD_SUFFIXES:
        if name.endswith(suffix) and (kind != "seq2seq" or encoder_decoder):
            return kind
    return None


def kind_from_config(config: Any) -> str:
    """Pick the head the checkpoint was saved with, from ``config.architectures``; guess from the config if absent.

    Loading a checkpoint into the wrong head silently initialises a random one, so the saved architecture
    wins; configs without one (GGUF files, bare configs) are decoders unless the config says otherwise.
    """
    for arch in getattr(config, "architectures", None) or []:
        kind = kind_of_class(arch, encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)))
        if kind is not None:
            return kind
    return "causal-lm" if _is_decoder(config) else "base"


def _is_decoder(config: Any) -> bool:
    """A decoder-only language model: marked as a decoder, or has a causal-LM head and no masked-LM head.

    BERT-like encoders have both heads registered (a causal one for use as a decoder), so the masked-LM
    mapping tells them apart from GPT-like models.
    """
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    cls = type(config)
    try:
        return cls in MODEL_FOR_CAUSAL_LM_MAPPING and cls not in MODEL_FOR_MASKED_LM_MAPPING
    except Exception:  # a remote-code config the lazy mapping cannot look up
        return False


def resolve_kind(kind: str, config: Any) -> str:
    """``"auto"`` -> the saved head (:func:`kind_from_config`); an explicit kind is checked against :data:`KINDS`."""
    if kind == "auto":
        return kind_from_config(config)
    if kind not in KINDS:
        raise ModelLoadError(f"unknown kind {kind!r}: pass 'auto' or one of {', '.join(map(repr, KINDS))}")
    return kind


# ------------------------------------------------------------------------------------------------- loading


def from_pretrained(where: str | Path, kind: str, model_kwargs: dict[str, Any],
                    **shared: Any) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, str]:
    """The config, the model with the head ``kind`` resolves to, and its tokenizer; returns that kind too.

    ``model_kwargs`` go to the model class only (:func:`load_kwargs` and the source's own); ``shared`` to the
    config, the model and the tokenizer alike (``gguf_file=``). transformers' own errors pass through: each
    source words them for its kind of source.
    """
    from transformers import AutoConfig

    trust_remote_code = model_kwargs["trust_remote_code"]
    config = AutoConfig.from_pretrained(str(where), trust_remote_code=trust_remote_code, **shared)
    kind = resolve_kind(kind, config)
    model = getattr(transformers, KINDS[kind]).from_pretrained(str(where), config=config, **model_kwargs, **shared)
    return model, _load_tokenizer(where, kind, trust_remote_code, **shared), kind


def _load_tokenizer(where: str | Path, kind: str, trust_remote_code: bool, **extra: Any) -> PreTrainedTokenizerBase | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, ImportError, KeyError, TypeError) as e:
        if kind == "image-cls":
            return None
        raise ModelLoadError(f"found no usable tokenizer for {where}: {first_lines(e)}", e) from None
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        # Batched explanations need padding; set on this instance only, never on the saved files.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def first_lines(e: BaseException, n: int = 3) -> str:
    """The first ``n`` lines of an exception's message, for a readable ModelLoadError."""
    text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    return "\n".join(lines[:n]) + (" …" if len(lines) > n else "")


def finish(model: PreTrainedModel, device: str | torch.device | None) -> PreTrainedModel:
    """Eval mode (dropout off: relevance must be deterministic) on the requested device (CPU by default)."""
    if device is not None:
        # transformers declares PreTrainedModel.to with functools.wraps(nn.Module.to), whose typing takes self as
        # the first argument
        model = model.to(device)  # type: ignore[arg-type]
    return model.eval()
