"""Relevance patching (attnlrp.patching) on tiny float64 models: closed-form oracles where the model is linear in the
patched component, real patching against an independent loop of our own hooks, directions, circuits, errors, the
JSON contract and the HTML's escaping."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from torch import nn

from architectures.configs import build
from attnlrp.errors import ExplainError
from attnlrp.patching import LEVELS, activation_patching, agreement, circuit, patch
from attnlrp.patching.estimate import estimate_pairs
from attnlrp.patching.runs import Setup
from tiny import tiny_llama, word_tokenizer

CLEAN = "paris is the capital of france . lisbon is the capital of"
CORRUPTED = "paris is the capital of france . berlin is the capital of"
TARGET, CONTRAST = "portugal", "germany"
TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(torch.float64)


def _hooks_are_gone(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@contextlib.contextmanager
def replaced(module: nn.Module, name: str, new: nn.Module):
    """``module.name`` replaced by ``new`` on this instance for the block, then restored."""
    old = getattr(module, name)
    setattr(module, name, new)
    try:
        yield
    finally:
        setattr(module, name, old)


@contextlib.contextmanager
def zeroed(parameter: nn.Parameter):
    """A parameter set to zero for the block, then restored."""
    saved = parameter.detach().clone()
    with torch.no_grad():
        parameter.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            parameter.copy_(saved)


def close(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> bool:
    return bool((a - b).abs().max() <= TOLERANCE * max(scale, float(b.abs().max())))


# ------------------------------------------------------------------------------------ closed-form oracles

@pytest.mark.parametrize("method", ["gradient", "attnlrp", "relp"])
def test_estimate_is_exact_where_the_logits_are_linear_in_the_component(model, tok, method):
    """Without the final norm, the logits are linear in the last layer's MLP output and neurons; with that layer's
    MLP silenced too (down projection zero), in its heads. There, estimate = true patching effect."""
    last = len(model.model.layers) - 1
    with replaced(model.model, "norm", nn.Identity()):
        result = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method, levels="mlps,neurons")
        truth = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="mlps,neurons")
        with zeroed(model.model.layers[last].mlp.down_proj.weight):
            heads = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method, levels="heads")
            head_truth = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="heads")
    assert isinstance(model.model.norm, nn.Module) and not isinstance(model.model.norm, nn.Identity)
    assert float(truth["mlps"][last].abs()) > 1e-6 and float(head_truth["heads"][last].abs().max()) > 1e-6
    assert close(result.estimates["mlps"][last], truth["mlps"][last])
    assert close(result.estimates["neurons"][last], truth["neurons"][last])
    assert close(heads.estimates["heads"][last], head_truth["heads"][last])
    # the neurons of a layer make up its MLP output, exactly, in the estimate (a linear map of them)
    assert close(result.estimates["neurons"][last].sum(), result.estimates["mlps"][last])
    assert _hooks_are_gone(model)


@pytest.mark.parametrize("method", ["gradient", "attnlrp", "relp"])
def test_a_linear_metric_of_the_last_residual_stream_is_estimated_exactly(model, tok, method):
    """A callable metric, linear in the logits, without the final norm: linear in the last layer's output at every
    position (zero effect where it does not reach the last position)."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return 2.0 * logits[:, -1, 7] - 0.5 * logits[:, -1, 11]

    last = len(model.model.layers) - 1
    with replaced(model.model, "norm", nn.Identity()):
        result = patch(model, tok, CLEAN, CORRUPTED, method=method, levels="residual", metric=metric)
        truth = activation_patching(model, tok, CLEAN, CORRUPTED, levels="residual", metric=metric)
    assert float(truth["residual"][last, -1].abs()) > 1e-6
    assert close(result.estimates["residual"][last], truth["residual"][last])
    assert (truth["residual"][last, :-1].abs() < 1e-15).all() and (result.estimates["residual"][last, :-1] == 0).all()


def test_noising_and_denoising_are_opposite_where_the_model_is_linear(model, tok):
    """On the last layer's MLP output and neurons (no final norm) the gradient is the same at both runs, so the
    two directions' estimates, and their truths, are exact opposites; elsewhere they are not in general."""
    last = len(model.model.layers) - 1
    with replaced(model.model, "norm", nn.Identity()):
        for method in ("gradient", "attnlrp"):
            noising = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method, levels="mlps,neurons")
            denoising = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method, levels="mlps,neurons",
                              direction="denoising")
            for level in ("mlps", "neurons"):
                assert close(noising.estimates[level][last], -denoising.estimates[level][last])
        truth = {d: activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="mlps", direction=d)
                 for d in ("noising", "denoising")}
    assert close(truth["noising"]["mlps"][last], -truth["denoising"]["mlps"][last])
    assert noising.metric == denoising.metric  # the same two runs, whichever is differentiated
    assert not torch.allclose(truth["noising"]["mlps"][0], -truth["denoising"]["mlps"][0], atol=1e-9)


