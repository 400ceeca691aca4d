"""``attnlrp patch CLEAN --corrupted CORRUPTED --target A``: the estimated effect on ``logit(A) − logit(B)`` of
patching each attention head, MLP, neuron and residual-stream position from the corrupted run into the clean one,
and with ``--verify`` how well the estimate agrees with real activation patching."""

from __future__ import annotations

import argparse
from typing import Any

from ..patching.names import DEFAULT_METHOD, LEVELS, METHODS
from .args import (BOS_CHOICES, add_color, add_html, add_json, add_model_arguments, add_quiet, load_model,
                   positive_int, read_prompt, style, token_arg)
from .failures import model_must_run, text_inputs
from .output import report_unruled_operations

ALL_LEVELS = ",".join(LEVELS)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """CLEAN, ``--corrupted``, ``--target``, ``--contrast``, ``--method`` and ``--bos``: what ``patch`` and
    ``circuit`` share."""
    parser.add_argument("prompt", metavar="CLEAN", help="the clean prompt ('-' reads it from standard input)")
    parser.add_argument("--corrupted", required=True, metavar="CORRUPTED",
                        help="the corrupted prompt: as long as CLEAN in tokens (e.g. one name swapped)")
    parser.add_argument("--target", required=True, metavar="A",
                        help="the metric is logit(A) at the last position: a token (a string, kept verbatim with its "
                        "leading space, e.g. ' Mary') or an id")
    parser.add_argument("--contrast", default=None, metavar="B", help="the metric is logit(A) − logit(B)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help="whose gradient weighs the activation differences: relp (CP-LRP's attention with "
                        "AttnLRP's gates), attnlrp, cp-lrp (relevance patching) or gradient (attribution patching, "
                        f"AtP) (default: {DEFAULT_METHOD}; docs/patching.md compares them)")
    parser.add_argument("--bos", choices=tuple(BOS_CHOICES), default="auto",
                        help="start both prompts with the tokenizer's BOS token (as `attnlrp explain --bos`)")


def pair_request(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``patch`` / ``circuit`` that :func:`add_pair_arguments` reads."""
    return {"clean": read_prompt(args), "corrupted": args.corrupted, "target": token_arg(args.target),
            "contrast": token_arg(args.contrast), "method": args.method, "add_bos": BOS_CHOICES[args.bos]}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "patch",
        help="which heads, MLPs, neurons and positions carry a prediction (relevance patching)",
        description="Estimate, for every attention head, MLP, MLP neuron and residual-stream position, how much "
        "the metric logit(A) − logit(B) changes when that component's activation in the CLEAN run is replaced by "
        "its value in the CORRUPTED run (noising), from two forward passes and one backward pass: "
        "(a_corrupted − a_clean) · ĝ with ĝ the gradient under the method's rules. --verify runs real activation "
        "patching and reports the correlation.",
    )
    add_pair_arguments(parser)
    parser.add_argument("--level", default=ALL_LEVELS, metavar="LEVELS",
                        help=f"comma-separated levels (default: {ALL_LEVELS})")
    parser.add_argument("--direction", choices=("noising", "denoising"), default="noising",
                        help="noising (default): the clean run with corrupted values patched in; denoising: the "
                        "corrupted run with clean values patched in")
    parser.add_argument("--verify", action="store_true",
                        help="also run real activation patching (one patched copy per component, batched) and "
                        "report Pearson, Spearman and top-K overlap per level")
    parser.add_argument("--verify-neurons", type=positive_int, default=100, metavar="N",
                        help="with --verify: patch the N neurons with the largest |estimate| and N more at random "
                        "(all neurons would take one forward pass each; default: 100)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="B",
                        help="patched copies per forward pass with --verify (default: 64)")
    parser.add_argument("--top", type=positive_int, default=10, metavar="K",
                        help="components listed, and the k of the top-k overlap (default: 10)")
    add_json(parser, help='print {"metric", "method", "direction", "token_ids", "components", "agreement"}')
    add_html(parser, help="write the patch report (heatmaps per level, estimate against truth) to FILE")
    add_color(parser)
    add_model_arguments(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def neuron_sample(estimates: Any, count: int, seed: int = 0) -> Any:
    """A bool mask over the neurons: the ``count`` largest |estimate| and ``count`` more drawn at random."""
    import torch

    flat = estimates.abs().flatten()
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:count]] = True
    rest = torch.nonzero(~chosen).flatten()
    drawn = rest[torch.randperm(rest.numel(), generator=torch.Generator().manual_seed(seed))[:count]]
    chosen[drawn] = True
    return chosen.reshape(estimates.shape)


def run(args: argparse.Namespace) -> int:
    from ..patching import patch
    from ..patching.sites import check_levels

    request = pair_request(args)
    levels = check_levels(args.level)
    loaded = load_model(args)
    notes = []
    with model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, request["clean"])):
        def work() -> Any:
            result = patch(loaded.model, loaded.tokenizer, levels=levels, direction=args.direction, **request)
            if args.verify:
                components = None
                if "neurons" in levels:
                    components = {"neurons": neuron_sample(result.estimates["neurons"], args.verify_neurons)}
                    notes.append(f"neurons: {int(components['neurons'].sum())} of "
                                 f"{result.estimates['neurons'].numel()} patched (the {args.verify_neurons} with "
                                 f"the largest |estimate| and {args.verify_neurons} at random)")
                result.verify(batch_size=args.batch_size, components=components, top_k=args.top)
            return result

        result = report_unruled_operations(work)
    if args.html:
        result.save_html(args.html, top_k=max(args.top, 20))
    if args.json:
        import json

        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    print(terminal_view(result, args, loaded.tokenizer, notes))
    if args.html:
        print(f"\nHTML report: {args.html}")
    return 0


def metric_line(metric: dict[str, float], target: int | str | None, contrast: int | str | None, tokenizer: Any,
                st: Any) -> str:
    """``metric logit(' Mary') − logit(' John') at the last position: clean +5.287, corrupted −5.047``."""
    from ..render.escape import terminal_text

    def name(token: int | str | None) -> str:
        text = tokenizer.decode([token]) if isinstance(token, int) else token
        return terminal_text(repr(text))

    what = f"logit({name(target)})" + ("" if contrast is None else f" − logit({name(contrast)})")
    return (f"metric {what} at the last position: clean {st.bold}{metric['clean']:+.4f}{st.reset}, "
            f"corrupted {st.bold}{metric['corrupted']:+.4f}{st.reset}")


def terminal_view(result: Any, args: argparse.Namespace, tokenizer: Any, notes: list[str]) -> str:
    """The metric on both prompts, the top-K components (with the truth when verified), the agreement per level."""
    st = style(args)
    verified = result.verification is not None
    lines = [metric_line(result.metric, token_arg(args.target), token_arg(args.contrast), tokenizer, st),
             f"method {result.method}, {result.direction}; estimated change of the metric when one component is "
             "patched" + (" (truth: real activation patching)" if verified else ""), "",
             f"{st.bold}{'rank':>4}  {'component':<10}  {'estimate':>10}" + (f"  {'truth':>10}" if verified else "")
             + st.reset]
    for rank, c in enumerate(result.components()[:args.top], 1):
        sign = st.red if c.estimate > 0 else st.blue if c.estimate < 0 else ""
        truth = "" if not verified else f"  {'—':>10}" if c.truth is None else f"  {c.truth:>+10.4f}"
        lines.append(f"{rank:>4}  {c.name:<10}  {sign}{c.estimate:>+10.4f}{st.reset}{truth}")
    if verified:
        lines += ["", f"{st.bold}agreement with real activation patching{st.reset}",
                  f"{'level':<9}  {'Pearson':>8}  {'Spearman':>8}  {'top-k overlap':>13}  components"]
        for level, a in result.verification.agreement.items():
            lines.append(f"{level:<9}  {a.pearson:>8.3f}  {a.spearman:>8.3f}  {a.top_k_overlap:>9.2f} (k={a.k})"
                         f"  {a.n}")
        lines += [f"{st.dim}{note}{st.reset}" for note in notes]
    return "\n".join(lines)
