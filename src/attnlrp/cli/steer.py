"""``attnlrp steer PROMPT --off L:N … --scale L:N=F … --set L:N=V …``: the generation before and after."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import (add_color, add_json, add_model_arguments, add_prompt, add_quiet, load_model, non_negative_int,
                   read_prompt, style)
from .failures import model_must_run, text_inputs


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "steer",
        help="switch MLP neurons off, scale or set them, and compare the generation before and after",
        description="Run PROMPT with and without changed MLP neurons (LAYER:NEURON, as `attnlrp neurons` lists "
        "them): the predicted next token, the logit and log-probability of the originally predicted token, and a "
        "greedy continuation each time. Several neurons may follow one flag: --off 3:17 12:5.",
    )
    add_prompt(parser, verb="continue")
    parser.add_argument("--off", nargs="+", action="extend", default=[], metavar="L:N", help="set these neurons to 0")
    parser.add_argument("--scale", nargs="+", action="extend", default=[], metavar="L:N=F",
                        help="multiply these neurons by F")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="L:N=V", dest="set_to",
                        help="set these neurons to V")
    parser.add_argument("--generate", type=non_negative_int, default=20, metavar="N",
                        help="greedy tokens to generate before and after (default: 20; 0: none)")
    add_json(parser, help='print {"before": {...}, "after": {...}} with the next token, logit, log-probability '
             "and generated text")
    add_color(parser)
    add_model_arguments(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..latent.steering import SteeringError, compare, parse_neuron, parse_neuron_value, steer

    if not (args.off or args.scale or args.set_to):
        raise SteeringError("no neuron given: name at least one with --off L:N, --scale L:N=F or --set L:N=V "
                            "(`attnlrp neurons PROMPT` lists the relevant ones)")
    off = [parse_neuron(text) for text in args.off]
    scale = _mapping([parse_neuron_value(text) for text in args.scale], "--scale")
    set_to = _mapping([parse_neuron_value(text) for text in args.set_to], "--set")
    prompt = read_prompt(args)
    loaded = load_model(args)
    with model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, prompt)):
        steering = steer(loaded.model, off=off, scale=scale, set=set_to)
        result = compare(loaded.model, loaded.tokenizer, prompt, steering, max_new_tokens=args.generate)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    print(_view(result, args))
    return 0


def _mapping(pairs: list[tuple[tuple[int, int], float]], flag: str) -> dict[tuple[int, int], float]:
    """Pairs to a dict; a neuron named twice in one flag is an error rather than a silent overwrite."""
    from ..latent.steering import SteeringError

    out: dict[tuple[int, int], float] = {}
    for neuron, value in pairs:
        if neuron in out:
            raise SteeringError(f"neuron {neuron[0]}:{neuron[1]} is given twice in {flag}; give each neuron once")
        out[neuron] = value
    return out


def _view(result: Any, args: argparse.Namespace) -> str:
    """Side by side: next token, the original token's logit and log-probability; then both generations."""
    from ..render.escape import terminal_text

    s = style(args)
    bold, dim, reset = s.bold, s.dim, s.reset
    before, after = result.before, result.after
    reference = terminal_text(repr(result.reference_token))
    rows = [
        ("next token", f"{terminal_text(repr(before.token))} ({before.token_id})",
         f"{terminal_text(repr(after.token))} ({after.token_id})"),
        (f"logit of {reference}", f"{before.logit:+.4f}", f"{after.logit:+.4f}"),
        (f"log-prob of {reference}", f"{before.log_prob:+.4f}", f"{after.log_prob:+.4f}"),
    ]
    width = max(len(r[0]) for r in rows)
    column = max(len(r[1]) for r in rows) + 2
    lines = [f"steering: {', '.join(e.describe() for e in result.edits)}", "",
             f"{'':<{width}}  {bold}{'before':<{column}}{'after'}{reset}"]
    lines += [f"{label:<{width}}  {b:<{column}}{a}" for label, b, a in rows]
    if before.generated_ids or after.generated_ids:
        prompt = terminal_text(result.prompt)
        lines += ["", f"{bold}before:{reset} {dim}{prompt}{reset}{terminal_text(before.generated)}",
                  f"{bold}after: {reset} {dim}{prompt}{reset}{terminal_text(after.generated)}"]
    return "\n".join(lines)
