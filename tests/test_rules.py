"""Each rule against its closed-form relevance formula (docs/design.md), in fp64, and stable in fp32/bf16/fp16."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlrp.core import rules
from attnlrp.core.ledger import Ledger

torch.manual_seed(0)


def grad_of(out: torch.Tensor, x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(out, x, seed)
    return g


@pytest.mark.parametrize("fn", [F.gelu, F.silu, torch.tanh, lambda t: F.gelu(t, approximate="tanh"), F.relu])
def test_identity_rule_passes_relevance_unchanged(fn):
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(5, 7, dtype=torch.float64)
    y = rules.identity_rule(fn, x)
    g = grad_of(y, x, seed)
    expected_y = fn(x.detach())
    assert torch.equal(y.detach(), expected_y)  # forward untouched
    # R(x) = R(y) element by element, and ĝ(x) = ĝ(y) f(x)/x
    torch.testing.assert_close(x.detach() * g, expected_y * seed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, seed * expected_y / x.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_identity_rule_is_finite_at_zero_and_in_half_precision(dtype):
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-8, 3.0, -3.0], dtype=torch.float32).to(dtype).requires_grad_()
    for fn in (F.gelu, F.silu, torch.sigmoid, torch.tanh):
        y = rules.identity_rule(fn, x)
        g = grad_of(y, x, torch.ones_like(y))
        assert torch.isfinite(g).all(), (fn, g)
        assert g[0] == 0 or fn is torch.sigmoid or abs(float(g[0])) < 1e5


def test_uniform_product_halves_each_operand():
    a = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(4, 6, dtype=torch.float64)
    y = rules.uniform_product(torch.mul, a, b)
    ga, gb = torch.autograd.grad(y, (a, b), seed)
    torch.testing.assert_close(ga, 0.5 * b.detach() * seed)
    torch.testing.assert_close(gb, 0.5 * a.detach() * seed)
    # R(a) = R(b) = ½ R(y) per element
    torch.testing.assert_close(a.detach() * ga, 0.5 * y.detach() * seed)
    torch.testing.assert_close(b.detach() * gb, 0.5 * y.detach() * seed)


def test_uniform_product_for_matmul_conserves():
    a = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(3, 4, 2, dtype=torch.float64)
    y = rules.uniform_product(torch.matmul, a, b)
    ga, gb = torch.autograd.grad(y, (a, b), seed)
    total = float((y.detach() * seed).sum())
    assert math.isclose(float((a.detach() * ga).sum()), total / 2, rel_tol=1e-12)
    assert math.isclose(float((b.detach() * gb).sum()), total / 2, rel_tol=1e-12)


def softmax_relevance_oracle(x: torch.Tensor, r_s: torch.Tensor) -> torch.Tensor:
    """R(x) = x ⊙ (R(s) − s Σ R(s)) — the AttnLRP softmax rule, written out."""
    s = torch.softmax(x, dim=-1)
    return x * (r_s - s * r_s.sum(dim=-1, keepdim=True))


def test_softmax_rule_matches_closed_form_and_reports_absorption():
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(2, 3, 6, dtype=torch.float64)
    ledger = Ledger()
    s = rules.softmax_rule(torch.softmax, x, dim=-1, sink=ledger)
    g = grad_of(s, x, seed)
    r_s = s.detach() * seed
    expected = softmax_relevance_oracle(x.detach(), r_s)
    torch.testing.assert_close(x.detach() * g, expected)
    absorbed = ledger.by_site["softmax"]
    torch.testing.assert_close(absorbed, (r_s.sum(dim=(1, 2)) - expected.sum(dim=(1, 2))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_softmax_rule_masked_logits_give_zero_not_nan(dtype):
    x = torch.randn(1, 2, 5).to(dtype)
    x[..., 3:] = float("-inf")
    x.requires_grad_()
    ledger = Ledger()
    s = rules.softmax_rule(torch.softmax, x, dim=-1, sink=ledger)
    g = grad_of(s, x, torch.ones_like(s) + 0.5 * torch.arange(5, dtype=dtype))
    relevance = rules.relevance_of(x.detach(), g)
    assert torch.isfinite(relevance).all()
    assert torch.equal(relevance[..., 3:], torch.zeros_like(relevance[..., 3:]))
    assert torch.isfinite(ledger.by_site["softmax"]).all()


def eager_attention_oracle(q, k, v, seed, mask=None):
    """Relevance of q, k, v and what the softmax absorbs, by the uniform and softmax rules written out."""
    scale = 1 / math.sqrt(q.shape[-1])
    scores = scale * q @ k.transpose(-1, -2) + (0 if mask is None else mask)
    a = torch.softmax(scores, dim=-1)
    out = a @ v
    # A·V, uniform: R(A) = A ⊙ ½ ĝ vᵀ, R(v) = v ⊙ ½ Aᵀ ĝ
    g_a = 0.5 * seed @ v.transpose(-1, -2)
    r_v = v * (0.5 * a.transpose(-1, -2) @ seed)
    # softmax: plain gradient, ĝ(x) = s ⊙ (ĝ(s) − Σ s ĝ(s)); masked logits get exactly 0
    g_scores = a * (g_a - (a * g_a).sum(dim=-1, keepdim=True))
    # q·kᵀ, uniform: each half of ĝ(scores)
    r_q = q * (0.5 * scale * g_scores @ k)
    r_k = k * (0.5 * scale * g_scores.transpose(-1, -2) @ q)
    return out, r_q, r_k, r_v


def test_attention_rule_on_fused_sdpa_matches_eager_oracle():
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    seed = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    ledger = Ledger()
    out = rules.attention_rule(F.scaled_dot_product_attention, q, k, v, sink=ledger)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), seed)
    expected_out, r_q, r_k, r_v = eager_attention_oracle(q.detach(), k.detach(), v.detach(), seed)
    torch.testing.assert_close(out.detach(), expected_out)
    torch.testing.assert_close(q.detach() * gq, r_q)
    torch.testing.assert_close(k.detach() * gk, r_k)
    torch.testing.assert_close(v.detach() * gv, r_v)
    # ledger: R(out) = R(q) + R(k) + R(v) + absorbed, per batch row
    r_out = (out.detach() * seed).sum(dim=(1, 2, 3))
    inputs = sum((t * g).sum(dim=(1, 2, 3)) for t, g in ((q, gq), (k, gk), (v, gv))).detach()
    torch.testing.assert_close(ledger.by_site["attention"], r_out - inputs)


def test_attention_rule_with_causal_mask_is_finite_and_conserves():
    q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ledger = Ledger()
    out = rules.attention_rule(F.scaled_dot_product_attention, q, k, v, is_causal=True, sink=ledger)
    seed = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), seed)
    assert all(torch.isfinite(g).all() for g in grads)
    mask = torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)
    _, r_q, r_k, r_v = eager_attention_oracle(q.detach(), k.detach(), v.detach(), seed, mask=mask)
    torch.testing.assert_close(v.detach() * grads[2], r_v)
    torch.testing.assert_close(q.detach() * grads[0], r_q)


def test_cp_lrp_attention_stops_query_and_key():
    q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = rules.attention_rule(F.scaled_dot_product_attention, q, k, v, holds_attention_constant=True)
    seed = torch.randn_like(out)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), seed, allow_unused=True)
    assert gq is None and gk is None
    # v keeps the full gradient, so R(v) = R(out): A·v is linear in v once A is a constant
    assert math.isclose(float((v.detach() * gv).sum()), float((out.detach() * seed).sum()), rel_tol=1e-12)


def test_scale_gradient_and_tap():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ledger = Ledger()
    y = rules.tap(rules.scale_gradient(x, 0.25), ledger, "site", sign=-1.0)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(g, torch.full_like(g, 0.25))
    torch.testing.assert_close(ledger.by_site["site"], -x.detach().sum(dim=1))


@pytest.mark.parametrize("apply", [lambda t: rules.scale_gradient(t, 0.5), lambda t: rules.identity_rule(torch.tanh, t)])
def test_rule_outputs_can_be_modified_in_place(apply):
    """Models modify tensors in place (T5: `scores += position_bias`); a rule's output must allow it."""
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y = apply(x * 1.0)
    y += 1.0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("fn, f0", [(torch.sigmoid, 0.5), (F.softplus, math.log(2.0))])
