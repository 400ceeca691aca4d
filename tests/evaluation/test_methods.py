"""The compared attribution methods: hand computations on tiny models, and the model left as it was."""

from __future__ import annotations

import pytest
import torch

from attnlrp import Explainer
from attnlrp.errors import ExplainError
from attnlrp.evaluation import (
    METHOD_NAMES, Attributor, TextInstance, attribute, eager_attention, method_options, neutral_token_id, text_instance,
)
from attnlrp.evaluation.methods import _ATTRIBUTORS, rollout_matrix, suppression_masks
from tiny import tiny_llama, word_tokenizer
from toy_lm import ToyLM

TEXT = "the capital of france is paris and the capital of italy is"


@pytest.fixture(scope="module")
def instance(llama64, tok) -> TextInstance:
    return text_instance(tok, TEXT, model=llama64)


@pytest.fixture(scope="module")
def attributor(llama64, tok) -> Attributor:
    return Attributor(llama64, tok)


@pytest.fixture(scope="module")
def eager64():
    """The same weights as ``llama64`` (same seed) with eager attention, for hand computations."""
    return tiny_llama(torch.float64, attn="eager")


def score(model, ids: torch.Tensor, instance: TextInstance, **kwargs) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids[None], **kwargs).logits[0, instance.position]
    value = logits[instance.target_id]
    if instance.contrast_id is not None:
        value = value - logits[instance.contrast_id]
    return float(value)


def model_state(model) -> dict:
    return {
        "attn": [getattr(m.config, "_attn_implementation", None) for m in model.modules() if hasattr(m, "config")],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
        "training": model.training,
    }


def test_method_names_are_the_table_order():
    assert METHOD_NAMES == (
        "attnlrp", "cp-lrp", "input-x-gradient", "gradient", "integrated-gradients", "smoothgrad",
        "attention", "rollout", "atman", "occlusion", "kernel-shap", "random",
    )


def test_every_method_gives_finite_token_relevance_and_leaves_the_model_as_it_was(llama64, instance, attributor):
    before = model_state(llama64)
    with torch.no_grad():
        logits_before = llama64(input_ids=instance.input_ids[None]).logits
    for method in METHOD_NAMES:
        result = attributor(method, instance)
        assert result.method == method and result.seconds >= 0
        assert result.relevance.shape == (len(instance),) and result.relevance.dtype == torch.float64
        assert result.relevance.device.type == "cpu"
        assert torch.isfinite(result.relevance).all(), method
        assert result.relevance[0] == 0, method  # [BOS] is special: never attributed
        assert result.relevance[1:].abs().sum() > 0, method
    assert model_state(llama64) == before
    with torch.no_grad():
        assert torch.equal(llama64(input_ids=instance.input_ids[None]).logits, logits_before)


def test_lrp_family_is_the_explainer_on_the_same_target(llama64, tok, instance, attributor):
    for method in ("attnlrp", "cp-lrp", "input-x-gradient", "gradient"):
        expected = Explainer(llama64, tok, method=method).explain(TEXT, target=instance.target_id).relevance.double()
        expected[0] = 0
        torch.testing.assert_close(attributor(method, instance).relevance, expected, rtol=0, atol=0)
    assert attributor.explainer("attnlrp") is attributor.explainer("attnlrp")


def test_integrated_gradients_reports_completeness_below_its_threshold(instance, attributor):
    result = attributor("integrated-gradients", instance)
    details = result.details
    assert details["converged"] and details["completeness_error"] < 0.05 and details["steps"] in (32, 64)
    gap = details["gap"]
    assert abs(float(result.relevance.sum()) - gap) / abs(gap) == pytest.approx(details["completeness_error"], rel=1e-6)
    capped = attributor("integrated-gradients", instance, tolerance=1e-14, steps=8, max_steps=16)
    assert capped.details["steps"] == 16 and not capped.details["converged"]


def test_integrated_gradients_is_exact_on_a_linear_model():
    toy = ToyLM()
    instance = TextInstance(torch.tensor([0, 5, 9, 2, 14]), -1, 6, torch.tensor([False, True, True, True, True]))
    result = Attributor(toy, _TOY_TOKENIZER)("integrated-gradients", instance)
    w = toy.token_weights(6)
    expected = w[instance.input_ids]
    expected[0] = 0
    # captum keeps IG's step sizes in float32: exact up to float32 rounding
    torch.testing.assert_close(result.relevance, expected, rtol=1e-7, atol=0)
    assert result.details["steps"] == 32 and result.details["completeness_error"] < 1e-7


