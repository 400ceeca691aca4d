"""The explain API: targets, batches, heads, aggregation, rendering and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import attnlrp
from attnlrp import ExplainError, Explainer
from tiny import tiny_bert, tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


def logits_of(model, tok, text):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0, -1]


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_ledger_balances_and_value_is_the_logit(method, attn, tok):
    model = tiny_llama(torch.float64, attn)
    e = attnlrp.explain(model, tok, PROMPT, method=method)
    logits = logits_of(model, tok, PROMPT)
    assert e.target.token_id == int(logits.argmax()) and e.target.kind == "next-token"
    assert e.value == pytest.approx(float(logits.max()), rel=1e-12)
    assert e.ledger.input == pytest.approx(float(e.relevance.double().sum()), rel=1e-5, abs=1e-6)
    assert abs(e.ledger.residual) <= 1e-6 * abs(e.value) + 1e-9, e.ledger
    assert e.unhandled == []


def test_eager_and_sdpa_give_the_same_relevance(tok):
    eager = attnlrp.explain(tiny_llama(torch.float64, "eager"), tok, PROMPT)
    sdpa = attnlrp.explain(tiny_llama(torch.float64, "sdpa"), tok, PROMPT)
    torch.testing.assert_close(eager.relevance, sdpa.relevance, rtol=1e-5, atol=1e-6)


def test_targets_token_id_contrast_and_position(llama64, tok):
    logits = logits_of(llama64, tok, PROMPT)
    by_name = attnlrp.explain(llama64, tok, PROMPT, target="portugal")
    by_id = attnlrp.explain(llama64, tok, PROMPT, target=tok.convert_tokens_to_ids("portugal"))
    assert by_name.target.token == "portugal" and by_name.target.kind == "token"
    torch.testing.assert_close(by_name.relevance, by_id.relevance)
    pid, sid = tok.convert_tokens_to_ids(["portugal", "spain"])
    contrast = attnlrp.explain(llama64, tok, PROMPT, target="portugal", contrast="spain")
    assert contrast.value == pytest.approx(float(logits[pid] - logits[sid]), rel=1e-10)
    spain = attnlrp.explain(llama64, tok, PROMPT, target="spain")
    # the rules are linear in the seed: relevance of a difference is the difference of relevances
    torch.testing.assert_close(contrast.relevance, by_name.relevance - spain.relevance, rtol=1e-4, atol=1e-5)
    earlier = attnlrp.explain(llama64, tok, PROMPT, position=4)
    assert earlier.target.position == 4
    assert earlier.relevance[5:].abs().max() == 0  # a causal model's output at 4 cannot depend on later tokens


def test_padded_batch_rows_equal_single_prompts(tok):
    model = tiny_llama(torch.float64)
    prompts = [PROMPT, "the quick brown fox", "rome is the capital of italy . madrid is"]
    explainer = Explainer(model, tok)
    batch = explainer.explain_batch(prompts, target=[None, "dog", None])
    for prompt, target, row in zip(prompts, [None, "dog", None], batch):
        alone = explainer(prompt, target=target)
        assert row.tokens == alone.tokens and row.target == alone.target
        torch.testing.assert_close(row.relevance, alone.relevance, rtol=1e-6, atol=1e-7)
        assert row.ledger.absorbed == pytest.approx(alone.ledger.absorbed, rel=1e-6, abs=1e-9)
        assert row.value == pytest.approx(alone.value, rel=1e-12)


def test_sequence_classification_head_and_labels(tok):
    model = tiny_bert("seq-cls", dtype=torch.float64)
    e = attnlrp.explain(model, tok, "good movie and it was great", target="positive")
    ids = torch.tensor([tok("good movie and it was great")["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0]
    assert e.target.kind == "class" and e.target.label == "positive" and e.target.token_id == 2
    assert e.value == pytest.approx(float(logits[2]), rel=1e-10)
    # BERT: biases, LayerNorm biases, position and token-type embeddings absorb; the ledger still balances
    assert {"bias", "embeddings"} <= set(e.ledger.by_site)
    assert e.ledger.balanced(rtol=1e-6), e.ledger
    with pytest.raises(ExplainError, match="unknown class 'happy'.*negative"):
        attnlrp.explain(model, tok, "good movie", target="happy")


def test_bert_padded_batch(tok):
    model = tiny_bert("seq-cls", dtype=torch.float64)
    prompts = ["good movie", "it was not a very good movie and the cat was bad"]
    batch = Explainer(model, tok).explain_batch(prompts)
    for prompt, row in zip(prompts, batch):
        alone = attnlrp.explain(model, tok, prompt)
        torch.testing.assert_close(row.relevance, alone.relevance, rtol=1e-6, atol=1e-8)
        assert row.ledger.absorbed == pytest.approx(alone.ledger.absorbed, rel=1e-6)


def test_masked_lm_explains_the_mask_position(tok):
    model = tiny_bert("masked-lm", dtype=torch.float64)
    e = attnlrp.explain(model, tok, "paris is the [MASK] of france")
    assert e.target.kind == "masked-token" and e.target.position == 4
    assert e.ledger.balanced(rtol=1e-6), e.ledger


def test_custom_target_function(llama64, tok):
    e = attnlrp.explain(llama64, tok, PROMPT, target=lambda out: out.logits[:, -1, 10] + out.logits[:, -1, 11])
    logits = logits_of(llama64, tok, PROMPT)
    assert e.target.kind == "custom"
    assert e.value == pytest.approx(float(logits[10] + logits[11]), rel=1e-10)
    assert e.ledger.balanced(rtol=1e-6)


def test_words_sum_their_tokens(tok):
    from attnlrp.tokens import words

    merged = words([" un", "believ", "able", " cat"], [0, 0, 0, 1], [1.0, 2.0, -0.5, 4.0])
    assert merged == [(" unbelievable", 2.5), (" cat", 4.0)]


def test_explanation_outputs_escape_user_text(llama64, tok):
    prompt = "<script>alert(1)</script> paris is the capital of"
    e = attnlrp.explain(llama64, tok, prompt)
    assert "".join(e.tokens[1:]) == prompt
    for html in (e.to_html(), e._repr_html_()):
        assert "<script" not in html and "&lt;" in html and "script" in html
    terminal = e.to_terminal(color=True)
    assert "script" in terminal and "\x1b[" in terminal  # plain text in a terminal is fine; control characters are not
    data = json.loads(e.to_json())
    assert {"tokens", "token_ids", "relevance", "target", "value", "method", "ledger"} <= set(data)
    assert set(data["ledger"]) >= {"input", "absorbed", "value"}
    assert sum(w["relevance"] for w in data["words"]) == pytest.approx(sum(data["relevance"]), abs=1e-6)


def test_terminal_output_neutralises_escape_sequences(llama64):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    core = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "\x1b[31mred": 1, "x": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[UNK]")
    e = attnlrp.explain(llama64, tok, "x \x1b[31mred x")
    assert "\x1b[31m" not in e.to_terminal(color=False)


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="   \n"), "prompt is empty"),
        (dict(prompt=[]), "prompt is empty"),
        (dict(prompt=" ".join(["the"] * 80)), "81 tokens long but the model takes at most 64"),
        (dict(prompt=PROMPT, target="portugal spain"), "2 tokens for this tokenizer"),
        (dict(prompt=PROMPT, target=10_000), "outside the vocabulary"),
        (dict(prompt=PROMPT, target="portugal", contrast="portugal"), "same token"),
        (dict(prompt=PROMPT, position=40), "outside the prompt"),
        (dict(prompt=[5, 99999]), "out of the tokenizer's range"),
        (dict(prompt=PROMPT, method="lrp"), "unknown method 'lrp'"),
    ],
)
def test_bad_input_gets_a_clear_error(llama64, tok, kwargs, message):
    with pytest.raises(ExplainError if "method" not in kwargs else ValueError, match=message):
        attnlrp.explain(llama64, tok, **kwargs)


def test_model_without_input_embeddings(tok):
    with pytest.raises(ExplainError, match="no input embeddings"):
        attnlrp.explain(nn.Linear(3, 3), tok, PROMPT)


def test_nan_weights_give_a_clear_error(tok):
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[:] = float("nan")
    with pytest.raises(ExplainError, match="non-finite"):
        attnlrp.explain(model, tok, PROMPT)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_finite_and_close_to_fp32(dtype, tok):
    full = attnlrp.explain(tiny_llama(torch.float32), tok, PROMPT, target="portugal")
    half = attnlrp.explain(tiny_llama(dtype), tok, PROMPT, target="portugal")
    assert half.relevance.dtype == torch.float32 and torch.isfinite(half.relevance).all()
    r = torch.corrcoef(torch.stack([full.relevance, half.relevance]))[0, 1]
    assert r > 0.98, r


def test_only_the_read_positions_logits_are_computed_and_nothing_changes(llama64, tok, monkeypatch):
    """A causal LM computes the logits of the explained positions only (logits_to_keep); relevance, value and
    ledger are those of the full-logits pass, for padded batch rows of different lengths and a given position."""
    prompts = [PROMPT, "the capital of france is", "lisbon is the capital"]
    seen = []
    hook = llama64.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("logits_to_keep")), with_kwargs=True)
    try:
        kept = Explainer(llama64, tok).explain_batch(prompts) + [Explainer(llama64, tok).explain(PROMPT, position=3)]
    finally:
        hook.remove()
    lengths = [len(e.tokens) for e in kept[:3]]
    assert seen[0].tolist() == sorted({n - 1 for n in lengths}) and seen[1].tolist() == [3]
    monkeypatch.setattr(Explainer, "_kept_positions", lambda self, targets, rows: None)  # every position's logits
    full = Explainer(llama64, tok).explain_batch(prompts) + [Explainer(llama64, tok).explain(PROMPT, position=3)]
    for a, b in zip(kept, full):
        assert a.target == b.target
        torch.testing.assert_close(a.relevance, b.relevance, rtol=1e-12, atol=1e-12)
        assert a.value == pytest.approx(b.value, rel=1e-12) and a.ledger.balanced(rtol=1e-6)