# ------------------------------------------------------------------------------------ real patching, independently

def _own_patching(model: nn.Module, tok, target: int, contrast: int) -> dict[str, torch.Tensor]:
    """Activation patching one component at a time with hooks written here: heads, MLPs, residual."""
    clean = torch.tensor([tok(CLEAN)["input_ids"]])
    corrupted = torch.tensor([tok(CORRUPTED)["input_ids"]])
    layers = model.model.layers
    heads = model.config.num_attention_heads
    width = model.config.hidden_size // heads
    store: dict[tuple[str, int], torch.Tensor] = {}

    def metric(ids: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        return float(logits[target] - logits[contrast])

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: store.__setitem__(("heads", i), a[0].clone())))
        handles.append(layer.mlp.down_proj.register_forward_hook(
            lambda m, a, o, i=i: store.__setitem__(("mlps", i), o.clone())))
        handles.append(layer.register_forward_hook(
            lambda m, a, o, i=i: store.__setitem__(("residual", i), (o[0] if isinstance(o, tuple) else o).clone())))
    base = metric(clean)
    store_clean = dict(store)
    metric(corrupted)
    for handle in handles:
        handle.remove()
    assert not torch.equal(store[("heads", 1)], store_clean[("heads", 1)])
    truth = {"heads": torch.zeros(len(layers), heads), "mlps": torch.zeros(len(layers)),
             "residual": torch.zeros(len(layers), clean.shape[1])}
    for i, layer in enumerate(layers):
        for h in range(heads):
            def head_hook(m, args, i=i, h=h):
                x = args[0].clone()
                x[..., h * width:(h + 1) * width] = store[("heads", i)][..., h * width:(h + 1) * width]
                return (x,)
            handle = layer.self_attn.o_proj.register_forward_pre_hook(head_hook)
            truth["heads"][i, h] = metric(clean) - base
            handle.remove()
        handle = layer.mlp.down_proj.register_forward_hook(lambda m, a, o, i=i: store[("mlps", i)])
        truth["mlps"][i] = metric(clean) - base
        handle.remove()
        for p in range(clean.shape[1]):
            def residual_hook(m, args, output, i=i, p=p):
                hidden = (output[0] if isinstance(output, tuple) else output).clone()
                hidden[:, p] = store[("residual", i)][:, p]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            handle = layer.register_forward_hook(residual_hook)
            truth["residual"][i, p] = metric(clean) - base
            handle.remove()
    return truth


def test_batched_activation_patching_equals_one_at_a_time_with_our_own_hooks(model, tok):
    target, contrast = tok.convert_tokens_to_ids([TARGET, CONTRAST])
    expected = _own_patching(model, tok, target, contrast)
    truth = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="heads,mlps,residual",
                                batch_size=3)  # 3: chunks that cut across layers and levels
    for level, values in expected.items():
        assert torch.allclose(truth[level].float(), values, atol=1e-6, rtol=0), level
    assert _hooks_are_gone(model)


def test_neurons_can_be_restricted_and_the_rest_is_unknown(model, tok):
    chosen = torch.zeros(2, 64, dtype=torch.bool)
    chosen[0, [3, 9]] = chosen[1, 60] = True
    some = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="neurons",
                               components={"neurons": chosen})
    every = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="neurons")
    assert torch.isnan(some["neurons"][~chosen]).all()
    assert torch.allclose(some["neurons"][chosen], every["neurons"][chosen], atol=1e-15, rtol=0)
    with pytest.raises(ExplainError, match="bool tensor of shape"):
        activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, levels="neurons", components={"neurons": chosen[0]})


