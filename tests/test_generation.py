"""Generation attribution: every generated token explained over the prompt and the earlier generated tokens."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import torch

import attnlrp
import attnlrp.models
from attnlrp import ExplainError
from attnlrp.cli import main
from attnlrp.generation import GenerationExplanation, explain_generation
from attnlrp.render import script_json
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of france . lisbon is the capital of"


@pytest.fixture(scope="module")
def generation(llama64, tok):
    return explain_generation(llama64, tok, PROMPT, max_new_tokens=4)


def greedy(model, tok, n):
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


def test_greedy_by_default_and_shapes(generation, llama64, tok):
    g = generation
    assert isinstance(g, GenerationExplanation) and len(g) == 4
    assert g.token_ids == greedy(llama64, tok, 4)
    assert g.prompt_length == len(tok(PROMPT)["input_ids"])
    assert g.tokens[: g.prompt_length][1:] == [" " + w if i else w for i, w in enumerate(PROMPT.split())]
    assert g.generated == [tok.decode([i]) for i in g.token_ids[g.prompt_length:]]
    assert g.matrix.shape == (4, len(g.tokens)) and g.matrix.dtype == torch.float32
    assert g.answer_relevance.shape == (len(g.tokens),)


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "input-x-gradient", "gradient"])
def test_each_row_equals_explaining_that_token_alone(method, llama64, tok):
    g = explain_generation(llama64, tok, PROMPT, max_new_tokens=4, method=method)
    for k in range(len(g)):
        p = g.position(k)
        alone = attnlrp.explain(llama64, tok, g.token_ids[:p], target=g.token_ids[p], method=method)
        torch.testing.assert_close(g.matrix[k, :p], alone.relevance, rtol=1e-6, atol=1e-9)
        assert g.values[k] == pytest.approx(alone.value, rel=1e-9)
        if method in ("attnlrp", "cp-lrp"):
            assert g.ledgers[k].input == pytest.approx(alone.ledger.input, rel=1e-6, abs=1e-12)
            assert g.ledgers[k].absorbed == pytest.approx(alone.ledger.absorbed, rel=1e-6, abs=1e-12)


def test_causality_zeros(generation):
    for k in range(len(generation)):
        p = generation.position(k)
        assert torch.all(generation.matrix[k, p:] == 0)
        assert generation.matrix[k, :p].abs().sum() > 0
    assert generation.answer_relevance[-1] == 0


def test_answer_row_is_the_sum_of_the_rows(generation):
    torch.testing.assert_close(generation.answer_relevance, generation.matrix.sum(0), rtol=1e-5, atol=1e-7)
    assert generation.answer_value == pytest.approx(sum(generation.values), rel=1e-12)
    assert generation.answer_ledger.value == pytest.approx(generation.answer_value)


@pytest.mark.parametrize("method", ["attnlrp", "gradient"])
def test_answer_row_equals_one_backward_of_the_summed_logits(llama64, tok, method):
    """Oracle for the answer row, which explain_generation builds from the rows' gradients (linearity): one
    ordinary explained pass whose target is the sum of the generated tokens' logits (for "gradient", the norm
    of the summed gradient, which is not the sum of the rows' norms)."""
    g = explain_generation(llama64, tok, PROMPT, max_new_tokens=4, method=method)
    positions = torch.arange(g.prompt_length - 1, len(g.tokens) - 1)
    targets = torch.tensor(g.generated_ids)

    def summed_logits(output):
        return output.logits[0, positions, targets].sum().reshape(1)

    whole = attnlrp.explain(llama64, tok, g.token_ids[:-1], method=method, target=summed_logits)
    torch.testing.assert_close(g.answer_relevance[:-1], whole.relevance, rtol=1e-6, atol=1e-9)
    assert g.answer_value == pytest.approx(whole.value, rel=1e-12)
    assert g.answer_ledger.input == pytest.approx(whole.ledger.input, rel=1e-6)
    assert g.answer_ledger.absorbed == pytest.approx(whole.ledger.absorbed, rel=1e-6, abs=1e-12)


