"""The evaluation runner, its summary statistics, the report files, the CLI, and sharding with torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlrp.cli import main
from attnlrp.evaluation import data, runner
from attnlrp.evaluation.distributed import shard
from attnlrp.evaluation.perturbation import flip_curves
from attnlrp.evaluation.records import read_records
from attnlrp.evaluation.report import markdown, write_results
from attnlrp.evaluation.summary import mean_curves, summarise
from tiny import tiny_llama, word_tokenizer

TEXTS = [
    "paris is the capital of france . lisbon is the capital of",
    "the quick brown fox jumps over the lazy",
    "the movie was not very good and it was",
    "rome is the capital of",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-eval")
    tiny_llama(torch.float32).save_pretrained(str(folder / "model"))
    word_tokenizer().save_pretrained(str(folder / "model"))
    with open(folder / "data.jsonl", "w", encoding="utf-8") as handle:
        for text in TEXTS:
            handle.write(json.dumps({"text": text}) + "\n")
    return folder


def _record(task: str, index: int, method: str, logit: float, logprob: float, seconds: float = 1.0) -> dict:
    return {"task": task, "index": index, "sample": f"s{index}", "method": method, "seconds": seconds,
            "details": {}, "abpc": {"replace": {"logit": logit, "logprob": logprob}}, "grid": {}}


def test_summary_means_intervals_and_paired_differences_by_hand():
    attn = [0.5, 0.7, 0.9]
    other = [0.1, 0.4, 0.4]
    records = [_record("t", i, "attnlrp", a, 2 * a) for i, a in enumerate(attn)]
    records += [_record("t", i, "random", b, 0.0, seconds=3.0) for i, b in enumerate(other)]
    summary = summarise(list(reversed(records)))  # order of records must not matter
    table = summary["t:replace"]
    t975_df2 = 4.302652729911275
    assert table["attnlrp"]["abpc"] == pytest.approx(0.7)
    assert table["attnlrp"]["ci95"] == pytest.approx(t975_df2 * 0.2 / math.sqrt(3), rel=1e-6)
    assert table["attnlrp"]["abpc_logprob"] == pytest.approx(1.4)
    assert table["random"]["seconds_per_sample"] == pytest.approx(3.0)
    paired = table["random"]["paired_attnlrp_minus_this"]["logit"]
    differences = [a - b for a, b in zip(attn, other)]  # 0.4, 0.3, 0.5
    sd = math.sqrt(sum((d - 0.4) ** 2 for d in differences) / 2)
    assert paired["mean"] == pytest.approx(0.4) and paired["ci95"] == pytest.approx(t975_df2 * sd / math.sqrt(3))
    assert "paired_attnlrp_minus_this" not in table["attnlrp"]


def test_plausibility_is_counted_overall_and_where_the_model_is_correct():
    # sample: (model correct?, attnlrp's top-1 in span?, random's top-1 in span?)
    cases = [(True, True, False), (True, True, True), (False, False, False), (True, False, True), (False, True, False)]
    records = []
    for i, (correct, *hits) in enumerate(cases):
        for method, hit in zip(("attnlrp", "random"), hits):
            record = _record("qa", i, method, 0.1 * i, 0.1)
            record["correct"] = correct
            record["plausibility"] = {"top1_in_span": hit, "iou": float(hit)}
            records.append(record)
    table = summarise(records)["qa:replace"]
    assert (table["attnlrp"]["model_correct_count"], table["attnlrp"]["model_judged"]) == (3, 5)
    assert (table["attnlrp"]["top1_in_span_count"], table["attnlrp"]["top1_in_span_count_when_correct"]) == (3, 2)
    assert (table["random"]["top1_in_span_count"], table["random"]["top1_in_span_count_when_correct"]) == (2, 2)
    text = markdown(summarise(records), {})
    assert "| 3/5 (2/3) |" in text and "| 2/5 (2/3) |" in text and "answers 3 of 5 samples" in text


def test_summary_refuses_methods_run_on_different_samples():
    records = [_record("t", 0, "attnlrp", 0.1, 0.1), _record("t", 1, "random", 0.1, 0.1)]
    with pytest.raises(Exception, match="not run on the same samples"):
        summarise(records)


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items and max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_records_equal_the_metric_computed_directly(llama64, tok):
    samples = data.resolve_targets(llama64, [
        data.TextSample(id=f"s{i}", task="t", input_ids=tuple(tok(t)["input_ids"]),
                        special=tuple(i == 0 for i in range(len(tok(t)["input_ids"]))))
        for i, t in enumerate(TEXTS[:2])
    ])
    records = runner.evaluate_samples(llama64, tok, "t", samples, methods=["attnlrp", "random"],
                                      modes=["replace", "zero"])
    assert len(records) == 4 and {r["method"] for r in records} == {"attnlrp", "random"}
    from attnlrp.evaluation.methods import Attributor

    attributor = Attributor(llama64, tok)
    for record in records:
        instance = runner.to_instance(samples[record["index"]])
        relevance = attributor(record["method"], instance).relevance
        for mode in ("replace", "zero"):
            direct = flip_curves(llama64, instance, relevance, mode=mode, neutral_id=attributor.neutral_id)
            assert record["abpc"][mode]["logit"] == pytest.approx(direct.abpc("logit"), rel=1e-9, abs=1e-12)
            assert record["abpc"][mode]["logprob"] == pytest.approx(direct.abpc("logprob"), rel=1e-9, abs=1e-12)
        assert record["correct"] is None  # no gold label on these samples
        assert record["grid"]["replace"]["fraction"][0] == 0.0 and record["grid"]["replace"]["fraction"][-1] == 1.0


def test_report_files_and_escaping(tmp_path):
    records = [_record("t<b>", i, m, v, v) for i in range(3) for m, v in (("attnlrp", 0.3 + i), ("a|b", 0.1))]
    for r in records:
        grid = {"fraction": [0.0, 1.0], "morf_logit": [1.0, 0.0], "lerf_logit": [1.0, 0.5],
                "morf_logprob": [0.0, -1.0], "lerf_logprob": [0.0, -0.5]}
        r["grid"] = {"replace": grid}
    summary = summarise(records)
    text = markdown(summary, {"command": "attnlrp evaluate <x>", "samples": {"qa": 3}, "note": "two\nlines\x1b[31m"})
    assert "<b>" not in text and "&lt;b&gt;" in text and "a&#124;b" in text
    assert '{"qa": 3}' in text and "&quot;" not in text  # quotes need no escaping in Markdown
    assert "two lines\\x1b[31m" in text and "\x1b" not in text  # no line break or escape sequence gets through
    paths = write_results(summary, mean_curves(records), {"command": "c"}, tmp_path)
    assert json.loads(paths[0].read_text())["t<b>:replace"]["attnlrp"]["abpc"] == pytest.approx(1.3)
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[4].stat().st_size > 1000


def _evaluate_json(folder: Path, capsys, *extra: str) -> dict:
    code = main(["evaluate", "--model", str(folder / "model"), "--data", str(folder / "data.jsonl"),
                 "--methods", "attnlrp,cp-lrp,occlusion,random", "--perturbation", "replace", "--json",
                 "--no-progress", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_cli_on_user_data_prints_method_to_result(tiny_folder, capsys):
    result = _evaluate_json(tiny_folder, capsys)
    assert list(result) == ["attnlrp", "cp-lrp", "occlusion", "random"]
    for entry in result.values():
        assert {"abpc", "ci95", "abpc_logprob", "ci95_logprob", "seconds_per_sample"} <= set(entry)
        assert entry["n"] == len(TEXTS)


@pytest.mark.parametrize("args, message", [
    (["--task", "qa"], "either --data"),
    (["--methods", "attnlrp,shapley"], "unknown method"),
    (["--perturbation", "blur"], "unknown perturbation"),
])
def test_cli_errors_are_clear(tiny_folder, capsys, args, message):
    code = main(["evaluate", "--model", str(tiny_folder / "model"), "--data", str(tiny_folder / "data.jsonl"),
                 "--no-progress", *args])
    assert code == 2 and message in capsys.readouterr().err


def test_cli_reports_bad_jsonl_with_its_line(tiny_folder, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "paris is the capital of"}\n{"txt": 1}\n', encoding="utf-8")
    code = main(["evaluate", "--model", str(tiny_folder / "model"), "--data", str(bad), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "line 2" in err and "Traceback" not in err


def test_torchrun_two_processes_give_the_one_process_table(tiny_folder, capsys):
    """Sharded over 2 CPU processes (gloo), merged: the same table as one process (up to float summation
    order inside the model, which differs with the thread count)."""
    single = _evaluate_json(tiny_folder, capsys)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun is not None
    completed = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "attnlrp.cli", "evaluate",
         "--model", str(tiny_folder / "model"), "--data", str(tiny_folder / "data.jsonl"),
         "--methods", "attnlrp,cp-lrp,occlusion,random", "--perturbation", "replace", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    sharded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert list(sharded) == list(single)
    for method, entry in single.items():
        for key in ("abpc", "ci95", "abpc_logprob", "ci95_logprob"):
            assert sharded[method][key] == pytest.approx(entry[key], rel=1e-6, abs=1e-9), (method, key)
        assert sharded[method]["n"] == entry["n"]


def test_digits_records_equal_patch_flipping_directly():
    from attnlrp.evaluation.vision_task import (DIGITS_GAMMA, digits_test_set, evaluate_digits, explain_patches,
                                                load_digits_vit, patch_flipping)

    model = load_digits_vit()
    pixels, labels = digits_test_set(2)
    records = evaluate_digits(model, pixels, labels, methods=["attnlrp", "attnlrp-gamma", "random"])
    assert len(records) == 6
    gamma = [r for r in records if r["method"] == "attnlrp-gamma" and r["index"] == 1][0]
    relevance = explain_patches(model, pixels[1], gamma=DIGITS_GAMMA, target=int(labels[1])).patch_relevance
    direct = patch_flipping(model, pixels[1], relevance, int(labels[1]))
    assert gamma["abpc"]["background"]["logit"] == pytest.approx(direct.abpc("logit"), rel=1e-9)
    plain = [r for r in records if r["method"] == "attnlrp" and r["index"] == 1][0]
    assert plain["abpc"]["background"]["logit"] != gamma["abpc"]["background"]["logit"]  # γ changes the ranking


# ------------------------------------------------------------------------- options, records, merge, plausibility
def test_method_options_from_the_command_line():
    from attnlrp.cli.evaluate import parse_options

    assert parse_options(["integrated-gradients.max_steps=32", "kernel-shap.samples=8", "smoothgrad.noise=0.25"]) == {
        "integrated-gradients": {"max_steps": 32}, "kernel-shap": {"samples": 8}, "smoothgrad": {"noise": 0.25}}
    for spec, message in [("max_steps=32", "METHOD.KEY=VALUE"), ("shapley.samples=3", "unknown method"),
                          ("kernel-shap.steps=3", "has no option 'steps'; its options are: samples")]:
        with pytest.raises(Exception, match=message):
            parse_options([spec])


def test_records_file_and_merge_give_the_tables_of_the_runs(tiny_folder, tmp_path, capsys):
    text_records, digits_records = tmp_path / "text.jsonl", tmp_path / "digits.jsonl"
    text = _evaluate_json(tiny_folder, capsys, "--records", str(text_records), "--option", "kernel-shap.samples=8",
                          "--methods", "attnlrp,kernel-shap,random")
    assert main(["evaluate", "--task", "digits", "--samples", "2", "--methods", "attnlrp,random", "--json",
                 "--no-progress", "--records", str(digits_records)]) == 0
    digits = json.loads(capsys.readouterr().out)
    info, records = read_records(text_records)
    assert "--records" in info["command"] and info["torch"] == torch.__version__
    assert {r["details"].get("samples") for r in records if r["method"] == "kernel-shap"} == {8}  # option applied
    assert len(records) == 3 * len(TEXTS)

    out = tmp_path / "merged"
    assert main(["evaluate", "--merge", str(text_records), str(digits_records), "--json", "--output-dir",
                 str(out)]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged == {"data:replace": text, "digits:background": digits}
    run = json.loads((out / "run.json").read_text())
    assert [r["records"] for r in run["runs"]] == [str(text_records), str(digits_records)]
    report = (out / "results.md").read_text()
    assert "## data:replace" in report and "## digits:background" in report
    assert "- **runs** (merged):" in report and f"    - **records**: {digits_records}" in report

    assert main(["evaluate", "--merge", str(text_records), str(text_records)]) == 2
    assert "more than one" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run": {}}\n{"task": "t"}\n', encoding="utf-8")
    assert main(["evaluate", "--merge", str(bad)]) == 2
    assert "line 2: not an evaluation record" in capsys.readouterr().err


def test_perturbation_none_is_plausibility_only(llama64, tok, tiny_folder, capsys):
    ids = tuple(tok(TEXTS[0])["input_ids"])
    sample = data.TextSample(id="q0", task="qa", input_ids=ids, special=(True,) + (False,) * (len(ids) - 1),
                             label="lisbon", answer_span=(8, 9), context_mask=(False,) + (True,) * 9 + (False,) * (len(ids) - 10))
    samples = data.resolve_targets(llama64, [sample])
    records = runner.evaluate_samples(llama64, tok, "qa", samples, methods=["attnlrp", "random"], modes=[])
    assert all(r["abpc"] == {} and "plausibility" in r for r in records)
    from attnlrp.evaluation.methods import Attributor

    direct = data.plausibility(Attributor(llama64, tok)("attnlrp", runner.to_instance(samples[0])).relevance, samples[0])
    summary = summarise(records)
    assert list(summary) == ["qa:plausibility"]
    assert summary["qa:plausibility"]["attnlrp"]["top1_in_span_count"] == int(direct.top1_in_span)
    assert summary["qa:plausibility"]["attnlrp"]["iou"] == pytest.approx(direct.iou)
    assert "| method | top-1 in span | IoU top-k | s / sample |" in markdown(summary, {})
    with pytest.raises(Exception, match="needs samples with an answer span"):
        runner.evaluate_samples(llama64, tok, "t", [samples[0].__class__(**{**samples[0].__dict__, "answer_span": None,
                                                                             "context_mask": None})], modes=[])
    code = main(["evaluate", "--model", str(tiny_folder / "model"), "--data", str(tiny_folder / "data.jsonl"),
                 "--perturbation", "none", "--no-progress"])
    assert code == 2 and "only the qa task" in capsys.readouterr().err
