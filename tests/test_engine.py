"""The rule context: norms by what they compute, reversibility, isolation between models, the audit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlrp
from attnlrp import LRPContext, UnhandledOperationError
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


def relevance_through(module: nn.Module, x: torch.Tensor, seed: torch.Tensor, method="attnlrp"):
    x = x.clone().requires_grad_()
    with LRPContext(module, method) as ctx:
        y = module(x)
        (g,) = torch.autograd.grad(y, x, seed)
    return y.detach(), g, ctx


def test_rmsnorm_identity_rule():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(8).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x, seed = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    y, g, ctx = relevance_through(norm, x, seed)
    torch.testing.assert_close(x * g, y * seed)  # R(x) = R(y) element-wise: ĝ(x) = ĝ(y) y/x
    assert any(rule == "norm statistic held constant" for rule, _ in ctx.audit.covered)


def test_layernorm_holds_sigma_constant():
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x, seed = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    y, g, ctx = relevance_through(norm, x, seed)
    torch.testing.assert_close(y, F.layer_norm(x, (6,), norm.weight, norm.bias))
    sigma = torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + norm.eps)
    wg = norm.weight.detach() * seed
    expected_grad = (wg - wg.mean(dim=-1, keepdim=True)) / sigma  # mean-centring, then ÷σ held constant
    torch.testing.assert_close(g, expected_grad)
    # conservation: input relevance + what the bias absorbed = output relevance
    assert math.isclose(float((x * g).sum() + (norm.bias.detach() * seed).sum()), float((y * seed).sum()), rel_tol=1e-10)


def test_linear_is_plain_gradient_and_bias_absorbs():
    layer = nn.Linear(5, 3).double()
    x, seed = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    y, g, ctx = relevance_through(layer, x, seed)
    torch.testing.assert_close(g, seed @ layer.weight.detach())
    absorbed = ctx.ledger.by_site["bias"]
    torch.testing.assert_close(absorbed, (seed * layer.bias.detach()).sum(dim=1))
    torch.testing.assert_close((x * g).sum(dim=1) + absorbed, (y * seed).sum(dim=1))


class ExpUnit(nn.Module):
    """A non-linearity no rule covers."""

    def forward(self, x):
        return torch.exp(x) * 0.5


def test_audit_flags_unhandled_operation_and_strict_raises():
    model = nn.Sequential(nn.Linear(4, 4), ExpUnit())
    x = torch.randn(2, 4, requires_grad=True)
    with LRPContext(model) as ctx:
        y = model(x)
    assert [(u.op, u.module, u.module_type) for u in ctx.audit.unhandled] == [("exp", "1", "ExpUnit")]
    with pytest.raises(UnhandledOperationError, match="exp in 1 .ExpUnit."):
        with LRPContext(model, strict=True):
            model(x)
    assert torch._C._len_torch_function_stack() == 0


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'lrp'.*attnlrp, cp-lrp"):
        LRPContext(nn.Linear(2, 2), "lrp")


# ---------------------------------------------------------------------------------------------- reversibility
def snapshot(model: nn.Module) -> dict:
    import transformers
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    classes = {cls for m in model.modules() for cls in type(m).__mro__}
    return {
        "classes": {cls: dict(vars(cls)) for cls in classes},
        "tensor": {name: getattr(torch.Tensor, name) for name in dir(torch.Tensor)},
        "functional": dict(vars(F)),
        "torch": {name: getattr(torch, name) for name in ("matmul", "softmax", "mul", "einsum", "rsqrt", "tanh")},
        "attention": dict(ALL_ATTENTION_FUNCTIONS._global_mapping),
        "instances": {name: dict(vars(m)) for name, m in model.named_modules()},
        "grad_flags": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "transformers": transformers.__dict__.copy(),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    for key in before:
        if key == "transformers":  # a lazy module: first use adds names; none that existed may change
            changed = {name for name, value in before[key].items() if after[key].get(name) is not value}
            assert not changed, changed
            continue
        assert before[key] == after[key], key


def test_outputs_bit_identical_after_exit_and_nothing_left_changed():
    model, tok = tiny_llama(), word_tokenizer()
    model.train()  # the context switches to eval and must restore training flags
    model.model.layers[0].requires_grad_(False)  # and restore mixed requires_grad flags
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    model.eval()
    reference = model(ids).logits
    model.train()
    before = snapshot(model)
    attnlrp.explain(model, tok, PROMPT)
    after = snapshot(model)
    assert_same_snapshot(before, after)
    model.eval()
    assert torch.equal(model(ids).logits, reference)
    assert torch._C._len_torch_function_stack() == 0


def test_restored_after_exception_inside_context_and_inside_forward():
    model = tiny_llama()
    ids = torch.tensor([[2, 7, 8, 9]])
    reference = model(ids).logits
    before = snapshot(model)
    with pytest.raises(KeyError):
        with LRPContext(model):
            model(ids)
            raise KeyError("boom")
    with pytest.raises(RuntimeError):
        with LRPContext(model):
            embeds = model.get_input_embeddings()(ids).requires_grad_()
            model(inputs_embeds=embeds[..., :5])  # wrong hidden size: fails deep inside the forward
    assert torch._C._len_torch_function_stack() == 0
    assert_same_snapshot(before, snapshot(model))
    assert torch.equal(model(ids).logits, reference)


def test_two_models_and_two_methods_in_one_process():
    tok = word_tokenizer()
    a, b = tiny_llama(), tiny_llama()
    with torch.no_grad():  # a different model b
        for p in b.parameters():
            p.mul_(1.5)
    alone = {(name, method): attnlrp.explain(m, tok, PROMPT, method=method).relevance
             for name, m in (("a", a), ("b", b)) for method in ("attnlrp", "cp-lrp")}
    assert not torch.allclose(alone[("a", "attnlrp")], alone[("a", "cp-lrp")])
    # nested contexts on two models: each only rules its own model's operations
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    ea = a.get_input_embeddings()(ids).detach().requires_grad_()
    eb = b.get_input_embeddings()(ids).detach().requires_grad_()
    with LRPContext(a, "attnlrp"), LRPContext(b, "cp-lrp"):
        la = a(inputs_embeds=ea).logits[0, -1]
        lb = b(inputs_embeds=eb).logits[0, -1]
        ga, = torch.autograd.grad(la[la.argmax()], ea)
        gb, = torch.autograd.grad(lb[lb.argmax()], eb)
    torch.testing.assert_close((ea * ga).sum(-1)[0], alone[("a", "attnlrp")], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((eb * gb).sum(-1)[0], alone[("b", "cp-lrp")], rtol=1e-5, atol=1e-6)


def test_plain_methods_use_no_rule():
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    e = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=e).logits[0, -1]
    g, = torch.autograd.grad(logits.max(), e)
    ixg = attnlrp.explain(model, tok, PROMPT, method="input-x-gradient")
    grad = attnlrp.explain(model, tok, PROMPT, method="gradient")
    torch.testing.assert_close(ixg.relevance.double(), (e * g).sum(-1)[0].detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.relevance.double(), g.norm(dim=-1)[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_recomputes_under_the_rules(reentrant):
    """The recomputation during backward runs outside the forward's hooks: relevance must not change."""
    tok = word_tokenizer()
    plain = attnlrp.explain(tiny_llama(torch.float64), tok, PROMPT)
    model = tiny_llama(torch.float64)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5.24 (the old name is deprecated there)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:  # transformers 4.57
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    layer = model.model.layers[0]
    checkpoint_function = layer._gradient_checkpointing_func
    runs = []
    handle = layer.mlp.register_forward_pre_hook(lambda *args: runs.append(1))
    checkpointed = attnlrp.explain(model, tok, PROMPT)
    handle.remove()
    assert len(runs) == 2  # forward, then the recomputation during backward: checkpointing really ran
    torch.testing.assert_close(checkpointed.relevance, plain.relevance, rtol=1e-12, atol=1e-12)
    assert checkpointed.ledger.balanced(rtol=1e-6) and checkpointed.unhandled == []
    assert layer._gradient_checkpointing_func is checkpoint_function and not layer.training
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("offload", ["cpu", "disk", "device_map"])
def test_accelerate_offloaded_model_gives_the_same_relevance(offload, tmp_path):
    """A model dispatched by accelerate (weights on `meta` between passes) is explained like the model in one
    piece, ledger included (biases are read from accelerate's offload map)."""
    from accelerate import cpu_offload, disk_offload
    from transformers import LlamaForCausalLM

    tok = word_tokenizer()
    whole = attnlrp.explain(tiny_llama(torch.float64, attention_bias=True, mlp_bias=True), tok, PROMPT)
    model = tiny_llama(torch.float64, attention_bias=True, mlp_bias=True)
    if offload == "cpu":
        cpu_offload(model, execution_device=torch.device("cpu"))
    elif offload == "disk":
        disk_offload(model, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    else:
        model.save_pretrained(tmp_path / "model")
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        model = LlamaForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map, dtype=torch.float64,
                                                 offload_folder=str(tmp_path / "offload")).eval()
        assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    split = attnlrp.explain(model, tok, PROMPT)
    torch.testing.assert_close(split.relevance, whole.relevance, rtol=1e-10, atol=1e-12)
    assert split.ledger.absorbed == pytest.approx(whole.ledger.absorbed, rel=1e-10)
    assert "bias" in split.ledger.by_site and split.unhandled == []


