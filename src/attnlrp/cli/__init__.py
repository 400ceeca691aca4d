"""Command line: ``attnlrp COMMAND ...``. Thin: parses, calls the library, prints.

Each command is one module of this package with ``register(subparsers)``, which adds its parser and sets ``run=``
(a function of the parsed arguments returning the exit status); :data:`COMMANDS` lists them, in ``--help`` order.
Options several commands share live in :mod:`attnlrp.cli.args`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import audit, concepts, evaluate, explain, neurons, steer

COMMANDS = (explain, audit, concepts, neurons, steer, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlrp", description="Explain transformer predictions with AttnLRP (attention-aware LRP)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one ``error: …`` line on standard error and exit status 2, a model whose
    own forward fails one such line and exit status 1 (:mod:`attnlrp.cli.failures`), Ctrl-C 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a command records as the command line that made its results
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command's own output is the point; no loading bars
    from .failures import ModelForwardError, user_errors

    try:
        return args.run(args)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ModelForwardError as error:  # the model is broken, not the explanation: one line, exit status 1
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
