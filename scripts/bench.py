"""Time and peak memory of AttnLRP against its baselines, on the embedded SmolLM2-135M-Instruct (CPU, fp32).

    .venv/bin/python scripts/bench.py                        # 128 and 512 tokens, 5 repetitions (`make bench`)
    .venv/bin/python scripts/bench.py --quick                # 128 tokens only, 3 repetitions
    .venv/bin/python scripts/bench.py --output docs/benchmarks.md
    .venv/bin/python scripts/bench.py --generation --output docs/benchmarks.md   # `make bench-generation`
    .venv/bin/python scripts/bench.py --long --output docs/benchmarks.md         # `make bench-long` (slow)

--generation: explain_generation (one ruled forward over prompt + answer, one backward per generated token) against
a naive loop (generate, then one attnlrp.explain per generated token over the prefix before it) on a 40-token
prompt, 16 and 64 greedy tokens; both times include the generation; checks that the matrices agree.
--long: 512 / 2048 / 4096 tokens, AttnLRP and Input x Gradient, with and without gradient checkpointing, one
repetition each in its own process (killed and reported as skipped past --long-limit-mib or --long-timeout).
Both replace only their own marked section of --output (written after the notes marker, so `make bench` keeps them).

Configurations, all on the same prompt (the first N token ids of CPython's documentation text,
``pydoc_data.topics.topics``), all computing the last position's logits only (``logits_to_keep=1``, as the
Explainer does for a next-token target):

    forward (no_grad)      model(input_ids) under torch.no_grad()
    forward (graph)        model(inputs_embeds) with inputs_embeds requiring grad and the parameters frozen,
                           i.e. the forward half of a gradient explanation, autograd graph recorded
    input-x-gradient       attnlrp.Explainer(method="input-x-gradient").explain(ids)
    attnlrp                attnlrp.Explainer(method="attnlrp").explain(ids)
    cp-lrp                 attnlrp.Explainer(method="cp-lrp").explain(ids)

Method: every configuration is run once as warm-up, then the configurations are run round-robin (so machine
load hits all alike) for the given number of rounds; the median is reported. Time: time.perf_counter around
the call. Memory: a second, untimed call per configuration and round; gc.collect() and malloc_trim(0) before
it, then a thread samples psutil.Process().memory_info().rss every ~1 ms during the call; reported is peak
RSS minus the RSS just before the call (MiB). The timed calls run without the sampler: its thread competes
for the GIL and slowed the Python-heavy AttnLRP dispatch by ~12%. A round during which other processes used
more than --max-foreign of the CPU (read from /proc/stat) is discarded and run again while --budget lasts.
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


class ForeignLoad:
    """CPU time used by *other* processes during a block, as a fraction of the machine (all cores).

    /proc/stat counts every process on this kernel (colleagues' test runs included, even where ``ps`` cannot
    see them); our own process's CPU time (all its threads, the RSS sampler included) is subtracted.
    """

    HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.fraction = 0.0

    @staticmethod
    def _busy_jiffies() -> int | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle

    def _own_seconds(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def __enter__(self) -> "ForeignLoad":
        self._busy0, self._own0, self._t0 = self._busy_jiffies(), self._own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, own1, t1 = self._busy_jiffies(), self._own_seconds(), time.perf_counter()
        if self._busy0 is None or busy1 is None:
            return
        foreign = (busy1 - self._busy0) / self.HZ - (own1 - self._own0)
        self.fraction = max(0.0, foreign / (max(t1 - self._t0, 1e-9) * (os.cpu_count() or 1)))


def wait_for_quiet(max_wait: float, threshold: float = 0.10, window: float = 0.5) -> float:
    """Sleep until other processes use < ``threshold`` of the machine over ``window`` s; give up after ``max_wait``."""
    deadline = time.perf_counter() + max_wait
    while True:
        with ForeignLoad() as load:
            time.sleep(window)
        if load.fraction < threshold or time.perf_counter() >= deadline:
            return load.fraction


def measure(fn: Callable[[], None], sample: bool = True) -> tuple[float, float | None, float]:
    """(seconds, peak RSS increase in MiB or None, foreign CPU load during the call)."""
    release_freed_memory()
    with ForeignLoad() as load:
        if not sample:
            t0 = time.perf_counter()
            fn()
            elapsed, mib = time.perf_counter() - t0, None
        else:
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - t0
            mib = rss.delta_mib
    return elapsed, mib, load.fraction


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
    # as the Explainer calls it: only the explained (last) position's logits
    common = dict(attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)
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


def bench_length(model, tokenizer, n: int, reps: int, opts, deadline: float, log) -> dict:
    """Warm-up, then ``reps`` round-robin rounds; a round disturbed by other processes is run again."""
    ids = doc_ids(tokenizer, n)
    assert len(ids) == n, f"could only build a {len(ids)}-token prompt"
    configs = configurations(model, tokenizer, ids)
    times: dict[str, list[float]] = {k: [] for k in configs}
    mems: dict[str, list[float]] = {k: [] for k in configs}
    for name, fn in configs.items():  # warm-up
        if time.perf_counter() < deadline:
            wait_for_quiet(min(opts.max_wait, max(0.0, deadline - time.perf_counter())))
        t, _, load = measure(fn)
        log(f"  {n:4d} tokens  warm-up  {name:18s} {t:7.3f} s  (foreign load {load:4.0%})")
    kept_loads: list[float] = []
    discarded = 0
    while len(kept_loads) < reps:
        r = len(kept_loads) + 1
        if time.perf_counter() < deadline:
            wait_for_quiet(min(opts.max_wait, max(0.0, deadline - time.perf_counter())))
        round_t, round_m, round_load = {}, {}, 0.0
        for name, fn in configs.items():
            # two calls: timed without the RSS sampler (its thread competes for the GIL and slows Python-heavy
            # code such as the rule dispatch by ~10%), then one with it for the memory
            t, _, load = measure(fn, sample=False)
            _, m, load2 = measure(fn, sample=True)
            load = max(load, load2)
            round_t[name], round_m[name] = t, m
            round_load = max(round_load, load)
            log(f"  {n:4d} tokens  round {r}/{reps}  {name:18s} {t:7.3f} s  {m:8.1f} MiB  (foreign load {load:4.0%})")
        if round_load > opts.max_foreign and time.perf_counter() < deadline:
            discarded += 1
            log(f"  {n:4d} tokens  round {r} discarded: other processes used {round_load:.0%} of the CPU")
            continue
        for name in configs:
            times[name].append(round_t[name])
            mems[name].append(round_m[name])
        kept_loads.append(round_load)
    return {
        "rounds_discarded": discarded,
        "max_foreign_load": max(kept_loads),
        "configs": {
            name: {
                "times": times[name],
                "time": statistics.median(times[name]),
                "time_min": min(times[name]),
                "time_max": max(times[name]),
                "mem": statistics.median(mems[name]),
            }
            for name in configs
        },
    }


# ---------------------------------------------------------------------------------------------- report
NOTES_MARKER = "<!-- everything below this line is kept when scripts/bench.py rewrites this file -->"

METHOD_NOTES = """## How it is measured

- **Configurations** (same prompt, the last position's logits only, parameters frozen):
  *forward (no_grad)* is `model(input_ids)` under `torch.no_grad()`; *forward (graph)* is
  `model(inputs_embeds=e)` with `e.requires_grad_()`, i.e. the forward half of a gradient explanation with
  its autograd graph recorded; *input-x-gradient*, *attnlrp* and *cp-lrp* are
  `attnlrp.Explainer(model, tokenizer, method=M).explain(ids)` (tokens, forward, backward, ledger, result).
- **Time**: `time.perf_counter()` around one call; one warm-up call per configuration, then the
  configurations run round-robin in one process, median over rounds. "Median of per-round ratios" divides
  the two configurations' times within each round first (robust to load drifting between rounds).
- **Peak memory**: in each round every configuration is called a second time, untimed: `gc.collect()` and
  glibc `malloc_trim(0)` before the call, then a thread samples `psutil.Process().memory_info().rss` every
  ~1 ms during it; reported is peak RSS minus the RSS just before the call (MiB, median over rounds). The
  timed calls run without the sampler: its thread takes the GIL ~1000×/s, which slowed AttnLRP (Python-heavy
  rule dispatch) by ~12% and Input×Gradient by <1% at 128 tokens. `gc.collect()` and `malloc_trim(0)`
  precede the timed calls too.
- **Load from other processes**: during each call the CPU time used by other processes is read from
  `/proc/stat` (minus this process's own); a round in which it exceeded 15% of the machine is discarded and
  run again (while the time budget lasts), and each round waits up to 20 s for a quiet machine first.
  Load from outside this kernel (other virtual machines on the host) cannot be seen and stays in the noise.
- **The 2.2× target is read against *forward (graph)***: lxt's "AttnLRP = 2.1–2.4× a forward pass" compares
  an explanation with the forward it has to run anyway, on `inputs_embeds` that require grad; both
  baselines are reported, and on CPU their times differ little (the graph costs memory, not time).
  The 1.05× target is AttnLRP / Input×Gradient, both through this library.

"""


def kept_notes(path: str) -> str:
    """Hand-written notes after NOTES_MARKER in an existing report survive a rewrite."""
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return NOTES_MARKER + "\n"
    i = old.find(NOTES_MARKER)
    return old[i:] if i >= 0 else NOTES_MARKER + "\n"


MAX_FOREIGN_DEFAULT = 0.15
#: issue #16's targets, per prompt length: at 16 tokens (explorer-sized prompts) only the Input×Gradient one
TARGETS = {"AttnLRP / Input×Gradient": 1.02, "AttnLRP / forward (graph)": 2.2}
SHORT_TARGETS = {"AttnLRP / Input×Gradient": 1.10}
SHORT = 16


def target_for(label: str, n: int) -> float | None:
    """The time target for ``label`` at ``n`` tokens (None: reported, no target)."""
    return SHORT_TARGETS.get(label) if n <= SHORT else TARGETS.get(label)


def ratios(res: dict, n: int) -> list[tuple[str, float, float, float, float | None]]:
    """(label, time ratio of medians, median of per-round time ratios, memory ratio, target)."""
    c = res["configs"]
    pairs = [
        ("AttnLRP / Input×Gradient", "attnlrp", "input-x-gradient"),
        ("AttnLRP / forward (graph)", "attnlrp", "forward (graph)"),
        ("AttnLRP / forward (no_grad)", "attnlrp", "forward (no_grad)"),
        ("CP-LRP / Input×Gradient", "cp-lrp", "input-x-gradient"),
        ("Input×Gradient / forward (graph)", "input-x-gradient", "forward (graph)"),
    ]
    out = []
    for label, num, den in pairs:
        a, b = c[num], c[den]
        per_round = statistics.median(x / y for x, y in zip(a["times"], b["times"]))
        mem = a["mem"] / b["mem"] if b["mem"] > 0 else float("nan")
        out.append((label, a["time"] / b["time"], per_round, mem, target_for(label, n)))
    return out


def table(results: dict[int, dict]) -> str:
    lines = [
        "| tokens | configuration | time, median (s) | time, min–max (s) | peak memory (MiB) |",
        "|---:|---|---:|---:|---:|",
    ]
    for n, res in results.items():
        for name, r in res["configs"].items():
            lines.append(
                f"| {n} | {name} | {r['time']:.3f} | {r['time_min']:.3f}–{r['time_max']:.3f} | {r['mem']:.0f} |"
            )
    lines += [
        "",
        "| tokens | ratio | time (ratio of medians) | time (median of per-round ratios) | peak memory | target (time) | met |",
        "|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for n, res in results.items():
        for label, t_ratio, per_round, m_ratio, target in ratios(res, n):
            tgt = f"≤ {target:.2f}×" if target else "—"
            met = ("yes" if t_ratio <= target else "**no**") if target else "—"
            lines.append(f"| {n} | {label} | {t_ratio:.2f}× | {per_round:.2f}× | {m_ratio:.2f}× | {tgt} | {met} |")
    lines.append("")
    for n, res in results.items():
        lines.append(
            f"- {n} tokens: {res['rounds_discarded']} round(s) discarded for load from other processes; "
            f"highest foreign CPU load in a kept round: {res['max_foreign_load']:.0%}"
        )
    if any(res["max_foreign_load"] > MAX_FOREIGN_DEFAULT for res in results.values()):
        lines.append(
            "- **warning: some rounds ran while other processes loaded the machine (the time budget for "
            "rerunning them was spent); these times are not representative, run the benchmark again.**"
        )
    return "\n".join(lines)


def header(threads: int, command: str, reps: int, lengths: list[int]) -> str:
    import transformers

    return "\n".join(
        [
            "# Benchmarks: AttnLRP cost on SmolLM2-135M-Instruct (CPU, fp32)",
            "",
            f"- machine: {cpu_model()}, {core_count()} cores, `torch.set_num_threads({threads})`",
            f"- torch {torch.__version__}, transformers {transformers.__version__}, "
            f"Python {platform.python_version()}",
            f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- command: `{command}`",
            f"- prompts: the first {' / '.join(map(str, lengths))} token ids of CPython's documentation text "
            f"(`pydoc_data.topics.topics`, values concatenated); one warm-up per configuration, then "
            f"{reps} round-robin rounds, median",
        ]
    )


# ---------------------------------------------------------------------------------------------- sections
def write_section(path: str, key: str, text: str) -> None:
    """Replace (or append) the block between this section's markers; everything else in the file is kept.

    Appended blocks land after NOTES_MARKER, so a plain `make bench` rewrite keeps them.
    """
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        old = ""
    i, j = old.find(begin), old.find(end)
    if i >= 0 and j > i:
        new = old[:i] + block + old[j + len(end):].lstrip("\n")
    else:
        if NOTES_MARKER not in old:
            old = old.rstrip("\n") + "\n\n" + NOTES_MARKER + "\n"
        new = old.rstrip("\n") + "\n\n" + block
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(new)


def machine_lines(threads: int, command: str) -> list[str]:
    import transformers

    return [
        f"- machine: {cpu_model()}, {core_count()} cores, `torch.set_num_threads({threads})`; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- command: `{command}`",
    ]


# ---------------------------------------------------------------------------------------------- generation
GEN_PROMPT_TOKENS = 40


def _greedy(model, tokenizer, prompt_ids: list[int], n: int) -> list[int]:
    """The tokens explain_generation generates: greedy, same pad token, no rule active."""
    from attnlrp.models.adapter import ModelAdapter

    ids = torch.tensor([prompt_ids], dtype=torch.long, device=next(model.parameters()).device)
    kwargs = dict(do_sample=False)
    pad = ModelAdapter.of(model).pad_token_id(tokenizer)
    if pad is not None:
        kwargs["pad_token_id"] = pad
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **kwargs)
    seq = out if isinstance(out, torch.Tensor) else out.sequences
    return [int(t) for t in seq[0, len(prompt_ids):].tolist()]


def naive_generation(model, tokenizer, prompt_ids: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Generate, then one attnlrp.explain (forward + backward) per generated token over the prefix before it."""
    import attnlrp

    generated = _greedy(model, tokenizer, prompt_ids, n)
    ids = prompt_ids + generated
    rows = []
    for k, t in enumerate(generated):
        p = len(prompt_ids) + k
        rows.append(attnlrp.explain(model, tokenizer, ids[:p], target=t).relevance)
    return generated, rows


def generation_rel_diff(fast, naive_rows: list[torch.Tensor]) -> float:
    """max |a - b| / max |b| over all generated tokens' rows (a: explain_generation, b: the naive loop)."""
    num = den = 0.0
    for k, row in enumerate(naive_rows):
        a = fast.matrix[k, : len(row)].double()
        b = row.double()
        num = max(num, float((a - b).abs().max()))
        den = max(den, float(b.abs().max()))
        # causality: explain_generation's row k is exactly 0 from the generated token's own position on
        assert float(fast.matrix[k, len(row):].abs().max()) == 0.0
    return num / den


def run_generation(model, tokenizer, args, log) -> str:
    from attnlrp import explain_generation

    prompt_ids = doc_ids(tokenizer, GEN_PROMPT_TOKENS)
    prompt_text = tokenizer.decode(prompt_ids)
    lines = [
        "| generated tokens | explain_generation (s) | naive loop (s) | speedup | greedy generation alone (s) "
        "| max rel. difference | target ≥ 1.5× |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    notes = []
    for n in args.gen_tokens:
        # warm-up, and the correctness check: same tokens, same matrices
        fast = explain_generation(model, tokenizer, prompt_ids, max_new_tokens=n)
        generated, rows = naive_generation(model, tokenizer, prompt_ids, n)
        assert generated == fast.generated_ids, "the naive loop generated other tokens"
        diff = generation_rel_diff(fast, rows)
        log(f"  {n:3d} new tokens: generated {len(generated)}, max rel. difference {diff:.2e}")
        configs = {
            "explain_generation": lambda: explain_generation(model, tokenizer, prompt_ids, max_new_tokens=n),
            "naive loop": lambda: naive_generation(model, tokenizer, prompt_ids, n),
            "generate": lambda: _greedy(model, tokenizer, prompt_ids, n),
        }
        times: dict[str, list[float]] = {k: [] for k in configs}
        loads = []
        for r in range(args.reps):
            wait_for_quiet(args.max_wait)
            for name, fn in configs.items():
                t, _, load = measure(fn, sample=False)
                times[name].append(t)
                loads.append(load)
                log(f"  {n:3d} new tokens  round {r + 1}/{args.reps}  {name:18s} {t:7.2f} s  (foreign load {load:4.0%})")
        fast_t = statistics.median(times["explain_generation"])
        naive_t = statistics.median(times["naive loop"])
        gen_t = statistics.median(times["generate"])
        speedup = naive_t / fast_t
        per_round = statistics.median(b / a for a, b in zip(times["explain_generation"], times["naive loop"]))
        lines.append(
            f"| {len(generated)} | {fast_t:.2f} | {naive_t:.2f} | **{speedup:.2f}×** | {gen_t:.2f} | {diff:.1e} "
            f"| {'yes' if speedup >= 1.5 else '**no**'} |"
        )
        notes.append(
            f"- {n} tokens: times min–max over rounds: explain_generation "
            f"{min(times['explain_generation']):.2f}–{max(times['explain_generation']):.2f} s, naive loop "
            f"{min(times['naive loop']):.2f}–{max(times['naive loop']):.2f} s; median of per-round speedups "
            f"{per_round:.2f}×; highest foreign CPU load during a call {max(loads):.0%}"
        )
    intro = [
        "## Generation attribution vs a naive loop",
        "",
        f"SmolLM2-135M-Instruct (CPU, fp32), AttnLRP. Prompt: the first {GEN_PROMPT_TOKENS} token ids of CPython's "
        f"documentation text (`pydoc_data.topics.topics`): {prompt_text[:120]!r}…; greedy generation.",
        "",
        "- *explain_generation*: `attnlrp.explain_generation(model, tok, prompt_ids, max_new_tokens=N)` — generate, "
        "then one forward under the rules over prompt + answer and one backward per generated token (plus one for "
        "the whole answer).",
        "- *naive loop*: `model.generate` with the same settings, then for each generated token k "
        "`attnlrp.explain(model, tok, ids[:p_k], target=t_k)` — one forward + backward per token.",
        "- **Both times include the greedy generation step** (its time alone is the *greedy generation alone* column); "
        f"one warm-up call each (which also checks the results), then {args.reps} round-robin rounds, median.",
        "- *max rel. difference*: max |a − b| / max |b| over all rows, a = explain_generation's matrix, "
        "b = the naive loop's relevance (both generated the same tokens; required ≤ 1e-5).",
        "",
    ]
    return "\n".join(intro + lines + [""] + notes)


# ---------------------------------------------------------------------------------------------- long inputs
LONG_LIMIT_MIB = 20 * 1024
LONG_TIMEOUT_S = 300.0


def long_child(n: int, method: str, checkpointing: bool, threads: int) -> int:
    """One configuration in its own process: load, warm up on 32 tokens, then one timed + RSS-sampled call."""
    import json

    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    from attnlrp import Explainer
    from attnlrp.models import load_model

    lm = load_model()
    model, tokenizer = lm.model, lm.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable()
    ex = Explainer(model, tokenizer, method=method)
    ex.explain(doc_ids(tokenizer, 32))
    ids = doc_ids(tokenizer, n)
    assert len(ids) == n
    runs = []
    handle = model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: runs.append(1))
    release_freed_memory()
    with ForeignLoad() as load, PeakRSS(interval=0.01) as rss:
        t0 = time.perf_counter()
        e = ex.explain(ids)
        elapsed = time.perf_counter() - t0
    handle.remove()
    print(json.dumps({
        "time": elapsed, "mib": rss.delta_mib, "peak_mib": rss.peak / MIB, "start_mib": rss.start / MIB,
        "load": load.fraction, "layer0_mlp_runs": len(runs), "finite": bool(torch.isfinite(e.relevance).all()),
    }), flush=True)
    return 0


def run_long_config(n: int, method: str, ckpt: bool, threads: int, limit_mib: float, timeout: float, log) -> dict:
    """Run long_child in a subprocess; kill it if its RSS passes limit_mib or it runs longer than timeout."""
    import json
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--long-child", str(n), method, str(int(ckpt)),
           "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    t0, peak, reason = time.perf_counter(), 0.0, None
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / MIB
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > limit_mib:
            reason = f"skipped: RSS passed {limit_mib / 1024:.0f} GiB"
        elif time.perf_counter() - t0 > timeout:
            reason = f"skipped: > {timeout:.0f} s"
        if reason:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if reason:
        log(f"  {n:5d} {method:17s} ckpt={int(ckpt)}  {reason} (process RSS reached {peak / 1024:.1f} GiB)")
        return {"skipped": reason}
    if proc.returncode != 0:
        log(f"  {n:5d} {method:17s} ckpt={int(ckpt)}  failed (exit {proc.returncode})")
        return {"skipped": f"failed (exit {proc.returncode})"}
    res = json.loads(out.strip().splitlines()[-1])
    log(f"  {n:5d} {method:17s} ckpt={int(ckpt)}  {res['time']:7.1f} s  +{res['mib']:8.0f} MiB  "
        f"(process peak {res['peak_mib']:.0f} MiB, layer-0 MLP ran {res['layer0_mlp_runs']}×, "
        f"foreign load {res['load']:.0%})")
    return res


def run_long(args, threads: int, log) -> str:
    methods = [("attnlrp", "AttnLRP"), ("input-x-gradient", "Input × Gradient")]
    results: dict[tuple, dict] = {}
    for n in args.long_lengths:
        for method, _ in methods:
            for ckpt in (False, True):
                prev = [r for (m, c, k), r in results.items() if m == method and c == ckpt and "skipped" in r]
                if prev:  # a shorter prompt already did not fit: a longer one will not either
                    results[(method, ckpt, n)] = {"skipped": prev[-1]["skipped"] + " at a shorter length"}
                    continue
                results[(method, ckpt, n)] = run_long_config(
                    n, method, ckpt, threads, args.long_limit_mib, args.long_timeout, log)
    lines = [
        "| tokens | method | checkpointing | time (s) | peak memory (MiB, over the loaded model) "
        "| process peak RSS (MiB) | layer-0 MLP forward runs |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for n in args.long_lengths:
        for method, label in methods:
            for ckpt in (False, True):
                r = results[(method, ckpt, n)]
                c = "on" if ckpt else "off"
                if "skipped" in r:
                    lines.append(f"| {n} | {label} | {c} | — | — | — | {r['skipped']} |")
                else:
                    lines.append(
                        f"| {n} | {label} | {c} | {r['time']:.1f} | {r['mib']:.0f} | {r['peak_mib']:.0f} "
                        f"| {r['layer0_mlp_runs']} |"
                    )
    tgt = results.get(("attnlrp", True, 4096))
    if tgt is None or "skipped" in tgt:
        verdict = "- target (4,096 tokens within 8 GiB peak, AttnLRP with checkpointing): **not measured**"
    else:
        ok = tgt["peak_mib"] <= 8 * 1024
        verdict = (f"- target (4,096 tokens within 8 GiB peak, AttnLRP with checkpointing): process peak "
                   f"{tgt['peak_mib'] / 1024:.2f} GiB ({tgt['mib'] / 1024:.2f} GiB over the loaded model): "
                   f"{'**met**' if ok else '**missed**'}")
    loads = [r["load"] for r in results.values() if "load" in r]
    intro = [
        "## Long inputs and gradient checkpointing",
        "",
        "SmolLM2-135M-Instruct (CPU, fp32); prompts: the first N token ids of CPython's documentation text. "
        "`Explainer(model, tok, method=M).explain(ids)` (the predicted next token), with and without "
        "`model.gradient_checkpointing_enable()`.",
        "",
        "- **One repetition per configuration**, each in its own fresh process (model loaded, one 32-token warm-up "
        "call, then the measured call). Time and memory come from the same call: RSS sampled every 10 ms "
        "(`psutil`), after `gc.collect()` + `malloc_trim(0)`; *peak memory* is peak RSS minus RSS just before the "
        "call (as in the table above), *process peak* is the whole process (model weights included).",
        "- *layer-0 MLP forward runs*: 2 means checkpointing really recomputed the layer during the backward pass.",
        f"- a configuration is killed and marked skipped if its process RSS passes "
        f"{args.long_limit_mib / 1024:.0f} GiB (the machine has {psutil.virtual_memory().total / 2**30:.0f} GiB) "
        f"or it runs longer than {args.long_timeout:.0f} s.",
        "",
    ]
    tail = [""] + [verdict] + ([f"- highest foreign CPU load during a measured call: {max(loads):.0%}"] if loads else [])
    return "\n".join(intro + lines + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128 tokens only, 3 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="rounds after the warm-up (default 5; 3 with --quick)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths (default 16 128 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the core count)")
    parser.add_argument("--output", help="also write the report (Markdown) to this file")
    parser.add_argument("--max-foreign", type=float, default=MAX_FOREIGN_DEFAULT,
                        help="discard and rerun a round in which other processes used more than this fraction "
                             "of the CPU during any call (default 0.15)")
    parser.add_argument("--max-wait", type=float, default=20.0,
                        help="before each round, wait up to this many seconds for the machine to be quiet")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which rounds are no longer rerun or delayed for load "
                             "(default 240; 90 with --quick)")
    parser.add_argument("--generation", action="store_true",
                        help="only the generation benchmark: explain_generation vs a naive per-token loop")
    parser.add_argument("--gen-tokens", type=int, nargs="+", default=[16, 64],
                        help="generated tokens for --generation (default 16 64)")
    parser.add_argument("--batch", action="store_true",
                        help="only the batch benchmark: explain_batch of 16 short prompts vs 16 calls, and the "
                             "sustained throughput on 64-token prompts")
    parser.add_argument("--long", action="store_true",
                        help="only the long-input benchmark (slow): 512 / 2048 / 4096 tokens, checkpointing off/on")
    parser.add_argument("--long-lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--long-limit-mib", type=float, default=LONG_LIMIT_MIB,
                        help="kill a long configuration whose process RSS passes this (default 20 GiB)")
    parser.add_argument("--long-timeout", type=float, default=LONG_TIMEOUT_S,
                        help="kill a long configuration running longer than this many seconds (default 300)")
    parser.add_argument("--long-child", nargs=3, metavar=("N", "METHOD", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.long_child:
        n, method, ckpt = args.long_child
        return long_child(int(n), method, bool(int(ckpt)), args.threads or core_count())

    t_start = time.perf_counter()
    if args.generation or args.long or args.batch:
        return main_sections(args, t_start)
    lengths = args.lengths or ([128] if args.quick else [SHORT, 128, 512])
    reps = args.reps or (3 if args.quick else 5)
    budget = args.budget if args.budget is not None else (90.0 if args.quick else 240.0)
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

    # the longer prompts' rounds cost more: give each length a share of the budget by its expected cost
    weights = [n * (1 + n / 1024) for n in lengths]
    results, used = {}, 0.0
    for n, w in zip(lengths, weights):
        used += budget * w / sum(weights)
        results[n] = bench_length(model, tokenizer, n, reps, args, t_start + used, log)

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench.py", *sys.argv[1:]])
    report = table(results)
    print(report)
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    if args.output:
        text = header(threads, command, reps, lengths) + "\n\n" + report + "\n\n" + METHOD_NOTES
        text += kept_notes(args.output)
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"written to {args.output}")
    return 0


def main_sections(args, t_start: float) -> int:
    """--generation / --long: print the section and, with --output, replace it in that file (rest kept)."""
    threads = args.threads or core_count()
    torch.set_num_threads(threads)
    print(f"torch.set_num_threads({threads})  (cores: {core_count()}, CPU: {cpu_model()})", flush=True)
    warnings.filterwarnings("ignore")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "scripts/bench.py", *sys.argv[1:]])

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    sections = []
    if args.generation:
        from attnlrp.models import load_model

        lm = load_model()
        for p in lm.model.parameters():
            p.requires_grad_(False)
        args.reps = args.reps or 3
        text = run_generation(lm.model, lm.tokenizer, args, log)
        sections.append(("generation", text))
    if args.long:
        sections.append(("long", run_long(args, threads, log)))
    if args.batch:
        from attnlrp.models import load_model

        lm = load_model()
        sections.append(("batch", run_batch(lm.model, lm.tokenizer, args.reps or 3, log)))
    for key, text in sections:
        head, rest = text.split("\n", 1)
        text = head + "\n\n" + "\n".join(machine_lines(threads, command)) + "\n" + rest
        print(text)
        if args.output:
            write_section(args.output, key, text)
            print(f"section {key!r} written to {args.output}")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------- batches
BATCH_ROWS = 16
THROUGHPUT_TOKENS = 64
THROUGHPUT_CALLS = 32


def run_batch(model, tokenizer, reps: int, log) -> str:
    """explain_batch of 16 short prompts against 16 single calls (same explainer, same prompts), and the sustained
    throughput (explanations per second) on 64-token prompts, one by one and in batches of 8."""
    from attnlrp import Explainer

    text = "".join(__import__("pydoc_data.topics", fromlist=["topics"]).topics.values())
    words = text.split()
    short = [" ".join(words[i * 12: i * 12 + 12]) for i in range(BATCH_ROWS)]  # ~16 tokens each
    explainer = Explainer(model, tokenizer)
    explainer.explain_batch(short[:2])  # warm-up
    explainer.explain(short[0])
    singles, batches = [], []
    for r in range(reps):
        t, _, _ = measure(lambda: [explainer.explain(p) for p in short], sample=False)
        singles.append(t)
        t, _, _ = measure(lambda: explainer.explain_batch(short), sample=False)
        batches.append(t)
        log(f"  batch round {r + 1}/{reps}: 16 calls {singles[-1]:.3f} s, one batch of 16 {batches[-1]:.3f} s")
    ids = doc_ids(tokenizer, THROUGHPUT_TOKENS * THROUGHPUT_CALLS)
    prompts = [ids[i * THROUGHPUT_TOKENS:(i + 1) * THROUGHPUT_TOKENS] for i in range(THROUGHPUT_CALLS)]
    one_by_one, _, _ = measure(lambda: [explainer.explain(p) for p in prompts], sample=False)
    batched, _, _ = measure(lambda: [explainer.explain_batch(prompts[i:i + 8]) for i in range(0, len(prompts), 8)],
                            sample=False)
    single, batch = statistics.median(singles), statistics.median(batches)
    lengths = [len(tokenizer(p)["input_ids"]) for p in short]
    return "\n".join([
        "## Batches and throughput (`make bench-batch`)",
        "",
        f"- {BATCH_ROWS} short prompts (12 words of the documentation text each, {min(lengths)}–{max(lengths)} "
        f"tokens with BOS), AttnLRP, one `Explainer`; {reps} rounds, median",
        "",
        "| what | time (s) | per explanation (ms) | batch / single calls |",
        "|---|---:|---:|---:|",
        f"| 16 × `explain` | {single:.3f} | {single / BATCH_ROWS * 1e3:.0f} | |",
        f"| 1 × `explain_batch` of 16 | {batch:.3f} | {batch / BATCH_ROWS * 1e3:.0f} | {batch / single:.2f}× |",
        "",
        f"Sustained throughput on {THROUGHPUT_TOKENS}-token prompts ({THROUGHPUT_CALLS} consecutive explanations, "
        "one `Explainer`):",
        "",
        "| mode | explanations per second |",
        "|---|---:|",
        f"| one by one | {THROUGHPUT_CALLS / one_by_one:.2f} |",
        f"| batches of 8 | {THROUGHPUT_CALLS / batched:.2f} |",
    ]) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