def test_ledger_balanced_per_row(generation):
    assert len(generation.ledgers) == len(generation)
    for k, ledger in enumerate(generation.ledgers):
        assert ledger.value == pytest.approx(generation.values[k])
        assert ledger.input == pytest.approx(float(generation.matrix[k].double().sum()), rel=1e-5, abs=1e-7)
        assert abs(ledger.residual) <= 1e-6 * abs(ledger.value) + 1e-9, ledger
    assert generation.answer_ledger.balanced(rtol=1e-6)


def test_generate_kwargs_pass_through(llama64, tok, monkeypatch):
    seen = []
    original = llama64.generate

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(llama64, "generate", spy)
    assert len(explain_generation(llama64, tok, PROMPT, max_new_tokens=3, min_new_tokens=3)) == 3
    assert seen[-1]["do_sample"] is False and seen[-1]["pad_token_id"] == tok.pad_token_id
    assert seen[-1]["min_new_tokens"] == 3 and "attention_mask" in seen[-1]
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(explain_generation(llama64, tok, PROMPT, max_new_tokens=6, do_sample=True, temperature=5.0))
    assert seen[-1]["do_sample"] is True and seen[-1]["temperature"] == 5.0
    assert runs[0].token_ids == runs[1].token_ids
    torch.testing.assert_close(runs[0].matrix, runs[1].matrix)
    # a sampled answer is explained like any other: row k is explaining its token alone
    g = runs[0]
    p = g.position(len(g) - 1)
    alone = attnlrp.explain(llama64, tok, g.token_ids[:p], target=g.token_ids[p])
    torch.testing.assert_close(g.matrix[-1, :p], alone.relevance, rtol=1e-6, atol=1e-9)


def test_rules_are_off_during_generation_and_model_restored(llama64, tok):
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        before = llama64(ids).logits
    explain_generation(llama64, tok, PROMPT, max_new_tokens=2)
    with torch.no_grad():
        after = llama64(ids).logits
    assert torch.equal(before, after)
    assert all(p.requires_grad for p in llama64.parameters())


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ("", {}, "prompt is empty"),
        ("   ", {}, "prompt is empty"),
        (" ".join(["the"] * 70), {}, "at most 64"),
        (" ".join(["the"] * 60), {"max_new_tokens": 10}, "exceed the model's maximum"),
        (PROMPT, {"max_new_tokens": 0}, "positive integer"),
        (PROMPT, {"method": "lrp"}, "unknown method"),
    ],
)
def test_bad_input(llama64, tok, prompt, kwargs, message):
    with pytest.raises(ExplainError, match=message):
        explain_generation(llama64, tok, prompt, **kwargs)


def test_json_contract(generation):
    data = json.loads(generation.to_json())
    assert {"tokens", "token_ids", "prompt_length", "generated", "matrix", "values", "answer_relevance",
            "method", "answer_value", "ledgers"} <= set(data)
    assert data["method"] == "attnlrp" and data["generated"] == generation.generated
    assert len(data["matrix"]) == len(data["values"]) == len(data["generated"]) == len(data["ledgers"])
    assert all(len(row) == len(data["tokens"]) == len(data["token_ids"]) for row in data["matrix"])
    assert data["tokens"][data["prompt_length"]:] == data["generated"]
    assert data["matrix"][0][0] == pytest.approx(float(generation.matrix[0, 0]))


def test_top_and_terminal(generation):
    best = generation.top(0, 3)
    p = generation.position(0)
    assert len(best) == 3 and all(i < p and not generation.special[i] for i, _, _ in best)
    assert best[0][2] == pytest.approx(float(generation.matrix[0, 1:p].max()))
    text = generation.to_terminal(color=False)
    assert "answer: " in text and "\x1b[" not in text
    assert len([line for line in text.splitlines() if "logit +" in line or "logit -" in line]) == len(generation)


BREAKOUT = "<script>alert(1)</script> paris </script> is < the & capital"


def test_html_escapes_and_does_not_break_out(llama64, tok):
    g = explain_generation(llama64, tok, BREAKOUT, max_new_tokens=3)
    assert "<" in "".join(g.tokens)
    page = g.to_html()
    # exactly the one script of the view, with nothing from the prompt able to close it early
    assert page.count("<script") == 1 and page.count("</script") == 1
    script = page[page.index("<script>") + len("<script>"): page.index("</script>")]
    data = re.search(r"var D=(.*);\n", script).group(1)
    assert not set("<>&") & set(data)
    assert json.loads(data)["tokens"][: g.prompt_length] == [repr(t) for t in g.tokens[: g.prompt_length]]
    assert "&lt;" in page and "<script>alert" not in page and "</script> paris" not in page
    assert "<!--" not in page
    fragment = g._repr_html_()
    assert not fragment.startswith("<!doctype") and fragment.count("<script") == 1


def test_script_json_escapes_everything_dangerous():
    text = script_json({"t": "</script><!-- & \u2028\u2029 \ud800", "x": float("nan")})
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == {"t": "</script><!-- & \u2028\u2029 \ud800", "x": None}


NODE_HARNESS = r"""
const src = require('fs').readFileSync(0, 'utf8');
function el(attrs) { return {attrs, style: {}, title: '', textContent: '', handlers: {},
  classes: new Set(), classList: {toggle(c, on) { on ? this.owner.classes.add(c) : this.owner.classes.delete(c); }},
  getAttribute(n) { return this.attrs[n]; }, addEventListener(e, f) { this.handlers[e] = f; }}; }
const n = %d, spans = [];
for (let i = 0; i < n; i++) { const s = el({'data-i': String(i)}); s.classList.owner = s; spans.push(s); }
const status = el({}), scale = el({}), button = el({});
const root = {querySelectorAll: () => spans,
  querySelector: q => q === '.status' ? status : q === '.scale' ? scale : button};
global.document = {getElementById: () => root};
eval(src);
const out = {initial: spans.map(s => s.style.background), status0: status.textContent};
spans[%d].handlers.mouseenter();
out.hover = spans.map(s => s.style.background); out.status1 = status.textContent;
spans[%d].handlers.mouseleave(); out.left = spans.map(s => s.style.background);
spans[%d].handlers.click(); spans[%d].handlers.mouseleave(); out.pinned = spans.map(s => s.style.background);
button.handlers.click(); out.reset = spans.map(s => s.style.background);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js not installed")
def test_html_script_recolours_on_hover_and_click(generation):
    from attnlrp.render.colors import relevance_rgb, symmetric_scale

    page = generation.to_html()
    script = page[page.index("<script>") + len("<script>"): page.index("</script>")]
    n, last = len(generation.tokens), len(generation.tokens) - 1
    harness = NODE_HARNESS % (n, last, last, last, last)
    result = subprocess.run(["node", "-e", harness], input=script, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)

    def colours(row):
        row = [float(x) for x in row]
        scale = symmetric_scale(row)
        return ["rgb({},{},{})".format(*relevance_rgb(x, scale)) for x in row]

    answer = colours(generation.answer_relevance.tolist())
    row = colours(generation.matrix[len(generation) - 1].tolist())
    assert out["initial"] == answer and out["left"] == answer and out["reset"] == answer
    assert out["hover"] == row and out["pinned"] == row
    assert "whole answer" in out["status0"] and f"generated token {len(generation) - 1}" in out["status1"]
    # the static (no JavaScript) colours are the whole-answer view too
    assert all(f"background:{c}" in page for c in answer)


@pytest.fixture
def tiny_cli(monkeypatch, capsys, tok):
    model = tiny_llama(torch.float64)
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: attnlrp.models.LoadedModel(model, tok, "tiny"))

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run, model


def test_cli_generate_json(tiny_cli, tok, tmp_path):
    run, model = tiny_cli
    page = tmp_path / "generation.html"
    code, out, err = run("explain", PROMPT, "--generate", "3", "--json", "--html", str(page))
    assert code == 0, err
    data = json.loads(out)
    assert len(data["generated"]) == len(data["matrix"]) == 3 and data["model"] == "tiny"
    assert data["token_ids"] == explain_generation(model, tok, PROMPT, max_new_tokens=3).token_ids
    assert page.read_text(encoding="utf-8").count("<script") == 1


def test_cli_generate_terminal_and_errors(tiny_cli):
    run, _ = tiny_cli
    code, out, err = run("explain", PROMPT, "--generate", "2", "--color", "never")
    assert code == 0, err
    assert "answer: " in out and out.count("logit ") == 2 and "\x1b[" not in out
    code, out, err = run("explain", PROMPT, "--generate", "2", "--target", "paris")
    assert code == 2 and out == "" and err.startswith("error: ") and "--target" in err
    with pytest.raises(SystemExit) as exit_info:  # a usage error, found by the parser (tests/test_cli_manners.py)
        run("explain", PROMPT, "--generate", "0")
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------- batched rows
def _assert_same_rows(a: GenerationExplanation, b: GenerationExplanation) -> None:
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(a.matrix, b.matrix, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a.answer_relevance, b.answer_relevance, rtol=1e-6, atol=1e-9)
    assert a.values == pytest.approx(b.values, rel=1e-9)
    for left, right in zip([*a.ledgers, a.answer_ledger], [*b.ledgers, b.answer_ledger]):
        assert left.input == pytest.approx(right.input, rel=1e-6, abs=1e-12)
        assert left.by_site.keys() == right.by_site.keys()
        for site in left.by_site:
            assert left.by_site[site] == pytest.approx(right.by_site[site], rel=1e-6, abs=1e-12), site


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "gradient"])
@pytest.mark.parametrize("row_batch", [2, 5, 64])
def test_batched_rows_equal_the_shared_forward(llama64, tok, method, row_batch):
    """5 rows in batches of 2 (uneven last batch), 5 (one pass) and 64 (capped at 5): each copy of the batch
    carries only its own row's seed, so the rows, the answer and every ledger site equal the one-row passes."""
    one = explain_generation(llama64, tok, PROMPT, max_new_tokens=5, method=method, row_batch=1)
    batched = explain_generation(llama64, tok, PROMPT, max_new_tokens=5, method=method, row_batch=row_batch)
    _assert_same_rows(batched, one)
    if method != "gradient":
        for ledger in batched.ledgers:
            assert abs(ledger.residual) <= 1e-6 * abs(ledger.value) + 1e-9, ledger


