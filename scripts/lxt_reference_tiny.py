"""Reference token relevance from lxt 2.1 on the tiny models of every architecture lxt patches.

Run through scripts/lxt_reference.sh (in .venv-lxt: transformers 4.57, lxt 2.1 installed with --no-deps).
The models are the committed folders tests/data/tiny_models/<arch>/ written by
scripts/make_tiny_reference_models.py (with our venv); their manifest.json gives the token ids of the two
prompts per architecture and the last-position logits transformers 5.x computed, which this script checks
(the two environments must run the same model). Output: tests/data/lxt_reference_tiny.json. This project
never imports lxt: only that JSON is kept.

lxt's patches are global (they rewrite classes and module attributes of transformers, and torch.nn.Dropout),
so every (architecture, method) pair runs in a fresh process:

    python scripts/lxt_reference_tiny.py --out FILE                      # driver
    python scripts/lxt_reference_tiny.py --worker ARCH METHOD --out FILE

METHOD is one of
    input_x_gradient   unpatched model
    attnlrp            lxt.efficient.monkey_patch(modeling_<arch>)                       (lxt's default map)
    cp_lrp             lxt.efficient.monkey_patch(modeling_<arch>, patch_map=<arch>.cp_LRP)   (not for bert:
                       lxt 2.1 has no CP-LRP map for it)

Relevance per token = sum over d of inputs_embeds * grad of the explained logit: for causal LMs the argmax
token at the last position, for BERT sequence classification the predicted class. eager attention, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "data" / "tiny_models"
SCRIPT = "scripts/lxt_reference_tiny.py"
METHODS = ("input_x_gradient", "attnlrp", "cp_lrp")
# configs.ARCHITECTURES name -> lxt.efficient.models module name (= transformers.models.<name>)
LXT_MODULE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3", "gpt2": "gpt2",
              "bert": "bert"}
NO_CP_LRP = {"bert"}  # lxt 2.1 ships no cp_LRP map for bert


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


# ----------------------------------------------------------------------------------------- worker


from lxt_env import stub_torchvision as _stub_torchvision  # noqa: E402  (scripts/ is on sys.path)


def worker(arch: str, method: str, out: str) -> None:
    import importlib

    import torch
    import transformers

    torch.set_num_threads(1)
    torch.manual_seed(0)
    entry = json.loads((MODELS / "manifest.json").read_text())["models"][arch]
    hf_module = importlib.import_module(f"transformers.models.{LXT_MODULE[arch]}.modeling_{LXT_MODULE[arch]}")

    lxt_version = None
    if method != "input_x_gradient":
        from importlib.metadata import version

        _stub_torchvision()
        from lxt.efficient import monkey_patch

        lxt_version = version("lxt")
        if method == "attnlrp":
            monkey_patch(hf_module, verbose=True)  # lxt's default map for this module = its attnLRP map
        elif method == "cp_lrp":
            if arch in NO_CP_LRP:
                raise SystemExit(f"lxt has no CP-LRP map for {arch}")
            maps = importlib.import_module(f"lxt.efficient.models.{LXT_MODULE[arch]}")
            monkey_patch(hf_module, patch_map=maps.cp_LRP, verbose=True)
        else:
            raise SystemExit(f"unknown method {method}")

    # read the class from the (possibly patched) modeling module: lxt's bert map replaces the module's contents
    cls = getattr(hf_module, entry["model_class"])
    model = cls.from_pretrained(MODELS / arch, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    causal = entry["kind"] == "decoder"

    results = []
    for prompt in entry["prompts"]:
        ids = torch.tensor([prompt["input_ids"]])
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        kwargs = {"use_cache": False} if causal else {}
        logits = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), **kwargs).logits
        last = logits[0, -1] if causal else logits[0]
        # the two environments must run the same model: compare with transformers 5.x's logits
        expected = torch.tensor(prompt["last_logits"])
        diff = float((last.detach() - expected).abs().max())
        assert diff < 1e-4 * max(1.0, float(expected.abs().max())), (arch, method, diff)
        target = int(last.argmax())
        value = last[target]
        value.backward()
        relevance = (embeds * embeds.grad).sum(-1)[0].detach()
        results.append(
            {
                "input_ids": prompt["input_ids"],
                "target_id": target,
                "value": float(value.detach()),
                "logits_max_abs_diff_vs_5x": diff,
                "relevance": [float(r) for r in relevance],
            }
        )
    payload = {
        "arch": arch,
        "method": method,
        "model_class": f"{cls.__module__}.{cls.__name__}",
        "versions": {"lxt": lxt_version, "transformers": transformers.__version__, "torch": torch.__version__},
        "results": results,
    }
    Path(out).write_text(json.dumps(payload))


# ----------------------------------------------------------------------------------------- driver


def run_worker(arch: str, method: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", arch, method, "--out", path]
        print(f"[lxt_reference_tiny] {arch} {method}", file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        subprocess.run(cmd, check=True, env=env)
        return json.loads(Path(path).read_text())


def driver(out: str) -> None:
    manifest = json.loads((MODELS / "manifest.json").read_text())
    models = {}
    versions = None
    for arch, entry in manifest["models"].items():
        methods = [m for m in METHODS if not (m == "cp_lrp" and arch in NO_CP_LRP)]
        runs = {m: run_worker(arch, m) for m in methods}
        versions = runs["attnlrp"]["versions"]
        base = runs["input_x_gradient"]["results"]
        prompts = []
        for i, b in enumerate(base):
            item = {
                "input_ids": b["input_ids"],
                "target_id": b["target_id"],
                "value": sig7(b["value"]),
                "logits_max_abs_diff_vs_5x": float(f"{b['logits_max_abs_diff_vs_5x']:.3g}"),
            }
            for m in methods:
                r = runs[m]["results"][i]
                # the patches change gradients only, never the forward values
                assert r["input_ids"] == b["input_ids"] and r["target_id"] == b["target_id"], (arch, m)
                assert abs(r["value"] - b["value"]) <= 1e-5 * max(1.0, abs(b["value"])), (arch, m, r["value"])
                item[m] = [sig7(x) for x in r["relevance"]]
            prompts.append(item)
        models[arch] = {
            "model_class": entry["model_class"],
            "kind": entry["kind"],
            "lxt_class": runs["attnlrp"]["model_class"],
            "methods": methods,
            "prompts": prompts,
        }
        for p in prompts:
            sums = "  ".join(f"{m} {sum(p[m]):+.4f}" for m in methods)
            print(f"{arch:12s} target {p['target_id']:3d} value {p['value']:+.4f}  {sums}")

    doc = {
        "generator": {
            "lxt": versions["lxt"],
            "transformers": versions["transformers"],
            "torch": versions["torch"],
            "script": SCRIPT,
            "models": "tests/data/tiny_models/<arch> (scripts/make_tiny_reference_models.py)",
            "dtype": "float32",
            "attn_implementation": "eager",
            "relevance": "sum over d of inputs_embeds * grad of the explained logit (causal LM: argmax token at "
                         "the last position; sequence classification: the predicted class)",
            "lxt_api": {
                "attnlrp": "lxt.efficient.monkey_patch(transformers.models.<m>.modeling_<m>)",
                "cp_lrp": "lxt.efficient.monkey_patch(modeling_<m>, patch_map=lxt.efficient.models.<m>.cp_LRP)",
                "input_x_gradient": "unpatched model",
            },
        },
        "models": models,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/lxt_reference_tiny.json")
    ap.add_argument("--worker", nargs=2, metavar=("ARCH", "METHOD"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.out)
    else:
        driver(args.out)


if __name__ == "__main__":
    main()