def test_identity_rule_with_offset_centres_and_books_the_constant(fn, f0):
    """f(0) ≠ 0: the rule applies to f(x) − f(0) (no pole at 0); f(0) absorbs like a bias."""
    x = torch.tensor([[-2.0, -1e-9, 0.0, 1e-9, 0.3, 4.0]], dtype=torch.float64, requires_grad=True)
    seed = torch.randn(1, 6, dtype=torch.float64)
    ledger = Ledger()
    y = rules.identity_rule(fn, x, sink=ledger)
    (g,) = torch.autograd.grad(y, x, seed)
    centred = fn(x.detach()) - f0
    # |x| < STABILISER (the ±1e-9 entries) carry ~1e-9 relevance; elsewhere the rule is exact
    torch.testing.assert_close(x.detach() * g, centred * seed, rtol=1e-9, atol=1e-9)
    assert (g / seed).abs().max() <= 1.0  # bounded, no pole at 0: (f(x) − f(0))/x ≤ max f′
    torch.testing.assert_close(ledger.by_site["activation offset"], f0 * seed.sum(dim=1))


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_grouped_query_attention_with_repeated_heads_is_the_same_rule(monkeypatch, method):
    """Where SDPA could only take enable_gqa on its math kernel (CUDA float32, or a mask), the rule repeats the
    key/value heads instead. Forced on here (CPU): output, relevance of q, k, v and the ledger are unchanged."""
    torch.manual_seed(0)
    q = torch.randn(1, 6, 5, 4, dtype=torch.float64)
    k, v = torch.randn(1, 2, 5, 4, dtype=torch.float64), torch.randn(1, 2, 5, 4, dtype=torch.float64)

    def run():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        ledger = Ledger()
        out = rules.attention_rule(F.scaled_dot_product_attention, *leaves, is_causal=True, enable_gqa=True,
                                   holds_attention_constant=method == "cp-lrp", sink=ledger)
        seed = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
        out.backward(seed)
        return out, [(t * t.grad).detach() if t.grad is not None else None for t in leaves], ledger.totals(1)

    reference = run()
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(rules, "gqa_needs_math_kernel", lambda *a: True)

    def spy(q_, k_, v_, **kw):
        calls.append((k_.shape[1], kw.get("enable_gqa")))
        return real_sdpa(q_, k_, v_, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    out = rules.attention_rule(spy, *(t.clone() for t in (q, k, v)), is_causal=True, enable_gqa=True,
                               holds_attention_constant=method == "cp-lrp")
    assert calls == [(6, False)]  # the kernel saw 6 key heads and no enable_gqa
    expanded = run()
    torch.testing.assert_close(expanded[0], reference[0])
    for a, b in zip(expanded[1], reference[1]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    assert expanded[2].keys() == reference[2].keys()
    for site in reference[2]:
        torch.testing.assert_close(expanded[2][site], reference[2][site])


def test_gqa_math_kernel_predicate():
    assert rules.gqa_needs_math_kernel("cuda", torch.float32, masked=False)
    assert rules.gqa_needs_math_kernel("cuda", torch.bfloat16, masked=True)
    assert not rules.gqa_needs_math_kernel("cuda", torch.bfloat16, masked=False)
    assert not rules.gqa_needs_math_kernel("cpu", torch.float32, masked=True)


# ---------------------------------------------------------------- closed forms of f(x)/x (core/closed_forms.py)
def _known_activation_modules():
    import transformers.activations as hf
    from torch import nn

    return [nn.SiLU(), nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), hf.SiLUActivation(), hf.GELUActivation(),
            hf.NewGELUActivation(), hf.GELUTanh(), hf.QuickGELUActivation()]


@pytest.mark.parametrize("module", _known_activation_modules(), ids=lambda m: f"{type(m).__name__}")
def test_module_closed_form_is_f_over_x(module):
    """The closed form must equal f(x)/x of the module itself (an error here means a wrong table entry)."""
    from attnlrp.core.closed_forms import module_ratio

    ratio = module_ratio(module)
    assert ratio is not None
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    x = x[x.abs() > 1e-3]
    torch.testing.assert_close(ratio(x) * x, module(x), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name, kwargs, fn", [("silu", {}, F.silu), ("relu", {}, F.relu), ("gelu", {}, F.gelu),
                                              ("gelu", {"approximate": "tanh"}, lambda t: F.gelu(t, approximate="tanh"))])
