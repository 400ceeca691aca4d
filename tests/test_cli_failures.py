"""A model whose own forward fails is one line (exit status 1) from every command that runs a model; a failure of
attnlrp's own, with a model that works, keeps its traceback (attnlrp.cli.failures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import attnlrp.models
from attnlrp.cli import main
from attnlrp.core import ExplainedPass
from tiny import seeded, tiny_llama, word_tokenizer

PROMPT = "paris is the capital of"
LINE = "error: the model's own forward fails (without any LRP rule): "
SHAPES = "mat1 and mat2 shapes cannot be multiplied (6x32 and 64x32)"


def broken(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with a forward that fails inside its second linear layer, as a broken config's shapes would."""
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][1]

    def fail(module: torch.nn.Module, args: tuple) -> None:
        raise RuntimeError(f"{SHAPES}\nthe rest of a long message, which stays out of the line")

    linear.register_forward_pre_hook(fail)
    return model


@pytest.fixture
def cli(monkeypatch, capsys):
    """``run(model, tokenizer, *argv)``: `attnlrp …` in-process on the given model."""

    def run(model, tokenizer, *argv: str) -> tuple[int, str, str]:
        loaded = attnlrp.models.LoadedModel(model, tokenizer, "tiny")
        monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _commands(tmp) -> list[list[str]]:
    corpus = tmp / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n\nparis is the capital of france\n",
                      encoding="utf-8")
    data = tmp / "data.jsonl"
    data.write_text(json.dumps({"text": PROMPT}) + "\n", encoding="utf-8")
    return [
        ["explain", PROMPT],
        ["explain", PROMPT, "--generate", "2"],
        ["audit", "--prompt", PROMPT],
        ["neurons", PROMPT],
        ["steer", PROMPT, "--off", "0:1", "--generate", "1"],
        ["concepts", "build", "--corpus", str(corpus), "--db", str(tmp / "atlas.sqlite"), "--layers", "1",
         "--window", "4", "--batch-size", "1", "--chunk-size", "1", "--limit", "1", "--no-progress"],
        ["evaluate", "--data", str(data), "--methods", "attnlrp,random", "--perturbation", "replace", "--no-progress"],
    ]


@pytest.mark.parametrize("index", range(7), ids=["explain", "generate", "audit", "neurons", "steer", "concepts",
                                                 "evaluate"])
def test_every_command_says_in_one_line_that_the_model_itself_fails(cli, tmp_path, index):
    argv = _commands(tmp_path)[index]
    code, out, err = cli(broken(tiny_llama()), word_tokenizer(), *argv)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{LINE}RuntimeError: {SHAPES}"]


@pytest.mark.parametrize("name", ["t5", "vit", "bert"])
def test_audit_of_other_heads_runs_their_plain_forward(cli, name):
    """The plain forward gets each kind of model its inputs: an encoder-decoder its decoder start, a ViT pixels."""
    from architectures.configs import build

    model = broken(build(name, dtype=torch.float32))
    code, out, err = cli(model, None if name == "vit" else word_tokenizer(), "audit", "--prompt", PROMPT)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{LINE}RuntimeError: {SHAPES}"]


def test_a_user_error_stays_a_user_error_with_a_broken_model(cli):
    code, out, err = cli(broken(tiny_llama()), word_tokenizer(), "explain", "")
    assert code == 2 and err.startswith("error: ") and "prompt is empty" in err


@pytest.fixture(scope="module")
def mismatched_folder(tmp_path_factory):
    """A saved model whose config has 8 tokens while its tokenizer has 50: its own forward fails on any prompt."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("mismatched")
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=8, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=2, eos_token_id=2)
    seeded(lambda: LlamaForCausalLM(config)).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("argv", [["explain", PROMPT, "--model", "{folder}"],
                                  ["audit", "{folder}", "--prompt", PROMPT]])
def test_a_saved_model_with_a_broken_config(mismatched_folder, capsys, argv):
    code = main([a.format(folder=mismatched_folder) for a in argv])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{LINE}IndexError: index out of range in self"]


def test_no_traceback_reaches_the_terminal(mismatched_folder):
    """The installed command, as a user runs it: standard error holds the one line and nothing else."""
    completed = subprocess.run(
        [sys.executable, "-m", "attnlrp.cli", "explain", PROMPT, "--model", str(mismatched_folder)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 1 and completed.stdout == ""
    assert "Traceback" not in completed.stderr
    assert completed.stderr.splitlines() == [f"{LINE}IndexError: index out of range in self"]


@pytest.mark.parametrize("argv", [["explain", PROMPT], ["audit", "--prompt", PROMPT]])
def test_our_own_failure_with_a_working_model_keeps_its_traceback(cli, monkeypatch, argv):
    def bug(self, *args, **kwargs):
        raise RuntimeError("a bug in attnlrp's rules")

    monkeypatch.setattr(ExplainedPass, "backward", bug)
    with pytest.raises(RuntimeError, match="a bug in attnlrp's rules"):
        cli(tiny_llama(), word_tokenizer(), *argv)
