"""Arguments that several commands share, defined once so their spelling, default and help cannot drift apart,
the checks of their values, and the reading of them (prompt, colour, progress, model) that every command does the
same way.

Each helper adds one option, so a command keeps its own order of options in ``--help``. A value is checked by its
argparse type here (:func:`positive_int`, :func:`input_file`…): a bad one is a usage error that argparse reports
before any work, with the usage and exit status 2.

This module and the parser imports nothing heavy (no torch, no transformers): ``attnlrp --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any

MODEL_HELP = "a local folder, a .gguf file, a hub id, or 'smollm2' (default: embedded SmolLM2-135M-Instruct)"
JSON_HELP = "print one JSON object instead of the terminal view"
DEVICE_HELP = "cpu (default), cuda, cuda:N or mps"


# ------------------------------------------------------------------------------------ values (argparse types)

def _integer(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    """A count of at least 1 (``--top``, ``--generate``, ``--samples``, ``--steps``, ``--limit``,
    ``--batch-size``…)."""
    value = _integer(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (``steer --generate``: 0 generates nothing)."""
    value = _integer(text, "0 or a positive integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def auto_or_positive_int(text: str) -> int | str:
    """``auto``, or a positive integer (``explain --row-batch``)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None


def input_file(text: str) -> str:
    """A file the command reads (``--data``, ``--corpus``, ``--merge``): it exists, is a file and may be read."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"no permission to read {text}")
    return text


def output_file(text: str) -> str:
    """A file the command writes (``--html``): not a folder, in a folder that exists, so that a mistake in the name
    is found before the work rather than after it."""
    if os.path.isdir(text):
        example = os.path.join(text, "page.html")
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name, e.g. {example}")
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist")
    return text


# ------------------------------------------------------------------------------------------------ options

def add_prompt(parser: argparse.ArgumentParser, *, verb: str = "explain") -> None:
    """The positional PROMPT; :func:`read_prompt` reads it."""
    parser.add_argument("prompt", help=f"the text to {verb} ('-' reads it from standard input)")


def add_model(parser: argparse.ArgumentParser, *, help: str = MODEL_HELP) -> None:
    """``--model``: a folder, a .gguf file, a hub id or an embedded model's name."""
    parser.add_argument("--model", default=None, help=help)


def add_dtype(parser: argparse.ArgumentParser) -> None:
    """``--dtype``: the precision the model runs in."""
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def add_device(parser: argparse.ArgumentParser, *, help: str = DEVICE_HELP) -> None:
    """``--device``: where the model runs."""
    parser.add_argument("--device", default=None, help=help)


def add_attn(parser: argparse.ArgumentParser) -> None:
    """``--attn``: transformers' attention implementation (both are ruled)."""
    parser.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                        help="attention implementation (default: transformers' choice, SDPA where available)")


def add_loading_permissions(parser: argparse.ArgumentParser) -> None:
    """``--trust-remote-code`` and ``--allow-pickle``: a model's code and pickles run only when asked for."""
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (unsafe)")


def add_model_arguments(parser: argparse.ArgumentParser, *, help: str = MODEL_HELP) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--attn`` and the loading permissions: what every command that
    loads a model takes (with :func:`add_color`), for commands with no other model option."""
    add_model(parser, help=help)
    add_dtype(parser)
    add_device(parser)
    add_attn(parser)
    add_loading_permissions(parser)


def add_json(parser: argparse.ArgumentParser, *, help: str = JSON_HELP) -> None:
    """``--json``: one JSON object on standard output instead of the terminal view."""
    parser.add_argument("--json", action="store_true", help=help)


def add_html(parser: argparse.ArgumentParser, *, help: str) -> None:
    """``--html FILE``: also write a self-contained HTML page."""
    parser.add_argument("--html", metavar="FILE", type=output_file, default=None, help=help)


def add_color(parser: argparse.ArgumentParser) -> None:
    """``--color``; :func:`use_color` reads it."""
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="terminal colours (default: auto: when standard output is a terminal and NO_COLOR is "
                        "unset)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``, which every command takes; :func:`show_progress` and :func:`attnlrp.cli.main` read it."""
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no informational messages on standard error (warnings and "
                        "errors are still printed)")


# ------------------------------------------------------------------------------------------------ readers

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
    """``--color always/never``, or with ``auto`` (and for a command without ``--color``) whether standard output
    is a terminal that shows colours: the decision ``to_terminal()`` makes by default
    (:func:`attnlrp.render.resolve_color`)."""
    from ..render.terminal import resolve_color

    return resolve_color({"always": True, "never": False}.get(getattr(args, "color", "auto")))


@dataclass(frozen=True)
class Style:
    """ANSI codes for a command's own terminal text: all empty without colour."""

    bold: str = ""
    dim: str = ""
    red: str = ""  # positive relevance (as in the heatmap), something wrong
    blue: str = ""  # negative relevance
    green: str = ""  # something right
    reset: str = ""


def style(args: argparse.Namespace) -> Style:
    """The :class:`Style` that ``--color`` asks for (:func:`use_color`)."""
    if not use_color(args):
        return Style()
    return Style(bold="\x1b[1m", dim="\x1b[2m", red="\x1b[31m", blue="\x1b[34m", green="\x1b[32m", reset="\x1b[0m")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows a progress bar: on standard error, only when that is a terminal, and not with
    ``--quiet`` (nor a command's ``--no-progress``)."""
    if getattr(args, "quiet", False) or getattr(args, "no_progress", False):
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(args: argparse.Namespace, **kwargs: Any) -> Any:
    """A tqdm bar on standard error (``kwargs``: ``total``, ``desc``, ``unit``…), disabled unless
    :func:`show_progress`; gone from the terminal once closed (unless ``leave=True``), so that only the command's
    output stays."""
    from tqdm import tqdm

    kwargs.setdefault("disable", not show_progress(args))
    kwargs.setdefault("leave", False)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def load_model(args: argparse.Namespace) -> Any:
    """The model the arguments name; a command without ``--device`` or ``--attn`` gets the library's default."""
    from .. import models  # looked up at call time, so tests can substitute ``attnlrp.models.load_model``

    return models.load_model(
        args.model, dtype=args.dtype, device=getattr(args, "device", None),
        attn_implementation=getattr(args, "attn", None), trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )


#: ``--bos``: the ``add_bos`` of ``Explainer`` / ``explain_generation`` / ``attnlrp.patching``
BOS_CHOICES = {"auto": None, "always": True, "never": False}


def token_arg(value: str | None) -> int | str | None:
    """``--target 1234`` means the id 1234; anything else is a token string (kept verbatim, spaces included)."""
    if value is None:
        return None
    return int(value) if value.strip().isdigit() and value == value.strip() else value
