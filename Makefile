# llmgate: `make run` installs and starts the gateway on the embedded config.toml; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLMGATE_MASTER_KEY ?= sk-llmgate-local-master
export LLMGATE_MASTER_KEY

.PHONY: run test install dev lint bench clean reliability-full

$(BIN)/llmgate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(BIN)/llmgate

install: $(BIN)/llmgate

$(VENV)/.dev-installed: pyproject.toml $(BIN)/llmgate
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

dev: $(VENV)/.dev-installed

run: install
	@echo "llmgate on http://127.0.0.1:4000  (master key: $$LLMGATE_MASTER_KEY)"
	$(BIN)/llmgate serve --config config.toml

test: dev
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check llmgate providers

reliability-full: dev
	LLMGATE_RELIABILITY_FULL=1 $(BIN)/pytest tests/reliability -q -s

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
