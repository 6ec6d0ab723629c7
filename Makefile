# Everything runs inside .venv, which the first target that needs it creates, with the exact versions
# of constraints.txt: the set the suite last passed with. pyproject.toml keeps ranges (what users who
# `pip install yayi-cli` get); `make lock` moves the tested set to today's newest and runs the suite.
# torch is pinned to the CPU build that these machines install from local disk; GPU users
# install their CUDA torch first (see README) and then `pip install -e '.[all]'`.
PYTHON ?= python3
TORCH_VERSION := 2.13.0
# The index torch comes from. These machines serve a CPU build from their own index; elsewhere
# PyPI's Linux wheel is the CUDA one (GBs): on a CPU-only machine use
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed-dev
DEMO := .demo
EXTRAS := dev,quant,train,serve,export,web

TIERS := launch or system or reference
WHEELS ?= $(HOME)/.cache/yayi/wheels
LLAMA_CPP := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
DEEPSPEED_OPS := $(VENV)/.deepspeed-ops

.PHONY: test test-fast demo bench completions lock lock-check clean

# torch through pip (uv does not look at the local build); everything else through uv (about 2x faster
# here, docs/BENCHMARKS.md). DeepSpeed ships only a source archive that imports torch to build: it is
# built without isolation, else a multi-GB CUDA torch lands in its build environment. llama-cpp-python
# (the tests' real llama.cpp) ships only a source archive too, which compiles for about 7 minutes: it is
# built once per machine into $(WHEELS), for any x86-64 CPU rather than this one's instruction set, and
# every later .venv installs that wheel in seconds (uv's own cache rebuilt it for each new .venv here).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt uv
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(UV) pip install -q --python $(BIN)/python -c constraints.txt setuptools
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-*.whl >/dev/null 2>&1 \
	  || CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP)
	DS_BUILD_OPS=0 $(UV) pip install -q --python $(BIN)/python -c constraints.txt --find-links $(WHEELS) \
	  --no-build-isolation-package deepspeed -e '.[$(EXTRAS)]'
	touch $@

# DeepSpeed's CPU ranks JIT-build a shared-memory communication op on first use (about 2 minutes on 2
# cores); built here, once per machine, into ~/.cache/torch_extensions (where every later run loads it
# from), it never costs a test its time limit.
$(DEEPSPEED_OPS): $(STAMP)
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
	touch $@

COMPILE = echo torch==$(TORCH_VERSION) | $(UV) pip compile pyproject.toml - $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -q
comma := ,

# A dependency upgrade is a commit: refresh the tested set to today's newest releases, reinstall, test.
lock: $(STAMP)
	$(COMPILE) --upgrade -o constraints.txt
	rm -f $(STAMP)
	$(MAKE) test

# CI: constraints.txt still satisfies pyproject.toml (compiling again, keeping its pins, changes nothing).
lock-check: $(STAMP)
	cp constraints.txt $(VENV)/constraints.check.txt
	$(COMPILE) -o $(VENV)/constraints.check.txt
	@diff -I '^#' constraints.txt $(VENV)/constraints.check.txt \
	  || { echo "constraints.txt is out of date with pyproject.toml: run 'make lock' and commit it" >&2; exit 1; }

# What CI runs: every tier, then the 15 slowest tests (where the time goes).
test: $(STAMP) $(DEEPSPEED_OPS)
	$(BIN)/pytest --durations=15

# The edit-test loop (a few minutes): only the unmarked tests, none of the launch, system or reference tier.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not ($(TIERS))"

demo: $(STAMP) $(DEEPSPEED_OPS)
	BIN=$(BIN) OUT=$(DEMO) examples/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py --runs 15
	$(BIN)/python benchmarks/validate_throughput.py --records 200000 1000000 --rounds 3
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/eval_batching.py --data short --records 512 --repeats 5
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/eval_batching.py --data yayi --records 512 --repeats 5
	$(BIN)/python benchmarks/quantize_quality.py --steps 300
	$(BIN)/python benchmarks/train_dpo.py

completions: $(STAMP)
	for shell in bash zsh fish; do \
	  _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 $(BIN)/yayi --show-completion $$shell > completions/yayi.$$shell; \
	done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis
