"""A concept atlas built by several processes (torchrun, gloo on CPU) is the one-process atlas, row for row, and
a sharded build stopped part-way resumes, with one process or two, to that same atlas.

The builds run `attnlrp concepts build` on a tiny Llama saved to a folder: the sharded ones under `torchrun
--standalone --nproc_per_node 2` in a subprocess, the one-process ones in this process with one thread (as the
subprocesses: OMP_NUM_THREADS=1). A build stops part-way deterministically at `--limit N`; nothing here waits
for time to pass (the subprocess timeout only bounds a broken run).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest
import torch

from attnlrp.cli import main
from attnlrp.concepts.build import _check_processes
from attnlrp.concepts.errors import AtlasError
from attnlrp.concepts.topk import TopK, entry_rows
from tiny import WORDS, tiny_llama, word_tokenizer

WINDOWS = 24  # 12 paragraphs of 12 words, windows of 6 words: 2 windows each
CHUNK = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    tiny_llama().save_pretrained(str(folder / "model"))
    word_tokenizer().save_pretrained(str(folder / "model"))
    rng = random.Random(7)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(WINDOWS // 2)]
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(setup):
    """The atlas one process builds, uninterrupted."""
    db = setup / "reference.sqlite"
    assert one_process(setup, db) == 0
    return db


def build_args(folder, db, *extra: str) -> list[str]:
    return ["concepts", "build", "--model", str(folder / "model"), "--corpus", str(folder / "corpus.txt"),
            "--db", str(db), "--layers", "0,1", "--top-k", "3", "--window", "6", "--batch-size", "1",
            "--chunk-size", str(CHUNK), "--no-progress", *extra]


def one_process(folder, db, *extra: str) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes (OMP_NUM_THREADS=1)
    try:
        return main(build_args(folder, db, *extra))
    finally:
        torch.set_num_threads(before)


def two_processes(folder, db, *extra: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    completed = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "attnlrp.cli",
                                *build_args(folder, db, *extra)],
                               capture_output=True, text=True, timeout=600, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def table(db, query: str) -> list[tuple]:
    with closing(sqlite3.connect(str(db))) as conn:
        return conn.execute(query).fetchall()


ROWS = ("SELECT * FROM windows ORDER BY window_id",
        "SELECT * FROM samples ORDER BY kind, layer, neuron, window_id",
        "SELECT key, value FROM meta WHERE key != 'created' ORDER BY key")


def check_same_atlas(db, reference) -> None:
    for query in ROWS:
        assert table(db, query) == table(reference, query), query
    assert len(table(db, "SELECT * FROM samples")) == 2 * 2 * 64 * 3  # rankings × layers × neurons × k
    assert table(db, "SELECT COUNT(*), COUNT(DISTINCT window_id) FROM windows") == [(WINDOWS, WINDOWS)]
    assert not os.path.exists(f"{db}-wal")  # process 0 folded the log back: one self-contained file


def chunks(db) -> list[tuple]:
    return table(db, "SELECT chunk, first_window, end_window, run FROM chunks ORDER BY chunk")


def test_two_processes_give_the_one_process_atlas(setup, reference, tmp_path):
    db = tmp_path / "two.sqlite"
    completed = two_processes(setup, db)
    assert completed.stdout.count("atlas: ") == 1  # process 0 reports; process 1 only ranked its chunks
    assert f"(complete: {WINDOWS} of {WINDOWS} windows; layers 0, 1; 64 neurons each; top 3)" in completed.stdout
    assert "by 2 processes" in completed.stdout
    check_same_atlas(db, reference)
    assert chunks(db) == chunks(reference) == [(i, CHUNK * i, CHUNK * (i + 1), 1) for i in range(WINDOWS // CHUNK)]


def test_a_stopped_sharded_build_resumes_with_one_or_two_processes(setup, reference, tmp_path):
    """Two processes to window 7 (4 chunks: two rounds, the last chunk cut at the limit), one process to
    window 15, two processes to the end: every row the uninterrupted one-process atlas's."""
    db = tmp_path / "resumed.sqlite"
    partial = two_processes(setup, db, "--limit", "7")
    assert "(partial: 7 of 24 windows;" in partial.stdout
    assert chunks(db) == [(0, 0, 2, 1), (1, 2, 4, 1), (2, 4, 6, 1), (3, 6, 7, 1)]
    assert one_process(setup, db, "--limit", "15") == 0
    two_processes(setup, db)
    check_same_atlas(db, reference)
    spans = [(0, 2), (2, 4), (4, 6), (6, 7), (7, 8), (8, 10), (10, 12), (12, 14), (14, 15), (15, 16), (16, 18),
             (18, 20), (20, 22), (22, 24)]
    runs = [1] * 4 + [2] * 5 + [3] * 5
    assert chunks(db) == [(i, first, end, run) for i, ((first, end), run) in enumerate(zip(spans, runs))]


