"""The cache of dequantised GGUF files: one safetensors folder per file content and transformers version.

Dequantising a GGUF file takes tens of seconds; its dequantised copy loads in well under a second. An entry is
a folder ``<gguf stem>-<KEY_CHARS hex digits of cache_key>`` under :func:`cache_root`, written into a
temporary sibling and moved into place atomically (:func:`publish`), complete once it holds
:data:`CACHE_MARKER` (written last). The key follows the file's bytes, not its path, so every environment that
installs the same file shares one entry, and writing an entry removes those it supersedes
(:func:`prune_superseded`). Nothing here fails a load: a cache that cannot be written is a warning.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_LAYOUT", "CACHE_MARKER", "KEY_CHARS", "cache_is_valid", "cache_key", "cache_root", "discard",
    "entry_path", "gguf_sha256", "prune_superseded", "publish", "superseded_caches", "write_cache",
]

CACHE_MARKER = "attnlrp-cache.json"  # written last inside the temporary folder: its presence = complete
CACHE_LAYOUT = "attnlrp-gguf-cache/2"  # part of the key: bump it when the key or the folder contents change
KEY_CHARS = 24  # hex digits of the key in a cache folder's name: "<gguf stem>-<24 hex digits>"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$ATTNLRP_CACHE``, else ``~/.cache/attnlrp``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ATTNLRP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnlrp"


# ------------------------------------------------------------------------------------------------- keys


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


def gguf_sha256(gguf_path: Path) -> str:
    """The sha256 of the file's bytes (hashed once per process while the file is unchanged)."""
    st = gguf_path.stat()
    return _sha256_of(str(gguf_path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def cache_key(gguf_path: Path) -> str:
    """Changes whenever the file's bytes or the transformers major.minor (which dequantises) change.

    Keyed on the content, not the path or mtime, so every copy of the same file (a fresh clone, a fresh
    virtual environment) shares one cache entry.
    """
    raw = json.dumps([CACHE_LAYOUT, gguf_sha256(gguf_path), _major_minor(transformers.__version__)])
    return hashlib.sha256(raw.encode()).hexdigest()


def entry_path(root: Path, gguf_path: Path) -> Path:
    """Where the entry of ``gguf_path`` lives under ``root`` (whether or not it exists yet)."""
    return root / f"{gguf_path.stem}-{cache_key(gguf_path)[:KEY_CHARS]}"


# -------------------------------------------------------------------------------------- reading, writing


def cache_is_valid(folder: Path) -> bool:
    """Complete = our marker, a config and readable safetensors weights; anything less is rebuilt."""
    if not (folder / CACHE_MARKER).is_file() or not (folder / "config.json").is_file():
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


def discard(folder: Path) -> None:
    """Move a folder aside atomically, then delete it; a reader never sees it half-deleted under its name."""
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def publish(tmp: Path, final: Path) -> Path:
    """Move a fully written temporary folder into place; if another process won the race, keep theirs.

    ``os.replace`` of a folder is atomic and fails when the destination is a non-empty folder, so a
    concurrent writer can never leave a mixture of two copies.
    """
    for _ in range(3):
        try:
            os.replace(tmp, final)
            return final
        except OSError:
            if cache_is_valid(final):
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            discard(final)
    raise OSError(f"could not move {tmp} to {final}")


def write_cache(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, gguf_path: Path,
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
                      "sha256": gguf_sha256(gguf_path), "layout": CACHE_LAYOUT}
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=1))
            return publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:  # read-only or full disk
        # stacklevel 4: the caller of load_model (load_model -> sources._load_gguf -> write_cache)
        warnings.warn(f"could not write the dequantised cache under {root} ({e}); the next load will be slow again",
                      RuntimeWarning, stacklevel=4)
        return None


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


# ------------------------------------------------------------------------------------------------ pruning


def superseded_caches(root: Path, gguf_path: Path, keep: Path) -> list[Path]:
    """Complete cache entries that the entry ``keep`` (just written for ``gguf_path``) makes redundant.

    An entry ``E`` in ``root`` is superseded only if ALL of these hold:

    * ``E`` is not ``keep`` and its name is exactly ``<gguf stem>-<24 hex digits>`` (the same file name;
      ``model-v2-...`` is not an entry of ``model.gguf``, and unrelated folders never match);
    * ``E`` holds our marker (:data:`CACHE_MARKER`, written last, so the entry is complete) and it parses;
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
    sha = gguf_sha256(gguf_path)
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
        if (entry == keep or not name.startswith(prefix) or len(key) != KEY_CHARS or not set(key) <= hexdigits
                or entry.is_symlink() or not entry.is_dir()):
            continue
        try:
            marker = json.loads((entry / CACHE_MARKER).read_text())
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


def prune_superseded(root: Path, gguf_path: Path, keep: Path) -> list[Path]:
    """Remove the entries :func:`superseded_caches` names (best effort); returns those removed."""
    removed = []
    try:
        for entry in superseded_caches(root, gguf_path, keep):
            discard(entry)
            if not entry.exists():
                removed.append(entry)
    except OSError:  # pruning is housekeeping: it never fails a load
        pass
    return removed
