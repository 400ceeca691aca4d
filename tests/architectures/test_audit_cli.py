"""`attnlrp audit MODEL --json` on every architecture of the matrix, saved as a folder and loaded as a user would."""

from __future__ import annotations

import json

import pytest
import torch

from attnlrp.cli import main
from tiny import word_tokenizer

from .configs import ARCHITECTURES, LATER, build

NAMES = list(ARCHITECTURES) + list(LATER)


@pytest.mark.parametrize("name", NAMES)
def test_audit_command_covers_every_architecture(name, tmp_path, capsys):
    folder = tmp_path / name
    build(name, "sdpa" if "sdpa" in (ARCHITECTURES.get(name) or LATER[name]).attn_implementations else "eager",
          dtype=torch.float32).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    code = main(["audit", str(folder), "--json", "--prompt", "paris is the capital of france"])
    report = json.loads(capsys.readouterr().out)
    assert report["unhandled"] == [], report["unhandled"]
    assert report["balanced"] is True, report["ledger"]
    assert code == 0
    assert report["covered"], "an audit that saw no rule at all did not explain anything"
