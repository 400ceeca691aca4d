"""Where relevance leaks: block-by-block conservation names the block where a planted leak sits, and nothing
when every rule conserves; `attnlrp audit` says where in one line (and in --json)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import attnlrp
import attnlrp.models
from attnlrp.cli import main
from attnlrp.core import rules
from attnlrp.core.localise import BlockBalances
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


def plant_leak(module: torch.nn.Module, factor: float):
    """The module's output passes a gradient ``factor`` times too large back: relevance is created there."""
    return module.register_forward_hook(lambda mod, args, out: rules.scale_gradient(out, factor))


def test_every_block_of_a_covered_model_conserves():
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    with BlockBalances(model) as balances:
        e = attnlrp.explain(model, tok, PROMPT)
    assert e.ledger.balanced()
    names = [b.name for b in balances.balances if b.complete]
    assert names == [f"model.layers.{i}{child}" for i in range(2) for child in
                     (".input_layernorm", ".self_attn", ".post_attention_layernorm", ".mlp", "")]
    assert balances.leaks() == [] and balances.first_leak() is None
    # the layers' balances chain: what leaves layer 1 at its input is what enters layer 0 at its output
    layer0, layer1 = (b for b in balances.balances if b.name in ("model.layers.0", "model.layers.1"))
    assert layer1.input == pytest.approx(layer0.output, rel=1e-12)


@pytest.mark.parametrize("where", ["model.layers.1.mlp.down_proj", "model.layers.0.self_attn.o_proj"])
def test_a_planted_leak_is_found_in_its_block(where):
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    handle = plant_leak(model.get_submodule(where), 1.1)
    try:
        with BlockBalances(model) as balances:
            e = attnlrp.explain(model, tok, PROMPT)
    finally:
        handle.remove()
    assert not e.ledger.balanced()
    block = where.rsplit(".", 1)[0]  # the leak is in this child of the layer …
    leaks = [b.name for b in balances.leaks()]
    assert balances.first_leak().name == block
    assert set(leaks) == {block, block.rsplit(".", 1)[0]}  # … and in its layer, nowhere else
    leak = balances.first_leak()
    assert leak.leak == pytest.approx(leak.output - leak.input - leak.absorbed)
    # everything below the planted factor gets 1.1 times the gradient: input + absorbed = 1.1 × output
    assert leak.leak == pytest.approx(-0.1 * leak.output, rel=1e-6)


def test_audit_names_the_leaking_block(monkeypatch, capsys):
    model, tok = tiny_llama(), word_tokenizer()
    plant_leak(model.model.layers[1].mlp.down_proj, 1.5)
    loaded = SimpleNamespace(model=model, tokenizer=tok, source="tiny-with-a-leak")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)
    assert main(["audit", "--prompt", PROMPT]) == 1
    out = capsys.readouterr().out
    assert "NOT balanced" in out and "relevance first stops adding up in model.layers.1.mlp:" in out
    assert main(["audit", "--prompt", PROMPT, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["leak"]["block"] == "model.layers.1.mlp" and not report["leak"]["conserves"]
    assert {b["block"] for b in report["blocks"] if not b["conserves"]} == {"model.layers.1.mlp", "model.layers.1"}
