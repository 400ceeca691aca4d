"""The command line's manners: --version, --quiet, the same model options on every command that loads a model,
counts checked by the parser, exit status 2 for usage errors and 1 for failures during the work, progress bars
only on a terminal, --help without torch, and one colour decision shared with ``to_terminal()``."""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnlrp
import attnlrp.models
from attnlrp.cli import build_parser, main
from attnlrp.cli.args import load_model, read_prompt, show_progress, use_color
from tiny import tiny_llama, word_tokenizer

PROMPT = "paris is the capital of"
MODEL_COMMANDS = [["explain", PROMPT], ["audit"], ["neurons", PROMPT], ["steer", PROMPT, "--off", "0:1"],
                  ["evaluate"], ["concepts", "build"], ["patch", PROMPT, "--corrupted", PROMPT, "--target", "of"],
                  ["circuit", PROMPT, "--corrupted", PROMPT, "--target", "of"]]


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(monkeypatch, capsys):
    """``run(*argv)``: `attnlrp …` in-process on a tiny float32 Llama (``cli.model``), returning (code, out, err)."""
    loaded = attnlrp.models.LoadedModel(tiny_llama(), word_tokenizer(), "tiny")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.loaded = loaded  # type: ignore[attr-defined]
    return run


@pytest.fixture
def no_color_settings(monkeypatch):
    for var in ("NO_COLOR", "FORCE_COLOR", "TERM"):
        monkeypatch.delenv(var, raising=False)


def leaf_parsers(parser: argparse.ArgumentParser, name: str = "attnlrp"):
    """Every command's own parser (``concepts build`` and ``concepts show``, not ``concepts``)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield name, parser
    for action in subparsers:
        for child, sub in action.choices.items():
            yield from leaf_parsers(sub, f"{name} {child}")


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


# ------------------------------------------------------------------------------------ fast --help, --version

def test_help_and_version_import_no_torch():
    """Building the parser, every --help and --version: no torch, transformers or attnlrp engine module loaded."""
    commands = [["--help"], ["--version"]] + [[*name.split()[1:], "--help"] for name, _ in leaf_parsers(build_parser())]
    code = f"""
import sys
from attnlrp.cli import build_parser, main
heavy = lambda: sorted(m for m in ("torch", "transformers", "numpy", "tqdm", "attnlrp.core", "attnlrp.explain",
                                   "attnlrp.evaluation.tasks") if m in sys.modules)
build_parser()
print("HEAVY after the parser:", heavy())
for argv in {commands!r}:
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code in (0, None), (argv, exit.code)
print("HEAVY after --help and --version:", heavy())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    heavy = [line for line in done.stdout.splitlines() if line.startswith("HEAVY")]
    assert heavy == ["HEAVY after the parser: []", "HEAVY after --help and --version: []"]


def test_console_script_help_and_version():
    exe = Path(sys.executable).parent / "attnlrp"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "attnlrp.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "explain" in done.stdout and "Exit status" in done.stdout
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"attnlrp {importlib.metadata.version('attnlrp')}\n")


