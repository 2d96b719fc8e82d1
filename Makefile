# Stride: `make serve` serves the bundled models, `make test` runs the whole suite.
# Both set themselves up from nothing (a venv in .venv, then pip installs).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make serve HOST=0.0.0.0 PORT=9000`; otherwise STRIDE_HOST / STRIDE_PORT or the defaults apply.
HOST ?=
PORT ?=

.DEFAULT_GOAL := help
.PHONY: help serve test lint format models install install-dev clean constraints screenshots

help:
	@echo "make serve   serve every model in models/ (HOST=, PORT= to override)"
	@echo "make test    install everything the tests need and run the whole suite"
	@echo "make models  retrain and re-export the bundled models from scratch"
	@echo "make screenshots  the web page's picture in the README (docs/images/page.png)"
	@echo "make lint    ruff"
	@echo "make constraints  re-pin constraints/cpu.txt and gpu.txt (the images' packages)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The same pinned install as the container images (constraints/cpu.txt), so tests exercise what ships.
$(VENV)/.stamp-serve: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[cpu]'
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e '.[cpu,train,dev]'
	@touch $@

install: $(VENV)/.stamp-serve
install-dev: $(VENV)/.stamp-dev

serve: $(VENV)/.stamp-serve
	$(if $(HOST),STRIDE_HOST=$(HOST)) $(if $(PORT),STRIDE_PORT=$(PORT)) exec $(BIN)/python -m service

# The browser tests drive Debian's chromium (Playwright's own browser download cannot work here): installed
# when running as root (as CI does), otherwise the one line to run.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "the browser tests need Debian's chromium; run:  sudo apt-get install -y chromium" >&2; exit 1; \
	fi

test: $(VENV)/.stamp-dev $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

screenshots: $(VENV)/.stamp-dev $(CHROMIUM)
	$(BIN)/python -m tools.screenshots

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

format: $(VENV)/.stamp-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

models: $(VENV)/.stamp-dev
	$(BIN)/python -m training bundle --models-dir models --jobs 2 --no-progress

constraints: $(VENV)/.stamp-dev
	$(BIN)/python deploy/update_constraints.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
