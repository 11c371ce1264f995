# One-command set-up: every target creates .venv on first use (CPU PyTorch pinned in pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test check lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[training,service,dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## Run the service: embedded queue, CPU, the committed default model.
serve: $(STAMP)
	$(BIN)/dir-serve --host $(HOST) --port $(PORT)

## Run the whole test suite (starts a throwaway Redis when none answers on 127.0.0.1:6379).
test: $(STAMP)
	$(BIN)/python -m pytest

## ruff + mypy + tests: what a change must pass.
check: lint test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