def test_a_list_of_pairs_averages_what_each_pair_gives_alone(model, tok):
    """Pairs of different lengths run in separate groups, pairs of one length in one batch: every pair's estimate
    is what it gets alone, and the result is their mean."""
    cleans = [CLEAN, "the quick brown fox jumps over the lazy", CLEAN.replace("lisbon", "madrid")]
    corrupteds = [CORRUPTED, "the quick brown cat jumps over the lazy", CORRUPTED]
    targets, contrasts = [TARGET, "dog", "spain"], [CONTRAST, "cat", CONTRAST]
    several = patch(model, tok, cleans, corrupteds, targets, contrasts, levels="heads,mlps,neurons")
    for i in range(3):
        alone = patch(model, tok, cleans[i], corrupteds[i], targets[i], contrasts[i], levels="heads,mlps,neurons")
        for level in alone.levels:
            assert torch.allclose(several.per_pair[level][i], alone.estimates[level], atol=1e-12, rtol=0)
        assert several.metric["clean"][i] == pytest.approx(alone.metric["clean"], abs=1e-12)
    assert torch.allclose(several.estimates["heads"], several.per_pair["heads"].mean(0))
    verified = several.verify(levels="mlps")
    assert verified.truth_per_pair["mlps"].shape == (3, 2)
    with pytest.raises(ExplainError, match="residual level needs every pair"):
        patch(model, tok, cleans, corrupteds, targets, contrasts, levels="residual")


@pytest.mark.parametrize("offload", ["cpu", "device_map"])
def test_an_accelerate_offloaded_model_gives_the_same_estimates_and_truth(model, tok, offload, tmp_path):
    """Weights on `meta` between passes (accelerate's hooks around every module): the same numbers."""
    from accelerate import cpu_offload
    from transformers import LlamaForCausalLM

    split = tiny_llama(torch.float64)
    if offload == "cpu":
        cpu_offload(split, execution_device=torch.device("cpu"))
    else:
        model.save_pretrained(tmp_path / "model")
        device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                      "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        split = LlamaForCausalLM.from_pretrained(tmp_path / "model", device_map=device_map, dtype=torch.float64,
                                                 offload_folder=str(tmp_path / "offload")).eval()
        assert split.model.layers[1].mlp.down_proj.weight.device.type == "meta"
    for method in ("attnlrp", "gradient"):
        whole = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method)
        parts = patch(split, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method=method)
        for level in LEVELS:
            assert torch.allclose(parts.estimates[level], whole.estimates[level], atol=1e-13, rtol=0), (method, level)
    truth = activation_patching(split, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="heads,mlps,residual")
    expected = activation_patching(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="heads,mlps,residual")
    assert all(torch.allclose(truth[k], expected[k], atol=1e-13, rtol=0) for k in truth)


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "falcon", "bert"])
def test_other_layouts_patch_every_level_and_batching_changes_nothing(tok, name):
    """GPT-2 (Conv1D, tuple outputs), GPT-NeoX (parallel attention), Falcon, and an encoder with a metric callable:
    every level is estimated, and real patching gives the same numbers 5 copies per pass as one at a time."""
    from architectures.configs import DECODER_PROMPTS, ENCODER_PROMPTS

    model = build(name)
    if name == "bert":
        clean = ENCODER_PROMPTS[0]
        kwargs: dict = {"metric": lambda logits: logits[:, 0]}  # the first class's logit
        corrupted = clean.replace("great", "terrible")
    else:
        clean = DECODER_PROMPTS[0]
        kwargs = {"target": TARGET, "contrast": CONTRAST}
        corrupted = clean.replace("lisbon", "berlin")
    result = patch(model, tok, clean, corrupted, **kwargs)
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in result.estimates.values())
    draw = torch.rand(result.estimates["neurons"].shape, generator=torch.Generator().manual_seed(0))
    chosen = {"neurons": draw < 0.1}
    one = activation_patching(model, tok, clean, corrupted, **kwargs, batch_size=1, components=chosen)
    five = activation_patching(model, tok, clean, corrupted, **kwargs, batch_size=5, components=chosen)
    for level in LEVELS:
        assert torch.allclose(one[level], five[level], atol=1e-12, rtol=0, equal_nan=True), level
    assert _hooks_are_gone(model)


# ------------------------------------------------------------------------------------ circuits

