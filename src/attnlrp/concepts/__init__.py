"""Concept atlas: for each MLP neuron of chosen layers, the corpus windows that excite it most (ActMax) and
those where it is most relevant for the model's own next-token prediction (RelMax), stored in one SQLite file.

>>> atlas = build_atlas(model, tokenizer, layers=[7, 15, 22], top_k=10)   # resumable; default corpus: pydoc
>>> atlas.samples(15, 42, by="relmax")[0].text
"""

from .atlas import Atlas, Sample
from .build import ChunkDone, build_atlas, default_layers, model_fingerprint, resolve_layers
from .corpus import Corpus, Window, default_corpus, load_corpus, make_windows
from .errors import AtlasError, AtlasMismatchError
from .store import default_db_path

__all__ = [
    "Atlas",
    "AtlasError",
    "AtlasMismatchError",
    "ChunkDone",
    "Corpus",
    "Sample",
    "Window",
    "build_atlas",
    "default_corpus",
    "default_db_path",
    "default_layers",
    "load_corpus",
    "make_windows",
    "model_fingerprint",
    "resolve_layers",
]
