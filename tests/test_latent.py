"""Latent relevance (residual stream, MLP neurons, attention heads) read from the explaining backward pass."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import attnlrp
from attnlrp import ExplainError, Explainer
from attnlrp.latent import LatentRecorder, layer_sites

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "architectures"))
from configs import ARCHITECTURES  # noqa: E402

PROMPT = "paris is the capital of france . lisbon is the capital of"


def _value(explainer: Explainer, output, explanation) -> torch.Tensor:
    target = explanation.target
    if target.kind == "class":
        return output.logits[0, target.token_id]
    return output.logits[0, target.position, target.token_id]


def _plain_gradients(model, explainer: Explainer, explanation, ids: torch.Tensor):
    """Oracle for Input × Gradient, without attnlrp: autograd's gradient of the explained logit with respect to
    each layer's down-projection input and attention output-projection input."""
    sites = layer_sites(model)
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for site in sites:
        for kind, module in (("mlp", site.mlp_output), ("attention", site.attention_output)):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, key=(site.index, kind): seen.__setitem__(key, args[0])))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    try:
        output = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids))
    finally:
        for handle in handles:
            handle.remove()
    keys = sorted(seen)
    grads = torch.autograd.grad(_value(explainer, output, explanation), [seen[k] for k in keys])
    return {k: (seen[k].detach() * g)[0] for k, g in zip(keys, grads)}, sites


@pytest.mark.parametrize("name", [n for n, a in ARCHITECTURES.items() if not a.is_moe])
def test_input_x_gradient_latents_equal_autograd(name, tok):
    """The mechanics on every supported family: with plain gradients, neurons and heads are a ⊙ ∂f/∂a."""
    arch = ARCHITECTURES[name]
    model = arch.build()
    explainer = Explainer(model, tok, method="input-x-gradient")
    explanation = explainer.explain(arch.prompts[0], latents=True)
    latents = explanation.latents
    ids = torch.tensor([explanation.token_ids])
    expected, sites = _plain_gradients(model, explainer, explanation, ids)
    for site in sites:
        torch.testing.assert_close(latents.neurons[site.index], expected[(site.index, "mlp")].float())
        heads = expected[(site.index, "attention")].unflatten(-1, (site.num_heads, -1)).sum(-1)
        torch.testing.assert_close(latents.heads[site.index], heads.float())
    assert latents.neurons.shape == (len(sites), len(explanation), sites[0].num_neurons)
    assert not model._forward_hooks and all(not m._forward_pre_hooks for m in model.modules())


def test_cp_lrp_conserves_the_value_at_every_layer(llama64, tok):
    """CP-LRP on a bias-free Llama absorbs nothing: every layer's residual stream carries exactly the value."""
    explanation = Explainer(llama64, tok, method="cp-lrp").explain(PROMPT, latents=True)
    assert abs(explanation.ledger.absorbed) < 1e-12
    totals = explanation.latents.residual.double().sum(dim=1)
    torch.testing.assert_close(totals, torch.full_like(totals, explanation.value), rtol=1e-6, atol=0)


def _branch_relevance(model, tok, method: str):
    """Oracle for the per-layer sums: each MLP (attention) branch's output times its own modified gradient,
    read with the test's own hooks; a linear, bias-free output projection passes it on unchanged."""
    outputs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def keep(key):
        def hook(module, args, output):
            output.register_hook(lambda g: outputs.__setitem__(key, (output.detach() * g).sum()))
        return hook

    for site in layer_sites(model):
        handles.append(site.mlp_output.register_forward_hook(keep((site.index, "mlp"))))
        handles.append(site.attention_output.register_forward_hook(keep((site.index, "attention"))))
    try:
        explanation = Explainer(model, tok, method=method).explain(PROMPT, latents=True)
    finally:
        for handle in handles:
            handle.remove()
    return explanation, outputs


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_neurons_and_heads_sum_to_their_branch(llama64, tok, method):
    explanation, branches = _branch_relevance(llama64, tok, method)
    latents = explanation.latents
    for layer in range(latents.num_layers):
        assert float(latents.neurons[layer].double().sum()) == pytest.approx(
            float(branches[(layer, "mlp")]), rel=1e-5, abs=1e-9)
        assert float(latents.heads[layer].double().sum()) == pytest.approx(
            float(branches[(layer, "attention")]), rel=1e-5, abs=1e-9)
    # the last layer's output carries the whole value (the final norm and head conserve on this model)
    assert float(latents.residual[-1].double().sum()) == pytest.approx(explanation.value, rel=1e-6)


