"""Per-window cost of a concept atlas build, for docs/distributed.md's estimate of a 7B model's atlas.

1. **SmolLM2 on this CPU**: `build_atlas` with the CLI's defaults (windows of 48 tokens, batches of 8, the three
   default layers) over the first ``--windows`` windows of the default corpus, one chunk per batch; the time of
   each chunk is read from ``on_chunk``, the first (warm-up) left out. Seconds per window (median, min, max) of
   the wall clock and of the process's CPU time: on a machine shared with other jobs the wall clock counts their
   share of the cores too, the CPU time (with one thread: ``--threads 1``, the default) does not.
2. **The bookkeeping at a 7B model's width**, which stays on the host whatever runs the model: `_Builder.add`
   (latents copied out, peaks and sums, the top-k merges) and process 0's merge of a chunk, with random latents
   of Llama-2-7B's shape (32 layers of 11,008 MLP neurons) in place of the explained pass.

    .venv/bin/python scripts/atlas_cost.py [--windows 40] [--threads N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch


def smollm2(windows: int, batch: int) -> dict:
    from attnlrp.concepts import build_atlas
    from attnlrp.models import load_model

    loaded = load_model()
    parameters = sum(p.numel() for p in loaded.model.parameters())
    marks: list[tuple[float, float]] = []

    def mark(done=None) -> None:
        marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as folder:
        mark()
        atlas = build_atlas(loaded.model, loaded.tokenizer, None, os.path.join(folder, "atlas.sqlite"),
                            batch_size=batch, chunk_size=batch, limit=windows, progress=False, on_chunk=mark)
        assert atlas is not None  # one process
        layers = atlas.describe()["layers"]
        atlas.close()
    timed = marks[1:]  # chunk 0 (warm-up, set-up) left out
    result = {"model": loaded.source.split(" (")[0], "parameters": parameters, "layers": layers,
              "window_tokens": 48 + 1, "batch_size": batch, "windows_timed": (len(timed) - 1) * batch}
    for i, clock in enumerate(("wall", "cpu")):
        per_window = [(b[i] - a[i]) / batch for a, b in zip(timed, timed[1:])]
        result[f"{clock}_seconds_per_window"] = {"median": round(statistics.median(per_window), 4),
                                                 "min": round(min(per_window), 4), "max": round(max(per_window), 4)}
    return result


def bookkeeping_7b(batch: int, rounds: int, layers: int = 32, neurons: int = 11008, tokens: int = 49,
                   k: int = 10) -> dict:
    from attnlrp.concepts.build import _Builder
    from attnlrp.concepts.corpus import Window
    from attnlrp.concepts.topk import TopK

    generator = torch.Generator().manual_seed(0)

    # the explained pass's output, made once (outside the timing): every layer's MLP activations and relevance
    made = [SimpleNamespace(latents=SimpleNamespace(
        activations=torch.randn(layers, tokens, neurons, generator=generator),
        neurons=torch.randn(layers, tokens, neurons, generator=generator))) for _ in range(batch)]

    class FakeExplainer:
        def explain_batch(self, prompts, latents):
            return made[: len(prompts)]

    windows = [Window(index=i, document=i, start=0, prefix=1, token_ids=tuple(range(tokens)),
                      tokens=tuple("t" * tokens)) for i in range(batch * rounds)]
    chosen = [layers // 4, layers // 2, (3 * layers) // 4]
    builder = _Builder(FakeExplainer(), chosen, neurons, k, tokens, windows, batch)  # type: ignore[arg-type]
    builder.states = {(kind, layer): TopK.empty(neurons, k, 0) for kind in ("actmax", "relmax")
                      for layer in chosen}  # process 0's running top-k ranks only
    rank_times, merge_times = [], []
    for r in range(rounds):
        started = time.process_time()
        entries = builder.rank_chunk(r * batch, (r + 1) * batch, builder.floors(), lambda n: None)
        ranked = time.process_time()
        for key, part in entries.items():
            builder.states[key].combine(TopK.from_entries(part, neurons, k, 0))
        merge_times.append(time.process_time() - ranked)
        rank_times.append((ranked - started) / batch)
    return {"shape": f"{layers} layers x {neurons} neurons, {tokens}-token windows, top {k}, layers {chosen}",
            "batch_size": batch, "cpu_seconds_per_window_ranking": round(statistics.median(rank_times[1:]), 4),
            "cpu_seconds_per_chunk_merging_on_process_0": round(statistics.median(merge_times[1:]), 4),
            "note": "random latents made beforehand stand in for the explained pass: the host-side work only"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=40, help="SmolLM2 windows to build (default: 40)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "command": "python scripts/atlas_cost.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "smollm2": smollm2(args.windows, args.batch_size),
        "bookkeeping_7b": bookkeeping_7b(args.batch_size, rounds=4),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
