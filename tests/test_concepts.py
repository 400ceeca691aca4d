"""Concept atlas: ActMax / RelMax against brute force, deterministic ties, chunking and resuming, metadata
checks, errors, and `attnlrp concepts build/show` (terminal, HTML escaping, JSON)."""

from __future__ import annotations

import json
import random
import sqlite3
from contextlib import closing

import pytest
import torch

import attnlrp.models
from attnlrp.cli import main
from attnlrp.concepts import (Atlas, AtlasError, AtlasMismatchError, build_atlas, default_layers, load_corpus,
                              make_windows)
from attnlrp.concepts.store import default_db_path
from attnlrp.explain import Explainer
from tiny import WORDS, tiny_llama, word_tokenizer

K = 4
WINDOW = 6
SETTINGS = dict(top_k=K, window=WINDOW, batch_size=3, chunk_size=6, layers=[0, 1], progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def documents(count: int = 9, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16))) for _ in range(count)]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(torch.float64)


@pytest.fixture(scope="module")
def built(model, tok, tmp_path_factory):
    db = tmp_path_factory.mktemp("atlas") / "atlas.sqlite"
    atlas = build_atlas(model, tok, documents(), db, **SETTINGS)
    yield atlas
    atlas.close()


def rows(db) -> dict[str, list[tuple]]:
    """Every row of the atlas, for comparing two builds (run bookkeeping and timestamps left out)."""
    with closing(sqlite3.connect(str(db))) as conn:
        meta = conn.execute("SELECT key, value FROM meta WHERE key NOT IN ('created', 'chunk_size') "
                            "ORDER BY key").fetchall()
        return {
            "meta": meta,
            "windows": conn.execute("SELECT * FROM windows ORDER BY window_id").fetchall(),
            "samples": conn.execute("SELECT * FROM samples ORDER BY kind, layer, neuron, window_id").fetchall(),
        }


def scored(window, values: torch.Tensor) -> torch.Tensor:
    """The scored positions' values, (positions, neurons)."""
    return values[window.first_scored : len(window)]


def brute_order(scores: dict[int, float], k: int) -> list[int]:
    return sorted(scores, key=lambda w: (-scores[w], w))[:k]


def test_windows_are_fixed_and_deterministic(tok):
    windows = make_windows(tok, load_corpus(documents()), WINDOW)
    assert windows == make_windows(tok, load_corpus(documents()), WINDOW)
    assert [w.index for w in windows] == list(range(len(windows)))
    assert all(w.token_ids[0] == tok.bos_token_id and w.prefix == 1 for w in windows)
    assert all(2 <= len(w) - 1 <= WINDOW for w in windows)
    assert any(len(w) - 1 == WINDOW for w in windows)
    first = windows[0]
    assert "".join(first.tokens[1:]).strip() == " ".join(documents()[0].split()[:WINDOW])


def test_actmax_equals_brute_force(built, model, tok):
    """Forward every window alone, read the MLP neurons with a plain hook, rank by hand."""
    windows = make_windows(tok, load_corpus(documents()), WINDOW)
    captured: dict[int, torch.Tensor] = {}
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda module, args, i=i: captured.__setitem__(i, args[0][0].detach()))
        for i, layer in enumerate(model.model.layers)]
    try:
        per_window = {}
        for w in windows:
            with torch.no_grad():
                model(input_ids=torch.tensor([w.token_ids]))
            per_window[w.index] = {i: captured[i].float() for i in captured}  # atlas values are float32
    finally:
        for hook in hooks:
            hook.remove()
    for layer in (0, 1):
        for neuron in range(0, 64, 7):
            peaks = {w.index: scored(w, per_window[w.index][layer])[:, neuron].max(0) for w in windows}
            scores = {i: float(p.values) for i, p in peaks.items()}
            samples = built.samples(layer, neuron, by="actmax")
            assert [s.window for s in samples] == brute_order(scores, K)
            for s in samples:
                assert s.score == pytest.approx(scores[s.window], rel=1e-6)
                assert s.position == windows[s.window].first_scored + int(peaks[s.window].indices)
                assert s.activations == pytest.approx(per_window[s.window][layer][:, neuron].tolist(), abs=1e-7)


