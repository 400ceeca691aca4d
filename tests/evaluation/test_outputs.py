"""Nothing lost: `attnlrp evaluate` checks every path it writes before any work, never overwrites an input, keeps
an existing records file unless --force, and replaces each output file only once it is written in full."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import attnlrp.models
from attnlrp.cli import main
from attnlrp.evaluation import records as records_module
from attnlrp.evaluation import report
from attnlrp.evaluation.records import read_records, write_records
from attnlrp.evaluation.report import RESULT_FILES, write_results
from tiny import tiny_llama, word_tokenizer

TEXTS = ["paris is the capital of france . lisbon is the capital of", "the quick brown fox jumps over the lazy"]
FAST = ["--methods", "attnlrp,random", "--perturbation", "replace", "--steps", "2", "--no-progress"]


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Loading the model is the first work a run does: these checks must come before it."""
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: pytest.fail("the run started"))


@pytest.fixture
def tiny(monkeypatch):
    loaded = attnlrp.models.LoadedModel(tiny_llama(), word_tokenizer(), "tiny")
    monkeypatch.setattr(attnlrp.models, "load_model", lambda *a, **k: loaded)


def _refused(capsys, *argv: str) -> str:
    code = main(["evaluate", *argv])
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("where", ["existing folder", "trailing separator"])
def test_records_must_be_a_file(no_work, data, tmp_path, capsys, where):
    target = str(tmp_path) if where == "existing folder" else str(tmp_path / "new") + os.sep
    err = _refused(capsys, "--data", str(data), "--records", target)
    assert "is a folder; give a file name" in err


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("how", ["same name", "symlink"])
def test_records_never_overwrite_the_data(no_work, data, tmp_path, capsys, how, force):
    target = data
    if how == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(data)
    before = data.read_bytes()
    err = _refused(capsys, "--data", str(data), "--records", str(target), *(["--force"] if force else []))
    assert "is the input --data" in err
    assert data.read_bytes() == before


def test_an_existing_records_file_needs_force(no_work, data, tmp_path, capsys):
    old = tmp_path / "records.jsonl"
    old.write_text("earlier results\n", encoding="utf-8")
    err = _refused(capsys, "--data", str(data), "--records", str(old))
    assert "exists; pass --force to replace it" in err
    assert old.read_text(encoding="utf-8") == "earlier results\n"


def test_force_replaces_the_records_whole_and_keeps_the_files_permissions(tiny, data, tmp_path, capsys):
    old = tmp_path / "records.jsonl"
    old.write_text("earlier results\n", encoding="utf-8")
    old.chmod(0o640)
    assert main(["evaluate", "--data", str(data), "--records", str(old), "--force", *FAST]) == 0
    capsys.readouterr()
    info, records = read_records(old)
    assert "--force" in info["command"] and len(records) == 2 * len(TEXTS)
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_records_and_results_folders_are_made(tiny, data, tmp_path, capsys):
    records, out = tmp_path / "a" / "b" / "records.jsonl", tmp_path / "c" / "d"
    assert main(["evaluate", "--data", str(data), "--records", str(records), "--output-dir", str(out), *FAST]) == 0
    capsys.readouterr()
    assert len(read_records(records)[1]) == 2 * len(TEXTS)
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(records.stat().st_mode) == 0o666 & ~umask  # as a plain open() makes it