def test_latents_leave_input_relevance_unchanged(llama64, tok):
    explainer = Explainer(llama64, tok)
    with_latents = explainer.explain(PROMPT, latents=True)
    without = explainer.explain(PROMPT)
    assert without.latents is None
    torch.testing.assert_close(with_latents.relevance, without.relevance, rtol=0, atol=0)


def test_batch_rows_equal_each_prompt_alone(llama64, tok):
    prompts = [PROMPT, "the quick brown fox jumps over"]
    explainer = Explainer(llama64, tok)
    batch = explainer.explain_batch(prompts, latents=True)
    for prompt, row in zip(prompts, batch):
        alone = explainer.explain(prompt, latents=True).latents
        assert row.latents.neurons.shape == alone.neurons.shape
        for field in ("neurons", "heads", "residual", "activations"):
            torch.testing.assert_close(getattr(row.latents, field), getattr(alone, field), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_latents(tok, reentrant):
    from tiny import tiny_llama

    plain = Explainer(tiny_llama(torch.float64), tok).explain(PROMPT, latents=True).latents
    model = tiny_llama(torch.float64)
    model.train()
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    checkpointed = Explainer(model, tok).explain(PROMPT, latents=True).latents
    for field in ("neurons", "heads", "residual", "activations"):
        torch.testing.assert_close(getattr(checkpointed, field), getattr(plain, field), rtol=1e-6, atol=1e-12)


def test_rankings_match_brute_force(llama64, tok):
    latents = Explainer(llama64, tok).explain(PROMPT, latents=True).latents
    totals = latents.neurons.double().sum(dim=1)
    everything = sorted(((float(totals[l, n]), l, n) for l in range(totals.shape[0]) for n in range(totals.shape[1])),
                        key=lambda t: -t[0])
    assert [(s.layer, s.neuron) for s in latents.top_neurons(7)] == [(l, n) for _, l, n in everything[:7]]
    lowest = [(s.layer, s.neuron) for s in latents.top_neurons(3, order="negative")]
    assert lowest == [(l, n) for _, l, n in everything[::-1][:3]]
    in_layer = latents.top_neurons(4, layer=1)
    assert all(s.layer == 1 for s in in_layer)
    assert [s.relevance for s in in_layer] == sorted(totals[1].tolist(), reverse=True)[:4]
    at_token = latents.top_neurons(1, token=-1)[0]
    assert at_token.relevance == pytest.approx(float(latents.neurons[:, -1].max()))
    heads = latents.heads.double().sum(dim=1)
    best = latents.top_heads(1)[0]
    assert best.relevance == pytest.approx(float(heads.max()))
    torch.testing.assert_close(latents.head(best.layer, best.head), latents.heads[best.layer, :, best.head])


def test_bad_requests_are_clear_errors(llama64, tok):
    latents = Explainer(llama64, tok).explain(PROMPT, latents=True).latents
    with pytest.raises(ExplainError, match="layer 5 does not exist"):
        latents.top_neurons(3, layer=5)
    with pytest.raises(ExplainError, match="at least 1"):
        latents.top_heads(0)
    with pytest.raises(ExplainError, match="head 9 does not exist"):
        latents.head(0, 9)
    with pytest.raises(ExplainError, match="order must be"):
        latents.top_neurons(3, order="largest")


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_mixture_of_experts_is_refused_clearly(name, tok):
    model = ARCHITECTURES[name].build()
    with pytest.raises(ExplainError, match="Mixture-of-experts"):
        Explainer(model, tok).explain(PROMPT, latents=True)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_recorder_removes_its_hooks_on_error(llama64):
    with pytest.raises(RuntimeError):
        with LatentRecorder(llama64):
            raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in llama64.modules())


def test_html_and_json_views_escape_tokens(llama64, tok):
    explanation = Explainer(llama64, tok).explain("the < script > alert", latents=True)
    html = explanation.latents.to_html()
    assert "<script>" not in html.replace(" ", "") and "&lt;" in html
    summary = explanation.to_dict()["latents"]
    assert len(summary["residual"]) == 2 and len(summary["residual"][0]) == len(explanation)
    assert summary["top_neurons"][0].keys() == {"layer", "neuron", "relevance", "activation"}


@pytest.mark.real_model
def test_smollm2_latents_conserve_and_match_lrp(smollm2):
    explanation = attnlrp.explain(smollm2.model, smollm2.tokenizer,
                                  "Paris is the capital of France. Lisbon is the capital of", latents=True)
    latents = explanation.latents
    assert explanation.target.token == " Portugal"
    assert latents.neurons.shape == (30, len(explanation), 1536) and latents.heads.shape[2] == 9
    assert float(latents.residual[-1].double().sum()) == pytest.approx(explanation.value, rel=1e-4)