def test_occlusion_is_the_score_drop_of_replacing_each_token_by_hand(llama64, tok, instance, attributor):
    neutral = neutral_token_id(tok)
    full = score(llama64, instance.input_ids, instance)
    result = attributor("occlusion", instance)
    for t in range(1, len(instance)):
        ids = instance.input_ids.clone()
        ids[t] = neutral
        assert result.relevance[t].item() == pytest.approx(full - score(llama64, ids, instance), abs=1e-10)


def test_occlusion_with_a_contrast_explains_the_logit_difference(llama64, tok):
    instance = text_instance(tok, TEXT, target="rome", contrast="paris")
    result = attribute("occlusion", llama64, tok, instance)
    ids = instance.input_ids.clone()
    ids[3] = neutral_token_id(tok)
    drop = score(llama64, instance.input_ids, instance) - score(llama64, ids, instance)
    assert result.relevance[3].item() == pytest.approx(drop, abs=1e-10)


def test_kernel_shap_recovers_an_additive_model_exactly_and_is_seeded(instance, attributor):
    toy = ToyLM()
    ids = torch.tensor([0, 5, 9, 2, 14, 7, 11])
    toy_instance = TextInstance(ids, -1, 6, ids != 0)
    toy_attributor = Attributor(toy, _TOY_TOKENIZER)
    shap = toy_attributor("kernel-shap", toy_instance, samples=64).relevance
    w = toy.token_weights(6)
    expected = w[ids] - w[_TOY_TOKENIZER.unk_token_id]  # additive game: Shapley value = own contribution
    expected[0] = 0
    torch.testing.assert_close(shap, expected, rtol=1e-6, atol=1e-6)  # captum fits in float32
    torch.testing.assert_close(toy_attributor("occlusion", toy_instance).relevance, expected, rtol=0, atol=1e-12)
    first = attributor("kernel-shap", instance, samples=32).relevance
    assert torch.equal(first, attributor("kernel-shap", instance, samples=32).relevance)
    assert not torch.equal(first, attributor("kernel-shap", instance, samples=32, seed=1).relevance)


def test_smoothgrad_with_vanishing_noise_is_input_x_gradient(instance, attributor):
    smooth = attributor("smoothgrad", instance, noise=1e-7, samples=4).relevance
    torch.testing.assert_close(smooth, attributor("input-x-gradient", instance).relevance, rtol=1e-5, atol=1e-9)
    noisy = attributor("smoothgrad", instance).relevance
    assert torch.equal(noisy, attributor("smoothgrad", instance).relevance)
    assert attributor("smoothgrad", instance).details["samples"] == 16


def test_attention_is_the_last_layer_row_mean_over_heads_a_probability_row(llama64, eager64):
    tok = word_tokenizer(bos=False)
    instance = text_instance(tok, TEXT, target="rome", position=6)  # no special token; tokens 7.. unseen
    relevance = attribute("attention", llama64, tok, instance).relevance
    with torch.no_grad():
        last = eager64(input_ids=instance.input_ids[None], output_attentions=True).attentions[-1][0]
    torch.testing.assert_close(relevance[:7], last.mean(0)[6, :7].double(), rtol=0, atol=1e-12)
    # Llama's eager softmax runs in float32 even for a float64 model
    assert relevance.min() >= 0 and relevance.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (relevance[7:] == 0).all()


