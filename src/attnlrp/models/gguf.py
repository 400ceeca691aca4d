"""Dequantising a GGUF file into a plain fp32 PyTorch model (slow: the dequantisation runs in numpy).

transformers reads GGUF files itself; this module asks it for plain ``nn.Linear`` layers (packed GGUF blocks
would hide the weights from the relevance rules), parses the file once instead of three times, and words its
failures as :class:`~attnlrp.models.base.ModelLoadError`. The dequantised copy on disk is :mod:`.cache`'s.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import LOAD_ERRORS, ModelLoadError, first_lines, from_pretrained, load_kwargs

__all__ = ["dequantise"]


def dequantise(gguf_path: Path, kind: str, attn_implementation: str | None,
               trust_remote_code: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, str]:
    """Read a GGUF file into a plain fp32 model with the head ``kind`` resolves to; returns that kind too."""
    folder, name = gguf_path.parent, gguf_path.name
    model_kwargs = {**load_kwargs(torch.float32, attn_implementation, trust_remote_code), **_dequantise_kwargs()}
    try:
        with _read_once():
            model, tokenizer, kind = from_pretrained(folder, kind, model_kwargs, gguf_file=name)
    except ModelLoadError:
        raise
    except LOAD_ERRORS as e:
        raise ModelLoadError(
            f"could not read the GGUF file {gguf_path} (loading GGUF needs the `gguf` and `accelerate` "
            f"packages, and an architecture transformers can read from GGUF): {first_lines(e)}",
            e,
        ) from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        if not getattr(quantizer.quantization_config, "dequantize", False):
            raise ModelLoadError(
                f"{gguf_path} was loaded with its weights still packed in GGUF blocks; AttnLRP needs plain "
                f"linear layers. Uninstall the `kernels` package or load a safetensors checkpoint instead."
            )
        quantizer.remove_quantization_config(model)  # the weights are plain tensors now; allows saving
    return model, tokenizer, kind


def _dequantise_kwargs() -> dict[str, Any]:
    """Ask for fully dequantised layers: transformers 5 keeps GGUF blocks packed when `kernels` is installed.

    Packed layers are not ``nn.Linear`` and would hide the weights from the relevance rules. Older
    transformers always dequantise and have no such option.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    if "dequantize" not in inspect.signature(GgufConfig.__init__).parameters:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _read_once() -> Iterator[None]:
    """While loading one GGUF file, parse its header once and build each tensor-name map once.

    transformers parses the whole file with ``gguf.GGUFReader`` separately for the config, the weights and
    the tokenizer, and rebuilds ``gguf.get_tensor_name_map`` for every module; both are pure functions of
    their arguments, and memoising them halves the first load (31 s -> 16 s for SmolLM2 on 2 CPU cores)
    with bit-identical weights. Scoped to this block and restored after it.
    """
    try:
        import gguf as gguf_library  # the `gguf` package on PyPI, not this module
    except ImportError:  # transformers will report the missing package itself
        yield
        return
    with _PATCH_LOCK:
        original_reader, original_map = gguf_library.GGUFReader, gguf_library.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def reader(path: Any, mode: Literal["r", "r+", "c"] = "r") -> Any:
            key = (os.fspath(path), mode)
            if key not in readers:
                readers[key] = original_reader(path, mode)
            return readers[key]

        # setattr: a patch of the library's module attributes (a class and a function) by other callables
        setattr(gguf_library, "GGUFReader", reader)
        setattr(gguf_library, "get_tensor_name_map", functools.lru_cache(maxsize=None)(original_map))
        try:
            yield
        finally:
            setattr(gguf_library, "GGUFReader", original_reader)
            setattr(gguf_library, "get_tensor_name_map", original_map)
