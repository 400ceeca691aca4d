"""The robust claims of the relevance-patching study (scripts/patching_study.py, docs/patching.md), on a fixed
small subset: the prompt pairs are usable (equal lengths, one-token answers, the model answers them), and the
study's default configuration agrees with real activation patching better than attribution patching (AtP) on
the MLPs of IOI, where AtP is weakest."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from attnlrp.patching import DEFAULT_METHOD, activation_patching, agreement, patch
from attnlrp.patching.names import patching_method

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the study lives in scripts/
import patching_study as study  # noqa: E402

TASKS = study.load_tasks()


def test_data_file_has_three_tasks_of_enough_written_pairs():
    assert set(TASKS) == {"ioi", "factual", "pronoun"}
    for task, (description, pairs) in TASKS.items():
        assert description
        assert len(pairs) >= 30, task
        assert len({p.clean for p in pairs}) == len(pairs), f"{task}: a clean prompt is written twice"


@pytest.mark.real_model
def test_pairs_tokenise_to_equal_lengths_with_one_token_answers(smollm2):
    tokenizer = smollm2.tokenizer
    for task, (_, pairs) in TASKS.items():
        for pair in pairs:
            clean = tokenizer(pair.clean, add_special_tokens=False)["input_ids"]
            corrupted = tokenizer(pair.corrupted, add_special_tokens=False)["input_ids"]
            assert len(clean) == len(corrupted), (task, pair.clean, pair.corrupted)
            assert clean != corrupted, (task, pair.clean)
            for answer in (pair.target, pair.contrast):
                assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) == 1, (task, answer)
            assert pair.target != pair.contrast, (task, pair.clean)


@pytest.mark.real_model
def test_model_answers_at_least_thirty_pairs_of_every_task(smollm2):
    """The study keeps the pairs whose clean metric is > 0 and needs 30 per task; the corrupted prompt must move
    the metric the other way (there is a gap to patch)."""
    for task, (_, pairs) in TASKS.items():
        clean, corrupted = study.screen(smollm2.model, smollm2.tokenizer, pairs)
        assert sum(c > 0 for c in clean) >= 30, task
        kept = [(c, x) for c, x in zip(clean, corrupted) if c > 0]
        assert sum(x < c for c, x in kept) == len(kept), task


def test_library_default_is_the_configuration_the_study_chose():
    """docs/patching.md chooses attention probabilities held constant and the uniform (half) rule on the MLP gate
    (norms held constant, identity rule for activations, as every rule method)."""
    chosen = patching_method(DEFAULT_METHOD)
    assert (chosen.uses_rules, chosen.attention, chosen.gates) == (True, "constant", "uniform")


def _pooled_pearson(model, tokenizer, pairs, method, level: str, truths) -> float:
    estimates = [patch(model, tokenizer, p.clean, p.corrupted, p.target, p.contrast, method=method,
                       levels=(level,)).estimates[level].flatten() for p in pairs]
    return agreement(torch.cat(estimates), torch.cat(truths)).pearson


@pytest.mark.real_model
def test_default_beats_attribution_patching_on_ioi_mlps(smollm2):
    """First three IOI pairs, MLP level, Pearson over all components of the three pairs: measured 0.83 for the
    default against 0.69 for AtP (docs/patching.md has the 30-pair numbers)."""
    model, tokenizer = smollm2.model, smollm2.tokenizer
    pairs = TASKS["ioi"][1][:3]
    truths = [activation_patching(model, tokenizer, p.clean, p.corrupted, p.target, p.contrast,
                                  levels=("mlps",))["mlps"].flatten() for p in pairs]
    ours = _pooled_pearson(model, tokenizer, pairs, DEFAULT_METHOD, "mlps", truths)
    atp = _pooled_pearson(model, tokenizer, pairs, "gradient", "mlps", truths)
    assert ours > atp + 0.05, (ours, atp)
    assert ours > 0.75, ours
