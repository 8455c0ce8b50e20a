# One venv for everything; `make test` and `make demo` create it on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy streamseq

demo: $(STAMP)
	$(BIN)/streamseq demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.engine_speed

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
