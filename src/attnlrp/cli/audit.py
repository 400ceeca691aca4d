"""``attnlrp audit [MODEL]``: which rule covers which operation of a model, and the relevance ledger; exit status 1
when an operation has no rule or the ledger does not balance."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from ..core import method_names
from .args import add_attn, add_device, add_dtype, add_json, add_loading_permissions, load_model

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
    add_loading_permissions(parser)
    parser.set_defaults(run=run)


def _audit_explanation(loaded: Any, args: argparse.Namespace) -> Any:
    """One explained pass on a sample input; any output will do for an audit."""
    from ..explain import Explainer

    if type(loaded.model).__name__.endswith("ForImageClassification"):
        import torch

        from ..vision import ImageExplainer

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


def run(args: argparse.Namespace) -> int:
    from ..errors import UnruledOperationWarning

    loaded = load_model(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnruledOperationWarning)  # the report below lists those operations
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
