# fashion_keras — `make help` lists the targets. Every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
BENCH_ARGS ?= --accuracy-epochs 5 --accuracy-seeds 3
FRONTIER_ARGS ?=
STUDY_ARGS ?=
METHODS_ARGS ?=

.DEFAULT_GOAL := help
SEEDS  ?= 1 2 3
# make compare trains each variant once per seed on this subset.
COMPARE_SETS ?= --set data.train_limit=10000 --set training.epochs=15
# The lowest versions pyproject.toml admits; `make test-oldest` proves they work.
OLDEST ?= "tensorflow==2.16.1" "keras==3.9.0" "tensorboard==2.16.2" "numpy==1.26.0" \
	"scipy==1.11.1" "pandas==2.1.0"
OLDEST_VENV ?= .venv-oldest
# `make test-backends`: the other Keras backends (torch 2.13.0 is the CPU build this machine
# class keeps on disk; a newer or unpinned torch downloads a CUDA build of several GB) and the
# test files whose subject is backend-neutral.
BACKENDS ?= "jax>=0.4.30" "torch==2.13.0"
BACKEND_TESTS ?= tests/test_models.py tests/test_uncertainty.py tests/test_shift.py \
	tests/test_predict.py tests/test_report.py

.PHONY: help install data browser bench bench-export frontier profile study methods notebook \
	train-baseline train-dropout train-fast train-improved _train report compare test test-fast \
	test-backends test-long test-oldest test-crash lint format clean

help: ## show this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the package and its dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,export]"
	touch $(STAMP)

data: $(STAMP) ## make Fashion-MNIST present (Debian package as root, else download) and verify it
	@if ! $(BIN)/fashion-keras data --no-download >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || true; \
	  fi; \
	fi
	$(BIN)/fashion-keras data --check

train-baseline: data ## train the tutorial network, 20 epochs, into runs/baseline (rerun resumes)
	@$(MAKE) --no-print-directory _train NAME=baseline

train-dropout: data ## train the tutorial network with dropout into runs/dropout (rerun resumes)
	@$(MAKE) --no-print-directory _train NAME=dropout

train-fast: data ## train the fast preset for a 45-second budget into runs/fast
	@$(MAKE) --no-print-directory _train NAME=fast

train-improved: data ## train the improved preset for a 30-minute budget into runs/improved
	@$(MAKE) --no-print-directory _train NAME=improved

# OUTPUT names the run directory: `make train-improved ARGS="--set seed=43" OUTPUT=runs/seed43`.
_train:
	@out=$${OUTPUT:-runs/$(NAME)}; if [ -f $$out/metrics.json ]; then \
	  echo "$$out is complete; delete it, or name another run directory with OUTPUT=runs/..."; \
	else \
	  $(BIN)/fashion-keras train --config $(NAME) --output $$out $(ARGS); \
	fi

report: $(STAMP) ## write runs/baseline/report/ and runs/dropout/report/ and compare them
	$(BIN)/fashion-keras report runs/baseline
	$(BIN)/fashion-keras report runs/dropout
	$(BIN)/fashion-keras compare runs/baseline runs/dropout --output runs/comparison

compare: data ## train both variants for each of SEEDS on a subset, then compare with a 95% CI
	@for seed in $(SEEDS); do for variant in baseline dropout; do \
	  dir=runs/compare/$$variant-seed$$seed; \
	  [ -f $$dir/metrics.json ] || $(BIN)/fashion-keras train --config $$variant \
	    --set seed=$$seed $(COMPARE_SETS) --output $$dir || exit 1; \
	done; done
	$(BIN)/fashion-keras compare runs/compare/*-seed* --output runs/compare/report

study: data ## the dropout study into runs/study, its summary into docs/study (rerun continues)
	$(BIN)/fashion-keras study --output runs/study --docs docs/study $(STUDY_ARGS)

methods: data ## dropout against its alternatives into runs/methods, summary into docs/methods
	$(BIN)/fashion-keras methods --output runs/methods --docs docs/methods $(METHODS_ARGS)

notebook: $(STAMP) ## open the notebooks in JupyterLab (installs the notebooks extra)
	$(BIN)/pip install -q -e ".[notebooks]"
	$(BIN)/jupyter lab notebooks/

browser: ## install headless Chromium for the page tests (Debian, as root)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -q && apt-get install -y -q chromium; } || echo "chromium unavailable: page tests will skip"

test: data ## the test suite, as CI runs it first (real data; trains small models)
	$(BIN)/pytest -q --durations=15 -m "not crash and not backends and not long"

test-fast: data ## the unit tier for the edit loop: no training subprocess, about 4 minutes
	$(BIN)/pytest -q -m "not slow and not backends and not long"

test-long: data browser ## end to end over many runs: the quick study and methods, notebooks, the wheel (CI)
	$(BIN)/pytest -q -m long

test-backends: data ## JAX and PyTorch: models move between backends, train runs, unit tier on each
	$(BIN)/pip install -q $(BACKENDS)
	$(BIN)/pytest -q -m backends
	for backend in jax torch; do \
	  KERAS_BACKEND=$$backend $(BIN)/pytest -q -p no:cacheprovider -m "not slow and not long" \
	    $(BACKEND_TESTS) || exit 1; \
	done

test-crash: data ## kill a run at every durable moment and fail every write; CI runs it (~22 min)
	$(BIN)/pytest -q -m crash

test-oldest: data ## the unit tier and the resume/kill tier on the lowest versions pyproject.toml admits
	@[ -x $(OLDEST_VENV)/bin/python ] || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/pip install -q -e ".[dev]" $(OLDEST)
	$(OLDEST_VENV)/bin/python -c "import keras, tensorflow as tf; print('tensorflow', tf.__version__, 'keras', keras.__version__)"
	$(OLDEST_VENV)/bin/python -c "import numpy, scipy, pandas; print('numpy', numpy.__version__, 'scipy', scipy.__version__, 'pandas', pandas.__version__)"
	$(OLDEST_VENV)/bin/pytest -q -p no:cacheprovider -m "not slow and not backends and not long"
	$(OLDEST_VENV)/bin/pytest -q -p no:cacheprovider -m "not crash" tests/test_resume.py tests/test_crash.py

# The PyTorch contender runs where torch is installed: pip install -e ".[bench]".
bench: data ## throughput, and 5-epoch accuracy over 3 seeds: naive Keras vs this project vs PyTorch
	$(BIN)/python bench/throughput.py --json bench/latest.json $(BENCH_ARGS)

bench-export: data ## batch-1 latency, throughput and parity of SavedModel, ONNX and LiteRT beside Keras
	$(BIN)/python bench/export_latency.py --json bench/export.json

frontier: data ## test accuracy within 1, 5 and 30 min over seeds: presets vs naive Keras (f32, bf16) vs PyTorch (~5 h; rerun goes on)
	$(BIN)/python bench/frontier.py $(FRONTIER_ARGS)

profile: data ## where a training step's time goes, layer by layer, against the matmul peak
	$(BIN)/python bench/profile_step.py --preset baseline --preset fast --preset improved \
	  --json bench/profile.json

lint: $(STAMP) ## check style with ruff
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP) ## reformat with ruff
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

clean: ## remove caches (keeps runs/ and the virtual environments)
	rm -rf .pytest_cache .ruff_cache src/*.egg-info build dist
