"""``attnlrp explain PROMPT``: the relevance of each prompt token for a prediction, or with ``--generate N`` for
each generated token and the whole answer."""

from __future__ import annotations

import argparse
from typing import Any

from ..method_registry import method_names
from .args import (BOS_CHOICES, add_attn, add_color, add_device, add_dtype, add_html, add_json, add_loading_permissions, add_model,
                   add_prompt, add_quiet, auto_or_positive_int, load_model, positive_int, progress_bar, read_prompt,
                   token_arg, use_color)
from .failures import model_must_run, text_inputs
from .output import report_unruled_operations

def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="relevance of each prompt token for a prediction",
        description="Explain the model's next-token prediction (or a given target) for PROMPT.",
    )
    add_prompt(parser)
    add_model(parser, help="a local folder, a .gguf file, a hub id, or 'smollm2' / 'minilm' "
              "(default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--method", default="attnlrp", choices=method_names(), help="attribution method (default: attnlrp)")
    parser.add_argument("--target", default=None, help="explain this token (a string or an id) instead of the prediction")
    parser.add_argument("--contrast", default=None, help="explain logit(target) minus logit(CONTRAST)")
    parser.add_argument("--position", type=int, default=None, help="explain the output at this position (default: last)")
    add_html(parser, help="write an HTML heatmap to FILE")
    add_json(parser)
    parser.add_argument(
        "--generate", type=positive_int, default=None, metavar="N",
        help="generate N tokens (greedy) and explain each of them and the whole answer instead of the next token",
    )
    parser.add_argument(
        "--row-batch", type=auto_or_positive_int, default="auto", metavar="auto|B",
        help="with --generate: generated tokens explained per forward + backward pass (default: auto: 1 on a "
        "CPU; on a GPU as many as fit in half its free memory, at most 64; the relevance is the same)",
    )
    parser.add_argument("--top", type=positive_int, default=10, metavar="K", help="tokens in the ranking (default: 10)")
    parser.add_argument(
        "--bos", choices=tuple(BOS_CHOICES), default="auto",
        help="start the prompt with the tokenizer's BOS token: auto (default: yes for decoder LMs whose tokenizer "
        "defines one, which then holds the attention sink's relevance; shown, left out of the ranking), always, never",
    )
    add_dtype(parser)
    add_device(parser)
    parser.add_argument("--strict", action="store_true", help="fail if any non-linear operation runs without a rule")
    add_attn(parser)
    add_color(parser)
    add_loading_permissions(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import Explainer

    if args.row_batch != "auto" and args.generate is None:  # checked before any weight is read
        from ..errors import ExplainError

        raise ExplainError("--row-batch only applies with --generate N")
    prompt = read_prompt(args)
    loaded = load_model(args)
    if args.generate is not None:
        return _explain_generation(args, prompt, loaded)
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, strict=args.strict, model_name=loaded.source,
                          add_bos=BOS_CHOICES[args.bos])
    with model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, prompt)):
        explanation = report_unruled_operations(lambda: explainer.explain(
            prompt, target=token_arg(args.target), contrast=token_arg(args.contrast), position=args.position
        ))
    return _emit(args, explanation, top_k=args.top, html_label="HTML heatmap")


def _emit(args: argparse.Namespace, explanation: Any, *, top_k: int, html_label: str) -> int:
    """Write the HTML file if asked, then JSON or the terminal view on standard output."""
    if args.html:
        explanation.save_html(args.html)
    if args.json:
        print(explanation.to_json())
        return 0
    print(explanation.to_terminal(color=use_color(args), top_k=top_k))
    if args.html:
        print(f"\n{html_label}: {args.html}")
    return 0


def _explain_generation(args: argparse.Namespace, prompt: str, loaded: Any) -> int:
    """``explain --generate N``: the answer, each generated token's most relevant earlier tokens, the whole answer."""
    from ..errors import ExplainError
    from ..generation import explain_generation

    given = [flag for flag, value in (("--target", args.target), ("--contrast", args.contrast),
                                      ("--position", args.position)) if value is not None]
    if given:
        raise ExplainError(f"{', '.join(given)} cannot be combined with --generate (it explains every generated token)")
    # on standard error while the tokens are explained (one explained pass each, or per --row-batch)
    with progress_bar(args, total=args.generate, desc="explaining the generated tokens", unit="token") as bar, \
            model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, prompt)):
        explanation = report_unruled_operations(lambda: explain_generation(
            loaded.model, loaded.tokenizer, prompt, max_new_tokens=args.generate, method=args.method,
            strict=args.strict, model_name=loaded.source, row_batch=args.row_batch, add_bos=BOS_CHOICES[args.bos],
            progress=None if bar.disable else lambda done, total: _advance(bar, done, total),
        ))
    return _emit(args, explanation, top_k=3, html_label="HTML view")


def _advance(bar: Any, done: int, total: int) -> None:
    """Show ``done`` of ``total`` generated tokens explained (the answer may stop before --generate tokens)."""
    bar.total = total
    bar.n = done
    bar.refresh()
