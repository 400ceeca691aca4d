"""The BOS policy (issue #17, item 4): ``add_bos`` on Explainer / explain / explain_batch / explain_generation and
``attnlrp explain --bos``, and a prepended BOS shown but left out of rankings and colour scales."""

from __future__ import annotations

import re

import pytest
import torch
from tiny import tiny_bert, tiny_llama, word_tokenizer

import attnlrp
from attnlrp.errors import ExplainError
from attnlrp.generation import explain_generation
from attnlrp.render import heatmap_html, heatmap_terminal, ranking_table

PROMPT = "paris is the capital of"
BOS = 2  # [BOS] of the word tokenizer


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def no_bos_tokenizer():
    """Defines a BOS token but does not add it (as SmolLM2's GGUF tokenizer under transformers 5.x)."""
    return word_tokenizer(bos=False)


def content_ids(tokenizer) -> list[int]:
    return tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def test_auto_prepends_bos_for_a_decoder_lm_whose_tokenizer_does_not_add_it(llama, no_bos_tokenizer):
    ids = content_ids(no_bos_tokenizer)
    auto = attnlrp.Explainer(llama, no_bos_tokenizer)(PROMPT)
    assert auto.token_ids == [BOS] + ids
    assert auto.special == [True] + [False] * len(ids) and auto.tokens[0] == "[BOS]"
    assert auto.word_ids[0] != auto.word_ids[1]
    assert auto.words()[0][0] == "[BOS]" and len(auto.words()) == len(ids) + 1
    # the same as explaining those ids given explicitly (ids are used as given)
    given = attnlrp.Explainer(llama, no_bos_tokenizer)(torch.tensor([BOS] + ids))
    torch.testing.assert_close(auto.relevance, given.relevance)
    always = attnlrp.Explainer(llama, no_bos_tokenizer, add_bos=True)(PROMPT)
    torch.testing.assert_close(always.relevance, auto.relevance)


def test_never_and_per_call_override(llama, no_bos_tokenizer):
    ids = content_ids(no_bos_tokenizer)
    explainer = attnlrp.Explainer(llama, no_bos_tokenizer, add_bos=False)
    never = explainer(PROMPT)
    assert never.token_ids == ids and not any(never.special)
    assert explainer(PROMPT, add_bos=True).token_ids == [BOS] + ids  # a call's value wins
    plain = attnlrp.Explainer(llama, no_bos_tokenizer)
    torch.testing.assert_close(plain(torch.tensor(ids)).relevance, never.relevance)
    assert plain(ids).token_ids == ids  # ids are never changed under auto


def test_tokenizer_that_adds_bos_gets_exactly_one_and_never_removes_it(llama):
    tokenizer = word_tokenizer(bos=True)
    ids = content_ids(tokenizer)
    assert attnlrp.Explainer(llama, tokenizer)(PROMPT).token_ids == [BOS] + ids
    assert attnlrp.Explainer(llama, tokenizer, add_bos=True)(PROMPT).token_ids == [BOS] + ids
    never = attnlrp.Explainer(llama, tokenizer, add_bos=False)(PROMPT)
    assert never.token_ids == ids and not any(never.special)
    assert never.word_ids[0] == 0


def test_batch_module_function_and_generation_take_add_bos(llama, no_bos_tokenizer):
    ids = content_ids(no_bos_tokenizer)
    batch = attnlrp.Explainer(llama, no_bos_tokenizer).explain_batch([PROMPT, "rome is the capital of"])
    assert all(e.token_ids[0] == BOS for e in batch)
    batch = attnlrp.Explainer(llama, no_bos_tokenizer).explain_batch([PROMPT, "rome is"], add_bos=False)
    assert all(e.token_ids[0] != BOS for e in batch)
    assert attnlrp.explain(llama, no_bos_tokenizer, PROMPT).token_ids == [BOS] + ids
    assert attnlrp.explain(llama, no_bos_tokenizer, PROMPT, add_bos=False).token_ids == ids
    generated = explain_generation(llama, no_bos_tokenizer, PROMPT, max_new_tokens=2)
    assert generated.tokens[0] == "[BOS]" and generated.special[0]
    generated = explain_generation(llama, no_bos_tokenizer, PROMPT, max_new_tokens=2, add_bos=False)
    assert not generated.special[0]


