"""The atlas on disk: one SQLite file (stdlib ``sqlite3``).

Tables: ``meta`` (what the atlas was built from, checked on resume), ``windows`` (each processed window's token
ids and surfaces), ``chunks`` (one row per committed chunk: the "chunk done" marker), ``samples`` (the current
top-k per ranking, layer and neuron, keyed by window: a window can never be stored twice for one neuron) and
``runs`` (each build invocation, for the record).

**Atomicity.** A chunk's windows, its top-k changes and its marker are written in one ``BEGIN IMMEDIATE …
COMMIT`` transaction, so after a crash at any instant the file holds either all of a chunk or none of it, and
the windows done are exactly those of the committed chunks.

**Journal.** While building, the file is in WAL mode with ``synchronous=FULL``: a commit is one append and one
fsync of the write-ahead log (durable, also against power loss), and readers — ``concepts show`` or a progress
poll on the half-built atlas — never block the writer nor see half a chunk. When the build stops (finished,
stopped at ``limit`` or interrupted with Ctrl-C) it switches back to the rollback journal, which folds the log
into the main file: at rest the atlas is one self-contained file that can be copied alone. After a SIGKILL the
log stays beside the file until the next open, which replays it (don't copy the file alone in that state).

**Per-token values** of every sample (the neuron's activation and relevance at each token of the window, float32)
are stored with it, so ``concepts show`` needs no model and shows exactly the pass the ranking came from; about
``2 × k × neurons × (8 × tokens + 60)`` bytes per layer (≈ 15 MB for SmolLM2, k = 10, 48-token windows).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .corpus import Window
from .errors import AtlasError, AtlasMismatchError
from .topk import TopK

FORMAT = "attnlrp-concept-atlas"
SCHEMA_VERSION = 1
KINDS = ("actmax", "relmax")
VALUE_DTYPE = "<f4"  # per-token values: little-endian float32

# Keys that must match to resume: anything else would silently mix two atlases.
IDENTITY_KEYS = ("format", "schema_version", "model_fingerprint", "dtype", "corpus_sha256", "windows_sha256",
                 "window", "layers", "top_k", "method", "batch_size", "attnlrp_version", "torch_version",
                 "transformers_version")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (run INTEGER PRIMARY KEY, pid INTEGER NOT NULL, started REAL NOT NULL);
CREATE TABLE windows (
    window_id INTEGER PRIMARY KEY, document INTEGER NOT NULL, start INTEGER NOT NULL,
    prefix INTEGER NOT NULL, token_ids TEXT NOT NULL, tokens TEXT NOT NULL);
CREATE TABLE chunks (
    chunk INTEGER PRIMARY KEY, first_window INTEGER NOT NULL UNIQUE, end_window INTEGER NOT NULL UNIQUE,
    run INTEGER NOT NULL REFERENCES runs(run), committed REAL NOT NULL);
CREATE TABLE samples (
    kind TEXT NOT NULL, layer INTEGER NOT NULL, neuron INTEGER NOT NULL,
    window_id INTEGER NOT NULL REFERENCES windows(window_id), position INTEGER NOT NULL, score REAL NOT NULL,
    activations BLOB NOT NULL, relevance BLOB NOT NULL,
    PRIMARY KEY (kind, layer, neuron, window_id)) WITHOUT ROWID;
"""


def default_db_path(model: str | os.PathLike | None = None) -> Path:
    """``$ATTNLRP_CACHE`` or ``~/.cache/attnlrp``, then ``concepts-<model>.sqlite``; ``<model>`` is the name
    given (a folder's or file's name for a path), ``smollm2`` for the embedded default."""
    env = os.environ.get("ATTNLRP_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "attnlrp"
    name = "smollm2" if model is None else Path(os.fspath(model)).name or str(model)
    if name.lower().endswith(".gguf"):
        name = name[:-5]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.").lower() or "model"
    return root / f"concepts-{slug}.sqlite"


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) that waits for a busy lock."""
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def read_meta(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The meta table, or an error if the file is not a concept atlas."""
    try:
        rows = conn.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.DatabaseError as e:  # no meta table, or not an SQLite file at all
        raise AtlasError(f"{path} is not a concept atlas ({e}); pass another --db or delete the file") from None
    meta = {key: json.loads(value) for key, value in rows}
    if meta.get("format") != FORMAT:
        raise AtlasError(f"{path} is an SQLite file but not a concept atlas; pass another --db")
    return meta


