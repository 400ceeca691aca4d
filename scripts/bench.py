"""Time and peak memory of AttnLRP against its baselines, on the embedded SmolLM2-135M-Instruct (CPU, fp32).

    .venv/bin/python scripts/bench.py                        # 128 and 512 tokens, 5 repetitions (`make bench`)
    .venv/bin/python scripts/bench.py --quick                # 128 tokens only, 3 repetitions
    .venv/bin/python scripts/bench.py --output docs/benchmarks.md

Configurations, all on the same prompt (the first N token ids of CPython's documentation text,
``pydoc_data.topics.topics``), all producing logits for every position:

    forward (no_grad)      model(input_ids) under torch.no_grad()
    forward (graph)        model(inputs_embeds) with inputs_embeds requiring grad and the parameters frozen,
                           i.e. the forward half of a gradient explanation, autograd graph recorded
    input-x-gradient       attnlrp.Explainer(method="input-x-gradient").explain(ids)
    attnlrp                attnlrp.Explainer(method="attnlrp").explain(ids)
    cp-lrp                 attnlrp.Explainer(method="cp-lrp").explain(ids)

Method: every configuration is run once as warm-up, then the configurations are run round-robin (so machine
load hits all alike) for the given number of repetitions; the median is reported. Time: time.perf_counter
around the call. Memory: gc.collect() and malloc_trim(0) before the call, then a thread samples
psutil.Process().memory_info().rss every ~1 ms during the call; reported is peak RSS minus the RSS just
before the call (MiB). The sampler runs in the timed calls too; --no-sampler-timing times separate calls
without it (doubling the run time) to check that it does not bias the times.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import os
import platform
import shlex
import statistics
import sys
import threading
import time
import warnings
from typing import Callable

import psutil
import torch

MIB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_LIBC = None
try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):
    _LIBC = None


def release_freed_memory() -> None:
    """gc.collect(), then hand glibc's freed heap back to the OS so the baseline RSS is not inflated."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


