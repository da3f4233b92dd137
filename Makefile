# Fresh machine to running code in one command: `make demo` (the main job) or `make test`.
# torch is installed first, pinned, so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup test test-all lint bench-frozen-decoder

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

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
