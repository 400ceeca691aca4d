"""``attnlrp patch`` and ``attnlrp circuit``: a tiny model saved to a folder and loaded by the command as a user's
model would be, the JSON and terminal views, errors as one line, and one run on the real SmolLM2 (IOI)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attnlrp.models
from attnlrp.cli import main
from test_cli_failures import LINE, SHAPES, broken
from tiny import tiny_llama, word_tokenizer

CLEAN = "paris is the capital of france . lisbon is the capital of"
CORRUPTED = "paris is the capital of france . berlin is the capital of"
PAIR = [CLEAN, "--corrupted", CORRUPTED, "--target", "portugal", "--contrast", "germany"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama and its tokenizer, saved as a user's model folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def cli(folder, capsys):
    """``run(*argv)``: `attnlrp …` in-process on the saved tiny model, returning (code, out, err)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--model", str(folder), "--color", "never", "--quiet"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _plain_metric(model, tokenizer, text: str, target: str, contrast: str) -> float:
    """logit(target) − logit(contrast) at the last position of ``text`` (starting with BOS), from a plain forward
    pass written here."""
    (a,), (b,) = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in (target, contrast))
    ids = tokenizer(text)["input_ids"]
    if ids[0] != tokenizer.bos_token_id:
        ids = [tokenizer.bos_token_id, *ids]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return float(logits[a] - logits[b])


def test_patch_json_on_a_saved_model(cli, folder):
    code, out, err = cli("patch", *PAIR, "--json", "--verify", "--level", "heads,mlps,neurons", "--verify-neurons", "4")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"metric", "method", "direction", "token_ids", "components", "agreement"}
    loaded = attnlrp.models.load_model(str(folder))
    assert data["metric"]["clean"] == pytest.approx(_plain_metric(loaded.model, loaded.tokenizer, CLEAN, "portugal",
                                                                   "germany"), abs=1e-6)
    assert data["metric"]["corrupted"] == pytest.approx(_plain_metric(loaded.model, loaded.tokenizer, CORRUPTED,
                                                                       "portugal", "germany"), abs=1e-6)
    assert {c["kind"] for c in data["components"]} == {"head", "mlp", "neuron"}
    assert sum("truth" in c for c in data["components"] if c["kind"] == "neuron") == 8  # the top 4 and 4 at random
    assert sum("truth" in c for c in data["components"] if c["kind"] != "neuron") == 2 * 4 + 2
    assert set(data["agreement"]) == {"heads", "mlps", "neurons"}
    assert all(math.isfinite(a["pearson"]) for a in data["agreement"].values())


def test_patch_terminal_view_lists_the_top_components_and_the_agreement(cli, tmp_path):
    page = tmp_path / "patch.html"
    code, out, err = cli("patch", *PAIR, "--verify", "--level", "heads,mlps,neurons,residual", "--top", "3",
                         "--verify-neurons", "2", "--html", str(page))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("metric logit('portugal') − logit('germany') at the last position: clean +0.0911")
    header = lines.index(next(line for line in lines if line.strip().startswith("rank")))
    assert len([line for line in lines[header + 1:header + 5] if line.strip()]) == 3
    assert "agreement with real activation patching" in out
    for level in ("heads", "mlps", "neurons", "residual"):
        assert any(line.startswith(level) for line in lines)
    assert "neurons: 4 of 128 patched (the 2 with the largest |estimate| and 2 at random)" in out
    assert page.exists() and f"HTML report: {page}" in out and "\x1b[" not in out


def test_circuit_json_and_html(cli, tmp_path):
    page = tmp_path / "circuit.html"
    code, out, err = cli("circuit", *PAIR, "--json", "--random", "2", "--html", str(page))
    assert code == 0, err
    data = json.loads(out)
    assert data["method"] == "relp" and data["levels"] == ["heads", "mlps"]
    assert set(data["curves"]) == {"relp", "gradient", "random"}
    for curve in data["curves"].values():
        assert curve[0] == [0, pytest.approx(0, abs=1e-4)] and curve[-1] == [10, pytest.approx(1, abs=1e-4)]  # float32
    n = data["smallest"]["relp"]
    assert len(data["nodes"]) == n + 1 and data["nodes"][0]["name"] == "embed"  # the embeddings, then the circuit
    html = page.read_text(encoding="utf-8")
    assert html.count("<svg") == 2 and "<script" not in html


def test_circuit_terminal_view(cli):
    code, out, err = cli("circuit", *PAIR, "--random", "1", "--budget", "6")
    assert code == 0, err
    assert "smallest N recovering 80% of the gap" in out and "recovery by circuit size N" in out
    assert "kept nodes" in out


@pytest.mark.parametrize("argv, message", [
    (["patch", CLEAN, "--corrupted", CORRUPTED + " of", "--target", "portugal"], "13 and 14 tokens"),
    (["patch", *PAIR, "--level", "heads,layers"],
     "unknown level 'layers'; choose from: heads, mlps, neurons, residual"),
    (["patch", CLEAN, "--corrupted", CORRUPTED, "--target", "portugal spain"], "tokens for this tokenizer"),
    (["patch", CLEAN, "--corrupted", CORRUPTED, "--target", "9999"], "outside the vocabulary"),
    (["circuit", *PAIR, "--level", "mlps,neurons"], "whole MLPs or of their neurons"),
])
def test_errors_are_one_line_with_exit_status_2(cli, argv, message):
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_the_corrupted_prompt_and_target_are_required(capsys):
    for argv in (["patch", CLEAN, "--target", "x"], ["circuit", CLEAN, "--corrupted", CORRUPTED]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["patch", "circuit"])
def test_a_broken_model_is_one_line_with_exit_status_1(command, monkeypatch, capsys):
    loaded = attnlrp.models.LoadedModel(broken(tiny_llama()), word_tokenizer(), "tiny")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)
    code = main([command, *PAIR])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{LINE}RuntimeError: {SHAPES}"]


@pytest.mark.real_model
def test_patch_verify_on_smollm2_ioi(smollm2, monkeypatch, capsys):
    """Indirect-object identification on the real model: the metric is what a plain forward gives, every level's
    correlation with real patching is finite, and the strongest head is one real patching finds strong too."""
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: smollm2)
    clean = "When Mary and John went out, John gave a book to"
    corrupted = "When Mary and John went out, Mary gave a book to"
    code = main(["patch", clean, "--corrupted", corrupted, "--target", " Mary", "--contrast", " John", "--verify",
                 "--level", "heads,mlps", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    model, tokenizer = smollm2.model, smollm2.tokenizer
    assert data["metric"]["clean"] == pytest.approx(_plain_metric(model, tokenizer, clean, " Mary", " John"), abs=1e-3)
    assert data["metric"]["corrupted"] == pytest.approx(_plain_metric(model, tokenizer, corrupted, " Mary", " John"),
                                                        abs=1e-3)
    assert data["metric"]["clean"] > 0 > data["metric"]["corrupted"]  # the model gets IOI right and is fooled
    assert len(data["components"]) == 30 * 9 + 30 and all("truth" in c for c in data["components"])
    for level in ("heads", "mlps"):
        agreement = data["agreement"][level]
        assert math.isfinite(agreement["pearson"]) and math.isfinite(agreement["spearman"]) and agreement["k"] == 10
    heads = [c for c in data["components"] if c["kind"] == "head"]
    strongest = heads[0]
    truths = sorted((abs(c["truth"]) for c in heads), reverse=True)
    assert abs(strongest["truth"]) >= truths[4]  # the top head by estimate is among the top 5 by truth
