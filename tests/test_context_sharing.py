"""One model shared: a plain forward + backward in another thread while a rule context is open gets plain
gradients, the context's own explanation is unchanged, a second context on the same model (nested or from
another thread) is refused clearly, and every exit leaves the model exactly as it was."""

from __future__ import annotations

import threading

import pytest
import torch

import attnlrp
from attnlrp import ExplainError, LRPContext
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


@pytest.fixture(scope="module")
def shared():
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    return model, tok, ids


def plain_input_gradient(model, ids) -> torch.Tensor:
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeds).logits[0, -1]
    logits[logits.argmax()].backward()
    return embeds.grad


def ruled_relevance(model, ids, opened: threading.Event | None = None, resume: threading.Event | None = None):
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    with LRPContext(model, "attnlrp"):
        if opened is not None:
            opened.set()
            assert resume.wait(60), "the other thread never finished"
        logits = model(inputs_embeds=embeds).logits[0, -1]
        logits[logits.argmax()].backward()
    return (embeds * embeds.grad).sum(-1)


def test_a_plain_pass_in_another_thread_is_not_ruled(shared):
    model, tok, ids = shared
    plain = plain_input_gradient(model, ids)
    reference = ruled_relevance(model, ids)
    assert not torch.allclose(plain, torch.zeros_like(plain))

    opened, resume = threading.Event(), threading.Event()
    results: dict[str, torch.Tensor] = {}

    def explaining() -> None:
        results["ruled"] = ruled_relevance(model, ids, opened, resume)

    thread = threading.Thread(target=explaining)
    thread.start()
    try:
        assert opened.wait(60)  # the context is open (hooks installed, parameters frozen) in the other thread
        results["plain"] = plain_input_gradient(model, ids)
        # a plain forward with the other thread's rules active in between: run the ruled pass now, too
    finally:
        resume.set()
        thread.join(60)
    torch.testing.assert_close(results["plain"], plain, rtol=0, atol=0)  # not touched by the rules
    torch.testing.assert_close(results["ruled"], reference, rtol=0, atol=0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_interleaved_forward_passes_of_two_threads(shared):
    """The plain thread's forward runs *while* the ruled thread's forward is inside the model."""
    model, tok, ids = shared
    plain, reference = plain_input_gradient(model, ids), ruled_relevance(model, ids)
    inside, done = threading.Event(), threading.Event()
    first_layer = model.model.layers[0]

    def pause_inside(module, args):
        if threading.current_thread() is not threading.main_thread() and not inside.is_set():
            inside.set()  # the ruled forward is now inside the model, with its rule mode pushed
            assert done.wait(60)

    handle = first_layer.register_forward_pre_hook(pause_inside)
    results: dict[str, torch.Tensor] = {}
    thread = threading.Thread(target=lambda: results.setdefault("ruled", ruled_relevance(model, ids)))
    try:
        thread.start()
        assert inside.wait(60)
        results["plain"] = plain_input_gradient(model, ids)
    finally:
        done.set()
        thread.join(60)
        handle.remove()
    torch.testing.assert_close(results["plain"], plain, rtol=0, atol=0)
    torch.testing.assert_close(results["ruled"], reference, rtol=0, atol=0)


def test_a_second_context_on_one_model_is_refused_in_either_order_of_exit(shared):
    model, tok, ids = shared
    plain = plain_input_gradient(model, ids)
    for inner_method in ("attnlrp", "cp-lrp"):
        outer = LRPContext(model, "attnlrp")
        with outer:
            with pytest.raises(ExplainError, match="already being explained by an open lrp\\(\\) context \\(in this thread"):
                LRPContext(model, inner_method).__enter__()
        # the refused context changed nothing, and the outer one undid everything
        torch.testing.assert_close(plain_input_gradient(model, ids), plain, rtol=0, atol=0)
    # two contexts on one model, closed out of order: the second is refused, so out-of-order exit cannot happen
    first, second = LRPContext(model), LRPContext(model)
    first.__enter__()
    with pytest.raises(ExplainError):
        second.__enter__()
    second.__exit__(None, None, None)  # closing the refused one is harmless
    first.__exit__(None, None, None)
    torch.testing.assert_close(plain_input_gradient(model, ids), plain, rtol=0, atol=0)
    assert attnlrp.explain(model, tok, PROMPT).ledger.balanced()


def test_another_thread_is_refused_while_the_model_is_explained(shared):
    model, tok, ids = shared
    errors: list[BaseException] = []
    with LRPContext(model):
        thread = threading.Thread(target=lambda: _record(errors, lambda: LRPContext(model).__enter__()))
        thread.start()
        thread.join(60)
    assert len(errors) == 1 and isinstance(errors[0], ExplainError)
    assert "in another thread" in str(errors[0]) and "queue" in str(errors[0])


def _record(errors: list[BaseException], run) -> None:
    try:
        run()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        errors.append(e)


# --------------------------------------------------------------- an explainer's parked hooks (reusable context)
def hook_counts(model) -> list[tuple[int, int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks), len(m.__dict__)) for m in model.modules()]


