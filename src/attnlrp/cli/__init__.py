"""Command line: ``attnlrp COMMAND ...``. Thin: parses, calls the library, prints.

Each command is one module of this package with ``register(subparsers)``, which adds its parser and sets ``run=``
(a function of the parsed arguments returning the exit status); :data:`COMMANDS` lists them, in ``--help`` order.
Options several commands share live in :mod:`attnlrp.cli.args`.

Building the parser imports nothing heavy: a command imports torch, transformers and the rest of attnlrp inside
its ``run``, so ``attnlrp --help`` and ``attnlrp --version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from . import audit, circuit, concepts, evaluate, explain, neurons, patch, serve, steer

#: every subcommand, in the order of ``attnlrp --help``: a module with ``register(subparsers)`` each
COMMANDS = (explain, audit, concepts, neurons, steer, patch, circuit, serve, evaluate)


def package_version() -> str:
    """The installed distribution's version, or ``attnlrp.__version__`` when attnlrp runs from a source tree that
    is not installed (neither imports torch)."""
    from importlib import metadata

    try:
        return metadata.version("attnlrp")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked (argparse's own action needs it to build the parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"attnlrp {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlrp", description="Explain transformer predictions with AttnLRP (attention-aware LRP).",
        epilog="Exit status: 0 done; 2 a usage error, found before any work (a bad option or value, an input "
        "or a model that cannot be used as named); 1 a failure during the work (the model's own forward fails, "
        "an operation without a rule under --strict, a file that cannot be read or written; audit: something "
        "is not covered); 130 interrupted.",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status.

    * 2, a usage error, found before any work: argparse's (an unknown option, a value out of range such as
      ``--top 0``: the usage and its ``error:`` line, raised as ``SystemExit(2)``), or a request that the library
      refuses (:func:`~attnlrp.cli.failures.usage_errors`: an empty prompt, a target outside the vocabulary, a
      model or device that cannot be loaded): one ``error: …`` line on standard error;
    * 1, a failure during the work (:func:`~attnlrp.cli.failures.runtime_errors`: the model's own forward fails,
      an operation without a rule under ``--strict``, a file that cannot be read or written): one ``error: …``
      line; ``audit`` also returns 1 when something is not covered; a bug in attnlrp keeps its traceback;
    * 130 on Ctrl-C, 0 otherwise.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what a command records as the command line that made its results
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command's own output is the point; no loading bars
    verbosity = transformers_logging.get_verbosity()
    if getattr(args, "quiet", False):  # a command of a plug-in may not have --quiet
        transformers_logging.set_verbosity_error()
    from .failures import runtime_errors, usage_errors

    try:
        return args.run(args)
    except usage_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except runtime_errors() as error:  # e.g. the model is broken, not the explanation: one line, exit status 1
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        transformers_logging.set_verbosity(verbosity)