def test_batched_rows_with_absorbed_position_embeddings():
    """GPT-2's learned positions absorb relevance like a bias, in a tensor computed once for the batch: the
    engine expands it per copy, so each row's ledger keeps its own position share."""
    from architectures.configs import build

    model, tok_ = build("gpt2", dtype=torch.float64), word_tokenizer()
    one = explain_generation(model, tok_, PROMPT, max_new_tokens=4, row_batch=1)
    batched = explain_generation(model, tok_, PROMPT, max_new_tokens=4, row_batch=3)
    assert any(site.startswith("embeddings") for site in one.ledgers[0].by_site)
    _assert_same_rows(batched, one)


def test_row_batch_auto_is_one_on_cpu_measured_on_cuda_fixed_elsewhere():
    from attnlrp.generation import AUTO_ROW_BATCH_ACCELERATOR, resolve_row_batch

    assert resolve_row_batch("auto", torch.device("cpu"), 40) == 1
    assert resolve_row_batch("auto", torch.device("cuda"), 40) is None  # sized from the first row's memory
    assert resolve_row_batch("auto", torch.device("cuda"), 1) == 1
    assert resolve_row_batch("auto", torch.device("mps"), 40) == AUTO_ROW_BATCH_ACCELERATOR
    assert resolve_row_batch("auto", torch.device("mps"), 3) == 3
    assert resolve_row_batch(8, torch.device("cpu"), 3) == 3


