# Everything runs inside .venv, which the first target that needs it creates.
# torch is pinned to the CPU build that these machines install from local disk; GPU users
# install their CUDA torch first (see README) and then `pip install -e '.[all]'`.
PYTHON ?= python3
# The index torch==2.13.0 comes from. These machines serve a CPU build from their own index; elsewhere
# PyPI's Linux wheel is the CUDA one (GBs): on a CPU-only machine use
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO := .demo

.PHONY: test test-fast demo bench completions clean

# DeepSpeed ships only a source archive that imports torch to build: install it after torch,
# without build isolation (else pip fetches a multi-GB CUDA torch into the build environment).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation 'deepspeed>=0.15'
	$(BIN)/pip install -q -e '.[dev,quant,train,serve]'
	touch $@

test: $(STAMP)
	$(BIN)/pytest

test-fast: $(STAMP)  # the edit-test loop: everything not marked slow
	$(BIN)/pytest -m "not slow"

demo: $(STAMP)
	BIN=$(BIN) OUT=$(DEMO) examples/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py --runs 15
	$(BIN)/python benchmarks/validate_throughput.py --records 200000 1000000 --rounds 3
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/eval_batching.py --data short --records 512 --repeats 5
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/eval_batching.py --data yayi --records 512 --repeats 5
	$(BIN)/python benchmarks/quantize_quality.py --steps 300

completions: $(STAMP)
	for shell in bash zsh fish; do \
	  _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 $(BIN)/yayi --show-completion $$shell > completions/yayi.$$shell; \
	done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis
