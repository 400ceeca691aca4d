"""Building an atlas: windows → batched AttnLRP passes (``latents=True``) → per-layer top-k → committed chunks.

One explained pass per window gives both rankings: the MLP neurons' activations (ActMax) and their relevance
for the model's own next-token prediction at the window's last position (RelMax), from the same forward and
backward pass.

RelMax scores a neuron by its relevance **summed over the window's scored tokens**, not by its largest value at
one token: the sum is the neuron's whole share of the explained logit (the neurons and tokens of a layer's MLP
add up to the relevance that enters that branch), the quantity Concept Relevance Propagation ranks reference
samples by (a channel's relevance summed over positions); a maximum would favour one spike and ignore a neuron
that carries the prediction from several tokens. The most relevant token is recorded as the sample's position.

Work is done in chunks of ``chunk_size`` windows (a multiple of ``batch_size``, aligned to window 0); each
chunk's top-k changes and its "done" marker are committed together (see :mod:`attnlrp.concepts.store`), so an
interrupted build resumes at the first uncommitted chunk and ends with the atlas an uninterrupted build gives.

**Several processes** (``torchrun … -m attnlrp.cli concepts build …``, or any caller inside an initialised
``torch.distributed`` process group): the chunks still to do are dealt out in rounds, chunk ``j`` of a round to
process ``j``; each process ranks its chunk's windows on its own (a top-k per neuron, with the per-token values)
and sends process 0 only the entries that beat the atlas's current k-th score (no other can enter it). Process 0
is the only one that opens the SQLite file: it merges the chunks in chunk order and commits each one as a
one-process build would, then sends every process the new k-th scores. The atlas is therefore the one a single
process builds, row for row (the merge order is total: score, then window), it resumes the same way with any
number of processes, and only process 0's machine needs the file. Before any work, process 0 checks that every
process has the same settings (model fingerprint, corpus windows, layers, k, method, batch and chunk size, …);
the number of processes changes no result, so it is not part of the atlas's settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..core import method_names
from ..distributed import broadcast, current, gather_to_root
from ..explain import Explainer
from .atlas import Atlas
from .corpus import CorpusSpec, Window, load_corpus, make_windows, prefix_ids, windows_sha256
from .errors import AtlasError
from .store import (FORMAT, IDENTITY_KEYS, KINDS, SCHEMA_VERSION, chunks_done, commit_chunk, default_db_path, finish,
                    load_state, open_for_build, values_blob, windows_done)
from .topk import TopK, changes, entry_rows

# relevance = activation × modified gradient; the plain "gradient" method has no per-unit relevance to rank by
RELMAX_METHODS = method_names(has_unit_relevance=True)


@dataclass(frozen=True)
class ChunkDone:
    """Passed to ``on_chunk`` after each committed chunk."""

    chunk: int  # the chunk's number (from 0 over all runs)
    windows_done: int  # windows committed so far
    windows_target: int  # windows this run stops at (the corpus, or ``limit``)


def default_layers(num_layers: int) -> list[int]:
    """Three layers spread over the model, at a quarter, half and three quarters of its depth (e.g. 7, 15, 22
    of SmolLM2's 30): early, middle and late features without the cost of all layers."""
    return sorted({num_layers // 4, num_layers // 2, (3 * num_layers) // 4})


def resolve_layers(layers: Sequence[int] | str | None, num_layers: int) -> list[int]:
    """``None``: :func:`default_layers`; ``"all"``: every layer; else the given indices (checked, sorted)."""
    if layers is None:
        return default_layers(num_layers)
    if isinstance(layers, str):
        if layers.strip().lower() != "all":
            raise AtlasError(f"layers must be a list of layer indices or 'all', not {layers!r}")
        return list(range(num_layers))
    chosen = sorted({int(layer) for layer in layers})
    if not chosen:
        raise AtlasError("no layer chosen")
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad:
        raise AtlasError(f"layer {bad[0]} does not exist; the model has layers 0..{num_layers - 1}")
    return chosen


# config entries that say how a model was loaded or is called, not what it computes
_LOAD_KEYS = {"architectures", "dtype", "torch_dtype", "transformers_version", "name_or_path", "use_cache",
              "output_attentions", "output_hidden_states", "return_dict"}


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the config (less how it was loaded) and the parameters' names, shapes, dtypes, float64 sums
    and norms: tells two models apart without their paths, which differ between loads of the same weights."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        kept = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _LOAD_KEYS}
        digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            total = float(parameter.sum(dtype=torch.float64))
            squares = float(torch.linalg.vector_norm(parameter, dtype=torch.float64))
            digest.update(f"{name}|{tuple(parameter.shape)}|{parameter.dtype}|{total!r}|{squares!r};".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"attnlrp_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__}


def _spans(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """[start, end) cut at the multiples of ``size``: batches and chunks stay aligned to window 0."""
    spans = []
    while start < end:
        stop = min((start // size + 1) * size, end)
        spans.append((start, stop))
        start = stop
    return spans


def _check_arguments(top_k: int, batch_size: int, chunk_size: int, limit: int | None, method: str) -> None:
    if top_k < 1:
        raise AtlasError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise AtlasError(f"batch_size must be at least 1, got {batch_size}")
    if chunk_size < 1 or chunk_size % batch_size:
        raise AtlasError(f"chunk_size must be a positive multiple of batch_size ({batch_size}), got {chunk_size}")
    if limit is not None and limit < 1:
        raise AtlasError(f"limit must be a positive number of windows, got {limit}")
    if method not in RELMAX_METHODS:
        raise AtlasError(f"method must be one of {', '.join(RELMAX_METHODS)}, not {method!r}")


def build_atlas(
    model: nn.Module,
    tokenizer,
    corpus: CorpusSpec = None,
    db_path: str | os.PathLike | None = None,
    *,
    layers: Sequence[int] | str | None = None,
    top_k: int = 10,
    window: int = 48,
    batch_size: int = 8,
    chunk_size: int = 64,
    limit: int | None = None,
    method: str = "attnlrp",
    model_name: str | None = None,
    progress: bool = True,
    on_chunk: Callable[[ChunkDone], None] | None = None,
) -> Atlas | None:
    """Build (or resume) the concept atlas of ``model`` over ``corpus`` and return it opened.

    ``corpus``: ``None`` (CPython's ``pydoc_data.topics``), a text file path, or a list of strings.
    ``db_path``: the SQLite file (default :func:`default_db_path` of ``model_name``, else of the config's
    ``_name_or_path``; the CLI names it after ``--model``: ``concepts-smollm2.sqlite``). ``layers``: indices,
    ``"all"``, or ``None`` for :func:`default_layers`. ``window``: text tokens per window. ``limit``: stop after
    the first ``limit`` windows (a later call with a larger limit, or none, carries on). ``method``: the
    relevance for RelMax. An existing file built with other settings is an :class:`AtlasMismatchError`.

    Called by every process of an initialised ``torch.distributed`` process group (as ``torchrun`` starts them),
    with the same arguments, it shares the chunks out among them (module docstring): process 0 writes the file and
    returns the atlas, the others return ``None``; ``on_chunk`` and the progress bar run on process 0.
    """
    _check_arguments(top_k, batch_size, chunk_size, limit, method)
    rank, world = current()
    explainer = Explainer(model, tokenizer, method=method, model_name=model_name)
    if explainer.head_kind != "causal-lm":
        raise AtlasError("a concept atlas ranks by the next-token prediction: it needs a causal language model "
                         f"(…ForCausalLM), not a {explainer.head_kind} head")
    sites = explainer.adapter.layer_sites()
    widths = {site.num_neurons for site in sites}
    if len(widths) != 1:
        raise AtlasError(f"the layers' MLPs differ in width ({sorted(widths)}); the atlas needs one width")
    neurons = widths.pop()
    chosen = resolve_layers(layers, len(sites))
    corpus = load_corpus(corpus)
    windows = make_windows(tokenizer, corpus, window)
    tokens = max(len(w) for w in windows)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and tokens > positions:
        raise AtlasError(f"a window of {tokens} tokens is longer than the model's {positions} positions; "
                         "pass a smaller window")
    name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    meta = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "model_name": str(name),
        "model_fingerprint": model_fingerprint(model), "dtype": str(next(model.parameters()).dtype),
        "corpus": corpus.description, "corpus_sha256": corpus.sha256, "windows_sha256": windows_sha256(windows),
        "windows_total": len(windows), "window": window, "prefix_ids": prefix_ids(tokenizer), "layers": chosen,
        "num_layers": len(sites), "neurons": neurons, "top_k": top_k, "method": method, "batch_size": batch_size,
        "chunk_size": chunk_size, "created": time.time(), **_versions(),
    }
    path = Path(db_path).expanduser() if db_path is not None else default_db_path(str(name))
    target = len(windows) if limit is None else min(limit, len(windows))
    builder = _Builder(explainer, chosen, neurons, top_k, tokens, windows, batch_size, rank, world)
    if world > 1:  # every process: the same model, corpus and options as process 0's, or none starts
        same = {key: meta[key] for key in IDENTITY_KEYS} | {"chunk_size": chunk_size, "windows_target": target}
        identities = gather_to_root(same, rank, world) or []
        _on_root(rank, world, lambda: _check_processes(identities))
    if rank != 0:
        _, start = _on_root(rank, world, lambda: (None, None))
        builder.follow(start, target, chunk_size)
        return None
    try:
        (conn, run), start = _on_root(rank, world, lambda: builder.open(path, meta, target), path)
        try:
            builder.lead(conn, run, start, target, chunk_size, progress, on_chunk, path)
        finally:
            finish(conn)
    except sqlite3.Error as e:  # locked by another writer for 30 s, disk full, …
        raise AtlasError(f"the atlas file {path}: {e}") from None
    return Atlas.open(path)


def _check_processes(identities: list[dict]) -> tuple[None, None]:
    """On process 0: every process was given the same settings, model and corpus as process 0."""
    first = identities[0]
    for rank, other in enumerate(identities[1:], start=1):
        differ = [key for key in first if other.get(key) != first.get(key)]
        if differ:
            raise AtlasError(f"process {rank} of {len(identities)} was started with other settings than process 0 "
                             f"({', '.join(differ)} differ); start every process with the same model, corpus and "
                             "options")
    return None, None


def _on_root(rank: int, world: int, work: Callable[[], tuple[object, object]], path: Path | None = None):
    """``work()`` on process 0, which returns what it keeps and what every process is told; a failure is told
    instead, and every process raises it, so that none waits for ever on a process 0 that has stopped.
    Returns ``(kept, told)`` on process 0 and ``(None, told)`` on the others."""
    kept, told, failure = None, None, None
    if rank == 0:
        try:
            kept, told = work()
        except Exception as e:  # not KeyboardInterrupt: then every process is being stopped, none listens
            failure = e
    answer = broadcast(("error", _describe(failure, path)) if failure is not None else ("ok", told), rank, world)
    if failure is not None:
        raise failure
    if answer[0] == "error":
        raise AtlasError(f"process 0 stopped: {answer[1]}")
    return kept, answer[1]


def _describe(error: BaseException, path: Path | None = None) -> str:
    if isinstance(error, sqlite3.Error) and path is not None:
        return f"the atlas file {path}: {error}"
    return str(error) or type(error).__name__


class _Builder:
    """The chunks of this process, ranked; on process 0 also the running top-k of every (ranking, layer), the
    last committed state to diff against, and the writing."""

    def __init__(self, explainer: Explainer, layers: list[int], neurons: int, k: int, tokens: int,
                 windows: list[Window], batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.explainer = explainer
        self.layers = layers
        self.neurons, self.k, self.tokens = neurons, k, tokens
        self.windows = windows
        self.batch_size = batch_size
        self.rank, self.world = rank, world
        self.states: dict[tuple[str, int], TopK] = {}
        self.committed: dict[tuple[str, int], torch.Tensor] = {}
        self.failure: Exception | None = None  # this process's own error, raised once every process knows

    # ----------------------------------------------------------------------------------------- every process
    def rank_chunk(self, start: int, end: int, floors: dict[tuple[str, int], torch.Tensor],
                   on_batch: Callable[[int], object]) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
        """One chunk's own top-k of every (ranking, layer), batch by batch, less what cannot enter the atlas."""
        states = {(kind, layer): TopK.empty(self.neurons, self.k, self.tokens) for kind in KINDS
                  for layer in self.layers}
        for batch_start, batch_end in _spans(start, end, self.batch_size):
            self.add(states, self.windows[batch_start:batch_end])
            on_batch(batch_end - batch_start)
        return {key: state.above(floors[key]) for key, state in states.items()}

    def add(self, states: dict[tuple[str, int], TopK], batch: list[Window]) -> None:
        """One explained pass over a batch; both rankings of every chosen layer merged into ``states``."""
        explanations = self.explainer.explain_batch([list(w.token_ids) for w in batch], latents=True)
        rows, layers = len(batch), torch.tensor(self.layers)
        act = torch.zeros(rows, len(self.layers), self.tokens, self.neurons)
        rel = torch.zeros_like(act)
        scored = torch.zeros(rows, self.tokens, dtype=torch.bool)
        for row, (w, explanation) in enumerate(zip(batch, explanations)):
            latents = explanation.latents
            act[row, :, : len(w)] = latents.activations.index_select(0, layers)
            rel[row, :, : len(w)] = latents.neurons.index_select(0, layers)
            scored[row, w.first_scored : len(w)] = True
        if not (torch.isfinite(act).all() and torch.isfinite(rel).all()):
            raise AtlasError(f"non-finite activation or relevance in windows {batch[0].index}..{batch[-1].index}; "
                             "run the model in float32")
        off = ~scored[:, None, :, None]
        peak, peak_at = act.masked_fill(off, float("-inf")).max(dim=2)  # (rows, layers, neurons); first max
        total = rel.double().masked_fill(off, 0.0).sum(dim=2)
        most_at = rel.masked_fill(off, float("-inf")).argmax(dim=2)
        ids = torch.tensor([w.index for w in batch])
        for i, layer in enumerate(self.layers):
            states["actmax", layer].merge(peak[:, i], ids, peak_at[:, i], act[:, i], rel[:, i])
            states["relmax", layer].merge(total[:, i], ids, most_at[:, i], act[:, i], rel[:, i])

    def rounds(self, done: int, target: int, chunk_size: int) -> list[list[tuple[int, int]]]:
        """The chunks still to do, ``world`` to a round: chunk ``j`` of a round is process ``j``'s."""
        spans = _spans(done, target, chunk_size)
        return [spans[i : i + self.world] for i in range(0, len(spans), self.world)]

    def mine(self, chunks: list[tuple[int, int]], floors, on_batch) -> tuple[str, object] | None:
        """This process's chunk of a round, ranked: ``("ok", entries)``, ``("error", message)`` if it failed
        (told to process 0, which stops every process), or ``None`` when the round has no chunk for it."""
        if self.rank >= len(chunks):
            return None
        start, end = chunks[self.rank]
        try:
            return "ok", self.rank_chunk(start, end, floors, on_batch)
        except Exception as e:
            if self.world == 1:
                raise
            self.failure = e
            return "error", f"process {self.rank}, windows {start}..{end - 1}: {_describe(e)}"

    def follow(self, start: dict, target: int, chunk_size: int) -> None:
        """Processes other than 0: rank the chunks process 0 deals out, until it says the build is over."""
        floors = start["floors"]
        for chunks in self.rounds(start["done"], target, chunk_size):
            gather_to_root(self.mine(chunks, floors, lambda n: None), self.rank, self.world)
            answer = broadcast(None, self.rank, self.world)
            if self.failure is not None:
                raise self.failure
            if "error" in answer:
                raise AtlasError(f"the build stopped: {answer['error']}")
            floors = answer["floors"]

    # ------------------------------------------------------------------------------------------- process 0
    def load(self, conn) -> None:
        """The stored top-k, as the running top-k: ranks only (no per-token values, ``tokens=0``), since a
        committed entry's values are never written again and a new entry's come with its chunk's entries."""
        for kind in KINDS:
            for layer in self.layers:
                state = load_state(conn, kind, layer, self.neurons, self.k, 0)
                self.states[kind, layer] = state
                self.committed[kind, layer] = state.windows.clone()

    def floors(self) -> dict[tuple[str, int], torch.Tensor]:
        return {key: state.floor() for key, state in self.states.items()}

    def open(self, path: Path, meta: dict, target: int) -> tuple[tuple[sqlite3.Connection, int], dict]:
        """Process 0: open (or create) the atlas and read where it stands; what the others need of it."""
        conn, run = open_for_build(path, meta)
        try:
            done = windows_done(conn)
            if done < target:
                self.load(conn)
        except BaseException:
            finish(conn)
            raise
        return (conn, run), {"done": done, "floors": self.floors()}

    def lead(self, conn, run: int, start: dict, target: int, chunk_size: int, progress: bool,
             on_chunk: Callable[[ChunkDone], None] | None, path: Path) -> None:
        """Process 0: deal out the chunks round by round, rank its own, merge and commit all in chunk order."""
        from tqdm.auto import tqdm

        done, floors, chunk = start["done"], start["floors"], chunks_done(conn)
        with tqdm(total=target, initial=done, unit="window", desc="concept atlas", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for chunks in self.rounds(done, target, chunk_size):
                error = None
                try:
                    parts = gather_to_root(self.mine(chunks, floors, bar.update), self.rank, self.world) or []
                    for j, ((first, end), part) in enumerate(zip(chunks, parts)):
                        if part[0] == "error":
                            error = part[1]
                            break
                        for key, entries in part[1].items():
                            self.states[key].combine(TopK.from_entries(entries, self.neurons, self.k, 0))
                        self.commit(conn, chunk, run, self.windows[first:end], part[1])
                        if j != self.rank:
                            bar.update(end - first)
                        bar.set_postfix(chunks=chunk + 1)
                        if on_chunk is not None:
                            on_chunk(ChunkDone(chunk, end, target))
                        chunk += 1
                except Exception as e:  # not KeyboardInterrupt: then every process is being stopped
                    if self.world == 1:
                        raise
                    error, self.failure = _describe(e, path), e
                floors = self.floors()
                broadcast({"error": error} if error is not None else {"floors": floors}, self.rank, self.world)
                if self.failure is not None:
                    raise self.failure
                if error is not None:
                    raise AtlasError(f"the build stopped: {error}; the chunks before it are kept in {path}: run "
                                     "the same command to resume")

    def commit(self, conn, chunk: int, run: int, windows: list[Window],
               entries: dict[tuple[str, int], dict[str, torch.Tensor]]) -> None:
        """Write what changed since the last commit, with the chunk's windows and marker, in one transaction; the
        new samples' per-token values come from the chunk's ``entries`` (every new sample is one of them)."""
        deletes: list[tuple] = []
        inserts: list[tuple] = []
        for (kind, layer), state in self.states.items():
            gone, came = changes(self.committed[kind, layer], state)
            deletes.extend((kind, layer, neuron, window) for neuron, window in gone.tolist())
            if not len(came):
                continue
            neuron, slot = came[:, 0], came[:, 1]
            new_windows = state.windows[neuron, slot]
            part = entries[kind, layer]
            try:
                rows = entry_rows(part, neuron, new_windows)
            except ValueError:  # pragma: no cover
                raise AtlasError("internal error: a new sample is not from the chunk being committed") from None
            acts, rels = part["activations"][rows].numpy(), part["relevance"][rows].numpy()
            for i, (n, w, position, score) in enumerate(zip(neuron.tolist(), new_windows.tolist(),
                                                            state.positions[neuron, slot].tolist(),
                                                            state.scores[neuron, slot].tolist())):
                length = len(self.windows[w])
                inserts.append((kind, layer, n, w, position, score, values_blob(acts[i, :length]),
                                values_blob(rels[i, :length])))
        commit_chunk(conn, chunk=chunk, run=run, windows=windows, deletes=deletes, inserts=inserts)
        for key, state in self.states.items():
            self.committed[key] = state.windows.clone()
