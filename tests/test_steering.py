"""Steering MLP neurons: closed-form oracles on the tiny Llama, generation with and without a KV cache,
batches, reversibility (also after an exception) and the errors a user sees."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from attnlrp.errors import ExplainError
from attnlrp.latent.steering import SteeringError, parse_neuron, parse_neuron_value, steer

PROMPT = "paris is the capital of"


@pytest.fixture(scope="module")
def ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


def logits(model, ids, **kwargs):
    with torch.no_grad():
        return model(ids, **kwargs).logits


def with_column(model, layer: int, neuron: int, factor: float, bias_value: float | None = None):
    """A copy of ``model`` whose down projection's weight column ``neuron`` is multiplied by ``factor``; with
    ``bias_value``, the column is zeroed and ``W[:, neuron] * bias_value`` becomes a bias (the neuron is constant)."""
    other = copy.deepcopy(model)
    down = other.model.layers[layer].mlp.down_proj
    column = down.weight[:, neuron].detach().clone()
    if bias_value is not None:
        replacement = nn.Linear(down.in_features, down.out_features, bias=True, dtype=down.weight.dtype)
        with torch.no_grad():
            replacement.weight.copy_(down.weight)
            replacement.weight[:, neuron] = 0
            replacement.bias.copy_(column * bias_value)
        other.model.layers[layer].mlp.down_proj = replacement
        return other
    with torch.no_grad():
        down.weight[:, neuron] *= factor
    return other


def test_off_equals_a_zeroed_down_projection_column(llama64, ids):
    oracle = with_column(llama64, 1, 5, 0.0)
    with steer(llama64, off=[(1, 5)]):
        steered = logits(llama64, ids)
    assert torch.allclose(steered, logits(oracle, ids), atol=1e-12, rtol=0)
    assert not torch.allclose(steered, logits(llama64, ids), atol=1e-6)  # the neuron mattered


def test_several_layers_at_once_equal_their_oracle(llama64, ids):
    oracle = with_column(with_column(llama64, 0, 3, 0.0), 1, 40, 2.5)
    with steer(llama64, off=[(0, 3)], scale={(1, 40): 2.5}):
        steered = logits(llama64, ids)
    assert torch.allclose(steered, logits(oracle, ids), atol=1e-12, rtol=0)


def test_scale_equals_a_scaled_column_and_scale_one_is_identity(llama64, ids):
    with steer(llama64, scale={(0, 7): -1.5}):
        steered = logits(llama64, ids)
    assert torch.allclose(steered, logits(with_column(llama64, 0, 7, -1.5), ids), atol=1e-12, rtol=0)
    with steer(llama64, scale={(0, 7): 1.0, (1, 2): 1}):
        same = logits(llama64, ids)
    assert torch.equal(same, logits(llama64, ids))


def test_set_equals_a_constant_neuron(llama64, ids):
    with steer(llama64, set={(1, 9): 3.0}):
        steered = logits(llama64, ids)
    oracle = with_column(llama64, 1, 9, 0.0, bias_value=3.0)
    assert torch.allclose(steered, logits(oracle, ids), atol=1e-12, rtol=0)


def test_the_hook_sees_the_changed_neurons(llama64, ids):
    seen = []
    down = llama64.model.layers[0].mlp.down_proj
    handle = down.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        with steer(llama64, off=[(0, 1)], scale={(0, 2): 2.0}, set={(0, 3): -4.0}):
            logits(llama64, ids)
        logits(llama64, ids)
    finally:
        handle.remove()
    steered, plain = seen
    assert (steered[..., 1] == 0).all() and (steered[..., 3] == -4.0).all()
    assert torch.allclose(steered[..., 2], 2 * plain[..., 2])
    untouched = [i for i in range(plain.shape[-1]) if i not in (1, 2, 3)]
    assert torch.equal(steered[..., untouched], plain[..., untouched])


def test_batch_rows_equal_single_rows(llama64, tok):
    prompts = ["paris is the capital of", "the quick brown fox jumps"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch.attention_mask.all()  # same length: no padding question
    with steer(llama64, off=[(0, 3), (1, 11)], set={(1, 4): 2.0}):
        together = logits(llama64, batch.input_ids)
        alone = [logits(llama64, tok(p, return_tensors="pt").input_ids)[0] for p in prompts]
    for row, single in enumerate(alone):
        assert torch.allclose(together[row], single, atol=1e-10)


def _greedy(model, ids, use_cache: bool):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             use_cache=use_cache, pad_token_id=0, eos_token_id=None, output_scores=True,
                             return_dict_in_generate=True)
    return out.sequences, torch.stack(out.scores)


def test_generate_with_cache_equals_without_cache_under_steering(llama64, ids):
    plain_sequence, plain_scores = _greedy(llama64, ids, use_cache=True)
    with steer(llama64, set={(1, 9): 6.0, (0, 20): -6.0}, off=[(1, 5)]):
        cached, cached_scores = _greedy(llama64, ids, use_cache=True)
        fresh, fresh_scores = _greedy(llama64, ids, use_cache=False)
    assert torch.equal(cached, fresh)
    assert torch.allclose(cached_scores, fresh_scores, atol=1e-10)
    # every generated step was steered, not only the prompt's pass
    assert not torch.allclose(cached_scores[-1], plain_scores[-1], atol=1e-6)
    oracle = with_column(with_column(with_column(llama64, 1, 9, 0.0, bias_value=6.0), 0, 20, 0.0, bias_value=-6.0),
                         1, 5, 0.0)
    oracle_sequence, oracle_scores = _greedy(oracle, ids, use_cache=True)
    assert torch.equal(cached, oracle_sequence)
    assert torch.allclose(cached_scores, oracle_scores, atol=1e-10)


def test_hooks_are_removed_after_the_block_and_after_an_exception(llama64, ids):
    before = logits(llama64, ids)
    downs = [layer.mlp.down_proj for layer in llama64.model.layers]
    with steer(llama64, off=[(0, 0), (1, 1)]) as steering:
        assert steering.active and all(len(d._forward_pre_hooks) == 1 for d in downs)
    assert not steering.active and all(len(d._forward_pre_hooks) == 0 for d in downs)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(llama64, off=[(0, 0)]):
            raise RuntimeError("boom")
    assert all(len(d._forward_pre_hooks) == 0 for d in downs)
    assert torch.equal(logits(llama64, ids), before)  # bit-identical afterwards
    with steering:  # one object can be entered again
        again = logits(llama64, ids)
    oracle = with_column(with_column(llama64, 0, 0, 0.0), 1, 1, 0.0)
    assert torch.allclose(again, logits(oracle, ids), atol=1e-12, rtol=0)


def test_nested_entry_of_one_object_is_refused(llama64):
    steering = steer(llama64, off=[(0, 0)])
    with steering:
        with pytest.raises(SteeringError, match="already active"):
            steering.__enter__()
    assert not steering.active


def test_gradients_flow_through_steered_neurons(llama64, ids):
    embeds = llama64.model.embed_tokens(ids).detach().requires_grad_(True)
    with steer(llama64, scale={(0, 3): 2.0}):
        llama64(inputs_embeds=embeds).logits[0, -1].sum().backward()
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()


def test_latent_relevance_sees_the_steered_model(llama64, tok):
    """Explaining inside a steering block explains the steered model: a neuron switched off has activation
    and relevance 0, whichever context was entered first."""
    from attnlrp.explain import Explainer
    from attnlrp.latent import LatentRecorder

    explainer = Explainer(llama64, tok)
    with steer(llama64, off=[(1, 5)]):
        latents = explainer.explain(PROMPT, latents=True).latents
    assert (latents.activations[1, :, 5] == 0).all() and (latents.neurons[1, :, 5] == 0).all()
    assert (latents.activations[1, :, 6] != 0).any()
    with LatentRecorder(llama64) as recorder, steer(llama64, off=[(1, 5)]):
        llama64(tok(PROMPT, return_tensors="pt").input_ids)
    captured = recorder._captures.get((1, "mlp"), [])
    assert captured and all((c.activation[..., 5] == 0).all() for c in captured)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"off": [(2, 0)]}, "layer 2 does not exist; the model has layers 0..1"),
        ({"off": [(-1, 0)]}, "layer -1 does not exist"),
        ({"off": [(0, 64)]}, "neuron 64 does not exist in layer 0; its MLP has neurons 0..63"),
        ({"scale": {(1, -3): 2.0}}, "neuron -3 does not exist"),
        ({"off": [(0, 1), (0, 1)]}, "neuron 0:1 is given twice"),
        ({"off": [(0, 1)], "scale": {(0, 1): 2.0}}, "neuron 0:1 is given twice (off and scale)"),
        ({"scale": {(0, 1): float("nan")}}, "must be finite"),
        ({"set": {(0, 1): float("inf")}}, "must be finite"),
        ({"scale": {(0, 1): "big"}}, "must be a number"),
        ({"off": [(0, 1.5)]}, "pair of integers"),
        ({"off": [0]}, "pair of integers"),
        ({"off": (0, 1)}, "a list of neurons"),
        ({"off": 3}, "a list of neurons"),
        ({"scale": [(0, 1)]}, "takes a mapping"),
    ],
)
def test_invalid_requests_are_clear_errors(llama64, kwargs, message):
    with pytest.raises(SteeringError) as info:
        steer(llama64, **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ExplainError)  # the CLI reports it as one line


def test_string_neurons_are_accepted(llama64, ids):
    with steer(llama64, off=["1:5"], scale={"0:7": 2}) as steering:
        pass
    assert steering.neurons == [(1, 5), (0, 7)]
    assert steering.describe() == "1:5 off, 0:7 × 2"


@pytest.mark.parametrize("text, expected", [("3:17", (3, 17)), (" 0 : 2 ", (0, 2))])
def test_parse_neuron(text, expected):
    assert parse_neuron(text) == expected


@pytest.mark.parametrize("text", ["3", "3:", ":4", "a:b", "3:4:5", "-1:2", "3.5:1", ""])
def test_parse_neuron_rejects(text):
    with pytest.raises(SteeringError, match="LAYER:NEURON"):
        parse_neuron(text)


def test_parse_neuron_value():
    assert parse_neuron_value("3:17=0.5") == ((3, 17), 0.5)
    assert parse_neuron_value("0:1=-2e1") == ((0, 1), -20.0)
    for bad, message in (("3:17", "LAYER:NEURON=NUMBER"), ("3:17=x", "bad number 'x'"),
                         ("3:17=nan", "finite"), ("3:17=inf", "finite"), ("x=1", "LAYER:NEURON")):
        with pytest.raises(SteeringError, match=message):
            parse_neuron_value(bad)
    assert math.isfinite(parse_neuron_value("1:1=1e300")[1])