def test_version_falls_back_to_the_package(monkeypatch, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code in (0, None)
    assert capsys.readouterr().out == f"attnlrp {attnlrp.__version__}\n"


def test_method_registry_is_the_engines():
    """The CLI reads the names from attnlrp.method_registry (no torch); the engine's registry is the same one."""
    import attnlrp.core
    import attnlrp.core.methods
    import attnlrp.method_registry
    from attnlrp.evaluation import names, tasks

    assert attnlrp.core.method_names is attnlrp.core.methods.method_names is attnlrp.method_registry.method_names
    assert attnlrp.core.Method is attnlrp.Method
    assert attnlrp.METHODS == ("attnlrp", "cp-lrp", "input-x-gradient", "gradient")
    assert names.TASK_NAMES == tasks.TASK_NAMES
    assert callable(attnlrp.explain) and attnlrp.explain.__module__ == "attnlrp.explain"  # not the module


# ------------------------------------------------------------------------------------ the same options

@pytest.mark.parametrize("argv", MODEL_COMMANDS, ids=["explain", "audit", "neurons", "steer", "evaluate", "build",
                                                 "patch", "circuit"])
def test_every_command_that_loads_a_model_takes_the_same_options(argv, monkeypatch):
    args = build_parser().parse_args([*argv, "--dtype", "float64", "--device", "cpu", "--attn", "eager", "--color",
                                      "never", "--trust-remote-code", "--allow-pickle", "--quiet"])
    seen = {}
    monkeypatch.setattr(attnlrp.models, "load_model", lambda spec, **kwargs: seen.update(spec=spec, **kwargs))
    load_model(args)
    assert seen == {"spec": None, "dtype": "float64", "device": "cpu", "attn_implementation": "eager",
                    "trust_remote_code": True, "allow_pickle": True}
    assert args.quiet and use_color(args) is False


def test_every_command_is_quiet_on_request():
    leaves = dict(leaf_parsers(build_parser()))
    assert set(leaves) == {"attnlrp explain", "attnlrp audit", "attnlrp neurons", "attnlrp steer", "attnlrp evaluate",
                           "attnlrp concepts build", "attnlrp concepts show", "attnlrp patch", "attnlrp circuit",
                           "attnlrp serve"}
    for name, parser in leaves.items():
        # serve prints nothing but its URL: no colours to switch
        assert {"-q", "--quiet"} | ({"--color"} if name != "attnlrp serve" else set()) <= options(parser), name


# ------------------------------------------------------------------------------------ values checked up front

@pytest.mark.parametrize("argv, option", [
    (["explain", PROMPT, "--top", "0"], "--top"),
    (["explain", PROMPT, "--top", "-1"], "--top"),
    (["explain", PROMPT, "--generate", "0"], "--generate"),
    (["explain", PROMPT, "--generate", "2", "--row-batch", "0"], "--row-batch"),
    (["explain", PROMPT, "--generate", "2", "--row-batch", "two"], "--row-batch"),
    (["neurons", PROMPT, "--top", "0"], "--top"),
    (["neurons", PROMPT, "--top", "many"], "--top"),
    (["steer", PROMPT, "--off", "0:1", "--generate", "-1"], "--generate"),
    (["concepts", "build", "--top-k", "0"], "--top-k"),
    (["concepts", "build", "--window", "0"], "--window"),
    (["concepts", "build", "--limit", "0"], "--limit"),
    (["concepts", "build", "--batch-size", "0"], "--batch-size"),
    (["concepts", "build", "--chunk-size", "-8"], "--chunk-size"),
    (["concepts", "show", "1", "2", "--top", "0"], "--top"),
    (["evaluate", "--samples", "0"], "--samples"),
    (["evaluate", "--steps", "0"], "--steps"),
    (["evaluate", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--data", "{tmp}/missing.jsonl"], "--data"),
    (["evaluate", "--merge", "{tmp}"], "--merge"),
    (["concepts", "build", "--corpus", "{tmp}/missing.txt"], "--corpus"),
    (["explain", PROMPT, "--html", "{tmp}/missing/page.html"], "--html"),
])
def test_bad_values_are_usage_errors_before_any_work(argv, option, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"error: argument {option}" in err and "Traceback" not in err


def test_zero_is_a_count_where_it_means_none():
    assert build_parser().parse_args(["steer", PROMPT, "--off", "0:1", "--generate", "0"]).generate == 0
    assert build_parser().parse_args(["explain", PROMPT, "--generate", "2", "--row-batch", "auto"]).row_batch == "auto"
    assert build_parser().parse_args(["explain", PROMPT, "--generate", "2", "--row-batch", "4"]).row_batch == 4


# ------------------------------------------------------------------------------------ exit status

def test_a_request_the_library_refuses_is_a_usage_error(cli):
    for argv, message in ((["explain", ""], "prompt is empty"),
                          (["explain", PROMPT, "--row-batch", "2"], "--row-batch only applies with --generate")):
        code, out, err = cli(*argv)
        assert (code, out) == (2, "") and err.startswith("error: ") and message in err


class SoftExp(torch.nn.Module):
    """An activation written with plain tensor ops that no rule knows."""

    def forward(self, x):
        return torch.exp(-x * x) * x


def test_an_operation_without_a_rule_under_strict_fails_the_work(cli):
    cli.loaded.model.model.layers[1].mlp.act_fn = SoftExp()
    code, out, err = cli("explain", PROMPT, "--strict")
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and "exp" in err and "Traceback" not in err


def test_a_file_that_cannot_be_written_during_the_work_fails_it(cli, monkeypatch, tmp_path):
    page = tmp_path / "page.html"

    def load(*args, **kwargs):
        page.mkdir()  # the file system changes after the options were checked
        return cli.loaded

    monkeypatch.setattr(attnlrp.models, "load_model", load)
    code, out, err = cli("explain", PROMPT, "--html", str(page))
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and str(page) in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------ stdin, progress, quiet

@pytest.mark.parametrize("text, prompt", [("a b\n", "a b"), ("a b\r\n", "a b"), ("a b\n\n", "a b\n"), ("a b", "a b"),
                                          (" a b \n", " a b ")])
def test_stdin_loses_only_its_final_newline(monkeypatch, text, prompt):
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert read_prompt(argparse.Namespace(prompt="-")) == prompt


def test_progress_only_on_a_terminal_and_never_when_quiet(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not show_progress(argparse.Namespace(quiet=False))
    monkeypatch.setattr(sys, "stderr", Tty())
    assert show_progress(argparse.Namespace(quiet=False))
    assert not show_progress(argparse.Namespace(quiet=True))
    assert not show_progress(argparse.Namespace(quiet=False, no_progress=True))


def test_generate_shows_a_progress_bar_on_a_terminal(cli, monkeypatch):
    code, out, err = cli("explain", PROMPT, "--generate", "3", "--json")
    assert code == 0 and err == ""  # standard error is not a terminal here
    n = len(json.loads(out)["generated"])  # the answer may end before 3 tokens
    for quiet in (False, True):
        terminal = Tty()
        monkeypatch.setattr(sys, "stderr", terminal)
        code, again, _ = cli("explain", PROMPT, "--generate", "3", "--json", *(["--quiet"] if quiet else []))
        assert code == 0 and again == out  # the bar never touches standard output
        if quiet:
            assert terminal.getvalue() == ""
        else:
            assert "explaining the generated tokens" in terminal.getvalue() and f" {n}/{n} " in terminal.getvalue()


def test_quiet_silences_transformers_for_the_run_only(cli, monkeypatch):
    from transformers.utils import logging as transformers_logging

    before = transformers_logging.get_verbosity()
    during = []
    load = attnlrp.models.load_model
    monkeypatch.setattr(attnlrp.models, "load_model",
                        lambda *a, **k: during.append(transformers_logging.get_verbosity()) or load())
    assert cli("explain", PROMPT, "--quiet", "--json")[0] == 0
    assert during == [transformers_logging.ERROR] and transformers_logging.get_verbosity() == before


# ------------------------------------------------------------------------------------ colour

@pytest.fixture(scope="module")
def views():
    """Each terminal view, as a function of ``color`` (left out: the default)."""
    from attnlrp.concepts.atlas import Sample
    from attnlrp.concepts.render import concept_terminal

    model, tok = tiny_llama(), word_tokenizer()
    explanation = attnlrp.explain(model, tok, PROMPT)
    generation = attnlrp.explain_generation(model, tok, PROMPT, max_new_tokens=2)
    sample = Sample("actmax", 1, 1, 3, 0, 0, 0, 2, 0.5, [1, 2, 3], ["<s>", " a", " b"], 1, [0.0, 0.1, 0.5],
                    [0.0, -0.2, 0.3])
    info = {"windows_done": 1, "windows_total": 1, "model": "tiny", "corpus": "c", "method": "attnlrp"}
    return {
        "Explanation": explanation.to_terminal,
        "GenerationExplanation": generation.to_terminal,
        "concept_terminal": lambda **kw: concept_terminal(info, 1, 3, {"actmax": [sample]}, **kw),
    }


@pytest.mark.parametrize("view", ["Explanation", "GenerationExplanation", "concept_terminal"])
def test_to_terminal_colours_only_a_terminal_by_default(views, view, monkeypatch, no_color_settings):
    render = views[view]
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert "\x1b[" not in render()  # a pipe or a file
    assert "\x1b[" in render(color=True)
    monkeypatch.setattr(sys, "stdout", Tty())
    assert "\x1b[" in render()
    assert "\x1b[" not in render(color=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in render()


def test_color_auto_is_the_same_decision(monkeypatch, no_color_settings):
    from attnlrp.render import resolve_color

    for stream, expected in ((io.StringIO(), False), (Tty(), True)):
        monkeypatch.setattr(sys, "stdout", stream)
        assert use_color(argparse.Namespace(color="auto")) is resolve_color(None) is expected
    assert use_color(argparse.Namespace(color="never")) is False
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert use_color(argparse.Namespace(color="always")) is True


@pytest.mark.parametrize("argv", [["neurons", PROMPT, "--top", "3"], ["audit", "--prompt", PROMPT]])
def test_neurons_and_audit_follow_color(cli, argv):
    code, plain, err = cli(*argv, "--color", "never")
    assert code == 0, err
    code, coloured, err = cli(*argv, "--color", "always")
    assert code == 0, err
    assert "\x1b[" not in plain and "\x1b[1m" in coloured
    assert plain == coloured.replace("\x1b[1m", "").replace("\x1b[0m", "").replace("\x1b[31m", "") \
        .replace("\x1b[34m", "").replace("\x1b[32m", "")
