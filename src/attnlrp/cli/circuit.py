"""``attnlrp circuit CLEAN --corrupted CORRUPTED --target A``: the smallest set of heads and MLPs that recovers the
clean − corrupted gap of ``logit(A) − logit(B)``, its recovery curve against attribution patching's and random
rankings, and the relevance between the kept components."""

from __future__ import annotations

import argparse
from typing import Any

from .args import (add_color, add_html, add_json, add_model_arguments, add_quiet, load_model, non_negative_int,
                   positive_int, style, token_arg)
from .failures import model_must_run, text_inputs
from .output import report_unruled_operations
from .patch import add_pair_arguments, metric_line, pair_request


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "circuit",
        help="the smallest circuit of heads and MLPs that carries a prediction, and its graph",
        description="Rank the attention heads and MLPs (and the input embeddings) by their estimated patching "
        "effect, keep the top N and patch everything else to its corrupted value: the fraction of the clean − "
        "corrupted metric gap that the circuit recovers, as a curve over N, for the method's ranking, attribution "
        "patching's (gradient) and random rankings, the smallest N recovering 80 %, and the relevance flowing "
        "between the kept components.",
    )
    add_pair_arguments(parser)
    parser.add_argument("--level", default="heads,mlps", metavar="LEVELS",
                        help="what the circuit is made of: heads, mlps, neurons (comma-separated; default: heads,mlps)")
    parser.add_argument("--budget", type=non_negative_int, default=None, metavar="N",
                        help="evaluate circuits of at most N components (default: all of them)")
    parser.add_argument("--random", type=non_negative_int, default=5, metavar="R",
                        help="random rankings averaged for the baseline curve (default: 5)")
    parser.add_argument("--max-nodes", type=positive_int, default=30, metavar="M",
                        help="at most M nodes in the graph (default: 30)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="B",
                        help="circuits evaluated per forward pass (default: 64)")
    add_json(parser, help='print {"method", "levels", "metric", "curves", "smallest", "nodes", "edges", …}')
    add_html(parser, help="write the circuit graph and the recovery curves to FILE")
    add_color(parser)
    add_model_arguments(parser)
    add_quiet(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..patching import circuit
    from ..patching.circuits import check_circuit_levels

    request = pair_request(args)
    check_circuit_levels(args.level)  # a usage error before the model loads
    loaded = load_model(args)
    with model_must_run(lambda: loaded.model, text_inputs(loaded.model, loaded.tokenizer, request["clean"])):
        found = report_unruled_operations(lambda: circuit(
            loaded.model, loaded.tokenizer, levels=args.level, budget=args.budget, random_rankings=args.random,
            max_nodes=args.max_nodes, batch_size=args.batch_size, **request))
    if args.html:
        found.save_html(args.html)
    if args.json:
        import json

        print(json.dumps(found.to_dict(), ensure_ascii=False))
        return 0
    print(terminal_view(found, args, loaded.tokenizer))
    if args.html:
        print(f"\nHTML graph: {args.html}")
    return 0


def terminal_view(found: Any, args: argparse.Namespace, tokenizer: Any) -> str:
    """The metric, the smallest N per ranking, the recovery at a few sizes, the kept nodes and the largest edges."""
    st = style(args)
    smallest = found.smallest()
    lines = [metric_line(found.metric, token_arg(args.target), token_arg(args.contrast), tokenizer, st),
             f"circuit of {', '.join(found.levels)} (+ the input embeddings), ranked by {found.method}", "",
             f"{st.bold}smallest N recovering {found.threshold:.0%} of the gap{st.reset}"]
    lines += [f"  {name:<10} {'not reached' if n is None else n}" for name, n in smallest.items()]
    curve = dict(found.curves[found.method])
    marks = {1, 2, 5, 10, 20, 50, 100, 200, max(curve), *(n for n in smallest.values() if n is not None)}
    sizes = sorted(n for n in marks if n in curve)
    lines += ["", f"{st.bold}recovery by circuit size N{st.reset}",
              f"  {'N':>5}  " + "  ".join(f"{name:>10}" for name in found.curves)]
    tables = {name: dict(values) for name, values in found.curves.items()}
    for n in sizes:
        lines.append(f"  {n:>5}  " + "  ".join(f"{tables[name].get(n, float('nan')):>10.3f}" for name in found.curves))
    lines += ["", f"{st.bold}the {len(found.nodes)} kept nodes{st.reset} (estimate)"]
    for node in found.nodes:
        sign = st.red if node.estimate > 0 else st.blue if node.estimate < 0 else ""
        lines.append(f"  {node.name:<8} {sign}{node.estimate:>+10.4f}{st.reset}")
    if found.edges:
        strongest = sorted(found.edges, key=lambda e: -abs(e.value))[:args.max_nodes]
        lines += ["", f"{st.bold}strongest edges{st.reset} (estimated change of the downstream node's contribution "
                  "when the upstream node is patched)"]
        for edge in strongest:
            sign = st.red if edge.value > 0 else st.blue if edge.value < 0 else ""
            lines.append(f"  {found.nodes[edge.source].name:>8} → {found.nodes[edge.target].name:<8} "
                         f"{sign}{edge.value:>+10.4f}{st.reset}")
    return "\n".join(lines)
