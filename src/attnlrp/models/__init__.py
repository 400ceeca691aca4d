"""Loading models to explain: a local folder, a GGUF file, a hub id, or the embedded default.

Everything here exists so that the rest of the library can assume one thing: a plain PyTorch
``PreTrainedModel`` (no packed quantised layers, fp32 unless asked otherwise, eval mode) and its
tokenizer. GGUF files are dequantised on load, which is slow (tens of seconds even for 135 M
parameters), so the first load writes a dequantised safetensors copy to a cache folder and later loads
read that copy in well under a second. The copy is keyed on the file's bytes (not its path), so every
environment that installs the same file shares one copy, and writing one removes those it supersedes.

Every failure a user can cause (missing package, bad path, pickle checkpoint, unreachable hub, unknown
dtype) raises :class:`ModelLoadError` with a message that says what to do, not a library traceback.

The modules:

* :mod:`.base`: what every source shares: :class:`LoadedModel`, :class:`ModelLoadError`, the dtype, device and
  kind (head) resolution, and the one ``from_pretrained`` path;
* :mod:`.sources`: :func:`load_model` and the sources it tells apart (folders, hub ids, GGUF files, the
  embedded packages);
* :mod:`.gguf`: dequantising a GGUF file into plain linear layers;
* :mod:`.cache`: the on-disk cache of dequantised GGUF files (keys, validity, atomic publishing, pruning).
"""

from .base import KINDS, LoadedModel, ModelLoadError, resolve_device, resolve_dtype
from .sources import embedded_smollm2_path, load_model

__all__ = ["LoadedModel", "ModelLoadError", "load_model", "resolve_dtype", "resolve_device", "embedded_smollm2_path",
           "KINDS"]
