"""attnlrp inside inseq: importing ``attnlrp.integrations.inseq`` registers the ``"attnlrp"`` method, and
``inseq.load_model(model, "attnlrp").attribute(...)`` gives, for every generated token, the row that
``attnlrp.explain_generation`` gives. inseq comes with the ``dev`` extra (``make test``); elsewhere these skip."""

from __future__ import annotations

import math

import pytest
import torch

inseq = pytest.importorskip("inseq")

import attnlrp  # noqa: E402
import attnlrp.integrations.inseq as attnlrp_inseq  # noqa: E402  (registers "attnlrp" with inseq)
from tiny import tiny_llama, word_tokenizer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("error::attnlrp.errors.UnruledOperationWarning")

PROMPT = "the capital of france is"
NEW_TOKENS = 3


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def tokenizer():
    # no BOS (and add_bos=False on our side: inseq tokenizes the prompt itself and prepends nothing): inseq checks that a decoder-only model's decoded generation starts with the prompt text, which a
    # BOS token written out in front would break; inseq also sets the tokenizer's padding side, so each use gets
    # its own
    return word_tokenizer(bos=False)


def inseq_rows(out, n_prompt: int, n_new: int) -> torch.Tensor:
    """inseq's target attributions (sequence tokens × generation steps) as our (steps × tokens) matrix, with the
    positions a step cannot see (NaN in inseq) as 0, as in ``GenerationExplanation.matrix``."""
    attributions = out.sequence_attributions[0].target_attributions
    assert attributions.shape == (n_prompt + n_new, n_new)
    return torch.nan_to_num(attributions.T.double(), nan=0.0)


def test_registered_in_inseqs_registry():
    assert "attnlrp" in inseq.list_feature_attribution_methods()
    assert attnlrp_inseq.AttnLRPAttribution.method_name == "attnlrp"


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_every_generated_token_equals_explain_generation(model, method):
    kwargs = {} if method == "attnlrp" else {"lrp_method": method}
    inseq_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer(), **kwargs)
    out = inseq_model.attribute(PROMPT, generation_args={"max_new_tokens": NEW_TOKENS}, show_progress=False)
    g = attnlrp.explain_generation(model, tokenizer(), PROMPT, max_new_tokens=NEW_TOKENS, method=method,
                                   add_bos=False)
    sequence = out.sequence_attributions[0]
    assert [t.id for t in sequence.target] == g.token_ids, "the same greedy generation"
    assert out.info["attributed_fn"] == "logit_fn", "the logit by default, as attnlrp explains"
    n_prompt = g.prompt_length
    ours = inseq_rows(out, n_prompt, len(g))
    expected = g.matrix.double()
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6 * scale)
    # the cells of a step's own and later tokens are unseen (NaN) in inseq, exactly 0 in attnlrp
    unseen = torch.isnan(sequence.target_attributions.T)
    assert unseen.tolist() == [[j >= n_prompt + k for j in range(n_prompt + len(g))] for k in range(len(g))]


def test_other_attributed_functions_and_unhook_restore_the_default(model):
    inseq_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer())
    assert inseq_model.default_attributed_fn_id == "logit"
    out = inseq_model.attribute(
        PROMPT, generation_args={"max_new_tokens": 1}, attributed_fn="probability", show_progress=False
    )
    g = attnlrp.explain_generation(model, tokenizer(), PROMPT, max_new_tokens=1, add_bos=False)
    target = g.generated_ids[0]
    e = attnlrp.Explainer(model, tokenizer(), add_bos=False)(
        PROMPT, target=lambda output: output.logits[:, -1].softmax(-1)[:, target]
    )
    ours = inseq_rows(out, g.prompt_length, 1)[0, : g.prompt_length]
    torch.testing.assert_close(ours, e.relevance.double(), rtol=1e-6, atol=1e-6 * float(e.relevance.abs().max()))
    inseq_model.attribution_method.unhook()
    assert inseq_model.default_attributed_fn_id == "probability", "inseq's own default is back"


def test_relevance_is_signed_and_conserves_like_attnlrp(model):
    """No norm is taken (a coarse attribution): the row sums are the relevance attnlrp's ledger balances."""
    inseq_model = inseq.load_model(model, "attnlrp", tokenizer=tokenizer())
    out = inseq_model.attribute(PROMPT, generation_args={"max_new_tokens": 2}, show_progress=False)
    rows = inseq_rows(out, len(PROMPT.split()), 2)
    assert (rows < 0).any() and (rows > 0).any()
    g = attnlrp.explain_generation(model, tokenizer(), PROMPT, max_new_tokens=2, add_bos=False)
    for k, ledger in enumerate(g.ledgers):
        assert math.isclose(float(rows[k].sum()), ledger.input, rel_tol=1e-5)


def test_encoder_decoder_source_and_target_prefix_equal_the_explainer():
    """BART: each generated token over the source and the decoder prefix (``attribute_target=True``) is the
    Explainer's relevance for that token with that decoder prefix."""
    from architectures.configs import build

    model = build("bart", "eager").float()
    source = "paris is the capital of france"
    out = inseq.load_model(model, "attnlrp", tokenizer=tokenizer()).attribute(
        source, generation_args={"max_new_tokens": 3}, attribute_target=True, show_progress=False
    )
    sequence = out.sequence_attributions[0]
    ids = [t.id for t in sequence.target]  # the decoder start token, then the generated tokens
    assert ids[0] == model.config.decoder_start_token_id and len(ids) == 4
    explainer = attnlrp.Explainer(model, tokenizer())
    for k in range(1, len(ids)):
        e = explainer(source, decoder_prefix=ids[1:k] or None, target=ids[k])
        ours = torch.cat([sequence.source_attributions[:, k - 1], sequence.target_attributions[:k, k - 1]])
        torch.testing.assert_close(ours.double(), e.relevance.double(), rtol=1e-6,
                                   atol=1e-6 * float(e.relevance.abs().max()))