def test_chunk_top_ks_above_the_floor_combine_to_the_one_pass_top_k():
    """What a process sends of its chunk (the entries above the atlas's k-th scores), merged chunk by chunk into
    a top-k that only ranks (process 0's), with the new entries' values taken from the chunk's entries, equals
    merging every window into one top-k with its values, ties (few distinct scores) included."""
    generator = torch.Generator().manual_seed(3)
    neurons, k, tokens, windows, chunk = 5, 3, 4, 40, 6
    scores = torch.randint(0, 4, (windows, neurons), generator=generator).double()  # many ties
    positions = torch.randint(0, tokens, (windows, neurons), generator=generator)
    values = torch.randn(windows, tokens, neurons, generator=generator)
    one_pass = TopK.empty(neurons, k, tokens)
    one_pass.merge(scores, torch.arange(windows), positions, values, -values)

    atlas = TopK.empty(neurons, k, 0)
    written: dict[tuple[int, int], torch.Tensor] = {}  # (neuron, window) → activations, as committed
    sent = 0
    for first in range(0, windows, 2 * chunk):  # rounds of two chunks, each ranked against the same floor
        floor = atlas.floor()
        parts = []
        for start in range(first, min(first + 2 * chunk, windows), chunk):
            own = TopK.empty(neurons, k, tokens)
            for window in range(start, min(start + chunk, windows)):  # window by window, as batches of one
                at = slice(window, window + 1)
                own.merge(scores[at], torch.arange(window, window + 1), positions[at], values[at], -values[at])
            parts.append(own.above(floor))
        for entries in parts:
            sent += len(entries["neuron"])
            before = atlas.keys()
            atlas.combine(TopK.from_entries(entries, neurons, k, 0))
            new = (atlas.keys() >= 0) & ~torch.isin(atlas.keys(), before)
            neuron, window = new.nonzero()[:, 0], atlas.windows[new]
            rows = entry_rows(entries, neuron, window)
            assert torch.equal(entries["activations"][rows], -entries["relevance"][rows])
            written.update(zip(zip(neuron.tolist(), window.tolist()), entries["activations"][rows]))
    for name in ("scores", "windows", "positions"):
        assert torch.equal(getattr(atlas, name), getattr(one_pass, name)), name
    for n in range(neurons):
        for slot, window in enumerate(one_pass.windows[n].tolist()):
            assert torch.equal(written[n, window], one_pass.activations[n, slot])
    assert sent < neurons * k * -(-windows // chunk)  # the floor kept some entries at home


def test_processes_with_other_settings_are_refused():
    same = {"model_fingerprint": "a", "top_k": 3, "chunk_size": 2}
    _check_processes([same, dict(same)])
    with pytest.raises(AtlasError, match=r"process 1 of 2 was started with other settings than process 0 "
                                         r"\(top_k differ\)"):
        _check_processes([same, {**same, "top_k": 4}])
