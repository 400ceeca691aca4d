"""``attnlrp audit [MODEL]``: which rule covers which operation of a model, and the relevance ledger; exit status 1
when an operation has no rule or the ledger does not balance."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from ..method_registry import method_names
from .args import (add_attn, add_color, add_device, add_dtype, add_json, add_loading_permissions, add_quiet, load_model,
                   style)
from .failures import Inputs, image_inputs, model_must_run, text_inputs

AUDIT_PROMPT = "The quick brown fox jumps over the lazy dog because it"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="which rule covers which operation of a model, and the relevance ledger",
        description="Run one explained pass on a sample prompt and report the rules applied, any non-linear "
        "operation without a rule, and the ledger. Exit status 1 if something is not covered.",
    )
    parser.add_argument("model", nargs="?", default=None, help="as for explain --model (default: embedded SmolLM2)")
    parser.add_argument("--prompt", default=AUDIT_PROMPT, help="sample input (default: a short English sentence)")
    parser.add_argument("--method", default="attnlrp", choices=method_names(uses_rules=True), help="rules to audit")
    add_json(parser, help="print one JSON object")
    add_dtype(parser)
    add_device(parser)
    add_attn(parser)
    add_color(parser)
    add_loading_permissions(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def _is_image_model(loaded: Any) -> bool:
    return type(loaded.model).__name__.endswith("ForImageClassification")


def _sample_image(loaded: Any) -> Any:
    """A sample image of seeded noise in the model's size and dtype: the audit needs no real picture."""
    import torch

    config = loaded.model.config
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    generator = torch.Generator().manual_seed(0)
    dtype = next(loaded.model.parameters()).dtype
    return torch.randn(int(getattr(config, "num_channels", 3)), height, width, generator=generator).to(dtype)


def _sample_inputs(loaded: Any, args: argparse.Namespace) -> Inputs:
    """The audited pass's sample input, for the model's plain forward (:mod:`attnlrp.cli.failures`)."""
    if _is_image_model(loaded):
        return image_inputs(loaded.model, _sample_image(loaded))
    return text_inputs(loaded.model, loaded.tokenizer, args.prompt)


def _audit_explanation(loaded: Any, args: argparse.Namespace) -> Any:
    """One explained pass on a sample input; any output will do for an audit."""
    from ..explain import Explainer

    if _is_image_model(loaded):
        from ..vision import ImageExplainer

        return ImageExplainer(loaded.model, method=args.method)(_sample_image(loaded))
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, model_name=loaded.source)
    # a masked LM need not contain a mask token; a model without a head explains its first output's first row
    position = -1 if explainer.head_kind in ("causal-lm", "masked-lm", "seq2seq") else None
    target = None
    if explainer.head_kind == "custom":
        target = lambda output: output[0][:, 0].sum(-1)  # noqa: E731
    return explainer.explain(args.prompt, position=position, target=target)


def run(args: argparse.Namespace) -> int:
    from ..errors import UnruledOperationWarning

    from ..core.localise import BlockBalances

    loaded = load_model(args)
    with model_must_run(lambda: loaded.model, _sample_inputs(loaded, args)), warnings.catch_warnings(), \
            BlockBalances(loaded.model) as balances:
        warnings.simplefilter("ignore", UnruledOperationWarning)  # the report below lists those operations
        explanation = _audit_explanation(loaded, args)
    ledger = explanation.ledger
    ok = not explanation.unhandled and ledger.balanced()
    leak = None if ledger.balanced() else balances.first_leak()
    if args.json:
        print(json.dumps({
            "model": loaded.source, "method": args.method, "covered": explanation.covered,
            "unhandled": explanation.unhandled, "ledger": ledger.to_dict(), "balanced": ledger.balanced(),
            "leak": None if leak is None else leak.to_dict(),
            "blocks": [b.to_dict() for b in balances.balances if b.complete],
        }, ensure_ascii=False))
        return 0 if ok else 1
    s = style(args)
    print(f"model: {loaded.source}\nmethod: {args.method}\n\n{s.bold}covered operations:{s.reset}")
    for row in explanation.covered:
        print(f"  {row['count']:6d} x  {row['operation']:<40} {row['rule']}")
    print(f"\n{s.bold}without a rule:{s.reset}")
    for row in explanation.unhandled:
        print(f"  {s.red}{row['count']:6d} x  {row['operation']:<20} in {row['module']} ({row['module_type']})"
              f"{s.reset}")
    if not explanation.unhandled:
        print(f"  {s.green}none{s.reset}: every non-linear operation had a rule")
    verdict = f"{s.green}balanced{s.reset}" if ledger.balanced() else f"{s.red}NOT balanced{s.reset}"
    print(f"\n{s.bold}ledger:{s.reset} input {ledger.input:+.6f} + absorbed {ledger.absorbed:+.6f} = value "
          f"{ledger.value:+.6f} (residual {ledger.residual:+.2e}, {verdict})")
    for site, amount in sorted(ledger.by_site.items()):
        print(f"  absorbed by {site}: {amount:+.6f}")
    if not ledger.balanced():
        print(_where(leak, balances))
    return 0 if ok else 1


def _where(leak: Any, balances: Any) -> str:
    """Where relevance first stops adding up on its way back from the output, block by block."""
    if leak is None:
        watched = sum(b.complete for b in balances.balances)
        if not watched:
            return "\nwhere: no transformer layer could be watched block by block for this model"
        return (f"\nwhere: every one of the {watched} watched blocks (layers and their children) conserves; the "
                "leak is outside them (embeddings, final norm or head)")
    return (f"\nwhere: relevance first stops adding up in {leak.name}: output {leak.output:+.6f} = input "
            f"{leak.input:+.6f} + absorbed {leak.absorbed:+.6f} misses by {leak.leak:+.2e}")
