"""An atlas build killed (SIGKILL) or interrupted (SIGINT, as Ctrl-C) mid-way, then resumed, equals an
uninterrupted build row for row, and no chunk was processed twice.

The interrupted builds run `attnlrp concepts build` side by side in two subprocesses on a tiny Llama saved to a
folder. Each holds its build still at a point the test chooses: once PAUSE_AFTER chunks are committed, the next
model call writes a "ready" file and then waits, for ever, for the signal. The test signals only after it sees
that file, so the signal always lands mid-build, whatever the machine's load: no sleep or wall time decides
where. The resuming runs and the uninterrupted reference run the same command in this process.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pytest
import torch

from attnlrp.cli import main
from tiny import WORDS, tiny_llama, word_tokenizer

PAUSING_CLI = textwrap.dedent("""
    import os, sys, time
    import torch
    import attnlrp.concepts.build as build

    pause_after, ready = int(sys.argv[1]), sys.argv[2]
    parent = os.getppid()
    commits = 0
    commit_chunk = build.commit_chunk

    def counting_commit_chunk(*args, **kwargs):
        global commits
        commit_chunk(*args, **kwargs)
        commits += 1

    def pause(module, args):
        if commits < pause_after or type(module).__name__ != "LlamaForCausalLM":
            return
        # mid-build: PAUSE_AFTER chunks are committed and the next one's first model call is under way
        with open(ready + ".tmp", "w") as f:
            f.write(str(commits))
        os.replace(ready + ".tmp", ready)  # the test never sees a half-written file
        while os.getppid() == parent:  # until the signal (SIGINT raises KeyboardInterrupt out of the sleep)
            time.sleep(0.05)
        sys.exit("the test went away before it signalled")  # only an orphan gets here

    build.commit_chunk = counting_commit_chunk
    torch.nn.modules.module.register_module_forward_pre_hook(pause)
    from attnlrp.cli import main
    sys.exit(main(sys.argv[3:]))
""")
WINDOWS = 48  # 24 paragraphs of 12 words, windows of 6 words: 2 windows each
CHUNK = 2
PAUSE_AFTER = 2  # chunks committed before a build pauses for its signal


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    tiny_llama().save_pretrained(str(folder / "model"))
    word_tokenizer().save_pretrained(str(folder / "model"))
    rng = random.Random(5)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(WINDOWS // 2)]
    (folder / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    (folder / "pausing_cli.py").write_text(PAUSING_CLI, encoding="utf-8")
    return folder


def build_args(folder, db) -> list[str]:
    return ["concepts", "build", "--model", str(folder / "model"), "--corpus", str(folder / "corpus.txt"),
            "--db", str(db), "--layers", "0,1", "--top-k", "3", "--window", "6", "--batch-size", "1",
            "--chunk-size", str(CHUNK), "--no-progress"]


def start(folder, db) -> subprocess.Popen:
    """The build in a subprocess that pauses after PAUSE_AFTER committed chunks; it says so in ``ready(db)``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.Popen([sys.executable, str(folder / "pausing_cli.py"), str(PAUSE_AFTER), str(ready(db)),
                             *build_args(folder, db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def ready(db):
    return db.with_name(db.name + ".ready")


def committed(db) -> int:
    """Chunks committed so far, read the way any reader would (WAL: the writer is not disturbed)."""
    try:
        with closing(sqlite3.connect(str(db), timeout=5)) as conn:  # closed at once: an open reader would keep
            return conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]  # the build from folding its WAL
    except sqlite3.OperationalError:  # not created yet
        return 0


def interrupt(process: subprocess.Popen, db, sig: int) -> None:
    """Signal the build once it has paused mid-build (its ready file is there); it cannot finish before."""
    deadline = time.monotonic() + 300  # only a bound on a broken build: nothing here waits for time to pass
    while not ready(db).exists():
        assert process.poll() is None, f"the build ended before it paused: {process.communicate()}"
        assert time.monotonic() < deadline, f"the build did not reach its pause after {PAUSE_AFTER} chunks in 300 s"
        time.sleep(0.02)
    process.send_signal(sig)


def table(db, query: str) -> list[tuple]:
    with closing(sqlite3.connect(str(db))) as conn:
        return conn.execute(query).fetchall()


def check_resumed(db, reference, interrupted_at: int) -> None:
    """Every row equals the reference; the chunks tile the windows once, the first run's then the second's."""
    for query in ("SELECT * FROM windows ORDER BY window_id",
                  "SELECT * FROM samples ORDER BY kind, layer, neuron, window_id",
                  "SELECT key, value FROM meta WHERE key != 'created' ORDER BY key",
                  "SELECT chunk, first_window, end_window FROM chunks ORDER BY chunk"):
        assert table(db, query) == table(reference, query), query
    assert len(table(db, "SELECT * FROM samples")) == 2 * 2 * 64 * 3  # rankings × layers × neurons × k
    chunks = table(db, "SELECT chunk, first_window, end_window, run FROM chunks ORDER BY chunk")
    assert [(c[0], c[1], c[2]) for c in chunks] == [(i, CHUNK * i, CHUNK * (i + 1)) for i in range(WINDOWS // CHUNK)]
    assert [c[3] for c in chunks] == [1] * interrupted_at + [2] * (WINDOWS // CHUNK - interrupted_at)
    assert table(db, "SELECT COUNT(*), COUNT(DISTINCT window_id) FROM windows") == [(WINDOWS, WINDOWS)]
    assert table(db, "SELECT COUNT(*) FROM (SELECT 1 FROM samples GROUP BY kind, layer, neuron, window_id "
                     "HAVING COUNT(*) > 1)") == [(0,)]
    assert not os.path.exists(f"{db}-wal")


def test_killed_and_interrupted_builds_resume_to_the_uninterrupted_atlas(setup, tmp_path, capsys):
    killed_db, stopped_db = tmp_path / "killed.sqlite", tmp_path / "stopped.sqlite"
    killed, stopped = start(setup, killed_db), start(setup, stopped_db)  # side by side
    try:
        interrupt(killed, killed_db, sig=signal.SIGKILL)
        interrupt(stopped, stopped_db, sig=signal.SIGINT)
        assert killed.wait(60) == -signal.SIGKILL
        out, err = stopped.communicate(timeout=60)
    finally:
        for process in (killed, stopped):  # a failed wait leaves no paused build behind
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert stopped.returncode == 130, err
    assert "interrupted: the committed chunks are kept" in err and "Traceback" not in err
    assert not os.path.exists(f"{stopped_db}-wal")  # Ctrl-C folded the log back: one self-contained file
    after_kill, after_interrupt = committed(killed_db), committed(stopped_db)
    assert 2 <= after_kill < WINDOWS // CHUNK and 2 <= after_interrupt < WINDOWS // CHUNK

    # the same command again, and an uninterrupted build for reference, in this process (same thread count)
    reference = tmp_path / "reference.sqlite"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        for db in (killed_db, stopped_db):
            assert main(build_args(setup, db)) == 0
            assert f"complete: {WINDOWS} of {WINDOWS} windows" in capsys.readouterr().out
        assert main(build_args(setup, reference)) == 0
    finally:
        torch.set_num_threads(before)
    check_resumed(killed_db, reference, after_kill)
    check_resumed(stopped_db, reference, after_interrupt)