# ---------------------------------------------------------------------------------------------- measuring
class PeakRSS:
    """Samples the process RSS every ``interval`` seconds in a thread; ``peak`` minus ``start`` after exit."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.proc = psutil.Process()
        self._stop = threading.Event()
        self.start = self.peak = 0

    def _run(self) -> None:
        proc, stop, wait = self.proc, self._stop, self.interval
        peak = self.peak
        while not stop.is_set():
            rss = proc.memory_info().rss
            if rss > peak:
                peak = rss
            stop.wait(wait)
        self.peak = max(peak, proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / MIB


def measure(fn: Callable[[], None], sample: bool = True) -> tuple[float, float | None]:
    release_freed_memory()
    if not sample:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0, None
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
    return elapsed, rss.delta_mib


# ---------------------------------------------------------------------------------------------- workload
def doc_ids(tokenizer, n: int) -> list[int]:
    from pydoc_data.topics import topics

    text = "".join(topics.values())
    # tokenize a generous prefix only: the whole text is ~800k characters
    ids = tokenizer(text[: 40 * n], add_special_tokens=False)["input_ids"]
    if len(ids) < n:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids[:n]]


def configurations(model, tokenizer, ids: list[int]) -> dict[str, Callable[[], None]]:
    from attnlrp import Explainer

    ids_t = torch.tensor([ids], dtype=torch.long)
    mask = torch.ones_like(ids_t)
    positions = torch.arange(len(ids)).unsqueeze(0)
    common = dict(attention_mask=mask, position_ids=positions, use_cache=False)  # as the Explainer calls it
    embedding = model.get_input_embeddings()

    def forward_no_grad() -> None:
        with torch.no_grad():
            out = model(input_ids=ids_t, **common)
        del out

    def forward_graph() -> None:
        with torch.no_grad():
            embeds = embedding(ids_t)
        leaf = embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(inputs_embeds=leaf, **common)
        del out, leaf

    def explainer(method: str) -> Callable[[], None]:
        ex = Explainer(model, tokenizer, method=method)

        def run() -> None:
            ex.explain(ids)

        return run

    return {
        "forward (no_grad)": forward_no_grad,
        "forward (graph)": forward_graph,
        "input-x-gradient": explainer("input-x-gradient"),
        "attnlrp": explainer("attnlrp"),
        "cp-lrp": explainer("cp-lrp"),
    }


def bench_length(model, tokenizer, n: int, reps: int, separate_timing: bool, log) -> dict[str, dict[str, float]]:
    ids = doc_ids(tokenizer, n)
    assert len(ids) == n, f"could only build a {len(ids)}-token prompt"
    configs = configurations(model, tokenizer, ids)
    times: dict[str, list[float]] = {k: [] for k in configs}
    mems: dict[str, list[float]] = {k: [] for k in configs}
    for name, fn in configs.items():  # warm-up
        t, _ = measure(fn)
        log(f"  {n:4d} tokens  warm-up  {name:18s} {t:7.3f} s")
    for r in range(reps):
        for name, fn in configs.items():
            t, m = measure(fn, sample=True)
            mems[name].append(m)
            if separate_timing:
                t, _ = measure(fn, sample=False)
            times[name].append(t)
            log(f"  {n:4d} tokens  rep {r + 1}/{reps}  {name:18s} {t:7.3f} s  {m:8.1f} MiB")
    return {
        name: {
            "time": statistics.median(times[name]),
            "time_min": min(times[name]),
            "time_max": max(times[name]),
            "mem": statistics.median(mems[name]),
        }
        for name in configs
    }


# ---------------------------------------------------------------------------------------------- report
def table(results: dict[int, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| tokens | configuration | time, median (s) | time, min–max (s) | peak memory (MiB) |",
        "|---:|---|---:|---:|---:|",
    ]
    for n, res in results.items():
        for name, r in res.items():
            lines.append(
                f"| {n} | {name} | {r['time']:.3f} | {r['time_min']:.3f}–{r['time_max']:.3f} | {r['mem']:.0f} |"
            )
    lines += [
        "",
        "| tokens | ratio | time | memory | target (time) | met |",
        "|---:|---|---:|---:|---:|:---:|",
    ]
    for n, res in results.items():
        a = res["attnlrp"]
        rows = [
            ("AttnLRP / Input×Gradient", res["input-x-gradient"], 1.05),
            ("AttnLRP / forward (graph)", res["forward (graph)"], 2.2),
            ("AttnLRP / forward (no_grad)", res["forward (no_grad)"], None),
            ("CP-LRP / Input×Gradient", res["input-x-gradient"], None),
        ]
        for label, base, target in rows:
            num = res["cp-lrp"] if label.startswith("CP-LRP") else a
            t_ratio = num["time"] / base["time"]
            m_ratio = num["mem"] / base["mem"] if base["mem"] > 0 else float("nan")
            tgt = f"≤ {target:.2f}" if target else "—"
            met = ("yes" if t_ratio <= target else "**no**") if target else "—"
            lines.append(f"| {n} | {label} | {t_ratio:.2f}× | {m_ratio:.2f}× | {tgt} | {met} |")
    return "\n".join(lines)


def header(threads: int, command: str, reps: int, lengths: list[int]) -> str:
    import transformers

    return "\n".join(
        [
            "# Benchmarks: AttnLRP cost on SmolLM2-135M-Instruct (CPU, fp32)",
            "",
            f"- machine: {cpu_model()}, {core_count()} cores, torch threads = {threads}",
            f"- torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}",
            f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- command: `{command}`",
            f"- prompt lengths: {', '.join(map(str, lengths))} tokens (first N ids of "
            f"`pydoc_data.topics.topics`, concatenated); {reps} repetitions after one warm-up, median",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 tokens only, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions after the warm-up (default 5; 3 with --quick)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths (default 128 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the core count)")
    parser.add_argument("--output", help="also write the report (Markdown) to this file")
    parser.add_argument("--no-sampler-timing", action="store_true",
                        help="time separate calls without the memory sampler (doubles the run time)")
    args = parser.parse_args(argv)

    lengths = args.lengths or ([128] if args.quick else [128, 512])
    reps = args.reps or (3 if args.quick else 5)
    threads = args.threads or core_count()
    torch.set_num_threads(threads)
    print(f"torch.set_num_threads({threads})  (cores: {core_count()}, CPU: {cpu_model()})", flush=True)

    warnings.filterwarnings("ignore")
    from attnlrp.models import load_model

    lm = load_model()
    model, tokenizer = lm.model, lm.tokenizer
    # Frozen parameters for every configuration: the Explainer freezes them anyway (and restores the flags),
    # and the "forward (graph)" baseline must record only the input-dependent graph, as the explainers do.
    for p in model.parameters():
        p.requires_grad_(False)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = {}
    for n in lengths:
        results[n] = bench_length(model, tokenizer, n, reps, args.no_sampler_timing, log)

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench.py", *sys.argv[1:]])
    report = table(results)
    print(report)
    if args.output:
        text = header(threads, command, reps, lengths) + "\n\n" + report + "\n"
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
