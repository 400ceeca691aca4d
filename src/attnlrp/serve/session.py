"""What the explorer's server serves: the model loaded once, its tokenizer, where it came from, what kind of
head it has, its latent structure and the concept atlas, if one was given. Built once at start, read by every
request.

The model and its tokenizer belong to the model's worker thread (:mod:`attnlrp.serve.worker`). The handlers
tokenize with their own copy of the tokenizer (``front_tokenizer``): cheap calls such as ``/api/tokenize`` and the
prompt-length check answer without waiting in the model's queue, and a fast tokenizer is never used from two
threads at once.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ExplainError
from ..models.adapter import ModelAdapter, bos_policy, prepare_prompt
from ..tokens import TokenizedPrompt


@dataclass
class ServeSession:
    """The loaded model and what the server needs to know about it (see :meth:`create`)."""

    model: nn.Module
    tokenizer: Any
    source: str
    kind: str  # the head kind of ModelAdapter: causal-lm, masked-lm, seq-cls, seq2seq, image-cls, custom
    atlas_path: Path | None = None
    atlas_info: dict[str, Any] | None = None
    image_processor: Any = None
    layers: int | None = None
    heads: int | None = None
    neurons: int | None = None
    context: int | None = None  # the longest input the model takes, if it says
    vocab_size: int | None = None
    front_tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def create(cls, model: nn.Module, tokenizer: Any = None, *, source: str | None = None,
               atlas: str | os.PathLike | None = None, image_processor: Any = None) -> "ServeSession":
        """Look the model over once: its head, layers, heads and neurons per layer (``None`` where attnlrp cannot
        read latents from its layers), its context; open the atlas once to check it and describe it."""
        adapter = ModelAdapter.of(model)
        kind = adapter.head
        if kind != "image-cls" and tokenizer is None:
            raise ExplainError(f"{type(model).__name__} needs a tokenizer to be served")
        layers = heads = neurons = None
        try:
            sites = adapter.layer_sites()
        except ExplainError:  # e.g. mixture-of-experts MLPs: everything but latents and steering still works
            sites = []
        if sites:
            layers, heads, neurons = len(sites), sites[0].num_heads, sites[0].num_neurons
        atlas_path, atlas_info = None, None
        if atlas is not None:
            from ..concepts import Atlas

            with Atlas.open(atlas) as opened:
                info = opened.describe()
            atlas_path = Path(info.pop("path"))
            atlas_info = {**info, "file": atlas_path.name}
        name = source or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        return cls(
            model=model, tokenizer=tokenizer, source=str(name), kind=kind, atlas_path=atlas_path,
            atlas_info=atlas_info, image_processor=image_processor, layers=layers, heads=heads, neurons=neurons,
            context=adapter.max_length(tokenizer) if tokenizer is not None else None,
            vocab_size=adapter.vocab_size(tokenizer) if tokenizer is not None else None,
            front_tokenizer=copy.deepcopy(tokenizer) if tokenizer is not None else None,
        )

    @classmethod
    def from_loaded(cls, loaded: Any, *, atlas: str | os.PathLike | None = None,
                    image_processor: Any = None) -> "ServeSession":
        """From what ``attnlrp.models.load_model`` returns (a ``LoadedModel``)."""
        return cls.create(loaded.model, loaded.tokenizer, source=loaded.source, atlas=atlas,
                          image_processor=image_processor)

    @property
    def is_language_model(self) -> bool:
        """Whether the model takes text (every head kind but an image classifier)."""
        return self.kind != "image-cls"

    def tokenize(self, prompt: str | list[int], add_bos: bool | None = None) -> TokenizedPrompt:
        """The tokens the explainers will see for ``prompt`` (text, or ids used as given), with the handlers' own
        tokenizer."""
        if not self.is_language_model:
            raise ExplainError("this server's model is an image classifier; it takes images, not text")
        if isinstance(prompt, list) and self.vocab_size is not None:
            bad = [i for i in prompt if not 0 <= i < self.vocab_size]
            if bad:
                raise ExplainError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        if isinstance(prompt, list) and not prompt:
            raise ExplainError("token_ids is empty: give at least one token id")
        policy = bos_policy(add_bos, self.front_tokenizer, self.kind)
        return prepare_prompt(self.front_tokenizer, prompt, True, add_bos=policy)

    def image_info(self) -> dict[str, Any] | None:
        """For an image classifier: the input size, channels and class labels the page shows."""
        if self.is_language_model:
            return None
        config = getattr(self.model, "config", None)
        size = getattr(config, "image_size", None)
        height, width = (size, size) if isinstance(size, int) else (tuple(size) if size else (None, None))
        labels = getattr(config, "id2label", None) or {}
        return {"width": width, "height": height, "channels": int(getattr(config, "num_channels", 3)),
                "labels": [str(labels[k]) for k in sorted(labels, key=int)]}
