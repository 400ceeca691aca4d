"""Token flipping on a toy model whose curves and best ranking are known in closed form, and on tiny Llama."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from attnlrp.errors import ExplainError
from attnlrp.evaluation import (
    FlipCurves, TextInstance, flip_curves, flip_curves_many, flip_order, flip_schedule, neutral_token_id, text_instance,
)
from toy_lm import ToyLM, ToyLMWithoutKeep

NEUTRAL = 3
IDS = [0, 5, 9, 2, 14, 7, 11, 4]  # token 0 plays BOS: not flippable


def toy_instance(ids=IDS, position=-1, target=6, contrast=None, flippable=None) -> TextInstance:
    ids = torch.tensor(ids)
    if flippable is None:
        flippable = torch.ones(len(ids), dtype=torch.bool)
        flippable[0] = False
    return TextInstance(ids, position, target, flippable, contrast)


def oracle_scores(model: ToyLM, instance: TextInstance, flipped: list[int], mode: str) -> tuple[float, float]:
    """(logit score, logprob score) with the tokens in ``flipped`` flipped, summed by hand over positions."""
    E, H = model.embed.weight.detach(), model.head.weight.detach()
    hidden = torch.zeros(E.shape[1], dtype=torch.float64)
    for t in range(instance.position + 1):
        token = int(instance.input_ids[t])
        if t in flipped:
            if mode == "zero":
                continue
            token = NEUTRAL
        hidden += E[token]
    logits = H @ hidden
    logprobs = logits - torch.logsumexp(logits, 0)
    c = instance.contrast_id
    logit = logits[instance.target_id] - (0 if c is None else logits[c])
    logprob = logprobs[instance.target_id] - (0 if c is None else logprobs[c])
    return float(logit), float(logprob)


def exact_relevance(model: ToyLM, instance: TextInstance, mode: str) -> torch.Tensor:
    """What flipping each token removes from the logit score: the faithful ranking by construction."""
    w = model.token_weights(instance.target_id, instance.contrast_id)
    ids = instance.input_ids
    relevance = w[ids] - (0 if mode == "zero" else w[NEUTRAL])
    relevance[instance.position + 1 :] = 0
    return relevance


def trapezoid(y: list[float]) -> float:
    n = len(y) - 1
    return sum((y[k] + y[k + 1]) / 2 / n for k in range(n))


@pytest.fixture(scope="module")
def toy() -> ToyLM:
    return ToyLM()


@pytest.mark.parametrize("mode", ["replace", "zero"])
@pytest.mark.parametrize("contrast", [None, 12])
def test_curves_equal_the_closed_form_at_every_step(toy, mode, contrast):
    instance = toy_instance(contrast=contrast)
    relevance = torch.tensor([9.0, 0.3, -1.0, 2.5, 0.7, -0.2, 1.1, 0.0])
    curves = flip_curves(toy, instance, relevance, mode=mode, neutral_id=NEUTRAL)
    morf = [3, 6, 4, 1, 7, 5, 2]  # descending relevance, BOS (relevance 9) excluded
    assert curves.morf_order == tuple(morf) and curves.lerf_order == tuple(reversed(morf))
    assert curves.flipped == tuple(range(8)) and curves.n_flippable == 7
    for order, positions in (("morf", morf), ("lerf", morf[::-1])):
        for k in range(8):
            logit, logprob = oracle_scores(toy, instance, positions[:k], mode)
            assert curves.curve(order, "logit")[k].item() == pytest.approx(logit, abs=1e-12)
            assert curves.curve(order, "logprob")[k].item() == pytest.approx(logprob, abs=1e-12)
    if contrast is not None:  # logprob(t) − logprob(c) is the logit difference
        torch.testing.assert_close(curves.morf_logprob, curves.morf_logit, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["replace", "zero"])
def test_abpc_is_the_normalised_trapezoid_area_between_the_curves(toy, mode):
    instance = toy_instance()
    relevance = exact_relevance(toy, instance, mode)
    curves = flip_curves(toy, instance, relevance, mode=mode, neutral_id=NEUTRAL)
    base = oracle_scores(toy, instance, [], mode)
    # additive model: after k MoRF steps the score lost exactly the k largest relevances
    r = sorted(relevance[instance.flippable].tolist(), reverse=True)
    morf = [base[0] - sum(r[:k]) for k in range(8)]
    lerf = [base[0] - sum(r[::-1][:k]) for k in range(8)]
    assert curves.base_logit == pytest.approx(base[0], abs=1e-12)
    assert curves.abpc("logit") == pytest.approx((trapezoid(lerf) - trapezoid(morf)) / abs(base[0]), abs=1e-12)
    lp_morf, lp_lerf = curves.morf_logprob.tolist(), curves.lerf_logprob.tolist()
    assert curves.abpc("logprob") == pytest.approx(trapezoid(lp_lerf) - trapezoid(lp_morf), abs=1e-12)
    assert curves.abpc("logit") * abs(curves.base_logit) == pytest.approx(
        curves.area("lerf") - curves.area("morf"), abs=1e-12
    )


def test_normalisation_makes_logit_abpc_scale_free_and_leaves_logprob_in_nats():
    small, large = ToyLM(seed=1), ToyLM(seed=1)
    with torch.no_grad():
        large.head.weight.mul_(10.0)  # every logit ×10
    instance = toy_instance()
    relevance = exact_relevance(small, instance, "zero")
    a = flip_curves(small, instance, relevance, mode="zero")
    b = flip_curves(large, instance, relevance, mode="zero")
    assert b.base_logit == pytest.approx(10 * a.base_logit, rel=1e-12)
    assert b.abpc("logit") == pytest.approx(a.abpc("logit"), rel=1e-10)
    assert abs(b.abpc("logprob")) > 3 * abs(a.abpc("logprob"))


@pytest.mark.parametrize("mode", ["replace", "zero"])
def test_the_exact_relevance_has_the_largest_abpc_of_all_rankings(toy, mode):
    instance = toy_instance(ids=[0, 5, 9, 2, 14, 7])
    exact = exact_relevance(toy, instance, mode)
    best = flip_curves(toy, instance, exact, mode=mode, neutral_id=NEUTRAL).abpc()
    worst = flip_curves(toy, instance, -exact, mode=mode, neutral_id=NEUTRAL).abpc()
    all_rankings = {}
    for perm in itertools.permutations(range(5)):
        relevance = torch.zeros(6)
        relevance[1:] = torch.tensor(perm, dtype=torch.float64)
        all_rankings[perm] = relevance
    abpcs = [c.abpc() for c in flip_curves_many(toy, instance, all_rankings, mode=mode, neutral_id=NEUTRAL).values()]
    assert max(abpcs) == pytest.approx(best, abs=1e-12)
    assert min(abpcs) == pytest.approx(worst, abs=1e-12)
    assert best > 0 > worst
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        random = flip_curves(toy, instance, torch.rand(6, generator=generator), mode=mode, neutral_id=NEUTRAL).abpc()
        assert worst < random < best


def test_special_tokens_are_never_ranked_nor_flipped(toy):
    instance = toy_instance()
    relevance = exact_relevance(toy, instance, "replace")
    loud = relevance.clone()
    loud[0] = 1e6  # the most "relevant" token is BOS
    quiet = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL)
    curves = flip_curves(toy, instance, loud, neutral_id=NEUTRAL)
    assert 0 not in curves.morf_order and 0 not in curves.lerf_order
    torch.testing.assert_close(curves.morf_logit, quiet.morf_logit, rtol=0, atol=0)
    # with everything flipped, BOS is still there: the score is BOS + 7 neutral tokens
    expected, _ = oracle_scores(toy, instance, list(range(1, 8)), "replace")
    assert curves.morf_logit[-1].item() == pytest.approx(expected, abs=1e-12)


def test_tokens_after_the_position_are_not_flippable_and_do_not_count(toy):
    instance = text_instance(_IdTokenizer(), IDS, target=6, position=4)
    assert instance.flippable.tolist() == [False, True, True, True, True, False, False, False]
    curves = flip_curves(toy, instance, torch.arange(8.0), mode="zero")
    assert curves.n_flippable == 4 and set(curves.morf_order) == {1, 2, 3, 4}
    logit, _ = oracle_scores(toy, instance, [4, 3], "zero")
    assert curves.morf_logit[2].item() == pytest.approx(logit, abs=1e-12)


def test_batching_does_not_change_the_curves_and_steps_run_batched(toy):
    instance = toy_instance()
    relevance = torch.tensor([0.0, 0.3, -1.0, 2.5, 0.7, -0.2, 1.1, 0.05])
    one = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL, batch_size=1)
    toy.rows_scored = toy.calls = 0
    many = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL, batch_size=1000)
    for order, score in itertools.product(("morf", "lerf"), ("logit", "logprob")):
        torch.testing.assert_close(one.curve(order, score), many.curve(order, score), rtol=0, atol=1e-13)
    # 2 orders × 8 steps, with step 0 and the fully flipped input shared: 14 distinct inputs, one pass
    assert (toy.rows_scored, toy.calls) == (14, 1)
    toy.rows_scored = toy.calls = 0
    flip_curves(toy, instance, relevance, neutral_id=NEUTRAL, batch_size=4)
    assert (toy.rows_scored, toy.calls) == (14, 4)


def test_several_rankings_share_one_batched_run(toy):
    instance = toy_instance()
    relevances = {"a": torch.arange(8.0), "b": -torch.arange(8.0), "same-as-a": 2 * torch.arange(8.0)}
    toy.rows_scored = 0
    together = flip_curves_many(toy, instance, relevances, neutral_id=NEUTRAL)
    assert toy.rows_scored == 14  # "b" is "a" reversed and "same-as-a" ranks like "a": no new inputs
    for name, relevance in relevances.items():
        alone = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL)
        assert together[name].to_dict() == alone.to_dict()
    assert together["a"].abpc() == pytest.approx(-together["b"].abpc(), abs=1e-12)


def test_a_model_without_logits_to_keep_gives_the_same_curves():
    instance = toy_instance(position=5)
    relevance = torch.tensor([0.0, 0.3, -1.0, 2.5, 0.7, -0.2, 1.1, 0.05])
    a = flip_curves(ToyLM(), instance, relevance, mode="zero")
    b = flip_curves(ToyLMWithoutKeep(), instance, relevance, mode="zero")
    assert a.to_dict() == b.to_dict()


def test_steps_flip_equal_parts_and_reuse_the_per_token_curve(toy):
    instance = toy_instance()
    relevance = exact_relevance(toy, instance, "replace")
    assert flip_schedule(7, 3) == [0, 2, 4, 7]
    assert flip_schedule(7, None) == flip_schedule(7, 7) == flip_schedule(7, 50) == list(range(8))
    full = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL)
    coarse = flip_curves(toy, instance, relevance, neutral_id=NEUTRAL, steps=3)
    assert coarse.flipped == (0, 2, 4, 7)
    torch.testing.assert_close(coarse.fractions, torch.tensor([0, 2 / 7, 4 / 7, 1], dtype=torch.float64))
    torch.testing.assert_close(coarse.morf_logit, full.morf_logit[[0, 2, 4, 7]], rtol=0, atol=0)
    x, y = coarse.fractions.tolist(), coarse.lerf_logprob.tolist()
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(3))
    assert coarse.area("lerf", "logprob") == pytest.approx(area, abs=1e-12)


def test_ties_are_broken_by_position_in_both_orders(toy):
    instance = toy_instance()
    assert flip_order(torch.tensor([0, 1, 1, 0, 1, 0, 0, 1.0]), instance.flippable, "morf").tolist() == [1, 2, 4, 7, 3, 5, 6]
    assert flip_order(torch.tensor([0, 1, 1, 0, 1, 0, 0, 1.0]), instance.flippable, "lerf").tolist() == [3, 5, 6, 1, 2, 4, 7]
    constant = flip_curves(toy, instance, torch.ones(8), neutral_id=NEUTRAL)
    assert constant.morf_order == constant.lerf_order == (1, 2, 3, 4, 5, 6, 7)
    assert constant.abpc() == 0.0 and constant.abpc("logprob") == 0.0


def test_to_dict_is_json_and_on_grid_interpolates(toy):
    instance = toy_instance()
    curves = flip_curves(toy, instance, exact_relevance(toy, instance, "zero"), mode="zero")
    data = json.loads(json.dumps(curves.to_dict()))
    assert data["abpc"] == pytest.approx(curves.abpc()) and data["mode"] == "zero" and len(data["morf_logit"]) == 8
    grid = curves.on_grid(15)  # x = k/14 and 2k/14 = k/7: every other grid point is a step
    base = abs(curves.base_logit)
    assert grid["morf_logit"][2] == pytest.approx(curves.morf_logit[1].item() / base, abs=1e-12)
    middle = (curves.lerf_logprob[3] + curves.lerf_logprob[4]).item() / 2
    assert grid["lerf_logprob"][7] == pytest.approx(middle, abs=1e-12)
    assert isinstance(curves, FlipCurves)


def test_bad_input_raises_a_clear_error(toy):
    instance = toy_instance()
    good = torch.zeros(8)
    with pytest.raises(ExplainError, match="empty"):
        flip_curves(toy, instance, torch.zeros(0), mode="zero")
    with pytest.raises(ExplainError, match="shape"):
        flip_curves(toy, instance, torch.zeros(7), mode="zero")
    with pytest.raises(ExplainError, match="perturbation mode"):
        flip_curves(toy, instance, good, mode="blur")
    with pytest.raises(ExplainError, match="neutral_id"):
        flip_curves(toy, instance, good, mode="replace")
    with pytest.raises(ExplainError, match="not finite"):
        flip_curves(toy, instance, torch.tensor([0, 1, math.nan, 0, 0, 0, 0, 0]), mode="zero")
    with pytest.raises(ExplainError, match="batch_size"):
        flip_curves(toy, instance, good, mode="zero", batch_size=0)
    with pytest.raises(ExplainError, match="steps"):
        flip_curves(toy, instance, good, mode="zero", steps=0)
    with pytest.raises(ExplainError, match="no flippable"):
        flip_curves(toy, toy_instance(flippable=torch.zeros(8, dtype=torch.bool)), good, mode="zero")
    with pytest.raises(ExplainError, match="shape"):
        TextInstance(torch.tensor(IDS), -1, 6, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ExplainError, match="position"):
        toy_instance(position=8)
    with pytest.raises(ExplainError, match="same token"):
        toy_instance(contrast=6)


class _IdTokenizer:
    """The bare tokenizer interface the evaluation uses, with configurable answers."""

    def __init__(self, space=(), unk=None, pad=None, special=(0,)):
        self.space, self.unk_token_id, self.pad_token_id, self.all_special_ids = list(space), unk, pad, list(special)

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.space if text == " " else [1]}


def test_neutral_token_is_the_single_space_token_else_unk_else_pad(tok):
    assert neutral_token_id(_IdTokenizer(space=[42], unk=1, pad=0)) == 42
    assert neutral_token_id(_IdTokenizer(space=[42, 43], unk=1, pad=0)) == 1
    assert neutral_token_id(_IdTokenizer(space=[], pad=0)) == 0
    assert neutral_token_id(tok) == tok.unk_token_id  # the word tokenizer drops whitespace
    with pytest.raises(ExplainError, match="neutral_id"):
        neutral_token_id(_IdTokenizer())


@pytest.mark.parametrize("mode", ["replace", "zero"])
def test_batched_run_on_tiny_llama_equals_one_forward_per_step(llama64, tok, mode):
    instance = text_instance(tok, "the capital of france is paris and the capital of italy is", model=llama64)
    assert not instance.flippable[0]  # [BOS]
    relevance = torch.randn(len(instance), generator=torch.Generator().manual_seed(3))
    curves = flip_curves(llama64, instance, relevance, mode=mode, tokenizer=tok, batch_size=7)
    neutral = neutral_token_id(tok)
    embedding = llama64.get_input_embeddings()
    for order in ("morf", "lerf"):
        positions = list(curves.morf_order if order == "morf" else curves.lerf_order)
        for k in range(curves.n_flippable + 1):
            ids = instance.input_ids.clone()
            with torch.no_grad():
                if mode == "replace":
                    ids[positions[:k]] = neutral
                    logits = llama64(input_ids=ids[None]).logits[0, -1]
                else:
                    embeds = embedding(ids[None]).clone()
                    embeds[0, positions[:k]] = 0
                    logits = llama64(inputs_embeds=embeds).logits[0, -1]
            assert curves.curve(order, "logit")[k].item() == pytest.approx(logits[instance.target_id].item(), abs=1e-10)
            logprob = torch.log_softmax(logits, -1)[instance.target_id].item()
            assert curves.curve(order, "logprob")[k].item() == pytest.approx(logprob, abs=1e-10)
