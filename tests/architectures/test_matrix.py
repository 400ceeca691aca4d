"""The architecture matrix: every supported Hugging Face architecture, tiny and seeded, through the explain API.

For each decoder (causal LM) and encoder (sequence classification) in ``configs.ARCHITECTURES``:
(a) no non-linear operation runs without a rule, (b) the relevance ledger balances in float64,
(c) eager and SDPA attention give the same relevance, (d) a padded batch gives each row's single result,
(e) leaving the context restores bit-identical outputs, (f) the explained value is the model's own logit,
(g) CP-LRP really stops the gradient at the attention probabilities. (a), (b) and (c) run for AttnLRP and CP-LRP.

A failure here names an architecture the engine does not cover yet: fix the engine, do not skip the test.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import attnlrp
from attnlrp import Explainer
from tiny import word_tokenizer

from .configs import ARCHITECTURES, ENCODERS, LATER, TRANSFORMERS_MAJOR
from .support_report import record

NAMES = list(ARCHITECTURES)
# transformers 5.24's eager Falcon adds ALiBi twice (in the scores and again in the mask), so its own eager and
# sdpa forwards disagree; test_falcon_alibi_upstream_backends_differ pins that, our engine cannot fix it
UPSTREAM_BACKEND_MISMATCH = {"falcon_alibi"}
if TRANSFORMERS_MAJOR < 5:
    # transformers 4.57 offers sdpa for Gemma2 but its sdpa path drops attn_logit_softcapping (5.x declares Gemma2
    # eager-only, so (c) does not run it there): the two forwards disagree upstream
    UPSTREAM_BACKEND_MISMATCH.add("gemma2")
BOTH_BACKENDS = [
    n for n in NAMES if "sdpa" in ARCHITECTURES[n].attn_implementations and n not in UPSTREAM_BACKEND_MISMATCH
]
MOE = [n for n in NAMES if ARCHITECTURES[n].is_moe]
METHODS = ["attnlrp", "cp-lrp"]
LEDGER_RTOL = 1e-4

_explanations: dict[tuple, object] = {}


def _explain(model, tok, prompt, method="attnlrp"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unhandled-op warning: (a) asserts on e.unhandled instead
        return attnlrp.explain(model, tok, prompt, method=method)


def explained(name: str, method: str = "attnlrp", attn: str = "eager"):
    """The first prompt of ``name`` explained with ``method`` (cached: each test reads a different property)."""
    key = (name, method, attn)
    if key not in _explanations:
        arch = ARCHITECTURES[name]
        model = arch.build(attn)
        _explanations[key] = _explain(model, word_tokenizer(), arch.prompts[0], method)
        record(name, _explanations[key], model)
    return _explanations[key]


def _plain_logits(model, tok, prompt: str) -> torch.Tensor:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


def _describe(e) -> str:
    lines = [f"value {e.value:+.6f}, input {e.ledger.input:+.6f}, absorbed {e.ledger.absorbed:+.6f} "
             f"({e.ledger.by_site}), residual {e.ledger.residual:+.3e} = {e.ledger.residual / e.value:+.2e}·value"]
    lines += [f"unhandled: {u['operation']} in {u['module']} ({u['module_type']}) ×{u['count']}" for u in e.unhandled]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- (a) and (b)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_every_nonlinear_operation_has_a_rule(name, method):
    e = explained(name, method)
    assert e.unhandled == [], _describe(e)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_ledger_balances(name, method):
    e = explained(name, method)
    assert abs(e.ledger.residual) <= LEDGER_RTOL * abs(e.value), _describe(e)


# ------------------------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", BOTH_BACKENDS)
def test_eager_and_sdpa_give_the_same_relevance(name, method, tok):
    arch = ARCHITECTURES[name]
    eager, sdpa = arch.build("eager"), arch.build("sdpa")
    plain_eager, plain_sdpa = (_plain_logits(m, tok, arch.prompts[0]) for m in (eager, sdpa))
    gap = float((plain_eager - plain_sdpa).abs().max())
    assert torch.allclose(plain_eager, plain_sdpa, rtol=1e-5, atol=1e-6), (
        f"transformers' own {name} forward differs between eager and sdpa by {gap:.3e} (not an attnlrp problem)"
    )
    a, b = explained(name, method, "eager"), explained(name, method, "sdpa")
    scale = float(a.relevance.abs().max())
    torch.testing.assert_close(b.relevance, a.relevance, rtol=1e-5, atol=1e-6 * scale)
    assert b.ledger.absorbed == pytest.approx(a.ledger.absorbed, rel=1e-5, abs=1e-6 * abs(a.value))


@pytest.mark.parametrize("name", sorted(UPSTREAM_BACKEND_MISMATCH))
def test_falcon_alibi_upstream_backends_differ(name, tok):
    """When transformers fixes the mismatch noted at UPSTREAM_BACKEND_MISMATCH this fails: then move the
    architecture back into (c)."""
    arch = ARCHITECTURES[name]
    plain = [_plain_logits(arch.build(impl), tok, arch.prompts[0]) for impl in ("eager", "sdpa")]
    assert not torch.allclose(plain[0], plain[1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- (d)
@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_rows_equal_single_prompts(name, tok):
    arch = ARCHITECTURES[name]
    model = arch.build("eager")
    explainer = Explainer(model, tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = explainer.explain_batch(list(arch.prompts))
        alone = [explainer(p) for p in arch.prompts]
    assert len(batch[0]) != len(batch[1])  # the shorter row is padded
    for row, single in zip(batch, alone):
        assert row.tokens == single.tokens and row.target == single.target
        assert row.value == pytest.approx(single.value, rel=1e-6, abs=1e-9)
        scale = float(single.relevance.abs().max())
        torch.testing.assert_close(row.relevance, single.relevance, rtol=1e-5, atol=1e-6 * scale)
        assert row.ledger.absorbed == pytest.approx(single.ledger.absorbed, rel=1e-5, abs=1e-6 * abs(single.value))


# ------------------------------------------------------------------------------------------------- (e)
@pytest.mark.parametrize("name", NAMES)
def test_leaving_the_context_restores_bit_identical_outputs(name, tok):
    arch = ARCHITECTURES[name]
    model = arch.build(arch.attn_implementations[-1])
    flags = [p.requires_grad for p in model.parameters()]
    before = _plain_logits(model, tok, arch.prompts[0])
    for method in METHODS:
        _explain(model, tok, arch.prompts[0], method)
    after = _plain_logits(model, tok, arch.prompts[0])
    assert torch.equal(before, after)
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training


# ------------------------------------------------------------------------------------------------- (f)
@pytest.mark.parametrize("name", NAMES)
def test_explained_value_is_the_models_own_logit(name, tok):
    """explain() feeds inputs_embeds plus its own position / token-type ids: the model must compute the same."""
    arch = ARCHITECTURES[name]
    e = explained(name)
    logits = _plain_logits(arch.build("eager"), tok, arch.prompts[0])[0]
    row = logits if name in ENCODERS else logits[-1]
    assert e.value == pytest.approx(float(row.max()), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------------------------- (g)
@pytest.mark.parametrize("name", [n for n in NAMES if n not in MOE])
def test_cp_lrp_treats_attention_probabilities_as_constants(name):
    """With eager attention every softmax of a dense model is an attention softmax; under CP-LRP no relevance
    may pass through it, so it absorbs nothing (the tag that marks the probabilities must survive reshapes)."""
    e = explained(name, "cp-lrp")
    assert e.ledger.by_site.get("softmax", 0.0) == 0.0, _describe(e)


# -------------------------------------------------------------------------------- MoE: the default kernel
@pytest.mark.parametrize("name", MOE)
def test_moe_with_the_default_experts_kernel(name, tok):
    """transformers' default MoE path (``torch._grouped_mm`` on frozen expert weights) is linear in the input:
    it must not be flagged. ``_grouped_mm`` has no float64 kernel, so this runs in float32."""
    arch = ARCHITECTURES[name]
    model = arch.build("sdpa", torch.float32)
    if TRANSFORMERS_MAJOR >= 5:  # transformers 4.57 has no experts kernels: its only MoE path loops over experts
        assert model.config._experts_implementation == "grouped_mm"
    e = _explain(model, tok, arch.prompts[0])
    assert e.unhandled == [], _describe(e)
    assert abs(e.ledger.residual) <= LEDGER_RTOL * abs(e.value), _describe(e)