def test_circuit_recovers_nothing_with_nothing_kept_and_everything_with_everything(model, tok):
    found = circuit(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, random_rankings=2)
    total = 2 * 4 + 2  # 8 heads, 2 MLPs; the embeddings are always kept, and both prompts end in the same token
    for name, curve in found.curves.items():
        assert [n for n, _ in curve] == list(range(total + 1)), name
        assert abs(curve[0][1]) < 1e-9 and abs(curve[-1][1] - 1) < 1e-9, name
    smallest = found.smallest()
    assert set(smallest) == {"relp", "gradient", "random"}  # the default method's ranking, AtP's, random ones
    n = smallest["relp"]
    assert n is not None and dict(found.curves["relp"])[n] >= 0.8
    assert all(r < 0.8 for m, r in found.curves["relp"] if m < n)
    assert [c.name for c in found.nodes] == ["embed"] + [c.name for c in found.ranked[:n]]
    assert found.curves["random"][3][1] == pytest.approx(sum(c[3] for c in found.random_curves) / 2)
    data = found.to_dict()
    assert {"method", "levels", "metric", "curves", "smallest", "nodes", "edges", "threshold"} <= set(data)
    assert all(0 <= e["source"] < len(found.nodes) and 0 <= e["target"] < len(found.nodes) for e in data["edges"])


class LinearMLP(nn.Module):
    """An MLP without activation or gate: ``down(up(x))``."""

    def __init__(self, up: nn.Linear, down: nn.Linear) -> None:
        super().__init__()
        self.up_proj, self.down_proj = up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.up_proj(x))


@pytest.mark.parametrize("method", ["gradient", "attnlrp", "relp"])
def test_an_edge_along_a_linear_path_is_the_closed_form(model, tok, method):
    """With the last layer's MLP made linear (no norm before it, no activation, no gate) and no final norm, that
    MLP's output is linear in the same layer's heads: edge(head → MLP) = ĝ_MLP · (a_MLP(head patched) − a_MLP),
    with ĝ_MLP = W[target] − W[contrast] at the last position."""
    layer = model.model.layers[-1]
    last, head = len(model.model.layers) - 1, 2
    width = model.config.hidden_size // model.config.num_attention_heads
    ids = {name: tok.convert_tokens_to_ids(name) for name in (TARGET, CONTRAST)}
    with replaced(model.model, "norm", nn.Identity()), replaced(layer, "post_attention_layernorm", nn.Identity()), \
            replaced(layer, "mlp", LinearMLP(layer.mlp.up_proj, layer.mlp.down_proj)):
        setup = Setup.build(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, None, None)
        nodes = [("heads", last, head), ("mlps", last, None)]
        edge = float(estimate_pairs(setup, method, "noising", ("heads", "mlps"), nodes=nodes).edges[(0, 1)][0])
        seen: dict[str, torch.Tensor] = {}
        clean, corrupted = (torch.tensor([setup.pairs[0].clean.input_ids]),
                            torch.tensor([setup.pairs[0].corrupted.input_ids]))
        keep = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("head", a[0].clone()))
        with torch.no_grad():
            model(input_ids=corrupted)
        keep.remove()

        def patch_head(m, args):
            x = args[0].clone()
            x[..., head * width:(head + 1) * width] = seen["head"][..., head * width:(head + 1) * width]
            return (x,)

        read = layer.mlp.down_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o.clone()))
        with torch.no_grad():
            model(input_ids=clean)
            mlp_clean = seen["mlp"]
            swap = layer.self_attn.o_proj.register_forward_pre_hook(patch_head)
            model(input_ids=clean)
            swap.remove()
        read.remove()
        weight = model.lm_head.weight.detach()
        expected = float((weight[ids[TARGET]] - weight[ids[CONTRAST]]) @ (seen["mlp"] - mlp_clean)[0, -1])
    assert abs(expected) > 1e-6
    assert edge == pytest.approx(expected, abs=1e-10 * max(1.0, abs(expected)))
    assert _hooks_are_gone(model)


# ------------------------------------------------------------------------------------ errors

def test_prompts_of_different_lengths_name_the_first_difference(model, tok):
    with pytest.raises(ExplainError, match=r"13 and 14 tokens.*position 8: ' lisbon' vs ' the'"):
        patch(model, tok, CLEAN, "paris is the capital of france . the lisbon is the capital of", TARGET)


