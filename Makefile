# ESF: `make run` starts the embedded foundation with a demo; `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run run-orders test lint typecheck unit bench wheel-check clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ESF needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/esf up --demo

run-orders: $(VENV)/.installed-run
	$(BIN)/esf up --example orders

test: $(VENV)/.installed-dev
	bash scripts/services.sh
	$(BIN)/ruff check .
	bash scripts/typecheck.sh
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed-dev
	bash scripts/typecheck.sh

bench: $(VENV)/.installed-dev
	bash scripts/services.sh
	$(BIN)/python bench/jobs.py --quick

clean:
	rm -rf $(VENV) .typecheck .esf build dist *.egg-info
