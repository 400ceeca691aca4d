"""The digits ViT and patch flipping: the committed model's accuracy (recomputed), the curves against a
closed form on a linear classifier over patches, batching, and the image explainer on the trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attnlrp.evaluation import vision_task as vt

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def split():
    return vt.digits_split()


@pytest.fixture(scope="module")
def vit():
    return vt.load_digits_vit()


# ------------------------------------------------------------------------------------------ data and model


def test_split_is_fixed_stratified_and_disjoint(split):
    again = vt.digits_split()
    assert torch.equal(split.test_pixels, again.test_pixels) and np.array_equal(split.test_index, again.test_index)
    assert len(split.test_labels) + len(split.train_labels) == 1797
    counts = torch.bincount(split.test_labels, minlength=10)
    assert counts.min() >= 44 and counts.max() <= 46  # 25 % of each class
    train_rows = {tuple(p.flatten().tolist()) for p in split.train_pixels}
    assert split.test_pixels.shape[1:] == (1, 8, 8) and split.test_pixels.min() == 0 and split.test_pixels.max() == 1
    assert len(split.test_index) == len(set(split.test_index.tolist()))
    assert sum(tuple(p.flatten().tolist()) in train_rows for p in split.test_pixels) < 10  # only true duplicates


def test_committed_model_is_small_and_reaches_its_recorded_accuracy(split, vit):
    recorded = vt.recorded_metrics()
    weights = vt.DIGITS_VIT_DIR / "model.safetensors"
    assert weights.stat().st_size < 100_000
    assert recorded["test_size"] == len(split.test_labels) and recorded["test_accuracy"] >= 0.9
    measured = vt.accuracy(vit, split.test_pixels, split.test_labels)
    assert abs(measured - recorded["test_accuracy"]) <= 1 / len(split.test_labels)  # recomputed, not trusted
    assert measured >= 0.9


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/train_digits_vit.py"):
        vt.load_digits_vit(tmp_path)


# ------------------------------------------------------------------------- patch flipping, in closed form


class PatchLinear(nn.Module):
    """logits = W · (ink per 2×2 patch) + b: flipping patch p removes exactly W[:, p] · s_p."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(3, 16, generator=generator, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=generator, dtype=torch.float64))

    @staticmethod
    def patch_sums(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.reshape(-1, 4, 2, 4, 2).sum(dim=(2, 4)).reshape(-1, 16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.patch_sums(pixels) @ self.weight.T + self.bias


@pytest.fixture
def toy():
    torch.manual_seed(4)
    return PatchLinear(), torch.rand(1, 8, 8, dtype=torch.float64)


def closed_form(model: PatchLinear, image: torch.Tensor, order: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every class after flipping the first k patches of ``order``, k = 0…16, without running the model."""
    contributions = (model.weight * model.patch_sums(image)).detach()  # (classes, patches)
    full = (contributions.sum(dim=1) + model.bias).detach()
    removed = torch.cumsum(contributions[:, order], dim=1)
    logits = torch.cat([full[:, None], full[:, None] - removed], dim=1).T  # (17, classes)
    return logits[:, target].numpy(), torch.log_softmax(logits, dim=-1)[:, target].numpy()


def test_curves_equal_the_closed_form(toy):
    model, image = toy
    target = 1
    relevance = (model.weight[target] * model.patch_sums(image)[0]).detach().reshape(4, 4)
    curves = vt.patch_flipping(model, image, relevance, target, patch_size=2)
    assert np.array_equal(curves.fractions, np.arange(17) / 16)
    for order in ("morf", "lerf"):
        logit, logprob = closed_form(model, image, vt.patch_order(relevance, order), target)
        np.testing.assert_allclose(getattr(curves, f"{order}_logit"), logit, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(getattr(curves, f"{order}_logprob"), logprob, rtol=1e-10, atol=1e-12)
    # the normalised curve and both ABPCs by the trapezoid rule, written out
    morf, lerf = curves.morf_logit / abs(curves.morf_logit[0]), curves.lerf_logit / abs(curves.morf_logit[0])
    assert curves.abpc("logit") == pytest.approx(((lerf - morf)[1:] + (lerf - morf)[:-1]).sum() / 2 / 16, rel=1e-10)
    gap = curves.lerf_logprob - curves.morf_logprob
    assert curves.abpc("logprob") == pytest.approx((gap[1:] + gap[:-1]).sum() / 2 / 16, rel=1e-10)
    # everything flipped: both orders end on the bias
    assert curves.morf_logit[-1] == pytest.approx(float(model.bias[target].detach())) == curves.lerf_logit[-1]


def test_true_relevance_has_the_largest_abpc_and_reversed_the_smallest(toy):
    model, image = toy
    target = 0
    true = (model.weight[target] * model.patch_sums(image)[0]).detach().reshape(4, 4)
    best = vt.patch_flipping(model, image, true, target, patch_size=2)
    worst = vt.patch_flipping(model, image, -true, target, patch_size=2)
    assert best.abpc() > 0 and worst.abpc() == pytest.approx(-best.abpc(), rel=1e-10)
    assert worst.abpc("logprob") < 0 < best.abpc("logprob")
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        shuffled = vt.patch_flipping(model, image, torch.rand(4, 4, generator=generator), target, patch_size=2)
        assert worst.abpc() - 1e-12 <= shuffled.abpc() <= best.abpc() + 1e-12


def test_pixel_relevance_is_summed_per_patch_and_steps_coarsen_the_curve(toy):
    model, image = toy
    pixels = torch.rand(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    patches = pixels.reshape(4, 2, 4, 2).sum(dim=(1, 3))
    a = vt.patch_flipping(model, image, pixels, 2, patch_size=2)
    b = vt.patch_flipping(model, image, patches, 2, patch_size=2)
    np.testing.assert_array_equal(a.morf_order, b.morf_order)
    np.testing.assert_allclose(a.morf_logit, b.morf_logit)
    coarse = vt.patch_flipping(model, image, patches, 2, patch_size=2, steps=4)
    assert np.array_equal(coarse.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(coarse.morf_logit, b.morf_logit[[0, 4, 8, 12, 16]], rtol=1e-12)


def test_ties_keep_row_major_order_and_constant_relevance_scores_zero(toy):
    model, image = toy
    assert list(vt.patch_order(torch.zeros(4, 4), "morf")) == list(range(16))
    assert list(vt.patch_order(torch.zeros(4, 4), "lerf")) == list(range(16))
    assert vt.patch_flipping(model, image, torch.zeros(4, 4), 0, patch_size=2).abpc() == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(relevance=torch.zeros(3, 3)), r"per patch \(4, 4\) or per pixel \(8, 8\)"),
        (dict(relevance=torch.full((4, 4), float("nan"))), "NaN"),
        (dict(target=3), "not one of the model's 3 classes"),
        (dict(steps=17), "steps must be an integer between 1"),
        (dict(patch_size=3), "not a multiple of the patch size 3"),
    ],
)
def test_bad_flipping_requests(toy, kwargs, message):
    model, image = toy
    arguments = dict(relevance=torch.zeros(4, 4), target=0, patch_size=2) | kwargs
    with pytest.raises(ValueError, match=message):
        vt.patch_flipping(model, image, arguments.pop("relevance"), arguments.pop("target"), **arguments)


# --------------------------------------------------------------------------------- on the trained digits ViT


def test_batched_equals_unbatched_and_endpoints_are_the_model_s(split, vit):
    image, label = split.test_pixels[0], int(split.test_labels[0])
    relevance = torch.rand(4, 4, generator=torch.Generator().manual_seed(2))
    batched = vt.patch_flipping(vit, image, relevance, label, batch_size=64)
    single = vt.patch_flipping(vit, image, relevance, label, batch_size=1)
    for name in ("morf_logit", "lerf_logit", "morf_logprob", "lerf_logprob"):
        np.testing.assert_allclose(getattr(batched, name), getattr(single, name), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        clean = vit(pixel_values=image[None]).logits[0, label]
        blank = vit(pixel_values=torch.zeros_like(image)[None]).logits[0, label]
    assert batched.unperturbed_logit == pytest.approx(float(clean), abs=1e-5)
    assert batched.morf_logit[-1] == pytest.approx(float(blank), abs=1e-5) == batched.lerf_logit[-1]
    record = batched.to_dict()
    assert record["abpc"] == batched.abpc() and len(record["morf_logit"]) == 17
    grid = batched.on_grid(5)
    assert grid["fraction"] == [0, 0.25, 0.5, 0.75, 1] and grid["morf_logit"][0] == pytest.approx(np.sign(float(clean)))


@pytest.mark.parametrize("gamma", [None, vt.DIGITS_GAMMA])
def test_image_explainer_conserves_on_the_digits_vit(split, vit, gamma):
    image, label = split.test_pixels[3], int(split.test_labels[3])
    explanation = vt.explain_patches(vit, image, gamma=gamma, target=label)
    ledger = explanation.ledger
    assert explanation.unhandled == [] and ledger.balanced(rtol=1e-4), ledger
    assert float(explanation.patch_relevance.double().sum()) == pytest.approx(ledger.input, rel=1e-4, abs=1e-5)
    assert ("gamma" in ledger.by_site) == bool(gamma)
    with torch.no_grad():
        assert explanation.value == pytest.approx(float(vit(pixel_values=image[None]).logits[0, label]), abs=1e-4)
    curves = vt.patch_flipping(vit, image, explanation.patch_relevance, label)
    assert np.isfinite(curves.abpc()) and np.isfinite(curves.abpc("logprob"))


def test_gamma_changes_the_patch_map(split, vit):
    image = split.test_pixels[5]
    plain = vt.explain_patches(vit, image).patch_relevance
    sharpened = vt.explain_patches(vit, image, gamma=vt.DIGITS_GAMMA).patch_relevance
    assert not torch.allclose(plain, sharpened)