def test_rows_that_fit_takes_half_the_free_memory_capped():
    from attnlrp.generation import MAX_ROW_BATCH, rows_that_fit

    assert rows_that_fit(free_bytes=10_000, bytes_per_copy=1_000, rows=40) == 5
    assert rows_that_fit(free_bytes=10_000, bytes_per_copy=1_000, rows=3) == 3
    assert rows_that_fit(free_bytes=500, bytes_per_copy=1_000, rows=40) == 1  # never fewer than one
    assert rows_that_fit(free_bytes=10**12, bytes_per_copy=1, rows=1000) == MAX_ROW_BATCH


def test_measured_row_batch_sizes_the_passes_from_the_first_row(llama64, tok, monkeypatch):
    """The CUDA path on the CPU with a scripted memory reading: the first row's pass holds 1,000 bytes and
    3,000 more are free, so the other rows go two per pass ((3,000 + 1,000) / 2 / 1,000), and the rows equal
    the shared forward's."""
    import attnlrp.generation as generation

    class ScriptedMemory:
        def __init__(self, device):
            self.readings = iter([0, 1_000])

        def allocated(self):
            return next(self.readings)

        def available(self):
            return 3_000

    copies_seen = []
    real_forward = generation._RowPasses._forward

    def spy(self, ctx, copies, positions):
        copies_seen.append(copies)
        return real_forward(self, ctx, copies, positions)

    one = explain_generation(llama64, tok, PROMPT, max_new_tokens=5, row_batch=1)
    monkeypatch.setattr(generation, "resolve_row_batch", lambda *a: None)
    monkeypatch.setattr(generation, "CudaMemory", ScriptedMemory)
    monkeypatch.setattr(generation._RowPasses, "_forward", spy)
    measured = explain_generation(llama64, tok, PROMPT, max_new_tokens=5)
    assert copies_seen == [1, 2, 2]
    _assert_same_rows(measured, one)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "many"])
def test_row_batch_rejects_bad_values_before_generating(llama64, tok, bad, monkeypatch):
    monkeypatch.setattr(llama64, "generate", lambda *a, **k: pytest.fail("generated before checking row_batch"))
    with pytest.raises(ExplainError, match="row_batch must be 'auto' or a positive integer"):
        explain_generation(llama64, tok, PROMPT, max_new_tokens=2, row_batch=bad)


def test_cli_row_batch(tiny_cli, tok):
    run, model = tiny_cli
    code, out, err = run("explain", PROMPT, "--generate", "3", "--row-batch", "2", "--json")
    assert code == 0, err
    one = explain_generation(model, tok, PROMPT, max_new_tokens=3, row_batch=1)
    torch.testing.assert_close(torch.tensor(json.loads(out)["matrix"]), one.matrix, rtol=1e-6, atol=1e-9)
    for bad in ("0", "two", "-1"):  # a usage error, found by the parser (tests/test_cli_manners.py)
        with pytest.raises(SystemExit) as exit_info:
            run("explain", PROMPT, "--generate", "2", "--row-batch", bad)
        assert exit_info.value.code == 2
    code, out, err = run("explain", PROMPT, "--row-batch", "4")
    assert code == 2 and "--row-batch only applies with --generate" in err


def test_cli_device_errors_are_one_line(capsys):
    """No weight is read before the device is checked: a typo or a missing GPU is a one-line error."""
    assert main(["explain", "hello", "--device", "gpu0"]) == 2
    assert "unknown device 'gpu0'" in capsys.readouterr().err
    for command in (["neurons", "hello"], ["steer", "hello", "--off", "0:1"], ["audit"]):
        assert main([*command, "--device", "gpu0"]) == 2
        assert "unknown device 'gpu0'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["explain", "hello", "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "sees no CUDA GPU" in err and "Traceback" not in err
