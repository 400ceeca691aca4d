"""`attnlrp neurons` and `attnlrp steer`: JSON contracts, ranking, HTML escaping and one-line errors, on a tiny
Llama saved to a folder (passed with --model), plus one run on the real SmolLM2."""

from __future__ import annotations

import json

import pytest
import torch

import attnlrp.models
from attnlrp.cli import main
from attnlrp.explain import Explainer
from attnlrp.latent.steering import steer

PROMPT = "paris is the capital of"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The tiny seeded Llama and its word tokenizer as a model folder, as a user would pass it to --model."""
    from tiny import tiny_llama, word_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(torch.float32).save_pretrained(str(path))
    word_tokenizer().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def loaded(folder):
    return attnlrp.models.load_model(folder)


@pytest.fixture
def cli(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


# ------------------------------------------------------------------------------------------------ neurons
def test_neurons_json_lists_the_top_neurons_in_order(cli, folder, loaded):
    code, out, err = cli("neurons", PROMPT, "--top", "7", "--json", "--model", str(folder))
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == 7
    assert all({"layer", "neuron", "relevance"} <= set(item) for item in data)
    assert all(isinstance(i["layer"], int) and isinstance(i["neuron"], int) for i in data)
    relevance = [item["relevance"] for item in data]
    assert relevance == sorted(relevance, reverse=True) and relevance[0] > 0
    # the same ranking as the library's, over the whole model
    latents = Explainer(loaded.model, loaded.tokenizer).explain(PROMPT, latents=True).latents
    totals = latents.neuron_totals()
    assert [(i["layer"], i["neuron"]) for i in data] == [(s.layer, s.neuron) for s in latents.top_neurons(7)]
    assert relevance[0] == pytest.approx(float(totals.max()), rel=1e-5)
    assert {i["layer"] for i in data} <= {0, 1}


def test_neurons_of_one_layer_and_method(cli, folder, loaded):
    code, out, err = cli("neurons", PROMPT, "--top", "5", "--layer", "1", "--method", "cp-lrp", "--json",
                         "--model", str(folder))
    assert code == 0, err
    data = json.loads(out)
    assert len(data) == 5 and {item["layer"] for item in data} == {1}
    latents = Explainer(loaded.model, loaded.tokenizer, method="cp-lrp").explain(PROMPT, latents=True).latents
    assert [i["neuron"] for i in data] == [s.neuron for s in latents.top_neurons(5, layer=1)]
    code, out, _ = cli("neurons", PROMPT, "--top", "3", "--method", "input-x-gradient", "--json", "--model", str(folder))
    assert code == 0 and len(json.loads(out)) == 3


def test_neurons_terminal_view_names_the_prediction(cli, folder, loaded):
    code, out, err = cli("neurons", PROMPT, "--top", "4", "--model", str(folder))
    assert code == 0, err
    explanation = Explainer(loaded.model, loaded.tokenizer).explain(PROMPT)
    assert f"predicted next token: {explanation.target.token!r}" in out
    assert "rank" in out and "relevance" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"] and all(":" in r[1] for r in rows)


def test_neurons_html_escapes_the_prompt(cli, folder, tmp_path):
    page = tmp_path / "latent.html"
    code, out, err = cli("neurons", "<script> alert ( 1 ) </script> paris is the capital of", "--top", "3",
                         "--html", str(page), "--model", str(folder))
    assert code == 0, err
    html = page.read_text(encoding="utf-8")
    # the word tokenizer splits the tag into "<", "script", ">": each must arrive escaped
    assert "<script" not in html and "&lt;" in html and "&gt;" in html and "<script" not in out
    assert f"HTML view: {page}" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["neurons", PROMPT, "--layer", "2"], "layer 2 does not exist"),
        (["neurons", ""], "prompt is empty"),
    ],
)
def test_neurons_errors_are_one_clear_line(cli, folder, argv, message):
    code, out, err = cli(*argv, "--model", str(folder))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


# -------------------------------------------------------------------------------------------------- steer
def test_steer_json_before_and_after(cli, folder, loaded):
    code, out, err = cli("steer", PROMPT, "--off", "1:5", "0:3", "--scale", "1:7=2.5", "--set", "0:9=4",
                         "--generate", "4", "--json", "--model", str(folder))
    assert code == 0, err
    data = json.loads(out)
    assert {"before", "after"} <= set(data)
    for side in ("before", "after"):
        assert {"token", "token_id", "logit", "log_prob", "generated"} <= set(data[side])
        assert len(data[side]["generated_ids"]) <= 4
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = loaded.model(ids).logits[0, -1].double()
        with steer(loaded.model, off=[(1, 5), (0, 3)], scale={(1, 7): 2.5}, set={(0, 9): 4.0}):
            steered = loaded.model(ids).logits[0, -1].double()
    original = int(plain.argmax())
    assert data["before"]["token_id"] == original == data["reference"]["token_id"]
    assert data["after"]["token_id"] == int(steered.argmax())
    assert data["before"]["logit"] == pytest.approx(float(plain[original]), abs=1e-5)
    assert data["after"]["logit"] == pytest.approx(float(steered[original]), abs=1e-5)  # the ORIGINAL token
    assert data["after"]["log_prob"] == pytest.approx(float(torch.log_softmax(steered, -1)[original]), abs=1e-5)
    assert [n["mode"] for n in data["neurons"]] == ["off", "off", "scale", "set"]


def test_steer_changes_the_generation_and_leaves_the_model_as_before(cli, folder, loaded):
    code, out, _ = cli("steer", PROMPT, "--set", "1:5=40", "1:6=-40", "--generate", "5", "--json", "--model", str(folder))
    data = json.loads(out)
    assert code == 0
    assert data["before"]["generated_ids"] != data["after"]["generated_ids"]
    assert data["after"]["log_prob"] < data["before"]["log_prob"]
    code, again, _ = cli("steer", PROMPT, "--scale", "0:0=1", "--generate", "5", "--json", "--model", str(folder))
    same = json.loads(again)
    assert same["before"] == same["after"] == {**data["before"]}  # scale 1 is identity; nothing stayed hooked


def test_steer_terminal_view(cli, folder):
    code, out, err = cli("steer", PROMPT, "--off", "1:5", "--generate", "3", "--color", "never", "--model", str(folder))
    assert code == 0, err
    assert "steering: 1:5 off" in out and "before" in out and "after" in out
    assert "log-prob of" in out and "\x1b[" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steer", PROMPT], "no neuron given"),
        (["steer", PROMPT, "--off", "1-5"], "bad neuron '1-5'"),
        (["steer", PROMPT, "--off", "7:0"], "layer 7 does not exist"),
        (["steer", PROMPT, "--off", "0:64"], "neuron 64 does not exist in layer 0"),
        (["steer", PROMPT, "--scale", "0:1"], "LAYER:NEURON=NUMBER"),
        (["steer", PROMPT, "--scale", "0:1=nan"], "finite"),
        (["steer", PROMPT, "--off", "0:1", "--set", "0:1=2"], "given twice"),
        (["steer", PROMPT, "--scale", "0:1=2", "0:1=3"], "given twice in --scale"),
        (["steer", PROMPT, "--off", "0:1", "--generate", "100"], "exceed the model's maximum"),
    ],
)
def test_steer_errors_are_one_clear_line(cli, folder, argv, message):
    code, out, err = cli(*argv, "--model", str(folder))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_neurons_then_steer_on_smollm2(monkeypatch, smollm2, cli):
    """The workflow of the README: find the answer's neurons, switch them off, watch the answer go."""
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: smollm2)
    prompt = "The capital of France is"
    code, out, err = cli("neurons", prompt, "--top", "50", "--json")
    assert code == 0, err
    neurons = json.loads(out)
    assert len(neurons) == 50 and neurons[0]["relevance"] >= neurons[-1]["relevance"] > 0
    off = [f"{n['layer']}:{n['neuron']}" for n in neurons]
    code, out, err = cli("steer", prompt, "--off", *off, "--generate", "3", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["before"]["token"] == " Paris"
    assert data["before"]["log_prob"] - data["after"]["log_prob"] > 1.0  # the answer loses most of its probability