def open_for_build(path: Path, meta: dict[str, Any]) -> tuple[sqlite3.Connection, int]:
    """Create the atlas, or reopen one built with the same identity; returns the connection and this run's id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        existed = _has_tables(conn, path)  # not the file size: after a kill the data may sit in the WAL alone
        if existed:
            _check_identity(read_meta(conn, path), meta, path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not existed:
                for statement in filter(str.strip, _SCHEMA.split(";")):  # executescript would commit early
                    conn.execute(statement)
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [(key, json.dumps(value)) for key, value in meta.items()])
            run = conn.execute("INSERT INTO runs (pid, started) VALUES (?, ?)", (os.getpid(), time.time())).lastrowid
            assert run is not None  # an INSERT sets lastrowid
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except BaseException:
        conn.close()
        raise
    return conn, int(run)


def _has_tables(conn: sqlite3.Connection, path: Path) -> bool:
    try:
        return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0
    except sqlite3.DatabaseError as e:
        raise AtlasError(f"{path} is not a concept atlas ({e}); pass another --db or delete the file") from None


def _check_identity(stored: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    differ = [key for key in IDENTITY_KEYS if stored.get(key) != wanted.get(key)]
    if differ:
        lines = "; ".join(f"{key}: stored {_short(stored.get(key))}, now {_short(wanted.get(key))}" for key in differ)
        raise AtlasMismatchError(
            f"the atlas at {path} was built with other settings ({lines}); resuming would mix two atlases. "
            f"Use the same settings to resume, or another --db (or delete the file) for a new atlas"
        )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "…"


def windows_done(conn: sqlite3.Connection) -> int:
    """Windows covered by committed chunks (they are contiguous from window 0)."""
    return int(conn.execute("SELECT COALESCE(MAX(end_window), 0) FROM chunks").fetchone()[0])


def chunks_done(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


def load_state(conn: sqlite3.Connection, kind: str, layer: int, neurons: int, k: int, tokens: int) -> TopK:
    """The stored top-k of one ranking and layer as tensors, in the merge order (score down, window up)."""
    state = TopK.empty(neurons, k, tokens)
    rows = conn.execute(
        "SELECT neuron, window_id, position, score FROM samples WHERE kind = ? AND layer = ? "
        "ORDER BY neuron, score DESC, window_id", (kind, layer)).fetchall()
    if not rows:
        return state
    data = np.array(rows, dtype=np.float64)
    neuron = data[:, 0].astype(np.int64)
    slot = np.arange(len(rows)) - np.searchsorted(neuron, neuron, side="left")
    if slot.max() >= k:
        raise AtlasError(f"the stored atlas holds more than {k} samples for a neuron; it is damaged")
    state.windows[neuron, slot] = torch.from_numpy(data[:, 1].astype(np.int64))
    state.positions[neuron, slot] = torch.from_numpy(data[:, 2].astype(np.int64))
    state.scores[neuron, slot] = torch.from_numpy(data[:, 3].copy())  # REAL is IEEE double: exact
    return state


def commit_chunk(conn: sqlite3.Connection, *, chunk: int, run: int, windows: list[Window],
                 deletes: Iterable[tuple], inserts: Iterable[tuple]) -> None:
    """One transaction: the chunk's windows, the top-k changes and the "chunk done" marker, or nothing.

    ``deletes``: (kind, layer, neuron, window) rows to remove; ``inserts``: full ``samples`` rows to add.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if windows_done(conn) != windows[0].index:
            raise AtlasError(f"another build committed to this atlas meanwhile (it is at window "
                             f"{windows_done(conn)}, this one at {windows[0].index}); run one build at a time")
        conn.executemany(
            "INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?)",
            [(w.index, w.document, w.start, w.prefix, json.dumps(w.token_ids),
              json.dumps(w.tokens, ensure_ascii=False)) for w in windows])
        conn.executemany("DELETE FROM samples WHERE kind = ? AND layer = ? AND neuron = ? AND window_id = ?", deletes)
        conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", inserts)
        conn.execute("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                     (chunk, windows[0].index, windows[-1].index + 1, run, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def finish(conn: sqlite3.Connection) -> None:
    """Fold the write-ahead log into the file (one self-contained file at rest) and close; best effort."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error:
        pass  # another reader holds it open: the log stays until the last connection closes
    finally:
        conn.close()


def values_blob(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=VALUE_DTYPE).tobytes()


def blob_values(blob: bytes) -> list[float]:
    return np.frombuffer(blob, dtype=VALUE_DTYPE).astype(np.float64).tolist()
