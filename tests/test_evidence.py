"""The neuron evidence study: its machinery on the tiny Llama (per-row ablation = steering, choosers, the
batched measurement against a one-by-one oracle), and the study's claims on the real SmolLM2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from attnlrp.errors import ExplainError
from attnlrp.latent.steering import steer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the study lives in scripts/
import evidence_study as evidence  # noqa: E402

PROMPTS = ["paris is the capital of", "the quick brown fox jumps over the", "rome is the capital", "the dog"]


def _next_logits(model, tok, prompt):
    with torch.no_grad():
        return model(tok(prompt, return_tensors="pt").input_ids).logits[0, -1].double()


def test_row_ablation_equals_steering_each_row_alone(llama64, tok):
    prompts = PROMPTS + ["berlin is the capital of", "madrid is the capital of"]  # three rows of 6 tokens
    off = [[(0, 3), (1, 5)], [], [(1, 5), (1, 6), (0, 63)], [(0, 0)], [(0, 3)], [(1, 5), (0, 3)]]
    batched = evidence._logits_at_last(llama64, tok, prompts, off=off, batch_size=2)  # 6-token rows: 2 batches
    for row, (prompt, neurons) in enumerate(zip(prompts, off)):
        with steer(llama64, off=neurons):
            alone = _next_logits(llama64, tok, prompt)
        assert torch.allclose(batched[row], alone, atol=1e-9), row
    for layer in llama64.model.layers:
        assert not layer.mlp.down_proj._forward_pre_hooks


def test_row_ablation_rejects_unknown_neurons(llama64):
    with pytest.raises(ExplainError, match="neuron 2:0 does not exist"):
        evidence.RowAblation(llama64, [[(2, 0)]])


def test_random_neurons_are_seeded_distinct_and_in_range():
    widths = [64, 64, 10]
    first = evidence.random_neurons(widths, 50, torch.Generator().manual_seed(3))
    again = evidence.random_neurons(widths, 50, torch.Generator().manual_seed(3))
    other = evidence.random_neurons(widths, 50, torch.Generator().manual_seed(4))
    assert first == again and first != other and len(set(first)) == 50
    assert all(0 <= n < widths[layer] for layer, n in first)
    everything = evidence.random_neurons(widths, 138, torch.Generator().manual_seed(0))
    assert len(set(everything)) == 138  # every neuron reachable, none twice


def test_active_neurons_last_token_or_summed():
    activations = torch.zeros(2, 3, 4)
    activations[1, -1, 2] = 5.0   # largest at the last token
    activations[0, 0, 1] = 4.0    # large early: wins when summed
    activations[0, 1, 1] = 4.0
    assert evidence.active_neurons(activations, 1, summed=False) == [(1, 2)]
    assert evidence.active_neurons(activations, 2, summed=True) == [(0, 1), (1, 2)]


def _own_facts(model, tok):
    """Facts the tiny random model 'knows': its own greedy next tokens (word tokens, no leading space)."""
    facts = []
    for prompt in PROMPTS:
        token = tok.convert_ids_to_tokens(int(_next_logits(model, tok, prompt).argmax()))
        facts.append(evidence.Fact(prompt, token, "tiny"))
    return facts


def test_study_on_the_tiny_model_matches_a_one_by_one_oracle(llama64, tok):
    facts = _own_facts(llama64, tok) + [evidence.Fact("the cat", "zzz", "wrong")]
    unrelated = ["a good movie", "it was not very"]
    study = evidence.run_study(llama64, tok, facts=facts, unrelated=unrelated, ks=(2, 5), draws=2, batch_size=4)
    assert study.facts_total == 5 and len(study.facts_kept) == 4 and study.facts_dropped[0].fact.answer == "zzz"
    assert [(r.method, r.k) for r in study.rows] == [(m, k) for m in evidence.CHOOSERS for k in (2, 5)]
    assert all(evidence.finite([r.logit_drop, r.logprob_drop, r.off_target_drop, r.specificity]) for r in study.rows)

    # recompute AttnLRP at k = 5 fact by fact, with steer() and unbatched forwards
    chosen, _ = evidence.relevant_neurons(llama64, tok, [c.fact.prompt for c in study.facts_kept],
                                          [c.answer_id for c in study.facts_kept], "attnlrp", 5)
    drops, damages, flips = [], [], []
    for checked, neurons in zip(study.facts_kept, chosen):
        base = torch.log_softmax(_next_logits(llama64, tok, checked.fact.prompt), -1)
        others = [torch.log_softmax(_next_logits(llama64, tok, p), -1) for p in unrelated]
        with steer(llama64, off=neurons):
            after = torch.log_softmax(_next_logits(llama64, tok, checked.fact.prompt), -1)
            others_after = [torch.log_softmax(_next_logits(llama64, tok, p), -1) for p in unrelated]
        drops.append(float(base[checked.answer_id] - after[checked.answer_id]))
        flips.append(float(int(after.argmax()) != checked.answer_id))
        damages.append(sum(float(o.max() - oa[int(o.argmax())]) for o, oa in zip(others, others_after)) / len(unrelated))
    row = study.row("attnlrp", 5)
    assert row.logprob_drop == pytest.approx(sum(drops) / len(drops), abs=1e-8)
    assert row.off_target_drop == pytest.approx(sum(damages) / len(damages), abs=1e-8)
    assert row.flip_rate == pytest.approx(sum(flips) / len(flips))
    assert row.specificity == pytest.approx(row.logprob_drop - row.off_target_drop, abs=1e-10)

    table = evidence.markdown_table(study)
    assert len(table.splitlines()) == 2 + len(study.rows) and "random (mean of 2 draws)" in table
    data = study.to_dict()
    assert len(data["rows"]) == len(study.rows) and data["facts_dropped"][0]["predicted"]


def test_study_arguments_are_checked(llama64, tok):
    with pytest.raises(ExplainError, match="unknown neuron chooser 'saliency'"):
        evidence.run_study(llama64, tok, methods=("saliency",))
    with pytest.raises(ExplainError, match="answers none of the facts"):
        evidence.run_study(llama64, tok, facts=[evidence.Fact("the cat", "zzz", "wrong")], ks=(1,))


# ------------------------------------------------------------------------------------------------ real model
@pytest.mark.real_model
def test_evidence_on_smollm2(smollm2):
    """The study's claims on half of it (docs/neuron-evidence.md has the full study): every chooser's neurons
    lower the answer's log-probability far more than random neurons at every k, and AttnLRP's are the most
    specific at k = 50.

    The half is fixed in advance, not picked by outcome: every second correctly answered fact (the facts are
    grouped by kind, so every kind is in it) and every third unrelated prompt. In the full study AttnLRP's margin
    at k = 50 is +2.8 nats; on this half +2.7, and between +0.6 and +3.8 on the other halves and thirds tried.
    """
    model, tokenizer = smollm2.model, smollm2.tokenizer
    correct = [c.fact for c in evidence.check_facts(model, tokenizer) if c.correct]
    assert len(correct) >= 30, f"only {len(correct)} facts answered correctly"
    study = evidence.run_study(
        model, tokenizer, facts=correct[::2], unrelated=evidence.UNRELATED[::3], ks=(5, 10, 50),
        methods=("attnlrp", "cp-lrp", "input-x-gradient", "activation", "random"), draws=2, batch_size=64,
        off_target_ks=(50,),
    )
    assert len(study.facts_kept) == len(correct[::2])
    for k in study.ks:
        chance = study.row("random", k).logprob_drop
        for method in ("attnlrp", "cp-lrp", "input-x-gradient", "activation"):
            drop = study.row(method, k).logprob_drop
            assert drop > max(0.2, 10 * abs(chance)), (method, k, drop, chance)
    at_50 = {r.method: r.specificity for r in study.rows if r.k == 50 and r.method != "random"}
    assert max(at_50, key=at_50.get) == "attnlrp", at_50
    assert at_50["attnlrp"] > 5.0, at_50