def test_relmax_equals_brute_force(built, model, tok):
    """Explain every window alone with AttnLRP (latents=True); a neuron's score is its relevance summed over
    the scored tokens, for the predicted next token at the window's last position."""
    windows = make_windows(tok, load_corpus(documents()), WINDOW)
    explainer = Explainer(model, tok)
    latents = {w.index: explainer.explain(list(w.token_ids), latents=True).latents for w in windows}
    for layer in (0, 1):
        for neuron in range(0, 64, 5):
            relevance = {w.index: scored(w, latents[w.index].neurons[layer])[:, neuron] for w in windows}
            scores = {i: float(r.double().sum()) for i, r in relevance.items()}
            samples = built.samples(layer, neuron, by="relmax")
            assert [s.window for s in samples] == brute_order(scores, K)
            for s in samples:
                assert s.score == pytest.approx(scores[s.window], rel=1e-6, abs=1e-12)
                assert s.position == windows[s.window].first_scored + int(relevance[s.window].argmax())
                assert s.relevance == pytest.approx(latents[s.window].neurons[layer, :, neuron].tolist(),
                                                    rel=1e-5, abs=1e-10)
                assert s.activations == pytest.approx(latents[s.window].activations[layer, :, neuron].tolist(),
                                                      rel=1e-5, abs=1e-10)


def test_ties_keep_the_lower_window_first(model, tok, tmp_path):
    """Documents A, B, A, B, A: equal windows score exactly the same; the earlier window ranks first, and
    the top-4 drops the latest copy of the weaker one, over one-window chunks (every merge crosses a commit)."""
    a, b = "paris is the capital of france", "the lazy dog was not very good"
    atlas = build_atlas(model, tok, [a, b, a, b, a], tmp_path / "ties.sqlite", top_k=4, window=8, batch_size=1,
                        chunk_size=1, layers=[1], progress=False)
    with atlas:
        for kind in ("actmax", "relmax"):
            for neuron in range(64):
                samples = atlas.samples(1, neuron, by=kind)
                score = {s.window % 2: s.score for s in samples}  # window 0, 2, 4 hold A; 1, 3 hold B
                assert len(score) == 2 and all(score[s.window % 2] == s.score for s in samples)
                expected = sorted(range(5), key=lambda w: (-score[w % 2], w))[:4]
                assert [s.window for s in samples] == expected


def test_topk_merge_is_exact_in_any_batch_order():
    """Many exact ties (scores drawn from 4 values), windows merged in shuffled batches: always the brute-force
    order (score down, window up), with each entry's position and per-token values carried along."""
    from attnlrp.concepts.topk import TopK

    generator = torch.Generator().manual_seed(0)
    windows, neurons, tokens, k = 40, 7, 3, 5
    scores = torch.randint(0, 4, (windows, neurons), generator=generator).double()
    positions = torch.randint(0, tokens, (windows, neurons), generator=generator)
    values = torch.randn(windows, tokens, neurons, generator=generator)
    expected = [sorted(range(windows), key=lambda w: (-scores[w, n], w))[:k] for n in range(neurons)]
    for seed in range(4):
        order = torch.randperm(windows, generator=torch.Generator().manual_seed(seed))
        state = TopK.empty(neurons, k, tokens)
        for batch in order.split(6):
            state.merge(scores[batch], batch, positions[batch], values[batch], -values[batch])
        assert state.windows.tolist() == expected
        for n in range(neurons):
            picked = state.windows[n]
            assert state.scores[n].tolist() == scores[picked, n].tolist()
            assert state.positions[n].tolist() == positions[picked, n].tolist()
            assert torch.equal(state.activations[n], values[picked, :, n])
            assert torch.equal(state.relevance[n], -values[picked, :, n])


def test_chunking_and_limits_do_not_change_the_atlas(built, model, tok, tmp_path):
    """Other chunk sizes, and a build stopped by `limit` then carried on, give every row identical."""
    one = build_atlas(model, tok, documents(), tmp_path / "one.sqlite", **{**SETTINGS, "chunk_size": 3})
    one.close()
    partial = build_atlas(model, tok, documents(), tmp_path / "two.sqlite", limit=7, **SETTINGS)
    with partial:
        assert partial.windows_done == 7 and not partial.complete
    again = build_atlas(model, tok, documents(), tmp_path / "two.sqlite", **SETTINGS)
    with again:
        assert again.complete and again.chunks_done == 5  # [0, 6), [6, 7) (limit), [7, 12), [12, 18), [18, 20)
    reference = rows(built.path)
    assert rows(tmp_path / "one.sqlite") == reference
    assert rows(tmp_path / "two.sqlite") == reference


def test_a_chunk_is_never_committed_twice(built, tok):
    """A chunk that does not start where the atlas stands (a second writer, a stale process) is refused, and
    the refused transaction leaves nothing behind."""
    from attnlrp.concepts.store import commit_chunk, connect

    windows = make_windows(tok, load_corpus(documents()), WINDOW)
    conn = connect(built.path)
    try:
        before = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()
        with pytest.raises(AtlasError, match="another build committed to this atlas meanwhile"):
            commit_chunk(conn, chunk=99, run=1, windows=windows[:3], deletes=[], inserts=[])
        assert conn.execute("SELECT COUNT(*) FROM chunks").fetchone() == before and not conn.in_transaction
    finally:
        conn.close()


