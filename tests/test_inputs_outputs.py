"""Inputs and outputs people already have: prompts as text, ids, tensors, BatchEncodings and pipelines; results as
pandas DataFrames, JSON that reads back, and paper-ready figures (PDF, PNG, SVG)."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sys
import types
import zlib

import numpy as np
import pytest
import torch

import attnlrp
import attnlrp.models
from attnlrp import ExplainError, Explainer, Explanation, GenerationExplanation, explain_generation
from attnlrp.cli import main
from attnlrp.errors import MissingExtraError

PROMPT = "paris is the capital of france . lisbon is the capital of"
OTHERS = ["the quick brown fox", "rome is the capital of italy . madrid is"]


@pytest.fixture(scope="module")
def explained(llama64, tok):
    return attnlrp.explain(llama64, tok, PROMPT)


@pytest.fixture(scope="module")
def generation(llama64, tok):
    return explain_generation(llama64, tok, PROMPT, max_new_tokens=3)


@pytest.fixture(scope="module")
def pipe(llama64, tok):
    transformers = pytest.importorskip("transformers")
    return transformers.pipeline("text-generation", model=llama64, tokenizer=tok)


def same(a: Explanation, b: Explanation) -> None:
    assert a.token_ids == b.token_ids and a.target == b.target
    torch.testing.assert_close(a.relevance, b.relevance, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------------- prompts
def test_every_prompt_form_explains_the_same_tokens(llama64, tok, explained):
    ids = tok(PROMPT)["input_ids"]
    forms = {
        "list": ids,
        "tuple": tuple(ids),
        "1-D tensor": torch.tensor(ids),
        "(1, N) tensor": torch.tensor([ids]),
        "numpy": np.array([ids]),
        "BatchEncoding": tok(PROMPT, return_tensors="pt"),
        "BatchEncoding without tensors": tok(PROMPT),
        "dict": {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)},
        "list of one row": [ids],
    }
    for name, prompt in forms.items():
        e = attnlrp.explain(llama64, tok, prompt)
        same(e, explained)
        if name.startswith("BatchEncoding"):  # a fast tokenizer's encoding knows the words; bare ids do not
            assert e.word_ids == explained.word_ids, name


def test_attention_mask_drops_padding(llama64, tok, explained):
    ids = tok(PROMPT)["input_ids"]
    padded = {"input_ids": torch.tensor([[0, 0] + ids]), "attention_mask": torch.tensor([[0, 0] + [1] * len(ids)])}
    same(attnlrp.explain(llama64, tok, padded), explained)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_encoding_of_several_rows_is_a_batch(llama64, tok, side):
    prompts = [PROMPT, *OTHERS]
    before, tok.padding_side = tok.padding_side, side
    try:
        encoding = tok(prompts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = before
    assert (encoding["attention_mask"] == 0).any()
    explainer = Explainer(llama64, tok)
    rows = explainer.explain_batch(encoding)
    assert len(rows) == 3
    for prompt, row in zip(prompts, rows):
        same(row, explainer(prompt))


def test_batch_of_tensors_and_mixed_forms(llama64, tok):
    ids = [tok(p)["input_ids"] for p in (PROMPT, OTHERS[0])]
    explainer = Explainer(llama64, tok)
    square = torch.tensor([ids[0][:5], ids[1][:5]])
    for row, alone in zip(explainer.explain_batch(square), (ids[0][:5], ids[1][:5])):
        same(row, explainer(alone))
    mixed = explainer.explain_batch([PROMPT, torch.tensor([ids[1]]), tok(OTHERS[1], return_tensors="pt")])
    for row, alone in zip(mixed, [PROMPT, *OTHERS]):
        same(row, explainer(alone))


def test_several_sequences_are_refused_with_a_pointer(llama64, tok):
    batch = tok([PROMPT, OTHERS[0]], padding=True, return_tensors="pt")
    for prompt in (batch, batch["input_ids"], dict(batch)):
        with pytest.raises(ExplainError, match=r"2 sequences.*explain_batch"):
            attnlrp.explain(llama64, tok, prompt)
    with pytest.raises(ExplainError, match=r"2 sequences.*explain_generation explains one prompt"):
        explain_generation(llama64, tok, batch, max_new_tokens=1)
    with pytest.raises(ExplainError, match="1-D tensor is one prompt"):
        Explainer(llama64, tok).explain_batch(torch.tensor(tok(PROMPT)["input_ids"]))


@pytest.mark.parametrize(
    "prompt, message",
    [
        (3.5, "a prompt must be text, token ids"),
        (object(), "a prompt must be text, token ids"),
        (torch.zeros(1, 1, 3, dtype=torch.long), "1-D .* or 2-D"),
        (torch.tensor([1.0, 2.0]), "integer token ids"),
        ({"ids": [1, 2]}, "needs 'input_ids'.*its keys: ids"),
        ({"input_ids": [[2, 6, 7]], "attention_mask": [[1, 1]]}, "different shapes"),
        ({"input_ids": [[2, 6]], "attention_mask": [[0, 0]]}, "prompt is empty"),
        (torch.zeros(0, dtype=torch.long), "prompt is empty"),
        ([2, 10_000], "out of the tokenizer's range"),
    ],
)
def test_bad_prompts(llama64, tok, prompt, message):
    with pytest.raises(ExplainError, match=message):
        attnlrp.explain(llama64, tok, prompt)


def test_generation_takes_every_single_prompt_form(llama64, tok, generation):
    ids = tok(PROMPT)["input_ids"]
    for prompt in (torch.tensor([ids]), tok(PROMPT, return_tensors="pt"), np.array(ids)):
        g = explain_generation(llama64, tok, prompt, max_new_tokens=3)
        assert g.token_ids == generation.token_ids
        torch.testing.assert_close(g.matrix, generation.matrix, rtol=1e-6, atol=1e-9)


# -------------------------------------------------------------------------------------------------- pipelines
def test_a_pipeline_stands_for_model_and_tokenizer(pipe, llama64, tok, explained, generation):
    same(Explainer(pipe)(PROMPT), explained)
    same(attnlrp.explain(pipe, None, PROMPT), explained)
    g = explain_generation(pipe, None, PROMPT, max_new_tokens=3)
    assert g.token_ids == generation.token_ids
    torch.testing.assert_close(g.matrix, generation.matrix)
    assert Explainer(pipe).model is llama64 and Explainer(pipe).tokenizer is tok
    assert Explainer(pipe, tok).tokenizer is tok  # a tokenizer given as well is used


def test_pipeline_and_tokenizer_errors(pipe, llama64):
    with pytest.raises(ExplainError, match="a tokenizer is needed"):
        Explainer(llama64)
    with pytest.raises(ExplainError, match="a tokenizer is needed"):
        explain_generation(llama64, None, PROMPT)
    without = types.SimpleNamespace()  # not a model, not a pipeline
    with pytest.raises(ExplainError, match="torch.nn.Module\\) or a pipeline, got SimpleNamespace"):
        Explainer(without, object())
    bare = copy_pipeline(pipe, tokenizer=None)
    with pytest.raises(ExplainError, match="pipeline has no tokenizer"):
        Explainer(bare)


def copy_pipeline(pipe, **changes):
    clone = object.__new__(type(pipe))
    clone.__dict__.update(pipe.__dict__)
    clone.__dict__.update(changes)
    return clone


# ------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("stdin, prompt", [
    (PROMPT + "\n", PROMPT),
    (PROMPT + "\r\n", PROMPT),
    (PROMPT + "\n\n", PROMPT + "\n"),  # one final newline only
    (PROMPT, PROMPT),
    (" " + PROMPT + " \n", " " + PROMPT + " "),
])
def test_cli_stdin_loses_one_final_newline(stdin, prompt, llama64, tok, monkeypatch, capsys):
    loaded = types.SimpleNamespace(model=llama64, tokenizer=tok, source="tiny llama")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["explain", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"] == prompt


# ---------------------------------------------------------------------------------------------------- pandas
def test_explanation_to_pandas(explained):
    pytest.importorskip("pandas")
    df = explained.to_pandas()
    assert list(df.columns) == ["index", "token", "token_id", "relevance", "special", "word_id"]
    assert len(df) == len(explained)
    assert df["index"].tolist() == list(range(len(explained)))
    assert df["token"].tolist() == explained.tokens and df["token_id"].tolist() == explained.token_ids
    assert df["special"].tolist() == explained.special and df["word_id"].tolist() == explained.word_ids
    np.testing.assert_array_equal(df["relevance"].to_numpy(), explained.relevance.numpy())
    assert df.attrs["method"] == "attnlrp" and df.attrs["value"] == explained.value
    segmented = dataclasses.replace(explained, segments=["encoder"] * 5 + ["decoder"] * (len(explained) - 5))
    assert segmented.to_pandas()["segment"].tolist() == segmented.segments


def test_generation_to_pandas_is_long_and_pivots_back(generation):
    pytest.importorskip("pandas")
    df = generation.to_pandas()
    assert list(df.columns) == ["generated_index", "generated_token", "source_index", "source_token",
                                "source_token_id", "source_special", "relevance"]
    assert len(df) == sum(generation.position(k) for k in range(len(generation)))
    first = df[df["generated_index"] == 0]
    assert first["source_token"].tolist() == generation.tokens[: generation.prompt_length]
    assert set(first["generated_token"]) == {generation.generated[0]}
    wide = df.pivot(index="generated_index", columns="source_index", values="relevance").fillna(0.0)
    np.testing.assert_array_equal(wide.to_numpy(), generation.matrix[:, : wide.shape[1]].numpy())


def test_a_batch_is_one_dataframe(llama64, tok, generation):
    pytest.importorskip("pandas")
    rows = Explainer(llama64, tok).explain_batch([PROMPT, *OTHERS])
    df = attnlrp.explanations_to_pandas(rows)
    assert df.columns[0] == "row" and len(df) == sum(len(e) for e in rows)
    assert df.groupby("row")["token"].apply(list).tolist() == [e.tokens for e in rows]
    np.testing.assert_allclose(df.groupby("row")["relevance"].sum().to_numpy(),
                               [float(e.relevance.sum()) for e in rows], rtol=1e-5)
    empty = attnlrp.explanations_to_pandas([])
    assert len(empty) == 0 and {"row", "token", "relevance"} <= set(empty.columns)
    both = attnlrp.explanations_to_pandas([generation, generation], key="run")
    assert both["run"].tolist() == [0] * (len(both) // 2) + [1] * (len(both) // 2)


def test_pandas_missing_names_the_extra(explained, generation, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    for call in (explained.to_pandas, generation.to_pandas, lambda: attnlrp.explanations_to_pandas([explained])):
        with pytest.raises(MissingExtraError, match=r"pip install 'attnlrp\[pandas\]'"):
            call()


# ------------------------------------------------------------------------------------------------------ JSON
def test_explanation_json_round_trip(llama64, tok, explained):
    contrast = attnlrp.explain(llama64, tok, PROMPT, target="portugal", contrast="spain")
    with_latents = attnlrp.explain(llama64, tok, PROMPT, latents=True)
    nan = dataclasses.replace(explained, relevance=torch.tensor([float("nan")] + explained.relevance[1:].tolist()))
    for e in (explained, contrast, with_latents, nan):
        text = e.to_json()
        back = Explanation.from_json(text)
        assert back.to_json() == text
        assert Explanation.from_json(e.to_json(indent=2)).to_json(indent=2) == e.to_json(indent=2)
        torch.testing.assert_close(back.relevance, e.relevance, rtol=0, atol=0, equal_nan=True)
        assert back.relevance.dtype == torch.float32
        assert (back.tokens, back.token_ids, back.special, back.word_ids) == (e.tokens, e.token_ids, e.special,
                                                                            e.word_ids)
        assert back.target == e.target and back.value == e.value and back.ledger == e.ledger
        if e is not nan:
            assert back.words() == e.words()
    assert Explanation.from_json(with_latents.to_json()).latents["layers"] == with_latents.latents.num_layers
    assert Explanation.from_dict(json.loads(contrast.to_json())).target.contrast_token == "spain"
    with pytest.raises(ValueError, match="expects a JSON object"):
        Explanation.from_json("[1, 2]")


def test_generation_json_round_trip(generation):
    text = generation.to_json()
    back = GenerationExplanation.from_json(text)
    assert back.to_json() == text
    torch.testing.assert_close(back.matrix, generation.matrix, rtol=0, atol=0)
    torch.testing.assert_close(back.answer_relevance, generation.answer_relevance, rtol=0, atol=0)
    assert back.generated == generation.generated and back.prompt_length == generation.prompt_length
    assert back.values == generation.values and back.answer_ledger == generation.answer_ledger


# --------------------------------------------------------------------------------------------------- figures
def pdf_text(data: bytes) -> str:
    """The text a PDF shows: the strings of its text operators (decompressed; TrueType fonts are written with
    2-byte codes, which for these fonts are the characters' code points)."""
    shown = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            content = stream
        for block in re.findall(rb"BT(.*?)ET", content, re.S):
            for array in re.findall(rb"\[(.*?)\]\s*TJ", block, re.S):
                raw = b"".join(_pdf_string(s) for s in re.findall(rb"\(((?:\\.|[^\\)])*)\)", array, re.S))
                shown.append(raw.decode("utf-16-be", errors="replace"))
    return "".join(shown)


def _pdf_string(literal: bytes) -> bytes:
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
    return re.sub(rb"\\([0-7]{1,3}|.)", lambda m: bytes([int(m.group(1), 8)]) if m.group(1)[:1].isdigit()
                  else escapes.get(m.group(1), m.group(1)), literal, flags=re.S)


def test_text_heatmap_pdf_has_the_tokens_as_text(explained, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "heatmap.pdf"
    explained.save_figure(path, title="attnlrp heatmap")
    data = path.read_bytes()
    assert data.startswith(b"%PDF-")
    assert b"/FontFile2" in data and b"/CIDFontType2" in data  # TrueType embedded: text, not outlines
    text = pdf_text(data)
    for word in ("paris", "capital", "lisbon", "france", "relevance", "attnlrp heatmap"):
        assert word in text, (word, text)
    assert b"/CreationDate" not in data  # the same figure gives the same bytes
    path.with_suffix(".again.pdf").write_bytes(b"")
    explained.save_figure(path.with_suffix(".again.pdf"), title="attnlrp heatmap")
    assert path.with_suffix(".again.pdf").read_bytes() == data


def test_png_svg_and_file_objects(explained, generation, tmp_path):
    pytest.importorskip("matplotlib")
    explained.save_figure(tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    explained.save_figure(tmp_path / "heatmap.svg")
    svg = (tmp_path / "heatmap.svg").read_text(encoding="utf-8")
    assert "<text" in svg and "lisbon" in svg
    buffer = io.BytesIO()
    generation.save_figure(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    generation.save_figure(tmp_path / "matrix.pdf")
    assert (tmp_path / "matrix.pdf").read_bytes().startswith(b"%PDF-")
    assert generation.generated[0].strip() in pdf_text((tmp_path / "matrix.pdf").read_bytes())
    with pytest.raises(ValueError, match="format="):
        explained.save_figure(io.BytesIO())
    with pytest.raises(ValueError, match="suffix"):
        explained.save_figure(tmp_path / "heatmap")


def boxes(figure, prefix="token"):
    """``{i: (text, facecolor)}`` of the token boxes of a text heatmap figure."""
    texts = {t.get_gid(): t.get_text() for t in figure.texts if (t.get_gid() or "").startswith(prefix + "-")}
    colors = {p.get_gid(): p.get_facecolor() for p in figure.artists + figure.patches
              if (p.get_gid() or "").startswith(prefix + "-")}
    assert texts.keys() == colors.keys()
    return {int(gid.split("-")[1]): (texts[gid], colors[gid]) for gid in texts}


def test_box_colours_follow_the_sign(explained):
    pytest.importorskip("matplotlib")
    figure = explained.to_figure()
    shown = boxes(figure)
    assert len(shown) == len(explained)
    relevance = explained.relevance.tolist()
    assert any(r > 0 for r in relevance) and any(r < 0 for r in relevance)
    peak = max(abs(r) for r in relevance)
    for i, (text, (red, green, blue, _)) in shown.items():
        assert text == explained.tokens[i].strip()
        if relevance[i] > 0.05 * peak:
            assert red > blue and red > green, (i, relevance[i])
        elif relevance[i] < -0.05 * peak:
            assert blue > red and blue > green, (i, relevance[i])
    strongest = max(range(len(relevance)), key=lambda i: abs(relevance[i]))
    assert min(shown[strongest][1][:3]) < 0.4  # the largest |relevance| is fully coloured (the scale's end)


def test_words_and_without_special_tokens(explained):
    pytest.importorskip("matplotlib")
    shown = boxes(explained.to_figure(include_special=False))
    assert [text for text, _ in shown.values()] == [t.strip() for t, s in zip(explained.tokens, explained.special)
                                                    if not s]
    words = boxes(explained.to_figure(words=True), "word")
    assert [text for text, _ in words.values()] == [w.strip() for w, _ in explained.words()]


def test_token_text_is_shown_literally_and_whitespace_visibly():
    pytest.importorskip("matplotlib")
    from attnlrp.render.figure import save_figure, text_heatmap_figure

    tokens = ["$x_1$", " costs", " 5", "$", "\n", " next", " line", "\t"]
    figure = text_heatmap_figure(tokens, [1.0, -1.0, 0.5, 0.0, 0.2, -0.2, 0.0, 0.1], width=2.0)
    assert [text for text, _ in boxes(figure).values()] == ["$x_1$", "costs", "5", "$", "↵", "next", "line", "⇥"]
    target = io.BytesIO()
    save_figure(figure, target, format="pdf")  # mathtext would fail on "$" or typeset $x_1$
    assert "$x_1$" in pdf_text(target.getvalue())
    lines = {}
    for t in figure.texts:
        if (t.get_gid() or "").startswith("token-"):
            lines.setdefault(round(t.get_position()[1], 3), []).append(t.get_text())
    assert any(row[0] == "next" for row in lines.values())  # a line break after "↵"


def test_generation_matrix_figure(generation):
    pytest.importorskip("matplotlib")
    figure = generation.to_figure()
    axis = figure.axes[0]
    image = axis.get_images()[0]
    grid = np.ma.filled(image.get_array().astype(float), np.nan)
    assert grid.shape == tuple(generation.matrix.shape)
    for k in range(len(generation)):
        p = generation.position(k)
        np.testing.assert_allclose(grid[k, :p], generation.matrix[k, :p].numpy(), rtol=1e-6)
        assert np.isnan(grid[k, p:]).all()  # not inputs of this row: grey
    values = generation.matrix[0, : generation.prompt_length]
    for value in (float(values.max()), float(values.min())):
        red, _, blue, _ = image.cmap(image.norm(value))
        assert (red > blue) == (value > 0)
    assert [t.get_text() for t in axis.get_yticklabels()] == [g.strip() for g in generation.generated]
    assert [t.get_text() for t in axis.get_xticklabels()][1] == generation.tokens[1].strip()
    normalized = generation.to_figure(normalize_rows=True).axes[0].get_images()[0].get_array()
    assert np.nanmax(np.abs(np.ma.filled(normalized.astype(float), np.nan)), axis=1) == pytest.approx(1.0)
    row = boxes(generation.to_figure(row=1))
    assert len(row) == generation.position(1)
    answer = boxes(generation.to_figure(row="answer"))
    assert len(answer) == len(generation.tokens) - 1
    with pytest.raises(ValueError, match="row must be"):
        generation.to_figure(row=len(generation))


def test_figures_without_matplotlib_name_the_vision_extra(explained, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"attnlrp\[vision\]"):
        explained.save_figure(tmp_path / "x.pdf")
