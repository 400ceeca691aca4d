"""``attnlrp concepts build …`` and ``attnlrp concepts show LAYER NEURON …``: the concept atlas on the command line.

Thin: parses, calls :mod:`attnlrp.concepts`, prints. Errors are :class:`AtlasError` (an ``ExplainError``), which
:func:`attnlrp.cli.main` prints as one line with exit status 2 (a usage error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..method_registry import method_names
from .args import (MODEL_HELP, add_attn, add_color, add_device, add_dtype, add_html, add_json, add_loading_permissions,
                   add_model, add_quiet, input_file, load_model, positive_int, show_progress, use_color)
from .failures import Inputs, model_must_run, text_inputs


def register(subparsers: Any) -> None:
    concepts = subparsers.add_parser(
        "concepts", help="concept atlas: the corpus windows that excite each MLP neuron (ActMax) or make it "
        "relevant (RelMax)",
        description="Build and browse a concept atlas: for each MLP neuron of chosen layers, the top-k corpus "
        "windows by activation (ActMax) and by AttnLRP relevance for the model's own next-token prediction "
        "(RelMax), stored in one SQLite file.",
    )
    commands = concepts.add_subparsers(dest="concepts_command", required=True)

    build = commands.add_parser(
        "build", help="build or resume an atlas",
        description="Build the atlas, or resume an interrupted build (same command again): chunks are committed "
        "atomically, so Ctrl-C or a kill loses at most the current chunk. Under torchrun (torchrun "
        "--nproc_per_node N -m attnlrp.cli concepts build …) the chunks are shared among the processes and process "
        "0 writes the one atlas, the same one a single process builds (docs/distributed.md).",
    )
    add_model(build, help=f"{MODEL_HELP}; also names the default --db")
    build.add_argument("--corpus", type=input_file, default=None, metavar="FILE",
                       help="UTF-8 text file, one document per paragraph (default: the Python documentation "
                       "text CPython ships, pydoc_data.topics)")
    build.add_argument("--layers", default=None,
                       help="comma-separated layer indices or 'all' (default: three at 1/4, 1/2 and 3/4 depth)")
    build.add_argument("--top-k", type=positive_int, default=10, help="samples per neuron and ranking (default: 10)")
    build.add_argument("--window", type=positive_int, default=48, help="text tokens per window (default: 48)")
    build.add_argument("--limit", type=positive_int, default=None, metavar="N", help="stop after the first N windows")
    build.add_argument("--db", default=None, metavar="PATH",
                       help="the atlas file (default: $ATTNLRP_CACHE or ~/.cache/attnlrp, concepts-<model>.sqlite)")
    build.add_argument("--batch-size", type=positive_int, default=8, help="windows per explained pass (default: 8)")
    build.add_argument("--chunk-size", type=positive_int, default=64,
                       help="windows per committed chunk, a multiple of --batch-size (default: 64)")
    build.add_argument("--method", default="attnlrp", choices=method_names(has_unit_relevance=True),
                       help="relevance for RelMax (default: attnlrp)")
    add_dtype(build)
    add_device(build)
    add_attn(build)
    add_color(build)
    build.add_argument("--no-progress", action="store_true", help="no progress bar (as --quiet)")
    add_loading_permissions(build)
    add_quiet(build)
    build.set_defaults(run=_build)

    show = commands.add_parser(
        "show", help="a neuron's reference samples (terminal, HTML, JSON)",
        description="Show a neuron's reference samples with its activation or relevance at every token.",
    )
    show.add_argument("layer", type=int, help="layer index (one of the atlas's layers)")
    show.add_argument("neuron", type=int, help="neuron index within the layer's MLP")
    show.add_argument("--db", default=None, metavar="PATH", help="the atlas file (default: that of --model)")
    add_model(show, help="only names the default --db (as for build)")
    show.add_argument("--by", choices=("actmax", "relmax", "both"), default="both", help="ranking (default: both)")
    show.add_argument("--top", type=positive_int, default=None, metavar="N", help="show only the first N samples")
    add_html(show, help="write an HTML page to FILE")
    add_json(show)
    add_color(show)
    add_quiet(show)
    show.set_defaults(run=_show)


def _layers(value: str | None) -> list[int] | str | None:
    from ..concepts import AtlasError

    if value is None or value.strip().lower() == "all":
        return value if value is None else "all"
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise AtlasError(f"--layers takes comma-separated layer indices or 'all', not {value!r}") from None


def _build(args: argparse.Namespace) -> int:
    from ..concepts import build_atlas, default_db_path
    from ..distributed import distributed

    layers = _layers(args.layers)
    db = args.db or default_db_path(args.model)
    with distributed() as (rank, world):  # before the model is loaded: under NCCL it picks this process's GPU
        loaded = load_model(args)
        started = time.perf_counter()
        try:
            with model_must_run(lambda: loaded.model, _first_window(loaded, args)):
                atlas = build_atlas(
                    loaded.model, loaded.tokenizer, args.corpus, db, layers=layers, top_k=args.top_k,
                    window=args.window, batch_size=args.batch_size, chunk_size=args.chunk_size, limit=args.limit,
                    method=args.method, model_name=loaded.source.split(" (")[0], progress=show_progress(args),
                )  # model_name: the source without its cache path
        except KeyboardInterrupt:
            if rank == 0:
                print(f"\ninterrupted: the committed chunks are kept in {db}; run the same command to resume",
                      file=sys.stderr)
            return 130
    if atlas is None:  # processes other than 0 of a torchrun build: process 0 wrote the atlas and reports it
        return 0
    with atlas:
        info = atlas.describe()
    state = "complete" if info["windows_done"] >= info["windows_total"] else "partial"
    processes = f" by {world} processes" if world > 1 else ""
    print(f"atlas: {info['path']} ({state}: {info['windows_done']} of {info['windows_total']} windows; layers "
          f"{', '.join(map(str, info['layers']))}; {info['neurons']} neurons each; top {info['top_k']}) "
          f"in {time.perf_counter() - started:.1f} s{processes}")
    return 0


def _first_window(loaded: Any, args: argparse.Namespace) -> Inputs:
    """The corpus's first window (of its first document only, to stay cheap), for the model's plain forward."""

    def build() -> Any:
        from ..concepts.corpus import Corpus, load_corpus, make_windows

        corpus = load_corpus(args.corpus)
        first = tuple(doc for doc in corpus.documents if doc.strip())[:1]
        window = make_windows(loaded.tokenizer, Corpus(first, corpus.description), args.window)[0]
        return text_inputs(loaded.model, loaded.tokenizer, list(window.token_ids))()

    return build


def _show(args: argparse.Namespace) -> int:
    from ..concepts import Atlas, default_db_path
    from ..concepts.render import concept_dict, concept_html, concept_terminal

    kinds = ("actmax", "relmax") if args.by == "both" else (args.by,)
    with Atlas.open(args.db or default_db_path(args.model)) as atlas:
        groups = {kind: atlas.samples(args.layer, args.neuron, by=kind)[: args.top] for kind in kinds}
        info = atlas.describe()
    if args.html:
        with open(args.html, "w", encoding="utf-8") as handle:
            handle.write(concept_html(info, args.layer, args.neuron, groups))
    if args.json:
        print(json.dumps(concept_dict(info, args.layer, args.neuron, groups), ensure_ascii=False))
        return 0
    print(concept_terminal(info, args.layer, args.neuron, groups, color=use_color(args)))
    if args.html:
        print(f"\nHTML page: {args.html}")
    return 0
