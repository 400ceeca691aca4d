"""``attnlrp neurons PROMPT --top K``: the MLP neurons most relevant for the predicted next token."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import ExplainError

NEURON_METHODS = ("attnlrp", "cp-lrp", "input-x-gradient")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options shared by ``neurons`` and ``steer`` (as for ``explain``)."""
    parser.add_argument(
        "--model", default=None,
        help="a local folder, a .gguf file, a hub id, or 'smollm2' (default: embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code to run")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pickle checkpoints (unsafe)")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "neurons",
        help="the MLP neurons most relevant for the predicted next token",
        description="Rank every MLP neuron of the model by its relevance for the predicted next token (summed over "
        "the prompt's tokens), positive relevance first. A neuron is LAYER:NEURON, the input of the layer's MLP "
        "output projection; `attnlrp steer` switches neurons off by the same names.",
    )
    parser.add_argument("prompt", help="the text to explain ('-' reads it from standard input)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="how many neurons (default: 10)")
    parser.add_argument("--method", default="attnlrp", choices=NEURON_METHODS, help="attribution method (default: attnlrp)")
    parser.add_argument("--layer", type=int, default=None, metavar="L", help="rank only the neurons of layer L")
    parser.add_argument("--json", action="store_true",
                        help='print [{"layer": …, "neuron": …, "relevance": …, "activation": …}, …]')
    parser.add_argument("--html", metavar="FILE", default=None, help="write the latent relevance view to FILE")
    add_model_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .cli_output import report_unruled_operations
    from .explain import Explainer
    from .models import load_model

    if args.top < 1:
        raise ExplainError(f"--top takes a positive number of neurons, got {args.top}")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                        allow_pickle=args.allow_pickle)
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, model_name=loaded.source)
    if explainer.head_kind != "causal-lm":
        raise ExplainError(f"{type(loaded.model).__name__} is not a causal language model; `attnlrp neurons` "
                           "explains a predicted next token")
    explanation = report_unruled_operations(lambda: explainer.explain(prompt, latents=True))
    latents = explanation.latents
    scores = latents.top_neurons(args.top, layer=args.layer, order="positive")
    if args.html:
        latents.save_html(args.html, top_k=args.top)
    if args.json:
        print(json.dumps([s.to_dict() for s in scores], ensure_ascii=False))
        return 0
    print(_table(explanation, scores, args))
    if args.html:
        print(f"\nHTML view: {args.html}")
    return 0


def _table(explanation: Any, scores: list, args: argparse.Namespace) -> str:
    """The predicted token, then one line per neuron: rank, layer:neuron, relevance, largest activation."""
    from .render.escape import terminal_text

    target = explanation.target
    where = "the whole model" if args.layer is None else f"layer {args.layer}"
    lines = [
        f"predicted next token: {terminal_text(repr(target.token))} (id {target.token_id}, logit {explanation.value:+.4f})",
        f"method: {args.method}; the {len(scores)} most relevant MLP neurons of {where} "
        "(relevance summed over the prompt's tokens)",
        "",
        f"{'rank':>4}  {'neuron':>10}  {'relevance':>11}  {'max activation':>14}",
    ]
    for rank, s in enumerate(scores, 1):
        lines.append(f"{rank:>4}  {f'{s.layer}:{s.neuron}':>10}  {s.relevance:>+11.4f}  {s.activation:>+14.4f}")
    return "\n".join(lines)
