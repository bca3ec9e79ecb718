# `make run` starts evogate on SQLite; `make test` runs the whole test suite.
# Both create the virtual environment in .venv and install requirements.txt when needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run dev test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

dev: $(VENV)/.installed
	$(BIN)/python devserver.py

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# The benchmark of docs/benchmarks.md; pass options with ARGS, e.g. make bench ARGS=--smoke
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(ARGS)