def _gamma_relevance(model: nn.Module, embeds: torch.Tensor, target: int):
    """Input relevance of ``target``'s last-position logit with the γ-rule on every Linear, and its ledger."""
    x = embeds.clone().requires_grad_()
    with LRPContext(model, "attnlrp", gamma={"Linear": 0.25}) as ctx:
        logit = model(inputs_embeds=x).logits[0, -1, target]
        (g,) = torch.autograd.grad(logit, x)
    relevance = (x * g).sum(-1).detach()
    ledger = ctx.ledger.row(0, input_relevance=float(relevance.sum()), value=float(logit.detach()))
    return relevance, ledger


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_gamma_rule_on_offloaded_layers(offload, tmp_path):
    """γ layers read their weights in backward: under accelerate's offload (weights on `meta` between passes)
    the rule must run inside accelerate's wrapper, where the weights are loaded, and give the same relevance."""
    from accelerate import cpu_offload, disk_offload

    whole = tiny_llama(torch.float64, attention_bias=True, mlp_bias=True)
    ids = word_tokenizer()(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        embeds = whole.get_input_embeddings()(ids)
    target = int(whole(ids).logits[0, -1].argmax())
    expected, expected_ledger = _gamma_relevance(whole, embeds, target)
    plain_x = embeds.clone().requires_grad_()
    with LRPContext(whole, "attnlrp"):
        (plain_g,) = torch.autograd.grad(whole(inputs_embeds=plain_x).logits[0, -1, target], plain_x)
    assert not torch.allclose((plain_x * plain_g).sum(-1), expected, rtol=1e-3)  # γ really changes relevance

    model = tiny_llama(torch.float64, attention_bias=True, mlp_bias=True)
    if offload == "cpu":
        cpu_offload(model, execution_device=torch.device("cpu"))
    else:
        disk_offload(model, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.device.type == "meta"
    wrapper = q_proj.forward
    relevance, ledger = _gamma_relevance(model, embeds, target)
    torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-12)
    assert ledger.by_site["gamma"] == pytest.approx(expected_ledger.by_site["gamma"], rel=1e-10)
    assert ledger.balanced(rtol=1e-6) and expected_ledger.balanced(rtol=1e-6)
    assert q_proj.forward is wrapper and q_proj.weight.device.type == "meta"  # accelerate's dispatch restored
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, whole(ids).logits)