@pytest.mark.parametrize("change, key", [
    ({"top_k": K + 1}, "top_k"), ({"layers": [1]}, "layers"), ({"window": WINDOW + 1}, "window"),
    ({"batch_size": 1, "chunk_size": 6}, "batch_size"), ({"method": "cp-lrp"}, "method"),
])
def test_resuming_with_other_settings_is_a_clear_error(built, model, tok, change, key):
    with pytest.raises(AtlasMismatchError, match=f"built with other settings .*{key}: stored"):
        build_atlas(model, tok, documents(), built.path, **{**SETTINGS, **change})


def test_other_corpus_or_model_is_a_clear_error(built, model, tok):
    with pytest.raises(AtlasMismatchError, match="corpus_sha256"):
        build_atlas(model, tok, documents(seed=1), built.path, **SETTINGS)
    with pytest.raises(AtlasMismatchError, match="model_fingerprint"):
        build_atlas(tiny_llama(torch.float64, rms_norm_eps=1e-3), tok, documents(), built.path, **SETTINGS)
    other = tiny_llama(torch.float64)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    with pytest.raises(AtlasMismatchError, match="model_fingerprint"):
        build_atlas(other, tok, documents(), built.path, **SETTINGS)


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus": ["", "   "]}, "gives no window"),
    ({"corpus": ["paris"]}, "gives no window"),
    ({"layers": [2]}, "layer 2 does not exist; the model has layers 0..1"),
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"chunk_size": 4}, "multiple of batch_size"),
    ({"window": 80, "corpus": [" ".join(WORDS * 2)]}, "longer than the model's 64 positions"),
    ({"corpus": "no/such/file.txt"}, "does not exist"),
    ({"method": "gradient"}, "method must be one of"),
])
def test_build_errors(model, tok, tmp_path, kwargs, message):
    arguments = {**SETTINGS, "corpus": documents(), **kwargs}
    with pytest.raises(AtlasError, match=message):
        build_atlas(model, tok, db_path=tmp_path / "e.sqlite", **arguments)


def test_read_errors(built, tmp_path):
    with pytest.raises(AtlasError, match="layer 5 is not in this atlas; it has layers 0, 1"):
        built.samples(5, 0)
    with pytest.raises(AtlasError, match="neuron 64 does not exist; layers have neurons 0..63"):
        built.samples(1, 64)
    with pytest.raises(AtlasError, match="by must be one of"):
        built.samples(1, 0, by="max")
    with pytest.raises(AtlasError, match="no concept atlas at"):
        Atlas.open(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all, just some bytes" * 40)
    with pytest.raises(AtlasError, match="is not a concept atlas"):
        Atlas.open(tmp_path / "junk.sqlite")


def test_default_layers_and_db_path(monkeypatch, tmp_path):
    assert default_layers(30) == [7, 15, 22] and default_layers(2) == [0, 1] and default_layers(1) == [0]
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path))
    assert default_db_path() == tmp_path / "concepts-smollm2.sqlite"
    assert default_db_path("/models/My Model.gguf") == tmp_path / "concepts-my-model.sqlite"


# ------------------------------------------------------------------------------------------------- CLI

XSS = "paris <script>alert(1)</script> is the capital of france \x1b[31m red"


@pytest.fixture
def cli(monkeypatch, capsys):
    """`attnlrp …` in-process on a tiny float32 Llama and the word tokenizer."""
    loaded = attnlrp.models.LoadedModel(tiny_llama(), word_tokenizer(), "tiny llama <b>")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli_atlas(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"{XSS}\n\nthe quick brown fox jumps over the lazy dog\n\n{documents(1)[0]}\n",
                      encoding="utf-8")
    db = tmp_path / "cli.sqlite"
    code, out, err = cli("concepts", "build", "--corpus", str(corpus), "--db", str(db), "--layers", "1",
                         "--top-k", "8", "--window", "8", "--batch-size", "2", "--chunk-size", "2", "--no-progress")
    assert code == 0, err  # 6 windows: every window is in every neuron's top 8
    assert f"atlas: {db} (complete: 6 of 6 windows; layers 1; 64 neurons each; top 8)" in out
    return db


