"""attnlrp inside captum: ``AttnLRP(model)`` is a captum attribution whose result is the relevance our Explainer
gives, on embeddings, on ids, and inside captum's own ``LLMGradientAttribution`` (whose plot then works)."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

pytest.importorskip("captum")

from captum.attr import (  # noqa: E402
    GradientAttribution,
    LayerGradientXActivation,
    LLMGradientAttribution,
    TextTokenInput,
)

import attnlrp  # noqa: E402
from attnlrp.errors import MissingExtraError  # noqa: E402
from attnlrp.integrations.captum import AttnLRP  # noqa: E402
from tiny import tiny_llama, word_tokenizer  # noqa: E402

#: an operation without a rule would make the comparison meaningless: fail on the warning
pytestmark = pytest.mark.filterwarnings("error::attnlrp.errors.UnruledOperationWarning")

PROMPT = "the capital of france is"
ANSWER = "paris is the capital"


@pytest.fixture(scope="module")
def model():
    return tiny_llama()  # float32: what captum users run


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def token(tok, word: str) -> int:
    return tok.convert_tokens_to_ids(word)


def embeddings(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(torch.as_tensor(ids).reshape(1, -1))


def log_prob_of(token_id: int):
    """The target function that explains what captum's LLM attribution explains: the log-probability."""
    return lambda output: output.logits[:, -1].log_softmax(-1)[:, token_id]


def assert_equal_relevance(ours: torch.Tensor, explainer: torch.Tensor) -> None:
    """Equal up to float32's last digits: both sum the same float64 gradient × input of the same float32 pass."""
    ours = ours.reshape(-1).double()
    expected = explainer.reshape(-1).double()
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6 * scale)


# ---------------------------------------------------------------------------------------------- the class
def test_is_a_captum_gradient_attribution_on_the_input_embeddings(model):
    attribution = AttnLRP(model)
    assert isinstance(attribution, GradientAttribution) and isinstance(attribution, LayerGradientXActivation)
    assert attribution.layer is model.get_input_embeddings() and attribution.forward_func is model
    assert attribution.multiplies_by_inputs and attribution.objective == "logit"
    with pytest.raises(ValueError, match="objective"):
        AttnLRP(model, objective="probability")


def test_logit_on_embeddings_equals_the_explainer(model, tok):
    e = attnlrp.Explainer(model, tok)(PROMPT, target="paris")
    inputs = embeddings(model, e.token_ids)
    attribution = AttnLRP(model)
    attr = attribution.attribute(inputs, target=token(tok, "paris"))
    assert attr.shape == inputs.shape and attr.dtype == torch.float64
    assert_equal_relevance(attr.sum(-1), e.relevance)
    # the default explains the logit: the ledger's value is the logit, and it balances as the explainer's does
    # (float32: the explainer computes only the last position's logits, whose rounding may differ from the full
    # matrix product's by a few ulps of the hidden state's scale: hence the absolute term)
    ledger = attribution.ledgers[0]
    assert ledger.value == pytest.approx(e.value, rel=1e-6, abs=1e-7)
    with torch.no_grad():
        logit = model(torch.tensor([e.token_ids])).logits[0, -1, token(tok, "paris")]
    assert ledger.value == pytest.approx(float(logit), rel=1e-6, abs=1e-7)
    assert abs(ledger.residual) < 1e-4 * abs(ledger.value)


def test_ids_and_additional_forward_args_equal_the_explainer(model, tok):
    e = attnlrp.Explainer(model, tok)(PROMPT, target="paris")
    ids = torch.tensor([e.token_ids])
    target = token(tok, "paris")
    on_ids = AttnLRP(model).attribute(ids, target=target)  # read at the embedding layer's output
    assert on_ids.shape == (1, len(e.token_ids), model.config.hidden_size)
    assert_equal_relevance(on_ids.sum(-1), e.relevance)
    # captum's contract: additional_forward_args follow the input (here the attention mask), or a dict of kwargs
    mask = torch.ones_like(ids)
    for args in ((mask,), mask, {"attention_mask": mask}):
        attr = AttnLRP(model).attribute(embeddings(model, ids), target=target, additional_forward_args=args)
        assert_equal_relevance(attr.sum(-1), e.relevance)


def test_a_batch_with_one_target_per_row_equals_each_row_alone(model, tok):
    prompts, words = ["the capital of france is", "the capital of italy is"], ["paris", "rome"]
    explained = [attnlrp.Explainer(model, tok)(p, target=w) for p, w in zip(prompts, words)]
    inputs = torch.cat([embeddings(model, e.token_ids) for e in explained])
    attr = AttnLRP(model).attribute(inputs, target=[token(tok, w) for w in words])
    for row, e in enumerate(explained):
        assert_equal_relevance(attr[row].sum(-1), e.relevance)


