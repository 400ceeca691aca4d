"""Encoder-decoders (T5, BART): a decoder token explained over the encoder input and the decoder prefix."""

from __future__ import annotations

import pytest
import torch

import attnlrp
from attnlrp import Explainer

from .configs import LATER, TRANSFORMERS_MAJOR, build
from .support_report import record

NAMES = ["t5", "bart"]
SOURCE = "paris is the capital of france"
PREFIX = "the capital"
# transformers 4.57's T5 attention computes its softmax on `scores.float()` even in a float64 model (5.x keeps the
# model's dtype), so its ledger balances to float32 rounding only; everything else balances in float64
LEDGER_RTOL = {"t5": 1e-7} if TRANSFORMERS_MAJOR < 5 else {}


def fastest_attention(name):
    """sdpa, or eager where transformers has no sdpa for the model (T5 before transformers 5)."""
    return LATER[name].attn_implementations[-1]


def decoder_logits(model, tok, source, prefix_ids):
    ids = torch.tensor([tok(source)["input_ids"]])
    decoder = torch.tensor([[model.config.decoder_start_token_id, *prefix_ids]])
    with torch.no_grad():
        return model(input_ids=ids, decoder_input_ids=decoder).logits[0, -1]


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("name", NAMES)
def test_covered_balanced_and_reported_by_segment(name, method, tok):
    model = build(name, "eager")
    e = attnlrp.explain(model, tok, SOURCE, decoder_prefix=PREFIX, method=method)
    record(name, e, model)
    prefix_ids = tok(PREFIX, add_special_tokens=False)["input_ids"]
    logits = decoder_logits(model, tok, SOURCE, prefix_ids)
    assert e.target.token_id == int(logits.argmax()) and e.value == pytest.approx(float(logits.max()), rel=1e-12)
    assert e.unhandled == []
    assert e.ledger.balanced(rtol=LEDGER_RTOL.get(name, 1e-10)), e.ledger
    encoder_tokens, encoder_relevance = e.part("encoder")
    decoder_tokens, decoder_relevance = e.part("decoder")
    assert len(encoder_tokens) == len(tok(SOURCE)["input_ids"]) and len(decoder_tokens) == 1 + len(prefix_ids)
    totals = e.segment_totals()
    assert totals["encoder"] == pytest.approx(float(encoder_relevance.double().sum()), abs=1e-6)
    assert totals["encoder"] + totals["decoder"] == pytest.approx(e.ledger.input, rel=1e-6, abs=1e-8)
    assert e.to_dict()["segments"] == ["encoder"] * len(encoder_tokens) + ["decoder"] * len(decoder_tokens)


@pytest.mark.parametrize("name", NAMES)
def test_eager_and_sdpa_agree(name, tok):
    if "sdpa" not in LATER[name].attn_implementations:
        pytest.skip(f"transformers {TRANSFORMERS_MAJOR}.x has no sdpa attention for {name}")
    eager = attnlrp.explain(build(name, "eager"), tok, SOURCE, decoder_prefix=PREFIX)
    sdpa = attnlrp.explain(build(name, "sdpa"), tok, SOURCE, decoder_prefix=PREFIX)
    torch.testing.assert_close(eager.relevance, sdpa.relevance, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_rows_equal_single(name, tok):
    model = build(name, fastest_attention(name))
    explainer = Explainer(model, tok)
    sources = [SOURCE, "the quick brown fox jumps over the lazy dog"]
    prefixes = [PREFIX, None]
    batch = explainer.explain_batch(sources, decoder_prefix=prefixes)
    for source, prefix, row in zip(sources, prefixes, batch):
        alone = Explainer(model, tok).explain(source, decoder_prefix=prefix)
        assert row.tokens == alone.tokens and row.target == alone.target
        torch.testing.assert_close(row.relevance, alone.relevance, rtol=1e-6, atol=1e-9)
        assert row.ledger.absorbed == pytest.approx(alone.ledger.absorbed, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_context_exit_restores_outputs(name, tok):
    model = build(name, fastest_attention(name))
    prefix_ids = tok(PREFIX, add_special_tokens=False)["input_ids"]
    before = decoder_logits(model, tok, SOURCE, prefix_ids)
    attnlrp.explain(model, tok, SOURCE, decoder_prefix=PREFIX)
    assert torch.equal(decoder_logits(model, tok, SOURCE, prefix_ids), before)


def test_decoder_prefix_needs_an_encoder_decoder(tok):
    from tiny import tiny_llama

    with pytest.raises(attnlrp.ExplainError, match="only for encoder-decoder"):
        attnlrp.explain(tiny_llama(), tok, SOURCE, decoder_prefix=PREFIX)
