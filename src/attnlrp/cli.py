"""Command line: ``attnlrp explain PROMPT [...]``. Thin: parses, calls the library, prints."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from typing import Any, Sequence

from .cli_output import report_unruled_operations
from .engine import METHODS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlrp", description="Explain transformer predictions with AttnLRP (attention-aware LRP)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser(
        "explain",
        help="relevance of each prompt token for a prediction",
        description="Explain the model's next-token prediction (or a given target) for PROMPT.",
    )
    explain.add_argument("prompt", help="the text to explain ('-' reads it from standard input)")
    explain.add_argument(
        "--model", default=None,
        help="a local folder, a .gguf file, a hub id, or 'smollm2' / 'minilm' (default: embedded SmolLM2-135M-Instruct)",
    )
    explain.add_argument("--method", default="attnlrp", choices=METHODS, help="attribution method (default: attnlrp)")
    explain.add_argument("--target", default=None, help="explain this token (a string or an id) instead of the prediction")
    explain.add_argument("--contrast", default=None, help="explain logit(target) minus logit(CONTRAST)")
    explain.add_argument("--position", type=int, default=None, help="explain the output at this position (default: last)")
    explain.add_argument("--html", metavar="FILE", default=None, help="write an HTML heatmap to FILE")
    explain.add_argument("--json", action="store_true", help="print one JSON object instead of the terminal view")
    explain.add_argument(
        "--generate", type=int, default=None, metavar="N",
        help="generate N tokens (greedy) and explain each of them and the whole answer instead of the next token",
    )
    explain.add_argument(
        "--row-batch", default="auto", metavar="auto|B",
        help="with --generate: generated tokens explained per forward + backward pass (default: auto: 1 on a "
        "CPU; on a GPU as many as fit in half its free memory, at most 64; the relevance is the same)",
    )
    explain.add_argument("--top", type=int, default=10, help="tokens in the ranking (default: 10)")
    explain.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    explain.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")
    explain.add_argument("--strict", action="store_true", help="fail if any non-linear operation runs without a rule")
    explain.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                         help="attention implementation (default: transformers' choice, SDPA where available)")
    explain.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="terminal colours")
    explain.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    explain.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (unsafe)")
    audit = commands.add_parser(
        "audit",
        help="which rule covers which operation of a model, and the relevance ledger",
        description="Run one explained pass on a sample prompt and report the rules applied, any non-linear "
        "operation without a rule, and the ledger. Exit status 1 if something is not covered.",
    )
    audit.add_argument("model", nargs="?", default=None, help="as for explain --model (default: embedded SmolLM2)")
    audit.add_argument("--prompt", default=AUDIT_PROMPT, help="sample input (default: a short English sentence)")
    audit.add_argument("--method", default="attnlrp", choices=("attnlrp", "cp-lrp"), help="rules to audit")
    audit.add_argument("--json", action="store_true", help="print one JSON object")
    audit.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    audit.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")
    audit.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                       help="attention implementation (default: transformers' choice, SDPA where available)")
    audit.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    audit.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (unsafe)")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(commands)
    return parser


# Further subcommands, one module each: ``register(subparsers)`` adds its parser and sets ``run=`` (a function of
# the parsed arguments returning the exit status) with ``set_defaults``.
COMMAND_MODULES: tuple[str, ...] = ("cli_concepts", "cli_neurons", "cli_steer", "cli_evaluate")


AUDIT_PROMPT = "The quick brown fox jumps over the lazy dog because it"


def _audit_explanation(loaded, args: argparse.Namespace):
    """One explained pass on a sample input; any output will do for an audit."""
    from .explain import Explainer

    if type(loaded.model).__name__.endswith("ForImageClassification"):
        import torch

        from .vision import ImageExplainer

        explainer = ImageExplainer(loaded.model, method=args.method)
        size = getattr(loaded.model.config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else size
        generator = torch.Generator().manual_seed(0)  # a sample image of noise: the audit needs no real picture
        dtype = next(loaded.model.parameters()).dtype
        return explainer(torch.randn(explainer.channels, height, width, generator=generator).to(dtype))
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, model_name=loaded.source)
    # a masked LM need not contain a mask token; a model without a head explains its first output's first row
    position = -1 if explainer.head_kind in ("causal-lm", "masked-lm", "seq2seq") else None
    target = None
    if explainer.head_kind == "custom":
        target = lambda output: output[0][:, 0].sum(-1)  # noqa: E731
    return explainer.explain(args.prompt, position=position, target=target)


def _audit(args: argparse.Namespace) -> int:
    from .models import load_model

    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn,
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explanation = _audit_explanation(loaded, args)
    ledger = explanation.ledger
    ok = not explanation.unhandled and ledger.balanced()
    if args.json:
        print(json.dumps({
            "model": loaded.source, "method": args.method, "covered": explanation.covered,
            "unhandled": explanation.unhandled, "ledger": ledger.to_dict(), "balanced": ledger.balanced(),
        }, ensure_ascii=False))
        return 0 if ok else 1
    print(f"model: {loaded.source}\nmethod: {args.method}\n\ncovered operations:")
    for row in explanation.covered:
        print(f"  {row['count']:6d} x  {row['operation']:<40} {row['rule']}")
    print("\nwithout a rule:")
    for row in explanation.unhandled:
        print(f"  {row['count']:6d} x  {row['operation']:<20} in {row['module']} ({row['module_type']})")
    if not explanation.unhandled:
        print("  none: every non-linear operation had a rule")
    print(f"\nledger: input {ledger.input:+.6f} + absorbed {ledger.absorbed:+.6f} = value {ledger.value:+.6f} "
          f"(residual {ledger.residual:+.2e}, {'balanced' if ledger.balanced() else 'NOT balanced'})")
    for site, amount in sorted(ledger.by_site.items()):
        print(f"  absorbed by {site}: {amount:+.6f}")
    return 0 if ok else 1


def _token_arg(value: str | None) -> int | str | None:
    """``--target 1234`` means the id 1234; anything else is a token string (kept verbatim, spaces included)."""
    if value is None:
        return None
    return int(value) if value.strip().isdigit() and value == value.strip() else value


def _explain(args: argparse.Namespace) -> int:
    from .explain import Explainer
    from .models import load_model

    if args.row_batch != "auto":  # checked before any weight is read
        if args.generate is None:
            from .explain import ExplainError

            raise ExplainError("--row-batch only applies with --generate N")
        args.row_batch = _positive_int(args.row_batch, "--row-batch")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    loaded = load_model(
        args.model, dtype=args.dtype, device=args.device, attn_implementation=args.attn,
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
    )
    if args.generate is not None:
        return _explain_generation(args, prompt, loaded)
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, strict=args.strict, model_name=loaded.source)
    explanation = report_unruled_operations(lambda: explainer.explain(
        prompt, target=_token_arg(args.target), contrast=_token_arg(args.contrast), position=args.position
    ))
    return _emit(args, explanation, top_k=args.top, html_label="HTML heatmap")


def _emit(args: argparse.Namespace, explanation: Any, *, top_k: int, html_label: str) -> int:
    """Write the HTML file if asked, then JSON or the terminal view on standard output."""
    from .render import should_color

    if args.html:
        explanation.save_html(args.html)
    if args.json:
        print(explanation.to_json())
        return 0
    color = {"always": True, "never": False}.get(args.color, should_color(sys.stdout))
    print(explanation.to_terminal(color=color, top_k=top_k))
    if args.html:
        print(f"\n{html_label}: {args.html}")
    return 0


def _positive_int(text: str, flag: str) -> int:
    from .explain import ExplainError

    if not text.strip().isdigit() or int(text) < 1:
        raise ExplainError(f"{flag} takes 'auto' or a positive integer, got {text!r}")
    return int(text)


def _explain_generation(args: argparse.Namespace, prompt: str, loaded) -> int:
    """``explain --generate N``: the answer, each generated token's most relevant earlier tokens, the whole answer."""
    from .explain import ExplainError
    from .generation import explain_generation

    given = [flag for flag, value in (("--target", args.target), ("--contrast", args.contrast),
                                      ("--position", args.position)) if value is not None]
    if given:
        raise ExplainError(f"{', '.join(given)} cannot be combined with --generate (it explains every generated token)")
    if args.generate < 1:
        raise ExplainError(f"--generate takes a positive number of tokens, got {args.generate}")
    explanation = report_unruled_operations(lambda: explain_generation(
        loaded.model, loaded.tokenizer, prompt, max_new_tokens=args.generate, method=args.method,
        strict=args.strict, model_name=loaded.source, row_batch=args.row_batch,
    ))
    return _emit(args, explanation, top_k=3, html_label="HTML view")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # what a command records as the command line that made its results
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command's own output is the point; no loading bars
    from .audit import UnhandledOperationError
    from .explain import ExplainError
    from .models import ModelLoadError

    try:
        if args.command == "explain":
            return _explain(args)
        if args.command == "audit":
            return _audit(args)
        if getattr(args, "run", None) is not None:
            return args.run(args)
    except (ExplainError, ModelLoadError, UnhandledOperationError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
