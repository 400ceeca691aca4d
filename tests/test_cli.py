"""The command line: JSON contract, HTML output, terminal view and error messages (exit code 2, no trace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import attnlrp.models
from attnlrp.cli import main

LISBON = (
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Lisbon is the capital of"
)


@pytest.fixture
def cli(monkeypatch, smollm2, capsys):
    """Run `attnlrp ...` in-process on the session's SmolLM2 (loading is tested in test_models.py)."""
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: smollm2)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_explain_json_contract(cli):
    code, out, err = cli("explain", LISBON, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert {"tokens", "token_ids", "relevance", "target", "value", "method", "ledger"} <= set(data)
    assert data["method"] == "attnlrp" and data["target"]["token"] == " Portugal"
    assert len(data["tokens"]) == len(data["token_ids"]) == len(data["relevance"])
    ledger = data["ledger"]
    assert abs(ledger["input"] + ledger["absorbed"] - ledger["value"]) <= 1e-5 * abs(ledger["value"])
    assert ledger["value"] == pytest.approx(data["value"])
    top = max(range(len(data["relevance"])), key=data["relevance"].__getitem__)
    assert data["tokens"][top].strip() == "Lisbon"


def test_explain_target_contrast_and_method(cli):
    code, out, _ = cli("explain", LISBON, "--json", "--target", " Spain", "--contrast", " Portugal", "--method", "cp-lrp")
    data = json.loads(out)
    assert code == 0 and data["method"] == "cp-lrp"
    assert data["target"]["token"] == " Spain" and data["target"]["contrast_token"] == " Portugal"
    assert data["value"] < 0  # the model prefers Portugal


def test_html_output_escapes_the_prompt(cli, tmp_path):
    page = tmp_path / "heatmap.html"
    code, out, _ = cli("explain", "<script>alert(1)</script> The capital of France is", "--html", str(page), "--color", "never")
    html = page.read_text(encoding="utf-8")
    assert code == 0 and "<script" not in html and "&lt;" in html
    assert "HTML heatmap" in out and "\x1b[" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", ""], "prompt is empty"),
        (["explain", LISBON, "--target", " Portugal Spain"], "tokens for this tokenizer"),
        (["explain", LISBON, "--target", "999999"], "outside the vocabulary"),
    ],
)
def test_errors_are_one_clear_line(cli, argv, message):
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "hello", "--method", "lrp"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lrp'" in capsys.readouterr().err


def test_console_script_end_to_end(smollm2, tmp_path):
    """The installed `attnlrp` entry point, as `make demo` runs it (model from the on-disk cache)."""
    exe = os.path.join(os.path.dirname(sys.executable), "attnlrp")
    result = subprocess.run(
        [exe, "explain", "The capital of France is", "--json"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["target"]["token"] == " Paris"


def test_audit_json_on_the_real_model(cli):
    code, out, err = cli("audit", "--json")
    data = json.loads(out)
    assert code == 0, err
    assert data["unhandled"] == [] and data["balanced"] is True
    rules = {row["rule"] for row in data["covered"]}
    assert {"attention (attnlrp)", "identity", "norm statistic held constant", "product (attnlrp)"} <= rules
    assert {"input", "absorbed", "value"} <= set(data["ledger"])


class SoftExp(torch.nn.Module):
    """An activation written with plain tensor ops that no rule knows."""

    def forward(self, x):
        return torch.exp(-x * x) * x


def test_audit_reports_an_uncovered_operation(monkeypatch, capsys):
    from tiny import tiny_llama, word_tokenizer

    model = tiny_llama()
    model.model.layers[1].mlp.act_fn = SoftExp()
    monkeypatch.setattr(attnlrp.models, "load_model",
                        lambda *a, **k: attnlrp.models.LoadedModel(model, word_tokenizer(), "tiny"))
    code = main(["audit", "--prompt", "paris is the capital of"])
    out = capsys.readouterr().out
    assert code == 1
    assert "exp                  in model.layers.1.mlp.act_fn (SoftExp)" in out
    assert "NOT balanced" in out