def test_rollout_equals_the_hand_computation_on_two_layers(llama64, eager64, instance):
    with torch.no_grad():
        layers = eager64(input_ids=instance.input_ids[None], output_attentions=True).attentions
    assert len(layers) == 2
    T = len(instance)
    mixed = []
    for layer in layers:
        a = layer[0].double().mean(0)
        m = [[0.5 * a[i, j].item() + (0.5 if i == j else 0.0) for j in range(T)] for i in range(T)]
        mixed.append([[v / sum(row) for v in row] for row in m])
    # rollout = Ã_2 · Ã_1, row of the last position
    p = instance.position
    expected = [sum(mixed[1][p][k] * mixed[0][k][j] for k in range(T)) for j in range(T)]
    expected[0] = 0.0  # [BOS]
    relevance = attribute("rollout", llama64, word_tokenizer(), instance).relevance
    torch.testing.assert_close(relevance, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    full = rollout_matrix([layer[0].double() for layer in layers])
    torch.testing.assert_close(full.sum(-1), torch.ones(T, dtype=torch.float64))


def test_atman_with_p_1_removes_the_token_from_attention_and_p_0_changes_nothing(llama64, eager64, instance, attributor):
    zero = attributor("atman", instance, p=0.0).relevance
    assert zero.abs().max() < 1e-12
    removed = attributor("atman", instance, p=1.0).relevance
    full = score(llama64, instance.input_ids, instance)
    for t in (1, 4, len(instance) - 1):
        mask = torch.ones(1, len(instance), dtype=torch.long)
        mask[0, t] = 0  # padding-mask the token out: no query attends to it
        assert removed[t].item() == pytest.approx(full - score(llama64, instance.input_ids, instance, attention_mask=mask), abs=1e-9)
    default = attributor("atman", instance)
    assert default.details["p"] == 0.9
    eager = Attributor(eager64, word_tokenizer())("atman", instance).relevance  # eager softmax: float32
    torch.testing.assert_close(default.relevance, eager, rtol=1e-5, atol=1e-7)
    between = default.relevance[1:].abs()
    assert (between > 0).all()


def test_suppression_masks_add_log_one_minus_p_below_the_diagonal():
    masks = suppression_masks(4, [None, 1], 0.75, torch.float64)
    assert masks.shape == (2, 1, 4, 4)
    inf = float("-inf")
    causal = torch.tensor([[0, inf, inf, inf], [0, 0, inf, inf], [0, 0, 0, inf], [0, 0, 0, 0]], dtype=torch.float64)
    assert torch.equal(masks[0, 0], causal)
    expected = causal.clone()
    expected[1:, 1] = torch.log(torch.tensor(0.25, dtype=torch.float64))
    assert torch.equal(masks[1, 0], expected)


def test_random_is_seeded_per_instance_and_zero_at_special_tokens(tok, instance, attributor):
    first = attributor("random", instance).relevance
    assert torch.equal(first, attributor("random", instance).relevance)
    assert not torch.equal(first, attributor("random", instance, seed=1).relevance)
    other = text_instance(tok, "the capital of germany is", target="berlin")
    assert not torch.equal(attributor("random", other).relevance[1:5], first[1:5])
    assert first[0] == 0 and ((first[1:] > 0) & (first[1:] < 1)).all()


def test_attention_methods_raise_for_a_model_without_attention_weights():
    toy = ToyLM()
    instance = TextInstance(torch.tensor([0, 5, 9]), -1, 6, torch.tensor([False, True, True]))
    toy_attributor = Attributor(toy, _TOY_TOKENIZER)
    for method in ("attention", "rollout"):
        with pytest.raises(ExplainError, match="attention weights"):
            toy_attributor(method, instance)
    with pytest.raises(ExplainError, match="ignores the attention mask"):
        toy_attributor("atman", instance)


def test_eager_attention_is_restored_even_after_an_error(llama64):
    assert llama64.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError):
        with eager_attention(llama64):
            assert llama64.config._attn_implementation == "eager"
            assert llama64.model.layers[0].self_attn.config._attn_implementation == "eager"
            raise RuntimeError("boom")
    assert llama64.config._attn_implementation == "sdpa"
    assert llama64.model.layers[0].self_attn.config._attn_implementation == "sdpa"


def test_bad_requests_raise_clear_errors(llama64, tok, instance, attributor):
    with pytest.raises(ExplainError, match="unknown attribution method 'lime'"):
        attribute("lime", llama64, tok, instance)
    assert issubclass(ExplainError, ValueError)
    with pytest.raises(ExplainError, match="takes no option n_steps; its options are: steps, max_steps"):
        attributor("integrated-gradients", instance, n_steps=10)
    with pytest.raises(ExplainError, match="no option"):
        attributor("attnlrp", instance, samples=3)
    nothing = TextInstance(instance.input_ids, -1, instance.target_id, torch.zeros(len(instance), dtype=torch.bool))
    with pytest.raises(ExplainError, match="no flippable"):
        attributor("occlusion", nothing)
    with pytest.raises(ExplainError, match="TextInstance"):
        attributor("random", instance.input_ids)
    with pytest.raises(ExplainError, match=r"\[0, 1\]"):
        attributor("atman", instance, p=1.5)
    with pytest.raises(ExplainError, match="positive integer"):
        attributor("kernel-shap", instance, samples=0)


def test_options_and_the_attributor_cache(llama64, tok, instance):
    assert method_options("integrated-gradients") == {
        "steps": 32, "max_steps": 64, "tolerance": 0.05, "rule": "gausslegendre", "batch_size": 32,
    }
    assert method_options("kernel-shap")["samples"] == 64 and method_options("attnlrp") == {}
    attribute("random", llama64, tok, instance)
    cached = _ATTRIBUTORS[(id(llama64), id(tok))]
    attribute("attnlrp", llama64, tok, instance)
    assert _ATTRIBUTORS[(id(llama64), id(tok))] is cached and "attnlrp" in cached._explainers


class _ToyTokenizer:
    """What Attributor needs from a tokenizer for the toy model: a neutral token (id 1) and special ids."""

    unk_token_id = 1
    pad_token_id = 0
    all_special_ids = [0, 1]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": []}

    def __len__(self) -> int:
        return 16


_TOY_TOKENIZER = _ToyTokenizer()
