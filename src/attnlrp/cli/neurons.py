"""``attnlrp neurons PROMPT --top K``: the MLP neurons most relevant for the predicted next token."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ExplainError
from ..method_registry import method_names
from .args import (add_color, add_html, add_json, add_model_arguments, add_prompt, add_quiet, load_model, positive_int,
                   read_prompt, style)
from .failures import model_must_run, text_inputs
from .output import report_unruled_operations

NEURON_METHODS = method_names(has_unit_relevance=True)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "neurons",
        help="the MLP neurons most relevant for the predicted next token",
        description="Rank every MLP neuron of the model by its relevance for the predicted next token (summed over "
        "the prompt's tokens), positive relevance first. A neuron is LAYER:NEURON, the input of the layer's MLP "
        "output projection; `attnlrp steer` switches neurons off by the same names.",
    )
    add_prompt(parser)
    parser.add_argument("--top", type=positive_int, default=10, metavar="K", help="how many neurons (default: 10)")
    parser.add_argument("--method", default="attnlrp", choices=NEURON_METHODS, help="attribution method (default: attnlrp)")
    parser.add_argument("--layer", type=int, default=None, metavar="L", help="rank only the neurons of layer L")
    add_json(parser, help='print [{"layer": …, "neuron": …, "relevance": …, "activation": …}, …]')
    add_html(parser, help="write the latent relevance view to FILE")
    add_color(parser)
    add_model_arguments(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import Explainer

    prompt = read_prompt(args)
    loaded = load_model(args)
    explainer = Explainer(loaded.model, loaded.tokenizer, method=args.method, model_name=loaded.source)
    if explainer.head_kind != "causal-lm":
        raise ExplainError(f"{type(loaded.model).__name__} is not a causal language model; `attnlrp neurons` "
                           "explains a predicted next token")
    with model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, prompt)):
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
    from ..render.escape import terminal_text

    target = explanation.target
    where = "the whole model" if args.layer is None else f"layer {args.layer}"
    st = style(args)
    lines = [
        f"predicted next token: {st.bold}{terminal_text(repr(target.token))}{st.reset} (id {target.token_id}, "
        f"logit {explanation.value:+.4f})",
        f"method: {args.method}; the {len(scores)} most relevant MLP neurons of {where} "
        "(relevance summed over the prompt's tokens)",
        "",
        f"{st.bold}{'rank':>4}  {'neuron':>10}  {'relevance':>11}  {'max activation':>14}{st.reset}",
    ]
    for rank, s in enumerate(scores, 1):
        sign = st.red if s.relevance > 0 else st.blue if s.relevance < 0 else ""  # the heatmap's colours
        lines.append(f"{rank:>4}  {f'{s.layer}:{s.neuron}':>10}  {sign}{s.relevance:>+11.4f}{st.reset}"
                     f"  {s.activation:>+14.4f}")
    return "\n".join(lines)