def test_functional_closed_form_is_f_over_x(name, kwargs, fn):
    from attnlrp.core.closed_forms import functional_ratio

    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    torch.testing.assert_close(functional_ratio(name, kwargs)(x) * x, fn(x), rtol=1e-6, atol=1e-12)


def test_closed_form_identity_rule_conserves_exactly_where_the_division_was_stabilised():
    """At |x| < STABILISER the divided ratio loses relevance; the closed form keeps R(x) = R(y) there too."""
    x = torch.tensor([0.0, 1e-9, -3e-7, 2.0, -2.0], dtype=torch.float64, requires_grad=True)
    seed = torch.ones(5, dtype=torch.float64)
    y = rules.identity_rule(F.silu, x, ratio=torch.sigmoid)
    g = grad_of(y, x, seed)
    torch.testing.assert_close(g, torch.sigmoid(x.detach()))  # the exact limit 0.5 at 0, no stabiliser
    torch.testing.assert_close(x.detach() * g, y.detach() * seed, rtol=1e-15, atol=0)


def test_unknown_subclass_of_a_known_name_gets_no_closed_form():
    from torch import nn

    from attnlrp.core.closed_forms import module_ratio

    class SiLU(nn.Module):  # a user's module that shares torch's name but computes something else
        def forward(self, x):
            return torch.tanh(x)

    assert module_ratio(SiLU()) is None