def test_an_explainer_sets_up_once_and_its_parked_hooks_are_idle(monkeypatch):
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    bare = hook_counts(model)
    once = attnlrp.explain(model, tok, PROMPT)  # a one-shot explain leaves nothing behind
    fresh = once.relevance
    assert hook_counts(model) == bare
    installs = []
    original = LRPContext._install_hooks
    monkeypatch.setattr(LRPContext, "_install_hooks", lambda self: installs.append(1) or original(self))
    explainer = attnlrp.Explainer(model, tok)
    first, second = explainer(PROMPT), explainer(PROMPT)
    assert len(installs) == 1  # the second call found the hooks parked
    torch.testing.assert_close(first.relevance, fresh, rtol=0, atol=0)
    torch.testing.assert_close(second.relevance, fresh, rtol=0, atol=0)
    assert second.ledger == once.ledger and second.covered == once.covered  # each use reports on itself only
    assert hook_counts(model) != bare  # parked ...
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
    gradient_parked = plain_input_gradient(model, ids)  # ... and idle: a plain pass gets the plain gradient
    explainer.close()
    assert hook_counts(model) == bare
    assert torch.equal(gradient_parked, plain_input_gradient(model, ids))
    torch.testing.assert_close(explainer(PROMPT).relevance, fresh, rtol=0, atol=0)  # usable after close()
    assert len(installs) == 2
    del explainer, first, second
    import gc

    gc.collect()
    assert hook_counts(model) == bare  # garbage collected: removed


def test_another_context_removes_parked_hooks_first():
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    bare = hook_counts(model)
    reference_cp = attnlrp.explain(model, tok, PROMPT, method="cp-lrp").relevance
    reference = attnlrp.explain(model, tok, PROMPT).relevance
    explainer = attnlrp.Explainer(model, tok)
    explainer(PROMPT)
    other = attnlrp.Explainer(model, tok, method="cp-lrp")
    torch.testing.assert_close(other(PROMPT).relevance, reference_cp, rtol=0, atol=0)  # one rule set only
    with LRPContext(model, "gradient"):  # plain gradients: the parked AttnLRP and CP-LRP hooks are gone
        assert hook_counts(model) == bare
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits[0, -1]
        logits[logits.argmax()].backward()
    torch.testing.assert_close(embeds.grad, plain_input_gradient(model, ids), rtol=0, atol=0)
    torch.testing.assert_close(explainer(PROMPT).relevance, reference, rtol=0, atol=0)
    explainer.close()
    other.close()
    assert hook_counts(model) == bare


def test_a_failing_call_leaves_no_parked_hooks():
    model, tok = tiny_llama(torch.float64), word_tokenizer()
    bare = hook_counts(model)
    explainer = attnlrp.Explainer(model, tok)

    def broken(output):
        raise RuntimeError("the target failed")

    with pytest.raises(RuntimeError, match="the target failed"):
        explainer(PROMPT, target=broken)
    assert hook_counts(model) == bare
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in tiny_llama(torch.float64).parameters()]