def test_cli_show_terminal(cli, cli_atlas):
    code, out, err = cli("concepts", "show", "1", "3", "--db", str(cli_atlas), "--color", "never")
    assert code == 0, err
    assert out.startswith("layer 1, neuron 3\nmodel: tiny llama <b>\ncorpus: file corpus.txt (3 paragraphs), "
                          "6 of 6 windows; relevance: attnlrp\n")
    assert "\nActMax: 6 windows with the neuron's largest activation" in out
    assert "\nRelMax: 6 windows where the neuron is most relevant" in out
    assert out.count("[[") == 12 + 2  # each sample's peak, and the two legends
    assert "\x1b" not in out and " \\x1b[\n" in out  # the corpus's ESC made visible (a window ends there)
    code, coloured, _ = cli("concepts", "show", "1", "3", "--db", str(cli_atlas), "--color", "always",
                            "--by", "relmax", "--top", "2")
    assert code == 0 and "\x1b[1;38;2;0;0;0;48;2;" in coloured and "ActMax" not in coloured
    assert coloured.count("\n  #") == 2 and "\x1b[31m" not in coloured


def test_cli_show_html_escapes_corpus_text(cli, cli_atlas, tmp_path):
    page = tmp_path / "neuron.html"
    code, out, err = cli("concepts", "show", "1", "3", "--db", str(cli_atlas), "--html", str(page), "--color", "never")
    html = page.read_text(encoding="utf-8")
    assert code == 0 and f"HTML page: {page}" in out
    assert "<script" not in html and "&lt;</span>" in html and ")&lt;/</span>" in html
    assert "<b>" not in html and "tiny llama &lt;b&gt;" in html
    assert "\x1b" not in html and "\\x1b[" in html
    assert html.count('class="peak"') == 12 and html.startswith("<!doctype html>")


def test_cli_show_json_shape(cli, cli_atlas):
    code, out, err = cli("concepts", "show", "1", "3", "--db", str(cli_atlas), "--json", "--by", "actmax")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"layer", "neuron", "atlas", "actmax"} and (data["layer"], data["neuron"]) == (1, 3)
    assert data["atlas"]["windows_done"] == data["atlas"]["windows_total"] == 6
    assert data["atlas"]["model"] == "tiny llama <b>" and data["atlas"]["top_k"] == 8
    samples = data["actmax"]
    assert [s["rank"] for s in samples] == [1, 2, 3, 4, 5, 6]
    assert [s["score"] for s in samples] == sorted((s["score"] for s in samples), reverse=True)
    for s in samples:
        assert {"score", "window", "position", "token", "text", "tokens", "token_ids", "activations", "relevance",
                "prefix", "first_scored", "document", "start"} <= set(s)
        assert len(s["tokens"]) == len(s["token_ids"]) == len(s["activations"]) == len(s["relevance"])
        assert s["score"] == max(s["activations"][s["first_scored"]:]) == s["activations"][s["position"]]
        assert s["tokens"][s["position"]] == s["token"] and s["text"] == "".join(s["tokens"][1:])
    assert any("<script>alert(1)" in s["text"] for s in samples)  # JSON keeps the text as it is


@pytest.mark.parametrize("argv, message", [
    (["concepts", "show", "1", "3", "--db", "{tmp}/none.sqlite"], "no concept atlas at"),
    (["concepts", "show", "7", "3", "--db", "{db}"], "layer 7 is not in this atlas"),
    (["concepts", "show", "1", "99", "--db", "{db}"], "neuron 99 does not exist"),
    (["concepts", "build", "--db", "{db}", "--layers", "1,x"], "--layers takes comma-separated"),
    (["concepts", "build", "--db", "{db}", "--layers", "1", "--top-k", "3", "--window", "8", "--batch-size",
      "2", "--chunk-size", "2", "--corpus", "{tmp}/corpus.txt"], "built with other settings (top_k: stored 8, now 3)"),
])
def test_cli_errors_are_one_line(cli, cli_atlas, tmp_path, argv, message):
    code, out, err = cli(*[a.format(tmp=tmp_path, db=cli_atlas) for a in argv])
    assert code == 2 and out == "" and err.startswith("error: ") and message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- real model


@pytest.mark.real_model
def test_smollm2_smoke(smollm2, tmp_path):
    """A handful of pydoc windows, one layer: both rankings filled, the stored scores consistent."""
    atlas = build_atlas(smollm2.model, smollm2.tokenizer, None, tmp_path / "smol.sqlite", layers=[15], top_k=2,
                        window=16, batch_size=4, chunk_size=4, limit=4, progress=False, model_name=smollm2.source)
    with atlas:
        assert atlas.windows_done == 4 and atlas.windows_total > 1000 and atlas.neurons == 1536
        assert atlas.meta["corpus"].startswith("pydoc_data.topics")
        for kind in ("actmax", "relmax"):
            samples = atlas.samples(15, 100, by=kind)
            assert len(samples) == 2 and samples[0].score >= samples[1].score
            assert all(len(s.tokens) == 16 and s.prefix == 0 and s.position >= 1 for s in samples)
        top = atlas.samples(15, 100, by="actmax")[0]
        assert top.score == pytest.approx(max(top.activations[1:]))