def test_bad_requests_are_refused_clearly(model, tok):
    with pytest.raises(ExplainError, match="unknown level 'attention'; choose from: heads, mlps, neurons, residual"):
        patch(model, tok, CLEAN, CORRUPTED, TARGET, levels="heads,attention")
    with pytest.raises(ExplainError, match="unknown direction"):
        patch(model, tok, CLEAN, CORRUPTED, TARGET, direction="backwards")
    with pytest.raises(ExplainError, match="tokens for this tokenizer"):
        patch(model, tok, CLEAN, CORRUPTED, "portugal spain")
    with pytest.raises(ExplainError, match="give a target"):
        patch(model, tok, CLEAN, CORRUPTED)
    with pytest.raises(ExplainError, match="2 clean prompts but 1 corrupted"):
        patch(model, tok, [CLEAN, CLEAN], [CORRUPTED], TARGET)
    with pytest.raises(ExplainError, match="unknown method"):
        patch(model, tok, CLEAN, CORRUPTED, TARGET, method="lrp")
    with pytest.raises(ExplainError, match="whole MLPs or of their neurons"):
        circuit(model, tok, CLEAN, CORRUPTED, TARGET, levels="mlps,neurons")
    with pytest.raises(ExplainError, match="no gap to recover"):
        circuit(model, tok, CLEAN, CLEAN, TARGET, CONTRAST, edges=False)
    assert _hooks_are_gone(model)


@pytest.mark.parametrize("name, message", [("mixtral", "mixture-of-experts"), ("qwen2_moe", "mixture-of-experts"),
                                           ("t5", "encoder-decoders")])
def test_mixture_of_experts_and_encoder_decoders_are_refused(tok, name, message):
    with pytest.raises(ExplainError, match=message):
        patch(build(name), tok, CLEAN, CORRUPTED, TARGET)


# ------------------------------------------------------------------------------------ output

def test_json_contract(model, tok):
    result = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, method="cp-lrp")
    data = result.to_dict()
    assert set(data) == {"metric", "method", "direction", "token_ids", "components"}
    assert set(data["metric"]) == {"clean", "corrupted"} and all(isinstance(v, float) for v in data["metric"].values())
    assert (data["method"], data["direction"]) == ("cp-lrp", "noising")
    assert data["token_ids"] == {"clean": tok(CLEAN)["input_ids"], "corrupted": tok(CORRUPTED)["input_ids"]}
    kinds = {"head": 2 * 4, "mlp": 2, "neuron": 2 * 64, "residual": 2 * 13}
    assert {k: sum(c["kind"] == k for c in data["components"]) for k in kinds} == kinds
    for component in data["components"]:
        assert set(component) == {"kind", "layer", "index", "estimate"}
        assert isinstance(component["layer"], int) and isinstance(component["estimate"], float)
        assert component["index"] is None if component["kind"] == "mlp" else isinstance(component["index"], int)
    magnitudes = [abs(c["estimate"]) for c in data["components"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    result.verify(levels="heads,mlps", top_k=3)
    verified = result.to_dict()
    assert set(verified["agreement"]) == {"heads", "mlps"}
    assert set(verified["agreement"]["heads"]) == {"pearson", "spearman", "top_k_overlap", "k"}
    assert verified["agreement"]["heads"]["k"] == 3
    with_truth = [c for c in verified["components"] if "truth" in c]
    assert {c["kind"] for c in with_truth} == {"head", "mlp"} and len(with_truth) == 10


def test_agreement_against_known_values():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    same = agreement(x, 2 * x + 1, k=2)
    assert (same.pearson, same.spearman) == (pytest.approx(1.0), pytest.approx(1.0))
    assert (same.top_k_overlap, same.k, same.n) == (1.0, 2, 5)
    reverse = agreement(x, -x ** 3, k=2)
    assert reverse.spearman == pytest.approx(-1.0) and reverse.top_k_overlap == 1.0
    ties = agreement(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert ties.spearman == pytest.approx(math.sqrt(3) / 2)  # ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert math.isnan(agreement(x, torch.ones(5)).pearson)
    assert agreement(x, torch.tensor([1.0, float("nan"), 3.0, 4.0, 10.0])).n == 4


def test_html_escapes_tokens_and_is_offline(model, tok):
    result = patch(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, levels="heads,mlps,residual")
    result.verify(levels="heads")
    pair = result.setup.pairs[0]
    evil = dataclasses.replace(pair.clean, tokens=["<script>alert(1)</script>"] * len(pair))
    result.setup = dataclasses.replace(result.setup, pairs=[dataclasses.replace(pair, clean=evil)])
    page = result.to_html()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    assert page.count("<svg") >= 1  # the estimate-against-truth scatter
    found = circuit(model, tok, CLEAN, CORRUPTED, TARGET, CONTRAST, random_rankings=1)
    found.tokens = ["<script>"]
    graph = found.to_html()
    assert "<script" not in graph and graph.count("<svg") == 2  # the graph and the curves
    assert "http" not in graph.replace('xmlns="http://www.w3.org/2000/svg"', "")
