"""Agreement with the reference implementation, lxt 2.1, on every architecture it patches.

lxt 2.1's efficient mode has patch maps for llama, qwen2, qwen3, gemma3 (text), gpt2 and bert. For each, a tiny
seeded model (tests/architectures/configs.py, float32) is committed in tests/data/tiny_models/<arch>/
(scripts/make_tiny_reference_models.py); scripts/lxt_reference_tiny.py ran lxt on the same folders in its own
environment (transformers 4.57) and stored token relevance in tests/data/lxt_reference_tiny.json, one process
per (architecture, method). Here we load the same folders with our transformers and compare, per heatmap:
same target, same value (rel 1e-5), Pearson >= 0.999, same total, and each token within 1e-4 of the largest
|relevance| (measured: Pearson 1.000000000, element-wise at most 5e-6 of it, on eager and SDPA alike).

No deliberate difference exists: on all six architectures AttnLRP, CP-LRP and Input x Gradient agree with lxt.
lxt 2.1 ships no CP-LRP map for bert, so bert is compared for AttnLRP and Input x Gradient only.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import transformers

import attnlrp
from tiny import word_tokenizer

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "lxt_reference_tiny.json").read_text())
MANIFEST = json.loads((DATA / "tiny_models" / "manifest.json").read_text())
OURS = {"attnlrp": "attnlrp", "cp_lrp": "cp-lrp", "input_x_gradient": "input-x-gradient"}
LXT_ARCHITECTURES = {"llama", "qwen2", "qwen3", "gemma3_text", "gpt2", "bert"}

CASES = [
    pytest.param(arch, key, index, id=f"{arch}-{key}-{index}")
    for arch, entry in REFERENCE["models"].items()
    for key in entry["methods"]
    for index in range(len(entry["prompts"]))
]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


@lru_cache(maxsize=None)
def load(arch: str, attn: str):
    cls = getattr(transformers, REFERENCE["models"][arch]["model_class"])
    return cls.from_pretrained(DATA / "tiny_models" / arch, dtype=torch.float32, attn_implementation=attn).eval()


def test_reference_covers_every_architecture_lxt_patches():
    assert set(REFERENCE["models"]) == LXT_ARCHITECTURES
    assert REFERENCE["generator"]["lxt"] == "2.1"
    for arch, entry in REFERENCE["models"].items():
        expected = {"attnlrp", "input_x_gradient"} | ({"cp_lrp"} if arch != "bert" else set())
        assert set(entry["methods"]) == expected, arch
        # the stored prompts are the manifest's, and lxt's forward matched transformers 5.x's on the same folder
        for ref, made in zip(entry["prompts"], MANIFEST["models"][arch]["prompts"], strict=True):
            assert ref["input_ids"] == made["input_ids"]
            assert ref["logits_max_abs_diff_vs_5x"] < 1e-4
            # lxt's patches were active: AttnLRP's heatmap is not plain Input x Gradient
            diff = torch.tensor(ref["attnlrp"]) - torch.tensor(ref["input_x_gradient"])
            assert float(diff.abs().max()) > 1e-3, arch


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch, key, index", CASES)
def test_agrees_with_lxt(arch, key, index, attn):
    """lxt ran eager attention; ours must give the same heatmap on eager and on SDPA."""
    entry = REFERENCE["models"][arch]
    ref = entry["prompts"][index]
    model = load(arch, attn)
    target = ref["target_id"] if entry["kind"] == "encoder" else None  # decoders: the argmax, as lxt's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = attnlrp.explain(model, word_tokenizer(), list(ref["input_ids"]), method=OURS[key], target=target)
    assert e.unhandled == []  # every non-linear operation ran with a rule
    expected = torch.tensor(ref[key], dtype=torch.float64)
    assert e.token_ids == ref["input_ids"]
    assert e.target.token_id == ref["target_id"]
    assert e.value == pytest.approx(ref["value"], rel=1e-5)
    assert pearson(e.relevance, expected) >= 0.999
    assert float(e.relevance.double().sum()) == pytest.approx(float(expected.sum()), rel=1e-3, abs=1e-4)
    # in fact the two agree to float32 rounding (worst case 5e-6 of the largest |relevance|)
    scale = float(expected.abs().max())
    torch.testing.assert_close(e.relevance.double(), expected, rtol=0, atol=1e-4 * scale)
