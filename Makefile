# Everything runs inside .venv, which the first target that needs it creates.
# torch is pinned to the CPU build that these machines install from local disk; GPU users
# install their CUDA torch first (see README) and then `pip install -e '.[all]'`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO := .demo

.PHONY: test demo bench completions clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,quant]'
	touch $@

test: $(STAMP)
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m yayi_cli.tiny $(DEMO)/tiny-bloom --arch bloom --data examples/sample.jsonl --force
	$(BIN)/yayi data validate examples/sample.jsonl --model $(DEMO)/tiny-bloom
	$(BIN)/yayi data split examples/sample.jsonl --test-size 5 --stratify domain -o $(DEMO)/split --force
	$(BIN)/yayi data preview $(DEMO)/split/test.jsonl -n 2 --model $(DEMO)/tiny-bloom
	$(BIN)/yayi eval --model $(DEMO)/tiny-bloom --data $(DEMO)/split/test.jsonl --output $(DEMO)/report.json --force
	$(BIN)/yayi quantize --model $(DEMO)/tiny-bloom -o $(DEMO)/tiny-bloom-int8 --check-data $(DEMO)/split/test.jsonl --force
	$(BIN)/yayi eval --model $(DEMO)/tiny-bloom-int8 --data $(DEMO)/split/test.jsonl --baseline $(DEMO)/report.json --max-regression 2

bench: $(STAMP)
	$(BIN)/python benchmarks/cli_startup.py --runs 15
	$(BIN)/python benchmarks/validate_throughput.py --records 100000 1000000
	$(BIN)/python benchmarks/eval_batching.py --records 512 --repeats 5
	$(BIN)/python benchmarks/quantize_quality.py --steps 300

completions: $(STAMP)
	for shell in bash zsh fish; do \
	  _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=1 $(BIN)/yayi --show-completion $$shell > completions/yayi.$$shell; \
	done

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis
