"""Build the tiny, seeded models that lxt 2.1 and attnlrp are compared on, and save them as committed fixtures.

lxt 2.1 (the authors' AttnLRP library) patches six Hugging Face architectures: llama, qwen2, qwen3, gemma3
(text), gpt2 and bert. For each, this script builds the tiny model of ``tests/architectures/configs.py`` (float32,
eager attention, seed 0, biases and norm weights perturbed) and writes it with ``save_pretrained`` (safetensors)
to ``tests/data/tiny_models/<arch>/``. Both environments then load the *same* weights: ours (transformers 5.x)
in ``tests/test_lxt_agreement_tiny.py``, lxt's (.venv-lxt, transformers 4.57) in
``scripts/lxt_reference_tiny.py``.

Run with OUR venv, from the repository root:

    .venv/bin/python scripts/make_tiny_reference_models.py

It also writes ``tests/data/tiny_models/manifest.json``: per architecture the model class, the two prompts as
token ids of ``tests/tiny.py``'s ``word_tokenizer()`` (BERT gets [CLS] … [SEP]; decoders get [BOS] …) and the
last-position logits this environment computes, so that the lxt side can check it loads an identical model.

config.json fix-up for transformers 4.57 (``_fixup_for_457``): 5.x stores RoPE settings only in
``rope_parameters`` (for Gemma3 one dict per attention type); 4.57 reads ``rope_theta`` (and Gemma3's
``rope_local_base_freq``) and would silently fall back to its defaults. The script writes those keys
explicitly from ``rope_parameters``. Keys 4.57 does not know are kept: its ``PretrainedConfig`` stores unknown
keys as attributes and ignores them. The saved ``dtype`` is float32 in both versions.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

torch.set_num_threads(1)

from architectures.configs import ARCHITECTURES  # noqa: E402
from tiny import word_tokenizer  # noqa: E402

OUT = ROOT / "tests" / "data" / "tiny_models"
# the architectures lxt 2.1's efficient mode patches, by the name of configs.ARCHITECTURES
LXT_ARCHS = ("llama", "qwen2", "qwen3", "gemma3_text", "gpt2", "bert")


def _fixup_for_457(folder: Path) -> list[str]:
    """Make config.json read the same in transformers 4.57 (see the module docstring). Returns what changed."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    changes = []
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:  # one set of parameters for every layer
            if rope.get("rope_type", "default") != "default":
                raise SystemExit(f"{folder.name}: rope_type {rope['rope_type']} needs a rope_scaling fix-up too")
            config["rope_theta"] = rope["rope_theta"]
            changes.append(f"rope_theta={rope['rope_theta']}")
        else:  # per attention type (Gemma3): full attention -> rope_theta, sliding -> rope_local_base_freq
            for kind, key in (("full_attention", "rope_theta"), ("sliding_attention", "rope_local_base_freq")):
                params = rope[kind]
                if params.get("rope_type", "default") != "default":
                    raise SystemExit(f"{folder.name}: rope_type {params['rope_type']} needs a rope_scaling fix-up")
                config[key] = params["rope_theta"]
                changes.append(f"{key}={params['rope_theta']}")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return changes


def prompt_ids(name: str) -> list[list[int]]:
    arch = ARCHITECTURES[name]
    if arch.kind == "encoder":
        tok = word_tokenizer(bos=False)
        cls, sep = tok.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        return [[cls, *tok(p)["input_ids"], sep] for p in arch.prompts]
    tok = word_tokenizer()
    return [tok(p)["input_ids"] for p in arch.prompts]


def main() -> None:
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": {
            "script": "scripts/make_tiny_reference_models.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "builder": "tests/architectures/configs.py ARCHITECTURES[name].build('eager', torch.float32)",
        },
        "models": {},
    }
    for name in LXT_ARCHS:
        arch = ARCHITECTURES[name]
        model = arch.build("eager", torch.float32)
        folder = OUT / name
        model.save_pretrained(folder, safe_serialization=True)
        changes = _fixup_for_457(folder)
        vocab = model.get_input_embeddings().weight.shape[0]
        prompts = []
        for ids in prompt_ids(name):
            assert max(ids) < vocab, (name, ids, vocab)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1] if arch.kind == "decoder" else \
                    model(torch.tensor([ids])).logits[0]
            prompts.append({"input_ids": ids, "last_logits": [float(f"{x:.7g}") for x in logits.tolist()]})
        size = sum(f.stat().st_size for f in folder.iterdir())
        manifest["models"][name] = {
            "model_class": arch.model_class,
            "kind": arch.kind,
            "prompts_text": list(arch.prompts),
            "prompts": prompts,
            "config_fixup_for_4.57": changes,
        }
        print(f"{name:12s} {arch.model_class:32s} {size / 1024:7.1f} KB  fix-up: {changes or 'none'}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    main()