def test_log_prob_variant_equals_the_explainer_with_a_log_softmax_target(model, tok):
    target = token(tok, "paris")
    e = attnlrp.Explainer(model, tok)(PROMPT, target=log_prob_of(target))
    attr = AttnLRP(model, objective="log_prob").attribute(embeddings(model, e.token_ids), target=target)
    assert_equal_relevance(attr.sum(-1), e.relevance)
    logit = attnlrp.Explainer(model, tok)(PROMPT, target="paris").relevance
    assert not torch.allclose(e.relevance, logit, rtol=1e-3), "the two objectives are different explanations"


def test_other_methods_and_a_custom_forward(model, tok):
    e = attnlrp.Explainer(model, tok, method="cp-lrp")(PROMPT, target="paris")
    inputs = embeddings(model, e.token_ids)
    attr = AttnLRP(model, method="cp-lrp").attribute(inputs, target=token(tok, "paris"))
    assert_equal_relevance(attr.sum(-1), e.relevance)

    def forward(embeds, position):  # a forward of one's own: its output is used as it is
        return model(inputs_embeds=embeds).logits[:, position]

    attr = AttnLRP(model, forward, method="cp-lrp").attribute(
        (inputs,), target=token(tok, "paris"), additional_forward_args=(-1,)
    )
    assert isinstance(attr, tuple) and len(attr) == 1
    assert_equal_relevance(attr[0].sum(-1), e.relevance)
    with pytest.raises(attnlrp.ExplainError, match="target="):
        AttnLRP(model).attribute(inputs)  # (1, vocabulary) scores but no target to pick one


def test_the_model_is_left_as_it_was(model, tok):
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits
    AttnLRP(model).attribute(ids, target=token(tok, "paris"))
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after) and all(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- inside LLMGradientAttribution
def test_llm_gradient_attribution_explains_each_target_token_like_the_explainer(model, tok):
    llm = LLMGradientAttribution(AttnLRP(model), tok)
    result = llm.attribute(TextTokenInput(PROMPT, tok), target=ANSWER)
    prompt_ids = tok(PROMPT)["input_ids"]
    answer_ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    assert result.output_tokens == ANSWER.split() and result.input_tokens[1:] == PROMPT.split()
    assert result.token_attr.shape == (len(answer_ids), len(prompt_ids))
    explainer = attnlrp.Explainer(model, tok)
    for k, target in enumerate(answer_ids):
        # target token k, explained on the prompt and the target tokens before it; captum keeps the prompt's part
        e = explainer(prompt_ids + answer_ids[:k], target=target)
        assert_equal_relevance(result.token_attr[k], e.relevance[: len(prompt_ids)])
    torch.testing.assert_close(result.seq_attr, result.token_attr.sum(0))


def test_llm_gradient_attribution_log_prob_is_captums_own_objective(model, tok):
    llm = LLMGradientAttribution(AttnLRP(model, objective="log_prob"), tok)
    result = llm.attribute(TextTokenInput(PROMPT, tok), target=ANSWER)
    prompt_ids = tok(PROMPT)["input_ids"]
    answer_ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    explainer = attnlrp.Explainer(model, tok)
    for k, target in enumerate(answer_ids):
        e = explainer(prompt_ids + answer_ids[:k], target=log_prob_of(target))
        assert_equal_relevance(result.token_attr[k], e.relevance[: len(prompt_ids)])


def test_an_llm_forward_it_does_not_know_is_refused_for_the_logit(model, tok):
    """Another captum version's LLMGradientAttribution forward explains log-probabilities: never silently."""
    llm = LLMGradientAttribution(AttnLRP(model), tok)
    llm.attr_method.forward_func = llm._format_model_input  # a bound method of the LLM attribution, as before 0.9
    with pytest.raises(attnlrp.ExplainError, match="objective='log_prob'"):
        llm.attribute(TextTokenInput(PROMPT, tok), target="paris")


def test_plot_token_attr_works(model, tok):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = LLMGradientAttribution(AttnLRP(model), tok).attribute(TextTokenInput(PROMPT, tok), target="paris")
    fig, ax = result.plot_token_attr()
    fig2, _ = result.plot_seq_attr()
    assert fig is not None and ax is not None and fig2 is not None
    plt.close("all")


# ------------------------------------------------------------------------------------------ import and extra
def test_integrations_package_does_not_import_captum(monkeypatch):
    for name in ("captum", "captum.attr", "inseq"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them now fails
    monkeypatch.setattr(attnlrp, "integrations", sys.modules["attnlrp.integrations"])  # restored afterwards
    monkeypatch.delitem(sys.modules, "attnlrp.integrations")
    assert importlib.import_module("attnlrp.integrations").__doc__


@pytest.mark.parametrize("integration, library", [("captum", "captum.attr"), ("inseq", "inseq")])
def test_without_the_library_the_error_names_the_extra(monkeypatch, integration, library):
    monkeypatch.delitem(sys.modules, f"attnlrp.integrations.{integration}", raising=False)
    monkeypatch.setitem(sys.modules, library, None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingExtraError, match=rf"attnlrp\[{integration}\]"):
        importlib.import_module(f"attnlrp.integrations.{integration}")