def test_a_folder_cannot_be_made_under_a_file(no_work, data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    err = _refused(capsys, "--data", str(data), "--records", str(blocker / "sub" / "records.jsonl"))
    assert f"{blocker} is a file, not a folder" in err
    err = _refused(capsys, "--data", str(data), "--output-dir", str(blocker / "out"))
    assert f"{blocker} is a file, not a folder" in err


def test_a_folder_without_write_permission_is_refused(no_work, data, tmp_path, capsys, monkeypatch):
    """The check asks the OS (``os.access``); the suite may run as root, where permissions do not bind, so the
    OS's answer for the locked folder is what the test sets."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(locked)
                        else real_access(path, mode, **kw))
    err = _refused(capsys, "--data", str(data), "--records", str(locked / "records.jsonl"))
    assert "no permission to write in the folder" in err


def test_output_dir_must_not_be_a_file(no_work, data, tmp_path, capsys):
    err = _refused(capsys, "--data", str(data), "--output-dir", str(data))
    assert "is a file; give a folder" in err


def test_a_result_file_that_is_a_folder_is_refused(no_work, data, tmp_path, capsys):
    (tmp_path / "out" / "results.md").mkdir(parents=True)
    err = _refused(capsys, "--data", str(data), "--output-dir", str(tmp_path / "out"))
    assert "results.md is a folder" in err


def test_records_cannot_be_a_result_file(no_work, data, tmp_path, capsys):
    out = tmp_path / "out"
    err = _refused(capsys, "--data", str(data), "--output-dir", str(out), "--records", str(out / "results.json"))
    assert "is the results.json that --output-dir writes" in err


def test_merge_never_overwrites_its_inputs(no_work, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    merged = out / "run.json"
    write_records([{"task": "t", "index": 0, "sample": "s", "method": "m", "abpc": {}, "seconds": 1.0}], merged)
    before = merged.read_bytes()
    err = _refused(capsys, "--merge", str(merged), "--output-dir", str(out))
    assert "is the input --merge" in err and merged.read_bytes() == before


class Unserialisable:
    pass


def test_a_failed_records_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("the previous run\n", encoding="utf-8")
    good = {"task": "t", "index": 0, "sample": "s", "method": "m", "abpc": {}, "seconds": 1.0}
    with pytest.raises(TypeError):  # fails after the header and the first record are written
        write_records([good, {**good, "index": 1, "details": Unserialisable()}], path, info={"command": "c"})
    assert path.read_text(encoding="utf-8") == "the previous run\n"
    assert _leftovers(tmp_path) == []


def test_a_failed_results_write_keeps_the_previous_files(tmp_path, monkeypatch):
    for name in RESULT_FILES:
        (tmp_path / name).write_text(f"previous {name}", encoding="utf-8")

    def crash(curves, path, *, score="logit"):
        Path(path).write_bytes(b"\x89PNG half a picture")
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "plot_curves", crash)
    with pytest.raises(KeyboardInterrupt):
        write_results({}, {}, {"command": "c"}, tmp_path)
    assert (tmp_path / "curves.png").read_text(encoding="utf-8") == "previous curves.png"
    assert (tmp_path / "curves-logprob.png").read_text(encoding="utf-8") == "previous curves-logprob.png"
    assert (tmp_path / "run.json").read_text(encoding="utf-8").startswith("{")  # written before the crash, whole
    assert _leftovers(tmp_path) == []


def test_replacing_goes_through_a_temporary_file_in_the_same_folder(tmp_path):
    path = tmp_path / "results.json"
    with records_module.replacing(path) as temporary:
        assert temporary.parent == path.parent and temporary.suffix == ".json" and not path.exists()
        temporary.write_text("{}", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "{}" and _leftovers(tmp_path) == []


def test_a_records_link_is_written_through(tmp_path):
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n", encoding="utf-8")
    link.symlink_to(real)
    write_records([{"task": "t", "index": 0, "sample": "s", "method": "m", "abpc": {}, "seconds": 1.0}], link)
    assert link.is_symlink() and len(read_records(real)[1]) == 1


def test_force_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--force" in capsys.readouterr().out


def test_merge_refuses_records_instead_of_ignoring_it(no_work, tmp_path, capsys):
    run = tmp_path / "run.jsonl"
    write_records([{"task": "t", "index": 0, "sample": "s", "method": "m", "abpc": {}, "seconds": 1.0}], run)
    err = _refused(capsys, "--merge", str(run), "--records", str(tmp_path / "all.jsonl"),
                   "--output-dir", str(tmp_path / "out"))
    assert "--merge writes no records" in err and not (tmp_path / "all.jsonl").exists()
