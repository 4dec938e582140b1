# fashion_keras — `make help` lists the targets. Every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install data train-baseline train-dropout test lint format clean

help: ## show this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the package and its dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

data: $(STAMP) ## make Fashion-MNIST present (Debian package as root, else download) and verify it
	@if ! $(BIN)/fashion-keras data --no-download >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || true; \
	  fi; \
	fi
	$(BIN)/fashion-keras data --check

train-baseline: data ## train the tutorial baseline on the full data into runs/baseline (rerun resumes)
	@$(MAKE) --no-print-directory _train NAME=baseline

train-dropout: data ## train the dropout variant into runs/dropout (rerun resumes)
	@$(MAKE) --no-print-directory _train NAME=dropout

_train:
	@if [ -f runs/$(NAME)/metrics.json ]; then \
	  echo "runs/$(NAME) is complete; delete it to train again"; \
	else \
	  $(BIN)/fashion-keras train --config configs/$(NAME).yaml --output runs/$(NAME) $(ARGS); \
	fi

test: data ## run the test suite (real data; trains small models)
	$(BIN)/pytest -q

lint: $(STAMP) ## check style with ruff
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP) ## reformat with ruff
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean: ## remove caches (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info
