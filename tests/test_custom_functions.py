"""Custom ``torch.autograd.Function``s inside a model: ``Function.apply`` passes the rule mode unseen and brings
its own backward, so the context notices them from the outside. An element-wise one gets the identity rule (the
relevance then equals the same model with a plain activation module); any other is reported in the audit with
its module path and Function name. Also for transformers' own class that does it (BLOOM's GeLUFunction)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import attnlrp
from attnlrp import LRPContext
from tiny import seeded, tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


class _ExactGelu(torch.autograd.Function):
    """tanh-free GELU with its own exact backward, as modelling code writes fused kernels."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return grad * (cdf + x * pdf)


class FusedGelu(nn.Module):
    def forward(self, x):
        return _ExactGelu.apply(x)


class _RowSoftmax(torch.autograd.Function):
    """Not element-wise: each output depends on the whole row."""

    @staticmethod
    def forward(ctx, x):
        y = torch.softmax(x, dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return y * (grad - (grad * y).sum(-1, keepdim=True))


class RowMix(nn.Module):
    def forward(self, x):
        return x * _RowSoftmax.apply(x) * x.shape[-1]


def _with_activation(activation: type[nn.Module]) -> nn.Module:
    model = tiny_llama(torch.float64)
    for layer in model.model.layers:
        layer.mlp.act_fn = activation()  # one instance per layer, as modelling code builds them
    return model


def test_an_element_wise_custom_function_gets_the_identity_rule():
    tok = word_tokenizer()
    fused = attnlrp.explain(_with_activation(FusedGelu), tok, PROMPT)
    plain = attnlrp.explain(_with_activation(nn.GELU), tok, PROMPT)  # a torch.nn activation: the identity rule
    assert fused.target.token_id == plain.target.token_id
    torch.testing.assert_close(fused.relevance, plain.relevance, rtol=1e-6, atol=1e-7)
    assert fused.ledger.balanced() and not fused.unhandled
    assert any(rule == "identity (custom autograd Function)" and "_ExactGelu" in op for rule, op in
               ((c["rule"], c["operation"]) for c in fused.covered))


def test_without_the_rule_the_function_s_own_backward_would_leak():
    """The oracle above is not vacuous: left to its own backward, the Function unbalances the ledger."""
    model, tok = _with_activation(FusedGelu), word_tokenizer()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with LRPContext(model) as ctx:
        for module in model.modules():  # what the context did before: no hook sees the Function
            module._forward_hooks.clear()
        logits = model(inputs_embeds=embeds).logits[0, -1]
        value = logits[logits.argmax()]
        value.backward()
    relevance = float((embeds * embeds.grad).sum().detach())
    report = ctx.ledger.row(0, input_relevance=relevance, value=float(value.detach()))
    assert not report.balanced()


def test_a_custom_function_that_is_not_element_wise_is_reported_with_its_module():
    tok = word_tokenizer()
    model = _with_activation(RowMix)
    with pytest.warns(attnlrp.UnruledOperationWarning, match="_RowSoftmax"):
        e = attnlrp.explain(model, tok, PROMPT)
    found = [u for u in e.unhandled if "_RowSoftmax" in u["operation"]]
    assert {u["module"] for u in found} == {f"model.layers.{i}.mlp.act_fn" for i in range(2)}
    assert all(u["count"] == 1 for u in found)  # once per application, not once per consuming operation
    with pytest.raises(attnlrp.UnhandledOperationError, match="_RowSoftmax"):
        attnlrp.explain(model, tok, PROMPT, strict=True)


def test_bloom_gelu_function_and_alibi_scores_are_ruled():
    from transformers import BloomConfig, BloomForCausalLM

    tok = word_tokenizer()
    config = BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4, pad_token_id=0, bos_token_id=2,
                         eos_token_id=2)
    model = seeded(lambda: BloomForCausalLM(config)).double()
    e = attnlrp.explain(model, tok, PROMPT)
    assert e.ledger.balanced(), e.ledger
    assert not e.unhandled
    covered = {(c["rule"], c["operation"]) for c in e.covered}
    assert ("identity (custom autograd Function)", "GeLUFunction in BloomGelu") in covered
    assert ("product (attnlrp)", "bmm") in covered  # ALiBi scores: baddbmm = alibi + q @ k, split into its rules
    assert ("constant addend absorbs", "add") in covered
