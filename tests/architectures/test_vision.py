"""Image classifiers: the γ-rule against its formula, ViT patch relevance, the PNG heatmap, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlrp
from attnlrp.core import rules
from attnlrp.core.ledger import Ledger
from attnlrp.vision import ImageExplainer
from .configs import build
from .support_report import record

GAMMA = {"Conv2d": 0.25, "Linear": 0.05}


def gamma_oracle(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: float, r_out: torch.Tensor):
    """R_i = Σ_j z_ij / Σ_i' z_i'j · R_j with z amplified towards the sign of each output (written out)."""
    y = weight @ x + bias
    relevance = torch.zeros_like(x)
    for j in range(weight.shape[0]):
        up, down = weight[j] + gamma * weight[j].clamp(min=0), weight[j] + gamma * weight[j].clamp(max=0)
        if y[j] > 0:
            z = x.clamp(min=0) * up + x.clamp(max=0) * down
            denominator = z.sum() + bias[j] + gamma * bias[j].clamp(min=0)
        else:
            z = x.clamp(min=0) * down + x.clamp(max=0) * up
            denominator = z.sum() + bias[j] + gamma * bias[j].clamp(max=0)
        relevance += z / denominator * r_out[j]
    return relevance


@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0])
def test_gamma_rule_matches_its_formula(gamma):
    torch.manual_seed(1)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    seed = torch.randn(4, dtype=torch.float64)
    ledger = Ledger()
    y = rules.gamma_rule(F.linear, x, weight, bias, gamma, sink=ledger)
    (g,) = torch.autograd.grad(y, x, seed)
    torch.testing.assert_close(y.detach(), F.linear(x.detach(), weight, bias))
    expected = gamma_oracle(x.detach(), weight, bias, gamma, y.detach() * seed)
    torch.testing.assert_close(x.detach() * g, expected, rtol=1e-5, atol=1e-8)
    if gamma == 0.0:  # γ = 0 is the ε-rule: the plain gradient
        torch.testing.assert_close(g, weight.T @ seed, rtol=1e-5, atol=1e-8)
    # what the rule does not pass on is reported: R(y) = R(x) + absorbed
    absorbed = float(ledger.by_site["gamma"].sum())
    assert float((y.detach() * seed).sum()) == pytest.approx(float((x.detach() * g).sum()) + absorbed, rel=1e-9)


def test_gamma_on_conv_matches_the_same_map_as_linear():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel_size=2, stride=2).double()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    with attnlrp.lrp(conv, gamma={"Conv2d": 0.3}):
        xs = x.clone().requires_grad_()
        y = conv(xs)
        seed = torch.randn_like(y)
        (g,) = torch.autograd.grad(y, xs, seed)
    # the same patches as a Linear on unfolded patches: one γ-rule per output pixel
    patches = F.unfold(x, kernel_size=2, stride=2)[0].T  # (4 positions, 8 inputs)
    weight = conv.weight.detach().reshape(3, -1)
    r_patches = torch.stack([
        gamma_oracle(patches[p], weight, conv.bias.detach(), 0.3, (y.detach() * seed)[0, :, p // 2, p % 2])
        for p in range(4)
    ])
    expected = F.fold(r_patches.T.unsqueeze(0), output_size=(4, 4), kernel_size=2, stride=2)
    torch.testing.assert_close(x * g, expected, rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.randn(3, 32, 32, dtype=torch.float64)


@pytest.mark.parametrize("gamma", [None, GAMMA])
@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_vit_covered_balanced_and_patches_sum_pixels(pixels, gamma, method):
    model = build("vit", "sdpa")
    e = ImageExplainer(model, method=method, gamma=gamma)(pixels)
    record("vit", e, model)
    with torch.no_grad():
        logits = model(pixel_values=pixels.unsqueeze(0)).logits[0]
    assert e.target.token_id == int(logits.argmax()) and e.value == pytest.approx(float(logits.max()), rel=1e-12)
    assert e.unhandled == []
    assert e.ledger.balanced(rtol=1e-8), e.ledger
    assert "constants" in e.ledger.by_site  # the class token and position embeddings absorb
    assert e.patch_relevance.shape == (4, 4)
    assert float(e.patch_relevance.double().sum()) == pytest.approx(float(e.pixel_relevance.double().sum()), abs=1e-5)
    assert ("gamma" in e.ledger.by_site) == bool(gamma)


def test_vit_eager_equals_sdpa_and_gamma_changes_the_map(pixels):
    eager = ImageExplainer(build("vit", "eager"))(pixels)
    sdpa = ImageExplainer(build("vit", "sdpa"))(pixels)
    torch.testing.assert_close(eager.pixel_relevance, sdpa.pixel_relevance, rtol=1e-5, atol=1e-7)
    sharpened = ImageExplainer(build("vit", "sdpa"), gamma=GAMMA)(pixels)
    assert not torch.allclose(sharpened.pixel_relevance, sdpa.pixel_relevance)


def test_png_heatmap_and_reversibility(pixels, tmp_path):
    model = build("vit", "sdpa")
    with torch.no_grad():
        before = model(pixel_values=pixels.unsqueeze(0)).logits
    e = ImageExplainer(model, gamma=GAMMA)(pixels, target="positive")
    assert e.target.label == "positive"
    path = tmp_path / "heatmap.png"
    e.save_png(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert e._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels.unsqueeze(0)).logits, before)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p[:2], "expected one preprocessed image of shape"),
        (lambda p: p[:, :30, :30], "not a multiple of the patch size"),
        (lambda p: torch.full_like(p, float("nan")), "finite"),
        (lambda p: torch.cat([p, p], dim=1)[:, :64, :32], "takes (32, 32) images"),
    ],
)
def test_bad_images(pixels, make, message):
    with pytest.raises(attnlrp.ExplainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ImageExplainer(build("vit", "sdpa"))(make(pixels))


def test_bad_gamma_settings():
    model = build("vit", "sdpa")
    with pytest.raises(attnlrp.ExplainError, match="γ-rule is an LRP rule"):
        ImageExplainer(model, method="gradient", gamma=GAMMA)
    with pytest.raises(TypeError, match="applies to Linear"):
        ImageExplainer(model, gamma={"LayerNorm": 0.1})(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be a number"):
        attnlrp.lrp(model, gamma={"Linear": -1})
    with pytest.raises(attnlrp.ExplainError, match="not an image classifier"):
        ImageExplainer(build("gpt2"))