def test_encoders_keep_their_tokenizers_special_tokens(no_bos_tokenizer):
    bert = tiny_bert("seq-cls")
    e = attnlrp.Explainer(bert, no_bos_tokenizer)("good movie", target=2)
    assert BOS not in e.token_ids  # auto prepends only for decoder LMs
    assert attnlrp.Explainer(bert, no_bos_tokenizer, add_bos=True)("good movie", target=2).token_ids[0] == BOS


def test_bad_values_are_refused(llama, no_bos_tokenizer):
    with pytest.raises(ExplainError, match="add_bos"):
        attnlrp.Explainer(llama, no_bos_tokenizer, add_bos="yes")  # type: ignore[arg-type]
    with pytest.raises(ExplainError, match="add_bos"):
        attnlrp.Explainer(llama, no_bos_tokenizer)(PROMPT, add_bos=1)  # type: ignore[arg-type]
    tokenizer = word_tokenizer(bos=False)
    tokenizer.bos_token = None
    assert attnlrp.Explainer(llama, tokenizer)(PROMPT).token_ids[0] != BOS  # auto: no BOS to prepend
    with pytest.raises(ExplainError, match="defines no BOS"):
        attnlrp.Explainer(llama, tokenizer, add_bos=True)(PROMPT)


# ------------------------------------------------------------------------------ left out of scale and ranking
def test_bos_is_shown_but_left_out_of_the_ranking_and_the_scale(llama, no_bos_tokenizer):
    e = attnlrp.Explainer(llama, no_bos_tokenizer)(PROMPT)
    assert all(i != 0 for i, _, _ in e.top(len(e.tokens)))
    assert any(i == 0 for i, _, _ in e.top(len(e.tokens), include_special=True))
    text = e.to_terminal(color=False)
    heat, ranking = text.split("\n\n")[1], text.split("\n\n")[2]
    assert heat.startswith("[[BOS]|")  # shown with its relevance
    assert "[BOS]" not in ranking
    assert "[BOS]" in e.to_terminal(color=False, include_special=True).split("\n\n")[2]
    page = e.to_html()
    content = e.relevance[1:].abs().max().item()
    assert f"scale = max |relevance| = {content:.3g})" in page
    assert "<code>&#x27;[BOS]&#x27;</code>" not in page and "<code>'[BOS]'</code>" not in page
    full = e.to_html(include_special=True)
    assert f"scale = max |relevance| = {e.relevance.abs().max().item():.3g})" in full


def test_renderers_exclude_marked_tokens_from_scale_and_ranking():
    tokens, scores, exclude = ["<s>", "a", " b"], [-10.0, 1.0, -0.5], [True, False, False]
    table = ranking_table(tokens, scores, exclude=exclude)
    assert "<s>" not in table and "' b'" in table
    assert re.search(r"'a'\s+\+1\.000\s+█{20}$", table, re.M)  # the bar is full at the largest kept value
    assert "<s>" in ranking_table(tokens, scores)
    assert "[<s>|-10.00]" in heatmap_terminal(tokens, scores, color=False, exclude=exclude)
    coloured = heatmap_terminal(tokens, scores, color=True, exclude=exclude)
    assert "48;2;" in coloured  # still painted (saturated beyond the scale)
    assert "scale = max |relevance| = 1)" in heatmap_html(tokens, scores, exclude=exclude)
    with pytest.raises(ValueError, match="exclude"):
        ranking_table(tokens, scores, exclude=[True])


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_bos_flag(tmp_path, capsys, llama, no_bos_tokenizer):
    from attnlrp.cli import main

    llama.save_pretrained(str(tmp_path))
    no_bos_tokenizer.save_pretrained(str(tmp_path))
    import json

    seen = {}
    for choice in ("auto", "always", "never"):
        assert main(["explain", PROMPT, "--model", str(tmp_path), "--bos", choice, "--json"]) == 0
        seen[choice] = json.loads(capsys.readouterr().out)
    ids = content_ids(no_bos_tokenizer)
    key = "token_ids" if "token_ids" in seen["auto"] else "input_ids"
    assert seen["auto"][key] == seen["always"][key] == [BOS] + ids
    assert seen["never"][key] == ids
    with pytest.raises(SystemExit):
        main(["explain", PROMPT, "--model", str(tmp_path), "--bos", "sometimes"])
