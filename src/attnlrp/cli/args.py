"""Arguments that several commands share, defined once so their spelling, default and help cannot drift apart,
and the reading of them (prompt, colour, model) that every command does the same way.

Each helper adds one option, so a command keeps its own order of options in ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

MODEL_HELP = "a local folder, a .gguf file, a hub id, or 'smollm2' (default: embedded SmolLM2-135M-Instruct)"
JSON_HELP = "print one JSON object instead of the terminal view"


def add_prompt(parser: argparse.ArgumentParser, *, verb: str = "explain") -> None:
    """The positional PROMPT; :func:`read_prompt` reads it."""
    parser.add_argument("prompt", help=f"the text to {verb} ('-' reads it from standard input)")


def add_model(parser: argparse.ArgumentParser, *, help: str = MODEL_HELP) -> None:
    parser.add_argument("--model", default=None, help=help)


def add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")


def add_attn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                        help="attention implementation (default: transformers' choice, SDPA where available)")


def add_loading_permissions(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code`` and ``--allow-pickle``: a model's code and pickles run only when asked for."""
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (unsafe)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device`` and the loading permissions, for commands with no other model option."""
    add_model(parser)
    add_dtype(parser)
    add_device(parser)
    add_loading_permissions(parser)


def add_json(parser: argparse.ArgumentParser, *, help: str = JSON_HELP) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def add_html(parser: argparse.ArgumentParser, *, help: str) -> None:
    parser.add_argument("--html", metavar="FILE", default=None, help=help)


def add_color(parser: argparse.ArgumentParser) -> None:
    """``--color``; :func:`use_color` reads it."""
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="terminal colours")


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt, from standard input when it is ``-``, without the one final newline that ``echo`` and editors
    add (``"text\\n"`` is explained as ``"text"``; any other whitespace is kept)."""
    if args.prompt != "-":
        return args.prompt
    text = sys.stdin.read()
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def use_color(args: argparse.Namespace) -> bool:
    """``--color always/never``, or with ``auto`` whether standard output is a terminal that shows colours."""
    from ..render import should_color

    return {"always": True, "never": False}.get(args.color, should_color(sys.stdout))


def load_model(args: argparse.Namespace) -> Any:
    """The model the arguments name; a command without ``--device`` or ``--attn`` gets the library's default."""
    from .. import models  # looked up at call time, so tests can substitute ``attnlrp.models.load_model``

    return models.load_model(
        args.model, dtype=args.dtype, device=getattr(args, "device", None),
        attn_implementation=getattr(args, "attn", None), trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )
