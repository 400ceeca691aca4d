"""A Method's ``attention`` and ``gates`` settings act independently, and the same way whether attention runs
as an eager softmax · V product or as one fused SDPA call (the eager and fused paths must agree)."""

from __future__ import annotations

import pytest
import torch

import attnlrp
from attnlrp.core import Method
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


@pytest.mark.parametrize("attention,gates", [("constant", "uniform"), ("uniform", "constant"),
                                             ("constant", "constant"), ("uniform", "uniform")])
def test_eager_and_fused_attention_agree_for_each_setting(attention, gates):
    method = Method(f"test-{attention}-{gates}", "test", "a test method", uses_rules=True, attention=attention,
                    gates=gates)
    tok = word_tokenizer()
    eager = attnlrp.explain(tiny_llama(torch.float64, attn="eager"), tok, PROMPT, method=method)
    fused = attnlrp.explain(tiny_llama(torch.float64, attn="sdpa"), tok, PROMPT, method=method)
    torch.testing.assert_close(eager.relevance, fused.relevance, rtol=1e-5, atol=1e-7)
    assert eager.ledger.balanced() and fused.ledger.balanced()


def test_the_two_settings_change_different_things():
    tok, model = word_tokenizer(), tiny_llama(torch.float64, attn="eager")
    runs = {}
    for attention in ("uniform", "constant"):
        for gates in ("uniform", "constant"):
            method = Method(f"t-{attention}-{gates}", "t", "t", uses_rules=True, attention=attention, gates=gates)
            runs[attention, gates] = attnlrp.explain(model, tok, PROMPT, method=method).relevance
    assert len({tuple(r.tolist()) for r in runs.values()}) == 4  # each setting matters on its own
    torch.testing.assert_close(runs["uniform", "uniform"], attnlrp.explain(model, tok, PROMPT).relevance)
    torch.testing.assert_close(runs["constant", "constant"],
                               attnlrp.explain(model, tok, PROMPT, method="cp-lrp").relevance)
